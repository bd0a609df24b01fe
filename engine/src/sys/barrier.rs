//! Asymmetric memory barriers across processes: `membarrier(2)` with
//! `MEMBARRIER_CMD_GLOBAL_EXPEDITED`.
//!
//! A Dekker-style handshake ("publish, then look for a sleeper" against
//! "announce sleep, then look for work") needs a full fence on both sides.
//! When one side is hot (the producer, once per frame) and the other rare
//! (a side about to sleep), the hot side can use a compiler-only fence if
//! the rare side issues a *heavy* barrier: `membarrier` makes every thread
//! of every registered process that is running execute a full memory
//! barrier, which pairs with the compiler fences of the hot side. Both
//! processes must have registered (see [`heavy_barrier_available`]).
//!
//! # A gap in the kernel's registration, and how it is closed
//!
//! `GLOBAL_EXPEDITED` interrupts a CPU only if that CPU's run queue carries
//! the registered flag, and the run queue takes the flag from a process
//! only when it switches to that process *from another address space*
//! (or, at registration, if the process is running there right then).
//! A CPU that went idle after running one of our threads keeps our address
//! space lazily, so when our thread comes back to it from idle nothing
//! updates the flag: if we registered meanwhile, that CPU is never
//! interrupted, and a compiler fence there pairs with nothing, until some
//! other process happens to run on it. Linux 6.18 does this
//! (`membarrier_switch_mm` returns early when the previous address space
//! is ours; `sync_runqueues_membarrier_state` updates only CPUs whose
//! current task runs ours). Measured here: a process that ran on CPU 1,
//! moved to CPU 0, registered and moved back took no interrupt on CPU 1 in
//! 1,000 barriers (1,000 when it registered on CPU 1), and a litmus test
//! of the sleep handshake failed up to 56 times in a million rounds that
//! way, never otherwise (docs/performance.md, "A CPU the barrier does not
//! reach").
//!
//! So registration ends with a short-lived child process that runs once on
//! every CPU this process may use ([`visit_every_cpu`]): on each, the switch
//! to the child, and the next switch back to us, come from another address
//! space, so every run queue takes our flag. Only then does
//! [`heavy_barrier_available`] answer true; if the visit cannot be made
//! (no `fork`, a CPU refused), it answers false and both sides of every
//! handshake fence for themselves.

use std::io;
use std::sync::OnceLock;
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};
use rustix::thread::{
    CpuSet, MembarrierCommand, membarrier, membarrier_query, sched_getaffinity, sched_setaffinity,
};

use super::PidFd;

/// Longest the CPU visit may take (it takes well under a millisecond on an
/// ordinary machine): past it the visit is abandoned and heavy barriers
/// are reported unavailable.
const VISIT_LIMIT: Duration = Duration::from_secs(2);

/// Registers this process for expedited global barriers (once) and says
/// whether heavy barriers reach every thread of it. A process must call
/// this before it relies on a peer's heavy barrier to fence it.
///
/// The first call forks a child process that lives for about a millisecond
/// (see the module's doc): call it early, as the server, channel and
/// subscriber builders do, while the process has few threads and a small
/// address space. A process whose children are reaped by someone else
/// (`SIGCHLD` ignored, a `waitpid(-1)` loop) may get `false`, and so does
/// one with a CPU that the child cannot get onto within 2 s
/// (a real-time thread spinning there): then its rings fence on both
/// sides, correct and a little slower.
pub fn heavy_barrier_available() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let query = membarrier_query();
        query.contains_command(MembarrierCommand::GlobalExpedited)
            && query.contains_command(MembarrierCommand::RegisterGlobalExpedited)
            && membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok()
            && visit_every_cpu().is_ok()
    })
}

/// Issues a full memory barrier on every running thread of every process
/// registered for expedited global barriers (and this one). Falls back to a
/// `SeqCst` fence if that fails, which is only correct if the peer also
/// fences: callers use it only where [`heavy_barrier_available`] was true.
pub fn heavy_barrier() {
    if membarrier(MembarrierCommand::GlobalExpedited).is_err() {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs a child process once on every CPU this process may use and reaps
/// it, so that every CPU's run queue switches to another address space and
/// back before our threads run there again (see the module's doc).
///
/// # Errors
///
/// The OS's error if the child cannot be forked or reaped; `Other` if it
/// could not run on one of the CPUs.
#[allow(unsafe_code)] // `fork`: see SAFETY
fn visit_every_cpu() -> io::Result<()> {
    // SAFETY: `fork` duplicates only the calling thread. The child runs
    // `visit_and_exit`, which makes system calls on its own stack values
    // and exits with `_exit`: it allocates nothing, takes no lock that
    // another thread may have held at the fork, runs no destructor and
    // never returns into the parent's code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => return Err(io::Error::last_os_error()),
        0 => visit_and_exit(),
        _ => {}
    }
    let child = Pid::from_raw(pid).ok_or_else(|| io::Error::other("fork returned no pid"))?;
    // A CPU held by a real-time thread that never yields would keep the
    // child from ever running there: give up (and fence on both sides)
    // rather than wait forever. Without pidfds (Linux < 5.3) the wait
    // below is unbounded.
    let exited = PidFd::open(pid.unsigned_abs()).and_then(|fd| fd.wait_exit(Some(VISIT_LIMIT)));
    if matches!(exited, Ok(false)) {
        let _ = kill_process(child, Signal::KILL);
    }
    loop {
        match waitpid(Some(child), WaitOptions::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(Some((_, status))) if status.exit_status() == Some(0) => return Ok(()),
            Ok(_) => return Err(io::Error::other("the CPU visit did not reach every CPU")),
        }
    }
}

/// The child of [`visit_every_cpu`]: widens its affinity to every CPU its
/// cpuset allows, runs on each in turn, and exits (0 if it ran on all).
#[allow(unsafe_code)] // `_exit`: see SAFETY
fn visit_and_exit() -> ! {
    let mut every = CpuSet::new();
    for cpu in 0..CpuSet::MAX_CPU {
        every.set(cpu);
    }
    // The kernel narrows the mask to the CPUs the cpuset allows, which are
    // the only ones any thread of ours can run on.
    let visited = sched_setaffinity(None, &every).is_ok()
        && sched_getaffinity(None).is_ok_and(|allowed| {
            (0..CpuSet::MAX_CPU)
                .filter(|&cpu| allowed.is_set(cpu))
                .all(|cpu| {
                    let mut one = CpuSet::new();
                    one.set(cpu);
                    // Returns once this process runs on `cpu`.
                    sched_setaffinity(None, &one).is_ok()
                })
        });
    // SAFETY: `_exit` ends the child at once, without running the parent's
    // atexit handlers or flushing its buffers (which belong to the parent).
    unsafe { libc::_exit(if visited { 0 } else { 1 }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_barrier_runs_where_available() {
        if heavy_barrier_available() {
            let t = std::time::Instant::now();
            for _ in 0..100 {
                heavy_barrier();
            }
            eprintln!("heavy barrier: {:?} each", t.elapsed() / 100);
        } else {
            eprintln!("membarrier GLOBAL_EXPEDITED not available here");
        }
    }
}
