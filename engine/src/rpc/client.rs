//! The calling side of a connection.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isocall_blob::{BlobError, BlobHandle, Pool};
use isocall_ringbuf::SharedRegion;
use rkyv::util::AlignedVec;

use super::archive::{self, Body};
use super::wire::{
    self, CallHead, ClientHello, HELLO_MAGIC, PROTOCOL_VERSION, ServerHello, Status, kind,
};
use crate::WaitStrategy;
use crate::endpoint::{Doorbells, Receiver, Sender, Side, TransportError, endpoint};
use crate::liveness::{Liveness, PeerWatch};
use crate::segment::{Segment, SegmentError};
use crate::sys::{EventFd, SocketName, connect_seqpacket, recv_message, send_with_fds};

/// How a client connects and waits.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// How the client waits for replies (default `Adaptive`).
    pub strategy: WaitStrategy,
    /// How long the handshake may take (default 5 s).
    pub handshake_timeout: Duration,
    /// Deadline of a call that names none (default 30 s).
    pub call_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            strategy: WaitStrategy::Adaptive,
            handshake_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket could not be reached (no server, permission).
    #[error("cannot connect to {socket}: {source}")]
    Connect {
        /// The socket.
        socket: String,
        /// The OS error.
        source: io::Error,
    },
    /// The server's policy refused this process.
    #[error("the server refused the connection: {0}")]
    Refused(String),
    /// Client and server speak different protocol versions.
    #[error("protocol version mismatch: this client speaks {ours}, the server {theirs}")]
    VersionMismatch {
        /// This client's version.
        ours: u32,
        /// The server's.
        theirs: u32,
    },
    /// The server did not finish the handshake in time.
    #[error("the server did not answer the handshake within {0:?}")]
    Timeout(Duration),
    /// The server's hello is malformed (missing descriptors, bad fields).
    #[error("bad handshake from the server: {0}")]
    Handshake(String),
    /// The segment the server sent is refused (seals, magic, layout).
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// An OS error during the handshake.
    #[error("handshake: {0}")]
    Io(#[from] io::Error),
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server died or closed the connection.
    #[error("the server died or closed the connection")]
    PeerDied,
    /// No reply before the deadline (the call may still run).
    #[error("no reply before the deadline")]
    Timeout,
    /// The server has no method of that name.
    #[error("the server has no method {0:?}")]
    NoSuchMethod(String),
    /// The server answered that it does not know the method id.
    #[error("the server does not know method id {0}")]
    UnknownMethod(u32),
    /// The handler returned an error.
    #[error("the handler failed: {0}")]
    App(String),
    /// The handler panicked (the server keeps serving).
    #[error("the handler panicked: {0}")]
    HandlerPanicked(String),
    /// The server found the request invalid.
    #[error("the server refused the request: {0}")]
    BadRequest(String),
    /// A request or reply larger than the connection allows.
    #[error("message too large: {0}")]
    TooLarge(String),
    /// The reply is malformed (failed validation, bad frame).
    #[error("bad reply from the server: {0}")]
    BadReply(String),
    /// A blob could not be handled.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The ring failed (corrupt counters or frame).
    #[error(transparent)]
    Transport(TransportError),
    /// The OS refused memory or a descriptor.
    #[error("os: {0}")]
    Os(io::Error),
    /// The supervisor gave up on the service (restart-intensity limit, a
    /// service that cannot be started or handshaken) or is stopping; the
    /// message names the service and its last exit status or signal.
    #[error("{0}")]
    ServiceFailed(String),
}

impl From<TransportError> for CallError {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::PeerDied => CallError::PeerDied,
            TransportError::Timeout => CallError::Timeout,
            other => CallError::Transport(other),
        }
    }
}

/// A method of the server, resolved once from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MethodId(pub(crate) u32);

impl MethodId {
    /// A method id as a number (for a layer that forwards calls, or a test
    /// that sends an id the server does not have).
    pub fn from_raw(id: u32) -> MethodId {
        MethodId(id)
    }
}

