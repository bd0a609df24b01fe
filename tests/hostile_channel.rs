//! Hostile peers of a channel, as real processes.
//!
//! A subscriber that scribbles random words over its own ring, then over
//! its whole segment, while the publisher streams to it and to two honest
//! subscribers: the publisher neither hangs nor fails a send, the honest
//! subscribers get every message (and blob) in order, and what the
//! scribbler held is given back once it is gone.
//!
//! A publisher that breaks the protocol against a real subscriber: frames
//! of a foreign kind, cut short, lying about their length, bodies that are
//! not the type, a forged blob handle, bodies rewritten while they are
//! read, a corrupt ring: each is a typed error for the subscriber (the
//! message skipped, or the subscription over), never a panic or a hang.
//!
//! Shared memory only: every hostility here is written into a segment
//! (a ring, a blob pool) that the other side maps. Over a stream socket
//! there is no shared memory to scribble; its hostile peers send bytes
//! that are no frame (tests/channel_stream_hostile.rs).

mod hostile;

#[path = "chan/raw.rs"]
mod chan_raw;

mod chan;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chan::{Item, Tally, fill_blob, is_blob, is_item, item, params};
use hostile::probe::snapshot;
use hostile::proc::{self, Ctl, Peer, Role, run_role, serial, socket_name, wait_for, watchdog};
use hostile::raw::{archive, peer_u32, peer_u64};
use isocall::SocketName;
use isocall::blob::{BlobHandle, Parties, Party, PoolConfig};
use isocall::channel::{Backpressure, MESSAGE, Publisher, RecvError, Subscriber};
use isocall::raw::sys::SharedMem;
use isocall::raw::wire::{CallHead, FrameError};
use isocall::ring::layout::{DATA, TAIL};

const ROLES: &[Role] = &[
    ("subscriber", chan::subscriber),
    ("scribbler", scribbler),
    ("raw_publisher", raw_publisher),
    ("corrupting_publisher", corrupting_publisher),
];

#[test]
#[ignore = "the entry point of the hostile peers, run by the tests themselves"]
fn role() {
    run_role(ROLES);
}

fn name_of(s: &SocketName) -> String {
    hostile::abstract_name(s)
}

/// A small xorshift generator.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// Attacker: subscribes by hand, then writes random words over its ring
/// (`mode=ring`: the publisher's ring to it, control block and data) or
/// its whole segment (`mode=all`), ringing the publisher now and then,
/// until told to stop or closed; says `done writes=N closed=B` (once
/// closed, it then waits to be told to stop).
fn scribbler(arg: &str, ctl: &mut Ctl) {
    let p = params(arg);
    let socket = SocketName::Abstract(p["socket"].clone());
    let sub = chan_raw::subscribe(&socket, "scribbler").expect("subscribe");
    ctl.say(&format!("ready id={}", sub.id));
    let mem = SharedMem::open(sub.link.memfd.try_clone().expect("dup")).expect("map");
    let words = mem.u64_words().expect("writable");
    let (lo, hi) = if p["mode"] == "ring" {
        let part = sub.link.segment.header().ring_s2c;
        (
            part.offset as usize / 8,
            (part.offset + part.size) as usize / 8,
        )
    } else {
        (0, words.len())
    };
    let mut rnd = rng(u64::from(std::process::id()));
    let mut writes = 0u64;
    let closed = loop {
        for _ in 0..256 {
            let i = lo + (rnd() as usize) % (hi - lo);
            words[i].store(rnd(), Ordering::Relaxed);
        }
        writes += 256;
        sub.link.doorbell.ring_peer();
        if writes.is_multiple_of(16 << 10) {
            if sub.link.hung_up() {
                break true;
            }
            if ctl.hear_within(Duration::ZERO).is_some() {
                break false;
            }
        }
    };
    ctl.say(&format!("done writes={writes} closed={closed}"));
    if closed {
        let _ = ctl.hear();
    }
}

fn subscriber(socket: &SocketName, args: &str) -> Peer {
    let mut p = Peer::spawn("subscriber", &format!("socket={} {args}", name_of(socket)));
    let line = p.line(Duration::from_secs(20));
    assert!(line.starts_with("ready"), "subscriber: {line}");
    p
}

/// Sends message `i`, with its blob if `i` is a multiple of 4.
fn send(publisher: &mut Publisher<Item>, i: u64) {
    let msg = item(i);
    let sent = if i.is_multiple_of(4) {
        let mut loan = publisher
            .loan_blob(msg.data.len() * 64)
            .unwrap_or_else(|e| panic!("loan for {i}: {e}"));
        fill_blob(i, &mut loan);
        loan.send(&msg)
    } else {
        publisher.send(&msg)
    };
    sent.unwrap_or_else(|e| panic!("send {i}: {e}"));
}

