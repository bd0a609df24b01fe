//! The atomics the ring uses: `core`'s normally, loom's under `--cfg loom`,
//! so that the same ring code runs in the loom model checker.

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};

#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};

/// The hot side of an asymmetric handshake: a compiler-only fence, which is
/// enough when the other side issues a heavy barrier (`membarrier`) before
/// relying on it. Loom cannot model a heavy barrier, so there it is a
/// `SeqCst` fence.
#[inline]
pub fn light_fence() {
    #[cfg(loom)]
    fence(Ordering::SeqCst);
    #[cfg(not(loom))]
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// Hint to the CPU that we are spinning (loom: yield to the model's scheduler).
#[inline]
pub fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// Gives the CPU to another runnable thread, if there is one (loom: yield
/// to the model's scheduler).
#[inline]
pub fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex};

#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex};
