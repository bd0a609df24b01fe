//! The consumer half: peek -> read -> release.
//!
//! Allows `unsafe` for one block: handing out a published payload as a
//! slice, justified by the ring protocol (see [`Frame::payload`]).
#![allow(unsafe_code)]

use std::time::Instant;

use crate::error::{AttachError, Corrupt};
use crate::layout::*;
use crate::region::{Access, Region};
use crate::ring::{RingRef, RingSide};
use crate::sync::{Ordering, fence, light_fence};
use crate::wait::{
    NOT_WAITING, Parker, Spinner, WAITING_DOORBELL, WaitError, WaitStrategy, sleep_until,
};

/// The reading side of a ring. One per ring; `Send`, not `Clone`.
pub struct Consumer<R: Region, P: Parker> {
    ring: RingRef<R>,
    parker: P,
    /// Position of the next frame to read. Invariant: a multiple of
    /// `FRAME_ALIGN`; only this side moves it, by the size of a frame it
    /// checked (at most the capacity, 2^30).
    ///
    /// Overflow: it starts at most [`MAX_COUNTER_AT_ATTACH`] (2^62, checked
    /// at attach), so `head + size` cannot overflow before this consumer
    /// has read 3 * 2^62 bytes of frames (over four years at 100 GB/s),
    /// whatever the peer writes; the stats counters count from zero.
    head: u64,
    /// Head as last stored to the shared counter (`<= head`). Releases are
    /// batched: the shared head is stored when `head - head_shared` reaches
    /// `flush_at`, or when the ring is found empty (so a producer waiting
    /// for room is never held up by a consumer that is waiting for frames).
    head_shared: u64,
    /// The producer's [`CONS_ZEROES`] request as last read: refreshed at
    /// every `flush` (so at least every quarter of the ring), not per
    /// frame. The producer allows for that lag (see
    /// `Producer::set_zero_ahead`).
    zeroes: bool,
    /// A quarter of the capacity.
    flush_at: u64,
    /// Whether this side announced asymmetric fencing (heavy barrier before
    /// sleeping); fixed at attach.
    asym: bool,
    stats: ConsumerStats,
}

/// Counters the consumer keeps (mirrored into the ring's control block).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Frames released.
    pub frames: u64,
    /// Payload bytes released.
    pub bytes: u64,
    /// Wake-ups issued to a producer sleeping on a full ring.
    pub wakes: u64,
    /// Times this side slept on an empty ring.
    pub sleeps: u64,
    /// Sleeps that lasted to their end and found a frame waiting: no
    /// wake-up came for it (see [`CONS_UNWOKEN`](crate::layout::CONS_UNWOKEN)).
    pub unwoken: u64,
    /// Of those, the sleeps whose announcement the producer never took
    /// down (see [`CONS_UNSEEN`](crate::layout::CONS_UNSEEN)).
    pub unseen: u64,
}

impl<R: Region, P: Parker> Consumer<R, P> {
    /// Attaches the consumer to a ring region (zeroed when new). A ring has
    /// one consumer at a time: until this one is dropped, attaching another
    /// (in this process or, through the control block, in another) fails.
    ///
    /// # Errors
    ///
    /// [`AttachError::BadRegionSize`] if the region is not a ring region;
    /// [`AttachError::AlreadyAttached`] if this process has a consumer on it
    /// already; [`AttachError::AttachedElsewhere`] if the control block
    /// names another attached consumer; [`AttachError::Corrupt`] if its
    /// counters are inconsistent (see [`Corrupt::BadCounters`]).
    pub fn attach(region: R, parker: P) -> Result<Self, AttachError> {
        let ring = RingRef::attach(region, RingSide::Consumer)?;
        let (head, _tail) = ring.counters_at_attach()?;
        let flush_at = ring.capacity / 4;
        let asym = parker.asymmetric();
        ring.wait_word(CONS_FENCING)
            .store(if asym { FENCING_ASYMMETRIC } else { 0 }, Ordering::Release);
        Ok(Consumer {
            asym,
            ring,
            parker,
            head,
            head_shared: head,
            zeroes: false,
            flush_at,
            stats: ConsumerStats::default(),
        })
    }

