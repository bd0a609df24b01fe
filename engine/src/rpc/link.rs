//! The part of a connection both ends build the same way once the
//! handshake gave them a transport: this side's sender and receiver, its
//! view of the blob pool, and what watches the peer.
//!
//! The transport is the seam under the call layer: the rings of a shared
//! segment, or a stream socket ([`crate::stream`]). Clients and servers
//! move frames through [`Tx`], [`Rx`], [`Grant`] and [`Frame`], enums
//! with the frame-level interface both transports share (reserve, write,
//! commit, publish; receive, read, release). The ring is the first arm of
//! each: on a shared-memory connection every dispatch is the same,
//! predictable branch, and the ring's own calls are inlined behind it.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isocall_blob::{BlobHandle, Pool};
use isocall_ringbuf::{Grant as RingGrant, SharedRegion};

use crate::WaitStrategy;
use crate::endpoint::{EndpointError, Receiver, RxFrame, Sender, TransportError, endpoint};
use crate::liveness::{Liveness, PeerWatch, Watched};
use crate::rpc::large::large_id;
use crate::rpc::wire::{self, HANDLE, HEAD, kind};
use crate::segment::{Segment, SegmentError, Side};
use crate::stream::{StreamFrame, StreamGrant, StreamRx, StreamTx};
use crate::sys::{Doorbell, PeerCred, Ready, poll_ready};
use crate::wake::RingParker;

/// The sending half of a connection.
#[derive(Debug)]
pub(crate) enum Tx {
    /// On the ring this side writes.
    Ring(Sender),
    /// On a stream socket, with the connection's pool (to free the blobs
    /// of a frame that could not be sent).
    Stream(StreamTx, Option<Arc<Pool<SharedRegion>>>),
}

/// The receiving half of a connection.
#[derive(Debug)]
pub(crate) enum Rx {
    /// On the ring this side reads.
    Ring(Receiver),
    /// On a stream socket.
    Stream(StreamRx),
}

/// Room for one frame's payload, from [`Tx`].
pub(crate) enum Grant<'a> {
    /// In the ring.
    Ring(RingGrant<'a, SharedRegion, RingParker>),
    /// In the stream sender's buffer, with the connection's pool.
    Stream(StreamGrant<'a>, Option<&'a Pool<SharedRegion>>),
}

