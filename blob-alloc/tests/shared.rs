//! Shared slots on a heap region: fan-out and the last reference, checked
//! handles, one reference per party, reclaim of a dead party (exactly
//! once, the others untouched), a clean leave, id reuse through a roster,
//! the census, and many threads at once.
#![cfg(not(loom))]

use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, Release};

use isocall_blob::{
    BlobError, MAX_PARTIES, Parties, Party, Pool, PoolConfig, Roster, SharedBlob, SharedHandle,
    Side, SlotState, census_region,
};
use isocall_ringbuf::{HeapRegion, Region};

type R = Arc<HeapRegion>;
type P = Pool<R>;

fn party(id: usize) -> Party {
    Party::new(id).unwrap()
}

fn parties(ids: &[usize]) -> Parties {
    ids.iter().map(|&i| party(i)).collect()
}

/// A pool created by the publisher (party 0) and opened by parties
/// `1..n`, all in this process (each party's record is its own bits).
fn pools(config: &PoolConfig, n: usize) -> Vec<P> {
    let region = Arc::new(HeapRegion::new(config.region_size().unwrap()));
    let mut v = vec![Pool::create_as(region.clone(), config, Party::PUBLISHER).unwrap()];
    for p in 1..n {
        v.push(Pool::open_as(region.clone(), party(p)).unwrap());
    }
    v
}

fn small() -> PoolConfig {
    PoolConfig::new().class(64, 4).class(4096, 4)
}

/// Allocates a blob of `len` bytes from `p`, filled with `byte`, and shares
/// it with `to`.
fn publish(p: &P, len: usize, byte: u8, to: &[usize]) -> SharedHandle {
    let mut b = p.alloc(len).unwrap();
    b.fill(byte);
    b.share(parties(to)).unwrap()
}

/// The state word of a slot (offsets from the layout module).
fn state_word<'p>(p: &'p P, h: &SharedHandle) -> &'p std::sync::atomic::AtomicU64 {
    let desc = 64 + 64 * h.class as usize;
    // SAFETY: the class descriptor's states offset and the slot's state word
    // are pool metadata, never blob bytes: no blob's slice covers them.
    let states = unsafe { p.region().u64_at(desc + 24) }.load(Relaxed) as usize;
    // SAFETY: as above.
    unsafe { p.region().u64_at(states + 8 * h.slot as usize) }
}

/// A shared blob whose process dies holding it: the blob is gone (with its
/// process's record of it), the word still holds its reference.
fn died_holding(p: &P, blob: SharedBlob<'_, R>) {
    let (h, me) = (blob.handle(), blob.party());
    drop(blob);
    let holders = match p.slot_state(h.class as usize, h.slot as usize) {
        Some((SlotState::Shared(m), _)) => m,
        Some((SlotState::Free, _)) => Parties::EMPTY,
        other => panic!("{other:?}"),
    };
    let low = 1u64 << 31 | u64::from(holders.with(me).bits());
    state_word(p, &h).store(u64::from(h.generation) << 32 | low, Release);
}

fn state(p: &P, h: &SharedHandle) -> SlotState {
    p.slot_state(h.class as usize, h.slot as usize).unwrap().0
}

#[test]
fn the_last_reference_frees_the_slot() {
    let ps = pools(&small(), 4);
    let h = publish(&ps[0], 1000, 0xAB, &[1, 2, 3]);
    assert_eq!(state(&ps[0], &h), SlotState::Shared(parties(&[1, 2, 3])));
    let st = ps[0].stats();
    assert_eq!((st.shared(), st.used()), (1, 1));
    assert_eq!(st.classes[1].references[..4], [0, 1, 1, 1]);
    assert!(st.classes.iter().all(|c| c.is_exact()));

    let got: Vec<_> = (1..4).map(|i| ps[i].accept_shared(&h).unwrap()).collect();
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.len(), 1000);
        assert!(g.iter().all(|&x| x == 0xAB));
        assert_eq!(g.party(), party(i + 1));
        assert_eq!(g.handle(), h);
    }
    let mut got = got.into_iter();
    drop(got.next());
    assert_eq!(state(&ps[0], &h), SlotState::Shared(parties(&[2, 3])));
    drop(got.next());
    assert_eq!(state(&ps[0], &h), SlotState::Shared(parties(&[3])));
    drop(got.next());
    assert_eq!(state(&ps[0], &h), SlotState::Free);
    assert_eq!(ps[0].stats().used(), 0);
    // Every reference is given up: accepting again is refused.
    for p in &ps {
        assert!(matches!(
            p.accept_shared(&h),
            Err(BlobError::WrongState {
                found: SlotState::Free,
                ..
            })
        ));
    }
    // The slot's next life makes the handle stale.
    let all: Vec<_> = (0..4).map(|_| ps[0].alloc(4096).unwrap()).collect();
    drop(all);
    assert!(matches!(
        ps[1].accept_shared(&h),
        Err(BlobError::Stale { .. })
    ));
}

