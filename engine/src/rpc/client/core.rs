//! What every client does the same way: the client's end of the
//! handshake, resolving methods against the server's table, writing a
//! request frame, and turning an error status into a [`CallError`].

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use isocall_blob::BlobHandle;
use isocall_ringbuf::Spinner;
use rkyv::ser::allocator::Arena;

use super::ClientOptions;
use crate::endpoint::TransportError;
use crate::rpc::body::{Body, EncodeError};
use crate::rpc::error::{AppError, CallError, ConnectError, TypeMismatch};
use crate::rpc::handshake::{self, ClientHello, HELLO, HandshakeError, MethodInfo, READY, REFUSED};
use crate::rpc::link::{Link, SendFrames, WriteFrame};
use crate::rpc::method::{Message, MessageRef, Method, MethodRef, next_client_tag};
use crate::rpc::wire::{self, CallHead, ErrorBody, MAX_BLOBS, PROTOCOL_VERSION, Status};
use crate::segment::{Segment, SegmentLayout, Side};
use crate::sys::{Doorbell, PeerCred, peer_cred, recv_message, send_with_fds};

/// What a client knows of its connection, fixed at the handshake.
#[derive(Debug)]
pub(crate) struct Info {
    /// Tells this client's method refs from others'.
    pub(crate) tag: u64,
    pub(crate) methods: Vec<MethodInfo>,
    pub(crate) by_name: HashMap<String, u32>,
    pub(crate) max_frame: usize,
    pub(crate) server: PeerCred,
    pub(crate) layout: SegmentLayout,
    pub(crate) options: ClientOptions,
    /// The server's pid as it said (stream) or as the socket says.
    pub(crate) server_pid: Option<u32>,
}

/// Runs the client's end of the handshake over `sock`.
pub(crate) fn handshake(
    sock: OwnedFd,
    options: ClientOptions,
) -> Result<(Link, Info), ConnectError> {
    let deadline = crate::deadline_in(options.handshake_timeout);
    let server = peer_cred(sock.as_fd())?;
    options
        .server_policy
        .check(&server)
        .map_err(ConnectError::ServerRefused)?;
    // A server that refuses closes the socket right after its refusal,
    // without reading our hello: the hello may find the socket closed
    // already. The refusal is still queued for us, and is what to report.
    let sent = send_with_fds(
        sock.as_fd(),
        bytemuck::bytes_of(&ClientHello::ours()),
        &[],
        deadline,
    );
    let closed = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        )
    };
    if let Err(e) = &sent
        && !closed(e)
    {
        return Err(sent.unwrap_err().into());
    }
    let mut buf = vec![0u8; handshake::MAX_MESSAGE + 1];
    let received = recv_message(sock.as_fd(), &mut buf, 2, deadline, None);
    if let Err(e) = sent {
        return match received {
            Ok((n, _)) if n > 0 && buf[0] == REFUSED => Err(ConnectError::Refused(
                handshake::decode_refusal(&buf[1..n])?,
            )),
            _ => Err(e.into()),
        };
    }
    let (n, mut fds) = received.map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut => ConnectError::Timeout(options.handshake_timeout),
        io::ErrorKind::UnexpectedEof => ConnectError::Handshake(HandshakeError::Closed),
        _ => ConnectError::Io(e),
    })?;
    let msg = &buf[..n];
    let abort = |reason: &str| handshake::send_abort(sock.as_fd(), reason);
    match msg[0] {
        REFUSED => {
            return Err(ConnectError::Refused(handshake::decode_refusal(&msg[1..])?));
        }
        HELLO => {}
        tag => return Err(HandshakeError::UnexpectedTag { tag }.into()),
    }
    let hello = handshake::decode_hello(&msg[1..]).inspect_err(|e| abort(&e.to_string()))?;
    if hello.head.version != PROTOCOL_VERSION {
        abort("protocol version mismatch");
        return Err(ConnectError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: hello.head.version,
        });
    }
    if fds.len() != 2 {
        let e = HandshakeError::Descriptors {
            expected: 2,
            got: fds.len(),
        };
        abort(&e.to_string());
        return Err(e.into());
    }
    let bell = fds.pop().expect("2 fds");
    let memfd = fds.pop().expect("2 fds");
    let doorbell = Doorbell::from_peer_end(bell).map_err(|_| {
        abort("the doorbell is not a seqpacket socket");
        HandshakeError::NotADoorbell
    })?;
    // Seals, magic, version and layout are checked before anything is
    // used.
    let segment = Segment::open(memfd).inspect_err(|e| abort(&e.to_string()))?;
    let layout = segment.layout();
    let link = Link::attach(
        segment,
        Side::Client,
        doorbell,
        options.strategy,
        sock,
        &server,
    )
    .map_err(|e| io::Error::other(e.to_string()))?;
    let ring = link
        .ring
        .as_ref()
        .expect("a shared-memory link has its socket");
    send_with_fds(ring.sock.as_fd(), &[READY], &[], deadline)?;
    tracing::debug!(
        server_pid = ?server.pid,
        methods = hello.methods.len(),
        conn = hello.head.conn,
        "connected"
    );
    let info = Info::new(
        hello.methods,
        (hello.head.max_frame as usize).max(wire::HEAD),
        server,
        layout,
        options,
        server.pid,
    );
    Ok((link, info))
}