/// A frame read from [`Rx`]; [`release`](Frame::release) it to move on.
pub(crate) enum Frame<'a> {
    /// In the ring.
    Ring(RxFrame<'a>),
    /// In the stream receiver's private buffer.
    Stream(StreamFrame<'a>),
}

/// What a hot loop needs of a connection's sending half. [`Tx`] has it
/// (dispatching per call), and so has the ring's [`Sender`] alone: a loop
/// generic over it, instantiated once for the ring, pays nothing for the
/// stream transport beside it (one dispatch per turn, not one per frame).
pub(crate) trait SendFrames {
    /// Room for one frame.
    type Grant<'g>: WriteFrame
    where
        Self: 'g;

    /// As [`Tx::try_reserve`].
    fn try_reserve(&mut self, kind: u16, len: usize) -> Result<Self::Grant<'_>, TransportError>;

    /// As [`Tx::reserve`].
    fn reserve(
        &mut self,
        kind: u16,
        len: usize,
        deadline: Option<Instant>,
    ) -> Result<Self::Grant<'_>, TransportError>;

    /// As [`Tx::publish`].
    fn publish(&mut self);

    /// Publishes the requests a client holds back on a ring (see
    /// `ClientOptions::batch_requests`), before it waits for a reply it
    /// did not find. A stream's own deferred frames go when its receiver
    /// waits (see `StreamRx`): nothing to do here.
    #[inline(always)]
    fn publish_held(&mut self) {}

    /// As [`Tx::max_payload`].
    fn max_payload(&self) -> usize;

    /// Whether a server publishes a run of replies in groups that double
    /// while requests keep coming (the ring: each publication makes a
    /// cache line the peer takes once), rather than once when no request
    /// is left (a stream, where each publication is a system call).
    const GROUPS: bool = true;
}

/// Room reserved by [`SendFrames`].
pub(crate) trait WriteFrame {
    /// As [`Grant::bytes_mut`].
    fn bytes_mut(&mut self) -> &mut [u8];

    /// As [`Grant::commit`].
    fn commit(self, used: usize) -> Result<(), TransportError>;
}

/// What a hot loop needs of a connection's receiving half (see
/// [`SendFrames`]).
pub(crate) trait RecvFrames {
    /// A frame read.
    type Frame<'f>: ReadFrame
    where
        Self: 'f;

    /// As [`Rx::try_recv`].
    fn try_recv(&mut self) -> Result<Option<Self::Frame<'_>>, TransportError>;

    /// As [`Rx::recv`].
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Self::Frame<'_>, TransportError>;

    /// Whether [`try_recv`](Self::try_recv) would find a frame now: for a
    /// loop that spins until one comes, then takes it with one `try_recv`.
    /// A ring answers with one load (a hint: the `try_recv` checks); a
    /// stream tries the read.
    fn has_frame(&mut self) -> Result<bool, TransportError> {
        Ok(self.try_recv()?.is_some())
    }

    /// As [`Rx::try_recv`], the frame as either transport's (to be kept
    /// past the loop, in a reply).
    fn try_recv_any(&mut self) -> Result<Option<Frame<'_>>, TransportError>;

    /// As [`Rx::try_recv`], for a loop that sleeps on the connection when
    /// this finds nothing: once `served` (a frame was handled since the
    /// last wait), a stream whose last read found its socket drained
    /// answers from its buffer alone (the sleep's `poll` sees the rest).
    /// The ring ignores `served`.
    fn try_recv_after(&mut self, served: bool) -> Result<Option<Self::Frame<'_>>, TransportError>;

    /// Whether a stream's last read found its socket drained (more frames
    /// come only after a wait); false on the ring.
    fn drained(&self) -> bool;
}

/// A frame read through [`RecvFrames`].
pub(crate) trait ReadFrame {
    /// As [`Frame::kind`].
    fn kind(&self) -> u16;

    /// As [`Frame::payload`].
    fn payload(&self) -> &[u8];

    /// As [`Frame::release`].
    fn release(self);
}

impl SendFrames for Sender {
    type Grant<'g> = RingGrant<'g, SharedRegion, RingParker>;

    #[inline(always)]
    fn try_reserve(&mut self, kind: u16, len: usize) -> Result<Self::Grant<'_>, TransportError> {
        Sender::try_reserve(self, kind, len)
    }

    fn reserve(
        &mut self,
        kind: u16,
        len: usize,
        deadline: Option<Instant>,
    ) -> Result<Self::Grant<'_>, TransportError> {
        Sender::reserve(self, kind, len, deadline)
    }

    #[inline(always)]
    fn publish(&mut self) {
        Sender::publish(self);
    }

    #[inline(always)]
    fn publish_held(&mut self) {
        // Not to a server known dead: frames still held back then provably
        // never reached it (see `Client::never_sent`).
        if self.unpublished() != 0 && !self.peer_gone() {
            Sender::publish(self);
        }
    }

    #[inline(always)]
    fn max_payload(&self) -> usize {
        Sender::max_payload(self)
    }
}

impl WriteFrame for RingGrant<'_, SharedRegion, RingParker> {
    #[inline(always)]
    fn bytes_mut(&mut self) -> &mut [u8] {
        RingGrant::bytes_mut(self)
    }

    #[inline(always)]
    fn commit(self, used: usize) -> Result<(), TransportError> {
        RingGrant::commit(self, used);
        Ok(())
    }
}

impl RecvFrames for Receiver {
    type Frame<'f> = RxFrame<'f>;

    #[inline(always)]
    fn try_recv(&mut self) -> Result<Option<RxFrame<'_>>, TransportError> {
        Receiver::try_recv(self)
    }

    fn recv(&mut self, deadline: Option<Instant>) -> Result<RxFrame<'_>, TransportError> {
        Receiver::recv(self, deadline)
    }

    #[inline(always)]
    fn has_frame(&mut self) -> Result<bool, TransportError> {
        Receiver::has_frame(self)
    }

    #[inline(always)]
    fn try_recv_any(&mut self) -> Result<Option<Frame<'_>>, TransportError> {
        Ok(Receiver::try_recv(self)?.map(Frame::Ring))
    }

    #[inline(always)]
    fn try_recv_after(&mut self, _served: bool) -> Result<Option<RxFrame<'_>>, TransportError> {
        Receiver::try_recv(self)
    }

    #[inline(always)]
    fn drained(&self) -> bool {
        false
    }
}

