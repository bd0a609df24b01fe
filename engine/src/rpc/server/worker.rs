//! A worker thread: serves its connections in turns and never waits on
//! one of them.
//!
//! Each turn serves up to [`BATCH`] frames of each connection. A request is
//! taken from the ring only once there is room for its reply: when the
//! client's reply ring is full, the connection is *paused* (its requests
//! stay queued in its ring) and the worker goes on with the others; it is
//! looked at again every turn and closed if it stays full past the
//! server's `reply_timeout`. A request body is copied out of the ring into
//! the worker's private inbox before it is validated and handed to the
//! handler (the copy rule of [`crate::rpc::body`]); only a trusted server
//! reads it in place.
//!
//! A stream connection's replies go out when no more requests are there
//! to read (in groups while the client keeps sending). Its socket is read
//! at the start of its turn; once a read found the socket drained (it came
//! back short), the turn ends without another read that would find
//! nothing, and the connection is read again after the worker's `poll`
//! says it has bytes (or at its next turn).
//!
//! When no connection has work the worker spins per the strategy, then
//! sleeps in its [`Poller`] (epoll) on the doorbells and sockets of its
//! connections (each doorbell announced to its client first), its inbox
//! and the server's stop signal, with a timeout when a connection is
//! paused (its client frees room without ringing) or an idle limit is due.
//! Each descriptor is registered once, when its connection arrives, and
//! removed before it closes: a sleep costs the same with one connection or
//! a thousand, where `poll` would set up a wait on each descriptor every
//! time (the wake-up of a lone stream connection is most of what its
//! round trip adds to the socket's own).

use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use isocall_blob::{BlobHandle, Pool};
use isocall_ringbuf::{SharedRegion, Spinner};

use crate::endpoint::TransportError;
use crate::rpc::body::Inbox;
use crate::rpc::large::large_id;
use crate::rpc::link::{Link, ReadFrame, RecvFrames, Rx, SendFrames, Tx, WriteFrame};
use crate::rpc::method::MethodKind;
use crate::rpc::wire::{self, CallHead, CloseReason, ErrorBody, FAR_BODY, Status, kind};
use crate::sys::{PeerCred, Poller, Ready};

use super::admission::Ticket;
use super::builder::Failure;
use super::ctx::{CallCtx, Large};
use super::{BATCH, Inbox as WorkerInbox, Shared};

/// Turns between two looks at the clock for idle connections.
const HOUSEKEEPING_TURNS: u32 = 1024;
/// Longest sleep while a connection is paused: its client frees room in
/// the ring without ringing.
const PAUSED_POLL: Duration = Duration::from_millis(1);
/// Longest wait in `recv` of a worker that serves one stream connection
/// alone, before it sleeps in its poller: a new connection handed to the
/// worker, or the server's stop, waits at most this long for it.
pub(super) const LONE_READ_SLICE: Duration = Duration::from_millis(1);

/// One connection, served by a worker.
pub(crate) struct Conn {
    id: u32,
    peer: PeerCred,
    link: Link,
    large: Large,
    /// Large blobs mapped (or received) on it as last counted.
    large_seen: u64,
    /// Counted by the admission until dropped.
    ticket: Option<Ticket>,
    /// Served a request or message since the last housekeeping.
    active: bool,
    /// When it was last seen active.
    last_active: Instant,
    /// Since when its reply ring is full.
    paused_since: Option<Instant>,
    /// Replies per publication while requests keep queuing: 1 when the
    /// worker keeps up with this client, doubling (up to [`BATCH`]) for
    /// each group after which more requests were already waiting.
    group: usize,
    /// What its descriptor is registered in the worker's poller for (none:
    /// not yet).
    watching: Option<Ready>,
}

impl Conn {
    pub(crate) fn new(id: u32, peer: PeerCred, link: Link, large: Large) -> Conn {
        Conn {
            id,
            peer,
            link,
            large,
            large_seen: 0,
            ticket: None,
            active: false,
            last_active: Instant::now(),
            paused_since: None,
            group: 1,
            watching: None,
        }
    }

