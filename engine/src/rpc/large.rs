//! Blobs larger than the pool's largest class: each one a memfd of its own,
//! created by the client, passed to the server once over the connection's
//! socket (`SCM_RIGHTS`) and cached there, so that using it again costs no
//! syscall. In a call it travels as a [`BlobHandle`] whose class is
//! [`LARGE_CLASS`] and whose slot and generation words hold its id.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use isocall_blob::BlobHandle;

use crate::sys::{Ready, SharedMem, poll_ready, recv_with_fds};

/// The class word of a large blob's handle.
pub const LARGE_CLASS: u32 = u32::MAX;
/// Tag of the socket message that carries a large blob's memfd.
pub(crate) const LARGE_MSG: u8 = b'L';
/// Most large blobs one connection's server side keeps mapped.
pub const MAX_LARGE_PER_CONNECTION: usize = 256;

/// A large blob: a memfd of its own, mapped by this process, shared with
/// the server once by [`Client::share_large`](super::Client::share_large).
/// The client owns it; the server writes into it only while a call that
/// carries it runs.
#[derive(Debug)]
pub struct LargeBlob {
    pub(crate) id: u64,
    pub(crate) mem: SharedMem,
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
        self.mem.bytes()
    }

    /// Its bytes, to write.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.mem
            .bytes_mut()
            .expect("a large blob is mapped writable")
    }

    /// The handle to put in a call (after it was shared).
    pub fn handle(&self) -> BlobHandle {
        handle(self.id, self.len())
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

/// The server side's mapped large blobs of one connection.
#[derive(Debug, Default)]
pub(crate) struct LargeCache {
    maps: HashMap<u64, SharedMem>,
    /// Large blobs mapped since the connection opened.
    pub mapped: u64,
}

impl LargeCache {
    /// The mapping of large blob `id`, reading the descriptors the client
    /// already queued on `sock` if it is not mapped yet. Never blocks: the
    /// client sends a blob's memfd before the first call that names it.
    pub fn get(&mut self, sock: BorrowedFd<'_>, id: u64) -> Result<&mut SharedMem, String> {
        if !self.maps.contains_key(&id) {
            self.read_queued(sock)?;
        }
        self.maps
            .get_mut(&id)
            .ok_or_else(|| format!("large blob {id} was never shared on this connection"))
    }

    fn read_queued(&mut self, sock: BorrowedFd<'_>) -> Result<(), String> {
        let mut buf = [0u8; 32];
        loop {
            let ready = poll_ready(&[(sock.as_fd(), Ready::Readable)], Some(Duration::ZERO))
                .map_err(|e| e.to_string())?;
            if !ready[0] {
                return Ok(());
            }
            let (n, mut fds) = recv_with_fds(sock, &mut buf, 1).map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(());
            }
            if n != 17 || buf[0] != LARGE_MSG || fds.len() != 1 {
                return Err(format!(
                    "unexpected socket message ({n} bytes, {} fds)",
                    fds.len()
                ));
            }
            let id = u64::from_le_bytes(buf[1..9].try_into().expect("8 bytes"));
            let len = u64::from_le_bytes(buf[9..17].try_into().expect("8 bytes"));
            if self.maps.len() >= MAX_LARGE_PER_CONNECTION {
                return Err(format!(
                    "more than {MAX_LARGE_PER_CONNECTION} large blobs on one connection"
                ));
            }
            // `open` refuses a memfd without the seals: the client cannot
            // shrink it under our mapping.
            let mem = SharedMem::open(fds.pop().expect("one fd")).map_err(|e| e.to_string())?;
            if (mem.len() as u64) < len {
                return Err(format!(
                    "large blob {id}: memfd of {} bytes, announced {len}",
                    mem.len()
                ));
            }
            self.maps.insert(id, mem);
            self.mapped += 1;
        }
    }
}
