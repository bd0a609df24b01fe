//! Sleeping and waking without a syscall on the fast path.
//!
//! Each ring has two 32-bit wait words: the consumer's (set when it is about
//! to sleep on an empty ring) and the producer's (set when it is about to
//! sleep on a full ring). The protocol, for the consumer (the producer's is
//! the mirror image):
//!
//! 1. find nothing to read; spin for a while ([`WaitStrategy`]);
//! 2. *announce*: swap the parker's [`Parker::announce`] value into the word,
//!    then a `SeqCst` fence;
//! 3. *re-check* the ring; if a frame arrived, clear the word and go on;
//! 4. otherwise [`Parker::park`] while the word still holds the value.
//!
//! After publishing, the producer issues a `SeqCst` fence and loads the word;
//! (if the consumer declared itself asymmetric and the producer's parker
//! is asymmetric too, see [`Parker::asymmetric`],
//! the producer's fence is a compiler fence and the consumer's fence after
//! announcing is a heavy barrier that fences the producer's CPU too: the
//! hot path then has no fence instruction at all);
//! only if it is non-zero does it swap it to zero and call [`Parker::unpark`]
//! with the announced value. The two fences order "publish, then look for a
//! sleeper" against "announce, then look for work": at least one side sees
//! the other's store, so no wake-up is lost (checked by the loom model in
//! `tests/loom.rs`). Every write to a wait word is a read-modify-write (the
//! announce, the waiter's own clear, the waker's swap), so the word's
//! modification order is the order those happened in; with plain stores a
//! waiter's stale clear could hide a newer announce from the waker (loom
//! found that). They are all off the fast path. A side that never finds the
//! ring empty or full makes no syscall.
//!
//! The peer can write the wait words too. No access to one is a loop: each
//! is a single swap or load, never a compare-and-swap retried until it
//! holds, so a peer flipping a word can only cut a sleep short or cost a
//! wake-up call for nothing. A waiter still re-checks the ring and its stop
//! condition after every sleep, and ends at its deadline.
//!
//! The ring knows nothing about futexes or eventfds: a [`Parker`] supplies
//! them (isocall-engine has the futex and eventfd ones), and
//! [`CondvarParker`] serves threads of one process.

use std::time::{Duration, Instant};

use crate::sync::AtomicU32;

/// Value of a wait word when nobody is about to sleep.
pub const NOT_WAITING: u32 = 0;
/// Announced by a waiter that sleeps on the word itself (a futex).
pub const WAITING_FUTEX: u32 = 1;
/// Announced by a waiter that sleeps on a doorbell (an eventfd).
pub const WAITING_DOORBELL: u32 = 2;

/// How a side waits when the ring gives it nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WaitStrategy {
    /// Spin until there is work or the deadline passes: lowest latency, burns
    /// a core, never sleeps.
    BusySpin,
    /// Spin for a while, then sleep (the default: 50 µs of spinning, about
    /// the cost of one sleep/wake cycle, so spinning never costs more than
    /// twice the best choice). After its first ~3 µs it gives up the CPU
    /// every 64th turn to any thread waiting for it (see [`Spinner`]).
    #[default]
    Adaptive,
    /// Sleep at once.
    Blocking,
}

impl WaitStrategy {
    /// How long this strategy spins before it sleeps (`None`: forever).
    pub fn spin_budget(self) -> Option<Duration> {
        match self {
            WaitStrategy::BusySpin => None,
            WaitStrategy::Adaptive => Some(ADAPTIVE_SPIN),
            WaitStrategy::Blocking => Some(Duration::ZERO),
        }
    }
}

/// Spin time of [`WaitStrategy::Adaptive`].
pub const ADAPTIVE_SPIN: Duration = Duration::from_micros(50);

