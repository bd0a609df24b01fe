//! The pointer-based region homes: heap memory and a shared mapping.
//!
//! This is one of the few modules allowed `unsafe`. Its contract: a
//! [`RawBytes`] is a pointer to `len` bytes, aligned to [`REGION_ALIGN`], that
//! stays valid as long as the value (and whatever keeps the memory alive,
//! the heap allocation or the mapping owner) lives. Every access is bounds-
//! checked against `len` before the pointer is offset.
#![allow(unsafe_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::any::Any;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::region::{REGION_ALIGN, ReadRegion, Region, check_word};
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use core::sync::atomic::AtomicU8;

/// A pointer to `len` bytes that the owner keeps valid and aligned.
struct RawBytes {
    /// Start of the bytes. Invariant: aligned to `REGION_ALIGN`, valid for
    /// reads and writes of `len` bytes while `self` lives.
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the bytes are only accessed through atomics or through slices whose
// exclusivity the ring protocol provides; the pointer itself is plain data.
unsafe impl Send for RawBytes {}
// SAFETY: as above; shared access from several threads goes through atomics.
unsafe impl Sync for RawBytes {}

impl RawBytes {
    /// # Safety
    ///
    /// As for [`Region::u64_at`]: no slice view of the word's bytes exists
    /// while the reference lives.
    #[inline]
    unsafe fn u64_at(&self, off: usize) -> &AtomicU64 {
        check_word(off, 8, self.len);
        // SAFETY: `off + 8 <= len` and `off` is 8-aligned (checked above), the
        // base is 128-aligned (invariant), so the word is in bounds and
        // aligned; the memory lives as long as `self`; nothing aliases it
        // (the caller's promise).
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(off).cast()) }
    }

    /// # Safety
    ///
    /// As for [`Region::u32_at`].
    #[inline]
    unsafe fn u32_at(&self, off: usize) -> &AtomicU32 {
        check_word(off, 4, self.len);
        // SAFETY: as in `u64_at`, with 4-byte size and alignment.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(off).cast()) }
    }

    /// # Safety
    ///
    /// `off` is 8-aligned and `off + 8 <= len`.
    #[inline]
    unsafe fn u64_at_unchecked(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= self.len);
        // SAFETY: in bounds and aligned by the caller's promise, the base
        // 128-aligned (invariant); the memory lives as long as `self`.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(off).cast()) }
    }

    /// # Safety
    ///
    /// `off` is 4-aligned and `off + 4 <= len`.
    #[inline]
    unsafe fn u32_at_unchecked(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off.is_multiple_of(4) && off + 4 <= self.len);
        // SAFETY: as in `u64_at_unchecked`, with 4-byte size and alignment.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(off).cast()) }
    }

    /// One `Relaxed` atomic load of the `u64` at `off`, through a shared
    /// reference and never `from_ptr` (which asks for writable memory): the
    /// only atomic access defined on read-only memory ("sufficiently small"
    /// `Relaxed` loads, see `core::sync::atomic`, "Atomic accesses to
    /// read-only memory").
    ///
    /// # Safety
    ///
    /// As for [`ReadRegion::load_u64`]: no `&mut [u8]` view of the word's
    /// bytes exists during the call.
    #[inline]
    unsafe fn load_u64(&self, off: usize) -> u64 {
        check_word(off, 8, self.len);
        // SAFETY: in bounds and 8-aligned (checked above; the base is
        // 128-aligned), valid for reads while `self` lives; every access to
        // the word is atomic, and a shared `&AtomicU64` asserts no
        // writability; no `&mut` view aliases it (the caller's promise).
        let word = unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU64>() };
        word.load(Ordering::Relaxed)
    }

    /// As [`load_u64`](Self::load_u64), for a `u32`.
    ///
    /// # Safety
    ///
    /// As for `load_u64`.
    #[inline]
    unsafe fn load_u32(&self, off: usize) -> u32 {
        check_word(off, 4, self.len);
        // SAFETY: as in `load_u64`, with 4-byte size and alignment.
        let word = unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU32>() };
        word.load(Ordering::Relaxed)
    }

    /// Copies bytes out with one `Relaxed` atomic byte load each (a writer
    /// may be at work on them; see `load_u64` on read-only memory).
    ///
    /// # Safety
    ///
    /// As for `load_u64`, for every byte of the range.
    unsafe fn read_bytes(&self, off: usize, buf: &mut [u8]) {
        assert!(
            off.checked_add(buf.len())
                .is_some_and(|end| end <= self.len),
            "ring bug: {} bytes at offset {off} outside region of {} bytes",
            buf.len(),
            self.len
        );
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `off + i < off + buf.len() <= len` (asserted), so the
            // byte is in bounds and valid for reads; any alignment suits a
            // `u8`; accessed atomically, as in `load_u64`; no `&mut` view
            // aliases it (the caller's promise).
            let byte = unsafe { &*self.ptr.as_ptr().add(off + i).cast::<AtomicU8>() };
            *b = byte.load(Ordering::Relaxed);
        }
    }

    /// # Safety
    /// `off + len <= self.len`; see [`Region::bytes`].
    #[inline]
    unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        debug_assert!(off.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds by the caller's contract; aliasing per `Region::bytes`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }
    }

    /// # Safety
    /// `off + len <= self.len`; see [`Region::bytes_mut`].
    #[inline]
    #[allow(clippy::mut_from_ref)]
    unsafe fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
        debug_assert!(off.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds by the caller's contract; exclusive per
        // `Region::bytes_mut`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(off), len) }
    }
}

