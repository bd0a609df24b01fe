//! The serving side: a listener, handshakes, and worker threads that serve
//! connections fairly.
//!
//! One thread accepts; each accepted socket gets a short-lived handshake
//! thread (so a client that never answers delays no one), which hands the
//! finished connection to a worker, round-robin. A worker serves its
//! connections in turns, at most [`BATCH`] frames of one connection per
//! turn, and when none has work it waits per the server's strategy: spins
//! (`BusySpin`), spins a while then sleeps (`Adaptive`), or sleeps at once
//! (`Blocking`) in `poll` on the connections' doorbells. A connection that
//! sends garbage, closes, or whose client dies is dropped (its blobs
//! reclaimed); the others are not disturbed.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use isocall_blob::{BlobError, BlobHandle, BlobMut, Pool};
use isocall_ringbuf::{SharedRegion, Spinner};

use super::archive::{self, Body};
use super::large::LargeCache;
use super::policy::Policy;
use super::wire::{
    self, CallHead, ClientHello, HELLO_MAGIC, PROTOCOL_VERSION, ServerHello, Status, kind,
};
use crate::WaitStrategy;
use crate::endpoint::{Doorbells, Receiver, Sender, Side, TransportError, endpoint};
use crate::liveness::{Liveness, PeerWatch};
use crate::segment::{Segment, SegmentLayout};
use crate::sys::{
    EventFd, PeerCred, SocketName, accept_seqpacket, listen_seqpacket, peer_cred, poll_readable,
    recv_message, recv_with_fds, send_with_fds, unlink_socket,
};

/// Most frames one connection gets served per turn of its worker.
pub const BATCH: usize = 32;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket could not be bound (e.g. a live server holds it).
    #[error("cannot listen on {socket}: {source}")]
    Listen {
        /// The socket.
        socket: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration is not valid.
    #[error("bad server configuration: {0}")]
    Config(String),
    /// [`ServerBuilder::supervised`] in a process no supervisor started,
    /// or whose supervisor is gone.
    #[error("not a supervised service: {0}")]
    NotSupervised(String),
    /// The OS refused a thread or an eventfd.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// What a handler sees of its call besides the request.
pub struct CallCtx<'a> {
    peer: PeerCred,
    blobs: &'a [BlobHandle],
    pool: Option<&'a Pool<SharedRegion>>,
    reply_blobs: Vec<BlobHandle>,
    large: &'a mut LargeCache,
    sock: std::os::fd::BorrowedFd<'a>,
}

impl<'a> CallCtx<'a> {
    /// The calling process's credentials.
    pub fn peer(&self) -> PeerCred {
        self.peer
    }

    /// Handles of the blobs that came with the request.
    pub fn blobs(&self) -> &[BlobHandle] {
        self.blobs
    }

