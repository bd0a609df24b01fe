//! What a handler sees of its call besides the request: who called, the
//! request's blobs, and the way to send blobs back.

use std::os::fd::BorrowedFd;
use std::sync::{Arc, MutexGuard};

use isocall_blob::{Blob, BlobError, BlobHandle, BlobMut, Pool};
use isocall_ringbuf::SharedRegion;

use crate::rpc::large::{LargeCache, LargeError, large_id};
use crate::rpc::wire::MAX_BLOBS;
use crate::stream::blobs::LargeInner;
use crate::stream::{LargeBlobs, StreamError};
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
    pub(crate) large: LargeAccess<'a>,
}

/// A connection's large blobs, as its worker keeps them.
#[derive(Debug)]
pub(crate) enum Large {
    /// Shared memory: the client's memfds, mapped on first use.
    Mapped(LargeCache),
    /// A stream: the bytes that arrived inline, kept by the transport.
    Stream(Arc<LargeBlobs>),
}

impl Large {
    /// Large blobs mapped or received on the connection so far.
    pub(crate) fn mapped(&self) -> u64 {
        match self {
            Large::Mapped(c) => c.mapped,
            Large::Stream(b) => b.len() as u64,
        }
    }

    /// What a call's handler reaches them through (`sock`: the
    /// connection's socket, shared memory only).
    pub(crate) fn access<'a>(&'a mut self, sock: Option<BorrowedFd<'a>>) -> LargeAccess<'a> {
        match (self, sock) {
            (Large::Mapped(cache), Some(sock)) => LargeAccess::Mapped { cache, sock },
            (Large::Stream(blobs), _) => LargeAccess::Stream { blobs, held: None },
            (Large::Mapped(_), None) => LargeAccess::None,
        }
    }
}

/// How a handler reaches its call's large blobs.
pub(crate) enum LargeAccess<'a> {
    /// Mapped from the memfds the client queued on `sock`.
    Mapped {
        cache: &'a mut LargeCache,
        sock: BorrowedFd<'a>,
    },
    /// The stream's copies, locked on first use for the rest of the call
    /// (the sender locks them too, to send the reply; the worker drops the
    /// context first).
    Stream {
        blobs: &'a LargeBlobs,
        held: Option<MutexGuard<'a, LargeInner>>,
    },
    /// None (a connection without its socket).
    None,
}

/// A stream's large-blob error as the handler's.
fn stream_large(e: StreamError) -> LargeError {
    match e {
        StreamError::LargeTooLong { id, len, have } => LargeError::LongerThanShared {
            id,
            shared: have,
            len: u32::try_from(len).unwrap_or(u32::MAX),
        },
        StreamError::LargeUnknown { id } => LargeError::NeverShared { id },
        other => LargeError::Socket(std::io::Error::other(other.to_string())),
    }
}

impl<'a> CallCtx<'a> {
    /// The calling process's credentials ([`PeerCred::REMOTE`] for a client
    /// over TCP, which has none; its certificate was checked by the
    /// server's policy when it connected).
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
        match &mut self.large {
            LargeAccess::Mapped { cache, sock } => Ok(cache.get(*sock, id, h.len)?),
            LargeAccess::Stream { blobs, held } => {
                let g = held.get_or_insert_with(|| blobs.lock());
                g.bytes_mut(id, h.len)
                    .map_err(|e| BlobAccessError::Large(stream_large(e)))
            }
            LargeAccess::None => Err(BlobAccessError::Large(LargeError::NeverShared { id })),
        }
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
