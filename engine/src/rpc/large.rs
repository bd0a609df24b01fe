//! Blobs larger than the pool's largest class: each one a memfd of its own,
//! created by the client, passed to the server once over the connection's
//! socket (`SCM_RIGHTS`) and cached there, so that using it again costs no
//! syscall. In a call it travels as a [`BlobHandle`] whose class is
//! [`LARGE_CLASS`] and whose slot and generation words hold its id.
//!
//! The server maps a large blob only as far as the client announced (a
//! sealed sparse memfd of 64 TiB costs it the announced bytes of address
//! space, not 64 TiB), refuses one shorter than announced or without the
//! seals, and caps both how many and how many bytes of them one connection
//! may have mapped.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};

use isocall_blob::BlobHandle;

use crate::sys::{BlobMem, Ready, poll_ready, recv_with_fds};

/// The class word of a large blob's handle.
pub const LARGE_CLASS: u32 = u32::MAX;
/// Tag of the socket message that carries a large blob's memfd.
pub(crate) const LARGE_MSG: u8 = b'L';
/// Bytes of that message: tag, id, length.
pub(crate) const LARGE_MSG_LEN: usize = 17;

/// A large blob: a memfd of its own, mapped by this process, shared with
/// the server once by `Client::share_large`. The client owns it; the
/// server writes into it only while a call that carries it runs.
#[derive(Debug)]
pub struct LargeBlob {
    pub(crate) id: u64,
    pub(crate) mem: BlobMem,
    pub(crate) shared: bool,
}

impl LargeBlob {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.mem.len()
    }

    /// Whether it is empty (never: large blobs have at least one byte).
    pub fn is_empty(&self) -> bool {
        self.mem.is_empty()
    }

    /// Its bytes, to read (what the server wrote into it, after a call).
    pub fn as_slice(&self) -> &[u8] {
        self.mem.as_slice()
    }

    /// Its bytes, to write.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.mem.as_mut_slice()
    }

    /// The handle to put in a call (after it was shared).
    pub fn handle(&self) -> BlobHandle {
        handle(self.id, self.len())
    }

    /// The message that shares it: tag, id, length.
    pub(crate) fn share_message(&self) -> [u8; LARGE_MSG_LEN] {
        let mut msg = [0u8; LARGE_MSG_LEN];
        msg[0] = LARGE_MSG;
        msg[1..9].copy_from_slice(&self.id.to_le_bytes());
        msg[9..17].copy_from_slice(&(self.len() as u64).to_le_bytes());
        msg
    }
}

pub(crate) fn handle(id: u64, len: usize) -> BlobHandle {
    BlobHandle {
        class: LARGE_CLASS,
        slot: id as u32,
        generation: (id >> 32) as u32,
        len: len as u32,
    }
}

/// The id of a large blob's handle, or `None` for a pool blob.
pub fn large_id(h: &BlobHandle) -> Option<u64> {
    (h.class == LARGE_CLASS).then(|| u64::from(h.slot) | (u64::from(h.generation) << 32))
}

/// Why a large blob could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LargeError {
    /// The handle names a large blob the client never shared.
    #[error("large blob {id} was never shared on this connection")]
    NeverShared {
        /// Its id.
        id: u64,
    },
    /// The handle names more bytes than the blob was shared with.
    #[error("large blob {id} was shared with {shared} bytes; the handle says {len}")]
    LongerThanShared {
        /// Its id.
        id: u64,
        /// Bytes shared.
        shared: usize,
        /// Bytes the handle names.
        len: u32,
    },
    /// The connection has as many large blobs mapped as allowed.
    #[error("more than {limit} large blobs on one connection")]
    TooMany {
        /// The limit.
        limit: usize,
    },
    /// Mapping it would pass the connection's cap on large-blob bytes.
    #[error(
        "large blob {id} of {len} bytes would pass the connection's cap of {limit} bytes ({mapped} mapped)"
    )]
    TooManyBytes {
        /// Its id.
        id: u64,
        /// Its announced length.
        len: u64,
        /// Bytes already mapped.
        mapped: u64,
        /// The cap.
        limit: u64,
    },
    /// A socket message that is not a large blob's.
    #[error("unexpected socket message ({len} bytes, {fds} descriptors)")]
    BadMessage {
        /// Bytes received.
        len: usize,
        /// Descriptors received.
        fds: usize,
    },
    /// The memfd could not be mapped as announced (seals, size, memory).
    #[error("large blob {id}: {source}")]
    Map {
        /// Its id.
        id: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The socket failed.
    #[error("connection socket: {0}")]
    Socket(std::io::Error),
}

