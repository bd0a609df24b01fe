//! Where everything sits in a ring's region, and how a frame header is coded.
//!
//! ```text
//! offset  size  what                                   written by
//!      0   128  producer line: tail, frame/byte/wake/  producer
//!               sleep/full-stall counters
//!    128   128  consumer line: head, frame/byte/wake/  consumer
//!               sleep counters
//!    256   128  wait line: consumer-waiting word (256), the side about to sleep
//!               fencing words (264, 268),            (fencing: once, at attach)
//!               producer-waiting word (320)
//!    384   128  attach line: producer's (384) and    each side, at attach
//!               consumer's (392) attachment words    and detach
//!    512     C  frame data (C = capacity, a power of two)
//! ```
//!
//! A frame starts on a 64-byte (cache-line) boundary: a 16-byte header slot
//! (the 8-byte header word, then 8 reserved bytes) and the payload, which so
//! starts on a 16-byte boundary and can hold an archived value in place. The
//! frame is padded to a multiple of 64 bytes, so two frames never share a
//! cache line: the consumer reading one frame never takes a line away from
//! the producer writing the next, and a payload of up to 48 bytes travels
//! with its header in one line.
//!
//! The header word is little-endian `len: u32 | kind: u16 << 32 | flags: u16
//! << 48`. The word `0` means "no frame here yet", so the consumer discovers
//! a new frame by loading the one word it is about to read anyway and never
//! reads the producer's tail counter. The producer writes a zero
//! *terminator* after the frames it publishes. In latency mode (the
//! default) it zeroes header slots ahead of the tail after each publish, so
//! the terminator is usually written already and the next frame's lines are
//! its own. In streaming mode it sets [`CONS_ZEROES`] and the consumer
//! zeroes the header slot of each line it releases (before the Release
//! store of its head hands the space back); free space is then zero at
//! every line start and the producer writes a terminator only where its own
//! bytes may have landed (inside an earlier, larger or dropped grant), so
//! each line the consumer polls is written once, with the frame itself.

/// Bytes of a ring's control block; the region of a ring with capacity `C`
/// is `RING_CONTROL_BYTES + C` bytes.
pub const RING_CONTROL_BYTES: usize = 512;

/// Smallest ring capacity accepted.
pub const MIN_CAPACITY: usize = 128;
/// Largest ring capacity accepted (1 GiB).
pub const MAX_CAPACITY: usize = 1 << 30;

/// Bytes before a frame's payload: the 8-byte header word, then 8 bytes
/// that keep the payload 16-byte aligned (reserved; their contents are
/// unspecified).
pub const FRAME_HEADER_BYTES: usize = 16;
/// Every frame starts at a multiple of this (a cache line) and its size is
/// a multiple of it.
pub const FRAME_ALIGN: usize = 64;

/// Frame kind reserved by the ring for padding before a wrap.
pub const KIND_PAD: u16 = 0xFFFF;
/// Largest frame kind a user may send; kinds `1..=MAX_USER_KIND` are the
/// user's, `0` and everything above are the ring's. A frame whose kind is
/// neither a user kind nor [`KIND_PAD`] is corrupt.
pub const MAX_USER_KIND: u16 = 0x7FFF;

/// Offset of the producer's published tail counter (`u64`).
pub const TAIL: usize = 0;
/// Offset of the producer's published-frames counter.
pub const PROD_FRAMES: usize = 8;
/// Offset of the producer's published-bytes counter.
pub const PROD_BYTES: usize = 16;
/// Offset of the producer's wake-ups-issued counter.
pub const PROD_WAKES: usize = 24;
/// Offset of the producer's sleeps counter.
pub const PROD_SLEEPS: usize = 32;
/// Offset of the producer's full-ring stalls counter.
pub const PROD_FULL_STALLS: usize = 40;

/// Offset of the consumer's head counter (`u64`).
pub const HEAD: usize = 128;
/// Offset of the consumer's released-frames counter.
pub const CONS_FRAMES: usize = 136;
/// Offset of the consumer's released-bytes counter.
pub const CONS_BYTES: usize = 144;
/// Offset of the consumer's wake-ups-issued counter.
pub const CONS_WAKES: usize = 152;
/// Offset of the consumer's sleeps counter.
pub const CONS_SLEEPS: usize = 160;
/// Offset of the consumer's unwoken-sleeps counter: sleeps that lasted to
/// their end (the deadline, or [`RECHECK`](crate::wait::RECHECK)) and
/// then found a frame waiting. Each is a wake-up owed and not received
/// (or one arriving just then): zero on a healthy ring. A sleep cut short
/// is not counted, even with a frame waiting and the announcement still
/// standing: the producer may be between its publish and its look at the
/// announcement, about to wake a sleeper that is already up.
pub const CONS_UNWOKEN: usize = 168;
/// Offset of the consumer's unseen-announcements counter: of the sleeps
/// counted at [`CONS_UNWOKEN`], those whose announcement still stood when
/// the frame was found (the producer published without seeing it: a
/// failure of the publish/announce handshake, not of the wake-up's
/// delivery); the others' wake-up was issued and not received.
pub const CONS_UNSEEN: usize = 176;

