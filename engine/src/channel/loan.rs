//! Loans: a message written in place before it is sent.
//!
//! [`Publisher::loan`](super::Publisher::loan) serializes an initial value
//! into the publisher's staging slot and lends the archive, so fields can
//! be set where they lie (a timestamp taken last, a fixed array filled in
//! place) through rkyv's [`Seal`], which lets only what keeps the archive
//! valid be changed; [`Loan::send`] then sends it as
//! [`Publisher::send`](super::Publisher::send) sends a value.
//!
//! Opts in to `unsafe` for two reads of the staged archive without a
//! check: see SAFETY.
#![allow(unsafe_code)]

use rkyv::seal::Seal;

use super::error::SendError;
use super::publisher::Publisher;
use crate::rpc::body::Body;
use crate::rpc::wire::HEAD;

/// A message staged in the publisher's slot, lent to be changed in place.
/// Dropping it sends nothing.
pub struct Loan<'a, T: Body> {
    publisher: &'a mut Publisher<T>,
    /// Length of the staged frame (head, then the body at `HEAD`).
    len: usize,
}

impl<T: Body> std::fmt::Debug for Loan<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loan").field("len", &self.len).finish()
    }
}

impl<'a, T: Body> Loan<'a, T> {
    /// The loan of the `len`-byte frame [`Publisher::stage`] just wrote
    /// (without blobs: the body starts at `HEAD`).
    pub(crate) fn new(publisher: &'a mut Publisher<T>, len: usize) -> Self {
        debug_assert!(len >= HEAD && publisher.scratch.len() >= len);
        Loan { publisher, len }
    }

    /// The archived message, to change in place.
    pub fn get_mut(&mut self) -> Seal<'_, T::Archived> {
        let body = &mut self.publisher.scratch[HEAD..self.len];
        // SAFETY: `body` holds the archive `Publisher::stage` serialized
        // from a valid `T` (at `HEAD`, a multiple of 16 in a 16-aligned
        // buffer), and since then it was only changed through `Seal`s
        // like this one, which only let through changes that keep an
        // archive valid; nothing else writes the staging buffer while
        // the loan borrows the publisher.
        unsafe { rkyv::api::access_unchecked_mut::<T::Archived>(body) }
    }

    /// Sends the message (see [`Publisher::send`]).
    ///
    /// # Errors
    ///
    /// As [`Publisher::send`].
    pub fn send(self) -> Result<(), SendError> {
        let mut until = self.publisher.until();
        self.publisher.send_staged(self.len, &mut until)
    }
}

impl<T: Body> std::ops::Deref for Loan<'_, T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        let body = &self.publisher.scratch[HEAD..self.len];
        // SAFETY: as in `get_mut`: a valid archive serialized by this
        // process, changed only through `Seal`.
        unsafe { rkyv::api::access_unchecked::<T::Archived>(body) }
    }
}
