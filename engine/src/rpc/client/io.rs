//! The client's frame machinery under its API: waiting for a reply (and
//! routing the others' meanwhile), sending a frame (reading replies while
//! the ring is full), and the steps both share. Generic over the
//! transport (`SendFrames`, `RecvFrames`): the `Client` dispatches once
//! per call and the ring's path is built without a branch per frame.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use isocall_blob::{BlobHandle, Pool};
use isocall_ringbuf::SharedRegion;
use rkyv::util::AlignedVec;

use super::core::{Info, RoomWait, put};
use super::reply::{Handles, Reply, ReplyBlobSet, ReplyBytes};
use super::window::{Stashed, Window};
use crate::WaitStrategy;
use crate::endpoint::TransportError;
use crate::rpc::body::{self, Body, Inbox};
use crate::rpc::error::{CallError, ReplyError};
use crate::rpc::link::{ReadFrame, RecvFrames, SendFrames, WriteFrame};
use crate::rpc::wire::{self, CloseReason, Status, kind};

/// Tries a ring operation without a deadline first (no clock read on the
/// fast path), spinning a little (64 spin hints, a microsecond or two)
/// unless the strategy is `Blocking`, and only then computes the deadline
/// (once per call) and waits for real.
pub(super) const SPINS_BEFORE_DEADLINE: u32 = 64;

/// The next frame of `rx`, waited for by `strategy` (see
/// [`SPINS_BEFORE_DEADLINE`]); `idle` runs once, if the first look finds
/// nothing (or before the first look, with `Blocking`), before any spin or
/// sleep: a client publishes the requests it held back there (the reply
/// it waits for may need them).
#[inline(always)]
pub(crate) fn next_frame<'r, R: RecvFrames>(
    rx: &'r mut R,
    strategy: WaitStrategy,
    deadline: &mut Option<Instant>,
    timeout: Duration,
    idle: impl FnOnce(),
) -> Result<R::Frame<'r>, TransportError> {
    let mut idle = Some(idle);
    if strategy != WaitStrategy::Blocking {
        for _ in 0..SPINS_BEFORE_DEADLINE {
            if rx.has_frame()? {
                // Found while spinning: no clock read at all, and one
                // frame check (a ring's `has_frame` is one load). A peer
                // that rewrote the header in between broke the ring.
                return rx.try_recv()?.ok_or(TransportError::PeerDied);
            }
            if let Some(idle) = idle.take() {
                idle();
            }
            std::hint::spin_loop();
        }
    }
    if let Some(idle) = idle.take() {
        idle();
    }
    let d = *deadline.get_or_insert_with(|| crate::deadline_in(timeout));
    rx.recv(Some(d))
}

/// A reply waited for, and what routing the others meanwhile needs.
pub(super) struct Waiter<'a, 'c> {
    pub(super) id: u64,
    pub(super) info: &'a Info,
    pub(super) window: &'a mut Window,
    pub(super) spares: &'a Mutex<Vec<AlignedVec<16>>>,
    pub(super) pool: Option<&'c Pool<SharedRegion>>,
    pub(super) trusted: bool,
    pub(super) closed: &'a mut Option<CloseReason>,
}

