//! Hostile peers of a channel over the stream transports (Unix stream
//! and plain TCP: the raw bytes below are the wire), both ways: a
//! subscriber that sends garbage after its handshake is closed by the
//! publisher (counted as disconnected) while a well-behaved subscriber
//! gets every message; a publisher that sends a length past the frame
//! limit ends its subscriber's subscription with a typed error (after
//! the messages before it), never a panic or a hang, while another
//! channel's subscriber in the same process goes on. And the admission
//! rules of a TCP publisher: without TLS it refuses to start unless its
//! policy says `Anyone`; under TLS a subscriber whose certificate no
//! trusted CA issued is refused while a trusted one is served.
//!
//! Socket-only: on shared memory the same hostility is a scribbled ring
//! (tests/hostile_channel.rs).

mod common;

use std::io::Write;
use std::os::linux::net::SocketAddrExt;
use std::time::{Duration, Instant};

use common::raw::{Socket, frame, raw_socket, read_frame, wait_closed};
use common::transport::Transport;
use isocall::SocketName;
use isocall::channel::{PublishError, Publisher, RecvError, Subscriber, hello};
use isocall::raw::handshake;
use isocall::raw::wire::kind;
use isocall::rpc::{Endpoint, TypeSig};
use isocall::stream::StreamError;

const LIMIT: Duration = Duration::from_secs(30);

/// The stream transports without TLS.
const PLAIN: [Transport; 2] = [Transport::UnixStream, Transport::Tcp];

/// The channel's message.
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
struct Tick {
    seq: u64,
}

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "isocall-test-chan-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A publisher of [`Tick`] on transport `t`, and where to subscribe.
fn publisher(t: Transport, tag: &str) -> (Publisher<Tick>, Endpoint) {
    let p = t
        .publisher::<Tick>(SocketName::Abstract(unique(tag)))
        .create()
        .expect("publisher");
    let at = t.channel_at(&p);
    (p, at)
}

#[test]
fn a_subscriber_that_sends_garbage_after_its_handshake_is_closed_and_the_others_go_on() {
    for t in PLAIN {
        let (mut publisher, at) = publisher(t, "garbage-sub");
        let mut honest = Subscriber::<Tick>::connect(&at).expect("subscribe");
        // The hostile one does its handshake by hand, then sends bytes
        // that are no frame.
        let mut s = raw_socket(&at);
        let sub = hello::encode_subscribe(&TypeSig::of::<Tick>(), 0, "hostile");
        s.write_all(&frame(kind::HANDSHAKE, &sub)).unwrap();
        s.write_all(&frame(kind::HANDSHAKE, &[0; 4])).unwrap();
        let (k, hello) = read_frame(&mut *s).expect("the publisher's hello");
        assert_eq!((k, hello[0]), (kind::HANDSHAKE, hello::HELLO), "{t:?}");
        let (k, _) = read_frame(&mut *s).expect("the stream part");
        assert_eq!(k, kind::HANDSHAKE);
        s.write_all(&frame(kind::HANDSHAKE, &[handshake::READY]))
            .unwrap();
        assert_eq!(publisher.wait_for_subscribers(2, LIMIT), 2, "{t:?}");
        // An overlong varint, then junk.
        s.write_all(&[0x80, 0x00, 0xde, 0xad]).unwrap();
        let deadline = Instant::now() + LIMIT;
        let mut seq = 0;
        while publisher.subscribers() > 1 {
            assert!(Instant::now() < deadline, "the hostile subscriber stays");
            publisher.send(&Tick { seq }).expect("send");
            seq += 1;
            publisher.poll();
        }
        assert_eq!(publisher.stats().disconnected, 1, "{t:?}");
        wait_closed(&mut *s, "the connection was not closed");
        for k in seq..seq + 10 {
            publisher.send(&Tick { seq: k }).expect("send");
        }
        for k in 0..seq + 10 {
            let got = honest.recv_timeout(LIMIT).expect("the honest subscriber");
            assert_eq!(got.seq, k, "{t:?}");
        }
    }
}

/// A fake publisher's listening socket.
enum FakeListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl FakeListener {
    fn bind(t: Transport) -> (FakeListener, Endpoint) {
        match t {
            Transport::Tcp => {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let port = l.local_addr().unwrap().port();
                let at = Endpoint::parse(&format!("tcp://127.0.0.1:{port}")).unwrap();
                (FakeListener::Tcp(l), at)
            }
            _ => {
                let name = unique("fake");
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
                let l = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
                let at = Endpoint::parse(&format!("unix-stream:@{name}")).unwrap();
                (FakeListener::Unix(l), at)
            }
        }
    }

