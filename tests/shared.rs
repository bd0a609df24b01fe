//! One connection shared by many threads: clones of one `SharedClient`
//! handle, calling a server in another process at once, every answer
//! checked against the thread's own operands, one call at a time and with
//! several in flight per thread; and a dropped `Pending` gives its slot
//! back. On every transport.

mod common;

use std::collections::VecDeque;

use common::calc::*;
use common::transport::{Transport, serve_transport_for_parent, server_process_on};
use common::*;
use isocall::rpc::Endpoint;
use isocall::{ClientOptions, SharedClient, WaitStrategy};

on_every_transport!(
    eight_threads_share_one_connection_and_each_gets_its_own_answers,
    a_dropped_pending_gives_its_slot_back,
    max_in_flight_is_exact_however_the_slots_come_back,
    held_replies_keep_their_bytes_and_their_slots,
    a_wait_that_times_out_gives_its_slot_back,
    a_pending_waited_on_another_client_is_given_up_on_its_own,
);

const THREADS: u64 = 8;
const CALLS: u64 = 10_000;
/// Calls each thread keeps in flight in the pipelined part.
const WINDOW: usize = 4;

/// A server in a child process on transport `t`; returns once it
/// listens, with the endpoint to dial.
fn server_process(t: Transport, tag: &str) -> (Peer, Endpoint) {
    server_process_on("shared_server_entry", t, tag, "")
}

#[test]
#[ignore = "entry point of the server process that the other tests spawn"]
fn shared_server_entry() {
    serve_transport_for_parent(|b, _| b.workers(2).method(ADD, serve_add));
}

/// The operands of call `i` of thread `t`: distinct for every thread and
/// call, so an answer delivered to the wrong caller cannot pass.
fn operands(t: u64, i: u64) -> (u64, u64) {
    (t << 40 | i, (i << 8) ^ t.wrapping_mul(0x9E37_79B9))
}

fn eight_threads_share_one_connection_and_each_gets_its_own_answers(t: Transport) {
    share_one_connection(t, ClientOptions::default(), THREADS, None);
}

/// Under `BusySpin` the leader's wait is a spin of its own (one that
/// yields); two threads wrap the ring hundreds of times through it, past
/// the padding frame that ends each lap.
#[test]
fn busy_spinning_callers_share_one_ring_lap_after_lap() {
    share_one_connection(
        Transport::Shm,
        ClientOptions::default().strategy(WaitStrategy::BusySpin),
        2,
        None,
    );
}

/// Under `BusySpin`, four callers pinned to one CPU: more busy threads
/// than cores, the case the callers' yielding spin is for (a leader
/// preempted on that CPU runs again only once the others let it). Every
/// answer checked, and every thread ends.
#[test]
fn busy_spinning_callers_pinned_to_one_cpu_take_turns() {
    let cpu = isocall::raw::sys::allowed_cpus()
        .first()
        .copied()
        .expect("a CPU to run on");
    share_one_connection(
        Transport::Shm,
        ClientOptions::default().strategy(WaitStrategy::BusySpin),
        4,
        Some(cpu),
    );
}

/// A lone caller makes a run of calls, leading every one; then a second
/// thread waits for a call the first one started, alone or while the
/// first goes on calling: the receiver passes to the second, mid-call or
/// between calls, round after round. Every answer checked.
#[test]
fn a_second_thread_takes_the_receiver_from_a_lone_caller() {
    let (_server, socket) = server_process(Transport::Shm, "shared-handoff");
    let client = SharedClient::connect(&socket).expect("connect");
    let add = client.method(ADD).expect("add");
    let call = |t: u64, i: u64| {
        let (a, b) = operands(t, i);
        let sum = client
            .call(add, &Add { a, b })
            .expect("call")
            .sum
            .to_native();
        assert_eq!(sum, a + b, "thread {t} call {i}");
    };
    for round in 0..12u64 {
        // Alone, a run of calls.
        for i in 0..1_000 {
            call(0, i);
        }
        let (a, b) = operands(1, round);
        let handed = client.start(add, &Add { a, b }, &[]).expect("start");
        std::thread::scope(|s| {
            let c = client.clone();
            s.spawn(move || {
                let got = c.wait(handed, None).expect("wait").sum.to_native();
                assert_eq!(got, a + b, "round {round}, handed over");
            });
            // Every other round the first thread calls on meanwhile (and
            // may lead for the second); else the second must lead.
            if round % 2 == 0 {
                for i in 0..100 {
                    call(2, round * 100 + i);
                }
            }
        });
    }
    assert_eq!(client.in_flight(), 0);
}

