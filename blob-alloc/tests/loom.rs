//! Loom model of the pool's lock-free protocol: allocation and freeing on
//! one class from two threads at once (each slot claimed by one thread at a
//! time, nothing lost), and a blob sent from one thread and accepted by the
//! other while the sender keeps allocating.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p isocall-blob --release --test loom`.
#![cfg(loom)]
#![allow(unsafe_code)]

use std::cell::UnsafeCell;

use isocall_blob::{Pool, PoolConfig, Side};
use isocall_ringbuf::sync::{AtomicU32, AtomicU64, Ordering};
use isocall_ringbuf::{ReadRegion, Region};
use std::sync::Arc;

/// A pool region in which every 8-byte word is a loom atomic (so loom
/// explores the orderings of the bitmap and state words); slot bytes are
/// plain memory the tests do not touch.
struct LoomRegion {
    words: Vec<AtomicU64>,
    bytes: UnsafeCell<Vec<u8>>,
}

// SAFETY: the words are loom atomics; the bytes are never accessed.
unsafe impl Send for LoomRegion {}
// SAFETY: as above.
unsafe impl Sync for LoomRegion {}

impl LoomRegion {
    fn new(len: usize) -> Self {
        LoomRegion {
            words: (0..len / 8).map(|_| AtomicU64::new(0)).collect(),
            bytes: UnsafeCell::new(vec![0; len]),
        }
    }
}

impl ReadRegion for LoomRegion {
    fn len(&self) -> usize {
        self.words.len() * 8
    }
    fn load_u64(&self, off: usize) -> u64 {
        self.u64_at(off).load(Ordering::Relaxed)
    }
    fn load_u32(&self, _off: usize) -> u32 {
        unreachable!("the pool uses no u32 words")
    }
    fn read_bytes(&self, _off: usize, _buf: &mut [u8]) {
        unreachable!("the pool reads its bytes in place")
    }
}

