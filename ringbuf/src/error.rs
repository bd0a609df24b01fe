//! The ring's errors: one small enum per operation.

use crate::ring::RingSide;

/// The ring's shared state is inconsistent: the peer is buggy or hostile, or
/// something scribbled over the region. The ring stops trusting it; the
/// connection should be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corrupt {
    /// The consumer's head counter went backwards.
    #[error("ring corrupt: head moved backwards from {old} to {new}")]
    HeadBackwards {
        /// Last head seen.
        old: u64,
        /// Head read now.
        new: u64,
    },
    /// The consumer's head counter is past what the producer published.
    #[error("ring corrupt: head {head} is past the published tail {tail}")]
    HeadPastTail {
        /// Head read.
        head: u64,
        /// Published tail.
        tail: u64,
    },
    /// The head counter is not on a frame boundary.
    #[error("ring corrupt: head {head} is not on a frame boundary (a multiple of 64)")]
    HeadMisaligned {
        /// Head read.
        head: u64,
    },
    /// A frame header names a kind that does not exist.
    #[error("ring corrupt: frame at position {pos} has kind {kind:#06x}, which does not exist")]
    BadKind {
        /// Ring position of the frame.
        pos: u64,
        /// Kind read.
        kind: u16,
    },
    /// A frame header claims more bytes than remain before the ring's end.
    #[error(
        "ring corrupt: frame at position {pos} claims {len} payload bytes, more than the {room} bytes left before the ring's end"
    )]
    BadLength {
        /// Ring position of the frame.
        pos: u64,
        /// Payload length read.
        len: u32,
        /// Payload bytes that could fit.
        room: u64,
    },
    /// A padding frame does not reach exactly to the ring's end.
    #[error(
        "ring corrupt: padding frame at position {pos} claims {len} bytes, but {expected} remain before the ring's end"
    )]
    BadPad {
        /// Ring position of the frame.
        pos: u64,
        /// Length read.
        len: u32,
        /// Length a padding frame there must have.
        expected: u64,
    },
    /// The control block at attach time is inconsistent: head past tail,
    /// more than a capacity apart, off a frame boundary, or beyond
    /// [`MAX_COUNTER_AT_ATTACH`](crate::layout::MAX_COUNTER_AT_ATTACH).
    #[error(
        "ring corrupt at attach: head {head}, tail {tail}, capacity {capacity} (head <= tail <= 2^62, at most a capacity apart, multiples of 64 expected)"
    )]
    BadCounters {
        /// Head read.
        head: u64,
        /// Tail read.
        tail: u64,
        /// Ring capacity.
        capacity: u64,
    },
}

/// Why a region cannot hold a ring.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The region is not `RING_CONTROL_BYTES + capacity` bytes with a valid
    /// capacity.
    #[error(
        "a ring region must be 512 bytes plus a power-of-two capacity from 128 B to 1 GiB; got {len} bytes"
    )]
    BadRegionSize {
        /// Region length.
        len: usize,
    },
    /// This side of the ring is attached already in this process (a second
    /// producer or consumer would write or read the same bytes as the
    /// first); it can be attached again once that one is dropped.
    #[error("the {side} side of this ring is already attached in this process")]
    AlreadyAttached {
        /// The side asked for.
        side: RingSide,
    },
    /// The ring's control block says this side is attached already, by
    /// another process (or through another mapping of this one), or a
    /// process that died attached.
    #[error(
        "the {side} side of this ring is already attached: its attachment word holds {by} (the pid of the process that attached it)"
    )]
    AttachedElsewhere {
        /// The side asked for.
        side: RingSide,
        /// The attachment word as read: the pid the holder wrote.
        by: u64,
    },
    /// The shared counters are inconsistent.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// Why [`Producer::reserve`](crate::Producer::reserve) gave no grant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReserveError {
    /// Not enough free space now; retry after the consumer releases frames
    /// (publish first, or it never will).
    #[error("ring full")]
    Full,
    /// The frame can never fit in this ring.
    #[error("frame of {len} bytes exceeds the ring's largest payload of {max} bytes")]
    TooLarge {
        /// Requested payload length.
        len: usize,
        /// Largest payload this ring carries.
        max: usize,
    },
    /// The kind is not a user kind (`1..=MAX_USER_KIND`).
    #[error("frame kind {kind:#06x} is reserved; user kinds are 1..=0x7fff")]
    BadKind {
        /// Kind requested.
        kind: u16,
    },
    /// The shared state is corrupt.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}