#[test]
fn the_publisher_may_keep_a_reference() {
    let ps = pools(&small(), 2);
    let mut b = ps[0].alloc(10).unwrap();
    b.copy_from_slice(b"0123456789");
    let (mine, h) = b.share_keep(parties(&[1])).unwrap();
    assert_eq!(&mine[..], b"0123456789");
    assert_eq!(state(&ps[0], &h), SlotState::Shared(parties(&[0, 1])));
    // Kept is accepted: not twice.
    assert!(matches!(
        ps[0].accept_shared(&h),
        Err(BlobError::HeldHere { .. })
    ));
    let theirs = ps[1].accept_shared(&h).unwrap();
    drop(theirs);
    assert_eq!(
        &mine[..],
        b"0123456789",
        "the publisher's reference keeps it"
    );
    drop(mine);
    assert_eq!(ps[0].stats().used(), 0);

    // Or names itself among the holders, and accepts like the others.
    let h = publish(&ps[0], 64, 1, &[0, 1]);
    let mine = ps[0].accept_shared(&h).unwrap();
    drop(ps[1].accept_shared(&h).unwrap());
    drop(mine);
    assert_eq!(ps[0].stats().used(), 0);
}

#[test]
fn handles_are_checked() {
    let ps = pools(&small(), 3);
    let h = publish(&ps[0], 100, 5, &[1]);
    let bad = |f: fn(&mut SharedHandle)| {
        let mut x = h;
        f(&mut x);
        ps[1].accept_shared(&x).unwrap_err()
    };
    assert!(matches!(
        bad(|h| h.class = 7),
        BlobError::NoSuchClass { .. }
    ));
    assert!(matches!(bad(|h| h.slot = 4), BlobError::NoSuchSlot { .. }));
    assert!(matches!(
        bad(|h| h.len = 4097),
        BlobError::LengthBeyondSlot { .. }
    ));
    assert!(matches!(
        bad(|h| h.generation += 1),
        BlobError::Stale { .. }
    ));
    // Not shared to party 2.
    let e = ps[2].accept_shared(&h).unwrap_err();
    assert!(matches!(
        e,
        BlobError::WrongState {
            expected: "shared to this party",
            ..
        }
    ));
    assert!(e.to_string().contains("shared to this party"), "{e}");
    // Accepted once per process.
    let first = ps[1].accept_shared(&h).unwrap();
    assert!(matches!(
        ps[1].accept_shared(&h),
        Err(BlobError::HeldHere { .. })
    ));
    // Another handle on the same region and party shares the record.
    let again = Pool::open_as(ps[1].region().clone(), party(1)).unwrap();
    assert!(matches!(
        again.accept_shared(&h),
        Err(BlobError::HeldHere { .. })
    ));
    drop(first);
    assert_eq!(ps[0].stats().used(), 0);

    // A blob held alone is not shared: refused, and the one who holds it
    // in this process cannot take a shared reference to it either.
    let held = ps[0].alloc(10).unwrap();
    let bh = held.handle();
    let as_shared = SharedHandle {
        class: bh.class,
        slot: bh.slot,
        generation: bh.generation,
        len: bh.len,
    };
    assert!(matches!(
        ps[1].accept_shared(&as_shared),
        Err(BlobError::HeldHere { .. })
    ));
    drop(held);
    // The bytes of a handle round-trip.
    assert_eq!(SharedHandle::from_bytes(&h.to_bytes()), Some(h));
    assert_eq!(SharedHandle::from_bytes(&[0; 15]), None);
}

#[test]
fn a_party_gives_up_only_its_own_reference() {
    let ps = pools(&small(), 3);
    let h = publish(&ps[0], 64, 3, &[1, 2]);
    drop(ps[1].accept_shared(&h).unwrap());
    // Party 1's reference is gone; party 2's is untouched, and party 1
    // cannot give it up (it has no way to name it).
    assert_eq!(state(&ps[0], &h), SlotState::Shared(parties(&[2])));
    assert!(ps[1].accept_shared(&h).is_err());
    assert_eq!(ps[0].stats().references(party(2)), 1);
    let two = ps[2].accept_shared(&h).unwrap();
    assert!(two.iter().all(|&x| x == 3));
    drop(two);
    assert_eq!(ps[0].stats().used(), 0);
}

