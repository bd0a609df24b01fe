//! The producer half: reserve -> write -> commit -> publish.
//!
//! Allows `unsafe` for one block: handing out reserved free space as a
//! mutable slice, justified by the ring protocol (see [`Grant::bytes_mut`]).
#![allow(unsafe_code)]

use std::time::Instant;

use crate::error::{AttachError, Corrupt, ReserveError};
use crate::layout::*;
use crate::region::{Access, Region};
use crate::ring::{RingRef, RingSide};
use crate::sync::{Ordering, fence, light_fence};
use crate::wait::{NOT_WAITING, Parker, Spinner, WaitError, WaitStrategy, sleep_until};

/// The writing side of a ring. One per ring; it is `Send` but not `Clone`.
pub struct Producer<R: Region, P: Parker> {
    ring: RingRef<R>,
    parker: P,
    /// End of the committed frames (next frame starts here). Invariant:
    /// `published <= tail <= head_cache + capacity`, all multiples of
    /// `FRAME_ALIGN`.
    ///
    /// Overflow: `tail` starts at most [`MAX_COUNTER_AT_ATTACH`] (2^62,
    /// checked at attach) and only this side's own frames advance it, by at
    /// most a capacity (2^30) each; every sum below adds at most two
    /// capacities to it (or to `head_cache <= published <= tail`). To come
    /// within that of 2^64 this producer would have to push 3 * 2^62 bytes
    /// through the ring, over four years at 100 GB/s: plain `+` cannot
    /// overflow, whatever the peer writes. The stats counters count this
    /// side's own frames and bytes from zero, likewise.
    tail: u64,
    /// End of the frames the consumer may see.
    published: u64,
    /// Header of the first committed frame not yet published: its slot still
    /// holds 0 in the ring, so the consumer stops there until `publish`.
    pending: Option<(u64, u64)>,
    /// Last head read from the consumer (never ahead of the real one).
    head_cache: u64,
    stats: ProducerStats,
    pending_frames: u64,
    pending_bytes: u64,
    /// Whether this side announced asymmetric fencing; fixed at attach.
    asym: bool,
    /// Every header slot (every `FRAME_ALIGN` position) in `(tail,
    /// clean_to)` holds zero in the ring, written ahead of need by
    /// `zero_ahead` after a publish: a frame ending below `clean_to` needs
    /// no terminator store, and its lines are already this side's when it
    /// writes them, instead of being fetched on the way to the consumer.
    clean_to: u64,
    /// Whether `publish` zeroes slots ahead (latency mode, the default).
    zero_ahead: bool,
    /// Header slots at or past `dirty_to` in free space are zero: the
    /// consumer zeroes every line start of what it releases, and this side
    /// writes bytes only inside grants, each of which raises `dirty_to` to
    /// its end. So a frame that ends at or past `dirty_to` needs no
    /// terminator store.
    dirty_to: u64,
    /// A grant was handed out and not committed (yet, or ever: it may have
    /// been dropped after writing over header slots `zero_ahead` cleared).
    /// The next reserve or publish then forgets what was clean.
    grant_open: bool,
}

/// How far ahead of the tail the producer keeps header slots zeroed.
const ZERO_AHEAD: u64 = 1024;
/// Slots zeroed per publish, or more after a publication of several
/// frames (see `zero_ahead`; the rest wait for the next publish).
const ZERO_PER_PUBLISH: usize = 4;

/// Counters the producer keeps (mirrored into the ring's control block).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Frames published.
    pub frames: u64,
    /// Payload bytes published.
    pub bytes: u64,
    /// Wake-ups issued to a sleeping consumer.
    pub wakes: u64,
    /// Times this side slept on a full ring.
    pub sleeps: u64,
    /// Times this side found the ring full and had to wait.
    pub full_stalls: u64,
}

