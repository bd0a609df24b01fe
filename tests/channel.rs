//! Channels between real processes: order and completeness under each
//! backpressure policy, a subscriber killed mid-stream, the publisher
//! killed (its subscribers read what it published, then learn it died),
//! subscribers joining and leaving during a stream, history for a late
//! subscriber, and a subscriber of another type refused at connect.
//!
//! The subscribers (or the publisher) are this test binary re-executed in
//! a role; every wait has a deadline, and a watchdog bounds each test.

#[path = "hostile/proc.rs"]
#[allow(dead_code)]
mod proc;

mod chan;

use std::time::{Duration, Instant};

use chan::{Item, Other, Tally, item, params, receive};
use isocall::SocketName;
use isocall::channel::{
    Backpressure, CloseReason, Publisher, RecvError, SendError, SubscribeError, Subscriber,
};
use proc::{Ctl, Peer, Role, run_role, serial, socket_name, wait_for, watchdog};

const ROLES: &[Role] = &[
    ("subscriber", chan::subscriber),
    ("publisher", publisher_role),
];

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

/// Starts a subscriber process on `socket` with `args`, and waits until
/// it is connected.
fn subscriber(socket: &SocketName, args: &str) -> Peer {
    let mut p = Peer::spawn("subscriber", &format!("socket={} {args}", name_of(socket)));
    let line = p.line(Duration::from_secs(20));
    assert!(line.starts_with("ready"), "subscriber: {line}");
    p
}

fn tally(p: &mut Peer, limit: Duration) -> Tally {
    let t = Tally::parse(&p.expect("done", limit));
    p.wait_ok(Duration::from_secs(20));
    t
}

/// Role: a publisher of `n` messages. Says `ready`, waits for one
/// subscriber, sends them, says `sent`, then waits to be killed.
fn publisher_role(arg: &str, ctl: &mut Ctl) {
    let p = params(arg);
    let socket = SocketName::Abstract(p["socket"].clone());
    let n: u64 = p["n"].parse().expect("n=");
    let mut publisher = Publisher::<Item>::create(socket).expect("publisher");
    ctl.say("ready");
    assert_eq!(
        publisher.wait_for_subscribers(1, Duration::from_secs(20)),
        1
    );
    for i in 0..n {
        publisher.send(&item(i)).expect("send");
    }
    ctl.say("sent");
    // Until the parent kills us (or goes away).
    let _ = ctl.hear();
    drop(publisher);
}

#[test]
fn block_delivers_every_message_in_order_and_a_full_subscriber_holds_the_publisher() {
    let _serial = serial();
    let _dog = watchdog("block", Duration::from_secs(120));
    let n = if ci() { 20_000 } else { 100_000 };
    let socket = socket_name("chan-block");
    let mut publisher = Publisher::<Item>::builder(socket.clone())
        .ring_capacity(4096)
        .send_timeout(Duration::from_secs(30))
        .create()
        .expect("publisher");
    let mut sub = subscriber(&socket, &format!("want={n} hold=1 idle_ms=20000"));
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
        assert!(i < 1000, "a 4 KiB ring took {i} messages");
    }
    assert!(i > 10, "the ring took only {i} messages");
    // A send with a deadline gives up at it.
    let t0 = Instant::now();
    let e = publisher
        .send_deadline(&item(i), Instant::now() + Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(e, SendError::Timeout { .. }), "{e}");
    assert!(t0.elapsed() >= Duration::from_millis(50));
    sub.send("go");
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

#[test]
fn drop_oldest_drops_only_from_the_backlog_counts_it_and_never_waits() {
    let _serial = serial();
    let _dog = watchdog("drop-oldest", Duration::from_secs(120));
    let n = 5_000;
    let socket = socket_name("chan-drop");
    let mut publisher = Publisher::<Item>::builder(socket.clone())
        .ring_capacity(4096)
        .backpressure(Backpressure::DropOldest { backlog: 100 })
        .create()
        .expect("publisher");
    let mut sub = subscriber(&socket, "want=0 hold=1 idle_ms=20000");
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
    assert_eq!(st[0].queued, 100, "{st:?}");
    assert!(dropped > 0 && dropped < n, "{st:?}");
    sub.send("go");
    publisher
        .flush(Duration::from_secs(30))
        .expect("the backlog reaches the ring");
    assert_eq!(publisher.stats().dropped, dropped);
    drop(publisher);
    let t = tally(&mut sub, Duration::from_secs(60));
    assert_eq!(t.got + dropped, n, "{t}");
    assert_eq!(
        (t.first, t.last, t.gaps, t.bad),
        (Some(0), Some(n - 1), 1, 0),
        "{t}"
    );
    assert_eq!(t.end, format!("closed:{:?}", CloseReason::PublisherClosed));
}

