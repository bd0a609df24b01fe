//! The subscribing side: a [`Subscriber`] connects to a publisher by
//! name, checks at connect that both sides speak of the same type, and
//! receives [`Sample`]s from its own ring.
//!
//! It reads only the ring its publisher writes for it. Each body is
//! copied into private memory and validated there before it is read (the
//! copy rule), unless the subscriber was declared trusted. A malformed or
//! invalid message is an error for that message, which is skipped; a
//! corrupt ring ends the subscription. When the publisher dies, the
//! subscriber first reads every message that was published to it, then
//! gets [`RecvError::PeerDied`]; when the publisher closes it (dropped,
//! or for lagging), the same with [`RecvError::Closed`] and the reason.

use std::io;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use isocall_blob::{BlobError, Party, Pool, SharedHandle};
use isocall_ringbuf::SharedRegion;

use crate::WaitStrategy;
use crate::endpoint::{RxFrame, TransportError};
use crate::rpc::body::{self, Body, Checked, Inbox};
use crate::rpc::handshake::{self, REFUSED};
use crate::rpc::wire;
use crate::rpc::{HandshakeError, IntoEndpoint, Policy, TypeSig};
use crate::segment::{Segment, Side};
use crate::stream::{StreamRx, StreamTx};
use crate::sys::{
    Doorbell, PeerCred, SharedMem, SocketName, connect_seqpacket, peer_cred, recv_message,
    send_with_fds,
};

use super::conn::Conn;
use super::error::{ChannelTypeMismatch, CloseReason, RecvError, SubscribeError};
use super::hello::{self, CHANNEL_VERSION, HELLO, MISMATCH};
use super::remote;
use super::sample::{Sample, SampleBlob, Source};
use super::stats::{self, SubscriberStats};
use super::{FLAG_HISTORY, MESSAGE};

/// How a subscriber connects and waits.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SubscriberOptions {
    /// How `recv` waits for a message (default `Adaptive`). Over a stream
    /// socket a receive sleeps in the socket, whatever the strategy.
    pub strategy: WaitStrategy,
    /// How long the handshake may take (default 5 s).
    pub handshake_timeout: Duration,
    /// Who may be the publisher (default: same uid; a squatter on the name
    /// is refused).
    pub publisher_policy: Policy,
    /// Messages of history to ask for (default 0); the publisher sends at
    /// most what it keeps.
    pub history: u32,
    /// A name for this subscriber, which its publisher sees when it
    /// chooses its backpressure and `isocall inspect` shows (at most 64
    /// bytes).
    pub label: String,
}

impl Default for SubscriberOptions {
    fn default() -> Self {
        SubscriberOptions {
            strategy: WaitStrategy::Adaptive,
            handshake_timeout: Duration::from_secs(5),
            publisher_policy: Policy::SameUid,
            history: 0,
            label: String::new(),
        }
    }
}

impl SubscriberOptions {
    /// How `recv` waits.
    #[must_use]
    pub fn strategy(mut self, s: WaitStrategy) -> Self {
        self.strategy = s;
        self
    }

    /// How long the handshake may take.
    #[must_use]
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// Who may be the publisher.
    #[must_use]
    pub fn publisher_policy(mut self, p: Policy) -> Self {
        self.publisher_policy = p;
        self
    }

    /// Asks for the last `n` messages the publisher sent before this
    /// subscriber joined.
    #[must_use]
    pub fn history(mut self, n: u32) -> Self {
        self.history = n;
        self
    }

    /// Names this subscriber.
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }
}

/// Why the subscription is over, once it is.
#[derive(Clone, Copy, Debug)]
enum End {
    Died,
    Closed(CloseReason),
}

/// How a subscriber is connected.
enum Via {
    /// Its own segment and ring.
    Shm {
        /// `None` once the subscription is over and this side let go.
        conn: Option<Conn>,
        segment: Arc<Segment>,
        /// The channel's blob pool, as this subscriber's party, if it has
        /// one.
        pool: Option<Pool<SharedRegion>>,
    },
    /// A stream socket: frames copied, blobs inline into the
    /// connection's own pool.
    Stream {
        /// Kept open: the publisher reads its end as this subscriber's
        /// hang-up.
        _tx: StreamTx,
        rx: StreamRx,
        pool: Option<Arc<Pool<SharedRegion>>>,
    },
}