    /// Data capacity of the ring in bytes.
    pub fn capacity(&self) -> usize {
        self.ring.capacity as usize
    }

    /// Counters so far.
    pub fn stats(&self) -> ConsumerStats {
        self.stats
    }

    /// The next frame, if one is published. The frame stays in the ring
    /// until [`Frame::release`]; dropping it unreleased leaves it there.
    ///
    /// # Errors
    ///
    /// [`Corrupt`] if the next header is not a valid frame.
    #[inline]
    pub fn peek(&mut self) -> Result<Option<Frame<'_, R, P>>, Corrupt> {
        Ok(self.poll()?.map(|header| Frame::new(self, header)))
    }

    /// Whether a frame is published at the head, so that
    /// [`peek`](Self::peek) finds it now. For a loop that spins until a
    /// frame comes and then takes it with one `peek`, instead of a `peek`
    /// per turn and a second one to take what the last found: a frame's
    /// header is one load here, with none of `peek`'s checks (the `peek`
    /// that takes the frame makes them, so a producer that rewrites a
    /// header after publishing it can make a `true` wrong, never unsafe).
    /// The padding that ends a lap is skipped as `peek` skips it, and
    /// finding the ring empty releases the frames read so far to the
    /// producer, as `peek` does.
    ///
    /// # Errors
    ///
    /// [`Corrupt`] if the padding at the head is not a valid one.
    #[inline]
    pub fn has_frame(&mut self) -> Result<bool, Corrupt> {
        // Relaxed: only a hint; the `peek` that takes the frame loads the
        // word again with Acquire.
        let word = self.ring.header(self.head).load(Ordering::Relaxed);
        if word == 0 {
            if self.head != self.head_shared {
                self.flush();
            }
            return Ok(false);
        }
        if Header::decode(word).kind == KIND_PAD {
            // Once a lap: `poll` checks and skips the padding.
            return Ok(self.poll()?.is_some());
        }
        Ok(true)
    }

    /// The next frame if one is published; if none is, asks `stop()`, and
    /// when it says stop, looks once more (so a frame published just before
    /// the peer died is still delivered) and gives
    /// [`WaitError::Stopped`]. `stop` is only called on an empty ring, so
    /// the path that finds a frame costs what [`peek`](Self::peek) does.
    ///
    /// # Errors
    ///
    /// [`WaitError::Stopped`], or [`WaitError::Corrupt`] if the next header
    /// is not a valid frame.
    #[inline]
    pub fn try_next(
        &mut self,
        stop: impl FnOnce() -> bool,
    ) -> Result<Option<Frame<'_, R, P>>, WaitError> {
        let header = match self.poll()? {
            Some(h) => Some(h),
            None if stop() => Some(self.poll()?.ok_or(WaitError::Stopped)?),
            None => None,
        };
        Ok(header.map(|header| Frame::new(self, header)))
    }

    /// Waits by `strategy` for the next frame, until `deadline` or until
    /// `stop()` returns true.
    ///
    /// # Errors
    ///
    /// [`WaitError::Timeout`], [`WaitError::Stopped`], or
    /// [`WaitError::Corrupt`].
    pub fn wait(
        &mut self,
        strategy: WaitStrategy,
        deadline: Option<Instant>,
        stop: impl Fn() -> bool,
    ) -> Result<Frame<'_, R, P>, WaitError> {
        let header = self.wait_header(strategy, deadline, stop)?;
        Ok(Frame::new(self, header))
    }

    /// Announces that the caller is about to sleep outside the ring, e.g. in
    /// epoll on the ring's doorbell, so the producer rings it on its next
    /// publish. Returns true if a frame is already there: then do not sleep,
    /// read it. The announcement ends when the producer rings.
    ///
    /// # Errors
    ///
    /// [`Corrupt`] if the next header is not a valid frame.
    pub fn arm_doorbell(&mut self) -> Result<bool, Corrupt> {
        self.ring
            .wait_word(CONS_WAIT)
            .swap(WAITING_DOORBELL, Ordering::Relaxed);
        self.sleep_fence();
        let ready = self.poll()?.is_some();
        if ready {
            self.ring
                .wait_word(CONS_WAIT)
                .swap(NOT_WAITING, Ordering::Relaxed);
        }
        Ok(ready)
    }

    /// The fence after announcing sleep: pairs with the producer's fence in
    /// `publish` (a heavy barrier if the producer only uses a compiler
    /// fence because we declared ourselves asymmetric).
    #[cold]
    fn sleep_fence(&self) {
        if self.asym {
            self.parker.heavy_fence();
        } else {
            fence(Ordering::SeqCst);
        }
    }

    /// Loads the header at `head` once and checks it; skips a padding frame.
    #[inline]
    fn poll(&mut self) -> Result<Option<Header>, Corrupt> {
        loop {
            let cap = self.ring.capacity;
            let off = self.head & (cap - 1);
            // Acquire: pairs with the producer's Release store in `publish`,
            // making the payload (and later frames of the batch) visible.
            let word = self.ring.header(self.head).load(Ordering::Acquire);
            if word == 0 {
                if self.head != self.head_shared {
                    self.flush();
                }
                return Ok(None);
            }
            let header = Header::decode(word);
            if header.kind == KIND_PAD {
                // `off < cap` and both are multiples of 64: at least 48.
                let expected = cap - off - FRAME_HEADER_BYTES as u64;
                if off == 0 || u64::from(header.len) != expected {
                    return Err(Corrupt::BadPad {
                        pos: self.head,
                        len: header.len,
                        expected,
                    });
                }
                self.advance(cap - off);
                continue;
            }
            if header.kind == 0 || header.kind > MAX_USER_KIND {
                return Err(Corrupt::BadKind {
                    pos: self.head,
                    kind: header.kind,
                });
            }
            // `len < 2^32` and `off < cap <= 2^30`: these sums cannot
            // overflow a u64 (nor a 32-bit usize, which `frame_size` would).
            let size = (FRAME_HEADER_BYTES as u64 + u64::from(header.len))
                .next_multiple_of(FRAME_ALIGN as u64);
            if off + size > cap || size + FRAME_ALIGN as u64 > cap {
                return Err(Corrupt::BadLength {
                    pos: self.head,
                    len: header.len,
                    room: (cap - off).saturating_sub(FRAME_HEADER_BYTES as u64),
                });
            }
            // The frame's second line (most of a small payload), asked
            // for now: it comes over from the producer's core while the
            // caller reads the header and the first line, instead of when
            // the caller reaches it.
            if size > FRAME_ALIGN as u64 {
                crate::sync::prefetch_read(self.ring.header(self.head + FRAME_ALIGN as u64));
            }
            return Ok(Some(header));
        }
    }

    /// Moves past `size` bytes; publishes the new head once a quarter of the
    /// ring has been released since the last time.
    ///
    /// While the producer streams ([`CONS_ZEROES`] set, as of the last
    /// `flush`), it first zeroes the
    /// header slot at each cache line start the frame covered (every
    /// position where a later lap may put a header), so the producer needs
    /// no terminator after its frames: the line this side polls next is
    /// written once per frame instead of twice. The zeroes are ordered
    /// before the producer's reuse of the space by the Release store of
    /// `head` in `flush`. In latency mode this side writes no data line
    /// (the producer zeroes ahead itself, and lines it finds only read here
    /// are cheaper for it to take back).
    #[inline]
    fn advance(&mut self, size: u64) {
        let end = self.head + size;
        if self.zeroes {
            let mut p = self.head;
            while p < end {
                self.ring.header(p).store(0, Ordering::Relaxed);
                p += FRAME_ALIGN as u64;
            }
        }
        self.head = end;
        if self.head - self.head_shared >= self.flush_at {
            self.flush();
        }
    }

    /// Returns every released byte to the producer now (releases are
    /// otherwise batched, see [`Frame::release`]), and wakes the producer if
    /// it sleeps on a full ring.
    pub fn flush(&mut self) {
        self.head_shared = self.head;
        self.zeroes = self.ring.wait_word(CONS_ZEROES).load(Ordering::Relaxed) != 0;
        let ctl = &self.ring;
        ctl.word(CONS_FRAMES)
            .store(self.stats.frames, Ordering::Relaxed);
        ctl.word(CONS_BYTES)
            .store(self.stats.bytes, Ordering::Relaxed);
        // Release: pairs with the producer's Acquire load of head in
        // `load_head`: our reads of the frames happen before it reuses them.
        ctl.word(HEAD).store(self.head, Ordering::Release);
        // Pairs with the producer's fence after it announces sleep on a full
        // ring: a full fence, or a compiler fence if the producer declared
        // that it issues a heavy barrier there and ours is asymmetric too
        // (so that barrier reaches us: see `Producer::publish`).
        if self.asym && ctl.wait_word(PROD_FENCING).load(Ordering::Relaxed) == FENCING_ASYMMETRIC {
            light_fence();
        } else {
            fence(Ordering::SeqCst);
        }
        if self.ring.wait_word(PROD_WAIT).load(Ordering::Relaxed) != NOT_WAITING {
            self.wake_producer();
        }
    }

    /// Counts a sleep no wake-up ended; `unseen`: the producer never took
    /// the announcement down.
    #[cold]
    fn count_unwoken(&mut self, unseen: bool) {
        self.stats.unwoken += 1;
        self.ring
            .word(CONS_UNWOKEN)
            .store(self.stats.unwoken, Ordering::Relaxed);
        if unseen {
            self.stats.unseen += 1;
            self.ring
                .word(CONS_UNSEEN)
                .store(self.stats.unseen, Ordering::Relaxed);
        }
    }

    #[cold]
    fn wake_producer(&mut self) {
        let word = self.ring.wait_word(PROD_WAIT);
        let announced = word.swap(NOT_WAITING, Ordering::Relaxed);
        if announced != NOT_WAITING {
            self.stats.wakes += 1;
            self.ring
                .word(CONS_WAKES)
                .store(self.stats.wakes, Ordering::Relaxed);
            self.parker.unpark(word, announced);
        }
    }

    fn wait_header(
        &mut self,
        strategy: WaitStrategy,
        deadline: Option<Instant>,
        stop: impl Fn() -> bool,
    ) -> Result<Header, WaitError> {
        if let Some(h) = self.poll()? {
            return Ok(h);
        }
        let mut spinner = Spinner::new(strategy);
        let mut turn = 1u32;
        loop {
            // The stop condition and the clock are read every 64th turn: a
            // clock read costs more than a poll of the ring.
            if turn.is_multiple_of(64) {
                if stop() {
                    // A frame published just before the stop (the peer's
                    // last reply before it died) is still delivered.
                    return match self.poll()? {
                        Some(h) => Ok(h),
                        None => Err(WaitError::Stopped),
                    };
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(WaitError::Timeout);
                }
            }
            turn = turn.wrapping_add(1);
            if !spinner.spin() {
                let announce = self.parker.announce();
                self.ring
                    .wait_word(CONS_WAIT)
                    .swap(announce, Ordering::Relaxed);
                self.sleep_fence();
                let found = self.poll();
                if !matches!(found, Ok(None)) || stop() {
                    self.ring
                        .wait_word(CONS_WAIT)
                        .swap(NOT_WAITING, Ordering::Relaxed);
                    return match found? {
                        Some(h) => Ok(h),
                        // Stopped after that look: a frame published in
                        // between is still delivered, as above.
                        None => self.poll()?.ok_or(WaitError::Stopped),
                    };
                }
                let until = sleep_until(deadline);
                self.parker
                    .park(self.ring.wait_word(CONS_WAIT), announce, until);
                self.stats.sleeps += 1;
                self.ring
                    .word(CONS_SLEEPS)
                    .store(self.stats.sleeps, Ordering::Relaxed);
                // Woken by the deadline: say so now, rather than after up to
                // 63 more rounds of announcing (the spin budget is spent).
                if let Some(h) = self.poll()? {
                    // Woken early or for nothing, the announcement may still
                    // stand: withdraw it, or the next publish wakes no one.
                    let stood = self
                        .ring
                        .wait_word(CONS_WAIT)
                        .swap(NOT_WAITING, Ordering::Relaxed);
                    // No wake-up came for this frame if the sleep lasted to
                    // its end. Cut short (a wake-up left over from an
                    // earlier frame, a signal), it proves nothing: the
                    // producer may be between its publish and its look at
                    // our announcement. `unseen`: it never took it down.
                    if until.is_some_and(|u| Instant::now() >= u) {
                        self.count_unwoken(stood == announce);
                    }
                    return Ok(h);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(WaitError::Timeout);
                }
                continue;
            }
            if let Some(h) = self.poll()? {
                return Ok(h);
            }
        }
    }
}