/// Waits on `rx` for the reply of `w.id` (a CANCEL goes on `tx` if it
/// times out); the replies of other calls are routed meanwhile.
#[inline(always)]
pub(super) fn wait_on<'c, Resp: Body, T: SendFrames, R: RecvFrames>(
    tx: &mut T,
    rx: &'c mut R,
    inbox: &'c mut Inbox,
    reply_blobs: &'c mut Vec<BlobHandle>,
    w: Waiter<'_, 'c>,
    deadline: Option<Instant>,
) -> Result<Reply<'c, Resp>, CallError> {
    let Waiter {
        id,
        info,
        window,
        spares,
        pool,
        trusted,
        closed,
    } = w;
    let mut deadline = deadline;
    let timeout = info.options.call_timeout;
    let strategy = info.options.strategy;
    let blobs = loop {
        let frame = match next_frame(&mut *rx, strategy, &mut deadline, timeout, || {
            tx.publish_held()
        }) {
            Ok(f) => f,
            Err(TransportError::Timeout) => {
                window.give_up(id);
                cancel(tx, id);
                return Err(CallError::Timeout);
            }
            Err(e) => {
                window.give_up(id);
                return Err(closed.map_or_else(|| e.into(), CallError::Closed));
            }
        };
        let p = match mine(&frame, id) {
            Ok(Some(p)) => p,
            Ok(None) => {
                if let Err(e) = route(frame, window, info, spares, pool, closed) {
                    window.give_up(id);
                    return Err(e);
                }
                // Frames that keep coming (other calls' replies, or a
                // hostile server's strays) must not keep this call past
                // its deadline: the clock is read after each.
                let d = *deadline.get_or_insert_with(|| crate::deadline_in(timeout));
                if Instant::now() >= d {
                    window.give_up(id);
                    cancel(tx, id);
                    return Err(CallError::Timeout);
                }
                continue;
            }
            Err(e) => {
                window.give_up(id);
                return Err(handle_other(frame, e, closed));
            }
        };
        let method = window.finish(id).unwrap_or(p.head.method);
        p.copy_blobs(reply_blobs);
        if p.head.status != Status::Ok as u32 {
            let e = info.status_error(method, p.head.status, p.body);
            ReplyBlobSet::free(reply_blobs, pool);
            frame.release();
            return Err(e);
        }
        let blobs = ReplyBlobSet::new(Handles::Borrowed(reply_blobs), pool);
        if trusted {
            // Read in place: the frame stays in the ring (not released)
            // and is taken again here, with the client's borrow.
            let range = body_range(&frame, &p);
            drop(frame); // not released: taken again, for the reply
            let frame = rx.try_recv_any()?.ok_or(CallError::PeerDied)?;
            return Ok(Reply::new(ReplyBytes::Frame(Some(frame), range), blobs));
        }
        // The copy rule: out of the ring, then checked.
        inbox.fill(p.body);
        frame.release();
        break blobs;
    };
    match inbox.check::<Resp>() {
        Ok(c) => Ok(Reply::new(ReplyBytes::Borrowed(c.bytes()), blobs)),
        Err(e) => Err(CallError::BadReply(ReplyError::Invalid(e))),
    }
}

/// Tells the server call `id` was given up (best effort: a full ring skips
/// it); a reply that still comes is discarded.
pub(super) fn cancel<T: SendFrames>(tx: &mut T, id: u64) {
    let written = if let Ok(mut g) = tx.try_reserve(kind::CANCEL, wire::HEAD) {
        let head = wire::CallHead {
            id,
            ..wire::CallHead::default()
        };
        wire::write_head(g.bytes_mut(), &head, &[]);
        g.commit(wire::HEAD).is_ok()
    } else {
        false
    };
    if written {
        tx.publish();
    }
}

/// Most frames read for a CLOSE once the server is found gone while
/// sending (replies it sent before closing come first).
const CLOSE_LOOKAHEAD: usize = 4096;

/// A frame to send, and what draining replies meanwhile needs.
pub(super) struct Outgoing<'a> {
    pub(super) frame_kind: u16,
    pub(super) id: u64,
    pub(super) method: u32,
    pub(super) blobs: &'a [BlobHandle],
    /// The call's deadline, if the caller gave one.
    pub(super) deadline: Option<Instant>,
    pub(super) info: &'a Info,
    pub(super) window: &'a mut Window,
    pub(super) spares: &'a Mutex<Vec<AlignedVec<16>>>,
    pub(super) pool: Option<&'a Pool<SharedRegion>>,
    pub(super) closed: &'a mut Option<CloseReason>,
    pub(super) arena: &'a mut rkyv::ser::allocator::Arena,
    /// Held back: written but not published (see
    /// `ClientOptions::batch_requests`).
    pub(super) defer: bool,
}

/// Writes `to`'s frame on `tx`, reading replies from `rx` while `tx` is
/// full (the server may wait for room for them).
#[inline(always)]
pub(super) fn send_on<T: SendFrames, R: RecvFrames>(
    tx: &mut T,
    rx: &mut R,
    to: &mut Outgoing<'_>,
    encode: impl FnMut(&mut [u8], &mut rkyv::ser::allocator::Arena) -> Result<usize, body::EncodeError>,
) -> Result<(), CallError> {
    let Outgoing {
        frame_kind,
        id,
        method,
        blobs,
        deadline,
        info,
        window,
        spares,
        pool,
        closed,
        arena,
        defer,
    } = to;
    let (frame_kind, pool, info, defer) = (*frame_kind, *pool, *info, *defer);
    let mut room = RoomWait::new(&info.options, *deadline);
    let on_full = |tx: &mut T| -> Result<(), CallError> {
        // The server may wait for room for our replies: read them.
        let mut drained = false;
        while let Some(frame) = rx.try_recv()? {
            drained = true;
            route(frame, window, info, spares, pool, closed)?;
        }
        room.after_reading(drained, tx, frame_kind)
    };
    let sent = put(
        defer,
        tx,
        arena,
        info.max_frame,
        frame_kind,
        *id,
        *method,
        encode,
        blobs,
        on_full,
    );
    if let Err(CallError::PeerDied) = sent {
        // A server that closed the connection said why in a CLOSE frame
        // before it hung up: read it, so the caller learns the reason
        // (idle, a broken protocol) rather than only that it is gone. A
        // bounded look: a hung-up peer that keeps its mapping could keep
        // the ring from ever running dry.
        for _ in 0..CLOSE_LOOKAHEAD {
            let Ok(Some(frame)) = rx.try_recv() else {
                break;
            };
            if route(frame, window, info, spares, pool, closed).is_err() {
                break;
            }
        }
        return Err(closed.map_or(CallError::PeerDied, CallError::Closed));
    }
    sent
}

