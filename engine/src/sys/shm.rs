//! Sealed, shared, anonymous memory: a memfd mapped `MAP_SHARED`.
//!
//! This module holds the engine's `unsafe` for memory. Its contract: a
//! [`SharedMem`] owns a mapping of exactly `len` bytes of a memfd that is
//! sealed against shrinking, so the mapping stays valid (no `SIGBUS`) for as
//! long as the `SharedMem` (or an `Arc` clone of its mapping handed to a
//! region) lives. Its memory is only ever accessed through atomics or
//! through `SharedRegion`s, whose own contract governs the bytes: a
//! `SharedMem` never hands out a byte slice itself. A ring or pool built
//! over a `SharedRegion` does (a grant, a frame, a blob), so the atomics a
//! `SharedMem` hands out must never cover a region's bytes: a mapping is
//! split once, when it is made, at its *words* mark. Its bytes before the
//! mark are words only ([`SharedMem::u64_words`] and the loads reach only
//! those, safely); its bytes from the mark on are regions only
//! ([`SharedMem::region`] refuses any range that starts before it). A
//! memory of words ([`SharedMem::create`], [`SharedMem::open`]) has the mark
//! at its end and makes no region; a segment keeps its header page as
//! words and its rings and pool as regions
//! ([`SharedMem::create_with_regions`]). An inspector's read-only view of a
//! writable mapping ([`SharedMem::region_read_only`]) is a mapping of its
//! own, so its loads alias no grant either. A [`BlobMem`] is the other
//! kind: one mapping whose bytes are handed out as a slice, `&self` to read
//! and `&mut self` to write, so the borrow checker keeps those views apart.
//!
//! Memory is committed lazily: a memfd lives on the kernel's internal shmem
//! mount, which has no size limit, so a page that cannot be had is an
//! out-of-memory condition (the same as for any allocation), never the
//! `SIGBUS` of a full tmpfs. Reserving every connection's whole segment up
//! front (`fallocate`) only made each held connection cost its full size in
//! RAM; now a connection costs the pages its traffic touched.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};

use isocall_ringbuf::region::REGION_ALIGN;
use isocall_ringbuf::{ReadOnlyRegion, SharedRegion};
use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{MemfdFlags, SealFlags};

/// The seals every isocall memfd carries: it can neither shrink (a shrunk
/// mapping is a `SIGBUS` in the other process) nor grow, and no seal can be
/// added or removed later.
pub const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A sealed memfd mapped shared, read-write (or read-only for inspection).
///
/// Split at its words mark (see the module doc): words before it, regions
/// from it on, so no atomic it hands out aliases a grant, frame or blob:
///
/// ```
/// use isocall_engine::raw::sys::SharedMem;
/// let mem = SharedMem::create_with_regions("isocall:doc", 8192, 4096)?;
/// assert_eq!(mem.u64_words().unwrap().len(), 4096 / 8); // the words only
/// assert!(mem.region(0, 4096).is_none()); // never a region of them
/// assert!(mem.region(4096, 4096).is_some());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct SharedMem {
    fd: OwnedFd,
    map: Arc<MmapRaw>,
    writable: bool,
    /// The words mark. Invariant: `words <= len`, a multiple of 8; the
    /// bytes `..words` are only ever accessed as atomics of this mapping
    /// (`all_u64`/`all_u32` cut to it), the bytes `words..` only through
    /// regions (`region` refuses any range starting before it). Fixed when
    /// the value is made.
    words: usize,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A new sealed memfd of `len` zero bytes.
fn new_memfd(name: &str, len: usize) -> io::Result<OwnedFd> {
    if len == 0 || name.len() > 249 || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "shared memory needs a length > 0 and a name of at most 249 bytes without NUL (got {len} bytes, name {name:?})"
            ),
        ));
    }
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS)?;
    Ok(fd)
}

/// The size of a memfd received from a peer, after checking its seals.
fn sealed_size(fd: &OwnedFd) -> io::Result<u64> {
    let seals = rustix::fs::fcntl_get_seals(fd)?;
    let missing = REQUIRED_SEALS.difference(seals);
    if !missing.is_empty() {
        return Err(invalid(format!(
            "shared memory is not sealed: missing {missing:?} (has {seals:?})"
        )));
    }
    let len = rustix::fs::fstat(fd)?.st_size;
    u64::try_from(len).map_err(|_| invalid(format!("shared memory has unusable size {len}")))
}

