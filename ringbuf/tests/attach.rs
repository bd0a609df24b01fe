//! One producer and one consumer per ring, whatever the peer writes: the
//! process-local registry refuses a second side in this process, the
//! control block's attachment words refuse one from another process (the
//! peer is simulated by stores through the same region), and counters a
//! peer pushed near `u64::MAX` are refused at attach.

#![cfg(not(loom))]

use std::sync::Arc;

use isocall_ringbuf::layout::{
    CONS_ATTACHED, HEAD, MAX_COUNTER_AT_ATTACH, PROD_ATTACHED, TAIL, ring_region_size,
};
use isocall_ringbuf::wait::SpinParker;
use isocall_ringbuf::{
    AttachError, Consumer, Corrupt, HeapRegion, Producer, Region, RingSide, RingSnapshot, channel,
    snapshot_region,
};
use proptest::prelude::*;

const RELAXED: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed;

type Tx = Producer<Arc<HeapRegion>, SpinParker>;
type Rx = Consumer<Arc<HeapRegion>, SpinParker>;

fn region(capacity: usize) -> Arc<HeapRegion> {
    Arc::new(HeapRegion::new(ring_region_size(capacity).unwrap()))
}

/// A word of the ring's control block (`off` is a layout constant), where
/// these tests play the peer.
fn control(r: &HeapRegion, off: usize) -> &std::sync::atomic::AtomicU64 {
    assert!(off < isocall_ringbuf::RING_CONTROL_BYTES);
    // SAFETY: the control block is never handed out as payload, so no grant
    // or frame's slice covers the word (the region is only ever a ring's).
    unsafe { r.u64_at(off) }
}

/// The ring's counters.
fn snapshot(r: &HeapRegion) -> Result<RingSnapshot, AttachError> {
    // SAFETY: as in `control`: the region is only ever a ring's, whose
    // control block is never payload.
    unsafe { snapshot_region(r) }
}

fn pid() -> u64 {
    u64::from(std::process::id())
}

#[test]
fn a_second_producer_or_consumer_in_this_process_is_refused() {
    let r = region(4096);
    let tx: Tx = Producer::attach(r.clone(), SpinParker).unwrap();
    let rx: Rx = Consumer::attach(r.clone(), SpinParker).unwrap();
    assert_eq!(
        Producer::attach(r.clone(), SpinParker).unwrap_err(),
        AttachError::AlreadyAttached {
            side: RingSide::Producer
        }
    );
    let e = Consumer::attach(r.clone(), SpinParker).unwrap_err();
    assert_eq!(
        e,
        AttachError::AlreadyAttached {
            side: RingSide::Consumer
        }
    );
    assert!(e.to_string().contains("consumer side"), "{e}");
    // Once dropped, a side may be attached again, and it takes over where
    // the last one stopped.
    let mut tx = tx;
    tx.push(1, b"before").unwrap();
    tx.publish();
    drop(tx);
    let mut tx: Tx = Producer::attach(r.clone(), SpinParker).unwrap();
    tx.push(2, b"after").unwrap();
    tx.publish();
    let mut rx = rx;
    for (kind, payload) in [(1, &b"before"[..]), (2, b"after")] {
        let f = rx.peek().unwrap().expect("a frame");
        assert_eq!((f.kind(), f.payload()), (kind, payload));
        f.release();
    }
}

#[test]
fn the_control_block_names_the_attached_sides() {
    let r = region(4096);
    let s = snapshot(&r).unwrap();
    assert_eq!((s.producer_attached, s.consumer_attached), (0, 0));
    let tx: Tx = Producer::attach(r.clone(), SpinParker).unwrap();
    assert_eq!(control(&r, PROD_ATTACHED).load(RELAXED), pid());
    assert_eq!(control(&r, CONS_ATTACHED).load(RELAXED), 0);
    let rx: Rx = Consumer::attach(r.clone(), SpinParker).unwrap();
    let s = snapshot(&r).unwrap();
    assert_eq!((s.producer_attached, s.consumer_attached), (pid(), pid()));
    drop((tx, rx));
    let s = snapshot(&r).unwrap();
    assert_eq!((s.producer_attached, s.consumer_attached), (0, 0));
}

#[test]
fn a_side_attached_by_another_process_is_refused() {
    let r = region(4096);
    // The peer (another process) attached a consumer.
    control(&r, CONS_ATTACHED).store(4242, RELAXED);
    assert_eq!(
        Consumer::attach(r.clone(), SpinParker).unwrap_err(),
        AttachError::AttachedElsewhere {
            side: RingSide::Consumer,
            by: 4242
        }
    );
    // The refusal left nothing behind in this process: once the word is
    // clear, the consumer attaches.
    assert_eq!(control(&r, CONS_ATTACHED).load(RELAXED), 4242);
    control(&r, CONS_ATTACHED).store(0, RELAXED);
    let _rx: Rx = Consumer::attach(r.clone(), SpinParker).unwrap();
}

#[test]
fn the_local_registry_holds_whatever_the_peer_writes() {
    let r = region(4096);
    let _tx: Tx = Producer::attach(r.clone(), SpinParker).unwrap();
    // The peer clears our mark: a second producer in this process is still
    // refused (two grants over the same bytes would alias).
    control(&r, PROD_ATTACHED).store(0, RELAXED);
    assert_eq!(
        Producer::attach(r.clone(), SpinParker).unwrap_err(),
        AttachError::AlreadyAttached {
            side: RingSide::Producer
        }
    );
}

