//! Connections and calls between real processes: handshakes and every way
//! they can fail, typed calls, pipelining, one-way messages, blobs, a
//! panicking handler, the statuses a raw request gets, garbage from one
//! client while others keep working, 64 clients at once, a server killed
//! with calls pending, a client killed holding blobs. (The leak checks
//! have their own binaries: tests/rpc_leaks.rs, tests/rpc_abandon.rs; what
//! the typed API reports is in tests/typed.rs.)

mod common;

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::calc::*;
use common::*;
use isocall::blob::{BlobError, BlobHandle};
use isocall::raw::handshake::{self, ClientHello, HELLO_MAGIC, HandshakeError, ServerHelloHead};
use isocall::raw::sys::{
    Doorbell, accept_seqpacket, connect_seqpacket, listen_seqpacket, poll_readable, recv_message,
    send_with_fds,
};
use isocall::raw::wire::{self, CallHead, ErrorBody, Status};
use isocall::raw::{Liveness, Receiver, Segment, Sender, Side, endpoint};
use isocall::rpc::{BlobAccessError, LargeBlob, LargeError, PolicyRefusal, large_id};
use isocall::{
    AppError, CallCtx, CallError, Client, ClientOptions, ConnectError, Message, Method, PeerCred,
    Policy, Refusal, ServerBuilder, ServerError, SocketName, WaitStrategy,
};

const LIMIT: Duration = Duration::from_secs(30);

#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
#[rkyv(derive(Debug))]
struct Text {
    text: String,
}

/// `upper`: the text in capitals.
const UPPER: Method<Text, Text> = Method::new("upper");
/// `fail`: refuses with [`REFUSED`].
const FAIL: Method<Text, Text> = Method::new("fail");
/// `panic`: the handler panics.
const PANIC: Method<Text, Text> = Method::new("panic");
/// `fill`: writes the text, repeated, into the request's blob and sends it
/// back; answers its length.
const FILL: Method<Text, Sum> = Method::new("fill");
/// `stall`: never answers.
const STALL: Method<Text, Sum> = Method::new("stall");
/// `large_sum`: the sum of the large blob's bytes, each incremented in
/// place.
const LARGE_SUM: Method<Text, Sum> = Method::new("large_sum");
/// `note`: a one-way message, ignored.
const NOTE: Message<Add> = Message::new("note");

/// Application error code of `fail`.
const REFUSED: u32 = 42;
/// Application error code of a handler given a stale blob handle.
const STALE_BLOB: u32 = 2;
/// Application error code of a handler given a large blob never shared.
const NEVER_SHARED: u32 = 3;
/// Application error code of any other blob failure.
const OTHER_BLOB: u32 = 4;

/// A handler's failure to use a blob, with a code per condition the tests
/// tell apart.
fn blob_error(e: BlobAccessError) -> AppError {
    let code = match &e {
        BlobAccessError::Blob(BlobError::Stale { .. }) => STALE_BLOB,
        BlobAccessError::Large(LargeError::NeverShared { .. }) => NEVER_SHARED,
        _ => OTHER_BLOB,
    };
    AppError::new(code, e.to_string())
}

/// The methods every test server offers.
fn builder(socket: SocketName) -> ServerBuilder {
    ServerBuilder::new(socket)
        .method(ADD, |r: &ArchivedAdd, _: &mut CallCtx<'_>| {
            Ok(Sum {
                sum: r.a.to_native().wrapping_add(r.b.to_native()),
            })
        })
        .method(UPPER, |r: &ArchivedText, _: &mut CallCtx<'_>| {
            Ok(Text {
                text: r.text.as_str().to_uppercase(),
            })
        })
        .method(FAIL, |r: &ArchivedText, _: &mut CallCtx<'_>| {
            Err(AppError::new(
                REFUSED,
                format!("refusing {}", r.text.as_str()),
            ))
        })
        .method(PANIC, |_: &ArchivedText, _: &mut CallCtx<'_>| {
            panic!("handler exploded on purpose")
        })
        .method(FILL, |r: &ArchivedText, ctx: &mut CallCtx<'_>| {
            // Writes the text into the caller's blob, repeated.
            let mut blob = ctx.blob_mut(0).map_err(blob_error)?;
            let t = r.text.as_bytes();
            for (i, b) in blob.iter_mut().enumerate() {
                *b = t[i % t.len()];
            }
            let n = blob.len() as u64;
            ctx.reply_blob(blob).map_err(blob_error)?;
            Ok(Sum { sum: n })
        })
        .method(STALL, |_: &ArchivedText, _: &mut CallCtx<'_>| {
            // Never answers (the test kills the server).
            loop {
                std::thread::park();
            }
        })
        .method(LARGE_SUM, |_: &ArchivedText, ctx: &mut CallCtx<'_>| {
            // Reads every byte of the large blob and answers in place.
            let bytes = ctx.large(0).map_err(blob_error)?;
            let mut sum = 0u64;
            for b in bytes.iter_mut() {
                sum += u64::from(*b);
                *b = b.wrapping_add(1);
            }
            ctx.reply_large(0).map_err(blob_error)?;
            Ok(Sum { sum })
        })
        .message(NOTE, |_: &ArchivedAdd, _: &mut CallCtx<'_>| {})
}