impl SharedMem {
    /// Creates a memfd named `name`, `len` bytes long (zero, committed as
    /// it is touched), sealed with `REQUIRED_SEALS`, and maps it: a memory
    /// of words, all of it (no region can be made of it).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero length or a name with a NUL byte or longer
    /// than 249 bytes; the OS's error otherwise.
    pub fn create(name: &str, len: usize) -> io::Result<SharedMem> {
        Self::create_with_regions(name, len, usize::MAX)
    }

    /// As [`create`](Self::create), split at `words`: the first `words`
    /// bytes (rounded down to 8, at most `len`) are words, the rest is for
    /// [`region`](Self::region)s (`0`: all regions, no words).
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create).
    pub fn create_with_regions(name: &str, len: usize, words: usize) -> io::Result<SharedMem> {
        let fd = new_memfd(name, len)?;
        Self::map(fd, len, true, words)
    }

    /// Maps a memfd received from another process, read-write, as a memory
    /// of words (see [`create`](Self::create)). Refuses one without
    /// `REQUIRED_SEALS`: the sender could shrink it under us.
    ///
    /// # Errors
    ///
    /// `InvalidData` naming the missing seals, or for an empty file; the
    /// OS's error for a descriptor that is not a sealable file.
    pub fn open(fd: OwnedFd) -> io::Result<SharedMem> {
        Self::open_mode(fd, true, usize::MAX)
    }

    /// As [`open`](Self::open), split at `words` (see
    /// [`create_with_regions`](Self::create_with_regions)).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_with_regions(fd: OwnedFd, words: usize) -> io::Result<SharedMem> {
        Self::open_mode(fd, true, words)
    }

    /// Maps a memfd read-only, for inspection: nothing this process does can
    /// write it. The same seal checks as [`open`](Self::open). All of it
    /// can be loaded (a read-only mapping makes no region, so no grant can
    /// alias it).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_read_only(fd: OwnedFd) -> io::Result<SharedMem> {
        Self::open_mode(fd, false, usize::MAX)
    }

    fn open_mode(fd: OwnedFd, writable: bool, words: usize) -> io::Result<SharedMem> {
        let len = sealed_size(&fd)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| invalid(format!("shared memory has unusable size {len}")))?;
        Self::map(fd, len, writable, words)
    }

    fn map(fd: OwnedFd, len: usize, writable: bool, words: usize) -> io::Result<SharedMem> {
        let opts = {
            let mut o = MmapOptions::new();
            o.len(len);
            o
        };
        let map = if writable {
            opts.map_raw(&fd)?
        } else {
            opts.map_raw_read_only(&fd)?
        };
        Ok(SharedMem {
            fd,
            map: Arc::new(map),
            writable,
            words: words.min(len) & !7,
        })
    }

    /// The memfd, to pass to another process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping is empty (never: creation refuses it).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Whether this mapping may be written.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Bytes at the start of the mapping that are words (the words mark,
    /// see the module doc): what [`u64_words`](Self::u64_words) and the
    /// loads reach; [`region`](Self::region)s start at or after it.
    pub fn words_len(&self) -> usize {
        self.words
    }

    /// The words of the mapping (its bytes before the words mark) as 64-bit
    /// atomics, to load and store; `None` for a read-only mapping (a store
    /// there would be undefined behaviour: use [`load_u64`](Self::load_u64)).
    pub fn u64_words(&self) -> Option<&[AtomicU64]> {
        self.writable.then(|| self.all_u64())
    }

    /// The words as 32-bit atomics (see [`u64_words`](Self::u64_words)).
    pub fn u32_words(&self) -> Option<&[AtomicU32]> {
        self.writable.then(|| self.all_u32())
    }

    /// Loads 64-bit word `i` (any mapping, read-only too); `None` past the
    /// words.
    pub fn load_u64(&self, i: usize, order: std::sync::atomic::Ordering) -> Option<u64> {
        self.all_u64().get(i).map(|w| w.load(order))
    }

    /// Loads 32-bit word `i` (any mapping); `None` past the words.
    pub fn load_u32(&self, i: usize, order: std::sync::atomic::Ordering) -> Option<u32> {
        self.all_u32().get(i).map(|w| w.load(order))
    }

    /// Every 64-bit word before the words mark. Only loaded from when the
    /// mapping is read-only (atomic loads of read-only memory are allowed;
    /// stores are not).
    fn all_u64(&self) -> &[AtomicU64] {
        // The mapping is page-aligned, holds `words / 8` words (`words <=
        // len`) and lives as long as `self`; `region` refuses any range
        // before the words mark, so no grant, frame or blob covers them.
        // SAFETY: aligned, in bounds, alive, atomics, and never aliased.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU64>(), self.words / 8) }
    }

    fn all_u32(&self) -> &[AtomicU32] {
        // SAFETY: as in `all_u64`, with 4-byte words (`words` is a multiple
        // of 8).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU32>(), self.words / 4) }
    }

    /// The bytes `off..off + len` as a region for a ring, keeping the mapping
    /// alive. `None` if the range is out of bounds, starts before the words
    /// mark (see the module doc) or `off` is not aligned to
    /// [`REGION_ALIGN`], or the mapping is read-only.
    pub fn region(&self, off: usize, len: usize) -> Option<SharedRegion> {
        let end = off.checked_add(len)?;
        if end > self.len()
            || off < self.words
            || !off.is_multiple_of(REGION_ALIGN)
            || !self.writable
        {
            return None;
        }
        // SAFETY: `off < end <= len` (checked), so the pointer is inside the
        // mapping and non-null.
        let ptr = unsafe { NonNull::new_unchecked(self.map.as_mut_ptr().add(off)) };
        let owner: Arc<dyn std::any::Any + Send + Sync> = Arc::new(MapOwner(self.map.clone()));
        // SAFETY: the range is inside a writable `MAP_SHARED` mapping of a
        // memfd sealed against shrinking (checked at create/open), aligned to
        // REGION_ALIGN (page base + aligned `off`), and `owner` keeps the
        // mapping alive for the region's life. It lies past the words mark,
        // so no atomic this `SharedMem` hands out covers it.
        Some(unsafe { SharedRegion::new(ptr, len, owner) })
    }
}

