//! Supervision figures: what a restart costs beside what starting a
//! process costs.
//!
//! - `floor.spawn`: spawn and reap the service binary (this executable,
//!   entered in a role that exits before any isocall work), ns.
//! - `supervise.recovery`: from a crash of the serving instance inside a
//!   call (its handler kills its own process with `SIGKILL`: a crash, as
//!   the seed's `snprintf` has, without a core dump in the timing) to that
//!   call's answer from the successor, to which the client sends it again
//!   (the method is idempotent), ns.
//! - `supervise.recovery.standby`: the same with one warm spare.
//! - `supervise.recovery.standby.kill`: with one warm spare, from a
//!   `SIGKILL` sent from outside (by the measuring thread, between calls)
//!   to the first answered call on the successor.
//!
//! The supervisor runs in the bench process; the services are its
//! children, allowed on every CPU the bench may use.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isocall_engine::rpc::{CallCtx, Method, ServerBuilder};
use isocall_engine::supervise::{
    ENV_ROLE, ENV_SERVICE, ENV_SUPERVISOR_PID, SupervisedClient, Supervisor,
};
use rustix::process::{Pid, Signal, kill_process};

use super::Res;
use super::measure::{Budget, Measured, timed_samples};
use super::peer;

/// Role that exits at once (the spawn floor).
const NOTHING: &str = "bench-nothing";
/// Role that serves `crash_if`, declared idempotent.
const SERVICE: &str = "bench-crash-if";

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
        SERVICE => match serve() {
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

/// A call that crashes the instance whose pid it names (0: none).
#[derive(rkyv::Archive, rkyv::Serialize, isocall_engine::Schema)]
#[schema(crate = "isocall_engine")]
struct CrashIf {
    pid: u32,
    seq: u64,
}

/// The answer: which instance answered, to which call.
#[derive(rkyv::Archive, rkyv::Serialize, isocall_engine::Schema)]
#[schema(crate = "isocall_engine")]
struct Answered {
    pid: u32,
    seq: u64,
}

/// The bench service's one method, idempotent (retried on a crash).
const CRASH_IF: Method<CrashIf, Answered> = Method::new("crash_if").idempotent();

fn serve() -> Res<()> {
    let me = std::process::id();
    ServerBuilder::supervised()?
        .method(CRASH_IF, move |r: &ArchivedCrashIf, _: &mut CallCtx<'_>| {
            if r.pid.to_native() == me {
                // The crash: nothing after this runs.
                let _ = kill_process(rustix::process::getpid(), Signal::KILL);
            }
            Ok(Answered {
                pid: me,
                seq: r.seq.to_native(),
            })
        })
        .spawn()?
        .run();
    Ok(())
}

/// Undoes the bench's pin for this thread while `f` runs, so that the
/// processes it starts may use every CPU.
fn unpinned<T>(f: impl FnOnce() -> Res<T>) -> Res<T> {
    let pinned = peer::cpus();
    if let Some((a, b)) = pinned {
        isocall_engine::raw::sys::allow_current_thread(&[a, b])?;
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

/// How the serving instance dies in a recovery sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// Its handler kills its own process during the measured call.
    InCall,
    /// The measuring thread sends it `SIGKILL` just before the call.
    Killed,
}

/// `supervise.recovery` (`standby` 0), `supervise.recovery.standby` (1),
/// and with [`Crash::Killed`] `supervise.recovery.standby.kill`.
pub fn recovery(budget: &Budget, standby: usize, crash: Crash) -> Res<Measured> {
    unpinned(|| {
        let service = format!("bench-recovery-{standby}-{crash:?}");
        let sup = Supervisor::role(&service, SERVICE)?
            .intensity(u32::MAX, Duration::from_secs(1))
            .standby(standby)
            .spawn()?;
        let mut client = sup.client();
        let method = client.method(CRASH_IF)?;
        if !method.is_idempotent() {
            return Err("crash_if should be declared idempotent".into());
        }
        let mut seq = 0u64;
        let mut call = |client: &mut SupervisedClient, pid: u32| -> Res<u32> {
            seq += 1;
            let s = seq;
            let r = client.call(method, &CrashIf { pid, seq: s })?;
            let (by, got) = (r.pid.to_native(), r.seq.to_native());
            if got != s || (pid != 0 && by == pid) {
                return Err(format!("wrong answer to call {s}: call {got} by pid {by}").into());
            }
            Ok(by)
        };
        timed_samples(budget, MAX_SAMPLES, || {
            // The steady state of a long-running service: spares ready, a
            // segment made ahead, the last crash cleaned up.
            if !sup.wait_idle(Duration::from_secs(10)) {
                return Err("the supervisor did not settle within 10 s".into());
            }
            // Connected to the serving instance, which has answered.
            let pid = call(&mut client, 0)?;
            let t0 = Instant::now();
            if crash == Crash::Killed {
                let p = Pid::from_raw(pid as i32).ok_or("pid 0")?;
                kill_process(p, Signal::KILL)?;
            }
            call(&mut client, pid)?;
            Ok(t0.elapsed())
        })
    })
}
