//! Supervision figures: what a restart costs beside what starting a
//! process costs.
//!
//! - `floor.spawn`: spawn and reap the service binary (this executable,
//!   entered in a role that exits before any isocall work), ns.
//! - `supervise.recovery`: from `SIGKILL` of the serving instance to the
//!   first successful (idempotent, retried) call on its successor, ns.
//! - `supervise.recovery.standby`: the same with one warm spare.
//!
//! The supervisor runs in the bench process; the services are its
//! children, allowed on every CPU the bench may use.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isocall_engine::rpc::{CallCtx, ServerBuilder};
use isocall_engine::supervise::{ENV_ROLE, ENV_SERVICE, ENV_SUPERVISOR_PID, Supervisor};
use rustix::process::{Pid, Signal, kill_process};

use super::Res;
use super::call::{ArchivedBytes64, Bytes64, answer, check, request};
use super::measure::{Budget, Measured, timed_samples};
use super::peer;

/// Role that exits at once (the spawn floor).
const NOTHING: &str = "bench-nothing";
/// Role that serves `echo64`, declared idempotent.
const ECHO: &str = "bench-echo";

/// Most samples per round (each takes about a millisecond or more).
const MAX_SAMPLES: u64 = 200;

/// Runs this process in a supervised bench role, if it was started in one;
/// returns only if it was not.
pub fn serve_role() {
    let Some(role) = isocall_engine::supervise::role() else {
        return;
    };
    let code = match role.as_str() {
        NOTHING => 0,
        ECHO => match serve_echo() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("isocall bench service: {e}");
                1
            }
        },
        other => {
            eprintln!("isocall: unknown service role {other:?}");
            2
        }
    };
    std::process::exit(code);
}

fn serve_echo() -> Res<()> {
    ServerBuilder::supervised()?
        .idempotent_method::<Bytes64, Bytes64, _>(
            "echo64",
            |r: &ArchivedBytes64, _: &mut CallCtx<'_>| Ok(answer(&r.data)),
        )
        .spawn()?
        .run();
    Ok(())
}

/// Undoes the bench's pin for this thread while `f` runs, so that the
/// processes it starts may use every CPU.
fn unpinned<T>(f: impl FnOnce() -> Res<T>) -> Res<T> {
    let pinned = peer::cpus();
    if let Some((a, b)) = pinned {
        isocall_engine::sys::allow_current_thread(&[a, b])?;
    }
    let out = f();
    if let Some((a, _)) = pinned {
        peer::pin(Some(a));
    }
    out
}

/// `floor.spawn`.
pub fn floor_spawn(budget: &Budget) -> Res<Measured> {
    let exe = std::env::current_exe()?;
    let me = std::process::id().to_string();
    unpinned(|| {
        timed_samples(budget, MAX_SAMPLES, || {
            let t0 = Instant::now();
            let status = Command::new(&exe)
                .env(ENV_ROLE, NOTHING)
                .env(ENV_SERVICE, "bench")
                .env(ENV_SUPERVISOR_PID, &me)
                .stdin(Stdio::null())
                .status()?;
            let took = t0.elapsed();
            if !status.success() {
                return Err(format!("the service binary exited with {status}").into());
            }
            Ok(took)
        })
    })
}

/// `supervise.recovery` (`standby` 0) and `supervise.recovery.standby` (1).
pub fn recovery(budget: &Budget, standby: usize) -> Res<Measured> {
    unpinned(|| {
        let sup = Supervisor::role("bench-recovery", ECHO)?
            .intensity(u32::MAX, Duration::from_secs(1))
            .standby(standby)
            .spawn()?;
        let mut client = sup.client();
        let echo = client.method("echo64")?;
        if !echo.is_idempotent() {
            return Err("echo64 should be declared idempotent".into());
        }
        let mut seq = 0u64;
        let mut call = |client: &mut isocall_engine::supervise::SupervisedClient| -> Res<()> {
            seq += 1;
            let s = seq;
            let ok = client
                .call::<Bytes64, Bytes64, _>(echo, &request(s), |r| check(&r.data, s).is_ok())?;
            if ok {
                Ok(())
            } else {
                Err(format!("wrong reply to call {s}").into())
            }
        };
        timed_samples(budget, MAX_SAMPLES, || {
            // The steady state of a long-running service: spares ready, a
            // segment made ahead, the last crash cleaned up.
            if !sup.wait_idle(Duration::from_secs(10)) {
                return Err("the supervisor did not settle within 10 s".into());
            }
            // Connected to the serving instance, which has answered.
            call(&mut client)?;
            let pid = client.server_pid().ok_or("not connected")?;
            let pid = Pid::from_raw(pid as i32).ok_or("pid 0")?;
            let t0 = Instant::now();
            kill_process(pid, Signal::KILL)?;
            call(&mut client)?;
            Ok(t0.elapsed())
        })
    })
}
