//! A hostile peer rewrites the state words of slots this process holds
//! (simulated here by stores through the region, as the peer's process
//! makes them through its own mapping). Whatever it writes, this process
//! never has two blobs over one slot: not by accepting a handle twice, not
//! by allocating a slot its blob holds, not by recalling or taking back,
//! not through another handle on the same region or the other side's, and
//! `reclaim` leaves such slots alone. A proptest drives random operations
//! interleaved with random rewrites and checks that no slot is ever held
//! twice and every live blob keeps its bytes.
#![cfg(not(loom))]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering::Release;

use common::{pair, rewrite, side, state_bits, state_word};
use isocall_blob::{BlobError, BlobHandle, BlobMut, Pool, PoolConfig, Side, SlotState};
use isocall_ringbuf::{HeapRegion, Region};
use proptest::prelude::*;

type R = Arc<HeapRegion>;

fn small() -> PoolConfig {
    PoolConfig::new().class(64, 4).class(256, 3)
}

#[test]
fn a_rewritten_held_slot_is_not_accepted_twice() {
    let (a, b) = pair(&small());
    let h = a.alloc(10).unwrap().send().unwrap();
    let mut first = b.accept_mut(&h).unwrap();
    first.fill(7);
    // The peer puts the slot back in flight to B and resends the handle.
    rewrite(&b, &h, SlotState::InFlight(Side::B));
    let e = b.accept_mut(&h).unwrap_err();
    assert_eq!(
        e,
        BlobError::HeldHere {
            class: 0,
            slot: h.slot as usize
        }
    );
    assert!(e.to_string().contains("held by a blob of this process"));
    assert!(matches!(b.accept(&h), Err(BlobError::HeldHere { .. })));
    // The refusal touched nothing: the first blob still works and frees.
    assert!(first.iter().all(|&x| x == 7));
    drop(first);
    assert_eq!(b.slot_state(0, h.slot as usize).unwrap().0, SlotState::Free);
}

#[test]
fn a_held_slot_marked_free_is_not_allocated_again() {
    let (a, _b) = pair(&small());
    let mut held: Vec<BlobMut<'_, R>> = (0..4).map(|_| a.alloc(64).unwrap()).collect();
    for (i, blob) in held.iter_mut().enumerate() {
        blob.fill(i as u8);
    }
    // The peer marks every slot A holds free.
    for blob in &held {
        rewrite(&a, &blob.handle(), SlotState::Free);
    }
    // Not one of them is handed out again: the class is exhausted.
    assert!(matches!(
        a.alloc(1),
        Err(BlobError::Exhausted { class: 0, .. })
    ));
    for (i, blob) in held.iter().enumerate() {
        assert!(blob.iter().all(|&x| x == i as u8), "blob {i} overwritten");
    }
    // Once freed for real, they are allocatable again.
    drop(held);
    let again: Vec<_> = (0..4).map(|_| a.alloc(64).unwrap()).collect();
    assert_eq!(again.len(), 4);
}

#[test]
fn recall_and_take_back_refuse_a_slot_held_here() {
    let (a, _b) = pair(&small());
    let mine = a.alloc(10).unwrap();
    let h = mine.handle();
    rewrite(&a, &h, SlotState::InFlight(Side::B));
    assert!(matches!(a.recall(&h), Err(BlobError::HeldHere { .. })));
    assert!(matches!(a.take_back(&h), Err(BlobError::HeldHere { .. })));
    rewrite(&a, &h, SlotState::Held(Side::B));
    assert!(matches!(a.take_back(&h), Err(BlobError::HeldHere { .. })));
    drop(mine);
}

#[test]
fn the_other_side_in_this_process_cannot_take_a_held_slot() {
    // Both sides in one process (as in tests): a slot B's blob holds is
    // refused to A too, and A's allocations pass it by.
    let (a, b) = pair(&PoolConfig::new().class(64, 1));
    let theirs = b.alloc(8).unwrap();
    let h = theirs.handle();
    rewrite(&b, &h, SlotState::InFlight(Side::A));
    assert!(matches!(a.accept_mut(&h), Err(BlobError::HeldHere { .. })));
    rewrite(&b, &h, SlotState::Free);
    assert!(matches!(a.alloc(8), Err(BlobError::Exhausted { .. })));
    drop(theirs);
    assert!(a.alloc(8).is_ok());
}

