//! Channels between real processes: order and completeness under each
//! backpressure policy, a subscriber killed mid-stream, the publisher
//! killed (its subscribers read what it published, then learn it died),
//! subscribers joining and leaving during a stream, history for a late
//! subscriber, a subscriber of another type refused at connect, and a
//! subscriber that never reads slowing no one under drop-oldest.
//!
//! The subscribers (or the publisher) are this test binary re-executed in
//! a role; every wait has a deadline, and a watchdog bounds each test.
//!
//! Every test runs on every transport (`on_every_transport!`): shared
//! memory, Unix stream, TCP, TCP + TLS, TCP + lz4. Over a stream the
//! publisher listens on a stream address beside its shared-memory name,
//! and its subscribers connect there; where a socket's buffers change a
//! count (how many messages fit before a subscriber is full), the test
//! says so.

#[path = "hostile/proc.rs"]
#[allow(dead_code)]
mod proc;

mod chan;
mod common;

use std::time::{Duration, Instant};

use chan::{Item, Other, Tally, item, params, receive};
use common::transport::{Transport, endpoint_from_parent, endpoint_params};
use isocall::SocketName;
use isocall::channel::{
    Backpressure, CloseReason, RecvError, SendError, SubscribeError, Subscriber,
};
use isocall::rpc::Endpoint;
use proc::{Ctl, Peer, Role, run_role, serial, socket_name, wait_for, watchdog};

const ROLES: &[Role] = &[
    ("subscriber", subscriber_role),
    ("publisher", publisher_role),
];

on_every_transport!(
    block_delivers_every_message_in_order_and_a_full_subscriber_holds_the_publisher,
    drop_oldest_drops_only_from_the_backlog_counts_it_and_never_waits,
    disconnect_closes_a_subscriber_stuck_past_its_deadline_which_reads_its_ring_then_lagging,
    a_subscriber_killed_mid_stream_is_forgotten_and_the_others_get_everything,
    subscribers_of_a_killed_publisher_read_what_it_published_then_learn_it_died,
    sixteen_subscribers_join_and_leave_during_a_stream_each_seeing_it_whole,
    a_late_subscriber_gets_the_history_it_asks_for_then_the_stream,
    a_subscriber_of_another_type_is_refused_at_connect_naming_both_types,
    a_subscriber_that_never_reads_slows_no_one_under_drop_oldest,
);

/// Role: a subscriber connecting where the parent says (see
/// [`endpoint_params`]).
fn subscriber_role(arg: &str, ctl: &mut Ctl) {
    chan::subscriber_at(arg, ctl, endpoint_from_parent(arg));
}

#[test]
#[ignore = "the entry point of the peers, run by the tests themselves"]
fn role() {
    run_role(ROLES);
}

/// Whether the tests run on CI (streams are shorter there).
fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn name_of(s: &SocketName) -> String {
    match s {
        SocketName::Abstract(n) => n.clone(),
        other => panic!("a test channel has an abstract name, not {other}"),
    }
}

/// Starts a subscriber process of transport `t` connecting to `at` with
/// `args`, and waits until it is connected.
fn subscriber(t: Transport, at: &Endpoint, args: &str) -> Peer {
    let mut p = Peer::spawn("subscriber", &format!("{} {args}", endpoint_params(t, at)));
    let line = p.line(Duration::from_secs(20));
    assert!(line.starts_with("ready"), "subscriber: {line}");
    p
}

fn tally(p: &mut Peer, limit: Duration) -> Tally {
    let t = Tally::parse(&p.expect("done", limit));
    p.wait_ok(Duration::from_secs(20));
    t
}