impl<R: Region, P: Parker> Producer<R, P> {
    /// Attaches the producer to a ring region (zeroed when new). A ring has
    /// one producer at a time: until this one is dropped, attaching another
    /// (in this process or, through the control block, in another) fails.
    ///
    /// # Errors
    ///
    /// [`AttachError::BadRegionSize`] if the region is not a ring region;
    /// [`AttachError::AlreadyAttached`] if this process has a producer on it
    /// already; [`AttachError::AttachedElsewhere`] if the control block
    /// names another attached producer; [`AttachError::Corrupt`] if its
    /// counters are inconsistent (see [`Corrupt::BadCounters`]).
    pub fn attach(region: R, parker: P) -> Result<Self, AttachError> {
        let ring = RingRef::attach(region, RingSide::Producer)?;
        let (head, tail) = ring.counters_at_attach()?;
        let asym = parker.asymmetric();
        ring.wait_word(PROD_FENCING)
            .store(if asym { FENCING_ASYMMETRIC } else { 0 }, Ordering::Release);
        ring.wait_word(CONS_ZEROES).store(0, Ordering::Relaxed);
        Ok(Producer {
            asym,
            clean_to: tail,
            // Latency mode: terminators always (see `set_zero_ahead`).
            dirty_to: u64::MAX,
            zero_ahead: true,
            grant_open: false,
            ring,
            parker,
            tail,
            published: tail,
            pending: None,
            head_cache: head,
            stats: ProducerStats::default(),
            pending_frames: 0,
            pending_bytes: 0,
        })
    }

    /// Data capacity of the ring in bytes.
    pub fn capacity(&self) -> usize {
        self.ring.capacity as usize
    }

    /// Largest payload a frame can carry in this ring.
    pub fn max_payload(&self) -> usize {
        max_payload(self.capacity())
    }

    /// Counters so far.
    pub fn stats(&self) -> ProducerStats {
        self.stats
    }

    /// The consumer's count of sleeps that no wake-up ended (see
    /// [`CONS_UNWOKEN`]), as the consumer wrote it: a statistic for
    /// reports, which a hostile consumer may set to anything.
    pub fn consumer_unwoken(&self) -> u64 {
        self.ring.word(CONS_UNWOKEN).load(Ordering::Relaxed)
    }

    /// Of those, the sleeps whose announcement this side never took down
    /// (see [`CONS_UNSEEN`]), as the consumer wrote it.
    pub fn consumer_unseen(&self) -> u64 {
        self.ring.word(CONS_UNSEEN).load(Ordering::Relaxed)
    }

    /// Frames committed and not yet published (held back by a producer
    /// that publishes several at once).
    #[inline]
    pub fn unpublished(&self) -> u64 {
        self.pending_frames
    }

