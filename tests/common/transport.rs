//! The transports every call test runs on, and [`on_every_transport!`],
//! which makes one test per transport of each test function given.
//!
//! A test function takes the [`Transport`]; it starts its server with
//! [`Transport::server`] (in this process, [`serve_on`]; in a child,
//! [`server_process_on`]) and connects to the [`Endpoint`] that gives
//! back, exactly as it would to a shared-memory name.

use std::sync::atomic::{AtomicU64, Ordering};

use isocall::rpc::{Compression, Endpoint};
use isocall::{Policy, Server, ServerBuilder};

use super::{PARENT_LIMIT, Peer, ROLE_ENV, param, receive_from_parent};

/// One way a connection runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Shared memory: rings and a blob pool in a segment.
    Shm,
    /// A Unix stream socket (abstract name), no compression.
    UnixStream,
    /// TCP on loopback, plain, compression off.
    Tcp,
    /// TCP under TLS: the server's certificate checked by the client, the
    /// client's by the server, the server's policy by certificate.
    Tls,
    /// TCP with lz4 negotiated.
    TcpLz4,
}

impl Transport {
    /// Every transport this build has.
    pub const ALL: &[Transport] = &[
        Transport::Shm,
        Transport::UnixStream,
        Transport::Tcp,
        #[cfg(feature = "tls")]
        Transport::Tls,
        Transport::TcpLz4,
    ];

    /// Its name in parameters.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Shm => "shm",
            Transport::UnixStream => "unix-stream",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::TcpLz4 => "tcp-lz4",
        }
    }

    /// The transport named `name`.
    pub fn named(name: &str) -> Transport {
        match name {
            "shm" => Transport::Shm,
            "unix-stream" => Transport::UnixStream,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            "tcp-lz4" => Transport::TcpLz4,
            other => panic!("unknown transport {other}"),
        }
    }

    /// Whether it is a stream socket (blobs copied, no segment).
    pub fn is_stream(self) -> bool {
        self != Transport::Shm
    }

    /// Whether it is TCP (no credentials).
    pub fn is_tcp(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls | Transport::TcpLz4)
    }

    /// A place for a server of this transport no other test uses (TCP: a
    /// free port on loopback, picked when it binds).
    pub fn address(self, tag: &str) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "isocall-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        match self {
            Transport::Shm => format!("@{name}"),
            // Unique per test process: runs side by side do not collide.
            Transport::UnixStream => format!("unix-stream:@{name}-{}", std::process::id()),
            Transport::Tcp | Transport::Tls | Transport::TcpLz4 => "tcp://127.0.0.1:0".into(),
        }
    }

    /// A server builder listening on `address` as this transport wants:
    /// over TCP the policy says `Anyone` (plain) or allows the test
    /// client's certificate (TLS).
    pub fn server(self, address: &str) -> ServerBuilder {
        let b = ServerBuilder::listen([address]);
        match self {
            Transport::Shm | Transport::UnixStream => b,
            Transport::Tcp | Transport::TcpLz4 => b.policy(Policy::Anyone),
            #[cfg(feature = "tls")]
            Transport::Tls => {
                let pki = super::pki::Pki::get();
                b.tls(pki.server()).policy(Policy::Certificate(vec![
                    isocall::stream::CertMatch::CommonName(super::pki::CLIENT_CN.into()),
                ]))
            }
            #[cfg(not(feature = "tls"))]
            Transport::Tls => panic!("TLS needs the feature tls"),
        }
    }

    /// The endpoint a client of this transport dials for a server bound
    /// at `bound`.
    pub fn endpoint(self, bound: &Endpoint) -> Endpoint {
        let e = bound.clone();
        match self {
            Transport::Shm | Transport::UnixStream => e,
            Transport::Tcp => e.compression(Compression::Off),
            Transport::TcpLz4 => e.compression(Compression::Lz4),
            // The server's certificate is for localhost.
            #[cfg(feature = "tls")]
            Transport::Tls => e.tls(super::pki::Pki::get().client().server_name("localhost")),
            #[cfg(not(feature = "tls"))]
            Transport::Tls => panic!("TLS needs the feature tls"),
        }
    }
}