    /// The connection's blob pool.
    pub fn pool(&self) -> Option<&'a Pool<SharedRegion>> {
        self.pool
    }

    /// Accepts request blob `i` to read and write in place (send it back
    /// with [`reply_blob`](Self::reply_blob), or drop it to free it).
    ///
    /// # Errors
    ///
    /// `NoSuchBlob` if there is no blob `i`, `NoPool` if there is no pool;
    /// the pool's errors for a handle that is stale or not in flight to the
    /// server.
    pub fn accept_mut(&self, i: usize) -> Result<BlobMut<'a, SharedRegion>, BlobError> {
        let h = self.blobs.get(i).ok_or(BlobError::NoSuchBlob {
            index: i,
            count: self.blobs.len(),
        })?;
        let pool = self.pool.ok_or(BlobError::NoPool)?;
        pool.accept_mut(h)
    }

    /// The bytes of request blob `i` when it is a large blob (see
    /// [`LargeBlob`](super::LargeBlob)), to read and write in place; mapped
    /// on first use, cached for the connection's life.
    ///
    /// # Errors
    ///
    /// `NoSuchBlob` if blob `i` is missing, `NotLarge` if it is a pool
    /// blob, `LargeUnavailable` if it was never shared (or its memfd was
    /// refused), `LargeReadOnly`, `LargeTooShort` if it is longer than its
    /// memfd.
    pub fn large(&mut self, i: usize) -> Result<&mut [u8], BlobError> {
        let h = *self.blobs.get(i).ok_or(BlobError::NoSuchBlob {
            index: i,
            count: self.blobs.len(),
        })?;
        let id = super::large_id(&h).ok_or(BlobError::NotLarge { index: i })?;
        let mem = self.large.get(self.sock, id).map_err(|why| {
            tracing::debug!(id, why, "large blob unavailable");
            BlobError::LargeUnavailable { id }
        })?;
        let bytes = mem.bytes_mut().ok_or(BlobError::LargeReadOnly { id })?;
        let mapped = bytes.len();
        bytes
            .get_mut(..h.len as usize)
            .ok_or(BlobError::LargeTooShort {
                id,
                len: h.len as usize,
                mapped,
            })
    }

    /// Returns request blob `i`, a large blob, with the reply (its bytes
    /// are the client's; this only names it in the answer).
    ///
    /// # Errors
    ///
    /// `NoSuchBlob` or `NotLarge` if blob `i` is not a large blob,
    /// `TooManyBlobs` past the reply's blob limit.
    pub fn reply_large(&mut self, i: usize) -> Result<(), BlobError> {
        let h = *self.blobs.get(i).ok_or(BlobError::NoSuchBlob {
            index: i,
            count: self.blobs.len(),
        })?;
        if super::large_id(&h).is_none() {
            return Err(BlobError::NotLarge { index: i });
        }
        if self.reply_blobs.len() >= wire::MAX_BLOBS {
            return Err(BlobError::TooManyBlobs {
                max: wire::MAX_BLOBS,
            });
        }
        self.reply_blobs.push(h);
        Ok(())
    }

    /// Sends `blob` back with the reply.
    ///
    /// # Errors
    ///
    /// As [`BlobMut::send`]; `TooManyBlobs` past [`wire::MAX_BLOBS`] blobs.
    pub fn reply_blob(&mut self, blob: BlobMut<'_, SharedRegion>) -> Result<(), BlobError> {
        if self.reply_blobs.len() >= wire::MAX_BLOBS {
            return Err(BlobError::TooManyBlobs {
                max: wire::MAX_BLOBS,
            });
        }
        let h = blob.send()?;
        self.reply_blobs.push(h);
        Ok(())
    }
}

