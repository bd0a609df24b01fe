//! The shared segment of one connection: a sealed memfd holding a header,
//! a ring each way and the blob pool.
//!
//! ```text
//! 0        SegmentHeader (one 4 KiB page)
//! 4096     ring client -> server   (RING_CONTROL_BYTES + capacity)
//! ...      ring server -> client   (4 KiB-aligned)
//! ...      blob pool               (4 KiB-aligned, may be empty)
//! ```
//!
//! The header is a wire format: `repr(C)`, plain old data, offsets instead
//! of pointers. The creator writes it whole, then its layout version, then
//! its magic with a Release store, so an opener that reads the magic with
//! Acquire sees a whole header or none. [`Segment::open`] reads the header
//! once, validates every field against the file's real size, and never
//! trusts the shared copy again: a peer that scribbles on it later changes
//! nothing.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use bytemuck::{Pod, Zeroable};
use isocall_blob::{BlobError, Pool, PoolConfig};
use isocall_ringbuf::{SharedRegion, ring_region_size};

use crate::sys::SharedMem;

/// `b"ISOCALL1"` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"ISOCALL1");
/// Version of the segment layout; bumped on any change to it.
pub const LAYOUT_VERSION: u32 = 1;
/// Alignment and granularity of the parts.
pub const PAGE: u64 = 4096;

/// Where one part lies in the segment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PartDesc {
    /// Offset from the segment's start; a multiple of 4 KiB.
    pub offset: u64,
    /// Size in bytes (the part's span is rounded up to 4 KiB).
    pub size: u64,
}

/// What one side of the connection records about itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SideState {
    /// Process id of the side, 0 until it attaches.
    pub pid: u32,
    /// [`SIDE_ABSENT`], [`SIDE_ATTACHED`] or [`SIDE_CLOSED`]; anything else
    /// is shown as unknown.
    pub state: u32,
}

/// The side has not attached yet.
pub const SIDE_ABSENT: u32 = 0;
/// The side is attached.
pub const SIDE_ATTACHED: u32 = 1;
/// The side closed the connection cleanly.
pub const SIDE_CLOSED: u32 = 2;

/// The segment header, at offset 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct SegmentHeader {
    /// [`MAGIC`], written last.
    pub magic: u64,
    /// [`LAYOUT_VERSION`], written just before the magic.
    pub version: u32,
    /// `size_of::<SegmentHeader>()`.
    pub header_size: u32,
    /// Size of the whole memfd.
    pub total_size: u64,
    /// Data capacity of each ring (a power of two).
    pub ring_capacity: u64,
    /// Ring client -> server.
    pub ring_c2s: PartDesc,
    /// Ring server -> client.
    pub ring_s2c: PartDesc,
    /// Blob pool (size 0: none).
    pub blobs: PartDesc,
    /// Process that created the segment (the server).
    pub creator_pid: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// Per-side state: `[client, server]`.
    pub sides: [SideState; 2],
}

const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<SegmentHeader>() == 104);
    assert!(align_of::<SegmentHeader>() == 8);
    assert!(offset_of!(SegmentHeader, magic) == 0);
    assert!(offset_of!(SegmentHeader, version) == 8);
    assert!(offset_of!(SegmentHeader, total_size) == 16);
    assert!(offset_of!(SegmentHeader, ring_c2s) == 32);
    assert!(offset_of!(SegmentHeader, blobs) == 64);
    assert!(offset_of!(SegmentHeader, creator_pid) == 80);
    assert!(offset_of!(SegmentHeader, sides) == 88);
    assert!(size_of::<SegmentHeader>() as u64 <= PAGE);
};

