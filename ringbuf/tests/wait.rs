//! The consumer's look-without-waiting (`try_next`) and the spin phase
//! (`Spinner`) that every wait of the ring, and the engine's loops, use.

#![cfg(not(loom))]

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use isocall_ringbuf::wait::{ADAPTIVE_SPIN, SpinParker};
use isocall_ringbuf::{
    ConsumerStats, HeapRegion, Producer, Spinner, WaitError, WaitStrategy, channel,
};

fn send(tx: &mut Producer<Arc<HeapRegion>, SpinParker>, b: &[u8]) {
    let mut g = tx.reserve(1, b.len()).unwrap();
    g.bytes_mut().copy_from_slice(b);
    g.commit_all();
    tx.publish();
}

#[test]
fn try_next_returns_a_published_frame_without_asking_stop() {
    let (mut tx, mut rx) = channel(4096, SpinParker).unwrap();
    send(&mut tx, b"reply");
    let asked = Cell::new(false);
    let f = rx
        .try_next(|| {
            asked.set(true);
            true
        })
        .unwrap()
        .expect("a frame");
    assert_eq!(f.payload(), b"reply");
    f.release();
    assert!(!asked.get(), "stop is only asked on an empty ring");
}

#[test]
fn try_next_on_an_empty_ring_is_none_or_stopped_as_stop_says() {
    let (_tx, mut rx) = channel(4096, SpinParker).unwrap();
    assert!(rx.try_next(|| false).unwrap().is_none());
    assert!(matches!(rx.try_next(|| true), Err(WaitError::Stopped)));
}

#[test]
fn try_next_delivers_a_frame_published_just_before_the_stop() {
    // The peer's last reply lands between the first look and the stop
    // condition turning true (its death): it is still delivered.
    let (mut tx, mut rx) = channel(4096, SpinParker).unwrap();
    let f = rx
        .try_next(|| {
            send(&mut tx, b"last words");
            true
        })
        .unwrap()
        .expect("the frame published before the stop");
    assert_eq!(f.payload(), b"last words");
    f.release();
    assert!(matches!(rx.try_next(|| true), Err(WaitError::Stopped)));
}

#[test]
fn blocking_has_no_spin_phase() {
    assert!(!Spinner::new(WaitStrategy::Blocking).spin());
}

#[test]
fn busy_spin_never_ends_its_spin_phase() {
    let mut s = Spinner::new(WaitStrategy::BusySpin);
    assert!((0..200_000).all(|_| s.spin()));
}

#[test]
fn adaptive_spins_for_its_budget_then_stops() {
    let mut s = Spinner::new(WaitStrategy::Adaptive);
    let t0 = Instant::now();
    let mut spins = 0u64;
    while s.spin() {
        spins += 1;
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the spin phase of Adaptive did not end ({spins} spins)"
        );
    }
    // The budget is read from the clock every 64th spin, from the first
    // such read: at least that many spins, and at least the budget.
    assert!(spins >= 64, "ended after {spins} spins");
    assert!(
        t0.elapsed() >= ADAPTIVE_SPIN,
        "ended after {:?}, before its budget of {ADAPTIVE_SPIN:?}",
        t0.elapsed()
    );
    // Spent: a spinner does not start over.
    assert!(!s.spin());
}

#[test]
fn a_waiter_about_to_sleep_delivers_a_frame_published_as_the_stop_came() {
    // Blocking goes straight to the sleep path: announce, look, ask stop.
    // The frame lands between that look and the stop turning true.
    let (tx, mut rx) = channel(4096, SpinParker).unwrap();
    let tx = std::cell::RefCell::new(tx);
    let f = rx
        .wait(WaitStrategy::Blocking, None, || {
            send(&mut tx.borrow_mut(), b"last reply");
            true
        })
        .expect("the frame published before the stop");
    assert_eq!(f.payload(), b"last reply");
    f.release();
}

#[test]
fn a_wait_that_times_out_sleeps_once() {
    use isocall_ringbuf::wait::CondvarParker;
    let (_tx, mut rx) = channel(4096, CondvarParker::default()).unwrap();
    let t0 = Instant::now();
    let limit = Duration::from_millis(20);
    let r = rx.wait(WaitStrategy::Blocking, Some(t0 + limit), || false);
    assert!(matches!(r, Err(WaitError::Timeout)), "{:?}", r.err());
    assert!(t0.elapsed() >= limit);
    // One sleep until the deadline (two if woken spuriously), not one per
    // turn until the next clock read.
    assert!(rx.stats().sleeps <= 2, "slept {} times", rx.stats().sleeps);
}

/// What a producer's wake-up does, in [`Deaf`].
#[derive(Clone, Copy, Default, PartialEq)]
enum Wake {
    /// It wakes the sleeper.
    #[default]
    Wakes,
    /// It takes the announcement down but the wake-up never arrives.
    Lost,
    /// It leaves the announcement standing, as a producer that published
    /// without seeing it would.
    Unseen,
    /// It leaves the announcement standing but the sleeper wakes anyway:
    /// the picture of a sleep cut short (by a wake-up left over from an
    /// earlier frame) while the producer, having published, has not yet
    /// looked at the announcement.
    Stray,
}

