//! The calling side of a connection: [`Client`] for one thread,
//! [`SharedClient`] for many, and the [`Caller`] trait both (and the
//! supervised client) implement.
//!
//! A call writes its request in place into the ring, then waits for the
//! reply with the client's strategy: whoever waits reads the replies of
//! every call in flight and keeps the ones that are not its own for their
//! callers. A reply's body is copied into the client's private memory,
//! validated there, and handed out as a [`Reply`] guard (see the copy rule
//! in [`crate::rpc::body`]).

mod caller;
mod core;
mod io;
mod lock;
pub(crate) mod reply;
mod shared;
mod slots;
mod stream;
mod window;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isocall_blob::{BlobHandle, Pool};
use isocall_ringbuf::SharedRegion;
use rkyv::util::AlignedVec;

pub use caller::Caller;
pub use reply::{Pending, Reply};
pub use shared::SharedClient;

use self::core::{Info, holds_back};
use self::io::{Outgoing, Waiter, next_frame, recycle, route, send_on, stashed_reply, wait_on};
use self::reply::{Abandoned, ReplyBlobSet};
use self::window::{Entry, Window};
use crate::WaitStrategy;
use crate::endpoint::TransportError;
use crate::rpc::address::{At, IntoEndpoint};
use crate::rpc::body::{self, Body, Inbox};
use crate::rpc::error::{CallError, ConnectError, Refusal};
use crate::rpc::large::LargeBlob;
// The link's enums under the names the ring endpoint's types had here: the
// transport seam changes no line of the call paths below.
use crate::rpc::link::{Deferring, Link, Rx, SendFrames, Tx};
use crate::rpc::method::{Message, MessageRef, Method, MethodRef};
use crate::rpc::policy::Policy;
use crate::rpc::wire::{CloseReason, kind};
use crate::segment::SegmentLayout;
use crate::stream::StreamTx;
use crate::sys::{PeerCred, SocketName, connect_seqpacket, send_with_fds};

/// How a client connects and waits.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientOptions {
    /// How the client waits for replies (default `Adaptive`).
    pub strategy: WaitStrategy,
    /// How long the handshake may take (default 5 s).
    pub handshake_timeout: Duration,
    /// Deadline of a call that names none (default 30 s).
    pub call_timeout: Duration,
    /// Who the server may be (default: a process of this user), checked
    /// against the socket's credentials before anything is sent: a process
    /// squatting on the server's name is refused. A server over TCP has no
    /// credentials: it is identified by TLS (the endpoint's `TlsClient`
    /// checks its certificate), and this policy applies to it only if it
    /// decides by certificates (`Policy::Certificate`, or `Anyone`);
    /// otherwise a TCP address is taken as the server it names.
    pub server_policy: Policy,
    /// Most calls in flight at once (default 1024). On a
    /// [`SharedClient`], a short reply not yet dropped counts as in flight
    /// too: its body lives in its call's slot until then.
    pub max_in_flight: usize,
    /// Publish the requests of pipelined calls in batches (default off).
    /// On shared memory a started call's request is normally published at
    /// once. With this on, a call started (`start`) while others are in
    /// flight is written to the ring but held back, until the calls held
    /// back make half of those in flight; they are then published
    /// together, and sooner when a wait finds no reply to read (before it
    /// spins or sleeps), when any other frame is sent (a `call`, which is
    /// waited for at once, a message), or on `flush`. The server then finds
    /// requests queued, and the client's stores do not wait, request after
    /// request, for the cache line the server is polling (the costly part
    /// of a pipelined call otherwise): on the development VM a client with
    /// 64 calls in flight made 1.6-2.1× the calls a second
    /// (`call.pipelined.batched.64`). A call started alone goes at once.
    /// The cost: a started call the caller does not wait for may not reach
    /// the server until some wait or `flush`, as over a stream socket,
    /// where requests are always batched this way. A wait does not publish
    /// them to a server known dead: a
    /// [`SupervisedClient`](crate::supervise::SupervisedClient) sends a
    /// request still held back when its server died to the successor,
    /// whatever its method (the server never saw it).
    pub batch_requests: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            strategy: WaitStrategy::Adaptive,
            handshake_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            server_policy: Policy::SameUid,
            max_in_flight: 1024,
            batch_requests: false,
        }
    }
}

