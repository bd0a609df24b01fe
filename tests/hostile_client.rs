//! Hostile clients against a server in the test process: a client that
//! rewrites the request bodies it published while the server reads them,
//! one that makes its doorbell blocking and floods it, and one that
//! scribbles random words over its whole segment. In each the server
//! lives, its other connections keep getting right answers, and nothing
//! the attacker's connections held is left once they are closed.

mod hostile;

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hostile::harness::Test;
use hostile::probe::{expect_back, snapshot};
use hostile::proc::{Ctl, Role, drop_promptly, field, run_role};
use hostile::raw::{RawClient, archive, peer_u32, peer_u64, s2c};
use hostile::{
    ArchivedDigest, DIGEST, Honest, StringAttack, Text, digest, send_and_find_state, slot_word,
    victim_server,
};
use isocall::SocketName;
use isocall::raw::sys::SharedMem;
use isocall::raw::wire::{Status, kind::RESPONSE};
use isocall::ring::layout::CONS_WAIT;
use isocall::ring::wait::WAITING_DOORBELL;

const ROLES: &[Role] = &[
    ("rewrite_requests", rewrite_requests),
    ("stuff_doorbell", stuff_doorbell),
    ("scribble", scribble),
    ("second_accept", second_accept),
];

#[test]
#[ignore = "the entry point of the hostile peers, run by the tests themselves"]
fn role() {
    run_role(ROLES);
}