/// A call in flight, to be waited for with [`Client::wait`].
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "a pending call's reply is kept until it is waited for"]
pub struct Pending {
    id: u64,
}

impl Pending {
    /// The same call, to wait for again after a wait that did not consume
    /// it (the supervised client's retries).
    pub(crate) fn again(&self) -> Pending {
        Pending { id: self.id }
    }
}

/// Call ids are distinct sequential numbers: a multiplicative hash is
/// enough, and costs a fraction of SipHash on the per-call path.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Ids<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;
type IdSet = HashSet<u64, std::hash::BuildHasherDefault<IdHasher>>;

/// Tries a ring operation without a deadline first (no clock read on the
/// fast path), spinning a little (64 spin hints, a microsecond or two) unless the strategy is
/// `Blocking`, and only then computes the deadline and waits for real (the
/// rest of the strategy's spin, then sleep).
const SPINS_BEFORE_DEADLINE: u32 = 64;

fn next_frame<'r>(
    rx: &'r mut Receiver,
    strategy: WaitStrategy,
    deadline: impl FnOnce() -> Instant,
) -> Result<crate::endpoint::RxFrame<'r>, TransportError> {
    if strategy != WaitStrategy::Blocking {
        for _ in 0..SPINS_BEFORE_DEADLINE {
            if rx.try_recv()?.is_some() {
                break;
            }
            std::hint::spin_loop();
        }
    }
    rx.recv(Some(deadline()))
}

struct Stashed {
    status: u32,
    blobs: Vec<BlobHandle>,
    body: AlignedVec<16>,
}

/// A connection to a server, for calls from one thread (`&mut self`).
pub struct Client {
    tx: Sender,
    rx: Receiver,
    pool: Option<Arc<Pool<SharedRegion>>>,
    methods: HashMap<String, u32>,
    idempotent: Vec<bool>,
    max_frame: usize,
    next_id: u64,
    in_flight: IdSet,
    stash: Ids<Stashed>,
    trusted: bool,
    options: ClientOptions,
    next_large: u64,
    server_pid: u32,
    layout: crate::segment::SegmentLayout,
    liveness: Liveness,
    // Dropped last: the watch thread, then the socket (the server's EOF).
    _watch: PeerWatch,
    _sock: OwnedFd,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server_pid", &self.server_pid)
            .field("methods", &self.methods.len())
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

/// Parses the hello that follows the tag byte: the hello and the method
/// table (name, idempotent).
fn parse_hello(msg: &[u8]) -> Result<(ServerHello, Vec<(String, bool)>), String> {
    const N: usize = std::mem::size_of::<ServerHello>();
    let hello: ServerHello = msg
        .get(..N)
        .map(bytemuck::pod_read_unaligned)
        .ok_or("hello too short")?;
    if hello.magic != HELLO_MAGIC {
        return Err(format!("bad magic {:#x}", hello.magic));
    }
    let mut names = Vec::new();
    let mut at = N;
    for _ in 0..hello.nmethods.min(4096) {
        let (len, flags) = msg
            .get(at..at + 3)
            .map(|b| (u16::from_le_bytes([b[0], b[1]]) as usize, b[2]))
            .ok_or("method table cut short")?;
        let name = msg
            .get(at + 3..at + 3 + len)
            .ok_or("method name cut short")?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| "method name is not UTF-8")?;
        names.push((name, flags & wire::METHOD_IDEMPOTENT != 0));
        at += 3 + len;
    }
    if names.len() != hello.nmethods as usize {
        return Err(format!("{} methods announced, too many", hello.nmethods));
    }
    Ok((hello, names))
}

fn abort(sock: &OwnedFd, reason: &str) {
    let mut m = vec![wire::ABORT];
    m.extend_from_slice(reason.as_bytes());
    let _ = send_with_fds(sock.as_fd(), &m, &[]);
}

