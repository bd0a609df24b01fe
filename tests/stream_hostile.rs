//! Hostile peers on the stream transports (Unix stream and TCP), both
//! ways: a client that sends lengths that are no frame, a length past the
//! frame limit in a 5-byte varint (refused before its bytes come), a frame
//! cut off and the socket closed, a hello one byte a second (ended by the
//! handshake timeout), garbage instead of a hello; under TLS, a client
//! whose certificate no trusted CA issued and a server the client's CAs do
//! not know, each refused with the reason; and a server that asks for a
//! pool larger than a client makes, or answers with bytes that are no
//! frame. Each hostile connection is closed with a typed error and never
//! panics anything; a well-behaved client of the same server is served
//! throughout. (A server killed with calls pending: tests/rpc.rs, on
//! every transport.)

mod common;

use std::io::Write;
use std::os::linux::net::SocketAddrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::calc::*;
use common::raw::{Socket, frame, raw_socket, read_frame, wait_closed};
use common::transport::{Transport, serve_on};
use common::*;
use isocall::raw::handshake::{
    self, ClientHello, HELLO_MAGIC, HandshakeError, ServerHelloHead, StreamServerHello,
};
use isocall::raw::wire::{self, kind};
use isocall::rpc::Endpoint;
use isocall::stream::StreamError;
use isocall::{CallCtx, CallError, Client, ConnectError, Server, ServerBuilder};

const LIMIT: Duration = Duration::from_secs(30);

/// The stream transports without TLS: the raw bytes below are the wire.
const PLAIN: [Transport; 2] = [Transport::UnixStream, Transport::Tcp];

fn methods(b: ServerBuilder) -> ServerBuilder {
    b.method(ADD, |r: &ArchivedAdd, _: &mut CallCtx<'_>| {
        Ok(Sum {
            sum: r.a.to_native() + r.b.to_native(),
        })
    })
    .handshake_timeout(Duration::from_secs(1))
}

/// The client hello over a stream (no compression asked for).
fn hello_frame() -> Vec<u8> {
    let mut msg = bytemuck::bytes_of(&ClientHello::ours()).to_vec();
    msg.resize(32, 0);
    frame(kind::HANDSHAKE, &msg)
}

/// A raw connection that did the handshake by hand.
fn handshaken(at: &Endpoint) -> Box<dyn Socket> {
    let mut s = raw_socket(at);
    s.write_all(&hello_frame()).unwrap();
    let (k, hello) = read_frame(&mut *s).expect("the server's hello");
    assert_eq!((k, hello[0]), (kind::HANDSHAKE, handshake::HELLO));
    s.write_all(&frame(kind::HANDSHAKE, &[handshake::READY]))
        .unwrap();
    s
}

/// A server of transport `t` and a well-behaved client of it.
fn server_and_client(t: Transport, tag: &str) -> (Server, Endpoint, Client) {
    let (server, at) = serve_on(t, tag, methods);
    let mut good = Client::connect(&at).unwrap();
    assert_eq!(add(&mut good, 1, 1).unwrap(), 2);
    (server, at, good)
}

/// Waits until the server counted `n` closed connections.
fn closed(server: &Server, n: u64) {
    wait_until(LIMIT, "the server closing the hostile connection", || {
        (server.stats().closed >= n).then_some(())
    });
}

#[test]
fn lengths_that_are_no_frame_close_the_connection() {
    for t in PLAIN {
        let (server, at, mut good) = server_and_client(t, "lengths");
        let mut rng = Rng::new(7);
        let random: Vec<u8> = (0..64).map(|_| rng.next() as u8).collect();
        let cases: [&[u8]; 4] = [
            // N = 0: shorter than a header.
            &[0x00],
            // N = 8, but the header says a payload of 1000 bytes.
            &[0x08, 0xE8, 0x03, 0, 0, 0x0A, 0, 0, 0],
            // An overlong varint (0 in two bytes).
            &[0x80, 0x00],
            &random,
        ];
        for (i, bytes) in cases.iter().enumerate() {
            let mut s = handshaken(&at);
            s.write_all(bytes).unwrap();
            wait_closed(&mut *s, "the server did not close the connection");
            closed(&server, i as u64 + 1);
            assert_eq!(add(&mut good, i as u64, 2).unwrap(), i as u64 + 2, "{t:?}");
        }
        // Garbage instead of a hello: the handshake fails.
        let mut s = raw_socket(&at);
        s.write_all(&random).unwrap();
        wait_closed(&mut *s, "the server did not close the connection");
        wait_until(LIMIT, "the handshake failing", || {
            (server.stats().failed == 1).then_some(())
        });
        assert_eq!(add(&mut good, 5, 5).unwrap(), 10);
    }
}