type Erased =
    dyn Fn(&[u8], &mut CallCtx<'_>, &mut [u8]) -> Result<usize, (Status, String)> + Send + Sync;

struct Method {
    name: String,
    one_way: bool,
    idempotent: bool,
    run: Box<Erased>,
}

/// Where a server's connections come from.
enum Source {
    /// A socket it binds and accepts on.
    Listen(SocketName),
    /// The control socket a [`Supervisor`](crate::supervise::Supervisor)
    /// handed down: each message carries one connected socket.
    Supervisor(OwnedFd),
}

/// Builds a [`Server`]: its socket, policy, methods and threads.
pub struct ServerBuilder {
    source: Source,
    service: String,
    policy: Policy,
    workers: usize,
    strategy: WaitStrategy,
    layout: SegmentLayout,
    handshake_timeout: Duration,
    reply_timeout: Duration,
    max_frame: usize,
    trusted: bool,
    methods: Vec<Method>,
}

impl ServerBuilder {
    /// A server on `socket` with the defaults: same-uid policy, one
    /// worker, `Adaptive` waits, 1 MiB rings and an 8 MiB blob pool per
    /// connection, 5 s handshakes, frames up to 64 KiB.
    pub fn new(socket: SocketName) -> Self {
        let service = match &socket {
            SocketName::Path(p) => p
                .file_name()
                .map_or("server".into(), |n| n.to_string_lossy().into_owned()),
            SocketName::Abstract(n) => n.clone(),
        };
        Self::with_source(Source::Listen(socket), service)
    }

    /// A server for a process a [`Supervisor`](crate::supervise::Supervisor)
    /// started: it takes the control socket the supervisor handed down
    /// (as standard input, which is then pointed at `/dev/null`) and
    /// serves the connections the supervisor sends over it. The process is
    /// killed when the supervisor dies (`PR_SET_PDEATHSIG`, checked
    /// against a supervisor that died before this call) and
    /// [`Server::run`] returns when the supervisor retires it.
    ///
    /// # Errors
    ///
    /// [`ServerError::NotSupervised`] naming what is missing: the
    /// environment the supervisor sets, a control socket on standard
    /// input, or a supervisor that is still alive.
    pub fn supervised() -> Result<Self, ServerError> {
        let child = crate::supervise::ChildEnv::take().map_err(ServerError::NotSupervised)?;
        Ok(Self::with_source(
            Source::Supervisor(child.control),
            child.service,
        ))
    }

    fn with_source(source: Source, service: String) -> Self {
        // Register for membarrier now, while the process most likely has
        // one thread: registering later, with threads running, waits for
        // an RCU grace period (milliseconds) on the first connection.
        crate::sys::heavy_barrier_available();
        ServerBuilder {
            source,
            service,
            policy: Policy::default(),
            workers: 1,
            strategy: WaitStrategy::Adaptive,
            layout: SegmentLayout {
                ring_capacity: 1 << 20,
                blobs: isocall_blob::PoolConfig::with_budget(8 << 20),
            },
            handshake_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(5),
            max_frame: 64 << 10,
            trusted: false,
            methods: Vec::new(),
        }
    }

    /// Who may connect.
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

    /// How long a handshake may take.
    #[must_use]
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// Largest call frame payload accepted and sent (at least 4 KiB).
    #[must_use]
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes.max(4096);
        self
    }

    /// Skips bytecheck validation of requests.
    ///
    /// # Safety
    ///
    /// Every client must only send valid archives of each method's request
    /// type: an invalid archive read unchecked is undefined behaviour.
    // SAFETY: the caller's promise (see `# Safety`) is what makes the
    // unchecked reads in `archive::read` sound; this only records it.
    #[must_use]
    #[allow(unsafe_code)] // declares a contract; the unchecked read is in `archive`
    pub unsafe fn trusted(mut self) -> Self {
        self.trusted = true;
        self
    }

    /// Registers method `name`: `handler` gets the archived request, read
    /// in place in the ring (validated unless trusted), and returns the
    /// reply or an error message.
    #[must_use]
    pub fn method<Req, Resp, F>(mut self, name: &str, handler: F) -> Self
    where
        Req: Body,
        Resp: Body,
        F: Fn(&Req::Archived, &mut CallCtx<'_>) -> Result<Resp, String> + Send + Sync + 'static,
    {
        let trusted = self.trusted;
        self.methods.push(Method {
            name: name.to_string(),
            one_way: false,
            idempotent: false,
            run: Box::new(move |body, ctx, out| {
                let req = archive::read::<Req::Archived>(body, trusted)
                    .map_err(|e| (Status::BadRequest, e))?;
                let resp = handler(req, ctx).map_err(|e| (Status::AppError, e))?;
                archive::write_into(&resp, out).map_err(|e| (Status::TooLarge, e))
            }),
        });
        self
    }

    /// Registers method `name` as [`method`](Self::method) does, and
    /// declares it idempotent: running it twice has the effect of running
    /// it once, so a supervised client retries it on the restarted service
    /// when the server dies during the call. Undeclared methods are never
    /// run twice.
    #[must_use]
    pub fn idempotent_method<Req, Resp, F>(mut self, name: &str, handler: F) -> Self
    where
        Req: Body,
        Resp: Body,
        F: Fn(&Req::Archived, &mut CallCtx<'_>) -> Result<Resp, String> + Send + Sync + 'static,
    {
        self = self.method::<Req, Resp, F>(name, handler);
        if let Some(m) = self.methods.last_mut() {
            m.idempotent = true;
        }
        self
    }

    /// Registers a one-way method `name` (for [`Client::send_message`](super::Client::send_message)).
    #[must_use]
    pub fn message<Msg, F>(mut self, name: &str, handler: F) -> Self
    where
        Msg: Body,
        F: Fn(&Msg::Archived, &mut CallCtx<'_>) + Send + Sync + 'static,
    {
        let trusted = self.trusted;
        self.methods.push(Method {
            name: name.to_string(),
            one_way: true,
            idempotent: false,
            run: Box::new(move |body, ctx, _| {
                let msg = archive::read::<Msg::Archived>(body, trusted)
                    .map_err(|e| (Status::BadRequest, e))?;
                handler(msg, ctx);
                Ok(0)
            }),
        });
        self
    }

    /// Binds the socket and starts the threads.
    ///
    /// # Errors
    ///
    /// [`ServerError::Listen`] (a live server on the socket, no permission),
    /// [`ServerError::Config`] (duplicate method names, a bad layout).
    pub fn spawn(self) -> Result<Server, ServerError> {
        let mut names: Vec<&str> = self.methods.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(ServerError::Config(format!(
                "method {:?} registered twice",
                w[0]
            )));
        }
        if self.methods.iter().any(|m| m.name.len() > 1024) {
            return Err(ServerError::Config(
                "a method name longer than 1024 bytes".into(),
            ));
        }
        let (socket, conns) = match self.source {
            Source::Listen(name) => {
                let listener = listen_seqpacket(&name).map_err(|source| ServerError::Listen {
                    socket: name.to_string(),
                    source,
                })?;
                (Some(name), Conns::Listener(listener))
            }
            Source::Supervisor(control) => (None, Conns::Supervisor(control)),
        };
        let service = self.service;
        let stop = Arc::new(EventFd::new()?);
        let workers: Vec<Arc<Inbox>> = (0..self.workers)
            .map(|_| {
                Ok(Arc::new(Inbox {
                    new: Mutex::new(Vec::new()),
                    bell: EventFd::new()?,
                }))
            })
            .collect::<std::io::Result<_>>()?;
        let shared = Arc::new(Shared {
            service,
            socket,
            policy: self.policy,
            strategy: self.strategy,
            layout: self.layout,
            handshake_timeout: self.handshake_timeout,
            reply_timeout: self.reply_timeout,
            max_frame: self.max_frame,
            methods: self.methods,
            stopping: AtomicBool::new(false),
            stats: Counters::default(),
            next_worker: AtomicUsize::new(0),
            workers,
        });
        let mut threads = Vec::new();
        for (i, inbox) in shared.workers.iter().enumerate() {
            let (sh, inbox) = (shared.clone(), inbox.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("isocall-worker-{i}"))
                    .spawn(move || worker(&sh, &inbox))?,
            );
        }
        let (sh, st) = (shared.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name("isocall-accept".into())
                .spawn(move || accept_loop(&sh, &conns, &st))?,
        );
        tracing::debug!(service = %shared.service, "server listening");
        Ok(Server {
            shared,
            stop,
            threads,
        })
    }
}

struct Inbox {
    new: Mutex<Vec<Conn>>,
    bell: EventFd,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
    calls: AtomicU64,
    reclaimed: AtomicU64,
    large_mapped: AtomicU64,
}

struct Shared {
    service: String,
    socket: Option<SocketName>,
    policy: Policy,
    strategy: WaitStrategy,
    layout: SegmentLayout,
    handshake_timeout: Duration,
    reply_timeout: Duration,
    max_frame: usize,
    methods: Vec<Method>,
    stopping: AtomicBool,
    stats: Counters,
    next_worker: AtomicUsize,
    workers: Vec<Arc<Inbox>>,
}

/// A server's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections that completed the handshake.
    pub accepted: u64,
    /// Connections the policy or a version mismatch refused.
    pub refused: u64,
    /// Handshakes that failed otherwise (timeout, client abort).
    pub failed: u64,
    /// Connections closed (cleanly, by death, or for garbage).
    pub closed: u64,
    /// Requests and messages served.
    pub calls: u64,
    /// Blob slots reclaimed from dead or closed clients.
    pub reclaimed: u64,
    /// Large blobs mapped (each once per connection, however often used).
    pub large_mapped: u64,
}