/// `threads` threads call through one connection on transport `t`, one
/// call at a time and then several in flight each, every answer checked;
/// each thread pinned to CPU `pin`, if given.
fn share_one_connection(t: Transport, options: ClientOptions, threads: u64, pin: Option<usize>) {
    let (_server, socket) = server_process(t, "shared");
    let client = SharedClient::connect_with(&socket, options).expect("connect");
    let add = client.method(ADD).expect("add");
    let threads: Vec<_> = (0..threads)
        .map(|t| {
            let c = client.clone();
            std::thread::Builder::new()
                .name(format!("caller-{t}"))
                .spawn(move || {
                    if let Some(cpu) = pin {
                        isocall::raw::sys::pin_current_thread(cpu).expect("pin to one CPU");
                    }
                    // One call at a time.
                    for i in 0..CALLS {
                        let (a, b) = operands(t, i);
                        let sum = c
                            .call(add, &Add { a, b })
                            .unwrap_or_else(|e| panic!("thread {t} call {i}: {e}"))
                            .sum
                            .to_native();
                        assert_eq!(sum, a + b, "thread {t} call {i}");
                    }
                    // Several in flight, waited for now the oldest, now the
                    // newest.
                    let mut window = VecDeque::new();
                    for i in CALLS..2 * CALLS {
                        let (a, b) = operands(t, i);
                        let p = c.start(add, &Add { a, b }, &[]).expect("start");
                        window.push_back((a + b, p));
                        if window.len() == WINDOW {
                            let (want, p) = if i % 2 == 0 {
                                window.pop_front()
                            } else {
                                window.pop_back()
                            }
                            .expect("a call in flight");
                            let got = c.wait(p, None).expect("wait").sum.to_native();
                            assert_eq!(got, want, "thread {t}, pipelined");
                        }
                    }
                    for (want, p) in window {
                        assert_eq!(c.wait(p, None).expect("wait").sum.to_native(), want);
                    }
                })
                .expect("spawn a caller")
        })
        .collect();
    for t in threads {
        t.join().expect("a caller thread");
    }
    assert_eq!(client.in_flight(), 0, "every call was waited for");
    assert!(client.is_alive());
}

fn a_dropped_pending_gives_its_slot_back(t: Transport) {
    let (_server, socket) = server_process(t, "shared-dropped");
    let client = SharedClient::connect(&socket).expect("connect");
    let add = client.method(ADD).expect("add");
    for round in 0..10u64 {
        let pending: Vec<_> = (0..100u64)
            .map(|i| client.start(add, &Add { a: i, b: round }, &[]).unwrap())
            .collect();
        assert_eq!(client.in_flight(), 100);
        drop(pending);
        // The next call gives the dropped ones up; their late replies are
        // discarded, not delivered to this call, which reuses their slots.
        assert_eq!(
            client
                .call(add, &Add { a: round, b: 1 })
                .unwrap()
                .sum
                .to_native(),
            round + 1
        );
        assert_eq!(client.in_flight(), 0, "round {round}");
    }
}

