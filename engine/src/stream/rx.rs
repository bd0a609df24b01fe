//! The receiving half of a stream endpoint: buffered reads, strict
//! decoding, payloads handed out 16-byte aligned, inline blobs turned into
//! local ones.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use isocall_blob::{BlobHandle, BlobMut, Pool};
use isocall_ringbuf::SharedRegion;
use rkyv::util::AlignedVec;

use super::blobs::{LargeBlobs, LocalPool};
use super::codec::{self, Decoded, FLAG_BLOBS, FLAG_LZ4, FrameLayout, HEADER, Limits, Part};
use super::error::StreamError;
use super::tx::{call_handles, handle_at};
use super::wire::{Got, Wire};
use crate::rpc::large::large_id;
use crate::rpc::wire::{HANDLE, HEAD, kind};
use crate::sys::{block_reads, poll_stream};

/// Bytes of room a read asks for at least.
const MIN_READ: usize = 64 << 10;
/// A frame at least this long whose first bytes arrived misaligned is
/// moved (while those bytes are few) so that its payload lands aligned in
/// place, and need not be copied once whole.
const ALIGN_IN_PLACE: usize = 16 << 10;

/// A receiver's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RxStats {
    /// Frames handed out (each counted once, when released).
    pub frames: u64,
    /// Their payload bytes.
    pub payload_bytes: u64,
    /// Bytes they took on the wire.
    pub wire_bytes: u64,
    /// Inline blobs received.
    pub blobs: u64,
    /// Frames whose payload was copied (misaligned or compressed) rather
    /// than handed out where it was read.
    pub copied: u64,
    /// Reads that brought bytes.
    pub reads: u64,
}

/// Where the current frame's payload is.
#[derive(Clone, Copy, Debug)]
enum Place {
    /// In the read buffer, at this offset (16-byte aligned), this long.
    Buffer(usize, usize),
    /// In the copy buffer, this long.
    Copy(usize),
}

/// The frame handed out, until it is released.
#[derive(Clone, Copy, Debug)]
struct Current {
    kind: u16,
    flags: u16,
    /// Bytes it took on the wire (varint included).
    consumed: usize,
    place: Place,
}

/// The receiving half of a stream endpoint.
///
/// The same interface as the ring's [`Receiver`](crate::raw::Receiver):
/// [`try_recv`](Self::try_recv) and [`recv`](Self::recv) give the next
/// frame, whose payload is 16-byte aligned (an rkyv archive is read in
/// place); [`StreamFrame::release`] moves on. A frame dropped without
/// release is handed out again by the next call, as on the ring.
///
/// Reads are buffered: each takes what the socket has (64 KiB at least),
/// and frames are decoded from the buffer; a read that comes back short
/// took all there was, and a caller about to wait anyway does not read
/// again to find nothing (it waits, and `poll` sees what came since). Each frame is checked in full
/// before it is handed out ([`codec::decode`]); its inline blobs are then
/// allocated from the local pool, filled and sent to this side, and the
/// handles in the frame rewritten to name them, so the call layer accepts
/// them as it would a peer's on shared memory. Any fault of the peer's
/// (bad bytes, a frame cut off, a blob that does not fit) closes the
/// connection with a typed error, which every later call returns.
pub struct StreamRx {
    wire: Arc<Wire>,
    /// Read buffer: bytes `start..end` are read and not yet consumed; its
    /// length is the room it has. Its base is 16-byte aligned, so an
    /// offset's alignment is the address's.
    buf: AlignedVec<16>,
    start: usize,
    end: usize,
    /// Where a payload is copied or decompressed to (kept at the longest
    /// length seen).
    copy: AlignedVec<16>,
    current: Option<Current>,
    limits: Limits,
    /// The peer's end was read.
    eof: bool,
    /// The error that ended this receiver.
    failed: Option<StreamError>,
    /// The last read of a plain socket took all there was (it came back
    /// short, or with nothing): a caller about to wait anyway skips the
    /// read that would find nothing more, and waits (`poll` sees what
    /// comes after). Every read sets it again.
    drained: bool,
    /// Reads may wait in `recv` this long at most (see
    /// [`block_reads`](Self::block_reads)).
    block: Option<Duration>,
    pool: Option<Arc<LocalPool>>,
    large: Arc<LargeBlobs>,
    stats: RxStats,
}

