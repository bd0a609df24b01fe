//! The doorbell: a receiver that waits in its own event loop (poll on its
//! end of the doorbell pair) instead of in `recv` is woken by the peer's
//! publish.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use isocall_engine::WaitStrategy;
use isocall_engine::raw::sys::{Doorbell, poll_readable};
use isocall_engine::raw::{Liveness, Segment, SegmentLayout, Side, endpoint};

#[test]
fn an_armed_doorbell_rings_on_publish_and_only_then() {
    let seg =
        Arc::new(Segment::create("isocall:test:doorbell", &SegmentLayout::default()).unwrap());
    // The server's doorbell, and the end the client would receive.
    let (server_bell, client_end) = Doorbell::pair().unwrap();
    let client_bell = Doorbell::from_peer_end(client_end).unwrap();
    let (mut server_tx, _server_rx) = endpoint(
        seg.clone(),
        Side::Server,
        Arc::new(server_bell),
        WaitStrategy::Blocking,
        Liveness::new(),
    )
    .unwrap();
    let (_client_tx, mut client_rx) = endpoint(
        seg,
        Side::Client,
        Arc::new(client_bell),
        WaitStrategy::Blocking,
        Liveness::new(),
    )
    .unwrap();

    // Nothing there: arming says "go to sleep", and the bell is silent.
    assert!(!client_rx.arm_doorbell().unwrap());
    let silent = poll_readable(&[client_rx.doorbell().as_fd()], Some(Duration::ZERO)).unwrap();
    assert_eq!(silent, [false]);

    // A thread plays the peer: it publishes while we wait in poll.
    let sender = std::thread::spawn(move || {
        server_tx
            .send(1, b"ding", Some(Instant::now() + Duration::from_secs(10)))
            .unwrap();
        server_tx
    });
    let rang = poll_readable(
        &[client_rx.doorbell().as_fd()],
        Some(Duration::from_secs(10)),
    )
    .unwrap();
    assert_eq!(rang, [true], "the doorbell did not ring within 10 s");
    assert!(client_rx.doorbell().drain(), "rung, not closed");
    let frame = client_rx.try_recv().unwrap().expect("frame after the bell");
    assert_eq!(frame.payload(), b"ding");
    frame.release();
    let mut server_tx = sender.join().unwrap();

    // Arming with a frame already there says "read it" instead of sleeping.
    server_tx.send(1, b"dong", None).unwrap();
    assert!(client_rx.arm_doorbell().unwrap());
    assert_eq!(client_rx.try_recv().unwrap().unwrap().payload(), b"dong");
}
