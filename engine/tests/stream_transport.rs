//! The socket transport on real sockets: round trips over a socketpair,
//! TCP loopback, TCP with lz4 and TCP with TLS; blobs inline both ways;
//! pipelined frames in one send; hostile peers (garbage lengths, an
//! overlong varint, a frame over the cap, a frame cut off, a slowloris);
//! a writer facing a full socket. Every wait has a deadline; threads are
//! joined; TCP ports are picked by the kernel.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use isocall_engine::blob::BlobHandle;
use isocall_engine::raw::Side;
use isocall_engine::raw::wire::{self, CallHead, kind};
use isocall_engine::stream::codec::{self, CodecError};
use isocall_engine::stream::{
    Address, AdoptProblem, Connection, Listener, Lz4, Security, StreamConfig, StreamError,
    StreamRx, StreamTx, connect, endpoint,
};

mod stream_common;
use stream_common::*;

#[test]
fn the_halves_move_between_threads() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<StreamTx>();
    send::<StreamRx>();
    send::<Connection>();
    sync::<Listener>();
    sync::<isocall_engine::stream::LargeBlobs>();
}

#[test]
fn frames_round_trip_over_a_socketpair() {
    let ((mut ctx, mut crx), (mut stx, mut srx)) = unix_pair(&StreamConfig::default());
    send_and_check(&mut ctx, &mut srx, SIZES);
    send_and_check(&mut stx, &mut crx, SIZES);
    assert_eq!(srx.stats().frames, SIZES.len() as u64);
    // A frame dropped unreleased is handed out again.
    ctx.send(3, b"again", Some(soon())).unwrap();
    let unreleased = srx.recv(Some(soon())).unwrap();
    assert_eq!(unreleased.payload(), b"again");
    let _ = unreleased;
    let f = srx.recv(Some(soon())).unwrap();
    assert_eq!(f.payload(), b"again");
    f.release();
    assert!(srx.try_recv().unwrap().is_none());
    // Limits that do not fit together are refused.
    let (a, _b) = UnixStream::pair().unwrap();
    let bad = StreamConfig::default().max_frame(100).max_payload(200);
    assert_eq!(
        endpoint(Connection::from_unix(a).unwrap(), Side::Client, &bad)
            .err()
            .map(|e| e.to_string()),
        Some(
            StreamError::Limits {
                max_frame: 100,
                max_payload: 200
            }
            .to_string()
        )
    );
    // Bad requests are refused at once, and send nothing.
    assert!(matches!(
        ctx.try_reserve(0, 1),
        Err(StreamError::BadKind { kind: 0 })
    ));
    assert!(matches!(
        ctx.try_reserve(RAW, (1 << 20) + 1),
        Err(StreamError::TooLarge { .. })
    ));
}

#[test]
fn frames_round_trip_over_tcp_loopback_v4_and_v6() {
    let config = StreamConfig::default();
    let ((mut ctx, mut crx), (mut stx, mut srx)) =
        tcp_pair_on("tcp://127.0.0.1:0", &config, &config).unwrap();
    send_and_check(&mut ctx, &mut srx, SIZES);
    send_and_check(&mut stx, &mut crx, SIZES);
    for i in 0..200u32 {
        ctx.send(RAW2, &i.to_le_bytes(), Some(soon())).unwrap();
        let f = srx.recv(Some(soon())).unwrap();
        stx.send(RAW2, f.payload(), Some(soon())).unwrap();
        f.release();
        let f = crx.recv(Some(soon())).unwrap();
        assert_eq!(f.payload(), i.to_le_bytes());
        f.release();
    }
    // IPv6 where the machine has it.
    match tcp_pair_on("tcp://[::1]:0", &config, &config) {
        Some(((mut ctx, _), (_, mut srx))) => send_and_check(&mut ctx, &mut srx, &[10, 5000]),
        None => eprintln!("no IPv6 loopback here: skipped"),
    }
}

