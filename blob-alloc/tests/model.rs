//! The pool against a model: random sequences of alloc, send, accept,
//! recall, free, share, accept and drop of shared blobs, a party leaving,
//! stale and forged uses, and a party's death with reclaim, checked against
//! a model of the live blobs and of each shared slot's holders after every
//! step. Four parties use the pool: 0 and 1 (sides A and B, which also send
//! to each other) and two subscribers, 2 and 3. A hostile peer rewrites
//! shared words too, forging and withdrawing references that no party has
//! accepted (a shared blob's own reference is the hostile tests' matter),
//! and the model follows the word. No slot is handed out twice
//! (every live blob keeps the bytes it was filled with), none is lost (the
//! census matches the model exactly, references per party included), every
//! shared slot is freed exactly when its last reference goes, and every bad
//! handle is refused.
#![cfg(not(loom))]

use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, Release};

use isocall_blob::{
    BlobError, BlobHandle, BlobMut, Parties, Party, Pool, PoolConfig, SharedBlob, SharedHandle,
    Side, SlotState,
};
use isocall_ringbuf::{HeapRegion, Region};
use proptest::prelude::*;

type R = Arc<HeapRegion>;

/// Parties in the model.
const PARTIES: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    Alloc(u8, usize),
    Send(usize),
    Accept(usize, bool),
    Recall(usize),
    Free(usize),
    Reuse(usize),
    Forge(u32, u32, u32, u32, u8),
    /// Share the held blob `i` with the parties of mask `m` (bits 0..4),
    /// keeping a reference if `keep`.
    Share(usize, u8, bool),
    /// Party `p` accepts its reference to the shared blob `i`.
    AcceptShared(usize, u8),
    /// The accepted reference `j` of the shared blob `i` is dropped.
    DropShared(usize, usize),
    /// Party `p` leaves cleanly: it gives up the references it never
    /// accepted.
    Leave(u8),
    /// Party `p` dies and another reclaims it.
    Die(u8),
    /// A peer rewrites the shared slot `i`'s holders to the mask `m`, but
    /// for those that accepted their reference, which it keeps.
    Scribble(usize, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..PARTIES as u8, 0usize..1200).prop_map(|(p, l)| Op::Alloc(p, l)),
        2 => any::<usize>().prop_map(Op::Send),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(i, m)| Op::Accept(i, m)),
        1 => any::<usize>().prop_map(Op::Recall),
        2 => any::<usize>().prop_map(Op::Free),
        1 => any::<usize>().prop_map(Op::Reuse),
        1 => (0u32..4, 0u32..40, 0u32..4, 0u32..2000, 0u8..PARTIES as u8)
            .prop_map(|(c, s, g, l, p)| Op::Forge(c, s, g, l, p)),
        3 => (any::<usize>(), 0u8..16, any::<bool>()).prop_map(|(i, m, k)| Op::Share(i, m, k)),
        4 => (any::<usize>(), 0u8..PARTIES as u8).prop_map(|(i, p)| Op::AcceptShared(i, p)),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Op::DropShared(i, j)),
        1 => (0u8..PARTIES as u8).prop_map(Op::Leave),
        1 => (0u8..PARTIES as u8).prop_map(Op::Die),
        2 => (any::<usize>(), 0u8..16).prop_map(|(i, m)| Op::Scribble(i, m)),
    ]
}

fn party(p: usize) -> Party {
    Party::new(p).unwrap()
}

/// A reference of a party to a shared slot: not accepted yet, or accepted
/// (its shared blob).
type Ref<'p> = (Party, Option<SharedBlob<'p, R>>);

enum Live<'p> {
    Held(Party, BlobMut<'p, R>, u8),
    Flight(Side, BlobHandle, u8),
    Shared(SharedHandle, u8, Vec<Ref<'p>>),
}

impl Live<'_> {
    fn key(&self) -> (u32, u32) {
        match self {
            Live::Held(_, b, _) => (b.handle().class, b.handle().slot),
            Live::Flight(_, h, _) => (h.class, h.slot),
            Live::Shared(h, _, _) => (h.class, h.slot),
        }
    }
}

