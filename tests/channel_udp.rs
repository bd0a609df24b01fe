//! Lossy channels over UDP between real processes: a publisher process
//! streaming 10,000 messages to a subscriber over loopback, all delivered
//! in order with nothing counted lost; the same through a relay that drops
//! every tenth datagram and swaps some adjacent pairs, the subscriber's
//! lost and reordered counters equal to what the relay did; a message too
//! large for a datagram refused with the typed error; and a hostile sender
//! process (datagrams of another type, garbage, headers that lie, bodies
//! that are not the type) counted, never delivered, while an honest
//! publisher's messages all arrive.
//!
//! The publisher and the attacker are this test binary re-executed in a
//! role; the publisher sends in batches and waits for the parent between
//! them (so that no datagram is lost to a full receive buffer); every wait
//! has a deadline, and a watchdog bounds each test.

#[path = "hostile/proc.rs"]
#[allow(dead_code)]
mod proc;

mod chan;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chan::{Item, Other, is_item, item, params};
use isocall::Schema;
use isocall::channel::udp::datagram::{HEADER_LEN, Header, MAGIC};
use isocall::channel::udp::{
    DEFAULT_MAX_DATAGRAM, MAX_DATAGRAM, UdpOpenError, UdpPublisher, UdpRecvError, UdpSendError,
    UdpSubscriber, UdpSubscriberOptions,
};
use proc::{Ctl, Peer, Role, field, run_role, serial, wait_for, watchdog};

const ROLES: &[Role] = &[("publisher", publisher_role), ("hostile", hostile_role)];

#[test]
#[ignore = "the entry point of the peer processes, run by the tests themselves"]
fn role() {
    run_role(ROLES);
}

/// Messages of the stream tests.
const N: u64 = 10_000;
/// Messages the publisher sends before it waits for the parent's `go`.
const BATCH: u64 = 100;
/// A receive buffer that holds a batch many times over.
const RECV_BUFFER: usize = 4 << 20;
const LIMIT: Duration = Duration::from_secs(30);