#[test]
fn lz4_compresses_over_tcp_and_only_when_it_pays() {
    let on = StreamConfig::default().lz4(Some(Lz4 { threshold: 512 }));
    let ((mut ctx, _crx), (_stx, mut srx)) = tcp_pair_on("tcp://127.0.0.1:0", &on, &on).unwrap();
    let text: Vec<u8> = b"a request that repeats itself. "
        .iter()
        .cycle()
        .take(64 << 10)
        .copied()
        .collect();
    ctx.send(RAW, &text, Some(soon())).unwrap();
    let wire_text = ctx.stats().wire_bytes;
    assert!(
        wire_text < (text.len() / 8) as u64,
        "{wire_text} bytes on the wire"
    );
    let random = noise(64 << 10, 99);
    ctx.send(RAW, &random, Some(soon())).unwrap();
    let wire_random = ctx.stats().wire_bytes - wire_text;
    assert!(wire_random >= random.len() as u64, "noise is sent as it is");
    for want in [&text, &random] {
        let f = srx.recv(Some(soon())).unwrap();
        assert!(f.payload() == &want[..]);
        assert_eq!(f.payload().as_ptr() as usize % 16, 0);
        f.release();
    }
    // A peer that did not negotiate lz4 refuses compressed frames.
    let off = StreamConfig::default();
    let ((mut ctx, _c), (_s, mut srx)) = tcp_pair_on("tcp://127.0.0.1:0", &on, &off).unwrap();
    ctx.send(RAW, &text, Some(soon())).unwrap();
    assert_eq!(
        srx.recv(Some(soon())).err(),
        Some(StreamError::Frame(CodecError::Lz4NotNegotiated))
    );
    // Defaults: on for TCP, off for Unix sockets.
    let (a, _b) = UnixStream::pair().unwrap();
    assert_eq!(
        StreamConfig::for_connection(&Connection::from_unix(a).unwrap()).lz4,
        None
    );
}

#[test]
fn pool_blobs_cross_inline_both_ways() {
    let config = StreamConfig::default()
        .pool(Some(pool()))
        .lz4(Some(Lz4::default()));
    let ((mut ctx, mut crx), (mut stx, mut srx)) = unix_pair(&config);
    let cpool = ctx.pool().unwrap().clone();
    let spool = srx.pool().unwrap().clone();
    // The caller fills two blobs and sends them with a request.
    let mut small = cpool.alloc(200).unwrap();
    small.copy_from_slice(&pattern(200, 1));
    let mut big = cpool.alloc(70_000).unwrap();
    big.copy_from_slice(&vec![7u8; 70_000]);
    let sent = [small.send().unwrap(), big.send().unwrap()];
    put_call(&mut ctx, kind::REQUEST, 1, &sent, b"body").unwrap();
    // Committing took them back from the pool and freed them.
    assert_eq!(cpool.stats().used(), 0);
    let (head, got, body) = get_call(&mut srx, kind::REQUEST);
    assert_eq!((head.id, head.nblobs, &body[..]), (1, 2, &b"body"[..]));
    // The handles name blobs of the receiver's own pool, in flight to it.
    assert_eq!(spool.stats().owned_by(isocall_engine::blob::Side::B), 2);
    // The handler accepts them from its own pool, as on shared memory.
    let a = spool.accept(&got[0]).unwrap();
    assert!(a[..] == pattern(200, 1)[..]);
    let mut b = spool.accept_mut(&got[1]).unwrap();
    assert!(b.iter().all(|&x| x == 7));
    drop(a);
    // It answers in place in one and allocates another.
    b[..5].copy_from_slice(b"HELLO");
    let mut c = spool.alloc(3).unwrap();
    c.copy_from_slice(b"new");
    let back = [b.send().unwrap(), c.send().unwrap()];
    put_call(&mut stx, kind::RESPONSE, 1, &back, b"").unwrap();
    assert_eq!(spool.stats().used(), 0);
    let (_, got, _) = get_call(&mut crx, kind::RESPONSE);
    let b = cpool.accept(&got[0]).unwrap();
    assert_eq!(&b[..5], b"HELLO");
    assert_eq!(b.len(), 70_000);
    assert_eq!(&cpool.accept(&got[1]).unwrap()[..], b"new");
    drop(b);
    assert_eq!(cpool.stats().used(), 0);
    assert_eq!(srx.stats().blobs, 2);
}

