//! Blobs on channels, between real processes: a blob is written once and
//! shared with every subscriber (the pool's census shows one slot with one
//! reference per subscriber), freed when the last one drops it; a
//! subscriber killed while it holds shared blobs has them reclaimed while
//! the others go on; a subscriber that lags gets its queued messages'
//! blobs as copies, and the dropped ones cost nothing; a late subscriber
//! gets the history's blobs.
//!
//! Every test runs on every transport (`on_every_transport!`). Over a
//! stream socket a blob is copied, not shared: the subscriber gets it in
//! its connection's own pool, and the channel's pool holds nothing for
//! it once sent. The census checks of the shared pool (one slot, one
//! reference per subscriber; a dead holder's slots reclaimed; the
//! queued copies) are shared memory's alone, and run there only; what
//! each subscriber receives is checked on every transport.

#[path = "hostile/proc.rs"]
#[allow(dead_code)]
mod proc;

mod chan;
mod common;

use std::time::Duration;

use chan::{Item, Tally, fill_blob, item, params};
use common::transport::{Transport, endpoint_from_parent, endpoint_params};
use isocall::blob::{Party, PoolConfig};
use isocall::channel::{Backpressure, Publisher};
use isocall::rpc::Endpoint;
use proc::{Ctl, Peer, Role, run_role, serial, socket_name, wait_for, watchdog};

const ROLES: &[Role] = &[("subscriber", subscriber_role)];

on_every_transport!(
    a_blob_is_written_once_shared_with_every_subscriber_and_freed_by_the_last,
    a_subscriber_killed_holding_shared_blobs_is_reclaimed_and_the_others_get_everything,
    a_lagging_subscriber_gets_queued_blobs_as_copies_and_dropped_ones_cost_nothing,
    a_late_subscriber_gets_the_historys_blobs,
);

/// Role: a subscriber connecting where the parent says.
fn subscriber_role(arg: &str, ctl: &mut Ctl) {
    chan::subscriber_at(arg, ctl, endpoint_from_parent(arg));
}

#[test]
#[ignore = "the entry point of the peers, run by the tests themselves"]
fn role() {
    run_role(ROLES);
}

/// Starts a subscriber process of transport `tp` connecting to `at`;
/// returns it and its id.
fn subscriber(tp: Transport, at: &Endpoint, args: &str) -> (Peer, u32) {
    let mut p = Peer::spawn("subscriber", &format!("{} {args}", endpoint_params(tp, at)));
    let line = p.line(Duration::from_secs(20));
    let id = params(&line)
        .get("id")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("subscriber: {line}"));
    (p, id)
}

fn tally(p: &mut Peer, limit: Duration) -> Tally {
    let t = Tally::parse(&p.expect("done", limit));
    p.wait_ok(Duration::from_secs(20));
    t
}

/// Sends message `i` with its blob (64 bytes per byte of its data).
fn send_with_blob(publisher: &mut Publisher<Item>, i: u64) {
    let msg = item(i);
    let mut loan = publisher
        .loan_blob(msg.data.len() * 64)
        .unwrap_or_else(|e| panic!("loan for {i}: {e}"));
    fill_blob(i, &mut loan);
    loan.send(&msg).unwrap_or_else(|e| panic!("send {i}: {e}"));
}

fn pool_classes() -> PoolConfig {
    PoolConfig::new().class(4096, 64)
}