    pub(crate) fn with_ticket(mut self, t: Ticket) -> Conn {
        self.ticket = Some(t);
        self
    }
}

/// The worker's reused memory.
struct Scratch {
    inbox: Inbox,
    arena: rkyv::ser::allocator::Arena,
    req_blobs: Vec<BlobHandle>,
    reply_blobs: Vec<BlobHandle>,
    /// Calls served since the last flush into the shared counter (one
    /// locked add per turn, not per call).
    calls: u64,
}

/// How a connection's turn ended.
enum Turn {
    /// Served this many frames.
    Served(usize),
    /// Its reply ring is full: nothing taken.
    Paused,
    /// A stream served what it had, and its last read found the socket
    /// drained: more comes only after the worker's `poll` (no turn again
    /// before it, to read nothing). Served this many frames.
    Drained(usize),
}

/// Why a connection is closed.
enum Close {
    /// The client died or hung up.
    Dead,
    /// For this reason, told to the client.
    Reason(CloseReason, String),
}

pub(super) fn run(shared: &Shared, inbox: &WorkerInbox) {
    let mut conns: Vec<Conn> = Vec::new();
    // The idle spin before sleeping: as long as a ring's wait spins, with
    // the CPU given up now and then (the client may be waiting for it).
    let mut spinner = Spinner::new(shared.strategy);
    let mut scratch = Scratch {
        inbox: Inbox::new(),
        arena: rkyv::ser::allocator::Arena::new(),
        req_blobs: Vec::new(),
        reply_blobs: Vec::new(),
        calls: 0,
    };
    let mut turn = 0u32;
    // The tokens of the descriptors found ready by the last sleep.
    let mut ready: Vec<u64> = Vec::new();
    // A lone stream connection's wait in `recv` found nothing since the
    // worker last worked: sleep in the poller instead.
    let mut read_waited = false;
    loop {
        if shared.stopping.load(Ordering::Acquire) {
            break;
        }
        // A plain load on every turn; the lock only when a connection came.
        // Acquire (the swap): pairs with the acceptor's Release store.
        if inbox.has_new.load(Ordering::Relaxed) && inbox.has_new.swap(false, Ordering::Acquire) {
            let mut new = inbox.new.lock().unwrap_or_else(|p| p.into_inner());
            if !new.is_empty() {
                adopt(shared, &inbox.poller, &mut conns, &mut new);
            }
        }
        let mut worked = false;
        // Frames served, by a stream whose socket is drained too.
        let mut served = false;
        let mut i = 0;
        while i < conns.len() {
            match serve(shared, &mut conns[i], &mut scratch) {
                Ok(Turn::Served(n)) => {
                    worked |= n > 0;
                    i += 1;
                }
                Ok(Turn::Drained(n)) => {
                    served |= n > 0;
                    i += 1;
                }
                Ok(Turn::Paused) => i += 1,
                Err(why) => {
                    let c = conns.swap_remove(i);
                    close(shared, &inbox.poller, c, why);
                }
            }
        }
        if scratch.calls > 0 {
            // Only this worker writes its count: a load and a plain store.
            let served = std::mem::take(&mut scratch.calls);
            let was = inbox.calls.load(Ordering::Relaxed);
            inbox.calls.store(was + served, Ordering::Relaxed);
        }
        turn = turn.wrapping_add(1);
        if turn.is_multiple_of(HOUSEKEEPING_TURNS) {
            housekeeping(shared, &inbox.poller, &mut conns);
        }
        if worked || served {
            read_waited = false;
        }
        if worked {
            spinner = Spinner::new(shared.strategy);
            continue;
        }
        if !spinner.spin() {
            housekeeping(shared, &inbox.poller, &mut conns);
            if !read_waited && let [c] = conns.as_mut_slice() {
                read_waited = true;
                if c.paused_since.is_none() && !matches!(c.link.rx.wait_in_read(), Ok(false)) {
                    // A frame (or the end, or a failure: `serve` says).
                    continue;
                }
            }
            wait_for_work(shared, &mut conns, inbox, &mut ready);
        }
    }
    for c in conns {
        close(
            shared,
            &inbox.poller,
            c,
            Close::Reason(CloseReason::ServerStopping, String::new()),
        );
    }
}

