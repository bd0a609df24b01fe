//! The sending half of a stream endpoint: grants into a userspace buffer,
//! frames encoded on commit, one `send` per publish.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use isocall_blob::{BlobHandle, BlobMut, Pool};
use isocall_ringbuf::{MAX_USER_KIND, SharedRegion};
use rkyv::util::AlignedVec;

use super::blobs::{LargeBlobs, LocalPool};
use super::codec::{Encoder, MAX_INLINE_BLOBS};
use super::error::StreamError;
use super::wire::Wire;
use crate::rpc::large::{LargeBlob, large_id};
use crate::rpc::wire::{CallHead, HANDLE, HEAD, kind};
use crate::sys::poll_stream;

/// Deferred bytes (see [`StreamTx::defer`]) past which they are sent at
/// once: a few TCP segments, far below any send buffer.
pub const DEFER_LIMIT: usize = 16 << 10;

/// What a sender allows itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SendLimits {
    pub(crate) max_payload: usize,
    pub(crate) max_frame: usize,
    pub(crate) send_buffer: usize,
}

/// A sender's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TxStats {
    /// Frames committed.
    pub frames: u64,
    /// Payload bytes committed (before compression).
    pub payload_bytes: u64,
    /// Bytes of encoded frames (varints, headers, inline blobs, after
    /// compression).
    pub wire_bytes: u64,
    /// Blobs sent inline.
    pub blobs: u64,
    /// Publishes that had frames to send.
    pub publishes: u64,
    /// `send` system calls that moved bytes (both halves' flushes).
    pub sends: u64,
}

/// The sending half of a stream endpoint.
///
/// The same interface as the ring's [`Sender`](crate::raw::Sender): a
/// [`StreamGrant`] is room for one frame's payload, written in place (in
/// a 16-byte aligned buffer of this sender's) and committed; committing
/// encodes the frame (its length, header, the payload compressed or not,
/// and the blobs it names inline) into the sender's batch; [`publish`]
/// hands the whole batch to the socket in one `send`. What the socket does
/// not take stays buffered, in order, and goes with the next publish, or
/// while either half waits; nothing is lost and nothing waits past a
/// deadline.
///
/// [`publish`]: Self::publish
pub struct StreamTx {
    wire: Arc<Wire>,
    /// The open grant's bytes (kept at the longest length asked, so a
    /// grant costs no zeroing).
    stage: AlignedVec<16>,
    /// Committed frames, not yet published.
    staged: Vec<u8>,
    encoder: Encoder,
    limits: SendLimits,
    pool: Option<Arc<LocalPool>>,
    large: Arc<LargeBlobs>,
    stats: TxStats,
}

impl std::fmt::Debug for StreamTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTx")
            .field("staged", &self.staged.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Sends, from another thread, what a [`StreamTx`] published and the
/// socket did not take yet (a channel publisher's pump: its subscribers
/// get every byte published even while the publisher sends nothing).
/// Shares the sender's connection, whose output is locked.
#[derive(Clone)]
pub(crate) struct Flusher(Arc<Wire>);

impl Flusher {
    /// The socket, to poll for writability.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.fd()
    }

    /// Whether published bytes wait for the socket (and the connection
    /// has not failed).
    pub(crate) fn has_pending(&self) -> bool {
        self.0.failure().is_none() && self.0.has_pending()
    }

    /// Gives the socket what it takes now (never waits); a failure is
    /// the connection's, which both halves then report.
    pub(crate) fn flush(&self) {
        if let Err(e) = self.0.flush() {
            self.0.fail(e);
        }
    }

    /// Bytes published and not yet taken by the socket.
    pub(crate) fn unsent(&self) -> usize {
        self.0.unsent()
    }

    /// Whether two flushers send on the same connection.
    pub(crate) fn same(&self, other: &Flusher) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Room for one frame's payload: write it with
/// [`bytes_mut`](Self::bytes_mut), then [`commit`](Self::commit) it.
/// Dropping a grant sends nothing and leaks nothing.
pub struct StreamGrant<'a> {
    tx: &'a mut StreamTx,
    kind: u16,
    flags: u16,
    len: usize,
}

