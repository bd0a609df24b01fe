//! A hostile peer rewrites the state words of slots this process holds
//! (simulated here by stores through the region, as the peer's process
//! makes them through its own mapping). Whatever it writes, this process
//! never has two blobs over one slot: not by accepting a handle twice, not
//! by allocating a slot its blob holds, not by recalling or taking back,
//! not through another handle on the same region or the other side's, and
//! `reclaim` leaves such slots alone. The same holds for shared slots: a
//! party never holds two references to one slot here, nor a reference
//! beside a blob; dropping a reference never clears another party's bit
//! nor frees a slot whose word no longer holds the reference; and no loop
//! on a flipped shared word spins. A proptest drives random operations
//! (shares and references included) interleaved with random rewrites and
//! checks that no slot is ever held twice and every live blob and shared
//! blob keeps its bytes.
#![cfg(not(loom))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Release};

use isocall_blob::{
    BlobError, BlobHandle, BlobMut, Parties, Party, Pool, PoolConfig, SharedBlob, SharedHandle,
    Side, SlotState,
};
use isocall_ringbuf::{HeapRegion, Region};
use proptest::prelude::*;

type R = Arc<HeapRegion>;
type P = Pool<R>;

fn pair(config: &PoolConfig) -> (P, P) {
    let region = Arc::new(HeapRegion::new(config.region_size().unwrap()));
    let a = Pool::create(region.clone(), config, Side::A).unwrap();
    let b = Pool::open(region, Side::B).unwrap();
    (a, b)
}

fn small() -> PoolConfig {
    PoolConfig::new().class(64, 4).class(256, 3)
}

/// The state word of the slot `h` names (offsets from the layout module).
fn state_word<'p>(p: &'p P, h: &BlobHandle) -> &'p AtomicU64 {
    let desc = 64 + 64 * h.class as usize;
    // SAFETY: the class descriptor's states offset and the slot's state word
    // are pool metadata, never blob bytes: no blob's slice covers them.
    let states =
        unsafe { p.region().u64_at(desc + 24) }.load(std::sync::atomic::Ordering::Relaxed) as usize;
    // SAFETY: as above.
    unsafe { p.region().u64_at(states + 8 * h.slot as usize) }
}

/// A state word as the peer would write it (layout of `state.rs`).
fn word(generation: u32, state: SlotState) -> u64 {
    let code = match state {
        SlotState::Free => 0,
        SlotState::Held(Side::A) => 1,
        SlotState::Held(Side::B) => 2,
        SlotState::InFlight(Side::A) => 3,
        SlotState::InFlight(Side::B) => 4,
        SlotState::HeldBy(p) => 0x40 + p.id() as u64,
        SlotState::Shared(holders) => 1 << 31 | u64::from(holders.bits()),
        SlotState::Invalid(c) => u64::from(c),
        _ => unreachable!("a state this test does not know"),
    };
    u64::from(generation) << 32 | code
}

