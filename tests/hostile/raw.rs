//! Peers that speak protocol 3 themselves, through `isocall::raw`, so they
//! can break it: a raw client (handshake, then frames it writes and
//! rewrites at will) and a raw server (its own hello, segment and
//! doorbell, then whatever replies it likes).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isocall::SocketName;
use isocall::blob::{BlobHandle, Pool};
use isocall::raw::handshake::{
    self, ClientHello, HELLO, HELLO_MAGIC, MethodInfo, READY, REFUSED, ServerHello, ServerHelloHead,
};
use isocall::raw::sys::{
    Doorbell, Ready, accept_seqpacket, connect_seqpacket, listen_seqpacket, poll_ready,
    recv_message, send_with_fds,
};
use isocall::raw::wire::{self, CallHead, PROTOCOL_VERSION};
use isocall::raw::{
    Direction, Liveness, Receiver, RxFrame, Segment, SegmentLayout, Sender, Side, endpoint,
};
use isocall::ring::{Region, SharedRegion};
use isocall::rpc::Refusal;
use isocall::{Body, WaitStrategy};

/// How long a raw handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Serializes `value` into an archive (a request or reply body).
pub fn archive<T>(value: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
{
    rkyv::to_bytes::<rkyv::rancor::Error>(value)
        .expect("archive a body")
        .to_vec()
}

/// The method table entry of `m`, as a server announces it.
pub fn method_info<Req: Body, Resp: Body>(m: isocall::Method<Req, Resp>) -> MethodInfo {
    MethodInfo {
        name: m.name().to_string(),
        idempotent: m.is_idempotent(),
        signature: m.signature(),
    }
}

/// A frame taken off a ring: its kind, head, handles and a copy of its
/// body (the whole payload if it is not a call frame).
pub type Taken = (u16, CallHead, Vec<BlobHandle>, Vec<u8>);

/// One side's view of a connection made by hand: the segment, the
/// doorbell end, the sender and receiver on the rings, the pool.
pub struct RawLink {
    /// The connection's socket.
    pub sock: OwnedFd,
    /// The segment.
    pub segment: Arc<Segment>,
    /// A duplicate of the segment's memfd (to map it whole, e.g. to
    /// scribble on it).
    pub memfd: OwnedFd,
    /// This side's doorbell end.
    pub doorbell: Arc<Doorbell>,
    /// The sender on the ring this side writes.
    pub tx: Sender,
    /// The receiver on the ring this side reads.
    pub rx: Receiver,
    /// The pool as this side sees it.
    pub pool: Option<Pool<SharedRegion>>,
    /// Which side this is.
    pub side: Side,
}

impl RawLink {
    /// One side's link over a segment the handshake gave it.
    pub fn new(
        sock: OwnedFd,
        segment: Segment,
        doorbell: Doorbell,
        side: Side,
    ) -> Result<RawLink, String> {
        let memfd = segment
            .fd()
            .try_clone_to_owned()
            .map_err(|e| format!("dup memfd: {e}"))?;
        let segment = Arc::new(segment);
        segment.attach_side(side);
        let doorbell = Arc::new(doorbell);
        let (tx, rx) = endpoint(
            segment.clone(),
            side,
            doorbell.clone(),
            WaitStrategy::Adaptive,
            Liveness::new(),
        )
        .map_err(|e| format!("endpoint: {e}"))?;
        let pool = segment.blob_pool(side).map_err(|e| format!("pool: {e}"))?;
        Ok(RawLink {
            sock,
            segment,
            memfd,
            doorbell,
            tx,
            rx,
            pool,
            side,
        })
    }

    /// The region of the ring this side writes.
    pub fn tx_region(&self) -> SharedRegion {
        self.segment.ring_region(self.side.tx())
    }

    /// The region of the ring this side reads.
    pub fn rx_region(&self) -> SharedRegion {
        self.segment.ring_region(self.side.rx())
    }

    /// Writes a call frame (head, handles, `body`) and publishes it;
    /// returns the offset of the body in [`tx_region`](Self::tx_region),
    /// for rewriting it afterwards.
    pub fn put(
        &mut self,
        kind: u16,
        head: CallHead,
        blobs: &[BlobHandle],
        body: &[u8],
        deadline: Instant,
    ) -> Result<usize, String> {
        let base = region_base(&self.tx_region());
        let at = wire::HEAD + blobs.len() * wire::HANDLE;
        let mut g = self
            .tx
            .reserve(kind, at + body.len(), Some(deadline))
            .map_err(|e| format!("reserve: {e}"))?;
        let bytes = g.bytes_mut();
        let off = bytes.as_ptr() as usize - base + at;
        let head = CallHead {
            nblobs: blobs.len() as u32,
            body_len: body.len() as u32,
            ..head
        };
        wire::write_head(bytes, &head, blobs);
        bytes[at..].copy_from_slice(body);
        g.commit_all();
        self.tx.publish();
        Ok(off)
    }

    /// Writes a frame without waiting: `Ok(None)` when the ring is full.
    pub fn try_put(
        &mut self,
        kind: u16,
        head: CallHead,
        body: &[u8],
    ) -> Result<Option<()>, String> {
        let at = wire::HEAD;
        match self.tx.try_reserve(kind, at + body.len()) {
            Ok(mut g) => {
                let head = CallHead {
                    body_len: body.len() as u32,
                    ..head
                };
                wire::write_head(g.bytes_mut(), &head, &[]);
                g.bytes_mut()[at..].copy_from_slice(body);
                g.commit_all();
                self.tx.publish();
                Ok(Some(()))
            }
            Err(isocall::raw::TransportError::Full) => Ok(None),
            Err(e) => Err(format!("reserve: {e}")),
        }
    }

    /// The next call frame: its kind, head, handles and a copy of its
    /// body; `None` when none came before `deadline`.
    pub fn take(&mut self, deadline: Instant) -> Result<Option<Taken>, String> {
        match self.rx.recv(Some(deadline)) {
            Ok(f) => Ok(Some(copy_out(f))),
            Err(isocall::raw::TransportError::Timeout) => Ok(None),
            Err(e) => Err(format!("recv: {e}")),
        }
    }

    /// The next frame if one is there now (as [`take`](Self::take)).
    pub fn try_take(&mut self) -> Result<Option<Taken>, String> {
        match self.rx.try_recv() {
            Ok(f) => Ok(f.map(copy_out)),
            Err(e) => Err(format!("recv: {e}")),
        }
    }

    /// Whether the peer hung up the connection's socket (it closed the
    /// connection or died).
    pub fn hung_up(&self) -> bool {
        poll_ready(&[(self.sock.as_fd(), Ready::HangUp)], Some(Duration::ZERO))
            .map(|r| r[0])
            .unwrap_or(true)
    }
}

/// Copies `frame` out of the ring (parsed as a call frame if it is one)
/// and releases it.
fn copy_out(frame: RxFrame<'_>) -> Taken {
    let k = frame.kind();
    let out = match wire::parse(frame.payload()) {
        Ok(p) => (k, p.head, p.blob_vec(), p.body.to_vec()),
        Err(_) => (k, CallHead::default(), Vec::new(), frame.payload().to_vec()),
    };
    frame.release();
    out
}

/// The address of a region's first byte.
pub fn region_base(r: &SharedRegion) -> usize {
    isocall::ring::region_key(r)
}

/// The 64-bit word at `off` of `region`, to scribble on or look at as a
/// hostile peer would.
///
/// For these tests only, which play the peer: every caller uses it on bytes
/// this process holds no grant, frame or blob of while the word lives
/// (frames it published and never reads back in place, ring control words,
/// blob state words, a pool's words between blobs), which is what
/// `Region::u64_at` asks.
pub fn peer_u64(region: &impl Region, off: usize) -> &std::sync::atomic::AtomicU64 {
    // SAFETY: the callers' promise above: no slice of this process covers
    // the word while it lives.
    unsafe { region.u64_at(off) }
}

/// As [`peer_u64`], for a 32-bit word.
pub fn peer_u32(region: &impl Region, off: usize) -> &std::sync::atomic::AtomicU32 {
    // SAFETY: as in `peer_u64`.
    unsafe { region.u32_at(off) }
}

/// A client that runs the handshake itself.
pub struct RawClient {
    /// The server's hello.
    pub hello: ServerHello,
    /// The connection.
    pub link: RawLink,
}

impl RawClient {
    /// Connects and runs the handshake; `Err` with the refusal if the
    /// server refused, or a description of what failed.
    pub fn connect(socket: &SocketName) -> Result<RawClient, Result<Refusal, String>> {
        Self::connect_with(socket, |_| {})
    }

    /// As [`connect`](Self::connect), running `before_ready` on the
    /// connection before it tells the server it is ready (when the
    /// server's watch on it starts).
    pub fn connect_with(
        socket: &SocketName,
        before_ready: impl FnOnce(&RawLink),
    ) -> Result<RawClient, Result<Refusal, String>> {
        let deadline = Instant::now() + HANDSHAKE;
        let other = |what: &str, e: &dyn std::fmt::Display| Err(format!("{what}: {e}"));
        let sock = connect_seqpacket(socket).map_err(|e| other("connect", &e))?;
        send_with_fds(
            sock.as_fd(),
            bytemuck::bytes_of(&ClientHello::ours()),
            &[],
            deadline,
        )
        .map_err(|e| other("client hello", &e))?;
        let mut buf = vec![0u8; handshake::MAX_MESSAGE + 1];
        let (n, mut fds) = recv_message(sock.as_fd(), &mut buf, 2, deadline, None)
            .map_err(|e| other("server hello", &e))?;
        match buf.first() {
            Some(&REFUSED) => {
                return Err(handshake::decode_refusal(&buf[1..n]).map_err(|e| e.to_string()));
            }
            Some(&HELLO) => {}
            t => return Err(Err(format!("unexpected hello tag {t:?}"))),
        }
        let hello = handshake::decode_hello(&buf[1..n]).map_err(|e| other("hello", &e))?;
        if fds.len() != 2 {
            return Err(Err(format!("{} descriptors with the hello", fds.len())));
        }
        let bell = fds.pop().expect("2 fds");
        let memfd = fds.pop().expect("2 fds");
        let doorbell = Doorbell::from_peer_end(bell).map_err(|e| other("doorbell", &e))?;
        let segment = Segment::open(memfd).map_err(|e| other("segment", &e))?;
        let link = RawLink::new(sock, segment, doorbell, Side::Client).map_err(Err)?;
        before_ready(&link);
        send_with_fds(link.sock.as_fd(), &[READY], &[], deadline)
            .map_err(|e| other("ready", &e))?;
        Ok(RawClient { hello, link })
    }

    /// The id of the server's method `name`.
    pub fn method(&self, name: &str) -> u32 {
        self.hello
            .methods
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("the server has no method {name}")) as u32
    }

    /// Sends a REQUEST of `method` with `body` and `blobs`; returns the
    /// body's offset in the c2s ring region.
    pub fn request(
        &mut self,
        id: u64,
        method: u32,
        blobs: &[BlobHandle],
        body: &[u8],
    ) -> Result<usize, String> {
        let head = CallHead {
            id,
            method,
            ..CallHead::default()
        };
        self.link.put(
            wire::kind::REQUEST,
            head,
            blobs,
            body,
            Instant::now() + Duration::from_secs(10),
        )
    }

    /// Waits for the RESPONSE to `id` (skipping others) until `deadline`:
    /// its status and body.
    pub fn response(
        &mut self,
        id: u64,
        deadline: Instant,
    ) -> Result<(u32, Vec<BlobHandle>, Vec<u8>), String> {
        loop {
            match self.link.take(deadline)? {
                None => return Err(format!("no response to call {id} before the deadline")),
                Some((wire::kind::RESPONSE, h, blobs, body)) if h.id == id => {
                    return Ok((h.status, blobs, body));
                }
                Some((wire::kind::CLOSE, _, _, body)) => {
                    return Err(format!("the server closed the connection ({body:?})"));
                }
                Some(_) => {}
            }
        }
    }
}

