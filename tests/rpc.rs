//! Connections and calls between real processes: handshakes and every way
//! they can fail, typed calls, pipelining, one-way messages, blobs, a
//! panicking handler, garbage from one client while others keep working,
//! 64 clients at once, a server killed with calls pending, a client killed
//! holding blobs. (The leak check has its own binary: tests/rpc_leaks.rs.)

mod common;

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::calc::*;
use common::*;
use isocall::engine::WaitStrategy;
use isocall::engine::rpc::wire::{self, ClientHello, HELLO_MAGIC};
use isocall::engine::rpc::{
    CallCtx, CallError, Client, ClientOptions, ConnectError, MethodId, Policy, ServerBuilder,
    SocketName,
};
use isocall::engine::sys::{connect_seqpacket, recv_message, send_with_fds};

const LIMIT: Duration = Duration::from_secs(30);

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Text {
    text: String,
}

/// The methods every test server offers.
fn builder(socket: SocketName) -> ServerBuilder {
    ServerBuilder::new(socket)
        .method::<Add, Sum, _>("add", |r: &ArchivedAdd, _: &mut CallCtx<'_>| {
            Ok(Sum {
                sum: r.a.to_native().wrapping_add(r.b.to_native()),
            })
        })
        .method::<Text, Text, _>("upper", |r: &ArchivedText, _: &mut CallCtx<'_>| {
            Ok(Text {
                text: r.text.as_str().to_uppercase(),
            })
        })
        .method::<Text, Text, _>("fail", |r: &ArchivedText, _: &mut CallCtx<'_>| {
            Err(format!("refusing {}", r.text.as_str()))
        })
        .method::<Text, Text, _>("panic", |_: &ArchivedText, _: &mut CallCtx<'_>| {
            panic!("handler exploded on purpose")
        })
        .method::<Text, Sum, _>("fill", |r: &ArchivedText, ctx: &mut CallCtx<'_>| {
            // Writes the text into the caller's blob, repeated.
            let mut blob = ctx.accept_mut(0).map_err(|e| e.to_string())?;
            let t = r.text.as_bytes();
            for (i, b) in blob.iter_mut().enumerate() {
                *b = t[i % t.len()];
            }
            let n = blob.len() as u64;
            ctx.reply_blob(blob).map_err(|e| e.to_string())?;
            Ok(Sum { sum: n })
        })
        .method::<Text, Sum, _>("stall", |_: &ArchivedText, _: &mut CallCtx<'_>| {
            // Never answers (the test kills the server).
            loop {
                std::thread::park();
            }
        })
        .method::<Text, Sum, _>("large_sum", |_: &ArchivedText, ctx: &mut CallCtx<'_>| {
            // Reads every byte of the large blob and answers in place.
            let bytes = ctx.large(0).map_err(|e| e.to_string())?;
            let mut sum = 0u64;
            for b in bytes.iter_mut() {
                sum += u64::from(*b);
                *b = b.wrapping_add(1);
            }
            ctx.reply_large(0).map_err(|e| e.to_string())?;
            Ok(Sum { sum })
        })
        .message::<Add, _>("note", |_: &ArchivedAdd, _: &mut CallCtx<'_>| {})
}

/// A server in a child process on `socket`; returns once it listens.
fn server_process(socket: &SocketName, strategy: &str) -> Peer {
    let SocketName::Abstract(name) = socket else {
        unreachable!()
    };
    let mut peer = Peer::spawn("rpc_server_entry", "server");
    peer.send(&format!("socket={name} strategy={strategy}"), &[]);
    assert_eq!(peer.read_line(LIMIT), "ready");
    peer
}

