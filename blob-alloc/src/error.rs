//! The allocator's errors.

use crate::state::SlotState;

/// Why a pool operation failed. Every variant names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// The pool configuration is not valid.
    #[error("bad blob pool configuration: {0}")]
    BadConfig(String),
    /// The pool in the region is not valid (bad magic, version or offsets).
    #[error("blob pool refused: {0}")]
    Corrupt(String),
    /// Every slot of the class that fits the request is in use.
    #[error("blob pool exhausted: every slot of class {class} ({slot_size} bytes) is in use")]
    Exhausted {
        /// Index of the class.
        class: usize,
        /// Its slot size.
        slot_size: usize,
    },
    /// The request is larger than the largest class.
    #[error("blob of {len} bytes exceeds the pool's largest class ({max} bytes)")]
    TooLarge {
        /// Bytes asked for.
        len: usize,
        /// The largest slot.
        max: usize,
    },
    /// A handle that names no slot of this pool, or a length beyond its slot.
    #[error("forged blob handle: {0}")]
    BadHandle(String),
    /// The handle is from an earlier life of the slot.
    #[error(
        "stale blob handle: class {class} slot {slot} is at generation {now}, the handle says {handle}"
    )]
    Stale {
        /// Class index.
        class: usize,
        /// Slot index.
        slot: usize,
        /// Generation in the handle.
        handle: u32,
        /// Generation of the slot now.
        now: u32,
    },
    /// The slot is not in the state the operation needs (e.g. accepting a
    /// blob twice, or one that was never sent to this side).
    #[error("blob class {class} slot {slot} is {found:?}, expected {expected}")]
    WrongState {
        /// Class index.
        class: usize,
        /// Slot index.
        slot: usize,
        /// State found.
        found: SlotState,
        /// What the operation needed.
        expected: &'static str,
    },
    /// A new length beyond the slot.
    #[error("blob length {len} exceeds its slot of {capacity} bytes")]
    Overflow {
        /// Length asked for.
        len: usize,
        /// The slot size.
        capacity: usize,
    },
}