/// Channels: a publisher of this transport, and where its subscribers
/// connect.
impl Transport {
    /// A publisher builder on the shared-memory name `socket` that also
    /// listens as this transport wants (a stream transport: a fresh
    /// address of it; over TCP the policy says `Anyone`, or, TLS, allows
    /// the test client's certificate). Its subscribers connect to
    /// [`channel_at`](Self::channel_at).
    pub fn publisher<T: isocall::rpc::Body>(
        self,
        socket: isocall::SocketName,
    ) -> isocall::channel::PublisherBuilder<T> {
        self.publisher_in(socket, None)
    }

    /// As [`publisher`](Self::publisher), in a process that uses the
    /// PKI another process made in `pki` (TLS).
    pub fn publisher_in<T: isocall::rpc::Body>(
        self,
        socket: isocall::SocketName,
        pki: Option<&str>,
    ) -> isocall::channel::PublisherBuilder<T> {
        let _ = pki;
        let b = isocall::channel::Publisher::<T>::builder(socket);
        match self {
            Transport::Shm => b,
            Transport::UnixStream => b.listen(self.address("chan").as_str()),
            Transport::Tcp | Transport::TcpLz4 => {
                b.listen("tcp://127.0.0.1:0").policy(Policy::Anyone)
            }
            #[cfg(feature = "tls")]
            Transport::Tls => {
                let pki = pki.map_or_else(
                    || super::pki::Pki::get().server(),
                    |d| super::pki::Pki::at(d).server(),
                );
                b.listen("tcp://127.0.0.1:0")
                    .tls(pki)
                    .policy(Policy::Certificate(vec![
                        isocall::stream::CertMatch::CommonName(super::pki::CLIENT_CN.into()),
                    ]))
            }
            #[cfg(not(feature = "tls"))]
            Transport::Tls => panic!("TLS needs the feature tls"),
        }
    }

    /// Where a subscriber of this transport connects to `publisher`.
    pub fn channel_at<T: isocall::rpc::Body>(
        self,
        publisher: &isocall::channel::Publisher<T>,
    ) -> Endpoint {
        match self {
            Transport::Shm => Endpoint::shared_memory(publisher.socket().clone()),
            _ => self.endpoint(&publisher.addresses()[0]),
        }
    }
}

/// A stream connection to `at` as transport `t` dials it, before any
/// handshake of isocall's (under TLS for [`Transport::Tls`]).
pub fn dial(t: Transport, at: &Endpoint) -> isocall::stream::Connection {
    let a = at.stream_address().expect("a stream endpoint");
    let deadline = std::time::Instant::now() + PARENT_LIMIT;
    match t {
        #[cfg(feature = "tls")]
        Transport::Tls => {
            isocall::stream::connect_tls(a, &super::pki::Pki::get().client(), deadline).unwrap()
        }
        _ => isocall::stream::connect(a, deadline).unwrap(),
    }
}

/// The words that tell a child process how to dial `at` on transport `t`
/// (see [`endpoint_from_parent`]).
pub fn endpoint_params(t: Transport, at: &Endpoint) -> String {
    #[cfg(feature = "tls")]
    let pki = format!("pki={}", super::pki::Pki::get().dir.display());
    #[cfg(not(feature = "tls"))]
    let pki = String::new();
    format!("transport={} at={at} {pki}", t.name())
}

/// In a child process: the endpoint the parent's message names (see
/// [`endpoint_params`]).
pub fn endpoint_from_parent(msg: &str) -> Endpoint {
    let t = Transport::named(param(msg, "transport"));
    let at = Endpoint::parse(param(msg, "at")).unwrap();
    match t {
        #[cfg(feature = "tls")]
        Transport::Tls => at.tls(
            super::pki::Pki::at(param(msg, "pki"))
                .client()
                .server_name("localhost"),
        ),
        _ => t.endpoint(&at),
    }
}

/// Environment variable that tells a supervised test service where the
/// test PKI is (its TLS server's files).
pub const PKI_ENV: &str = "ISOCALL_TEST_PKI";

/// A supervisor of the test `service` (see `common::services`) whose
/// instances listen on a fresh address of transport `t` and whose clients
/// connect there (shared memory: over the socketpairs it hands down).
pub fn supervisor_on(t: Transport, name: &str, service: &str) -> isocall::SupervisorBuilder {
    let b = super::services::supervisor(name, service);
    match t {
        Transport::Shm => b,
        Transport::UnixStream => b.address(t.address(name).as_str()),
        _ => {
            // The supervisor binds it and picks the port, once for all
            // its instances (a port picked here and let go could be taken,
            // by any connection's local end, before the supervisor binds).
            let at = Endpoint::parse("tcp://127.0.0.1:0").unwrap();
            #[cfg(feature = "tls")]
            let b = if t == Transport::Tls {
                b.env(PKI_ENV, super::pki::Pki::get().dir.as_os_str())
            } else {
                b
            };
            b.address(t.endpoint(&at))
        }
    }
}

