//! The allocator's `unsafe` core: a held slot's bytes as a slice.
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

use isocall_ringbuf::Region;

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
