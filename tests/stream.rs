//! Two real processes stream 1,000,000 frames of random sizes (1 B to
//! 64 KiB, log-uniform) through a shared segment, in each wait strategy; the
//! receiver checks every byte of every frame against the sender's stream and
//! a running checksum at the end. Then a peer is SIGKILLed mid-stream and the
//! survivor must report `PeerDied` within a deadline, on the receiving and on
//! the sending side.

mod common;

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use isocall::WaitStrategy;
use isocall::raw::sys::{Doorbell, PidFd};
use isocall::raw::{
    Liveness, PeerWatch, Receiver, Segment, SegmentLayout, Sender, Side, TransportError, Watched,
    endpoint,
};

const DATA: u16 = 1;
const END: u16 = 2;
const RING: usize = 1 << 20;
const FRAMES: u64 = 1_000_000;
/// Generous: a loaded 2-core CI machine in Blocking mode.
const STREAM_LIMIT: Duration = Duration::from_secs(300);
const DEATH_LIMIT: Duration = Duration::from_secs(10);

fn strategy(name: &str) -> WaitStrategy {
    match name {
        "busy" => WaitStrategy::BusySpin,
        "adaptive" => WaitStrategy::Adaptive,
        "blocking" => WaitStrategy::Blocking,
        other => panic!("unknown strategy {other}"),
    }
}

/// One side's endpoint on a segment, watching the other process.
struct Side_ {
    tx: Sender,
    rx: Receiver,
    _watch: PeerWatch,
}

fn attach(
    segment: Segment,
    side: Side,
    doorbell: Arc<Doorbell>,
    strat: WaitStrategy,
    peer_pid: u32,
) -> Side_ {
    let segment = Arc::new(segment);
    let live = Liveness::new();
    let (tx, rx) =
        endpoint(segment.clone(), side, doorbell.clone(), strat, live.clone()).expect("endpoint");
    // The peer's death, from the kernel: its pidfd becomes readable.
    let watched = Watched {
        sock: None,
        pidfd: Some(PidFd::open(peer_pid).expect("pidfd of peer")),
    };
    let watch =
        PeerWatch::spawn(watched, live, segment, side.tx(), Some(doorbell)).expect("peer watch");
    Side_ {
        tx,
        rx,
        _watch: watch,
    }
}

/// Starts a peer in `role` with a fresh segment; returns our (server) side.
fn start(role: &str, params: &str, strat: WaitStrategy) -> (Peer, Side_) {
    let layout = SegmentLayout {
        ring_capacity: RING,
        blobs: Default::default(),
    };
    let (segment, doorbell, theirs) = segment_for_peer("isocall:test:stream", &layout);
    let peer = Peer::spawn("peer_entry", role);
    peer.send(params, &[segment.fd(), theirs.as_fd()]);
    let pid = peer.child.id();
    let ours = attach(segment, Side::Server, doorbell, strat, pid);
    (peer, ours)
}

/// The peer process: a client that streams frames (role `stream`) or reads
/// them forever (role `sink`).
#[test]
#[ignore = "entry point of the peer process that the other tests spawn"]
fn peer_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let (msg, fds, _sock) = receive_from_parent();
    let (segment, doorbell) = segment_from_parent(fds);
    let strat = strategy(param(&msg, "strategy"));
    let mut me = attach(
        segment,
        Side::Client,
        doorbell,
        strat,
        std::os::unix::process::parent_id(),
    );
    match role.as_str() {
        "stream" => {
            let frames: u64 = param(&msg, "frames").parse().unwrap();
            let seed: u64 = param(&msg, "seed").parse().unwrap();
            let deadline = Some(Instant::now() + STREAM_LIMIT);
            let mut sum = 0u64;
            for i in 0..frames {
                let len = frame_len(seed, i);
                let mut grant = me.tx.reserve(DATA, len, deadline).expect("reserve");
                fill_payload(seed, i, grant.bytes_mut());
                sum = checksum(sum, grant.bytes_mut());
                grant.commit_all();
                // Publish in batches of 8, as a streaming producer would.
                if i % 8 == 7 {
                    me.tx.publish();
                }
            }
            let mut end = [0u8; 16];
            end[..8].copy_from_slice(&frames.to_le_bytes());
            end[8..].copy_from_slice(&sum.to_le_bytes());
            me.tx.send(END, &end, deadline).expect("send end");
            // Stay alive until the parent has read everything.
            let f = me.rx.recv(deadline).expect("ack");
            assert_eq!(f.kind(), END);
            f.release();
        }
        "sink" => loop {
            match me.rx.recv(None) {
                Ok(f) => f.release(),
                Err(e) => panic!("sink: {e}"),
            }
        },
        other => panic!("unknown role {other}"),
    }
}

