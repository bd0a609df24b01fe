//! One side of a shared-memory channel: a [`Sender`] on the ring this side
//! writes and a [`Receiver`] on the ring it reads, over one [`Segment`],
//! with a wait strategy and the peer's liveness.
//!
//! This is the transport the connection layer builds on; it moves frames of
//! bytes and knows nothing about calls.

use std::sync::Arc;
use std::time::Instant;

use isocall_ringbuf::{
    Consumer, Corrupt, Frame, Grant, Producer, ReserveError, ReserveWaitError, SharedRegion,
    WaitError, WaitStrategy,
};

use crate::liveness::Liveness;
use crate::segment::Segment;
pub use crate::segment::Side;
use crate::sys::Doorbell;
use crate::wake::RingParker;

/// Why a frame could not be sent or received.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer process died (or closed the connection).
    #[error("peer died")]
    PeerDied,
    /// The deadline passed first.
    #[error("timed out")]
    Timeout,
    /// The ring is full and the caller asked not to wait.
    #[error("ring full")]
    Full,
    /// A frame this large can never fit in the ring.
    #[error("frame of {len} bytes exceeds the ring's largest payload of {max} bytes")]
    TooLarge {
        /// Requested payload length.
        len: usize,
        /// Largest payload the ring carries.
        max: usize,
    },
    /// The kind is not a user kind.
    #[error("frame kind {kind:#06x} is reserved")]
    BadKind {
        /// Kind requested.
        kind: u16,
    },
    /// The peer corrupted the ring; close the connection.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    /// The stream socket failed, or a frame could not be sent on it: see
    /// [`StreamError`](crate::stream::StreamError) for which errors close
    /// the connection.
    #[error(transparent)]
    Stream(crate::stream::StreamError),
}

impl From<crate::stream::StreamError> for TransportError {
    fn from(e: crate::stream::StreamError) -> Self {
        use crate::stream::StreamError as S;
        match e {
            S::PeerDied => TransportError::PeerDied,
            S::Timeout => TransportError::Timeout,
            S::Full => TransportError::Full,
            S::TooLarge { len, max } => TransportError::TooLarge { len, max },
            S::BadKind { kind } => TransportError::BadKind { kind },
            other => TransportError::Stream(other),
        }
    }
}

impl From<ReserveError> for TransportError {
    fn from(e: ReserveError) -> Self {
        match e {
            ReserveError::Full => TransportError::Full,
            ReserveError::TooLarge { len, max } => TransportError::TooLarge { len, max },
            ReserveError::BadKind { kind } => TransportError::BadKind { kind },
            ReserveError::Corrupt(c) => TransportError::Corrupt(c),
            // A ring error this engine does not know yet: give the
            // connection up rather than retry.
            _ => TransportError::PeerDied,
        }
    }
}

impl From<WaitError> for TransportError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Timeout => TransportError::Timeout,
            WaitError::Stopped => TransportError::PeerDied,
            WaitError::Corrupt(c) => TransportError::Corrupt(c),
            _ => TransportError::PeerDied,
        }
    }
}

impl From<ReserveWaitError> for TransportError {
    fn from(e: ReserveWaitError) -> Self {
        match e {
            ReserveWaitError::Reserve(r) => r.into(),
            ReserveWaitError::Wait(w) => w.into(),
            _ => TransportError::PeerDied,
        }
    }
}

/// Why an endpoint could not be built on a segment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// A ring region of the segment is unusable.
    #[error("ring in segment unusable: {0}")]
    Ring(#[from] isocall_ringbuf::AttachError),
}

/// The writing half of an endpoint.
#[derive(Debug)]
pub struct Sender {
    tx: Producer<SharedRegion, RingParker>,
    strategy: WaitStrategy,
    liveness: Liveness,
    _segment: Arc<Segment>,
}

/// A frame read from a [`Receiver`].
pub type RxFrame<'a> = isocall_ringbuf::Frame<'a, SharedRegion, RingParker>;

/// The reading half of an endpoint.
#[derive(Debug)]
pub struct Receiver {
    rx: Consumer<SharedRegion, RingParker>,
    strategy: WaitStrategy,
    liveness: Liveness,
    doorbell: Arc<Doorbell>,
    _segment: Arc<Segment>,
}

/// Builds this side's sender and receiver on `segment`.
///
/// `strategy` decides how each half waits; the receiver sleeps on the futex
/// (the peer still rings `doorbell`, this side's end of the connection's
/// doorbell pair, for callers that [`Receiver::arm_doorbell`]).
///
/// # Errors
///
/// [`EndpointError::Ring`] if a ring region is not a valid ring.
pub fn endpoint(
    segment: Arc<Segment>,
    side: Side,
    doorbell: Arc<Doorbell>,
    strategy: WaitStrategy,
    liveness: Liveness,
) -> Result<(Sender, Receiver), EndpointError> {
    // Both halves fence asymmetrically where the OS allows: the hot paths
    // (publish, release) then carry no fence instruction, and a side pays
    // a heavy barrier only when it is about to sleep.
    let tx = Producer::attach(
        segment.ring_region(side.tx()),
        RingParker::futex(Some(doorbell.clone())).asymmetric_if_available(),
    )?;
    let rx = Consumer::attach(
        segment.ring_region(side.rx()),
        RingParker::futex(Some(doorbell.clone())).asymmetric_if_available(),
    )?;
    Ok((
        Sender {
            tx,
            strategy,
            liveness: liveness.clone(),
            _segment: segment.clone(),
        },
        Receiver {
            rx,
            strategy,
            liveness,
            doorbell,
            _segment: segment,
        },
    ))
}