#[test]
fn a_blob_that_cannot_be_taken_back_fails_the_commit_and_sends_nothing() {
    let config = StreamConfig::default().pool(Some(pool()));
    let ((mut ctx, _crx), (_stx, mut srx)) = unix_pair(&config);
    let cpool = ctx.pool().unwrap().clone();
    let mut ok = cpool.alloc(10).unwrap();
    ok.copy_from_slice(b"0123456789");
    let ok = ok.send().unwrap();
    let held = cpool.alloc(10).unwrap();
    let e = put_call(&mut ctx, kind::REQUEST, 1, &[ok, held.handle()], b"").unwrap_err();
    assert!(matches!(e, StreamError::Blob { index: 1, .. }), "{e}");
    // The first blob is in flight again, as the caller left it.
    assert_eq!(&cpool.recall(&ok).unwrap()[..], b"0123456789");
    drop(held);
    // A large blob nobody shared.
    let unknown = BlobHandle {
        class: isocall_engine::rpc::LARGE_CLASS,
        slot: 5,
        generation: 0,
        len: 10,
    };
    let e = put_call(&mut ctx, kind::REQUEST, 2, &[unknown], b"").unwrap_err();
    assert_eq!(e, StreamError::LargeUnknown { id: 5 });
    // Nothing went out; the connection goes on.
    ctx.send(3, b"still here", Some(soon())).unwrap();
    let f = srx.recv(Some(soon())).unwrap();
    assert_eq!((f.kind(), f.payload()), (3, &b"still here"[..]));
    f.release();
    assert_eq!(cpool.stats().used(), 0);
}

#[test]
fn large_blobs_cross_inline_and_come_back() {
    let config = StreamConfig::default().lz4(Some(Lz4::default()));
    let ((mut ctx, mut crx), (mut stx, mut srx)) = unix_pair(&config);
    let len = 3 << 20;
    let h = ctx.large().insert(7, len).unwrap();
    ctx.large()
        .with(7, len as u32, |b| b.copy_from_slice(&pattern(len, 3)))
        .unwrap();
    put_call(&mut ctx, kind::REQUEST, 1, &[h], b"").unwrap();
    let (_, got, _) = get_call(&mut srx, kind::REQUEST);
    assert_eq!(got, [h], "a large blob keeps its handle");
    // The handler reads and writes it in place, and names it in its reply.
    srx.large()
        .with(7, h.len, |b| {
            assert!(b[..] == pattern(len, 3)[..]);
            b[..4].copy_from_slice(b"DONE");
        })
        .unwrap();
    put_call(&mut stx, kind::RESPONSE, 1, &got, b"").unwrap();
    let (_, back, _) = get_call(&mut crx, kind::RESPONSE);
    assert_eq!(back, [h]);
    ctx.large()
        .with(7, h.len, |b| {
            assert_eq!(&b[..5], &[b'D', b'O', b'N', b'E', pattern(5, 3)[4]])
        })
        .unwrap();
}

#[test]
fn many_pipelined_frames_go_out_in_one_send() {
    let ((mut ctx, _crx), (_stx, mut srx)) = unix_pair(&StreamConfig::default());
    for i in 0..64u32 {
        let mut g = ctx.reserve(10, 48, Some(soon())).unwrap();
        g.bytes_mut().fill(i as u8);
        g.commit_all().unwrap();
    }
    ctx.publish().unwrap();
    let s = ctx.stats();
    assert_eq!((s.frames, s.publishes, s.sends), (64, 1, 1), "{s:?}");
    for i in 0..64u32 {
        let f = srx.recv(Some(soon())).unwrap();
        assert!(f.payload().iter().all(|&b| b == i as u8));
        f.release();
    }
    assert!(srx.stats().reads <= 2, "{:?}", srx.stats());
}

#[test]
fn the_peer_closing_is_peer_died_after_its_frames() {
    let ((mut ctx, crx), (mut stx, mut srx)) = unix_pair(&StreamConfig::default());
    for i in 0..3u8 {
        ctx.send(RAW, &[i; 40], Some(soon())).unwrap();
    }
    drop((ctx, crx));
    for i in 0..3u8 {
        let f = srx.recv(Some(soon())).unwrap();
        assert_eq!(f.payload(), [i; 40]);
        f.release();
    }
    assert_eq!(srx.recv(Some(soon())).err(), Some(StreamError::PeerDied));
    assert_eq!(srx.try_recv().err(), Some(StreamError::PeerDied));
    // The sender finds out on its next sends.
    let deadline = soon();
    let e = loop {
        match stx.send(RAW, b"anyone?", Some(deadline)) {
            Ok(()) => assert!(Instant::now() < deadline, "the sender never noticed"),
            Err(e) => break e,
        }
    };
    assert_eq!(e, StreamError::PeerDied);
}