// SAFETY: each 8-aligned offset maps to one fixed loom atomic; the pool uses
// no u32 words; the byte buffer is as long as the region.
unsafe impl Region for LoomRegion {
    fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert_eq!(off % 8, 0);
        &self.words[off / 8]
    }
    fn u32_at(&self, _off: usize) -> &AtomicU32 {
        unreachable!("the pool uses no u32 words")
    }
    // SAFETY: `Region::bytes` contract; the body checks nothing more than the
    // caller promised (bounds) and the model never writes these bytes.
    unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        // SAFETY: in bounds by the caller's contract; never written here.
        unsafe { &(&*self.bytes.get())[off..off + len] }
    }
    unsafe fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
        // SAFETY: in bounds and exclusive by the caller's contract.
        unsafe { &mut (&mut *self.bytes.get())[off..off + len] }
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    // Exhaustive (no preemption bound): the models are small.
    let b = loom::model::Builder::new();
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = runs.clone();
    b.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    eprintln!(
        "loom explored {} executions",
        runs.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// Two pools (sides A and B) over one loom region with `slots` slots of
/// 64 bytes, plus a per-slot "owner count" to catch double ownership.
fn setup(
    slots: usize,
) -> (
    Arc<Pool<Arc<LoomRegion>>>,
    Arc<Pool<Arc<LoomRegion>>>,
    Arc<Vec<AtomicU32>>,
) {
    let config = PoolConfig::new().class(64, slots);
    let region = Arc::new(LoomRegion::new(config.region_size().unwrap()));
    let a = Pool::create(region.clone(), &config, Side::A).unwrap();
    let b = Pool::open(region, Side::B).unwrap();
    let owners = (0..slots).map(|_| AtomicU32::new(0)).collect();
    (Arc::new(a), Arc::new(b), Arc::new(owners))
}

fn use_once(p: &Pool<Arc<LoomRegion>>, owners: &[AtomicU32]) -> bool {
    match p.alloc(8) {
        Ok(blob) => {
            let o = &owners[blob.handle().slot as usize];
            assert_eq!(o.fetch_add(1, Ordering::Relaxed), 0, "slot held twice");
            o.fetch_sub(1, Ordering::Relaxed);
            drop(blob);
            true
        }
        Err(_) => false,
    }
}

#[test]
fn alloc_free_from_two_threads() {
    model(|| {
        let (a, b, owners) = setup(2);
        let t = {
            let (b, owners) = (b.clone(), owners.clone());
            loom::thread::spawn(move || {
                // With two slots and one held at a time per thread, every
                // allocation succeeds.
                assert!(use_once(&b, &owners));
                assert!(use_once(&b, &owners));
            })
        };
        assert!(use_once(&a, &owners));
        t.join().unwrap();
        let st = a.stats();
        assert_eq!(st.classes[0].free, 2);
        // Nothing was lost from the index: both slots can be held again.
        let x = a.alloc(1).unwrap();
        let y = a.alloc(1).unwrap();
        assert_ne!(x.handle().slot, y.handle().slot);
    });
}

#[test]
fn contended_single_slot() {
    model(|| {
        let (a, b, owners) = setup(1);
        let t = {
            let (b, owners) = (b.clone(), owners.clone());
            loom::thread::spawn(move || use_once(&b, &owners))
        };
        let mine = use_once(&a, &owners);
        let theirs = t.join().unwrap();
        assert!(mine || theirs, "one slot, neither thread got it");
        assert_eq!(a.stats().classes[0].free, 1);
        assert!(a.alloc(1).is_ok(), "the slot is back in the index");
    });
}

#[test]
fn send_accept_while_allocating() {
    model(|| {
        let (a, b, _) = setup(2);
        let mailbox = Arc::new(AtomicU64::new(u64::MAX));
        let blob = a.alloc(8).unwrap();
        let h = blob.send().unwrap();
        let t = {
            let (b, mailbox) = (b.clone(), mailbox.clone());
            loom::thread::spawn(move || {
                let got = b.accept(&h).unwrap();
                drop(got);
                mailbox.store(u64::from(h.slot), Ordering::Release);
            })
        };
        // Meanwhile A allocates, and once B says it freed its blob, finds
        // a second slot too.
        // There is always a free slot for A (B holds at most one).
        let other = a.alloc(8).unwrap();
        let freed = mailbox.load(Ordering::Acquire) != u64::MAX;
        let again = a.alloc(8);
        if freed {
            assert!(again.is_ok(), "a freed slot was not found");
        }
        if let Ok(x) = &again {
            assert_ne!(x.handle().slot, other.handle().slot, "slot held twice");
        }
        drop(again);
        drop(other);
        t.join().unwrap();
        assert_eq!(a.stats().classes[0].free, 2);
    });
}

#[test]
fn reclaim_while_the_survivor_allocates() {
    model(|| {
        let (a, b, owners) = setup(2);
        // B dies holding a slot: its blob is gone with its process (and its
        // process's record of it), the state word says B holds the slot.
        let gone = b.alloc(8).unwrap();
        let h = gone.handle();
        drop(gone);
        let states = a.region().u64_at(64 + 24).load(Ordering::Relaxed) as usize;
        a.region()
            .u64_at(states + 8 * h.slot as usize)
            .store(u64::from(h.generation) << 32 | 2, Ordering::Release);
        let t = {
            let (a, owners) = (a.clone(), owners.clone());
            loom::thread::spawn(move || {
                use_once(&a, &owners);
                use_once(&a, &owners);
            })
        };
        let r = a.reclaim(Side::B);
        assert_eq!(r.held, 1);
        t.join().unwrap();
        assert_eq!(a.stats().classes[0].free, 2);
        let x = a.alloc(1).unwrap();
        let y = a.alloc(1).unwrap();
        assert_ne!(x.handle().slot, y.handle().slot);
    });
}