/// A server built by `build` (from this transport's base builder) in this
/// process, and the endpoint to dial it.
pub fn serve_on(
    t: Transport,
    tag: &str,
    build: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> (Server, Endpoint) {
    let server = build(t.server(&t.address(tag))).spawn().expect("server");
    let at = t.endpoint(&server.addresses()[0]);
    (server, at)
}

/// Starts this test binary's ignored test `entry` as a server process of
/// transport `t`, telling it `params` too; returns once it listens, with
/// the endpoint to dial. The entry calls [`serve_transport_for_parent`].
pub fn server_process_on(entry: &str, t: Transport, tag: &str, params: &str) -> (Peer, Endpoint) {
    server_process_via(&[], entry, t, &t.address(tag), params)
}

/// As [`server_process_on`], the server process started by the command
/// `launcher` (see [`Peer::spawn_via`]) and listening on `address`.
pub fn server_process_via(
    launcher: &[String],
    entry: &str,
    t: Transport,
    address: &str,
    params: &str,
) -> (Peer, Endpoint) {
    let mut peer = Peer::spawn_via(launcher, entry, "server");
    #[cfg(feature = "tls")]
    let pki = format!("pki={}", super::pki::Pki::get().dir.display());
    #[cfg(not(feature = "tls"))]
    let pki = String::new();
    peer.send(
        &format!("transport={} address={address} {pki} {params}", t.name(),),
        &[],
    );
    let line = peer.read_line(PARENT_LIMIT);
    let bound = line
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("the server process said {line:?}"));
    let at = t.endpoint(&Endpoint::parse(bound).unwrap());
    (peer, at)
}

/// In a server process that [`server_process_on`] started (and nowhere
/// else: it returns at once without [`ROLE_ENV`]): spawns the server
/// `build` makes from the transport's base builder and the parent's
/// message, says where it listens, and serves until the parent closes
/// the socket or kills us.
pub fn serve_transport_for_parent(build: impl FnOnce(ServerBuilder, &str) -> ServerBuilder) {
    if std::env::var(ROLE_ENV).is_err() {
        return;
    }
    let (msg, _, mut sock) = receive_from_parent();
    let t = Transport::named(param(&msg, "transport"));
    let base = match t {
        #[cfg(feature = "tls")]
        Transport::Tls => {
            let pki = super::pki::Pki::at(param(&msg, "pki"));
            ServerBuilder::listen([param(&msg, "address")])
                .tls(pki.server())
                .policy(Policy::Certificate(vec![
                    isocall::stream::CertMatch::CommonName(super::pki::CLIENT_CN.into()),
                ]))
        }
        _ => t.server(param(&msg, "address")),
    };
    let server = build(base, &msg).spawn().expect("server");
    use std::io::{Read, Write};
    writeln!(sock, "ready {}", server.addresses()[0]).expect("tell the parent");
    let _ = sock.read(&mut [0u8; 1]);
    drop(server);
}

/// As [`on_every_transport!`], for the stream transports only.
#[macro_export]
macro_rules! on_stream_transports {
    ($($name:ident),* $(,)?) => {
        mod unix_stream {
            $(#[test] fn $name() { super::$name($crate::common::transport::Transport::UnixStream) })*
        }
        mod tcp {
            $(#[test] fn $name() { super::$name($crate::common::transport::Transport::Tcp) })*
        }
        #[cfg(feature = "tls")]
        mod tls {
            $(#[test] fn $name() { super::$name($crate::common::transport::Transport::Tls) })*
        }
        mod tcp_lz4 {
            $(#[test] fn $name() { super::$name($crate::common::transport::Transport::TcpLz4) })*
        }
    };
}

/// Makes, for each test function named, one test per transport: modules
/// `shm`, `unix_stream`, `tcp`, `tls` (feature `tls`) and `tcp_lz4`, each
/// with a test of that name calling the function with its transport.
#[macro_export]
macro_rules! on_every_transport {
    ($($name:ident),* $(,)?) => {
        mod shm {
            $(#[test] fn $name() { super::$name($crate::common::transport::Transport::Shm) })*
        }
        $crate::on_stream_transports!($($name),*);
    };
}