#[test]
fn a_length_past_the_frame_limit_is_refused_before_its_bytes_come() {
    for t in PLAIN {
        let (server, at, mut good) = server_and_client(t, "over-cap");
        let mut s = handshaken(&at);
        // u32::MAX in a 5-byte varint, and nothing after it: the server
        // does not wait for (or make room for) 4 GiB.
        s.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F]).unwrap();
        let started = Instant::now();
        wait_closed(&mut *s, "the server did not close the connection");
        closed(&server, 1);
        assert!(started.elapsed() < LIMIT);
        assert_eq!(add(&mut good, 2, 2).unwrap(), 4, "{t:?}");
    }
}

#[test]
fn a_frame_cut_off_and_closed_closes_only_its_connection() {
    for t in PLAIN {
        let (server, at, mut good) = server_and_client(t, "cut");
        let mut s = handshaken(&at);
        let mut call = vec![0u8; wire::HEAD + 100];
        wire::write_head(
            &mut call,
            &wire::CallHead {
                id: 1,
                body_len: 100,
                ..wire::CallHead::default()
            },
            &[],
        );
        let f = frame(kind::REQUEST, &call);
        s.write_all(&f[..f.len() / 2]).unwrap();
        s.shut_write();
        wait_closed(&mut *s, "the server did not close the connection");
        closed(&server, 1);
        assert_eq!(add(&mut good, 3, 3).unwrap(), 6, "{t:?}");
    }
}

#[test]
fn a_hello_one_byte_a_second_is_ended_by_the_handshake_timeout() {
    for t in PLAIN {
        let (server, at, mut good) = server_and_client(t, "slowloris");
        let mut s = raw_socket(&at);
        let mut writer = s.clone_box();
        let stop = Arc::new(AtomicBool::new(false));
        let trickle = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // The peer's behaviour, not synchronisation: a byte, then
                // a second's pause (cut short when the test is done).
                for b in hello_frame() {
                    if stop.load(Ordering::Acquire) || writer.write_all(&[b]).is_err() {
                        return;
                    }
                    std::thread::park_timeout(Duration::from_secs(1));
                }
            })
        };
        let started = Instant::now();
        wait_until(LIMIT, "the server giving the slow hello up", || {
            (server.stats().failed == 1).then_some(())
        });
        let took = started.elapsed();
        // The whole hello would take 41 seconds; the server's handshake
        // timeout is one.
        assert!(took < Duration::from_secs(20), "{took:?}");
        wait_closed(&mut *s, "the server did not close the connection");
        // Served meanwhile and after.
        assert_eq!(add(&mut good, 4, 4).unwrap(), 8, "{t:?}");
        stop.store(true, Ordering::Release);
        trickle.thread().unpark();
        trickle.join().unwrap();
    }
}

/// A fake server on a fresh address of `t`: accepts one connection and
/// runs `serve` on its raw socket.
fn fake_server(
    t: Transport,
    serve: impl FnOnce(&mut dyn Socket) + Send + 'static,
) -> (Endpoint, std::thread::JoinHandle<()>) {
    let (at, accept): (String, Box<dyn FnOnce() -> Box<dyn Socket> + Send>) = match t {
        Transport::UnixStream => {
            let name = t.address("fake");
            let abstract_name = name.strip_prefix("unix-stream:@").unwrap().to_string();
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
            let l = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
            (name, Box::new(move || Box::new(l.accept().unwrap().0)))
        }
        _ => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            (
                format!("tcp://127.0.0.1:{port}"),
                Box::new(move || Box::new(l.accept().unwrap().0)),
            )
        }
    };
    let h = std::thread::spawn(move || {
        let mut s = accept();
        serve(&mut *s);
    });
    let at = Endpoint::parse(&at)
        .unwrap()
        .compression(isocall::rpc::Compression::Off);
    (at, h)
}

/// The head of a fake server's hello.
fn fake_head(nmethods: u32) -> ServerHelloHead {
    ServerHelloHead {
        magic: HELLO_MAGIC,
        version: wire::PROTOCOL_VERSION,
        nmethods,
        max_frame: 64 << 10,
        conn: 1,
    }
}

