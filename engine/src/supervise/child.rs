//! The supervised child's side: the role it was started in, and what it
//! takes from its supervisor (the control socket on standard input, the
//! death signal armed against a parent that may already be gone).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use super::{ENV_LISTEN, ENV_ROLE, ENV_SERVICE, ENV_SUPERVISOR_PID, LISTENER};
use crate::rpc::{Endpoint, ServerBuilder, Source};
use crate::sys::{is_seqpacket, recv_message};

/// Why a process cannot serve as a supervised child.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotSupervised {
    /// An environment variable the supervisor sets is missing or bad.
    #[error("{var} is missing: this process was not started by an isocall Supervisor")]
    MissingEnv {
        /// The variable.
        var: &'static str,
    },
    /// The supervisor died before this process armed its death signal.
    #[error(
        "the supervisor (pid {supervisor}) of service {service:?} is gone (parent is now {parent})"
    )]
    SupervisorGone {
        /// The supervisor's pid.
        supervisor: i32,
        /// The service.
        service: String,
        /// This process's parent now.
        parent: i32,
    },
    /// The service has a stream address (see [`ENV_LISTEN`](super::ENV_LISTEN))
    /// and the supervisor hung up, or sent nothing for 10 s, before it
    /// handed over the address's listening socket.
    #[error(
        "the supervisor hung up or went silent before it handed over the listening socket of {address}"
    )]
    ListenerNeverCame {
        /// The address.
        address: String,
    },
    /// The service has a stream address and the first message on the
    /// control socket was not its listening socket.
    #[error(
        "the supervisor sent {bytes} byte(s) tagged {tag:#04x} with {fds} descriptor(s) where the listening socket of {address} was due"
    )]
    NotAListener {
        /// The address.
        address: String,
        /// The message's length.
        bytes: usize,
        /// Its first byte.
        tag: u8,
        /// How many descriptors came with it.
        fds: usize,
    },
    /// Standard input is not the supervisor's control socket.
    #[error("standard input is not the supervisor's control socket (a SOCK_SEQPACKET socket)")]
    NoControlSocket,
    /// An OS call failed while taking over.
    #[error("{what}: {source}")]
    Os {
        /// The call.
        what: &'static str,
        /// Its error.
        #[source]
        source: std::io::Error,
    },
}

impl ServerBuilder {
    /// A server for a process a [`Supervisor`](super::Supervisor) started:
    /// it takes the control socket the supervisor handed down (as standard
    /// input, which is then pointed at `/dev/null`) and serves the
    /// connections the supervisor sends over it. The process is killed when
    /// the supervisor dies (`PR_SET_PDEATHSIG`, checked against a
    /// supervisor that died before this call) and [`Server::run`](crate::rpc::Server::run)
    /// returns when the supervisor retires it. A supervisor given a stream
    /// [`address`](super::SupervisorBuilder::address) has the server listen
    /// there too (its clients connect there), on the socket the supervisor
    /// bound once and sends first on the control socket: every instance
    /// accepts on that same socket, so none waits for its predecessor to
    /// let the address go.
    ///
    /// A server that listens on TCP this way needs a policy that admits its
    /// TCP clients (see [`ServerBuilder::listen`]); the address is in
    /// [`ENV_LISTEN`](super::ENV_LISTEN) for the program to decide.
    ///
    /// # Errors
    ///
    /// [`NotSupervised`] naming what is missing: the environment the
    /// supervisor sets, a control socket on standard input, a supervisor
    /// that is still alive, or (with an address) the listening socket.
    pub fn supervised() -> Result<ServerBuilder, NotSupervised> {
        let child = ChildEnv::take()?;
        let listen = std::env::var(ENV_LISTEN).ok().filter(|a| !a.is_empty());
        // The supervisor's socket for the address comes first on the
        // control socket (taken before the server reads it for hand-offs).
        let adopted = match &listen {
            Some(a) => Some(take_listener(child.control.as_fd(), a)?),
            None => None,
        };
        let mut b = ServerBuilder::with_source(Source::Handoff(child.control), child.service);
        if let Some(address) = listen {
            let parsed = Endpoint::parse(&address).ok();
            match (parsed.as_ref().and_then(Endpoint::stream_address), adopted) {
                (Some(a), Some(fd)) => b.adopted.push((a.clone(), fd)),
                // Reported by `spawn` as a bad address.
                _ => b = b.add_listener(address.as_str()),
            }
        }
        Ok(b)
    }
}

