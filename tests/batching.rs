//! Over a stream socket a client sends the requests of calls started
//! while others are in flight together, when it is about to wait: none of
//! them may stay in its buffer. Calls started then waited for in any
//! order (each wait with a deadline, so a request left behind fails the
//! test instead of hanging it); requests never waited for, sent by
//! `flush` and by a one-way message (the server counts what it got, as
//! another connection sees); a lone call and calls
//! behind it on a shared client, started on one thread and waited for on
//! another. On every transport, each test twice: as configured by default
//! (shared memory publishes each request as it starts), and with
//! `ClientOptions::batch_requests`, with which shared memory holds
//! requests back too; then also many threads pipelining through one
//! shared client, with waits that spin, sleep, or block.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::calc::*;
use common::transport::{Transport, serve_transport_for_parent, server_process_on};
use common::*;
use isocall::raw::SegmentLayout;
use isocall::rpc::Endpoint;
use isocall::{
    CallCtx, CallError, Client, ClientOptions, Message, Method, Pending, SharedClient, WaitStrategy,
};

on_every_transport!(
    started_calls_never_stay_in_the_client_s_buffer,
    started_calls_never_stay_held_back,
    calls_started_on_one_thread_are_waited_for_on_another,
    calls_held_back_on_one_thread_are_waited_for_on_another,
    threads_pipelining_batched_requests_get_every_answer,
);

const LIMIT: Duration = Duration::from_secs(30);

/// On shared memory with `batch_requests`, requests are really held back:
/// of 20 calls started and not waited for, the rule (held while those held
/// are fewer than half the calls in flight) publishes the first 16 and
/// holds 4, which the server never sees until `flush`. (Without holding
/// back, the server would count all 20.)
#[test]
fn shm_requests_started_while_others_are_in_flight_are_held_back() {
    let (_server, socket) = server_process(Transport::Shm, "held-rule");
    let opts = ClientOptions::default().batch_requests(true);
    let mut c = Client::connect_with(&socket, opts).expect("connect");
    let mut probe = Client::connect(&socket).expect("connect the probe");
    let tally = c.method(TALLY).unwrap();
    let pending: Vec<_> = (0..20)
        .map(|_| c.start(tally, &one(1), &[]).unwrap())
        .collect();
    counted(&mut probe, 16, "the 16 calls published");
    // Nothing else can reach the server: the other 4 wait in the ring,
    // unpublished.
    assert_eq!(count(&mut probe), 16, "4 requests held back");
    c.flush().unwrap();
    counted(&mut probe, 20, "the calls held back, sent by flush");
    for p in pending {
        c.wait(p, soon()).expect("answered");
    }
}

/// `tally`: adds `a` to the server's count and answers the count.
const TALLY: Method<Add, Sum> = Method::new("tally");
/// `note`: adds `a` to the server's count, no answer.
const NOTE: Message<Add> = Message::new("note");

/// What the server counted (one server process per test).
static COUNT: AtomicU64 = AtomicU64::new(0);

fn server_process(t: Transport, tag: &str) -> (Peer, Endpoint) {
    server_process_on("batching_server_entry", t, tag, "")
}

#[test]
#[ignore = "entry point of the server process that the other tests spawn"]
fn batching_server_entry() {
    serve_transport_for_parent(|b, _| {
        b.workers(1)
            .wait_strategy(WaitStrategy::Blocking)
            .method(TALLY, |r: &ArchivedAdd, _: &mut CallCtx<'_>| {
                let sum = COUNT.fetch_add(r.a.to_native(), Ordering::Relaxed) + r.a.to_native();
                Ok(Sum { sum })
            })
            .message(NOTE, |r: &ArchivedAdd, _: &mut CallCtx<'_>| {
                COUNT.fetch_add(r.a.to_native(), Ordering::Relaxed);
            })
    });
}

/// `busy`: works (spins) for `a` milliseconds, then answers `a`.
const BUSY: Method<Add, Sum> = Method::new("busy");

#[test]
#[ignore = "entry point of the server process that the other tests spawn"]
fn small_ring_server_entry() {
    serve_transport_for_parent(|b, _| {
        b.workers(1)
            .layout(SegmentLayout {
                ring_capacity: 16 << 10,
                ..SegmentLayout::default()
            })
            .method(BUSY, |r: &ArchivedAdd, _: &mut CallCtx<'_>| {
                let until = Instant::now() + Duration::from_millis(r.a.to_native());
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                Ok(Sum {
                    sum: r.a.to_native(),
                })
            })
    });
}