/// Calls the attacker makes with a rewritten body.
const REWRITTEN_CALLS: u64 = 10_000;
/// The string of every rewritten request (out of line: 100 bytes).
fn attack_string() -> String {
    (0..100)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

/// Attacker: publishes `digest` requests whose `String` it keeps rewriting
/// (its relative pointer and length, to 1 GiB before the body and 512 MiB)
/// while the server validates and reads it, until the response comes.
/// Says `done ok=N bad=M` (answers right / refused as bad requests).
fn rewrite_requests(arg: &str, ctl: &mut Ctl) {
    let socket = SocketName::Abstract(arg.to_string());
    let mut c = RawClient::connect(&socket).expect("connect");
    let method = c.method(DIGEST.name());
    let s = attack_string();
    let attack = StringAttack::new(&s);
    let want = digest(s.as_bytes());
    let region = hostile::raw::c2s(&c.link);
    let (mut ok, mut bad) = (0u64, 0u64);
    let mut round = 0u64;
    for id in 1..=REWRITTEN_CALLS {
        let at = c
            .request(id, method, &[], &attack.body)
            .expect("publish a request");
        let deadline = Instant::now() + Duration::from_secs(20);
        let (status, body) = loop {
            round += 1;
            attack.set(&region, at, round & 2 == 0, round & 4 == 0);
            match c.link.try_take().expect("read the reply ring") {
                Some((RESPONSE, h, _, body)) if h.id == id => break (h.status, body),
                Some((k, ..)) => panic!("frame of kind {k} instead of the reply to {id}"),
                None => assert!(Instant::now() < deadline, "no reply to call {id}"),
            }
        };
        // Leave the body good for the next frame that lands here.
        attack.set(&region, at, false, true);
        match status {
            s if s == Status::Ok as u32 => {
                let d = rkyv::access::<ArchivedDigest, rkyv::rancor::Error>(&body)
                    .expect("a valid digest");
                assert_eq!(
                    (d.len.to_native(), d.sum.to_native()),
                    want,
                    "call {id}: the server read something other than the string sent"
                );
                ok += 1;
            }
            s if s == Status::BadRequest as u32 => bad += 1,
            s => panic!("call {id}: status {s}"),
        }
    }
    ctl.say(&format!("done ok={ok} bad={bad}"));
}

#[test]
fn a_client_rewriting_the_string_it_sent_while_the_server_reads_it() {
    let test = Test::start("rewrite_requests", Duration::from_secs(180));
    let server = victim_server(&test.socket).spawn().expect("server");
    let honest = Honest::running(&test.socket, Duration::from_secs(10));
    let base = snapshot();

    let t0 = Instant::now();
    let mut attacker = test.peer("rewrite_requests");
    let line = attacker.expect("done", Duration::from_secs(150));
    attacker.wait_ok(Duration::from_secs(10));
    let (ok, bad): (u64, u64) = (field(&line, "ok="), field(&line, "bad="));
    eprintln!(
        "rewrite_requests: {ok} right answers, {bad} refused as bad requests, in {:?}",
        t0.elapsed()
    );
    assert_eq!(ok + bad, REWRITTEN_CALLS);
    assert!(
        ok > 0 && bad > 0,
        "the rewrite should land both before and after some copies (ok={ok}, bad={bad})"
    );
    honest.progresses(10, Duration::from_secs(10));
    expect_back(
        &base,
        Duration::from_secs(10),
        "after the attacker's connection closed",
    );
    honest.finish_ok();
    let s = server.stats();
    assert!(s.closed >= 1 && s.accepted >= 2, "{s:?}");
    test.stop_server(server);
}

/// Attacker: fills the server's doorbell end and makes its own end
/// blocking, never drains it, asks for a ring on every reply (its
/// consumer-waiting word says "doorbell"), makes calls, then floods on
/// until told `exit`. Says `calls N` once its calls are done.
fn stuff_doorbell(arg: &str, ctl: &mut Ctl) {
    let socket = SocketName::Abstract(arg.to_string());
    let mut c = RawClient::connect(&socket).expect("connect");
    let bell = c.link.doorbell.clone();
    let flood = || {
        let mut n = 0u64;
        while rustix::net::send(
            bell.as_fd(),
            &[7],
            rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
        )
        .is_ok()
        {
            n += 1;
        }
        n
    };
    let first = flood();
    let flags = rustix::fs::fcntl_getfl(bell.as_fd()).expect("getfl");
    rustix::fs::fcntl_setfl(bell.as_fd(), flags - rustix::fs::OFlags::NONBLOCK).expect("setfl");
    assert!(
        !rustix::fs::fcntl_getfl(bell.as_fd())
            .unwrap()
            .contains(rustix::fs::OFlags::NONBLOCK)
    );
    eprintln!("stuff_doorbell: {first} rings queued at the server, our end made blocking");
    let replies = s2c(&c.link);
    let want_ring = || peer_u32(&replies, CONS_WAIT).store(WAITING_DOORBELL, Ordering::SeqCst);
    let method = c.method(DIGEST.name());
    let body = archive(&Text { s: attack_string() });
    let mut calls = 0u64;
    for id in 1..=2000u64 {
        want_ring();
        c.request(id, method, &[], &body).expect("request");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            want_ring();
            flood();
            match c.link.try_take().expect("reply ring") {
                Some((RESPONSE, h, ..)) if h.id == id => break,
                Some((k, ..)) => panic!("frame of kind {k}"),
                None => assert!(Instant::now() < deadline, "no reply to {id}"),
            }
        }
        calls += 1;
    }
    ctl.say(&format!("calls {calls}"));
    // Keep the doorbell stuffed until the parent has dropped its server.
    loop {
        want_ring();
        flood();
        match ctl.hear_within(Duration::from_millis(1)) {
            Some(l) if l == "exit" || l.is_empty() => break,
            _ => {}
        }
    }
}

#[test]
fn a_client_that_blocks_and_floods_its_doorbell_delays_no_one() {
    let test = Test::start("stuff_doorbell", Duration::from_secs(120));
    let server = victim_server(&test.socket)
        .wait_strategy(isocall::WaitStrategy::Blocking)
        .spawn()
        .expect("server");
    let honest = Honest::running(&test.socket, Duration::from_secs(5));
    let mut attacker = test.peer("stuff_doorbell");
    let calls = attacker.expect("calls", Duration::from_secs(90));
    assert_eq!(calls, "2000");
    // While the doorbell stays stuffed, the server serves the others.
    honest.progresses(200, Duration::from_secs(20));
    let report = honest.finish_ok();
    eprintln!(
        "stuff_doorbell: honest client made {} calls, the slowest {:?}",
        report.calls, report.slowest
    );
    assert!(
        report.slowest < Duration::from_secs(2),
        "an honest call took {:?} beside a stuffed doorbell",
        report.slowest
    );
    // Dropping the server while the attacker lives, its doorbell stuffed
    // and blocking, returns.
    drop_promptly(server, "server");
    attacker.send("exit");
    attacker.wait_ok(Duration::from_secs(10));
    test.expect_back("after the server stopped");
}

