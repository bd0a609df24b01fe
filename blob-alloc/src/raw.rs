//! The only `unsafe` of the allocator: a held slot's bytes as a slice.
//!
//! Contract: these functions are called only by a [`Blob`](crate::Blob) or
//! [`BlobMut`](crate::BlobMut), for the slot it holds. Holding means this
//! side won the compare-and-swap that made the slot `Held(side)`, and the
//! blob is the only value in this process naming that slot (the pool hands
//! out one blob per successful claim or accept, and blobs are not `Clone`),
//! so no other slice of these bytes exists in this process. The slot lies in
//! the region: its offset and size come from descriptors checked against
//! the region's length when the pool was opened.
#![allow(unsafe_code)]

use isocall_ringbuf::Region;

/// The first `len` bytes of the slot at `offset`, to read.
#[inline]
pub(crate) fn slot_bytes<R: Region>(
    region: &R,
    offset: usize,
    len: usize,
    capacity: usize,
) -> &[u8] {
    assert!(
        len <= capacity && offset + capacity <= region.len(),
        "blob outside its pool"
    );
    // SAFETY: in bounds (asserted); per the module contract this side holds
    // the slot and this is the only view of it in the process. A hostile
    // peer may still write the bytes, which the reader treats as untrusted
    // input, as `Region::bytes` allows.
    unsafe { region.bytes(offset, len) }
}

/// The first `len` bytes of the slot at `offset`, to write.
#[inline]
#[allow(clippy::mut_from_ref)]
pub(crate) fn slot_bytes_mut<R: Region>(
    region: &R,
    offset: usize,
    len: usize,
    capacity: usize,
) -> &mut [u8] {
    assert!(
        len <= capacity && offset + capacity <= region.len(),
        "blob outside its pool"
    );
    // SAFETY: in bounds (asserted); the caller is the blob that holds the
    // slot (module contract) and borrows it mutably, so this is the only
    // slice of these bytes in the process for its lifetime.
    unsafe { region.bytes_mut(offset, len) }
}