impl Info {
    /// What a client learnt from a server's hello, under a new tag, its
    /// methods indexed by name.
    pub(crate) fn new(
        methods: Vec<MethodInfo>,
        max_frame: usize,
        server: PeerCred,
        layout: SegmentLayout,
        options: ClientOptions,
        server_pid: Option<u32>,
    ) -> Info {
        let by_name = methods
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), i as u32))
            .collect();
        Info {
            tag: next_client_tag(),
            methods,
            by_name,
            max_frame,
            server,
            layout,
            options,
            server_pid,
        }
    }

    fn find(&self, name: &str) -> Result<(u32, &MethodInfo), CallError> {
        let id = *self
            .by_name
            .get(name)
            .ok_or_else(|| CallError::NoSuchMethod {
                name: name.to_string(),
            })?;
        Ok((id, &self.methods[id as usize]))
    }

    /// Resolves `m` against the server's table: same name, kind and types.
    pub(crate) fn resolve<Req: Body, Resp: Body>(
        &self,
        m: Method<Req, Resp>,
    ) -> Result<MethodRef<Req, Resp>, CallError> {
        let (id, info) = self.find(m.name())?;
        let ours = m.signature();
        if info.signature != ours {
            return Err(TypeMismatch {
                method: m.name().to_string(),
                ours,
                theirs: info.signature.clone(),
            }
            .into());
        }
        Ok(MethodRef::new(id, self.tag, m.name(), info.idempotent))
    }

    /// Resolves the one-way `m` against the server's table.
    pub(crate) fn resolve_message<M: Body>(
        &self,
        m: Message<M>,
    ) -> Result<MessageRef<M>, CallError> {
        let (id, info) = self.find(m.name())?;
        let ours = m.signature();
        if info.signature != ours {
            return Err(TypeMismatch {
                method: m.name().to_string(),
                ours,
                theirs: info.signature.clone(),
            }
            .into());
        }
        Ok(MessageRef::new(id, self.tag, m.name()))
    }

    /// The name of method `id` (for errors).
    pub(crate) fn method_name(&self, id: u32) -> String {
        self.methods
            .get(id as usize)
            .map_or_else(|| format!("#{id}"), |m| m.name.clone())
    }

    /// The error an error RESPONSE to method `id` says.
    pub(crate) fn status_error(&self, id: u32, status: u32, body: &[u8]) -> CallError {
        let (code, message) = ErrorBody::read(body);
        match Status::from_u32(status) {
            Some(Status::AppError) => CallError::App(AppError { code, message }),
            Some(Status::UnknownMethod) => CallError::UnknownMethod { id },
            Some(Status::HandlerPanicked) => CallError::HandlerPanicked {
                method: self.method_name(id),
                message,
            },
            Some(Status::BadRequest) => CallError::BadRequest {
                method: self.method_name(id),
                expected: self
                    .methods
                    .get(id as usize)
                    .map_or_else(String::new, |m| m.signature.request.name.clone()),
                detail: message,
            },
            Some(Status::TooLarge) => CallError::ReplyTooLarge {
                method: self.method_name(id),
                detail: message,
            },
            Some(Status::Ok) | None => {
                CallError::BadReply(crate::rpc::error::ReplyError::UnknownStatus { status })
            }
        }
    }

    /// Checks that a method ref was resolved on this client.
    #[inline]
    pub(crate) fn check_ref(&self, client: u64, method: &'static str) -> Result<(), CallError> {
        if client == self.tag {
            Ok(())
        } else {
            Err(CallError::ForeignMethod { method })
        }
    }
}