fn stream(strat_name: &str) {
    let seed = 0x5EED ^ strat_name.len() as u64;
    let params = format!("strategy={strat_name} frames={FRAMES} seed={seed}");
    let (mut peer, mut me) = start("stream", &params, strategy(strat_name));
    let deadline = Some(Instant::now() + STREAM_LIMIT);
    let mut expected = vec![0u8; 1 << 16];
    let mut sum = 0u64;
    for i in 0..FRAMES {
        let frame = me
            .rx
            .recv(deadline)
            .unwrap_or_else(|e| panic!("frame {i}: {e}"));
        assert_eq!(frame.kind(), DATA, "frame {i}");
        let len = frame_len(seed, i);
        assert_eq!(frame.len(), len, "length of frame {i}");
        fill_payload(seed, i, &mut expected[..len]);
        assert!(
            frame.payload() == &expected[..len],
            "payload of frame {i} differs"
        );
        sum = checksum(sum, frame.payload());
        frame.release();
    }
    let end = me.rx.recv(deadline).expect("end frame");
    assert_eq!(end.kind(), END);
    let count = u64::from_le_bytes(end.payload()[..8].try_into().unwrap());
    let their_sum = u64::from_le_bytes(end.payload()[8..16].try_into().unwrap());
    end.release();
    assert_eq!(count, FRAMES);
    assert_eq!(their_sum, sum, "checksums differ");
    assert!(
        me.rx.try_recv().unwrap().is_none(),
        "extra frames after END"
    );
    me.tx.send(END, b"ack", deadline).expect("ack");
    let status = peer.wait(DEATH_LIMIT);
    assert!(status.success(), "peer failed: {status}");
    let stats = me.rx.stats();
    assert_eq!(stats.frames, FRAMES + 1);
}

#[test]
fn stream_million_frames_busy_spin() {
    stream("busy");
}

#[test]
fn stream_million_frames_adaptive() {
    stream("adaptive");
}

#[test]
fn stream_million_frames_blocking() {
    stream("blocking");
}

/// The sender is killed mid-stream: the receiver drains what was published,
/// then gets `PeerDied` within the deadline.
fn receiver_survives_sender_death(strat_name: &str) {
    let params = format!("strategy={strat_name} frames={} seed=7", u64::MAX);
    let (mut peer, mut me) = start("stream", &params, strategy(strat_name));
    for i in 0..1000 {
        let f = me
            .rx
            .recv(Some(Instant::now() + DEATH_LIMIT))
            .unwrap_or_else(|e| panic!("frame {i}: {e}"));
        f.release();
    }
    peer.child.kill().expect("SIGKILL peer");
    let started = Instant::now();
    let deadline = Some(started + DEATH_LIMIT);
    let err = loop {
        match me.rx.recv(deadline) {
            Ok(f) => f.release(),
            Err(e) => break e,
        }
    };
    assert_eq!(
        err,
        TransportError::PeerDied,
        "after {:?}",
        started.elapsed()
    );
    assert_eq!(
        me.tx.send(DATA, b"x", deadline),
        Err(TransportError::PeerDied)
    );
}

#[test]
fn receiver_survives_killed_sender_busy_spin() {
    receiver_survives_sender_death("busy");
}

#[test]
fn receiver_survives_killed_sender_adaptive() {
    receiver_survives_sender_death("adaptive");
}

#[test]
fn receiver_survives_killed_sender_blocking() {
    receiver_survives_sender_death("blocking");
}

/// The reader is killed while we write: once the ring is full, the sender
/// gets `PeerDied` within the deadline instead of waiting forever for room.
fn sender_survives_receiver_death(strat_name: &str) {
    let (mut peer, mut me) = start(
        "sink",
        &format!("strategy={strat_name}"),
        strategy(strat_name),
    );
    let payload = vec![7u8; 4096];
    // The peer is reading: some frames go through.
    for _ in 0..100 {
        me.tx
            .send(DATA, &payload, Some(Instant::now() + DEATH_LIMIT))
            .expect("send to live sink");
    }
    peer.child.kill().expect("SIGKILL peer");
    let started = Instant::now();
    let deadline = Some(started + DEATH_LIMIT);
    let err = loop {
        if let Err(e) = me.tx.send(DATA, &payload, deadline) {
            break e;
        }
    };
    assert_eq!(
        err,
        TransportError::PeerDied,
        "after {:?}",
        started.elapsed()
    );
}

#[test]
fn sender_survives_killed_receiver_busy_spin() {
    sender_survives_receiver_death("busy");
}

#[test]
fn sender_survives_killed_receiver_blocking() {
    sender_survives_receiver_death("blocking");
}

/// Every thread of `pid` is asleep (state `S`) and one of them is blocked in
/// the futex syscall (202 on x86_64, 98 on aarch64): the process uses no CPU.
fn asleep_on_futex(pid: u32) -> Option<()> {
    let futex_nr = if cfg!(target_arch = "aarch64") {
        "98"
    } else {
        "202"
    };
    let mut on_futex = false;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        if state != 'S' {
            return None;
        }
        let syscall = std::fs::read_to_string(dir.join("syscall")).unwrap_or_default();
        on_futex |= syscall.split_whitespace().next() == Some(futex_nr);
    }
    on_futex.then_some(())
}

fn idle_receiver_sleeps(strat_name: &str) {
    let (peer, _me) = start(
        "sink",
        &format!("strategy={strat_name}"),
        strategy(strat_name),
    );
    wait_until(DEATH_LIMIT, "the idle peer to sleep on its futex", || {
        asleep_on_futex(peer.child.id())
    });
}

#[test]
fn idle_receiver_uses_no_cpu_adaptive() {
    idle_receiver_sleeps("adaptive");
}

#[test]
fn idle_receiver_uses_no_cpu_blocking() {
    idle_receiver_sleeps("blocking");
}