/// The call kinds: their payload starts with a call head and blob handles.
fn is_call(k: u16) -> bool {
    matches!(k, kind::REQUEST | kind::RESPONSE | kind::MESSAGE)
}

/// The number of blob handles a call frame's head names (0 for other
/// frames, and for payloads too short for a head).
pub(crate) fn call_handles(k: u16, payload: &[u8]) -> u32 {
    const AT: usize = std::mem::offset_of!(CallHead, nblobs);
    match payload.get(AT..AT + 4) {
        Some(b) if is_call(k) && payload.len() >= HEAD => {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
        _ => 0,
    }
}

/// Handle `i` of a call frame's payload (which holds it: checked before).
pub(crate) fn handle_at(payload: &[u8], i: usize) -> BlobHandle {
    let at = HEAD + i * HANDLE;
    BlobHandle::from_bytes(&payload[at..at + HANDLE]).expect("16 bytes")
}

impl StreamTx {
    pub(crate) fn new(
        wire: Arc<Wire>,
        limits: SendLimits,
        lz4: Option<super::codec::Lz4>,
        pool: Option<Arc<LocalPool>>,
        large: Arc<LargeBlobs>,
    ) -> StreamTx {
        StreamTx {
            wire,
            stage: AlignedVec::new(),
            staged: Vec::new(),
            encoder: Encoder::new(lz4),
            limits,
            pool,
            large,
            stats: TxStats::default(),
        }
    }

    /// See [`reconfigure`](super::reconfigure).
    pub(crate) fn reconfigure(
        &mut self,
        limits: SendLimits,
        lz4: Option<super::codec::Lz4>,
        pool: Option<Arc<LocalPool>>,
        large: Arc<LargeBlobs>,
    ) {
        self.limits = limits;
        self.encoder = Encoder::new(lz4);
        self.pool = pool;
        self.large = large;
    }

    /// Whether the connection is over: an error ended it (the peer's
    /// death included, once either half saw it), on this half or the
    /// other.
    pub fn is_closed(&self) -> bool {
        self.wire.failure().is_some()
    }

    fn check(&self, kind: u16, len: usize) -> Result<(), StreamError> {
        if let Some(e) = self.wire.failure() {
            return Err(e);
        }
        if kind == 0 || kind > MAX_USER_KIND {
            return Err(StreamError::BadKind { kind });
        }
        if len > self.limits.max_payload {
            return Err(StreamError::TooLarge {
                len,
                max: self.limits.max_payload,
            });
        }
        Ok(())
    }

    /// Records a failure of the connection.
    fn fail(&self, e: StreamError) -> StreamError {
        self.wire.fail(e.clone());
        e
    }

    /// Whether the batch and the unsent bytes leave room for a frame (the
    /// send buffer is a soft limit: one frame always fits an empty one).
    /// Unsent bytes are offered to the socket only when they fill the
    /// buffer (deferred frames stay deferred).
    fn room(&mut self) -> Result<bool, StreamError> {
        if !self.wire.has_pending() {
            return Ok(self.staged.is_empty() || self.staged.len() < self.limits.send_buffer);
        }
        let queued = self.staged.len() + self.wire.unsent();
        if queued < self.limits.send_buffer {
            return Ok(true);
        }
        self.wire.try_flush().map_err(|e| self.fail(e))?;
        let queued = self.staged.len() + self.wire.unsent();
        Ok(queued == 0 || queued < self.limits.send_buffer)
    }

    fn grant(&mut self, kind: u16, len: usize) -> StreamGrant<'_> {
        if self.stage.len() < len {
            self.stage.resize(len, 0);
        }
        StreamGrant {
            tx: self,
            kind,
            flags: 0,
            len,
        }
    }

    /// Reserves room for a frame of `len` payload bytes, waiting until
    /// `deadline` (`None`: no limit) while the send buffer is full. A
    /// batch that fills the buffer by itself is published first.
    ///
    /// # Errors
    ///
    /// `Timeout`; `TooLarge`, `BadKind`; the connection's failure
    /// (`PeerDied`, ...).
    pub fn reserve(
        &mut self,
        kind: u16,
        len: usize,
        deadline: Option<Instant>,
    ) -> Result<StreamGrant<'_>, StreamError> {
        self.check(kind, len)?;
        while !self.room()? {
            if !self.staged.is_empty() {
                self.publish()?;
                continue;
            }
            self.wait_writable(deadline)?;
        }
        Ok(self.grant(kind, len))
    }

    /// Reserves without waiting.
    ///
    /// # Errors
    ///
    /// `Full` when the send buffer holds as much as allowed and the socket
    /// takes nothing now; otherwise as [`reserve`](Self::reserve).
    pub fn try_reserve(&mut self, kind: u16, len: usize) -> Result<StreamGrant<'_>, StreamError> {
        self.check(kind, len)?;
        if !self.room()? {
            return Err(StreamError::Full);
        }
        Ok(self.grant(kind, len))
    }

    /// A handle that sends what this sender published, from another
    /// thread.
    pub(crate) fn flusher(&self) -> Flusher {
        Flusher(self.wire.clone())
    }

    /// Reserves room for a small frame past the send buffer's limit,
    /// without waiting: for the last word to a peer that is being closed
    /// (a channel's CLOSE to a subscriber that lags), which must not wait
    /// for the room the peer does not make.
    pub(crate) fn reserve_past_limit(
        &mut self,
        kind: u16,
        len: usize,
    ) -> Result<StreamGrant<'_>, StreamError> {
        self.check(kind, len)?;
        Ok(self.grant(kind, len))
    }

    /// Waits until the socket takes bytes, and gives it what is published.
    fn wait_writable(&mut self, deadline: Option<Instant>) -> Result<(), StreamError> {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return Err(StreamError::Timeout);
        }
        poll_stream(self.wire.fd(), false, true, left)
            .map_err(|e| self.fail(StreamError::from_io(&e)))?;
        self.wire.flush().map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Sends every committed frame: appends the batch to what is still
    /// unsent and gives the socket as much as it takes, in one `send`
    /// (many frames in one system call). The rest stays buffered and goes
    /// with the next publish, while a sender waits for room, or while the
    /// receiver waits for frames; [`flush`](Self::flush) waits for it.
    ///
    /// # Errors
    ///
    /// The connection's failure (`PeerDied` once the peer is gone).
    pub fn publish(&mut self) -> Result<(), StreamError> {
        if let Some(e) = self.wire.failure() {
            return Err(e);
        }
        if self.staged.is_empty() {
            if self.wire.has_pending() {
                self.wire.flush().map_err(|e| self.fail(e))?;
            }
            return Ok(());
        }
        self.stats.publishes += 1;
        self.wire
            .publish(&mut self.staged)
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Publishes every committed frame without sending it yet: the frames
    /// go, in order and in one `send` with whatever follows them, with the
    /// next [`publish`](Self::publish) or [`flush`](Self::flush), when
    /// either half waits (the receiving half sends them before it waits
    /// for frames, and [`wants_write`](Self::wants_write) says they wait),
    /// or at once when they pass [`DEFER_LIMIT`] bytes. For a caller that
    /// starts many calls and then waits: their requests go in one system
    /// call.
    ///
    /// # Errors
    ///
    /// The connection's failure.
    pub fn defer(&mut self) -> Result<(), StreamError> {
        if let Some(e) = self.wire.failure() {
            return Err(e);
        }
        if self.staged.is_empty() {
            return Ok(());
        }
        self.stats.publishes += 1;
        if self.wire.defer(&mut self.staged) >= DEFER_LIMIT {
            self.wire.flush().map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// Copies `payload` into a frame and publishes it.
    ///
    /// # Errors
    ///
    /// As [`reserve`](Self::reserve) and [`StreamGrant::commit`].
    pub fn send(
        &mut self,
        kind: u16,
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), StreamError> {
        let mut g = self.reserve(kind, payload.len(), deadline)?;
        g.bytes_mut().copy_from_slice(payload);
        g.commit_all()?;
        self.publish()
    }

    /// Waits until everything published has been taken by the socket (or
    /// the TLS session has written it), or `deadline`.
    ///
    /// # Errors
    ///
    /// `Timeout`; the connection's failure.
    pub fn flush(&mut self, deadline: Option<Instant>) -> Result<(), StreamError> {
        self.publish()?;
        while !self.wire.flush().map_err(|e| self.fail(e))? {
            self.wait_writable(deadline)?;
        }
        Ok(())
    }

    /// Flushes (until `deadline`), then ends this side's sending: a TLS
    /// close_notify, and the socket shut down for writing, so the peer
    /// reads the end once it has read every frame. The receiving half
    /// still reads what the peer sends.
    ///
    /// # Errors
    ///
    /// As [`flush`](Self::flush) (the socket is shut down for writing
    /// anyway).
    pub fn close(mut self, deadline: Option<Instant>) -> Result<(), StreamError> {
        let flushed = self.flush(deadline);
        if flushed.is_ok() {
            self.wire.say_goodbye();
        }
        self.wire.shutdown_write();
        flushed
    }

    /// Whether published bytes wait for the socket: an event loop then
    /// polls [`poll_fd`](Self::poll_fd) for writability too, and calls
    /// [`flush`](Self::flush) with a deadline of now, or
    /// [`publish`](Self::publish).
    pub fn wants_write(&self) -> bool {
        self.wire.has_pending()
    }

    /// Bytes published and not yet taken by the socket.
    pub fn unsent(&self) -> usize {
        self.wire.unsent()
    }

    /// The socket, for an event loop.
    pub fn poll_fd(&self) -> BorrowedFd<'_> {
        self.wire.fd()
    }

    /// Largest payload one frame can carry.
    pub fn max_payload(&self) -> usize {
        self.limits.max_payload
    }

    /// The connection's blob pool, this side's view (`None` without one):
    /// allocate blobs to send from it, accept received ones with it.
    pub fn pool(&self) -> Option<&Arc<Pool<SharedRegion>>> {
        self.pool.as_ref().map(|p| &p.local)
    }

    /// The connection's large blobs.
    pub fn large(&self) -> &Arc<LargeBlobs> {
        &self.large
    }

    /// Registers this side's large blob so frames can carry it (see
    /// [`LargeBlobs::share`]); returns its handle.
    ///
    /// # Errors
    ///
    /// As [`LargeBlobs::share`].
    pub fn share_large(&self, blob: &LargeBlob) -> Result<BlobHandle, StreamError> {
        self.large.share(blob)
    }

    /// The sender's counters.
    pub fn stats(&self) -> TxStats {
        TxStats {
            sends: self.wire.sends.load(std::sync::atomic::Ordering::Relaxed),
            ..self.stats
        }
    }

    /// Encodes the grant's first `used` bytes as a frame into the batch,
    /// its blobs inline.
    fn commit_frame(&mut self, kind: u16, flags: u16, used: usize) -> Result<(), StreamError> {
        let StreamTx {
            stage,
            staged,
            encoder,
            limits,
            pool,
            large,
            stats,
            ..
        } = self;
        let payload = &stage[..used];
        let n = call_handles(kind, payload) as usize;
        let before = staged.len();
        if n == 0 {
            encoder
                .encode(staged, kind, flags, payload, &[], limits.max_frame)
                .map_err(StreamError::Encode)?;
        } else {
            if n > MAX_INLINE_BLOBS || HEAD + n * HANDLE > used {
                return Err(StreamError::BlobMismatch {
                    kind,
                    handles: n as u32,
                    inline: 0,
                });
            }
            let pool = pool.clone();
            let large = large.clone();
            let taken = take_blobs(payload, n, pool.as_deref(), &large)?;
            let large_guard = taken.large.then(|| large.lock());
            let mut parts: [&[u8]; MAX_INLINE_BLOBS] = [&[]; MAX_INLINE_BLOBS];
            for (i, part) in parts.iter_mut().enumerate().take(n) {
                *part = match &taken.pool[i] {
                    Some(b) => &b[..],
                    None => {
                        let h = handle_at(payload, i);
                        let id = large_id(&h).expect("a large handle");
                        large_guard
                            .as_ref()
                            .expect("locked for large blobs")
                            .bytes(id, h.len)?
                    }
                };
            }
            let encoded =
                encoder.encode(staged, kind, flags, payload, &parts[..n], limits.max_frame);
            drop(large_guard);
            match encoded {
                Ok(_) => taken.free(),
                Err(e) => {
                    taken.restore();
                    return Err(StreamError::Encode(e));
                }
            }
            stats.blobs += n as u64;
        }
        stats.frames += 1;
        stats.payload_bytes += used as u64;
        stats.wire_bytes += (staged.len() - before) as u64;
        Ok(())
    }
}

/// The pool blobs of a frame, taken back from the local pool while their
/// bytes are copied inline.
struct Taken<'p> {
    pool: Vec<Option<BlobMut<'p, SharedRegion>>>,
    /// Some handles are large blobs.
    large: bool,
}