/// Longest a side of a ring sleeps before it looks at the ring again,
/// whatever its deadline: a frame or room that came without a wake-up is
/// found within it. The handshake above makes wake-ups enough on its own;
/// this is the net under it, for a peer that never wakes us (a hostile
/// one, or one that published without seeing our announcement, as a CPU
/// that a `membarrier` did not reach would: one such gap in Linux's
/// registration is closed by the engine; benchmark loops counted a lost
/// wake-up now and then, under a looser count, see docs/performance.md)
/// and for a death that no wake-up reported. It costs an idle sleeper one
/// look at the ring per interval.
pub const RECHECK: Duration = Duration::from_millis(50);

/// The deadline a sleep is given: the caller's, or [`RECHECK`] from now if
/// that comes first. (Under loom, the caller's: the model has no clock.)
#[inline]
pub(crate) fn sleep_until(deadline: Option<Instant>) -> Option<Instant> {
    #[cfg(loom)]
    {
        deadline
    }
    #[cfg(not(loom))]
    {
        let at = Instant::now() + RECHECK;
        Some(deadline.map_or(at, |d| d.min(at)))
    }
}

/// Puts a thread to sleep on a wait word and wakes it.
///
/// Implementations must tolerate spurious returns from `park` (the ring
/// re-checks) and must not lose a wake that comes after the word was set.
pub trait Parker {
    /// The value this parker announces in a wait word before it parks
    /// ([`WAITING_FUTEX`] or [`WAITING_DOORBELL`]).
    fn announce(&self) -> u32;

    /// Blocks while `word` holds `expected`, until unparked or `deadline`.
    /// May return early for any reason.
    fn park(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>);

    /// Wakes the sleeper that announced `announced` on `word` (the word has
    /// already been reset to [`NOT_WAITING`]).
    fn unpark(&self, word: &AtomicU32, announced: u32);

    /// Whether this side fences asymmetrically: it issues
    /// [`heavy_fence`](Self::heavy_fence) after announcing sleep, so its peer
    /// may use a compiler-only fence on its hot path; and the peer's heavy
    /// fence reaches this side, so this side may too, where the peer fences
    /// asymmetrically as well (a `membarrier` fences only the processes
    /// registered for it: true only once this process is). Fixed for the
    /// life of the side; the default is no.
    fn asymmetric(&self) -> bool {
        false
    }

    /// A barrier that also fences every running thread of the peer (e.g.
    /// `membarrier`). Only called if [`asymmetric`](Self::asymmetric).
    fn heavy_fence(&self) {
        crate::sync::fence(crate::sync::Ordering::SeqCst);
    }
}

/// A parker for threads of one process: a mutex and condition variable that
/// the producer and consumer share (clone it for the other side).
#[derive(Clone, Default)]
pub struct CondvarParker {
    inner: std::sync::Arc<CondvarInner>,
}

#[derive(Default)]
struct CondvarInner {
    lock: crate::sync::Mutex<()>,
    cond: crate::sync::Condvar,
}

impl std::fmt::Debug for CondvarParker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CondvarParker")
    }
}

impl Parker for CondvarParker {
    fn announce(&self) -> u32 {
        WAITING_FUTEX
    }

    fn park(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>) {
        let guard = self.inner.lock.lock().unwrap_or_else(|e| e.into_inner());
        // The check happens under the lock and `unpark` takes the lock after
        // resetting the word, so a wake between check and wait is not lost
        // (the same argument as the futex's in-kernel check).
        if word.load(crate::sync::Ordering::Acquire) != expected {
            return;
        }
        match deadline {
            None => drop(self.inner.cond.wait(guard)),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    drop(self.inner.cond.wait_timeout(guard, left));
                }
            }
        }
    }

    fn unpark(&self, _word: &AtomicU32, _announced: u32) {
        let _guard = self.inner.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.cond.notify_all();
    }
}

/// A parker that never sleeps: for sides that only ever busy-spin. Its
/// `park` returns at once, so waiting degenerates into spinning.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpinParker;

impl Parker for SpinParker {
    fn announce(&self) -> u32 {
        WAITING_FUTEX
    }

    fn park(&self, _word: &AtomicU32, _expected: u32, _deadline: Option<Instant>) {
        crate::sync::spin_hint();
    }

