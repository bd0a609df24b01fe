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
//! 1,000 barriers (916-1,000 when it registered on CPU 1), and a litmus test
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
use std::time::{Duration, Instant};

use rustix::process::{
    Pid, Signal, WaitOptions, getpid, getppid, kill_process, pidfd_send_signal,
    set_parent_process_death_signal, waitpid,
};
use rustix::thread::{
    CpuSet, MembarrierCommand, membarrier, membarrier_query, sched_getaffinity, sched_setaffinity,
};

use super::PidFd;

/// Longest the CPU visit may take (under a millisecond on a 2-CPU VM):
/// past it the visit is abandoned and heavy barriers are reported
/// unavailable.
const VISIT_LIMIT: Duration = Duration::from_secs(2);

/// Registers this process for expedited global barriers (once) and says
/// whether heavy barriers reach every thread of it. A process must call
/// this before it relies on a peer's heavy barrier to fence it.
///
/// The first call forks a child process that visits every CPU (see the
/// module's doc): under a millisecond in all on a 2-CPU VM, more with more
/// CPUs (one migration each) and a larger address space (the fork copies
/// its page tables). Call it early, as the server, channel and subscriber
/// builders and the client's connect do, while the process has few
/// threads and little memory. `false` also when the visit cannot be made:
/// no pidfd to watch the child, a process whose children are reaped by
/// someone else (`SIGCHLD` ignored, a `waitpid(-1)` loop), or a CPU that
/// the child cannot get onto within 2 s (a real-time thread spinning
/// there). Then this process's rings fence on both sides: correct, and a
/// little slower.
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
/// could not run on one of the CPUs within [`VISIT_LIMIT`], or if this
/// process cannot watch it (no pidfd).
#[allow(unsafe_code)] // `fork`: see SAFETY
fn visit_every_cpu() -> io::Result<()> {
    let parent = getpid();
    // Every signal stays blocked across the fork, and so in the child,
    // which inherits the mask: none of this process's handlers runs there
    // (a signal to the process group during the visit waits, and dies
    // with the child).
    let Some(mask) = SignalsBlocked::now() else {
        return Err(io::Error::other("the signal mask could not be set"));
    };
    // The child may hold copies of locks other threads held and memory
    // they were changing; glibc runs the process's `pthread_atfork`
    // handlers around the fork, as for any fork.
    // SAFETY: the child only runs `visit_and_exit`, which is
    // async-signal-safe (see its doc): it touches none of that state and
    // never returns into the parent's code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        visit_and_exit(parent);
    }
    let forked = if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    };
    drop(mask);
    let Some(child) = Pid::from_raw(forked?) else {
        return Err(io::Error::other("fork returned pid 0 to the parent"));
    };
    let watched = watch_visit(child);
    loop {
        match waitpid(Some(child), WaitOptions::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(Some((_, status))) if status.exit_status() == Some(0) => return watched,
            Ok(_) => return Err(io::Error::other("the CPU visit did not reach every CPU")),
        }
    }
}

/// Waits for the visiting `child` to exit, for [`VISIT_LIMIT`] at most (a
/// CPU held by a real-time thread that never yields would keep it from
/// ever running there), and kills it past that. Without a pidfd (Linux
/// before 5.3, a sandbox, no descriptor left) it is killed at once: it
/// cannot be waited for with a limit.
fn watch_visit(child: Pid) -> io::Result<()> {
    let deadline = Instant::now() + VISIT_LIMIT;
    let Ok(fd) = PidFd::open(child.as_raw_pid().unsigned_abs()) else {
        // Not reaped yet, so the pid is still the child's.
        let _ = kill_process(child, Signal::KILL);
        return Err(io::Error::other("no pidfd to watch the CPU visit"));
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // `false` also when a signal cut the wait short: look again.
        match fd.wait_exit(Some(left)) {
            Ok(true) => return Ok(()),
            Ok(false) if !left.is_zero() => continue,
            _ => {
                let _ = pidfd_send_signal(&fd, Signal::KILL);
                return Err(io::Error::other("the CPU visit took too long"));
            }
        }
    }
}

/// Every signal blocked in the calling thread until dropped, which restores
/// the mask it found.
struct SignalsBlocked(libc::sigset_t);

impl SignalsBlocked {
    /// Blocks every signal; `None` if the mask could not be changed.
    #[allow(unsafe_code)] // `sigfillset`, `pthread_sigmask`: see SAFETY
    fn now() -> Option<SignalsBlocked> {
        let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: `sigfillset` initialises `all` (it cannot fail on a valid
        // pointer); `pthread_sigmask` reads it and, when it returns 0,
        // has written the previous mask to `old`, which is read only then.
        unsafe {
            libc::sigfillset(all.as_mut_ptr());
            (libc::pthread_sigmask(libc::SIG_BLOCK, all.as_ptr(), old.as_mut_ptr()) == 0)
                .then(|| SignalsBlocked(old.assume_init()))
        }
    }
}

impl Drop for SignalsBlocked {
    #[allow(unsafe_code)] // `pthread_sigmask`: see SAFETY
    fn drop(&mut self) {
        // SAFETY: `self.0` is the mask `pthread_sigmask` wrote; restoring it
        // reads it only.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

/// The child of [`visit_every_cpu`]: widens its affinity to every CPU its
/// cpuset allows, runs on each in turn, and exits (0 if it ran on all).
/// It dies with `parent` if the parent dies first.
///
/// Async-signal-safe, as a child forked from a threaded process must be:
/// it makes system calls only (rustix's, raw `syscall` instructions on
/// Linux, and `_exit`) on values on its own stack, allocates nothing,
/// takes no lock, runs no destructor and cannot panic (its indexes are
/// below `CpuSet::MAX_CPU`).
#[allow(unsafe_code)] // `_exit`: see SAFETY
fn visit_and_exit(parent: Pid) -> ! {
    let orphan =
        set_parent_process_death_signal(Some(Signal::KILL)).is_err() || getppid() != Some(parent);
    let mut every = CpuSet::new();
    for cpu in 0..CpuSet::MAX_CPU {
        every.set(cpu);
    }
    // The kernel narrows the mask to the CPUs the cpuset allows, which are
    // the ones the process's threads can run on (unless threads sit in
    // cpusets of their own, which the visit does not see).
    let visited = !orphan
        && sched_setaffinity(None, &every).is_ok()
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
