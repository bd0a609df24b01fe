//! Connections and calls between real processes: handshakes and every way
//! they can fail, typed calls, pipelining, one-way messages, blobs, a
//! panicking handler, the statuses a raw request gets, garbage from one
//! client while others keep working, 64 clients at once, a server killed
//! with calls pending, a client killed holding blobs. (The leak checks
//! have their own binaries: tests/rpc_leaks.rs, tests/rpc_abandon.rs; what
//! the typed API reports is in tests/typed.rs.) Each test runs on every
//! transport (shared memory, Unix stream, TCP, TCP + TLS, TCP + lz4) but
//! the few that test what only one of them has (a socketpair's refusal,
//! descriptors in the hello); where the two differ by design (a stream's
//! blobs are copies in each side's own pool), the test says which
//! behaviour it expects of which.

mod common;

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::calc::*;
use common::transport::{
    Transport, dial, endpoint_from_parent, endpoint_params, serve_on, serve_transport_for_parent,
    server_process_on,
};
use common::*;
use isocall::blob::{BlobError, BlobHandle};
use isocall::raw::handshake::{self, ClientHello, HELLO_MAGIC, HandshakeError, ServerHelloHead};
use isocall::raw::sys::{
    Doorbell, accept_seqpacket, connect_seqpacket, listen_seqpacket, poll_readable, recv_message,
    send_with_fds,
};
use isocall::raw::wire::{self, CallHead, ErrorBody, Status};
use isocall::raw::{Liveness, Receiver, Segment, Sender, Side, TransportError, endpoint};
use isocall::rpc::{BlobAccessError, Endpoint, LargeBlob, LargeError, PolicyRefusal, large_id};
use isocall::stream::{StreamConfig, StreamError, StreamRx, StreamTx};
use isocall::{
    AppError, CallCtx, CallError, Client, ClientOptions, ConnectError, Message, Method, PeerCred,
    Policy, Refusal, ServerBuilder, ServerError, SocketName, WaitStrategy,
};

on_every_transport!(
    typed_calls_pipelining_messages_and_statuses,
    the_server_answers_an_unknown_method_id_and_a_body_that_fails_validation,
    blobs_travel_in_and_out_of_calls,
    refused_by_policy_with_the_reason,
    version_mismatch_is_named_on_both_sides,
    handshakes_that_never_finish_time_out,
    a_live_address_is_not_stolen_and_a_stale_one_is_replaced,
    sixty_four_clients_on_one_server,
    a_killed_server_fails_every_pending_call_promptly,
    a_killed_client_s_blobs_are_reclaimed,
    a_client_sending_garbage_is_closed_and_the_others_keep_working,
    large_blobs_travel_with_their_calls,
);

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