/// The token of the inbox's bell in a worker's poller.
pub(super) const BELL_TOKEN: u64 = 0;
/// The token of the server's stop signal.
pub(super) const STOP_TOKEN: u64 = 1;

/// The token of connection `id` in its worker's poller.
fn token(id: u32) -> u64 {
    u64::from(id) + 2
}

/// The descriptor a connection sleeps on, and for what: a ring's doorbell
/// for its frames; a stream's socket for its frames, and for room while
/// published bytes wait for it.
fn wake_source(c: &Conn) -> Option<(BorrowedFd<'_>, Ready)> {
    match (&c.link.ring, c.link.tx.stream_poll()) {
        (Some(ring), _) => Some((ring.doorbell.as_fd(), Ready::Readable)),
        (None, Some((fd, false))) => Some((fd, Ready::Readable)),
        (None, Some((fd, true))) => Some((fd, Ready::ReadWrite)),
        (None, None) => None,
    }
}

/// Takes the connections handed to this worker, registering each in its
/// poller; one the kernel will not register is closed (out of resources).
#[inline(never)] // rare: out of the worker's loop
fn adopt(shared: &Shared, poller: &Poller, conns: &mut Vec<Conn>, new: &mut Vec<Conn>) {
    for mut c in new.drain(..) {
        if let Some((fd, want)) = wake_source(&c) {
            if let Err(e) = poller.watch(fd, token(c.id), want) {
                let detail = format!("epoll: {e}");
                close(
                    shared,
                    poller,
                    c,
                    Close::Reason(CloseReason::OutOfResources, detail),
                );
                continue;
            }
            c.watching = Some(want);
        }
        conns.push(c);
    }
}

/// Closes connections idle past the server's limit.
fn housekeeping(shared: &Shared, poller: &Poller, conns: &mut Vec<Conn>) {
    let now = Instant::now();
    let idle = shared.limits.idle_timeout;
    let mut i = 0;
    while i < conns.len() {
        let c = &mut conns[i];
        if std::mem::take(&mut c.active) {
            c.last_active = now;
        }
        if idle.is_some_and(|d| now.duration_since(c.last_active) >= d) {
            let c = conns.swap_remove(i);
            close(
                shared,
                poller,
                c,
                Close::Reason(CloseReason::Idle, String::new()),
            );
            continue;
        }
        i += 1;
    }
}

/// Sleeps until a connection has a frame (its doorbell rings), a paused
/// one may have room, an idle limit is due, a new connection arrives, or
/// the server stops.
fn wait_for_work(shared: &Shared, conns: &mut [Conn], inbox: &WorkerInbox, ready: &mut Vec<u64>) {
    let mut paused = false;
    for c in conns.iter_mut() {
        if c.paused_since.is_some() {
            paused = true;
            continue;
        }
        match c.link.rx.arm_doorbell() {
            Ok(false) => {}
            // A frame is there (or the ring is corrupt: `serve` says so).
            _ => return,
        }
    }
    let mut timeout = paused.then_some(PAUSED_POLL);
    if let Some(idle) = shared.limits.idle_timeout {
        let now = Instant::now();
        for c in conns.iter() {
            let due = (c.last_active + idle).saturating_duration_since(now);
            timeout = Some(timeout.map_or(due, |t: Duration| t.min(due)));
        }
    }
    // A stream with bytes waiting for room is watched for room too, and
    // only while they wait; a paused one only for room (a client that
    // sends requests and reads no replies keeps its socket readable, and
    // must not keep the worker from sleeping until its reply timeout).
    for c in conns.iter_mut() {
        if c.link.ring.is_some() {
            continue;
        }
        let paused = c.paused_since.is_some();
        let Some((fd, want)) = wake_source(c) else {
            continue;
        };
        let want = if paused { Ready::Writable } else { want };
        if c.watching != Some(want) {
            match inbox.poller.rewatch(fd, token(c.id), want) {
                Ok(()) => c.watching = Some(want),
                // Served at the next turn anyway: sleep briefly.
                Err(_) => timeout = Some(timeout.map_or(PAUSED_POLL, |t| t.min(PAUSED_POLL))),
            }
        }
    }
    if inbox.poller.wait(ready, timeout).is_err() {
        return;
    }
    if ready.len() > 1 {
        ready.sort_unstable();
    }
    if ready.binary_search(&BELL_TOKEN).is_ok() {
        let _ = inbox.bell.drain();
    }
    for c in conns.iter_mut() {
        if ready.binary_search(&token(c.id)).is_err() {
            continue;
        }
        match &c.link.ring {
            // A doorbell closed for good (the client's end is gone, or
            // its watch saw it die) is a dead peer: mark it, so `serve`
            // closes the connection instead of this loop spinning on a
            // doorbell that stays readable.
            Some(ring) => {
                if !ring.doorbell.drain() {
                    ring.liveness.mark_dead();
                }
            }
            // A stream: what the socket takes now goes (its frames, and
            // its end, are `serve`'s to read).
            None => c.link.tx.publish(),
        }
    }
}