/// A zeroed, 128-byte-aligned heap buffer: the home for unit tests, proptest,
/// miri and in-process benchmarks.
pub struct HeapRegion {
    raw: RawBytes,
    layout: Layout,
}

impl HeapRegion {
    /// Allocates `len` zeroed bytes.
    ///
    /// # Panics
    ///
    /// If `len` is zero or the allocation fails (like `Vec`).
    pub fn new(len: usize) -> Self {
        assert!(len > 0, "a region needs at least one byte");
        let layout = Layout::from_size_align(len, REGION_ALIGN).expect("region too large");
        // SAFETY: `layout` has a non-zero size (asserted above).
        let ptr = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        HeapRegion {
            raw: RawBytes { ptr, len },
            layout,
        }
    }
}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout, freed once.
        unsafe { dealloc(self.raw.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for HeapRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapRegion")
            .field("len", &self.raw.len)
            .finish()
    }
}

/// A window of a shared mapping (a memfd mapped by two processes), kept alive
/// by an owner handle, usually the mapping itself behind an `Arc`.
pub struct SharedRegion {
    raw: RawBytes,
    _owner: Arc<dyn Any + Send + Sync>,
}

impl SharedRegion {
    /// Wraps `len` bytes at `ptr` that `owner` keeps mapped.
    ///
    /// # Safety
    ///
    /// `ptr` is aligned to [`REGION_ALIGN`] and valid for reads and writes of
    /// `len` bytes for as long as `owner` lives (e.g. `owner` holds the
    /// `MAP_SHARED` mapping that contains them, and the mapped file cannot
    /// shrink, e.g. because it is sealed against it). No Rust reference to
    /// those bytes exists outside of regions created this way, and every
    /// `SharedRegion` of this process whose bytes overlap these starts at
    /// `ptr` and is `len` bytes long (one window per ring or pool, however
    /// many handles: see the [`Region`] contract).
    // SAFETY: the caller guarantees the pointer, length and lifetime listed
    // above; every later access is bounds-checked against `len`.
    // SAFETY: a contract for callers, stated in `# Safety` above.
    pub unsafe fn new(ptr: NonNull<u8>, len: usize, owner: Arc<dyn Any + Send + Sync>) -> Self {
        debug_assert!((ptr.as_ptr() as usize).is_multiple_of(REGION_ALIGN));
        SharedRegion {
            raw: RawBytes { ptr, len },
            _owner: owner,
        }
    }
}

