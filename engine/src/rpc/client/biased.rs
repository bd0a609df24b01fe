//! [`BiasedLock`]: a lock that the one thread using it takes without a
//! locked instruction, for the halves of a [`SharedClient`](super::SharedClient).
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
//! sleep uses).
//!
//! Each thread that ever held the bias marks itself in a flag of its own
//! (up to [`OWNERS`] threads; later ones never get the bias). With one
//! flag for all, a former owner that read the bias just before it was
//! revoked, then lost the CPU, would mark and unmark the flag later, and
//! its unmarking could erase the mark of the owner inside by then: the
//! next revoker would find nobody inside, and two threads would hold the
//! lock.
//!
//! A revocation costs a system call and an interrupt per CPU, so the run
//! of acquisitions that earns a bias doubles with each revocation of a bias
//! that did not last: threads that take turns pay for a few revocations,
//! then keep the plain compare-and-swap. A bias that lasted at least
//! [`PAID_OFF`] times what its revocation cost paid for it (revocations
//! then take under half a percent of the time), and the next one is earned
//! by the first run again: threads that take turns by the time slice (more
//! threads than cores) each get the bias for their slice.
//!
//! Without heavy barriers (see [`crate::sys::heavy_barrier_available`]) the
//! lock is never biased: every acquisition is a compare-and-swap.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, compiler_fence};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

/// Acquisitions in a row by one thread that first earn it the bias.
const FIRST_RUN: u32 = 64;
/// The longest run ever asked for (after many revocations).
const LONGEST_RUN: u32 = 1 << 20;
/// How many times its own revocation's cost a bias must have lasted for
/// the next one to be earned by [`FIRST_RUN`] again.
const PAID_OFF: u32 = 256;
/// The most threads that ever hold a lock's bias (each has a flag).
const OWNERS: usize = 8;
/// The bits of a bias word that name the owner's flag; the rest is the
/// owner's token, whose low bits are clear (see [`Anchor`]).
const FLAG_BITS: usize = OWNERS - 1;

/// A lock that the thread which takes it most takes with plain stores (see
/// the module doc). Released by a plain store either way. No poisoning: a
/// panic while it is held releases it.
pub(crate) struct BiasedLock<T> {
    /// Each bias owner's mark, set while it holds the lock by the bias:
    /// written only by the thread of `Shared::owners` at that index, on a
    /// line of its own, which stays in that thread's cache.
    inside: [CachePadded<AtomicBool>; OWNERS],
    shared: CachePadded<Shared>,
    value: UnsafeCell<T>,
}

/// The state every thread reads.
struct Shared {
    /// The lock for every thread but the bias owner (compare-and-swap,
    /// released by a plain store); a revoker holds it while it revokes.
    /// While a thread holds it the lock is biased to no one.
    held: AtomicBool,
    /// The owner's token with the index of its flag in the low bits; 0:
    /// none. Written only by a holder of `held`: cleared when it takes
    /// `held` (by a revocation: before its heavy barrier), set when it
    /// lets go of `held` having earned the bias.
    bias: AtomicUsize,
    /// Whether heavy barriers reach every thread of the process; without
    /// them the lock is never biased.
    may_bias: bool,
    /// The token of the thread each flag belongs to (0: none yet); given
    /// by a holder of `held`, never taken back (a thread that ended leaves
    /// its flag to a later thread given the same token).
    owners: [AtomicUsize; OWNERS],
    /// 1 + the flag of an owner whose bias was revoked while it was
    /// inside; 0: none. It holds the lock until it leaves, and `held`'s
    /// next holder waits for that. Written only by `held`'s holder.
    revoked: AtomicUsize,
    /// The token of the last thread that took `held`, how many times in a
    /// row, and the run that earns the bias: written only by `held`'s
    /// holder.
    last: AtomicUsize,
    run: AtomicU32,
    earns: AtomicU32,
    /// When the bias was last given (see [`now_ns`]); written only by
    /// `held`'s holder.
    granted: AtomicU64,
}

/// Nanoseconds on a monotonic clock since this process first asked.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let d = EPOCH.get_or_init(Instant::now).elapsed();
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// SAFETY: the lock hands out `&mut T` to one thread at a time (the guard's
// invariant, see `try_lock`), as `Mutex<T>` does, so it may be sent and
// shared when `T` may be sent.
#[allow(unsafe_code)]
unsafe impl<T: Send> Send for BiasedLock<T> {}
// SAFETY: as above: `&T`/`&mut T` only through a guard, one thread's.
#[allow(unsafe_code)]
unsafe impl<T: Send> Sync for BiasedLock<T> {}

