//! Where a ring's bytes live.
//!
//! A [`Region`] is a fixed run of bytes that two parties (threads or
//! processes) share. The ring code is written once against this trait and
//! runs on every home: a [`HeapRegion`] for unit tests, proptest and miri, a
//! [`SharedRegion`] over a shared mapping for real use, and a loom region for
//! the model checker.
//!
//! Words that both sides touch concurrently are only ever accessed as atomics
//! ([`Region::u64_at`], [`Region::u32_at`]); payload bytes are handed out as
//! slices under the ring protocol's exclusive-access rules.
//!
//! The two must never meet in one process: an atomic reference to, or a
//! load of, bytes that a [`Grant`](crate::Grant), a [`Frame`](crate::Frame)
//! or a blob holds as `&mut [u8]` (or, for an atomic reference, as `&[u8]`)
//! aliases that slice, which is undefined behaviour whatever the values.
//! So every way to reach a word of a [`Region`] by offset is an `unsafe fn`
//! whose caller promises that no such view of those bytes exists while the
//! reference lives ([`Region::u64_at`], [`Region::u32_at`] and the loads of
//! [`ReadRegion`]); a ring or a pool wraps the words it owns at fixed
//! offsets (its control block, its header, its slot states), which it never
//! hands out as payload, in small safe accessors that state this once.
//! Only a [`ReadOnlyRegion`] reads safely: it is a mapping of its own, at
//! an address no grant, frame or blob of this process points into.
//!
//! Those rules are what the loom models check, through [`Region::access`]:
//! whoever hands out payload slices (a [`Grant`](crate::Grant), a
//! [`Frame`](crate::Frame), a blob) holds an [`Access`] over the same bytes
//! for as long as its slices can live. In every real home it is a
//! zero-sized no-op; the loom home backs each cache line of payload with a
//! `loom::cell::UnsafeCell`, so that two sides whose windows on the same
//! bytes are not ordered by the protocol's atomics are reported as a data
//! race.
//!
//! Reading is a trait of its own, [`ReadRegion`]: loads of words and copies
//! of bytes, nothing else. Every home implements it, and so does a
//! [`ReadOnlyRegion`], an inspector's read-only mapping, which implements
//! nothing more: an atomic store (or a compare-and-swap, even one bound to
//! fail) on read-only memory faults, so code that only holds a
//! `ReadRegion` (a [`snapshot`](crate::snapshot), a pool census) cannot
//! write, and a ring or pool cannot be built over it at all. Its loads are
//! `unsafe` for the reason above; a `ReadOnlyRegion` also has safe ones of
//! its own, and [`snapshot`](crate::snapshot) and the pool census take one.

#![allow(unsafe_code)] // declares the `unsafe` Region trait; implementations live in `raw`

use crate::sync::{AtomicU32, AtomicU64};

#[cfg(not(loom))]
pub use crate::raw::{HeapRegion, ReadOnlyRegion, SharedRegion};

/// Alignment every region guarantees for its first byte.
pub const REGION_ALIGN: usize = 128;

/// A run of bytes this process may read, and only read: loads of words and
/// copies of bytes. Every home implements it, including a read-only mapping.
///
/// Every load is a single `Relaxed` atomic load (the only atomic access that
/// is defined on read-only memory); a caller that needs Acquire order issues
/// an Acquire [`fence`](crate::sync::fence) after the load. Nothing in this
/// trait lets the caller write, so it is safe to implement: no code relies on
/// it for soundness (a [`Region`], which also implements it, vouches for it).
///
/// The loads are `unsafe` to call: on a [`Region`] the same bytes may be a
/// live grant's, frame's or blob's `&mut [u8]` (see the module doc). Each
/// has the same contract:
///
/// # Safety
///
/// For the duration of the call, no `&mut [u8]` view of the bytes read,
/// obtained from [`Region::bytes_mut`] (a grant or a blob being written),
/// exists in this process. (Bounds and alignment are checked: a bad offset
/// panics.) A [`ReadOnlyRegion`] has safe loads of its own.
///
/// So safe code cannot load from a region a grant may be writing:
///
/// ```compile_fail,E0133
/// use isocall_ringbuf::{HeapRegion, ReadRegion};
/// let region = HeapRegion::new(1024);
/// let _word = region.load_u64(0); // error: call to unsafe function
/// ```
pub trait ReadRegion {
    /// Length of the region in bytes.
    fn len(&self) -> usize;

    /// Whether the region is empty (never true for a usable ring or pool).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The 64-bit word at byte offset `off`, loaded once (`Relaxed`).
    ///
    /// # Safety
    ///
    /// No `&mut [u8]` view of these bytes exists in this process during the
    /// call (see the [trait doc](ReadRegion)).
    ///
    /// # Panics
    ///
    /// If `off` is not 8-aligned or `off + 8 > len()`: a bug in the caller,
    /// never something a peer's data can cause.
    // SAFETY: a contract for callers, stated in `# Safety` above.
    unsafe fn load_u64(&self, off: usize) -> u64;