impl SharedMem {
    /// The bytes `off..off + len` as a read-only region (writable or not),
    /// for inspection: a `ReadOnlyRegion` offers loads only, so no ring or
    /// pool can be built over it. `None` if out of bounds or misaligned.
    ///
    /// Of a writable mapping, whose regions may hold grants, frames and
    /// blobs, it is a new read-only mapping of the memfd, at an address of
    /// its own (so its loads alias none of them; they read what another
    /// process would).
    ///
    /// # Errors
    ///
    /// The OS's error if the new mapping is refused.
    pub fn region_read_only(&self, off: usize, len: usize) -> io::Result<Option<ReadOnlyRegion>> {
        let Some(end) = off.checked_add(len) else {
            return Ok(None);
        };
        if end > self.len() || !off.is_multiple_of(REGION_ALIGN) || len == 0 {
            return Ok(None);
        }
        let (map, at) = if self.writable {
            // `MmapOptions` maps from the page below `off` and points past
            // the difference; `off` is REGION_ALIGN-aligned, so the pointer
            // is too.
            let map = MmapOptions::new()
                .offset(off as u64)
                .len(len)
                .map_raw_read_only(&self.fd)?;
            (Arc::new(map), 0)
        } else {
            (self.map.clone(), off)
        };
        // SAFETY: `at + len <= map.len()` (the new mapping is `len` long; the
        // old one `self.len() >= end`): inside the mapping, non-null.
        let ptr = unsafe { NonNull::new_unchecked(map.as_ptr().add(at).cast_mut()) };
        let owner: Arc<dyn std::any::Any + Send + Sync> = Arc::new(MapOwner(map));
        // The range is inside a readable mapping of a memfd sealed against
        // shrinking, REGION_ALIGN-aligned, kept alive by `owner`; it is a
        // new mapping or a read-only `SharedMem`'s (which makes no region).
        // SAFETY: so no `&mut` of this process points into it.
        Ok(Some(unsafe { ReadOnlyRegion::new(ptr, len, owner) }))
    }
}

/// A memfd of its own mapped read-write, whose bytes are handed out as a
/// slice: a large blob. The creator fills it and passes the memfd to the
/// peer, which maps it too ([`open_len`](Self::open_len)), only as far as
/// the creator announced.
#[derive(Debug)]
pub struct BlobMem {
    fd: OwnedFd,
    map: MmapRaw,
}

impl BlobMem {
    /// A new sealed memfd named `name` of `len` zero bytes, mapped.
    ///
    /// # Errors
    ///
    /// As [`SharedMem::create`].
    pub fn create(name: &str, len: usize) -> io::Result<BlobMem> {
        let fd = new_memfd(name, len)?;
        let map = MmapOptions::new().len(len).map_raw(&fd)?;
        Ok(BlobMem { fd, map })
    }

    /// Maps the first `len` bytes of a memfd a peer sent: refuses one
    /// without the seals (it could shrink under the mapping) or shorter
    /// than `len`; maps no more than `len`, whatever the file's size.
    ///
    /// # Errors
    ///
    /// `InvalidData` naming the missing seals or the sizes; the OS's error
    /// for a descriptor that is not a sealable file or a mapping refused.
    pub fn open_len(fd: OwnedFd, len: usize) -> io::Result<BlobMem> {
        let size = sealed_size(&fd)?;
        if len == 0 || (size as u128) < len as u128 {
            return Err(invalid(format!(
                "a memfd of {size} bytes cannot hold the {len} bytes announced"
            )));
        }
        let map = MmapOptions::new().len(len).map_raw(&fd)?;
        Ok(BlobMem { fd, map })
    }

