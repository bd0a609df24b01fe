//! Where a pool's parts lie in its region, and how an opener checks them.
//!
//! ```text
//! 0                  pool header: magic, version, class count, region size
//! 64 + 64 * i        class i: slot size, slot count, offsets of its parts
//! ...                per class, each 64-byte aligned:
//!                      free bitmap   one bit per slot, set = maybe free
//!                      slot states   one u64 per slot: generation | state
//!                      slot memory   count * slot size (4 KiB aligned for
//!                                    classes of 4 KiB and more)
//! ```
//!
//! Every field is a little-endian `u64` read with one atomic load. The
//! creator writes the header, then the version word, then the magic with
//! Release; `read` loads the magic (then an Acquire fence: it only loads,
//! so it also reads a read-only mapping), copies every field once,
//! and checks them all against the region before the pool is used. The
//! shared copy is never read again, so a peer that scribbles on the header
//! later changes nothing.

use crate::error::{BlobError, PoolPart};
use crate::sync::AtomicU64;
use crate::sync::{Ordering, fence};

/// `b"ISOBLOB1"` read as a little-endian `u64`.
pub const POOL_MAGIC: u64 = u64::from_le_bytes(*b"ISOBLOB1");
/// Version of the pool layout; bumped on any change to it.
pub const POOL_VERSION: u32 = 1;
/// Most size classes a pool may have.
pub const MAX_CLASSES: usize = 16;
/// Smallest slot, and the granularity of slot sizes: one cache line.
pub const MIN_SLOT: usize = 64;
/// Largest slot: 1 GiB.
pub const MAX_SLOT: usize = 1 << 30;
/// Most slots in one class.
pub const MAX_SLOTS: usize = 1 << 24;

/// Byte offsets of the header words.
pub(crate) const H_MAGIC: usize = 0;
pub(crate) const H_VERSION: usize = 8;
pub(crate) const H_LEN: usize = 16;
/// Offset of class descriptor `i`, and the word offsets inside one.
pub(crate) const fn class_desc(i: usize) -> usize {
    64 + 64 * i
}
pub(crate) const D_SLOT: usize = 0;
pub(crate) const D_COUNT: usize = 8;
pub(crate) const D_BITMAP: usize = 16;
pub(crate) const D_STATES: usize = 24;
pub(crate) const D_DATA: usize = 32;

/// One size class: `count` slots of `slot_size` bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassConfig {
    /// Bytes per slot: a multiple of 64 from [`MIN_SLOT`] to [`MAX_SLOT`].
    pub slot_size: usize,
    /// Number of slots, from 1 to [`MAX_SLOTS`].
    pub count: usize,
}

/// The size classes of a pool, smallest first. `Copy`, so that it can sit in
/// a segment layout.
///
/// ```
/// use isocall_blob::PoolConfig;
/// let c = PoolConfig::new().class(256, 1000).class(65536, 16);
/// assert_eq!(c.classes().len(), 2);
/// assert!(c.region_size().unwrap() > 256 * 1000 + 65536 * 16);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    classes: [ClassConfig; MAX_CLASSES],
    n: usize,
    /// More than `MAX_CLASSES` classes were added.
    overflow: bool,
}

impl Default for PoolConfig {
    /// No classes: no pool.
    fn default() -> Self {
        Self::new()
    }
}

impl PoolConfig {
    /// A configuration with no classes yet (an empty configuration means "no
    /// pool").
    pub const fn new() -> Self {
        PoolConfig {
            classes: [ClassConfig {
                slot_size: 0,
                count: 0,
            }; MAX_CLASSES],
            n: 0,
            overflow: false,
        }
    }

    /// Adds a class of `count` slots of `slot_size` bytes. Classes may be
    /// added in any order; [`Pool::create`](crate::Pool::create) checks them.
    /// Past [`MAX_CLASSES`] the configuration is marked invalid (and
    /// `create` says so: [`BlobError::TooManyClasses`]).
    #[must_use]
    pub fn class(mut self, slot_size: usize, count: usize) -> Self {
        if self.n < MAX_CLASSES {
            self.classes[self.n] = ClassConfig { slot_size, count };
            self.classes[..=self.n].sort_by_key(|c| c.slot_size);
            self.n += 1;
        } else {
            self.overflow = true;
        }
        self
    }