impl<R: Region, P: Parker> std::fmt::Debug for Consumer<R, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.ring.capacity)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

/// A published frame, read in place. [`release`](Frame::release) it to free
/// its bytes for the producer.
pub struct Frame<'a, R: Region, P: Parker> {
    consumer: &'a mut Consumer<R, P>,
    header: Header,
    /// This side reads the payload for as long as the frame lives (it ends
    /// before `release` hands the bytes back).
    access: Access,
}

impl<'a, R: Region, P: Parker> Frame<'a, R, P> {
    fn new(consumer: &'a mut Consumer<R, P>, header: Header) -> Self {
        let off = consumer.ring.payload_offset(consumer.head);
        let access = consumer.ring.region.access(off, header.len as usize, false);
        Frame {
            consumer,
            header,
            access,
        }
    }

    /// The frame's kind (`1..=MAX_USER_KIND`).
    #[inline]
    pub fn kind(&self) -> u16 {
        self.header.kind
    }

    /// The frame's user flags.
    #[inline]
    pub fn flags(&self) -> u16 {
        self.header.flags
    }

    /// Payload length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.header.len as usize
    }

    /// Whether the payload is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.header.len == 0
    }

    /// The payload, in place in the ring, starting on a 16-byte boundary.
    /// The bytes come from the peer: treat them as untrusted input.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let c = &*self.consumer;
        let start = c.ring.payload_offset(c.head);
        // SAFETY: `poll` checked that the frame (header + `len` bytes) lies
        // inside the data area before the ring's end. The producer published
        // it (Acquire in `poll`) and does not write it again until our head
        // passes it, which happens only in `release`, after this borrow ends.
        unsafe { c.ring.region.bytes(start, self.len()) }
    }

    /// Frees the frame's bytes for the producer. Releases are batched: the
    /// producer sees them once a quarter of the ring has been released, when
    /// this consumer next finds the ring empty, or on [`Consumer::flush`],
    /// whichever comes first; this saves a store and a fence per frame.
    #[inline]
    pub fn release(self) {
        let size = frame_size(self.len()) as u64;
        let Frame {
            consumer: c,
            header,
            access,
        } = self;
        // The reads end before `advance` may hand the bytes back (its
        // Release store of head).
        drop(access);
        c.stats.frames += 1;
        c.stats.bytes += u64::from(header.len);
        c.advance(size);
    }
}
