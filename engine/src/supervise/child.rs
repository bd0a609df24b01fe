//! The supervised child's side: the role it was started in, and what it
//! takes from its supervisor (the control socket on standard input, the
//! death signal armed against a parent that may already be gone).

use std::os::fd::{AsFd, OwnedFd};

use super::{ENV_ROLE, ENV_SERVICE, ENV_SUPERVISOR_PID};
use crate::sys::is_seqpacket;

/// The service role this process was started in by a
/// [`Supervisor`](super::Supervisor) built with
/// [`SupervisorBuilder::role`](super::SupervisorBuilder::role), if it was: a binary that holds both
/// sides checks this first thing in `main` and, for `Some(role)`, builds
/// its server with `ServerBuilder::supervised()` and serves.
pub fn role() -> Option<String> {
    std::env::var_os(ENV_SUPERVISOR_PID)?;
    std::env::var(ENV_ROLE).ok()
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
    pub(crate) fn take() -> Result<ChildEnv, String> {
        let not_supervised =
            |what: &str| format!("{what}: this process was not started by an isocall Supervisor");
        let service = std::env::var(ENV_SERVICE).map_err(|_| not_supervised(ENV_SERVICE))?;
        let parent: i32 = std::env::var(ENV_SUPERVISOR_PID)
            .ok()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| not_supervised(ENV_SUPERVISOR_PID))?;
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
        // Armed now; a supervisor that died before has made us someone
        // else's child.
        let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
        if ppid != parent {
            return Err(format!(
                "the supervisor (pid {parent}) of service {service:?} is gone (parent is now {ppid})"
            ));
        }
        let control = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("standard input: {e}"))?;
        if !is_seqpacket(control.as_fd()) {
            return Err(
                "standard input is not the supervisor's control socket (a SOCK_SEQPACKET socket)"
                    .into(),
            );
        }
        let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
        rustix::stdio::dup2_stdin(&null).map_err(|e| format!("dup2 onto stdin: {e}"))?;
        Ok(ChildEnv { control, service })
    }
}
