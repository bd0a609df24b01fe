//! Knowing when the peer process died, and waking whoever waits on it.
//!
//! A [`PeerWatch`] is one thread blocked in `poll` on the peer's pidfd, or
//! on the connection's socket waiting for its hang-up (and on a stop
//! eventfd): it costs no CPU while the peer lives. When the peer
//! dies it raises the shared [`Liveness`] flag, then resets this side's wait
//! words and wakes their futexes and the doorbell, so a side asleep on a
//! ring the dead peer will never touch again returns at once with
//! `PeerDied` instead of hanging.
//!
//! A connection's watch ([`PeerWatch::connection`]) also holds this side's
//! lifeline in the segment (a robust futex, see [`crate::sys::lifeline`])
//! and waits on the peer's: the kernel marks a killed process's lifelines
//! before it tears down its address space, which is the only moment
//! earlier than the socket's hang-up (hundreds of microseconds earlier for a
//! process with a segment mapped). A peer that holds no lifeline is watched
//! through its socket as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use isocall_ringbuf::layout::{CONS_WAIT, PROD_WAIT};
use isocall_ringbuf::wait::NOT_WAITING;
use isocall_ringbuf::{Region, SharedRegion};

use crate::segment::{Direction, Segment, Side};
use crate::sys::lifeline::{
    Lifeline, LifelineState, cancel_waiters, lifeline_state, wait_lifeline,
};
use crate::sys::{EventFd, PidFd, Ready, futex_wake, poll_ready};

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

    /// Whether the peer is dead, asking its lifeline too (a load of a
    /// line written only when the connection starts and ends, so it stays
    /// in the caches of both sides): for the paths that
    /// wait on the peer, where this learns of a death as soon as the
    /// kernel marks it instead of after a thread wake-up. A peer that
    /// marks its own lifeline gone (it may: the segment is its to write)
    /// only closes its connection, as a hang-up would. Raises the flag when
    /// it finds the lifeline gone.
    #[inline]
    pub fn peer_gone(&self) -> bool {
        if self.is_dead() {
            return true;
        }
        let gone = self
            .peer_lifeline
            .as_ref()
            .is_some_and(|(seg, peer)| lifeline_state(seg.lifeline(*peer)) == LifelineState::Gone);
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

/// A thread that watches the peer's pidfd. Dropping it stops and joins the
/// thread.
#[derive(Debug)]
pub struct PeerWatch {
    stop: Arc<EventFd>,
    /// For a connection's watch: the stop flag, and the segment and side
    /// whose peer lifeline the thread may be asleep on.
    lifeline: Option<(Arc<AtomicBool>, Arc<Segment>, Side)>,
    thread: Option<JoinHandle<()>>,
}

impl PeerWatch {
    /// Watches the process behind `pidfd`. On its death: marks `liveness`
    /// dead, then wakes this side's waiters on `segment`'s rings (`side_tx`
    /// is the ring this side produces into) and rings `doorbell` (the
    /// doorbell this side's consumer may sleep on).
    ///
    /// # Errors
    ///
    /// The OS refused an eventfd or a thread.
    pub fn spawn(
        pidfd: PidFd,
        liveness: Liveness,
        segment: Arc<Segment>,
        side_tx: Direction,
        doorbell: Option<Arc<EventFd>>,
    ) -> std::io::Result<PeerWatch> {
        Self::spawn_on(
            pidfd.into(),
            Ready::Readable,
            liveness,
            segment,
            side_tx,
            doorbell,
        )
    }

    /// As [`spawn`](Self::spawn), but the peer counts as dead as soon as
    /// `watched` is ready as `ready` says: a pidfd becomes readable when
    /// its process exits; the connection's socket hangs up when the peer
    /// closes it or dies (it may carry messages meanwhile, so for a socket
    /// pass [`Ready::HangUp`]).
    ///
    /// # Errors
    ///
    /// The OS refused an eventfd or a thread.
    pub fn spawn_on(
        watched: std::os::fd::OwnedFd,
        ready: Ready,
        liveness: Liveness,
        segment: Arc<Segment>,
        side_tx: Direction,
        doorbell: Option<Arc<EventFd>>,
    ) -> std::io::Result<PeerWatch> {
        let stop = Arc::new(EventFd::new()?);
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("isocall-peer-watch".into())
            .spawn(move || {
                let _span = tracing::debug_span!("peer_watch").entered();
                loop {
                    use std::os::fd::AsFd;
                    match poll_ready(&[(watched.as_fd(), ready), (stop2.as_fd(), Ready::Readable)], None) {
                        Ok(ready) if ready.first() == Some(&true) => break,
                        Ok(ready) if ready.get(1) == Some(&true) => return,
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "peer watch poll failed; treating peer as dead");
                            break;
                        }
                    }
                }
                tracing::debug!("peer died");
                liveness.mark_dead();
                wake_all(&segment, side_tx, doorbell.as_deref());
            })?;
        Ok(PeerWatch {
            stop,
            lifeline: None,
            thread: Some(thread),
        })
    }

    /// The watch of a connection's `side`: holds this side's lifeline for
    /// the connection's life and waits for the peer's to go (death or
    /// close); falls back to the hang-up of `sock`, the connection's
    /// socket, while the peer holds none. Then does what
    /// [`spawn`](Self::spawn) does on a death.
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
        sock: std::os::fd::OwnedFd,
        liveness: Liveness,
        segment: Arc<Segment>,
        side: Side,
        doorbell: Option<Arc<EventFd>>,
    ) -> std::io::Result<PeerWatch> {
        let stop = Arc::new(EventFd::new()?);
        let stopped = Arc::new(AtomicBool::new(false));
        let (stop2, stopped2, seg) = (stop.clone(), stopped.clone(), segment.clone());
        let (held_tx, held_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("isocall-peer-watch".into())
            .spawn(move || {
                let _span = tracing::debug_span!("peer_watch", ?side).entered();
                let hold = Lifeline::hold(seg.lifeline(side))
                    .inspect_err(|e| tracing::debug!(error = %e, "no lifeline held"))
                    .ok();
                let _ = held_tx.send(());
                let dead = watch_connection(&seg, side, &sock, &stop2, &stopped2);
                if let Some(h) = hold {
                    h.release();
                }
                if dead {
                    tracing::debug!("peer died or closed");

                    liveness.mark_dead();
                    wake_all(&seg, side.tx(), doorbell.as_deref());
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

/// Longest a connection's watch sleeps on the peer's lifeline before it
/// looks at its stop flag again (a bound on dropping a connection whose
/// hostile peer keeps rewriting its lifeline word).
const LIFELINE_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits for the peer of `side` to die or close; false if told to stop.
fn watch_connection(
    seg: &Segment,
    side: Side,
    sock: &std::os::fd::OwnedFd,
    stop: &EventFd,
    stopped: &AtomicBool,
) -> bool {
    use std::os::fd::AsFd;
    let peer = seg.lifeline(side.peer());
    // While the peer holds no lifeline (it registers during the handshake,
    // or never), its socket's hang-up is the sign; the lifeline is looked
    // at again after a timeout that doubles up to a second.
    let mut recheck = std::time::Duration::from_millis(1);
    loop {
        if stopped.load(Ordering::Acquire) {
            return false;
        }
        match lifeline_state(peer) {
            LifelineState::Gone => return true,
            LifelineState::Held => {
                // Until the peer's death or close, or until told to stop
                // (`cancel_waiters` in drop): the loop looks again. The
                // word is the peer's to write: one that puts the waiter
                // bit back as drop clears it could make the wake miss, so
                // the wait also ends after a second, to look at `stopped`.
                let _ = wait_lifeline(peer, Some(LIFELINE_RECHECK), || {
                    stopped.load(Ordering::Acquire)
                });
            }
            LifelineState::Unheld => {
                let fds = [
                    (sock.as_fd(), Ready::HangUp),
                    (stop.as_fd(), Ready::Readable),
                ];
                match poll_ready(&fds, Some(recheck)) {
                    Ok(r) if r.first() == Some(&true) => return true,
                    Ok(r) if r.get(1) == Some(&true) => return false,
                    Ok(_) => recheck = (recheck * 2).min(std::time::Duration::from_secs(1)),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "peer watch poll failed; treating peer as dead");
                        return true;
                    }
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
            cancel_waiters(seg.lifeline(side.peer()));
        }
        let _ = self.stop.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Resets and wakes the wait words this side may sleep on: the producer's
/// word of the ring it writes and the consumer's word of the ring it reads.
pub(crate) fn wake_all(segment: &Segment, side_tx: Direction, doorbell: Option<&EventFd>) {
    let wake = |region: &SharedRegion, off: usize| {
        let word = region.u32_at(off);
        word.swap(NOT_WAITING, Ordering::AcqRel);
        let _ = futex_wake(word, i32::MAX as u32);
    };
    wake(&segment.ring_region(side_tx), PROD_WAIT);
    wake(&segment.ring_region(side_tx.reverse()), CONS_WAIT);
    if let Some(bell) = doorbell {
        let _ = bell.notify();
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
            let hold = Lifeline::hold(s.lifeline(Side::Server)).expect("robust list");
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

    #[test]
    fn dropping_a_connection_watch_returns_while_the_peer_lives() {
        // The peer (a thread here) holds its lifeline throughout; each drop
        // must stop the watch however its thread is placed in its loop.
        let seg = segment();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let s = seg.clone();
        let peer = std::thread::spawn(move || {
            let hold = Lifeline::hold(s.lifeline(Side::Server)).expect("robust list");
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
                let watch =
                    PeerWatch::connection(a, Liveness::new(), s.clone(), Side::Client, None)
                        .expect("watch");
                drop(watch);
            }
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_secs(60)).is_ok(),
            "dropping a watch hung while its peer held its lifeline"
        );
        done_tx.send(()).unwrap();
        peer.join().unwrap();
    }
}