/// Where the body of a parsed frame sits in its payload.
pub(super) fn body_range<F: ReadFrame>(frame: &F, p: &wire::Parsed<'_>) -> std::ops::Range<usize> {
    let start = p.body.as_ptr() as usize - frame.payload().as_ptr() as usize;
    start..start + p.body.len()
}

/// The parsed frame if it is the RESPONSE to `id`; `None` if it is
/// another's; an error for a frame that is not a response.
#[inline(always)]
pub(super) fn mine<F: ReadFrame>(
    frame: &F,
    id: u64,
) -> Result<Option<wire::Parsed<'_>>, CallError> {
    if frame.kind() != kind::RESPONSE {
        return Err(CallError::BadReply(ReplyError::UnexpectedKind {
            kind: frame.kind(),
        }));
    }
    let p = wire::parse(frame.payload()).map_err(|e| CallError::BadReply(e.into()))?;
    Ok((p.head.id == id).then_some(p))
}

/// A frame that is not a response: a CLOSE says why the server closed;
/// anything else is a broken protocol.
pub(super) fn handle_other<F: ReadFrame>(
    frame: F,
    e: CallError,
    closed: &mut Option<CloseReason>,
) -> CallError {
    if frame.kind() == kind::CLOSE {
        let p = frame.payload();
        let code = p
            .get(..4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let r = CloseReason::from_code(code);
        frame.release();
        *closed = Some(r);
        return CallError::Closed(r);
    }
    frame.release();
    e
}

/// Handles a frame that is not the one waited for: a reply of another
/// call in flight is stashed (copied out) for its caller; one nobody waits
/// for is discarded, its blobs freed.
pub(super) fn route<F: ReadFrame>(
    frame: F,
    window: &mut Window,
    info: &Info,
    spares: &Mutex<Vec<AlignedVec<16>>>,
    pool: Option<&Pool<SharedRegion>>,
    closed: &mut Option<CloseReason>,
) -> Result<(), CallError> {
    let p = match mine(&frame, u64::MAX) {
        Ok(_) => wire::parse(frame.payload()).map_err(|e| CallError::BadReply(e.into()))?,
        Err(e) => return Err(handle_other(frame, e, closed)),
    };
    let _ = info;
    if window.is_waiting(p.head.id) {
        let mut body = spares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        body.clear();
        body.extend_from_slice(p.body);
        let s = Stashed {
            method: p.head.method,
            status: p.head.status,
            blobs: p.blob_vec(),
            body,
        };
        window.stash(p.head.id, s);
    } else {
        ReplyBlobSet::free(&p.blob_vec(), pool);
    }
    frame.release();
    Ok(())
}

/// The reply made from a stashed one (checked now, in its private buffer).
pub(super) fn stashed_reply<'c, Resp: Body>(
    s: Stashed,
    info: &Info,
    spares: &'c Mutex<Vec<AlignedVec<16>>>,
    pool: Option<&'c Pool<SharedRegion>>,
) -> Result<Reply<'c, Resp>, CallError> {
    let blobs = ReplyBlobSet::new(Handles::Owned(s.blobs), pool);
    if s.status != Status::Ok as u32 {
        let e = info.status_error(s.method, s.status, &s.body);
        recycle(spares, s.body);
        return Err(e);
    }
    if let Err(e) = body::check::<Resp>(&s.body) {
        recycle(spares, s.body);
        return Err(CallError::BadReply(ReplyError::Invalid(e)));
    }
    Ok(Reply::new(ReplyBytes::Owned(s.body, Some(spares)), blobs))
}

/// Keeps a buffer for a later stash.
pub(super) fn recycle(spares: &Mutex<Vec<AlignedVec<16>>>, v: AlignedVec<16>) {
    let mut s = spares.lock().unwrap_or_else(|p| p.into_inner());
    if s.len() < 64 {
        s.push(v);
    }
}