/// Role: a publisher of `n` messages on `transport`. Says `ready at=AT`
/// (where to subscribe), waits for one subscriber, sends them (and waits
/// until they are handed to the socket), says `sent`, then waits to be
/// killed.
fn publisher_role(arg: &str, ctl: &mut Ctl) {
    let p = params(arg);
    let socket = SocketName::Abstract(p["socket"].clone());
    let n: u64 = p["n"].parse().expect("n=");
    let tp = Transport::named(&p["transport"]);
    let mut publisher = tp
        .publisher_in::<Item>(socket, p.get("pki").map(String::as_str))
        .create()
        .expect("publisher");
    let at = match tp {
        Transport::Shm => publisher.socket().to_string(),
        _ => publisher.addresses()[0].to_string(),
    };
    ctl.say(&format!("ready at={at}"));
    assert_eq!(
        publisher.wait_for_subscribers(1, Duration::from_secs(20)),
        1
    );
    for i in 0..n {
        publisher.send(&item(i)).expect("send");
    }
    publisher.flush(Duration::from_secs(20)).expect("flush");
    ctl.say("sent");
    // Until the parent kills us (or goes away).
    let _ = ctl.hear();
    drop(publisher);
}

fn block_delivers_every_message_in_order_and_a_full_subscriber_holds_the_publisher(tp: Transport) {
    let _serial = serial();
    let _dog = watchdog("block", Duration::from_secs(120));
    let n = if ci() { 20_000 } else { 100_000 };
    let socket = socket_name("chan-block");
    let mut publisher = tp
        .publisher::<Item>(socket.clone())
        .ring_capacity(4096)
        .send_timeout(Duration::from_secs(30))
        .create()
        .expect("publisher");
    let at = tp.channel_at(&publisher);
    let mut sub = subscriber(tp, &at, &format!("want={n} hold=1 idle_ms=20000"));
    assert_eq!(
        publisher.wait_for_subscribers(1, Duration::from_secs(10)),
        1
    );
    // It does not read: its ring fills, and a send that does not wait
    // fails, delivering nothing.
    let mut i = 0;
    loop {
        match publisher.try_send(&item(i)) {
            Ok(()) => i += 1,
            Err(SendError::Timeout { subscriber }) => {
                assert_eq!(subscriber, 1);
                break;
            }
            Err(e) => panic!("send {i}: {e}"),
        }
        // A socket's buffers (the kernel's, both ends) hold more than a
        // ring; the publisher's own buffer is the ring's capacity.
        let most = if tp.is_stream() { 2_000_000 } else { 1000 };
        assert!(i < most, "a 4 KiB ring took {i} messages");
    }
    assert!(i > 10, "the ring took only {i} messages");
    // A send with a deadline gives up at it. (A loopback TCP socket
    // grows its buffers, and may take a few more first.)
    let (e, t0) = loop {
        let t0 = Instant::now();
        match publisher.send_deadline(&item(i), Instant::now() + Duration::from_millis(50)) {
            Ok(()) if tp.is_stream() && i < 2_000_000 => i += 1,
            Ok(()) => panic!("a full subscriber took message {i}"),
            Err(e) => break (e, t0),
        }
    };
    assert!(matches!(e, SendError::Timeout { .. }), "{e}");
    assert!(t0.elapsed() >= Duration::from_millis(50));
    // A socket may have taken more than `n` (a loopback TCP socket's
    // buffers grow to megabytes): then a thousand more go after the wait.
    let n = n.max(i + 1_000);
    sub.send(&format!("go {n}"));
    for j in i..n {
        publisher.send(&item(j)).expect("send");
    }
    let t = tally(&mut sub, Duration::from_secs(60));
    assert_eq!(
        (t.got, t.first, t.last, t.gaps, t.bad, t.end.as_str()),
        (n, Some(0), Some(n - 1), 0, 0, "count"),
        "{t}"
    );
    let s = publisher.stats();
    assert_eq!((s.sent, s.dropped, s.joined), (n, 0, 1), "{s:?}");
}

