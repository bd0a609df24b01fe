//! Handles and the blobs they name.
//!
//! A [`BlobMut`] is a slot this side holds, to write (and read) in place; a
//! [`Blob`] one to read. Either turns into a [`BlobHandle`] when sent, which
//! moves ownership to the peer; the peer turns the handle back into a blob
//! with [`Pool::accept`] or [`Pool::accept_mut`]. Dropping a blob frees its
//! slot. Either can also be shared, read-only, with several parties (see
//! [`shared`](crate::shared)).
//!
//! Allows `unsafe` to call the two slice helpers of [`raw`](crate::raw),
//! whose contract a blob meets: it is the one value in this process that
//! holds its slot (the pool builds one per successful claim or accept,
//! after marking the slot held alone in this process's record, which no
//! other blob or shared blob can then mark; blobs are not `Clone`), and it
//! hands out its bytes only through `&self` (shared) or `&mut self`
//! (exclusive) borrows of itself. A [`SharedBlob`] hands out only shared
//! slices, and exists only while the record has no blob holding its slot
//! alone.
#![allow(unsafe_code)]

use std::mem::{ManuallyDrop, take};
use std::ops::{Deref, DerefMut};

use bytemuck::{Pod, Zeroable};
use isocall_ringbuf::{Access, Region};

use crate::error::BlobError;
use crate::party::Parties;
use crate::pool::Pool;
use crate::raw;
use crate::shared::{self, SharedBlob, SharedHandle};

/// Names a blob in a pool: what travels in a message instead of its bytes.
/// Plain data: every use is checked against the slot (range, generation,
/// state), so a forged or stale handle is an error, never a wrong blob.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct BlobHandle {
    /// Size class index.
    pub class: u32,
    /// Slot index within the class.
    pub slot: u32,
    /// Generation of the slot when the blob was allocated.
    pub generation: u32,
    /// Length of the blob in bytes: the sender's word, checked against the
    /// slot's size (a lying length can only shorten or lengthen the view of
    /// a blob that is the receiver's anyway, never reach past its slot).
    pub len: u32,
}

impl BlobHandle {
    /// The handle's 16 bytes, to put in a message.
    pub fn to_bytes(&self) -> [u8; 16] {
        bytemuck::cast(*self)
    }

    /// A handle read from a message (any alignment), or `None` if `bytes`
    /// is not 16 bytes long. Any 16 bytes make a handle; using it checks it.
    pub fn from_bytes(bytes: &[u8]) -> Option<BlobHandle> {
        (bytes.len() == 16).then(|| bytemuck::pod_read_unaligned(bytes))
    }
}

const _: () = {
    assert!(std::mem::size_of::<BlobHandle>() == 16);
    assert!(std::mem::align_of::<BlobHandle>() == 4);
};

/// A slot this side holds.
pub(crate) struct SlotRef<'p, R: Region> {
    pub pool: &'p Pool<R>,
    pub class: usize,
    pub slot: usize,
    pub generation: u32,
    /// Invariant: `len <= capacity`.
    pub len: usize,
    /// Byte offset of the slot in the region. Invariant: `offset + capacity`
    /// lies in the region (checked when the pool was opened).
    pub offset: usize,
    pub capacity: usize,
}

impl<R: Region> Clone for SlotRef<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R: Region> Copy for SlotRef<'_, R> {}

impl<R: Region> SlotRef<'_, R> {
    /// Moves the slot to the peer (the caller has given up its blob
    /// without running its drop).
    fn send(&self) -> Result<BlobHandle, BlobError> {
        let h = self.handle();
        self.pool.send(&h)?;
        Ok(h)
    }

    /// The blob's bytes, to read. Called only by the blob that holds the
    /// slot, or a shared blob that holds a reference to it, through a
    /// shared borrow of itself.
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the holder's blob is borrowed shared for the slice's life
        // (a mutable slice takes `&mut` of it), or a shared blob's slot is
        // held alone by no blob of this process (module doc): no mutable
        // slice of these bytes exists meanwhile.
        unsafe { raw::slot_bytes(self.pool.region(), self.offset, self.len, self.capacity) }
    }

    pub(crate) fn shared_handle(&self) -> SharedHandle {
        SharedHandle {
            class: self.class as u32,
            slot: self.slot as u32,
            generation: self.generation,
            len: self.len as u32,
        }
    }

    fn handle(&self) -> BlobHandle {
        BlobHandle {
            class: self.class as u32,
            slot: self.slot as u32,
            generation: self.generation,
            len: self.len as u32,
        }
    }
}