/// A running server. Dropping it stops the threads, closes every
/// connection and removes the socket file.
pub struct Server {
    shared: Arc<Shared>,
    stop: Arc<EventFd>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("service", &self.shared.service)
            .field("socket", &self.shared.socket)
            .finish()
    }
}

impl Server {
    /// The socket it listens on (`None` for a supervised server, which
    /// gets its connections from its supervisor).
    pub fn socket(&self) -> Option<&SocketName> {
        self.shared.socket.as_ref()
    }

    /// Its counters.
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            accepted: l(&c.accepted),
            refused: l(&c.refused),
            failed: l(&c.failed),
            // Acquire: pairs with the Release add in `close`, so the
            // `reclaimed` loaded below includes every counted close.
            closed: c.closed.load(Ordering::Acquire),
            calls: l(&c.calls),
            reclaimed: l(&c.reclaimed),
            large_mapped: l(&c.large_mapped),
        }
    }

    /// Blocks while the server accepts connections: forever for a server
    /// on a socket (for a process whose only job is serving), until its
    /// supervisor retires it for a supervised one.
    pub fn run(mut self) {
        if let Some(t) = self.threads.pop() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        let _ = self.stop.notify();
        for w in &self.shared.workers {
            let _ = w.bell.notify();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(s) = &self.shared.socket {
            unlink_socket(s);
        }
        tracing::debug!(service = %self.shared.service, "server stopped");
    }
}