const HEADER_WORDS: usize = std::mem::size_of::<SegmentHeader>() / 8;
/// Where the method table starts in the header page (after the header,
/// which it never overlaps).
const METHODS_AT: usize = 512;
/// Byte offset of the two sides' lifeline words (see `sys::lifeline`).
const LIFELINES_AT: usize = 448;
const _: () = assert!(std::mem::size_of::<SegmentHeader>() <= LIFELINES_AT);
/// Byte offset of the creator's words (see [`Segment::owner_words`]).
const OWNER_AT: usize = 128;
/// How many 64-bit words the segment's creator has for its own use in the
/// header page (see [`Segment::owner_words`]).
pub const OWNER_WORDS: usize = 40;
const _: () = assert!(
    std::mem::size_of::<SegmentHeader>() <= OWNER_AT && OWNER_AT + OWNER_WORDS * 8 <= LIFELINES_AT
);
const SIDES_WORD32: usize = std::mem::offset_of!(SegmentHeader, sides) / 4;

/// A ring's direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server.
    ClientToServer,
    /// Server to client.
    ServerToClient,
}

impl Direction {
    /// The other direction.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::ClientToServer => Direction::ServerToClient,
            Direction::ServerToClient => Direction::ClientToServer,
        }
    }
}

/// Which end of a segment a process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Writes client-to-server, reads server-to-client.
    Client,
    /// Writes server-to-client, reads client-to-server.
    Server,
}

impl Side {
    /// The ring this side writes.
    pub fn tx(self) -> Direction {
        match self {
            Side::Client => Direction::ClientToServer,
            Side::Server => Direction::ServerToClient,
        }
    }

    /// The ring this side reads.
    pub fn rx(self) -> Direction {
        self.tx().reverse()
    }

    /// The other side.
    pub fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }

    fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Server => 1,
        }
    }
}

/// The sizes a segment is created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentLayout {
    /// Data capacity of each ring: a power of two from 4 KiB to 1 GiB.
    pub ring_capacity: usize,
    /// Size classes of the blob pool (no classes: no pool).
    pub blobs: PoolConfig,
}

impl Default for SegmentLayout {
    /// 1 MiB rings and no blob pool.
    fn default() -> Self {
        SegmentLayout {
            ring_capacity: 1 << 20,
            blobs: PoolConfig::new(),
        }
    }
}

impl From<Side> for isocall_blob::Side {
    /// The client is the pool's side A, the server side B.
    fn from(s: Side) -> Self {
        match s {
            Side::Client => isocall_blob::Side::A,
            Side::Server => isocall_blob::Side::B,
        }
    }
}

/// Why a segment could not be created or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// The OS failed (memfd, fallocate, seals, mmap, fstat).
    #[error("segment: {0}")]
    Os(#[from] io::Error),
    /// The requested ring capacity is not a power of two from 4 KiB to
    /// 1 GiB.
    #[error(
        "bad segment layout: ring capacity {capacity} is not a power of two from 4 KiB to 1 GiB"
    )]
    BadCapacity {
        /// The capacity asked for.
        capacity: usize,
    },
    /// A segment this process just made is not usable as made (a bug or
    /// the OS refusing a writable mapping).
    #[error("the new segment is unusable: {what}")]
    Unusable {
        /// What is wrong.
        what: &'static str,
    },
    /// The memfd lacks a required seal.
    #[error("segment refused: {0}")]
    NotSealed(io::Error),
    /// The magic is wrong: not an isocall segment, or not yet initialised.
    #[error("segment refused: bad magic {found:#018x} (expected {MAGIC:#018x})")]
    BadMagic {
        /// Magic found.
        found: u64,
    },
    /// The layout version is not ours.
    #[error("segment refused: layout version {found}, this build speaks {LAYOUT_VERSION}")]
    VersionMismatch {
        /// Version found.
        found: u32,
    },
    /// The header's own size field is wrong.
    #[error("segment refused: header size {found}, expected {expected}")]
    BadHeaderSize {
        /// Size found.
        found: u32,
        /// Size expected.
        expected: u32,
    },
    /// The header's total size disagrees with the file.
    #[error("segment refused: header says {header} bytes, the memfd has {file}")]
    SizeMismatch {
        /// Total size in the header.
        header: u64,
        /// Size of the memfd.
        file: u64,
    },
    /// A part does not lie inside the segment, or is misaligned.
    #[error(
        "segment refused: {part} at offset {offset}, size {size} does not fit a {total}-byte segment on 4 KiB boundaries after the header"
    )]
    PartOutOfBounds {
        /// Which part.
        part: &'static str,
        /// Its offset.
        offset: u64,
        /// Its size.
        size: u64,
        /// Segment size.
        total: u64,
    },
    /// Two parts overlap.
    #[error("segment refused: {a} and {b} overlap")]
    Overlap {
        /// One part.
        a: &'static str,
        /// The other.
        b: &'static str,
    },
    /// The blob pool's configuration or header is not valid.
    #[error("segment refused: {0}")]
    Blobs(#[from] BlobError),
    /// The ring capacity or ring part sizes are not valid.
    #[error("segment refused: ring capacity {capacity} with ring parts of {c2s} and {s2c} bytes")]
    BadRings {
        /// Capacity found.
        capacity: u64,
        /// Size of the c2s ring part.
        c2s: u64,
        /// Size of the s2c ring part.
        s2c: u64,
    },
}