impl Client {
    /// Connects with the default options.
    ///
    /// # Errors
    ///
    /// See [`ConnectError`]: no server, refused, version mismatch, a bad
    /// or late hello, a segment that fails its checks.
    pub fn connect(socket: &SocketName) -> Result<Client, ConnectError> {
        Self::connect_with(socket, ClientOptions::default())
    }

    /// Connects with `options`.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub fn connect_with(
        socket: &SocketName,
        options: ClientOptions,
    ) -> Result<Client, ConnectError> {
        let span = tracing::debug_span!("isocall_connect", %socket);
        let _enter = span.enter();
        let sock = connect_seqpacket(socket).map_err(|source| ConnectError::Connect {
            socket: socket.to_string(),
            source,
        })?;
        Self::over_socket(sock, options)
    }

    /// Runs the handshake over `sock`, a `SOCK_SEQPACKET` socket already
    /// connected to a server (one end of a socketpair whose other end the
    /// server received, or a socket a name service handed over).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), but for reaching the socket.
    pub fn over_socket(sock: OwnedFd, options: ClientOptions) -> Result<Client, ConnectError> {
        let deadline = crate::deadline_in(options.handshake_timeout);
        let hello = ClientHello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
            _reserved: 0,
        };
        send_with_fds(sock.as_fd(), bytemuck::bytes_of(&hello), &[])?;
        let mut buf = vec![0u8; 1 << 16];
        let (n, mut fds) =
            recv_message(sock.as_fd(), &mut buf, 3, deadline).map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => ConnectError::Timeout(options.handshake_timeout),
                io::ErrorKind::UnexpectedEof => {
                    ConnectError::Handshake("the server closed the socket without a hello".into())
                }
                _ => ConnectError::Io(e),
            })?;
        let msg = &buf[..n];
        match msg[0] {
            wire::REFUSED => {
                return Err(ConnectError::Refused(
                    String::from_utf8_lossy(&msg[1..]).into_owned(),
                ));
            }
            wire::HELLO => {}
            t => {
                return Err(ConnectError::Handshake(format!(
                    "unexpected message tag {t:#x}"
                )));
            }
        }
        let (hello, names) = parse_hello(&msg[1..]).map_err(|e| {
            abort(&sock, &e);
            ConnectError::Handshake(e)
        })?;
        if hello.version != PROTOCOL_VERSION {
            abort(
                &sock,
                &format!(
                    "protocol version mismatch: client {PROTOCOL_VERSION}, server {}",
                    hello.version
                ),
            );
            return Err(ConnectError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: hello.version,
            });
        }
        if fds.len() != 3 {
            let e = format!(
                "expected a memfd and two eventfds, got {} descriptors",
                fds.len()
            );
            abort(&sock, &e);
            return Err(ConnectError::Handshake(e));
        }
        let s2c = EventFd::from_owned(fds.pop().expect("3 fds"));
        let c2s = EventFd::from_owned(fds.pop().expect("3 fds"));
        // Seals, magic, version and layout are checked before anything is
        // used.
        let segment = Segment::open(fds.pop().expect("3 fds"))
            .inspect_err(|e| abort(&sock, &e.to_string()))?;
        let segment = Arc::new(segment);
        segment.attach_side(Side::Client);
        let bells = Doorbells {
            c2s: Arc::new(c2s),
            s2c: Arc::new(s2c),
        };
        let liveness = Liveness::connection(segment.clone(), Side::Client);
        let (tx, rx) = endpoint(
            segment.clone(),
            Side::Client,
            &bells,
            options.strategy,
            liveness.clone(),
        )
        .map_err(|e| {
            abort(&sock, &e.to_string());
            ConnectError::Handshake(e.to_string())
        })?;
        let pool = segment.blob_pool(Side::Client)?.map(Arc::new);
        let layout = segment.layout();
        let watch = PeerWatch::connection(
            sock.try_clone()?,
            liveness.clone(),
            segment.clone(),
            Side::Client,
            Some(bells.s2c.clone()),
        )?;
        send_with_fds(sock.as_fd(), &[wire::READY], &[])?;
        let server_pid = crate::sys::peer_cred(sock.as_fd()).map_or(0, |c| c.pid);
        tracing::debug!(
            server_pid,
            methods = names.len(),
            conn = hello.conn,
            "connected"
        );
        Ok(Client {
            tx,
            rx,
            pool,
            idempotent: names.iter().map(|(_, i)| *i).collect(),
            methods: names
                .into_iter()
                .enumerate()
                .map(|(i, (n, _))| (n, i as u32))
                .collect(),
            max_frame: (hello.max_frame as usize).max(wire::HEAD),
            next_id: 1,
            in_flight: IdSet::default(),
            stash: Ids::default(),
            trusted: false,
            options,
            next_large: 1,
            server_pid,
            layout,
            liveness,
            _watch: watch,
            _sock: sock,
        })
    }

    /// Skips bytecheck validation of replies on this connection.
    ///
    /// # Safety
    ///
    /// The server must only ever send valid archives of each method's
    /// reply type (e.g. it is the same binary, built from the same types):
    /// an invalid archive read unchecked is undefined behaviour.
    // SAFETY: the caller's promise (see `# Safety`) is what makes the
    // unchecked reads in `archive::read` sound; this only records it.
    #[allow(unsafe_code)] // declares a contract; the unchecked read is in `archive`
    pub unsafe fn set_trusted(&mut self) {
        self.trusted = true;
    }

    /// The id of the method `name`, resolved from the table the server sent
    /// at the handshake.
    ///
    /// # Errors
    ///
    /// [`CallError::NoSuchMethod`].
    pub fn method(&self, name: &str) -> Result<MethodId, CallError> {
        self.methods
            .get(name)
            .map(|&i| MethodId(i))
            .ok_or_else(|| CallError::NoSuchMethod(name.to_string()))
    }

    /// Whether the server declared method `m` idempotent when it
    /// registered it (see `ServerBuilder::idempotent_method`).
    pub fn is_idempotent(&self, m: MethodId) -> bool {
        self.idempotent.get(m.0 as usize).copied().unwrap_or(false)
    }

    /// The connection's blob pool (allocate request blobs from it), if the
    /// server gave the connection one.
    pub fn pool(&self) -> Option<&Arc<Pool<SharedRegion>>> {
        self.pool.as_ref()
    }

    /// A large blob of `len` bytes (beyond the pool's largest class): a
    /// sealed memfd of its own, zero-filled, mapped here. Share it with
    /// [`share_large`](Self::share_large) to send it in calls.
    ///
    /// # Errors
    ///
    /// `TooLarge` for 0 bytes or 4 GiB and more; `Os` if the memory cannot
    /// be had.
    pub fn alloc_large(&mut self, len: usize) -> Result<super::LargeBlob, CallError> {
        if len == 0 || len > u32::MAX as usize {
            return Err(CallError::TooLarge(format!(
                "a large blob of {len} bytes (1 byte to 4 GiB - 1)"
            )));
        }
        let id = self.next_large;
        self.next_large += 1;
        let mem = crate::sys::SharedMem::create(&format!("isocall:large:{id}"), len)
            .map_err(CallError::Os)?;
        Ok(super::LargeBlob {
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
    /// `PeerDied` if the socket is gone.
    pub fn share_large(&mut self, blob: &mut super::LargeBlob) -> Result<BlobHandle, CallError> {
        if !blob.shared {
            let mut msg = [0u8; 17];
            msg[0] = super::large::LARGE_MSG;
            msg[1..9].copy_from_slice(&blob.id.to_le_bytes());
            msg[9..17].copy_from_slice(&(blob.len() as u64).to_le_bytes());
            send_with_fds(self._sock.as_fd(), &msg, &[blob.mem.fd()])
                .map_err(|_| CallError::PeerDied)?;
            blob.shared = true;
        }
        Ok(blob.handle())
    }

    /// The server's process id, from the socket's credentials (`0` if
    /// unknown). Over a socketpair (see [`over_socket`](Self::over_socket))
    /// this is the pid of the process that created the pair.
    pub fn server_pid(&self) -> u32 {
        self.server_pid
    }

    /// The layout of the connection's segment (ring capacity, blob
    /// classes), as the server chose it.
    pub fn layout(&self) -> crate::segment::SegmentLayout {
        self.layout
    }

    /// False once the server is known dead or gone: the kernel marked its
    /// lifeline in the segment (it died), it let go of it (it closed), or
    /// its end of the connection's socket hung up.
    pub fn is_alive(&self) -> bool {
        !self.liveness.peer_gone()
    }

    /// Writes one frame: head, blob handles, and the body `encode` writes
    /// into the grant (returning its length); a copy of the body goes to
    /// `keep` if given.
    #[allow(clippy::too_many_arguments)] // one private writer for every frame
    fn put(
        &mut self,
        frame_kind: u16,
        id: u64,
        m: MethodId,
        mut encode: impl FnMut(&mut [u8]) -> Result<usize, String>,
        blobs: &[BlobHandle],
        deadline: impl Fn() -> Instant,
        keep: Option<&mut Vec<u8>>,
    ) -> Result<(), CallError> {
        if blobs.len() > wire::MAX_BLOBS {
            return Err(CallError::TooLarge(format!(
                "{} blobs in one call (at most {})",
                blobs.len(),
                wire::MAX_BLOBS
            )));
        }
        let body_at = wire::HEAD + blobs.len() * wire::HANDLE;
        let max = self.max_frame.min(self.tx.max_payload());
        // Most bodies are small: try a small grant, then the largest.
        for room in [max.min(body_at + 4096), max] {
            let mut g = match self.tx.try_reserve(frame_kind, room) {
                Ok(g) => g,
                Err(TransportError::Full) => self.tx.reserve(frame_kind, room, Some(deadline()))?,
                Err(e) => return Err(e.into()),
            };
            match encode(&mut g.bytes_mut()[body_at..]) {
                Ok(n) => {
                    if let Some(keep) = keep {
                        keep.clear();
                        keep.extend_from_slice(&g.bytes_mut()[body_at..body_at + n]);
                    }
                    let head = CallHead {
                        id,
                        method: m.0,
                        status: 0,
                        nblobs: blobs.len() as u32,
                        body_len: n as u32,
                        _reserved: 0,
                    };
                    wire::write_head(g.bytes_mut(), &head, blobs);
                    g.commit(body_at + n);
                    self.tx.publish();
                    return Ok(());
                }
                // Dropping the grant publishes nothing.
                Err(_) if room < max => continue,
                Err(e) => {
                    return Err(CallError::TooLarge(format!(
                        "the body does not fit a {max}-byte frame: {e}"
                    )));
                }
            }
        }
        unreachable!("the loop returns on its last turn")
    }

    /// Starts a call and returns at once; many calls may be in flight.
    /// `blobs` are handles of blobs already [sent](isocall_blob::BlobMut::send)
    /// to the server.
    ///
    /// # Errors
    ///
    /// `PeerDied`, `Timeout` (the ring stayed full), `TooLarge`.
    pub fn start<Req: Body>(
        &mut self,
        m: MethodId,
        request: &Req,
        blobs: &[BlobHandle],
    ) -> Result<Pending, CallError> {
        self.start_encoded(m, |buf| archive::write_into(request, buf), blobs, None)
    }

    /// Starts a call whose body `encode` writes; the body is also copied
    /// to `keep` (for a retry on another connection).
    pub(crate) fn start_encoded(
        &mut self,
        m: MethodId,
        encode: impl FnMut(&mut [u8]) -> Result<usize, String>,
        blobs: &[BlobHandle],
        keep: Option<&mut Vec<u8>>,
    ) -> Result<Pending, CallError> {
        let id = self.next_id;
        self.next_id += 1;
        let timeout = self.options.call_timeout;
        self.put(
            kind::REQUEST,
            id,
            m,
            encode,
            blobs,
            || crate::deadline_in(timeout),
            keep,
        )?;
        self.in_flight.insert(id);
        Ok(Pending { id })
    }

    /// Starts a call whose body is `body`, an archive already made (kept
    /// from an earlier attempt).
    pub(crate) fn start_raw(
        &mut self,
        m: MethodId,
        body: &[u8],
        blobs: &[BlobHandle],
    ) -> Result<Pending, CallError> {
        let copy = |buf: &mut [u8]| match buf.get_mut(..body.len()) {
            Some(dst) => {
                dst.copy_from_slice(body);
                Ok(body.len())
            }
            None => Err(format!("{} bytes do not fit", body.len())),
        };
        self.start_encoded(m, copy, blobs, None)
    }

    /// Waits for the reply of `pending` until `deadline` (`None`: the
    /// client's call timeout), reads it in place as `Resp` (validated unless
    /// trusted) and returns what `read` makes of it and of the reply's blob
    /// handles (accept them from [`pool`](Self::pool)).
    ///
    /// # Errors
    ///
    /// `PeerDied`, `Timeout` (the call is then abandoned; its reply is
    /// dropped when it comes), the server's statuses (`App`,
    /// `UnknownMethod`, `HandlerPanicked`, `BadRequest`, `TooLarge`),
    /// `BadReply` for a reply that fails validation.
    pub fn wait<Resp: Body, T>(
        &mut self,
        pending: Pending,
        deadline: Option<Instant>,
        read: impl FnOnce(&Resp::Archived, &[BlobHandle]) -> T,
    ) -> Result<T, CallError> {
        let timeout = self.options.call_timeout;
        let deadline = move || deadline.unwrap_or_else(|| crate::deadline_in(timeout));
        let strategy = self.options.strategy;
        let id = pending.id;
        let trusted = self.trusted;
        let decode = |status: u32, blobs: &[BlobHandle], body: &[u8]| -> Result<T, CallError> {
            match Status::from_u32(status) {
                Some(Status::Ok) => {
                    let r = archive::read::<Resp::Archived>(body, trusted)
                        .map_err(CallError::BadReply)?;
                    Ok(read(r, blobs))
                }
                Some(s) => Err(status_error(s, body)),
                None => Err(CallError::BadReply(format!("unknown status {status}"))),
            }
        };
        if let Some(s) = self.stash.remove(&id) {
            self.in_flight.remove(&id);
            return decode(s.status, &s.blobs, &s.body);
        }
        loop {
            let frame = match next_frame(&mut self.rx, strategy, deadline) {
                Ok(f) => f,
                Err(TransportError::Timeout) => {
                    self.in_flight.remove(&id);
                    // Tell the server (best effort: a full ring skips it);
                    // a reply that still comes is dropped.
                    if let Ok(mut g) = self.tx.try_reserve(kind::CANCEL, wire::HEAD) {
                        let head = CallHead {
                            id,
                            ..CallHead::default()
                        };
                        wire::write_head(g.bytes_mut(), &head, &[]);
                        g.commit_all();
                        self.tx.publish();
                    }
                    return Err(CallError::Timeout);
                }
                Err(e) => return Err(e.into()),
            };
            if frame.kind() != kind::RESPONSE {
                let k = frame.kind();
                frame.release();
                if k == kind::CLOSE {
                    return Err(CallError::PeerDied);
                }
                return Err(CallError::BadReply(format!("unexpected frame kind {k}")));
            }
            let p = wire::parse(frame.payload()).map_err(CallError::BadReply)?;
            let mut handles = [BlobHandle::default(); wire::MAX_BLOBS];
            let mut nb = 0;
            for h in wire::handles(p.blobs) {
                handles[nb] = h;
                nb += 1;
            }
            let rid = p.head.id;
            if rid == id {
                let out = decode(p.head.status, &handles[..nb], p.body);
                frame.release();
                self.in_flight.remove(&id);
                return out;
            }
            if self.in_flight.contains(&rid) {
                let mut body = AlignedVec::<16>::with_capacity(p.body.len());
                body.extend_from_slice(p.body);
                self.stash.insert(
                    rid,
                    Stashed {
                        status: p.head.status,
                        blobs: handles[..nb].to_vec(),
                        body,
                    },
                );
            }
            // Otherwise the reply of an abandoned call: dropped.
            frame.release();
        }
    }

    /// Gives up on a call without waiting for it: its reply, if it came or
    /// comes, is dropped.
    pub(crate) fn forget(&mut self, pending: Pending) {
        self.in_flight.remove(&pending.id);
        self.stash.remove(&pending.id);
    }

    /// Waits for every call of `pending`, in order, each until `deadline`;
    /// one result per call.
    pub fn wait_all<Resp: Body, T>(
        &mut self,
        pending: Vec<Pending>,
        deadline: Option<Instant>,
        mut read: impl FnMut(&Resp::Archived, &[BlobHandle]) -> T,
    ) -> Vec<Result<T, CallError>> {
        pending
            .into_iter()
            .map(|p| self.wait::<Resp, T>(p, deadline, &mut read))
            .collect()
    }

    /// Calls `m` and waits for its reply, read in place: see
    /// [`start`](Self::start) and [`wait`](Self::wait).
    ///
    /// # Errors
    ///
    /// As `start` and `wait`.
    pub fn call<Req: Body, Resp: Body, T>(
        &mut self,
        m: MethodId,
        request: &Req,
        read: impl FnOnce(&Resp::Archived) -> T,
    ) -> Result<T, CallError> {
        let p = self.start(m, request, &[])?;
        self.wait::<Resp, T>(p, None, |r, _| read(r))
    }

    /// Calls `m` with blobs and a deadline; `read` also gets the reply's
    /// blob handles.
    ///
    /// # Errors
    ///
    /// As `start` and `wait`.
    pub fn call_with<Req: Body, Resp: Body, T>(
        &mut self,
        m: MethodId,
        request: &Req,
        blobs: &[BlobHandle],
        deadline: Option<Instant>,
        read: impl FnOnce(&Resp::Archived, &[BlobHandle]) -> T,
    ) -> Result<T, CallError> {
        let p = self.start(m, request, blobs)?;
        self.wait::<Resp, T>(p, deadline, read)
    }

    /// Sends a one-way message to method `m` (no reply).
    ///
    /// # Errors
    ///
    /// `PeerDied`, `Timeout` (the ring stayed full), `TooLarge`.
    pub fn send_message<Msg: Body>(
        &mut self,
        m: MethodId,
        message: &Msg,
        blobs: &[BlobHandle],
    ) -> Result<(), CallError> {
        let timeout = self.options.call_timeout;
        self.put(
            kind::MESSAGE,
            0,
            m,
            |buf| archive::write_into(message, buf),
            blobs,
            || crate::deadline_in(timeout),
            None,
        )
    }

    /// Calls in flight (started and not yet waited for).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

fn status_error(s: Status, body: &[u8]) -> CallError {
    let msg = String::from_utf8_lossy(body).into_owned();
    match s {
        Status::Ok => CallError::BadReply("ok status taken as an error".into()),
        Status::AppError => CallError::App(msg),
        Status::UnknownMethod => CallError::UnknownMethod(msg.parse().unwrap_or(u32::MAX)),
        Status::HandlerPanicked => CallError::HandlerPanicked(msg),
        Status::BadRequest => CallError::BadRequest(msg),
        Status::TooLarge => CallError::TooLarge(msg),
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // A clean close: the server stops serving this connection at once.
        if let Ok(g) = self.tx.try_reserve(kind::CLOSE, 0) {
            g.commit_all();
            self.tx.publish();
        }
        tracing::debug!(server_pid = self.server_pid, "connection closed");
    }
}