/// A blob this side holds, to write and read in place. Dropping it frees
/// it; [`send`](Self::send) hands it to the peer.
pub struct BlobMut<'p, R: Region> {
    s: SlotRef<'p, R>,
    /// This side uses the whole slot for as long as it holds it; the access
    /// ends before the free's or send's Release (see `end`).
    access: Access,
}

/// A blob this side holds, to read in place. Dropping it frees it.
pub struct Blob<'p, R: Region> {
    s: SlotRef<'p, R>,
    access: Access,
}

/// Gives up a blob's slot reference without running its drop: ends its
/// access first (the access must end before the slot changes hands).
pub(crate) fn end<'p, R: Region>(s: SlotRef<'p, R>, access: &mut Access) -> SlotRef<'p, R> {
    drop(take(access));
    s
}

impl<'p, R: Region> BlobMut<'p, R> {
    pub(crate) fn new(s: SlotRef<'p, R>) -> Self {
        debug_assert!(s.len <= s.capacity);
        let access = s.pool.region().access(s.offset, s.capacity, true);
        BlobMut { s, access }
    }

    /// Bytes the slot can hold (the blob may grow up to it).
    pub fn capacity(&self) -> usize {
        self.s.capacity
    }

    /// Sets the blob's length (e.g. after the callee wrote its answer in
    /// place). Bytes past the old length hold whatever the slot held.
    ///
    /// # Errors
    ///
    /// [`BlobError::Overflow`] beyond [`capacity`](Self::capacity).
    pub fn set_len(&mut self, len: usize) -> Result<(), BlobError> {
        if len > self.s.capacity {
            return Err(BlobError::Overflow {
                len,
                capacity: self.s.capacity,
            });
        }
        self.s.len = len;
        Ok(())
    }

    /// The handle naming this blob (its identity; not a transfer).
    pub fn handle(&self) -> BlobHandle {
        self.s.handle()
    }

    /// Hands the blob to the peer: the slot becomes in flight to it, and the
    /// returned handle is what to put in the message.
    ///
    /// # Errors
    ///
    /// [`BlobError::WrongState`] or [`BlobError::Stale`] if the slot's state
    /// word was changed behind this side's back (a hostile peer, or a
    /// `reclaim` that judged this side dead), [`BlobError::Contended`] if
    /// the peer keeps changing it; the blob is then dropped without
    /// freeing. [`BlobError::NotTwoSided`] for a party other than 0 and 1
    /// (which has no peer): the blob is then freed.
    pub fn send(self) -> Result<BlobHandle, BlobError> {
        self.s.pool.two_sided()?;
        let mut this = ManuallyDrop::new(self);
        end(this.s, &mut this.access).send()
    }

    /// Shares the blob, read-only from now on, with the parties `to`: the
    /// slot becomes shared, each of them holding one reference, and the
    /// returned handle is what to send each of them (they
    /// [`accept_shared`](Pool::accept_shared) it). The slot is freed when
    /// the last reference is given up. Naming this blob's own party in
    /// `to` keeps a reference for it too, to accept like the others (or use
    /// [`share_keep`](Self::share_keep)).
    ///
    /// # Errors
    ///
    /// [`BlobError::NoHolders`] if `to` is empty: the blob is then freed.
    /// [`BlobError::WrongState`] or [`BlobError::Stale`] if the slot's
    /// state word was changed behind this party's back,
    /// [`BlobError::Contended`] if a peer keeps changing it; the blob is
    /// then dropped without freeing.
    pub fn share(self, to: Parties) -> Result<SharedHandle, BlobError> {
        if to.is_empty() {
            return Err(BlobError::NoHolders);
        }
        let mut this = ManuallyDrop::new(self);
        shared::share(this.s, &mut this.access, to)
    }

