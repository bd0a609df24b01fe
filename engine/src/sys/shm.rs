//! Sealed, shared, anonymous memory: a memfd mapped `MAP_SHARED`.
//!
//! This module holds the engine's `unsafe` for memory. Its contract: a
//! [`SharedMem`] owns a mapping of exactly `len` bytes of a memfd that is
//! sealed against shrinking, so the mapping stays valid (no `SIGBUS`) for as
//! long as the `SharedMem` (or an `Arc` clone of its mapping handed to a
//! region) lives. The memory is only ever accessed through atomics or
//! through `SharedRegion`s, whose own contract governs the bytes.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};

use isocall_ringbuf::region::REGION_ALIGN;
use isocall_ringbuf::{ReadOnlyRegion, SharedRegion};
use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};

/// The seals every isocall memfd carries: it can neither shrink (a shrunk
/// mapping is a `SIGBUS` in the other process) nor grow, and no seal can be
/// added or removed later.
pub const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A sealed memfd mapped shared, read-write (or read-only for inspection).
#[derive(Debug)]
pub struct SharedMem {
    fd: OwnedFd,
    map: Arc<MmapRaw>,
    writable: bool,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl SharedMem {
    /// Creates a memfd named `name`, `len` bytes long, with its memory
    /// reserved now (so a full tmpfs fails here, not with a `SIGBUS` later),
    /// sealed with `REQUIRED_SEALS`, and maps it.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero length or a name with a NUL byte or longer
    /// than 249 bytes; the OS's error otherwise (e.g. `ENOSPC` from
    /// `fallocate` when memory is short).
    pub fn create(name: &str, len: usize) -> io::Result<SharedMem> {
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
        rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS)?;
        Self::map(fd, len, true)
    }

    /// Maps a memfd received from another process, read-write. Refuses one
    /// without `REQUIRED_SEALS`: the sender could shrink it under us.
    ///
    /// # Errors
    ///
    /// `InvalidData` naming the missing seals, or for an empty file; the
    /// OS's error for a descriptor that is not a sealable file.
    pub fn open(fd: OwnedFd) -> io::Result<SharedMem> {
        Self::open_mode(fd, true)
    }

    /// Maps a memfd read-only, for inspection: nothing this process does can
    /// write it. The same seal checks as [`open`](Self::open).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_read_only(fd: OwnedFd) -> io::Result<SharedMem> {
        Self::open_mode(fd, false)
    }

    fn open_mode(fd: OwnedFd, writable: bool) -> io::Result<SharedMem> {
        let seals = rustix::fs::fcntl_get_seals(&fd)?;
        let missing = REQUIRED_SEALS.difference(seals);
        if !missing.is_empty() {
            return Err(invalid(format!(
                "shared memory is not sealed: missing {missing:?} (has {seals:?})"
            )));
        }
        let len = rustix::fs::fstat(&fd)?.st_size;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| invalid(format!("shared memory has unusable size {len}")))?;
        Self::map(fd, len, writable)
    }

    fn map(fd: OwnedFd, len: usize, writable: bool) -> io::Result<SharedMem> {
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

    /// The mapping as 64-bit atomic words.
    ///
    /// A read-only mapping must only be loaded from: a store faults
    /// (`SIGSEGV`). Use [`is_writable`](Self::is_writable) before storing.
    pub fn u64_words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned (so 8-aligned), `len / 8` words
        // lie inside it, it lives as long as `self` (the Arc), and atomics
        // permit the concurrent access other processes make.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU64>(), self.len() / 8) }
    }

    /// The whole mapping as bytes, to read. The other process may write them
    /// meanwhile: treat what is read as untrusted input (the same rule as
    /// `Region::bytes`).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes and lives as long as `self`;
        // this process writes it only through `bytes_mut`, which needs
        // `&mut self`, so no `&mut` slice of it coexists with this one.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len()) }
    }

    /// The whole mapping as bytes, to write; `None` if it is read-only.
    pub fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        if !self.writable {
            return None;
        }
        // SAFETY: a writable mapping of `len` bytes that lives as long as
        // `self`; `&mut self` makes this the only slice of it in this
        // process (regions handed out by `region` cover rings and pools,
        // never a `SharedMem` used through `bytes_mut`).
        Some(unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr(), self.len()) })
    }

    /// The mapping as 32-bit atomic words (see [`u64_words`](Self::u64_words)).
    pub fn u32_words(&self) -> &[AtomicU32] {
        // SAFETY: as in `u64_words`, with 4-byte words.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU32>(), self.len() / 4) }
    }

    /// The bytes `off..off + len` as a region for a ring, keeping the mapping
    /// alive. `None` if the range is out of bounds or `off` is not aligned
    /// to [`REGION_ALIGN`], or the mapping is read-only.
    pub fn region(&self, off: usize, len: usize) -> Option<SharedRegion> {
        let end = off.checked_add(len)?;
        if end > self.len() || !off.is_multiple_of(REGION_ALIGN) || !self.writable {
            return None;
        }
        // SAFETY: `off < end <= len` (checked), so the pointer is inside the
        // mapping and non-null.
        let ptr = unsafe { NonNull::new_unchecked(self.map.as_mut_ptr().add(off)) };
        let owner: Arc<dyn std::any::Any + Send + Sync> = Arc::new(MapOwner(self.map.clone()));
        // SAFETY: the range is inside a writable `MAP_SHARED` mapping of a
        // memfd sealed against shrinking (checked at create/open), aligned to
        // REGION_ALIGN (page base + aligned `off`), and `owner` keeps the
        // mapping alive for the region's life.
        Some(unsafe { SharedRegion::new(ptr, len, owner) })
    }
}

impl SharedMem {
    /// The bytes `off..off + len` as a read-only region (writable or not),
    /// for inspection: a `ReadOnlyRegion` offers loads only, so no ring or
    /// pool can be built over it. `None` if out of bounds or misaligned.
    pub fn region_read_only(&self, off: usize, len: usize) -> Option<ReadOnlyRegion> {
        let end = off.checked_add(len)?;
        if end > self.len() || !off.is_multiple_of(REGION_ALIGN) {
            return None;
        }
        // SAFETY: `off < end <= len` (checked): inside the mapping, non-null.
        let ptr = unsafe { NonNull::new_unchecked(self.map.as_ptr().add(off).cast_mut()) };
        let owner: Arc<dyn std::any::Any + Send + Sync> = Arc::new(MapOwner(self.map.clone()));
        // SAFETY: the range is inside a readable `MAP_SHARED` mapping of a
        // memfd sealed against shrinking, aligned to REGION_ALIGN, and
        // `owner` keeps the mapping alive for the region's life.
        Some(unsafe { ReadOnlyRegion::new(ptr, len, owner) })
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
        a.u64_words()[3].store(0xDEAD, Ordering::Release);
        assert_eq!(b.u64_words()[3].load(Ordering::Acquire), 0xDEAD);
        assert_eq!(b.len(), 8192);
        let ro = SharedMem::open_read_only(a.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(ro.u64_words()[3].load(Ordering::Acquire), 0xDEAD);
        assert!(ro.region(0, 128).is_none());
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
        let m = SharedMem::create("isocall:test:region", 4096).unwrap();
        assert!(m.region(0, 4097).is_none());
        assert!(m.region(8, 128).is_none());
        assert!(m.region(usize::MAX, 2).is_none());
        assert!(m.region(128, 512).is_some());
    }
}
