//! The allocator's `unsafe` core: a held slot's bytes as a slice, and the
//! pool's own words (header, bitmaps, slot states) as atomics.
//!
//! Both functions are `unsafe`: they are sound only for a caller that
//! holds the slot, which the types cannot tell. Their callers are the
//! [`Blob`](crate::Blob) and [`BlobMut`](crate::BlobMut) that hold the
//! slot; a blob is built only after this side won the compare-and-swap that
//! made the slot `Held(side)`, one per claim or accept, after marking the
//! slot held alone in this process's [`held`](crate::held) record, and
//! blobs are not `Clone`. So no other slice of these bytes exists in this
//! process while a blob lives. [`SharedBlob`](crate::SharedBlob)s read
//! (only read) the slot of a shared reference, and the record lets them
//! exist only while no blob holds the slot alone here: any number of
//! shared slices, never a mutable one beside them.
//! The slot lies in the region: its offset and size come from descriptors
//! checked against the region's length when the pool was opened (and the
//! functions assert it again).
#![allow(unsafe_code)]

use std::sync::Arc;

#[cfg(not(loom))]
use isocall_ringbuf::ReadOnlyRegion;
use isocall_ringbuf::{ReadRegion, Region, region_key};

use crate::error::BlobError;
use crate::held::Held;
use crate::layout::{self, ClassLayout};
use crate::pool::{Pool, PoolStats, count_states};
use crate::sync::AtomicU64;

/// The first `len` bytes of the slot at `offset`, to read. A hostile peer
/// may still write them: the caller treats them as untrusted input.
///
/// # Panics
///
/// If `len > capacity` or the slot does not lie in the region (a bug in
/// the pool).
///
/// # Safety
///
/// SAFETY (the caller's): it holds the slot at `offset` (of `capacity`
/// bytes) as the module doc says, and no mutable slice of those bytes
/// exists in this process while the returned one lives.
#[inline]
pub(crate) unsafe fn slot_bytes<R: Region>(
    region: &R,
    offset: usize,
    len: usize,
    capacity: usize,
) -> &[u8] {
    assert!(
        len <= capacity
            && offset
                .checked_add(capacity)
                .is_some_and(|e| e <= region.len()),
        "blob outside its pool"
    );
    // SAFETY: in bounds (asserted); the caller holds the slot and no
    // mutable slice of it exists in this process (this function's
    // contract), as `Region::bytes` asks. A hostile peer may still write the
    // bytes, which the reader treats as untrusted input, as it allows.
    unsafe { region.bytes(offset, len) }
}

/// The first `len` bytes of the slot at `offset`, to write.
///
/// # Panics
///
/// As [`slot_bytes`].
///
/// # Safety
///
/// SAFETY (the caller's): it holds the slot at `offset` (of `capacity`
/// bytes) as the module doc says, and no other slice of those bytes
/// exists in this process while the returned one lives.
#[inline]
#[allow(clippy::mut_from_ref)]
pub(crate) unsafe fn slot_bytes_mut<R: Region>(
    region: &R,
    offset: usize,
    len: usize,
    capacity: usize,
) -> &mut [u8] {
    assert!(
        len <= capacity
            && offset
                .checked_add(capacity)
                .is_some_and(|e| e <= region.len()),
        "blob outside its pool"
    );
    // SAFETY: in bounds (asserted); the caller holds the slot and this is
    // the only slice of these bytes in the process for its life (this
    // function's contract), as `Region::bytes_mut` asks.
    unsafe { region.bytes_mut(offset, len) }
}

// The pool's own words: its header, class descriptors, bitmaps and slot
// states. A pool hands out as slices (through `slot_bytes`/`slot_bytes_mut`
// above) only bytes of its classes' data parts, and the parts of a layout
// lie inside the region without overlapping (checked by `layout::read` for a
// pool made elsewhere, planned so by `PoolConfig::plan` for one formatted
// here). So a word of any other part is never a blob's byte, and an atomic
// reference to it aliases no slice: that is the promise `Region::u64_at` and
// `ReadRegion::load_u64` ask for, given once here for every caller.

impl<R: Region> Pool<R> {
    /// The state word of `slot` of class `ci`.
    ///
    /// # Panics
    ///
    /// If there is no such class or slot (a bug in the pool).
    #[inline]
    pub(crate) fn state_word(&self, ci: usize, slot: usize) -> &AtomicU64 {
        let c = &self.classes[ci];
        assert!(slot < c.count, "pool bug: slot {slot} of {}", c.count);
        // SAFETY: `slot < count`, so the word lies in the class's state
        // part of this pool's validated layout (`self.classes`), never a
        // blob's bytes (see above).
        unsafe { self.region().u64_at(c.state_at(slot)) }
    }