/// A connection's shared segment, mapped.
#[derive(Debug)]
pub struct Segment {
    mem: SharedMem,
    /// Validated copy of the header, taken once.
    header: SegmentHeader,
    /// The blob pool's classes, validated at open (empty: no pool).
    blobs: PoolConfig,
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

impl Segment {
    /// Creates a segment in a new sealed memfd named `name` (by convention
    /// `isocall:<service>:<conn>`).
    ///
    /// # Errors
    ///
    /// [`SegmentError::BadCapacity`] for a ring capacity that is not a power
    /// of two from 4 KiB to 1 GiB or an oversized blob pool;
    /// [`SegmentError::Os`] if the memfd cannot be made (e.g. no memory).
    pub fn create(name: &str, layout: &SegmentLayout) -> Result<Segment, SegmentError> {
        let cap = layout.ring_capacity;
        let ring = ring_region_size(cap)
            .filter(|_| cap >= 4096)
            .ok_or(SegmentError::BadCapacity { capacity: cap })? as u64;
        let blob_bytes = if layout.blobs.is_empty() {
            0
        } else {
            layout.blobs.region_size()?
        };
        let c2s = PartDesc {
            offset: PAGE,
            size: ring,
        };
        let s2c = PartDesc {
            offset: c2s.offset + round_up(ring),
            size: ring,
        };
        let blobs = PartDesc {
            offset: s2c.offset + round_up(ring),
            size: blob_bytes as u64,
        };
        let total = blobs.offset + round_up(blobs.size);
        let mem = SharedMem::create_with_regions(name, total as usize, PAGE as usize)?;
        let header = SegmentHeader {
            magic: MAGIC,
            version: LAYOUT_VERSION,
            header_size: std::mem::size_of::<SegmentHeader>() as u32,
            total_size: total,
            ring_capacity: cap as u64,
            ring_c2s: c2s,
            ring_s2c: s2c,
            blobs,
            creator_pid: std::process::id(),
            _pad: 0,
            sides: [SideState::default(); 2],
        };
        if blob_bytes > 0 {
            let region =
                mem.region(blobs.offset as usize, blob_bytes)
                    .ok_or(SegmentError::Unusable {
                        what: "its blob pool lies outside it",
                    })?;
            Pool::create(region, &layout.blobs, Side::Server.into())?;
        }
        let words: [u64; HEADER_WORDS] = bytemuck::cast(header);
        let shared = mem.u64_words().ok_or(SegmentError::Unusable {
            what: "it is mapped read-only",
        })?;
        // Everything but the magic/version word first, then the version,
        // then the magic with Release: pairs with the Acquire in `open`.
        for (i, w) in words.iter().enumerate().skip(2) {
            shared[i].store(*w, Ordering::Relaxed);
        }
        shared[1].store(words[1], Ordering::Relaxed);
        shared[0].store(MAGIC, Ordering::Release);
        tracing::debug!(name, total, cap, blob_bytes, "segment created");
        Ok(Segment {
            mem,
            header,
            blobs: layout.blobs,
        })
    }