fn close(shared: &Shared, poller: &Poller, mut c: Conn, why: Close) {
    if c.watching.is_some()
        && let Some((fd, _)) = wake_source(&c)
    {
        let _ = poller.unwatch(fd);
    }
    match &why {
        Close::Dead => {
            // The client is gone: give back every slot it held (its
            // blobs), then count the close. (A stream's pool is this
            // process's own, and goes with the connection.)
            if let (Some(pool), Some(_)) = (&c.link.pool, &c.link.ring) {
                let r = pool.reclaim(isocall_blob::Side::A);
                shared
                    .stats
                    .reclaimed
                    .fetch_add(r.freed() as u64, Ordering::Relaxed);
            }
        }
        Close::Reason(reason, _) if *reason != CloseReason::ClientClosed => {
            // Tell the client why (best effort: a full ring skips it).
            if let Ok(mut g) = c.link.tx.try_reserve(kind::CLOSE, 4) {
                g.bytes_mut().copy_from_slice(&reason.code().to_le_bytes());
                let _ = g.commit_all();
            }
            // Replies the worker wrote but had not yet published (a group
            // cut short by the error that closes the connection) reach
            // their callers, before the CLOSE, even when the CLOSE itself
            // found no room.
            c.link.tx.publish();
            if let Some(ring) = &c.link.ring {
                ring.doorbell.ring_peer();
            }
        }
        Close::Reason(..) => {}
    }
    // Release: pairs with the Acquire load of `closed` in `Server::stats`,
    // which loads `reclaimed` after it.
    shared.stats.closed.fetch_add(1, Ordering::Release);
    match why {
        Close::Dead => {
            tracing::debug!(conn = c.id, pid = ?c.peer.pid, "connection closed: the client died")
        }
        Close::Reason(r, detail) => {
            tracing::debug!(conn = c.id, pid = ?c.peer.pid, reason = %r, %detail, "connection closed")
        }
    }
}