#[test]
fn every_handle_on_a_region_shares_the_record() {
    let (a, _b) = pair(&PoolConfig::new().class(64, 2));
    // A second handle on the same region and side, as the engine opens.
    let a2 = Pool::open(a.region().clone(), Side::A).unwrap();
    let mine = a.alloc(8).unwrap();
    rewrite(&a, &mine.handle(), SlotState::Free);
    let other = a2.alloc(8).unwrap();
    assert_ne!(other.handle().slot, mine.handle().slot);
    assert!(matches!(a2.alloc(8), Err(BlobError::Exhausted { .. })));
    let h = other.send().unwrap();
    rewrite(&a, &mine.handle(), SlotState::InFlight(Side::A));
    assert!(matches!(
        a2.accept(&mine.handle()),
        Err(BlobError::HeldHere { .. })
    ));
    drop(mine);
    drop(a2.recall(&h).unwrap());
}

#[test]
fn reclaim_leaves_slots_held_here() {
    let (a, _b) = pair(&small());
    let mut mine = a.alloc(10).unwrap();
    mine.fill(3);
    let h = mine.handle();
    // The peer claims that the dead side B holds our slot, then that it is
    // in flight: reclaim frees neither.
    for lie in [SlotState::Held(Side::B), SlotState::InFlight(Side::A)] {
        rewrite(&a, &h, lie);
        let r = a.reclaim(Side::B);
        assert_eq!((r.freed(), r.held_here), (0, 1), "{lie:?}");
        assert_eq!(a.slot_state(0, h.slot as usize).unwrap().0, lie);
    }
    assert!(mine.iter().all(|&x| x == 3));
    drop(mine);
    assert_eq!(a.stats().used(), 0);
}

#[test]
fn a_forgotten_blob_stays_held_until_the_last_handle_goes() {
    let config = small();
    let region = Arc::new(HeapRegion::new(config.region_size().unwrap()));
    let h = {
        let a = Pool::create(region.clone(), &config, Side::A).unwrap();
        let b = Pool::open(region.clone(), Side::B).unwrap();
        let leaked = b.alloc(10).unwrap();
        let h = leaked.handle();
        // A leak, not a death: this process still "holds" the slot, so
        // reclaim leaves it and no allocation takes it.
        std::mem::forget(leaked);
        assert_eq!(a.reclaim(Side::B).held_here, 1);
        let all: Vec<_> = (0..3).map(|_| a.alloc(10).unwrap()).collect();
        assert!(all.iter().all(|x| x.handle().slot != h.slot));
        h
    };
    // Every handle dropped: a fresh one finds the slot held by B's word
    // only, as after a real death, and reclaims it.
    let a = Pool::open(region, Side::A).unwrap();
    let r = a.reclaim(Side::B);
    assert_eq!((r.held, r.held_here), (1, 0));
    assert_eq!(a.slot_state(0, h.slot as usize).unwrap().0, SlotState::Free);
}

#[test]
fn formatting_a_region_with_open_handles_is_refused() {
    let config = small();
    let region = Arc::new(HeapRegion::new(config.region_size().unwrap()));
    let a = Pool::create(region.clone(), &config, Side::A).unwrap();
    let e = Pool::create(region.clone(), &config, Side::B).unwrap_err();
    assert_eq!(e, BlobError::InUse);
    drop(a);
    let _again = Pool::create(region, &config, Side::B).unwrap();
}

#[test]
fn a_header_rewritten_since_the_first_open_is_refused() {
    let (a, _b) = pair(&small());
    // The peer rewrites the first class's slot count (64 + 8) from 4 to 3:
    // still a valid header, but not the one this process works with.
    a.region().u64_at(64 + 8).store(3, Release);
    let e = Pool::open(a.region().clone(), Side::B).unwrap_err();
    assert_eq!(e, BlobError::LayoutChanged);
}

