//! Where the blobs of a stream connection live on this side.
//!
//! Over shared memory the two processes share one pool, and a blob crosses
//! as a handle. Over a socket each side has its own: a [`LocalPool`] is a
//! private mapping (a memfd nobody else holds) with a blob pool opened as
//! both of its sides in this process: the *local* side, which the call
//! layer uses exactly as it uses a segment's pool, and the *proxy* side,
//! which stands for the peer. A blob the call layer sends goes in flight
//! to the proxy side; the sender takes it back (`recall`), copies it
//! inline and frees it. A blob that arrives inline is allocated by the
//! proxy side, filled and sent to the local side, so the call layer
//! `accept`s it as it would a blob from a peer process. The pool's
//! process-local `held` record is shared by both handles (one region), so
//! one slot is never held twice here.
//!
//! Large blobs (handles of class [`LARGE_CLASS`](crate::rpc::LARGE_CLASS))
//! travel inline too, by id, through the connection's [`LargeBlobs`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use isocall_blob::{BlobHandle, Pool, PoolConfig};
use isocall_ringbuf::SharedRegion;

use super::error::{StreamError, errno_of};
use crate::rpc::large::{LargeBlob, LargeLimits, handle as large_handle};
use crate::segment::Side;
use crate::sys::{BlobMem, SharedMem};

/// A connection's private blob pool, opened as both sides.
#[derive(Debug)]
pub(crate) struct LocalPool {
    /// The call layer's side (this endpoint's [`Side`]).
    pub(crate) local: Arc<Pool<SharedRegion>>,
    /// The peer's stand-in.
    pub(crate) proxy: Pool<SharedRegion>,
}

impl LocalPool {
    /// A new private pool with `config`'s classes, for the endpoint of
    /// `side`.
    pub(crate) fn new(config: &PoolConfig, side: Side) -> Result<LocalPool, StreamError> {
        let pool_error = |source| StreamError::Blob { index: 0, source };
        let len = config.region_size().map_err(pool_error)?;
        let mem = SharedMem::create_with_regions("isocall:stream-pool", len, 0).map_err(|e| {
            StreamError::Os {
                errno: errno_of(&e),
            }
        })?;
        let region = || mem.region(0, len).expect("a fresh mapping's whole range");
        let local_side: isocall_blob::Side = side.into();
        let proxy = Pool::create(region(), config, local_side.peer()).map_err(pool_error)?;
        let local = Arc::new(Pool::open(region(), local_side).map_err(pool_error)?);
        // The regions keep the mapping alive; the memfd itself is not
        // needed any more (nobody else will ever map it).
        drop(mem);
        Ok(LocalPool { local, proxy })
    }
}

/// The large blobs of one stream connection, by id.
///
/// Over shared memory a large blob is the client's memfd, which the server
/// maps; over a socket its bytes travel inline in each frame that names
/// it, and each side keeps its copy here:
///
/// - the side that owns a blob registers it with [`share`](Self::share)
///   (a second mapping of the blob's memfd: what arrives for it is written
///   into the owner's memory) or [`insert`](Self::insert) (new memory
///   kept here);
/// - a frame that names it carries its bytes (the handle's length of
///   them); the receiver writes them into its entry of that id, created
///   on first sight (within the connection's [`LargeLimits`]), and hands
///   the frame on with the handle unchanged: same class, id and length.
///
/// So a handler reads and writes a large request blob through
/// [`with`](Self::with) (by the handle's id and length), names it in its
/// reply, and the caller finds the handler's bytes in its own blob when
/// the reply arrives, as over shared memory. Each crossing copies the
/// blob's named bytes once each way; entries live until
/// [`remove`](Self::remove)d or the connection ends.
#[derive(Debug)]
pub struct LargeBlobs {
    inner: Mutex<LargeInner>,
    limits: LargeLimits,
}

#[derive(Debug, Default)]
pub(crate) struct LargeInner {
    maps: HashMap<u64, Entry>,
    /// Entries created on receipt, and their bytes (capped).
    received: usize,
    received_bytes: u64,
}

#[derive(Debug)]
struct Entry {
    mem: BlobMem,
    received: bool,
}