impl std::fmt::Debug for SharedRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRegion")
            .field("len", &self.raw.len)
            .finish()
    }
}

/// A window of a mapping this process may only read: an inspector's view
/// of a live ring or pool. It implements [`ReadRegion`] and nothing more
/// (a store, or even a compare-and-swap, on read-only memory faults), so
/// only code that loads can use it: [`snapshot`](crate::snapshot), a pool
/// census, a frame dump through [`read_bytes`](ReadOnlyRegion::read_bytes).
///
/// Its loads are safe (inherent methods beside the `unsafe` ones of
/// [`ReadRegion`]): its constructor asks for a mapping of its own, at an
/// address no slice of this process points into, so no grant, frame or
/// blob can alias what it reads (another process, or another mapping of
/// the same file, writing those bytes is the untrusted peer of the trust
/// model: the loads are atomic, and what they return is untrusted input).
pub struct ReadOnlyRegion {
    raw: RawBytes,
    _owner: Arc<dyn Any + Send + Sync>,
}

impl ReadOnlyRegion {
    /// Wraps `len` bytes at `ptr` that `owner` keeps mapped, readable.
    ///
    /// # Safety
    ///
    /// `ptr` is aligned to [`REGION_ALIGN`] and valid for reads of `len`
    /// bytes for as long as `owner` lives (the mapped file cannot shrink);
    /// and for as long as `owner` lives, no `&mut` reference (a
    /// [`Region::bytes_mut`] slice in particular) to any of these bytes
    /// exists in this process: they are a mapping of their own (typically
    /// `PROT_READ`), not a window on memory this process writes through a
    /// [`Region`].
    // SAFETY: a contract for callers, stated in # Safety above; the body
    // only stores the pointer, and every read through it relies on it.
    pub unsafe fn new(ptr: NonNull<u8>, len: usize, owner: Arc<dyn Any + Send + Sync>) -> Self {
        debug_assert!((ptr.as_ptr() as usize).is_multiple_of(REGION_ALIGN));
        ReadOnlyRegion {
            raw: RawBytes { ptr, len },
            _owner: owner,
        }
    }
}

impl std::fmt::Debug for ReadOnlyRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyRegion")
            .field("len", &self.raw.len)
            .finish()
    }
}

// Why the reads of a `ReadOnlyRegion` are safe: `ReadOnlyRegion::new`'s
// contract is that no `&mut` reference to its bytes exists in this process
// while it lives (a mapping of its own), which is all the loads of
// `RawBytes` ask for; a foreign process or mapping writing the same file is
// outside this process's aliasing rules, and the loads are atomic.
impl ReadOnlyRegion {
    /// Length of the region in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.raw.len
    }

    /// Whether the region is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.raw.len == 0
    }

    /// [`ReadRegion::load_u64`], safe here (see the type's doc).
    ///
    /// # Panics
    ///
    /// If `off` is not 8-aligned or `off + 8 > len()`.
    #[inline]
    pub fn load_u64(&self, off: usize) -> u64 {
        // SAFETY: no `&mut` view of this region's bytes exists in this
        // process (`ReadOnlyRegion::new`'s contract).
        unsafe { self.raw.load_u64(off) }
    }

    /// [`ReadRegion::load_u32`], safe here (see the type's doc).
    ///
    /// # Panics
    ///
    /// If `off` is not 4-aligned or `off + 4 > len()`.
    #[inline]
    pub fn load_u32(&self, off: usize) -> u32 {
        // SAFETY: as in `load_u64`.
        unsafe { self.raw.load_u32(off) }
    }

    /// [`ReadRegion::read_bytes`], safe here (see the type's doc): copies
    /// the bytes `off..off + buf.len()`, which a peer may be writing
    /// (untrusted input).
    ///
    /// # Panics
    ///
    /// If the range is not inside the region.
    #[inline]
    pub fn read_bytes(&self, off: usize, buf: &mut [u8]) {
        // SAFETY: as in `load_u64`.
        unsafe { self.raw.read_bytes(off, buf) }
    }
}

