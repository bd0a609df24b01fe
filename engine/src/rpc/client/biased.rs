//! [`BiasedLock`]: a lock that the one thread using it takes without a
//! locked instruction, for the receiving half of a
//! [`SharedClient`](super::SharedClient).
//!
//! On x86 every locked instruction waits until the thread's earlier stores
//! have left its store buffer. A caller that pipelines calls through a
//! shared client takes the receiver right after it published a request,
//! and the store that publishes it goes to a line the server is polling:
//! the compare-and-swap that took the receiver waited for that line to
//! cross to the server's core, once per call. On
//! `call.shared.pipelined.1x64.64` that one instruction drew 44 % of the
//! samples of `wait_id` (docs/performance.md, "The shared handle's own
//! cost"); a `Client`, which takes no lock, lets the transfer overlap with
//! its next call.
//!
//! So the lock *biases* itself to a thread that took it many times in a
//! row. That thread then takes it with plain stores: it marks itself
//! inside, then checks that the lock is still biased to it, with only a
//! compiler fence between. Any other thread takes the bias away
//! (*revokes* it) before it may take the lock: it clears the bias, then
//! issues a heavy barrier (`membarrier`, see [`crate::sys::heavy_barrier`])
//! that fences every running thread of the process, then looks whether the
//! owner is inside. Either the owner's mark reached it, or the owner's
//! check sees the bias gone (the asymmetric Dekker handshake the rings'
//! sleep uses). A revocation costs a system call and an interrupt per
//! CPU, so the run of acquisitions that earns a bias doubles with each
//! one: threads that take turns pay for a few revocations, then keep the
//! plain compare-and-swap.
//!
//! Without heavy barriers (see [`crate::sys::heavy_barrier_available`]) the
//! lock is never biased: every acquisition is a compare-and-swap.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering, compiler_fence};

use crossbeam_utils::CachePadded;

/// Acquisitions in a row by one thread that first earn it the bias.
const FIRST_RUN: u32 = 64;
/// The longest run ever asked for (after many revocations).
const LONGEST_RUN: u32 = 1 << 20;

/// A lock that the thread which takes it most takes with plain stores (see
/// the module doc). Released by a plain store either way. No poisoning: a
/// panic while it is held releases it.
pub(crate) struct BiasedLock<T> {
    /// Written by the bias owner on each acquisition and release; on its
    /// own line, which stays in the owner's cache.
    inside: CachePadded<AtomicBool>,
    shared: CachePadded<Shared>,
    value: UnsafeCell<T>,
}

/// The state every thread reads.
struct Shared {
    /// The lock for every thread but the bias owner (compare-and-swap,
    /// released by a plain store); a revoker holds it while it revokes.
    held: AtomicBool,
    /// The token (see [`token`]) of the thread the lock is biased to; 0:
    /// none. Set only by a holder of `held`; cleared only by a holder of
    /// `held` before its heavy barrier.
    bias: AtomicUsize,
    /// Whether heavy barriers reach every thread of the process; without
    /// them the lock is never biased.
    may_bias: bool,
    /// The token of the last thread that took `held`, how many times in a
    /// row, and the run that earns the bias: written only by `held`'s
    /// holder.
    last: AtomicUsize,
    run: AtomicU32,
    earns: AtomicU32,
}

// SAFETY: the lock hands out `&mut T` to one thread at a time (the guard's
// invariant, see `try_lock`), as `Mutex<T>` does, so it may be sent and
// shared when `T` may be sent.
#[allow(unsafe_code)]
unsafe impl<T: Send> Send for BiasedLock<T> {}
// SAFETY: as above: `&T`/`&mut T` only through a guard, one thread's.
#[allow(unsafe_code)]
unsafe impl<T: Send> Sync for BiasedLock<T> {}

thread_local! {
    /// Its address identifies the running thread among the live ones.
    static ANCHOR: u8 = const { 0 };
}

/// A token for the calling thread: never 0, and no two live threads share
/// one (a thread's address in its own thread-local storage). A thread
/// started after another ended may get the ended one's token, and with it
/// a bias left to it: sound, since the ended thread holds nothing.
#[inline(always)]
fn token() -> usize {
    ANCHOR.with(|a| std::ptr::from_ref(a) as usize)
}

/// How a guard holds its lock.
#[derive(Clone, Copy)]
enum Held {
    /// By the bias: `inside` is set.
    Biased,
    /// By `held`.
    Plain,
}

