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

#![allow(unsafe_code)] // declares the `unsafe` Region trait; implementations live in `raw`

use crate::sync::{AtomicU32, AtomicU64};

#[cfg(not(loom))]
pub use crate::raw::{HeapRegion, ReadOnlyRegion, SharedRegion};

/// Alignment every region guarantees for its first byte.
pub const REGION_ALIGN: usize = 128;

/// A run of bytes shared by a producer and a consumer.
///
/// # Safety
///
/// An implementation guarantees that:
/// - its memory starts on a [`REGION_ALIGN`] boundary, is [`len`](Region::len)
///   bytes long and stays valid, at the same address, as long as the value
///   lives;
/// - [`u64_at`](Region::u64_at) and [`u32_at`](Region::u32_at) return the
///   atomic at that byte offset (or, for loom, a model of it that is the same
///   object on every call with the same offset);
/// - [`bytes`](Region::bytes) and [`bytes_mut`](Region::bytes_mut) return the
///   bytes at that offset.
///
/// The ring never uses one offset both as an atomic word and as payload at
/// the same time, and never as both a `u32` and a `u64` word.
pub unsafe trait Region: Send + Sync {
    /// Length of the region in bytes.
    fn len(&self) -> usize;

    /// Whether the region is empty (never true for a usable ring).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The 64-bit atomic word at byte offset `off`.
    ///
    /// # Panics
    ///
    /// If `off` is not 8-aligned or `off + 8 > len()`: a bug in the caller,
    /// never something a peer's data can cause.
    fn u64_at(&self, off: usize) -> &AtomicU64;

    /// The 32-bit atomic word at byte offset `off`.
    ///
    /// # Panics
    ///
    /// If `off` is not 4-aligned or `off + 4 > len()`.
    fn u32_at(&self, off: usize) -> &AtomicU32;

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
}

#[cfg(not(loom))]
#[inline]
pub(crate) fn check_word(off: usize, size: usize, len: usize) {
    assert!(
        off.is_multiple_of(size) && off.checked_add(size).is_some_and(|end| end <= len),
        "ring bug: word at offset {off} (size {size}) outside region of {len} bytes"
    );
}

// SAFETY: forwards every call to the shared `T`, which upholds the contract;
// the `Arc` keeps it (and so its memory) alive.
unsafe impl<T: Region> Region for std::sync::Arc<T> {
    #[inline]
    fn len(&self) -> usize {
        (**self).len()
    }
    #[inline]
    fn u64_at(&self, off: usize) -> &AtomicU64 {
        (**self).u64_at(off)
    }
    #[inline]
    fn u32_at(&self, off: usize) -> &AtomicU32 {
        (**self).u32_at(off)
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
}
