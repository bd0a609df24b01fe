//! The pool's behaviour on a heap region: lifecycle, bad handles, limits,
//! reclaim and census.
#![cfg(not(loom))]

use std::sync::Arc;

use isocall_blob::{
    BlobError, BlobHandle, BlobMut, Pool, PoolConfig, Side, SlotState, census_region,
};
use isocall_ringbuf::HeapRegion;

type P = Pool<Arc<HeapRegion>>;

fn pair(config: &PoolConfig) -> (P, P) {
    let region = Arc::new(HeapRegion::new(config.region_size().unwrap()));
    let a = Pool::create(region.clone(), config, Side::A).unwrap();
    let b = Pool::open(region, Side::B).unwrap();
    (a, b)
}

fn small() -> PoolConfig {
    PoolConfig::new().class(64, 3).class(256, 130)
}

#[test]
fn lifecycle_moves_ownership() {
    let (a, b) = pair(&small());
    let mut m = a.alloc(100).unwrap();
    assert_eq!(m.len(), 100);
    assert_eq!(m.capacity(), 256);
    m.fill(7);
    let h = m.handle();
    assert_eq!(
        a.slot_state(h.class as usize, h.slot as usize).unwrap().0,
        SlotState::Held(Side::A)
    );
    let h = m.send().unwrap();
    assert_eq!(
        a.slot_state(1, h.slot as usize).unwrap().0,
        SlotState::InFlight(Side::B)
    );
    let st = a.stats();
    assert_eq!(st.classes[1].in_flight, [0, 1]);
    assert_eq!(st.owned_by(Side::B), 1);

    let mut got = b.accept_mut(&h).unwrap();
    assert!(got.iter().all(|&x| x == 7));
    got.set_len(3).unwrap();
    got.copy_from_slice(b"abc");
    assert!(matches!(
        got.set_len(257),
        Err(BlobError::Overflow {
            len: 257,
            capacity: 256
        })
    ));
    let back = got.send().unwrap();
    assert_eq!(back.len, 3);
    let r = a.accept(&back).unwrap();
    assert_eq!(&r[..], b"abc");
    drop(r);
    assert_eq!(a.stats().used(), 0);
}

#[test]
fn stale_double_and_forged_handles_are_rejected() {
    let (a, b) = pair(&small());
    let h = a.alloc(10).unwrap().send().unwrap();
    // Not in flight to A: A cannot accept its own send.
    assert!(matches!(
        a.accept(&h),
        Err(BlobError::WrongState {
            expected: "in flight to this side",
            ..
        })
    ));
    drop(b.accept(&h).unwrap());
    // Accepting again (a double free through the handle) is refused.
    let e = b.accept(&h).unwrap_err();
    assert!(
        matches!(
            e,
            BlobError::WrongState {
                found: SlotState::Free,
                ..
            }
        ),
        "{e}"
    );
    // The slot's next life makes the old handle stale.
    let again = a.alloc(10).unwrap();
    let h2 = again.handle();
    assert_eq!((h2.class, h2.slot), (h.class, h.slot));
    assert_eq!(h2.generation, h.generation + 1);
    let h2 = again.send().unwrap();
    let e = b.accept(&h).unwrap_err();
    assert!(
        matches!(e, BlobError::Stale { handle, now, .. } if handle == h.generation && now == h2.generation),
        "{e}"
    );
    assert!(e.to_string().contains("stale"));
    // Forged: class, slot and length out of range.
    let forgeries = [
        (
            BlobHandle { class: 9, ..h2 },
            BlobError::NoSuchClass {
                class: 9,
                classes: 2,
            },
        ),
        (
            BlobHandle { slot: 3, ..h2 },
            BlobError::NoSuchSlot {
                class: 0,
                slot: 3,
                count: 3,
            },
        ),
        (
            BlobHandle {
                slot: u32::MAX,
                ..h2
            },
            BlobError::NoSuchSlot {
                class: 0,
                slot: u32::MAX as usize,
                count: 3,
            },
        ),
        (
            BlobHandle { len: 65, ..h2 },
            BlobError::LengthBeyondSlot {
                class: 0,
                len: 65,
                slot_size: 64,
            },
        ),
    ];
    for (forged, expected) in forgeries {
        let e = b.accept(&forged).unwrap_err();
        assert_eq!(e, expected, "{forged:?}");
        assert!(e.to_string().contains("forged"), "{e}");
    }
    // A forged generation on a real slot is stale.
    assert!(matches!(
        b.accept(&BlobHandle {
            generation: 77,
            ..h2
        }),
        Err(BlobError::Stale { .. })
    ));
    // The genuine one still works, exactly once.
    drop(b.accept(&h2).unwrap());
    assert_eq!(a.stats().used(), 0);
}

