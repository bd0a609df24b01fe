//! Building a server: where its connections come from, who may connect,
//! its limits, its methods and its threads.

use std::time::Duration;

use crate::WaitStrategy;
use crate::rpc::AppError;
use crate::rpc::address::{At, Compression, Endpoint, IntoEndpoint, push_endpoint};
use crate::rpc::body::{self, Body, Checked};
use crate::rpc::error::ServerError;
use crate::rpc::handshake::{MAX_MESSAGE, MAX_NAME, MethodInfo};
use crate::rpc::large::LargeLimits;
use crate::rpc::method::{Message, Method};
use crate::rpc::policy::Policy;
use crate::segment::SegmentLayout;
use crate::stream::{Address, AddressError, Security};
use crate::sys::SocketName;

use super::ctx::CallCtx;
use super::source::{Plan, Source};
use super::{Server, spawn};

/// The limits a server holds its clients to. Every one of them bounds
/// what a client can make the server spend (threads, memory, descriptors,
/// time); the defaults suit a server whose clients are its own user's
/// programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// How long a handshake may take (default 5 s).
    pub handshake_timeout: Duration,
    /// How long a connection may leave its reply ring full (its client
    /// reads no replies) before it is closed (default 5 s). Meanwhile its
    /// requests wait and the worker serves the other connections.
    pub reply_timeout: Duration,
    /// How long a connection may stay idle (no request) before it is
    /// closed (default: no limit; the connection caps bound what idle
    /// clients hold).
    pub idle_timeout: Option<Duration>,
    /// Most connections at once, handshakes included (default 1024).
    pub max_connections: usize,
    /// Most connections at once from one user id (default 256).
    pub max_connections_per_uid: usize,
    /// Most handshakes under way at once (default 64).
    pub max_handshakes: usize,
    /// Most handshakes under way at once from one user id (default 16).
    pub max_handshakes_per_uid: usize,
    /// Caps on each connection's large blobs (default 256 blobs, 4 GiB).
    pub large: LargeLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(5),
            idle_timeout: None,
            max_connections: 1024,
            max_connections_per_uid: 256,
            max_handshakes: 64,
            max_handshakes_per_uid: 16,
            large: LargeLimits {
                count: 256,
                bytes: 4 << 30,
            },
        }
    }
}

/// Why a handler's call failed, as the worker reports it.
pub(crate) enum Failure {
    App(AppError),
    BadRequest(String),
    TooLarge(String),
}

/// A registered method's body runner: the request bytes (private, or the
/// frame of a trusted connection), whether the connection is trusted, the
/// call's context, where to write the reply and the worker's scratch
/// arena for serializing it; returns the reply's length.
pub(crate) type Run = dyn Fn(
        &[u8],
        bool,
        &mut CallCtx<'_>,
        &mut [u8],
        &mut rkyv::ser::allocator::Arena,
    ) -> Result<usize, Failure>
    + Send
    + Sync;

/// A method as the server holds it.
pub(crate) struct Registered {
    pub(crate) info: MethodInfo,
    pub(crate) run: Box<Run>,
}

/// The request, checked or (trusted connection) taken as valid.
fn request<T: Body>(bytes: &[u8], trusted: bool) -> Result<Checked<'_, T>, Failure> {
    if trusted {
        // SAFETY: `trusted` only on a server built with `unsafe fn
        // ServerBuilder::trusted` (clients write valid request archives and
        // leave frames alone); the frame stays in the ring until the
        // handler returned.
        #[allow(unsafe_code)]
        Ok(unsafe { Checked::trusted(bytes) })
    } else {
        body::check::<T>(bytes).map_err(|e| Failure::BadRequest(e.to_string()))
    }
}