/// A server in a child process on `socket`; returns once it listens.
fn server_process(socket: &SocketName, strategy: &str) -> Peer {
    common::server_process("rpc_server_entry", socket, &format!("strategy={strategy}"))
}

#[test]
#[ignore = "entry point of the server process that the other tests spawn"]
fn rpc_server_entry() {
    serve_for_parent(|socket, msg| {
        let strategy = match param(msg, "strategy") {
            "busy" => WaitStrategy::BusySpin,
            "blocking" => WaitStrategy::Blocking,
            _ => WaitStrategy::Adaptive,
        };
        builder(socket).wait_strategy(strategy).workers(2)
    });
}

#[test]
fn typed_calls_pipelining_messages_and_statuses() {
    let socket = unique("calls");
    let _server = server_process(&socket, "adaptive");
    let mut c = Client::connect(&socket).expect("connect");
    assert_eq!(add(&mut c, 2, 40).unwrap(), 42);
    let upper = c.method(UPPER).unwrap();
    let r = c
        .call(
            upper,
            &Text {
                text: "in place".into(),
            },
        )
        .unwrap();
    assert_eq!(r.text.as_str(), "IN PLACE");
    drop(r);
    // Pipelined: 200 calls in flight, answered out of the wait order.
    let m = c.method(ADD).unwrap();
    let pending: Vec<_> = (0..200u64)
        .map(|i| c.start(m, &Add { a: i, b: 1000 }, &[]).unwrap())
        .collect();
    assert_eq!(c.in_flight(), 200);
    for (i, p) in pending.into_iter().enumerate().rev() {
        let sum = c.wait(p, None).unwrap().sum.to_native();
        assert_eq!(sum, i as u64 + 1000);
    }
    assert_eq!(c.in_flight(), 0);
    // Ten in flight, waited for in the order they were started.
    let all: Vec<_> = (0..10u64)
        .map(|i| c.start(m, &Add { a: i, b: i }, &[]).unwrap())
        .collect();
    let sums: Vec<u64> = all
        .into_iter()
        .map(|p| c.wait(p, None).unwrap().sum.to_native())
        .collect();
    assert_eq!(sums, (0..10).map(|i| 2 * i).collect::<Vec<_>>());
    // One-way messages, then a call proves they were consumed in order.
    let note = c.message(NOTE).unwrap();
    for i in 0..1000 {
        c.send(note, &Add { a: i, b: i }, &[]).unwrap();
    }
    assert_eq!(add(&mut c, 1, 1).unwrap(), 2);
    // Statuses.
    let fail = c.method(FAIL).unwrap();
    let e = c.call(fail, &Text { text: "x".into() }).unwrap_err();
    assert!(
        matches!(&e, CallError::App(AppError { code: REFUSED, message }) if message == "refusing x"),
        "{e}"
    );
    let boom = c.method(PANIC).unwrap();
    let e = c.call(boom, &Text { text: "x".into() }).unwrap_err();
    assert!(
        matches!(&e, CallError::HandlerPanicked { method, message }
            if method == "panic" && message == "handler exploded on purpose"),
        "{e}"
    );
    assert_eq!(
        add(&mut c, 5, 5).unwrap(),
        10,
        "the server serves on after a panic"
    );
    assert!(matches!(
        c.method(Method::<Add, Sum>::new("nope")),
        Err(CallError::NoSuchMethod { name }) if name == "nope"
    ));
    // Larger than the frame limit: refused before sending.
    let big = Text {
        text: "x".repeat(100 << 10),
    };
    let e = c.call(upper, &big).unwrap_err();
    assert!(matches!(e, CallError::RequestTooLarge(_)), "{e}");
    assert_eq!(add(&mut c, 1, 2).unwrap(), 3);
}