/// The peer writes `state` (at the handle's generation) into `h`'s slot.
fn rewrite(p: &P, h: &BlobHandle, state: SlotState) {
    state_word(p, h).store(word(h.generation, state), Release);
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
    // SAFETY: a class descriptor word is pool metadata, never blob bytes.
    unsafe { a.region().u64_at(64 + 8) }.store(3, Release);
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
                    0 => word(g.wrapping_add(i), SlotState::Free),
                    1 => word(g, SlotState::InFlight(Side::B)),
                    _ => word(g, SlotState::Held(Side::B)),
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

fn party(id: usize) -> Party {
    Party::new(id).unwrap()
}

/// A pool created by party 0 and opened by parties `1..n`.
fn parties_on(config: &PoolConfig, n: usize) -> Vec<P> {
    let region = Arc::new(HeapRegion::new(config.region_size().unwrap()));
    let mut v = vec![Pool::create_as(region.clone(), config, party(0)).unwrap()];
    for p in 1..n {
        v.push(Pool::open_as(region.clone(), party(p)).unwrap());
    }
    v
}

fn as_shared(h: &BlobHandle) -> SharedHandle {
    SharedHandle {
        class: h.class,
        slot: h.slot,
        generation: h.generation,
        len: h.len,
    }
}

fn as_blob(h: &SharedHandle) -> BlobHandle {
    BlobHandle {
        class: h.class,
        slot: h.slot,
        generation: h.generation,
        len: h.len,
    }
}

fn set(ids: &[usize]) -> Parties {
    ids.iter().map(|&i| party(i)).collect()
}

#[test]
fn a_rewritten_shared_slot_is_not_accepted_twice() {
    let ps = parties_on(&small(), 3);
    let mut b = ps[0].alloc(10).unwrap();
    b.fill(4);
    let h = b.share(set(&[1])).unwrap();
    let first = ps[1].accept_shared(&h).unwrap();
    // The peer puts party 1's bit back after a release it made up, or
    // names party 1 in every bit: still one reference here.
    for holders in [set(&[1]), Parties::ALL] {
        rewrite(&ps[0], &as_blob(&h), SlotState::Shared(holders));
        assert!(matches!(
            ps[1].accept_shared(&h),
            Err(BlobError::HeldHere { .. })
        ));
    }
    // A second reference by way of the two-sided calls neither.
    rewrite(&ps[0], &as_blob(&h), SlotState::InFlight(Side::B));
    assert!(matches!(
        ps[1].accept(&as_blob(&h)),
        Err(BlobError::HeldHere { .. })
    ));
    assert!(first.iter().all(|&x| x == 4));
    drop(first);
}

#[test]
fn a_reference_given_up_never_touches_a_word_it_is_not_in() {
    // Whatever the peer made of the word while party 1 read, dropping the
    // reference leaves it as the peer left it: party 1 clears no other
    // party's bit, and frees nothing it holds no reference to (a word
    // naming party 1 at another generation included).
    let ps = parties_on(&PoolConfig::new().class(64, 1), 3);
    let lies = [
        SlotState::Shared(set(&[2])),
        SlotState::Shared(set(&[0, 2])),
        SlotState::Held(Side::A),
        SlotState::InFlight(Side::B),
        SlotState::Free,
        SlotState::Invalid(9),
    ];
    for (lie, shift) in lies
        .into_iter()
        .flat_map(|l| [(l, 0), (l, 1)])
        .chain([(SlotState::Shared(set(&[1])), 1)])
    {
        let mut b = ps[0].alloc(10).unwrap();
        b.fill(1);
        let h = b.share(set(&[1, 2])).unwrap();
        let mine = ps[1].accept_shared(&h).unwrap();
        let word_now = state_word(&ps[0], &as_blob(&h));
        let w = word(h.generation.wrapping_add(shift), lie);
        word_now.store(w, Release);
        drop(mine);
        assert_eq!(
            word_now.load(std::sync::atomic::Ordering::Relaxed),
            w,
            "{lie:?} at generation +{shift}"
        );
        // Free again for the next round (the peer is done lying).
        word_now.store(word(h.generation + 1, SlotState::Free), Release);
    }
}

#[test]
fn a_shared_slot_marked_free_is_not_allocated_here() {
    let ps = parties_on(&PoolConfig::new().class(64, 1), 2);
    let mut b = ps[0].alloc(10).unwrap();
    b.fill(6);
    let h = b.share(set(&[1])).unwrap();
    let reading = ps[1].accept_shared(&h).unwrap();
    rewrite(&ps[0], &as_blob(&h), SlotState::Free);
    // Not by the party that reads it, nor by any other in this process.
    assert!(matches!(ps[0].alloc(8), Err(BlobError::Exhausted { .. })));
    assert!(matches!(ps[1].alloc(8), Err(BlobError::Exhausted { .. })));
    assert!(reading.iter().all(|&x| x == 6));
    drop(reading);
    assert!(ps[0].alloc(8).is_ok());
}

#[test]
fn a_blob_held_here_is_never_a_shared_one() {
    let ps = parties_on(&small(), 3);
    let mut mine = ps[0].alloc(10).unwrap();
    mine.fill(2);
    let h = as_shared(&mine.handle());
    // The peer says the slot is shared with parties 0 to 2: no reference
    // to it is accepted here, and neither a reclaim nor a leave takes it.
    rewrite(&ps[0], &mine.handle(), SlotState::Shared(set(&[0, 1, 2])));
    for p in &ps {
        assert!(matches!(
            p.accept_shared(&h),
            Err(BlobError::HeldHere { .. })
        ));
    }
    let r = ps[0].reclaim_party(party(2));
    assert_eq!((r.references, r.held_here), (0, 1));
    let r = ps[1].leave();
    assert_eq!((r.references, r.held_here), (0, 1));
    assert_eq!(
        ps[0].slot_state(0, h.slot as usize).unwrap().0,
        SlotState::Shared(set(&[0, 1, 2]))
    );
    assert!(mine.iter().all(|&x| x == 2));
    drop(mine);
}

#[test]
fn a_peer_flipping_a_shared_word_cannot_make_us_spin() {
    // As `a_peer_flipping_a_word_cannot_make_us_spin`, for shared words:
    // releases, reclaims and leaves give up after CAS_RETRIES attempts,
    // and accepts do not loop at all.
    let ps: Vec<_> = parties_on(&PoolConfig::new().class(64, 1), 3)
        .into_iter()
        .map(Arc::new)
        .collect();
    let mut b = ps[0].alloc(8).unwrap();
    b.fill(1);
    let h = b.share(set(&[1, 2])).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (p, stop) = (ps[0].clone(), stop.clone());
        std::thread::spawn(move || {
            let w = state_word(&p, &as_blob(&h));
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Shared with parties 1 and 2 and a changing third: every
                // release and reclaim of 1 or 2 retries on each.
                let third = party(3 + (i % 28) as usize);
                w.store(
                    word(h.generation, SlotState::Shared(set(&[1, 2]).with(third))),
                    Release,
                );
                i = i.wrapping_add(1);
            }
        })
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let worker = {
        let ps = ps.clone();
        std::thread::spawn(move || {
            for _ in 0..2000 {
                if let Ok(g) = ps[1].accept_shared(&h) {
                    drop(g);
                }
                let _ = ps[1].leave();
                let _ = ps[0].reclaim_party(party(2));
            }
            done_tx.send(()).unwrap();
        })
    };
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
    /// Party `p % 4` allocates.
    Alloc(u8, usize),
    Send(usize),
    /// Party 0 or 1 accepts the handle `i`.
    Accept(usize, bool),
    Free(usize),
    /// The peer writes a state (by `state`: one of the exclusive codes, a
    /// held-by code, a shared mask, or garbage; generation of a known
    /// handle plus `dgen`) into the slot of handle `i`.
    Rewrite(usize, u8, u8),
    /// Recall or take back the handle `i`.
    Recall(usize, bool),
    Reclaim(bool),
    /// Share the live blob `i` with the parties of mask `m`, keeping a
    /// reference or not.
    Share(usize, u8, bool),
    /// Party `p % 4` accepts a reference to the slot of handle `i`.
    AcceptShared(usize, u8),
    /// The shared blob `i` is dropped.
    DropShared(usize),
    /// Party `p % 4`'s references are reclaimed by party 0.
    ReclaimParty(u8),
    /// Party `p % 4` leaves.
    Leave(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), 0usize..300).prop_map(|(p, l)| Op::Alloc(p, l)),
        2 => any::<usize>().prop_map(Op::Send),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(i, m)| Op::Accept(i, m)),
        2 => any::<usize>().prop_map(Op::Free),
        4 => (any::<usize>(), any::<u8>(), 0u8..3).prop_map(|(i, s, g)| Op::Rewrite(i, s, g)),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, t)| Op::Recall(i, t)),
        1 => any::<bool>().prop_map(Op::Reclaim),
        2 => (any::<usize>(), 0u8..16, any::<bool>()).prop_map(|(i, m, k)| Op::Share(i, m, k)),
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, p)| Op::AcceptShared(i, p)),
        2 => any::<usize>().prop_map(Op::DropShared),
        1 => any::<u8>().prop_map(Op::ReclaimParty),
        1 => any::<u8>().prop_map(Op::Leave),
    ]
}