#[test]
fn a_subscriber_scribbling_its_own_segment_disturbs_neither_the_publisher_nor_the_others() {
    let _serial = serial();
    let _dog = watchdog("chan-scribble", Duration::from_secs(180));
    let socket = socket_name("chan-scribble");
    let mut publisher = Publisher::<Item>::builder(socket.clone())
        .ring_capacity(16 << 10)
        .blobs(PoolConfig::new().class(4096, 128))
        .send_timeout(Duration::from_secs(20))
        .backpressure_with(|s| {
            if s.label == "scribbler" {
                Backpressure::DropOldest { backlog: 64 }
            } else {
                Backpressure::Block
            }
        })
        .create()
        .expect("publisher");
    let per_round = 20_000u64;
    let n = 2 * per_round;
    // Each honest subscriber reads every message of both rounds and a last
    // one, sent once the scribblers are gone.
    let honest: Vec<Peer> = (0..2)
        .map(|_| subscriber(&socket, &format!("want={} idle_ms=30000", n + 1)))
        .collect();
    assert_eq!(
        publisher.wait_for_subscribers(2, Duration::from_secs(10)),
        2
    );
    let base = snapshot();
    let mut i = 0;
    for (round, mode) in [(0, "ring"), (1, "all")] {
        let mut attacker = Peer::spawn(
            "scribbler",
            &format!("socket={} mode={mode}", name_of(&socket)),
        );
        let line = attacker.line(Duration::from_secs(20));
        assert!(line.starts_with("ready"), "scribbler: {line}");
        // Joined, or refused at the end of a handshake it scribbled over.
        wait_for(Duration::from_secs(10), "the scribbler's handshake", || {
            publisher.poll();
            let s = publisher.stats();
            if s.joined + s.failed == round + 3 {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        });
        let t0 = Instant::now();
        for _ in 0..per_round {
            send(&mut publisher, i);
            i += 1;
        }
        eprintln!(
            "chan-scribble ({mode}): {per_round} messages in {:?}",
            t0.elapsed()
        );
        // The publisher found the scribbled segment itself and let go of
        // that subscriber, and only that one: closed for its corrupt ring,
        // forgotten for a lifeline that says it died, or refused at the
        // end of its handshake for a scribbled header.
        let gone = if mode == "ring" { 1 } else { 2 };
        wait_for(Duration::from_secs(20), "the scribbler closed", || {
            publisher.poll();
            let s = publisher.stats();
            if s.left + s.failed == gone && publisher.subscribers() == 2 {
                Ok(())
            } else {
                Err(format!("{} subscribers; {s:?}", publisher.subscribers()))
            }
        });
        attacker.send("stop");
        let done = attacker.expect("done", Duration::from_secs(30));
        attacker.wait_ok(Duration::from_secs(10));
        eprintln!("chan-scribble ({mode}): the scribbler says {done}");
        // What the scribbler's connection held is given back once it is
        // gone (its threads, descriptors and mappings).
        wait_for(Duration::from_secs(20), "the scribbler forgotten", || {
            publisher.poll();
            let now = snapshot();
            let watches = |s: &hostile::probe::Snapshot| s.threads.get("isocall-peer-wa").copied();
            if publisher.subscribers() == 2
                && now.fds == base.fds
                && now.memfds == base.memfds
                && watches(&now) == watches(&base)
            {
                Ok(())
            } else {
                Err(format!(
                    "{} subscribers; {now:?} against {base:?}",
                    publisher.subscribers()
                ))
            }
        });
    }
    send(&mut publisher, n);
    for mut p in honest {
        let t = Tally::parse(&p.expect("done", Duration::from_secs(60)));
        p.wait_ok(Duration::from_secs(20));
        assert_eq!(
            (t.got, t.first, t.last, t.gaps, t.bad, t.blobs),
            (n + 1, Some(0), Some(n), 0, 0, n / 4 + 1),
            "{t}"
        );
    }
    wait_for(Duration::from_secs(20), "every blob slot free", || {
        publisher.poll();
        let st = publisher.pool().expect("a pool").stats();
        if st.used() == 0 && publisher.subscribers() == 0 {
            Ok(())
        } else {
            Err(format!("{} subscribers, {st:?}", publisher.subscribers()))
        }
    });
    let s = publisher.stats();
    eprintln!("chan-scribble: publisher {s:?}");
    assert_eq!(
        (s.joined + s.failed, s.left + s.failed, s.sent),
        (4, 4, n + 1),
        "{s:?}"
    );
}

/// Messages whose bodies the raw publisher rewrites while they are read.
const REWRITTEN: u64 = 200;

/// Attacker: a publisher that breaks the protocol. Accepts one subscriber
/// and publishes, in order: a frame of kind 9; a frame shorter than a
/// head; a head announcing more body than the frame has; a body that is
/// not an `Item`; item 5; item 6 with a forged blob handle; item 7 with a
/// real shared blob; item 8. Says `written`. On `rewrite`, publishes
/// [`REWRITTEN`] items and rewrites their vectors' relative pointers over
/// and over (says `published` first) until told to stop; then exits.
fn raw_publisher(arg: &str, ctl: &mut Ctl) {
    let p = params(arg);
    let socket = SocketName::Abstract(p["socket"].clone());
    let mut publ = chan_raw::RawPub::listen(&socket);
    ctl.say("ready");
    let mut link = publ.accept(64 << 10).expect("accept");
    let dl = Instant::now() + Duration::from_secs(20);
    let head = |id: u64| CallHead {
        id,
        ..CallHead::default()
    };
    link.put(9, head(1), &[], &[0; 16], dl).expect("put");
    link.tx.send(MESSAGE, &[1, 2, 3], Some(dl)).expect("send");
    let mut g = link.tx.reserve(MESSAGE, 64, Some(dl)).expect("reserve");
    let lying = CallHead {
        body_len: 1000,
        ..head(3)
    };
    g.bytes_mut()[..32].copy_from_slice(bytemuck::bytes_of(&lying));
    g.commit_all();
    link.tx.publish();
    link.put(MESSAGE, head(4), &[], &[0xff; 48], dl)
        .expect("put");
    link.put(MESSAGE, head(5), &[], &archive(&item(5)), dl)
        .expect("put");
    let forged = BlobHandle {
        class: 0,
        slot: 3,
        generation: 7,
        len: 10,
    };
    link.put(MESSAGE, head(6), &[forged], &archive(&item(6)), dl)
        .expect("put");
    let msg = item(7);
    let mut b = publ.pool.alloc(msg.data.len() * 64).expect("alloc");
    fill_blob(7, &mut b);
    let shared = b
        .share(Parties::from(Party::new(1).expect("party 1")))
        .expect("share");
    let h = BlobHandle::from_bytes(&shared.to_bytes()).expect("16 bytes");
    link.put(MESSAGE, head(7), &[h], &archive(&msg), dl)
        .expect("put");
    link.put(MESSAGE, head(8), &[], &archive(&item(8)), dl)
        .expect("put");
    ctl.say("written");
    assert_eq!(ctl.hear(), "rewrite");
    let region = link.tx_region();
    let mut at = Vec::new();
    for i in 0..REWRITTEN {
        let body = archive(&item(100 + i));
        let off = link
            .put(MESSAGE, head(100 + i), &[], &body, dl)
            .expect("put");
        // The root (16 bytes, at the end): seq, then the vector's
        // relative pointer and length.
        at.push((off + body.len() - 8, off + body.len() - 4));
    }
    ctl.say("published");
    let mut rnd = rng(42);
    loop {
        for &(ptr, len) in &at {
            let r = rnd();
            peer_u32(&region, ptr).store(r as u32, Ordering::Relaxed);
            if r & 0x100 != 0 {
                peer_u32(&region, len).store((r >> 32) as u32, Ordering::Relaxed);
            }
        }
        if ctl.hear_within(Duration::ZERO).is_some() {
            break;
        }
    }
}

#[test]
fn a_publisher_breaking_the_protocol_gets_its_subscriber_typed_errors_only() {
    let _serial = serial();
    let _dog = watchdog("chan-raw-publisher", Duration::from_secs(120));
    let socket = socket_name("chan-raw-publisher");
    let mut publ = Peer::spawn("raw_publisher", &format!("socket={}", name_of(&socket)));
    assert_eq!(publ.line(Duration::from_secs(20)), "ready");
    let mut sub = Subscriber::<Item>::connect(&socket).expect("subscribe");
    publ.expect("written", Duration::from_secs(20));
    let limit = Duration::from_secs(10);
    match sub.recv_timeout(limit) {
        Err(RecvError::UnexpectedKind { kind: 9 }) => {}
        other => panic!("a frame of kind 9: {other:?}"),
    }
    match sub.recv_timeout(limit) {
        Err(RecvError::BadFrame(FrameError::TooShort { len: 3 })) => {}
        other => panic!("a frame cut short: {other:?}"),
    }
    match sub.recv_timeout(limit) {
        Err(RecvError::BadFrame(FrameError::PastEnd { .. })) => {}
        other => panic!("a head lying about its body: {other:?}"),
    }
    match sub.recv_timeout(limit) {
        Err(RecvError::Invalid(e)) => assert!(e.to_string().contains("Item"), "{e}"),
        other => panic!("a body that is not an Item: {other:?}"),
    }
    match sub.recv_timeout(limit) {
        Ok(s) => assert!(is_item(&s, 5) && s.seq() == 5),
        other => panic!("item 5: {other:?}"),
    }
    match sub.recv_timeout(limit) {
        Err(RecvError::Blob(_)) => {}
        other => panic!("a forged blob handle: {other:?}"),
    }
    match sub.recv_timeout(limit) {
        Ok(s) => {
            assert!(is_item(&s, 7));
            let len = s.data.len() * 64;
            assert!(s.blob(0).is_some_and(|b| is_blob(7, len, b)));
        }
        other => panic!("item 7 and its blob: {other:?}"),
    }
    match sub.recv_timeout(limit) {
        Ok(s) => assert!(is_item(&s, 8)),
        other => panic!("item 8: {other:?}"),
    }
    publ.send("rewrite");
    publ.expect("published", Duration::from_secs(20));
    let (mut ok, mut invalid) = (0, 0);
    for _ in 0..REWRITTEN {
        match sub.recv_timeout(limit) {
            // Whatever the pointer said when the body was copied, the
            // copy validated: its bytes are private and stay valid.
            Ok(s) => {
                assert!(s.data.len() <= 64 << 10);
                ok += 1;
            }
            Err(RecvError::Invalid(_)) => invalid += 1,
            Err(e) => panic!("a rewritten body: {e}"),
        }
    }
    eprintln!("chan-raw-publisher: rewritten bodies: {ok} valid, {invalid} refused");
    publ.send("stop");
    publ.wait_ok(Duration::from_secs(20));
    match sub.recv_timeout(limit) {
        Err(RecvError::PeerDied) => {}
        other => panic!("after the publisher exited: {other:?}"),
    }
}

/// Attacker: accepts one subscriber, publishes item 1, then writes a
/// frame header of a kind that does not exist where the next frame goes;
/// says `corrupted`, and exits when told.
fn corrupting_publisher(arg: &str, ctl: &mut Ctl) {
    let p = params(arg);
    let socket = SocketName::Abstract(p["socket"].clone());
    let mut publ = chan_raw::RawPub::listen(&socket);
    ctl.say("ready");
    let ring = 16 << 10;
    let mut link = publ.accept(ring).expect("accept");
    let dl = Instant::now() + Duration::from_secs(20);
    let head = CallHead {
        id: 1,
        ..CallHead::default()
    };
    link.put(MESSAGE, head, &[], &archive(&item(1)), dl)
        .expect("put");
    let region = link.tx_region();
    let tail = peer_u64(&region, TAIL).load(Ordering::Acquire);
    let bogus = 16u64 | (0x9000u64 << 32);
    peer_u64(&region, DATA + (tail % ring as u64) as usize).store(bogus, Ordering::Release);
    ctl.say("corrupted");
    let _ = ctl.hear();
}

#[test]
fn a_publisher_corrupting_the_ring_ends_the_subscription_with_an_error_not_a_hang() {
    let _serial = serial();
    let _dog = watchdog("chan-corrupt", Duration::from_secs(60));
    let socket = socket_name("chan-corrupt");
    let mut publ = Peer::spawn(
        "corrupting_publisher",
        &format!("socket={}", name_of(&socket)),
    );
    assert_eq!(publ.line(Duration::from_secs(20)), "ready");
    let mut sub = Subscriber::<Item>::connect(&socket).expect("subscribe");
    publ.expect("corrupted", Duration::from_secs(20));
    let limit = Duration::from_secs(10);
    match sub.recv_timeout(limit) {
        Ok(s) => assert!(is_item(&s, 1)),
        other => panic!("item 1: {other:?}"),
    }
    for _ in 0..3 {
        let t0 = Instant::now();
        match sub.recv_timeout(limit) {
            Err(RecvError::Transport(e)) => assert!(e.to_string().contains("kind"), "{e}"),
            other => panic!("a corrupt ring: {other:?}"),
        }
        assert!(
            t0.elapsed() < limit,
            "the error came after {:?}",
            t0.elapsed()
        );
    }
    drop(sub);
    publ.send("bye");
    publ.wait_ok(Duration::from_secs(20));
}
