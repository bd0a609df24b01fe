//! The shared part both halves hold: the region and its geometry, taken from
//! the region's length (never from the shared bytes), and read-only views.

use crate::error::{AttachError, Corrupt};
use crate::layout::*;
use crate::region::{ReadRegion, Region};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

pub(crate) struct RingRef<R: Region> {
    pub(crate) region: R,
    /// Data capacity, a power of two (checked in `new`).
    pub(crate) capacity: u64,
}

impl<R: Region> RingRef<R> {
    pub(crate) fn new(region: R) -> Result<Self, AttachError> {
        let len = region.len();
        let capacity = len.wrapping_sub(RING_CONTROL_BYTES);
        if len < RING_CONTROL_BYTES || !valid_capacity(capacity) {
            return Err(AttachError::BadRegionSize { len });
        }
        Ok(RingRef {
            region,
            capacity: capacity as u64,
        })
    }

    /// A control word.
    #[inline]
    pub(crate) fn word(&self, off: usize) -> &AtomicU64 {
        self.region.u64_at(off)
    }

    /// A wait word.
    #[inline]
    pub(crate) fn wait_word(&self, off: usize) -> &AtomicU32 {
        self.region.u32_at(off)
    }

    /// The header slot of the frame at ring position `pos`.
    #[inline]
    pub(crate) fn header(&self, pos: u64) -> &AtomicU64 {
        self.region
            .u64_at(DATA + (pos & (self.capacity - 1)) as usize)
    }

    /// Region offset of the payload of the frame at `pos`.
    #[inline]
    pub(crate) fn payload_offset(&self, pos: u64) -> usize {
        DATA + (pos & (self.capacity - 1)) as usize + FRAME_HEADER_BYTES
    }

    /// Reads head and tail for a side that attaches, and checks them.
    pub(crate) fn counters_at_attach(&self) -> Result<(u64, u64), Corrupt> {
        let head = self.word(HEAD).load(Ordering::Acquire);
        let tail = self.word(TAIL).load(Ordering::Acquire);
        let ok = head <= tail
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
    /// Times the producer found the ring full.
    pub full_stalls: u64,
    /// The consumer's wait word (non-zero: it is or is about to be asleep).
    pub consumer_waiting: u32,
    /// The producer's wait word.
    pub producer_waiting: u32,
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
/// loads only: it works on a read-only mapping.
///
/// # Errors
///
/// [`AttachError::BadRegionSize`] if the region is not a ring region.
pub fn snapshot<R: ReadRegion + ?Sized>(region: &R) -> Result<RingSnapshot, AttachError> {
    let len = region.len();
    let capacity = len.wrapping_sub(RING_CONTROL_BYTES);
    if len < RING_CONTROL_BYTES || !valid_capacity(capacity) {
        return Err(AttachError::BadRegionSize { len });
    }
    let w = |off| region.load_u64(off);
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
        full_stalls: w(PROD_FULL_STALLS),
        consumer_waiting: region.load_u32(CONS_WAIT),
        producer_waiting: region.load_u32(PROD_WAIT),
    })
}