fn side(b: bool) -> Side {
    if b { Side::A } else { Side::B }
}

/// A state for the peer to write, by `code`.
fn lie(code: u8) -> SlotState {
    match code % 10 {
        0 => SlotState::Free,
        1 => SlotState::Held(Side::A),
        2 => SlotState::Held(Side::B),
        3 => SlotState::InFlight(Side::A),
        4 => SlotState::InFlight(Side::B),
        5 => SlotState::HeldBy(party(2 + usize::from(code / 10) % 2)),
        6..=8 => SlotState::Shared(Parties::from_bits(u32::from(code / 10 % 16).max(1)).unwrap()),
        _ => SlotState::Invalid(code),
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let ps = parties_on(&small(), 4);
    let pool = |p: u8| &ps[usize::from(p % 4)];
    // Live blobs of this process, each filled with its own tag.
    let mut live: Vec<(BlobMut<'_, R>, u8)> = Vec::new();
    // Live shared blobs of this process, each with the bytes it had when
    // accepted (nothing of this process may write them while it lives).
    let mut shared: Vec<(SharedBlob<'_, R>, Vec<u8>)> = Vec::new();
    // Every handle seen, to resend, rewrite and recall.
    let mut handles: Vec<BlobHandle> = Vec::new();
    let mut tag = 0u8;
    for op in ops {
        match op {
            Op::Alloc(p, len) => {
                if let Ok(b) = pool(p).alloc(len) {
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
                if let Ok(b) = pool(s as u8).accept_mut(&h) {
                    live.push((b, 0));
                }
            }
            Op::Free(i) if !live.is_empty() => {
                drop(live.swap_remove(i % live.len()));
            }
            Op::Rewrite(i, state, dgen) if !handles.is_empty() => {
                let h = handles[i % handles.len()];
                let g = h.generation.wrapping_add(u32::from(dgen));
                state_word(&ps[0], &h).store(word(g, lie(state)), Release);
            }
            Op::Recall(i, take) if !handles.is_empty() => {
                let h = handles[i % handles.len()];
                for p in &ps[..2] {
                    let got = if take { p.take_back(&h) } else { p.recall(&h) };
                    if let Ok(b) = got {
                        live.push((b, 0));
                    }
                }
            }
            Op::Reclaim(s) => {
                let _ = ps[side_index(s)].reclaim(side(s).peer());
            }
            Op::Share(i, m, keep) if !live.is_empty() => {
                let (b, _) = live.swap_remove(i % live.len());
                let to = Parties::from_bits(u32::from(m)).unwrap();
                if keep {
                    if let Ok((mine, h)) = b.share_keep(to) {
                        handles.push(as_blob(&h));
                        let bytes = mine.to_vec();
                        shared.push((mine, bytes));
                    }
                } else if let Ok(h) = b.share(to) {
                    handles.push(as_blob(&h));
                }
            }
            Op::AcceptShared(i, p) if !handles.is_empty() => {
                let h = as_shared(&handles[i % handles.len()]);
                if let Ok(b) = pool(p).accept_shared(&h) {
                    let bytes = b.to_vec();
                    shared.push((b, bytes));
                }
            }
            Op::DropShared(i) if !shared.is_empty() => {
                drop(shared.swap_remove(i % shared.len()));
            }
            Op::ReclaimParty(p) => {
                let _ = ps[0].reclaim_party(party(usize::from(p % 4)));
            }
            Op::Leave(p) => {
                let _ = pool(p).leave();
            }
            _ => {}
        }
        // New blobs get a tag of their own.
        for (b, t) in live.iter_mut().filter(|(_, t)| *t == 0) {
            tag = tag.wrapping_add(1).max(1);
            *t = tag;
            b.fill(tag);
        }
        // No slot is held twice in this process: by two blobs, by a blob
        // and a shared blob, or by two shared blobs of one party. No live
        // blob lost its bytes, nor did a shared blob (only this process
        // writes them here: a second blob over the same slot would have).
        let mut slots: Vec<_> = live
            .iter()
            .map(|(b, _)| (b.handle().class, b.handle().slot))
            .collect();
        slots.sort_unstable();
        let n = slots.len();
        slots.dedup();
        prop_assert_eq!(slots.len(), n, "a slot is held twice");
        let mut refs: Vec<_> = shared
            .iter()
            .map(|(b, _)| (b.handle().class, b.handle().slot, b.party()))
            .collect();
        for r in &refs {
            prop_assert!(
                slots.binary_search(&(r.0, r.1)).is_err(),
                "a slot is held by a blob and shared"
            );
        }
        refs.sort_unstable();
        let n = refs.len();
        refs.dedup();
        prop_assert_eq!(refs.len(), n, "a party holds two references to a slot");
        for (b, t) in &live {
            prop_assert!(b.iter().all(|x| x == t), "a live blob was overwritten");
        }
        for (b, bytes) in &shared {
            prop_assert!(b[..] == bytes[..], "a shared blob was overwritten");
        }
    }
    Ok(())
}

fn side_index(s: bool) -> usize {
    if s { 0 } else { 1 }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
    #[test]
    fn a_hostile_peer_never_gets_a_slot_held_twice(ops in proptest::collection::vec(op(), 1..300)) {
        run(ops)?;
    }
}
