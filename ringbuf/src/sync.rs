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

/// Asks the CPU to fetch the cache line holding `at` for writing
/// (`prefetchw`), without waiting for it: a later store to the line then
/// finds it owned and commits at once, instead of holding every younger
/// store (and any locked instruction) in the store buffer while the line
/// comes from another core. A hint only: nothing is read or written, and
/// a CPU without the instruction treats it as a no-op. Not on other
/// architectures, nor under loom.
#[inline(always)]
pub fn prefetch_write<T>(at: &T) {
    prefetch::<T, true>(at);
}

/// Asks the CPU to fetch the cache line holding `at` for reading
/// (`prefetcht0`), without waiting for it. A hint only, as
/// [`prefetch_write`].
#[inline(always)]
pub fn prefetch_read<T>(at: &T) {
    prefetch::<T, false>(at);
}

#[inline(always)]
fn prefetch<T, const WRITE: bool>(at: &T) {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    #[allow(unsafe_code)]
    // SAFETY: a prefetch neither reads nor writes memory as the program
    // sees it and never faults (a hint on any address); `at` is a live
    // reference anyway. It touches no register but its operand and no
    // flags, and needs no stack.
    unsafe {
        let p = at as *const T;
        if WRITE {
            core::arch::asm!("prefetchw byte ptr [{p}]", p = in(reg) p,
                options(nostack, preserves_flags, readonly));
        } else {
            core::arch::asm!("prefetcht0 byte ptr [{p}]", p = in(reg) p,
                options(nostack, preserves_flags, readonly));
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom))))]
    let _ = at;
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
