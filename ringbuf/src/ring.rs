//! The shared part both halves hold: the region and its geometry, taken from
//! the region's length (never from the shared bytes), the side's
//! attachment, and read-only views.
//!
//! # One producer, one consumer
//!
//! A side's [`Grant`](crate::Grant)s and [`Frame`](crate::Frame)s are
//! slices into the region, sound only while no other handle of this
//! process writes the same bytes: so a side of a ring may be attached once
//! at a time. Two records make sure of it:
//!
//! - a process-local registry of the `(base address, side)` pairs attached
//!   now, checked and filled under a lock at attach and emptied when the
//!   side drops. It is what soundness rests on: whatever the peer writes,
//!   no second producer or consumer of a ring exists in this process (the
//!   [`Region`] contract makes every handle of one ring in a process share
//!   its base address);
//! - an attachment word per side in the control block
//!   ([`PROD_ATTACHED`], [`CONS_ATTACHED`]), set by compare-and-swap from
//!   `0` to this process's pid at attach and cleared at detach if it still
//!   holds that pid: a second attach from another process is refused too,
//!   and an inspector can tell who is attached. It is advisory (a peer may
//!   rewrite it; a process that died attached leaves it set, and the ring
//!   cannot be attached that way again, as a dead connection's should not).
//!
//! Allows `unsafe` for three blocks: the word accessors, whose offsets are
//! in bounds by construction (layout constants inside the control block,
//! masked frame positions inside the data area), skip the region's check.
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, PoisonError};

use crate::error::{AttachError, Corrupt};
use crate::layout::*;
use crate::region::{ReadRegion, Region, region_key};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// The two sides of a ring (exactly two, so not `#[non_exhaustive]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RingSide {
    /// The writing side, [`Producer`](crate::Producer).
    Producer,
    /// The reading side, [`Consumer`](crate::Consumer).
    Consumer,
}

impl RingSide {
    /// Offset of this side's attachment word.
    fn word(self) -> usize {
        match self {
            RingSide::Producer => PROD_ATTACHED,
            RingSide::Consumer => CONS_ATTACHED,
        }
    }
}

impl std::fmt::Display for RingSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RingSide::Producer => "producer",
            RingSide::Consumer => "consumer",
        })
    }
}

/// The ring sides attached in this process, by region base address. A
/// plain `std` mutex in every build, loom's too: loom does not model it,
/// and nothing inside its critical sections is a loom operation, so a
/// model never switches threads while it is held.
static ATTACHED: LazyLock<Mutex<HashSet<(usize, RingSide)>>> =
    LazyLock::new(|| Mutex::new(HashSet::new()));

fn registry() -> std::sync::MutexGuard<'static, HashSet<(usize, RingSide)>> {
    // A panic while the lock was held left the set as it was before or
    // after one insert or remove: still a valid set.
    ATTACHED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This process's mark in an attachment word: its pid (never 0).
fn mark() -> u64 {
    u64::from(std::process::id()).max(1)
}

pub(crate) struct RingRef<R: Region> {
    pub(crate) region: R,
    /// Data capacity, a power of two (checked in `attach`).
    pub(crate) capacity: u64,
    /// `capacity - 1` with the low bits of a frame position cleared: the
    /// offset in the data area of the header slot of a position.
    slot_mask: u64,
    /// The side this handle is attached as: its `(base, side)` pair is in
    /// the registry until drop.
    side: RingSide,
    /// Whether the attachment word holds our mark (ours to clear at drop).
    marked: bool,
}

impl<R: Region> RingRef<R> {
    /// Attaches `side` to the ring in `region`: checks the region's size,
    /// registers the side in this process, marks it in the control block.
    pub(crate) fn attach(region: R, side: RingSide) -> Result<Self, AttachError> {
        let len = region.len();
        let capacity = len.wrapping_sub(RING_CONTROL_BYTES);
        if len < RING_CONTROL_BYTES || !valid_capacity(capacity) {
            return Err(AttachError::BadRegionSize { len });
        }
        if !registry().insert((region_key(&region), side)) {
            return Err(AttachError::AlreadyAttached { side });
        }
        // From here on, dropping `ring` (on any error below) unregisters.
        let mut ring = RingRef {
            region,
            capacity: capacity as u64,
            slot_mask: (capacity as u64 - 1) & !(FRAME_ALIGN as u64 - 1),
            side,
            marked: false,
        };
        // Acquire: pairs with the Release of the previous holder's detach,
        // so what it stored (its counters) is visible to this side.
        match ring.word(side.word()).compare_exchange(
            0,
            mark(),
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => ring.marked = true,
            Err(by) => return Err(AttachError::AttachedElsewhere { side, by }),
        }
        Ok(ring)
    }

