//! Knowing when the peer process died, and waking whoever waits on it.
//!
//! Death is learnt from the kernel, not from the peer. A [`PeerWatch`] is
//! one thread per connection that waits for the kernel's signs of the
//! peer's end: the hang-up of the connection's socket and, where the kernel
//! gives one, the peer's pidfd becoming readable. When either comes it
//! raises the shared [`Liveness`] flag, then resets this side's wait words
//! and wakes their futexes and the doorbell, so a side asleep on a ring the
//! dead peer will never touch again returns at once with `PeerDied`.
//!
//! Those signs come late for a killed process: its sockets hang up only
//! after the kernel has torn down its address space (hundreds of
//! microseconds for a process with a segment mapped). The *lifeline* is
//! the early hint: each side's watch holds a robust futex word in the
//! segment (see [`crate::sys::lifeline`]), which the kernel marks as the
//! holder dies, before the teardown; the watch sleeps on the peer's word,
//! and waiting sides read it themselves ([`Liveness::peer_gone`]). But the
//! word is the peer's to write, so it is only ever a hint toward death:
//!
//! - a peer that writes "gone" into its own word only closes its own
//!   connection, as a hang-up would;
//! - a peer that writes a thread id not its own and dies leaves a word that
//!   reads "held" forever: the watch's sleep on it is bounded
//!   ([`RECHECK`]), and after every sleep it asks the kernel (socket and
//!   pidfd) without waiting, so that death is still learnt, within
//!   [`RECHECK`];
//! - a peer that keeps changing its word makes each futex sleep end early:
//!   after a sleep that ended early without a death, the watch waits on the
//!   kernel's signs alone for a while that doubles up to [`RECHECK`], so a
//!   flapping word costs at most a few wake-ups a second, never a spin.
//!
//! Dropping a watch stops its thread within a bounded time whatever the
//! peer does: its waits all end on a private stop eventfd, a cancel of the
//! lifeline wait, or [`RECHECK`].

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isocall_ringbuf::layout::{CONS_WAIT, PROD_WAIT};
use isocall_ringbuf::wait::NOT_WAITING;
use isocall_ringbuf::{Region, SharedRegion};

use crate::segment::{Direction, Segment, Side};
use crate::sys::lifeline::{Lifeline, LifelineState, cancel_waiters, wait_lifeline};
use crate::sys::{Doorbell, EventFd, PeerCred, PidFd, Ready, futex_wake, peer_pidfd, poll_ready};

/// Longest a watch sleeps on the peer's lifeline before it asks the kernel
/// whether the peer lives: the bound on learning the death of a peer that
/// lied in its lifeline, and on a flapping lifeline's wake-ups.
pub const RECHECK: Duration = Duration::from_millis(500);

/// First pause on the kernel's signs alone after a lifeline sleep that
/// ended early without a death (it doubles up to [`RECHECK`]).
const FLAP_PAUSE: Duration = Duration::from_millis(5);

/// Shared flag: has the peer died? Cheap to check on every wait loop turn.
///
/// The flag is raised by the [`PeerWatch`] thread. A connection's liveness
/// ([`Liveness::connection`]) can also ask the peer's lifeline in the
/// segment ([`peer_gone`](Self::peer_gone)): the kernel marks it while the
/// dying peer is still being torn down, before the watch thread can be
/// scheduled (on a busy machine that thread may wait for the CPU behind the
/// teardown itself, hundreds of microseconds).
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    dead: Arc<AtomicBool>,
    /// A connection's: its segment and the peer's side, whose lifeline the
    /// kernel marks when the peer dies.
    peer_lifeline: Option<(Arc<Segment>, Side)>,
}

impl Liveness {
    /// A flag saying the peer is alive.
    pub fn new() -> Self {
        Self::default()
    }

    /// The liveness of `side`'s peer on the connection of `segment`: the
    /// flag, and the peer's lifeline word for [`peer_gone`](Self::peer_gone).
    pub fn connection(segment: Arc<Segment>, side: Side) -> Self {
        Liveness {
            dead: Arc::default(),
            peer_lifeline: Some((segment, side.peer())),
        }
    }

    /// Whether the peer is known to be dead (the watch thread said so, or
    /// [`peer_gone`](Self::peer_gone) saw its lifeline gone): one load of a
    /// flag in this process, for the paths that do not wait.
    #[inline]
    pub fn is_dead(&self) -> bool {
        // Acquire: pairs with the Release in `mark_dead`.
        self.dead.load(Ordering::Acquire)
    }

