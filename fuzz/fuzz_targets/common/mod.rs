//! The bodies of isocall's fuzz targets: one function per decoder of peer
//! input, each taking the fuzzer's bytes and asserting the decoder's
//! contract (no panic, no hang, and any success consistent with the input).
//! Each target's module says how it reads its input and what it checks.
//!
//! Shared by the `cargo fuzz` targets next to this directory (nightly,
//! with libFuzzer) and by the facade's `tests/fuzz_replay.rs` (stable,
//! every file of `fuzz/corpus/<target>/` replayed), through `#[path]`.
//! Besides std it uses only `isocall`, `rkyv` and `bytemuck`, which both
//! crates depend on.

use std::ops::Range;
use std::sync::atomic::Ordering;

use isocall::blob::BlobHandle;
use isocall::ring::Region;

mod blob_handles;
mod body;
mod frame_head;
mod hello;
mod ring_frames;
mod segment_header;
mod stream_frames;
mod stream_hello;
mod udp_datagram;

pub use blob_handles::{BlobOp, blob_handles};
pub use body::{Add, Greeting, Record, Shape, body};
pub use frame_head::frame_head;
pub use hello::hello;
pub use ring_frames::{RING_RAW, RING_ZEROES, ring_frames};
pub use segment_header::segment_header;
pub use stream_frames::stream_frames;
pub use stream_hello::stream_hello;
pub use udp_datagram::udp_datagram;

/// A target's body: takes the fuzzer's bytes, panics on a broken contract.
pub type Target = fn(&[u8]);

/// The targets, by name: the directory names under `fuzz/corpus/` and the
/// binaries under `fuzz/fuzz_targets/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame_head", frame_head),
    ("hello", hello),
    ("segment_header", segment_header),
    ("ring_frames", ring_frames),
    ("blob_handles", blob_handles),
    ("body", body),
    ("stream_frames", stream_frames),
    ("stream_hello", stream_hello),
    ("udp_datagram", udp_datagram),
];

/// Whether to let an input go because it would hit a known bug (`hit`).
///
/// Known bugs are reported and not fixed yet; each has its input in the
/// corpus, listed in `KNOWN_FAILURES` of `tests/fuzz_replay.rs`, whose
/// replay runs it whole and must see it fail. Only while fuzzing
/// (`cargo fuzz` builds with `--cfg fuzzing`) are such inputs let go early,
/// so that the fuzzer looks for other bugs instead of finding the same one
/// again at once. The fix of a bug removes its guard.
#[allow(unexpected_cfgs, dead_code)] // unused while no bug is known
fn known_bug(hit: bool) -> bool {
    cfg!(fuzzing) && hit
}

/// Whether `inner` lies inside `outer`.
fn within(inner: &[u8], outer: &[u8]) -> bool {
    within_addr(
        inner,
        outer.as_ptr() as usize..outer.as_ptr() as usize + outer.len(),
    )
}

/// Whether the bytes of `inner` lie inside the address range `outer`.
fn within_addr(inner: &[u8], outer: Range<usize>) -> bool {
    // An empty slice reads nothing, wherever it points.
    let start = inner.as_ptr() as usize;
    inner.is_empty() || start >= outer.start && start + inner.len() <= outer.end
}

fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// The address of a region's first byte.
fn region_base<R: Region>(r: &R) -> usize {
    isocall::ring::region_key(r)
}

/// The 64-bit word at `off` of `region`, which the fuzz targets write as
/// the peer would (the input's bytes) or read back.
///
/// Every caller uses it while no slice of the region is borrowed (a grant,
/// frame or blob makes its slice on each access, and none is held across
/// these calls), which is what `Region::u64_at` asks.
fn peer_u64<R: Region>(region: &R, off: usize) -> &std::sync::atomic::AtomicU64 {
    // SAFETY: the callers' promise above: no slice of the region is live
    // while the word is.
    unsafe { region.u64_at(off) }
}

/// As [`peer_u64`], for a 32-bit word.
fn peer_u32<R: Region>(region: &R, off: usize) -> &std::sync::atomic::AtomicU32 {
    // SAFETY: as in `peer_u64`.
    unsafe { region.u32_at(off) }
}

/// A little-endian word from up to 8 bytes (missing bytes zero).
fn word(chunk: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..chunk.len()].copy_from_slice(chunk);
    u64::from_le_bytes(w)
}

/// Stores `bytes` into the region from offset `at` (a multiple of 8), one
/// atomic word at a time; what does not fit is left out.
fn fill<R: Region>(region: &R, at: usize, bytes: &[u8]) {
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let off = at + i * 8;
        if off + 8 > region.len() {
            break;
        }
        peer_u64(region, off).store(word(chunk), Ordering::Relaxed);
    }
}

/// As [`fill`], but a last partial word keeps the region's bytes after
/// the input's.
fn fill_bytes<R: Region>(region: &R, at: usize, bytes: &[u8]) {
    let whole = bytes.len() / 8 * 8;
    fill(region, at, &bytes[..whole]);
    let tail = &bytes[whole..];
    let off = at + whole;
    if !tail.is_empty() && off + 8 <= region.len() {
        let w = peer_u64(region, off);
        let mut b = w.load(Ordering::Relaxed).to_le_bytes();
        b[..tail.len()].copy_from_slice(tail);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

/// The fuzzer's bytes, read front to back; past the end, reads give zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_le_bytes([
            b.first().copied().unwrap_or(0),
            b.get(1).copied().unwrap_or(0),
        ])
    }

    fn u64(&mut self) -> u64 {
        word(self.take(8))
    }

    fn handle(&mut self) -> BlobHandle {
        let mut h = [0u8; 16];
        let b = self.take(16);
        h[..b.len()].copy_from_slice(b);
        bytemuck::cast(h)
    }
}