    fn unpark(&self, _word: &AtomicU32, _announced: u32) {}
}

/// Why waiting for a frame or for room ended without one.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitError {
    /// The deadline passed.
    #[error("timed out waiting on the ring")]
    Timeout,
    /// The caller's stop condition became true (e.g. the peer died).
    #[error("stopped while waiting on the ring (peer gone)")]
    Stopped,
    /// The ring's shared state is corrupt.
    #[error(transparent)]
    Corrupt(#[from] crate::Corrupt),
}

/// Spins before the first yield of an Adaptive spin (about 3 µs of spin
/// hints): a wait shorter than that makes no syscall. Later (512) loses
/// most of what the yield is for: supervise.recovery.standby 105-114 us
/// at 512 against 74-86 us at 128 or 64, alternating runs.
const YIELD_AFTER_SPINS: u32 = 128;

/// The spin phase of one wait, as a [`WaitStrategy`] sets it: a spin hint a
/// turn, and every 64th turn a look at the clock (a clock read costs more
/// than a look at a ring, and most waits end sooner) and, once the wait has
/// lasted 128 turns (about 3 µs) and unless the strategy is
/// [`BusySpin`](WaitStrategy::BusySpin), a yield of the CPU.
///
/// The yield is for machines with fewer cores than busy threads: the thread
/// this one waits for may be runnable on this very CPU (a server woken onto
/// its client's core, a dying peer that needs the CPU to finish dying), and
/// a spinner that never yields keeps it off for the whole spin. With no one
/// else runnable the yield returns at once (a syscall, about 0.4 µs against
/// the 1.5 µs of 64 spin hints). Loops outside the ring (a server polling
/// many connections) use it too, so every wait spins the same way.
#[derive(Debug)]
pub struct Spinner {
    budget: Option<Duration>,
    until: Option<Instant>,
    spins: u32,
    /// Whether an endless (`BusySpin`) spin yields too.
    yields: bool,
}

impl Spinner {
    /// The spin phase of `strategy`: forever for `BusySpin` (never
    /// yielding), [`ADAPTIVE_SPIN`] for `Adaptive`, none for `Blocking`.
    pub fn new(strategy: WaitStrategy) -> Spinner {
        Spinner {
            budget: strategy.spin_budget(),
            until: None,
            spins: 0,
            yields: false,
        }
    }

    /// As [`new`](Self::new), but a `BusySpin` spin yields the CPU as the
    /// others do (after 128 turns, every 64th turn): for a thread that
    /// waits on another thread of its own process rather than on the peer
    /// (a caller whose reply another thread reads for it). On a machine
    /// with fewer cores than busy threads, the thread it waits for may be
    /// off the CPU, holding what this one waits for.
    pub fn yielding(strategy: WaitStrategy) -> Spinner {
        Spinner {
            yields: true,
            ..Spinner::new(strategy)
        }
    }

    /// Spins once; returns false when the spin budget is spent (then sleep).
    #[inline]
    pub fn spin(&mut self) -> bool {
        let Some(budget) = self.budget else {
            self.spins = self.spins.wrapping_add(1);
            if self.yields && self.spins >= YIELD_AFTER_SPINS && self.spins.is_multiple_of(64) {
                crate::sync::yield_now();
            } else {
                crate::sync::spin_hint();
            }
            return true;
        };
        if budget.is_zero() {
            return false;
        }
        self.spins = self.spins.wrapping_add(1);
        if self.spins.is_multiple_of(64) {
            let now = Instant::now();
            let until = *self.until.get_or_insert(now + budget);
            if now >= until {
                // Spent for good: a waiter woken with nothing to do sleeps
                // again at once.
                self.budget = Some(Duration::ZERO);
                return false;
            }
            // Short waits (the reply of a short call) make no syscall.
            if self.spins >= YIELD_AFTER_SPINS {
                crate::sync::yield_now();
            }
        } else {
            crate::sync::spin_hint();
        }
        true
    }
}