impl ReadFrame for RxFrame<'_> {
    #[inline(always)]
    fn kind(&self) -> u16 {
        RxFrame::kind(self)
    }

    #[inline(always)]
    fn payload(&self) -> &[u8] {
        RxFrame::payload(self)
    }

    #[inline(always)]
    fn release(self) {
        RxFrame::release(self);
    }
}

impl SendFrames for Tx {
    type Grant<'g> = Grant<'g>;

    // The rings are served through `Sender`; a `Tx` is served as a stream.
    const GROUPS: bool = false;

    fn try_reserve(&mut self, kind: u16, len: usize) -> Result<Grant<'_>, TransportError> {
        Tx::try_reserve(self, kind, len)
    }

    fn reserve(
        &mut self,
        kind: u16,
        len: usize,
        deadline: Option<Instant>,
    ) -> Result<Grant<'_>, TransportError> {
        Tx::reserve(self, kind, len, deadline)
    }

    fn publish(&mut self) {
        Tx::publish(self);
    }

    fn publish_held(&mut self) {
        if let Tx::Ring(s) = self {
            SendFrames::publish_held(s);
        }
    }

    fn max_payload(&self) -> usize {
        Tx::max_payload(self)
    }
}

impl WriteFrame for Grant<'_> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        Grant::bytes_mut(self)
    }

    fn commit(self, used: usize) -> Result<(), TransportError> {
        Grant::commit(self, used)
    }
}

impl RecvFrames for Rx {
    type Frame<'f> = Frame<'f>;

    fn try_recv(&mut self) -> Result<Option<Frame<'_>>, TransportError> {
        Rx::try_recv(self)
    }

    fn recv(&mut self, deadline: Option<Instant>) -> Result<Frame<'_>, TransportError> {
        Rx::recv(self, deadline)
    }

    fn has_frame(&mut self) -> Result<bool, TransportError> {
        match self {
            Rx::Ring(r) => r.has_frame(),
            Rx::Stream(_) => Ok(self.try_recv()?.is_some()),
        }
    }

    fn try_recv_any(&mut self) -> Result<Option<Frame<'_>>, TransportError> {
        Rx::try_recv(self)
    }

    fn try_recv_after(&mut self, served: bool) -> Result<Option<Frame<'_>>, TransportError> {
        match self {
            Rx::Ring(r) => Ok(r.try_recv()?.map(Frame::Ring)),
            Rx::Stream(r) => stream_try_recv_after(r, served),
        }
    }

    fn drained(&self) -> bool {
        match self {
            Rx::Ring(_) => false,
            Rx::Stream(r) => r.is_drained(),
        }
    }
}

impl ReadFrame for Frame<'_> {
    fn kind(&self) -> u16 {
        Frame::kind(self)
    }

    fn payload(&self) -> &[u8] {
        Frame::payload(self)
    }

    fn release(self) {
        Frame::release(self);
    }
}