    /// The default classes for a byte budget: 256 B, 1 KiB, 4 KiB, 16 KiB,
    /// 64 KiB, 256 KiB, 1 MiB and 4 MiB, each given an equal share of the
    /// budget; a class whose share holds no slot is left out.
    pub fn with_budget(bytes: usize) -> Self {
        let sizes = [
            256usize,
            1 << 10,
            4 << 10,
            16 << 10,
            64 << 10,
            256 << 10,
            1 << 20,
            4 << 20,
        ];
        let share = bytes / sizes.len();
        sizes
            .iter()
            .filter(|&&s| share >= s)
            .fold(PoolConfig::new(), |c, &s| {
                c.class(s, (share / s).min(MAX_SLOTS))
            })
    }

    /// The classes, smallest first.
    pub fn classes(&self) -> &[ClassConfig] {
        &self.classes[..self.n]
    }

    /// Whether there is no class (no pool).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Bytes of region the pool needs.
    ///
    /// # Errors
    ///
    /// [`BlobError::NoClasses`], [`TooManyClasses`](BlobError::TooManyClasses),
    /// or, naming the first invalid class,
    /// [`BadSlotSize`](BlobError::BadSlotSize),
    /// [`BadSlotCount`](BlobError::BadSlotCount),
    /// [`DuplicateClass`](BlobError::DuplicateClass),
    /// [`ClassTooLarge`](BlobError::ClassTooLarge).
    pub fn region_size(&self) -> Result<usize, BlobError> {
        Ok(self.plan()?.1)
    }

    /// Checks the classes and computes where each part goes.
    pub(crate) fn plan(&self) -> Result<(Vec<ClassLayout>, usize), BlobError> {
        if self.n == 0 {
            return Err(BlobError::NoClasses);
        }
        if self.overflow {
            return Err(BlobError::TooManyClasses);
        }
        let mut at = class_desc(self.n);
        let mut out = Vec::with_capacity(self.n);
        let mut prev = 0;
        for (i, c) in self.classes().iter().enumerate() {
            if c.slot_size < MIN_SLOT
                || c.slot_size > MAX_SLOT
                || !c.slot_size.is_multiple_of(MIN_SLOT)
            {
                return Err(BlobError::BadSlotSize {
                    class: i,
                    slot_size: c.slot_size,
                });
            }
            if c.count == 0 || c.count > MAX_SLOTS {
                return Err(BlobError::BadSlotCount {
                    class: i,
                    count: c.count,
                });
            }
            if c.slot_size == prev {
                return Err(BlobError::DuplicateClass {
                    slot_size: c.slot_size,
                });
            }
            prev = c.slot_size;
            let bitmap = align(at, 64);
            let states = align(bitmap + bitmap_words(c.count) * 8, 64);
            let data = align(states + c.count * 8, data_align(c.slot_size));
            let end = c
                .slot_size
                .checked_mul(c.count)
                .and_then(|b| b.checked_add(data))
                .filter(|&e| e <= 1 << 46)
                .ok_or(BlobError::ClassTooLarge { class: i })?;
            out.push(ClassLayout {
                slot_size: c.slot_size,
                count: c.count,
                bitmap,
                states,
                data,
            });
            at = end;
        }
        Ok((out, align(at, 64)))
    }
}

/// Where one class lies in the region (offsets in bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ClassLayout {
    pub slot_size: usize,
    pub count: usize,
    pub bitmap: usize,
    pub states: usize,
    pub data: usize,
}

impl ClassLayout {
    pub fn words(&self) -> usize {
        bitmap_words(self.count)
    }
    pub fn state_at(&self, slot: usize) -> usize {
        self.states + slot * 8
    }
    pub fn data_at(&self, slot: usize) -> usize {
        self.data + slot * self.slot_size
    }
    fn end(&self) -> usize {
        self.data + self.slot_size * self.count
    }
}

pub(crate) const fn bitmap_words(count: usize) -> usize {
    count.div_ceil(64)
}

const fn align(n: usize, a: usize) -> usize {
    n.div_ceil(a) * a
}

const fn data_align(slot_size: usize) -> usize {
    if slot_size >= 4096 { 4096 } else { 64 }
}