#[test]
fn sharing_with_no_one_is_refused_and_frees() {
    let ps = pools(&small(), 2);
    let b = ps[0].alloc(10).unwrap();
    assert_eq!(b.share(Parties::EMPTY), Err(BlobError::NoHolders));
    assert_eq!(ps[0].stats().used(), 0);
    let b = ps[0].alloc(10).unwrap().freeze();
    assert_eq!(b.share(Parties::EMPTY), Err(BlobError::NoHolders));
    assert_eq!(ps[0].stats().used(), 0);
    // A frozen blob shares like a writable one.
    let b = ps[0].alloc(10).unwrap().freeze();
    let h = b.share(parties(&[1])).unwrap();
    drop(ps[1].accept_shared(&h).unwrap());
    assert_eq!(ps[0].stats().used(), 0);
}

#[test]
fn two_sided_calls_need_a_side() {
    let ps = pools(&small(), 3);
    assert_eq!((ps[0].side(), ps[1].side()), (Side::A, Side::B));
    assert_eq!(ps[2].party(), party(2));
    // Party 2 allocates (held by it alone) but has no peer to send to: the
    // blob is freed.
    let mine = ps[2].alloc(10).unwrap();
    let h = mine.handle();
    assert_eq!(
        ps[0].slot_state(h.class as usize, h.slot as usize),
        Some((SlotState::HeldBy(party(2)), h.generation))
    );
    assert_eq!(ps[0].stats().classes[0].held_by[2], 1);
    let e = mine.send().unwrap_err();
    assert_eq!(e, BlobError::NotTwoSided { party: party(2) });
    assert!(e.to_string().contains("party 2 has no peer"), "{e}");
    assert_eq!(ps[0].stats().used(), 0);
    // Nor accept, recall or take back anything.
    let to_b = ps[0].alloc(10).unwrap().send().unwrap();
    for e in [
        ps[2].accept(&to_b).unwrap_err(),
        ps[2].recall(&to_b).unwrap_err(),
        ps[2].take_back(&to_b).unwrap_err(),
    ] {
        assert!(matches!(e, BlobError::NotTwoSided { .. }));
    }
    drop(ps[1].accept(&to_b).unwrap());
    // It shares what it allocates like any party.
    let h = publish(&ps[2], 64, 8, &[0, 1]);
    drop(ps[0].accept_shared(&h).unwrap());
    drop(ps[1].accept_shared(&h).unwrap());
    assert_eq!(ps[0].stats().used(), 0);
}

#[test]
fn reclaim_party_gives_back_what_a_dead_subscriber_had() {
    let ps = pools(&PoolConfig::new().class(64, 8), 4);
    // Party 2: accepted s1 (shared with 1 too), never accepted s2 (its
    // alone), holds s3 with the publisher's kept reference, holds a blob of
    // its own alone.
    let s1 = publish(&ps[0], 64, 1, &[1, 2]);
    let s2 = publish(&ps[0], 64, 2, &[2]);
    let mut b = ps[0].alloc(64).unwrap();
    b.fill(3);
    let (kept, s3) = b.share_keep(parties(&[2])).unwrap();
    let one = ps[1].accept_shared(&s1).unwrap();
    let g1 = ps[2].accept_shared(&s1).unwrap();
    let g3 = ps[2].accept_shared(&s3).unwrap();
    let alone = ps[2].alloc(64).unwrap();
    let ah = alone.handle();
    // Party 2 dies: its blobs are gone with its process, the words stay.
    died_holding(&ps[2], g1);
    died_holding(&ps[2], g3);
    drop(alone);
    let desc = 64usize;
    // SAFETY: the class descriptor's states offset and the slot's state word
    // are pool metadata, never blob bytes: no blob's slice covers them.
    let states = unsafe { ps[0].region().u64_at(desc + 24) }.load(Relaxed) as usize;
    // SAFETY: as above.
    unsafe { ps[0].region().u64_at(states + 8 * ah.slot as usize) }
        .store(u64::from(ah.generation) << 32 | 0x42, Release);
    assert_eq!(ps[0].stats().holds(party(2)), 4);

    let r = ps[0].reclaim_party(party(2));
    assert_eq!((r.held, r.references, r.shared_freed), (1, 3, 1));
    assert_eq!(r.freed(), 2, "its own blob and s2");
    assert_eq!((r.held_here, r.contended, r.in_flight_to_dead), (0, 0, 0));
    assert_eq!(ps[0].stats().holds(party(2)), 0);
    assert_eq!(state(&ps[0], &s1), SlotState::Shared(parties(&[1])));
    assert_eq!(state(&ps[0], &s2), SlotState::Free);
    assert_eq!(state(&ps[0], &s3), SlotState::Shared(parties(&[0])));
    // Exactly once.
    assert_eq!(ps[0].reclaim_party(party(2)), Default::default());
    // The others' references are untouched and still read.
    assert!(one.iter().all(|&x| x == 1) && kept.iter().all(|&x| x == 3));
    drop((one, kept));
    assert_eq!(ps[0].stats().used(), 0);
}