impl ClientOptions {
    /// The options with `strategy`.
    #[must_use]
    pub fn strategy(mut self, s: WaitStrategy) -> Self {
        self.strategy = s;
        self
    }

    /// The options with `d` as the handshake timeout.
    #[must_use]
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// The options with `d` as the default call timeout.
    #[must_use]
    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }

    /// The options with `p` as the policy on the server's credentials.
    #[must_use]
    pub fn server_policy(mut self, p: Policy) -> Self {
        self.server_policy = p;
        self
    }

    /// The options with `n` as the most calls in flight.
    #[must_use]
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// The options with the requests of pipelined calls published in
    /// batches, or not (see
    /// [`batch_requests`](ClientOptions#structfield.batch_requests)).
    #[must_use]
    pub fn batch_requests(mut self, on: bool) -> Self {
        self.batch_requests = on;
        self
    }
}

/// Connects to `to` (shared memory or a stream socket) and runs the
/// handshake.
fn connect_link(
    to: impl IntoEndpoint,
    options: &ClientOptions,
) -> Result<(Link, Info), ConnectError> {
    let to = to.into_endpoint()?;
    match &to.at {
        At::Stream(address) => stream::connect(address, &to, options),
        At::Shm(socket) => connect_shm(socket, options),
        At::Service(_) => {
            let socket = to.shm_socket().expect("a service name").map_err(|source| {
                ConnectError::Connect {
                    socket: to.to_string(),
                    source,
                }
            })?;
            connect_shm(&socket, options)
        }
    }
}