impl Tx {
    /// Reserves room for a frame without waiting.
    ///
    /// # Errors
    ///
    /// `Full` when there is no room now; `PeerDied`, `TooLarge`,
    /// `BadKind`, the stream's failure.
    #[inline(always)]
    pub(crate) fn try_reserve(
        &mut self,
        kind: u16,
        len: usize,
    ) -> Result<Grant<'_>, TransportError> {
        match self {
            Tx::Ring(s) => Ok(Grant::Ring(s.try_reserve(kind, len)?)),
            Tx::Stream(s, pool) => stream_try_reserve(s, pool.as_deref(), kind, len),
        }
    }

    /// Reserves room for a frame, waiting until `deadline`.
    ///
    /// # Errors
    ///
    /// As [`try_reserve`](Self::try_reserve), and `Timeout` for `Full`.
    #[inline]
    pub(crate) fn reserve(
        &mut self,
        kind: u16,
        len: usize,
        deadline: Option<Instant>,
    ) -> Result<Grant<'_>, TransportError> {
        match self {
            Tx::Ring(s) => Ok(Grant::Ring(s.reserve(kind, len, deadline)?)),
            Tx::Stream(s, pool) => Ok(Grant::Stream(
                s.reserve(kind, len, deadline)?,
                pool.as_deref(),
            )),
        }
    }

    /// Makes committed frames visible to the peer (on a stream: hands
    /// them to the socket, which takes what it can now). A stream's
    /// failure is kept by the connection and returned by the next
    /// operation on either half.
    #[inline(always)]
    pub(crate) fn publish(&mut self) {
        match self {
            Tx::Ring(s) => s.publish(),
            Tx::Stream(s, _) => stream_publish(s),
        }
    }

    /// As [`publish`](Self::publish), but a stream keeps the frames until
    /// this side waits, or sends them with the next publish, or once they
    /// pass [`DEFER_LIMIT`](crate::stream::DEFER_LIMIT) bytes (see
    /// [`StreamTx::defer`]); the ring publishes.
    pub(crate) fn defer(&mut self) {
        match self {
            Tx::Ring(s) => s.publish(),
            Tx::Stream(s, _) => {
                // A failure is kept by the connection and returned by its
                // next operation.
                let _ = s.defer();
            }
        }
    }

    /// Largest payload one frame can carry.
    #[inline]
    pub(crate) fn max_payload(&self) -> usize {
        match self {
            Tx::Ring(s) => s.max_payload(),
            Tx::Stream(s, _) => s.max_payload(),
        }
    }

    /// The stream's socket and whether published bytes wait for it (to
    /// poll it writable too); `None` on a ring.
    pub(crate) fn stream_poll(&self) -> Option<(BorrowedFd<'_>, bool)> {
        match self {
            Tx::Ring(_) => None,
            Tx::Stream(s, _) => Some((s.poll_fd(), s.wants_write())),
        }
    }

    /// The stream sender, if this is one.
    pub(crate) fn stream(&self) -> Option<&StreamTx> {
        match self {
            Tx::Ring(_) => None,
            Tx::Stream(s, _) => Some(s),
        }
    }
}

/// A connection's sending half whose [`publish`](SendFrames::publish)
/// defers (see [`Tx::defer`]) unless `now`: for a client that starts a
/// call while others are in flight, and sends the requests when it waits.
pub(crate) struct Deferring<'t> {
    pub(crate) tx: &'t mut Tx,
    /// Publish at once (a lone call, a message).
    pub(crate) now: bool,
}

impl SendFrames for Deferring<'_> {
    type Grant<'g>
        = Grant<'g>
    where
        Self: 'g;

    fn try_reserve(&mut self, kind: u16, len: usize) -> Result<Grant<'_>, TransportError> {
        self.tx.try_reserve(kind, len)
    }

    fn reserve(
        &mut self,
        kind: u16,
        len: usize,
        deadline: Option<Instant>,
    ) -> Result<Grant<'_>, TransportError> {
        self.tx.reserve(kind, len, deadline)
    }

    fn publish(&mut self) {
        if self.now {
            self.tx.publish();
        } else {
            self.tx.defer();
        }
    }

    fn max_payload(&self) -> usize {
        self.tx.max_payload()
    }
}

impl<'a> Grant<'a> {
    /// The reserved payload bytes.
    #[inline(always)]
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Grant::Ring(g) => g.bytes_mut(),
            Grant::Stream(g, _) => g.bytes_mut(),
        }
    }

    /// Commits the first `used` bytes as a frame (visible after the next
    /// publish). On a ring this cannot fail. On a stream a call frame's
    /// blobs are copied into it now; if it cannot be sent (over the frame
    /// limit, a blob handle the pool does not hold in flight), the frame
    /// is dropped and the pool blobs it names are freed, as the peer
    /// would have freed them.
    ///
    /// # Errors
    ///
    /// The stream's [`StreamError`](crate::stream::StreamError) (as a
    /// [`TransportError`]); the connection goes on.
    #[inline(always)]
    pub(crate) fn commit(self, used: usize) -> Result<(), TransportError> {
        match self {
            Grant::Ring(g) => {
                g.commit(used);
                Ok(())
            }
            Grant::Stream(g, pool) => stream_commit(g, pool, used),
        }
    }

    /// Commits the whole reservation.
    ///
    /// # Errors
    ///
    /// As [`commit`](Self::commit).
    #[inline]
    pub(crate) fn commit_all(mut self) -> Result<(), TransportError> {
        let len = self.bytes_mut().len();
        self.commit(len)
    }
}

// The stream arms of the hot dispatchers above, kept out of line: the
// ring arm is inlined into its caller and stays a few instructions behind
// one predictable branch, whatever the stream side grows into.