/// Role: a lossy publisher. Its argument: `to=udp://... n=N batch=B`.
/// Sends `B` messages (`item(i)`), says `sent=I` (how many so far), waits
/// for `go`, and so on until `n`; then says `done`.
fn publisher_role(arg: &str, ctl: &mut Ctl) {
    let p = params(arg);
    let n: u64 = p["n"].parse().expect("n=");
    let batch: u64 = p["batch"].parse().expect("batch=");
    let mut publisher = UdpPublisher::<Item>::connect(&p["to"]).expect("publisher");
    let mut i = 0;
    while i < n {
        let end = (i + batch).min(n);
        while i < end {
            assert_eq!(publisher.send(&item(i)).expect("send"), i);
            i += 1;
        }
        ctl.say(&format!("sent={i}"));
        if i < n && ctl.hear() != "go" {
            return;
        }
    }
    ctl.say("done");
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

/// A datagram with a header of `Item`'s fingerprint and `body`.
fn item_datagram(seq: u64, body: &[u8], body_len: u32) -> Vec<u8> {
    let h = Header {
        fingerprint: Item::FINGERPRINT,
        seq,
        stream: 1,
        body_len,
    };
    let mut d = h.encode().to_vec();
    d.extend_from_slice(body);
    d
}

/// Role: a hostile sender. Its argument: `to=IP:PORT`. Waits for `go`,
/// then sends datagrams of another type (`Other`, through a lossy
/// publisher), random garbage, and datagrams that look like `Item`'s but
/// are not (a lying length, a wrong version, `u64::MAX` as sequence
/// number, a body that is not an `Item`); says `done foreign=F
/// malformed=M`.
fn hostile_role(arg: &str, ctl: &mut Ctl) {
    let p = params(arg);
    let to: SocketAddr = p["to"].parse().expect("to=");
    if ctl.hear() != "go" {
        return;
    }
    let mut other = UdpPublisher::<Other>::connect(&format!("udp://{to}")).expect("publisher");
    let raw = UdpSocket::bind("127.0.0.1:0").expect("a socket");
    let mut rnd = rng(u64::from(std::process::id()));
    let (mut foreign, mut malformed) = (0u64, 0u64);
    for round in 0..100u64 {
        other
            .send(&Other { seq: round as u32 })
            .expect("send Other");
        foreign += 1;
        // Garbage of 0 to 1499 bytes.
        let len = (rnd() % 1500) as usize;
        let junk: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        raw.send_to(&junk, to).expect("send garbage");
        malformed += 1;
        // Item's header, lying about the body's length.
        let body = [0u8; 24];
        raw.send_to(&item_datagram(round, &body, 25), to)
            .expect("send a lying length");
        malformed += 1;
        // Item's header over bytes that are not an Item (the data's
        // relative pointer far out of the body).
        let mut bad = [0xffu8; 24];
        bad[..8].copy_from_slice(&round.to_le_bytes());
        raw.send_to(&item_datagram(round, &bad, 24), to)
            .expect("send a bad body");
        malformed += 1;
        // A wrong version, and a sequence number no publisher sends.
        let mut v = item_datagram(round, &body, 24);
        v[4] = 2;
        raw.send_to(&v, to).expect("send a wrong version");
        raw.send_to(&item_datagram(u64::MAX, &body, 24), to)
            .expect("send u64::MAX");
        malformed += 2;
        // Just the magic.
        raw.send_to(&MAGIC, to).expect("send the magic");
        malformed += 1;
    }
    ctl.say(&format!("done foreign={foreign} malformed={malformed}"));
    let _ = ctl.hear();
}

/// A subscriber on loopback, port chosen by the kernel, with a large
/// receive buffer.
fn subscriber(label: &str) -> UdpSubscriber<Item> {
    UdpSubscriber::<Item>::bind_with(
        "udp://127.0.0.1:0",
        UdpSubscriberOptions::default()
            .recv_buffer(RECV_BUFFER)
            .label(label),
    )
    .expect("bind the subscriber")
}

#[test]
fn a_publisher_process_streams_ten_thousand_messages_in_order_with_nothing_lost() {
    let _serial = serial();
    let _dog = watchdog("udp-stream", Duration::from_secs(120));
    let mut sub = subscriber("stream");
    let to = format!("udp://{}", sub.local_addr());
    let mut publisher = Peer::spawn("publisher", &format!("to={to} n={N} batch={BATCH}"));
    let mut next = 0u64;
    while next < N {
        let sent: u64 = publisher.expect("sent=", LIMIT).parse().expect("a count");
        while next < sent {
            let got = sub
                .recv_timeout(LIMIT)
                .unwrap_or_else(|e| panic!("message {next}: {e}"));
            assert_eq!(got.seq(), next, "out of order");
            assert!(is_item(&got, next), "message {next} is not item({next})");
            assert!(!got.is_reordered());
            next += 1;
        }
        if next < N {
            publisher.send("go");
        }
    }
    publisher.expect("done", LIMIT);
    publisher.wait_ok(LIMIT);
    let st = sub.stats();
    assert_eq!(st.received, N, "{st:?}");
    assert_eq!(
        (
            st.lost,
            st.reordered,
            st.duplicates,
            st.late,
            st.malformed,
            st.foreign
        ),
        (0, 0, 0, 0, 0, 0),
        "{st:?}"
    );
    assert!(matches!(
        sub.recv_timeout(Duration::from_millis(1)),
        Err(UdpRecvError::Timeout)
    ));
    assert!(sub.try_recv().expect("try_recv").is_none());
}

/// What the relay did.
#[derive(Default)]
struct RelayCounts {
    /// Datagrams received from the publisher.
    taken: AtomicU64,
    /// Datagrams sent on to the subscriber.
    forwarded: AtomicU64,
    /// Datagrams dropped (sequence number ending in 5).
    dropped: AtomicU64,
    /// Adjacent pairs sent in swapped order.
    swapped: AtomicU64,
    /// Sequence numbers that did not arrive in order from the publisher
    /// (loopback losses before the relay: none expected).
    upstream_gaps: AtomicU64,
}

/// A relay between two sockets, in a thread: datagram `seq` is dropped if
/// `seq % 10 == 5`; otherwise, if `seq % 7 == 2` and `seq + 1` is not to be
/// dropped, it is held and sent after `seq + 1`; the rest go on as they
/// came. A datagram `STOP` from the test ends it.
fn relay(
    from: UdpSocket,
    to: SocketAddr,
    counts: Arc<RelayCounts>,
    stopped: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut held: Option<Vec<u8>> = None;
        let mut expect = 0u64;
        let forward = |d: &[u8]| {
            from.send_to(d, to).expect("forward");
            counts.forwarded.fetch_add(1, Ordering::Release);
        };
        loop {
            let n = from.recv(&mut buf).expect("relay receive");
            let d = &buf[..n];
            if d == b"STOP" {
                break;
            }
            let seq = Header::decode(d).expect("the publisher's datagram").seq;
            if seq != expect {
                counts.upstream_gaps.fetch_add(1, Ordering::Relaxed);
            }
            expect = seq + 1;
            if seq % 10 == 5 {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
            } else if let Some(first) = held.take() {
                forward(d);
                forward(&first);
                counts.swapped.fetch_add(1, Ordering::Relaxed);
            } else if seq % 7 == 2 && (seq + 1) % 10 != 5 {
                held = Some(d.to_vec());
            } else {
                forward(d);
            }
            // Last, with Release: the test reads the other counts after
            // it sees this one (Acquire).
            counts.taken.fetch_add(1, Ordering::Release);
        }
        assert!(held.is_none(), "the relay still holds a datagram");
        stopped.store(true, Ordering::Release);
    })
}