fn a_blob_is_written_once_shared_with_every_subscriber_and_freed_by_the_last(tp: Transport) {
    let _serial = serial();
    let _dog = watchdog("blob-fanout", Duration::from_secs(120));
    let socket = socket_name("chan-blob-fanout");
    let mut publisher = tp
        .publisher::<Item>(socket.clone())
        .blobs(pool_classes())
        .create()
        .expect("publisher");
    let at = tp.channel_at(&publisher);
    let n = 32;
    let mut subs: Vec<(Peer, u32)> = (0..4)
        .map(|_| subscriber(tp, &at, &format!("want={n} hold=1 idle_ms=20000")))
        .collect();
    assert_eq!(
        publisher.wait_for_subscribers(4, Duration::from_secs(10)),
        4
    );
    send_with_blob(&mut publisher, 0);
    // One slot, shared: a reference for each subscriber, none kept. (Over
    // a stream the blob was copied to each: the pool holds nothing.)
    let st = publisher.pool().expect("a pool").stats();
    let shared = if tp.is_stream() { 0 } else { 1 };
    assert_eq!((st.used(), st.shared()), (shared, shared), "{st:?}");
    for (_, id) in &subs {
        let party = Party::new(*id as usize).expect("a party");
        assert_eq!(st.references(party), shared, "subscriber {id}: {st:?}");
    }
    assert_eq!(st.references(Party::PUBLISHER), 0, "{st:?}");
    for i in 1..n {
        send_with_blob(&mut publisher, i);
    }
    assert_eq!(
        publisher.pool().expect("a pool").stats().used(),
        shared * n as usize
    );
    for (p, _) in &mut subs {
        p.send("go");
    }
    for (mut p, _) in subs {
        let t = tally(&mut p, Duration::from_secs(30));
        assert_eq!(
            (t.got, t.blobs, t.gaps, t.bad, t.end.as_str()),
            (n, n, 0, 0, "count"),
            "{t}"
        );
    }
    wait_for(Duration::from_secs(10), "every slot free", || {
        publisher.poll();
        let st = publisher.pool().expect("a pool").stats();
        if st.used() == 0 {
            Ok(())
        } else {
            Err(format!("{st:?}"))
        }
    });
}

fn a_subscriber_killed_holding_shared_blobs_is_reclaimed_and_the_others_get_everything(
    tp: Transport,
) {
    let _serial = serial();
    let _dog = watchdog("blob-kill", Duration::from_secs(120));
    let socket = socket_name("chan-blob-kill");
    let mut publisher = tp
        .publisher::<Item>(socket.clone())
        .blobs(pool_classes())
        .backpressure_with(|s| {
            if s.label == "holder" {
                Backpressure::DropOldest { backlog: 8 }
            } else {
                Backpressure::Block
            }
        })
        .create()
        .expect("publisher");
    let at = tp.channel_at(&publisher);
    let n = 40;
    let (mut honest, _) = subscriber(tp, &at, &format!("want={n} idle_ms=20000"));
    let (mut holder, hid) = subscriber(tp, &at, "want=0 hold_blob=1 label=holder idle_ms=20000");
    assert_eq!(
        publisher.wait_for_subscribers(2, Duration::from_secs(10)),
        2
    );
    let party = Party::new(hid as usize).expect("a party");
    for i in 0..n {
        send_with_blob(&mut publisher, i);
    }
    holder.expect("holding", Duration::from_secs(20));
    let t = tally(&mut honest, Duration::from_secs(30));
    assert_eq!((t.got, t.blobs, t.gaps, t.bad), (n, n, 0, 0), "{t}");
    // The holder holds one blob and has the others' references in its
    // ring: every slot still has its reference. (Over a stream it holds
    // copies in its own pool: the channel's holds nothing of it.)
    let st = publisher.pool().expect("a pool").stats();
    let held = if tp.is_stream() { 0 } else { n as usize };
    assert_eq!((st.used(), st.holds(party)), (held, held), "{st:?}");
    holder.kill();
    wait_for(
        Duration::from_secs(10),
        "the dead holder's blobs reclaimed",
        || {
            publisher.poll();
            let st = publisher.pool().expect("a pool").stats();
            if st.used() == 0 && st.holds(party) == 0 && publisher.subscribers() == 0 {
                Ok(())
            } else {
                Err(format!("{} subscribers, {st:?}", publisher.subscribers()))
            }
        },
    );
    // The channel goes on: a new subscriber (which may get the dead one's
    // id) gets new blobs.
    let (mut next, _) = subscriber(tp, &at, "want=5 idle_ms=20000");
    assert_eq!(
        publisher.wait_for_subscribers(1, Duration::from_secs(10)),
        1
    );
    for i in n..n + 5 {
        send_with_blob(&mut publisher, i);
    }
    let t = tally(&mut next, Duration::from_secs(30));
    assert_eq!((t.got, t.blobs, t.first, t.bad), (5, 5, Some(n), 0), "{t}");
}