    /// Word `wi` of the free-slot bitmap of class `ci`.
    ///
    /// # Panics
    ///
    /// If there is no such class or word (a bug in the pool).
    #[inline]
    pub(crate) fn bitmap_word(&self, ci: usize, wi: usize) -> &AtomicU64 {
        let c = &self.classes[ci];
        assert!(
            wi < c.words(),
            "pool bug: bitmap word {wi} of {}",
            c.words()
        );
        // SAFETY: `wi < words`, so the word lies in the class's bitmap part
        // of this pool's validated layout, never a blob's bytes (see above).
        unsafe { self.region().u64_at(c.bitmap + wi * 8) }
    }
}

/// Registers the pool about to be formatted in `region` in this process's
/// [`Held`] registry, then formats it (see [`layout::write`]).
///
/// # Errors
///
/// [`BlobError::InUse`] if a pool handle of this process is open on the
/// region.
pub(crate) fn format<R: Region>(
    region: &R,
    classes: &[ClassLayout],
) -> Result<Arc<Held>, BlobError> {
    let held = Held::create(region_key(region), classes)?;
    let word = |off| {
        // `write` stores only to header, bitmap and state words of `classes`
        // (parts that do not overlap its data parts); `Held::create` made
        // this the layout of every pool handle of this process on the
        // region, and a blob holds bytes of data parts only.
        // SAFETY: so no slice of this process covers the word.
        unsafe { region.u64_at(off) }
    };
    layout::write(&word, classes, region.len());
    Ok(held)
}

/// Reads and checks the header of the pool in `region` made elsewhere,
/// then registers it in this process (see [`Held::open`]).
///
/// # Errors
///
/// As [`layout::read`] and [`Held::open`].
pub(crate) fn open<R: Region>(region: &R) -> Result<(Vec<ClassLayout>, Arc<Held>), BlobError> {
    Held::open_with(region_key(region), |known| {
        // With no pool handle of this process open (`known` is `None`), no
        // blob exists here; with one, `read` loads only that layout's
        // header words (it refuses another class count before reading a
        // descriptor), never a blob's bytes; the registry stays locked.
        // SAFETY: so no `&mut` slice of this process covers what is loaded.
        let load = |off| unsafe { region.load_u64(off) };
        layout::read(region.len(), load, known)
    })
}

/// A census of the pool in a read-only mapping: safe, since no slice of
/// its bytes exists in this process (`ReadOnlyRegion::new`'s contract).
///
/// # Errors
///
/// As [`layout::read`].
#[cfg(not(loom))]
pub(crate) fn census_read_only(region: &ReadOnlyRegion) -> Result<PoolStats, BlobError> {
    // SAFETY: no `&mut` view of a `ReadOnlyRegion`'s bytes exists in this
    // process (its constructor's contract).
    unsafe { census_region(region) }
}

/// A census of the pool in any readable region (see
/// [`census`](crate::census)).
///
/// # Safety
///
/// During the call no `&mut [u8]` view (from [`Region::bytes_mut`]: a
/// `BlobMut`) of the pool's header, class descriptors or slot-state words
/// exists in this process. A pool never hands those out as blob bytes, so
/// this holds for any region used only as a pool whose layout this process
/// did not see change.
///
/// # Errors
///
/// A [`BlobError`] naming what is wrong with the pool's header:
/// `RegionTooShort`, `BadMagic`, `BadVersion`, `LengthMismatch` or
/// `BadClassCount` (the header is checked, with loads only, before any
/// slot-state word is read).
// SAFETY: a contract for callers, stated in `# Safety` above.
pub unsafe fn census_region<R: ReadRegion + ?Sized>(region: &R) -> Result<PoolStats, BlobError> {
    // SAFETY: `read` loads only header words and `count_states` only the
    // slot-state words of the layout just read and checked, none of them
    // blob bytes (the caller's promise).
    let load = |off| unsafe { region.load_u64(off) };
    let classes = layout::read(region.len(), load, None)?;
    Ok(count_states(
        |ci, slot| load(classes[ci].state_at(slot)),
        &classes,
    ))
}
