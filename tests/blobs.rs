//! Blobs between two real processes sharing one pool: both allocate, fill,
//! send, accept, check and free 1,000,000 blobs at once, then the census is
//! exact (every slot free). Then the peer is SIGKILLed at a random moment
//! while it holds blobs; the survivor drains what was sent to it, reclaims
//! the dead side's slots, and the census is exact again.

mod common;

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use isocall::WaitStrategy;
use isocall::blob::{BlobError, BlobHandle, Pool, PoolConfig};
use isocall::raw::sys::Doorbell;
use isocall::raw::{
    Liveness, Receiver, Segment, SegmentLayout, Sender, Side, TransportError, endpoint,
};
use isocall::ring::SharedRegion;

const BLOB: u16 = 1;
const TOTAL: u64 = 1_000_000;
const LIMIT: Duration = Duration::from_secs(300);

fn layout() -> SegmentLayout {
    SegmentLayout {
        ring_capacity: 64 << 10,
        blobs: PoolConfig::new()
            .class(256, 512)
            .class(4096, 128)
            .class(65536, 16),
    }
}

struct Ends {
    segment: Arc<Segment>,
    tx: Sender,
    rx: Receiver,
}

fn ends(segment: Segment, side: Side, doorbell: Arc<Doorbell>) -> Ends {
    let segment = Arc::new(segment);
    let (tx, rx) = endpoint(
        segment.clone(),
        side,
        doorbell,
        WaitStrategy::Adaptive,
        Liveness::new(),
    )
    .expect("endpoint");
    Ends { segment, tx, rx }
}

/// The bytes a blob carries: its sender, its number and its length in the
/// first 16 bytes (so a slot handed out twice shows as a wrong owner),
/// then a pattern; every byte of blobs up to 4 KiB, the first and last
/// 256 bytes of larger ones.
fn fill(side: u64, i: u64, buf: &mut [u8]) {
    let id = (side << 63) | i;
    let mut stamp = [0u8; 16];
    stamp[..8].copy_from_slice(&id.to_le_bytes());
    stamp[8..].copy_from_slice(&(buf.len() as u64).to_le_bytes());
    let n = buf.len();
    if n <= 4096 {
        fill_payload(id, 0, buf);
    } else {
        fill_payload(id, 0, &mut buf[..256]);
        fill_payload(id, 1, &mut buf[n - 256..]);
    }
    let k = n.min(16);
    buf[..k].copy_from_slice(&stamp[..k]);
}

fn check(side: u64, i: u64, got: &[u8]) {
    let mut want = vec![0u8; got.len()];
    fill(side, i, &mut want);
    let n = got.len();
    let same = if n <= 4096 {
        got == &want[..]
    } else {
        got[..256] == want[..256] && got[n - 256..] == want[n - 256..]
    };
    assert!(
        same,
        "blob {i} from side {side} ({n} bytes) has wrong bytes"
    );
}

fn encode(h: BlobHandle, i: u64) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[..16].copy_from_slice(&h.to_bytes());
    b[16..].copy_from_slice(&i.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> (BlobHandle, u64) {
    let h = BlobHandle::from_bytes(&b[..16]).expect("16-byte handle");
    (h, u64::from_le_bytes(b[16..24].try_into().unwrap()))
}

/// Counts of one side's exchange.
#[derive(Default, Debug)]
struct Counts {
    sent: u64,
    received: u64,
    exhausted: u64,
}

/// Sends `to_send` blobs of random sizes to the peer while accepting,
/// checking and freeing what the peer sends, until `to_receive` arrived.
/// Up to `hold` received blobs are kept a while before they are freed (so
/// that a side killed mid-run dies holding some). `go_on` may stop early.
fn exchange(
    e: &mut Ends,
    pool: &Pool<SharedRegion>,
    me: u64,
    to_send: u64,
    to_receive: u64,
    hold: usize,
    mut go_on: impl FnMut(&Counts) -> bool,
) -> Counts {
    let deadline = Instant::now() + LIMIT;
    let mut c = Counts::default();
    let mut held = std::collections::VecDeque::new();
    let seed = 0xB10B ^ me;
    while (c.sent < to_send || c.received < to_receive) && go_on(&c) {
        let mut progress = false;
        for _ in 0..64 {
            let Some(f) = e.rx.try_recv().expect("receive") else {
                break;
            };
            let (h, i) = decode(f.payload());
            f.release();
            assert_eq!(i, c.received, "blobs arrive in order");
            let blob = pool
                .accept(&h)
                .unwrap_or_else(|err| panic!("accept blob {i}: {err}"));
            check(1 - me, i, &blob);
            held.push_back(blob);
            if held.len() > hold {
                held.pop_front();
            }
            c.received += 1;
            progress = true;
        }
        if c.sent < to_send {
            match e.tx.try_reserve(BLOB, 24) {
                Ok(mut g) => {
                    let len = frame_len(seed, c.sent);
                    match pool.alloc(len) {
                        Ok(mut blob) => {
                            fill(me, c.sent, &mut blob);
                            let h = blob.send().expect("send blob");
                            g.bytes_mut().copy_from_slice(&encode(h, c.sent));
                            g.commit_all();

                            e.tx.publish();
                            c.sent += 1;
                            progress = true;
                        }
                        // The peer holds the class; it frees as it reads.
                        Err(BlobError::Exhausted { .. }) => c.exhausted += 1,
                        Err(err) => panic!("alloc {len}: {err}"),
                    }
                }
                Err(TransportError::Full) => {}
                Err(err) => panic!("reserve: {err}"),
            }
        }
        if !progress {
            // Free what we hold: the peer may be waiting for a slot.
            held.pop_front();
            assert!(Instant::now() < deadline, "exchange stalled: {c:?}");
            std::thread::yield_now();
        }
    }
    c
}

fn start(role: &str, params: &str) -> (Peer, Ends) {
    let (segment, ours, theirs) = segment_for_peer("isocall:test:blobs", &layout());
    let peer = Peer::spawn("blob_peer_entry", role);
    peer.send(params, &[segment.fd(), theirs.as_fd()]);
    (peer, ends(segment, Side::Server, ours))
}

/// The peer: exchanges blobs with the parent as side A (the client).
#[test]
#[ignore = "entry point of the peer process that the other tests spawn"]
fn blob_peer_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let (msg, fds, mut sock) = receive_from_parent();
    let (segment, doorbell) = segment_from_parent(fds);
    let mut e = ends(segment, Side::Client, doorbell);
    let pool = e.segment.blob_pool(Side::Client).unwrap().expect("a pool");
    let n: u64 = param(&msg, "n").parse().unwrap();
    let hold: usize = param(&msg, "hold").parse().unwrap();
    let c = exchange(&mut e, &pool, 0, n, n, hold, |_| true);
    assert_eq!(role, "exchange");
    use std::io::Write;
    writeln!(sock, "done {} {}", c.sent, c.received).unwrap();
    // Stay alive until the parent has counted (its census needs us idle,
    // not gone: a dead side's slots would be the parent's to reclaim).
    use std::io::Read;
    let _ = sock.read(&mut [0u8; 1]);
}