/// Formats a region of `len` bytes (fresh or reused), whose words `word`
/// gives (see `raw::format`, which vouches that they alias nothing): every
/// class's bitmap is set for its slots, every state is free at generation
/// 0, then the version word, then the magic (Release; pairs with the
/// Acquire in [`read`]).
pub(crate) fn write<'r>(
    word: &dyn Fn(usize) -> &'r AtomicU64,
    classes: &[ClassLayout],
    len: usize,
) {
    let w = |off: usize, v: u64| word(off).store(v, Ordering::Relaxed);
    w(H_MAGIC, 0);
    for (i, c) in classes.iter().enumerate() {
        for k in 0..c.words() {
            let bits = if (k + 1) * 64 <= c.count {
                u64::MAX
            } else {
                (1u64 << (c.count - k * 64)) - 1
            };
            w(c.bitmap + k * 8, bits);
        }
        for s in 0..c.count {
            w(c.state_at(s), 0);
        }
        let d = class_desc(i);
        w(d + D_SLOT, c.slot_size as u64);
        w(d + D_COUNT, c.count as u64);
        w(d + D_BITMAP, c.bitmap as u64);
        w(d + D_STATES, c.states as u64);
        w(d + D_DATA, c.data as u64);
    }
    w(H_LEN, len as u64);
    w(
        H_VERSION,
        u64::from(POOL_VERSION) | ((classes.len() as u64) << 32),
    );
    word(H_MAGIC).store(POOL_MAGIC, Ordering::Release);
}