fn drop_oldest_drops_only_from_the_backlog_counts_it_and_never_waits(tp: Transport) {
    let _serial = serial();
    let _dog = watchdog("drop-oldest", Duration::from_secs(120));
    // Enough to fill a socket's buffers (a loopback TCP socket's grow to
    // megabytes) before the backlog.
    let n = if tp.is_stream() { 400_000 } else { 5_000 };
    let socket = socket_name("chan-drop");
    let mut publisher = tp
        .publisher::<Item>(socket.clone())
        .ring_capacity(4096)
        .backpressure(Backpressure::DropOldest { backlog: 100 })
        .create()
        .expect("publisher");
    let at = tp.channel_at(&publisher);
    let mut sub = subscriber(tp, &at, "want=0 hold=1 idle_ms=20000");
    assert_eq!(
        publisher.wait_for_subscribers(1, Duration::from_secs(10)),
        1
    );
    // The subscriber reads nothing yet: no send waits for it.
    for i in 0..n {
        publisher.try_send(&item(i)).expect("a send never waits");
    }
    let st = publisher.subscriber_stats();
    assert_eq!(st.len(), 1);
    let dropped = st[0].dropped;
    // The backlog was full at the last drop. Over loopback TCP the socket's
    // buffers keep growing, and may take some of it after the last drop:
    // never more than the backlog, and what they took still arrives (the
    // count below).
    if tp.is_tcp() {
        assert!(st[0].queued <= 100, "{st:?}");
    } else {
        assert_eq!(st[0].queued, 100, "{st:?}");
    }
    assert!(dropped > 0 && dropped < n, "{st:?}");
    sub.send("go");
    publisher
        .flush(Duration::from_secs(30))
        .expect("the backlog reaches the ring");
    assert_eq!(publisher.stats().dropped, dropped);
    drop(publisher);
    let t = tally(&mut sub, Duration::from_secs(60));
    assert_eq!(t.got + dropped, n, "{t}");
    // One gap: the backlog's oldest dropped while the ring stayed full. A
    // loopback TCP socket may take more as its buffers grow, between
    // drops: more gaps, each still only dropped messages.
    let gaps = if tp.is_tcp() { t.gaps.min(1) } else { t.gaps };
    assert_eq!(
        (t.first, t.last, gaps, t.bad),
        (Some(0), Some(n - 1), 1, 0),
        "{t}"
    );
    assert_eq!(t.end, format!("closed:{:?}", CloseReason::PublisherClosed));
}

fn disconnect_closes_a_subscriber_stuck_past_its_deadline_which_reads_its_ring_then_lagging(
    tp: Transport,
) {
    let _serial = serial();
    let _dog = watchdog("disconnect", Duration::from_secs(120));
    let socket = socket_name("chan-disconnect");
    let after = Duration::from_millis(200);
    let mut publisher = tp
        .publisher::<Item>(socket.clone())
        .ring_capacity(4096)
        .backpressure(Backpressure::Disconnect {
            after,
            backlog: 100_000,
        })
        .create()
        .expect("publisher");
    let at = tp.channel_at(&publisher);
    let mut stuck = subscriber(tp, &at, "want=0 hold=1 idle_ms=20000");
    assert_eq!(
        publisher.wait_for_subscribers(1, Duration::from_secs(10)),
        1
    );
    let t0 = Instant::now();
    let mut i = 0;
    wait_for(
        Duration::from_secs(20),
        "the stuck subscriber is closed",
        || {
            // A socket takes thousands of messages before it is full.
            for _ in 0..if tp.is_stream() { 1000 } else { 1 } {
                publisher.try_send(&item(i)).expect("a send never waits");
                i += 1;
            }
            if publisher.subscribers() == 0 {
                Ok(())
            } else {
                Err(format!("{i} sent, {} queued", publisher.queued()))
            }
        },
    );
    assert!(t0.elapsed() >= after, "closed after {:?}", t0.elapsed());
    let s = publisher.stats();
    assert_eq!((s.disconnected, s.left, s.subscribers), (1, 1, 0), "{s:?}");
    stuck.send("go");
    let t = tally(&mut stuck, Duration::from_secs(30));
    assert_eq!(t.end, format!("closed:{:?}", CloseReason::Lagging), "{t}");
    assert!(t.got > 0 && t.got < i, "{t}");
    assert_eq!(
        (t.first, t.last, t.gaps, t.bad),
        (Some(0), Some(t.got - 1), 0, 0),
        "{t}"
    );
    // The publisher goes on: a new subscriber gets the new messages.
    let mut next = subscriber(tp, &at, "want=10 idle_ms=20000");
    assert_eq!(
        publisher.wait_for_subscribers(1, Duration::from_secs(10)),
        1
    );
    for k in 0..10 {
        publisher.send(&item(i + k)).expect("send");
    }
    let t = tally(&mut next, Duration::from_secs(30));
    assert_eq!((t.got, t.first, t.gaps, t.bad), (10, Some(i), 0, 0), "{t}");
}