/// Serves up to [`BATCH`] frames of `c`. `Err` closes the connection.
#[inline(always)] // once per turn, from `run` only
fn serve(shared: &Shared, c: &mut Conn, scratch: &mut Scratch) -> Result<Turn, Close> {
    let room = shared.max_frame.min(c.link.tx.max_payload());
    if let Some(since) = c.paused_since {
        // Room for a reply yet? (A grant dropped unused publishes nothing.)
        match c.link.tx.try_reserve(kind::RESPONSE, room) {
            Ok(_) => c.paused_since = None,
            Err(TransportError::Full) => {
                if since.elapsed() >= shared.limits.reply_timeout {
                    return Err(Close::Reason(
                        CloseReason::RepliesNotRead,
                        format!("reply ring full for {:?}", since.elapsed()),
                    ));
                }
                if c.link.peer_gone() {
                    return Err(Close::Dead);
                }
                return Ok(Turn::Paused);
            }
            Err(TransportError::PeerDied) => return Err(Close::Dead),
            Err(e) => {
                return Err(Close::Reason(
                    CloseReason::ProtocolViolation,
                    format!("reply ring: {e}"),
                ));
            }
        }
    }
    let Conn {
        id,
        link,
        large,
        large_seen,
        peer,
        group,
        active,
        paused_since,
        ..
    } = c;
    let Link { tx, rx, pool, ring } = link;
    let parts = Parts {
        id: *id,
        peer,
        pool: pool.as_deref(),
        sock: ring.as_ref().map(|r| r.sock.as_fd()),
        large,
        large_seen,
        group,
        active,
        paused_since,
    };
    // One dispatch per turn: the loop is built once for the rings (no
    // branch on the transport per frame) and once for any transport.
    match (tx, rx) {
        (Tx::Ring(tx), Rx::Ring(rx)) => serve_frames(shared, tx, rx, room, parts, scratch),
        (tx, rx) => serve_any(shared, tx, rx, room, parts, scratch),
    }
}

/// [`serve_frames`] on any transport, out of line (the rings' copy is
/// the one inlined into the worker's loop).
#[inline(never)]
fn serve_any(
    shared: &Shared,
    tx: &mut Tx,
    rx: &mut Rx,
    room: usize,
    parts: Parts<'_>,
    scratch: &mut Scratch,
) -> Result<Turn, Close> {
    match serve_frames(shared, tx, rx, room, parts, scratch)? {
        // Fewer than a batch: it stopped at a frame not there.
        Turn::Served(n) if n < BATCH && rx.drained() => Ok(Turn::Drained(n)),
        turn => Ok(turn),
    }
}

/// The rest of a connection, beside its two halves, as [`serve_frames`]
/// uses it.
struct Parts<'a> {
    id: u32,
    peer: &'a PeerCred,
    pool: Option<&'a Pool<SharedRegion>>,
    sock: Option<BorrowedFd<'a>>,
    large: &'a mut Large,
    large_seen: &'a mut u64,
    group: &'a mut usize,
    active: &'a mut bool,
    paused_since: &'a mut Option<Instant>,
}