/// Waits for a peer (`who`, for errors) on `listener`, accepts it and
/// reads its hello into `buf`: the socket, the hello's length, and the
/// handshake's deadline.
pub fn accept_hello(
    listener: &OwnedFd,
    who: &str,
    buf: &mut [u8],
) -> Result<(OwnedFd, usize, Instant), String> {
    let deadline = Instant::now() + HANDSHAKE;
    let r = poll_ready(&[(listener.as_fd(), Ready::Readable)], Some(HANDSHAKE))
        .map_err(|e| format!("poll: {e}"))?;
    if !r[0] {
        return Err(format!("no {who} came"));
    }
    let sock = accept_seqpacket(listener.as_fd()).map_err(|e| format!("accept: {e}"))?;
    let (n, _) = recv_message(sock.as_fd(), buf, 0, deadline, None)
        .map_err(|e| format!("{who} hello: {e}"))?;
    Ok((sock, n, deadline))
}

/// A server that runs the handshake itself, on its own listener.
pub struct RawServer {
    listener: OwnedFd,
    conns: u32,
}

impl RawServer {
    /// Listens on `socket`.
    pub fn listen(socket: &SocketName) -> RawServer {
        RawServer {
            listener: listen_seqpacket(socket).expect("listen"),
            conns: 0,
        }
    }