/// Scribbles in total.
const SCRIBBLES: u64 = 10_000_000;
/// Most scribbles on one connection before the attacker closes it itself.
const SCRIBBLES_PER_CONN: u64 = 400_000;

/// Attacker: connection after connection, writes random words over every
/// byte of the live segment (a sweep of the whole mapping, and random
/// places), ringing the server's doorbell now and then, until the server
/// closes the connection or it wrote its share; says
/// `done writes=N conns=M closed=K` (K: closed by the server).
fn scribble(arg: &str, ctl: &mut Ctl) {
    let socket = SocketName::Abstract(arg.to_string());
    let mut x = u64::from(std::process::id()) | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut writes, mut conns, mut closed) = (0u64, 0u64, 0u64);
    while writes < SCRIBBLES {
        let mut c = match RawClient::connect(&socket) {
            Ok(c) => c,
            Err(e) => panic!("connection {conns}: {e:?}"),
        };
        conns += 1;
        // A few honest requests first, so the server has frames to read.
        let body = archive(&Text { s: attack_string() });
        let method = c.method(DIGEST.name());
        for id in 1..=4 {
            let _ = c.request(id, method, &[], &body);
        }
        let mem = SharedMem::open(c.link.memfd.try_clone().expect("dup")).expect("map");
        let words = mem.u64_words().expect("writable");
        let mut sweep = 0usize;
        let mut mine = 0u64;
        loop {
            for _ in 0..256 {
                let r = rnd();
                let i = if r & 1 == 0 {
                    sweep = (sweep + 1) % words.len();
                    sweep
                } else {
                    (r >> 17) as usize % words.len()
                };
                words[i].store(rnd(), Ordering::Relaxed);
            }
            mine += 256;
            c.link.doorbell.ring_peer();
            if mine.is_multiple_of(4096) && c.link.hung_up() {
                closed += 1;
                break;
            }
            if mine >= SCRIBBLES_PER_CONN || writes + mine >= SCRIBBLES {
                break;
            }
        }
        writes += mine;
        drop(mem);
        drop(c);
    }
    ctl.say(&format!(
        "done writes={writes} conns={conns} closed={closed}"
    ));
}

#[test]
fn a_scribbler_over_live_segments_hurts_only_its_own_connections() {
    let test = Test::start("scribble", Duration::from_secs(180));
    let server = victim_server(&test.socket)
        .layout(isocall::raw::SegmentLayout {
            ring_capacity: 16 << 10,
            blobs: isocall::blob::PoolConfig::new()
                .class(256, 64)
                .class(4096, 8),
        })
        .spawn()
        .expect("server");
    let honest = Honest::running(&test.socket, Duration::from_secs(10));
    let base = snapshot();
    let t0 = Instant::now();
    let mut attacker = test.peer("scribble");
    let line = attacker.expect("done", Duration::from_secs(150));
    attacker.wait_ok(Duration::from_secs(10));
    eprintln!("scribble: {line} in {:?}", t0.elapsed());
    let writes: u64 = field(&line, "writes=");
    assert!(writes >= SCRIBBLES, "{line}");
    honest.progresses(10, Duration::from_secs(10));
    expect_back(
        &base,
        Duration::from_secs(20),
        "after the scribbled connections closed",
    );
    let report = honest.finish_ok();
    eprintln!(
        "scribble: the honest client made {} right calls",
        report.calls
    );
    let s = server.stats();
    eprintln!("scribble: server stats {s:?}");
    test.stop_server(server);
}

