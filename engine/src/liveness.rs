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
use crate::sys::lifeline::{Lifeline, LifelineState, lifeline_state, wait_lifeline};
use crate::sys::{EventFd, PidFd, Ready, futex_wake, poll_ready};

/// Shared flag: has the peer died? Cheap to check on every wait loop turn.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    dead: Arc<AtomicBool>,
}

impl Liveness {
    /// A flag saying the peer is alive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the peer is known to be dead.
    #[inline]
    pub fn is_dead(&self) -> bool {
        // Acquire: pairs with the Release in `mark_dead`.
        self.dead.load(Ordering::Acquire)
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
        let thread = std::thread::Builder::new()
            .name("isocall-peer-watch".into())
            .spawn(move || {
                let _span = tracing::debug_span!("peer_watch", ?side).entered();
                let hold = Lifeline::hold(seg.lifeline(side))
                    .inspect_err(|e| tracing::debug!(error = %e, "no lifeline held"))
                    .ok();
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
        Ok(PeerWatch {
            stop,
            lifeline: Some((stopped, segment, side)),
            thread: Some(thread),
        })
    }
}

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
                if wait_lifeline(peer, None) == LifelineState::Gone {
                    return true;
                }
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
            // The thread may be asleep on the peer's lifeline.
            let _ = futex_wake(seg.lifeline(side.peer()), u32::MAX >> 1);
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