    /// Accepts one client and runs the handshake with `methods` and a
    /// segment of `layout`. `keep_client_end`: keep a duplicate of the
    /// doorbell end sent to the client (which shares the client's open
    /// file description, flags included).
    pub fn accept(
        &mut self,
        methods: &[MethodInfo],
        layout: &SegmentLayout,
        keep_client_end: bool,
    ) -> Result<(RawLink, Option<OwnedFd>), String> {
        let mut buf = [0u8; 256];
        let (sock, n, deadline) = accept_hello(&self.listener, "client", &mut buf)?;
        ClientHello::decode(&buf[..n]).map_err(|e| format!("client hello: {e}"))?;
        self.conns += 1;
        let segment = Segment::create(&format!("isocall:hostile-server:{}", self.conns), layout)
            .map_err(|e| format!("segment: {e}"))?;
        let (ours, theirs) = Doorbell::pair().map_err(|e| format!("doorbell: {e}"))?;
        let kept = if keep_client_end {
            Some(theirs.try_clone().map_err(|e| format!("dup: {e}"))?)
        } else {
            None
        };
        let msg = handshake::encode_hello(
            &ServerHelloHead {
                magic: HELLO_MAGIC,
                version: PROTOCOL_VERSION,
                nmethods: methods.len() as u32,
                max_frame: 64 << 10,
                conn: self.conns,
            },
            methods,
        );
        send_with_fds(
            sock.as_fd(),
            &msg,
            &[segment.fd(), theirs.as_fd()],
            deadline,
        )
        .map_err(|e| format!("hello: {e}"))?;
        drop(theirs);
        let (n, _) = recv_message(sock.as_fd(), &mut buf, 0, deadline, None)
            .map_err(|e| format!("ready: {e}"))?;
        if n == 0 || buf[0] != READY {
            return Err(format!("the client did not say ready ({:?})", &buf[..n]));
        }
        let link = RawLink::new(sock, segment, ours, Side::Server)?;
        Ok((link, kept))
    }
}

/// The server's ring region a client reads (server to client).
pub fn s2c(link: &RawLink) -> SharedRegion {
    link.segment.ring_region(Direction::ServerToClient)
}

/// The client's ring region a server reads (client to server).
pub fn c2s(link: &RawLink) -> SharedRegion {
    link.segment.ring_region(Direction::ClientToServer)
}
