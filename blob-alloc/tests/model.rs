//! The pool against a model: random sequences of alloc, send, accept,
//! recall, free, stale and forged uses, and a side's death with reclaim,
//! checked against a map of live handles after every step. No slot is
//! handed out twice (every live blob keeps the bytes it was filled with),
//! none is lost (the census matches the model exactly), and every bad
//! handle is refused.
#![cfg(not(loom))]

mod common;

use std::sync::Arc;

use common::{pair, rewrite, side};
use isocall_blob::{BlobError, BlobHandle, BlobMut, PoolConfig, Side, SlotState};
use isocall_ringbuf::HeapRegion;
use proptest::prelude::*;

type R = Arc<HeapRegion>;

#[derive(Clone, Debug)]
enum Op {
    Alloc(bool, usize),
    Send(usize),
    Accept(usize, bool),
    Recall(usize),
    Free(usize),
    Reuse(usize),
    Forge(u32, u32, u32, u32),
    Die(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 0usize..1200).prop_map(|(s, l)| Op::Alloc(s, l)),
        3 => any::<usize>().prop_map(Op::Send),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(i, m)| Op::Accept(i, m)),
        1 => any::<usize>().prop_map(Op::Recall),
        2 => any::<usize>().prop_map(Op::Free),
        1 => any::<usize>().prop_map(Op::Reuse),
        1 => (0u32..4, 0u32..40, 0u32..4, 0u32..2000).prop_map(|(c, s, g, l)| Op::Forge(c, s, g, l)),
        1 => any::<bool>().prop_map(Op::Die),
    ]
}

enum Live<'p> {
    Held(Side, BlobMut<'p, R>, u8),
    Flight(Side, BlobHandle, u8),
}