impl LargeBlobs {
    pub(crate) fn new(limits: LargeLimits) -> LargeBlobs {
        LargeBlobs {
            inner: Mutex::new(LargeInner::default()),
            limits,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LargeInner> {
        // Every critical section leaves the map valid.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `blob` (this side's own) so that frames can carry it:
    /// maps its memfd a second time, so bytes that arrive for it land in
    /// the blob. Returns its handle. Sharing again is a no-op.
    ///
    /// # Errors
    ///
    /// [`StreamError::LargeMemory`] if its memfd cannot be mapped again.
    pub fn share(&self, blob: &LargeBlob) -> Result<BlobHandle, StreamError> {
        let mut g = self.lock();
        if let std::collections::hash_map::Entry::Vacant(v) = g.maps.entry(blob.id) {
            let memory = |e: std::io::Error| StreamError::LargeMemory {
                id: blob.id,
                errno: errno_of(&e),
            };
            let fd = blob.mem.fd().try_clone_to_owned().map_err(memory)?;
            let mem = BlobMem::open_len(fd, blob.len()).map_err(memory)?;
            v.insert(Entry {
                mem,
                received: false,
            });
        }
        Ok(blob.handle())
    }

    /// Creates a large blob of `len` bytes (zero) under `id`, kept here;
    /// returns its handle. Its bytes are reached with
    /// [`with`](Self::with).
    ///
    /// # Errors
    ///
    /// [`StreamError::LargeMemory`] if memory cannot be had (a length of 0
    /// or past `u32::MAX` is `EINVAL`) or the id is taken.
    pub fn insert(&self, id: u64, len: usize) -> Result<BlobHandle, StreamError> {
        let mut g = self.lock();
        if len == 0 || len > u32::MAX as usize || g.maps.contains_key(&id) {
            return Err(StreamError::LargeMemory {
                id,
                errno: libc::EINVAL,
            });
        }
        let mem = new_mem(id, len)?;
        g.maps.insert(
            id,
            Entry {
                mem,
                received: false,
            },
        );
        Ok(large_handle(id, len))
    }

    /// Runs `f` on the first `len` bytes of large blob `id` (the handle's
    /// id and length, as [`large_id`](crate::rpc::large_id) reads them).
    ///
    /// # Errors
    ///
    /// [`StreamError::LargeUnknown`] for an id this side does not know;
    /// [`StreamError::LargeTooLong`] if the blob is shorter than `len`.
    pub fn with<R>(
        &self,
        id: u64,
        len: u32,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, StreamError> {
        let mut g = self.lock();
        let bytes = g.bytes_mut(id, len)?;
        Ok(f(bytes))
    }

    /// Forgets large blob `id` (its memory is unmapped here); whether it
    /// was known.
    pub fn remove(&self, id: u64) -> bool {
        let mut g = self.lock();
        match g.maps.remove(&id) {
            Some(e) => {
                if e.received {
                    g.received -= 1;
                    g.received_bytes -= e.mem.len() as u64;
                }
                true
            }
            None => false,
        }
    }

    /// How many large blobs this side knows.
    pub fn len(&self) -> usize {
        self.lock().maps.len()
    }

    /// Whether it knows none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry for `id` to receive `len` bytes into: the known one, or a
    /// new one within the caps.
    pub(crate) fn receive<'g>(
        &self,
        g: &'g mut LargeInner,
        id: u64,
        len: u32,
    ) -> Result<&'g mut [u8], StreamError> {
        if !g.maps.contains_key(&id) {
            let len64 = u64::from(len);
            let fits = g.received < self.limits.count
                && g.received_bytes
                    .checked_add(len64)
                    .is_some_and(|b| b <= self.limits.bytes);
            if !fits || len == 0 {
                return Err(StreamError::LargeCap {
                    id,
                    len: len64,
                    count: self.limits.count,
                    bytes: self.limits.bytes,
                });
            }
            let mem = new_mem(id, len as usize)?;
            g.received += 1;
            g.received_bytes += len64;
            g.maps.insert(
                id,
                Entry {
                    mem,
                    received: true,
                },
            );
        }
        g.bytes_mut(id, len)
    }
}

fn new_mem(id: u64, len: usize) -> Result<BlobMem, StreamError> {
    BlobMem::create(&format!("isocall:stream-large:{id}"), len).map_err(|e| {
        StreamError::LargeMemory {
            id,
            errno: errno_of(&e),
        }
    })
}

impl LargeInner {
    /// The first `len` bytes of blob `id`.
    pub(crate) fn bytes(&self, id: u64, len: u32) -> Result<&[u8], StreamError> {
        let e = self.maps.get(&id).ok_or(StreamError::LargeUnknown { id })?;
        e.mem
            .as_slice()
            .get(..len as usize)
            .ok_or(StreamError::LargeTooLong {
                id,
                len: u64::from(len),
                have: e.mem.len(),
            })
    }

    pub(crate) fn bytes_mut(&mut self, id: u64, len: u32) -> Result<&mut [u8], StreamError> {
        let e = self
            .maps
            .get_mut(&id)
            .ok_or(StreamError::LargeUnknown { id })?;
        let have = e.mem.len();
        e.mem
            .as_mut_slice()
            .get_mut(..len as usize)
            .ok_or(StreamError::LargeTooLong {
                id,
                len: u64::from(len),
                have,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_pool_is_one_region_seen_as_both_sides() {
        let config = PoolConfig::new().class(256, 4).class(4096, 2);
        let p = LocalPool::new(&config, Side::Server).unwrap();
        assert_eq!(p.local.side(), isocall_blob::Side::B);
        assert_eq!(p.proxy.side(), isocall_blob::Side::A);
        // The call layer sends; the transport takes it back.
        let mut b = p.local.alloc(5).unwrap();
        b.copy_from_slice(b"hello");
        let h = b.send().unwrap();
        let back = p.local.recall(&h).unwrap();
        assert_eq!(&back[..], b"hello");
        drop(back);
        // The transport receives; the call layer accepts.
        let mut b = p.proxy.alloc(3).unwrap();
        b.copy_from_slice(b"abc");
        let h = b.send().unwrap();
        assert_eq!(&p.local.accept(&h).unwrap()[..], b"abc");
        assert_eq!(p.local.stats().used(), 0);
    }

    #[test]
    fn large_blobs_are_shared_by_mapping_and_capped_on_receipt() {
        let t = LargeBlobs::new(LargeLimits {
            count: 1,
            bytes: 1 << 20,
        });
        let mut mem = BlobMem::create("isocall:test:large", 8192).unwrap();
        mem.as_mut_slice()[..3].copy_from_slice(b"xyz");
        let blob = LargeBlob {
            id: 42,
            mem,
            shared: false,
        };
        let h = t.share(&blob).unwrap();
        assert_eq!(crate::rpc::large_id(&h), Some(42));
        // What this side writes for it lands in the owner's blob.
        t.with(42, 3, |b| b.copy_from_slice(b"XYZ")).unwrap();
        assert_eq!(&blob.as_slice()[..3], b"XYZ");
        assert_eq!(
            t.with(42, 9000, |_| ()),
            Err(StreamError::LargeTooLong {
                id: 42,
                len: 9000,
                have: 8192
            })
        );
        assert_eq!(
            t.with(7, 1, |_| ()),
            Err(StreamError::LargeUnknown { id: 7 })
        );
        // Receipt creates entries within the caps (shared ones not counted).
        let mut g = t.lock();
        t.receive(&mut g, 1, 100).unwrap()[0] = 9;
        assert!(matches!(
            t.receive(&mut g, 2, 100),
            Err(StreamError::LargeCap { id: 2, .. })
        ));
        assert_eq!(t.receive(&mut g, 1, 100).unwrap()[0], 9);
        drop(g);
        assert!(t.remove(1) && !t.remove(1));
        let mut g = t.lock();
        t.receive(&mut g, 2, 100).unwrap();
        drop(g);
        assert_eq!(t.len(), 2);
        assert!(t.insert(5, 10).is_ok() && t.insert(5, 10).is_err());
    }
}