    /// Whether the peer is dead, asking its lifeline too (one load of a
    /// line written only when the connection starts and ends, so it stays
    /// in the caches of both sides): for the paths that wait on the peer,
    /// where this learns of a death as soon as the kernel marks it instead
    /// of after a thread wake-up. A peer that marks its own lifeline gone
    /// (it may: the segment is its to write) only closes its connection, as
    /// a hang-up would. Raises the flag when it finds the lifeline gone.
    #[inline]
    pub fn peer_gone(&self) -> bool {
        if self.is_dead() {
            return true;
        }
        let gone = self.peer_lifeline.as_ref().is_some_and(|(seg, peer)| {
            LifelineState::of(seg.lifeline_word(*peer)) == LifelineState::Gone
        });
        if gone {
            self.mark_dead();
        }
        gone
    }

    /// Records that the peer died.
    pub fn mark_dead(&self) {
        self.dead.store(true, Ordering::Release);
    }
}

/// What a [`PeerWatch`] waits on: the kernel's signs of the peer's end.
#[derive(Debug, Default)]
pub struct Watched {
    /// The connection's socket (a duplicate of this side's end): its
    /// hang-up means the peer closed it or died.
    pub sock: Option<OwnedFd>,
    /// The peer's pidfd: readable once the peer process exited (whatever
    /// became of its descriptors, e.g. inherited by a child it forked).
    pub pidfd: Option<PidFd>,
}

impl Watched {
    /// What a connection on `sock` watches: a duplicate of the socket,
    /// and the pidfd of `peer` (its credentials) if the kernel gives one.
    ///
    /// # Errors
    ///
    /// The socket cannot be duplicated.
    pub(crate) fn socket(sock: &OwnedFd, peer: &PeerCred) -> std::io::Result<Watched> {
        Ok(Watched {
            sock: Some(sock.try_clone()?),
            pidfd: peer_pidfd(sock.as_fd(), peer),
        })
    }
}

/// A thread that learns of the peer's death (see the module doc). Dropping
/// it stops and joins the thread.
#[derive(Debug)]
pub struct PeerWatch {
    stop: Arc<EventFd>,
    /// For a connection's watch: the stop flag, and the segment and side
    /// whose peer lifeline the thread may be asleep on.
    lifeline: Option<(Arc<AtomicBool>, Arc<Segment>, Side)>,
    thread: Option<JoinHandle<()>>,
}

/// Stack of a watch thread: it calls nothing deep.
const WATCH_STACK: usize = 128 << 10;

/// What a watch does once the peer is found dead.
struct OnDeath {
    liveness: Liveness,
    segment: Arc<Segment>,
    side_tx: Direction,
    doorbell: Option<Arc<Doorbell>>,
}

impl OnDeath {
    fn run(&self) {
        self.liveness.mark_dead();
        wake_all(&self.segment, self.side_tx, self.doorbell.as_deref());
    }
}