    /// The memfd, to pass to the peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it is empty (never: creation refuses it).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// The bytes, to read. The peer may write them meanwhile (it maps the
    /// same memfd): treat what is read as untrusted input.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes that live as long as
        // `self`; this process writes them only through `as_mut_slice`,
        // which borrows `self` mutably, so no `&mut` view coexists.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len()) }
    }

    /// The bytes, to write.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, writable; `&mut self` makes this the only
        // view of the bytes in this process for its lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr(), self.len()) }
    }
}

/// Keeps a mapping alive for a region.
struct MapOwner(#[allow(dead_code)] Arc<MmapRaw>);

// SAFETY: the mapping is only a handle here (never dereferenced through
// `MapOwner`); unmapping happens once, when the last Arc drops.
unsafe impl Send for MapOwner {}
// SAFETY: as above.
unsafe impl Sync for MapOwner {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn two_mappings_of_one_memfd_share_writes() {
        let a = SharedMem::create("isocall:test:shm", 8192).unwrap();
        let b = SharedMem::open(a.fd().try_clone_to_owned().unwrap()).unwrap();
        a.u64_words().unwrap()[3].store(0xDEAD, Ordering::Release);
        assert_eq!(b.load_u64(3, Ordering::Acquire), Some(0xDEAD));
        assert_eq!(b.len(), 8192);
        let ro = SharedMem::open_read_only(a.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(ro.load_u64(3, Ordering::Acquire), Some(0xDEAD));
        assert!(ro.u64_words().is_none(), "no atomics to store through");
        assert!(ro.region(0, 128).is_none());
        assert_eq!(ro.load_u64(1024, Ordering::Relaxed), None);
    }

    #[test]
    fn words_and_regions_never_overlap() {
        // A memory of words makes no region at all.
        let w = SharedMem::create("isocall:test:words", 8192).unwrap();
        assert_eq!(w.u64_words().unwrap().len(), 1024);
        assert!(w.region(0, 128).is_none() && w.region(4096, 4096).is_none());
        // Split: the words end where the regions may start.
        let m = SharedMem::create_with_regions("isocall:test:split", 8192, 4096).unwrap();
        assert_eq!(m.words_len(), 4096);
        assert_eq!(m.u64_words().unwrap().len(), 512);
        assert_eq!(m.u32_words().unwrap().len(), 1024);
        assert_eq!(m.load_u64(512, Ordering::Relaxed), None);
        assert!(m.region(3968, 128).is_none(), "a region over the words");
        let r = m.region(4096, 4096).unwrap();
        // A read-only view of a writable mapping is a mapping of its own,
        // reading what the region holds.
        // SAFETY: the region is no ring or pool: no slice of it exists.
        unsafe { isocall_ringbuf::Region::u64_at(&r, 8) }.store(7, Ordering::Release);
        let view = m.region_read_only(4096, 4096).unwrap().unwrap();
        assert_eq!(view.load_u64(8), 7);
    }

    #[test]
    fn a_blob_memfd_is_mapped_only_as_far_as_announced() {
        let mut a = BlobMem::create("isocall:test:blob", 3 << 20).unwrap();
        a.as_mut_slice()[..4].copy_from_slice(b"abcd");
        let b = BlobMem::open_len(a.fd().try_clone_to_owned().unwrap(), 4096).unwrap();
        assert_eq!(b.len(), 4096);
        assert_eq!(&b.as_slice()[..4], b"abcd");
        let e = BlobMem::open_len(a.fd().try_clone_to_owned().unwrap(), 4 << 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("cannot hold"), "{e}");
    }

    #[test]
    fn an_unsealed_memfd_is_refused() {
        let fd =
            rustix::fs::memfd_create("isocall:test:unsealed", MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        let err = SharedMem::open(fd).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("not sealed"), "{err}");
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(SharedMem::create("x", 0).is_err());
        assert!(SharedMem::create("a\0b", 4096).is_err());
        let m = SharedMem::create_with_regions("isocall:test:region", 4096, 0).unwrap();
        assert!(m.region(0, 4097).is_none());
        assert!(m.region(8, 128).is_none());
        assert!(m.region(usize::MAX, 2).is_none());
        assert!(m.region(128, 512).is_some());
    }
}
