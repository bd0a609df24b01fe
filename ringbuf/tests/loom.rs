//! Loom models of the ring's memory ordering: publication of frames (header
//! word written last, terminator before it) and the sleep/wake protocol on
//! both wait words (no lost wake-up: a lost one leaves a thread blocked
//! forever, which loom reports as a deadlock).
//!
//! Payload exclusivity is checked too: the region backs each 64-byte line
//! with a `loom::cell::UnsafeCell<()>`, and the ring declares its windows on
//! payload bytes ([`Region::access`]: a grant writes its bytes while it
//! lives, a frame reads its payload while it lives), so a consumer reading
//! a line the producer's write is not ordered before (or a producer reusing
//! a line the consumer still reads) is reported as a causality violation.
//! Frames start on line boundaries and never share a line, so disjoint
//! frames never look like a race. (Weakening the publish's Release store to
//! Relaxed makes these models fail with "Causality violation: Concurrent
//! read and write accesses".)
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p isocall-ringbuf --release --test loom`.
#![cfg(loom)]
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::sync::Arc;

use isocall_ringbuf::layout::{DATA, RING_CONTROL_BYTES};
use isocall_ringbuf::sync::{AtomicU32, AtomicU64, Ordering};
use isocall_ringbuf::wait::{CondvarParker, Parker, WaitStrategy};
use isocall_ringbuf::{Access, Consumer, Producer, ReadRegion, Region};

const CAPACITY: usize = 256;

/// Bytes per tracked line.
const LINE: usize = 64;

/// A ring region whose shared words are loom atomics (so loom explores their
/// orderings), whose payload bytes are plain memory, and whose lines are
/// loom cells that stand for those bytes in loom's race checks.
struct LoomRegion {
    control: Vec<AtomicU64>,
    slots: Vec<AtomicU64>,
    waits: [AtomicU32; 5],
    /// The bytes, each in its own `UnsafeCell`, so that a slice of some of
    /// them never asserts anything about the others.
    bytes: Box<[UnsafeCell<u8>]>,
    /// One loom cell per line of the region: an access to payload bytes is
    /// an access to the cells of the lines it covers.
    lines: Vec<loom::cell::UnsafeCell<()>>,
}

// SAFETY: the words are loom atomics and the line cells loom's; the payload
// bytes are accessed only under the ring's exclusive-access protocol, which
// the line cells check.
unsafe impl Send for LoomRegion {}
// SAFETY: as above.
unsafe impl Sync for LoomRegion {}

impl LoomRegion {
    fn new() -> Self {
        let len = RING_CONTROL_BYTES + CAPACITY;
        LoomRegion {
            control: (0..DATA / 8).map(|_| AtomicU64::new(0)).collect(),
            slots: (0..CAPACITY / 16).map(|_| AtomicU64::new(0)).collect(),
            waits: [(); 5].map(|_| AtomicU32::new(0)),
            bytes: (0..len).map(|_| UnsafeCell::new(0)).collect(),
            lines: (0..len / LINE)
                .map(|_| loom::cell::UnsafeCell::new(()))
                .collect(),
        }
    }

    /// A pointer to byte `off`, after checking that `len` bytes from it lie
    /// in the region.
    fn at(&self, off: usize, len: usize) -> *mut u8 {
        assert!(off + len <= self.bytes.len(), "bytes outside the region");
        UnsafeCell::raw_get(self.bytes[off..].as_ptr())
    }
}

impl ReadRegion for LoomRegion {
    fn len(&self) -> usize {
        RING_CONTROL_BYTES + CAPACITY
    }
    // SAFETY: forwards the caller's promise to `u64_at`, whose own (no
    // slice over the word) it implies for a load.
    unsafe fn load_u64(&self, off: usize) -> u64 {
        // SAFETY: the caller's promise; the words are loom atomics apart
        // from the payload bytes anyway.
        unsafe { self.u64_at(off) }.load(Ordering::Relaxed)
    }
    // SAFETY: as for `load_u64`.
    unsafe fn load_u32(&self, off: usize) -> u32 {
        // SAFETY: as in `load_u64`.
        unsafe { self.u32_at(off) }.load(Ordering::Relaxed)
    }
    // SAFETY: the caller promises no `&mut` view of the range exists.
    unsafe fn read_bytes(&self, off: usize, buf: &mut [u8]) {
        let _reading = self.access(off, buf.len(), false);
        // SAFETY: in bounds (checked by `at`); no `&mut` view of the range
        // exists (the caller's promise), which the access checks.
        buf.copy_from_slice(unsafe {
            std::slice::from_raw_parts(self.at(off, buf.len()), buf.len())
        });
    }
}

// SAFETY: every offset maps to one fixed loom atomic (the same object on
// every call), u32 and u64 words never overlap in the ring's use, and the
// byte buffer is as long as the region.
unsafe impl Region for LoomRegion {
    // SAFETY: the words are loom atomics of their own, apart from the
    // payload bytes: nothing here relies on the caller's promise.
    unsafe fn u64_at(&self, off: usize) -> &AtomicU64 {
        if off >= DATA {
            assert_eq!((off - DATA) % 16, 0, "header slot off the frame grid");
            &self.slots[(off - DATA) / 16]
        } else {
            &self.control[off / 8]
        }
    }
    // SAFETY: as for `u64_at`.
    unsafe fn u32_at(&self, off: usize) -> &AtomicU32 {
        match off {
            isocall_ringbuf::layout::CONS_WAIT => &self.waits[0],
            isocall_ringbuf::layout::PROD_WAIT => &self.waits[1],
            isocall_ringbuf::layout::CONS_FENCING => &self.waits[2],
            isocall_ringbuf::layout::PROD_FENCING => &self.waits[3],
            isocall_ringbuf::layout::CONS_ZEROES => &self.waits[4],
            _ => panic!("no wait word at {off}"),
        }
    }
    // SAFETY: `Region::bytes` contract; the ring hands each byte to one side
    // at a time, which is what the model checks (through `access`).
    unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        // SAFETY: in bounds (checked by `at`); no concurrent writer per the
        // caller's contract; each byte is its own `UnsafeCell`.
        unsafe { std::slice::from_raw_parts(self.at(off, len), len) }
    }
    unsafe fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
        // SAFETY: in bounds (checked by `at`) and exclusive per the caller's
        // contract; each byte is its own `UnsafeCell`.
        unsafe { std::slice::from_raw_parts_mut(self.at(off, len), len) }
    }
    fn access(&self, off: usize, len: usize, write: bool) -> Access {
        let lines = if len == 0 {
            0..0
        } else {
            off / LINE..(off + len - 1) / LINE + 1
        };
        let cells = &self.lines[lines];
        if write {
            Access::writes(cells.iter().map(loom::cell::UnsafeCell::get_mut))
        } else {
            Access::reads(cells.iter().map(loom::cell::UnsafeCell::get))
        }
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

/// A parker that declares asymmetric fencing, so the ring takes its
/// light-fence paths (modelled by loom as full fences).
#[derive(Clone, Default)]
struct AsymParker(CondvarParker);

impl Parker for AsymParker {
    fn announce(&self) -> u32 {
        self.0.announce()
    }
    fn park(&self, word: &AtomicU32, expected: u32, deadline: Option<std::time::Instant>) {
        self.0.park(word, expected, deadline)
    }
    fn unpark(&self, word: &AtomicU32, announced: u32) {
        self.0.unpark(word, announced)
    }
    fn asymmetric(&self) -> bool {
        true
    }
}

/// Sends `lens.len()` frames, in `batch`-sized publishes, each filled with
/// its index; the consumer checks order and contents.
fn stream(lens: &'static [usize], batch: usize) {
    stream_with(lens, batch, CondvarParker::default);
}

fn stream_with<P: Parker + Clone + Send + 'static>(
    lens: &'static [usize],
    batch: usize,
    parker: fn() -> P,
) {
    model(move || {
        let region = Arc::new(LoomRegion::new());
        let parker = parker();
        let mut tx = Producer::attach(region.clone(), parker.clone()).unwrap();
        let mut rx = Consumer::attach(region, parker).unwrap();
        let producer = loom::thread::spawn(move || {
            for (i, &len) in lens.iter().enumerate() {
                let mut g = tx
                    .reserve_wait(1, len, WaitStrategy::Blocking, None, || false)
                    .unwrap();
                g.bytes_mut().fill(i as u8 + 1);
                g.commit_all();
                if (i + 1) % batch == 0 {
                    tx.publish();
                }
            }
            tx.publish();
        });
        for (i, &len) in lens.iter().enumerate() {
            let frame = rx.wait(WaitStrategy::Blocking, None, || false).unwrap();
            assert_eq!(frame.len(), len);
            assert!(frame.payload().iter().all(|&b| b == i as u8 + 1));
            frame.release();
        }
        producer.join().unwrap();
        assert!(rx.peek().unwrap().is_none());
    });
}

#[test]
fn frames_arrive_in_order_and_whole() {
    stream(&[8, 24], 1);
}

#[test]
fn a_batch_becomes_visible_with_one_publish() {
    stream(&[8, 8, 8], 3);
}

#[test]
fn wrap_with_padding_and_full_ring_wakes_the_producer() {
    // In 256 bytes: a 128-byte frame, a 64-byte one, then a 128-byte one
    // that does not fit before the end: a padding frame, then it waits for
    // room at the start.
    stream(&[100, 8, 100], 1);
}

#[test]
fn batched_releases_reach_a_producer_waiting_for_room() {
    // 64-byte frames: the consumer publishes its head every release (a
    // quarter of 256 bytes) or when it finds the ring empty; the producer
    // fills the ring and must still be woken.
    stream(&[8, 8, 8, 8, 8, 8, 8, 8, 8], 1);
}

#[test]
fn asymmetric_fencing_paths_keep_every_wake_up() {
    stream_with(&[100, 8, 100], 1, AsymParker::default);
}
