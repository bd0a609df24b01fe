//! The allocator's errors: one enum, every condition a variant with the
//! values that explain it.

use crate::layout::{MAX_CLASSES, MAX_SLOT, MAX_SLOTS, MIN_SLOT};
use crate::party::{MAX_PARTIES, Party};
use crate::state::SlotState;

/// A part of a pool's region, as named by a header check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum PoolPart {
    /// The pool header and the class descriptors.
    Header,
    /// The hint bitmap of a class.
    Bitmap {
        /// Class index.
        class: usize,
    },
    /// The slot state words of a class.
    States {
        /// Class index.
        class: usize,
    },
    /// The slot memory of a class.
    Slots {
        /// Class index.
        class: usize,
    },
}

impl std::fmt::Display for PoolPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolPart::Header => f.write_str("the header"),
            PoolPart::Bitmap { class } => write!(f, "class {class} bitmap"),
            PoolPart::States { class } => write!(f, "class {class} slot states"),
            PoolPart::Slots { class } => write!(f, "class {class} slot memory"),
        }
    }
}

/// Why a pool operation failed. Every variant names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    // --- The configuration (`PoolConfig`, `Pool::create`) ---
    /// The configuration has no class (an empty configuration means "no
    /// pool").
    #[error("bad blob pool configuration: a pool needs at least one class")]
    NoClasses,
    /// More classes were added than a pool may have.
    #[error("bad blob pool configuration: more than {max} classes", max = MAX_CLASSES)]
    TooManyClasses,
    /// A class's slot size is not a multiple of [`MIN_SLOT`] from
    /// [`MIN_SLOT`] to [`MAX_SLOT`].
    #[error(
        "bad blob pool configuration: class {class}: slot size {slot_size} is not a multiple of {MIN_SLOT} from {MIN_SLOT} to {MAX_SLOT}"
    )]
    BadSlotSize {
        /// Class index (classes sorted by slot size).
        class: usize,
        /// Slot size asked for.
        slot_size: usize,
    },
    /// A class has no slot, or more than [`MAX_SLOTS`].
    #[error("bad blob pool configuration: class {class}: {count} slots (1 to {MAX_SLOTS} allowed)")]
    BadSlotCount {
        /// Class index.
        class: usize,
        /// Slot count asked for.
        count: usize,
    },
    /// Two classes have the same slot size.
    #[error("bad blob pool configuration: two classes of {slot_size} bytes")]
    DuplicateClass {
        /// The slot size given twice.
        slot_size: usize,
    },
    /// A class's slots reach past the largest pool (64 TiB).
    #[error("bad blob pool configuration: class {class} is too large (the pool would pass 64 TiB)")]
    ClassTooLarge {
        /// Class index.
        class: usize,
    },
    /// The region is smaller than the configuration needs.
    #[error("the pool needs {need} bytes, the region has {len}")]
    RegionTooSmall {
        /// Bytes the configuration needs ([`PoolConfig::region_size`](crate::PoolConfig::region_size)).
        need: usize,
        /// Bytes the region has.
        len: usize,
    },
    /// A pool handle of this process is open on the region: formatting it
    /// again would pull the slots this process's blobs hold from under them.
    #[error("blob pool refused: a pool handle of this process is open on this region")]
    InUse,

    // --- The header of a pool made by someone else (`Pool::open`, `census`) ---
    /// The region cannot hold even a pool header.
    #[error("blob pool refused: region of {len} bytes is too small for a pool (at least {min})")]
    RegionTooShort {
        /// Bytes the region has.
        len: usize,
        /// Smallest pool region.
        min: usize,
    },
    /// The magic word is not [`POOL_MAGIC`](crate::layout::POOL_MAGIC)
    /// (no pool was ever made here, or not yet).
    #[error("blob pool refused: bad magic {found:#018x} (expected {expected:#018x})")]
    BadMagic {
        /// Magic word read.
        found: u64,
        /// Magic word expected.
        expected: u64,
    },
    /// The layout version is not the one this build speaks.
    #[error("blob pool refused: layout version {found}, this build speaks {expected}")]
    BadVersion {
        /// Version read.
        found: u32,
        /// Version of this build.
        expected: u32,
    },
    /// The header's class count is zero, too large, or its descriptors do
    /// not fit the region.
    #[error("blob pool refused: {count} classes (1 to {max} allowed)", max = MAX_CLASSES)]
    BadClassCount {
        /// Class count read.
        count: usize,
    },
    /// The header's region length is not the region's.
    #[error("blob pool refused: header says {header} bytes, the region has {region}")]
    LengthMismatch {
        /// Length the header states.
        header: u64,
        /// Length of the region.
        region: usize,
    },
    /// A class descriptor's slot size is invalid, or not larger than the
    /// previous class's.
    #[error("blob pool refused: class {class}: slot size {slot_size}")]
    HeaderSlotSize {
        /// Class index.
        class: usize,
        /// Slot size read.
        slot_size: usize,
    },
    /// A class descriptor's slot count is zero or beyond [`MAX_SLOTS`].
    #[error("blob pool refused: class {class}: {count} slots")]
    HeaderSlotCount {
        /// Class index.
        class: usize,
        /// Slot count read.
        count: usize,
    },
    /// A part of a class is misaligned or does not fit the region.
    #[error(
        "blob pool refused: {part} at offset {offset}, {bytes} bytes, does not fit a {region}-byte region"
    )]
    PartOutOfBounds {
        /// The part.
        part: PoolPart,
        /// Its offset, as read.
        offset: usize,
        /// Its size.
        bytes: usize,
        /// Length of the region.
        region: usize,
    },
    /// Two parts of the pool overlap.
    #[error("blob pool refused: {first} and {second} overlap")]
    PartsOverlap {
        /// The part that starts first.
        first: PoolPart,
        /// The part that starts inside it.
        second: PoolPart,
    },
    /// This process has the pool open already, with another layout: the
    /// header was rewritten since (a hostile or broken peer).
    #[error("blob pool refused: its header changed since this process first opened it")]
    LayoutChanged,

    // --- Allocation ---
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

    // --- Handles (forged, stale, or in the wrong hands) ---
    /// A handle names a class the pool does not have.
    #[error("forged blob handle: class {class} (the pool has {classes})")]
    NoSuchClass {
        /// Class index in the handle.
        class: usize,
        /// Classes in the pool.
        classes: usize,
    },
    /// A handle names a slot past the end of its class.
    #[error("forged blob handle: slot {slot} of class {class}, which has {count}")]
    NoSuchSlot {
        /// Class index.
        class: usize,
        /// Slot index in the handle.
        slot: usize,
        /// Slots in the class.
        count: usize,
    },
    /// A handle's length is larger than its slot.
    #[error("forged blob handle: length {len} in class {class} of {slot_size}-byte slots")]
    LengthBeyondSlot {
        /// Class index.
        class: usize,
        /// Length in the handle.
        len: usize,
        /// The class's slot size.
        slot_size: usize,
    },
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
    /// A blob of this process holds the slot already: its state word was
    /// rewritten behind this process's back (a hostile or broken peer), and
    /// a second blob over the same bytes would alias the first.
    #[error("blob class {class} slot {slot} is held by a blob of this process already")]
    HeldHere {
        /// Class index.
        class: usize,
        /// Slot index.
        slot: usize,
    },
    /// The slot's state word kept changing under the compare-and-swap (a
    /// peer flipping it); the operation gave up after
    /// [`CAS_RETRIES`](crate::pool::CAS_RETRIES) attempts rather than spin.
    #[error("blob class {class} slot {slot}: its state word keeps changing (a peer is at it)")]
    Contended {
        /// Class index.
        class: usize,
        /// Slot index.
        slot: usize,
    },
    /// A two-sided call (send, accept, recall, take back) by a party other
    /// than 0 and 1, which has no peer: in a pool of more parties, blobs
    /// reach the others by [`share`](crate::BlobMut::share).
    #[error("{party} has no peer: only parties 0 and 1 (sides A and B) send and accept")]
    NotTwoSided {
        /// The party that asked.
        party: Party,
    },
    /// A blob shared with no party.
    #[error("a blob shared with no party (share it with at least one, or drop it)")]
    NoHolders,
    /// Every party id is given out, or still held by a party that left
    /// and has not given everything up (see [`Roster`](crate::Roster)).
    #[error(
        "no party id free: all {} are given out, {retiring} of them to parties that left and still hold blobs",
        MAX_PARTIES - 1
    )]
    NoFreeParty {
        /// Ids held by parties that left but still hold something.
        retiring: usize,
    },
    /// A new length beyond the slot.
    #[error("blob length {len} exceeds its slot of {capacity} bytes")]
    Overflow {
        /// Length asked for.
        len: usize,
        /// The slot size.
        capacity: usize,
    },

    // --- Blobs as a message carries them (the engine's) ---
    /// A message carries fewer blobs than the index asked for.
    #[error("no blob at index {index}: the message carries {count}")]
    NoSuchBlob {
        /// Index asked for.
        index: usize,
        /// Blobs the message carries.
        count: usize,
    },
    /// There is no (writable) blob pool: the connection has none, or this
    /// side maps it read-only.
    #[error("no blob pool: the connection has none, or maps it read-only")]
    NoPool,
    /// A message would carry more blobs than a message may.
    #[error("more than {max} blobs in one message")]
    TooManyBlobs {
        /// Most blobs one message may carry.
        max: usize,
    },
    /// The blob is in the pool, where a large (dedicated memfd) blob was
    /// needed.
    #[error("blob {index} is a pool blob, not a large one")]
    NotLarge {
        /// Index of the blob in its message.
        index: usize,
    },
    /// A large blob's memfd cannot be used: it was never shared on this
    /// connection, or the socket that carries it failed or carried
    /// something else, or it was refused (unsealed, too many, shorter than
    /// announced).
    #[error(
        "large blob {id} cannot be mapped: never shared on this connection, or its memfd (or the socket message carrying it) was refused"
    )]
    LargeUnavailable {
        /// The large blob's id.
        id: u64,
    },
    /// A large blob is mapped read-only here, and was asked for to write.
    #[error("large blob {id} is mapped read-only")]
    LargeReadOnly {
        /// The large blob's id.
        id: u64,
    },
    /// A large blob's handle claims more bytes than its memfd has.
    #[error("large blob {id} has {mapped} bytes, the handle says {len}")]
    LargeTooShort {
        /// The large blob's id.
        id: u64,
        /// Length in the handle.
        len: usize,
        /// Bytes mapped.
        mapped: usize,
    },
    /// A blob handle names a slot that is not in flight to the server on
    /// the current connection (e.g. allocated from the pool of a service
    /// instance that died since: allocate from the new pool).
    #[error(
        "blob {class}:{slot} (generation {generation}) is not in flight to the server on the current connection"
    )]
    NotInFlightHere {
        /// Class index.
        class: u32,
        /// Slot index.
        slot: u32,
        /// Generation in the handle.
        generation: u32,
    },
}