/// Connects to `socket` and runs the handshake, trying again while the
/// server says it is busy (too many handshakes under way), within the
/// handshake timeout.
fn connect_shm(socket: &SocketName, options: &ClientOptions) -> Result<(Link, Info), ConnectError> {
    let span = tracing::debug_span!("isocall_connect", %socket);
    let _enter = span.enter();
    // Register for membarrier before the handshake's deadline starts (the
    // first time, it forks a short-lived child: see
    // `sys::heavy_barrier_available`), as the builders do.
    crate::sys::heavy_barrier_available();
    let deadline = crate::deadline_in(options.handshake_timeout);
    let mut pause = Duration::from_micros(200);
    loop {
        let sock = connect_seqpacket(socket).map_err(|source| ConnectError::Connect {
            socket: socket.to_string(),
            source,
        })?;
        match core::handshake(sock, options.clone()) {
            Err(ConnectError::Refused(Refusal::Busy { .. }))
                if Instant::now() + pause < deadline =>
            {
                // A handshake slot frees within a handshake's time; the
                // server asked us to come back.
                wait_quietly(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Waits `d` without a busy loop (a futex wait on a private word nobody
/// wakes).
fn wait_quietly(d: Duration) {
    let word = std::sync::atomic::AtomicU32::new(0);
    let _ = crate::sys::futex_wait(&word, 0, Some(d));
}

/// A connection to a server, for calls from one thread at a time
/// (`&mut self`). For many threads on one connection, see
/// [`SharedClient`].
///
/// ```no_run
/// use isocall_engine::rpc::{Client, Method};
/// # #[derive(rkyv::Archive, rkyv::Serialize, isocall_schema::Schema)]
/// # #[schema(crate = "isocall_schema")]
/// # struct Add { a: u64, b: u64 }
/// # #[derive(rkyv::Archive, rkyv::Serialize, isocall_schema::Schema)]
/// # #[schema(crate = "isocall_schema")]
/// # struct Sum { sum: u64 }
/// const ADD: Method<Add, Sum> = Method::new("add");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = Client::connect(&isocall_engine::rpc::default_socket("adder")?)?;
/// let add = client.method(ADD)?;                  // checked against the server once
/// let sum = client.call(add, &Add { a: 2, b: 40 })?.sum;
/// assert_eq!(sum, 42);
/// # Ok(()) }
/// ```
pub struct Client {
    link: Link,
    info: Info,
    window: Window,
    abandoned: Arc<Abandoned>,
    given_up: Vec<u64>,
    inbox: Inbox,
    /// The blob handles of the reply handed out last (reused).
    reply_blobs: Vec<BlobHandle>,
    /// Scratch space for serializing requests (reused).
    arena: rkyv::ser::allocator::Arena,
    spares: Mutex<Vec<AlignedVec<16>>>,
    trusted: bool,
    next_large: u64,
    closed: Option<CloseReason>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.info.server)
            .field("methods", &self.info.methods.len())
            .field("in_flight", &self.window.len())
            .finish()
    }
}

/// Sends a large blob's memfd to the server over the connection's socket
/// (shared memory: the server maps it).
fn share_over(
    sock: std::os::fd::BorrowedFd<'_>,
    blob: &LargeBlob,
    deadline: Instant,
) -> Result<(), CallError> {
    send_with_fds(sock, &blob.share_message(), &[blob.mem.fd()], deadline).map_err(|e| {
        match e.kind() {
            std::io::ErrorKind::TimedOut => CallError::Timeout,
            _ => CallError::PeerDied,
        }
    })
}

impl Client {
    /// Connects to `to` with the default options: a shared-memory socket
    /// (a [`SocketName`], `"@name"`, a path, a service name) or a stream
    /// socket (`"tcp://host:port"`, `"unix:/path"`, `"unix-stream:@name"`,
    /// or an [`Endpoint`](crate::rpc::Endpoint) with TLS or a compression
    /// choice). The calls are the same over either.
    ///
    /// # Errors
    ///
    /// See [`ConnectError`]: an endpoint that does not parse, no server,
    /// refused (either way), version mismatch, a bad or late hello, a
    /// segment that fails its checks, a TLS handshake that fails (with
    /// the reason).
    pub fn connect(to: impl IntoEndpoint) -> Result<Client, ConnectError> {
        Self::connect_with(to, ClientOptions::default())
    }

    /// Connects to `to` with `options`.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub fn connect_with(
        to: impl IntoEndpoint,
        options: ClientOptions,
    ) -> Result<Client, ConnectError> {
        let (link, info) = connect_link(to, &options)?;
        Ok(Self::from_parts(link, info))
    }

    /// Runs the handshake over `sock`, a `SOCK_SEQPACKET` socket already
    /// connected to a server (one end of a socketpair whose other end the
    /// server received over its handoff socket, or a socket a name service
    /// handed over).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), but for reaching the socket.
    pub fn over_socket(sock: OwnedFd, options: ClientOptions) -> Result<Client, ConnectError> {
        let (link, info) = core::handshake(sock, options)?;
        Ok(Self::from_parts(link, info))
    }

    fn from_parts(link: Link, info: Info) -> Client {
        let abandoned = Abandoned::register(info.tag);
        Client {
            link,
            info,
            window: Window::new(),
            abandoned,
            given_up: Vec::new(),
            inbox: Inbox::new(),
            reply_blobs: Vec::new(),
            arena: rkyv::ser::allocator::Arena::new(),
            spares: Mutex::new(Vec::new()),
            trusted: false,
            next_large: 1,
            closed: None,
        }
    }

    /// Reads replies in place in the ring, without copying them out or
    /// validating them.
    ///
    /// # Safety
    ///
    /// The server must only ever send valid archives of each method's
    /// reply type and never write a frame after publishing it: an invalid
    /// archive read unchecked is undefined behaviour.
    // SAFETY: the caller's promise (see `# Safety`) is what makes the
    // unchecked reads of `Reply` sound; this only records it.
    #[allow(unsafe_code)] // declares a contract; the unchecked read is in `Reply`
    pub unsafe fn set_trusted(&mut self) {
        self.trusted = true;
    }

    /// Resolves `m` on this connection: the server must have registered a
    /// call of that name with the same request and reply types (their
    /// fingerprints travel in the hello).
    ///
    /// # Errors
    ///
    /// `NoSuchMethod`; `TypeMismatch` naming both sides' types.
    pub fn method<Req: Body, Resp: Body>(
        &self,
        m: Method<Req, Resp>,
    ) -> Result<MethodRef<Req, Resp>, CallError> {
        self.info.resolve(m)
    }

    /// Resolves the one-way `m` on this connection.
    ///
    /// # Errors
    ///
    /// As [`method`](Self::method).
    pub fn message<M: Body>(&self, m: Message<M>) -> Result<MessageRef<M>, CallError> {
        self.info.resolve_message(m)
    }

    /// The connection's blob pool (allocate request blobs from it), if the
    /// server gave the connection one.
    pub fn pool(&self) -> Option<&Arc<Pool<SharedRegion>>> {
        self.link.pool.as_ref()
    }

    /// The server's credentials, from the socket (over a socketpair, those
    /// of the process that made the pair; over TCP, which carries none,
    /// [`PeerCred::REMOTE`]).
    pub fn server(&self) -> PeerCred {
        self.info.server
    }

    /// The layout of the connection's segment (ring capacity, blob
    /// classes), as the server chose it. Over a stream socket there is no
    /// ring (a capacity of 0) and the classes are those of the pool each
    /// side keeps.
    pub fn layout(&self) -> SegmentLayout {
        self.info.layout
    }

    /// False once the server is known dead or gone: the kernel marked its
    /// lifeline in the segment (it died), it let go of it (it closed), or
    /// the watch saw its socket hang up.
    pub fn is_alive(&self) -> bool {
        self.closed.is_none() && !self.link.peer_gone()
    }

    /// Calls in flight (started and not yet waited for or given up).
    pub fn in_flight(&self) -> usize {
        self.window.waiting()
    }

    /// A large blob of `len` bytes (beyond the pool's largest class): a
    /// sealed memfd of its own, zero-filled, mapped here. Share it with
    /// [`share_large`](Self::share_large) to send it in calls.
    ///
    /// # Errors
    ///
    /// `Os` if the memory cannot be had (a length of 0 or 4 GiB and more is
    /// `InvalidInput`).
    pub fn alloc_large(&mut self, len: usize) -> Result<LargeBlob, CallError> {
        if len == 0 || len > u32::MAX as usize {
            return Err(CallError::Os(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a large blob of {len} bytes (1 byte to 4 GiB - 1)"),
            )));
        }
        let id = self.next_large;
        self.next_large += 1;
        let mem = crate::sys::BlobMem::create(&format!("isocall:large:{id}"), len)?;
        Ok(LargeBlob {
            id,
            mem,
            shared: false,
        })
    }

    /// The handle of `blob` for a call, sending its memfd to the server
    /// the first time (the server maps it once and keeps the mapping for
    /// the connection's life).
    ///
    /// # Errors
    ///
    /// `PeerDied` if the socket is gone; `Timeout` if the server does not
    /// take the message within the call timeout.
    pub fn share_large(&mut self, blob: &mut LargeBlob) -> Result<BlobHandle, CallError> {
        if !blob.shared {
            let deadline = crate::deadline_in(self.info.options.call_timeout);
            match (&self.link.ring, self.link.tx.stream()) {
                (Some(ring), _) => share_over(ring.sock.as_fd(), blob, deadline)?,
                (None, Some(stream)) => {
                    stream.share_large(blob).map_err(TransportError::from)?;
                }
                (None, None) => return Err(CallError::PeerDied),
            }
            blob.shared = true;
        }
        Ok(blob.handle())
    }

    /// Forgets the calls whose [`Pending`] was dropped.
    #[inline(always)]
    fn forget_given_up(&mut self) {
        if self.abandoned.maybe_any() {
            self.forget_given_up_slow();
        }
    }

    #[inline(never)]
    fn forget_given_up_slow(&mut self) {
        self.abandoned.take(&mut self.given_up);
        if self.given_up.is_empty() {
            return;
        }
        for id in std::mem::take(&mut self.given_up) {
            if let Some(stash) = self.window.give_up(id) {
                ReplyBlobSet::free(&stash.blobs, self.link.pool.as_deref());
                recycle(&self.spares, stash.body);
            }
        }
    }

    fn check_open(&self) -> Result<(), CallError> {
        match self.closed {
            Some(r) => Err(CallError::Closed(r)),
            None => Ok(()),
        }
    }

    /// Writes a frame, draining replies while the ring is full; a request
    /// may be held back if `hold` (see `ClientOptions::batch_requests`).
    #[allow(clippy::too_many_arguments)] // the one writer behind every start, call and message
    fn send_frame(
        &mut self,
        frame_kind: u16,
        id: u64,
        method: u32,
        encode: impl FnMut(
            &mut [u8],
            &mut rkyv::ser::allocator::Arena,
        ) -> Result<usize, body::EncodeError>,
        blobs: &[BlobHandle],
        deadline: Option<Instant>,
        hold: bool,
    ) -> Result<(), CallError> {
        let Client {
            link,
            info,
            window,
            spares,
            closed,
            arena,
            ..
        } = self;
        let batch = hold && info.options.batch_requests && frame_kind == kind::REQUEST;
        let mut to = Outgoing {
            frame_kind,
            id,
            method,
            blobs,
            deadline,
            info,
            window,
            spares,
            pool: link.pool.as_deref(),
            closed,
            arena,
            defer: false,
        };
        // One dispatch per call: the rings' path is built without a branch
        // on the transport per frame.
        match (&mut link.tx, &mut link.rx) {
            (Tx::Ring(tx), Rx::Ring(rx)) => {
                to.defer = batch && holds_back(tx.unpublished(), to.window.waiting() as u64, 0);
                send_on(tx, rx, &mut to, encode)
            }
            (tx, rx) => {
                // On a stream, a request started while others are in
                // flight waits in the sender's buffer until this client is
                // about to wait for a reply (or the buffer fills, or
                // anything else is sent): the requests of many started
                // calls go in one `send`, as the server's replies do. A
                // lone call, and any other frame, go at once.
                let now = frame_kind != kind::REQUEST || to.window.waiting() == 0;
                send_on(&mut Deferring { tx, now }, rx, &mut to, encode)
            }
        }
    }

    /// Sends now the requests of started calls that still wait in the
    /// client's buffer. Over a stream socket, a call started while others
    /// are in flight is sent when the client next waits for a reply (every
    /// wait that would block sends first), sends a message, closes, or
    /// once many requests wait; a client that starts calls and then does
    /// not wait for a while calls this. On shared memory it publishes the
    /// requests held back with
    /// [`batch_requests`](ClientOptions::batch_requests), and without it
    /// does nothing (requests are published as they start).
    ///
    /// # Errors
    ///
    /// `PeerDied`, `Closed` (the connection's failure).
    pub fn flush(&mut self) -> Result<(), CallError> {
        self.check_open()?;
        self.link.tx.publish();
        if self.link.tx.stream().is_some_and(StreamTx::is_closed) {
            return Err(CallError::PeerDied);
        }
        Ok(())
    }

    /// Starts a call with `blobs` (handles of blobs already
    /// [sent](isocall_blob::BlobMut::send) to the server, or shared large
    /// blobs) and returns at once; many calls may be in flight. Over a
    /// stream socket, a call started while others are in flight is sent
    /// with the next wait (or [`flush`](Self::flush)): many in one `send`.
    /// On shared memory with
    /// [`batch_requests`](ClientOptions::batch_requests), it may likewise
    /// be held back until a wait finds no reply to read, another frame is
    /// sent, or `flush`.
    ///
    /// # Errors
    ///
    /// `ForeignMethod`, `TooManyInFlight`, `TooManyBlobs`,
    /// `RequestTooLarge`, `PeerDied`, `Closed`, `Timeout` (the ring stayed
    /// full).
    pub fn start<Req: Body, Resp: Body>(
        &mut self,
        m: MethodRef<Req, Resp>,
        request: &Req,
        blobs: &[BlobHandle],
    ) -> Result<Pending<Resp>, CallError> {
        let id = self.start_id(m, request, blobs, None, true)?;
        Ok(Pending {
            id,
            client: self.info.tag,
            method: m.name,
            armed: true,
            _t: std::marker::PhantomData,
        })
    }

    fn start_id<Req: Body, Resp: Body>(
        &mut self,
        m: MethodRef<Req, Resp>,
        request: &Req,
        blobs: &[BlobHandle],
        deadline: Option<Instant>,
        hold: bool,
    ) -> Result<u64, CallError> {
        self.info.check_ref(m.client, m.name)?;
        let enc =
            |buf: &mut [u8], a: &mut rkyv::ser::allocator::Arena| body::encode(request, buf, a);
        self.start_until(m.id, enc, blobs, None, deadline, hold)
    }

    /// Starts a call of server method `method` whose body `encode` writes;
    /// a copy of the body goes to `keep` if given (for a retry on another
    /// connection). Returns the call's id.
    pub(crate) fn start_keep(
        &mut self,
        method: u32,
        encode: impl FnMut(
            &mut [u8],
            &mut rkyv::ser::allocator::Arena,
        ) -> Result<usize, body::EncodeError>,
        blobs: &[BlobHandle],
        keep: Option<&mut Vec<u8>>,
    ) -> Result<u64, CallError> {
        self.start_until(method, encode, blobs, keep, None, true)
    }

    /// As [`start_keep`](Self::start_keep), sending by `deadline` (`None`:
    /// the call timeout from when the ring is first found full); the
    /// request may be held back if `hold` (a call not waited for at once;
    /// see `ClientOptions::batch_requests`).
    fn start_until(
        &mut self,
        method: u32,
        mut encode: impl FnMut(
            &mut [u8],
            &mut rkyv::ser::allocator::Arena,
        ) -> Result<usize, body::EncodeError>,
        blobs: &[BlobHandle],
        mut keep: Option<&mut Vec<u8>>,
        deadline: Option<Instant>,
        hold: bool,
    ) -> Result<u64, CallError> {
        self.check_open()?;
        self.forget_given_up();
        if self.window.waiting() >= self.info.options.max_in_flight {
            return Err(CallError::TooManyInFlight {
                limit: self.info.options.max_in_flight,
            });
        }
        let id = self.window.next_id();
        let enc = |buf: &mut [u8], arena: &mut rkyv::ser::allocator::Arena| {
            let n = encode(buf, arena)?;
            if let Some(k) = keep.as_deref_mut() {
                k.clear();
                k.extend_from_slice(&buf[..n]);
            }
            Ok(n)
        };
        self.send_frame(kind::REQUEST, id, method, enc, blobs, deadline, hold)?;
        self.window.push(method);
        Ok(id)
    }

    /// Starts a call whose body is `body`, an archive already made (kept
    /// from an attempt on another connection). Returns the call's id.
    pub(crate) fn start_raw(
        &mut self,
        method: u32,
        body: &[u8],
        blobs: &[BlobHandle],
    ) -> Result<u64, CallError> {
        let copy = |buf: &mut [u8], _: &mut rkyv::ser::allocator::Arena| {
            let room = buf.len();
            let dst = buf
                .get_mut(..body.len())
                .ok_or(body::EncodeError { room, source: None })?;
            dst.copy_from_slice(body);
            Ok(body.len())
        };
        // A call moved from a dead connection: its caller may be waiting.
        self.start_until(method, copy, blobs, None, None, false)
    }

    /// The server's id of the method `name` if it has signature `sig`, and
    /// whether the server declared it idempotent.
    pub(crate) fn resolve_sig(
        &self,
        name: &str,
        sig: &crate::rpc::method::Signature,
    ) -> Option<(u32, bool)> {
        let id = *self.info.by_name.get(name)?;
        let m = &self.info.methods[id as usize];
        (m.signature == *sig).then_some((id, m.idempotent))
    }

    /// Whether call `id`'s request is still held back on the ring, written
    /// and never published (see
    /// [`batch_requests`](ClientOptions::batch_requests)): no server ever
    /// saw it. The frames held back are always the requests of the calls
    /// started last (any other frame publishes them), and a wait does not
    /// publish them to a server known dead.
    pub(crate) fn never_sent(&self, id: u64) -> bool {
        let Tx::Ring(tx) = &self.link.tx else {
            return false;
        };
        let next = self.window.next_id();
        id < next && next - id <= tx.unpublished()
    }

    /// Whether requests may be held back (see
    /// [`batch_requests`](ClientOptions::batch_requests)).
    pub(crate) fn batches(&self) -> bool {
        self.info.options.batch_requests
    }

    /// This client's tag (what its method refs carry).
    pub(crate) fn tag(&self) -> u64 {
        self.info.tag
    }

    /// The server's pid, as its socket (or its stream hello) says.
    pub(crate) fn server_pid(&self) -> Option<u32> {
        self.info.server_pid
    }

    /// Gives call `id` up: its reply is discarded (blobs freed) when it
    /// comes, or now if it came.
    pub(crate) fn give_up(&mut self, id: u64) {
        if let Some(stash) = self.window.give_up(id) {
            ReplyBlobSet::free(&stash.blobs, self.link.pool.as_deref());
            recycle(&self.spares, stash.body);
        }
    }

    /// Waits until the reply of call `id` has come (it is then kept, to be
    /// taken with `wait_id`), without handing it out: for a caller that
    /// may go on to another connection when this one dies.
    pub(crate) fn await_reply(
        &mut self,
        id: u64,
        deadline: Option<Instant>,
    ) -> Result<(), CallError> {
        let Client {
            link,
            info,
            window,
            spares,
            closed,
            ..
        } = self;
        let pool = link.pool.as_deref();
        let mut deadline = deadline;
        let timeout = info.options.call_timeout;
        let strategy = info.options.strategy;
        loop {
            match window.get(id) {
                Some(Entry::Stashed(_)) => return Ok(()),
                Some(Entry::Waiting { .. }) => {}
                Some(Entry::Gone) | None => {
                    return Err(closed.map_or(CallError::PeerDied, CallError::Closed));
                }
            }
            let frame = match next_frame(&mut link.rx, strategy, &mut deadline, timeout, || {
                link.tx.publish_held()
            }) {
                Ok(f) => f,
                Err(e) => return Err(closed.map_or_else(|| e.into(), CallError::Closed)),
            };
            route(frame, window, info, spares, pool, closed)?;
            // Not past the deadline however many frames keep coming.
            if !matches!(window.get(id), Some(Entry::Stashed(_)))
                && Instant::now() >= *deadline.get_or_insert_with(|| crate::deadline_in(timeout))
            {
                return Err(CallError::Timeout);
            }
        }
    }

    /// Waits for the reply of `pending` until `deadline` (`None`: the
    /// client's call timeout, from now).
    ///
    /// # Errors
    ///
    /// `PeerDied`, `Closed`, `Timeout` (the call is then given up: its
    /// reply is discarded when it comes), the server's statuses (`App`,
    /// `UnknownMethod`, `HandlerPanicked`, `BadRequest`, `ReplyTooLarge`),
    /// `BadReply` for a reply that fails validation.
    pub fn wait<Resp: Body>(
        &mut self,
        pending: Pending<Resp>,
        deadline: Option<Instant>,
    ) -> Result<Reply<'_, Resp>, CallError> {
        // Checked before the pending is disarmed: one of another client,
        // refused, is dropped armed and given up on its own client.
        self.info.check_ref(pending.client, "a pending call")?;
        let (id, _) = pending.defuse();
        self.wait_id::<Resp>(id, deadline)
    }

    /// Calls `m` and waits for its reply: [`start`](Self::start) then
    /// [`wait`](Self::wait).
    ///
    /// # Errors
    ///
    /// As `start` and `wait`.
    #[inline]
    pub fn call<Req: Body, Resp: Body>(
        &mut self,
        m: MethodRef<Req, Resp>,
        request: &Req,
    ) -> Result<Reply<'_, Resp>, CallError> {
        let id = self.start_id(m, request, &[], None, false)?;
        self.wait_id::<Resp>(id, None)
    }

    /// Calls `m` with blobs and a deadline.
    ///
    /// # Errors
    ///
    /// As `start` and `wait`.
    pub fn call_with<Req: Body, Resp: Body>(
        &mut self,
        m: MethodRef<Req, Resp>,
        request: &Req,
        blobs: &[BlobHandle],
        deadline: Option<Instant>,
    ) -> Result<Reply<'_, Resp>, CallError> {
        // One deadline for the whole call: sending (while the ring is
        // full) and waiting.
        let id = self.start_id(m, request, blobs, deadline, false)?;
        self.wait_id::<Resp>(id, deadline)
    }

    /// Sends the one-way message `m` (no reply).
    ///
    /// # Errors
    ///
    /// `ForeignMethod`, `TooManyBlobs`, `RequestTooLarge`, `PeerDied`,
    /// `Closed`, `Timeout` (the ring stayed full).
    pub fn send<M: Body>(
        &mut self,
        m: MessageRef<M>,
        message: &M,
        blobs: &[BlobHandle],
    ) -> Result<(), CallError> {
        self.info.check_ref(m.client, m.name)?;
        self.check_open()?;
        self.forget_given_up();
        self.send_frame(
            kind::MESSAGE,
            0,
            m.id,
            |buf, a| body::encode(message, buf, a),
            blobs,
            None,
            false,
        )
    }

    pub(crate) fn wait_id<Resp: Body>(
        &mut self,
        id: u64,
        deadline: Option<Instant>,
    ) -> Result<Reply<'_, Resp>, CallError> {
        let Client {
            link,
            info,
            window,
            inbox,
            reply_blobs,
            spares,
            trusted,
            closed,
            ..
        } = self;
        let pool = link.pool.as_deref();
        // A reply that came while another call was waited for.
        match window.get(id) {
            Some(Entry::Stashed(_)) => {
                let s = window.take_stash(id).expect("stashed");
                return stashed_reply(s, info, spares, pool);
            }
            Some(Entry::Waiting { .. }) => {}
            Some(Entry::Gone) | None => {
                return Err(closed.map_or(CallError::PeerDied, CallError::Closed));
            }
        }
        let w = Waiter {
            id,
            info,
            window,
            spares,
            pool,
            trusted: *trusted,
            closed,
        };
        // One dispatch per call: the rings' path is built without a branch
        // on the transport per frame.
        match (&mut link.tx, &mut link.rx) {
            (Tx::Ring(tx), Rx::Ring(rx)) => wait_on(tx, rx, inbox, reply_blobs, w, deadline),
            (tx, rx) => wait_on(tx, rx, inbox, reply_blobs, w, deadline),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // A clean close: the server stops serving this connection at once.
        if let Ok(mut g) = self.link.tx.try_reserve(kind::CLOSE, 4) {
            g.bytes_mut()
                .copy_from_slice(&CloseReason::ClientClosed.code().to_le_bytes());
            let _ = g.commit_all();
            self.link.tx.publish();
        }
        tracing::debug!(server_pid = ?self.info.server.pid, "connection closed");
    }
}