/// Serves up to [`BATCH`] frames from `rx`, replying on `tx` (`room`: the
/// largest reply).
#[inline(always)]
fn serve_frames<T: SendFrames, R: RecvFrames>(
    shared: &Shared,
    tx: &mut T,
    rx: &mut R,
    room: usize,
    parts: Parts<'_>,
    scratch: &mut Scratch,
) -> Result<Turn, Close> {
    let Parts {
        id,
        peer,
        pool,
        sock,
        large,
        large_seen,
        group,
        active,
        paused_since,
    } = parts;
    let trusted = shared.trusted;
    let mut unpublished = 0;
    // A group of replies was just published.
    let mut grew = false;
    for n in 0..BATCH {
        let frame = match rx.try_recv_after(n > 0) {
            Ok(Some(f)) => {
                if grew {
                    // Requests keep queuing: fewer, larger publications.
                    *group = (*group * 2).min(BATCH);
                    grew = false;
                }
                f
            }
            Ok(None) => {
                if unpublished > 0 {
                    tx.publish();
                }
                // No request waits (also after a turn that ended with a
                // full batch): the next lone caller's reply goes out at
                // once.
                *group = 1;
                return Ok(Turn::Served(n));
            }
            Err(TransportError::PeerDied) => return Err(Close::Dead),
            Err(e) => {
                // Replies already written go out with the close (see
                // `close`), as on every error return of this loop.
                return Err(Close::Reason(
                    CloseReason::ProtocolViolation,
                    format!("ring: {e}"),
                ));
            }
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
                return Err(Close::Reason(CloseReason::ClientClosed, String::new()));
            }
            other => {
                return Err(Close::Reason(
                    CloseReason::ProtocolViolation,
                    format!("frame kind {other} from a client"),
                ));
            }
        }
        // The reply's room first: without it the request stays queued.
        let mut grant = if k == kind::REQUEST {
            let reserved = match tx.try_reserve(kind::RESPONSE, room) {
                Ok(g) => Some(g),
                Err(TransportError::Full) => None,
                Err(TransportError::PeerDied) => return Err(Close::Dead),
                Err(e) => {
                    return Err(Close::Reason(
                        CloseReason::ProtocolViolation,
                        format!("reply ring: {e}"),
                    ));
                }
            };
            if reserved.is_none() {
                // (Dropped before `tx` is used again: to the borrow
                // checker a transport's grant may have a destructor.)
                drop(reserved);
                // The request stays in the ring (not released) until
                // there is room for its reply.
                tx.publish();
                *paused_since = Some(Instant::now());
                *active = true;
                shared.stats.paused.fetch_add(1, Ordering::Relaxed);
                return Ok(Turn::Paused);
            }
            reserved
        } else {
            None
        };
        let p = wire::parse(frame.payload()).map_err(|e| {
            Close::Reason(CloseReason::ProtocolViolation, format!("call frame: {e}"))
        })?;
        let head = p.head;
        p.copy_blobs(&mut scratch.req_blobs);
        // The copy rule: the body leaves the ring before it is checked.
        let body: &[u8] = if trusted {
            p.body
        } else {
            scratch.inbox.fill(p.body);
            scratch.inbox.bytes()
        };
        scratch.calls += 1;
        scratch.reply_blobs.clear();
        let method = shared.methods.get(head.method as usize);
        let mut ctx = CallCtx {
            peer: *peer,
            blobs: &scratch.req_blobs,
            pool,
            reply_blobs: &mut scratch.reply_blobs,
            large: large.access(sock),
        };
        let Some(mut g) = grant.take() else {
            // A one-way message.
            if let Some(m) = method.filter(|m| m.info.signature.kind == MethodKind::Message) {
                let r = catch_unwind(AssertUnwindSafe(|| {
                    (m.run)(body, trusted, &mut ctx, &mut [], &mut scratch.arena)
                }));
                if !matches!(r, Ok(Ok(_))) {
                    tracing::debug!(conn = id, method = %m.info.name, "one-way message failed");
                }
            }
            drop(ctx);
            frame.release();
            free_unaccepted(pool, &scratch.req_blobs);
            *active = true;
            continue;
        };
        drop(grant); // empty now; see `reserved` above
        // The reply is written in place: the body lands right after the
        // head, as if no blob came back, in a span that leaves room at the
        // end for every possible handle; if the handler returns blobs it
        // moves up past their handles. So the usual reply, without blobs,
        // is never moved.
        let body_end = g.bytes_mut().len().saturating_sub(FAR_BODY - wire::HEAD);
        let outcome = match method {
            Some(m) if m.info.signature.kind == MethodKind::Call => {
                let out = &mut g.bytes_mut()[wire::HEAD..body_end.max(wire::HEAD)];
                match catch_unwind(AssertUnwindSafe(|| {
                    (m.run)(body, trusted, &mut ctx, out, &mut scratch.arena)
                })) {
                    Ok(Ok(len)) => Ok(len),
                    Ok(Err(Failure::App(e))) => Err((Status::AppError, e.code, e.message)),
                    Ok(Err(Failure::BadRequest(d))) => Err((Status::BadRequest, 0, d)),
                    Ok(Err(Failure::TooLarge(d))) => Err((Status::TooLarge, 0, d)),
                    Err(panic) => Err((Status::HandlerPanicked, 0, panic_message(&panic))),
                }
            }
            Some(m) => Err((
                Status::BadRequest,
                0,
                format!("{} is a one-way message, not a call", m.info.name),
            )),
            None => Err((Status::UnknownMethod, head.method, String::new())),
        };
        drop(ctx);
        let mapped = large.mapped();
        if mapped > *large_seen {
            shared
                .stats
                .large_mapped
                .fetch_add(mapped - *large_seen, Ordering::Relaxed);
            *large_seen = mapped;
        }
        // What the caller may look at once it has the reply (the pool's
        // count of the request's blobs the handler did not take, the
        // server's statistics) is settled before the reply goes out; the
        // request's frame is released after it (below).
        free_unaccepted(pool, &scratch.req_blobs);
        let (status, len) = match outcome {
            Ok(len) => (Status::Ok, len),
            Err((status, code, msg)) => {
                // An error carries no blobs; the ones sent are recalled.
                if let Some(pool) = pool {
                    for h in scratch.reply_blobs.iter().filter(|h| large_id(h).is_none()) {
                        drop(pool.recall(h));
                    }
                }
                let len = ErrorBody::write(
                    &mut g.bytes_mut()[wire::HEAD..body_end.max(wire::HEAD)],
                    code,
                    &msg,
                );
                (status, len)
            }
        };
        let blobs: &[BlobHandle] = if status == Status::Ok {
            &scratch.reply_blobs
        } else {
            &[]
        };
        let at = wire::HEAD + blobs.len() * wire::HANDLE;
        if at != wire::HEAD {
            g.bytes_mut().copy_within(wire::HEAD..wire::HEAD + len, at);
        }
        let reply = CallHead {
            id: head.id,
            method: head.method,
            status: status as u32,
            nblobs: blobs.len() as u32,
            body_len: len as u32,
            _reserved: 0,
        };
        wire::write_head(g.bytes_mut(), &reply, blobs);
        if let Err(e) = g.commit(at + len) {
            // A stream frame that could not be sent (over its frame limit);
            // its blobs are freed. The caller learns why.
            reply_failed(tx, room, &reply, &e);
        }
        *active = true;
        // Replies go out at once when no request is waiting (a caller
        // waiting for one reply gets it without delay, and the group
        // shrinks back to one), else in groups that double while requests
        // keep queuing: a pipelining caller that is ahead of us gets its
        // replies in fewer publications, each a cache line it takes once.
        // (A stream publishes once no request is there: each publication
        // is a system call, and its send buffer bounds the batch.)
        unpublished += 1;
        if T::GROUPS {
            // The ring: a full group goes out before we look for the next
            // request. That look loads the next request's header slot, a
            // line the caller last wrote (it zeroes slots ahead), so it is
            // one cross-core fetch; made before the publication, it would
            // delay every lone caller's reply by that fetch. The group
            // grows at the top of the loop, if a request is waiting.
            if unpublished >= *group {
                tx.publish();
                unpublished = 0;
                grew = true;
            }
            frame.release();
        } else {
            frame.release();
            if !matches!(rx.try_recv_after(true), Ok(Some(_))) {
                tx.publish();
                unpublished = 0;
            }
        }
    }
    tx.publish();
    Ok(Turn::Served(BATCH))
}

/// Answers the call of `reply` with `TooLarge` and why its reply could not
/// be sent (best effort: a full send buffer skips it, and the caller
/// times out).
fn reply_failed<T: SendFrames>(tx: &mut T, room: usize, reply: &CallHead, e: &TransportError) {
    let Ok(mut g) = tx.try_reserve(kind::RESPONSE, room) else {
        return;
    };
    let msg = format!("the reply could not be sent: {e}");
    let len = ErrorBody::write(&mut g.bytes_mut()[wire::HEAD..], 0, &msg);
    let head = CallHead {
        status: Status::TooLarge as u32,
        nblobs: 0,
        body_len: len as u32,
        ..*reply
    };
    wire::write_head(g.bytes_mut(), &head, &[]);
    let _ = g.commit(wire::HEAD + len);
}

/// Frees request blobs the handler neither accepted nor sent back.
fn free_unaccepted(pool: Option<&Pool<SharedRegion>>, handles: &[BlobHandle]) {
    if let Some(pool) = pool {
        for h in handles.iter().filter(|h| large_id(h).is_none()) {
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