#[test]
fn a_mark_the_peer_rewrote_is_not_ours_to_clear() {
    let r = region(4096);
    let tx: Tx = Producer::attach(r.clone(), SpinParker).unwrap();
    control(&r, PROD_ATTACHED).store(777, RELAXED);
    drop(tx);
    assert_eq!(control(&r, PROD_ATTACHED).load(RELAXED), 777);
}

#[test]
fn channel_attaches_each_side_once() {
    let (tx, rx) = channel(4096, SpinParker).unwrap();
    drop((tx, rx));
    let (_tx, _rx) = channel(4096, SpinParker).unwrap();
}

#[test]
fn counters_past_the_bound_are_refused_at_attach() {
    let cap = 4096u64;
    for (head, tail) in [
        (!63, !63),
        (u64::MAX - 4095 - 63, u64::MAX - 63),
        (MAX_COUNTER_AT_ATTACH, MAX_COUNTER_AT_ATTACH + 64),
        (MAX_COUNTER_AT_ATTACH + 64, MAX_COUNTER_AT_ATTACH + 64),
    ] {
        let r = region(cap as usize);
        control(&r, HEAD).store(head, RELAXED);
        control(&r, TAIL).store(tail, RELAXED);
        let bad = AttachError::Corrupt(Corrupt::BadCounters {
            head,
            tail,
            capacity: cap,
        });
        assert_eq!(Producer::attach(r.clone(), SpinParker).unwrap_err(), bad);
        assert_eq!(Consumer::attach(r.clone(), SpinParker).unwrap_err(), bad);
        // A refused attach leaves no mark and no registration behind.
        assert_eq!(control(&r, PROD_ATTACHED).load(RELAXED), 0);
        assert_eq!(control(&r, CONS_ATTACHED).load(RELAXED), 0);
        control(&r, HEAD).store(0, RELAXED);
        control(&r, TAIL).store(0, RELAXED);
        let _both: (Tx, Rx) = (
            Producer::attach(r.clone(), SpinParker).unwrap(),
            Consumer::attach(r.clone(), SpinParker).unwrap(),
        );
    }
}

/// Sends and receives frames of every size through several laps of a ring
/// whose counters start at `start`.
fn laps_from(start: u64, cap: usize) {
    let r = region(cap);
    control(&r, HEAD).store(start, RELAXED);
    control(&r, TAIL).store(start, RELAXED);
    let mut tx: Tx = Producer::attach(r.clone(), SpinParker).unwrap();
    let mut rx: Rx = Consumer::attach(r.clone(), SpinParker).unwrap();
    let max = tx.max_payload();
    for i in 0..(4 * cap / 64) {
        let len = (i * 37) % (max + 1);
        let payload = vec![i as u8; len];
        if tx.push(1, &payload).is_err() {
            // Only the padding frame before the wrap is in the way: once the
            // consumer skips it, any frame fits.
            tx.publish();
            assert!(rx.peek().unwrap().is_none());
            tx.push(1, &payload).unwrap();
        }
        tx.publish();
        let f = rx.peek().unwrap().expect("a frame");
        assert_eq!(f.payload(), &payload[..]);
        f.release();
        rx.flush();
        if i % 3 == 0 {
            tx.set_zero_ahead(i % 2 == 0);
        }
    }
    rx.flush();
    let s = snapshot(&r).unwrap();
    assert!(s.head > start && s.head == s.tail, "{s:?}");
}

#[test]
fn counters_at_the_bound_keep_working() {
    laps_from(MAX_COUNTER_AT_ATTACH, 256);
    laps_from(MAX_COUNTER_AT_ATTACH - 4096, 1024);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever counters the peer left, attach either refuses them or
    /// returns a ring that moves frames without a panic.
    #[test]
    fn any_counters_are_refused_or_work(head in any::<u64>(), gap in 0u64..=8192, align in any::<bool>()) {
        let cap = 4096usize;
        let head = if align { head & !63 } else { head };
        let tail = head.wrapping_add(if align { gap & !63 } else { gap });
        let r = region(cap);
        control(&r, HEAD).store(head, RELAXED);
        control(&r, TAIL).store(tail, RELAXED);
        let ok = head <= tail
            && tail <= MAX_COUNTER_AT_ATTACH
            && tail - head <= cap as u64
            && head % 64 == 0
            && tail % 64 == 0;
        match (Producer::attach(r.clone(), SpinParker), Consumer::attach(r.clone(), SpinParker)) {
            (Ok(mut tx), Ok(mut rx)) => {
                prop_assert!(ok);
                // Frames past the counters never overflow them.
                let (mut pushed, mut read) = (0, 0);
                for i in 0..200usize {
                    if tx.push(1, &[i as u8; 40]).is_ok() {
                        pushed += 1;
                    }
                    tx.publish();
                    if let Some(f) = rx.peek().unwrap() {
                        f.release();
                        rx.flush();
                        read += 1;
                    }
                }
                prop_assert!(read <= pushed);
                if head == tail {
                    prop_assert_eq!((pushed, read), (200, 200));
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                prop_assert!(!ok, "refused {head} {tail}: {e}");
                let bad = matches!(e, AttachError::Corrupt(Corrupt::BadCounters { .. }));
                prop_assert!(bad, "{}", e);
            }
        }
    }
}
