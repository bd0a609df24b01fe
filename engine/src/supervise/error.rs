//! The supervisor's errors: why it could not start, why it gave up on its
//! service, and what a supervised call fails with.

use std::sync::Arc;
use std::time::Duration;

use crate::rpc::{CallError, ConnectError};

/// How an instance of the service last ended (or failed to start).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum LastExit {
    /// No instance ended yet.
    None,
    /// Instance `pid` exited with `code`.
    Exited {
        /// Its pid.
        pid: u32,
        /// Its exit code.
        code: i32,
    },
    /// Instance `pid` was killed by `signal`.
    Signaled {
        /// Its pid.
        pid: u32,
        /// The signal's number.
        signal: i32,
    },
    /// The last start failed.
    StartFailed(Arc<std::io::Error>),
}

impl std::fmt::Display for LastExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LastExit::None => f.write_str("none"),
            LastExit::Exited { pid, code } => write!(f, "pid {pid} exit status {code}"),
            LastExit::Signaled { pid, signal } => {
                let name = rustix::process::Signal::from_named_raw(*signal)
                    .map(|s| format!(" ({s:?})"))
                    .unwrap_or_default();
                write!(f, "pid {pid} killed by signal {signal}{name}")
            }
            LastExit::StartFailed(e) => write!(f, "cannot be started: {e}"),
        }
    }
}

/// Why the supervisor gave up on its service: every call fails with it
/// from then on.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceFailure {
    /// It restarted too often (the restart-intensity limit).
    #[error(
        "service {service:?} restarted {restarts} times within {within:?} (limit {limit}); giving up. Last exit: {last_exit}"
    )]
    TooManyRestarts {
        /// The service.
        service: String,
        /// Restarts counted within the period.
        restarts: usize,
        /// The period.
        within: Duration,
        /// The limit.
        limit: u32,
        /// How the last instance ended.
        last_exit: LastExit,
    },
    /// Its program cannot be started at all (missing, not executable).
    #[error("service {service:?} cannot be started: {program}: {source}")]
    CannotStart {
        /// The service.
        service: String,
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// An instance that lives refused or broke the handshake.
    #[error("handshake with service {service:?} (pid {pid}): {source}")]
    Handshake {
        /// The service.
        service: String,
        /// The instance.
        pid: u32,
        /// The handshake's error.
        #[source]
        source: Arc<ConnectError>,
    },
    /// The service's stream address, to be bound again after an instance
    /// shut its socket down, cannot be bound for a reason that will not
    /// pass (a name that no longer resolves, say). One still in use is
    /// tried again after the backoff, as a start that failed, and ends in
    /// [`TooManyRestarts`](Self::TooManyRestarts) if it stays so.
    #[error("service {service:?} cannot listen on its address again: {source}")]
    Listen {
        /// The service.
        service: String,
        /// Why.
        #[source]
        source: crate::stream::StreamError,
    },
    /// The supervisor's monitor failed (its poll failed, or it panicked).
    #[error("the supervisor of {service:?} stopped: {cause}")]
    Monitor {
        /// The service.
        service: String,
        /// What happened.
        cause: &'static str,
    },
    /// The supervisor is being dropped.
    #[error("the supervisor of {service:?} is stopping")]
    Stopping {
        /// The service.
        service: String,
    },
}

/// Why a call through a supervised client failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisedError {
    /// The call failed (`PeerDied` for a call that was not retried, a
    /// timeout, an application error, ...).
    #[error(transparent)]
    Call(#[from] CallError),
    /// The supervisor gave up on the service.
    #[error(transparent)]
    Service(#[from] ServiceFailure),
}

impl SupervisedError {
    /// Whether it is a `PeerDied` (the server died during a call that was
    /// not retried).
    pub fn is_peer_died(&self) -> bool {
        matches!(self, SupervisedError::Call(CallError::PeerDied))
    }
}

/// Why a supervisor could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SuperviseError {
    /// The service name is empty or holds `/` or NUL.
    #[error("service name {name:?} must be non-empty, without '/' or NUL")]
    BadName {
        /// The name.
        name: String,
    },
    /// The restart-intensity period is zero.
    #[error("the intensity period must be longer than 0")]
    ZeroPeriod,
    /// The address given is not a stream address.
    #[error("the service's address: {0} (a stream address: tcp://, unix:, unix-stream:)")]
    Address(crate::stream::AddressError),
    /// Spares were asked for with an address: every instance accepts on
    /// the address's one socket, so a spare would take the serving
    /// instance's clients.
    #[error(
        "spares (standby) and an address cannot go together: a spare would accept the serving instance's clients"
    )]
    StandbyOnAddress,
    /// The service's stream address cannot be listened on (in use,
    /// refused, a name that does not resolve). The supervisor binds it
    /// once, before any instance starts, and hands the socket to each.
    #[error("supervisor of {service:?}: {source}")]
    Listen {
        /// The service.
        service: String,
        /// Why.
        #[source]
        source: crate::stream::StreamError,
    },
    /// The OS refused a descriptor, a thread or the first process.
    #[error("supervisor of {service:?}: {source}")]
    Io {
        /// The service.
        service: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