    /// Reserves room for a frame of `kind` with up to `len` payload bytes and
    /// returns a [`Grant`] to write it in place. Nothing is visible to the
    /// consumer until the grant is committed and [`publish`](Self::publish)ed;
    /// dropping the grant discards it.
    ///
    /// # Errors
    ///
    /// [`ReserveError::Full`] when there is no room now (publish, then retry
    /// or use [`reserve_wait`](Self::reserve_wait)); `TooLarge`, `BadKind`;
    /// `Corrupt` if the consumer's head counter is inconsistent.
    pub fn reserve(&mut self, kind: u16, len: usize) -> Result<Grant<'_, R, P>, ReserveError> {
        self.make_room(kind, len)?;
        Ok(self.grant(kind, len))
    }

    /// Like [`reserve`](Self::reserve), but when the ring is full it publishes
    /// what is pending and waits by `strategy` until there is room, the
    /// `deadline` passes or `stop()` returns true.
    ///
    /// # Errors
    ///
    /// `Timeout`, `Stopped`, or `Corrupt`; a frame that can never fit or a bad
    /// kind is reported as `Corrupt`-free [`ReserveWaitError::Reserve`].
    pub fn reserve_wait(
        &mut self,
        kind: u16,
        len: usize,
        strategy: WaitStrategy,
        deadline: Option<Instant>,
        stop: impl Fn() -> bool,
    ) -> Result<Grant<'_, R, P>, ReserveWaitError> {
        self.wait_room(kind, len, strategy, deadline, stop)?;
        Ok(self.grant(kind, len))
    }

    /// Copies `payload` into a new frame and commits it (not yet published).
    ///
    /// # Errors
    ///
    /// As [`reserve`](Self::reserve).
    pub fn push(&mut self, kind: u16, payload: &[u8]) -> Result<(), ReserveError> {
        let mut grant = self.reserve(kind, payload.len())?;
        grant.bytes_mut().copy_from_slice(payload);
        grant.commit_all();
        Ok(())
    }

    /// Makes every committed frame visible to the consumer with one Release
    /// store, and wakes the consumer if it announced that it sleeps.
    #[inline]
    pub fn publish(&mut self) {
        self.forget_dropped_grant();
        let Some((pos, word)) = self.pending.take() else {
            return;
        };
        // Release: pairs with the consumer's Acquire load of this header
        // word; it publishes this frame's payload, every later committed
        // frame's header and payload, and the terminator after the last one.
        self.ring.header(pos).store(word, Ordering::Release);
        // Lines a publication of several frames covered: `zero_ahead`
        // readies as many.
        let lines = if self.pending_frames > 1 {
            ((self.tail - self.published) / FRAME_ALIGN as u64) as usize
        } else {
            0
        };
        self.published = self.tail;
        self.stats.frames += self.pending_frames;
        self.stats.bytes += self.pending_bytes;
        self.pending_frames = 0;
        self.pending_bytes = 0;
        let ctl = &self.ring;
        ctl.word(TAIL).store(self.tail, Ordering::Relaxed);
        ctl.word(PROD_FRAMES)
            .store(self.stats.frames, Ordering::Relaxed);
        ctl.word(PROD_BYTES)
            .store(self.stats.bytes, Ordering::Relaxed);
        // Pairs with the fence the consumer issues after announcing sleep
        // (see `Consumer::wait`): either it sees our header, or we see its
        // announcement. A compiler fence suffices if the consumer declared
        // that its fence there is a heavy barrier, and only if that
        // barrier reaches our CPU too: our own parker being asymmetric
        // says so (see `Parker::asymmetric`; a `membarrier` fences only
        // processes registered for it).
        if self.asym
            && self.ring.wait_word(CONS_FENCING).load(Ordering::Relaxed) == FENCING_ASYMMETRIC
        {
            light_fence();
        } else {
            fence(Ordering::SeqCst);
        }
        if self.ring.wait_word(CONS_WAIT).load(Ordering::Relaxed) != NOT_WAITING {
            self.wake_consumer();
        }
        if self.zero_ahead {
            self.zero_ahead(lines);
        }
    }

    /// Latency mode (on by default): after each publish the producer zeroes
    /// the header slots of the next kilobyte, off the critical path, so the
    /// next frame's cache lines are already this side's when it writes them
    /// and the frame reaches the consumer without waiting for them. That is
    /// one or two extra stores per frame; a producer that streams frames
    /// back to back, for throughput rather than latency, does better with
    /// it off (the consumer's prefetching then competes for those lines).
    ///
    /// With it off the producer also asks the consumer to zero the lines it
    /// releases ([`CONS_ZEROES`]) and then skips the terminator after each
    /// frame, once two laps have passed since the switch (space the
    /// consumer released before it saw the request may hold old bytes).
    pub fn set_zero_ahead(&mut self, on: bool) {
        if on == self.zero_ahead {
            return;
        }
        self.zero_ahead = on;
        let streaming = self.ring.wait_word(CONS_ZEROES);
        if on {
            streaming.store(0, Ordering::Relaxed);
            self.dirty_to = u64::MAX;
        } else {
            // Ordered before the consumer's acquisition of every frame we
            // publish from now on by that frame's Release publication. The
            // consumer rereads the word at each flush, at least every
            // quarter ring it releases: within half a ring of frames past
            // this tail it zeroes what it releases, so a lap and a half
            // later free space is clean. Two laps, to be plain about it.
            streaming.store(1, Ordering::Relaxed);
            self.dirty_to = self.tail + 2 * self.ring.capacity;
        }
    }

    /// Zeroes header slots past the tail, within free space and at most
    /// `ZERO_AHEAD` ahead: `ZERO_PER_PUBLISH`, or as many as the lines a
    /// publication of several frames covered (`lines`), so that a producer
    /// that publishes frames in groups stays as far ahead as one that
    /// publishes each (at four a publish, a group of eight two-line frames
    /// would find twelve of the next group's sixteen lines not yet its
    /// own: each a store that waits for a line from the consumer's core).
    /// It skips the slot at the tail itself, which the consumer may be
    /// polling (taking that line would only make it fetch it back). Runs
    /// after the Release store of a publish, so it delays no frame; the
    /// zeroes are ordered before any frame that reaches them by that
    /// frame's own publish.
    ///
    /// Each line is first asked for (`prefetch_write`) a kilobyte before
    /// it is zeroed: the zero then finds the line owned. Zeroed without
    /// that, a line the consumer read a lap ago may still sit in its
    /// core's caches, and the store would wait in the store buffer for it
    /// to come over; every later store waits behind it, and so does any
    /// locked instruction (a shared client's lock), which then costs a
    /// cross-core transfer per call (see docs/performance.md).
    #[inline]
    fn zero_ahead(&mut self, lines: usize) {
        let step = FRAME_ALIGN as u64;
        let room = self.head_cache + self.ring.capacity;
        let limit = (self.tail + ZERO_AHEAD).min(room);
        let mut pos = self.clean_to.max(self.tail + step);
        for _ in 0..ZERO_PER_PUBLISH.max(lines) {
            if pos + step > limit {
                break;
            }
            if pos + ZERO_AHEAD + step <= room {
                crate::sync::prefetch_write(self.ring.header(pos + ZERO_AHEAD));
            }
            self.ring.header(pos).store(0, Ordering::Relaxed);
            pos += step;
        }
        self.clean_to = pos;
    }

    #[cold]
    fn wake_consumer(&mut self) {
        let word = self.ring.wait_word(CONS_WAIT);
        let announced = word.swap(NOT_WAITING, Ordering::Relaxed);
        if announced != NOT_WAITING {
            self.stats.wakes += 1;
            self.ring
                .word(PROD_WAKES)
                .store(self.stats.wakes, Ordering::Relaxed);
            self.parker.unpark(word, announced);
        }
    }

    /// Copies `payload` into a frame, commits and publishes it, waiting for
    /// room per `strategy`.
    ///
    /// # Errors
    ///
    /// As [`reserve_wait`](Self::reserve_wait).
    pub fn send(
        &mut self,
        kind: u16,
        payload: &[u8],
        strategy: WaitStrategy,
        deadline: Option<Instant>,
        stop: impl Fn() -> bool,
    ) -> Result<(), ReserveWaitError> {
        let mut grant = self.reserve_wait(kind, payload.len(), strategy, deadline, stop)?;
        grant.bytes_mut().copy_from_slice(payload);
        grant.commit_all();
        self.publish();
        Ok(())
    }

    fn grant(&mut self, kind: u16, len: usize) -> Grant<'_, R, P> {
        self.grant_open = true;
        self.dirty_to = self.dirty_to.max(self.tail + frame_size(len) as u64);
        let access = (self.ring.region).access(self.ring.payload_offset(self.tail), len, true);
        Grant {
            producer: self,
            kind,
            flags: 0,
            len,
            _access: access,
        }
    }

    /// Ensures a frame of `len` fits at `tail` (writing a padding frame first
    /// if it would cross the ring's end).
    /// If the last grant was dropped uncommitted, the header slots it
    /// covered may hold its bytes: nothing past the tail is known clean.
    #[inline]
    fn forget_dropped_grant(&mut self) {
        if self.grant_open {
            self.grant_open = false;
            self.clean_to = self.clean_to.min(self.tail);
        }
    }

    fn make_room(&mut self, kind: u16, len: usize) -> Result<(), ReserveError> {
        self.forget_dropped_grant();
        if kind == 0 || kind > MAX_USER_KIND {
            return Err(ReserveError::BadKind { kind });
        }
        let max = self.max_payload();
        if len > max {
            return Err(ReserveError::TooLarge { len, max });
        }
        let cap = self.ring.capacity;
        let size = frame_size(len) as u64;
        let off = self.tail & (cap - 1);
        if off + size > cap {
            let pad = cap - off;
            self.ensure_free(pad + FRAME_ALIGN as u64)?;
            let header = Header {
                len: (pad - FRAME_HEADER_BYTES as u64) as u32,
                kind: KIND_PAD,
                flags: 0,
            };
            self.commit_header(header, pad);
        }
        self.ensure_free(size + FRAME_ALIGN as u64)
    }

    /// Ensures `need` bytes are free from `tail`, reloading the consumer's head
    /// only if the cached one says there are not.
    #[inline]
    fn ensure_free(&mut self, need: u64) -> Result<(), ReserveError> {
        let cap = self.ring.capacity;
        if self.tail + need <= self.head_cache + cap {
            return Ok(());
        }
        self.head_cache = self.load_head()?;
        if self.tail + need <= self.head_cache + cap {
            Ok(())
        } else {
            Err(ReserveError::Full)
        }
    }

    /// Loads the consumer's head once and checks it before use.
    fn load_head(&self) -> Result<u64, Corrupt> {
        // Acquire: pairs with the consumer's Release store of head, so the
        // consumer is done reading the bytes we are about to reuse.
        let head = self.ring.word(HEAD).load(Ordering::Acquire);
        if head < self.head_cache {
            return Err(Corrupt::HeadBackwards {
                old: self.head_cache,
                new: head,
            });
        }
        if head > self.published {
            return Err(Corrupt::HeadPastTail {
                head,
                tail: self.published,
            });
        }
        if !head.is_multiple_of(FRAME_ALIGN as u64) {
            return Err(Corrupt::HeadMisaligned { head });
        }
        Ok(head)
    }

    /// Writes the terminator after a frame of `size` at `tail`, then its
    /// header (held back if it is the first unpublished one), and advances.
    #[inline]
    fn commit_header(&mut self, header: Header, size: u64) {
        debug_assert!(size.is_multiple_of(FRAME_ALIGN as u64));
        debug_assert!(
            self.tail + size + FRAME_ALIGN as u64 <= self.head_cache + self.ring.capacity
        );
        let end = self.tail + size;
        // The terminator slot is free space (checked by `ensure_free`); it
        // may hold bytes of an older lap, which the consumer must not
        // mistake for a header. Unless `zero_ahead` already cleared it, zero
        // it now; either way the zero is ordered before the consumer's read
        // by the Release store in `publish`.
        if end >= self.clean_to && end < self.dirty_to {
            self.ring.header(end).store(0, Ordering::Relaxed);
        }
        let word = header.encode();
        if self.pending.is_none() {
            self.pending = Some((self.tail, word));
        } else {
            // Not yet reachable by the consumer: it stops at the pending
            // header, which `publish` stores last.
            self.ring.header(self.tail).store(word, Ordering::Relaxed);
        }
        self.tail = end;
    }

    fn wait_room(
        &mut self,
        kind: u16,
        len: usize,
        strategy: WaitStrategy,
        deadline: Option<Instant>,
        stop: impl Fn() -> bool,
    ) -> Result<(), ReserveWaitError> {
        match self.make_room(kind, len) {
            Err(ReserveError::Full) => {}
            other => return Ok(other?),
        }
        self.stats.full_stalls += 1;
        self.ring
            .word(PROD_FULL_STALLS)
            .store(self.stats.full_stalls, Ordering::Relaxed);
        // The consumer can only free room by reading what we committed.
        self.publish();
        let mut spinner = Spinner::new(strategy);
        let mut turn = 1u32;
        loop {
            // Stop condition and clock every 64th turn (see the consumer).
            if turn.is_multiple_of(64) {
                if stop() {
                    return Err(WaitError::Stopped.into());
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(WaitError::Timeout.into());
                }
            }
            turn = turn.wrapping_add(1);
            if !spinner.spin() {
                // `make_room` may have committed a padding frame before it
                // found no room for the frame itself: the consumer must see
                // it to skip it, or a frame that needs the padded bytes
                // would wait forever.
                self.publish();
                let announce = self.parker.announce();
                self.ring
                    .wait_word(PROD_WAIT)
                    .swap(announce, Ordering::Relaxed);
                // Pairs with the consumer's fence after it stores head (see
                // `Consumer::flush`): heavy if we let it use a light one.
                if self.asym {
                    self.parker.heavy_fence();
                } else {
                    fence(Ordering::SeqCst);
                }
                let room = self.make_room(kind, len);
                if room == Err(ReserveError::Full) && self.pending.is_some() {
                    // The re-check committed a padding frame: never sleep
                    // with it unpublished (the consumer would wait for it
                    // while we wait for the room behind it). Publish it on
                    // the next turn, then announce again.
                    self.ring
                        .wait_word(PROD_WAIT)
                        .swap(NOT_WAITING, Ordering::Relaxed);
                    continue;
                }
                let stopped = stop();
                if room != Err(ReserveError::Full) || stopped {
                    self.ring
                        .wait_word(PROD_WAIT)
                        .swap(NOT_WAITING, Ordering::Relaxed);
                    return match room {
                        Err(ReserveError::Full) => Err(WaitError::Stopped.into()),
                        other => Ok(other?),
                    };
                }
                self.parker.park(
                    self.ring.wait_word(PROD_WAIT),
                    announce,
                    sleep_until(deadline),
                );
                self.stats.sleeps += 1;
                self.ring
                    .word(PROD_SLEEPS)
                    .store(self.stats.sleeps, Ordering::Relaxed);
                // Woken by the deadline: say so now, rather than after up to
                // 63 more rounds of announcing (the spin budget is spent).
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(WaitError::Timeout.into());
                }
                continue;
            }
            match self.make_room(kind, len) {
                Err(ReserveError::Full) => {}
                other => return Ok(other?),
            }
        }
    }
}