#[test]
fn reclaim_party_leaves_what_this_process_holds() {
    let ps = pools(&small(), 3);
    let h = publish(&ps[0], 64, 4, &[1]);
    let g = ps[1].accept_shared(&h).unwrap();
    // Party 1 lives in this process: its reference is left alone.
    let r = ps[0].reclaim_party(party(1));
    assert_eq!((r.references, r.held_here), (0, 1));
    assert_eq!(state(&ps[0], &h), SlotState::Shared(parties(&[1])));
    drop(g);
    assert_eq!(ps[0].stats().used(), 0);
}

#[test]
fn reclaim_of_side_b_gives_up_its_references_too() {
    // The two-sided reclaim is the reclaim of party 1.
    let ps = pools(&small(), 3);
    let h = publish(&ps[0], 64, 4, &[1, 2]);
    let to_b = ps[0].alloc(64).unwrap().send().unwrap();
    let r = ps[0].reclaim(Side::B);
    assert_eq!(
        (r.in_flight_to_dead, r.references, r.shared_freed),
        (1, 1, 0)
    );
    assert!(ps[1].accept(&to_b).is_err());
    drop(ps[2].accept_shared(&h).unwrap());
    assert_eq!(ps[0].stats().used(), 0);
}

#[test]
fn leaving_gives_up_only_what_no_shared_blob_holds() {
    let ps = pools(&PoolConfig::new().class(64, 8), 3);
    let read = publish(&ps[0], 64, 1, &[1]);
    let unread = publish(&ps[0], 64, 2, &[1]);
    let with_two = publish(&ps[0], 64, 3, &[1, 2]);
    let g = ps[1].accept_shared(&read).unwrap();
    let r = ps[1].leave();
    assert_eq!((r.references, r.shared_freed, r.held_here), (2, 1, 1));
    assert_eq!(r.freed(), 1);
    // What it reads stays, until it drops it.
    assert!(g.iter().all(|&x| x == 1));
    assert_eq!(ps[0].stats().holds(party(1)), 1);
    assert_eq!(state(&ps[0], &unread), SlotState::Free);
    assert_eq!(state(&ps[0], &with_two), SlotState::Shared(parties(&[2])));
    drop(g);
    assert_eq!(ps[0].stats().holds(party(1)), 0);
    drop(ps[2].accept_shared(&with_two).unwrap());
    assert_eq!(ps[0].stats().used(), 0);
}