    /// The 32-bit word at byte offset `off`, loaded once (`Relaxed`).
    ///
    /// # Safety
    ///
    /// As for [`load_u64`](ReadRegion::load_u64).
    ///
    /// # Panics
    ///
    /// If `off` is not 4-aligned or `off + 4 > len()`.
    // SAFETY: a contract for callers, stated in `# Safety` above.
    unsafe fn load_u32(&self, off: usize) -> u32;

    /// Copies the bytes `off..off + buf.len()` into `buf`, with atomic loads:
    /// a peer may be writing them, so the copy may be torn (each byte is some
    /// value the peer wrote; treat them as untrusted input).
    ///
    /// # Safety
    ///
    /// As for [`load_u64`](ReadRegion::load_u64), for every byte of the
    /// range.
    ///
    /// # Panics
    ///
    /// If the range is not inside the region.
    // SAFETY: a contract for callers, stated in `# Safety` above.
    unsafe fn read_bytes(&self, off: usize, buf: &mut [u8]);
}

/// A run of bytes shared by a producer and a consumer (or by the two sides
/// of a blob pool), which this process may read and write.
///
/// # Safety
///
/// An implementation guarantees that:
/// - its memory starts on a [`REGION_ALIGN`] boundary, is
///   [`len`](ReadRegion::len) bytes long and stays valid for reads and
///   writes, at the same address, as long as the value lives, and its
///   [`ReadRegion`] methods read that memory;
/// - [`u64_at`](Region::u64_at) and [`u32_at`](Region::u32_at) return the
///   atomic at that byte offset (or, for loom, a model of it that is the same
///   object on every call with the same offset);
/// - [`bytes`](Region::bytes) and [`bytes_mut`](Region::bytes_mut) return the
///   bytes at that offset;
/// - two regions of this process whose bytes overlap start at the same
///   address and have the same length (they are handles on one ring or one
///   pool): the rings and pools keep process-local registries keyed by the
///   address of a region's first byte, which is how they know that a side or
///   a slot is already in use in this process.
///
/// The ring never uses one offset both as an atomic word and as payload at
/// the same time, and never as both a `u32` and a `u64` word.
pub unsafe trait Region: ReadRegion + Send + Sync {
    /// The 64-bit atomic word at byte offset `off`.
    ///
    /// # Safety
    ///
    /// For as long as the returned reference lives, no `&[u8]` or
    /// `&mut [u8]` view of these bytes obtained from
    /// [`bytes`](Region::bytes) / [`bytes_mut`](Region::bytes_mut) (a grant,
    /// a frame, a blob) exists in this process: the atomic would alias it.
    /// A ring's control block and frame header slots and a pool's header and
    /// slot-state words are never handed out as payload.
    ///
    /// # Panics
    ///
    /// If `off` is not 8-aligned or `off + 8 > len()`: a bug in the caller,
    /// never something a peer's data can cause.
    ///
    /// # Examples
    ///
    /// Safe code cannot reach a word this way (a word of a grant's bytes
    /// would alias the grant's `&mut [u8]`):
    ///
    /// ```compile_fail,E0133
    /// use isocall_ringbuf::{HeapRegion, Region};
    /// let region = HeapRegion::new(1024);
    /// let _word = region.u64_at(0); // error: call to unsafe function
    /// ```
    // SAFETY: a contract for callers, stated in `# Safety` above.
    unsafe fn u64_at(&self, off: usize) -> &AtomicU64;

    /// The 32-bit atomic word at byte offset `off`.
    ///
    /// # Safety
    ///
    /// As for [`u64_at`](Region::u64_at).
    ///
    /// # Panics
    ///
    /// If `off` is not 4-aligned or `off + 4 > len()`.
    // SAFETY: a contract for callers, stated in `# Safety` above.
    unsafe fn u32_at(&self, off: usize) -> &AtomicU32;

    /// [`u64_at`](Region::u64_at) without the bounds and alignment check,
    /// for the ring's hot paths, whose offsets are in bounds by
    /// construction. The default keeps the check.
    ///
    /// # Safety
    ///
    /// `off` is 8-aligned and `off + 8 <= len()`; and as for
    /// [`u64_at`](Region::u64_at).
    // SAFETY: an unsafe method of the trait, forwarded with its contract
    // (the caller's `off` is aligned and in bounds, and no view aliases it).
    #[inline]
    unsafe fn u64_at_unchecked(&self, off: usize) -> &AtomicU64 {
        // SAFETY: the caller's promise covers `u64_at`'s.
        unsafe { self.u64_at(off) }
    }