#[test]
fn exhaustion_and_size_limits() {
    let (a, _b) = pair(&small());
    let held: Vec<_> = (0..3).map(|_| a.alloc(64).unwrap()).collect();
    let e = a.alloc(1).unwrap_err();
    assert_eq!(
        e,
        BlobError::Exhausted {
            class: 0,
            slot_size: 64
        }
    );
    assert!(e.to_string().contains("class 0 (64 bytes)"));
    assert_eq!(
        a.alloc(257).unwrap_err(),
        BlobError::TooLarge { len: 257, max: 256 }
    );
    drop(held);
    // 130 slots cross two bitmap words; all of them are found.
    let all: Vec<_> = (0..130).map(|_| a.alloc(200).unwrap()).collect();
    let mut slots: Vec<_> = all.iter().map(|b| b.handle().slot).collect();
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(slots.len(), 130);
    assert!(matches!(
        a.alloc(200),
        Err(BlobError::Exhausted { class: 1, .. })
    ));
    assert_eq!(a.stats().classes[1].held, [130, 0]);
    drop(all);
    assert_eq!(a.stats().used(), 0);
    let zero = a.alloc(0).unwrap();
    assert!(zero.is_empty());
}

#[test]
fn recall_takes_back_an_undelivered_blob() {
    let (a, b) = pair(&small());
    let h = a.alloc(5).unwrap().send().unwrap();
    assert!(matches!(b.recall(&h), Err(BlobError::WrongState { .. })));
    let back = a.recall(&h).unwrap();
    assert_eq!(back.handle(), h);
    assert!(b.accept(&h).is_err());
    drop(back);
    assert_eq!(a.stats().used(), 0);
}

#[test]
fn reclaim_returns_what_the_dead_side_held() {
    let (a, b) = pair(&small());
    // B holds two, has one in flight to A, A has one in flight to B.
    let b1 = b.alloc(10).unwrap();
    let b2 = b.alloc(100).unwrap();
    let to_a = b.alloc(10).unwrap().send().unwrap();
    let to_b = a.alloc(10).unwrap().send().unwrap();
    let mine = a.alloc(200).unwrap();
    // B "dies" holding them: its process (and the record of what its blobs
    // hold) is gone, its state words stay.
    died_holding(&b, b1);
    died_holding(&b, b2);
    let r = a.reclaim(Side::B);
    assert_eq!(
        (r.held, r.in_flight_to_dead, r.in_flight_from_dead),
        (2, 1, 1)
    );
    assert_eq!(r.held_here, 0);
    assert_eq!(r.freed(), 4);
    let st = a.stats();
    assert_eq!(st.used(), 1, "only A's own blob is left: {st:?}");
    assert_eq!(st.classes.iter().map(|c| c.held[0]).sum::<usize>(), 1);
    assert!(a.accept(&to_a).is_err());
    assert!(b.accept(&to_b).is_err());
    drop(mine);
    assert_eq!(a.stats().used(), 0);
    // Everything is allocatable again.
    let all: Vec<_> = (0..3).map(|_| a.alloc(64).unwrap()).collect();
    assert_eq!(all.len(), 3);
}

#[test]
fn reclaim_repairs_a_bit_lost_in_a_crash() {
    let (a, _b) = pair(&small());
    // A slot whose hint bit was cleared by a scan racing with its free, or
    // by a process that died: free by its state word, missing from the
    // index.
    let m = a.alloc(64).unwrap();
    let slot = m.handle().slot as usize;
    drop(m);
    let bits = region_bitmap_word(&a, 0);
    bits.fetch_and(!(1 << slot), std::sync::atomic::Ordering::Relaxed);
    let r = a.reclaim(Side::B);
    assert_eq!(r.repaired, 1);
    assert_eq!(r.freed(), 0);
    assert_ne!(
        bits.load(std::sync::atomic::Ordering::Relaxed) & (1 << slot),
        0
    );
}

