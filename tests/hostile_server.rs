//! Hostile servers against a client in the test process: a server that
//! rewrites the reply bodies it published while the client reads them
//! (long ones to a `Client`, short ones to a `SharedClient`),
//! one that makes the client's doorbell blocking and floods it, one that
//! sends replies nobody asked for every millisecond and one that sends
//! them as fast as it can, and one that rewrites
//! a blob slot the client holds back to "in flight" and sends its handle
//! again, and one that answers while the client sleeps but never wakes
//! it. The client's calls succeed or fail with a typed error within
//! their deadlines, dropping it never hangs, and it leaks nothing.

mod hostile;

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hostile::harness::Test;
use hostile::proc::{Ctl, Peer, Role, drop_promptly, run_role};
use hostile::raw::{RawLink, RawServer, archive, c2s, method_info, peer_u32, peer_u64, s2c};
use hostile::{
    ADD, Add, ArchivedAdd, Bystander, ECHO, StringAttack, Sum, Text, send_and_find_state, slot_word,
};
use isocall::blob::{BlobHandle, PoolConfig};
use isocall::raw::SegmentLayout;
use isocall::raw::wire::{CallHead, Status, kind};
use isocall::ring::layout::CONS_WAIT;
use isocall::ring::wait::{NOT_WAITING, RECHECK, WAITING_DOORBELL, WAITING_FUTEX};
use isocall::rpc::ReplyError;
use isocall::{
    CallError, Client, ClientOptions, Method, MethodRef, SharedClient, SocketName, WaitStrategy,
};

const ROLES: &[Role] = &[
    ("rewrite_replies", rewrite_replies),
    ("rewrite_short_replies", rewrite_short_replies),
    ("stuff_doorbell", stuff_doorbell),
    ("stray_replies", stray_replies),
    ("flood_stray", flood_stray),
    ("second_accept", second_accept),
    ("silent_wakes", silent_wakes),
];

#[test]
#[ignore = "the entry point of the hostile peers, run by the tests themselves"]
fn role() {
    run_role(ROLES);
}

/// A blob from the server with every reply.
const GIVE: Method<Add, Sum> = Method::new("give");

fn layout() -> SegmentLayout {
    SegmentLayout {
        ring_capacity: 64 << 10,
        blobs: PoolConfig::new().class(256, 16),
    }
}

/// In a hostile server: listens on `arg`, says `listening`, accepts one
/// client (with `echo`, `add` and `give`).
fn accept_one(
    arg: &str,
    ctl: &mut Ctl,
    keep_client_end: bool,
) -> (RawLink, Option<std::os::fd::OwnedFd>) {
    accept_one_with(arg, ctl, keep_client_end, &layout())
}

/// As [`accept_one`], with a segment of `layout`.
fn accept_one_with(
    arg: &str,
    ctl: &mut Ctl,
    keep_client_end: bool,
    layout: &SegmentLayout,
) -> (RawLink, Option<std::os::fd::OwnedFd>) {
    let mut srv = RawServer::listen(&SocketName::Abstract(arg.to_string()));
    ctl.say("listening");
    srv.accept(
        &[method_info(ECHO), method_info(ADD), method_info(GIVE)],
        layout,
        keep_client_end,
    )
    .expect("accept")
}

/// An honest answer to `add`.
fn sum_of(body: &[u8]) -> Vec<u8> {
    let a = rkyv::access::<ArchivedAdd, rkyv::rancor::Error>(body).expect("an add request");
    archive(&Sum {
        sum: a.a.to_native().wrapping_add(a.b.to_native()),
    })
}

fn reply(link: &mut RawLink, to: &CallHead, blobs: &[BlobHandle], body: &[u8]) -> usize {
    link.put(
        kind::RESPONSE,
        CallHead {
            id: to.id,
            method: to.method,
            status: Status::Ok as u32,
            ..CallHead::default()
        },
        blobs,
        body,
        Instant::now() + Duration::from_secs(10),
    )
    .expect("publish a reply")
}