/// Reads and checks the header of a pool of `len` bytes made by someone
/// else, with loads only, through `load` (a `Relaxed` load of the word at an offset; see
/// `raw::open` and `raw::census_region`, which vouch that the words it
/// loads alias no blob).
///
/// Loads only words of the header, `..class_desc(n)` for the `n` classes
/// it names; with `known` (the number of classes of the layout this
/// process has open on the region), refuses with
/// [`BlobError::LayoutChanged`] a header naming another count before it
/// loads any class descriptor, so that it loads nothing outside the header
/// of the layout whose blobs may be live here.
pub(crate) fn read(
    len: usize,
    load: impl Fn(usize) -> u64,
    known: Option<usize>,
) -> Result<Vec<ClassLayout>, BlobError> {
    let region_len = len;
    if region_len < class_desc(1) {
        return Err(BlobError::RegionTooShort {
            len: region_len,
            min: class_desc(1),
        });
    }
    let magic = load(H_MAGIC);
    // Acquire (a fence after a Relaxed load, which a read-only mapping
    // allows): pairs with the Release store of the magic in `write`.
    fence(Ordering::Acquire);
    if magic != POOL_MAGIC {
        return Err(BlobError::BadMagic {
            found: magic,
            expected: POOL_MAGIC,
        });
    }
    let r = |off: usize| load(off);
    let vw = r(H_VERSION);
    let (version, n) = (vw as u32, (vw >> 32) as usize);
    if version != POOL_VERSION {
        return Err(BlobError::BadVersion {
            found: version,
            expected: POOL_VERSION,
        });
    }
    if n == 0 || n > MAX_CLASSES || class_desc(n) > region_len {
        return Err(BlobError::BadClassCount { count: n });
    }
    if known.is_some_and(|k| k != n) {
        return Err(BlobError::LayoutChanged);
    }
    let len = r(H_LEN);
    if len != region_len as u64 {
        return Err(BlobError::LengthMismatch {
            header: len,
            region: region_len,
        });
    }
    let mut classes = Vec::with_capacity(n);
    // Every part, as (start, end, part) for the overlap check.
    let mut spans = vec![(0usize, class_desc(n), PoolPart::Header)];
    let mut prev = 0;
    for i in 0..n {
        let d = class_desc(i);
        let field = |off: usize| usize::try_from(r(d + off)).unwrap_or(usize::MAX);
        let c = ClassLayout {
            slot_size: field(D_SLOT),
            count: field(D_COUNT),
            bitmap: field(D_BITMAP),
            states: field(D_STATES),
            data: field(D_DATA),
        };
        if c.slot_size < MIN_SLOT
            || c.slot_size > MAX_SLOT
            || !c.slot_size.is_multiple_of(MIN_SLOT)
            || c.slot_size <= prev
        {
            return Err(BlobError::HeaderSlotSize {
                class: i,
                slot_size: c.slot_size,
            });
        }
        prev = c.slot_size;
        if c.count == 0 || c.count > MAX_SLOTS {
            return Err(BlobError::HeaderSlotCount {
                class: i,
                count: c.count,
            });
        }
        // Sizes: at most 2^24 slots of at most 2^30 bytes, so none of these
        // products overflows; the offsets are the peer's, so every sum with
        // one is checked.
        let parts = [
            (c.bitmap, c.words() * 8, 64, PoolPart::Bitmap { class: i }),
            (c.states, c.count * 8, 8, PoolPart::States { class: i }),
            (
                c.data,
                c.slot_size * c.count,
                64,
                PoolPart::Slots { class: i },
            ),
        ];
        for (off, bytes, al, part) in parts {
            let end = off
                .checked_add(bytes)
                .filter(|&e| off.is_multiple_of(al) && e <= region_len);
            let Some(end) = end else {
                return Err(BlobError::PartOutOfBounds {
                    part,
                    offset: off,
                    bytes,
                    region: region_len,
                });
            };
            spans.push((off, end, part));
        }
        debug_assert!(c.end() <= region_len);
        classes.push(c);
    }
    spans.sort();
    for pair in spans.windows(2) {
        if pair[0].1 > pair[1].0 {
            return Err(BlobError::PartsOverlap {
                first: pair[0].2,
                second: pair[1].2,
            });
        }
    }
    Ok(classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_classes() {
        let c = PoolConfig::with_budget(64 << 20);
        let sizes: Vec<_> = c.classes().iter().map(|c| (c.slot_size, c.count)).collect();
        assert_eq!(sizes[0], (256, 32768));
        assert_eq!(*sizes.last().unwrap(), (4 << 20, 2));
        assert_eq!(sizes.len(), 8);
        // A small budget leaves out the classes it cannot hold.
        assert!(
            PoolConfig::with_budget(1 << 20)
                .classes()
                .iter()
                .all(|c| c.slot_size <= 128 << 10)
        );
    }

    #[test]
    fn plan_aligns_and_does_not_overlap() {
        let c = PoolConfig::new()
            .class(4096, 3)
            .class(64, 65)
            .class(1 << 20, 1);
        let (l, len) = c.plan().unwrap();
        assert_eq!(l[0].slot_size, 64, "classes sorted");
        let mut end = class_desc(3);
        for x in &l {
            assert!(x.bitmap >= end && x.bitmap % 64 == 0);
            assert!(x.states >= x.bitmap + x.words() * 8);
            assert!(x.data >= x.states + x.count * 8);
            assert_eq!(x.data % data_align(x.slot_size), 0);
            end = x.end();
        }
        assert!(len >= end);
        assert_eq!(l[0].words(), 2);
    }

    #[test]
    fn bad_configs_are_named() {
        let e = |c: PoolConfig| c.region_size().unwrap_err();
        assert_eq!(e(PoolConfig::new()), BlobError::NoClasses);
        assert!(
            e(PoolConfig::new())
                .to_string()
                .contains("at least one class")
        );
        let bad = e(PoolConfig::new().class(64, 1).class(100, 1));
        assert_eq!(
            bad,
            BlobError::BadSlotSize {
                class: 1,
                slot_size: 100
            }
        );
        assert!(bad.to_string().contains("slot size 100"));
        assert_eq!(
            e(PoolConfig::new().class(64, 0)),
            BlobError::BadSlotCount { class: 0, count: 0 }
        );
        let twice = e(PoolConfig::new().class(64, 1).class(64, 2));
        assert_eq!(twice, BlobError::DuplicateClass { slot_size: 64 });
        assert!(twice.to_string().contains("two classes"));
        assert_eq!(
            e(PoolConfig::new().class(MAX_SLOT, MAX_SLOTS)),
            BlobError::ClassTooLarge { class: 0 }
        );
        let many = (1..=17).fold(PoolConfig::new(), |c, i| c.class(64 * i, 1));
        assert_eq!(many.classes().len(), MAX_CLASSES);
        assert_eq!(e(many), BlobError::TooManyClasses);
        assert!(e(many).to_string().contains("more than 16 classes"));
    }
}