#[test]
fn a_roster_gives_an_id_again_only_once_nothing_of_it_is_left() {
    let config = PoolConfig::new().class(64, 8);
    let region = Arc::new(HeapRegion::new(config.region_size().unwrap()));
    let publisher = Pool::create_as(region.clone(), &config, Party::PUBLISHER).unwrap();
    let mut roster = Roster::new();
    let alice = roster.join(&publisher).unwrap();
    assert_eq!(alice.party(), party(1));
    let a = Pool::open_as(region.clone(), alice.party()).unwrap();
    let old = publish(&publisher, 64, 1, &[1]);
    let reading = a.accept_shared(&old).unwrap();
    let unread = publish(&publisher, 64, 2, &[1]);

    // Alice leaves while she still reads; every other id is taken.
    assert!(roster.leave(alice));
    assert!(!roster.is_member(alice) && !roster.leave(alice));
    let others: Vec<_> = (2..MAX_PARTIES)
        .map(|_| roster.join(&publisher).unwrap())
        .collect();
    assert_eq!(roster.members().len(), MAX_PARTIES - 2);
    assert!(!roster.members().contains(alice.party()));
    let e = roster.join(&publisher).unwrap_err();
    assert_eq!(e, BlobError::NoFreeParty { retiring: 1 });
    // She gives up what she never accepted: still not free (she reads).
    assert_eq!(a.leave().references, 1);
    assert_eq!(state(&publisher, &unread), SlotState::Free);
    assert!(roster.join(&publisher).is_err());
    drop(reading);
    // Now nothing of her is left: her id goes to Bob.
    let bob = roster.join(&publisher).unwrap();
    assert_eq!(bob.party(), alice.party());
    assert_ne!(bob, alice);
    // Bob inherits nothing: her handles are refused to him.
    let b = Pool::open_as(region.clone(), bob.party()).unwrap();
    assert!(b.accept_shared(&old).is_err() && b.accept_shared(&unread).is_err());
    // A late death notice for Alice does not reclaim Bob's references.
    let his = publish(&publisher, 64, 5, &[1]);
    assert_eq!(roster.died(&publisher, alice), None);
    assert_eq!(state(&publisher, &his), SlotState::Shared(parties(&[1])));

    // Carol dies holding a reference: reclaimed, her id vacant at once.
    let carol = others[0];
    let c = Pool::open_as(region, carol.party()).unwrap();
    let h = publish(&publisher, 64, 6, &[1, carol.party().id()]);
    died_holding(&publisher, c.accept_shared(&h).unwrap());
    let r = roster.died(&publisher, carol).unwrap();
    assert_eq!(r.references, 1);
    assert_eq!(roster.died(&publisher, carol), None, "once");
    assert_eq!(roster.join(&publisher).unwrap().party(), carol.party());
    drop(b.accept_shared(&his).unwrap());
    drop(b.accept_shared(&h).unwrap());
    assert_eq!(publisher.stats().used(), 0);
}

#[test]
fn the_census_counts_every_slot_once() {
    let ps = pools(&small(), 4);
    let _alone = ps[3].alloc(10).unwrap();
    let _mine = ps[0].alloc(10).unwrap();
    let _to_b = ps[0].alloc(20).unwrap().send().unwrap();
    let h = publish(&ps[0], 2000, 1, &[1, 2, 3]);
    let _g = ps[2].accept_shared(&h).unwrap();
    // SAFETY: the region is only ever this pool's, and a census loads only
    // its header and state words, never blob bytes.
    let st = unsafe { census_region(&**ps[0].region()) }.unwrap();
    assert_eq!(st, ps[0].stats());
    assert!(st.classes.iter().all(|c| c.is_exact()));
    let c0 = &st.classes[0];
    assert_eq!((c0.held, c0.held_by[3], c0.in_flight), ([1, 0], 1, [0, 1]));
    let c1 = &st.classes[1];
    assert_eq!(
        (c1.shared, c1.references[..4].to_vec()),
        (1, vec![0, 1, 1, 1])
    );
    assert_eq!(st.used(), 4);
    assert_eq!((st.holds(party(3)), st.holds(party(1))), (2, 2));
}

#[test]
fn threads_fan_out() {
    // The publisher shares 5000 blobs with three subscriber threads, each
    // holding a few at once; every byte is checked and nothing is left.
    let ps: Vec<_> = pools(&PoolConfig::new().class(256, 16), 4)
        .into_iter()
        .map(Arc::new)
        .collect();
    let mut txs = Vec::new();
    let mut subs = Vec::new();
    for p in &ps[1..] {
        let p = Arc::clone(p);
        let (tx, rx) = std::sync::mpsc::sync_channel::<SharedHandle>(4);
        txs.push(tx);
        subs.push(std::thread::spawn(move || {
            let mut held = std::collections::VecDeque::new();
            for (i, h) in rx.into_iter().enumerate() {
                let g = p.accept_shared(&h).unwrap();
                let v = u32::from_le_bytes(g[..4].try_into().unwrap());
                assert!(g[4..].iter().all(|&x| x == v as u8));
                held.push_back(g);
                if held.len() > i % 3 {
                    held.pop_front();
                }
            }
        }));
    }
    let all = Parties::from_bits(0b1110).unwrap();
    for i in 0..5000u32 {
        let mut b = loop {
            match ps[0].alloc(256) {
                Ok(b) => break b,
                Err(BlobError::Exhausted { .. }) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        b[..4].copy_from_slice(&i.to_le_bytes());
        b[4..].fill(i as u8);
        let h = if i % 2 == 0 {
            b.share(all).unwrap()
        } else {
            let (mine, h) = b.share_keep(all).unwrap();
            drop(mine);
            h
        };
        for tx in &txs {
            tx.send(h).unwrap();
        }
    }
    drop(txs);
    for s in subs {
        s.join().unwrap();
    }
    assert_eq!(ps[0].stats().used(), 0);
}