    /// Shares the blob with the parties `others` and keeps a reference for
    /// this blob's party, returned as a shared blob to read (the slot is
    /// freed when it and every other reference are given up).
    ///
    /// # Errors
    ///
    /// As [`share`](Self::share) (never [`BlobError::NoHolders`]).
    pub fn share_keep(
        self,
        others: Parties,
    ) -> Result<(SharedBlob<'p, R>, SharedHandle), BlobError> {
        let mut this = ManuallyDrop::new(self);
        shared::share_keep(this.s, &mut this.access, others)
    }

    /// Keeps the blob, read-only from now on.
    pub fn freeze(self) -> Blob<'p, R> {
        let mut this = ManuallyDrop::new(self);
        Blob {
            s: this.s,
            access: take(&mut this.access),
        }
    }
}

impl<'p, R: Region> Blob<'p, R> {
    /// The handle naming this blob (its identity; not a transfer).
    pub fn handle(&self) -> BlobHandle {
        self.s.handle()
    }

    /// Hands the blob to the peer, as [`BlobMut::send`].
    ///
    /// # Errors
    ///
    /// As [`BlobMut::send`].
    pub fn send(self) -> Result<BlobHandle, BlobError> {
        self.s.pool.two_sided()?;
        let mut this = ManuallyDrop::new(self);
        end(this.s, &mut this.access).send()
    }

    /// Shares the blob with the parties `to`, as [`BlobMut::share`].
    ///
    /// # Errors
    ///
    /// As [`BlobMut::share`].
    pub fn share(self, to: Parties) -> Result<SharedHandle, BlobError> {
        if to.is_empty() {
            return Err(BlobError::NoHolders);
        }
        let mut this = ManuallyDrop::new(self);
        shared::share(this.s, &mut this.access, to)
    }

    /// Shares the blob with `others` and keeps a reference, as
    /// [`BlobMut::share_keep`].
    ///
    /// # Errors
    ///
    /// As [`BlobMut::share`] (never [`BlobError::NoHolders`]).
    pub fn share_keep(
        self,
        others: Parties,
    ) -> Result<(SharedBlob<'p, R>, SharedHandle), BlobError> {
        let mut this = ManuallyDrop::new(self);
        shared::share_keep(this.s, &mut this.access, others)
    }
}

impl<R: Region> Deref for BlobMut<'_, R> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.s.bytes()
    }
}

impl<R: Region> DerefMut for BlobMut<'_, R> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: this blob holds the slot (module doc) and is borrowed
        // mutably for the life of the slice: no other slice of the slot
        // exists in this process meanwhile.
        unsafe {
            raw::slot_bytes_mut(
                self.s.pool.region(),
                self.s.offset,
                self.s.len,
                self.s.capacity,
            )
        }
    }
}

impl<R: Region> Deref for Blob<'_, R> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.s.bytes()
    }
}

impl<R: Region> Drop for BlobMut<'_, R> {
    fn drop(&mut self) {
        let s = end(self.s, &mut self.access);
        s.pool.free(s.class, s.slot, s.generation);
    }
}

impl<R: Region> Drop for Blob<'_, R> {
    fn drop(&mut self) {
        let s = end(self.s, &mut self.access);
        s.pool.free(s.class, s.slot, s.generation);
    }
}

impl<R: Region> std::fmt::Debug for BlobMut<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobMut")
            .field("handle", &self.handle())
            .finish()
    }
}

impl<R: Region> std::fmt::Debug for Blob<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob")
            .field("handle", &self.handle())
            .finish()
    }
}
