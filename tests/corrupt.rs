//! A hostile peer process scribbles over the counters and frame headers of a
//! live ring in a shared segment; the ring reports `Corrupt` (never a panic,
//! a hang or an access out of bounds), and a second, untouched segment keeps
//! working.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use isocall::raw::{Direction, RingParker, Segment, SegmentLayout};
use isocall::ring::layout::{DATA, HEAD};
use isocall::ring::{Consumer, Corrupt, Producer, Region, ReserveError, SharedRegion};

const LIMIT: Duration = Duration::from_secs(20);

type Tx = Producer<SharedRegion, RingParker>;
type Rx = Consumer<SharedRegion, RingParker>;

/// A segment whose client-to-server ring we drive from both ends.
fn ring(name: &str) -> (Arc<Segment>, Tx, Rx) {
    let layout = SegmentLayout {
        ring_capacity: 4096,
        blobs: Default::default(),
    };
    let seg = Arc::new(Segment::create(name, &layout).expect("segment"));
    let tx = Producer::attach(
        seg.ring_region(Direction::ClientToServer),
        RingParker::futex(None),
    )
    .unwrap();
    let rx = Consumer::attach(
        seg.ring_region(Direction::ClientToServer),
        RingParker::futex(None),
    )
    .unwrap();
    (seg, tx, rx)
}

/// Has a peer process open the segment and apply `what` to the c2s ring.
fn scribble(seg: &Segment, what: &str) {
    let mut peer = Peer::spawn("scribbler_entry", "scribble");
    peer.send(&format!("what={what}"), &[seg.fd()]);
    assert_eq!(peer.read_line(LIMIT), "done");
    assert!(peer.wait(LIMIT).success());
}

#[test]
#[ignore = "entry point of the scribbling peer process"]
fn scribbler_entry() {
    if std::env::var(ROLE_ENV).is_err() {
        return;
    }
    let (msg, mut fds, mut sock) = receive_from_parent();
    let seg = Segment::open(fds.pop().expect("memfd")).expect("open segment");
    let ring = seg.ring_region(Direction::ClientToServer);
    // SAFETY: this process is the scribbling peer: it attaches neither side
    // of the ring, so no grant or frame of it exists here.
    let word = |off| unsafe { ring.u64_at(off) };
    let first = word(DATA);
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    match param(&msg, "what") {
        "head-forward" => word(HEAD).store(1 << 40, relaxed),
        "head-misaligned" => word(HEAD).store(8, relaxed),
        "len" => first.store((first.load(relaxed) & !0xFFFF_FFFF) | 0xFFFF_FF00, relaxed),
        "kind" => first.store(
            (first.load(relaxed) & !(0xFFFF << 32)) | (0x9000 << 32),
            relaxed,
        ),
        "zero-kind" => first.store(5, relaxed),
        "pad" => first.store(12 | (0xFFFF << 32), relaxed),
        other => panic!("unknown scribble {other}"),
    }
    use std::io::Write;
    sock.write_all(b"done\n").unwrap();
}

fn fill(tx: &mut Tx) -> Result<(), ReserveError> {
    loop {
        tx.push(1, &[0xAB; 100])?;
        tx.publish();
    }
}

#[test]
fn head_past_tail_is_corrupt_for_the_producer() {
    let (seg, mut tx, _rx) = ring("isocall:test:head-forward");
    tx.push(1, b"hello").unwrap();
    tx.publish();
    scribble(&seg, "head-forward");
    // The producer reloads head once the ring looks full.
    match fill(&mut tx) {
        Err(ReserveError::Corrupt(Corrupt::HeadPastTail { head, .. })) => assert_eq!(head, 1 << 40),
        other => panic!("expected HeadPastTail, got {other:?}"),
    }
}

#[test]
fn misaligned_head_is_corrupt_for_the_producer() {
    let (seg, mut tx, mut rx) = ring("isocall:test:head-misaligned");
    tx.push(1, b"hello").unwrap();
    tx.publish();
    rx.peek().unwrap().unwrap().release();
    scribble(&seg, "head-misaligned");
    match fill(&mut tx) {
        Err(ReserveError::Corrupt(
            Corrupt::HeadBackwards { .. } | Corrupt::HeadMisaligned { .. },
        )) => {}
        other => panic!("expected a corrupt head, got {other:?}"),
    }
}

fn consumer_sees(what: &str, check: impl Fn(&Corrupt) -> bool) {
    let (seg, mut tx, mut rx) = ring(&format!("isocall:test:{what}"));
    tx.push(1, b"a frame that will be scribbled on").unwrap();
    tx.publish();
    scribble(&seg, what);
    match rx.peek() {
        Err(e) => assert!(check(&e), "{what}: unexpected error {e}"),
        Ok(f) => panic!(
            "{what}: expected Corrupt, got a frame of {:?} bytes",
            f.map(|f| f.len())
        ),
    }
    // It stays corrupt: the consumer never steps past a bad header.
    assert!(rx.peek().is_err());
}

#[test]
fn oversized_length_is_corrupt_for_the_consumer() {
    consumer_sees("len", |e| {
        matches!(
            e,
            Corrupt::BadLength {
                len: 0xFFFF_FF00,
                ..
            }
        )
    });
}

#[test]
fn unknown_kind_is_corrupt_for_the_consumer() {
    consumer_sees("kind", |e| {
        matches!(e, Corrupt::BadKind { kind: 0x9000, .. })
    });
}

#[test]
fn kind_zero_is_corrupt_for_the_consumer() {
    consumer_sees("zero-kind", |e| {
        matches!(e, Corrupt::BadKind { kind: 0, .. })
    });
}

#[test]
fn bad_padding_is_corrupt_for_the_consumer() {
    consumer_sees("pad", |e| matches!(e, Corrupt::BadPad { .. }));
}

#[test]
fn other_segments_keep_working_after_one_is_corrupted() {
    let (bad_seg, mut bad_tx, mut bad_rx) = ring("isocall:test:victim");
    let (_good_seg, mut tx, mut rx) = ring("isocall:test:bystander");
    bad_tx.push(1, b"x").unwrap();
    bad_tx.publish();
    scribble(&bad_seg, "kind");
    assert!(bad_rx.peek().is_err());
    for i in 0..10_000u32 {
        tx.push(1, &i.to_le_bytes()).unwrap();
        tx.publish();
        let f = rx.peek().unwrap().expect("frame");
        assert_eq!(f.payload(), &i.to_le_bytes());
        f.release();
    }
}
