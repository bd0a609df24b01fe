//! Building a supervisor: what it starts, how it restarts it, and how its
//! clients connect.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::error::SuperviseError;
use super::monitor::Monitor;
use super::stats::StatsBlock;
use super::{Inner, Premade, State, Supervisor};
use crate::rpc::{ClientOptions, Endpoint, IntoEndpoint};
use crate::stream::AddressError;
use crate::sys::EventFd;

/// What the supervisor starts.
#[derive(Clone, Debug)]
pub(super) enum Program {
    Command {
        program: PathBuf,
        args: Vec<OsString>,
    },
    Role {
        exe: PathBuf,
        role: String,
    },
}

impl Program {
    /// The file executed.
    pub(super) fn path(&self) -> &Path {
        match self {
            Program::Command { program, .. } => program,
            Program::Role { exe, .. } => exe,
        }
    }
}

/// Builds a [`Supervisor`].
#[derive(Clone, Debug)]
pub struct SupervisorBuilder {
    pub(super) service: String,
    pub(super) program: Program,
    pub(super) envs: Vec<(OsString, OsString)>,
    pub(super) backoff: (Duration, Duration),
    pub(super) intensity: (u32, Duration),
    pub(super) standby: usize,
    pub(super) retries: u32,
    pub(super) client: ClientOptions,
    pub(super) grace: Duration,
    /// Where the instances listen and the clients connect, if not over
    /// socketpairs handed down.
    pub(super) address: Option<Endpoint>,
    pub(super) bad_address: Option<AddressError>,
}

impl SupervisorBuilder {
    fn new(service: &str, program: Program) -> Self {
        SupervisorBuilder {
            service: service.to_string(),
            program,
            envs: Vec::new(),
            backoff: (Duration::from_millis(10), Duration::from_secs(1)),
            intensity: (10, Duration::from_secs(10)),
            standby: 0,
            retries: 3,
            client: ClientOptions::default(),
            grace: Duration::from_secs(2),
            address: None,
            bad_address: None,
        }
    }

    /// Supervises `program` run with `args`. The program must build its
    /// server with `ServerBuilder::supervised()`.
    pub fn command(
        service: &str,
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        Self::new(
            service,
            Program::Command {
                program: program.into(),
                args: args.into_iter().map(Into::into).collect(),
            },
        )
    }

    /// Supervises this executable re-entered in `role` (see [`role`](super::role)).
    ///
    /// # Errors
    ///
    /// The path of the current executable cannot be found.
    pub fn role(service: &str, role: &str) -> std::io::Result<Self> {
        Ok(Self::new(
            service,
            Program::Role {
                exe: std::env::current_exe()?,
                role: role.to_string(),
            },
        ))
    }