#[test]
#[ignore = "entry point of the server process that the other tests spawn"]
fn rpc_server_entry() {
    if std::env::var(ROLE_ENV).is_err() {
        return;
    }
    let (msg, _, mut sock) = receive_from_parent();
    let socket = SocketName::Abstract(param(&msg, "socket").to_string());
    let strategy = match param(&msg, "strategy") {
        "busy" => WaitStrategy::BusySpin,
        "blocking" => WaitStrategy::Blocking,
        _ => WaitStrategy::Adaptive,
    };
    let server = builder(socket)
        .wait_strategy(strategy)
        .workers(2)
        .spawn()
        .expect("server");
    use std::io::{Read, Write};
    writeln!(sock, "ready").unwrap();
    // Serve until the parent closes the socket (or kills us).
    let _ = sock.read(&mut [0u8; 1]);
    drop(server);
}

#[test]
fn typed_calls_pipelining_messages_and_statuses() {
    let socket = unique("calls");
    let _server = server_process(&socket, "adaptive");
    let mut c = Client::connect(&socket).expect("connect");
    assert_eq!(add(&mut c, 2, 40).unwrap(), 42);
    let upper = c.method("upper").unwrap();
    let s = c
        .call::<Text, Text, _>(
            upper,
            &Text {
                text: "in place".into(),
            },
            |r| r.text.as_str().to_string(),
        )
        .unwrap();
    assert_eq!(s, "IN PLACE");
    // Pipelined: 200 calls in flight, answered out of the wait order.
    let m = c.method("add").unwrap();
    let pending: Vec<_> = (0..200u64)
        .map(|i| c.start(m, &Add { a: i, b: 1000 }, &[]).unwrap())
        .collect();
    assert_eq!(c.in_flight(), 200);
    for (i, p) in pending.into_iter().enumerate().rev() {
        let sum = c.wait::<Sum, _>(p, None, |r, _| r.sum.to_native()).unwrap();
        assert_eq!(sum, i as u64 + 1000);
    }
    assert_eq!(c.in_flight(), 0);
    let all: Vec<_> = (0..10u64)
        .map(|i| c.start(m, &Add { a: i, b: i }, &[]).unwrap())
        .collect();
    let sums = c.wait_all::<Sum, _>(all, None, |r, _| r.sum.to_native());
    assert_eq!(
        sums.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        (0..10).map(|i| 2 * i).collect::<Vec<_>>()
    );
    // One-way messages, then a call proves they were consumed in order.
    let note = c.method("note").unwrap();
    for i in 0..1000 {
        c.send_message(note, &Add { a: i, b: i }, &[]).unwrap();
    }
    assert_eq!(add(&mut c, 1, 1).unwrap(), 2);
    // Statuses.
    let fail = c.method("fail").unwrap();
    let e = c
        .call::<Text, Text, _>(fail, &Text { text: "x".into() }, |_| ())
        .unwrap_err();
    assert!(matches!(&e, CallError::App(m) if m == "refusing x"), "{e}");
    let boom = c.method("panic").unwrap();
    let e = c
        .call::<Text, Text, _>(boom, &Text { text: "x".into() }, |_| ())
        .unwrap_err();
    assert!(
        matches!(&e, CallError::HandlerPanicked(m) if m.contains("exploded")),
        "{e}"
    );
    assert_eq!(
        add(&mut c, 5, 5).unwrap(),
        10,
        "the server serves on after a panic"
    );
    let e = c
        .call::<Add, Sum, _>(MethodId::from_raw(999), &Add { a: 1, b: 1 }, |_| ())
        .unwrap_err();
    assert!(matches!(e, CallError::UnknownMethod(999)), "{e}");
    assert!(matches!(c.method("nope"), Err(CallError::NoSuchMethod(_))));
    // A body that is not the method's request type fails validation.
    let e = c
        .call::<Text, Sum, _>(
            m,
            &Text {
                text: "not an Add".into(),
            },
            |_| (),
        )
        .unwrap_err();
    assert!(matches!(e, CallError::BadRequest(_)), "{e}");
    // Larger than the frame limit: refused before sending.
    let big = Text {
        text: "x".repeat(100 << 10),
    };
    let e = c.call::<Text, Text, _>(upper, &big, |_| ()).unwrap_err();
    assert!(matches!(e, CallError::TooLarge(_)), "{e}");
    assert_eq!(add(&mut c, 1, 2).unwrap(), 3);
}