/// Where the accept thread gets connected sockets.
enum Conns {
    Listener(OwnedFd),
    Supervisor(OwnedFd),
}

impl Conns {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conns::Listener(f) | Conns::Supervisor(f) => f.as_fd(),
        }
    }

    /// The next connected socket, with the segment the supervisor made
    /// for it if it sent one; `Ok(None)` when the supervisor hung up (the
    /// server is retired), `Err` for one that failed (skipped).
    fn next(&self) -> std::io::Result<Option<(OwnedFd, Option<OwnedFd>)>> {
        match self {
            Conns::Listener(l) => accept_seqpacket(l.as_fd()).map(|s| Some((s, None))),
            Conns::Supervisor(c) => {
                let mut tag = [0u8; 8];
                let (n, fds) = recv_with_fds(c.as_fd(), &mut tag, 2)?;
                if n == 0 && fds.is_empty() {
                    return Ok(None);
                }
                let mut fds = fds.into_iter();
                match (tag[0], fds.next()) {
                    (crate::supervise::CONNECT, Some(sock)) => Ok(Some((sock, fds.next()))),
                    (t, _) => Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("supervisor message {t:#x} without a socket"),
                    )),
                }
            }
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, conns: &Conns, stop: &EventFd) {
    let mut handshakes: Vec<JoinHandle<()>> = Vec::new();
    let mut conn_id = 0u32;
    while !shared.stopping.load(Ordering::Acquire) {
        match poll_readable(&[conns.fd(), stop.as_fd()], None) {
            Ok(r) if r.get(1) == Some(&true) => break,
            Ok(r) if r.first() == Some(&true) => {}
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accept poll failed; the server stops accepting");
                break;
            }
        }
        let (sock, premade) = match conns.next() {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracing::debug!(service = %shared.service, "the supervisor retired this server");
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        conn_id = conn_id.wrapping_add(1);
        let (sh, id) = (shared.clone(), conn_id);
        handshakes.retain(|h| !h.is_finished());
        match std::thread::Builder::new()
            .name("isocall-handshake".into())
            .spawn(move || match handshake(&sh, sock, id, premade) {
                Ok(conn) => {
                    sh.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let w = sh.next_worker.fetch_add(1, Ordering::Relaxed) % sh.workers.len();
                    let inbox = &sh.workers[w];
                    inbox
                        .new
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(conn);
                    let _ = inbox.bell.notify();
                }
                Err(Refusal::Refused(reason)) => {
                    sh.stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(conn = id, %reason, "connection refused");
                }
                Err(Refusal::Failed(reason)) => {
                    sh.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(conn = id, %reason, "handshake failed");
                }
            }) {
            Ok(h) => handshakes.push(h),
            Err(e) => tracing::warn!(error = %e, "no thread for a handshake; connection dropped"),
        }
    }
    for h in handshakes {
        let _ = h.join();
    }
}

enum Refusal {
    Refused(String),
    Failed(String),
}

fn refuse(sock: &OwnedFd, reason: String) -> Refusal {
    let mut m = vec![wire::REFUSED];
    m.extend_from_slice(reason.as_bytes());
    let _ = send_with_fds(sock.as_fd(), &m, &[]);
    Refusal::Refused(reason)
}

/// One connection, served by a worker.
struct Conn {
    id: u32,
    large: LargeCache,
    peer: PeerCred,
    tx: Sender,
    rx: Receiver,
    pool: Option<Pool<SharedRegion>>,
    _watch: PeerWatch,
    _sock: OwnedFd,
}

/// A segment the supervisor made ahead of need, if it is fit for this
/// server: this server's layout, and neither side attached yet. Anything
/// else in it is checked like everything a client writes.
fn premade_segment(shared: &Shared, fd: OwnedFd) -> Option<Segment> {
    let seg = Segment::open(fd)
        .inspect_err(|e| tracing::debug!(error = %e, "premade segment refused"))
        .ok()?;
    let fresh = [Side::Client, Side::Server]
        .iter()
        .all(|&s| seg.side_state(s).state == crate::segment::SIDE_ABSENT);
    (fresh && seg.layout() == shared.layout).then_some(seg)
}