/// Access to a [`BiasedLock`]'s value; releases the lock when dropped.
pub(crate) struct BiasedGuard<'a, T> {
    lock: &'a BiasedLock<T>,
    how: Held,
    /// Makes the guard `Sync` only when `T` is, as `MutexGuard`; and never
    /// `Send`: a biased hold must be released by the thread that took it.
    _t: PhantomData<(&'a mut T, *const ())>,
}

impl<T> BiasedLock<T> {
    /// A free, unbiased lock; it may be biased later only if heavy barriers
    /// reach every thread of this process.
    pub(crate) fn new(value: T) -> BiasedLock<T> {
        BiasedLock::with_bias(value, crate::sys::heavy_barrier_available())
    }

    /// A free, unbiased lock that biases itself only if `may_bias`.
    fn with_bias(value: T, may_bias: bool) -> BiasedLock<T> {
        BiasedLock {
            inside: CachePadded::new(AtomicBool::new(false)),
            shared: CachePadded::new(Shared {
                held: AtomicBool::new(false),
                bias: AtomicUsize::new(0),
                may_bias,
                last: AtomicUsize::new(0),
                run: AtomicU32::new(0),
                earns: AtomicU32::new(FIRST_RUN),
            }),
            value: UnsafeCell::new(value),
        }
    }

    /// The value, if no one holds the lock. A thread other than the bias
    /// owner first revokes the bias (a heavy barrier), even if the owner
    /// holds the lock right then: it fails this time, and the owner's next
    /// acquisition is a compare-and-swap.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<BiasedGuard<'_, T>> {
        let me = token();
        let s = &*self.shared;
        if s.bias.load(Ordering::Relaxed) == me {
            // Only the owner writes `inside`: set means we hold it already
            // (a second guard would alias the first). Acquire: a thread
            // that ended holding our token released the lock here.
            if self.inside.load(Ordering::Acquire) {
                return None;
            }
            self.inside.store(true, Ordering::Relaxed);
            // Pairs with a revoker's heavy barrier (see the module doc):
            // either it sees `inside`, or we see the bias it cleared.
            compiler_fence(Ordering::SeqCst);
            // Acquire: nothing of the value is read before the check (the
            // last holder was this thread, or one we synchronised with
            // when we took `held` and earned the bias).
            if s.bias.load(Ordering::Acquire) == me {
                return Some(self.guard(Held::Biased));
            }
            self.inside.store(false, Ordering::Release);
        }
        self.try_lock_plain(me)
    }

    #[inline(never)]
    fn try_lock_plain(&self, me: usize) -> Option<BiasedGuard<'_, T>> {
        let s = &*self.shared;
        // Plain loads first: a thread that polls a held lock keeps the
        // lines shared instead of taking them (an owner whose bias was
        // revoked while inside holds the lock without `held`).
        if s.held.load(Ordering::Relaxed)
            || (s.bias.load(Ordering::Relaxed) == 0 && self.inside.load(Ordering::Relaxed))
        {
            return None;
        }
        // Acquire: the last holder's writes (its Release store) are seen.
        if s.held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let guard = self.guard(Held::Plain);
        let owner = s.bias.load(Ordering::Relaxed);
        let owner_out = if owner != 0 && owner != me {
            self.revoke()
        } else {
            // An owner whose bias was revoked while it was inside holds
            // the lock until it leaves. Acquire: its writes are seen.
            !self.inside.load(Ordering::Acquire)
        };
        if !owner_out {
            // Dropping the guard lets `held` go.
            return None;
        }
        if s.may_bias {
            self.count_run(me);
        }
        Some(guard)
    }

    /// Takes the bias away (we hold `held`); whether its owner is out, so
    /// the lock is ours. Each revocation doubles the run that earns a bias.
    #[cold]
    fn revoke(&self) -> bool {
        let s = &*self.shared;
        s.bias.store(0, Ordering::Relaxed);
        s.earns.store(
            s.earns
                .load(Ordering::Relaxed)
                .saturating_mul(2)
                .min(LONGEST_RUN),
            Ordering::Relaxed,
        );
        s.run.store(0, Ordering::Relaxed);
        // Every running thread fences: the owner's mark is seen now, or its
        // check after the mark sees the bias gone (see the module doc).
        crate::sys::heavy_barrier();
        // Acquire: the owner's writes under its last hold are seen (its
        // Release store of `inside`).
        !self.inside.load(Ordering::Acquire)
    }

    /// Counts one more acquisition by `me` through `held` (which we hold);
    /// biases the lock to `me` once the run is long enough.
    fn count_run(&self, me: usize) {
        let s = &*self.shared;
        let run = if s.last.load(Ordering::Relaxed) == me {
            s.run.load(Ordering::Relaxed) + 1
        } else {
            s.last.store(me, Ordering::Relaxed);
            1
        };
        if run >= s.earns.load(Ordering::Relaxed) {
            s.run.store(0, Ordering::Relaxed);
            // Released with `held` (Release), before which no one else can
            // look; our own next acquisition reads it in this thread.
            s.bias.store(me, Ordering::Relaxed);
        } else {
            s.run.store(run, Ordering::Relaxed);
        }
    }

    fn guard(&self, how: Held) -> BiasedGuard<'_, T> {
        BiasedGuard {
            lock: self,
            how,
            _t: PhantomData,
        }
    }
}

