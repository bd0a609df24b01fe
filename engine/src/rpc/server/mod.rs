//! The serving side: a source of connections, an accept thread that admits
//! them, handshakes, and worker threads that serve connections fairly.
//!
//! One thread accepts. It reads each new socket's credentials and applies
//! the policy and the connection caps at once, before anything is spent on
//! it ([`admission`]); an admitted socket gets a short-lived handshake
//! thread (so a client that never answers delays no one, and the number of
//! handshakes under way is capped), which hands the finished connection to
//! a worker, round-robin. A worker serves its connections in turns, at
//! most [`BATCH`] frames of one connection per turn, and when none has work
//! it waits per the server's strategy: spins (`BusySpin`), spins a while
//! then sleeps (`Adaptive`), or sleeps at once (`Blocking`) in `poll` on
//! the connections' doorbells.
//!
//! A worker never waits on one connection: a connection whose reply ring
//! is full is paused (its requests stay queued in its ring) while the
//! others are served, and closed if it stays full past
//! [`Limits::reply_timeout`]. A connection that sends garbage, closes, or
//! whose client dies is dropped; the others are not disturbed.

mod accept;
mod admission;
mod builder;
mod ctx;
mod source;
mod stream;
mod worker;

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub use builder::{Limits, ServerBuilder};
pub use ctx::{BlobAccessError, CallCtx};
pub use source::{Source, hand_off};

use crate::WaitStrategy;
use crate::rpc::address::{Compression, Endpoint};
use crate::rpc::error::ServerError;
use crate::rpc::policy::Policy;
use crate::segment::SegmentLayout;
use crate::sys::{EventFd, Poller, Ready, SocketName, unlink_socket};
use builder::Registered;

/// Most frames one connection gets served per turn of its worker.
pub const BATCH: usize = 32;

/// A worker's inbox of new connections.
struct Inbox {
    new: Mutex<Vec<worker::Conn>>,
    /// Set (Release) after a connection is put in `new`: the worker looks
    /// at this flag on every turn, and takes the lock only when it is set.
    /// A lock on every turn was two locked instructions per request served
    /// in busy mode, each waiting for the reply's stores to drain (they go
    /// to lines the client's core holds).
    has_new: AtomicBool,
    /// Calls served by this worker. Written only by it, by a load and a
    /// plain store (no locked add per turn, for the same reason); read by
    /// `Server::stats`.
    calls: AtomicU64,
    bell: EventFd,
    /// What the worker sleeps on: this bell, the server's stop signal and
    /// its connections' descriptors.
    poller: Poller,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
    reclaimed: AtomicU64,
    large_mapped: AtomicU64,
    paused: AtomicU64,
}

/// What every thread of a server shares.
struct Shared {
    service: String,
    /// The shared-memory names it listens on (removed when it stops).
    sockets: Vec<SocketName>,
    /// The stream addresses it listens on, as bound.
    streams: Vec<crate::stream::Address>,
    compression: Compression,
    /// Its TCP addresses run TLS.
    tcp_tls: bool,
    policy: Policy,
    strategy: WaitStrategy,
    layout: SegmentLayout,
    limits: Limits,
    max_frame: usize,
    trusted: bool,
    methods: Vec<Registered>,
    stopping: AtomicBool,
    /// Rung when the server stops: ends every wait of its threads.
    stop: EventFd,
    stats: Counters,
    admission: admission::Admission,
    next_worker: AtomicUsize,
    workers: Vec<Arc<Inbox>>,
}

/// A server's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections that completed the handshake.
    pub accepted: u64,
    /// Connections refused: policy, caps, version.
    pub refused: u64,
    /// Handshakes that failed otherwise (timeout, client abort, garbage).
    pub failed: u64,
    /// Connections closed (cleanly, by death, for garbage or limits).
    pub closed: u64,
    /// Requests and messages served.
    pub calls: u64,
    /// Blob slots reclaimed from dead clients.
    pub reclaimed: u64,
    /// Large blobs mapped (each once per connection, however often used).
    pub large_mapped: u64,
    /// Times a connection was paused on a full reply ring.
    pub paused: u64,
    /// Connections open now (handshakes under way included).
    pub open: u64,
}

/// A running server. Dropping it stops the threads (every wait of theirs
/// ends on its stop signal or its own deadline), closes every connection
/// with a CLOSE frame and removes the socket file.
pub struct Server {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("service", &self.shared.service)
            .field("sockets", &self.shared.sockets)
            .field("streams", &self.shared.streams)
            .finish()
    }
}