#[test]
fn a_peer_flipping_a_word_cannot_make_us_spin() {
    // The peer flips a state word as fast as it can, between values each of
    // which our compare-and-swap loops would retry on; every operation still
    // returns (each loop gives up after CAS_RETRIES attempts). A watchdog,
    // not a sleep, bounds the test.
    let (a, b) = pair(&PoolConfig::new().class(64, 1));
    let (a, b) = (Arc::new(a), Arc::new(b));
    let h = a.alloc(8).unwrap().send().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (a, stop) = (a.clone(), stop.clone());
        std::thread::spawn(move || {
            let w = state_word(&a, &h);
            let g = h.generation;
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Free at ever-new generations (alloc retries on a free
                // word), then InFlight(B) / Held(B) at the handle's
                // generation (take_back by A accepts both).
                let v = match i % 3 {
                    0 => state_bits(g.wrapping_add(i), SlotState::Free),
                    1 => state_bits(g, SlotState::InFlight(Side::B)),
                    _ => state_bits(g, SlotState::Held(Side::B)),
                };
                w.store(v, Release);
                i = i.wrapping_add(1);
            }
        })
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        for _ in 0..2000 {
            drop(a.alloc(8));
            drop(a.take_back(&h));
            drop(b.accept(&h));
            let _ = a.reclaim(Side::B);
        }
        done_tx.send(()).unwrap();
    });
    let finished = done_rx.recv_timeout(std::time::Duration::from_secs(60));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    assert!(
        finished.is_ok(),
        "an operation kept spinning on a flipped word"
    );
    worker.join().unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Alloc(bool, usize),
    Send(usize),
    Accept(usize, bool),
    Free(usize),
    /// The peer writes a state (code `state % 6`, generation of a known
    /// handle plus `dgen`) into the slot of handle `i`.
    Rewrite(usize, u8, u8),
    /// Recall or take back the handle `i`.
    Recall(usize, bool),
    Reclaim(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 0usize..300).prop_map(|(s, l)| Op::Alloc(s, l)),
        2 => any::<usize>().prop_map(Op::Send),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(i, m)| Op::Accept(i, m)),
        2 => any::<usize>().prop_map(Op::Free),
        3 => (any::<usize>(), any::<u8>(), 0u8..3).prop_map(|(i, s, g)| Op::Rewrite(i, s, g)),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, t)| Op::Recall(i, t)),
        1 => any::<bool>().prop_map(Op::Reclaim),
    ]
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (pa, pb) = pair(&small());
    let pool = |s: Side| if s == Side::A { &pa } else { &pb };
    // Live blobs of this process, each filled with its own tag.
    let mut live: Vec<(BlobMut<'_, R>, u8)> = Vec::new();
    // Every handle seen, to resend, rewrite and recall.
    let mut handles: Vec<BlobHandle> = Vec::new();
    let mut tag = 0u8;
    for op in ops {
        match op {
            Op::Alloc(s, len) => {
                if let Ok(b) = pool(side(s)).alloc(len) {
                    handles.push(b.handle());
                    live.push((b, 0));
                }
            }
            Op::Send(i) if !live.is_empty() => {
                let (b, _) = live.swap_remove(i % live.len());
                if let Ok(h) = b.send() {
                    handles.push(h);
                }
            }
            Op::Accept(i, s) if !handles.is_empty() => {
                let h = handles[i % handles.len()];
                if let Ok(b) = pool(side(s)).accept_mut(&h) {
                    live.push((b, 0));
                }
            }
            Op::Free(i) if !live.is_empty() => {
                drop(live.swap_remove(i % live.len()));
            }
            Op::Rewrite(i, state, dgen) if !handles.is_empty() => {
                let h = handles[i % handles.len()];
                let state = match state % 6 {
                    0 => SlotState::Free,
                    1 => SlotState::Held(Side::A),
                    2 => SlotState::Held(Side::B),
                    3 => SlotState::InFlight(Side::A),
                    4 => SlotState::InFlight(Side::B),
                    _ => SlotState::Invalid(state),
                };
                let g = h.generation.wrapping_add(u32::from(dgen));
                state_word(&pa, &h).store(state_bits(g, state), Release);
            }
            Op::Recall(i, take) if !handles.is_empty() => {
                let h = handles[i % handles.len()];
                for p in [&pa, &pb] {
                    let got = if take { p.take_back(&h) } else { p.recall(&h) };
                    if let Ok(b) = got {
                        live.push((b, 0));
                    }
                }
            }
            Op::Reclaim(s) => {
                let _ = pool(side(s)).reclaim(side(s).peer());
            }
            _ => {}
        }
        // New blobs get a tag of their own.
        for (b, t) in live.iter_mut().filter(|(_, t)| *t == 0) {
            tag = tag.wrapping_add(1).max(1);
            *t = tag;
            b.fill(tag);
        }
        // No slot is held twice in this process, and no live blob lost its
        // bytes (only this process writes them here: a second blob over the
        // same slot would have overwritten them).
        let mut slots: Vec<_> = live
            .iter()
            .map(|(b, _)| (b.handle().class, b.handle().slot))
            .collect();
        slots.sort_unstable();
        let n = slots.len();
        slots.dedup();
        prop_assert_eq!(slots.len(), n, "a slot is held twice");
        for (b, t) in &live {
            prop_assert!(b.iter().all(|x| x == t), "a live blob was overwritten");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
    #[test]
    fn a_hostile_peer_never_gets_a_slot_held_twice(ops in proptest::collection::vec(op(), 1..300)) {
        run(ops)?;
    }
}