/// Caps on one connection's large blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LargeLimits {
    /// Most large blobs mapped at once.
    pub count: usize,
    /// Most bytes of large blobs mapped at once.
    pub bytes: u64,
}

/// The server side's mapped large blobs of one connection.
#[derive(Debug)]
pub(crate) struct LargeCache {
    maps: HashMap<u64, BlobMem>,
    limits: LargeLimits,
    bytes: u64,
    /// Large blobs mapped since the connection opened.
    pub mapped: u64,
}

impl LargeCache {
    pub(crate) fn new(limits: LargeLimits) -> LargeCache {
        LargeCache {
            maps: HashMap::new(),
            limits,
            bytes: 0,
            mapped: 0,
        }
    }

    /// The first `len` bytes of large blob `id`, reading the descriptors
    /// the client already queued on `sock` if it is not mapped yet. Never
    /// blocks: the client sends a blob's memfd before the first call that
    /// names it.
    pub(crate) fn get(
        &mut self,
        sock: BorrowedFd<'_>,
        id: u64,
        len: u32,
    ) -> Result<&mut [u8], LargeError> {
        if !self.maps.contains_key(&id) {
            self.read_queued(sock)?;
        }
        let mem = self
            .maps
            .get_mut(&id)
            .ok_or(LargeError::NeverShared { id })?;
        let shared = mem.len();
        mem.as_mut_slice()
            .get_mut(..len as usize)
            .ok_or(LargeError::LongerThanShared { id, shared, len })
    }

    fn read_queued(&mut self, sock: BorrowedFd<'_>) -> Result<(), LargeError> {
        let mut buf = [0u8; 32];
        loop {
            let ready = poll_ready(&[(sock.as_fd(), Ready::Readable)], Some(Default::default()))
                .map_err(LargeError::Socket)?;
            if !ready[0] {
                return Ok(());
            }
            let (n, mut fds) = match recv_with_fds(sock, &mut buf, 1) {
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(LargeError::Socket(e)),
            };
            if n == 0 {
                return Ok(());
            }
            if n != LARGE_MSG_LEN || buf[0] != LARGE_MSG || fds.len() != 1 {
                return Err(LargeError::BadMessage {
                    len: n,
                    fds: fds.len(),
                });
            }
            let id = u64::from_le_bytes(buf[1..9].try_into().expect("8 bytes"));
            let len = u64::from_le_bytes(buf[9..17].try_into().expect("8 bytes"));
            if self.maps.len() >= self.limits.count {
                return Err(LargeError::TooMany {
                    limit: self.limits.count,
                });
            }
            let fits = self
                .bytes
                .checked_add(len)
                .is_some_and(|t| t <= self.limits.bytes);
            let (true, Ok(ulen)) = (fits, usize::try_from(len)) else {
                return Err(LargeError::TooManyBytes {
                    id,
                    len,
                    mapped: self.bytes,
                    limit: self.limits.bytes,
                });
            };
            // `open_len` refuses a memfd without the seals (the client
            // cannot shrink it under us) or shorter than announced, and
            // maps no more than announced.
            let fd = fds.pop().expect("one fd");
            let mem =
                BlobMem::open_len(fd, ulen).map_err(|source| LargeError::Map { id, source })?;
            if let Some(old) = self.maps.insert(id, mem) {
                self.bytes -= old.len() as u64;
            }
            self.bytes += len;
            self.mapped += 1;
        }
    }
}