    /// [`u32_at`](Region::u32_at) without the check, likewise.
    ///
    /// # Safety
    ///
    /// `off` is 4-aligned and `off + 4 <= len()`; and as for
    /// [`u32_at`](Region::u32_at).
    // SAFETY: an unsafe method of the trait, forwarded with its contract
    // (the caller's `off` is aligned and in bounds, and no view aliases it).
    #[inline]
    unsafe fn u32_at_unchecked(&self, off: usize) -> &AtomicU32 {
        // SAFETY: the caller's promise covers `u32_at`'s.
        unsafe { self.u32_at(off) }
    }

    /// The bytes `off..off + len`, to read.
    ///
    /// # Safety
    ///
    /// The range is in bounds, and for the life of the slice no party the
    /// caller trusts writes it (the ring protocol hands each byte to one side
    /// at a time). An untrusted peer may still write it; the caller then reads
    /// garbage bytes, which it must treat as untrusted input.
    // SAFETY: a contract for callers, stated in `# Safety` above.
    unsafe fn bytes(&self, off: usize, len: usize) -> &[u8];

    /// The bytes `off..off + len`, to write.
    ///
    /// # Safety
    ///
    /// The range is in bounds, and for the life of the slice this side owns
    /// it exclusively under the ring protocol: no other slice of it exists in
    /// this process.
    // SAFETY: a contract for callers, stated in `# Safety` above.
    #[allow(clippy::mut_from_ref)]
    unsafe fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8];

    /// Declares that the caller reads (or, if `write`, writes) the bytes
    /// `off..off + len` through slices from [`bytes`](Region::bytes) /
    /// [`bytes_mut`](Region::bytes_mut) until the returned [`Access`] is
    /// dropped. Only the loom model tracks it (see the module doc); every
    /// other home returns [`Access::untracked`], which is zero-sized, so
    /// the call compiles to nothing.
    #[inline]
    fn access(&self, off: usize, len: usize, write: bool) -> Access {
        let _ = (off, len, write);
        Access::untracked()
    }

    /// Loom only: the modelled process this handle belongs to (default 0).
    /// Handles of one region that give different values stand for two
    /// processes' mappings of the same bytes: the process-local registries
    /// (ring sides, blob slots held) keep a separate record for each, as two
    /// real processes would, so that a model of two processes is not
    /// ordered by a record only one process could see.
    #[cfg(loom)]
    fn process(&self) -> usize {
        0
    }
}

/// A declared window of access to a region's payload bytes (see
/// [`Region::access`]): zero-sized, and nothing, except in the loom model,
/// where it holds loom's guards over the cache lines it covers until it is
/// dropped.
#[must_use = "the access ends when this is dropped"]
#[derive(Default)]
pub struct Access {
    /// Held for their drop only: the access ends when the guards go.
    #[cfg(loom)]
    #[allow(dead_code)]
    guards: Vec<LoomGuard>,
}

#[cfg(loom)]
#[allow(dead_code)] // held for their drop only
enum LoomGuard {
    Read(loom::cell::ConstPtr<()>),
    Write(loom::cell::MutPtr<()>),
}

// SAFETY: the guards are never dereferenced (they point at `()`); they only
// mark an access, whose start and end loom attributes to the thread that
// runs them. Moving the access to another thread moves that end there, as
// moving a slice would (the move itself is ordered by whatever sends it).
#[cfg(loom)]
unsafe impl Send for Access {}
// SAFETY: as above; a shared `&Access` allows nothing at all.
#[cfg(loom)]
unsafe impl Sync for Access {}

impl Access {
    /// No tracking: what every home but the loom model returns.
    #[inline]
    pub fn untracked() -> Access {
        Access::default()
    }

    /// Loom only: an access made of read guards, one per cell it covers.
    #[cfg(loom)]
    pub fn reads(guards: impl IntoIterator<Item = loom::cell::ConstPtr<()>>) -> Access {
        Access {
            guards: guards.into_iter().map(LoomGuard::Read).collect(),
        }
    }

    /// Loom only: an access made of write guards, one per cell it covers.
    #[cfg(loom)]
    pub fn writes(guards: impl IntoIterator<Item = loom::cell::MutPtr<()>>) -> Access {
        Access {
            guards: guards.into_iter().map(LoomGuard::Write).collect(),
        }
    }
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Access")
    }
}