#[inline(never)]
fn stream_try_reserve<'a>(
    s: &'a mut StreamTx,
    pool: Option<&'a Pool<SharedRegion>>,
    kind: u16,
    len: usize,
) -> Result<Grant<'a>, TransportError> {
    Ok(Grant::Stream(s.try_reserve(kind, len)?, pool))
}

#[inline(never)]
fn stream_publish(s: &mut StreamTx) {
    // A failure is kept by the connection and returned by its next
    // operation.
    let _ = s.publish();
}

#[inline(never)]
fn stream_commit(
    mut g: StreamGrant<'_>,
    pool: Option<&Pool<SharedRegion>>,
    used: usize,
) -> Result<(), TransportError> {
    let (n, handles) = call_blobs(g.kind(), &g.bytes_mut()[..used]);
    g.commit(used).map_err(|e| {
        if let Some(pool) = pool {
            for h in handles.iter().take(n).filter(|h| large_id(h).is_none()) {
                drop(pool.recall(h));
            }
        }
        TransportError::from(e)
    })
}

#[inline(never)]
fn stream_try_recv_after(
    r: &mut StreamRx,
    served: bool,
) -> Result<Option<Frame<'_>>, TransportError> {
    let f = if served {
        r.try_recv_buffered()?
    } else {
        r.try_recv()?
    };
    Ok(f.map(Frame::Stream))
}

#[inline(never)]
fn stream_try_recv(r: &mut StreamRx) -> Result<Option<Frame<'_>>, TransportError> {
    Ok(r.try_recv()?.map(Frame::Stream))
}

/// The blob handles a call frame's payload names (none for other kinds,
/// or a payload that does not hold what its head says).
fn call_blobs(k: u16, payload: &[u8]) -> (usize, [BlobHandle; wire::MAX_BLOBS]) {
    let mut out = [BlobHandle::default(); wire::MAX_BLOBS];
    if !matches!(k, kind::REQUEST | kind::RESPONSE | kind::MESSAGE) || payload.len() < HEAD {
        return (0, out);
    }
    let at = std::mem::offset_of!(wire::CallHead, nblobs);
    let n = u32::from_le_bytes([
        payload[at],
        payload[at + 1],
        payload[at + 2],
        payload[at + 3],
    ]) as usize;
    if n > wire::MAX_BLOBS || payload.len() < HEAD + n * HANDLE {
        return (0, out);
    }
    for (i, h) in out.iter_mut().enumerate().take(n) {
        let b = &payload[HEAD + i * HANDLE..HEAD + (i + 1) * HANDLE];
        *h = BlobHandle::from_bytes(b).unwrap_or_default();
    }
    (n, out)
}

impl Rx {
    /// The next frame if one is there now.
    ///
    /// # Errors
    ///
    /// `PeerDied` once the peer is gone and every frame it sent was read;
    /// `Corrupt` (a ring) or the stream's failure.
    #[inline(always)]
    pub(crate) fn try_recv(&mut self) -> Result<Option<Frame<'_>>, TransportError> {
        match self {
            Rx::Ring(r) => Ok(r.try_recv()?.map(Frame::Ring)),
            Rx::Stream(r) => stream_try_recv(r),
        }
    }

    /// Waits for the next frame until `deadline` (a stream sends what its
    /// sender left unsent meanwhile).
    ///
    /// # Errors
    ///
    /// `Timeout`; as [`try_recv`](Self::try_recv).
    #[inline]
    pub(crate) fn recv(&mut self, deadline: Option<Instant>) -> Result<Frame<'_>, TransportError> {
        match self {
            Rx::Ring(r) => Ok(Frame::Ring(r.recv(deadline)?)),
            Rx::Stream(r) => Ok(Frame::Stream(r.recv(deadline)?)),
        }
    }

    /// Prepares to sleep in `poll` (on the doorbell of a ring, on the
    /// socket of a stream): true if a frame is already there.
    ///
    /// # Errors
    ///
    /// `Corrupt`, the stream's failure.
    pub(crate) fn arm_doorbell(&mut self) -> Result<bool, TransportError> {
        match self {
            Rx::Ring(r) => r.arm_doorbell(),
            Rx::Stream(r) => Ok(r.arm_doorbell()?),
        }
    }

    /// A stream served alone: waits for its next frame in `recv` itself,
    /// a bounded slice (see [`StreamRx::wait_in_read`]); true if a frame
    /// came (or the stream ended). A ring: false at once.
    ///
    /// # Errors
    ///
    /// The stream's failure.
    pub(crate) fn wait_in_read(&mut self) -> Result<bool, TransportError> {
        match self {
            Rx::Ring(_) => Ok(false),
            Rx::Stream(r) => Ok(r.wait_in_read()?),
        }
    }
}