#[test]
fn through_a_relay_that_drops_and_swaps_the_counters_match_what_it_did() {
    let _serial = serial();
    let _dog = watchdog("udp-relay", Duration::from_secs(120));
    let mut sub = subscriber("relayed");
    let relay_socket = UdpSocket::bind("127.0.0.1:0").expect("the relay's socket");
    rustix::net::sockopt::set_socket_recv_buffer_size(&relay_socket, RECV_BUFFER)
        .expect("the relay's buffer");
    let relay_addr = relay_socket.local_addr().expect("relay address");
    let counts = Arc::new(RelayCounts::default());
    let stopped = Arc::new(AtomicBool::new(false));
    let thread = relay(
        relay_socket,
        sub.local_addr(),
        counts.clone(),
        stopped.clone(),
    );
    let mut publisher = Peer::spawn(
        "publisher",
        &format!("to=udp://{relay_addr} n={N} batch={BATCH}"),
    );
    let (mut delivered, mut reordered_samples, mut last_seen) = (0u64, 0u64, None::<u64>);
    let mut sent = 0u64;
    while sent < N {
        sent = publisher.expect("sent=", LIMIT).parse().expect("a count");
        // Receives until the relay took the whole batch and the
        // subscriber got everything the relay sent on.
        wait_for(LIMIT, "the batch through the relay", || {
            while let Some(got) = sub.try_recv().expect("try_recv") {
                let seq = got.seq();
                assert!(is_item(&got, seq), "message {seq} is not item({seq})");
                assert_ne!(seq % 10, 5, "a dropped message arrived");
                if got.is_reordered() {
                    reordered_samples += 1;
                    assert_eq!(seq % 7, 2, "{seq} reordered, not swapped by the relay");
                    assert_eq!(last_seen, Some(seq + 1));
                }
                last_seen = Some(seq);
                delivered += 1;
            }
            let taken = counts.taken.load(Ordering::Acquire);
            let forwarded = counts.forwarded.load(Ordering::Acquire);
            if taken == sent && delivered == forwarded {
                Ok(())
            } else {
                Err(format!(
                    "sent {sent}, relay took {taken} forwarded {forwarded}, delivered {delivered}"
                ))
            }
        });
        if sent < N {
            publisher.send("go");
        }
    }
    publisher.expect("done", LIMIT);
    publisher.wait_ok(LIMIT);
    UdpSocket::bind("127.0.0.1:0")
        .expect("a socket")
        .send_to(b"STOP", relay_addr)
        .expect("stop the relay");
    wait_for(LIMIT, "the relay to stop", || {
        if stopped.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("running".into())
        }
    });
    thread.join().expect("the relay");
    let dropped = counts.dropped.load(Ordering::Relaxed);
    let swapped = counts.swapped.load(Ordering::Relaxed);
    assert_eq!(counts.upstream_gaps.load(Ordering::Relaxed), 0);
    assert_eq!(dropped, N / 10);
    assert!(swapped > 1000, "the relay swapped only {swapped} pairs");
    let st = sub.stats();
    eprintln!("relay dropped {dropped} swapped {swapped}; subscriber {st:?}");
    assert_eq!(st.lost, dropped, "{st:?}");
    assert_eq!(st.reordered, swapped, "{st:?}");
    assert_eq!(reordered_samples, swapped);
    assert_eq!(st.received, N - dropped, "{st:?}");
    assert_eq!(delivered, N - dropped);
    assert_eq!(
        (st.duplicates, st.late, st.malformed, st.foreign),
        (0, 0, 0, 0)
    );
}