/// Builds a [`Server`]: its source of connections, policy, limits,
/// methods and threads.
pub struct ServerBuilder {
    pub(crate) source: Option<Source>,
    /// More places to listen on (shared-memory names, stream addresses).
    pub(crate) listen: Vec<Endpoint>,
    /// Listening sockets handed over by a supervisor, with their
    /// addresses (see [`Listener::adopt`](crate::stream::Listener::adopt)).
    pub(crate) adopted: Vec<(Address, std::os::fd::OwnedFd)>,
    /// The first address given that did not parse (reported by `spawn`).
    pub(crate) bad_address: Option<AddressError>,
    pub(crate) compression: Compression,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<std::sync::Arc<crate::stream::TlsServer>>,
    pub(crate) service: String,
    pub(crate) policy: Policy,
    pub(crate) workers: usize,
    pub(crate) strategy: WaitStrategy,
    pub(crate) layout: SegmentLayout,
    pub(crate) limits: Limits,
    pub(crate) max_frame: usize,
    pub(crate) trusted: bool,
    pub(crate) methods: Vec<Registered>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("service", &self.service)
            .field("source", &self.source)
            .field("listen", &self.listen)
            .field("methods", &self.methods.len())
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// A server listening on `socket`, with the defaults: same-uid policy,
    /// one worker, `Adaptive` waits, 1 MiB rings and an 8 MiB blob pool
    /// per connection (committed only as used), frames up to 64 KiB, the
    /// default [`Limits`].
    pub fn new(socket: SocketName) -> Self {
        let service = match &socket {
            SocketName::Path(p) => p
                .file_name()
                .map_or("server".into(), |n| n.to_string_lossy().into_owned()),
            SocketName::Abstract(n) => n.clone(),
        };
        Self::with_source(Source::Listen(socket), service)
    }

    /// A server listening on every one of `addresses` at once: shared-memory
    /// names (a [`SocketName`], `"@name"`, a path, a service name) and
    /// stream addresses (`"tcp://0.0.0.0:7000"`, `"unix:/path"`,
    /// `"unix-stream:@name"`); the same methods are served on each. A TCP
    /// port 0 picks a free port (see [`Server::addresses`]). The service is
    /// named after the first address.
    ///
    /// Over TCP a client has no credentials: the policy must admit it by
    /// its TLS certificate (`tls`, feature `tls`, and
    /// [`Policy::Certificate`](crate::rpc::Policy)), or say
    /// [`Policy::Anyone`] explicitly; otherwise `spawn` refuses to start.
    /// An address that does not parse is reported by `spawn` too.
    ///
    /// [`Server::addresses`]: crate::rpc::Server::addresses
    pub fn listen<I>(addresses: I) -> Self
    where
        I: IntoIterator,
        I::Item: IntoEndpoint,
    {
        let mut bad = None;
        let mut all = Vec::new();
        for a in addresses {
            push_endpoint(&mut all, &mut bad, a);
        }
        let service = all
            .first()
            .map_or_else(|| "server".to_string(), service_name);
        let mut builder = Self::sourceless(service);
        builder.listen = all;
        builder.bad_address = bad;
        builder
    }

    /// Listens on `address` too (a shared-memory name or a stream address,
    /// as for [`listen`](Self::listen)): e.g. a supervised server that
    /// also takes connections over TCP.
    #[must_use]
    pub fn add_listener(mut self, address: impl IntoEndpoint) -> Self {
        push_endpoint(&mut self.listen, &mut self.bad_address, address);
        self
    }

    /// TLS on the server's TCP addresses (feature `tls`): it presents the
    /// certificate of `tls`, and requires and checks client certificates
    /// if `tls` has a client CA. The policy then sees each client's
    /// verified certificate ([`Policy::Certificate`](crate::rpc::Policy)).
    /// Unix sockets stay plain (their clients are known by credentials).
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls(mut self, tls: crate::stream::TlsServer) -> Self {
        self.tls = Some(std::sync::Arc::new(tls));
        self
    }

