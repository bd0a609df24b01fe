//! Loans: a message, or a message's blobs, written in place before it is
//! sent.
//!
//! [`Publisher::loan`](super::Publisher::loan) serializes an initial value
//! into the publisher's staging slot and lends the archive, so fields can
//! be set where they lie (a timestamp taken last, a fixed array filled in
//! place) through rkyv's [`Seal`], which lets only what keeps the archive
//! valid be changed; [`Loan::send`] then sends it as
//! [`Publisher::send`](super::Publisher::send) sends a value.
//!
//! [`Publisher::loan_blob`](super::Publisher::loan_blob) lends a blob of the
//! channel's pool, to fill in place; [`BlobLoan::send`] sends it with a
//! message, sharing the one blob with every subscriber.
//!
//! Opts in to `unsafe` for two reads of the staged archive without a
//! check: see SAFETY.
#![allow(unsafe_code)]

use std::ops::{Deref, DerefMut};
use std::time::Instant;

use isocall_blob::{BlobMut, Pool};
use isocall_ringbuf::SharedRegion;
use rkyv::seal::Seal;

use super::error::SendError;
use super::publisher::{Core, Until};
use crate::rpc::body::Body;
use crate::rpc::wire::{HEAD, MAX_BLOBS};

/// A message staged in the publisher's slot, lent to be changed in place.
/// Dropping it sends nothing.
pub struct Loan<'a, T: Body> {
    core: &'a mut Core<T>,
    /// Length of the staged frame (head, then the body at `HEAD`).
    len: usize,
}

impl<T: Body> std::fmt::Debug for Loan<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loan").field("len", &self.len).finish()
    }
}

impl<'a, T: Body> Loan<'a, T> {
    /// The loan of the `len`-byte frame `Core::stage` just wrote (without
    /// blobs: the body starts at `HEAD`).
    pub(crate) fn new(core: &'a mut Core<T>, len: usize) -> Self {
        debug_assert!(len >= HEAD && core.scratch.len() >= len);
        Loan { core, len }
    }

    /// The archived message, to change in place.
    pub fn get_mut(&mut self) -> Seal<'_, T::Archived> {
        let body = &mut self.core.scratch[HEAD..self.len];
        // SAFETY: `body` holds the archive `Core::stage` made from a valid
        // `T` (16-aligned), changed since only through `Seal`s, which keep
        // an archive valid; the loan borrows the publisher, so nothing
        // else writes the staging buffer.
        unsafe { rkyv::api::access_unchecked_mut::<T::Archived>(body) }
    }

    /// Sends the message (see [`Publisher::send`](super::Publisher::send)).
    ///
    /// # Errors
    ///
    /// As [`Publisher::send`](super::Publisher::send).
    pub fn send(self) -> Result<(), SendError> {
        let mut until = self.core.until();
        self.core.send_staged(self.len, &mut until, Vec::new())
    }
}

impl<T: Body> Deref for Loan<'_, T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        let body = &self.core.scratch[HEAD..self.len];
        // SAFETY: as in `get_mut`: a valid archive serialized by this
        // process, changed only through `Seal`.
        unsafe { rkyv::api::access_unchecked::<T::Archived>(body) }
    }
}

/// Blobs of the channel's pool, lent to be filled in place, then sent with
/// a message: each is written once and shared with every subscriber.
/// Derefs to the first blob's bytes. Dropping it frees the blobs.
pub struct BlobLoan<'a, T: Body> {
    core: &'a mut Core<T>,
    pool: &'a Pool<SharedRegion>,
    blobs: Vec<BlobMut<'a, SharedRegion>>,
}

impl<T: Body> std::fmt::Debug for BlobLoan<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobLoan")
            .field("blobs", &self.blobs.len())
            .finish()
    }
}

impl<'a, T: Body> BlobLoan<'a, T> {
    pub(crate) fn new(
        core: &'a mut Core<T>,
        pool: &'a Pool<SharedRegion>,
        first: BlobMut<'a, SharedRegion>,
    ) -> Self {
        BlobLoan {
            core,
            pool,
            blobs: vec![first],
        }
    }

    /// Adds a blob of `len` bytes to the message; returns its index.
    ///
    /// # Errors
    ///
    /// [`SendError::TooManyBlobs`] past the most a message carries,
    /// [`SendError::Blob`] if the pool has no free slot that large.
    pub fn add_blob(&mut self, len: usize) -> Result<usize, SendError> {
        if self.blobs.len() >= MAX_BLOBS {
            return Err(SendError::TooManyBlobs {
                count: self.blobs.len() + 1,
                max: MAX_BLOBS,
            });
        }
        self.blobs.push(self.pool.alloc(len)?);
        Ok(self.blobs.len() - 1)
    }

    /// How many blobs the message carries.
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// Blob `i`'s bytes.
    pub fn blob(&self, i: usize) -> Option<&[u8]> {
        self.blobs.get(i).map(|b| &b[..])
    }

    /// Blob `i`'s bytes, to fill.
    pub fn blob_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        self.blobs.get_mut(i).map(|b| &mut b[..])
    }

    /// Sends `msg` with the blobs, waiting for blocking subscribers up to
    /// the publisher's send timeout (see
    /// [`Publisher::send`](super::Publisher::send)): every subscriber whose
    /// ring takes the message gets the same blobs, shared, not copied.
    ///
    /// # Errors
    ///
    /// As [`Publisher::send`](super::Publisher::send), and
    /// [`SendError::Blob`] if a blob could not be shared (its state word
    /// was rewritten behind the publisher's back). A failed send frees
    /// the blobs.
    pub fn send(self, msg: &T) -> Result<(), SendError> {
        let until = self.core.until();
        self.send_until(msg, until)
    }

    /// [`send`](Self::send), waiting until `deadline` at most.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn send_deadline(self, msg: &T, deadline: Instant) -> Result<(), SendError> {
        self.send_until(msg, Until::at(deadline))
    }

    fn send_until(self, msg: &T, mut until: Until) -> Result<(), SendError> {
        let n = self.core.stage(msg, self.blobs.len())?;
        self.core.send_staged(n, &mut until, self.blobs)
    }
}

impl<T: Body> Deref for BlobLoan<'_, T> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.blobs[0]
    }
}

impl<T: Body> DerefMut for BlobLoan<'_, T> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.blobs[0]
    }
}