fn handshake(
    shared: &Shared,
    sock: OwnedFd,
    id: u32,
    premade: Option<OwnedFd>,
) -> Result<Conn, Refusal> {
    let span = tracing::debug_span!("isocall_handshake", conn = id);
    let _enter = span.enter();
    let failed = |what: &str, e: &dyn std::fmt::Display| Refusal::Failed(format!("{what}: {e}"));
    let deadline = crate::deadline_in(shared.handshake_timeout);
    let peer = peer_cred(sock.as_fd()).map_err(|e| failed("SO_PEERCRED", &e))?;
    let mut buf = [0u8; 256];
    let (n, _) = recv_message(sock.as_fd(), &mut buf, 0, deadline)
        .map_err(|e| failed("client hello", &e))?;
    const N: usize = std::mem::size_of::<ClientHello>();
    let hello: ClientHello = match buf[..n].get(..N) {
        Some(b) => bytemuck::pod_read_unaligned(b),
        None => {
            return Err(refuse(
                &sock,
                format!("client hello of {n} bytes, expected {N}"),
            ));
        }
    };
    if hello.magic != HELLO_MAGIC {
        return Err(refuse(
            &sock,
            "not an isocall client (bad hello magic)".into(),
        ));
    }
    if hello.version != PROTOCOL_VERSION {
        return Err(refuse(
            &sock,
            format!(
                "protocol version mismatch: server {PROTOCOL_VERSION}, client {}",
                hello.version
            ),
        ));
    }
    if let Err(reason) = shared.policy.check(&peer) {
        return Err(refuse(
            &sock,
            format!("policy refused pid {}: {reason}", peer.pid),
        ));
    }
    let name = format!("isocall:{}:{id}", shared.service);
    // Creating a segment costs milliseconds (its memory is reserved and
    // zeroed): a supervisor sends one made ahead of need.
    let segment = match premade.and_then(|fd| premade_segment(shared, fd)) {
        Some(s) => s,
        None => Segment::create(&name, &shared.layout).map_err(|e| failed("segment", &e))?,
    };

    let names: Vec<&str> = shared.methods.iter().map(|m| m.name.as_str()).collect();
    segment.write_method_table(&names);
    let bells = Doorbells::new().map_err(|e| failed("doorbells", &e))?;
    let mut msg = vec![wire::HELLO];
    let sh = ServerHello {
        magic: HELLO_MAGIC,
        version: PROTOCOL_VERSION,
        nmethods: shared.methods.len() as u32,
        max_frame: shared.max_frame as u32,
        conn: id,
    };
    msg.extend_from_slice(bytemuck::bytes_of(&sh));
    for m in &shared.methods {
        msg.extend_from_slice(&(m.name.len() as u16).to_le_bytes());
        msg.push(if m.idempotent {
            wire::METHOD_IDEMPOTENT
        } else {
            0
        });
        msg.extend_from_slice(m.name.as_bytes());
    }
    send_with_fds(
        sock.as_fd(),
        &msg,
        &[segment.fd(), bells.c2s.as_fd(), bells.s2c.as_fd()],
    )
    .map_err(|e| failed("hello", &e))?;
    let (n, _) = recv_message(sock.as_fd(), &mut buf, 0, deadline)
        .map_err(|e| failed("client ready", &e))?;
    match buf[0] {
        wire::READY => {}
        wire::ABORT => {
            return Err(Refusal::Failed(format!(
                "client aborted: {}",
                String::from_utf8_lossy(&buf[1..n])
            )));
        }
        t => return Err(Refusal::Failed(format!("unexpected message tag {t:#x}"))),
    }
    let segment = Arc::new(segment);
    segment.attach_side(Side::Server);
    let liveness = Liveness::connection(segment.clone(), Side::Server);
    let (tx, rx) = endpoint(
        segment.clone(),
        Side::Server,
        &bells,
        shared.strategy,
        liveness.clone(),
    )
    .map_err(|e| failed("endpoint", &e))?;
    let pool = segment
        .blob_pool(Side::Server)
        .map_err(|e| failed("blob pool", &e))?;
    let watch = PeerWatch::connection(
        sock.try_clone().map_err(|e| failed("dup", &e))?,
        liveness,
        segment,
        Side::Server,
        Some(bells.c2s.clone()),
    )
    .map_err(|e| failed("peer watch", &e))?;
    tracing::debug!(pid = peer.pid, uid = peer.uid, "connection accepted");

    Ok(Conn {
        id,
        large: LargeCache::default(),
        peer,
        tx,
        rx,
        pool,
        _watch: watch,
        _sock: sock,
    })
}