    /// Whether lz4 is granted to stream clients that ask for it (default
    /// [`Compression::Auto`]: granted; `Off`: refused). Shared memory is
    /// never compressed.
    #[must_use]
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }

    /// A server for `service` fed by `source` (a listener, or a handoff
    /// socket another process passes connected sockets over).
    pub fn with_source(source: Source, service: impl Into<String>) -> Self {
        let mut b = Self::sourceless(service.into());
        b.source = Some(source);
        b
    }

    fn sourceless(service: String) -> Self {
        // Register for membarrier now, while the process most likely has
        // one thread: registering later, with threads running, waits for
        // an RCU grace period (milliseconds) on the first connection.
        crate::sys::heavy_barrier_available();
        ServerBuilder {
            source: None,
            listen: Vec::new(),
            adopted: Vec::new(),
            bad_address: None,
            compression: Compression::Auto,
            #[cfg(feature = "tls")]
            tls: None,
            service,
            policy: Policy::default(),
            workers: 1,
            strategy: WaitStrategy::Adaptive,
            layout: SegmentLayout {
                ring_capacity: 1 << 20,
                blobs: isocall_blob::PoolConfig::with_budget(8 << 20),
            },
            limits: Limits::default(),
            max_frame: 64 << 10,
            trusted: false,
            methods: Vec::new(),
        }
    }

    /// Who may connect (checked right after `accept`).
    #[must_use]
    pub fn policy(mut self, p: Policy) -> Self {
        self.policy = p;
        self
    }

    /// Number of worker threads (at least 1).
    #[must_use]
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// How idle workers wait.
    #[must_use]
    pub fn wait_strategy(mut self, s: WaitStrategy) -> Self {
        self.strategy = s;
        self
    }

    /// The segment of each connection (ring capacity, blob classes).
    #[must_use]
    pub fn layout(mut self, l: SegmentLayout) -> Self {
        self.layout = l;
        self
    }

    /// All the limits at once.
    #[must_use]
    pub fn limits(mut self, l: Limits) -> Self {
        self.limits = l;
        self
    }

    /// How long a handshake may take.
    #[must_use]
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.limits.handshake_timeout = d;
        self
    }

    /// How long a connection may leave its reply ring full before it is
    /// closed (see [`Limits::reply_timeout`]).
    #[must_use]
    pub fn reply_timeout(mut self, d: Duration) -> Self {
        self.limits.reply_timeout = d;
        self
    }

    /// How long a connection may stay idle before it is closed.
    #[must_use]
    pub fn idle_timeout(mut self, d: Option<Duration>) -> Self {
        self.limits.idle_timeout = d;
        self
    }

    /// Most connections at once, in all and from one user id.
    #[must_use]
    pub fn max_connections(mut self, total: usize, per_uid: usize) -> Self {
        self.limits.max_connections = total;
        self.limits.max_connections_per_uid = per_uid;
        self
    }

    /// Largest call frame payload accepted and sent (at least 4 KiB).
    #[must_use]
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes.max(4096);
        self
    }

    /// Reads requests in place in the ring, without copying them out or
    /// validating them.
    ///
    /// # Safety
    ///
    /// Every client must only send valid archives of each method's request
    /// type and never write a frame after publishing it: an invalid archive
    /// read unchecked is undefined behaviour.
    // SAFETY: the caller's promise (see `# Safety`) is what makes the
    // unchecked reads in `request` sound; this only records it.
    #[must_use]
    #[allow(unsafe_code)] // declares a contract; the unchecked read is in `body`
    pub unsafe fn trusted(mut self) -> Self {
        self.trusted = true;
        self
    }

    /// Registers the call `method`: `handler` gets the archived request
    /// (copied out of the ring and validated unless the server is
    /// trusted) and returns the reply or an application error.
    #[must_use]
    pub fn method<Req, Resp, F>(mut self, method: Method<Req, Resp>, handler: F) -> Self
    where
        Req: Body,
        Resp: Body,
        F: Fn(&Req::Archived, &mut CallCtx<'_>) -> Result<Resp, AppError> + Send + Sync + 'static,
    {
        self.methods.push(Registered {
            info: MethodInfo {
                name: method.name().to_string(),
                idempotent: method.is_idempotent(),
                signature: method.signature(),
            },
            run: Box::new(move |bytes, trusted, ctx, out, arena| {
                let req = request::<Req>(bytes, trusted)?;
                let resp = handler(req.get(), ctx).map_err(Failure::App)?;
                body::encode(&resp, out, arena).map_err(|e| Failure::TooLarge(e.to_string()))
            }),
        });
        self
    }

    /// Registers the one-way `message` (for `Client::send`).
    #[must_use]
    pub fn message<Msg, F>(mut self, message: Message<Msg>, handler: F) -> Self
    where
        Msg: Body,
        F: Fn(&Msg::Archived, &mut CallCtx<'_>) + Send + Sync + 'static,
    {
        self.methods.push(Registered {
            info: MethodInfo {
                name: message.name().to_string(),
                idempotent: false,
                signature: message.signature(),
            },
            run: Box::new(move |bytes, trusted, ctx, _, _| {
                let msg = request::<Msg>(bytes, trusted)?;
                handler(msg.get(), ctx);
                Ok(0)
            }),
        });
        self
    }

    /// Checks the configuration, binds the socket (or takes the handoff
    /// socket) and starts the threads.
    ///
    /// # Errors
    ///
    /// [`ServerError::Listen`] (a live server on the socket, no
    /// permission), `DuplicateMethod`, `NameTooLong`, `TooManyMethods`,
    /// `Layout`, `BadLimit`, `BadHandoff`.
    pub fn spawn(mut self) -> Result<Server, ServerError> {
        let mut names: Vec<&str> = self.methods.iter().map(|m| m.info.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(ServerError::DuplicateMethod {
                name: w[0].to_string(),
            });
        }
        if let Some(m) = self.methods.iter().find(|m| m.info.name.len() > MAX_NAME) {
            return Err(ServerError::NameTooLong {
                len: m.info.name.len(),
                max: MAX_NAME,
            });
        }
        let infos: Vec<MethodInfo> = self.methods.iter().map(|m| m.info.clone()).collect();
        let hello = crate::rpc::handshake::encode_hello(
            &crate::rpc::handshake::ServerHelloHead {
                magic: 0,
                version: 0,
                nmethods: 0,
                max_frame: 0,
                conn: 0,
            },
            &infos,
        );
        if hello.len() > MAX_MESSAGE {
            return Err(ServerError::TooManyMethods {
                count: self.methods.len(),
                max: self.methods.len() * MAX_MESSAGE / hello.len(),
            });
        }
        let l = &self.limits;
        for (what, v) in [
            ("max_connections", l.max_connections),
            ("max_connections_per_uid", l.max_connections_per_uid),
            ("max_handshakes", l.max_handshakes),
            ("max_handshakes_per_uid", l.max_handshakes_per_uid),
            ("large.count", l.large.count),
        ] {
            if v == 0 {
                return Err(ServerError::BadLimit { what });
            }
        }
        // A layout that cannot make a segment fails now, not per client.
        crate::segment::Segment::create("isocall:layout-check", &self.layout)?;
        let plan = self.plan()?;
        spawn(self, plan)
    }

    /// Where it listens, checked: every address parsed, a source at all,
    /// and TCP only with a policy that can admit a TCP client.
    fn plan(&mut self) -> Result<Plan, ServerError> {
        if let Some(e) = self.bad_address.take() {
            return Err(ServerError::Address(e));
        }
        #[cfg(feature = "tls")]
        let tls = self.tls.clone();
        #[cfg(not(feature = "tls"))]
        let tls: Option<()> = None;
        let mut plan = Plan {
            source: self.source.take(),
            shm: Vec::new(),
            unix: Vec::new(),
            tcp: Vec::new(),
            tcp_security: Security::Anyone,
            adopted: Vec::new(),
        };
        // A TCP client has no credentials: without TLS, the policy must
        // say that anyone may call.
        let policy = &self.policy;
        let tcp_admitted = |a: &Address| {
            if a.is_tcp() && !policy.admits(false, tls.is_some()) {
                return Err(ServerError::TcpPolicy {
                    address: a.to_string(),
                    tls: tls.is_some(),
                });
            }
            Ok(())
        };
        for e in std::mem::take(&mut self.listen) {
            match e.at {
                At::Stream(a) if a.is_tcp() => {
                    tcp_admitted(&a)?;
                    plan.tcp.push(a);
                }
                At::Stream(a) => plan.unix.push(a),
                At::Shm(name) => plan.shm.push(name),
                At::Service(ref n) => {
                    plan.shm
                        .push(crate::rpc::default_socket(n).map_err(|source| {
                            ServerError::Listen {
                                socket: n.clone(),
                                source,
                            }
                        })?)
                }
            }
        }
        for (a, fd) in std::mem::take(&mut self.adopted) {
            tcp_admitted(&a)?;
            plan.adopted.push((a, fd));
        }
        #[cfg(feature = "tls")]
        if let Some(t) = tls {
            plan.tcp_security = Security::Tls(t);
        }
        if plan.source.is_none()
            && plan.shm.is_empty()
            && plan.unix.is_empty()
            && plan.tcp.is_empty()
            && plan.adopted.is_empty()
        {
            return Err(ServerError::NoSource);
        }
        Ok(plan)
    }
}

/// A service's name from the first address it listens on.
fn service_name(e: &Endpoint) -> String {
    match &e.at {
        At::Shm(SocketName::Path(p)) => p
            .file_name()
            .map_or("server".into(), |n| n.to_string_lossy().into_owned()),
        At::Shm(SocketName::Abstract(n)) | At::Service(n) => n.clone(),
        At::Stream(a) => a.to_string(),
        #[allow(unreachable_patterns)]
        _ => "server".into(),
    }
}