    /// A control word (`off` is one of the layout's constants: the check
    /// below folds away when it is inlined).
    #[inline]
    pub(crate) fn word(&self, off: usize) -> &AtomicU64 {
        assert!(off.is_multiple_of(8) && off + 8 <= RING_CONTROL_BYTES);
        // SAFETY: 8-aligned and inside the control block (checked above),
        // which `attach` checked the region holds (len >= RING_CONTROL_BYTES);
        // the control block is never handed out as payload, so no grant or
        // frame's slice covers the word.
        unsafe { self.region.u64_at_unchecked(off) }
    }

    /// A wait word (a layout constant, as for [`word`](Self::word)).
    #[inline]
    pub(crate) fn wait_word(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= RING_CONTROL_BYTES);
        // SAFETY: 4-aligned and inside the control block, never payload, as
        // in `word`.
        unsafe { self.region.u32_at_unchecked(off) }
    }

    /// The header slot of the frame at ring position `pos` (a multiple of
    /// `FRAME_ALIGN`; the mask keeps any other value in bounds too).
    #[inline]
    pub(crate) fn header(&self, pos: u64) -> &AtomicU64 {
        debug_assert!(pos.is_multiple_of(FRAME_ALIGN as u64));
        let off = DATA + (pos & self.slot_mask) as usize;
        // `off` is 64-aligned and at most `DATA + capacity - 64` (the mask),
        // inside the region `attach` checked; a side touches header slots
        // only where the protocol gives it the space, never inside a live
        // grant or frame (those borrow their side mutably meanwhile).
        // SAFETY: so in bounds, aligned, and covered by no slice.
        unsafe { self.region.u64_at_unchecked(off) }
    }

    /// Region offset of the payload of the frame at `pos`.
    #[inline]
    pub(crate) fn payload_offset(&self, pos: u64) -> usize {
        DATA + (pos & (self.capacity - 1)) as usize + FRAME_HEADER_BYTES
    }

    /// Reads head and tail for a side that attaches, and checks them: in
    /// order, within a capacity of each other, on frame boundaries, and at
    /// most [`MAX_COUNTER_AT_ATTACH`] (so that this side's own additions to
    /// them never overflow; see there).
    pub(crate) fn counters_at_attach(&self) -> Result<(u64, u64), Corrupt> {
        let head = self.word(HEAD).load(Ordering::Acquire);
        let tail = self.word(TAIL).load(Ordering::Acquire);
        let ok = head <= tail
            && tail <= MAX_COUNTER_AT_ATTACH
            && tail - head <= self.capacity
            && head.is_multiple_of(FRAME_ALIGN as u64)
            && tail.is_multiple_of(FRAME_ALIGN as u64);
        if ok {
            Ok((head, tail))
        } else {
            Err(Corrupt::BadCounters {
                head,
                tail,
                capacity: self.capacity,
            })
        }
    }
}