fn a_lagging_subscriber_gets_queued_blobs_as_copies_and_dropped_ones_cost_nothing(tp: Transport) {
    let _serial = serial();
    let _dog = watchdog("blob-lag", Duration::from_secs(120));
    let socket = socket_name("chan-blob-lag");
    let mut publisher = tp
        .publisher::<Item>(socket.clone())
        .blobs(pool_classes())
        .ring_capacity(4096)
        .backpressure(Backpressure::DropOldest { backlog: 5 })
        .create()
        .expect("publisher");
    let at = tp.channel_at(&publisher);
    let (mut lag, _) = subscriber(tp, &at, "want=0 hold=1 idle_ms=20000");
    assert_eq!(
        publisher.wait_for_subscribers(1, Duration::from_secs(10)),
        1
    );
    // Enough to fill a socket's buffers too (a loopback TCP socket's grow
    // to megabytes, and lz4 shrinks these blobs).
    let n = if tp.is_stream() { 20_000 } else { 200 };
    for i in 0..n {
        send_with_blob(&mut publisher, i);
    }
    let st = publisher.subscriber_stats();
    let dropped = st[0].dropped;
    // On shared memory the ring stays full, so the backlog stays full.
    // Over a stream the publisher's pump keeps sending the backlog into
    // the socket whenever the kernel takes more (its buffers grow on
    // their own), so it may be anywhere up to its bound by now: every
    // message is still sent, dropped or queued, once.
    if tp.is_stream() {
        assert!(dropped > 0 && st[0].queued <= 5, "{st:?}");
        assert_eq!(st[0].sent + st[0].dropped + st[0].queued, n, "{st:?}");
    } else {
        assert!(dropped > 0 && st[0].queued == 5, "{st:?}");
    }
    // In use: the ring's messages' blobs and the five queued ones (kept by
    // the publisher); nothing for the dropped ones. (Over a stream the
    // queued messages hold copies of their blobs' bytes, and the pool
    // nothing.)
    let used = publisher.pool().expect("a pool").stats().used() as u64;
    let want = if tp.is_stream() { 0 } else { n - dropped };
    assert_eq!(used, want, "{st:?}");
    lag.send("go");
    publisher.flush(Duration::from_secs(20)).expect("flush");
    drop(publisher);
    let t = tally(&mut lag, Duration::from_secs(30));
    assert_eq!(t.got + dropped, n, "{t}");
    assert_eq!((t.blobs, t.bad, t.last), (t.got, 0, Some(n - 1)), "{t}");
}

fn a_late_subscriber_gets_the_historys_blobs(tp: Transport) {
    let _serial = serial();
    let _dog = watchdog("blob-history", Duration::from_secs(60));
    let socket = socket_name("chan-blob-history");
    let mut publisher = tp
        .publisher::<Item>(socket.clone())
        .blobs(pool_classes())
        .history(4)
        .create()
        .expect("publisher");
    let at = tp.channel_at(&publisher);
    for i in 0..10 {
        send_with_blob(&mut publisher, i);
    }
    // The history keeps the last four blobs, and only them.
    let st = publisher.pool().expect("a pool").stats();
    assert_eq!(
        (st.used(), st.references(Party::PUBLISHER)),
        (4, 4),
        "{st:?}"
    );
    let (mut late, _) = subscriber(tp, &at, "want=6 history=4 idle_ms=20000");
    assert_eq!(
        publisher.wait_for_subscribers(1, Duration::from_secs(10)),
        1
    );
    for i in 10..12 {
        send_with_blob(&mut publisher, i);
    }
    let t = tally(&mut late, Duration::from_secs(30));
    assert_eq!(
        (t.got, t.first, t.last, t.history, t.blobs, t.bad),
        (6, Some(6), Some(11), 4, 6, 0),
        "{t}"
    );
}
