//! The ring against a `VecDeque` model: random reserve/commit/publish/peek/
//! release sequences with random sizes, through wrap-around and a full ring.

#![cfg(not(loom))]

use std::collections::VecDeque;

use isocall_ringbuf::wait::SpinParker;
use isocall_ringbuf::{ReserveError, channel, max_payload};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Reserve `len` bytes; commit `used` of them (or drop the grant if
    /// `commit` is false).
    Reserve {
        len: usize,
        used_pct: u8,
        commit: bool,
        kind: u16,
        flags: u16,
    },
    Publish,
    /// Peek and release up to `n` frames.
    Consume {
        n: usize,
    },
    /// Peek without releasing (and ask `has_frame` first: it must agree,
    /// at the padding before a wrap too).
    Peek,
    /// Latency mode on (zero ahead, terminators) or off (streaming: the
    /// consumer zeroes what it releases, terminators skipped).
    LatencyMode(bool),
}

fn op(max_len: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..=max_len, 0u8..=100, prop::bool::weighted(0.9), 1u16..=0x7FFF, any::<u16>())
            .prop_map(|(len, used_pct, commit, kind, flags)| Op::Reserve { len, used_pct, commit, kind, flags }),
        2 => Just(Op::Publish),
        2 => (1usize..6).prop_map(|n| Op::Consume { n }),
        1 => Just(Op::Peek),
        1 => any::<bool>().prop_map(Op::LatencyMode),
    ]
}

fn pattern(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as usize * 31 + i * 7) as u8)
        .collect()
}

fn run(capacity: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (mut tx, mut rx) = channel(capacity, SpinParker).unwrap();
    let max = max_payload(capacity);
    // Frames committed but not published, and published but not consumed.
    let mut committed: VecDeque<(u16, u16, Vec<u8>)> = VecDeque::new();
    let mut published: VecDeque<(u16, u16, Vec<u8>)> = VecDeque::new();
    let mut seq = 0u64;
    for op in ops {
        match op {
            Op::Reserve {
                len,
                used_pct,
                commit,
                kind,
                flags,
            } => {
                let len = len.min(max + 8);
                match tx.reserve(kind, len) {
                    Ok(mut grant) => {
                        prop_assert!(len <= max);
                        let used = len * used_pct as usize / 100;
                        let data = pattern(seq, used);
                        seq += 1;
                        // Dirty the whole grant first: bytes past the
                        // committed length (or of a dropped grant) land on
                        // future header slots and must never look like one.
                        grant.bytes_mut().fill(0xA5);
                        grant.bytes_mut()[..used].copy_from_slice(&data);
                        grant.set_flags(flags);
                        if commit {
                            grant.commit(used);
                            committed.push_back((kind, flags, data));
                        }
                    }
                    Err(ReserveError::TooLarge { len: l, max: m }) => {
                        prop_assert_eq!((l, m), (len, max));
                        prop_assert!(len > max);
                    }
                    Err(ReserveError::Full) if committed.is_empty() && published.is_empty() => {
                        // Nothing outstanding but the padding frame this
                        // reserve wrote before the wrap: once it is published
                        // and skipped, a frame of any allowed size fits.
                        tx.publish();
                        prop_assert!(rx.peek().unwrap().is_none());
                        let grant = tx.reserve(kind, len);
                        prop_assert!(grant.is_ok(), "Full on an empty ring (len {})", len);
                    }
                    Err(ReserveError::Full) => {}
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
            }
            Op::Publish => {
                tx.publish();
                published.extend(committed.drain(..));
            }
            Op::Consume { n } => {
                for _ in 0..n {
                    prop_assert_eq!(rx.has_frame().unwrap(), !published.is_empty());
                    match rx.peek().unwrap() {
                        None => {
                            prop_assert!(published.is_empty());
                            break;
                        }
                        Some(frame) => {
                            let (kind, flags, data) =
                                published.pop_front().expect("frame not in model");
                            prop_assert_eq!(frame.kind(), kind);
                            prop_assert_eq!(frame.flags(), flags);
                            prop_assert_eq!(frame.payload(), &data[..]);
                            prop_assert_eq!(frame.payload().as_ptr() as usize % 16, 0);
                            frame.release();
                        }
                    }
                }
            }
            Op::Peek => {
                prop_assert_eq!(rx.has_frame().unwrap(), !published.is_empty());
                let got = rx.peek().unwrap().map(|f| f.payload().to_vec());
                prop_assert_eq!(got, published.front().map(|f| f.2.clone()));
            }
            Op::LatencyMode(on) => tx.set_zero_ahead(on),
        }
    }
    // Drain: everything committed comes out, in order, and the ring is
    // empty afterwards.
    tx.publish();
    published.extend(committed.drain(..));
    while let Some(frame) = rx.peek().unwrap() {
        let (kind, _, data) = published.pop_front().expect("extra frame");
        prop_assert_eq!(frame.kind(), kind);
        prop_assert_eq!(frame.payload(), &data[..]);
        frame.release();
    }
    prop_assert!(published.is_empty(), "{} frames lost", published.len());
    let ps = tx.stats();
    let cs = rx.stats();
    prop_assert_eq!(ps.frames, cs.frames);
    prop_assert_eq!(ps.bytes, cs.bytes);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn small_ring_matches_model(ops in prop::collection::vec(op(120), 1..400)) {
        run(128, ops)?;
    }

    #[test]
    fn medium_ring_matches_model(ops in prop::collection::vec(op(700), 1..400)) {
        run(1024, ops)?;
    }

    #[test]
    fn mostly_tiny_frames_match_model(ops in prop::collection::vec(op(24), 1..600)) {
        run(256, ops)?;
    }
}