/// Receives messages of type `T` from a channel's publisher.
///
/// It connects to a publisher's shared-memory name (its own ring) or to
/// one of its stream addresses (`tcp://host:port`, `unix:/path`,
/// `unix-stream:@name`): the API is the same, and only the address says
/// which.
pub struct Subscriber<T: Body> {
    via: Via,
    inbox: Inbox,
    trusted: bool,
    /// Set when a receive found the subscription over.
    end: Option<End>,
    id: u32,
    channel: String,
    publisher: PeerCred,
    _t: PhantomData<fn() -> T>,
}

impl<T: Body> std::fmt::Debug for Subscriber<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("channel", &self.channel)
            .field("id", &self.id)
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

impl<T: Body> Subscriber<T> {
    /// Connects to the publisher at `at` with the default options: a
    /// shared-memory name (a [`SocketName`], `@name`, a path) or a stream
    /// address (`tcp://host:port`, `unix:/path`, `unix-stream:@name`, or
    /// an [`Endpoint`](crate::rpc::Endpoint) with TLS and compression).
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with).
    pub fn connect(at: impl IntoEndpoint) -> Result<Subscriber<T>, SubscribeError> {
        Self::connect_with(at, SubscriberOptions::default())
    }

    /// Connects to the publisher at `at` (see [`connect`](Self::connect)).
    ///
    /// # Errors
    ///
    /// [`SubscribeError::Connect`] if no publisher listens there;
    /// [`SubscribeError::TypeMismatch`] naming both types if the
    /// publisher sends another type; `Refused` (policy, caps, version),
    /// `PublisherRefused`, `VersionMismatch`, `Timeout`, `Handshake`,
    /// `Segment` for the handshake's other failures; `Address` for a
    /// string that is no address, `Stream` for a stream connection's
    /// failure (TLS included).
    pub fn connect_with(
        at: impl IntoEndpoint,
        options: SubscriberOptions,
    ) -> Result<Subscriber<T>, SubscribeError> {
        let at = at.into_endpoint()?;
        if let Some(address) = at.stream_address() {
            let ours = TypeSig::of::<T>();
            let l = super::remote::connect::connect(address, &at, &ours, &options)?;
            return Ok(Subscriber {
                via: Via::Stream {
                    _tx: l.tx,
                    rx: l.rx,
                    pool: l.pool,
                },
                inbox: Inbox::new(),
                trusted: false,
                end: None,
                id: l.id,
                channel: address.to_string(),
                publisher: l.publisher,
                _t: PhantomData,
            });
        }
        let socket = at
            .shm_socket()
            .expect("not a stream address")
            .map_err(SubscribeError::Io)?;
        Self::connect_shm(&socket, options)
    }

    fn connect_shm(
        socket: &SocketName,
        options: SubscriberOptions,
    ) -> Result<Subscriber<T>, SubscribeError> {
        crate::sys::heavy_barrier_available();
        let sock = connect_seqpacket(socket).map_err(|source| SubscribeError::Connect {
            socket: socket.to_string(),
            source,
        })?;
        let deadline = crate::deadline_in(options.handshake_timeout);
        let publisher = peer_cred(sock.as_fd())?;
        options
            .publisher_policy
            .check(&publisher)
            .map_err(SubscribeError::PublisherRefused)?;
        let ours = TypeSig::of::<T>();
        let msg = hello::encode_subscribe(&ours, options.history, &options.label);
        // A publisher that refuses closes the socket at once, without
        // reading our hello: its refusal is still queued for us.
        let sent = send_with_fds(sock.as_fd(), &msg, &[], deadline);
        let mut buf = vec![0u8; handshake::MAX_MESSAGE + 1];
        let received = recv_message(sock.as_fd(), &mut buf, 3, deadline, None);
        let (n, mut fds) = match (received, sent) {
            (Ok(got), _) => got,
            (Err(_), Err(e)) => return Err(e.into()),
            (Err(e), Ok(())) => {
                return Err(match e.kind() {
                    io::ErrorKind::TimedOut => SubscribeError::Timeout(options.handshake_timeout),
                    io::ErrorKind::UnexpectedEof => HandshakeError::Closed.into(),
                    _ => SubscribeError::Io(e),
                });
            }
        };
        let msg = &buf[..n];
        let abort = |reason: &str| handshake::send_abort(sock.as_fd(), reason);
        match msg[0] {
            REFUSED => {
                return Err(SubscribeError::Refused(handshake::decode_refusal(
                    &msg[1..],
                )?));
            }
            MISMATCH => {
                let theirs = hello::decode_mismatch(&msg[1..])?;
                return Err(SubscribeError::TypeMismatch(Box::new(
                    ChannelTypeMismatch {
                        channel: socket.to_string(),
                        ours,
                        theirs,
                    },
                )));
            }
            HELLO => {}
            tag => return Err(HandshakeError::UnexpectedTag { tag }.into()),
        }
        let accept = hello::decode_hello(&msg[1..]).inspect_err(|e| abort(&e.to_string()))?;
        if accept.version != CHANNEL_VERSION {
            abort("channel protocol version mismatch");
            return Err(SubscribeError::VersionMismatch {
                ours: CHANNEL_VERSION,
                theirs: accept.version,
            });
        }
        if accept.ty != ours {
            abort("type mismatch");
            return Err(SubscribeError::TypeMismatch(Box::new(
                ChannelTypeMismatch {
                    channel: socket.to_string(),
                    ours,
                    theirs: accept.ty,
                },
            )));
        }
        let want = if accept.pool { 3 } else { 2 };
        if fds.len() != want {
            let e = HandshakeError::Descriptors {
                expected: want,
                got: fds.len(),
            };
            abort(&e.to_string());
            return Err(e.into());
        }
        let pool_fd = if accept.pool { fds.pop() } else { None };
        let bell = fds.pop().expect("2 fds");
        let memfd = fds.pop().expect("2 fds");
        let doorbell = Doorbell::from_peer_end(bell).map_err(|_| {
            abort("the doorbell is not a seqpacket socket");
            HandshakeError::NotADoorbell
        })?;
        let pool = match pool_fd {
            Some(fd) => {
                Some(open_pool(fd, accept.subscriber).inspect_err(|e| abort(&e.to_string()))?)
            }
            None => None,
        };
        let segment = Arc::new(Segment::open(memfd).inspect_err(|e| abort(&e.to_string()))?);
        let conn = Conn::attach(
            segment.clone(),
            Side::Client,
            doorbell,
            options.strategy,
            sock,
            &publisher,
        )
        // The socket went into the failed attach: its close tells the
        // publisher.
        .map_err(|e| io::Error::other(e.to_string()))?;
        send_with_fds(conn.sock.as_fd(), &[handshake::READY], &[], deadline)?;
        tracing::debug!(channel = %socket, id = accept.subscriber, publisher = ?publisher.pid, "subscribed");
        Ok(Subscriber {
            via: Via::Shm {
                conn: Some(conn),
                segment,
                pool,
            },
            inbox: Inbox::new(),
            trusted: false,
            end: None,
            id: accept.subscriber,
            channel: socket.to_string(),
            publisher,
            _t: PhantomData,
        })
    }

    /// Reads message bodies in place in the ring, without copying them out
    /// or validating them: each [`Sample`] then holds its ring frame until
    /// it is dropped.
    ///
    /// # Safety
    ///
    /// The publisher must write only valid archives of `T` and never write
    /// a frame after publishing it: an invalid archive read unchecked is
    /// undefined behaviour.
    ///
    /// Over a stream socket it changes nothing: a frame arrives in this
    /// process's own memory, and its body is always checked.
    // SAFETY: the caller's promise (see `# Safety`) is what makes the
    // unchecked reads in `Sample` sound; this only records it.
    #[allow(unsafe_code)] // declares a contract; the unchecked read is in `sample`
    pub unsafe fn set_trusted(&mut self) {
        self.trusted = true;
    }

    /// Waits for the next message, as long as it takes (the publisher's
    /// death or close ends the wait: see [`RecvError`]).
    ///
    /// # Errors
    ///
    /// [`RecvError::PeerDied`] or [`RecvError::Closed`] once every message
    /// published to this subscriber has been read; `Invalid`, `BadFrame`,
    /// `UnexpectedKind` for a bad message (skipped: receive again);
    /// `Transport` for a corrupt ring (the subscription is over).
    #[inline]
    pub fn recv(&mut self) -> Result<Sample<'_, T>, RecvError> {
        self.next(None, true)
            .map(|s| s.expect("a receive that waits returns a message or an error"))
    }

    /// Waits for the next message at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`RecvError::Timeout`], or as [`recv`](Self::recv).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Sample<'_, T>, RecvError> {
        self.recv_deadline(crate::deadline_in(timeout))
    }

    /// Waits for the next message until `deadline`.
    ///
    /// # Errors
    ///
    /// [`RecvError::Timeout`], or as [`recv`](Self::recv).
    pub fn recv_deadline(&mut self, deadline: Instant) -> Result<Sample<'_, T>, RecvError> {
        self.next(Some(deadline), true)
            .map(|s| s.expect("a receive that waits returns a message or an error"))
    }

    /// The next message if one is there now.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    #[inline]
    pub fn try_recv(&mut self) -> Result<Option<Sample<'_, T>>, RecvError> {
        self.next(None, false)
    }

    /// The error that ends the subscription, letting go of the
    /// connection (the publisher then frees this subscriber's id).
    fn ended(&mut self) -> Option<RecvError> {
        let end = self.end?;
        if let Via::Shm {
            conn,
            segment,
            pool,
        } = &mut self.via
            && let Some(conn) = conn.take()
        {
            // No sample lives (they borrow the subscriber): this side holds
            // nothing of the pool any more, and says so before it hangs up.
            if let Some(pool) = pool {
                pool.leave();
            }
            segment.close_side(Side::Client);
            drop(conn);
        }
        Some(match end {
            End::Died => RecvError::PeerDied,
            End::Closed(r) => RecvError::Closed(r),
        })
    }

    #[inline]
    fn next(
        &mut self,
        deadline: Option<Instant>,
        wait: bool,
    ) -> Result<Option<Sample<'_, T>>, RecvError> {
        if self.end.is_some() {
            return Err(self.ended().expect("the subscription is over"));
        }
        let Subscriber {
            via,
            inbox,
            trusted,
            end,
            ..
        } = self;
        let (conn, segment, pool) = match via {
            Via::Shm {
                conn,
                segment,
                pool,
            } => (conn, segment, pool),
            Via::Stream { rx, pool, .. } => {
                return next_stream(rx, pool, inbox, end, deadline, wait);
            }
        };
        let Some(conn) = conn.as_mut() else {
            return Err(RecvError::PeerDied);
        };
        let got = if wait {
            conn.rx.recv(deadline).map(Some)
        } else {
            conn.rx.try_recv()
        };
        let frame = match got {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(TransportError::PeerDied) => {
                // Every frame published before the end was read. The
                // publisher says why it closed us, if it did (its word:
                // it only changes what we report).
                let e = match stats::close_reason(segment) {
                    Some(r) => End::Closed(r),
                    None => End::Died,
                };
                *end = Some(e);
                return Err(match e {
                    End::Died => RecvError::PeerDied,
                    End::Closed(r) => RecvError::Closed(r),
                });
            }
            Err(e) => return Err(e.into()),
        };
        read_frame(frame, inbox, pool.as_ref(), *trusted).map(Some)
    }

    /// Its id on the channel (its party in the channel's blob pool).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The channel's socket name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The publisher's credentials.
    pub fn publisher(&self) -> PeerCred {
        self.publisher
    }

    /// The counters the publisher keeps for this subscriber (its words:
    /// display only). `None` over a stream socket: there the publisher
    /// keeps them in its own process (see
    /// [`Publisher::subscriber_stats`](super::Publisher::subscriber_stats)).
    pub fn stats(&self) -> Option<SubscriberStats> {
        match &self.via {
            Via::Shm { segment, .. } => stats::subscriber_stats(segment),
            Via::Stream { .. } => None,
        }
    }

    /// Whether it is connected over a stream socket (not shared memory).
    pub fn is_stream(&self) -> bool {
        matches!(self.via, Via::Stream { .. })
    }
}

