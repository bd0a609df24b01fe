//! What a handler sees of its call besides the request: who called, the
//! request's blobs, and the way to send blobs back.

use std::os::fd::BorrowedFd;

use isocall_blob::{Blob, BlobError, BlobHandle, BlobMut, Pool};
use isocall_ringbuf::SharedRegion;

use crate::rpc::large::{LargeCache, LargeError, large_id};
use crate::rpc::wire::MAX_BLOBS;
use crate::sys::PeerCred;

/// Why a handler could not use a blob of its call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobAccessError {
    /// The request has no blob at that index.
    #[error("the request has no blob {index} (it carries {count})")]
    NoSuchBlob {
        /// The index asked for.
        index: usize,
        /// Blobs the request carries.
        count: usize,
    },
    /// The connection has no blob pool.
    #[error("the connection has no blob pool")]
    NoPool,
    /// The blob is a large blob, not a pool blob (use `large`).
    #[error("blob {index} is a large blob; use CallCtx::large")]
    IsLarge {
        /// Its index.
        index: usize,
    },
    /// The blob is a pool blob, not a large blob.
    #[error("blob {index} is a pool blob, not a large one")]
    NotLarge {
        /// Its index.
        index: usize,
    },
    /// The reply already carries as many blobs as a frame holds.
    #[error("a reply carries at most {MAX_BLOBS} blobs")]
    TooManyReplyBlobs,
    /// The pool refused the handle or the allocation.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A large blob could not be mapped or used.
    #[error(transparent)]
    Large(#[from] LargeError),
}

/// What a handler sees of its call besides the request.
pub struct CallCtx<'a> {
    pub(crate) peer: PeerCred,
    pub(crate) blobs: &'a [BlobHandle],
    pub(crate) pool: Option<&'a Pool<SharedRegion>>,
    pub(crate) reply_blobs: &'a mut Vec<BlobHandle>,
    pub(crate) large: &'a mut LargeCache,
    pub(crate) sock: BorrowedFd<'a>,
}

impl<'a> CallCtx<'a> {
    /// The calling process's credentials.
    pub fn peer(&self) -> PeerCred {
        self.peer
    }

    /// Handles of the blobs that came with the request.
    pub fn blobs(&self) -> &[BlobHandle] {
        self.blobs
    }

    /// The connection's blob pool (allocate reply blobs from it).
    pub fn pool(&self) -> Option<&'a Pool<SharedRegion>> {
        self.pool
    }

    fn pool_blob(
        &self,
        index: usize,
    ) -> Result<(&'a Pool<SharedRegion>, BlobHandle), BlobAccessError> {
        let h = *self.blobs.get(index).ok_or(BlobAccessError::NoSuchBlob {
            index,
            count: self.blobs.len(),
        })?;
        if large_id(&h).is_some() {
            return Err(BlobAccessError::IsLarge { index });
        }
        Ok((self.pool.ok_or(BlobAccessError::NoPool)?, h))
    }

    /// Accepts request blob `index` to read in place (dropping it frees
    /// it). A blob the handler does not accept is freed after the call.
    ///
    /// # Errors
    ///
    /// `NoSuchBlob`, `IsLarge`, `NoPool`; the pool's errors for a handle
    /// that is stale or not in flight to the server.
    pub fn blob(&self, index: usize) -> Result<Blob<'a, SharedRegion>, BlobAccessError> {
        let (pool, h) = self.pool_blob(index)?;
        Ok(pool.accept(&h)?)
    }

    /// Accepts request blob `index` to read and write in place (send it
    /// back with [`reply_blob`](Self::reply_blob), or drop it to free it).
    ///
    /// # Errors
    ///
    /// As [`blob`](Self::blob).
    pub fn blob_mut(&self, index: usize) -> Result<BlobMut<'a, SharedRegion>, BlobAccessError> {
        let (pool, h) = self.pool_blob(index)?;
        Ok(pool.accept_mut(&h)?)
    }

    /// Allocates a blob of `len` bytes from the connection's pool, to fill
    /// and send back with [`reply_blob`](Self::reply_blob).
    ///
    /// # Errors
    ///
    /// `NoPool`; the pool's `TooLarge` or `Exhausted`.
    pub fn alloc(&self, len: usize) -> Result<BlobMut<'a, SharedRegion>, BlobAccessError> {
        Ok(self.pool.ok_or(BlobAccessError::NoPool)?.alloc(len)?)
    }

    /// The bytes of request blob `index` when it is a large blob (see
    /// [`LargeBlob`](crate::rpc::LargeBlob)), to read and write in place;
    /// mapped on first use (as far as the client announced), cached for
    /// the connection's life.
    ///
    /// # Errors
    ///
    /// `NoSuchBlob`, `NotLarge`; `Large` when it was never shared, is
    /// longer than shared, or passes the connection's caps.
    pub fn large(&mut self, index: usize) -> Result<&mut [u8], BlobAccessError> {
        let h = *self.blobs.get(index).ok_or(BlobAccessError::NoSuchBlob {
            index,
            count: self.blobs.len(),
        })?;
        let id = large_id(&h).ok_or(BlobAccessError::NotLarge { index })?;
        Ok(self.large.get(self.sock, id, h.len)?)
    }

    /// Names request blob `index`, a large blob, in the reply (its bytes
    /// are the client's; this only returns it).
    ///
    /// # Errors
    ///
    /// `NoSuchBlob`, `NotLarge`, `TooManyReplyBlobs`.
    pub fn reply_large(&mut self, index: usize) -> Result<(), BlobAccessError> {
        let h = *self.blobs.get(index).ok_or(BlobAccessError::NoSuchBlob {
            index,
            count: self.blobs.len(),
        })?;
        if large_id(&h).is_none() {
            return Err(BlobAccessError::NotLarge { index });
        }
        if self.reply_blobs.len() >= MAX_BLOBS {
            return Err(BlobAccessError::TooManyReplyBlobs);
        }
        self.reply_blobs.push(h);
        Ok(())
    }

    /// Sends `blob` back with the reply (ownership moves to the client).
    ///
    /// # Errors
    ///
    /// `TooManyReplyBlobs` (the blob is freed); as [`BlobMut::send`].
    pub fn reply_blob(&mut self, blob: BlobMut<'_, SharedRegion>) -> Result<(), BlobAccessError> {
        if self.reply_blobs.len() >= MAX_BLOBS {
            return Err(BlobAccessError::TooManyReplyBlobs);
        }
        let h = blob.send()?;
        self.reply_blobs.push(h);
        Ok(())
    }
}