fn a_subscriber_killed_mid_stream_is_forgotten_and_the_others_get_everything(tp: Transport) {
    let _serial = serial();
    let _dog = watchdog("killed-subscriber", Duration::from_secs(120));
    let n = if ci() { 20_000 } else { 50_000 };
    let socket = socket_name("chan-kill-sub");
    let mut publisher = tp
        .publisher::<Item>(socket.clone())
        .ring_capacity(4096)
        .send_timeout(Duration::from_secs(30))
        .create()
        .expect("publisher");
    let at = tp.channel_at(&publisher);
    let mut honest = subscriber(tp, &at, &format!("want={n} idle_ms=20000"));
    let mut victim = subscriber(tp, &at, "want=0 hold=1 idle_ms=20000");
    assert_eq!(
        publisher.wait_for_subscribers(2, Duration::from_secs(10)),
        2
    );
    // The victim reads nothing: its ring fills and holds the publisher.
    let mut i = 0;
    while publisher.try_send(&item(i)).is_ok() {
        i += 1;
    }
    // Killed while the publisher waits for it (or just before).
    let killer = std::thread::spawn(move || victim.kill());
    for j in i..n {
        publisher
            .send(&item(j))
            .expect("the victim's death ends the wait");
    }
    killer.join().expect("killer");
    let t = tally(&mut honest, Duration::from_secs(60));
    assert_eq!(
        (t.got, t.first, t.last, t.gaps, t.bad),
        (n, Some(0), Some(n - 1), 0, 0),
        "{t}"
    );
    wait_for(
        Duration::from_secs(10),
        "both subscribers gone",
        || match publisher.poll() {
            _ if publisher.subscribers() == 0 => Ok(()),
            _ => Err(format!("{} left", publisher.subscribers())),
        },
    );
    let s = publisher.stats();
    assert_eq!((s.joined, s.left, s.disconnected), (2, 2, 0), "{s:?}");
}

fn subscribers_of_a_killed_publisher_read_what_it_published_then_learn_it_died(tp: Transport) {
    let _serial = serial();
    let _dog = watchdog("killed-publisher", Duration::from_secs(60));
    // What the socket's buffers hold (the publisher's memory dies with
    // it): a stream's subscriber gets what was handed to the socket.
    let n = if tp.is_stream() { 100 } else { 5_000 };
    let socket = socket_name("chan-kill-pub");
    #[cfg(feature = "tls")]
    let pki = format!("pki={}", common::pki::Pki::get().dir.display());
    #[cfg(not(feature = "tls"))]
    let pki = String::new();
    let mut publisher = Peer::spawn(
        "publisher",
        &format!(
            "socket={} n={n} transport={} {pki}",
            name_of(&socket),
            tp.name()
        ),
    );
    let line = publisher.line(Duration::from_secs(20));
    let at = line
        .strip_prefix("ready at=")
        .unwrap_or_else(|| panic!("publisher: {line}"));
    let at = tp.endpoint(&Endpoint::parse(at).expect("an endpoint"));
    let mut sub = Subscriber::<Item>::connect(at).expect("subscribe");
    publisher.expect("sent", Duration::from_secs(20));
    publisher.kill();
    let t = receive(&mut sub, 0, Duration::from_secs(20));
    assert_eq!(
        (t.got, t.first, t.last, t.gaps, t.bad, t.end.as_str()),
        (n, Some(0), Some(n - 1), 0, 0, "died"),
        "{t}"
    );
    // And from then on.
    assert!(matches!(sub.try_recv(), Err(RecvError::PeerDied)));
}