impl PeerWatch {
    /// Watches the peer through `watched` only (no lifeline): on its death
    /// marks `liveness` dead, then wakes this side's waiters on `segment`'s
    /// rings (`side_tx` is the ring this side produces into) and wakes
    /// `doorbell` (this side's end) for good.
    ///
    /// # Errors
    ///
    /// The OS refused an eventfd or a thread; `InvalidInput` when `watched`
    /// names nothing to watch.
    pub fn spawn(
        watched: Watched,
        liveness: Liveness,
        segment: Arc<Segment>,
        side_tx: Direction,
        doorbell: Option<Arc<Doorbell>>,
    ) -> std::io::Result<PeerWatch> {
        if watched.sock.is_none() && watched.pidfd.is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a peer watch needs a socket or a pidfd",
            ));
        }
        let stop = Arc::new(EventFd::new()?);
        let stop2 = stop.clone();
        let on_death = OnDeath {
            liveness,
            segment,
            side_tx,
            doorbell,
        };
        let thread = std::thread::Builder::new()
            .name("isocall-peer-watch".into())
            .stack_size(WATCH_STACK)
            .spawn(move || {
                let _span = tracing::debug_span!("peer_watch").entered();
                if kernel_signs(&watched, &stop2, None) == Sign::Dead {
                    tracing::debug!("peer died");
                    on_death.run();
                }
            })?;
        Ok(PeerWatch {
            stop,
            lifeline: None,
            thread: Some(thread),
        })
    }

    /// The watch of a connection's `side`: holds this side's lifeline for
    /// the connection's life and waits for the peer's death or close: its
    /// lifeline as the early hint, the socket and pidfd in `watched` as the
    /// truth (see the module doc). Then does what [`spawn`](Self::spawn)
    /// does on a death.
    ///
    /// Returns once the thread holds the lifeline (or found it cannot):
    /// the handshake finishes after both sides' watches started, so a peer
    /// that answered anything holds its lifeline, and its death is marked
    /// by the kernel rather than learnt later from the socket.
    ///
    /// # Errors
    ///
    /// The OS refused an eventfd or a thread.
    pub fn connection(
        watched: Watched,
        liveness: Liveness,
        segment: Arc<Segment>,
        side: Side,
        doorbell: Option<Arc<Doorbell>>,
    ) -> std::io::Result<PeerWatch> {
        let stop = Arc::new(EventFd::new()?);
        let stopped = Arc::new(AtomicBool::new(false));
        let (stop2, stopped2, seg) = (stop.clone(), stopped.clone(), segment.clone());
        let (held_tx, held_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let on_death = OnDeath {
            liveness,
            segment: segment.clone(),
            side_tx: side.tx(),
            doorbell,
        };
        let thread = std::thread::Builder::new()
            .name("isocall-peer-watch".into())
            .stack_size(WATCH_STACK)
            .spawn(move || {
                let _span = tracing::debug_span!("peer_watch", ?side).entered();
                let hold = match seg.lifeline(side) {
                    Some(_) => Lifeline::hold(seg.clone(), |s: &Segment| {
                        s.lifeline(side).expect("a writable segment has lifelines")
                    })
                    .inspect_err(|e| tracing::debug!(error = %e, "no lifeline held"))
                    .ok(),
                    None => None,
                };
                let _ = held_tx.send(());
                let dead = watch_connection(&seg, side, &watched, &stop2, &stopped2);
                if let Some(h) = hold {
                    h.release();
                }
                if dead {
                    tracing::debug!("peer died or closed");
                    on_death.run();
                }
            })?;
        // The thread sends once it tried to hold the lifeline; if it died
        // before (it cannot panic there), the channel is closed.
        let _ = held_rx.recv();
        Ok(PeerWatch {
            stop,
            lifeline: Some((stopped, segment, side)),
            thread: Some(thread),
        })
    }
}

/// What the kernel's signs said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sign {
    /// The peer's end is gone (hang-up, exit) or cannot be watched.
    Dead,
    /// Told to stop.
    Stop,
    /// Nothing yet (the timeout passed).
    Quiet,
}

/// Waits up to `timeout` (`None`: forever) for the socket's hang-up, the
/// pidfd's exit or the stop eventfd.
fn kernel_signs(w: &Watched, stop: &EventFd, timeout: Option<Duration>) -> Sign {
    let mut fds = Vec::with_capacity(3);
    fds.push((stop.as_fd(), Ready::Readable));
    if let Some(s) = &w.sock {
        fds.push((s.as_fd(), Ready::HangUp));
    }
    if let Some(p) = &w.pidfd {
        fds.push((p.as_fd(), Ready::Readable));
    }
    let deadline = timeout.map(crate::deadline_in);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match poll_ready(&fds, left) {
            Ok(r) if r[0] => return Sign::Stop,
            Ok(r) if r[1..].iter().any(|&x| x) => return Sign::Dead,
            Ok(_) if left.is_some_and(|l| l.is_zero()) => return Sign::Quiet,
            Ok(_) if deadline.is_some_and(|d| Instant::now() >= d) => return Sign::Quiet,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "peer watch poll failed; treating peer as dead");
                return Sign::Dead;
            }
        }
    }
}