#[test]
fn free_slots_without_hints_are_still_found() {
    let (a, _b) = pair(&small());
    let bits = region_bitmap_word(&a, 0);
    bits.store(0, std::sync::atomic::Ordering::Relaxed);
    // Every hint is gone; the slow path finds all three slots, and only
    // then reports exhaustion.
    let all: Vec<_> = (0..3).map(|_| a.alloc(64).unwrap()).collect();
    assert!(matches!(
        a.alloc(64),
        Err(BlobError::Exhausted { class: 0, .. })
    ));
    drop(all);
    assert_eq!(
        bits.load(std::sync::atomic::Ordering::Relaxed),
        0b111,
        "frees restore the hints"
    );
}

/// The state word of a blob's slot (offsets from the layout module).
fn state_word<'p>(p: &'p P, h: &BlobHandle) -> &'p std::sync::atomic::AtomicU64 {
    use isocall_ringbuf::Region;
    let desc = 64 + 64 * h.class as usize;
    // SAFETY: the class descriptor's states offset and the slot's state word
    // are pool metadata, never blob bytes: no blob's slice covers them.
    let states =
        unsafe { p.region().u64_at(desc + 24) }.load(std::sync::atomic::Ordering::Relaxed) as usize;
    // SAFETY: as above.
    unsafe { p.region().u64_at(states + 8 * h.slot as usize) }
}

/// A blob whose side dies holding it, as another process would: the blob
/// is gone (with its process's record of it), the state word still says
/// its side holds the slot. (`mem::forget` is no such death: the blob's
/// process lives on, and its record keeps the slot held.)
fn died_holding(pool: &P, blob: BlobMut<'_, Arc<HeapRegion>>) {
    let h = blob.handle();
    let code = match pool.slot_state(h.class as usize, h.slot as usize) {
        Some((SlotState::Held(Side::A), _)) => 1,
        Some((SlotState::Held(Side::B), _)) => 2,
        Some((SlotState::HeldBy(p), _)) => 0x40 + p.id() as u64,
        other => panic!("not held: {other:?}"),
    };
    drop(blob);
    state_word(pool, &h).store(
        u64::from(h.generation) << 32 | code,
        std::sync::atomic::Ordering::Release,
    );
}

/// The first bitmap word of class `ci` (offsets from the layout module).
fn region_bitmap_word(p: &P, ci: usize) -> &std::sync::atomic::AtomicU64 {
    use isocall_ringbuf::Region;
    let desc = 64 + 64 * ci;
    // SAFETY: the class descriptor's bitmap offset and the bitmap word are
    // pool metadata, never blob bytes: no blob's slice covers them.
    let off =
        unsafe { p.region().u64_at(desc + 16) }.load(std::sync::atomic::Ordering::Relaxed) as usize;
    // SAFETY: as above.
    unsafe { p.region().u64_at(off) }
}

#[test]
fn open_refuses_bad_headers() {
    use isocall_ringbuf::Region;
    use std::sync::atomic::Ordering::Relaxed;
    let config = small();
    let len = config.region_size().unwrap();
    let fresh = || {
        let r = Arc::new(HeapRegion::new(len));
        drop(Pool::create(r.clone(), &config, Side::A).unwrap());
        r
    };
    // `census` checks the header exactly as `open` does, with loads only.
    let refused = |r: Arc<HeapRegion>| {
        // SAFETY: no pool handle, so no blob, is open on the region.
        let e = unsafe { census_region(&*r) }.unwrap_err();
        assert_eq!(Pool::open(r, Side::B).unwrap_err(), e);
        e.to_string()
    };
    assert!(refused(Arc::new(HeapRegion::new(len))).contains("bad magic"));
    let cases: [(usize, u64, &str); 7] = [
        (8, 2 | (2 << 32), "layout version 2"),
        (8, 1 | (17 << 32), "17 classes"),
        (16, 12345, "header says 12345 bytes"),
        (64, 100, "slot size 100"),
        (64 + 8, 0, "0 slots"),
        (64 + 64 + 32, 1 << 40, "slot memory at offset"),
        (64 + 16, 64, "overlap"),
    ];
    for (off, value, what) in cases {
        let r = fresh();
        // SAFETY: the pool was dropped: no blob of the region exists.
        unsafe { r.u64_at(off) }.store(value, Relaxed);
        let e = refused(r);
        assert!(e.contains(what), "{what}: {e}");
    }
    // A region too small for what the config needs.
    let e = Pool::create(Arc::new(HeapRegion::new(128)), &config, Side::A).unwrap_err();
    assert_eq!(
        e,
        BlobError::RegionTooSmall {
            need: len,
            len: 128
        }
    );
}