/// The state word of a slot (offsets from the layout module).
fn state_word(p: &Pool<R>, class: u32, slot: u32) -> &std::sync::atomic::AtomicU64 {
    let desc = 64 + 64 * class as usize;
    // SAFETY: the class descriptor's states offset and the slot's state word
    // are pool metadata, never blob bytes: no blob's slice covers them.
    let states = unsafe { p.region().u64_at(desc + 24) }.load(Relaxed) as usize;
    // SAFETY: as above.
    unsafe { p.region().u64_at(states + 8 * slot as usize) }
}

/// A state word saying `party` holds the slot at `generation` (layout of
/// `state.rs`).
fn held_word(party: Party, generation: u32) -> u64 {
    let code = match party.id() {
        0 => 1,
        1 => 2,
        p => 0x40 + p as u64,
    };
    u64::from(generation) << 32 | code
}

/// A party's shared blob vanishes with its process: the blob is gone (with
/// its process's record of it), the state word still holds its reference.
fn vanish(pool: &Pool<R>, blob: SharedBlob<'_, R>) {
    let (h, me) = (blob.handle(), blob.party());
    drop(blob);
    let word = state_word(pool, h.class, h.slot);
    let holders = match pool.slot_state(h.class as usize, h.slot as usize) {
        Some((SlotState::Shared(m), g)) if g == h.generation => m,
        Some((SlotState::Free, g)) if g == h.generation => Parties::EMPTY,
        other => panic!("a dropped reference left {other:?}"),
    };
    let low = 1u64 << 31 | u64::from(holders.with(me).bits());
    word.store(u64::from(h.generation) << 32 | low, Release);
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let config = PoolConfig::new().class(64, 5).class(256, 70).class(1024, 3);
    let classes: Vec<_> = config.classes().to_vec();
    let region = Arc::new(HeapRegion::new(config.region_size().unwrap()));
    let mut pools = vec![Pool::create_as(region.clone(), &config, party(0)).unwrap()];
    for p in 1..PARTIES {
        pools.push(Pool::open_as(region.clone(), party(p)).unwrap());
    }
    let pools = pools;
    let pool = |p: Party| &pools[p.id()];
    let mut live: Vec<Live<'_>> = Vec::new();
    let mut dead: Vec<BlobHandle> = Vec::new();
    let mut tag = 0u8;

    for op in ops {
        match op {
            Op::Alloc(p, len) => {
                let p = party(usize::from(p));
                let want = classes.iter().position(|c| c.slot_size >= len);
                let r = pool(p).alloc(len);
                match want {
                    None => {
                        let too_large = matches!(r, Err(BlobError::TooLarge { .. }));
                        prop_assert!(too_large);
                    }
                    Some(ci) => {
                        let used = live.iter().filter(|l| l.key().0 as usize == ci).count();
                        if used == classes[ci].count {
                            prop_assert_eq!(
                                r.unwrap_err(),
                                BlobError::Exhausted {
                                    class: ci,
                                    slot_size: classes[ci].slot_size
                                }
                            );
                        } else {
                            let mut b =
                                r.map_err(|e| TestCaseError::fail(format!("alloc: {e}")))?;
                            let h = b.handle();
                            prop_assert_eq!(h.class as usize, ci);
                            for l in &live {
                                prop_assert_ne!(
                                    l.key(),
                                    (h.class, h.slot),
                                    "slot handed out twice"
                                );
                            }
                            tag = tag.wrapping_add(1);
                            b.fill(tag);
                            live.push(Live::Held(p, b, tag));
                        }
                    }
                }
            }
            Op::Send(i) if !live.is_empty() => {
                let i = i % live.len();
                if let Live::Held(p, ..) = live[i] {
                    let Live::Held(_, b, t) = live.swap_remove(i) else {
                        unreachable!()
                    };
                    match p.side() {
                        Some(s) => {
                            let h = b
                                .send()
                                .map_err(|e| TestCaseError::fail(format!("send: {e}")))?;
                            live.push(Live::Flight(s.peer(), h, t));
                        }
                        None => {
                            // No peer: refused, and the blob is freed.
                            let h = b.handle();
                            prop_assert_eq!(b.send(), Err(BlobError::NotTwoSided { party: p }));
                            dead.push(h);
                        }
                    }
                }
            }
            Op::Accept(i, m) if !live.is_empty() => {
                let i = i % live.len();
                if let Live::Flight(to, h, t) = live[i] {
                    // The wrong side is refused first, and so is a party
                    // with no side.
                    prop_assert!(pool(to.peer().into()).accept(&h).is_err());
                    let no_side = matches!(
                        pool(party(2)).accept(&h),
                        Err(BlobError::NotTwoSided { .. })
                    );
                    prop_assert!(no_side);
                    let to_p = Party::from(to);
                    if m {
                        let b = pool(to_p)
                            .accept_mut(&h)
                            .map_err(|e| TestCaseError::fail(format!("accept: {e}")))?;
                        prop_assert!(b.iter().all(|&x| x == t), "bytes changed in flight");
                        live[i] = Live::Held(to_p, b, t);
                    } else {
                        let b = pool(to_p)
                            .accept(&h)
                            .map_err(|e| TestCaseError::fail(format!("accept: {e}")))?;
                        prop_assert!(b.iter().all(|&x| x == t), "bytes changed in flight");
                        drop(b);
                        // Read and dropped (freed): a second accept is refused.
                        prop_assert!(pool(to_p).accept(&h).is_err());
                        live.swap_remove(i);
                        dead.push(h);
                    }
                }
            }
            Op::Recall(i) if !live.is_empty() => {
                let i = i % live.len();
                if let Live::Flight(to, h, t) = live[i] {
                    let from = Party::from(to.peer());
                    let b = pool(from)
                        .recall(&h)
                        .map_err(|e| TestCaseError::fail(format!("recall: {e}")))?;
                    live[i] = Live::Held(from, b, t);
                }
            }
            Op::Free(i) if !live.is_empty() => {
                let i = i % live.len();
                if let Live::Held(..) = live[i] {
                    let Live::Held(_, b, _) = live.swap_remove(i) else {
                        unreachable!()
                    };
                    dead.push(b.handle());
                    drop(b);
                }
            }
            Op::Share(i, m, keep) if !live.is_empty() => {
                let i = i % live.len();
                if let Live::Held(..) = live[i] {
                    let Live::Held(owner, b, t) = live.swap_remove(i) else {
                        unreachable!()
                    };
                    let to = Parties::from_bits(u32::from(m)).unwrap();
                    let bh = b.handle();
                    if keep {
                        let (mine, h) = b
                            .share_keep(to)
                            .map_err(|e| TestCaseError::fail(format!("share: {e}")))?;
                        prop_assert!(mine.iter().all(|&x| x == t), "bytes changed by sharing");
                        let mut refs: Vec<Ref<'_>> =
                            to.without(owner).iter().map(|p| (p, None)).collect();
                        refs.push((owner, Some(mine)));
                        live.push(Live::Shared(h, t, refs));
                    } else if to.is_empty() {
                        prop_assert_eq!(b.share(to), Err(BlobError::NoHolders));
                        dead.push(bh);
                    } else {
                        let h = b
                            .share(to)
                            .map_err(|e| TestCaseError::fail(format!("share: {e}")))?;
                        live.push(Live::Shared(h, t, to.iter().map(|p| (p, None)).collect()));
                    }
                }
            }
            Op::AcceptShared(i, p) if !live.is_empty() => {
                let i = i % live.len();
                let p = party(usize::from(p));
                if let Live::Shared(h, t, refs) = &mut live[i] {
                    let got = pool(p).accept_shared(h);
                    match refs.iter_mut().find(|(q, _)| *q == p) {
                        Some((_, r @ None)) => {
                            let b = got
                                .map_err(|e| TestCaseError::fail(format!("accept_shared: {e}")))?;
                            prop_assert!(b.iter().all(|x| x == t), "shared bytes changed");
                            prop_assert_eq!(b.len(), h.len as usize);
                            *r = Some(b);
                        }
                        Some((_, Some(_))) => {
                            let held_here = matches!(got, Err(BlobError::HeldHere { .. }));
                            prop_assert!(held_here, "accepted twice: {:?}", got);
                        }
                        None => {
                            let wrong = matches!(got, Err(BlobError::WrongState { .. }));
                            prop_assert!(wrong, "accepted by a non-holder: {:?}", got);
                        }
                    }
                }
            }
            Op::DropShared(i, j) if !live.is_empty() => {
                let i = i % live.len();
                let mut last = None;
                if let Live::Shared(h, _, refs) = &mut live[i] {
                    let accepted: Vec<usize> =
                        (0..refs.len()).filter(|&k| refs[k].1.is_some()).collect();
                    if !accepted.is_empty() {
                        let k = accepted[j % accepted.len()];
                        let (p, b) = refs.swap_remove(k);
                        drop(b);
                        // Given up: this party cannot accept it again.
                        prop_assert!(pool(p).accept_shared(h).is_err());
                        if refs.is_empty() {
                            last = Some(*h);
                        }
                    }
                }
                if let Some(h) = last {
                    // The last reference: the slot is free.
                    live.swap_remove(i);
                    dead.push(BlobHandle {
                        class: h.class,
                        slot: h.slot,
                        generation: h.generation,
                        len: h.len,
                    });
                }
            }
            Op::Scribble(i, m) if !live.is_empty() => {
                let i = i % live.len();
                if let Live::Shared(h, _, refs) = &mut live[i] {
                    let accepted: Parties = refs
                        .iter()
                        .filter(|(_, b)| b.is_some())
                        .map(|(p, _)| *p)
                        .collect();
                    let holders = Parties::from_bits(u32::from(m) | accepted.bits()).unwrap();
                    if !holders.is_empty() {
                        let low = 1u64 << 31 | u64::from(holders.bits());
                        state_word(&pools[0], h.class, h.slot)
                            .store(u64::from(h.generation) << 32 | low, Release);
                        refs.retain(|(_, b)| b.is_some());
                        for p in holders.iter().filter(|p| !accepted.contains(*p)) {
                            refs.push((p, None));
                        }
                    }
                }
            }
            Op::Leave(p) => {
                let p = party(usize::from(p));
                let (mut given, mut freed, mut kept) = (0, 0, 0);
                let mut keep = Vec::new();
                for l in live.drain(..) {
                    match l {
                        Live::Shared(h, t, mut refs) => {
                            let before = refs.len();
                            refs.retain(|(q, b)| *q != p || b.is_some());
                            given += before - refs.len();
                            kept += refs.iter().filter(|(q, _)| *q == p).count();
                            if refs.is_empty() {
                                freed += 1;
                                dead.push(BlobHandle {
                                    class: h.class,
                                    slot: h.slot,
                                    generation: h.generation,
                                    len: h.len,
                                });
                            } else {
                                keep.push(Live::Shared(h, t, refs));
                            }
                        }
                        other => keep.push(other),
                    }
                }
                live = keep;
                let r = pool(p).leave();
                prop_assert_eq!(
                    (r.references, r.shared_freed, r.held_here),
                    (given, freed, kept)
                );
                prop_assert_eq!(r.held + r.in_flight_to_dead + r.in_flight_from_dead, 0);
            }
            Op::Reuse(i) if !dead.is_empty() => {
                let h = dead[i % dead.len()];
                let sh = SharedHandle {
                    class: h.class,
                    slot: h.slot,
                    generation: h.generation,
                    len: h.len,
                };
                for p in &pools {
                    prop_assert!(p.accept_shared(&sh).is_err());
                }
                prop_assert!(pools[0].accept(&h).is_err() && pools[1].accept(&h).is_err());
                prop_assert!(pools[0].recall(&h).is_err() && pools[1].recall(&h).is_err());
            }
            Op::Forge(c, s, g, l, p) => {
                let h = BlobHandle {
                    class: c,
                    slot: s,
                    generation: g,
                    len: l,
                };
                // Same slot and generation as a blob in flight is that blob
                // (the length is the sender's word, bounded by the slot).
                let genuine = live.iter().any(|x| {
                    matches!(x, Live::Flight(_, f, _) if (f.class, f.slot, f.generation) == (c, s, g))
                });
                if !genuine {
                    prop_assert!(pools[0].accept(&h).is_err() && pools[1].accept(&h).is_err());
                }
                // A forged shared handle is refused unless it names a
                // reference the party has and has not accepted.
                let p = party(usize::from(p));
                let pending = live.iter().any(|x| {
                    matches!(x, Live::Shared(f, _, refs)
                        if (f.class, f.slot, f.generation) == (c, s, g)
                            && refs.iter().any(|(q, b)| *q == p && b.is_none()))
                });
                if !pending {
                    let sh = SharedHandle {
                        class: c,
                        slot: s,
                        generation: g,
                        len: l,
                    };
                    prop_assert!(pool(p).accept_shared(&sh).is_err());
                }
            }
            Op::Die(p) => {
                // `p` dies: its blobs and shared blobs vanish without being
                // dropped, and a survivor reclaims (after reading what was
                // sent to it).
                let p = party(usize::from(p));
                let survivor = party((p.id() + 1) % PARTIES);
                let (mut held, mut flight, mut refs_of_p, mut freed_shared) = (0, 0, 0, 0);
                let mut keep = Vec::new();
                for l in live.drain(..) {
                    match l {
                        Live::Held(o, b, _) if o == p => {
                            // Its process's record of the blob goes with it
                            // (a `mem::forget` here would be a leak in a
                            // live process, which keeps the slot held); the
                            // state word stays as it left it.
                            let h = b.handle();
                            drop(b);
                            state_word(&pools[0], h.class, h.slot)
                                .store(held_word(o, h.generation), Release);
                            dead.push(h);
                            held += 1;
                        }
                        Live::Flight(_, h, _) if p.side().is_some() => {
                            dead.push(h);
                            flight += 1;
                        }
                        Live::Shared(h, t, refs) => {
                            let mut rest = Vec::new();
                            for (q, b) in refs {
                                if q == p {
                                    refs_of_p += 1;
                                    if let Some(b) = b {
                                        vanish(pool(p), b);
                                    }
                                } else {
                                    rest.push((q, b));
                                }
                            }
                            if rest.is_empty() {
                                freed_shared += 1;
                                dead.push(BlobHandle {
                                    class: h.class,
                                    slot: h.slot,
                                    generation: h.generation,
                                    len: h.len,
                                });
                            } else {
                                keep.push(Live::Shared(h, t, rest));
                            }
                        }
                        other => keep.push(other),
                    }
                }
                live = keep;
                let r = pool(survivor).reclaim_party(p);
                prop_assert_eq!(r.held, held);
                prop_assert_eq!(r.in_flight_to_dead + r.in_flight_from_dead, flight);
                prop_assert_eq!((r.references, r.shared_freed), (refs_of_p, freed_shared));
                prop_assert_eq!(r.freed(), held + flight + freed_shared);
                prop_assert_eq!((r.repaired, r.held_here, r.contended), (0, 0, 0));
                // Exactly once: a second reclaim finds nothing.
                let again = pool(survivor).reclaim_party(p);
                prop_assert_eq!((again.freed(), again.references), (0, 0));
            }
            _ => {}
        }
        // The census matches the model exactly.
        let st = pools[0].stats();
        for (ci, c) in st.classes.iter().enumerate() {
            let mut held = [0; isocall_blob::MAX_PARTIES];
            let mut flight = [0; 2];
            let mut shared = 0;
            let mut refs = [0; isocall_blob::MAX_PARTIES];
            for l in live.iter().filter(|l| l.key().0 as usize == ci) {
                match l {
                    Live::Held(p, _, _) => held[p.id()] += 1,
                    Live::Flight(s, _, _) => flight[Party::from(*s).id()] += 1,
                    Live::Shared(_, _, r) => {
                        shared += 1;
                        for (p, _) in r {
                            refs[p.id()] += 1;
                        }
                    }
                }
            }
            prop_assert_eq!(c.held_by, held, "class {}", ci);
            prop_assert_eq!(c.held, [held[0], held[1]], "class {}", ci);
            prop_assert_eq!(c.in_flight, flight, "class {}", ci);
            prop_assert_eq!(c.shared, shared, "class {}", ci);
            prop_assert_eq!(c.references, refs, "class {}", ci);
            let used = held.iter().sum::<usize>() + flight[0] + flight[1] + shared;
            prop_assert_eq!(c.free, c.count - used);
            prop_assert_eq!(c.invalid, 0);
            prop_assert!(c.is_exact());
        }
    }
    // Every live blob still holds its own bytes.
    for l in &live {
        match l {
            Live::Held(_, b, t) => {
                prop_assert!(b.iter().all(|x| x == t), "a live blob was overwritten")
            }
            Live::Shared(_, t, refs) => {
                for b in refs.iter().filter_map(|(_, b)| b.as_ref()) {
                    prop_assert!(b.iter().all(|x| x == t), "a shared blob was overwritten");
                }
            }
            Live::Flight(..) => {}
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
    #[test]
    fn pool_matches_model(ops in proptest::collection::vec(op(), 1..400)) {
        run(ops)?;
    }
}

#[test]
fn a_long_run_fills_every_class() {
    let mut ops = Vec::new();
    for i in 0..3000usize {
        ops.push(Op::Alloc((i % 3 == 0) as u8, (i * 37) % 1100));
        ops.push(Op::Send(i * 7));
        ops.push(Op::Accept(i * 11, i % 2 == 0));
        if i % 5 == 0 {
            ops.push(Op::Free(i));
        }
        if i % 997 == 0 {
            ops.push(Op::Die((i % 2) as u8));
        }
    }
    run(ops).unwrap();
}

#[test]
fn a_long_run_fans_out() {
    // The publisher shares most of what it allocates with random sets of
    // the others, which accept and drop in turn; a peer forges and
    // withdraws references; subscribers die and leave now and then.
    let mut ops = Vec::new();
    for i in 0..3000usize {
        ops.push(Op::Alloc(0, (i * 37) % 1100));
        ops.push(Op::Share(i * 5, (i % 15 + 1) as u8, i % 4 == 0));
        for p in 1..PARTIES as u8 {
            ops.push(Op::AcceptShared(i * 13 + usize::from(p), p));
        }
        ops.push(Op::DropShared(i * 3, i));
        ops.push(Op::DropShared(i * 7, i + 1));
        if i % 7 == 0 {
            ops.push(Op::Scribble(i * 11, (i % 16) as u8));
        }
        if i % 401 == 0 {
            ops.push(Op::Die(2 + (i % 2) as u8));
        }
        if i % 577 == 0 {
            ops.push(Op::Leave(1 + (i % 3) as u8));
        }
    }
    run(ops).unwrap();
}