/// A parker that sleeps as a condition variable does and wakes the peer
/// as `wake` says: a producer that publishes without the wake-up (a
/// hostile one, or a lost wake-up).
#[derive(Clone, Default)]
struct Deaf {
    inner: isocall_ringbuf::wait::CondvarParker,
    parked: Arc<std::sync::atomic::AtomicBool>,
    wake: Wake,
}

impl isocall_ringbuf::Parker for Deaf {
    fn announce(&self) -> u32 {
        self.inner.announce()
    }
    fn park(
        &self,
        word: &isocall_ringbuf::sync::AtomicU32,
        expected: u32,
        deadline: Option<Instant>,
    ) {
        self.parked.store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.park(word, expected, deadline);
    }
    fn unpark(&self, word: &isocall_ringbuf::sync::AtomicU32, announced: u32) {
        match self.wake {
            Wake::Wakes => self.inner.unpark(word, announced),
            Wake::Lost => {}
            // The producer swapped the word down before calling us: put
            // it back.
            Wake::Unseen => word.store(announced, std::sync::atomic::Ordering::SeqCst),
            Wake::Stray => {
                word.store(announced, std::sync::atomic::Ordering::SeqCst);
                self.inner.unpark(word, announced);
            }
        }
    }
}

/// A reader with no deadline goes to sleep; then a frame is published
/// through a producer whose wake-up does what `wake` says. The frame the
/// reader got, and its counters after it.
fn sleep_then_publish(wake: Wake) -> (Vec<u8>, ConsumerStats) {
    let parker = Deaf {
        wake,
        ..Deaf::default()
    };
    let parked = parker.parked.clone();
    let stray = parker.clone();
    let (mut tx, mut rx) = channel(4096, parker).unwrap();
    let (done_tx, done) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        // No deadline: only a wake-up, or the ring's own look after
        // `RECHECK`, can end this sleep.
        let f = rx.wait(WaitStrategy::Blocking, None, || false).map(|f| {
            let p = f.payload().to_vec();
            f.release();
            p
        });
        let _ = done_tx.send(f.map(|p| (p, rx.stats())));
    });
    let until = Instant::now() + Duration::from_secs(10);
    while !parked.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(Instant::now() < until, "the reader never went to sleep");
        std::thread::yield_now();
    }
    let mut g = tx.reserve(1, 5).unwrap();
    g.bytes_mut().copy_from_slice(b"found");
    g.commit_all();
    tx.publish();
    // The stray wake-up that `publish` gave may have come before the
    // reader's wait began (`parked` is set just before it): give it again
    // until the reader is up, as a wake-up left over would have found it
    // asleep.
    let got = loop {
        match done.try_recv() {
            Ok(got) => break got,
            Err(_) if wake == Wake::Stray && Instant::now() < until => {
                let word = isocall_ringbuf::sync::AtomicU32::new(0);
                isocall_ringbuf::Parker::unpark(&stray, &word, 0);
                std::thread::yield_now();
            }
            Err(_) => {
                break done
                    .recv_timeout(Duration::from_secs(10))
                    .expect("the reader found the frame");
            }
        }
    };
    reader.join().unwrap();
    got.unwrap()
}

/// The reader's (unwoken, unseen) counts after [`sleep_then_publish`],
/// which must have delivered the frame.
fn lost_counts(wake: Wake) -> (u64, u64) {
    let (got, stats) = sleep_then_publish(wake);
    assert_eq!(got, b"found", "{stats:?}");
    (stats.unwoken, stats.unseen)
}

#[test]
fn a_sleeper_that_is_never_woken_finds_the_frame_at_its_next_look() {
    // The lost wake-up is counted, where `isocall inspect` shows it; the
    // producer had seen the announcement.
    assert_eq!(lost_counts(Wake::Lost), (1, 0));
}

#[test]
fn a_sleeper_whose_announcement_the_producer_missed_counts_it_unseen() {
    assert_eq!(lost_counts(Wake::Unseen), (1, 1));
}

#[test]
fn a_sleep_cut_short_counts_no_lost_wake_up_even_with_the_announcement_standing() {
    // Nothing was lost: the sleeper got up long before `RECHECK`, and the
    // producer may only have been about to look.
    assert_eq!(lost_counts(Wake::Stray), (0, 0));
}

#[test]
fn a_sleeper_that_is_woken_counts_no_lost_wake_up() {
    let (got, stats) = sleep_then_publish(Wake::Wakes);
    assert_eq!(got, b"found");
    assert!(stats.sleeps >= 1, "{stats:?}");
    assert_eq!((stats.unwoken, stats.unseen), (0, 0), "{stats:?}");
}