impl Frame<'_> {
    /// The frame's kind.
    #[inline(always)]
    pub(crate) fn kind(&self) -> u16 {
        match self {
            Frame::Ring(f) => f.kind(),
            Frame::Stream(f) => f.kind(),
        }
    }

    /// The payload (16-byte aligned).
    #[inline(always)]
    pub(crate) fn payload(&self) -> &[u8] {
        match self {
            Frame::Ring(f) => f.payload(),
            Frame::Stream(f) => f.payload(),
        }
    }

    /// Moves on to the next frame.
    #[inline(always)]
    pub(crate) fn release(self) {
        match self {
            Frame::Ring(f) => f.release(),
            Frame::Stream(f) => f.release(),
        }
    }
}

/// What a shared-memory connection has besides its rings: the peer's
/// liveness, the doorbells and the connection's socket.
#[derive(Debug)]
pub(crate) struct RingLink {
    pub(crate) liveness: Liveness,
    pub(crate) doorbell: Arc<Doorbell>,
    /// Dropped before the socket: the watch thread, then the socket (the
    /// peer's hang-up).
    pub(crate) _watch: PeerWatch,
    pub(crate) sock: OwnedFd,
}

/// One side of an established connection.
pub(crate) struct Link {
    pub(crate) tx: Tx,
    pub(crate) rx: Rx,
    pub(crate) pool: Option<Arc<Pool<SharedRegion>>>,
    /// A shared-memory connection's watch and sockets; `None` on a
    /// stream, whose socket is both halves' and reports the peer's end
    /// itself.
    pub(crate) ring: Option<RingLink>,
}

/// Why a link could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error("peer watch: {0}")]
    Io(#[from] std::io::Error),
}

impl Link {
    /// Builds `side`'s link on `segment`: attaches this side, its sender
    /// and receiver, opens the pool, and starts the watch on the peer
    /// (`peer` are the socket's credentials: its pidfd is watched too).
    pub(crate) fn attach(
        segment: Segment,
        side: Side,
        doorbell: Doorbell,
        strategy: WaitStrategy,
        sock: OwnedFd,
        peer: &PeerCred,
    ) -> Result<Link, LinkError> {
        let segment = Arc::new(segment);
        segment.attach_side(side);
        let doorbell = Arc::new(doorbell);
        let liveness = Liveness::connection(segment.clone(), side);
        let (tx, rx) = endpoint(
            segment.clone(),
            side,
            doorbell.clone(),
            strategy,
            liveness.clone(),
        )?;
        let pool = segment.blob_pool(side)?.map(Arc::new);
        let watched = Watched::socket(&sock, peer)?;
        let watch = PeerWatch::connection(
            watched,
            liveness.clone(),
            segment.clone(),
            side,
            Some(doorbell.clone()),
        )?;
        Ok(Link {
            tx: Tx::Ring(tx),
            rx: Rx::Ring(rx),
            pool,
            ring: Some(RingLink {
                liveness,
                doorbell,
                _watch: watch,
                sock,
            }),
        })
    }

    /// A link on the two halves of a stream endpoint (configured by the
    /// handshake).
    pub(crate) fn stream(tx: StreamTx, rx: StreamRx) -> Link {
        let pool = tx.pool().cloned();
        Link {
            tx: Tx::Stream(tx, pool.clone()),
            rx: Rx::Stream(rx),
            pool,
            ring: None,
        }
    }

    /// Whether the peer is known gone: the kernel marked its lifeline or
    /// the watch saw it die (a ring), or the connection failed or the
    /// peer hung up its socket (a stream).
    pub(crate) fn peer_gone(&self) -> bool {
        match (&self.ring, &self.tx) {
            (Some(r), _) => r.liveness.peer_gone(),
            (None, tx) => tx.stream().is_none_or(stream_gone),
        }
    }
}

/// Whether a stream connection is over: failed, or its peer hung up (a
/// look at the socket that does not wait, and reads nothing).
pub(crate) fn stream_gone(tx: &StreamTx) -> bool {
    tx.is_closed()
        || poll_ready(&[(tx.poll_fd(), Ready::HangUp)], Some(Duration::ZERO)).is_ok_and(|r| r[0])
}