fn sixteen_subscribers_join_and_leave_during_a_stream_each_seeing_it_whole(tp: Transport) {
    let _serial = serial();
    let _dog = watchdog("join-leave", Duration::from_secs(240));
    let socket = socket_name("chan-join-leave");
    let mut publisher = tp
        .publisher::<Item>(socket.clone())
        .ring_capacity(16 << 10)
        .send_timeout(Duration::from_secs(30))
        .create()
        .expect("publisher");
    let at = tp.channel_at(&publisher);
    let mut subs = Vec::new();
    let mut i = 0u64;
    for k in 0..16u64 {
        let want = 300 + 100 * (k % 5);
        subs.push((
            want,
            subscriber(tp, &at, &format!("want={want} idle_ms=30000")),
        ));
        wait_for(Duration::from_secs(10), "the subscriber adopted", || {
            publisher.poll();
            if publisher.stats().joined > k {
                Ok(())
            } else {
                Err(format!("{} joined", publisher.stats().joined))
            }
        });
        for _ in 0..150 {
            publisher.send(&item(i)).expect("send");
            i += 1;
        }
    }
    wait_for(Duration::from_secs(60), "every subscriber left", || {
        publisher.send(&item(i)).expect("send");
        i += 1;
        if publisher.subscribers() == 0 {
            Ok(())
        } else {
            Err(format!("{} still subscribed", publisher.subscribers()))
        }
    });
    for (want, mut p) in subs {
        let t = tally(&mut p, Duration::from_secs(30));
        assert_eq!(
            (t.got, t.gaps, t.bad, t.end.as_str()),
            (want, 0, 0, "count"),
            "{t}"
        );
    }
    let s = publisher.stats();
    assert_eq!((s.joined, s.left, s.subscribers), (16, 16, 0), "{s:?}");
}

fn a_late_subscriber_gets_the_history_it_asks_for_then_the_stream(tp: Transport) {
    let _serial = serial();
    let _dog = watchdog("history", Duration::from_secs(60));
    let socket = socket_name("chan-history");
    let mut publisher = tp
        .publisher::<Item>(socket.clone())
        .history(20)
        .create()
        .expect("publisher");
    let at = tp.channel_at(&publisher);
    for i in 0..50 {
        publisher.send(&item(i)).expect("send with no subscriber");
    }
    let mut late = subscriber(tp, &at, "want=15 history=10 idle_ms=20000");
    assert_eq!(
        publisher.wait_for_subscribers(1, Duration::from_secs(10)),
        1
    );
    for i in 50..55 {
        publisher.send(&item(i)).expect("send");
    }
    let t = tally(&mut late, Duration::from_secs(30));
    assert_eq!(
        (t.got, t.first, t.last, t.history, t.gaps, t.bad),
        (15, Some(40), Some(54), 10, 0, 0),
        "{t}"
    );
    // Asking for more than is kept gets what is kept. (It needs nothing
    // new: it may have read its history and left before a count of the
    // subscribers connected sees it, so its joining is what is awaited.)
    let mut greedy = subscriber(tp, &at, "want=20 history=1000 idle_ms=20000");
    wait_for(
        Duration::from_secs(10),
        "the greedy subscriber adopted",
        || {
            publisher.poll();
            match publisher.stats().joined {
                j if j >= 2 => Ok(()),
                j => Err(format!("{j} joined")),
            }
        },
    );
    let t = tally(&mut greedy, Duration::from_secs(30));
    assert_eq!(
        (t.got, t.first, t.last, t.history),
        (20, Some(35), Some(54), 20),
        "{t}"
    );
}

fn a_subscriber_of_another_type_is_refused_at_connect_naming_both_types(tp: Transport) {
    let _serial = serial();
    let socket = socket_name("chan-mismatch");
    let mut publisher = tp
        .publisher::<Item>(socket.clone())
        .create()
        .expect("publisher");
    let at = tp.channel_at(&publisher);
    let e = Subscriber::<Other>::connect(&at).unwrap_err();
    let SubscribeError::TypeMismatch(m) = &e else {
        panic!("not a type mismatch: {e}");
    };
    assert_eq!(
        (m.ours.name.as_str(), m.theirs.name.as_str()),
        ("Other", "Item")
    );
    let text = e.to_string();
    assert!(text.contains("Other") && text.contains("Item"), "{text}");
    assert_eq!(publisher.poll(), 0);
    assert_eq!((publisher.subscribers(), publisher.stats().refused), (0, 1));
    // A subscriber of the right type still connects.
    let mut ok = Subscriber::<Item>::connect(&at).expect("subscribe");
    assert_eq!(
        publisher.wait_for_subscribers(1, Duration::from_secs(10)),
        1
    );
    publisher.send(&item(3)).expect("send");
    assert!(chan::is_item(&ok.recv().expect("recv"), 3));
}