/// Adds the methods every test server offers.
fn methods(b: ServerBuilder) -> ServerBuilder {
    b.method(ADD, serve_add)
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

/// A server of transport `t` in a child process; returns once it
/// listens, with the endpoint to dial.
fn server_process(t: Transport, tag: &str, strategy: &str) -> (Peer, Endpoint) {
    server_process_on("rpc_server_entry", t, tag, &format!("strategy={strategy}"))
}

#[test]
#[ignore = "entry point of the server process that the other tests spawn"]
fn rpc_server_entry() {
    serve_transport_for_parent(|b, msg| {
        let strategy = match param(msg, "strategy") {
            "busy" => WaitStrategy::BusySpin,
            "blocking" => WaitStrategy::Blocking,
            _ => WaitStrategy::Adaptive,
        };
        methods(b).wait_strategy(strategy).workers(2)
    });
}

fn typed_calls_pipelining_messages_and_statuses(t: Transport) {
    let (_server, socket) = server_process(t, "calls", "adaptive");
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
fn raw_call(raw: &mut Raw, id: u64, method: u32, body: &[u8]) -> (CallHead, Vec<u8>) {
    let head = CallHead {
        id,
        method,
        body_len: body.len() as u32,
        ..CallHead::default()
    };
    let mut frame = vec![0u8; wire::HEAD + body.len()];
    wire::write_head(&mut frame, &head, &[]);
    frame[wire::HEAD..].copy_from_slice(body);
    raw.send(wire::kind::REQUEST, &frame)
        .expect("send a raw request");
    let (kind, payload) = raw.recv();
    assert_eq!(kind, wire::kind::RESPONSE);
    let p = wire::parse(&payload).expect("a well-formed response");
    (p.head, p.body.to_vec())
}

fn the_server_answers_an_unknown_method_id_and_a_body_that_fails_validation(t: Transport) {
    // Below the typed API, which cannot send either: a raw connection.
    let (_server, socket) = server_process(t, "raw-statuses", "adaptive");
    let (mut raw, hello) = raw_client(t, &socket);
    let add_id = hello
        .methods
        .iter()
        .position(|m| m.name == "add")
        .expect("the server offers add") as u32;
    // A method id the server does not have.
    let (head, body) = raw_call(&mut raw, 1, 999, &[]);
    assert_eq!((head.id, head.status), (1, Status::UnknownMethod as u32));
    assert_eq!(ErrorBody::read(&body).0, 999, "names the id");
    // A body that is not an archive of `add`'s request type: four bytes,
    // shorter than an archived `Add`.
    let (head, body) = raw_call(&mut raw, 2, add_id, &7u32.to_le_bytes());
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
    let (head, body) = raw_call(&mut raw, 3, add_id, &req);
    assert_eq!((head.id, head.status), (3, Status::Ok as u32));
    assert_eq!(body, 42u64.to_le_bytes(), "an archived Sum of 42");
}

fn blobs_travel_in_and_out_of_calls(t: Transport) {
    let (_server, socket) = server_process(t, "blobs", "busy");
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
    // A request whose blob handle is forged: on shared memory the
    // handler's accept fails and the call reports it; on a stream the
    // sender finds no such blob to copy and the call is not sent. Either
    // way the connection lives.
    let forged = BlobHandle {
        class: 0,
        slot: 0,
        generation: 77,
        len: 1,
    };
    let e = c
        .call_with(fill, &Text { text: "a".into() }, &[forged], None)
        .unwrap_err();
    if t.is_stream() {
        assert!(
            matches!(
                &e,
                CallError::Transport(TransportError::Stream(StreamError::Blob {
                    index: 0,
                    source: BlobError::Stale { .. }
                }))
            ),
            "{e}"
        );
    } else {
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
    }
    assert_eq!(add(&mut c, 1, 1).unwrap(), 2);
    assert_eq!(pool.stats().used(), 0, "nothing held after the refusal");
}

fn refused_by_policy_with_the_reason(t: Transport) {
    let allow = Policy::Allow {
        uids: vec![4_000_000_000],
        gids: vec![],
    };
    if t.is_tcp() {
        // A TCP client has no credentials: a policy that reads them admits
        // nobody, and the server does not start.
        let e = methods(t.server(&t.address("policy")))
            .policy(allow)
            .spawn()
            .unwrap_err();
        assert!(
            matches!(&e, ServerError::TcpPolicy { address, tls } if address.starts_with("tcp://") && *tls == (t == Transport::Tls)),
            "{e}"
        );
        #[cfg(feature = "tls")]
        if t == Transport::Tls {
            // By certificate: the client's is not the one allowed.
            let (server, at) = serve_on(t, "policy", |b| {
                methods(b).policy(Policy::Certificate(vec![
                    isocall::stream::CertMatch::CommonName("someone else".into()),
                ]))
            });
            let e = Client::connect(&at).unwrap_err();
            let id = common::pki::Pki::get().identity(common::pki::CLIENT_CN);
            assert!(
                matches!(&e, ConnectError::Refused(Refusal::Policy(PolicyRefusal::Certificate { subject, spki_sha256 }))
                    if *subject == id.subject && *spki_sha256 == id.spki_hex()),
                "{e}"
            );
            wait_until(LIMIT, "the refusal counted", || {
                (server.stats().refused == 1).then_some(())
            });
        }
        return;
    }
    let (_server, socket) = serve_on(t, "policy", |b| methods(b).policy(allow));
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
    let (server, custom) = serve_on(t, "custom", |b| {
        methods(b).policy(Policy::Custom(Arc::new(|p: &PeerCred| {
            Err(format!("pid {:?} is not welcome", p.pid))
        })))
    });
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
    // A socketpair's: shared memory only (a stream has no `over_socket`).
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

fn version_mismatch_is_named_on_both_sides(t: Transport) {
    let (server, socket) = serve_on(t, "version", methods);
    let hello = ClientHello {
        magic: HELLO_MAGIC,
        version: 99,
        _reserved: 0,
    };
    let answer = if t.is_stream() {
        let mut msg = bytemuck::bytes_of(&hello).to_vec();
        msg.resize(32, 0);
        let (mut tx, mut rx) = raw_stream(t, &socket);
        tx.send(wire::kind::HANDSHAKE, &msg, Some(Instant::now() + LIMIT))
            .unwrap();
        let f = rx.recv(Some(Instant::now() + LIMIT)).unwrap();
        assert_eq!(f.kind(), wire::kind::HANDSHAKE);
        f.payload().to_vec()
    } else {
        let sock = connect_seqpacket(socket.socket_name().unwrap()).unwrap();
        send_with_fds(
            sock.as_fd(),
            bytemuck::bytes_of(&hello),
            &[],
            Instant::now() + LIMIT,
        )
        .unwrap();
        let mut buf = [0u8; 512];
        let (n, fds) =
            recv_message(sock.as_fd(), &mut buf, 3, Instant::now() + LIMIT, None).unwrap();
        assert!(fds.is_empty());
        buf[..n].to_vec()
    };
    assert_eq!(answer[0], handshake::REFUSED);
    let refusal = handshake::decode_refusal(&answer[1..]).unwrap();
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

fn handshakes_that_never_finish_time_out(t: Transport) {
    // A client that connects and says nothing (not even TLS): the server
    // gives up.
    let (server, socket) = serve_on(t, "silent-client", |b| {
        methods(b).handshake_timeout(Duration::from_millis(200))
    });
    let silent: Box<dyn std::any::Any> = match socket.stream_address() {
        Some(a) => Box::new(isocall::stream::connect(a, Instant::now() + LIMIT).unwrap()),
        None => Box::new(connect_seqpacket(socket.socket_name().unwrap()).unwrap()),
    };
    wait_until(LIMIT, "the server's handshake deadline", || {
        (server.stats().failed == 1).then_some(())
    });
    drop(silent);
    // A "server" that accepts and never answers: the client gives up.
    let opts = ClientOptions::default().handshake_timeout(Duration::from_millis(200));
    let listener: Box<dyn std::any::Any> = if t.is_stream() {
        let l = isocall::stream::Listener::bind(
            &[isocall::stream::Address::parse(&t.address("mute-server")).unwrap()],
            isocall::stream::Security::Anyone,
        )
        .unwrap();
        let mute = t.endpoint(&Endpoint::stream(l.addresses().remove(0)));
        let e = Client::connect_with(&mute, opts).unwrap_err();
        assert!(matches!(e, ConnectError::Timeout(_)), "{e}");
        Box::new(l)
    } else {
        let mute = unique("mute-server");
        let listener = listen_seqpacket(&mute).unwrap();
        let e = Client::connect_with(&mute, opts).unwrap_err();
        assert!(matches!(e, ConnectError::Timeout(_)), "{e}");
        Box::new(listener)
    };
    drop(listener);
}

#[test]
fn a_hello_without_its_descriptors_is_refused_and_the_server_told_why() {
    // Shared memory only: a stream's hello carries no descriptors.
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

fn a_live_address_is_not_stolen_and_a_stale_one_is_replaced(t: Transport) {
    let dir = std::env::temp_dir().join(format!(
        "isocall-test-sock-{}-{}",
        std::process::id(),
        t.name()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    // A file path (TCP: the port the first server bound).
    let path = |name: &str| match t {
        Transport::Shm => dir.join(name).display().to_string(),
        Transport::UnixStream => format!("unix:{}", dir.join(name).display()),
        _ => t.address(name),
    };
    let first = methods(t.server(&path("svc"))).spawn().unwrap();
    let taken = first.addresses()[0].to_string();
    let e = methods(t.server(&taken)).spawn().unwrap_err();
    let in_use = |e: &std::io::Error| e.kind() == std::io::ErrorKind::AddrInUse;
    assert!(
        match &e {
            ServerError::Listen { source, .. } => in_use(source),
            ServerError::Stream(StreamError::Listen { errno, .. }) => {
                in_use(&std::io::Error::from_raw_os_error(*errno))
            }
            _ => false,
        },
        "{e}"
    );
    let mut c = Client::connect(t.endpoint(&first.addresses()[0])).unwrap();
    assert_eq!(
        add(&mut c, 2, 2).unwrap(),
        4,
        "the first server still serves"
    );
    drop(c);
    if t.is_tcp() {
        // A port has no file to go stale.
        drop(first);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    // A stale file: bound by a listener that is gone without unlinking.
    std::mem::forget(first); // leaves the file; its threads live on, idle
    let stale = path("stale");
    let file = dir.join("stale");
    let l = if t.is_stream() {
        isocall::raw::sys::listen_stream(isocall::raw::sys::StreamTarget::UnixPath(&file))
    } else {
        listen_seqpacket(&SocketName::Path(file.clone()))
    };
    drop(l.unwrap()); // closed, its file left behind
    // A process another test forks meanwhile holds a copy of the listener
    // until it execs: wait until nobody listens there any more.
    wait_until(LIMIT, "the stale socket to refuse connections", || {
        let refused = if t.is_stream() {
            let a = Endpoint::parse(&stale).unwrap();
            isocall::stream::connect(a.stream_address().unwrap(), Instant::now() + LIMIT).is_err()
        } else {
            connect_seqpacket(&SocketName::Path(file.clone())).is_err()
        };
        refused.then_some(())
    });
    let second = methods(t.server(&stale))
        .spawn()
        .expect("the stale socket is replaced");
    let mut c = Client::connect(t.endpoint(&second.addresses()[0])).unwrap();
    assert_eq!(add(&mut c, 1, 2).unwrap(), 3);
    drop(c);
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

fn sixty_four_clients_on_one_server(t: Transport) {
    let (_server, socket) = server_process(t, "many", "adaptive");
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

fn a_killed_server_fails_every_pending_call_promptly(t: Transport) {
    let (mut server, socket) = server_process(t, "killed", "blocking");
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
    let socket = endpoint_from_parent(&msg);
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

fn a_killed_client_s_blobs_are_reclaimed(t: Transport) {
    let (server, socket) = serve_on(t, "reclaim", methods);
    let mut client = Peer::spawn("rpc_client_entry", "client");
    client.send(&format!("{} hold=37", endpoint_params(t, &socket)), &[]);
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
    // A stream client's blobs were in its own pool, gone with it.
    let held = if t.is_stream() { 0 } else { 37 };
    assert_eq!(stats.reclaimed, held, "exactly the blobs the client held");
}

/// A client that does the handshake by hand and then writes whatever the
/// test likes: on a ring, or on a stream socket.
enum Raw {
    /// The socket, kept open (its end is the client's death), and the ring
    /// endpoint.
    Ring(#[allow(dead_code)] std::os::fd::OwnedFd, Sender, Receiver),
    Stream(StreamTx, StreamRx),
}

impl Raw {
    /// Sends one frame (the stream's sender checks a call frame's blobs
    /// against its head, and refuses a head that lies).
    fn send(&mut self, kind: u16, payload: &[u8]) -> Result<(), String> {
        let deadline = Some(Instant::now() + LIMIT);
        match self {
            Raw::Ring(_, tx, _) => tx.send(kind, payload, deadline).map_err(|e| e.to_string()),
            Raw::Stream(tx, _) => tx.send(kind, payload, deadline).map_err(|e| e.to_string()),
        }
    }

    /// The next frame's kind and payload.
    fn recv(&mut self) -> (u16, Vec<u8>) {
        let deadline = Some(Instant::now() + LIMIT);
        match self {
            Raw::Ring(_, _, rx) => {
                let f = rx.recv(deadline).expect("a frame");
                let out = (f.kind(), f.payload().to_vec());
                f.release();
                out
            }
            Raw::Stream(_, rx) => {
                let f = rx.recv(deadline).expect("a frame");
                let out = (f.kind(), f.payload().to_vec());
                f.release();
                out
            }
        }
    }
}

/// A stream connection to `at` with an endpoint of the default limits and
/// no pool, before any handshake.
fn raw_stream(t: Transport, at: &Endpoint) -> (StreamTx, StreamRx) {
    isocall::stream::endpoint(dial(t, at), Side::Client, &StreamConfig::default()).unwrap()
}

/// Does the client half of the handshake by hand (asking for no
/// compression) and returns the raw connection and the server's hello.
fn raw_client(t: Transport, at: &Endpoint) -> (Raw, handshake::ServerHello) {
    if !t.is_stream() {
        let (sock, tx, rx, hello) = raw_ring_client(at.socket_name().unwrap());
        return (Raw::Ring(sock, tx, rx), hello);
    }
    let (mut tx, mut rx) = raw_stream(t, at);
    let mut msg = bytemuck::bytes_of(&ClientHello::ours()).to_vec();
    msg.resize(32, 0);
    tx.send(wire::kind::HANDSHAKE, &msg, Some(Instant::now() + LIMIT))
        .unwrap();
    let f = rx.recv(Some(Instant::now() + LIMIT)).unwrap();
    assert_eq!(f.payload()[0], handshake::HELLO);
    let (hello, _, _) = handshake::decode_stream_hello(&f.payload()[1..]).unwrap();
    f.release();
    tx.send(
        wire::kind::HANDSHAKE,
        &[handshake::READY],
        Some(Instant::now() + LIMIT),
    )
    .unwrap();
    (Raw::Stream(tx, rx), hello)
}

/// Does the client half of the shared-memory handshake by hand and
/// returns the raw endpoint, so the test can write whatever it likes into
/// the ring, and the server's hello.
fn raw_ring_client(
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

fn a_client_sending_garbage_is_closed_and_the_others_keep_working(t: Transport) {
    let (server, socket) = serve_on(t, "garbage", methods);
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
    let mut closed = 0;
    for (i, g) in garbage.iter().enumerate() {
        let (mut raw, _) = raw_client(t, &socket);
        if let Err(e) = raw.send(wire::kind::REQUEST, g) {
            // A stream's sender copies the blobs a call head names: one
            // that names 1000 never leaves (the server's receiver refuses
            // it the same way: see tests/stream_hostile.rs). The client
            // then just goes away.
            assert!(t.is_stream() && i == 1, "{e}");
            drop(raw);
        }
        closed += 1;
        wait_until(LIMIT, "the server closing the garbage connection", || {
            (server.stats().closed == closed).then_some(())
        });
        assert_eq!(
            add(&mut good, i as u64, 1).unwrap(),
            i as u64 + 1,
            "the good client is served"
        );
    }
    // A frame kind a client never sends.
    let (mut raw, _) = raw_client(t, &socket);
    raw.send(wire::kind::RESPONSE, &[0u8; 32]).unwrap();
    wait_until(LIMIT, "the server closing the connection", || {
        (server.stats().closed == closed + 1).then_some(())
    });
    assert_eq!(add(&mut good, 7, 7).unwrap(), 14);
}

/// On shared memory a large blob's memfd crosses the socket once and the
/// server maps it; on a stream its bytes travel with each call that names
/// it (both ways) and the server keeps its copy.
fn large_blobs_travel_with_their_calls(t: Transport) {
    let (server, socket) = serve_on(t, "large", methods);
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
        "the blob mapped (or first received) once"
    );
    // A large handle that was never shared is refused (by the server on
    // shared memory, by the sender on a stream); the connection lives.
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
    if t.is_stream() {
        assert!(
            matches!(
                &e,
                CallError::Transport(TransportError::Stream(StreamError::LargeUnknown { .. }))
            ),
            "{e}"
        );
    } else {
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
    }
    assert_eq!(add(&mut c, 2, 2).unwrap(), 4);
}