#[test]
fn a_server_that_asks_for_too_large_a_pool_is_refused() {
    for t in PLAIN {
        let (at, server) = fake_server(t, |s| {
            let _ = read_frame(s).expect("the client's hello");
            let huge = [isocall::blob::ClassConfig {
                slot_size: 1 << 30,
                count: 64,
            }];
            let hello = handshake::encode_stream_hello(
                &fake_head(0),
                &StreamServerHello::default(),
                &huge,
                &[],
            );
            s.write_all(&frame(kind::HANDSHAKE, &hello)).unwrap();
            // The client's abort, then its end.
            let _ = read_frame(s);
        });
        let e = Client::connect(&at).unwrap_err();
        assert!(
            matches!(
                &e,
                ConnectError::Handshake(HandshakeError::TooLarge {
                    what: "a blob pool",
                    ..
                })
            ),
            "{t:?}: {e}"
        );
        server.join().unwrap();
    }
}

#[test]
fn a_server_answering_with_no_frame_fails_the_call_with_a_typed_error() {
    for t in PLAIN {
        let (at, server) = fake_server(t, |s| {
            let _ = read_frame(s).expect("the client's hello");
            let add = handshake::MethodInfo {
                name: "add".into(),
                idempotent: false,
                signature: ADD.signature(),
            };
            let hello = handshake::encode_stream_hello(
                &fake_head(1),
                &StreamServerHello::default(),
                &[],
                &[add],
            );
            s.write_all(&frame(kind::HANDSHAKE, &hello)).unwrap();
            let (k, ready) = read_frame(s).expect("the client's ready");
            assert_eq!((k, ready[0]), (kind::HANDSHAKE, handshake::READY));
            let (k, _) = read_frame(s).expect("a request");
            assert_eq!(k, kind::REQUEST);
            // A varint of six bytes: no frame.
            s.write_all(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]).unwrap();
            let _ = read_frame(s);
        });
        let mut c = Client::connect(&at).unwrap();
        let e = add(&mut c, 1, 2).unwrap_err();
        assert!(
            matches!(
                &e,
                CallError::Transport(isocall::raw::TransportError::Stream(StreamError::Frame(_)))
            ),
            "{t:?}: {e}"
        );
        assert!(!c.is_alive());
        drop(c);
        server.join().unwrap();
    }
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use common::pki::{Pki, STRANGER_CN};
    use isocall::stream::{TlsClient, TlsError, Untrusted};

    #[test]
    fn a_client_certificate_no_trusted_ca_issued_is_refused_with_the_reason() {
        let t = Transport::Tls;
        let (server, at) = serve_on(t, "untrusted-client", methods);
        let mut good = Client::connect(&at).unwrap();
        let stranger = at.clone().tls(Pki::get().client_as(STRANGER_CN));
        let e = Client::connect(&stranger).unwrap_err();
        // TLS 1.3: the client learns it when it reads the server's alert.
        assert!(
            matches!(&e, ConnectError::Stream(StreamError::Tls(TlsError::RefusedByPeer { alert })) if !alert.is_empty()),
            "{e}"
        );
        assert!(e.to_string().contains("refused"), "{e}");
        wait_until(LIMIT, "the server counting the failed handshake", || {
            (server.stats().failed == 1).then_some(())
        });
        assert_eq!(add(&mut good, 1, 2).unwrap(), 3);
    }

    #[test]
    fn a_server_the_client_s_cas_do_not_know_is_refused_with_the_reason() {
        let t = Transport::Tls;
        let (server, at) = serve_on(t, "untrusted-server", methods);
        let pki = Pki::get();
        let doubting = TlsClient::from_pem(&pki.dir.join("rogue-ca.pem"), None).unwrap();
        let e = Client::connect(at.clone().tls(doubting)).unwrap_err();
        assert!(
            matches!(
                &e,
                ConnectError::Stream(StreamError::Tls(TlsError::Untrusted {
                    reason: Untrusted::UnknownIssuer
                }))
            ),
            "{e}"
        );
        assert!(e.to_string().contains("not issued by a trusted CA"), "{e}");
        // A client without TLS at all: the server's handshake fails, the
        // client's connection ends.
        let plain = Endpoint::parse(&at.to_string()).unwrap();
        let e = Client::connect_with(
            plain,
            isocall::ClientOptions::default().handshake_timeout(Duration::from_secs(5)),
        )
        .unwrap_err();
        assert!(
            matches!(
                &e,
                ConnectError::Handshake(HandshakeError::Closed) | ConnectError::Stream(_)
            ),
            "{e}"
        );
        wait_until(LIMIT, "the server counting the failed handshakes", || {
            (server.stats().failed >= 2).then_some(())
        });
        let mut good = Client::connect(&at).unwrap();
        assert_eq!(add(&mut good, 1, 2).unwrap(), 3);
    }
}
