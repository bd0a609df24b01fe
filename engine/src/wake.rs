//! The engine's [`Parker`]: futex sleep on the ring's wait word, or the
//! connection's [`Doorbell`] for callers that wait in `poll`, epoll or
//! tokio.
//!
//! Each side owns its end of the doorbell pair. A producer that finds the
//! consumer announced [`WAITING_DOORBELL`] rings the peer through its own
//! end; one that finds [`WAITING_FUTEX`] wakes the futex. A producer
//! waiting for room always sleeps on the futex. Neither wake-up can block:
//! a futex wake never does, and a doorbell ring never waits (see
//! [`Doorbell`]). Every sleep has the caller's deadline.

use std::sync::Arc;
use std::time::Instant;

use isocall_ringbuf::sync::AtomicU32;
use isocall_ringbuf::wait::{Parker, WAITING_DOORBELL, WAITING_FUTEX};

use crate::sys::{Doorbell, futex_wait, futex_wake, heavy_barrier, heavy_barrier_available};

/// Wakes and parks one side of a ring in a shared segment.
#[derive(Clone, Debug)]
pub struct RingParker {
    /// This side's end of the connection's doorbell pair: polled by this
    /// side's consumer in doorbell mode, and the way this side's producer
    /// rings the peer.
    doorbell: Option<Arc<Doorbell>>,
    /// Whether this side sleeps on the doorbell (else on the futex).
    sleep_on_doorbell: bool,
    /// Whether this side fences asymmetrically (heavy barrier before it
    /// sleeps, so the peer's hot path needs only a compiler fence).
    asymmetric: bool,
}

impl RingParker {
    /// A parker that sleeps on the futex and wakes the peer by futex or
    /// through `doorbell` (this side's end, if the connection has one).
    pub fn futex(doorbell: Option<Arc<Doorbell>>) -> Self {
        RingParker {
            doorbell,
            sleep_on_doorbell: false,
            asymmetric: false,
        }
    }

    /// The same parker, fencing asymmetrically if this process can issue
    /// heavy barriers (`membarrier`); see `isocall_ringbuf::wait`.
    pub fn asymmetric_if_available(mut self) -> Self {
        self.asymmetric = heavy_barrier_available();
        self
    }

    /// A parker for a consumer that sleeps on this side's doorbell.
    pub fn doorbell(doorbell: Arc<Doorbell>) -> Self {
        RingParker {
            doorbell: Some(doorbell),
            sleep_on_doorbell: true,
            asymmetric: false,
        }
    }
}

impl Parker for RingParker {
    fn announce(&self) -> u32 {
        if self.sleep_on_doorbell {
            WAITING_DOORBELL
        } else {
            WAITING_FUTEX
        }
    }

    fn park(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>) {
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if timeout.is_some_and(|t| t.is_zero()) {
            return;
        }
        // Errors (EINTR, EAGAIN, timeout) all mean "re-check"; the ring loops.
        match (&self.doorbell, self.sleep_on_doorbell) {
            (Some(bell), true) => {
                let _ = bell.wait(timeout);
            }
            _ => {
                let _ = futex_wait(word, expected, timeout);
            }
        }
    }

    fn asymmetric(&self) -> bool {
        self.asymmetric
    }

    fn heavy_fence(&self) {
        heavy_barrier();
    }

    fn unpark(&self, word: &AtomicU32, announced: u32) {
        // A hostile peer may announce anything: a value we do not know gets
        // both wake-ups, which is harmless.
        if announced != WAITING_FUTEX
            && let Some(bell) = &self.doorbell
        {
            bell.ring_peer();
        }
        if announced != WAITING_DOORBELL {
            let _ = futex_wake(word, i32::MAX as u32);
        }
    }
}