fn worker(shared: &Shared, inbox: &Inbox) {
    let mut conns: Vec<Conn> = Vec::new();
    // The idle spin before sleeping: as long as a ring's wait spins, with
    // the CPU given up now and then (the client may be waiting for it).
    let mut spinner = Spinner::new(shared.strategy);
    let mut scratch = Scratch::default();
    loop {
        if shared.stopping.load(Ordering::Acquire) {
            break;
        }
        {
            let mut new = inbox.new.lock().unwrap_or_else(|p| p.into_inner());
            conns.append(&mut new);
        }
        let mut worked = false;
        let mut i = 0;
        while i < conns.len() {
            match serve(shared, &mut conns[i], &mut scratch) {
                Ok(n) => {
                    worked |= n > 0;
                    i += 1;
                }
                Err(reason) => {
                    let c = conns.swap_remove(i);
                    close(shared, c, &reason);
                }
            }
        }
        if scratch.calls > 0 {
            shared
                .stats
                .calls
                .fetch_add(std::mem::take(&mut scratch.calls), Ordering::Relaxed);
        }
        if worked {
            spinner = Spinner::new(shared.strategy);
            continue;
        }
        if !spinner.spin() {
            wait_for_work(&mut conns, inbox);
        }
    }
    for c in conns {
        close(shared, c, "server stopping");
    }
}

/// Sleeps until a connection has a frame (its doorbell rings), a new
/// connection arrives, or the server stops.
fn wait_for_work(conns: &mut [Conn], inbox: &Inbox) {
    for c in conns.iter_mut() {
        match c.rx.arm_doorbell() {
            Ok(false) => {}
            // A frame is there (or the ring is corrupt: `serve` says so).
            _ => return,
        }
    }
    let mut fds = Vec::with_capacity(conns.len() + 1);
    fds.push(inbox.bell.as_fd());
    fds.extend(conns.iter().map(|c| c.rx.doorbell().as_fd()));
    if let Ok(ready) = poll_readable(&fds, None) {
        if ready[0] {
            let _ = inbox.bell.drain();
        }
        for (c, r) in conns.iter().zip(&ready[1..]) {
            if *r {
                let _ = c.rx.doorbell().drain();
            }
        }
    }
}

fn close(shared: &Shared, c: Conn, reason: &str) {
    // Reclaim and count first, then count the close: whoever sees this
    // connection in `closed` also sees its slots in `reclaimed`.
    if let Some(pool) = &c.pool {
        let r = pool.reclaim(isocall_blob::Side::A);
        shared
            .stats
            .reclaimed
            .fetch_add(r.freed() as u64, Ordering::Relaxed);
    }
    // Release: pairs with the Acquire load of `closed` in `Server::stats`,
    // which loads `reclaimed` after it.
    shared.stats.closed.fetch_add(1, Ordering::Release);
    tracing::debug!(conn = c.id, pid = c.peer.pid, reason, "connection closed");
}

#[derive(Default)]
struct Scratch {
    handles: Vec<BlobHandle>,
    /// Calls served since the last flush into the shared counter (one
    /// locked add per turn, not per call).
    calls: u64,
}