/// A leader whose wait ends before its reply came (a deadline already
/// past) gives its call's slot back: with `LIMIT` slots, hundreds of such
/// calls leave every slot free, and the replies that come late are
/// discarded, never handed to the calls that reuse the slots.
fn a_wait_that_times_out_gives_its_slot_back(t: Transport) {
    const LIMIT: usize = 4;
    let (_server, client) = limited_client(t, "shared-timeout", LIMIT);
    let add = client.method(ADD).expect("add");
    let mut timeouts = 0;
    for i in 0..400u64 {
        let p = client.start(add, &Add { a: i, b: 1 }, &[]).expect("start");
        match client.wait(p, Some(std::time::Instant::now())) {
            Ok(r) => assert_eq!(r.sum.to_native(), i + 1, "call {i}"),
            Err(isocall::CallError::Timeout) => timeouts += 1,
            Err(e) => panic!("call {i}: {e:?}"),
        }
        assert_eq!(client.in_flight(), 0, "call {i}");
    }
    assert!(timeouts > 0, "no wait timed out");
    // Every slot is free, and every answer is the right one.
    let pending: Vec<_> = (0..LIMIT as u64)
        .map(|i| {
            client
                .start(add, &Add { a: i, b: 100 }, &[])
                .expect("start")
        })
        .collect();
    for (i, p) in pending.into_iter().enumerate() {
        let r = client.wait(p, None).expect("wait");
        assert_eq!(r.sum.to_native(), i as u64 + 100);
    }
}

/// A pending call waited on a client it was not started on is refused
/// (`ForeignMethod`) and given up on the client it was started on: its
/// slot comes back there, for a `SharedClient` and a `Client` alike.
fn a_pending_waited_on_another_client_is_given_up_on_its_own(t: Transport) {
    let (_server, socket) = server_process(t, "shared-foreign");
    let limited = ClientOptions::default().max_in_flight(2);
    let a = SharedClient::connect_with(&socket, limited.clone()).expect("connect a");
    let b = SharedClient::connect(&socket).expect("connect b");
    let add = a.method(ADD).expect("add");
    for round in 0..10u64 {
        let p = a.start(add, &Add { a: round, b: 1 }, &[]).expect("start");
        match b.wait(p, None) {
            Err(isocall::CallError::ForeignMethod { .. }) => {}
            other => panic!("round {round}: {other:?}"),
        }
        // Given up on `a`: its slot is free again for the next starts
        // (two slots; ten rounds would run out of them).
        let r = a.call(add, &Add { a: round, b: 2 }).expect("call");
        assert_eq!(r.sum.to_native(), round + 2);
        drop(r);
        assert_eq!(a.in_flight(), 0, "round {round}");
    }
    let mut c = isocall::Client::connect_with(&socket, limited).expect("connect c");
    let add_c = c.method(ADD).expect("add");
    for round in 0..10u64 {
        let p = c.start(add_c, &Add { a: round, b: 1 }, &[]).expect("start");
        match b.wait(p, None) {
            Err(isocall::CallError::ForeignMethod { .. }) => {}
            other => panic!("round {round}: {other:?}"),
        }
        let r = c.call(add_c, &Add { a: round, b: 3 }).expect("call");
        assert_eq!(r.sum.to_native(), round + 3);
        drop(r);
        assert_eq!(c.in_flight(), 0, "round {round}");
    }
}

/// A server process on transport `t` and a shared client of it that has
/// at most `limit` calls in flight.
fn limited_client(t: Transport, tag: &str, limit: usize) -> (Peer, SharedClient) {
    let (server, socket) = server_process(t, tag);
    let options = isocall::ClientOptions::default().max_in_flight(limit);
    let client = SharedClient::connect_with(&socket, options).expect("connect");
    (server, client)
}