#[test]
fn a_message_too_large_for_a_datagram_is_refused_with_the_typed_error() {
    let _serial = serial();
    let mut sub = subscriber("large");
    let to = format!("udp://{}", sub.local_addr());
    let mut publisher = UdpPublisher::<Item>::connect(&to).expect("publisher");
    assert_eq!(publisher.max_datagram(), DEFAULT_MAX_DATAGRAM);
    let big = Item {
        seq: 7,
        data: vec![7; 2000],
    };
    match publisher.send(&big) {
        Err(UdpSendError::TooLarge {
            size,
            header,
            limit,
        }) => {
            assert_eq!((header, limit), (HEADER_LEN, DEFAULT_MAX_DATAGRAM));
            assert!(
                size > 2000 + HEADER_LEN && size < 2100 + HEADER_LEN,
                "{size}"
            );
            let text = publisher.send(&big).unwrap_err().to_string();
            assert!(
                text.contains(&size.to_string()) && text.contains("1472"),
                "{text}"
            );
        }
        other => panic!("a 2000-byte message over a 1472-byte limit: {other:?}"),
    }
    // A refused message took no sequence number.
    assert_eq!(publisher.sequence(), 0);
    assert_eq!(publisher.send(&item(0)).expect("a small message"), 0);
    assert_eq!(sub.recv_timeout(LIMIT).expect("it arrives").seq(), 0);
    // Larger limits, up to the most a datagram holds.
    let mut large = UdpPublisher::<Item>::builder(&to)
        .max_datagram(MAX_DATAGRAM)
        .create()
        .expect("publisher");
    let big = Item {
        seq: 9,
        data: (0..60_000).map(|i| i as u8).collect(),
    };
    large.send(&big).expect("60,000 bytes fit 65,507");
    let got = sub.recv_timeout(LIMIT).expect("the large message");
    assert_eq!(got.seq, 9);
    assert_eq!(got.data.as_slice(), big.data.as_slice());
    for bad in [MAX_DATAGRAM + 1, HEADER_LEN, 0] {
        match UdpPublisher::<Item>::builder(&to)
            .max_datagram(bad)
            .create()
        {
            Err(UdpOpenError::BadLimit { what }) => {
                assert!(what.contains(&bad.to_string()), "{what}")
            }
            other => panic!("max_datagram {bad}: {other:?}"),
        }
    }
}

#[test]
fn addresses_are_parsed_resolved_and_ipv6_works() {
    let _serial = serial();
    for bad in ["tcp://127.0.0.1:1", "udp://127.0.0.1", "udp://[::1:5"] {
        assert!(
            matches!(
                UdpSubscriber::<Item>::bind(bad),
                Err(UdpOpenError::Address(_))
            ),
            "{bad}"
        );
    }
    // A name, resolved on both sides the same way.
    let mut sub = UdpSubscriber::<Item>::bind("udp://localhost:0").expect("bind localhost");
    let port = sub.local_addr().port();
    let mut publisher =
        UdpPublisher::<Item>::connect(&format!("udp://localhost:{port}")).expect("publisher");
    publisher.send(&item(0)).expect("send");
    assert!(is_item(&sub.recv_timeout(LIMIT).expect("by name"), 0));
    match UdpSubscriber::<Item>::bind("udp://[::1]:0") {
        Ok(mut sub) => {
            let to = format!("udp://[::1]:{}", sub.local_addr().port());
            let mut publisher = UdpPublisher::<Item>::connect(&to).expect("publisher");
            publisher.send(&item(3)).expect("send");
            assert!(is_item(&sub.recv_timeout(LIMIT).expect("over IPv6"), 3));
        }
        Err(e) => eprintln!("skipped: IPv6 part: cannot bind [::1]: {e}"),
    }
}

#[test]
fn a_hostile_sender_is_counted_and_never_delivered_while_an_honest_one_gets_through() {
    let _serial = serial();
    let _dog = watchdog("udp-hostile", Duration::from_secs(120));
    let mut sub = subscriber("victim");
    let to = sub.local_addr();
    let mut attacker = Peer::spawn("hostile", &format!("to={to}"));
    let mut honest = UdpPublisher::<Item>::connect(&format!("udp://{to}")).expect("publisher");
    attacker.send("go");
    let mut next = 0u64;
    for i in 0..200 {
        honest.send(&item(i)).expect("send");
        // Reads as it goes, so that the receive buffer never fills.
        while let Some(got) = sub.try_recv().expect("try_recv") {
            assert_eq!(got.seq(), next, "an honest message out of order");
            assert!(is_item(&got, next), "message {next} is not item({next})");
            next += 1;
        }
    }
    let done = attacker.expect("done", LIMIT);
    let (foreign, malformed): (u64, u64) = (field(&done, "foreign="), field(&done, "malformed="));
    wait_for(LIMIT, "every datagram counted", || {
        while let Some(got) = sub.try_recv().expect("try_recv") {
            assert_eq!(got.seq(), next, "an honest message out of order");
            assert!(is_item(&got, next), "message {next} is not item({next})");
            next += 1;
        }
        let st = sub.stats();
        if next == 200 && st.foreign == foreign && st.malformed == malformed {
            Ok(())
        } else {
            Err(format!(
                "{next} honest messages; {st:?}; sent foreign={foreign} malformed={malformed}"
            ))
        }
    });
    attacker.send("bye");
    attacker.wait_ok(LIMIT);
    let st = sub.stats();
    assert_eq!(
        (
            st.received,
            st.lost,
            st.reordered,
            st.duplicates,
            st.late,
            st.restarts
        ),
        (200, 0, 0, 0, 0, 0),
        "{st:?}"
    );
    assert!(matches!(
        sub.recv_timeout(Duration::from_millis(1)),
        Err(UdpRecvError::Timeout)
    ));
}