/// Serves up to [`BATCH`] frames of `c`. `Err` closes the connection.
fn serve(shared: &Shared, c: &mut Conn, scratch: &mut Scratch) -> Result<usize, String> {
    let mut unpublished = 0;
    for n in 0..BATCH {
        let frame = match c.rx.try_recv() {
            Ok(Some(f)) => f,
            Ok(None) => {
                if unpublished > 0 {
                    c.tx.publish();
                }
                return Ok(n);
            }
            Err(TransportError::PeerDied) => return Err("client died or closed its socket".into()),
            Err(e) => return Err(format!("ring: {e}")),
        };
        let k = frame.kind();
        match k {
            kind::REQUEST | kind::MESSAGE => {}
            kind::CANCEL => {
                frame.release();
                continue;
            }
            kind::CLOSE => {
                frame.release();
                return Err("client closed".into());
            }
            other => return Err(format!("unexpected frame kind {other} from a client")),
        }
        let p = wire::parse(frame.payload()).map_err(|e| format!("garbage call frame: {e}"))?;
        let head = p.head;
        scratch.handles.clear();
        scratch.handles.extend(wire::handles(p.blobs));
        scratch.calls += 1;
        let method = shared.methods.get(head.method as usize);
        let mapped = c.large.mapped;
        let mut ctx = CallCtx {
            peer: c.peer,
            blobs: &scratch.handles,
            pool: c.pool.as_ref(),
            reply_blobs: Vec::new(),
            large: &mut c.large,
            sock: c._sock.as_fd(),
        };
        if k == kind::MESSAGE {
            if let Some(m) = method.filter(|m| m.one_way) {
                let r = catch_unwind(AssertUnwindSafe(|| (m.run)(p.body, &mut ctx, &mut [])));
                if !matches!(r, Ok(Ok(_))) {
                    tracing::debug!(conn = c.id, method = %m.name, "one-way message failed");
                }
            }
            frame.release();
            free_unaccepted(c.pool.as_ref(), &scratch.handles);
            continue;
        }
        // The reply is written in place: the body first lands after room
        // for every possible handle, then moves down once the handler said
        // how many blobs it returns.
        let room = shared.max_frame.min(c.tx.max_payload());
        // Room is there almost always: no clock read unless the ring is full.
        let mut g = match c.tx.try_reserve(kind::RESPONSE, room) {
            Ok(g) => g,
            Err(TransportError::Full) => {
                c.tx.reserve(
                    kind::RESPONSE,
                    room,
                    Some(crate::deadline_in(shared.reply_timeout)),
                )
                .map_err(|e| format!("the client does not read its replies: {e}"))?
            }
            Err(e) => return Err(format!("reply ring: {e}")),
        };
        let far = wire::HEAD + wire::MAX_BLOBS * wire::HANDLE;
        let outcome = match method {
            Some(m) if !m.one_way => {
                let buf = &mut g.bytes_mut()[far..];
                match catch_unwind(AssertUnwindSafe(|| (m.run)(p.body, &mut ctx, buf))) {
                    Ok(r) => r,
                    Err(panic) => Err((Status::HandlerPanicked, panic_message(&panic))),
                }
            }
            _ => Err((Status::UnknownMethod, head.method.to_string())),
        };
        let reply_blobs = std::mem::take(&mut ctx.reply_blobs);
        drop(ctx);
        if c.large.mapped != mapped {
            shared
                .stats
                .large_mapped
                .fetch_add(c.large.mapped - mapped, Ordering::Relaxed);
        }
        frame.release();
        free_unaccepted(c.pool.as_ref(), &scratch.handles);
        let (status, len) = match outcome {
            Ok(len) => (Status::Ok, len),
            Err((status, msg)) => {
                // An error carries no blobs; the ones sent are recalled.
                for h in reply_blobs.iter().filter(|h| super::large_id(h).is_none()) {
                    if let Some(pool) = &c.pool {
                        drop(pool.recall(h));
                    }
                }
                let bytes = msg.as_bytes();
                let len = bytes.len().min(room - far);
                g.bytes_mut()[far..far + len].copy_from_slice(&bytes[..len]);
                (status, len)
            }
        };
        let blobs: &[BlobHandle] = if status == Status::Ok {
            &reply_blobs
        } else {
            &[]
        };
        let at = wire::HEAD + blobs.len() * wire::HANDLE;
        g.bytes_mut().copy_within(far..far + len, at);
        let reply = CallHead {
            id: head.id,
            method: head.method,
            status: status as u32,
            nblobs: blobs.len() as u32,
            body_len: len as u32,
            _reserved: 0,
        };
        wire::write_head(g.bytes_mut(), &reply, blobs);
        g.commit(at + len);
        // Replies go out in groups of up to 8 (one publication each), and
        // at once when no request is waiting: a caller that waits for one
        // reply gets it without delay, a pipelining caller gets them
        // batched.
        unpublished += 1;
        if unpublished == 8 || !matches!(c.rx.try_recv(), Ok(Some(_))) {
            c.tx.publish();
            unpublished = 0;
        }
    }
    c.tx.publish();
    Ok(BATCH)
}

/// Frees request blobs the handler neither accepted nor sent back.
fn free_unaccepted(pool: Option<&Pool<SharedRegion>>, handles: &[BlobHandle]) {
    if let Some(pool) = pool {
        for h in handles.iter().filter(|h| super::large_id(h).is_none()) {
            drop(pool.accept(h));
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