    fn accept(&self) -> Box<dyn Socket> {
        match self {
            FakeListener::Tcp(l) => {
                let (s, _) = l.accept().unwrap();
                s.set_read_timeout(Some(LIMIT)).unwrap();
                Box::new(s)
            }
            FakeListener::Unix(l) => {
                let (s, _) = l.accept().unwrap();
                s.set_read_timeout(Some(LIMIT)).unwrap();
                Box::new(s)
            }
        }
    }
}

#[test]
fn a_publisher_that_sends_a_length_past_the_limit_ends_the_subscription_with_a_typed_error() {
    for t in PLAIN {
        // A real channel beside it, whose subscriber must not notice.
        let (mut real, real_at) = publisher(t, "beside");
        let mut other = Subscriber::<Tick>::connect(&real_at).expect("subscribe");
        assert_eq!(real.wait_for_subscribers(1, LIMIT), 1);

        let (listener, at) = FakeListener::bind(t);
        let fake = std::thread::spawn(move || {
            let mut s = listener.accept();
            let (k, _) = read_frame(&mut *s).expect("the subscriber's hello");
            assert_eq!(k, kind::HANDSHAKE);
            let (k, _) = read_frame(&mut *s).expect("its stream flags");
            assert_eq!(k, kind::HANDSHAKE);
            let h = hello::encode_hello(1, &TypeSig::of::<Tick>(), 1 << 16, false);
            s.write_all(&frame(kind::HANDSHAKE, &h)).unwrap();
            // The stream part: no lz4, no pool.
            s.write_all(&frame(kind::HANDSHAKE, &[0; 32])).unwrap();
            let (k, ready) = read_frame(&mut *s).expect("its ready");
            assert_eq!((k, ready[0]), (kind::HANDSHAKE, handshake::READY));
            // A 5-byte varint far past the frame limit.
            s.write_all(&[0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap();
            // Held open: the subscriber must end the connection itself.
            s
        });
        let mut sub = Subscriber::<Tick>::connect(&at).expect("subscribe to the fake");
        let e = sub.recv_timeout(LIMIT).expect_err("no message");
        assert!(
            matches!(e, RecvError::Stream(StreamError::Frame(_))),
            "{t:?}: {e}"
        );
        // The subscription is over.
        assert!(matches!(sub.try_recv(), Err(RecvError::PeerDied)), "{t:?}");
        let mut s = fake.join().expect("the fake publisher");
        drop(sub);
        wait_closed(&mut *s, "the connection was not closed");
        // The other channel goes on.
        real.send(&Tick { seq: 5 }).expect("send");
        assert_eq!(other.recv_timeout(LIMIT).expect("recv").seq, 5);
    }
}

#[test]
fn a_tcp_publisher_without_tls_refuses_to_start_unless_its_policy_says_anyone() {
    let name = SocketName::Abstract(unique("tcp-policy"));
    let e = Publisher::<Tick>::builder(name.clone())
        .listen("tcp://127.0.0.1:0")
        .create()
        .expect_err("a same-uid policy cannot admit a TCP subscriber");
    assert!(
        matches!(e, PublishError::TcpPolicy { tls: false, .. }),
        "{e}"
    );
    // Nothing was left bound: the same name, said Anyone, starts.
    let p = Publisher::<Tick>::builder(name)
        .listen("tcp://127.0.0.1:0")
        .policy(isocall::Policy::Anyone)
        .create()
        .expect("publisher");
    assert!(p.addresses()[0].is_tcp());
    // A string that is no address is refused too.
    let e = Publisher::<Tick>::builder(SocketName::Abstract(unique("bad")))
        .listen("tcp://no-port")
        .create()
        .expect_err("no port");
    assert!(matches!(e, PublishError::Address(_)), "{e}");
}

#[cfg(feature = "tls")]
#[test]
fn a_tls_subscriber_with_an_untrusted_certificate_is_refused_and_the_trusted_one_served() {
    use isocall::channel::SubscribeError;
    let pki = common::pki::Pki::get();
    let (mut publisher, at) = publisher(Transport::Tls, "tls-stranger");
    let stranger = at.clone().tls(
        pki.client_as(common::pki::STRANGER_CN)
            .server_name("localhost"),
    );
    let e = Subscriber::<Tick>::connect(&stranger).expect_err("an untrusted certificate");
    assert!(
        matches!(e, SubscribeError::Stream(_) | SubscribeError::Handshake(_)),
        "{e}"
    );
    let mut good = Subscriber::<Tick>::connect(&at).expect("the trusted subscriber");
    assert_eq!(publisher.wait_for_subscribers(1, LIMIT), 1);
    publisher.send(&Tick { seq: 9 }).expect("send");
    assert_eq!(good.recv_timeout(LIMIT).expect("recv").seq, 9);
    assert_eq!(publisher.subscribers(), 1);
}
