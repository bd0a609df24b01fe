//! `segment_header`: [`Segment::open`] of a memfd whose header a peer
//! wrote.

use std::os::unix::fs::FileExt;

use isocall::raw::sys::SharedMem;
use isocall::raw::{Direction, PAGE, Segment, SegmentHeader, Side};
use isocall::ring::wait::SpinParker;
use isocall::ring::{Consumer, RING_CONTROL_BYTES, ReadRegion};

use super::ring_frames::drain;
use super::{region_base, within_addr};

/// Largest memfd the segment target makes.
pub const MAX_SEGMENT: u64 = 4 << 20;

/// Size of the memfd for a segment input: the header's `total_size` (bytes
/// 16..24) if it is from one page to [`MAX_SEGMENT`], or else enough whole
/// pages for the input.
pub fn segment_file_size(data: &[u8]) -> u64 {
    let total = data
        .get(16..24)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
    if (PAGE..=MAX_SEGMENT).contains(&total) {
        total
    } else {
        (data.len() as u64)
            .div_ceil(PAGE)
            .clamp(1, MAX_SEGMENT / PAGE)
            * PAGE
    }
}

/// `segment_header`: a sealed memfd of [`segment_file_size`] bytes whose
/// header page holds the input's first 4 KiB; the input's bytes after that,
/// if any, are written where the header says the blob pool is (so the pool
/// header a peer formatted is fuzzed too). Then [`Segment::open`], as a
/// client opens the memfd a server sent. An opened segment must hold the
/// header that is in the file, parts that lie inside it, rings that attach
/// (empty or `Corrupt`, never a panic) and a blob pool that can be counted
/// and allocated from; a read-only open must agree.
pub fn segment_header(data: &[u8]) {
    let size = segment_file_size(data);
    let mem = SharedMem::create("isocall:fuzz:segment", size as usize).expect("memfd");
    let file = std::fs::File::from(mem.fd().try_clone_to_owned().expect("dup"));
    let page = &data[..data.len().min(PAGE as usize)];
    file.write_all_at(page, 0).expect("write header page");
    if let Some(rest) = data.get(PAGE as usize..) {
        let at = data
            .get(64..72)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
        if at < size {
            let n = rest.len().min((size - at) as usize);
            file.write_all_at(&rest[..n], at).expect("write pool");
        }
    }
    let seg = match Segment::open(mem.fd().try_clone_to_owned().expect("dup")) {
        Ok(s) => s,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let h = *seg.header();
    let mut raw = [0u8; std::mem::size_of::<SegmentHeader>()];
    let n = page.len().min(raw.len());
    raw[..n].copy_from_slice(&page[..n]);
    assert_eq!(
        bytemuck::bytes_of(&h),
        &raw[..],
        "the header is not the file's"
    );
    assert_eq!(h.total_size, size);
    let cap = seg.layout().ring_capacity;
    assert!(cap.is_power_of_two() && cap >= 4096);
    let parts = [h.ring_c2s, h.ring_s2c, h.blobs];
    for p in parts {
        assert!(p.offset >= PAGE && p.offset.is_multiple_of(PAGE));
        assert!(p.offset + p.size <= size, "part {p:?} past {size}");
    }
    for dir in [Direction::ClientToServer, Direction::ServerToClient] {
        let region = seg.ring_region(dir);
        assert_eq!(region.len(), RING_CONTROL_BYTES + cap);
        if let Ok(mut rx) = Consumer::attach(region, SpinParker) {
            drain(&mut rx, cap as u64, region_base(&seg.ring_region(dir)));
        }
        if let Some(view) = seg.ring_view(dir) {
            let _ = isocall::ring::snapshot(&view);
        }
    }
    for side in [Side::Client, Side::Server] {
        let _ = seg.side_state(side);
        let _ = seg.lifeline_word(side);
        let _ = seg.lifeline(side);
    }
    let _ = seg.method_table();
    match seg.blob_pool(Side::Server) {
        Ok(Some(pool)) => {
            assert!(h.blobs.size > 0);
            let stats = pool.stats();
            assert_eq!(stats.classes.len(), pool.classes().len());
            let base = region_base(pool.region());
            let len = pool.region().len();
            for c in pool.classes() {
                if let Ok(mut b) = pool.alloc(c.slot_size) {
                    assert!(within_addr(&b, base..base + len));
                    b.fill(0xA5);
                }
            }
        }
        Ok(None) => assert_eq!(h.blobs.size, 0),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let ro = Segment::open_read_only(mem.fd().try_clone_to_owned().expect("dup"))
        .expect("a segment that opens read-write opens read-only");
    assert_eq!(ro.header(), &h);
    if let Some(view) = ro.blob_view() {
        let _ = isocall::blob::census(&view);
    }
}