#[test]
fn disconnect_closes_a_subscriber_stuck_past_its_deadline_which_reads_its_ring_then_lagging() {
    let _serial = serial();
    let _dog = watchdog("disconnect", Duration::from_secs(120));
    let socket = socket_name("chan-disconnect");
    let after = Duration::from_millis(200);
    let mut publisher = Publisher::<Item>::builder(socket.clone())
        .ring_capacity(4096)
        .backpressure(Backpressure::Disconnect {
            after,
            backlog: 100_000,
        })
        .create()
        .expect("publisher");
    let mut stuck = subscriber(&socket, "want=0 hold=1 idle_ms=20000");
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
            publisher.try_send(&item(i)).expect("a send never waits");
            i += 1;
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
    let mut next = subscriber(&socket, "want=10 idle_ms=20000");
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

#[test]
fn a_subscriber_killed_mid_stream_is_forgotten_and_the_others_get_everything() {
    let _serial = serial();
    let _dog = watchdog("killed-subscriber", Duration::from_secs(120));
    let n = if ci() { 20_000 } else { 50_000 };
    let socket = socket_name("chan-kill-sub");
    let mut publisher = Publisher::<Item>::builder(socket.clone())
        .ring_capacity(4096)
        .send_timeout(Duration::from_secs(30))
        .create()
        .expect("publisher");
    let mut honest = subscriber(&socket, &format!("want={n} idle_ms=20000"));
    let mut victim = subscriber(&socket, "want=0 hold=1 idle_ms=20000");
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

#[test]
fn subscribers_of_a_killed_publisher_read_what_it_published_then_learn_it_died() {
    let _serial = serial();
    let _dog = watchdog("killed-publisher", Duration::from_secs(60));
    let n = 5_000;
    let socket = socket_name("chan-kill-pub");
    let mut publisher = Peer::spawn("publisher", &format!("socket={} n={n}", name_of(&socket)));
    assert_eq!(publisher.line(Duration::from_secs(20)), "ready");
    let mut sub = Subscriber::<Item>::connect(&socket).expect("subscribe");
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

#[test]
fn sixteen_subscribers_join_and_leave_during_a_stream_each_seeing_it_whole() {
    let _serial = serial();
    let _dog = watchdog("join-leave", Duration::from_secs(240));
    let socket = socket_name("chan-join-leave");
    let mut publisher = Publisher::<Item>::builder(socket.clone())
        .ring_capacity(16 << 10)
        .send_timeout(Duration::from_secs(30))
        .create()
        .expect("publisher");
    let mut subs = Vec::new();
    let mut i = 0u64;
    for k in 0..16u64 {
        let want = 300 + 100 * (k % 5);
        subs.push((
            want,
            subscriber(&socket, &format!("want={want} idle_ms=30000")),
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

#[test]
fn a_late_subscriber_gets_the_history_it_asks_for_then_the_stream() {
    let _serial = serial();
    let _dog = watchdog("history", Duration::from_secs(60));
    let socket = socket_name("chan-history");
    let mut publisher = Publisher::<Item>::builder(socket.clone())
        .history(20)
        .create()
        .expect("publisher");
    for i in 0..50 {
        publisher.send(&item(i)).expect("send with no subscriber");
    }
    let mut late = subscriber(&socket, "want=15 history=10 idle_ms=20000");
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
    // Asking for more than is kept gets what is kept.
    let mut greedy = subscriber(&socket, "want=20 history=1000 idle_ms=20000");
    assert_eq!(
        publisher.wait_for_subscribers(1, Duration::from_secs(10)),
        1
    );
    let t = tally(&mut greedy, Duration::from_secs(30));
    assert_eq!(
        (t.got, t.first, t.last, t.history),
        (20, Some(35), Some(54), 20),
        "{t}"
    );
}

#[test]
fn a_subscriber_of_another_type_is_refused_at_connect_naming_both_types() {
    let _serial = serial();
    let socket = socket_name("chan-mismatch");
    let mut publisher = Publisher::<Item>::create(socket.clone()).expect("publisher");
    let e = Subscriber::<Other>::connect(&socket).unwrap_err();
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
    let mut ok = Subscriber::<Item>::connect(&socket).expect("subscribe");
    assert_eq!(
        publisher.wait_for_subscribers(1, Duration::from_secs(10)),
        1
    );
    publisher.send(&item(3)).expect("send");
    assert!(chan::is_item(&ok.recv().expect("recv"), 3));
}