/// The key under which the process-local registries of rings and pools know
/// a region: the address of its first byte (see the [`Region`] safety
/// contract). Under loom, the modelled process (`Region::process`) is
/// folded into it (as three low bits, the address shifted above them: a
/// loom region's bytes need not be aligned).
#[inline]
pub fn region_key<R: Region + ?Sized>(region: &R) -> usize {
    // SAFETY: an empty range is in bounds of any region, and an empty slice
    // covers no byte, so it aliases no view and no word; only its address
    // is used.
    let addr = unsafe { region.bytes(0, 0) }.as_ptr() as usize;
    #[cfg(loom)]
    let addr = (addr << 3) | (region.process() & 7);
    addr
}

#[cfg(not(loom))]
#[inline]
pub(crate) fn check_word(off: usize, size: usize, len: usize) {
    assert!(
        off.is_multiple_of(size) && off.checked_add(size).is_some_and(|end| end <= len),
        "ring bug: word at offset {off} (size {size}) outside region of {len} bytes"
    );
}

impl<T: ReadRegion + ?Sized> ReadRegion for std::sync::Arc<T> {
    #[inline]
    fn len(&self) -> usize {
        (**self).len()
    }
    // SAFETY: forwards the caller's `ReadRegion` promise to `T`.
    #[inline]
    unsafe fn load_u64(&self, off: usize) -> u64 {
        // SAFETY: forwarded contract.
        unsafe { (**self).load_u64(off) }
    }
    // SAFETY: forwards the caller's `ReadRegion` promise to `T`.
    #[inline]
    unsafe fn load_u32(&self, off: usize) -> u32 {
        // SAFETY: forwarded contract.
        unsafe { (**self).load_u32(off) }
    }
    // SAFETY: forwards the caller's `ReadRegion` promise to `T`.
    #[inline]
    unsafe fn read_bytes(&self, off: usize, buf: &mut [u8]) {
        // SAFETY: forwarded contract.
        unsafe { (**self).read_bytes(off, buf) }
    }
}

impl<T: ReadRegion + ?Sized> ReadRegion for &T {
    #[inline]
    fn len(&self) -> usize {
        (**self).len()
    }
    // SAFETY: forwards the caller's `ReadRegion` promise to `T`.
    #[inline]
    unsafe fn load_u64(&self, off: usize) -> u64 {
        // SAFETY: forwarded contract.
        unsafe { (**self).load_u64(off) }
    }
    // SAFETY: forwards the caller's `ReadRegion` promise to `T`.
    #[inline]
    unsafe fn load_u32(&self, off: usize) -> u32 {
        // SAFETY: forwarded contract.
        unsafe { (**self).load_u32(off) }
    }
    // SAFETY: forwards the caller's `ReadRegion` promise to `T`.
    #[inline]
    unsafe fn read_bytes(&self, off: usize, buf: &mut [u8]) {
        // SAFETY: forwarded contract.
        unsafe { (**self).read_bytes(off, buf) }
    }
}

// SAFETY: forwards every call to the shared `T`, which upholds the contract;
// the `Arc` keeps it (and so its memory) alive.
unsafe impl<T: Region> Region for std::sync::Arc<T> {
    // SAFETY: forwards the caller's `Region::u64_at` promise to `T`.
    #[inline]
    unsafe fn u64_at(&self, off: usize) -> &AtomicU64 {
        // SAFETY: forwarded contract.
        unsafe { (**self).u64_at(off) }
    }
    // SAFETY: forwards the caller's `Region::u32_at` promise to `T`.
    #[inline]
    unsafe fn u32_at(&self, off: usize) -> &AtomicU32 {
        // SAFETY: forwarded contract.
        unsafe { (**self).u32_at(off) }
    }
    // SAFETY: an unsafe method of the trait, forwarded with its contract
    // (the caller's `off` is aligned and in bounds).
    #[inline]
    unsafe fn u64_at_unchecked(&self, off: usize) -> &AtomicU64 {
        // SAFETY: forwarded contract.
        unsafe { (**self).u64_at_unchecked(off) }
    }
    // SAFETY: an unsafe method of the trait, forwarded with its contract
    // (the caller's `off` is aligned and in bounds).
    #[inline]
    unsafe fn u32_at_unchecked(&self, off: usize) -> &AtomicU32 {
        // SAFETY: forwarded contract.
        unsafe { (**self).u32_at_unchecked(off) }
    }
    // SAFETY: forwards the caller's `Region::bytes` promise to `T`.
    #[inline]
    unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        // SAFETY: forwarded contract.
        unsafe { (**self).bytes(off, len) }
    }
    #[inline]
    unsafe fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
        // SAFETY: forwarded contract.
        unsafe { (**self).bytes_mut(off, len) }
    }
    #[inline]
    fn access(&self, off: usize, len: usize, write: bool) -> Access {
        (**self).access(off, len, write)
    }
    #[cfg(loom)]
    fn process(&self) -> usize {
        (**self).process()
    }
}
