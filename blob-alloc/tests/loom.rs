//! Loom model of the pool's lock-free protocol: allocation and freeing on
//! one class from two threads at once (each slot claimed by one thread at a
//! time, nothing lost), a blob sent from one thread and accepted by the
//! other while the sender keeps allocating; and shared slots: the last two
//! references given up at once (the slot freed exactly once, and after
//! both reads), a release racing a reclaim of another party's reference,
//! and an accept racing the publisher's release of its own.
//!
//! The sides and parties stand for processes: each pool handle is on its own
//! view of the region ([`Region::process`]), so each keeps its own record
//! of the slots it holds, and only the shared state words order one side's
//! use of a slot before the other's, as between real processes. Payload
//! exclusivity is checked: every blob writes its slot, and the region backs
//! each 64-byte line with a `loom::cell::UnsafeCell<()>` that a blob holds
//! (through [`Region::access`]) for as long as it lives, so two blobs of a
//! slot whose lives the protocol does not order are reported as a data
//! race. (Weakening `send`'s Release to Relaxed makes
//! `a_handle_passed_without_ordering` fail with "Causality violation:
//! Concurrent write accesses"; weakening the free's Release, four models.)
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p isocall-blob --release --test loom`.
#![cfg(loom)]
#![allow(unsafe_code)]

use std::cell::UnsafeCell;

use isocall_blob::{BlobMut, Parties, Party, Pool, PoolConfig, SharedHandle, Side, SlotState};
use isocall_ringbuf::sync::{AtomicU32, AtomicU64, Ordering};
use isocall_ringbuf::{Access, ReadRegion, Region};
use std::sync::Arc;

/// Bytes per tracked line (slots are multiples of it).
const LINE: usize = 64;

/// What both processes' views of a pool region share: every 8-byte word
/// as a loom atomic (so loom explores the orderings of the bitmap and state
/// words), the bytes as plain memory, and one loom cell per line standing
/// for those bytes in loom's race checks.
struct Shared {
    words: Vec<AtomicU64>,
    bytes: Box<[UnsafeCell<u8>]>,
    lines: Vec<loom::cell::UnsafeCell<()>>,
}

/// One process's view of the region.
#[derive(Clone)]
struct LoomRegion {
    shared: Arc<Shared>,
    process: usize,
}

// SAFETY: the words are loom atomics and the line cells loom's; the bytes
// are accessed only by the blob that holds their slot, which the line cells
// check.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl LoomRegion {
    fn new(len: usize) -> Self {
        LoomRegion {
            shared: Arc::new(Shared {
                words: (0..len / 8).map(|_| AtomicU64::new(0)).collect(),
                bytes: (0..len).map(|_| UnsafeCell::new(0)).collect(),
                lines: (0..len / LINE)
                    .map(|_| loom::cell::UnsafeCell::new(()))
                    .collect(),
            }),
            process: 0,
        }
    }

    /// The same bytes, as mapped by `process`.
    fn view(&self, process: usize) -> Self {
        LoomRegion {
            shared: self.shared.clone(),
            process,
        }
    }

    /// A pointer to byte `off`, after checking that `len` bytes from it lie
    /// in the region.
    fn at(&self, off: usize, len: usize) -> *mut u8 {
        assert!(
            off + len <= self.shared.bytes.len(),
            "bytes outside the region"
        );
        UnsafeCell::raw_get(self.shared.bytes[off..].as_ptr())
    }
}

impl ReadRegion for LoomRegion {
    fn len(&self) -> usize {
        self.shared.words.len() * 8
    }
    // SAFETY: forwards the caller's promise to `u64_at`, whose own (no
    // slice over the word) it implies for a load.
    unsafe fn load_u64(&self, off: usize) -> u64 {
        // SAFETY: the caller's promise; the words are loom atomics apart
        // from the payload bytes anyway.
        unsafe { self.u64_at(off) }.load(Ordering::Relaxed)
    }
    // SAFETY: never called.
    unsafe fn load_u32(&self, _off: usize) -> u32 {
        unreachable!("the pool uses no u32 words")
    }
    // SAFETY: never called.
    unsafe fn read_bytes(&self, _off: usize, _buf: &mut [u8]) {
        unreachable!("the pool reads its bytes in place")
    }
}

// SAFETY: each 8-aligned offset maps to one fixed loom atomic; the pool uses
// no u32 words; the byte buffer is as long as the region, each byte its own
// `UnsafeCell`; the views of one region differ only in the modelled process.
unsafe impl Region for LoomRegion {
    // SAFETY: the words are loom atomics of their own, apart from the
    // payload bytes: nothing here relies on the caller's promise.
    unsafe fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert_eq!(off % 8, 0);
        &self.shared.words[off / 8]
    }
    // SAFETY: never called.
    unsafe fn u32_at(&self, _off: usize) -> &AtomicU32 {
        unreachable!("the pool uses no u32 words")
    }
    // SAFETY: `Region::bytes` contract; a blob's bytes are its alone while
    // it lives, which the model checks (through `access`).
    unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        // SAFETY: in bounds (checked by `at`); no concurrent writer per the
        // caller's contract.
        unsafe { std::slice::from_raw_parts(self.at(off, len), len) }
    }
    unsafe fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
        // SAFETY: in bounds (checked by `at`) and exclusive per the caller's
        // contract.
        unsafe { std::slice::from_raw_parts_mut(self.at(off, len), len) }
    }
    fn access(&self, off: usize, len: usize, write: bool) -> Access {
        let lines = if len == 0 {
            0..0
        } else {
            off / LINE..(off + len - 1) / LINE + 1
        };
        let cells = &self.shared.lines[lines];
        if write {
            Access::writes(cells.iter().map(loom::cell::UnsafeCell::get_mut))
        } else {
            Access::reads(cells.iter().map(loom::cell::UnsafeCell::get))
        }
    }
    fn process(&self) -> usize {
        self.process
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    // Exhaustive (no preemption bound): the models are small.
    explore(loom::model::Builder::new(), f);
}

/// For a model of three threads, whose every interleaving is too many to
/// run: every one with at most `bound` preemptions (the bugs loom finds
/// need two or three).
fn model_bounded(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    explore(b, f);
}

fn explore(b: loom::model::Builder, f: impl Fn() + Sync + Send + 'static) {
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

type P = Pool<LoomRegion>;
type Owners = Arc<Vec<AtomicU32>>;

/// Two pools (sides A and B, two modelled processes) over one loom region
/// with `slots` slots of 64 bytes, plus a per-slot "owner count" to catch
/// double ownership.
fn setup(slots: usize) -> (Arc<P>, Arc<P>, Owners) {
    let config = PoolConfig::new().class(64, slots);
    let region = LoomRegion::new(config.region_size().unwrap());
    let a = Pool::create(region.view(0), &config, Side::A).unwrap();
    let b = Pool::open(region.view(1), Side::B).unwrap();
    let owners = (0..slots).map(|_| AtomicU32::new(0)).collect();
    (Arc::new(a), Arc::new(b), Arc::new(owners))
}

/// Allocates a blob, writes all of it, checks that it is the slot's only
/// holder, and frees it.
fn use_once(p: &P, owners: &[AtomicU32]) -> bool {
    match p.alloc(8) {
        Ok(mut blob) => {
            let o = &owners[blob.handle().slot as usize];
            assert_eq!(o.fetch_add(1, Ordering::Relaxed), 0, "slot held twice");
            blob.fill(0xA5);
            assert!(blob.iter().all(|&x| x == 0xA5));
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
        let mut blob = a.alloc(8).unwrap();
        blob.copy_from_slice(b"for B...");
        let h = blob.send().unwrap();
        let t = {
            let (b, mailbox) = (b.clone(), mailbox.clone());
            loom::thread::spawn(move || {
                let mut got = b.accept_mut(&h).unwrap();
                assert_eq!(&got[..], b"for B...");
                got.fill(0);
                drop(got);
                mailbox.store(u64::from(h.slot), Ordering::Release);
            })
        };
        // Meanwhile A allocates, and once B says it freed its blob, finds
        // a second slot too.
        // There is always a free slot for A (B holds at most one).
        let mut other = a.alloc(8).unwrap();
        other.fill(1);
        let freed = mailbox.load(Ordering::Acquire) != u64::MAX;
        let mut again = a.alloc(8);
        if freed {
            assert!(again.is_ok(), "a freed slot was not found");
        }
        if let Ok(x) = &mut again {
            assert_ne!(x.handle().slot, other.handle().slot, "slot held twice");
            // The slot B freed: its writes are ordered before ours.
            x.fill(2);
        }
        drop(again);
        drop(other);
        t.join().unwrap();
        assert_eq!(a.stats().classes[0].free, 2);
    });
}

#[test]
fn a_handle_passed_without_ordering() {
    // The handle travels through a Relaxed word, so only the pool's own
    // orderings (send's Release, accept's Acquire; free's Release, the
    // claim's Acquire) put A's writes before B's reads and B's writes
    // before A's next use of the slot. (Weaken either pair and loom reports
    // the race on the slot's bytes.)
    model(|| {
        let (a, b, _) = setup(1);
        let mailbox = Arc::new(AtomicU64::new(u64::MAX));
        let t = {
            let (b, mailbox) = (b.clone(), mailbox.clone());
            loom::thread::spawn(move || {
                let v = loop {
                    match mailbox.load(Ordering::Relaxed) {
                        u64::MAX => loom::thread::yield_now(),
                        v => break v,
                    }
                };
                let h = isocall_blob::BlobHandle {
                    class: 0,
                    slot: v as u32,
                    generation: (v >> 32) as u32,
                    len: 8,
                };
                let mut got = b.accept_mut(&h).unwrap();
                assert_eq!(&got[..], &[7; 8]);
                got.fill(0);
            })
        };
        let mut blob = a.alloc(8).unwrap();
        blob.fill(7);
        let h = blob.send().unwrap();
        mailbox.store(
            u64::from(h.generation) << 32 | u64::from(h.slot),
            Ordering::Relaxed,
        );
        // The one slot comes back once B drops its blob.
        let mut again = loop {
            match a.alloc(8) {
                Ok(x) => break x,
                Err(_) => loom::thread::yield_now(),
            }
        };
        again.fill(9);
        drop(again);
        t.join().unwrap();
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
        // SAFETY: the class descriptor's states offset and a slot's state
        // word are pool metadata, never a blob's bytes (and a loom region's
        // words are apart from its bytes anyway).
        let states = unsafe { a.region().u64_at(64 + 24) }.load(Ordering::Relaxed) as usize;
        // SAFETY: as above.
        unsafe { a.region().u64_at(states + 8 * h.slot as usize) }
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

fn party(id: usize) -> Party {
    Party::new(id).unwrap()
}

/// A publisher (party 0) and two subscribers (parties 1 and 2), each its
/// own modelled process, over one loom region with `slots` slots of 64
/// bytes.
fn fan_out(slots: usize) -> [Arc<P>; 3] {
    let config = PoolConfig::new().class(64, slots);
    let region = LoomRegion::new(config.region_size().unwrap());
    let publisher = Pool::create_as(region.view(0), &config, Party::PUBLISHER).unwrap();
    let one = Pool::open_as(region.view(1), party(1)).unwrap();
    let two = Pool::open_as(region.view(2), party(2)).unwrap();
    [Arc::new(publisher), Arc::new(one), Arc::new(two)]
}

/// A mailbox for a shared handle (class 0, 64 bytes), passed with Relaxed
/// stores and loads: it orders nothing, so only the pool's own orderings
/// put the publisher's writes before the readers' reads.
struct Mailbox(AtomicU64);

impl Mailbox {
    fn new() -> Arc<Mailbox> {
        Arc::new(Mailbox(AtomicU64::new(u64::MAX)))
    }

    fn post(&self, h: &SharedHandle) {
        let v = u64::from(h.generation) << 32 | u64::from(h.slot);
        self.0.store(v, Ordering::Relaxed);
    }

    fn wait(&self) -> SharedHandle {
        let v = loop {
            match self.0.load(Ordering::Relaxed) {
                u64::MAX => loom::thread::yield_now(),
                v => break v,
            }
        };
        SharedHandle {
            class: 0,
            slot: v as u32,
            generation: (v >> 32) as u32,
            len: 64,
        }
    }
}

/// A subscriber that waits for a handle, accepts its reference (which must
/// succeed: nobody else gives it up), reads every byte, and drops it.
fn reader(pool: Arc<P>, mailbox: Arc<Mailbox>, byte: u8) -> loom::thread::JoinHandle<()> {
    loom::thread::spawn(move || {
        let h = mailbox.wait();
        let got = pool.accept_shared(&h).unwrap();
        assert!(got.iter().all(|&x| x == byte), "read a byte not written");
    })
}

/// Allocates the one slot again once every reference to it is given up
/// (yielding until then), and writes all of it: loom reports a race if
/// a reader's reads are not ordered before these writes.
fn reuse(p: &P) -> BlobMut<'_, LoomRegion> {
    let mut blob = loop {
        match p.alloc(64) {
            Ok(b) => break b,
            Err(_) => loom::thread::yield_now(),
        }
    };
    blob.fill(9);
    blob
}

/// After the readers: the slot is held by the publisher's new blob, one
/// generation on: not freed a second time under it.
fn freed_once(p: &P, blob: &BlobMut<'_, LoomRegion>, h: &SharedHandle) {
    assert_eq!(blob.handle().generation, h.generation + 1);
    assert_eq!(
        p.slot_state(0, 0),
        Some((SlotState::Held(Side::A), h.generation + 1)),
        "a late release freed the slot again"
    );
}

#[test]
fn the_last_two_references_given_up_at_once() {
    // The readers get the handle as they start (the two models below pass
    // it with no ordering: there the share's Release and the accept's
    // Acquire alone order the bytes); here what is modelled is the two
    // releases racing, and the publisher waiting for the slot to come back.
    model_bounded(3, || {
        let [publisher, one, two] = fan_out(1);
        let mut blob = publisher.alloc(64).unwrap();
        blob.fill(7);
        let h = blob.share(Parties::from(party(1)).with(party(2))).unwrap();
        let readers = [one, two].map(|p| {
            loom::thread::spawn(move || {
                let got = p.accept_shared(&h).unwrap();
                assert!(got.iter().all(|&x| x == 7), "read a byte not written");
            })
        });
        // The slot comes back exactly once, after both reads.
        let again = reuse(&publisher);
        for r in readers {
            r.join().unwrap();
        }
        freed_once(&publisher, &again, &h);
        drop(again);
        assert_eq!(publisher.stats().classes[0].free, 1);
    });
}

#[test]
fn a_release_races_a_reclaim_of_another_party() {
    model(|| {
        let [publisher, one, _two] = fan_out(1);
        let mailbox = Mailbox::new();
        let r1 = reader(one, mailbox.clone(), 7);
        let mut blob = publisher.alloc(64).unwrap();
        blob.fill(7);
        let h = blob.share(Parties::from(party(1)).with(party(2))).unwrap();
        mailbox.post(&h);
        // Party 2 died before accepting: its reference is a bit in the
        // word, which the publisher clears while party 1 reads and gives
        // its own up. Party 1's is never touched (its accept succeeds),
        // and whichever of the two goes last frees the slot.
        let r = publisher.reclaim_party(party(2));
        assert_eq!((r.references, r.held_here, r.contended), (1, 0, 0));
        let again = reuse(&publisher);
        r1.join().unwrap();
        freed_once(&publisher, &again, &h);
        // A second reclaim finds nothing.
        assert_eq!(publisher.reclaim_party(party(2)).references, 0);
    });
}

#[test]
fn an_accept_races_the_publishers_release() {
    model(|| {
        let [publisher, one, _two] = fan_out(1);
        let mailbox = Mailbox::new();
        let r1 = reader(one, mailbox.clone(), 7);
        let mut blob = publisher.alloc(64).unwrap();
        blob.fill(7);
        // The publisher keeps a reference, reads, and gives it up while
        // party 1 accepts: party 1's reference keeps the slot.
        let (mine, h) = blob.share_keep(party(1).into()).unwrap();
        mailbox.post(&h);
        assert!(mine.iter().all(|&x| x == 7));
        drop(mine);
        let again = reuse(&publisher);
        r1.join().unwrap();
        freed_once(&publisher, &again, &h);
    });
}