impl ReadRegion for ReadOnlyRegion {
    #[inline]
    fn len(&self) -> usize {
        self.raw.len
    }
    // SAFETY: the safe inherent load, which needs no promise.
    #[inline]
    unsafe fn load_u64(&self, off: usize) -> u64 {
        ReadOnlyRegion::load_u64(self, off)
    }
    // SAFETY: as above.
    #[inline]
    unsafe fn load_u32(&self, off: usize) -> u32 {
        ReadOnlyRegion::load_u32(self, off)
    }
    // SAFETY: as above.
    #[inline]
    unsafe fn read_bytes(&self, off: usize, buf: &mut [u8]) {
        ReadOnlyRegion::read_bytes(self, off, buf)
    }
}

macro_rules! impl_region {
    ($t:ty) => {
        impl ReadRegion for $t {
            #[inline]
            fn len(&self) -> usize {
                self.raw.len
            }
            // SAFETY: forwards the caller's `ReadRegion` promise.
            #[inline]
            unsafe fn load_u64(&self, off: usize) -> u64 {
                // SAFETY: forwarded contract.
                unsafe { self.raw.load_u64(off) }
            }
            // SAFETY: forwards the caller's `ReadRegion` promise.
            #[inline]
            unsafe fn load_u32(&self, off: usize) -> u32 {
                // SAFETY: forwarded contract.
                unsafe { self.raw.load_u32(off) }
            }
            // SAFETY: forwards the caller's `ReadRegion` promise.
            #[inline]
            unsafe fn read_bytes(&self, off: usize, buf: &mut [u8]) {
                // SAFETY: forwarded contract.
                unsafe { self.raw.read_bytes(off, buf) }
            }
        }

        // SAFETY: `RawBytes` upholds the `Region` contract: aligned base
        // (invariant of both constructors), bounds-checked word access, and
        // memory kept alive by the allocation / owner for the value's life;
        // the overlap rule is the constructors' (`HeapRegion` owns its
        // memory, `SharedRegion::new` asks it of its caller).
        unsafe impl Region for $t {
            // SAFETY: forwards the caller's `Region::u64_at` promise.
            #[inline]
            unsafe fn u64_at(&self, off: usize) -> &AtomicU64 {
                // SAFETY: forwarded contract.
                unsafe { self.raw.u64_at(off) }
            }
            // SAFETY: forwards the caller's `Region::u32_at` promise.
            #[inline]
            unsafe fn u32_at(&self, off: usize) -> &AtomicU32 {
                // SAFETY: forwarded contract.
                unsafe { self.raw.u32_at(off) }
            }
            // SAFETY: an unsafe method of the trait, forwarded with its contract
            // (the caller's `off` is aligned and in bounds).
            #[inline]
            unsafe fn u64_at_unchecked(&self, off: usize) -> &AtomicU64 {
                // SAFETY: forwarded contract.
                unsafe { self.raw.u64_at_unchecked(off) }
            }
            // SAFETY: an unsafe method of the trait, forwarded with its contract
            // (the caller's `off` is aligned and in bounds).
            #[inline]
            unsafe fn u32_at_unchecked(&self, off: usize) -> &AtomicU32 {
                // SAFETY: forwarded contract.
                unsafe { self.raw.u32_at_unchecked(off) }
            }
            // SAFETY: forwards `Region::bytes`; the caller keeps the range in
            // bounds and honours the aliasing rule.
            #[inline]
            unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
                // SAFETY: forwarded contract.
                unsafe { self.raw.bytes(off, len) }
            }
            #[inline]
            unsafe fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
                // SAFETY: forwarded contract.
                unsafe { self.raw.bytes_mut(off, len) }
            }
        }
    };
}

impl_region!(HeapRegion);
impl_region!(SharedRegion);