/// The next message over a stream: as `Subscriber::next`, from a stream
/// frame (the body is copied out and validated; trusted or not, a stream
/// frame is private memory, but its body is still checked).
fn next_stream<'a, T: Body>(
    rx: &'a mut StreamRx,
    pool: &'a Option<Arc<Pool<SharedRegion>>>,
    inbox: &'a mut Inbox,
    end: &mut Option<End>,
    deadline: Option<Instant>,
    wait: bool,
) -> Result<Option<Sample<'a, T>>, RecvError> {
    let got = if wait {
        rx.recv(deadline).map(Some)
    } else {
        rx.try_recv()
    };
    let frame = match got {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(None),
        Err(e) => {
            let e = RecvError::from(e);
            if !matches!(e, RecvError::Timeout) {
                // The connection is over: what came before was read.
                *end = Some(End::Died);
            }
            return Err(e);
        }
    };
    let pool = pool.as_deref();
    match remote::connect::read_frame(frame, pool, inbox)? {
        remote::connect::Got::Closed(r) => {
            *end = Some(End::Closed(r));
            Err(RecvError::Closed(r))
        }
        remote::connect::Got::Message {
            seq,
            history,
            blobs,
        } => {
            let checked: Checked<'a, T> = body::check::<T>(inbox.bytes())?;
            let blobs = blobs.into_iter().map(SampleBlob::Local).collect();
            Ok(Some(Sample::new(
                Source::Private(checked),
                blobs,
                seq,
                history,
            )))
        }
    }
}