fn a_subscriber_that_never_reads_slows_no_one_under_drop_oldest(tp: Transport) {
    let _serial = serial();
    let _dog = watchdog("never-reads", Duration::from_secs(120));
    // Enough to fill the sleeper's ring, or its socket's buffers.
    let n = if tp.is_stream() { 200_000 } else { 20_000 };
    let socket = socket_name("chan-never-reads");
    let mut publisher = tp
        .publisher::<Item>(socket.clone())
        .ring_capacity(16 << 10)
        .send_timeout(Duration::from_secs(30))
        .backpressure_with(|s| {
            if s.label == "sleeper" {
                Backpressure::DropOldest { backlog: 16 }
            } else {
                Backpressure::Block
            }
        })
        .create()
        .expect("publisher");
    let at = tp.channel_at(&publisher);
    let mut reader = subscriber(tp, &at, &format!("want={n} idle_ms=20000"));
    let mut sleeper = subscriber(tp, &at, "want=0 hold=1 label=sleeper idle_ms=20000");
    assert_eq!(
        publisher.wait_for_subscribers(2, Duration::from_secs(10)),
        2
    );
    for i in 0..n {
        publisher
            .send(&item(i))
            .expect("the sleeper never makes a send wait");
    }
    let t = tally(&mut reader, Duration::from_secs(60));
    assert_eq!(
        (t.got, t.first, t.last, t.gaps, t.bad),
        (n, Some(0), Some(n - 1), 0, 0),
        "{t}"
    );
    let st = publisher.subscriber_stats();
    let sleeping = st
        .iter()
        .find(|s| s.label == "sleeper")
        .expect("the sleeper's counters");
    assert!(sleeping.dropped > 0 && sleeping.queued == 16, "{st:?}");
    sleeper.kill();
}

#[test]
fn a_publisher_listens_on_its_name_and_several_stream_addresses_at_once() {
    let _serial = serial();
    let socket = socket_name("chan-several");
    let unix = format!("unix-stream:@{}-s", name_of(&socket));
    let mut publisher = isocall::channel::Publisher::<Item>::builder(socket.clone())
        .listen(unix.as_str())
        .listen("tcp://127.0.0.1:0")
        .policy(isocall::Policy::Anyone)
        .create()
        .expect("publisher");
    let addresses = publisher.addresses().to_vec();
    assert_eq!(addresses.len(), 2);
    assert_eq!(addresses[0].to_string(), unix);
    assert!(addresses[1].is_tcp());
    let mut subs = vec![Subscriber::<Item>::connect(&socket).expect("by name")];
    for a in &addresses {
        subs.push(Subscriber::<Item>::connect(a).expect("by address"));
    }
    assert!(!subs[0].is_stream() && subs[1].is_stream() && subs[2].is_stream());
    assert_eq!(
        publisher.wait_for_subscribers(3, Duration::from_secs(10)),
        3
    );
    for i in 0..100 {
        publisher.send(&item(i)).expect("send");
    }
    for s in &mut subs {
        let t = receive(s, 100, Duration::from_secs(10));
        assert_eq!((t.got, t.gaps, t.bad, t.last), (100, 0, 0, Some(99)), "{t}");
    }
    // Stream subscribers' counters are the publisher's (in its process).
    let st = publisher.subscriber_stats();
    assert_eq!(st.len(), 3);
    assert!(st.iter().all(|s| s.sent == 100), "{st:?}");
    assert!(subs[1].stats().is_none() && subs[0].stats().is_some());
    drop(publisher);
    for s in &mut subs {
        assert!(matches!(
            s.recv_timeout(Duration::from_secs(10)),
            Err(RecvError::Closed(CloseReason::PublisherClosed))
        ));
    }
}