/// Offset of the consumer's wait word (`u32`).
pub const CONS_WAIT: usize = 256;
/// Offset of the producer's wait word (`u32`).
pub const PROD_WAIT: usize = 320;
/// Offset of the consumer's fencing word (`u32`): `FENCING_ASYMMETRIC` if
/// the consumer issues a heavy barrier before it sleeps, so the producer may
/// publish with a compiler fence; anything else: the producer fences.
pub const CONS_FENCING: usize = 264;
/// Offset of the producer's fencing word (`u32`), the mirror image.
pub const PROD_FENCING: usize = 268;
/// Value of a fencing word that allows the peer the light fence.
pub const FENCING_ASYMMETRIC: u32 = 1;
/// Offset of the streaming word (`u32`), written by the producer: nonzero
/// while it streams (latency mode off) and counts on the consumer to zero
/// the header slot of every line it releases, so that it can skip the
/// terminator after each frame; zero otherwise (the producer zeroes ahead
/// and writes terminators itself, and the consumer writes no data line).
pub const CONS_ZEROES: usize = 272;

/// Offset of the producer's attachment word (`u64`): `0` while no producer
/// is attached, else the pid of the process whose producer is (set by
/// compare-and-swap at attach, cleared at detach if it still holds that
/// mark). A second producer is refused while it is set.
pub const PROD_ATTACHED: usize = 384;
/// Offset of the consumer's attachment word (`u64`), the mirror image.
pub const CONS_ATTACHED: usize = 392;

/// Largest head or tail counter a side accepts when it attaches: 2^62, so
/// that no sum of a counter and the frame sizes this side will ever add to
/// it can overflow (reaching 2^64 from there takes 3 * 2^62 bytes of frames,
/// years of traffic at any memory bandwidth). A peer that set a counter
/// near `u64::MAX` makes attach fail with [`BadCounters`](crate::Corrupt::BadCounters).
pub const MAX_COUNTER_AT_ATTACH: u64 = 1 << 62;

/// Offset of the frame data; frame position `p` has its header at `DATA + p % capacity`.
pub const DATA: usize = RING_CONTROL_BYTES;

const _: () = {
    assert!(PROD_FULL_STALLS + 8 <= HEAD);
    assert!(CONS_SLEEPS + 8 <= CONS_UNWOKEN);
    assert!(CONS_UNWOKEN + 8 <= CONS_UNSEEN);
    assert!(CONS_UNSEEN + 8 <= CONS_WAIT);
    assert!(PROD_WAIT + 4 <= PROD_ATTACHED);
    assert!(CONS_ATTACHED + 8 <= DATA);
    assert!((DATA + FRAME_HEADER_BYTES).is_multiple_of(16));
};

/// Region size for a ring of `capacity` data bytes, or `None` if the capacity
/// is not a power of two in `MIN_CAPACITY..=MAX_CAPACITY` (checked before
/// the sum is made: a peer's `u64::MAX` overflows nothing).
pub fn ring_region_size(capacity: usize) -> Option<usize> {
    valid_capacity(capacity).then(|| RING_CONTROL_BYTES + capacity)
}

pub(crate) fn valid_capacity(capacity: usize) -> bool {
    capacity.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity)
}

/// Largest payload one frame of a ring with this capacity can carry: a frame
/// must leave one frame slot (64 bytes) free for the terminator.
pub fn max_payload(capacity: usize) -> usize {
    capacity - FRAME_ALIGN - FRAME_HEADER_BYTES
}

/// Bytes a frame with `len` payload bytes occupies in the ring.
#[inline]
pub fn frame_size(len: usize) -> usize {
    (FRAME_HEADER_BYTES + len + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Payload length in bytes.
    pub len: u32,
    /// Frame kind.
    pub kind: u16,
    /// User flags.
    pub flags: u16,
}

impl Header {
    /// Codes the header as the word stored in the ring.
    #[inline]
    pub fn encode(self) -> u64 {
        u64::from(self.len) | (u64::from(self.kind) << 32) | (u64::from(self.flags) << 48)
    }

    /// Decodes a header word (any bit pattern decodes; validity is checked by
    /// the consumer).
    #[inline]
    pub fn decode(word: u64) -> Header {
        Header {
            len: word as u32,
            kind: (word >> 32) as u16,
            flags: (word >> 48) as u16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_round_up_to_a_cache_line_including_the_header() {
        assert_eq!(frame_size(0), 64);
        assert_eq!(frame_size(48), 64);
        assert_eq!(frame_size(49), 128);
        assert_eq!(frame_size(64), 128);
        assert_eq!(frame_size(4096), 4160);
    }

    #[test]
    fn header_round_trips_every_field() {
        let h = Header {
            len: 0xDEAD_BEEF,
            kind: 0x1234,
            flags: 0xABCD,
        };
        assert_eq!(Header::decode(h.encode()), h);
        assert_eq!(h.encode().to_le_bytes()[..4], 0xDEAD_BEEFu32.to_le_bytes());
    }

    #[test]
    fn capacities_must_be_powers_of_two_in_range() {
        assert_eq!(ring_region_size(4096), Some(4096 + RING_CONTROL_BYTES));
        assert_eq!(ring_region_size(4095), None);
        assert_eq!(ring_region_size(64), None);
        assert_eq!(ring_region_size(MAX_CAPACITY * 2), None);
        assert_eq!(ring_region_size(usize::MAX), None);
        assert_eq!(max_payload(128), 48);
        assert!(frame_size(max_payload(128)) + FRAME_ALIGN <= 128);
    }

    #[test]
    fn frames_are_line_aligned_and_payloads_16_aligned_in_the_region() {
        for slot in 0..8 {
            assert_eq!((DATA + slot * FRAME_ALIGN) % 64, 0);
            assert_eq!((DATA + slot * FRAME_ALIGN + FRAME_HEADER_BYTES) % 16, 0);
        }
    }
}