impl std::fmt::Debug for StreamRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRx")
            .field("buffered", &(self.end - self.start))
            .field("failed", &self.failed)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A frame read from a [`StreamRx`]. [`release`](Self::release) it to
/// move on.
pub struct StreamFrame<'a> {
    rx: &'a mut StreamRx,
    cur: Current,
}

impl StreamRx {
    pub(crate) fn new(
        wire: Arc<Wire>,
        limits: Limits,
        pool: Option<Arc<LocalPool>>,
        large: Arc<LargeBlobs>,
    ) -> StreamRx {
        StreamRx {
            wire,
            buf: AlignedVec::new(),
            start: 0,
            end: 0,
            copy: AlignedVec::new(),
            current: None,
            limits,
            eof: false,
            failed: None,
            drained: false,
            block: None,
            pool,
            large,
            stats: RxStats::default(),
        }
    }

    /// See [`reconfigure`](super::reconfigure).
    pub(crate) fn reconfigure(
        &mut self,
        limits: Limits,
        pool: Option<Arc<LocalPool>>,
        large: Arc<LargeBlobs>,
    ) {
        debug_assert!(self.current.is_none(), "reconfigured with a frame out");
        self.limits = limits;
        self.pool = pool;
        self.large = large;
    }

    /// The next frame if one is there now (reading what the socket has,
    /// without waiting).
    ///
    /// # Errors
    ///
    /// `PeerDied` once the peer's end is read and every whole frame before
    /// it was handed out; `Truncated` if the end came in the middle of a
    /// frame; `Frame` for bytes that are not a frame; `BlobMismatch`,
    /// `BlobLength`, `Blob`, `NoPool`, `LargeCap`, `LargeMemory` for
    /// inline blobs that cannot be received; `Tls`; `Os`. All are fatal.
    pub fn try_recv(&mut self) -> Result<Option<StreamFrame<'_>>, StreamError> {
        Ok(self.ready(false)?.map(|cur| StreamFrame { rx: self, cur }))
    }

    /// As [`try_recv`](Self::try_recv), but without a read when the last
    /// one found the socket drained: for a loop that goes on to wait on
    /// [`poll_fd`](Self::poll_fd) when this finds nothing (the wait sees
    /// the bytes it did not read), and reads for real first after that
    /// wait. Saves the system call that would find nothing.
    ///
    /// # Errors
    ///
    /// As [`try_recv`](Self::try_recv).
    pub fn try_recv_buffered(&mut self) -> Result<Option<StreamFrame<'_>>, StreamError> {
        Ok(self.ready(true)?.map(|cur| StreamFrame { rx: self, cur }))
    }

    /// Whether the last read found the socket drained (see
    /// [`try_recv_buffered`](Self::try_recv_buffered)): more frames come
    /// only after a wait.
    pub fn is_drained(&self) -> bool {
        self.drained && self.current.is_none()
    }

    /// Lets [`recv`](Self::recv) wait for bytes in `recv` itself, at most
    /// `slice` at a time, rather than in `poll` then `recv` (one system
    /// call per wait instead of two): the socket's reads are made blocking
    /// with that timeout (every other read and send passes
    /// `MSG_DONTWAIT`). A wait whose deadline is nearer than `slice`, or
    /// while published bytes wait for room, still polls. Only a plain
    /// socket of this process's own (not under TLS) does it; a caller that
    /// sleeps in an event loop on [`poll_fd`](Self::poll_fd) need not.
    ///
    /// # Errors
    ///
    /// The OS error of setting the socket up (the receiver goes on
    /// polling).
    pub fn block_reads(&mut self, slice: Duration) -> Result<(), StreamError> {
        if !self.wire.is_plain() {
            return Ok(());
        }
        self.block_reads_locked(slice)
    }

    /// As [`block_reads`](Self::block_reads), under TLS too: the session
    /// stays locked while a read waits, so the sending half must be used
    /// by the receiving thread only (a server's worker; not a client that
    /// threads share).
    pub(crate) fn block_reads_locked(&mut self, slice: Duration) -> Result<(), StreamError> {
        if slice.is_zero() {
            return Ok(());
        }
        block_reads(self.wire.fd(), slice).map_err(|e| StreamError::from_io(&e))?;
        self.block = Some(slice);
        Ok(())
    }

    /// Waits for the next frame until `deadline` (`None`: no limit), in
    /// `poll` on the socket (or in `recv` itself, see
    /// [`block_reads`](Self::block_reads)); before it waits, it sends what
    /// the sending half left unsent or deferred, and while it polls, what
    /// the socket had no room for. It does not read a socket its last
    /// read found drained before waiting. Each wait is bounded by the
    /// deadline, however slowly the peer's bytes trickle in.
    ///
    /// # Errors
    ///
    /// `Timeout`; as [`try_recv`](Self::try_recv).
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<StreamFrame<'_>, StreamError> {
        // The read before a wait is skipped when the last one found the
        // socket drained; after a wait in `poll`, the socket is read.
        let mut buffered = true;
        loop {
            if let Some(cur) = self.ready(buffered)? {
                return Ok(StreamFrame { rx: self, cur });
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Err(StreamError::Timeout);
            }
            let write = self.wire.has_pending() && self.wire.failure().is_none();
            if let Some(slice) = self.block
                && !write
                && left.is_none_or(|l| l >= slice)
            {
                // Wait in the read itself (at most `slice`).
                self.read_waiting()?;
                buffered = true;
                continue;
            }
            buffered = false;
            let r = poll_stream(self.wire.fd(), true, write, left)
                .map_err(|e| self.fail(StreamError::from_io(&e)))?;
            if write && r.writable {
                // A failed send is the sender's to report; the frames
                // already here are still read.
                let _ = self.wire.flush();
            }
        }
    }

    /// For a caller that serves this socket alone: waits for bytes in
    /// `recv` itself, at most the slice [`block_reads`](Self::block_reads)
    /// set, and returns true if a frame is whole after it (or the socket
    /// ended or failed: reading says so). Returns false at once when reads
    /// were not made blocking, or published bytes wait for room (those
    /// need a wait for room as well, in `poll`), and after a slice that
    /// brought no whole frame.
    ///
    /// # Errors
    ///
    /// As [`try_recv`](Self::try_recv).
    pub fn wait_in_read(&mut self) -> Result<bool, StreamError> {
        if self.ready(true)?.is_some() {
            return Ok(true);
        }
        if self.block.is_none() || self.wire.has_pending() || self.eof {
            return Ok(self.eof);
        }
        self.read_waiting()?;
        Ok(self.eof || self.ready(true)?.is_some())
    }

    /// Prepares for the caller to sleep on [`poll_fd`](Self::poll_fd) (in
    /// epoll or tokio) instead of in [`recv`](Self::recv): reads what is
    /// there, and returns true if a frame is already whole (read it
    /// instead of sleeping). After false, wait for the socket to be
    /// readable, and writable too while [`wants_write`](Self::wants_write)
    /// (then flush the sender).
    ///
    /// # Errors
    ///
    /// As [`try_recv`](Self::try_recv).
    pub fn arm_doorbell(&mut self) -> Result<bool, StreamError> {
        Ok(self.ready(true)?.is_some())
    }

    /// The socket, for an event loop.
    pub fn poll_fd(&self) -> BorrowedFd<'_> {
        self.wire.fd()
    }

    /// Whether bytes the sending half published wait for the socket.
    pub fn wants_write(&self) -> bool {
        self.wire.has_pending()
    }

    /// The connection's blob pool, this side's view (`None` without one):
    /// accept the blobs of received frames with it.
    pub fn pool(&self) -> Option<&Arc<Pool<SharedRegion>>> {
        self.pool.as_ref().map(|p| &p.local)
    }

    /// The connection's large blobs: the bytes of large blobs that arrived.
    pub fn large(&self) -> &Arc<LargeBlobs> {
        &self.large
    }

    /// The receiver's counters.
    pub fn stats(&self) -> RxStats {
        self.stats
    }

    fn fail(&mut self, e: StreamError) -> StreamError {
        self.failed = Some(e.clone());
        self.wire.fail(e.clone());
        e
    }

    /// Reads, waiting at most the socket's read timeout (see
    /// [`block_reads`](Self::block_reads)).
    fn read_waiting(&mut self) -> Result<(), StreamError> {
        self.make_room()?;
        let room = self.buf.len() - self.end;
        let got = self.wire.read_wait(&mut self.buf[self.end..]);
        self.took(got, room)
    }

    /// Takes what a read of `room` bytes at most found.
    fn took(&mut self, got: Result<Got, StreamError>, room: usize) -> Result<(), StreamError> {
        match got {
            Ok(Got::Bytes(n)) => {
                self.end += n;
                self.stats.reads += 1;
                self.drained = n < room && self.wire.is_plain();
                self.align_in_place();
            }
            Ok(Got::WouldBlock) => self.drained = self.wire.is_plain(),
            Ok(Got::Eof) => self.eof = true,
            Err(e) => return Err(self.fail(e)),
        }
        Ok(())
    }

    /// Before this side waits for frames: the bytes its sending half
    /// published or deferred go (the peer may wait for them to answer).
    fn flush_before_wait(&self) {
        if self.wire.has_pending() {
            // A failed send is the sender's to report; the frames already
            // here are still read.
            let _ = self.wire.try_flush();
        }
    }

    /// The current frame, decoding the next one (and reading) if needed;
    /// with `buffered`, no read when the last one found the socket drained.
    /// When it finds nothing, what the sending half left unsent goes.
    fn ready(&mut self, buffered: bool) -> Result<Option<Current>, StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if let Some(c) = self.current {
            return Ok(Some(c));
        }
        // A failure the sending half found (other than the peer's death,
        // which still leaves its frames to read) ends this half too.
        if let Some(e) = self.wire.failure()
            && e != StreamError::PeerDied
        {
            self.failed = Some(e.clone());
            return Err(e);
        }
        let mut read = !(buffered && self.drained);
        loop {
            if self.decode_next()? {
                return Ok(self.current);
            }
            if self.eof {
                let e = self.end_error();
                return Err(self.fail(e));
            }
            if !read {
                self.flush_before_wait();
                return Ok(None);
            }
            self.make_room()?;
            let room = self.buf.len() - self.end;
            let got = self.wire.read(&mut self.buf[self.end..]);
            let would_block = matches!(got, Ok(Got::WouldBlock));
            self.took(got, room)?;
            if would_block {
                self.flush_before_wait();
                return Ok(None);
            }
            // After a short read (all there was), a frame still incomplete
            // waits for more: no second read to find nothing.
            read = !(buffered && self.drained);
        }
    }

    /// What the end of the peer's bytes means: its death at a frame
    /// boundary, a frame cut off otherwise.
    fn end_error(&self) -> StreamError {
        let have = self.end - self.start;
        if have == 0 {
            return StreamError::PeerDied;
        }
        let need = match codec::decode(&self.buf[self.start..self.end], &self.limits) {
            Ok(Decoded::Incomplete { need }) => need,
            _ => None,
        };
        StreamError::Truncated { have, need }
    }

    /// Where the payload of the frame at the start of `bytes` starts, if
    /// enough of it is there and it is not compressed.
    fn payload_offset(bytes: &[u8]) -> Option<usize> {
        let (_, vlen) = codec::read_varint(bytes).ok()??;
        let flags = bytes.get(vlen + 6..vlen + HEADER)?;
        let flags = u16::from_le_bytes([flags[0], flags[1]]);
        if flags & FLAG_LZ4 != 0 {
            return None;
        }
        Some(vlen + HEADER + if flags & FLAG_BLOBS != 0 { 4 } else { 0 })
    }

    /// Where pending bytes should start for the first frame's payload to
    /// be aligned (a guess when its head is not there yet: a one-byte
    /// varint, no blobs).
    fn aligned_start(&self) -> usize {
        let off = Self::payload_offset(&self.buf[self.start..self.end]).unwrap_or(1 + HEADER);
        (16 - off % 16) % 16
    }

    /// Makes room for a read: compacts, and grows the buffer as bytes
    /// arrive (never to an announced length before its bytes come), up to
    /// the frame limit.
    fn make_room(&mut self) -> Result<(), StreamError> {
        if self.buf.len() < MIN_READ + 16 {
            self.buf.resize(MIN_READ + 16, 0);
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            let at = self.aligned_start();
            self.start = at;
            self.end = at;
        }
        if self.buf.len() - self.end >= MIN_READ {
            return Ok(());
        }
        if self.start > 16 {
            let to = self.aligned_start();
            let n = self.end - self.start;
            self.buf.copy_within(self.start..self.end, to);
            self.start = to;
            self.end = to + n;
        }
        let cap = self.limits.max_frame + codec::MAX_VARINT + MIN_READ + 16;
        if self.buf.len() - self.end < MIN_READ && self.buf.len() < cap {
            let want = (self.buf.len() * 2).max(self.end + MIN_READ).min(cap);
            self.buf.resize(want, 0);
        }
        if self.end == self.buf.len() {
            // Cannot happen: a frame the limits allow fits the buffer.
            return Err(
                self.fail(StreamError::Frame(codec::CodecError::FrameTooLarge {
                    len: (self.end - self.start) as u64,
                    limit: self.limits.max_frame,
                })),
            );
        }
        Ok(())
    }

    /// After a read: if the first frame is long, not whole, misaligned and
    /// little of it is here yet, moves those bytes so its payload will be
    /// aligned in place.
    fn align_in_place(&mut self) {
        let bytes = &self.buf[self.start..self.end];
        let Ok(Decoded::Incomplete { need: Some(need) }) = codec::decode(bytes, &self.limits)
        else {
            return;
        };
        if need < ALIGN_IN_PLACE || bytes.len() > MIN_READ {
            return;
        }
        let Some(off) = Self::payload_offset(bytes) else {
            return;
        };
        let shift = (16 - (self.start + off) % 16) % 16;
        if shift == 0 || self.end + shift > self.buf.len() {
            return;
        }
        self.buf
            .copy_within(self.start..self.end, self.start + shift);
        self.start += shift;
        self.end += shift;
    }

    /// Decodes the frame at the start of the buffer, if it is whole, and
    /// makes it current.
    fn decode_next(&mut self) -> Result<bool, StreamError> {
        let layout = match codec::decode(&self.buf[self.start..self.end], &self.limits) {
            Ok(Decoded::Incomplete { .. }) => return Ok(false),
            Ok(Decoded::Frame(f)) => f,
            Err(e) => return Err(self.fail(StreamError::Frame(e))),
        };
        match self.take(&layout) {
            Ok(c) => {
                self.current = Some(c);
                Ok(true)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Puts the frame's payload where it is handed out from, and receives
    /// its inline blobs.
    fn take(&mut self, f: &FrameLayout) -> Result<Current, StreamError> {
        let base = self.start;
        let p = f.payload;
        let place = if !p.lz4 && (base + p.start).is_multiple_of(16) {
            Place::Buffer(base + p.start, p.len)
        } else {
            if self.copy.len() < p.len {
                self.copy.resize(p.len, 0);
            }
            let frame = &self.buf[base..base + f.consumed];
            p.decode_into(frame, &mut self.copy[..p.len], Part::Payload)
                .map_err(StreamError::Frame)?;
            self.stats.copied += 1;
            Place::Copy(p.len)
        };
        self.receive_blobs(f, place)?;
        Ok(Current {
            kind: f.kind,
            flags: f.user_flags(),
            consumed: f.consumed,
            place,
        })
    }

    fn payload_mut(&mut self, place: Place) -> &mut [u8] {
        match place {
            Place::Buffer(at, len) => &mut self.buf[at..at + len],
            Place::Copy(len) => &mut self.copy[..len],
        }
    }

    /// Checks a frame's inline blobs against its call head, allocates and
    /// fills a local blob for each pool blob (a large one is written into
    /// the connection's [`LargeBlobs`]), sends them to this side and
    /// rewrites the frame's handles to name them.
    fn receive_blobs(&mut self, f: &FrameLayout, place: Place) -> Result<(), StreamError> {
        let is_call = matches!(f.kind, kind::REQUEST | kind::RESPONSE | kind::MESSAGE);
        if !is_call && f.nblobs == 0 {
            return Ok(());
        }
        let payload = self.payload_mut(place);
        let handles = call_handles(f.kind, payload);
        let n = f.nblobs;
        if handles as usize != n || (n > 0 && payload.len() < HEAD + n * HANDLE) {
            return Err(StreamError::BlobMismatch {
                kind: f.kind,
                handles,
                inline: n,
            });
        }
        if n == 0 {
            return Ok(());
        }
        let mut theirs = [BlobHandle::default(); codec::MAX_INLINE_BLOBS];
        for (i, h) in theirs.iter_mut().enumerate().take(n) {
            *h = handle_at(payload, i);
        }
        let pool = self.pool.clone();
        let mut ours: Vec<(usize, BlobMut<'_, SharedRegion>)> = Vec::with_capacity(n);
        let frame = &self.buf[self.start..self.start + f.consumed];
        for (i, (s, h)) in f.blobs().iter().zip(&theirs).enumerate() {
            if h.len as usize != s.len {
                return Err(StreamError::BlobLength {
                    index: i,
                    handle: h.len,
                    inline: s.len,
                });
            }
            let part = Part::Blob(i as u8);
            if let Some(id) = large_id(h) {
                let mut g = self.large.lock();
                let dst = self.large.receive(&mut g, id, h.len)?;
                s.decode_into(frame, dst, part)
                    .map_err(StreamError::Frame)?;
                continue;
            }
            let local = pool.as_deref().ok_or(StreamError::NoPool)?;
            let mut b = local
                .proxy
                .alloc(s.len)
                .map_err(|source| StreamError::Blob { index: i, source })?;
            s.decode_into(frame, &mut b[..], part)
                .map_err(StreamError::Frame)?;
            ours.push((i, b));
        }
        self.stats.blobs += n as u64;
        let mut sent = [None; codec::MAX_INLINE_BLOBS];
        for (i, b) in ours {
            sent[i] = Some(
                b.send()
                    .map_err(|source| StreamError::Blob { index: i, source })?,
            );
        }
        let payload = self.payload_mut(place);
        for (i, h) in sent.iter().enumerate().take(n) {
            if let Some(h) = h {
                let at = HEAD + i * HANDLE;
                payload[at..at + HANDLE].copy_from_slice(&h.to_bytes());
            }
        }
        Ok(())
    }
}

impl StreamFrame<'_> {
    /// The frame's kind (`1..=MAX_USER_KIND`).
    #[inline]
    pub fn kind(&self) -> u16 {
        self.cur.kind
    }

    /// The frame's own flags (the sender's; the transport's bits are
    /// never set).
    #[inline]
    pub fn flags(&self) -> u16 {
        self.cur.flags
    }

    /// Payload length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        match self.cur.place {
            Place::Buffer(_, len) | Place::Copy(len) => len,
        }
    }

    /// Whether the payload is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload, 16-byte aligned, in this process's private memory.
    /// The bytes come from the peer: treat them as untrusted input. The
    /// blob handles of a call frame name blobs in flight to this side of
    /// the connection's pool (or large blobs of its [`LargeBlobs`]).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        match self.cur.place {
            Place::Buffer(at, len) => &self.rx.buf[at..at + len],
            Place::Copy(len) => &self.rx.copy[..len],
        }
    }

    /// Moves on to the next frame.
    pub fn release(self) {
        let len = self.len();
        let StreamFrame { rx, cur } = self;
        rx.current = None;
        rx.start += cur.consumed;
        if rx.start == rx.end {
            rx.start = 0;
            rx.end = 0;
        }
        rx.stats.frames += 1;
        rx.stats.payload_bytes += len as u64;
        rx.stats.wire_bytes += cur.consumed as u64;
    }
}
