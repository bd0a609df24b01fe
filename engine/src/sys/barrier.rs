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

use std::sync::OnceLock;

use rustix::thread::{MembarrierCommand, membarrier, membarrier_query};

/// Registers this process for expedited global barriers (once) and says
/// whether heavy barriers work here. A process must call this before it
/// relies on a peer's heavy barrier to fence it.
pub fn heavy_barrier_available() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let query = membarrier_query();
        query.contains_command(MembarrierCommand::GlobalExpedited)
            && query.contains_command(MembarrierCommand::RegisterGlobalExpedited)
            && membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok()
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