/// A thread waiting on a shared client with a deadline gets `Timeout` at
/// its deadline while another thread, its requests held back, finds the
/// ring full and waits for room (the server busy in a long call): the
/// waiter must not wait for that sender. (It used to spin until the
/// server answered, long after its deadline.) Each wait strategy.
#[test]
fn shm_a_waiter_keeps_its_deadline_while_a_sender_waits_for_room() {
    for (i, strategy) in [
        WaitStrategy::Blocking,
        WaitStrategy::Adaptive,
        WaitStrategy::BusySpin,
    ]
    .into_iter()
    .enumerate()
    {
        let (_server, socket) = server_process_on(
            "small_ring_server_entry",
            Transport::Shm,
            &format!("room-{i}"),
            "",
        );
        let opts = ClientOptions::default()
            .strategy(strategy)
            .batch_requests(true)
            .call_timeout(LIMIT);
        let c = SharedClient::connect_with(&socket, opts).expect("connect");
        let busy = c.method(BUSY).unwrap();
        // The server works on this one for 3 s.
        let long = c.start(busy, &one(3000), &[]).unwrap();
        // Ours, published behind it: answered only after the long one.
        let ours = c.start(busy, &one(0), &[]).unwrap();
        c.flush().unwrap();
        let filler = c.clone();
        let fill = std::thread::spawn(move || {
            // Starts until the 16 KiB ring is full: the last waits for
            // room (until the long call ends), holding the sender's lock.
            (0..400)
                .map(|_| filler.start(busy, &one(0), &[]))
                .collect::<Vec<_>>()
        });
        // Until the ring is full (a request first asks for room for a
        // 4 KiB body: about 190 of these fit before it finds none) and the
        // filler waits for room, holding the sender's lock: the calls in
        // flight stop growing.
        wait_until(LIMIT, "the ring full", || {
            (c.in_flight() >= 150).then_some(())
        });
        let mut last = 0;
        wait_until(LIMIT, "the filler stopped", || {
            let now = c.in_flight();
            let stopped = now == last;
            last = now;
            stopped.then_some(())
        });
        let deadline = Instant::now() + Duration::from_millis(200);
        let r = c.wait(ours, Some(deadline));
        assert!(
            matches!(r, Err(CallError::Timeout)),
            "{strategy:?}: {:?} instead of a timeout",
            r.map(|s| s.sum.to_native())
        );
        for p in fill
            .join()
            .expect("the filling thread")
            .into_iter()
            .flatten()
        {
            c.wait(p, soon()).expect("answered after the long call");
        }
        c.wait(long, soon()).expect("the long call answered");
    }
}

fn soon() -> Option<Instant> {
    Some(Instant::now() + LIMIT)
}

fn one(a: u64) -> Add {
    Add { a, b: 0 }
}

/// The server's count, asked on another connection.
fn count(probe: &mut Client) -> u64 {
    let m = probe.method(TALLY).expect("tally");
    probe
        .call_with(m, &one(0), &[], soon())
        .expect("count")
        .sum
        .to_native()
}

/// Waits until the server has counted `n` (the calls reached it without
/// this test's client waiting for them).
fn counted(probe: &mut Client, n: u64, what: &str) {
    wait_until(LIMIT, what, || (count(probe) == n).then_some(()));
}

fn started_calls_never_stay_in_the_client_s_buffer(t: Transport) {
    no_started_call_stays_behind(t, false);
}

fn started_calls_never_stay_held_back(t: Transport) {
    no_started_call_stays_behind(t, true);
}

/// Calls started and waited for in every order, or never waited for
/// (sent by `flush`, or by the message after them), all reach the server,
/// the requests published in batches if `batch`.
fn no_started_call_stays_behind(t: Transport, batch: bool) {
    let (_server, socket) = server_process(t, if batch { "held" } else { "batching" });
    let blocking = ClientOptions::default()
        .strategy(WaitStrategy::Blocking)
        .batch_requests(batch);
    let mut c = Client::connect_with(&socket, blocking).expect("connect");
    let mut probe = Client::connect(&socket).expect("connect the probe");
    let tally = c.method(TALLY).unwrap();
    let note = c.message(NOTE).unwrap();

    // Many started, waited for newest first.
    let pending: Vec<_> = (0..300)
        .map(|_| c.start(tally, &one(1), &[]).unwrap())
        .collect();
    for p in pending.into_iter().rev() {
        c.wait(p, soon()).expect("a started call answered");
    }
    // Kept 64 in flight, waited for oldest first, as a pipelining caller.
    let mut window = std::collections::VecDeque::new();
    for _ in 0..2000 {
        if window.len() == 64 {
            c.wait(window.pop_front().unwrap(), soon())
                .expect("answered");
        }
        window.push_back(c.start(tally, &one(1), &[]).unwrap());
    }
    for p in window {
        c.wait(p, soon()).expect("answered");
    }
    // A lone call, one behind it, waited for in the reverse order.
    let first = c.start(tally, &one(1), &[]).unwrap();
    let second = c.start(tally, &one(1), &[]).unwrap();
    c.wait(second, soon()).expect("the second answered");
    c.wait(first, soon()).expect("the first answered");
    assert_eq!(count(&mut probe), 2302);

    // Started and not waited for: `flush` sends them.
    let _held: Vec<_> = (0..6)
        .map(|_| c.start(tally, &one(10), &[]).unwrap())
        .collect();
    c.flush().unwrap();
    counted(&mut probe, 2362, "the calls sent by flush");
    // A message sends what waits before it.
    let _more: Vec<_> = (0..5)
        .map(|_| c.start(tally, &one(100), &[]).unwrap())
        .collect();
    c.send(note, &one(1000), &[]).unwrap();
    counted(&mut probe, 3862, "the calls sent before a message");
}