    /// Opens a segment received from the peer: checks the seals, then the
    /// header against the memfd's real size, before anything else is used.
    ///
    /// # Errors
    ///
    /// [`SegmentError::NotSealed`], `BadMagic`, `VersionMismatch`,
    /// `BadHeaderSize`, `SizeMismatch`, `PartOutOfBounds`, `Overlap`,
    /// `BadRings`, each naming the bad values; `Os` for a descriptor that is
    /// not a memfd.
    pub fn open(fd: OwnedFd) -> Result<Segment, SegmentError> {
        Self::open_with(fd, |fd| SharedMem::open_with_regions(fd, PAGE as usize))
    }

    /// Opens a segment read-only, for inspection: its rings cannot be
    /// attached, only read.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_read_only(fd: OwnedFd) -> Result<Segment, SegmentError> {
        Self::open_with(fd, SharedMem::open_read_only)
    }

    fn open_with(
        fd: OwnedFd,
        map: impl FnOnce(OwnedFd) -> io::Result<SharedMem>,
    ) -> Result<Segment, SegmentError> {
        let mem = map(fd).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                SegmentError::NotSealed(e)
            } else {
                SegmentError::Os(e)
            }
        })?;
        let header = read_header(&mem)?;
        validate(&header, mem.len() as u64)?;
        let mut seg = Segment {
            mem,
            header,
            blobs: PoolConfig::new(),
        };
        // A read-only opener (the inspector) reads the pool with its own
        // checks; a writer validates it before anything uses it.
        if header.blobs.size > 0 && seg.mem.is_writable() {
            seg.blobs = seg.open_pool(Side::Client)?.config();
        }
        tracing::debug!(total = header.total_size, "segment opened");
        Ok(seg)
    }

    /// The memfd, to pass to the peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.mem.fd()
    }

    /// The validated header, as read when the segment was created or opened.
    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    /// The layout the segment was created with.
    pub fn layout(&self) -> SegmentLayout {
        SegmentLayout {
            ring_capacity: self.header.ring_capacity as usize,
            blobs: self.blobs,
        }
    }

    fn open_pool(&self, side: Side) -> Result<Pool<SharedRegion>, BlobError> {
        let p = self.header.blobs;
        let region = self
            .mem
            .region(p.offset as usize, p.size as usize)
            .ok_or(BlobError::NoPool)?;
        Pool::open(region, side.into())
    }

    /// The blob pool as seen by `side`, or `None` if the segment has none.
    /// Each call opens a new handle on the same pool (cheap; do it once per
    /// connection).
    ///
    /// # Errors
    ///
    /// [`SegmentError::Blobs`] if the segment was opened read-only, or if
    /// the pool header no longer checks out (the peer rewrote it).
    pub fn blob_pool(&self, side: Side) -> Result<Option<Pool<SharedRegion>>, SegmentError> {
        if self.header.blobs.size == 0 {
            return Ok(None);
        }
        Ok(Some(self.open_pool(side)?))
    }

    fn part(&self, dir: Direction) -> PartDesc {
        match dir {
            Direction::ClientToServer => self.header.ring_c2s,
            Direction::ServerToClient => self.header.ring_s2c,
        }
    }

    /// The region of the ring going in `dir`, for a `Producer` or
    /// `Consumer`.
    ///
    /// # Panics
    ///
    /// If the segment was opened read-only (use
    /// [`ring_view`](Self::ring_view) to inspect it).
    pub fn ring_region(&self, dir: Direction) -> SharedRegion {
        let p = self.part(dir);
        self.mem
            .region(p.offset as usize, p.size as usize)
            .expect("ring region of a writable, validated segment")
    }

    /// The ring going in `dir`, read-only (works on a segment opened
    /// read-only): for `isocall_ringbuf::snapshot` and frame dumps. Of a
    /// writable segment it is a new read-only mapping (see
    /// [`SharedMem::region_read_only`]); `None` if that mapping is refused
    /// (out of address space).
    pub fn ring_view(&self, dir: Direction) -> Option<isocall_ringbuf::ReadOnlyRegion> {
        let p = self.part(dir);
        self.mem
            .region_read_only(p.offset as usize, p.size as usize)
            .ok()
            .flatten()
    }

    /// The blob pool, read-only, or `None` if the segment has none: for
    /// `isocall_blob::census` (a read-only region only loads; no `Pool` can
    /// be built over it).
    pub fn blob_view(&self) -> Option<isocall_ringbuf::ReadOnlyRegion> {
        let p = self.header.blobs;
        if p.size == 0 {
            return None;
        }
        self.mem
            .region_read_only(p.offset as usize, p.size as usize)
            .ok()
            .flatten()
    }

    /// The lifeline word of `side` (see [`crate::sys::lifeline`]): held
    /// by a thread of that side for the connection's life, so the other
    /// side learns of its death before its address space is torn down.
    /// `None` on a segment opened read-only (see
    /// [`lifeline_word`](Self::lifeline_word)).
    pub fn lifeline(&self, side: Side) -> Option<&std::sync::atomic::AtomicU32> {
        self.mem
            .u32_words()
            .and_then(|w| w.get(LIFELINES_AT / 4 + side.index()))
    }

    /// The lifeline word of `side` as it reads now (any segment, read-only
    /// too): the peer's word, display only.
    pub fn lifeline_word(&self, side: Side) -> u32 {
        self.mem
            .load_u32(LIFELINES_AT / 4 + side.index(), Ordering::Acquire)
            .unwrap_or(0)
    }

    /// The creator's words: [`OWNER_WORDS`] 64-bit words of the header
    /// page, between the header and the lifelines, that no part of the
    /// connection uses, for the creator's own counters (a channel's
    /// publisher keeps each subscriber's there, for `isocall inspect`).
    /// `None` on a segment opened read-only (see
    /// [`owner_word`](Self::owner_word)). Both sides can write them: a
    /// reader takes what it reads as the peer's word, display only.
    pub fn owner_words(&self) -> Option<&[std::sync::atomic::AtomicU64]> {
        self.mem
            .u64_words()
            .and_then(|w| w.get(OWNER_AT / 8..OWNER_AT / 8 + OWNER_WORDS))
    }

    /// Creator's word `i` as it reads now (Acquire; any segment, read-only
    /// too), or 0 for `i` past [`OWNER_WORDS`].
    pub fn owner_word(&self, i: usize) -> u64 {
        if i >= OWNER_WORDS {
            return 0;
        }
        self.mem
            .load_u64(OWNER_AT / 8 + i, Ordering::Acquire)
            .unwrap_or(0)
    }

    /// Writes the names of the connection's methods into the free part of
    /// the header page (for the inspector, which has no handshake to learn
    /// them from). Names that do not fit are left out.
    pub fn write_method_table(&self, names: &[&str]) {
        let Some(words) = self.mem.u64_words() else {
            return;
        };
        let room = (PAGE as usize) - METHODS_AT - 4;
        let mut buf = Vec::with_capacity(room);
        let mut count = 0u32;
        for n in names {
            let n = &n.as_bytes()[..n.len().min(255)];
            if buf.len() + 1 + n.len() > room {
                break;
            }
            buf.push(n.len() as u8);
            buf.extend_from_slice(n);
            count += 1;
        }
        let mut all = count.to_le_bytes().to_vec();
        all.extend_from_slice(&buf);
        for (i, chunk) in all.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            words[METHODS_AT / 8 + i].store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
    }

    /// The method names the server wrote with
    /// [`write_method_table`](Self::write_method_table) (read now, so the
    /// peer's words: display only; malformed entries end the list).
    pub fn method_table(&self) -> Vec<String> {
        let bytes: Vec<u8> = (METHODS_AT / 8..PAGE as usize / 8)
            .flat_map(|i| {
                self.mem
                    .load_u64(i, Ordering::Relaxed)
                    .unwrap_or(0)
                    .to_le_bytes()
            })
            .collect();
        let count = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let mut names = Vec::new();
        let mut at = 4;
        while names.len() < count.min(1024) {
            let Some(&len) = bytes.get(at) else { break };
            let Some(name) = bytes.get(at + 1..at + 1 + len as usize) else {
                break;
            };
            names.push(String::from_utf8_lossy(name).into_owned());
            at += 1 + len as usize;
        }
        names
    }

    /// Records this process as `side`, attached.
    pub fn attach_side(&self, side: Side) {
        self.set_side(side, std::process::id(), SIDE_ATTACHED);
    }

    /// Records that `side` closed cleanly.
    pub fn close_side(&self, side: Side) {
        self.set_side(side, std::process::id(), SIDE_CLOSED);
    }

    fn set_side(&self, side: Side, pid: u32, state: u32) {
        let Some(words) = self.mem.u32_words() else {
            return;
        };
        let w = &words[SIDES_WORD32 + 2 * side.index()..];
        w[0].store(pid, Ordering::Relaxed);
        w[1].store(state, Ordering::Release);
    }

    /// The live per-side state (read now from shared memory, so the peer's
    /// word: display only).
    pub fn side_state(&self, side: Side) -> SideState {
        let at = SIDES_WORD32 + 2 * side.index();
        SideState {
            state: self.mem.load_u32(at + 1, Ordering::Acquire).unwrap_or(0),
            pid: self.mem.load_u32(at, Ordering::Relaxed).unwrap_or(0),
        }
    }
}