impl Sender {
    /// Reserves room for a frame, waiting per the strategy until `deadline`.
    ///
    /// # Errors
    ///
    /// `PeerDied`, `Timeout`, `TooLarge`, `BadKind`, `Corrupt`.
    #[inline]
    pub fn reserve(
        &mut self,
        kind: u16,
        len: usize,
        deadline: Option<Instant>,
    ) -> Result<Grant<'_, SharedRegion, RingParker>, TransportError> {
        if self.liveness.is_dead() {
            return Err(TransportError::PeerDied);
        }
        let live = &self.liveness;
        Ok(self
            .tx
            .reserve_wait(kind, len, self.strategy, deadline, || live.peer_gone())?)
    }

    /// Reserves without waiting.
    ///
    /// # Errors
    ///
    /// `Full` when there is no room now; otherwise as [`reserve`](Self::reserve).
    #[inline]
    pub fn try_reserve(
        &mut self,
        kind: u16,
        len: usize,
    ) -> Result<Grant<'_, SharedRegion, RingParker>, TransportError> {
        if self.liveness.is_dead() {
            return Err(TransportError::PeerDied);
        }
        Ok(self.tx.reserve(kind, len)?)
    }

    /// Makes committed frames visible and wakes the peer if it sleeps.
    #[inline]
    pub fn publish(&mut self) {
        self.tx.publish();
    }

    /// Frames committed and not yet published.
    #[inline]
    pub fn unpublished(&self) -> u64 {
        self.tx.unpublished()
    }

    /// Whether the peer is known dead (its liveness flag, or its lifeline
    /// that the kernel marks when it dies).
    #[inline]
    pub fn peer_gone(&self) -> bool {
        self.liveness.peer_gone()
    }

    /// Copies `payload` into a frame and publishes it.
    ///
    /// # Errors
    ///
    /// As [`reserve`](Self::reserve).
    #[inline]
    pub fn send(
        &mut self,
        kind: u16,
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), TransportError> {
        let mut grant = self.reserve(kind, payload.len(), deadline)?;
        grant.bytes_mut().copy_from_slice(payload);
        grant.commit_all();
        self.tx.publish();
        Ok(())
    }

    /// Latency mode (default) or streaming mode: see
    /// [`Producer::set_zero_ahead`](isocall_ringbuf::Producer::set_zero_ahead).
    pub fn set_latency_mode(&mut self, on: bool) {
        self.tx.set_zero_ahead(on);
    }

    /// The producer's counters.
    pub fn stats(&self) -> isocall_ringbuf::ProducerStats {
        self.tx.stats()
    }

    /// The peer consumer's count of sleeps that no wake-up ended (see
    /// [`Producer::consumer_unwoken`](isocall_ringbuf::Producer::consumer_unwoken)).
    pub fn consumer_unwoken(&self) -> u64 {
        self.tx.consumer_unwoken()
    }

    /// Of those, the sleeps whose announcement this side never took down
    /// (see [`Producer::consumer_unseen`](isocall_ringbuf::Producer::consumer_unseen)).
    pub fn consumer_unseen(&self) -> u64 {
        self.tx.consumer_unseen()
    }

    /// Largest payload one frame can carry.
    pub fn max_payload(&self) -> usize {
        self.tx.max_payload()
    }
}

impl Receiver {
    /// Waits per the strategy for the next frame, until `deadline`.
    ///
    /// # Errors
    ///
    /// `PeerDied` (once every frame the peer published before its death
    /// was known has been read),
    /// `Timeout`, `Corrupt`.
    #[inline]
    pub fn recv(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Frame<'_, SharedRegion, RingParker>, TransportError> {
        let live = &self.liveness;
        Ok(self.rx.wait(self.strategy, deadline, || live.peer_gone())?)
    }

    /// The next frame if one is there now.
    ///
    /// # Errors
    ///
    /// `Corrupt`; `PeerDied` when the ring is empty and the peer is dead.
    #[inline]
    pub fn try_recv(
        &mut self,
    ) -> Result<Option<Frame<'_, SharedRegion, RingParker>>, TransportError> {
        let live = &self.liveness;
        Ok(self.rx.try_next(|| live.peer_gone())?)
    }

    /// Whether a frame is there now, for a spin (one load; see
    /// `Consumer::has_frame`): [`try_recv`](Self::try_recv) takes it.
    ///
    /// # Errors
    ///
    /// `Corrupt`.
    #[inline]
    pub fn has_frame(&mut self) -> Result<bool, TransportError> {
        Ok(self.rx.has_frame()?)
    }

    /// Announces that the caller will sleep on [`doorbell`](Self::doorbell)
    /// (in epoll or tokio) instead of in [`recv`](Self::recv). Returns true if
    /// a frame is already there: read it instead of sleeping.
    ///
    /// # Errors
    ///
    /// `Corrupt`.
    pub fn arm_doorbell(&mut self) -> Result<bool, TransportError> {
        Ok(self.rx.arm_doorbell()?)
    }

    /// This side's doorbell, which the peer's producer rings; poll it for
    /// readability in an event loop after
    /// [`arm_doorbell`](Self::arm_doorbell). It also turns readable for
    /// good when the peer's end goes away or the connection is over.
    pub fn doorbell(&self) -> &Doorbell {
        &self.doorbell
    }

    /// The consumer's counters.
    pub fn stats(&self) -> isocall_ringbuf::ConsumerStats {
        self.rx.stats()
    }
}