fn calls_started_on_one_thread_are_waited_for_on_another(t: Transport) {
    waited_for_on_another_thread(t, false);
}

fn calls_held_back_on_one_thread_are_waited_for_on_another(t: Transport) {
    waited_for_on_another_thread(t, true);
}

/// Calls started on a shared client, alone or several, waited for on
/// another thread; then several started and not waited for, sent by
/// `flush` (the requests published in batches if `batch`).
fn waited_for_on_another_thread(t: Transport, batch: bool) {
    let (_server, socket) = server_process(
        t,
        if batch {
            "shared-held"
        } else {
            "shared-batching"
        },
    );
    let opts = ClientOptions::default().batch_requests(batch);
    let c = SharedClient::connect_with(&socket, opts).expect("connect");
    let mut probe = Client::connect(&socket).expect("connect the probe");
    let tally = c.method(TALLY).unwrap();
    for round in 0..50 {
        // A lone call, then several: started here, waited for there.
        let n = if round % 2 == 0 { 1 } else { 40 };
        let pending: Vec<_> = (0..n)
            .map(|_| c.start(tally, &one(1), &[]).unwrap())
            .collect();
        let waiter = c.clone();
        std::thread::spawn(move || {
            for p in pending.into_iter().rev() {
                waiter.wait(p, soon()).expect("answered on another thread");
            }
        })
        .join()
        .expect("the waiting thread");
    }
    assert_eq!(count(&mut probe), 25 * 41);
    let _held: Vec<_> = (0..9)
        .map(|_| c.start(tally, &one(10), &[]).unwrap())
        .collect();
    c.flush().unwrap();
    counted(&mut probe, 25 * 41 + 90, "the calls sent by flush");
}

/// Eight threads keep 16 calls each in flight through one shared client
/// whose requests are published in batches, each wait by `strategy`
/// (spinning, spinning then sleeping, sleeping at once: a thread must not
/// sleep while a request it waits on is held back); every answer is
/// checked against the server's running count.
fn threads_pipelining_batched_requests_get_every_answer(t: Transport) {
    for (i, strategy) in [
        WaitStrategy::BusySpin,
        WaitStrategy::Adaptive,
        WaitStrategy::Blocking,
    ]
    .into_iter()
    .enumerate()
    {
        let (_server, socket) = server_process(t, &format!("threads-held-{i}"));
        let opts = ClientOptions::default()
            .strategy(strategy)
            .batch_requests(true);
        let c = SharedClient::connect_with(&socket, opts).expect("connect");
        let tally = c.method(TALLY).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut window: std::collections::VecDeque<Pending<Sum>> =
                        std::collections::VecDeque::new();
                    let mut last = 0;
                    let mut check = |sum: u64| {
                        // The count only grows, and each call adds one.
                        assert!(sum > last, "{strategy:?}: count {sum} after {last}");
                        last = sum;
                    };
                    for _ in 0..2000 {
                        if window.len() == 16 {
                            let p = window.pop_front().unwrap();
                            check(c.wait(p, soon()).expect("answered").sum.to_native());
                        }
                        window.push_back(c.start(tally, &one(1), &[]).unwrap());
                    }
                    for p in window {
                        check(c.wait(p, soon()).expect("answered").sum.to_native());
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().expect("a pipelining thread");
        }
        let m = c.method(TALLY).unwrap();
        let total = c.call_with(m, &one(0), &[], soon()).expect("count");
        assert_eq!(total.sum.to_native(), 8 * 2000, "{strategy:?}");
    }
}