fn key(h: &BlobHandle) -> (u32, u32) {
    (h.class, h.slot)
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let config = PoolConfig::new().class(64, 5).class(256, 70).class(1024, 3);
    let classes: Vec<_> = config.classes().to_vec();
    let (pa, pb) = pair(&config);
    let pool = |s: Side| if s == Side::A { &pa } else { &pb };
    let mut live: Vec<Live<'_>> = Vec::new();
    let mut dead: Vec<BlobHandle> = Vec::new();
    let mut tag = 0u8;

    for op in ops {
        match op {
            Op::Alloc(s, len) => {
                let s = side(s);
                let want = classes.iter().position(|c| c.slot_size >= len);
                let r = pool(s).alloc(len);
                match want {
                    None => {
                        let too_large = matches!(r, Err(BlobError::TooLarge { .. }));
                        prop_assert!(too_large);
                    }
                    Some(ci) => {
                        let used = live
                            .iter()
                            .filter(|l| match l {
                                Live::Held(_, b, _) => b.handle().class as usize == ci,
                                Live::Flight(_, h, _) => h.class as usize == ci,
                            })
                            .count();
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
                                let other = match l {
                                    Live::Held(_, b, _) => b.handle(),
                                    Live::Flight(_, h, _) => *h,
                                };
                                prop_assert_ne!(key(&other), key(&h), "slot handed out twice");
                            }
                            tag = tag.wrapping_add(1);
                            b.fill(tag);
                            live.push(Live::Held(s, b, tag));
                        }
                    }
                }
            }
            Op::Send(i) if !live.is_empty() => {
                let i = i % live.len();
                if let Live::Held(..) = live[i] {
                    let Live::Held(s, b, t) = live.swap_remove(i) else {
                        unreachable!()
                    };
                    let h = b
                        .send()
                        .map_err(|e| TestCaseError::fail(format!("send: {e}")))?;
                    live.push(Live::Flight(s.peer(), h, t));
                }
            }
            Op::Accept(i, m) if !live.is_empty() => {
                let i = i % live.len();
                if let Live::Flight(to, h, t) = live[i] {
                    // The wrong side is refused first.
                    prop_assert!(pool(to.peer()).accept(&h).is_err());
                    if m {
                        let b = pool(to)
                            .accept_mut(&h)
                            .map_err(|e| TestCaseError::fail(format!("accept: {e}")))?;
                        prop_assert!(b.iter().all(|&x| x == t), "bytes changed in flight");
                        live[i] = Live::Held(to, b, t);
                    } else {
                        let b = pool(to)
                            .accept(&h)
                            .map_err(|e| TestCaseError::fail(format!("accept: {e}")))?;
                        prop_assert!(b.iter().all(|&x| x == t), "bytes changed in flight");
                        drop(b);
                        // Read and dropped (freed): a second accept is refused.
                        prop_assert!(pool(to).accept(&h).is_err());
                        live.swap_remove(i);
                        dead.push(h);
                    }
                }
            }
            Op::Recall(i) if !live.is_empty() => {
                let i = i % live.len();
                if let Live::Flight(to, h, t) = live[i] {
                    let b = pool(to.peer())
                        .recall(&h)
                        .map_err(|e| TestCaseError::fail(format!("recall: {e}")))?;
                    live[i] = Live::Held(to.peer(), b, t);
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
            Op::Reuse(i) if !dead.is_empty() => {
                let h = dead[i % dead.len()];
                prop_assert!(pa.accept(&h).is_err() && pb.accept(&h).is_err());
                prop_assert!(pa.recall(&h).is_err() && pb.recall(&h).is_err());
            }
            Op::Forge(c, s, g, l) => {
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
                    prop_assert!(pa.accept(&h).is_err() && pb.accept(&h).is_err());
                }
            }
            Op::Die(s) => {
                // `s` dies: its blobs vanish without being dropped, and the
                // survivor reclaims (after reading what was sent to it).
                let s = side(s);
                let mut expect = 0;
                let mut keep = Vec::new();
                for l in live.drain(..) {
                    match l {
                        Live::Held(o, b, _) if o == s => {
                            // Its process's record of the blob goes with it
                            // (a `mem::forget` here would be a leak in a
                            // live process, which keeps the slot held); the
                            // state word stays as it left it.
                            let h = b.handle();
                            drop(b);
                            rewrite(&pa, &h, SlotState::Held(o));
                            dead.push(h);
                            expect += 1;
                        }
                        Live::Flight(_, h, _) => {
                            dead.push(h);
                            expect += 1;
                        }
                        other => keep.push(other),
                    }
                }
                live = keep;
                let r = pool(s.peer()).reclaim(s);
                prop_assert_eq!(r.freed(), expect);
                prop_assert_eq!(r.repaired, 0);
                prop_assert_eq!(r.held_here, 0);
            }
            _ => {}
        }
        // The census matches the model exactly.
        let st = pa.stats();
        for (ci, c) in st.classes.iter().enumerate() {
            let mut held = [0; 2];
            let mut flight = [0; 2];
            for l in &live {
                match l {
                    Live::Held(s, b, _) if b.handle().class as usize == ci => {
                        held[(*s == Side::B) as usize] += 1
                    }
                    Live::Flight(s, h, _) if h.class as usize == ci => {
                        flight[(*s == Side::B) as usize] += 1
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(c.held, held, "class {}", ci);
            prop_assert_eq!(c.in_flight, flight, "class {}", ci);
            prop_assert_eq!(c.free, c.count - held[0] - held[1] - flight[0] - flight[1]);
            prop_assert_eq!(c.invalid, 0);
        }
    }
    // Every live blob still holds its own bytes.
    for l in &live {
        if let Live::Held(_, b, t) = l {
            prop_assert!(b.iter().all(|x| x == t), "a live blob was overwritten");
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
        ops.push(Op::Alloc(i % 3 == 0, (i * 37) % 1100));
        ops.push(Op::Send(i * 7));
        ops.push(Op::Accept(i * 11, i % 2 == 0));
        if i % 5 == 0 {
            ops.push(Op::Free(i));
        }
        if i % 997 == 0 {
            ops.push(Op::Die(i % 2 == 0));
        }
    }
    run(ops).unwrap();
}