/// The service role this process was started in by a
/// [`Supervisor`](super::Supervisor) built with
/// [`SupervisorBuilder::role`](super::SupervisorBuilder::role), if it was: a binary that holds both
/// sides checks this first thing in `main` and, for `Some(role)`, builds
/// its server with `ServerBuilder::supervised()` and serves.
pub fn role() -> Option<String> {
    std::env::var_os(ENV_SUPERVISOR_PID)?;
    std::env::var(ENV_ROLE).ok()
}

/// How long a supervised child waits for its listening socket: the
/// supervisor queues it before the child starts, so only a broken
/// supervisor keeps it waiting.
const LISTENER_WAIT: Duration = Duration::from_secs(10);

/// The listening socket of `address` that the supervisor queues first on
/// `control` when the service has a stream address.
fn take_listener(control: BorrowedFd<'_>, address: &str) -> Result<OwnedFd, NotSupervised> {
    let mut tag = [0u8; 8];
    let got = recv_message(
        control,
        &mut tag,
        1,
        crate::deadline_in(LISTENER_WAIT),
        None,
    );
    let never = || NotSupervised::ListenerNeverCame {
        address: address.to_string(),
    };
    match got {
        Ok((bytes, mut fds)) => match (bytes, tag[0], fds.len()) {
            (1, LISTENER, 1) => fds.pop().ok_or_else(never),
            (bytes, tag, n) => Err(NotSupervised::NotAListener {
                address: address.to_string(),
                bytes,
                tag,
                fds: n,
            }),
        },
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(never())
        }
        Err(source) => Err(NotSupervised::Os {
            what: "the listening socket from the supervisor",
            source,
        }),
    }
}

/// What a supervised child takes from its supervisor.
pub(crate) struct ChildEnv {
    pub(crate) control: OwnedFd,
    pub(crate) service: String,
}

impl ChildEnv {
    /// Takes the control socket from standard input (pointing standard
    /// input at `/dev/null` instead), arms `PR_SET_PDEATHSIG` and checks
    /// that the supervisor did not die before it was armed.
    pub(crate) fn take() -> Result<ChildEnv, NotSupervised> {
        let service = std::env::var(ENV_SERVICE)
            .map_err(|_| NotSupervised::MissingEnv { var: ENV_SERVICE })?;
        let parent: i32 = std::env::var(ENV_SUPERVISOR_PID)
            .ok()
            .and_then(|p| p.parse().ok())
            .ok_or(NotSupervised::MissingEnv {
                var: ENV_SUPERVISOR_PID,
            })?;
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .map_err(|e| NotSupervised::Os {
                what: "PR_SET_PDEATHSIG",
                source: e.into(),
            })?;
        // Armed now; a supervisor that died before has made us someone
        // else's child.
        let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
        if ppid != parent {
            return Err(NotSupervised::SupervisorGone {
                supervisor: parent,
                service,
                parent: ppid,
            });
        }
        let control = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| NotSupervised::Os {
                what: "standard input",
                source,
            })?;
        if !is_seqpacket(control.as_fd()) {
            return Err(NotSupervised::NoControlSocket);
        }
        let null = std::fs::File::open("/dev/null").map_err(|source| NotSupervised::Os {
            what: "/dev/null",
            source,
        })?;
        rustix::stdio::dup2_stdin(&null).map_err(|e| NotSupervised::Os {
            what: "dup2 onto stdin",
            source: e.into(),
        })?;
        Ok(ChildEnv { control, service })
    }
}