/// Serves until the client closes or hangs up, calling `on_idle` between
/// looks at the ring and `on_request` for each request.
fn serve(
    link: &mut RawLink,
    mut on_idle: impl FnMut(&mut RawLink),
    mut on_request: impl FnMut(&mut RawLink, CallHead, Vec<u8>),
) {
    let mut turn = 0u64;
    loop {
        on_idle(link);
        match link.try_take() {
            Ok(Some((kind::REQUEST, h, _, body))) => on_request(link, h, body),
            Ok(Some((kind::CLOSE, ..))) | Err(_) => return,
            Ok(Some(_)) => {}
            Ok(None) => {
                turn += 1;
                if turn.is_multiple_of(1024) && link.hung_up() {
                    return;
                }
                // Idle, it gives up the CPU now and then: on two cores
                // shared with the client, the bystander and the other
                // tests, a peer that never did kept a client placed on its
                // core waiting out the rest of a time slice for each
                // answer (10,000 calls took from 0.03 to 38 s). What these
                // servers test is what they write, not CPU starvation.
                if turn.is_multiple_of(64) {
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// Starts test `role`: a bystander in this process, then the hostile
/// server `role`, listening on the test's socket.
fn start(role: &'static str, limit: Duration) -> (Test, Bystander, Peer) {
    let test = Test::start(role, limit);
    let bystander = Bystander::start(role);
    let mut server = test.peer(role);
    server.expect("listening", Duration::from_secs(20));
    (test, bystander, server)
}

/// Ends a test once the client survived the attack: the bystander still
/// makes progress, dropping the client returns within 5 s, the server
/// exits with success, and nothing the client held is left.
fn close<C>(test: Test, bystander: Bystander, client: C, mut server: Peer) {
    bystander.progresses();
    drop_promptly(client, "client");
    server.wait_ok(Duration::from_secs(10));
    bystander.finish();
    test.expect_back("after the client closed");
}

/// The string of every rewritten reply, `len` letters.
fn reply_string_of(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'A' + (i % 26) as u8))
        .collect()
}

/// The string of every rewritten long reply.
fn reply_string() -> String {
    reply_string_of(100)
}

/// The string of every rewritten short reply: its archive fits the 64
/// bytes that a shared client's leader copies into its call's slot.
fn short_reply_string() -> String {
    reply_string_of(40)
}

const REWRITTEN_CALLS: u64 = 10_000;

/// Hostile server: answers every `echo` with the same out-of-line string,
/// then keeps rewriting that reply's relative pointer and length until the
/// next request comes.
fn rewrite_replies(arg: &str, ctl: &mut Ctl) {
    rewrite_replies_of(arg, ctl, &reply_string());
}

/// As [`rewrite_replies`], with [`short_reply_string`].
fn rewrite_short_replies(arg: &str, ctl: &mut Ctl) {
    rewrite_replies_of(arg, ctl, &short_reply_string());
}

/// As [`rewrite_replies`], the reply's string `s`.
fn rewrite_replies_of(arg: &str, ctl: &mut Ctl, s: &str) {
    let (mut link, _) = accept_one(arg, ctl, false);
    let attack = StringAttack::new(s);
    let region = s2c(&link);
    let last: std::cell::Cell<Option<usize>> = std::cell::Cell::new(None);
    let mut round = 0u64;
    serve(
        &mut link,
        |_| {
            if let Some(at) = last.get() {
                round += 1;
                attack.set(&region, at, round & 2 == 0, round & 4 == 0);
            }
        },
        |link, h, _| {
            if let Some(at) = last.take() {
                attack.set(&region, at, false, true);
            }
            last.set(Some(reply(link, &h, &[], &attack.body)));
        },
    );
}

#[test]
fn a_server_rewriting_the_string_it_replied_while_the_client_reads_it() {
    let (test, bystander, server) = start("rewrite_replies", Duration::from_secs(180));
    let mut client = Client::connect(&test.socket).expect("connect");
    let echo = client.method(ECHO).expect("echo");
    let want = reply_string();
    let req = Text { s: "x".repeat(20) };
    rewritten_calls("rewrite_replies", |deadline| {
        let r = client.call_with(echo, &req, &[], Some(deadline))?;
        Ok(r.s.as_str() == want)
    });
    assert!(client.is_alive());
    close(test, bystander, client, server);
}

/// The leader of a shared client copies its own short reply into its
/// call's slot and checks it there: a server that rewrites the reply's
/// pointer and length while the client reads gets the right string or an
/// invalid-reply error, never a reply read from its rewritten bytes.
#[test]
fn a_server_rewriting_a_short_reply_while_a_shared_client_reads_it() {
    assert!(
        StringAttack::new(&short_reply_string()).body.len() <= 64,
        "the short reply must fit a slot's buffer"
    );
    let (test, bystander, server) = start("rewrite_short_replies", Duration::from_secs(180));
    let client = SharedClient::connect(&test.socket).expect("connect");
    let echo = client.method(ECHO).expect("echo");
    let want = short_reply_string();
    let req = Text { s: "x".repeat(20) };
    rewritten_calls("rewrite_short_replies", |deadline| {
        let r = client.call_with(echo, &req, &[], Some(deadline))?;
        Ok(r.s.as_str() == want)
    });
    assert!(client.is_alive());
    close(test, bystander, client, server);
}

/// Makes [`REWRITTEN_CALLS`] calls through `call` (given each its
/// deadline; true if its reply was the string sent): every one gives the
/// right string or is refused as invalid, and both happen. Prints the two
/// counts and the time taken.
fn rewritten_calls(role: &str, mut call: impl FnMut(Instant) -> Result<bool, CallError>) {
    let t0 = Instant::now();
    let (mut ok, mut bad) = (0u64, 0u64);
    for i in 0..REWRITTEN_CALLS {
        match call(Instant::now() + Duration::from_secs(10)) {
            Ok(right) => {
                assert!(right, "{role} call {i}: a reply other than the one sent");
                ok += 1;
            }
            Err(CallError::BadReply(ReplyError::Invalid(_))) => bad += 1,
            Err(e) => panic!("{role} call {i}: {e:?}"),
        }
    }
    assert!(ok > 0 && bad > 0, "{role}: ok={ok} bad={bad}");
    eprintln!(
        "{role}: ({ok}, {bad}) (right, invalid) in {:?}",
        t0.elapsed()
    );
}

/// Hostile server: makes both ends of the doorbell blocking (its own, and
/// through a kept duplicate the client's, whose open file description it
/// shares), fills the client's end, never drains its own, asks for a ring
/// on every request (its consumer-waiting word says "doorbell"), and
/// answers `add` honestly.
fn stuff_doorbell(arg: &str, ctl: &mut Ctl) {
    let (mut link, kept) = accept_one(arg, ctl, true);
    let theirs = kept.expect("the client's end");
    let ours = link.doorbell.clone();
    for fd in [ours.as_fd(), theirs.as_fd()] {
        let flags = rustix::fs::fcntl_getfl(fd).expect("getfl");
        rustix::fs::fcntl_setfl(fd, flags - rustix::fs::OFlags::NONBLOCK).expect("setfl");
    }
    let flood = || {
        while rustix::net::send(
            ours.as_fd(),
            &[7],
            rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
        )
        .is_ok()
        {}
    };
    let requests = c2s(&link);
    let mut turn = 0u32;
    serve(
        &mut link,
        |_| {
            peer_u32(&requests, CONS_WAIT).store(WAITING_DOORBELL, Ordering::SeqCst);
            turn = turn.wrapping_add(1);
            if turn.is_multiple_of(64) {
                flood();
            }
        },
        |link, h, body| {
            let sum = sum_of(&body);
            reply(link, &h, &[], &sum);
        },
    );
    drop(theirs);
}

#[test]
fn a_server_that_blocks_and_floods_the_clients_doorbell_delays_no_call() {
    let (test, bystander, server) = start("stuff_doorbell", Duration::from_secs(120));
    let mut client = Client::connect_with(
        &test.socket,
        ClientOptions::default().call_timeout(Duration::from_secs(5)),
    )
    .expect("connect");
    let add = client.method(ADD).expect("add");
    let mut slowest = Duration::ZERO;
    for i in 0..5_000u64 {
        slowest = slowest.max(timed_add(&mut client, add, i));
    }
    eprintln!("stuff_doorbell: 5000 calls, the slowest {slowest:?}");
    assert!(slowest < Duration::from_secs(2), "a call took {slowest:?}");
    // Dropping the client while the server keeps its doorbell stuffed.
    close(test, bystander, client, server);
}

/// Hostile server: answers every `add`, but only once the client sleeps
/// for the answer, and withholds the wake-up: it waits for the client's
/// announcement in its reply ring's wait word, gives the client a moment
/// to be asleep in the kernel, erases the announcement (so that its own
/// publish wakes no one) and publishes.
fn silent_wakes(arg: &str, ctl: &mut Ctl) {
    let (mut link, _) = accept_one(arg, ctl, false);
    let replies = s2c(&link);
    serve(
        &mut link,
        |_| {},
        |link, h, body| {
            let wait = peer_u32(&replies, CONS_WAIT);
            let until = Instant::now() + Duration::from_secs(5);
            while wait.load(Ordering::SeqCst) != WAITING_FUTEX && Instant::now() < until {
                std::hint::spin_loop();
            }
            // Well past the client's announce-look-sleep (microseconds).
            let asleep = Instant::now() + Duration::from_millis(2);
            while Instant::now() < asleep {
                std::hint::spin_loop();
            }
            wait.store(NOT_WAITING, Ordering::SeqCst);
            let sum = sum_of(&body);
            reply(link, &h, &[], &sum);
        },
    );
}

/// Hostile server: every millisecond publishes a RESPONSE to a call id no
/// one waits for (every other one naming a forged blob); answers `add`,
/// never `echo`.
fn stray_replies(arg: &str, ctl: &mut Ctl) {
    let (mut link, _) = accept_one(arg, ctl, false);
    let mut next = Instant::now();
    let mut n = 0u64;
    let body = archive(&Sum { sum: 0 });
    let forged = BlobHandle {
        class: 0,
        slot: 3,
        generation: 77,
        len: 64,
    };
    serve(
        &mut link,
        |link| {
            if Instant::now() >= next {
                n += 1;
                let stray = CallHead {
                    id: 1_000_000 + n,
                    method: 1,
                    ..CallHead::default()
                };
                let blobs: &[BlobHandle] = if n.is_multiple_of(2) { &[forged] } else { &[] };
                reply(link, &stray, blobs, &body);
                next += Duration::from_millis(1);
            }
            std::thread::park_timeout(Duration::from_micros(100));
        },
        |link, h, body| {
            if h.method == 1 {
                let sum = sum_of(&body);
                reply(link, &h, &[], &sum);
            }
        },
    );
}

#[test]
fn stray_replies_every_millisecond_do_not_stretch_a_deadline() {
    let (test, bystander, server) = start("stray_replies", Duration::from_secs(60));
    let mut client = Client::connect(&test.socket).expect("connect");
    let (echo, add) = (
        client.method(ECHO).expect("echo"),
        client.method(ADD).expect("add"),
    );
    let req = Text { s: "hello".into() };
    for i in 0..10 {
        let t = Instant::now();
        let r = client.call_with(echo, &req, &[], Some(t + Duration::from_millis(200)));
        let took = t.elapsed();
        assert!(
            matches!(r, Err(CallError::Timeout)),
            "call {i}: {:?}",
            r.map(|_| ())
        );
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_millis(700),
            "call {i} with a 200 ms timeout ended after {took:?}"
        );
    }
    let r = client.call(add, &Add { a: 2, b: 40 }).expect("add");
    assert_eq!(r.sum.to_native(), 42);
    drop(r);
    assert!(client.is_alive());
    close(test, bystander, client, server);
}

/// Hostile server: publishes RESPONSE frames to call ids no one waits for
/// as fast as it can (no pacing: whenever the client's ring has room),
/// each naming 16 forged blobs (so the client spends longer on a frame
/// than the server), with a ring of 8 MiB (so a pause of the server, a
/// scheduler's time slice, leaves the client frames to read); answers
/// nothing, and drains the requests so the client's ring never fills;
/// until the client hangs up.
fn flood_stray(arg: &str, ctl: &mut Ctl) {
    let layout = SegmentLayout {
        ring_capacity: 8 << 20,
        ..layout()
    };
    let (mut link, _) = accept_one_with(arg, ctl, false, &layout);
    let body = archive(&Sum { sum: 0 });
    let forged: Vec<BlobHandle> = (0..16)
        .map(|slot| BlobHandle {
            class: 0,
            slot,
            generation: 77,
            len: 64,
        })
        .collect();
    let mut n = 0u64;
    for turn in 1u64.. {
        let stray = CallHead {
            id: 1_000_000 + n,
            method: 1,
            status: Status::Ok as u32,
            ..CallHead::default()
        };
        let deadline = Instant::now() + Duration::from_millis(100);
        match link.put(kind::RESPONSE, stray, &forged, &body, deadline) {
            Ok(_) => n += 1,
            Err(_) if link.hung_up() => break,
            Err(_) => {}
        }
        if turn.is_multiple_of(64) {
            while let Ok(Some(_)) = link.try_take() {}
        }
        if turn.is_multiple_of(4096) && link.hung_up() {
            break;
        }
    }
    eprintln!("flood_stray: {n} stray replies sent");
}

/// Calls the flood test makes, each with [`FLOOD_TIMEOUT`].
const FLOOD_CALLS: u32 = 5;
const FLOOD_TIMEOUT: Duration = Duration::from_millis(100);

/// The client read the clock only when its ring was empty, so a server
/// that kept the ring full of replies to other calls kept a call waiting
/// past its deadline for as long as it flooded; it now reads it after
/// each frame that is not the call's.
#[test]
fn a_flood_of_stray_replies_does_not_keep_a_call_past_its_deadline() {
    let (test, bystander, mut server) = start("flood_stray", Duration::from_secs(60));
    let mut client = Client::connect(&test.socket).expect("connect");
    let echo = client.method(ECHO).expect("echo");
    // A generous bound, not a timing target: the call must end.
    let bound = FLOOD_TIMEOUT * 10;
    let (tx, rx) = std::sync::mpsc::channel();
    // The calls run on a thread of their own, so that a call that never
    // ends fails the test (the flood is stopped, then the call ends).
    let caller = std::thread::spawn(move || {
        let req = Text { s: "hello".into() };
        for _ in 0..FLOOD_CALLS {
            let t = Instant::now();
            let r = client.call_with(echo, &req, &[], Some(t + FLOOD_TIMEOUT));
            let timed_out = matches!(r, Err(CallError::Timeout));
            let what = format!("{:?}", r.map(|_| ()));
            if tx.send((timed_out, what, t.elapsed())).is_err() {
                break;
            }
        }
        client
    });
    for i in 0..FLOOD_CALLS {
        match rx.recv_timeout(bound) {
            Ok((timed_out, what, took)) => {
                eprintln!("flood_stray: call {i} ended after {took:?}: {what}");
                assert!(timed_out, "call {i}: {what}, not Timeout");
                assert!(
                    took >= FLOOD_TIMEOUT,
                    "call {i} timed out after {took:?}, before its {FLOOD_TIMEOUT:?}"
                );
            }
            Err(_) => {
                // Stop the flood: the call ends, the thread can be joined.
                server.kill();
                let _ = caller.join();
                panic!(
                    "call {i} with a {FLOOD_TIMEOUT:?} timeout had not ended after {bound:?} \
                     of stray replies"
                );
            }
        }
    }
    let client = caller.join().expect("the calling thread");
    assert!(client.is_alive());
    close(test, bystander, client, server);
}

/// Hostile server: answers the first `give` with a blob of its pool; on
/// the second, finds that slot held by the client (it accepted it) and
/// rewrites its state word back to "in flight to the client", then sends
/// the same handle again. Says `rewrote` once it did.
fn second_accept(arg: &str, ctl: &mut Ctl) {
    let (mut link, _) = accept_one(arg, ctl, false);
    let pool = link.pool.take().expect("a pool");
    let region = pool.region();
    // In flight to the client now (code 3): the word that changed to it.
    let (h, state_at) = send_and_find_state(&pool, 0xAB, 3);
    let held_by = |code: u64| slot_word(h.generation, code);
    let mut calls = 0;
    serve(
        &mut link,
        |_| {},
        |link, h2, _| {
            calls += 1;
            if calls == 2 {
                // Held(client) -> InFlight(client), as if never accepted.
                let w = peer_u64(region, state_at);
                w.compare_exchange(held_by(1), held_by(3), Ordering::AcqRel, Ordering::Acquire)
                    .expect("the slot is held by the client");
                ctl.say("rewrote");
            }
            reply(link, &h2, &[h], &archive(&Sum { sum: calls }));
        },
    );
}

#[test]
fn a_slot_rewritten_back_to_in_flight_is_not_accepted_twice() {
    let (test, bystander, mut server) = start("second_accept", Duration::from_secs(60));
    let mut client = Client::connect(&test.socket).expect("connect");
    let pool = client.pool().expect("a pool").clone();
    let give = client.method(GIVE).expect("give");
    let h = client
        .call(give, &Add { a: 0, b: 0 })
        .expect("first give")
        .take_handle(0)
        .expect("a blob");
    let mut first = pool.accept_mut(&h).expect("the first accept");
    assert_eq!(&first[..], &[0xAB; 64][..]);
    {
        let mut r = client.call(give, &Add { a: 0, b: 0 }).expect("second give");
        assert_eq!(r.blob_handles(), &[h]);
        server.expect("rewrote", Duration::from_secs(10));
        // The slot reads "in flight to the client" again, but the client
        // holds it: a second accept must fail, not hand out a second view.
        match r.blob_mut(0) {
            Err(e) => eprintln!("second_accept: the second accept failed: {e}"),
            Ok(second) => panic!(
                "a second live BlobMut of a slot the client holds ({} bytes)",
                second.len()
            ),
        }
    }
    first[0] = 1;
    drop(first);
    assert!(client.is_alive());
    drop(client);
    drop(pool);
    server.wait_ok(Duration::from_secs(10));
    bystander.finish();
    test.expect_back("after the client closed");
}

#[test]
fn a_server_that_never_wakes_the_client_delays_each_answer_by_a_recheck_at_most() {
    // Without the ring's recheck a sleeping client would see each answer
    // only at its call's deadline (10 s here).
    let (test, bystander, server) = start("silent_wakes", Duration::from_secs(120));
    let mut client = Client::connect_with(
        &test.socket,
        ClientOptions::default()
            .strategy(WaitStrategy::Blocking)
            .call_timeout(Duration::from_secs(10)),
    )
    .expect("connect");
    let add = client.method(ADD).expect("add");
    for i in 0..20u64 {
        let took = timed_add(&mut client, add, i);
        // A hundred rechecks of margin on a loaded machine; the deadline
        // it would otherwise wait for is 10 s.
        assert!(
            took < RECHECK * 100,
            "call {i} waited {took:?} for an answer published long before"
        );
    }
    close(test, bystander, client, server);
}

/// Calls `add` with `i` and 7, checks the sum, and says how long it took.
fn timed_add(client: &mut Client, add: MethodRef<Add, Sum>, i: u64) -> Duration {
    let t = Instant::now();
    let r = client
        .call(add, &Add { a: i, b: 7 })
        .unwrap_or_else(|e| panic!("call {i}: {e}"));
    assert_eq!(r.sum.to_native(), i + 7);
    t.elapsed()
}