fn spawn(b: ServerBuilder, plan: source::Plan) -> Result<Server, ServerError> {
    let tcp_tls = !matches!(plan.tcp_security, crate::stream::Security::Anyone);
    let (conns, sockets, streams) = source::Conns::open(plan)?;
    let stop = EventFd::new()?;
    let workers: Vec<Arc<Inbox>> = (0..b.workers)
        .map(|_| {
            let inbox = Inbox {
                new: Mutex::new(Vec::new()),
                has_new: AtomicBool::new(false),
                calls: AtomicU64::new(0),
                bell: EventFd::new()?,
                poller: Poller::new()?,
            };
            let poller = &inbox.poller;
            poller.watch(inbox.bell.as_fd(), worker::BELL_TOKEN, Ready::Readable)?;
            poller.watch(stop.as_fd(), worker::STOP_TOKEN, Ready::Readable)?;
            Ok(Arc::new(inbox))
        })
        .collect::<std::io::Result<_>>()?;
    let shared = Arc::new(Shared {
        service: b.service,
        sockets,
        streams,
        compression: b.compression,
        tcp_tls,
        policy: b.policy,
        strategy: b.strategy,
        layout: b.layout,
        admission: admission::Admission::new(&b.limits),
        limits: b.limits,
        max_frame: b.max_frame,
        trusted: b.trusted,
        methods: b.methods,
        stopping: AtomicBool::new(false),
        stop,
        stats: Counters::default(),
        next_worker: AtomicUsize::new(0),
        workers,
    });
    let mut threads = Vec::new();
    let stop_all = |shared: &Shared, threads: Vec<JoinHandle<()>>| {
        shared.stopping.store(true, Ordering::Release);
        let _ = shared.stop.notify();
        for t in threads {
            let _ = t.join();
        }
    };
    for (i, inbox) in shared.workers.iter().enumerate() {
        let (sh, inbox) = (shared.clone(), inbox.clone());
        match std::thread::Builder::new()
            .name(format!("isocall-worker-{i}"))
            .spawn(move || worker::run(&sh, &inbox))
        {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop_all(&shared, threads);
                return Err(e.into());
            }
        }
    }
    let sh = shared.clone();
    match std::thread::Builder::new()
        .name("isocall-accept".into())
        .spawn(move || accept::run(&sh, &conns))
    {
        Ok(t) => threads.push(t),
        Err(e) => {
            stop_all(&shared, threads);
            return Err(e.into());
        }
    }
    tracing::debug!(service = %shared.service, "server listening");
    Ok(Server { shared, threads })
}

impl Server {
    /// The shared-memory socket it listens on (the first, if it listens
    /// on several; `None` for a server fed by a handoff socket, or one that
    /// listens on stream sockets only).
    pub fn socket(&self) -> Option<&SocketName> {
        self.shared.sockets.first()
    }

    /// Every address it listens on: shared-memory names, then stream
    /// addresses as bound (a TCP port 0 replaced by the port picked).
    pub fn addresses(&self) -> Vec<Endpoint> {
        let shm = self.shared.sockets.iter().map(Endpoint::from);
        let streams = self.shared.streams.iter().cloned().map(Endpoint::from);
        shm.chain(streams).collect()
    }

    /// Its counters.
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            accepted: l(&c.accepted),
            refused: l(&c.refused),
            failed: l(&c.failed),
            // Acquire: pairs with the Release add in `worker::close`, so the
            // `reclaimed` loaded below includes every counted close.
            closed: c.closed.load(Ordering::Acquire),
            calls: self.shared.workers.iter().map(|w| l(&w.calls)).sum(),
            reclaimed: l(&c.reclaimed),
            large_mapped: l(&c.large_mapped),
            paused: l(&c.paused),
            open: self.shared.admission.open() as u64,
        }
    }

    /// Blocks while the server accepts connections: forever for a server
    /// on a socket (for a process whose only job is serving), until the
    /// other end of its handoff socket hangs up for one fed by a handoff
    /// socket (e.g. its supervisor retired it).
    pub fn run(mut self) {
        if let Some(t) = self.threads.pop() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        let _ = self.shared.stop.notify();
        for w in &self.shared.workers {
            let _ = w.bell.notify();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for s in &self.shared.sockets {
            unlink_socket(s);
        }
        tracing::debug!(service = %self.shared.service, "server stopped");
    }
}

/// Stack of a handshake thread: it makes a segment and little else.
fn handshake_stack() -> usize {
    256 << 10
}

// The admission counts are shared with the channels' publishers
// (`crate::channel`), which admit subscribers the same way.
pub(crate) use admission::{Admission, Key, Ticket};