/// Waits for the peer of `side` to die or close; false if told to stop.
fn watch_connection(
    seg: &Segment,
    side: Side,
    watched: &Watched,
    stop: &EventFd,
    stopped: &AtomicBool,
) -> bool {
    let peer = seg.lifeline(side.peer());
    let mut pause = FLAP_PAUSE;
    loop {
        if stopped.load(Ordering::Acquire) {
            return false;
        }
        let state = peer.map_or(LifelineState::Unheld, |w| {
            LifelineState::of(w.load(Ordering::Acquire))
        });
        match state {
            LifelineState::Gone => return true,
            LifelineState::Held => {
                let word = peer.expect("a held lifeline has a word");
                let began = Instant::now();
                let st = wait_lifeline(word, Some(RECHECK), || stopped.load(Ordering::Acquire));
                if st == LifelineState::Gone {
                    return true;
                }
                // Whatever the word says, ask the kernel without waiting.
                match kernel_signs(watched, stop, Some(Duration::ZERO)) {
                    Sign::Dead => return true,
                    Sign::Stop => return false,
                    Sign::Quiet => {}
                }
                if began.elapsed() < RECHECK && !stopped.load(Ordering::Acquire) {
                    // Woken early without a death: a spurious wake-up, or a
                    // peer rewriting its word. Wait on the kernel alone for
                    // a while, longer each time, so a flapping word cannot
                    // make this thread spin.
                    match kernel_signs(watched, stop, Some(pause)) {
                        Sign::Dead => return true,
                        Sign::Stop => return false,
                        Sign::Quiet => pause = (pause * 2).min(RECHECK),
                    }
                } else {
                    pause = FLAP_PAUSE;
                }
            }
            LifelineState::Unheld => {
                // The peer holds no lifeline (it registers during the
                // handshake, or never): the kernel's signs alone, looking
                // at the word again now and then.
                match kernel_signs(watched, stop, Some(pause)) {
                    Sign::Dead => return true,
                    Sign::Stop => return false,
                    Sign::Quiet => pause = (pause * 2).min(RECHECK),
                }
            }
        }
    }
}