/// Sends one REQUEST frame of method `method` with `body` on a raw
/// connection and returns the RESPONSE's head and body.
fn raw_call(
    tx: &mut Sender,
    rx: &mut Receiver,
    id: u64,
    method: u32,
    body: &[u8],
) -> (CallHead, Vec<u8>) {
    let head = CallHead {
        id,
        method,
        body_len: body.len() as u32,
        ..CallHead::default()
    };
    let mut frame = vec![0u8; wire::HEAD + body.len()];
    wire::write_head(&mut frame, &head, &[]);
    frame[wire::HEAD..].copy_from_slice(body);
    tx.send(wire::kind::REQUEST, &frame, Some(Instant::now() + LIMIT))
        .expect("send a raw request");
    let reply = rx.recv(Some(Instant::now() + LIMIT)).expect("a response");
    assert_eq!(reply.kind(), wire::kind::RESPONSE);
    let p = wire::parse(reply.payload()).expect("a well-formed response");
    let out = (p.head, p.body.to_vec());
    reply.release();
    out
}

#[test]
fn the_server_answers_an_unknown_method_id_and_a_body_that_fails_validation() {
    // Below the typed API, which cannot send either: a raw connection.
    let socket = unique("raw-statuses");
    let _server = server_process(&socket, "adaptive");
    let (_sock, mut tx, mut rx, hello) = raw_client(&socket);
    let add_id = hello
        .methods
        .iter()
        .position(|m| m.name == "add")
        .expect("the server offers add") as u32;
    // A method id the server does not have.
    let (head, body) = raw_call(&mut tx, &mut rx, 1, 999, &[]);
    assert_eq!((head.id, head.status), (1, Status::UnknownMethod as u32));
    assert_eq!(ErrorBody::read(&body).0, 999, "names the id");
    // A body that is not an archive of `add`'s request type: four bytes,
    // shorter than an archived `Add`.
    let (head, body) = raw_call(&mut tx, &mut rx, 2, add_id, &7u32.to_le_bytes());
    assert_eq!((head.id, head.status), (2, Status::BadRequest as u32));
    let (_, detail) = ErrorBody::read(&body);
    assert!(
        detail.contains("Add"),
        "names the type it expects: {detail}"
    );
    // The connection lives: a valid `add` is answered.
    let mut req = [0u8; 16];
    req[..8].copy_from_slice(&40u64.to_le_bytes());
    req[8..].copy_from_slice(&2u64.to_le_bytes());
    let (head, body) = raw_call(&mut tx, &mut rx, 3, add_id, &req);
    assert_eq!((head.id, head.status), (3, Status::Ok as u32));
    assert_eq!(body, 42u64.to_le_bytes(), "an archived Sum of 42");
}