impl<R: Region, P: Parker> std::fmt::Debug for Producer<R, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.ring.capacity)
            .field("tail", &self.tail)
            .field("published", &self.published)
            .field("head_cache", &self.head_cache)
            .finish_non_exhaustive()
    }
}

/// Why [`Producer::reserve_wait`] gave no grant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReserveWaitError {
    /// The frame cannot be reserved at all (too large, bad kind, corrupt).
    #[error(transparent)]
    Reserve(#[from] ReserveError),
    /// Waiting for room ended without it.
    #[error(transparent)]
    Wait(#[from] WaitError),
}

/// Room for one frame, written in place. Commit it with
/// [`commit`](Grant::commit); drop it to discard.
pub struct Grant<'a, R: Region, P: Parker> {
    producer: &'a mut Producer<R, P>,
    kind: u16,
    flags: u16,
    len: usize,
    /// This side writes the reserved bytes for as long as the grant lives
    /// (it ends before any publish, which needs the producer back).
    _access: Access,
}

impl<R: Region, P: Parker> Grant<'_, R, P> {
    /// The reserved payload bytes (their previous contents are unspecified).
    #[inline]
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let p = &*self.producer;
        let start = p.ring.payload_offset(p.tail);
        // SAFETY: `make_room` checked that `frame_size(len)` bytes from
        // `tail` (header and payload, not crossing the ring's end) are free
        // space: the consumer's head is at most `capacity` behind, so the
        // consumer reads none of them, and this grant (holding the producer
        // mutably) is the only writer.
        unsafe { p.ring.region.bytes_mut(start, self.len) }
    }

    /// Sets the frame's user flags.
    pub fn set_flags(&mut self, flags: u16) {
        self.flags = flags;
    }

    /// Length of the reservation.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the reservation has no payload bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Commits the first `used` bytes as a frame (visible after `publish`).
    ///
    /// # Panics
    ///
    /// If `used` exceeds the reserved length (a bug in the caller).
    #[inline]
    pub fn commit(self, used: usize) {
        assert!(
            used <= self.len,
            "committed {used} bytes of a {}-byte grant",
            self.len
        );
        let header = Header {
            len: used as u32,
            kind: self.kind,
            flags: self.flags,
        };
        let p = &mut *self.producer;
        let size = frame_size(used) as u64;
        // Header slots between the committed frame's end and the end of
        // the reservation may hold bytes the caller wrote: not clean.
        if size < frame_size(self.len) as u64 {
            p.clean_to = p.clean_to.min(p.tail + size);
        }
        p.commit_header(header, size);
        p.pending_frames += 1;
        p.pending_bytes += used as u64;
        p.grant_open = false;
    }

    /// Commits the whole reservation.
    #[inline]
    pub fn commit_all(self) {
        let len = self.len;
        self.commit(len);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::layout::FRAME_ALIGN;
    use crate::wait::SpinParker;

    /// Lines zeroed ahead of the tail after a publish.
    fn ahead<R: crate::Region, P: crate::Parker>(p: &super::Producer<R, P>) -> u64 {
        (p.clean_to - p.tail) / FRAME_ALIGN as u64
    }

    #[test]
    fn a_group_published_at_once_leaves_as_many_lines_ready_as_it_covered() {
        let (mut tx, _rx) = crate::channel(1 << 16, SpinParker).unwrap();
        // Warm up: single frames, one publish each, as a latency producer.
        for _ in 0..64 {
            tx.push(1, &[7; 100]).unwrap();
            tx.publish();
        }
        let single = ahead(&tx);
        assert_eq!(single, 16, "one frame a publish keeps a kilobyte ready");
        // Eight two-line frames held back, then published together: the
        // sixteen lines they took are readied again at once.
        for _ in 0..8 {
            tx.push(1, &[7; 100]).unwrap();
        }
        tx.publish();
        assert_eq!(ahead(&tx), 16, "a group of eight keeps a kilobyte ready");
        // (Four lines a publish, the rule before, left five ready here.)
    }
}