impl Drop for PeerWatch {
    fn drop(&mut self) {
        if let Some((stopped, seg, side)) = &self.lifeline {
            stopped.store(true, Ordering::Release);
            // The thread may be asleep on the peer's lifeline, or about to
            // be: it looks at `stopped` once it has announced itself there.
            if let Some(w) = seg.lifeline(side.peer()) {
                cancel_waiters(w);
            }
        }
        let _ = self.stop.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Resets and wakes the wait words this side may sleep on (the producer's
/// word of the ring it writes and the consumer's word of the ring it reads)
/// and wakes this side's doorbell for good. Never blocks.
#[allow(unsafe_code)] // a ring's wait word by offset: see SAFETY
pub(crate) fn wake_all(segment: &Segment, side_tx: Direction, doorbell: Option<&Doorbell>) {
    let wake = |region: &SharedRegion, off: usize| {
        debug_assert!(off < isocall_ringbuf::RING_CONTROL_BYTES);
        // SAFETY: `region` is one of the segment's ring regions (only ever a
        // ring: the segment's parts do not overlap) and `off` a wait word of
        // its control block, which a ring never hands out as payload, so no
        // grant or frame's slice covers it.
        let word = unsafe { region.u32_at(off) };
        word.swap(NOT_WAITING, Ordering::AcqRel);
        let _ = futex_wake(word, i32::MAX as u32);
    };
    wake(&segment.ring_region(side_tx), PROD_WAIT);
    wake(&segment.ring_region(side_tx.reverse()), CONS_WAIT);
    if let Some(bell) = doorbell {
        bell.wake_for_good();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::SegmentLayout;

    fn segment() -> Arc<Segment> {
        let layout = SegmentLayout {
            ring_capacity: 4096,
            ..SegmentLayout::default()
        };
        Arc::new(Segment::create("isocall:test:liveness", &layout).unwrap())
    }

    fn hold_server(s: &Arc<Segment>) -> Lifeline {
        Lifeline::hold(s.clone(), |s: &Segment| s.lifeline(Side::Server).unwrap())
            .expect("robust list")
    }

    #[test]
    fn a_connection_learns_of_a_death_from_the_lifeline_without_its_watch() {
        let seg = segment();
        let client = Liveness::connection(seg.clone(), Side::Client);
        // The server's lifeline, held by a thread that ends holding it, as
        // a killed process's thread does: the kernel marks it.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let s = seg.clone();
        let holder = std::thread::spawn(move || {
            let hold = hold_server(&s);
            held_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            std::mem::forget(hold);
        });
        held_rx.recv().unwrap();
        assert!(!client.peer_gone(), "the holder lives");
        assert!(!client.is_dead());
        go_tx.send(()).unwrap();
        holder.join().unwrap();
        // No watch thread runs: the word alone says so, and the flag is
        // raised for the paths that only read the flag.
        assert!(client.peer_gone());
        assert!(client.is_dead());
        assert!(client.clone().is_dead(), "clones share the flag");
    }

    #[test]
    fn an_unheld_lifeline_is_not_a_death() {
        let seg = segment();
        let server = Liveness::connection(seg, Side::Server);
        assert!(!server.peer_gone(), "a client without a lifeline lives");
        assert!(!Liveness::new().peer_gone());
    }

    /// Waits until `f` holds, at most ten seconds.
    fn within_10s(what: &str, f: impl Fn() -> bool) {
        let limit = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < limit, "{what} within 10 s");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_lying_lifeline_does_not_hide_a_hang_up() {
        // The "peer" writes a thread id that is not its own into its word
        // (so it reads held forever) and then hangs up.
        let seg = segment();
        seg.lifeline(Side::Server)
            .unwrap()
            .store(12345, Ordering::Release);
        let (ours, theirs) = crate::sys::seqpacket_pair().unwrap();
        let live = Liveness::connection(seg.clone(), Side::Client);
        let watch = PeerWatch::connection(
            Watched {
                sock: Some(ours),
                pidfd: None,
            },
            live.clone(),
            seg,
            Side::Client,
            None,
        )
        .unwrap();
        drop(theirs);
        within_10s("the hang-up is learnt", || live.is_dead());
        drop(watch);
    }

    #[test]
    fn a_flapping_lifeline_neither_spins_the_watch_nor_hangs_its_drop() {
        let seg = segment();
        let word = seg.lifeline(Side::Server).unwrap();
        word.store(12345, Ordering::Release);
        let (ours, _theirs) = crate::sys::seqpacket_pair().unwrap();
        let live = Liveness::connection(seg.clone(), Side::Client);
        let watch = PeerWatch::connection(
            Watched {
                sock: Some(ours),
                pidfd: None,
            },
            live.clone(),
            seg.clone(),
            Side::Client,
            None,
        )
        .unwrap();
        // The "peer" rewrites its word and wakes the futex as fast as it
        // can for a while; each write is a held word, never a death.
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (seg.clone(), stop.clone());
        let flapper = std::thread::spawn(move || {
            let w = s2.lifeline(Side::Server).unwrap();
            let mut n = 0u32;
            while !st2.load(Ordering::Acquire) {
                n = n.wrapping_add(1);
                w.store(1000 + (n & 0xff), Ordering::Release);
                let _ = futex_wake(w, u32::MAX >> 1);
            }
        });
        let t0 = Instant::now();
        let watch_cpu = thread_cpu_of("isocall-peer-wa");
        // A short look: the watch thread's CPU time stays far below the
        // wall-clock time that passed (a spinning watch would use it all).
        while t0.elapsed() < Duration::from_millis(300) {
            std::thread::yield_now();
        }
        let used = thread_cpu_of("isocall-peer-wa").saturating_sub(watch_cpu);
        stop.store(true, Ordering::Release);
        flapper.join().unwrap();
        assert!(!live.is_dead(), "a flapping word is no death");
        assert!(
            used < Duration::from_millis(100),
            "the watch used {used:?} of CPU in 300 ms of flapping"
        );
        let t = Instant::now();
        drop(watch);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "drop took {:?}",
            t.elapsed()
        );
    }

    /// CPU time used so far by the threads of this process named `name`.
    fn thread_cpu_of(name: &str) -> Duration {
        let mut total = 0u64;
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return Duration::ZERO;
        };
        for t in dir.flatten() {
            let p = t.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
            // Fields after the command: utime and stime are 14th and 15th.
            if let Some(rest) = stat.rsplit(')').next() {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0)
                    + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
                total += ticks;
            }
        }
        // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
        Duration::from_millis(total * 10)
    }

    #[test]
    fn dropping_a_connection_watch_returns_while_the_peer_lives() {
        // The peer (a thread here) holds its lifeline throughout; each drop
        // must stop the watch however its thread is placed in its loop.
        let seg = segment();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let s = seg.clone();
        let peer = std::thread::spawn(move || {
            let hold = hold_server(&s);
            held_tx.send(()).unwrap();
            let _ = done_rx.recv();
            hold.release();
        });
        held_rx.recv().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let s = seg.clone();
        std::thread::spawn(move || {
            for _ in 0..200 {
                let (a, _b) = crate::sys::seqpacket_pair().expect("socketpair");
                let watch = PeerWatch::connection(
                    Watched {
                        sock: Some(a),
                        pidfd: None,
                    },
                    Liveness::new(),
                    s.clone(),
                    Side::Client,
                    None,
                )
                .expect("watch");
                drop(watch);
            }
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(60)).is_ok(),
            "dropping a watch hung while its peer held its lifeline"
        );
        done_tx.send(()).unwrap();
        peer.join().unwrap();
    }
}