impl Taken<'_> {
    /// The frame went out: the blobs are freed.
    fn free(self) {
        drop(self.pool);
    }

    /// The frame did not go out: the blobs are in flight again, as the
    /// caller left them (it may recall them itself).
    fn restore(self) {
        for b in self.pool.into_iter().flatten() {
            let _ = b.send();
        }
    }
}

/// Takes back the pool blobs the first `n` handles of `payload` name and
/// checks that the large ones are known; on an error, the blobs taken so
/// far are put back in flight.
fn take_blobs<'p>(
    payload: &[u8],
    n: usize,
    pool: Option<&'p LocalPool>,
    large: &LargeBlobs,
) -> Result<Taken<'p>, StreamError> {
    let mut taken = Taken {
        pool: Vec::with_capacity(n),
        large: false,
    };
    for i in 0..n {
        let h = handle_at(payload, i);
        let got = match large_id(&h) {
            Some(id) => large.lock().bytes(id, h.len).map(|_| None),
            None => match pool {
                None => Err(StreamError::NoPool),
                Some(p) => p
                    .local
                    .recall(&h)
                    .map(Some)
                    .map_err(|source| StreamError::Blob { index: i, source }),
            },
        };
        match got {
            Ok(b) => {
                taken.large |= b.is_none();
                taken.pool.push(b);
            }
            Err(e) => {
                taken.restore();
                return Err(e);
            }
        }
    }
    Ok(taken)
}