/// Maps the channel's blob pool the publisher sent, as party `id`.
fn open_pool(fd: std::os::fd::OwnedFd, id: u32) -> Result<Pool<SharedRegion>, SubscribeError> {
    let mem = SharedMem::open_with_regions(fd, 0)?;
    let region = mem
        .region(0, mem.len())
        .ok_or(SubscribeError::Blobs(BlobError::NoPool))?;
    let party = Party::new(id as usize).ok_or(SubscribeError::Blobs(BlobError::NoPool))?;
    Ok(Pool::open_as(region, party)?)
}

/// Accepts this party's references to the blobs a frame names; on an
/// error gives up those accepted.
fn accept_blobs<'a>(
    handles: &[u8],
    pool: Option<&'a Pool<SharedRegion>>,
) -> Result<Vec<SampleBlob<'a>>, BlobError> {
    if handles.is_empty() {
        return Ok(Vec::new());
    }
    let pool = pool.ok_or(BlobError::NoPool)?;
    let mut out = Vec::with_capacity(handles.len() / wire::HANDLE);
    let mut failed = None;
    // Every handle is tried, so that none of this party's references is
    // left unaccepted (and so never given up) after an error.
    for c in handles.chunks_exact(wire::HANDLE) {
        let h = SharedHandle::from_bytes(c).expect("16 bytes");
        match pool.accept_shared(&h) {
            Ok(b) => out.push(SampleBlob::Shared(b)),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// A message frame's wire parts, its sequence number and whether it is
/// history; an error for a frame of another `kind` or a payload that is
/// no message (the caller still holds the frame, and releases it).
#[inline]
pub(super) fn parse_message(
    kind: u16,
    payload: &[u8],
) -> Result<(wire::Parsed<'_>, u64, bool), RecvError> {
    if kind != MESSAGE {
        return Err(RecvError::UnexpectedKind { kind });
    }
    let p = wire::parse(payload)?;
    let (seq, history) = (p.head.id, p.head.status & FLAG_HISTORY != 0);
    Ok((p, seq, history))
}

/// Turns a ring frame into a sample: checks its kind and head, accepts
/// its blobs, copies its body out and validates it (or, trusted, keeps
/// the frame).
#[inline]
fn read_frame<'a, T: Body>(
    frame: RxFrame<'a>,
    inbox: &'a mut Inbox,
    pool: Option<&'a Pool<SharedRegion>>,
    trusted: bool,
) -> Result<Sample<'a, T>, RecvError> {
    let (p, seq, history) = match parse_message(frame.kind(), frame.payload()) {
        Ok(m) => m,
        Err(e) => {
            frame.release();
            return Err(e);
        }
    };
    let blobs = match accept_blobs(p.blobs, pool) {
        Ok(b) => b,
        Err(e) => {
            frame.release();
            return Err(e.into());
        }
    };
    if trusted {
        let at = wire::HEAD + p.blobs.len();
        let body = at..at + p.body.len();
        return Ok(Sample::new(
            Source::InRing(Some(frame), body),
            blobs,
            seq,
            history,
        ));
    }
    // The copy rule: the body leaves the ring before it is checked.
    inbox.fill(p.body);
    frame.release();
    let checked: Checked<'a, T> = body::check::<T>(inbox.bytes())?;
    Ok(Sample::new(Source::Private(checked), blobs, seq, history))
}

impl<T: Body> Drop for Subscriber<T> {
    fn drop(&mut self) {
        // Closing our side cleanly: the segment says so, the watch lets
        // go of our lifeline and the socket hangs up.
        // No sample lives (they borrow the subscriber): the references
        // shared to this party that it never accepted (messages still in
        // its ring) are given up, and the segment says this side holds
        // nothing any more (the publisher then reclaims what was shared to
        // it since), before the connection closes.
        if let Via::Shm {
            conn: Some(_),
            segment,
            pool,
        } = &self.via
        {
            if let Some(pool) = pool {
                pool.leave();
            }
            segment.close_side(Side::Client);
        }
    }
}