#[test]
fn blobs_travel_in_and_out_of_calls() {
    let socket = unique("blobs");
    let _server = server_process(&socket, "busy");
    let mut c = Client::connect(&socket).expect("connect");
    let pool = c.pool().expect("pool").clone();
    let fill = c.method("fill").unwrap();
    for len in [1usize, 255, 4096, 100_000, 1 << 20] {
        let blob = pool.alloc(len).unwrap();
        let h = blob.send().unwrap();
        let (n, back) = c
            .call_with::<Text, Sum, _>(fill, &Text { text: "abc".into() }, &[h], None, |r, b| {
                (r.sum.to_native(), b.to_vec())
            })
            .unwrap();
        assert_eq!(n, len as u64);
        assert_eq!(back.len(), 1);
        let got = pool.accept(&back[0]).unwrap();
        assert_eq!(got.len(), len);
        assert!(got.iter().enumerate().all(|(i, &b)| b == b"abc"[i % 3]));
    }
    assert_eq!(pool.stats().used(), 0, "every blob came back and was freed");
    // A request whose blob handle is forged: the handler's accept fails,
    // the call reports it, the connection lives.
    let forged = isocall::blob::BlobHandle {
        class: 0,
        slot: 0,
        generation: 77,
        len: 1,
    };
    let e = c
        .call_with::<Text, Sum, _>(fill, &Text { text: "a".into() }, &[forged], None, |_, _| ())
        .unwrap_err();
    assert!(
        matches!(&e, CallError::App(m) if m.contains("stale")),
        "{e}"
    );
    assert_eq!(add(&mut c, 1, 1).unwrap(), 2);
}

#[test]
fn refused_by_policy_with_the_reason() {
    let socket = unique("policy");
    let _server = builder(socket.clone())
        .policy(Policy::Allow {
            uids: vec![4_000_000_000],
            gids: vec![],
        })
        .spawn()
        .unwrap();
    let e = Client::connect(&socket).unwrap_err();
    assert!(
        matches!(&e, ConnectError::Refused(r) if r.contains("allow-lists")),
        "{e}"
    );
    let custom = unique("custom");
    let server = builder(custom.clone())
        .policy(Policy::Custom(Arc::new(|p| {
            Err(format!("pid {} is not welcome", p.pid))
        })))
        .spawn()
        .unwrap();
    let e = Client::connect(&custom).unwrap_err();
    assert!(e.to_string().contains("is not welcome"), "{e}");
    wait_until(LIMIT, "refusals counted", || {
        (server.stats().refused == 1).then_some(())
    });
}

#[test]
fn version_mismatch_is_named_on_both_sides() {
    let socket = unique("version");
    let server = builder(socket.clone()).spawn().unwrap();
    let sock = connect_seqpacket(&socket).unwrap();
    let hello = ClientHello {
        magic: HELLO_MAGIC,
        version: 99,
        _reserved: 0,
    };
    send_with_fds(sock.as_fd(), bytemuck::bytes_of(&hello), &[]).unwrap();
    let mut buf = [0u8; 512];
    let (n, fds) = recv_message(sock.as_fd(), &mut buf, 3, Instant::now() + LIMIT).unwrap();
    assert!(fds.is_empty());
    assert_eq!(buf[0], wire::REFUSED);
    let reason = String::from_utf8_lossy(&buf[1..n]).to_string();
    assert!(
        reason.contains("protocol version mismatch") && reason.contains("client 99"),
        "{reason}"
    );
    wait_until(LIMIT, "the refusal counted", || {
        (server.stats().refused == 1).then_some(())
    });
}