/// A thread-local whose address names its thread: aligned so that the
/// address's low bits are free for a flag index.
#[repr(align(8))]
struct Anchor(#[allow(dead_code)] u8);

const _: () = assert!(std::mem::align_of::<Anchor>() > FLAG_BITS);

thread_local! {
    static ANCHOR: Anchor = const { Anchor(0) };
}

/// A token for the calling thread: never 0, low bits clear, and no two
/// live threads share one (a thread's address in its own thread-local
/// storage). A thread started after another ended may get the ended one's
/// token, and with it its flag and a bias left to it: sound, since the
/// ended thread holds nothing.
#[inline(always)]
fn token() -> usize {
    ANCHOR.with(|a| std::ptr::from_ref(a) as usize)
}

/// How a guard holds its lock.
#[derive(Clone, Copy)]
enum Held {
    /// By the bias: the owner's flag at this index is set.
    Biased(usize),
    /// By `held`; the bias word to set on release (0: none earned).
    Plain(usize),
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
            inside: std::array::from_fn(|_| CachePadded::new(AtomicBool::new(false))),
            shared: CachePadded::new(Shared {
                held: AtomicBool::new(false),
                bias: AtomicUsize::new(0),
                may_bias,
                owners: std::array::from_fn(|_| AtomicUsize::new(0)),
                revoked: AtomicUsize::new(0),
                last: AtomicUsize::new(0),
                run: AtomicU32::new(0),
                earns: AtomicU32::new(FIRST_RUN),
                granted: AtomicU64::new(0),
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
        let bias = s.bias.load(Ordering::Relaxed);
        if bias & !FLAG_BITS == me {
            let flag = &*self.inside[bias & FLAG_BITS];
            // Only this thread writes its flag: set means it holds the lock
            // already (a second guard would alias the first). Acquire: a
            // thread that ended with our token released the lock here.
            if flag.load(Ordering::Acquire) {
                return None;
            }
            // Where an owner may lose the CPU to a revoker (see the module
            // doc): the tests make it happen here.
            #[cfg(test)]
            tests::between_read_and_mark();
            flag.store(true, Ordering::Relaxed);
            // Pairs with a revoker's heavy barrier (see the module doc):
            // either it sees the flag, or we see the bias it cleared.
            compiler_fence(Ordering::SeqCst);
            // Acquire: nothing of the value is read before the check (the
            // last holder was this thread, or one we synchronised with
            // when we took `held` and earned the bias).
            if s.bias.load(Ordering::Acquire) == bias {
                return Some(self.guard(Held::Biased(bias & FLAG_BITS)));
            }
            flag.store(false, Ordering::Release);
        }
        self.try_lock_plain(me)
    }

    /// The value, once the lock is free: spins, then yields, then naps
    /// (10 µs, doubling to 1 ms) and looks again, as a release wakes
    /// nobody. The long waits are for a holder that waits for room in a
    /// full ring, which take as long as the server does anyway.
    #[inline]
    pub(crate) fn lock(&self) -> BiasedGuard<'_, T> {
        if let Some(g) = self.try_lock() {
            return g;
        }
        self.lock_slow()
    }

    #[inline(never)]
    fn lock_slow(&self) -> BiasedGuard<'_, T> {
        let mut turns = 0u32;
        let mut nap = Duration::from_micros(10);
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            turns = turns.saturating_add(1);
            if turns < 128 {
                std::hint::spin_loop();
            } else if turns < 256 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(1));
            }
        }
    }

    /// The value, through a unique borrow (no one else can hold the lock).
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    #[inline(never)]
    fn try_lock_plain(&self, me: usize) -> Option<BiasedGuard<'_, T>> {
        let s = &*self.shared;
        // Plain loads first: a thread that polls a held lock keeps the
        // lines shared instead of taking them.
        if s.held.load(Ordering::Relaxed) || self.revoked_inside(Ordering::Relaxed) {
            return None;
        }
        // Acquire: the last holder's writes (its Release store) are seen.
        if s.held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        // Dropped, it lets `held` go (earning nothing).
        let mut guard = self.guard(Held::Plain(0));
        let bias = s.bias.load(Ordering::Relaxed);
        let out = if bias == 0 {
            // An owner whose bias was revoked while it was inside holds
            // the lock until it leaves. Acquire: its writes are seen.
            !self.revoked_inside(Ordering::Acquire)
        } else if bias & !FLAG_BITS != me {
            self.revoke(bias)
        } else {
            // Our own bias, yet our fast path failed: we may be inside by
            // it. Else we hold `held`, unbiased while we do (a second
            // try from this thread must not pass by the bias).
            let out = !self.inside[bias & FLAG_BITS].load(Ordering::Acquire);
            if out {
                s.bias.store(0, Ordering::Relaxed);
            }
            out
        };
        if !out {
            return None;
        }
        s.revoked.store(0, Ordering::Relaxed);
        if s.may_bias {
            guard.how = Held::Plain(self.count_run(me));
        }
        Some(guard)
    }

    /// Whether the owner whose bias was revoked while it was inside (if
    /// any) is inside still.
    #[inline]
    fn revoked_inside(&self, order: Ordering) -> bool {
        match self.shared.revoked.load(Ordering::Relaxed) {
            0 => false,
            r => self.inside[(r - 1) & FLAG_BITS].load(order),
        }
    }

    /// Takes the bias word `bias` away (we hold `held`); whether its owner
    /// is out, so the lock is ours. A revocation doubles the run that
    /// earns a bias, unless the bias paid for it (see the module doc).
    #[cold]
    fn revoke(&self, bias: usize) -> bool {
        let s = &*self.shared;
        s.bias.store(0, Ordering::Relaxed);
        s.run.store(0, Ordering::Relaxed);
        let start = now_ns();
        // Every running thread fences: the owner's mark is seen now, or its
        // check after the mark sees the bias gone (see the module doc).
        crate::sys::heavy_barrier();
        let cost = now_ns().saturating_sub(start).max(1);
        let lasted = start.saturating_sub(s.granted.load(Ordering::Relaxed));
        let earns = if lasted >= cost.saturating_mul(u64::from(PAID_OFF)) {
            FIRST_RUN
        } else {
            s.earns
                .load(Ordering::Relaxed)
                .saturating_mul(2)
                .min(LONGEST_RUN)
        };
        s.earns.store(earns, Ordering::Relaxed);
        let flag = bias & FLAG_BITS;
        // Acquire: the owner's writes under its last hold are seen (its
        // Release store of its flag).
        if self.inside[flag].load(Ordering::Acquire) {
            s.revoked.store(flag + 1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Counts one more acquisition by `me` through `held` (which we hold);
    /// once the run is long enough, the bias word that gives `me` the bias
    /// when `held` is let go (0: not yet, or no flag left for `me`).
    fn count_run(&self, me: usize) -> usize {
        let s = &*self.shared;
        let run = if s.last.load(Ordering::Relaxed) == me {
            s.run.load(Ordering::Relaxed).saturating_add(1)
        } else {
            s.last.store(me, Ordering::Relaxed);
            1
        };
        if run < s.earns.load(Ordering::Relaxed) {
            s.run.store(run, Ordering::Relaxed);
            return 0;
        }
        s.run.store(0, Ordering::Relaxed);
        let mut flag = None;
        for (i, o) in s.owners.iter().enumerate() {
            match o.load(Ordering::Relaxed) {
                t if t == me => {
                    flag = Some(i);
                    break;
                }
                0 => {
                    o.store(me, Ordering::Relaxed);
                    flag = Some(i);
                    break;
                }
                _ => {}
            }
        }
        flag.map_or(0, |i| me | i)
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
        // compare-and-swap and cleared only by its drop, or the bias, whose
        // owner alone sets its flag (checked clear first, so one guard at
        // a time) while no revoker may take `held` and find the flag clear.
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
        // seen by the next one (a revoker reads the flag with Acquire).
        match self.how {
            Held::Biased(flag) => self.lock.inside[flag].store(false, Ordering::Release),
            Held::Plain(bias) => {
                let s = &*self.lock.shared;
                if bias != 0 {
                    s.granted.store(now_ns(), Ordering::Relaxed);
                    // Published with `held`'s release; this thread's own
                    // next acquisition reads it in program order.
                    s.bias.store(bias, Ordering::Relaxed);
                }
                s.held.store(false, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::{BiasedLock, FIRST_RUN, FLAG_BITS, Held, now_ns, token};

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
        assert_eq!(l.shared.bias.load(Ordering::Relaxed), token());
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
        assert_eq!(l.shared.bias.load(Ordering::Relaxed), 0);
        drop(g);
        std::thread::scope(|s| {
            s.spawn(|| assert!(l.try_lock().is_some(), "free once its owner left"));
        });
    }

    /// Earns `l` the bias on this thread, then has another thread revoke
    /// it with the bias given at `granted`; the run that earns the next.
    fn revoked_after(l: &BiasedLock<u64>, granted: u64) -> u32 {
        for _ in 0..l.shared.earns.load(Ordering::Relaxed) {
            drop(l.try_lock().expect("free"));
        }
        assert_eq!(l.shared.bias.load(Ordering::Relaxed), token());
        l.shared.granted.store(granted, Ordering::Relaxed);
        std::thread::scope(|s| {
            s.spawn(|| assert!(l.try_lock().is_some(), "free: its owner is out"));
        });
        assert_eq!(l.shared.bias.load(Ordering::Relaxed), 0, "not revoked");
        l.shared.earns.load(Ordering::Relaxed)
    }

    #[test]
    fn a_bias_revoked_at_once_doubles_the_next_run_and_one_that_lasted_does_not() {
        let l = biasing(0);
        // Given "after" the revocation: it lasted no time at all.
        assert_eq!(revoked_after(&l, u64::MAX), 2 * FIRST_RUN);
        assert_eq!(revoked_after(&l, u64::MAX), 4 * FIRST_RUN);
        // Given a second ago, which pays for any revocation under 4 ms.
        let since = std::time::Instant::now();
        while now_ns() < 1_000_000_000 {
            assert!(
                since.elapsed() < std::time::Duration::from_secs(5),
                "no clock"
            );
            std::thread::yield_now();
        }
        assert_eq!(revoked_after(&l, now_ns() - 1_000_000_000), FIRST_RUN);
    }

    thread_local! {
        /// Where this thread stops between its read of its mark and its
        /// marking: it says it arrived, then waits to be let go.
        static PAUSE: std::cell::RefCell<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>> =
            const { std::cell::RefCell::new(None) };
    }

    /// Called by `try_lock` between an owner's read of its mark and its
    /// marking.
    pub(super) fn between_read_and_mark() {
        PAUSE.with(|p| {
            if let Some((arrived, go)) = p.borrow_mut().take() {
                let _ = arrived.send(());
                let _ = go.recv_timeout(Duration::from_secs(30));
            }
        });
    }

    /// An owner loses the CPU just before it marks itself inside; another
    /// thread revokes its bias, earns its own and goes inside; then the
    /// first one marks, finds its bias gone and unmarks. With one mark for
    /// all owners, that unmarking erased the new owner's mark, and the
    /// first thread's revocation then found nobody inside and took the
    /// lock beside the new owner.
    #[test]
    fn a_former_owner_that_marks_late_never_shares_the_lock() {
        let l = biasing(0);
        let (arrived_tx, arrived) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        std::thread::scope(|s| {
            let l = &l;
            let former = s.spawn(move || {
                for _ in 0..FIRST_RUN {
                    drop(l.try_lock().expect("free"));
                }
                assert_eq!(l.shared.bias.load(Ordering::Relaxed) & !FLAG_BITS, token());
                PAUSE.with(|p| *p.borrow_mut() = Some((arrived_tx, go_rx)));
                l.try_lock().is_some()
            });
            arrived
                .recv_timeout(Duration::from_secs(30))
                .expect("the former owner never reached its mark");
            // Revoke, then take the lock until it is biased to us.
            let mut turns = 0u64;
            while l.shared.bias.load(Ordering::Relaxed) & !FLAG_BITS != token() {
                drop(l.try_lock().expect("free: the former owner is out"));
                turns += 1;
                assert!(turns <= 1 << 22, "never biased to the new owner");
            }
            let inside = l.try_lock().expect("free, by the bias");
            assert!(matches!(inside.how, Held::Biased(_)));
            go.send(()).expect("the former owner is gone");
            let took = former.join().expect("the former owner panicked");
            assert!(!took, "two threads hold the lock");
            drop(inside);
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