impl<T> Deref for BiasedGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the lock: either `held`, set by its own
        // compare-exchange and cleared only by its drop, or the bias, whose
        // owner alone sets `inside` (checked clear first, so one guard at a
        // time) while no revoker may take `held` and find `inside` clear.
        // No other reference to the value exists meanwhile.
        #[allow(unsafe_code)]
        unsafe {
            &*self.lock.value.get()
        }
    }
}

impl<T> DerefMut for BiasedGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this borrow the only one
        // through the guard.
        #[allow(unsafe_code)]
        unsafe {
            &mut *self.lock.value.get()
        }
    }
}

impl<T> Drop for BiasedGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // Release, by a plain store: this holder's writes to the value are
        // seen by the next one (a revoker reads `inside` with Acquire).
        match self.how {
            Held::Biased => self.lock.inside.store(false, Ordering::Release),
            Held::Plain => self.lock.shared.held.store(false, Ordering::Release),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BiasedLock, FIRST_RUN, token};

    /// A lock that biases itself: these tests need heavy barriers.
    fn biasing(value: u64) -> BiasedLock<u64> {
        assert!(
            crate::sys::heavy_barrier_available(),
            "heavy barriers (membarrier) are not available here"
        );
        BiasedLock::new(value)
    }

    #[test]
    fn a_lone_thread_earns_the_bias_and_still_holds_it_once() {
        let l = biasing(0);
        for _ in 0..FIRST_RUN {
            *l.try_lock().expect("free") += 1;
        }
        assert_eq!(
            l.shared.bias.load(std::sync::atomic::Ordering::Relaxed),
            token()
        );
        let g = l.try_lock().expect("free, by the bias");
        assert!(l.try_lock().is_none(), "held twice by its owner");
        drop(g);
        assert_eq!(*l.try_lock().expect("free"), u64::from(FIRST_RUN));
    }

    #[test]
    fn another_thread_revokes_the_bias_and_fails_while_the_owner_is_inside() {
        let l = biasing(0);
        for _ in 0..FIRST_RUN {
            drop(l.try_lock().expect("free"));
        }
        let g = l.try_lock().expect("free, by the bias");
        std::thread::scope(|s| {
            s.spawn(|| assert!(l.try_lock().is_none(), "taken from its owner"));
        });
        assert_eq!(l.shared.bias.load(std::sync::atomic::Ordering::Relaxed), 0);
        drop(g);
        std::thread::scope(|s| {
            s.spawn(|| assert!(l.try_lock().is_some(), "free once its owner left"));
        });
    }

    #[test]
    fn threads_counting_under_it_lose_no_increment() {
        const THREADS: u64 = 4;
        const EACH: u64 = 200_000;
        for may_bias in [true, false] {
            let l = if may_bias {
                biasing(0)
            } else {
                BiasedLock::with_bias(0, false)
            };
            std::thread::scope(|s| {
                for t in 0..THREADS {
                    let l = &l;
                    s.spawn(move || {
                        let mut done = 0;
                        while done < EACH {
                            if let Some(mut g) = l.try_lock() {
                                *g += 1;
                                done += 1;
                            }
                            // Long runs by one thread, so the bias is
                            // earned and revoked, again and again.
                            if done % (1_000 * (t + 1)) == 0 {
                                std::thread::yield_now();
                            }
                        }
                    });
                }
            });
            assert_eq!(*l.try_lock().expect("free"), THREADS * EACH);
        }
    }
}