#[test]
fn million_blobs_between_two_processes_then_exact_census() {
    let half = TOTAL / 2;
    let (mut peer, mut e) = start("exchange", &format!("n={half} hold=8"));
    let pool = e.segment.blob_pool(Side::Server).unwrap().unwrap();
    let c = exchange(&mut e, &pool, 1, half, half, 8, |_| true);
    assert_eq!((c.sent, c.received), (half, half));
    let line = peer.read_line(LIMIT);
    assert_eq!(line, format!("done {half} {half}"));
    // Both sides idle: every slot is free, none held, none in flight.
    let st = pool.stats();
    for (ci, class) in st.classes.iter().enumerate() {
        assert_eq!(class.free, class.count, "class {ci}: {class:?}");
    }
    assert_eq!(st.used(), 0);
    peer.send("bye", &[]);
    assert!(peer.wait(LIMIT).success());
    eprintln!(
        "exchanged {TOTAL} blobs; parent met an exhausted class {} times",
        c.exhausted
    );
}

#[test]
fn killed_peer_holding_blobs_is_reclaimed() {
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = Rng::new(seed);
    for round in 0..4 {
        // Kill after a random number of received blobs: the peer is
        // somewhere in alloc, fill, send, accept or free.
        let kill_at = 1_000 + rng.next() % 30_000;
        let (mut peer, mut e) = start("exchange", &format!("n={} hold=24", u64::MAX / 2));
        let pool = e.segment.blob_pool(Side::Server).unwrap().unwrap();
        // The kill comes from inside our own exchange loop, so the peer is
        // busy in its loop on the other core when it dies.
        let mut killed = false;
        let c = exchange(&mut e, &pool, 1, u64::MAX, u64::MAX, 0, |c| {
            if c.received >= kill_at && !killed {
                peer.child.kill().expect("SIGKILL");
                killed = true;
            }
            !killed
        });
        let status = peer.wait(LIMIT);
        assert!(!status.success());
        // Read what the dead peer managed to publish, then reclaim.
        let mut drained = 0;
        while let Some(f) = e.rx.try_recv().expect("drain") {
            let (h, i) = decode(f.payload());
            f.release();
            let blob = pool.accept(&h).expect("accept a blob the dead peer sent");
            check(0, i, &blob);
            drained += 1;
        }
        let before = pool.stats();
        let r = pool.reclaim(isocall::blob::Side::A);
        let after = pool.stats();
        eprintln!(
            "seed {seed:#x} round {round}: killed after {} received, {drained} drained; reclaimed {r:?}",
            c.received
        );
        assert_eq!(
            r.freed(),
            before.used(),
            "every used slot was the dead side's"
        );
        assert_eq!(after.used(), 0, "census after reclaim: {after:?}");
        for class in &after.classes {
            assert_eq!(class.free, class.count);
        }
        // And all of it can be allocated again.
        for class in &after.classes {
            let all: Vec<_> = (0..class.count)
                .map(|_| pool.alloc(class.slot_size).expect("alloc after reclaim"))
                .collect();
            assert_eq!(all.len(), class.count);
        }
    }
}