    /// Sets an environment variable for the service's processes.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Backoff before restarting an instance that died before it served:
    /// `initial`, doubling with each such death in a row, at most `max`
    /// (defaults 10 ms and 1 s). An instance that answered a handshake is
    /// replaced at once.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = (initial, max.max(initial));
        self
    }

    /// The restart-intensity limit: more than `restarts` restarts within
    /// `period` stop the supervisor with an error (default 10 in 10 s).
    ///
    /// `restarts == 0` means never restart: the first death of an instance
    /// (or the first start that fails) fails the supervisor, naming that
    /// exit. A `period` of 0 is refused by [`spawn`](Self::spawn).
    #[must_use]
    pub fn intensity(mut self, restarts: u32, period: Duration) -> Self {
        self.intensity = (restarts, period);
        self
    }

    /// Keeps `n` spare instances started and handshaken (default 0).
    #[must_use]
    pub fn standby(mut self, n: usize) -> Self {
        self.standby = n;
        self
    }

    /// How many times one idempotent call is sent again after its server
    /// died (default 3), within its deadline.
    #[must_use]
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Options of the clients' connections (wait strategy, handshake and
    /// call timeouts). The handshake timeout bounds the handshake with a
    /// spare made in the background; a call that connects to an instance
    /// waits for its handshake as long as the call may (an instance still
    /// starting is waited for), then fails with `Timeout`.
    #[must_use]
    pub fn client_options(mut self, o: ClientOptions) -> Self {
        self.client = o;
        self
    }

    /// Has the service's instances listen on the stream `address` too
    /// (`"unix-stream:@svc"`, `"unix:/path"`, `"tcp://127.0.0.1:7000"`, or
    /// an [`Endpoint`] with the clients' TLS configuration), and the
    /// supervisor's clients connect there, over the socket transport,
    /// instead of over a socketpair handed down to the instance.
    ///
    /// [`spawn`](Self::spawn) binds the address, once (a TCP port 0 picks
    /// a port there, and the clients connect to it), and every instance
    /// accepts on that one socket, sent to it first thing on its control
    /// socket and taken by
    /// [`ServerBuilder::supervised`](crate::rpc::ServerBuilder::supervised)
    /// (the address itself is in [`ENV_LISTEN`](super::ENV_LISTEN)). So a
    /// successor never waits for, or fails on, a predecessor that has not
    /// let the address go yet (still exiting, or hung), and a client that
    /// connects while no instance runs waits in the socket's backlog
    /// instead of being refused. Its server's policy must admit the
    /// clients (over TCP: `Policy::Anyone`, or TLS and
    /// `Policy::Certificate`). Over a Unix socket the kernel gives each
    /// client the credentials of the process that made the socket listen:
    /// the supervisor's, in [`Client::server`](crate::rpc::Client::server).
    ///
    /// Every instance holds the socket, so one can shut it down for all:
    /// the supervisor binds the address again before it starts the next
    /// instance (an `EADDRINUSE` there, the old socket still held by an
    /// instance on its way out, is retried after the backoff, as a start
    /// that failed; any other error fails the service with
    /// [`ServiceFailure::Listen`](super::ServiceFailure::Listen)). It
    /// watches the socket for that hang-up, and replaces the serving
    /// instance, which no new client can reach, as soon as it sees one.
    ///
    /// Spares ([`standby`](Self::standby)) cannot share one address with
    /// the instance serving: `spawn` refuses both. Idempotent calls are
    /// retried after a crash as over shared memory, except calls that sent
    /// pool blobs: a stream copies those out when it sends them, so there
    /// is nothing left to send again (they fail with `PeerDied`).
    #[must_use]
    pub fn address(mut self, address: impl IntoEndpoint) -> Self {
        match address.into_endpoint() {
            Ok(e) if e.is_stream() => self.address = Some(e),
            Ok(e) => {
                self.bad_address.get_or_insert(AddressError::UnknownScheme {
                    address: e.to_string(),
                });
            }
            Err(e) => {
                self.bad_address.get_or_insert(e);
            }
        }
        self
    }

    /// How long a retired instance may take to exit before it is killed
    /// (default 2 s).
    #[must_use]
    pub fn grace(mut self, d: Duration) -> Self {
        self.grace = d;
        self
    }

    /// Starts the monitor thread, which starts the service (and the
    /// spares) at once.
    ///
    /// # Errors
    ///
    /// A bad configuration (empty service name, an intensity period of
    /// 0); an [`address`](Self::address) that cannot be listened on
    /// ([`SuperviseError::Listen`]: in use, say); the OS refusing the
    /// counters' memfd, an eventfd or the thread.
    /// A service that cannot be started shows up as failed calls, with the
    /// reason: at once for a program that cannot run at all (missing, not
    /// executable), after the intensity limit for a passing shortage
    /// (`EAGAIN`, `ENOMEM`, `EMFILE`, `ENFILE`, `EINTR`), which is retried
    /// with the backoff.
    pub fn spawn(mut self) -> Result<Supervisor, SuperviseError> {
        if self.service.is_empty() || self.service.contains(['\0', '/']) {
            return Err(SuperviseError::BadName {
                name: self.service.clone(),
            });
        }
        if self.intensity.1.is_zero() {
            return Err(SuperviseError::ZeroPeriod);
        }
        if let Some(e) = self.bad_address.take() {
            return Err(SuperviseError::Address(e));
        }
        if self.address.is_some() && self.standby > 0 {
            return Err(SuperviseError::StandbyOnAddress);
        }
        // The address is bound here, once: every instance takes this
        // socket over (see `address`). A TCP port 0 is picked now, and
        // clients connect to the port picked.
        let listener = match self.address.as_mut() {
            Some(e) => {
                let a = e.stream_address().cloned().ok_or_else(|| {
                    SuperviseError::Address(AddressError::UnknownScheme {
                        address: e.to_string(),
                    })
                })?;
                let l = super::bind_address(&a).map_err(|source| SuperviseError::Listen {
                    service: self.service.clone(),
                    source,
                })?;
                if let Some(bound) = l.addresses().pop() {
                    e.set_stream_address(bound);
                }
                Some(l)
            }
            None => None,
        };
        let io = |source| SuperviseError::Io {
            service: self.service.clone(),
            source,
        };
        let stats = StatsBlock::create(&self.service, self.standby).map_err(io)?;
        let wake = EventFd::new().map_err(io)?;
        let inner = Arc::new(Inner {
            config: self,
            listener: Mutex::new(listener),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            wake,
            stats,
            premade: Mutex::new(Premade::default()),
            graveyard: Mutex::new(Vec::new()),
            burying: std::sync::atomic::AtomicBool::new(false),
            helpers: Mutex::new(Some(Vec::new())),
        });
        let sh = inner.clone();
        let monitor = std::thread::Builder::new()
            .name(format!("isocall-supervise-{}", inner.config.service))
            .spawn(move || Monitor::new(sh).run())
            .map_err(|source| SuperviseError::Io {
                service: inner.config.service.clone(),
                source,
            })?;
        Ok(Supervisor {
            inner,
            monitor: Some(monitor),
        })
    }
}