/// Copies the header out of shared memory with one atomic load per word,
/// magic first (Acquire).
fn read_header(mem: &SharedMem) -> Result<SegmentHeader, SegmentError> {
    if mem.len() < PAGE as usize {
        return Err(SegmentError::SizeMismatch {
            header: PAGE,
            file: mem.len() as u64,
        });
    }
    let magic = mem.load_u64(0, Ordering::Acquire).unwrap_or(0);
    if magic != MAGIC {
        return Err(SegmentError::BadMagic { found: magic });
    }
    let mut words = [0u64; HEADER_WORDS];
    words[0] = magic;
    for (i, w) in words.iter_mut().enumerate().skip(1) {
        *w = mem.load_u64(i, Ordering::Relaxed).unwrap_or(0);
    }
    Ok(bytemuck::cast(words))
}

fn validate(h: &SegmentHeader, file: u64) -> Result<(), SegmentError> {
    if h.version != LAYOUT_VERSION {
        return Err(SegmentError::VersionMismatch { found: h.version });
    }
    let expected = std::mem::size_of::<SegmentHeader>() as u32;
    if h.header_size != expected {
        return Err(SegmentError::BadHeaderSize {
            found: h.header_size,
            expected,
        });
    }
    if h.total_size != file {
        return Err(SegmentError::SizeMismatch {
            header: h.total_size,
            file,
        });
    }
    let parts = [
        ("ring c2s", h.ring_c2s),
        ("ring s2c", h.ring_s2c),
        ("blob pool", h.blobs),
    ];
    let mut spans = Vec::with_capacity(3);
    for (name, p) in parts {
        let end = p.offset.checked_add(round_up(p.size.min(u64::MAX - PAGE)));
        let ok =
            p.offset >= PAGE && p.offset.is_multiple_of(PAGE) && end.is_some_and(|e| e <= file);
        if !ok {
            return Err(SegmentError::PartOutOfBounds {
                part: name,
                offset: p.offset,
                size: p.size,
                total: file,
            });
        }
        if p.size > 0 {
            spans.push((name, p.offset, p.offset + p.size));
        }
    }
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            if a.1 < b.2 && b.1 < a.2 {
                return Err(SegmentError::Overlap { a: a.0, b: b.0 });
            }
        }
    }
    let cap = usize::try_from(h.ring_capacity).unwrap_or(0);
    let ring = ring_region_size(cap)
        .filter(|_| cap >= 4096)
        .map(|r| r as u64);
    if ring.is_none() || ring != Some(h.ring_c2s.size) || ring != Some(h.ring_s2c.size) {
        return Err(SegmentError::BadRings {
            capacity: h.ring_capacity,
            c2s: h.ring_c2s.size,
            s2c: h.ring_s2c.size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Segment {
        Segment::create(
            "isocall:test:seg",
            &SegmentLayout {
                ring_capacity: 4096,
                blobs: PoolConfig::new().class(64, 16),
            },
        )
        .unwrap()
    }

    fn reopen(s: &Segment) -> Result<Segment, SegmentError> {
        Segment::open(s.fd().try_clone_to_owned().unwrap())
    }

    /// Overwrites header word `i` through a second mapping, then reopens.
    fn corrupt(word: usize, value: u64) -> SegmentError {
        let s = fresh();
        let scribbler = SharedMem::open(s.fd().try_clone_to_owned().unwrap()).unwrap();
        scribbler.u64_words().unwrap()[word].store(value, Ordering::Release);
        reopen(&s).unwrap_err()
    }

    #[test]
    fn open_sees_the_creators_header_and_rings() {
        let s = fresh();
        let o = reopen(&s).unwrap();
        assert_eq!(o.header(), s.header());
        assert_eq!(
            o.layout(),
            SegmentLayout {
                ring_capacity: 4096,
                blobs: PoolConfig::new().class(64, 16)
            }
        );
        // Two mappings of one memfd: a word stored through one (a
        // scribbler's, past the header page) is seen by the other's view.
        let tail = s.header().ring_c2s.offset as usize / 8;
        let scribbler = SharedMem::open(s.fd().try_clone_to_owned().unwrap()).unwrap();
        scribbler.u64_words().unwrap()[tail].store(42, Ordering::Release);
        let view = o.ring_view(Direction::ClientToServer).unwrap();
        assert_eq!(view.load_u64(0), 42);
        s.attach_side(Side::Server);
        assert_eq!(o.side_state(Side::Server).state, SIDE_ATTACHED);
        assert_eq!(o.side_state(Side::Server).pid, std::process::id());
    }

    #[test]
    fn the_blob_pool_is_shared_and_checked_at_open() {
        let s = fresh();
        let o = reopen(&s).unwrap();
        let server = s.blob_pool(Side::Server).unwrap().unwrap();
        let client = o.blob_pool(Side::Client).unwrap().unwrap();
        let mut b = client.alloc(5).unwrap();
        b.copy_from_slice(b"hello");
        let h = b.send().unwrap();
        assert_eq!(&server.accept(&h).unwrap()[..], b"hello");
        // A scribbled pool header: the next opener refuses the segment.
        let p = s.header().blobs.offset as usize / 8;
        let scribbler = SharedMem::open(s.fd().try_clone_to_owned().unwrap()).unwrap();
        scribbler.u64_words().unwrap()[p].store(7, Ordering::Release);
        let e = reopen(&s).unwrap_err();
        assert!(matches!(e, SegmentError::Blobs(_)), "{e}");
        assert!(e.to_string().contains("bad magic"), "{e}");
        // No pool: `None`.
        let none = Segment::create("isocall:test:nopool", &SegmentLayout::default()).unwrap();
        assert!(none.blob_pool(Side::Client).unwrap().is_none());
    }

    #[test]
    fn the_method_table_round_trips() {
        let s = fresh();
        s.write_method_table(&["add", "format", ""]);
        let o = reopen(&s).unwrap();
        assert_eq!(o.method_table(), ["add", "format", ""]);
        // More than fits: a prefix.
        let long: Vec<String> = (0..100)
            .map(|i| format!("method-number-{i:04}-{}", "x".repeat(40)))
            .collect();
        let refs: Vec<&str> = long.iter().map(String::as_str).collect();
        s.write_method_table(&refs);
        let got = o.method_table();
        assert!(!got.is_empty() && got.len() < 100);
        assert_eq!(got[..], long[..got.len()]);
    }

    #[test]
    fn the_owner_words_are_shared_and_leave_the_header_alone() {
        let s = fresh();
        let words = s.owner_words().expect("writable");
        assert_eq!(words.len(), OWNER_WORDS);
        for (i, w) in words.iter().enumerate() {
            w.store(u64::MAX - i as u64, Ordering::Release);
        }
        let ro = Segment::open_read_only(s.fd().try_clone_to_owned().unwrap()).unwrap();
        assert!(ro.owner_words().is_none());
        assert_eq!(ro.owner_word(3), u64::MAX - 3);
        assert_eq!(ro.owner_word(OWNER_WORDS), 0);
        // The header and the lifelines are untouched: a reopen checks out.
        let o = reopen(&s).unwrap();
        assert_eq!(o.header(), s.header());
        assert_eq!(o.lifeline_word(Side::Client), 0);
    }

    #[test]
    fn bad_layouts_are_errors() {
        for cap in [0, 1000, 2048, 4095, 1 << 31] {
            let l = SegmentLayout {
                ring_capacity: cap,
                blobs: PoolConfig::new(),
            };
            assert!(
                matches!(
                    Segment::create("x", &l),
                    Err(SegmentError::BadCapacity { .. })
                ),
                "{cap}"
            );
        }
    }

    #[test]
    fn unsealed_memfd_is_refused() {
        let fd = rustix::fs::memfd_create(
            "isocall:test:unsealed",
            rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&fd, 65536).unwrap();
        assert!(matches!(Segment::open(fd), Err(SegmentError::NotSealed(_))));
    }

    #[test]
    fn corrupt_headers_are_refused_each_with_its_error() {
        assert!(matches!(corrupt(0, 7), SegmentError::BadMagic { found: 7 }));
        assert!(matches!(
            corrupt(1, 2 | (104 << 32)),
            SegmentError::VersionMismatch { found: 2 }
        ));
        assert!(matches!(
            corrupt(1, 1 | (64 << 32)),
            SegmentError::BadHeaderSize { found: 64, .. }
        ));
        assert!(matches!(
            corrupt(2, 1 << 40),
            SegmentError::SizeMismatch { .. }
        ));
        // ring c2s offset (word 4) beyond the end, then misaligned.
        assert!(matches!(
            corrupt(4, 1 << 30),
            SegmentError::PartOutOfBounds {
                part: "ring c2s",
                ..
            }
        ));
        assert!(matches!(
            corrupt(4, 4097),
            SegmentError::PartOutOfBounds {
                part: "ring c2s",
                ..
            }
        ));
        // ring s2c moved onto ring c2s.
        assert!(matches!(corrupt(6, 4096), SegmentError::Overlap { .. }));
        // capacity not matching the ring sizes.
        assert!(matches!(
            corrupt(3, 8192),
            SegmentError::BadRings { capacity: 8192, .. }
        ));
        // blob pool claiming more than the file.
        assert!(matches!(
            corrupt(9, u64::MAX),
            SegmentError::PartOutOfBounds {
                part: "blob pool",
                ..
            }
        ));
    }

    #[test]
    fn read_only_open_cannot_hand_out_rings_but_can_be_read() {
        let s = fresh();
        let ro = Segment::open_read_only(s.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(
            ro.ring_view(Direction::ServerToClient).unwrap().len(),
            ring_region_size(4096).unwrap()
        );
    }
}