/// Whether a request is held back (see `ClientOptions::batch_requests`):
/// while the requests held back, this one among them, are fewer than half
/// the calls in flight before it, `sent` less `answered` (saturating: a
/// hostile server's stray replies count as answers, and then nothing is
/// held), so that a batch reaches the server while the replies to the one
/// before come back.
#[inline(always)]
pub(crate) fn holds_back(held: u64, sent: u64, answered: u64) -> bool {
    let in_flight = sent.saturating_sub(answered);
    held.saturating_add(1).saturating_mul(2) < in_flight.saturating_add(1)
}

/// Writes one frame: head, blob handles, and the body `encode` writes into
/// the grant (returning its length), then publishes it, unless `defer`
/// (then the writer publishes it later, with the frames after it). When
/// the ring is full, what was written is published and `on_full` runs (it
/// drains replies so the server can go on, and waits a little, or fails
/// at the call's deadline); then it tries again.
#[allow(clippy::too_many_arguments)] // one private writer for every frame
#[inline(always)]
pub(crate) fn put<T: SendFrames>(
    defer: bool,
    tx: &mut T,
    arena: &mut Arena,
    max_frame: usize,
    frame_kind: u16,
    id: u64,
    method: u32,
    mut encode: impl FnMut(&mut [u8], &mut Arena) -> Result<usize, EncodeError>,
    blobs: &[BlobHandle],
    mut on_full: impl FnMut(&mut T) -> Result<(), CallError>,
) -> Result<(), CallError> {
    if blobs.len() > MAX_BLOBS {
        return Err(CallError::TooManyBlobs {
            count: blobs.len(),
            max: MAX_BLOBS,
        });
    }
    let body_at = wire::HEAD + blobs.len() * wire::HANDLE;
    let max = max_frame.min(tx.max_payload());
    // Most bodies are small: try a small grant first, then the largest.
    let mut room = max.min(body_at + 4096);
    loop {
        // What to do next is decided while the grant (or the failed
        // reservation) lives, and done once it is gone: `tx` is used again
        // only after the statement (a transport's grant may have a
        // destructor that holds its borrow).
        let next = match tx.try_reserve(frame_kind, room) {
            Ok(mut g) => match encode(&mut g.bytes_mut()[body_at..], arena) {
                Ok(n) => {
                    let head = CallHead {
                        id,
                        method,
                        status: 0,
                        nblobs: blobs.len() as u32,
                        body_len: n as u32,
                        _reserved: 0,
                    };
                    wire::write_head(g.bytes_mut(), &head, blobs);
                    g.commit(body_at + n)?;
                    Next::Publish
                }
                // Dropping the grant publishes nothing.
                Err(_) if room < max => Next::Grow,
                Err(e) => return Err(CallError::RequestTooLarge(e)),
            },
            Err(TransportError::Full) => Next::Drain,
            Err(e) => return Err(e.into()),
        };
        match next {
            Next::Publish => {
                if !defer {
                    tx.publish();
                }
                return Ok(());
            }
            Next::Grow => room = max,
            Next::Drain => {
                // Frames held back fill the ring too: the server must see
                // them to make room.
                tx.publish();
                on_full(tx)?;
            }
        }
    }
}