impl StreamGrant<'_> {
    /// The reserved payload bytes, 16-byte aligned (their previous
    /// contents are unspecified).
    #[inline]
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.tx.stage[..self.len]
    }

    /// Sets the frame's own flags ([`USER_FLAGS`](super::codec::USER_FLAGS);
    /// the transport's bits are ignored).
    pub fn set_flags(&mut self, flags: u16) {
        self.flags = flags & super::codec::USER_FLAGS;
    }

    /// The frame's kind.
    pub fn kind(&self) -> u16 {
        self.kind
    }

    /// Length of the reservation.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the reservation has no payload bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Commits the first `used` bytes as a frame (sent by the next
    /// publish). A call frame (REQUEST, RESPONSE, MESSAGE) carries the
    /// blobs its handles name inline: pool blobs are taken back from the
    /// local pool (they must be in flight to the peer, as `send` leaves
    /// them), copied and freed; large blobs are copied from the
    /// connection's [`LargeBlobs`].
    ///
    /// # Errors
    ///
    /// The frame is not sent, and the blobs it names are in flight again:
    /// [`StreamError::Blob`] for a pool blob that cannot be taken back
    /// (stale, or not in flight to the peer), [`StreamError::NoPool`],
    /// [`StreamError::LargeUnknown`], [`StreamError::LargeTooLong`],
    /// [`StreamError::BlobMismatch`] for handles past the payload,
    /// [`StreamError::Encode`] for a frame over the connection's limit.
    ///
    /// # Panics
    ///
    /// If `used` exceeds the reserved length (a bug in the caller).
    pub fn commit(self, used: usize) -> Result<(), StreamError> {
        assert!(
            used <= self.len,
            "committed {used} bytes of a {}-byte grant",
            self.len
        );
        self.tx.commit_frame(self.kind, self.flags, used)
    }

    /// Commits the whole reservation.
    ///
    /// # Errors
    ///
    /// As [`commit`](Self::commit).
    pub fn commit_all(self) -> Result<(), StreamError> {
        let len = self.len;
        self.commit(len)
    }
}

impl Drop for StreamTx {
    /// Gives the socket what it takes now (never waits); a TLS session
    /// that has nothing left to send says goodbye.
    fn drop(&mut self) {
        // Committed, unpublished frames are dropped with it, as a ring's.
        if let Ok(true) = self.wire.flush() {
            self.wire.say_goodbye();
        }
    }
}