impl<R: Region> Drop for RingRef<R> {
    fn drop(&mut self) {
        if self.marked {
            // Release: pairs with the Acquire of the next attach. Left alone
            // if the peer rewrote it: it is no longer our mark to clear.
            let _ = self.word(self.side.word()).compare_exchange(
                mark(),
                0,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
        registry().remove(&(region_key(&self.region), self.side));
    }
}

/// A point-in-time copy of a ring's shared counters, for inspection. Read
/// without synchronisation from a live ring: each field is one atomic load,
/// so fields may come from slightly different moments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingSnapshot {
    /// Data capacity in bytes.
    pub capacity: u64,
    /// Consumer position (bytes consumed, ever).
    pub head: u64,
    /// Producer position published (bytes, ever).
    pub tail: u64,
    /// Frames published by the producer.
    pub frames_published: u64,
    /// Payload bytes published.
    pub bytes_published: u64,
    /// Frames released by the consumer.
    pub frames_consumed: u64,
    /// Payload bytes released.
    pub bytes_consumed: u64,
    /// Wake-ups the producer issued.
    pub producer_wakes: u64,
    /// Wake-ups the consumer issued.
    pub consumer_wakes: u64,
    /// Times the producer slept on a full ring.
    pub producer_sleeps: u64,
    /// Times the consumer slept on an empty ring.
    pub consumer_sleeps: u64,
    /// Consumer sleeps that lasted to their end and found a frame waiting
    /// (see [`CONS_UNWOKEN`]): lost wake-ups, found by the consumer's own
    /// next look.
    pub consumer_unwoken: u64,
    /// Of those, the sleeps whose announcement the producer never took
    /// down (see [`CONS_UNSEEN`]).
    pub consumer_unseen: u64,
    /// Times the producer found the ring full.
    pub full_stalls: u64,
    /// The consumer's wait word (non-zero: it is or is about to be asleep).
    pub consumer_waiting: u32,
    /// The producer's wait word.
    pub producer_waiting: u32,
    /// The producer's attachment word: 0, or the pid of the process whose
    /// producer is attached (as that process wrote it).
    pub producer_attached: u64,
    /// The consumer's attachment word, likewise.
    pub consumer_attached: u64,
}

impl RingSnapshot {
    /// Bytes published but not yet consumed (0 if the counters are
    /// inconsistent).
    pub fn pending_bytes(&self) -> u64 {
        self.tail.saturating_sub(self.head)
    }

    /// Frames published but not yet consumed.
    pub fn pending_frames(&self) -> u64 {
        self.frames_published.saturating_sub(self.frames_consumed)
    }
}

/// Reads the counters of the ring in `region` without attaching to it, with
/// loads only, through an inspector's read-only mapping (which no grant or
/// frame of this process can alias, so this is safe; see
/// [`snapshot_region`] for any other region).
///
/// # Errors
///
/// [`AttachError::BadRegionSize`] if the region is not a ring region.
#[cfg(not(loom))]
pub fn snapshot(region: &crate::ReadOnlyRegion) -> Result<RingSnapshot, AttachError> {
    // SAFETY: no `&mut` view of a `ReadOnlyRegion`'s bytes exists in this
    // process (its constructor's contract).
    unsafe { snapshot_region(region) }
}

/// [`snapshot`] of any readable region, e.g. a ring's own [`Region`] in a
/// test.
///
/// # Safety
///
/// During the call no `&mut [u8]` view (from [`Region::bytes_mut`]) of the
/// region's control block, its first [`RING_CONTROL_BYTES`] bytes, exists
/// in this process. A ring never hands those bytes out as payload, so this
/// holds for any region used only as a ring; it may not for a region used
/// as something else (a blob pool's payload, say).
///
/// # Errors
///
/// [`AttachError::BadRegionSize`] if the region is not a ring region.
// SAFETY: a contract for callers, stated in `# Safety` above.
pub unsafe fn snapshot_region<R: ReadRegion + ?Sized>(
    region: &R,
) -> Result<RingSnapshot, AttachError> {
    let len = region.len();
    let capacity = len.wrapping_sub(RING_CONTROL_BYTES);
    if len < RING_CONTROL_BYTES || !valid_capacity(capacity) {
        return Err(AttachError::BadRegionSize { len });
    }
    // SAFETY: every offset read below is a layout constant inside the
    // control block (`len >= RING_CONTROL_BYTES`, checked), of which no
    // `&mut` view exists (the caller's promise).
    let w = |off| unsafe { region.load_u64(off) };
    // SAFETY: as for `w`.
    let w32 = |off| unsafe { region.load_u32(off) };
    Ok(RingSnapshot {
        capacity: capacity as u64,
        head: w(HEAD),
        tail: w(TAIL),
        frames_published: w(PROD_FRAMES),
        bytes_published: w(PROD_BYTES),
        frames_consumed: w(CONS_FRAMES),
        bytes_consumed: w(CONS_BYTES),
        producer_wakes: w(PROD_WAKES),
        consumer_wakes: w(CONS_WAKES),
        producer_sleeps: w(PROD_SLEEPS),
        consumer_sleeps: w(CONS_SLEEPS),
        consumer_unwoken: w(CONS_UNWOKEN),
        consumer_unseen: w(CONS_UNSEEN),
        full_stalls: w(PROD_FULL_STALLS),
        consumer_waiting: w32(CONS_WAIT),
        producer_waiting: w32(PROD_WAIT),
        producer_attached: w(PROD_ATTACHED),
        consumer_attached: w(CONS_ATTACHED),
    })
}