/// Accepts the request's blob 0, waits (a bounded while) until its slot
/// reads "in flight to the server" again, then accepts blob 1, the same
/// handle: answers 1 if that second accept failed, 0 if it gave a second
/// live view.
const HOLD: isocall::Method<hostile::Add, hostile::Sum> = isocall::Method::new("hold");

/// Attacker: sends a blob twice in one `hold` request and, once the
/// server accepted it (its slot reads Held(server)), rewrites the slot's
/// state word back to InFlight(server); says `rewrote`, then `sum N`.
fn second_accept(arg: &str, ctl: &mut Ctl) {
    let socket = SocketName::Abstract(arg.to_string());
    let mut c = RawClient::connect(&socket).expect("connect");
    let pool = c.link.pool.take().expect("a pool");
    // The slot's state word: it changed to InFlight(server) (code 4).
    let (h, state_at) = send_and_find_state(&pool, 0x5A, 4);
    let word = |code: u64| slot_word(h.generation, code);
    let method = c.method(HOLD.name());
    let body = archive(&hostile::Add { a: 0, b: 0 });
    c.request(1, method, &[h, h], &body).expect("request");
    let w = peer_u64(pool.region(), state_at);
    let limit = Instant::now() + Duration::from_secs(10);
    // Held(server) (code 2) -> InFlight(server), as if never accepted.
    while w
        .compare_exchange(word(2), word(4), Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        assert!(Instant::now() < limit, "the server never accepted the blob");
        std::hint::spin_loop();
    }
    ctl.say("rewrote");
    let (status, _, reply) = c
        .response(1, Instant::now() + Duration::from_secs(20))
        .expect("response");
    assert_eq!(status, Status::Ok as u32);
    let sum = rkyv::access::<hostile::ArchivedSum, rkyv::rancor::Error>(&reply).expect("a sum");
    ctl.say(&format!("sum {}", sum.sum.to_native()));
}

#[test]
fn a_slot_the_server_holds_rewritten_back_to_in_flight_is_not_accepted_twice() {
    let test = Test::start("second_accept", Duration::from_secs(60));
    let server = victim_server(&test.socket)
        .method(HOLD, |_: &hostile::ArchivedAdd, ctx: &mut isocall::CallCtx<'_>| {
            let h = ctx.blobs()[0];
            let pool = ctx.pool().expect("a pool");
            let mut first = ctx.blob_mut(0).map_err(|e| isocall::AppError::msg(e.to_string()))?;
            // Until the peer rewrote the slot (bounded).
            let limit = Instant::now() + Duration::from_secs(10);
            while pool.slot_state(h.class as usize, h.slot as usize).map(|s| s.0)
                != Some(isocall::blob::SlotState::InFlight(isocall::blob::Side::B))
            {
                if Instant::now() > limit {
                    return Err(isocall::AppError::msg("the slot was never rewritten"));
                }
                std::thread::yield_now();
            }
            let second_failed = match ctx.blob_mut(1) {
                Err(e) => {
                    eprintln!("second_accept: the second accept failed: {e}");
                    true
                }
                Ok(second) => {
                    eprintln!(
                        "second_accept: a second live BlobMut of a slot the server holds ({} bytes)",
                        second.len()
                    );
                    std::mem::forget(second);
                    false
                }
            };
            first[0] = 1;
            Ok(hostile::Sum {
                sum: u64::from(second_failed),
            })
        })
        .spawn()
        .expect("server");
    let honest = Honest::running(&test.socket, Duration::from_secs(20));
    let base = snapshot();
    let mut attacker = test.peer("second_accept");
    attacker.expect("rewrote", Duration::from_secs(20));
    let sum = attacker.expect("sum", Duration::from_secs(20));
    attacker.wait_ok(Duration::from_secs(10));
    assert_eq!(
        sum, "1",
        "the server accepted a slot it holds a second time"
    );
    // The honest client beside it goes on getting right answers.
    honest.progresses(10, Duration::from_secs(10));
    expect_back(
        &base,
        Duration::from_secs(10),
        "after the attacker's connection closed",
    );
    honest.finish_ok();
    test.stop_server(server);
}