#[test]
fn threads_share_a_pool() {
    let (a, b) = pair(&PoolConfig::new().class(64, 8));
    let (a, b) = (Arc::new(a), Arc::new(b));
    let (tx, rx) = std::sync::mpsc::sync_channel::<BlobHandle>(4);
    let sender = {
        let a = a.clone();
        std::thread::spawn(move || {
            for i in 0..20_000u32 {
                let mut m = loop {
                    match a.alloc(4) {
                        Ok(m) => break m,
                        Err(BlobError::Exhausted { .. }) => std::thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                };
                m.copy_from_slice(&i.to_le_bytes());
                tx.send(m.send().unwrap()).unwrap();
            }
        })
    };
    for i in 0..20_000u32 {
        let h = rx.recv().unwrap();
        let blob = b.accept(&h).unwrap();
        assert_eq!(u32::from_le_bytes(blob[..].try_into().unwrap()), i);
    }
    sender.join().unwrap();
    assert_eq!(b.stats().used(), 0);
}

#[test]
fn census_counts_what_stats_counts_without_a_pool() {
    let (a, b) = pair(&small());
    let _mine = a.alloc(10).unwrap();
    let _theirs = b.alloc(100).unwrap();
    let _to_b = a.alloc(200).unwrap().send().unwrap();
    // SAFETY: the region is only ever this pool's, and a census loads only
    // its header and state words, never blob bytes.
    let st = unsafe { census_region(&**a.region()) }.unwrap();
    assert_eq!(st, a.stats());
    assert_eq!(st.classes[0].held, [1, 0]);
    assert_eq!(st.classes[1].held, [0, 1]);
    assert_eq!(st.classes[1].in_flight, [0, 1]);
}

#[test]
fn a_party_beyond_the_two_sides_holds_alone_and_is_reclaimed() {
    use isocall_blob::Party;
    let (a, b) = pair(&small());
    let five = Party::new(5).unwrap();
    let p5 = Pool::open_as(a.region().clone(), five).unwrap();
    assert_eq!((p5.party(), a.party()), (five, Party::from(Side::A)));
    let mut m = p5.alloc(10).unwrap();
    m.fill(5);
    let h = m.handle();
    assert_eq!(
        a.slot_state(0, h.slot as usize),
        Some((SlotState::HeldBy(five), h.generation))
    );
    // It has no peer: no send (the blob is freed), no accept.
    assert_eq!(
        m.send().unwrap_err(),
        BlobError::NotTwoSided { party: five }
    );
    assert_eq!(a.stats().used(), 0);
    let to_b = a.alloc(10).unwrap().send().unwrap();
    assert!(matches!(
        p5.accept(&to_b),
        Err(BlobError::NotTwoSided { .. })
    ));
    drop(b.accept(&to_b).unwrap());
    // It dies holding a blob: reclaimed by party 0, exactly once; slots in
    // flight between A and B are not its to free.
    let mine = p5.alloc(10).unwrap();
    let to_b = a.alloc(10).unwrap().send().unwrap();
    died_holding(&p5, mine);
    let st = a.stats();
    assert_eq!((st.classes[0].held_by[5], st.holds(five)), (1, 1));
    assert!(st.classes.iter().all(|c| c.is_exact()));
    let r = a.reclaim_party(five);
    assert_eq!((r.held, r.freed()), (1, 1));
    assert_eq!(a.reclaim_party(five).freed(), 0);
    drop(b.accept(&to_b).unwrap());
    assert_eq!(a.stats().used(), 0);
}