#[test]
fn blobs_travel_in_and_out_of_calls() {
    let socket = unique("blobs");
    let _server = server_process(&socket, "busy");
    let mut c = Client::connect(&socket).expect("connect");
    let pool = c.pool().expect("pool").clone();
    let fill = c.method(FILL).unwrap();
    for len in [1usize, 255, 4096, 100_000, 1 << 20] {
        let blob = pool.alloc(len).unwrap();
        let h = blob.send().unwrap();
        let mut r = c
            .call_with(fill, &Text { text: "abc".into() }, &[h], None)
            .unwrap();
        assert_eq!(r.sum.to_native(), len as u64);
        assert_eq!(r.blob_handles().len(), 1);
        let got = r.blob(0).unwrap();
        drop(r);
        assert_eq!(got.len(), len);
        assert!(got.iter().enumerate().all(|(i, &b)| b == b"abc"[i % 3]));
    }
    assert_eq!(pool.stats().used(), 0, "every blob came back and was freed");
    // A request whose blob handle is forged: the handler's accept fails,
    // the call reports it, the connection lives.
    let forged = BlobHandle {
        class: 0,
        slot: 0,
        generation: 77,
        len: 1,
    };
    let e = c
        .call_with(fill, &Text { text: "a".into() }, &[forged], None)
        .unwrap_err();
    assert!(
        matches!(
            &e,
            CallError::App(AppError {
                code: STALE_BLOB,
                ..
            })
        ),
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
    let (uid, gid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    assert!(
        matches!(&e, ConnectError::Refused(Refusal::Policy(PolicyRefusal::NotAllowed { uid: u, gid: g }))
            if *u == uid && *g == gid),
        "{e}"
    );
    let custom = unique("custom");
    let server = builder(custom.clone())
        .policy(Policy::Custom(Arc::new(|p: &PeerCred| {
            Err(format!("pid {:?} is not welcome", p.pid))
        })))
        .spawn()
        .unwrap();
    let e = Client::connect(&custom).unwrap_err();
    // A custom policy's reason is its own text, carried as it is.
    let want = format!("pid {:?} is not welcome", Some(std::process::id()));
    assert!(
        matches!(&e, ConnectError::Refused(Refusal::Policy(PolicyRefusal::Custom { reason }))
            if *reason == want),
        "{e}"
    );
    wait_until(LIMIT, "refusals counted", || {
        (server.stats().refused == 1).then_some(())
    });
}

#[test]
fn a_refusal_reaches_the_client_however_early_the_server_closes() {
    // A server refuses right after `accept` and closes the socket without
    // reading the client's hello: before the hello is sent (the send finds
    // the socket closed), or with the hello unread (the kernel reports a
    // reset before the refusal). Either way the client reads the refusal.
    let refusal = Refusal::TooManyConnections { limit: 3 };
    let refused = |e: &ConnectError| matches!(e, ConnectError::Refused(r) if *r == refusal);
    // Closed before the hello.
    let (client_end, server_end) = isocall::raw::sys::seqpacket_pair().unwrap();
    let msg = handshake::encode_refusal(&refusal);
    send_with_fds(server_end.as_fd(), &msg, &[], Instant::now() + LIMIT).unwrap();
    drop(server_end);
    let e = Client::over_socket(client_end, ClientOptions::default()).unwrap_err();
    assert!(refused(&e), "{e}");
    // Closed with the hello unread.
    let (client_end, server_end) = isocall::raw::sys::seqpacket_pair().unwrap();
    let server = std::thread::spawn(move || {
        let ready = poll_readable(&[server_end.as_fd()], Some(LIMIT)).unwrap();
        assert_eq!(ready, [true], "no hello within {LIMIT:?}");
        send_with_fds(server_end.as_fd(), &msg, &[], Instant::now() + LIMIT).unwrap();
    });
    let e = Client::over_socket(client_end, ClientOptions::default()).unwrap_err();
    server.join().unwrap();
    assert!(refused(&e), "{e}");
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
    send_with_fds(
        sock.as_fd(),
        bytemuck::bytes_of(&hello),
        &[],
        Instant::now() + LIMIT,
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let (n, fds) = recv_message(sock.as_fd(), &mut buf, 3, Instant::now() + LIMIT, None).unwrap();
    assert!(fds.is_empty());
    assert_eq!(buf[0], handshake::REFUSED);
    let refusal = handshake::decode_refusal(&buf[1..n]).unwrap();
    assert_eq!(
        refusal,
        Refusal::Version {
            server: wire::PROTOCOL_VERSION,
            client: 99
        },
        "names the server's version and the client's"
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
    let listener = listen_seqpacket(&mute).unwrap();
    let opts = ClientOptions::default().handshake_timeout(Duration::from_millis(200));
    let e = Client::connect_with(&mute, opts).unwrap_err();
    assert!(matches!(e, ConnectError::Timeout(_)), "{e}");
    drop(listener);
    // A server that answers a hello without the descriptors.
    let liar = unique("liar");
    let listener = listen_seqpacket(&liar).unwrap();
    let t = std::thread::spawn(move || {
        // The listener does not block: wait for the client to arrive.
        let ready = poll_readable(&[listener.as_fd()], Some(LIMIT)).unwrap();
        assert_eq!(ready, [true], "no client within {LIMIT:?}");
        let s = accept_seqpacket(listener.as_fd()).unwrap();
        let mut buf = [0u8; 64];
        recv_message(s.as_fd(), &mut buf, 0, Instant::now() + LIMIT, None).unwrap();
        let hello = handshake::encode_hello(
            &ServerHelloHead {
                magic: HELLO_MAGIC,
                version: wire::PROTOCOL_VERSION,
                nmethods: 0,
                max_frame: 4096,
                conn: 1,
            },
            &[],
        );
        send_with_fds(s.as_fd(), &hello, &[], Instant::now() + LIMIT).unwrap();
        let mut answer = [0u8; 256];
        let (n, _) = recv_message(s.as_fd(), &mut answer, 0, Instant::now() + LIMIT, None).unwrap();
        answer[..n].to_vec()
    });
    let e = Client::connect(&liar).unwrap_err();
    let missing = HandshakeError::Descriptors {
        expected: 2,
        got: 0,
    };
    assert!(
        matches!(&e, ConnectError::Handshake(h) if *h == missing),
        "{e}"
    );
    let abort = t.join().unwrap();
    assert_eq!(
        abort[0],
        handshake::ABORT,
        "the client aborts the handshake"
    );
    // The abort's reason is text for the server's log: the same error.
    assert_eq!(
        String::from_utf8_lossy(&abort[1..]),
        missing.to_string(),
        "the client told the server why"
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
        matches!(&e, ServerError::Listen { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse),
        "{e}"
    );
    // A stale file: bound by a listener that is gone without unlinking.
    std::mem::forget(first); // leaves the file; its threads live on, idle
    let stale = SocketName::Path(dir.join("stale"));
    let l = listen_seqpacket(&stale).unwrap();
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
    let stall = c.method(STALL).unwrap();
    let m = c.method(ADD).unwrap();
    // The first call stalls the worker; the rest queue behind it.
    let first = c
        .start(
            stall,
            &Text {
                text: String::new(),
            },
            &[],
        )
        .unwrap();
    let mut pending = vec![first];
    for i in 0..20 {
        pending.push(c.start(m, &Add { a: i, b: i }, &[]).unwrap());
    }
    server.child.kill().unwrap();
    server.wait(LIMIT);
    let started = Instant::now();
    for p in pending {
        let e = c.wait(p, Some(Instant::now() + LIMIT)).unwrap_err();
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
/// endpoint, so the test can write whatever it likes into the ring, and
/// the server's hello.
fn raw_client(
    socket: &SocketName,
) -> (
    std::os::fd::OwnedFd,
    Sender,
    Receiver,
    handshake::ServerHello,
) {
    let sock = connect_seqpacket(socket).unwrap();
    send_with_fds(
        sock.as_fd(),
        bytemuck::bytes_of(&ClientHello::ours()),
        &[],
        Instant::now() + LIMIT,
    )
    .unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, mut fds) =
        recv_message(sock.as_fd(), &mut buf, 2, Instant::now() + LIMIT, None).unwrap();
    assert_eq!(buf[0], handshake::HELLO);
    let hello = handshake::decode_hello(&buf[1..n]).unwrap();
    let bell = Doorbell::from_peer_end(fds.pop().unwrap()).unwrap();
    let seg = Arc::new(Segment::open(fds.pop().unwrap()).unwrap());
    let (tx, rx) = endpoint(
        seg,
        Side::Client,
        Arc::new(bell),
        WaitStrategy::Adaptive,
        Liveness::new(),
    )
    .unwrap();
    send_with_fds(
        sock.as_fd(),
        &[handshake::READY],
        &[],
        Instant::now() + LIMIT,
    )
    .unwrap();
    (sock, tx, rx, hello)
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
        let (_sock, mut tx, _rx, _) = raw_client(&socket);
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
    let (_sock, mut tx, _rx, _) = raw_client(&socket);
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
        Err(BlobError::TooLarge { .. })
    ));
    // 32 MiB: far beyond the largest class.
    let mut big = c.alloc_large(32 << 20).unwrap();
    for (i, b) in big.as_mut_slice().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let want: u64 = big.as_slice().iter().map(|&b| u64::from(b)).sum();
    let m = c.method(LARGE_SUM).unwrap();
    for round in 0..3u64 {
        let h = c.share_large(&mut big).unwrap();
        let r = c
            .call_with(
                m,
                &Text {
                    text: String::new(),
                },
                &[h],
                None,
            )
            .unwrap();
        let (sum, back) = (r.sum.to_native(), r.blob_handles().to_vec());
        drop(r);
        assert_eq!(large_id(&back[0]), large_id(&h));
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
    let forged = LargeBlob::handle(&c.alloc_large(10).unwrap());
    let e = c
        .call_with(
            m,
            &Text {
                text: String::new(),
            },
            &[forged],
            None,
        )
        .unwrap_err();
    assert!(
        matches!(
            &e,
            CallError::App(AppError {
                code: NEVER_SHARED,
                ..
            })
        ),
        "{e}"
    );
    assert_eq!(add(&mut c, 2, 2).unwrap(), 4);
}