#[test]
fn handshakes_that_never_finish_time_out() {
    // A client that connects and says nothing: the server gives up.
    let socket = unique("silent-client");
    let server = builder(socket.clone())
        .handshake_timeout(Duration::from_millis(200))
        .spawn()
        .unwrap();
    let silent = connect_seqpacket(&socket).unwrap();
    wait_until(LIMIT, "the server's handshake deadline", || {
        (server.stats().failed == 1).then_some(())
    });
    drop(silent);
    // A "server" that accepts and never answers: the client gives up.
    let mute = unique("mute-server");
    let listener = isocall::engine::sys::listen_seqpacket(&mute).unwrap();
    let opts = ClientOptions {
        handshake_timeout: Duration::from_millis(200),
        ..ClientOptions::default()
    };
    let e = Client::connect_with(&mute, opts).unwrap_err();
    assert!(matches!(e, ConnectError::Timeout(_)), "{e}");
    drop(listener);
    // A server that answers a hello without the descriptors.
    let liar = unique("liar");
    let listener = isocall::engine::sys::listen_seqpacket(&liar).unwrap();
    let t = std::thread::spawn(move || {
        let s = isocall::engine::sys::accept_seqpacket(listener.as_fd()).unwrap();
        let mut buf = [0u8; 64];
        recv_message(s.as_fd(), &mut buf, 0, Instant::now() + LIMIT).unwrap();
        let hello = wire::ServerHello {
            magic: HELLO_MAGIC,
            version: wire::PROTOCOL_VERSION,
            nmethods: 0,
            max_frame: 4096,
            conn: 1,
        };
        let mut m = vec![wire::HELLO];
        m.extend_from_slice(bytemuck::bytes_of(&hello));
        send_with_fds(s.as_fd(), &m, &[]).unwrap();
        let mut answer = [0u8; 256];
        let (n, _) = recv_message(s.as_fd(), &mut answer, 0, Instant::now() + LIMIT).unwrap();
        String::from_utf8_lossy(&answer[..n]).to_string()
    });
    let e = Client::connect(&liar).unwrap_err();
    assert!(
        e.to_string().contains("expected a memfd and two eventfds"),
        "{e}"
    );
    let abort = t.join().unwrap();
    assert!(
        abort.starts_with('A') && abort.contains("memfd"),
        "the client told the server: {abort}"
    );
}