/// A receiver with a raw socket for a peer, which the test writes.
fn hostile(config: &StreamConfig) -> (UnixStream, StreamRx, StreamTx) {
    let (a, b) = UnixStream::pair().unwrap();
    let (tx, rx) = endpoint(Connection::from_unix(b).unwrap(), Side::Server, config).unwrap();
    (a, rx, tx)
}

/// The connection is closed: the raw peer reads its end.
fn reads_end(peer: &mut UnixStream) {
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(peer.read(&mut buf).unwrap(), 0, "the connection is closed");
}

#[test]
fn garbage_lengths_close_the_connection_with_a_typed_error() {
    let config = StreamConfig::default()
        .max_frame(1 << 20)
        .max_payload(1 << 16);
    let mut v = [0u8; 5];
    let over = codec::write_varint((1 << 20) + 1, &mut v);
    let cases: Vec<(Vec<u8>, StreamError)> = vec![
        (vec![0x00], CodecError::FrameTooShort { len: 0 }),
        (vec![0x07, 1, 2, 3], CodecError::FrameTooShort { len: 7 }),
        // Only the length is sent: it is refused before any body arrives.
        (
            v[..over].to_vec(),
            CodecError::FrameTooLarge {
                len: (1 << 20) + 1,
                limit: 1 << 20,
            },
        ),
        (
            vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
            CodecError::VarintTooLong,
        ),
        (
            vec![0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
            CodecError::VarintOverflow,
        ),
        (vec![0x80, 0x00], CodecError::VarintOverlong),
        // A header with kind 0.
        (
            vec![0x08, 0, 0, 0, 0, 0, 0, 0, 0],
            CodecError::BadKind { kind: 0 },
        ),
        // A payload over the limit, announced in the header.
        (
            vec![0x08, 0, 0, 2, 0, 1, 0, 0, 0],
            CodecError::PayloadTooLarge {
                len: 1 << 17,
                limit: 1 << 16,
            },
        ),
    ]
    .into_iter()
    .map(|(b, e)| (b, StreamError::Frame(e)))
    .collect();
    for (bytes, want) in cases {
        let (mut peer, mut rx, mut tx) = hostile(&config);
        peer.write_all(&bytes).unwrap();
        assert_eq!(rx.recv(Some(soon())).err(), Some(want.clone()), "{bytes:?}");
        // Every later call says the same, and the peer reads the end.
        assert_eq!(rx.try_recv().err(), Some(want.clone()));
        assert_eq!(tx.send(RAW, b"x", Some(soon())).err(), Some(want));
        reads_end(&mut peer);
    }
}

#[test]
fn a_frame_cut_in_the_middle_then_closed_is_truncated() {
    let config = StreamConfig::default();
    let mut enc = codec::Encoder::new(None);
    let mut frames = Vec::new();
    enc.encode(&mut frames, RAW, 0, b"whole", &[], 1 << 20)
        .unwrap();
    let whole = frames.len();
    enc.encode(&mut frames, RAW, 0, &[9u8; 300], &[], 1 << 20)
        .unwrap();
    let total = frames.len() - whole;
    let (mut peer, mut rx, _tx) = hostile(&config);
    peer.write_all(&frames[..whole + 100]).unwrap();
    drop(peer);
    let f = rx.recv(Some(soon())).unwrap();
    assert_eq!(f.payload(), b"whole");
    f.release();
    assert_eq!(
        rx.recv(Some(soon())).err(),
        Some(StreamError::Truncated {
            have: 100,
            need: Some(total)
        })
    );
}

#[test]
fn call_frames_whose_blobs_do_not_match_are_refused() {
    let config = StreamConfig::default().pool(Some(pool()));
    let mut enc = codec::Encoder::new(None);
    // A request whose head names a blob it does not carry: its handle
    // would name a slot of the receiver's pool.
    let mut payload = vec![0u8; wire::HEAD + wire::HANDLE];
    let head = CallHead {
        nblobs: 1,
        ..CallHead::default()
    };
    wire::write_head(&mut payload, &head, &[BlobHandle::default()]);
    let mut bytes = Vec::new();
    enc.encode(&mut bytes, kind::REQUEST, 0, &payload, &[], 1 << 20)
        .unwrap();
    let (mut peer, mut rx, _tx) = hostile(&config);
    peer.write_all(&bytes).unwrap();
    assert_eq!(
        rx.recv(Some(soon())).err(),
        Some(StreamError::BlobMismatch {
            kind: kind::REQUEST,
            handles: 1,
            inline: 0
        })
    );
    reads_end(&mut peer);
    // An inline blob on a frame that is not a call.
    let mut bytes = Vec::new();
    enc.encode(&mut bytes, kind::CANCEL, 0, &[0u8; 32], &[b"x"], 1 << 20)
        .unwrap();
    let (mut peer, mut rx, _tx) = hostile(&config);
    peer.write_all(&bytes).unwrap();
    assert!(matches!(
        rx.recv(Some(soon())),
        Err(StreamError::BlobMismatch { inline: 1, .. })
    ));
    // A blob of another length than its handle says.
    let mut payload = vec![0u8; wire::HEAD + wire::HANDLE];
    let h = BlobHandle {
        len: 5,
        ..BlobHandle::default()
    };
    wire::write_head(&mut payload, &head, &[h]);
    let mut bytes = Vec::new();
    enc.encode(&mut bytes, kind::REQUEST, 0, &payload, &[b"abc"], 1 << 20)
        .unwrap();
    let (mut peer, mut rx, _tx) = hostile(&config);
    peer.write_all(&bytes).unwrap();
    assert_eq!(
        rx.recv(Some(soon())).err(),
        Some(StreamError::BlobLength {
            index: 0,
            handle: 5,
            inline: 3
        })
    );
    // A pool blob to a receiver without a pool.
    let mut payload = vec![0u8; wire::HEAD + wire::HANDLE];
    wire::write_head(&mut payload, &head, &[BlobHandle { len: 3, ..h }]);
    let mut bytes = Vec::new();
    enc.encode(&mut bytes, kind::REQUEST, 0, &payload, &[b"abc"], 1 << 20)
        .unwrap();
    let (mut peer, mut rx, _tx) = hostile(&StreamConfig::default());
    peer.write_all(&bytes).unwrap();
    assert_eq!(rx.recv(Some(soon())).err(), Some(StreamError::NoPool));
}

#[test]
fn a_slowloris_peer_cannot_hold_recv_past_its_deadline() {
    let (mut peer, mut rx, _tx) = hostile(&StreamConfig::default());
    let (stop, stopped) = mpsc::channel::<()>();
    let mut frame = Vec::new();
    codec::Encoder::new(None)
        .encode(&mut frame, RAW, 0, &[1u8; 64], &[], 1 << 20)
        .unwrap();
    // One byte a second; the wait between bytes is the stop signal's.
    let slow = thread::spawn(move || {
        for b in frame {
            if peer.write_all(&[b]).is_err() {
                return;
            }
            if stopped.recv_timeout(Duration::from_secs(1)) != Err(mpsc::RecvTimeoutError::Timeout)
            {
                return;
            }
        }
    });
    let wait = Duration::from_millis(2500);
    let t0 = Instant::now();
    assert_eq!(rx.recv(Some(t0 + wait)).err(), Some(StreamError::Timeout));
    let took = t0.elapsed();
    stop.send(()).unwrap();
    slow.join().unwrap();
    assert!(took >= wait, "returned early: {took:?}");
    assert!(
        took < wait + Duration::from_secs(1),
        "held past its deadline: {took:?}"
    );
    assert!(rx.stats().reads >= 2, "bytes kept trickling in");
}

#[test]
fn a_writer_facing_a_full_socket_never_blocks_past_its_deadline() {
    let config = StreamConfig::default().send_buffer(256 << 10);
    let ((mut ctx, _crx), (_stx, mut srx)) = unix_pair(&config);
    let frame = 32 << 10;
    let mut sent = 0u32;
    let wait = Duration::from_millis(200);
    let slack = Duration::from_millis(300);
    loop {
        let t0 = Instant::now();
        match ctx.reserve(RAW, frame, Some(t0 + wait)) {
            Ok(mut g) => {
                g.bytes_mut().fill(sent as u8);
                g.bytes_mut()[..4].copy_from_slice(&sent.to_le_bytes());
                g.commit_all().unwrap();
                ctx.publish().unwrap();
                sent += 1;
            }
            Err(e) => {
                assert_eq!(e, StreamError::Timeout);
                let took = t0.elapsed();
                assert!(took >= wait && took < wait + slack, "waited {took:?}");
                break;
            }
        }
        assert!(
            t0.elapsed() < wait + slack,
            "a send took {:?}",
            t0.elapsed()
        );
        assert!(sent < 10_000, "the socket never filled");
    }
    assert!(ctx.unsent() > 0 && ctx.wants_write());
    assert_eq!(ctx.try_reserve(RAW, frame).err(), Some(StreamError::Full));
    // Nothing was lost: the reader gets every frame, in order, and the
    // writer's buffer drains as it reads.
    let reader = thread::spawn(move || {
        for i in 0..sent {
            let f = srx.recv(Some(soon())).unwrap();
            assert_eq!(f.payload()[..4], i.to_le_bytes());
            assert!(f.payload()[4..].iter().all(|&b| b == i as u8));
            f.release();
        }
        srx
    });
    ctx.flush(Some(soon())).unwrap();
    assert_eq!(ctx.unsent(), 0);
    let srx = reader.join().unwrap();
    assert_eq!(srx.stats().frames, u64::from(sent));
}

#[test]
fn a_receiver_waiting_sends_what_its_sender_left_buffered() {
    let ((mut ctx, mut crx), (mut stx, mut srx)) = unix_pair(&StreamConfig::default());
    let big = pattern(1 << 20, 5);
    ctx.send(RAW, &big, Some(soon())).unwrap();
    assert!(
        ctx.unsent() > 0,
        "the request did not fit the socket at once"
    );
    // The server answers once it has the whole request; only the client's
    // wait for the answer can push the rest out.
    let server = thread::spawn(move || {
        let f = srx.recv(Some(soon())).unwrap();
        assert!(f.payload() == &pattern(1 << 20, 5)[..]);
        f.release();
        stx.send(RAW2, b"got it", Some(soon())).unwrap();
        (stx, srx)
    });
    let f = crx.recv(Some(soon())).unwrap();
    assert_eq!(f.payload(), b"got it");
    f.release();
    assert_eq!(ctx.unsent(), 0);
    drop(server.join().unwrap());
}

#[test]
fn a_listener_takes_connections_on_several_addresses() {
    let dir = std::env::temp_dir().join(format!("isocall-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("listener.sock");
    let name = format!("isocall-test-stream-{}", std::process::id());
    let asked = [
        Address::parse("tcp://127.0.0.1:0").unwrap(),
        Address::Unix(path.clone()),
        Address::Abstract(name.clone()),
    ];
    // Plain TCP must be allowed explicitly.
    assert_eq!(
        Listener::bind(&asked, Security::Plain).err(),
        Some(StreamError::PlainTcpRefused {
            address: "tcp://127.0.0.1:0".into()
        })
    );
    let l = Listener::bind(&asked, Security::Anyone).unwrap();
    let bound = l.addresses();
    assert!(matches!(&bound[0], Address::Tcp { port, .. } if *port != 0));
    assert_eq!(bound[1..], asked[1..]);
    let config = StreamConfig::default();
    for (i, a) in bound.iter().enumerate() {
        let c = connect(a, soon()).unwrap();
        let incoming = l.accept(Some(soon())).unwrap();
        assert_eq!(incoming.address(), a);
        assert_eq!(incoming.peer_cred().is_some(), !a.is_tcp());
        let s = incoming.establish(soon()).unwrap();
        let (mut ctx, _) = endpoint(c, Side::Client, &config).unwrap();
        let (_, mut srx) = endpoint(s, Side::Server, &config).unwrap();
        ctx.send(RAW, &[i as u8; 10], Some(soon())).unwrap();
        let f = srx.recv(Some(soon())).unwrap();
        assert_eq!(f.payload(), [i as u8; 10]);
        f.release();
    }
    assert_eq!(
        l.accept(Some(after(Duration::from_millis(50)))).err(),
        Some(StreamError::Timeout)
    );
    drop(l);
    assert!(!path.exists(), "the socket file goes with the listener");
    // Unix sockets need no say-so.
    let l = Listener::bind(&[Address::Abstract(name)], Security::Plain).unwrap();
    drop(l);
    std::fs::remove_dir_all(&dir).unwrap();
    // Nobody listening: a typed error naming the address.
    let e = connect(&Address::Unix(dir.join("none")), soon()).unwrap_err();
    assert!(matches!(e, StreamError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("none"), "{e}");
}

/// A listening socket bound by one holder and adopted by another (a
/// supervisor's address, taken over by each instance): the adopter
/// accepts on it, learns the port picked, and leaves the Unix socket file
/// to the holder that bound it. Anything else handed over is refused,
/// naming what it is not.
#[test]
fn an_adopted_listener_accepts_and_leaves_the_socket_file_to_its_owner() {
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    let dup = |l: &Listener| -> OwnedFd { l.poll_fds()[0].try_clone_to_owned().unwrap() };
    let owner_of = |a: &Address| Listener::bind(std::slice::from_ref(a), Security::Plain).unwrap();

    let tcp = Listener::bind(
        &[Address::parse("tcp://127.0.0.1:0").unwrap()],
        Security::Anyone,
    )
    .unwrap();
    let bound = tcp.addresses()[0].clone();
    let asked = Address::parse("tcp://127.0.0.1:0").unwrap();
    let adopted = Listener::adopt(&asked, dup(&tcp), Security::Anyone).unwrap();
    assert_eq!(adopted.addresses(), vec![bound.clone()], "the port picked");
    let _c = connect(&bound, soon()).unwrap();
    adopted
        .accept(Some(soon()))
        .expect("accepted on the adopted socket");

    let path = std::env::temp_dir().join(format!("isocall-adopt-{}", std::process::id()));
    let unix = Address::parse(&format!("unix:{}", path.display())).unwrap();
    let owner = Listener::bind(std::slice::from_ref(&unix), Security::Plain).unwrap();
    drop(Listener::adopt(&unix, dup(&owner), Security::Plain).unwrap());
    assert!(path.exists(), "the adopter removed its owner's socket file");
    let _c = connect(&unix, soon()).unwrap();
    owner.accept(Some(soon())).expect("the owner still listens");
    drop(owner);
    assert!(!path.exists(), "the owner removes its file");

    let refused = |fd: OwnedFd, a: &Address, problem: AdoptProblem| {
        let e = Listener::adopt(a, fd, Security::Anyone).unwrap_err();
        assert_eq!(
            e,
            StreamError::Adopt {
                address: a.to_string(),
                problem
            }
        );
    };
    // A socket that does not listen, the wrong family both ways, not a
    // socket.
    let (a, _b) = UnixStream::pair().unwrap();
    let own = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().unwrap();
    refused(own(a.as_fd()), &unix, AdoptProblem::NotListening);
    refused(dup(&tcp), &unix, AdoptProblem::NotUnix);
    refused(dup(&owner_of(&unix)), &bound, AdoptProblem::NotTcp);
    let file = std::fs::File::open("/dev/null").unwrap();
    refused(own(file.as_fd()), &bound, AdoptProblem::NotStream);

    // One holder shutting the socket down stops it for every holder: TCP
    // stops listening, a Unix socket refuses (and says it still listens).
    let owner = Listener::bind(std::slice::from_ref(&unix), Security::Plain).unwrap();
    for l in [&tcp, &owner] {
        assert!(l.listens());
        let other = Listener::adopt(&l.addresses()[0], dup(l), Security::Anyone).unwrap();
        rustix::net::shutdown(other.poll_fds()[0], rustix::net::Shutdown::Both).unwrap();
        assert!(
            !l.listens(),
            "{:?} shut down by another holder",
            l.addresses()
        );
        refused(dup(l), &l.addresses()[0], AdoptProblem::NotListening);
    }
}