/// The limit counts calls, not free slots: a call past `max_in_flight` is
/// refused every time, and one under it is never refused, whether the
/// slots came back one at a time (a leader's own) or by another path (a
/// dropped pending, a reply taken from a slot).
fn max_in_flight_is_exact_however_the_slots_come_back(t: Transport) {
    const LIMIT: usize = 8;
    let (_server, client) = limited_client(t, "shared-limit", LIMIT);
    let add = client.method(ADD).expect("add");
    let start = |i: u64| client.start(add, &Add { a: i, b: 1 }, &[]);
    let mut window: VecDeque<_> = (0..LIMIT as u64)
        .map(|i| (start(i).expect("under the limit"), i))
        .collect();
    for i in LIMIT as u64..2_000 {
        match start(u64::MAX) {
            Err(isocall::CallError::TooManyInFlight { limit }) => assert_eq!(limit, LIMIT),
            other => panic!("call {i}: {LIMIT} in flight, then {other:?}"),
        }
        // Every 7th call comes back by a drop (given up, freed on the
        // next start), the others by a wait.
        let (p, j) = window.pop_front().expect("window");
        if i % 7 == 0 {
            drop(p);
        } else {
            assert_eq!(client.wait(p, None).expect("wait").sum.to_native(), j + 1);
        }
        window.push_back((start(i).expect("one came back"), i));
    }
    for (p, j) in window {
        assert_eq!(client.wait(p, None).expect("wait").sum.to_native(), j + 1);
    }
    assert_eq!(client.in_flight(), 0);
}

/// A reply its caller keeps holds its bytes while other calls go through
/// the same slots (a short reply lives in its call's slot until dropped),
/// and holds that slot: with every slot held by a reply a new call is
/// refused, and a dropped reply lets the next one in.
fn held_replies_keep_their_bytes_and_their_slots(t: Transport) {
    const LIMIT: usize = 4;
    let (_server, client) = limited_client(t, "shared-held", LIMIT);
    let add = client.method(ADD).expect("add");
    let held = client.call(add, &Add { a: 7, b: 5 }).expect("call");
    for i in 0..1_000u64 {
        let (a, b) = operands(0, i);
        let r = client.call(add, &Add { a, b }).expect("call");
        assert_eq!(r.sum.to_native(), a + b, "call {i}");
        assert_eq!(held.sum.to_native(), 12, "the held reply, after call {i}");
    }
    // A reply that another thread's lead delivered, held likewise: this
    // thread started it, then another thread waited for a later call and
    // read this one's reply first.
    let x = client.start(add, &Add { a: 40, b: 2 }, &[]).expect("start");
    std::thread::scope(|s| {
        s.spawn(|| {
            let y = client.start(add, &Add { a: 1, b: 2 }, &[]).expect("start");
            assert_eq!(client.wait(y, None).expect("wait").sum.to_native(), 3);
        });
    });
    let delivered = client.wait(x, None).expect("wait");
    for i in 0..100u64 {
        let (a, b) = operands(1, i);
        let r = client.call(add, &Add { a, b }).expect("call");
        assert_eq!(r.sum.to_native(), a + b, "call {i}");
        assert_eq!(
            delivered.sum.to_native(),
            42,
            "the delivered reply, after call {i}"
        );
    }
    drop(delivered);
    let rest: Vec<_> = (1..LIMIT as u64)
        .map(|i| client.call(add, &Add { a: i, b: 0 }).expect("call"))
        .collect();
    match client.start(add, &Add { a: 0, b: 0 }, &[]) {
        Err(isocall::CallError::TooManyInFlight { limit }) => assert_eq!(limit, LIMIT),
        other => panic!("every slot held by a reply, then {other:?}"),
    }
    drop(held);
    let r = client
        .call(add, &Add { a: 1, b: 1 })
        .expect("a slot came back");
    assert_eq!(r.sum.to_native(), 2);
    drop(r);
    for (i, r) in rest.iter().enumerate() {
        assert_eq!(r.sum.to_native(), i as u64 + 1, "held reply {i}");
    }
    drop(rest);
    assert_eq!(client.in_flight(), 0);
}