#[test]
fn a_live_socket_is_not_stolen_and_a_stale_one_is_replaced() {
    let dir = std::env::temp_dir().join(format!("isocall-test-sock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = SocketName::Path(dir.join("svc"));
    let first = builder(path.clone()).spawn().unwrap();
    let e = builder(path.clone()).spawn().unwrap_err();
    assert!(
        e.to_string().contains("a live server already listens"),
        "{e}"
    );
    // A stale file: bound by a listener that is gone without unlinking.
    std::mem::forget(first); // leaves the file; its threads live on, idle
    let stale = SocketName::Path(dir.join("stale"));
    let l = isocall::engine::sys::listen_seqpacket(&stale).unwrap();
    drop(l);
    let second = builder(stale.clone())
        .spawn()
        .expect("the stale socket is replaced");
    let mut c = Client::connect(&stale).unwrap();
    assert_eq!(add(&mut c, 1, 2).unwrap(), 3);
    drop(c);
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sixty_four_clients_on_one_server() {
    let socket = unique("many");
    let _server = server_process(&socket, "adaptive");
    let threads: Vec<_> = (0..64u64)
        .map(|t| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket).expect("connect");
                for i in 0..500 {
                    assert_eq!(add(&mut c, t, i).unwrap(), t + i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

#[test]
fn a_killed_server_fails_every_pending_call_promptly() {
    let socket = unique("killed");
    let mut server = server_process(&socket, "blocking");
    let mut c = Client::connect(&socket).expect("connect");
    assert_eq!(add(&mut c, 1, 1).unwrap(), 2);
    let stall = c.method("stall").unwrap();
    let m = c.method("add").unwrap();
    // The first call stalls the worker; the rest queue behind it.
    let mut pending = vec![
        c.start(
            stall,
            &Text {
                text: String::new(),
            },
            &[],
        )
        .unwrap(),
    ];
    for i in 0..20 {
        pending.push(c.start(m, &Add { a: i, b: i }, &[]).unwrap());
    }
    server.child.kill().unwrap();
    server.wait(LIMIT);
    let started = Instant::now();
    for p in pending {
        let e = c
            .wait::<Sum, _>(p, Some(Instant::now() + LIMIT), |_, _| ())
            .unwrap_err();
        assert!(matches!(e, CallError::PeerDied), "{e}");
    }
    assert!(started.elapsed() < LIMIT);
    assert!(matches!(add(&mut c, 1, 1), Err(CallError::PeerDied)));
}

#[test]
#[ignore = "entry point of the client process that the other tests spawn"]
fn rpc_client_entry() {
    if std::env::var(ROLE_ENV).is_err() {
        return;
    }
    let (msg, _, mut sock) = receive_from_parent();
    let socket = SocketName::Abstract(param(&msg, "socket").to_string());
    let hold: usize = param(&msg, "hold").parse().unwrap();
    let mut c = Client::connect(&socket).expect("connect");
    let pool = c.pool().unwrap().clone();
    let held: Vec<_> = (0..hold)
        .map(|i| pool.alloc(100 + (i % 8) * 500).unwrap())
        .collect();
    assert_eq!(add(&mut c, 1, 2).unwrap(), 3);
    use std::io::{Read, Write};
    writeln!(sock, "holding {}", held.len()).unwrap();
    let _ = sock.read(&mut [0u8; 1]);
}

#[test]
fn a_killed_client_s_blobs_are_reclaimed() {
    let socket = unique("reclaim");
    let server = builder(socket.clone()).spawn().unwrap();
    let mut client = Peer::spawn("rpc_client_entry", "client");
    let SocketName::Abstract(name) = &socket else {
        unreachable!()
    };
    client.send(&format!("socket={name} hold=37"), &[]);
    assert_eq!(client.read_line(LIMIT), "holding 37");
    client.child.kill().unwrap();
    client.wait(LIMIT);
    // One snapshot: `stats` loads `closed` (Acquire) before `reclaimed`,
    // and the server counts a close only after reclaiming its blobs.
    let stats = wait_until(
        LIMIT,
        "the server closing the dead client's connection",
        || {
            let s = server.stats();
            (s.closed == 1).then_some(s)
        },
    );
    assert_eq!(stats.accepted, 1, "the one client was accepted");
    assert_eq!(stats.reclaimed, 37, "exactly the blobs the client held");
}

/// Does the client half of the handshake by hand and returns the raw
/// endpoint, so the test can write whatever it likes into the ring.
fn raw_client(
    socket: &SocketName,
) -> (
    std::os::fd::OwnedFd,
    isocall::engine::endpoint::Sender,
    isocall::engine::endpoint::Receiver,
) {
    use isocall::engine::endpoint::{Doorbells, Side, endpoint};
    use isocall::engine::liveness::Liveness;
    use isocall::engine::segment::Segment;
    use isocall::engine::sys::EventFd;
    let sock = connect_seqpacket(socket).unwrap();
    let hello = ClientHello {
        magic: HELLO_MAGIC,
        version: wire::PROTOCOL_VERSION,
        _reserved: 0,
    };
    send_with_fds(sock.as_fd(), bytemuck::bytes_of(&hello), &[]).unwrap();
    let mut buf = vec![0u8; 65536];
    let (_, mut fds) = recv_message(sock.as_fd(), &mut buf, 3, Instant::now() + LIMIT).unwrap();
    assert_eq!(buf[0], wire::HELLO);
    let s2c = EventFd::from_owned(fds.pop().unwrap());
    let c2s = EventFd::from_owned(fds.pop().unwrap());
    let seg = Arc::new(Segment::open(fds.pop().unwrap()).unwrap());
    let bells = Doorbells {
        c2s: Arc::new(c2s),
        s2c: Arc::new(s2c),
    };
    let (tx, rx) = endpoint(
        seg,
        Side::Client,
        &bells,
        WaitStrategy::Adaptive,
        Liveness::new(),
    )
    .unwrap();
    send_with_fds(sock.as_fd(), &[wire::READY], &[]).unwrap();
    (sock, tx, rx)
}

#[test]
fn a_client_sending_garbage_is_closed_and_the_others_keep_working() {
    let socket = unique("garbage");
    let server = builder(socket.clone()).spawn().unwrap();
    let mut good = Client::connect(&socket).unwrap();
    assert_eq!(add(&mut good, 1, 1).unwrap(), 2);
    let garbage: [&[u8]; 3] = [
        // Shorter than a call head.
        &[1, 2, 3],
        // A head that claims 1000 blobs.
        &{
            let mut h = [0u8; 32];
            h[16..20].copy_from_slice(&1000u32.to_le_bytes());
            h
        },
        // A head whose body runs past the frame.
        &{
            let mut h = [0u8; 48];
            h[20..24].copy_from_slice(&4096u32.to_le_bytes());
            h
        },
    ];
    for (i, g) in garbage.iter().enumerate() {
        let (_sock, mut tx, _rx) = raw_client(&socket);
        tx.send(wire::kind::REQUEST, g, Some(Instant::now() + LIMIT))
            .unwrap();
        wait_until(LIMIT, "the server closing the garbage connection", || {
            (server.stats().closed == i as u64 + 1).then_some(())
        });
        assert_eq!(
            add(&mut good, i as u64, 1).unwrap(),
            i as u64 + 1,
            "the good client is served"
        );
    }
    // A frame kind a client never sends.
    let (_sock, mut tx, _rx) = raw_client(&socket);
    tx.send(
        wire::kind::RESPONSE,
        &[0u8; 32],
        Some(Instant::now() + LIMIT),
    )
    .unwrap();
    wait_until(LIMIT, "the server closing the connection", || {
        (server.stats().closed == 4).then_some(())
    });
    assert_eq!(add(&mut good, 7, 7).unwrap(), 14);
}

#[test]
fn large_blobs_travel_as_memfds_mapped_once() {
    let socket = unique("large");
    let server = builder(socket.clone()).spawn().unwrap();
    let mut c = Client::connect(&socket).unwrap();
    let largest = c.pool().unwrap().classes().last().unwrap().slot_size;
    assert!(matches!(
        c.pool().unwrap().alloc(largest + 1),
        Err(isocall::blob::BlobError::TooLarge { .. })
    ));
    // 32 MiB: far beyond the largest class.
    let mut big = c.alloc_large(32 << 20).unwrap();
    for (i, b) in big.as_mut_slice().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let want: u64 = big.as_slice().iter().map(|&b| u64::from(b)).sum();
    let m = c.method("large_sum").unwrap();
    for round in 0..3u64 {
        let h = c.share_large(&mut big).unwrap();
        let (sum, back) = c
            .call_with::<Text, Sum, _>(
                m,
                &Text {
                    text: String::new(),
                },
                &[h],
                None,
                |r, b| (r.sum.to_native(), b.to_vec()),
            )
            .unwrap();
        assert_eq!(
            isocall::engine::rpc::large_id(&back[0]),
            isocall::engine::rpc::large_id(&h)
        );
        // Each round the server added 1 to every byte, in place.
        let n = big.len() as u64;
        assert_eq!(sum, want + round * n, "round {round}");
    }
    assert!(
        big.as_slice()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == ((i % 251) as u8).wrapping_add(3))
    );
    assert_eq!(
        server.stats().large_mapped,
        1,
        "the memfd crossed the socket once"
    );
    // A large handle that was never shared is refused; the connection lives.
    let forged = isocall::engine::rpc::LargeBlob::handle(&c.alloc_large(10).unwrap());
    let e = c
        .call_with::<Text, Sum, _>(
            m,
            &Text {
                text: String::new(),
            },
            &[forged],
            None,
            |_, _| (),
        )
        .unwrap_err();
    assert!(e.to_string().contains("never shared"), "{e}");
    assert_eq!(add(&mut c, 2, 2).unwrap(), 4);
}