/// [`put`]'s step after a reservation.
enum Next {
    /// The frame is committed: publish it.
    Publish,
    /// The body did not fit the small grant: try the largest.
    Grow,
    /// The ring is full: let the caller drain and wait.
    Drain,
}

/// What a client does while its request ring stays full, once it has read
/// what replies it could (the server may wait for room for them before it
/// takes our requests): spin a little, then nap until the server frees
/// room, a millisecond at most, and fail at the call's deadline. Both
/// clients' `on_full` end here.
pub(crate) struct RoomWait {
    /// The call's deadline: the caller's, or `call_timeout` from the first
    /// time the ring was found full.
    deadline: Option<Instant>,
    timeout: Duration,
    spinner: Spinner,
}

impl RoomWait {
    /// A wait for a call that must end by `deadline` (if the caller gave
    /// one; else `options.call_timeout` from when the ring is first full).
    pub(crate) fn new(options: &ClientOptions, deadline: Option<Instant>) -> Self {
        Self {
            deadline,
            timeout: options.call_timeout,
            spinner: Spinner::new(options.strategy),
        }
    }

    /// The step after reading replies; `drained` says whether any came.
    ///
    /// # Errors
    ///
    /// `Timeout` past the deadline; what `tx` reports when it cannot wait.
    pub(crate) fn after_reading<T: SendFrames>(
        &mut self,
        drained: bool,
        tx: &mut T,
        frame_kind: u16,
    ) -> Result<(), CallError> {
        if drained {
            // A server that keeps sending (replies, or strays) while our
            // ring stays full must not keep the call past its deadline.
            let d = self.deadline();
            return if Instant::now() >= d {
                Err(CallError::Timeout)
            } else {
                Ok(())
            };
        }
        if self.spinner.spin() {
            return Ok(());
        }
        let d = self.deadline();
        let now = Instant::now();
        if now >= d {
            return Err(CallError::Timeout);
        }
        // Sleep until the server frees room, at most a millisecond
        // (then read replies again).
        let nap = (now + Duration::from_millis(1)).min(d);
        match tx.reserve(frame_kind, 0, Some(nap)) {
            Ok(_) | Err(TransportError::Timeout) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The call's deadline, fixed the first time it is needed.
    fn deadline(&mut self) -> Instant {
        let timeout = self.timeout;
        *self
            .deadline
            .get_or_insert_with(|| crate::deadline_in(timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::holds_back;

    #[test]
    fn requests_are_held_back_up_to_half_the_calls_in_flight() {
        // Alone, or behind one call: published at once.
        assert!(!holds_back(0, 0, 0));
        assert!(!holds_back(0, 1, 0));
        // 20 started, none answered: 1, 2, 4, 8, 16 published, the rest
        // held (tests/batching.rs counts the same at the server).
        let mut held = 0;
        let mut published = 0;
        for sent in 0..20 {
            if holds_back(held, sent, 0) {
                held += 1;
            } else {
                published += held + 1;
                held = 0;
            }
        }
        assert_eq!((published, held), (16, 4));
        // 64 in flight: 31 held, the 32nd publishes.
        assert!(holds_back(30, 64, 1));
        assert!(!holds_back(31, 64, 1));
    }

    #[test]
    fn stray_replies_counted_as_answers_hold_nothing_back() {
        // More replies read than requests sent (a hostile server's strays):
        // no call counts as in flight, nothing is held, nothing overflows.
        assert!(!holds_back(0, 3, 1000));
        assert!(!holds_back(0, 0, u64::MAX));
        assert!(!holds_back(u64::MAX, u64::MAX, 0));
    }
}
