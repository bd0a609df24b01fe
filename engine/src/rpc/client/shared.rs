//! One connection shared by many threads: [`SharedClient`].
//!
//! A call takes a *slot* (its reply's home), writes its request under the
//! sender's lock, and waits. Whoever waits and finds the receiver free
//! becomes the *leader*: it reads the ring, hands each reply to its slot
//! (copying the body out of the ring into the slot's buffer, and waking
//! the slot's caller if it sleeps) until its own reply comes, then leaves,
//! waking one parked caller to lead in its place. The others spin on
//! their slot a while, then sleep on it (with `BusySpin`, they spin on,
//! yielding the CPU every few microseconds, as the leader does while no
//! frame comes: the callers and the server may be more threads than
//! cores, and a spinner that never yields keeps the thread it waits for
//! off a core it shares). A lone caller is always the leader: it pays two
//! uncontended locks (the sender's, under which it also takes its slot,
//! and the receiver's; a reply over 64 bytes also takes a spare buffer
//! from, and gives it back to, a list under a mutex) and no thread
//! hand-off. A slot is given back with a plain store, and taken by the
//! sender alone (see `slots`).
//!
//! The leader's own reply, if short, is copied once, into a buffer of its
//! call's slot, and the `Reply` points there: the slot is not given back
//! until the reply is dropped (a held reply counts against
//! `max_in_flight`), and a reply that moves carries a pointer rather than
//! its bytes.
//!
//! With [`ClientOptions::batch_requests`](super::ClientOptions::batch_requests),
//! the requests of calls *started* ([`SharedClient::start`]) on the ring
//! while others are in flight are written but held back, and published
//! together once they make half of the calls in flight (an estimate: the
//! requests sent less the replies read), when a thread waiting for a reply
//! finds none to read (before it spins; no waiter goes to sleep while any
//! is held back), with any other frame (`call`, `send`), or on `flush`. A
//! call waited for at once (`call`) is published at once.
//!
//! Call ids carry their slot's index and the slot's generation, so a late
//! reply to a call given up (timed out, its [`Pending`] dropped) never
//! reaches the slot's next call: it is discarded, its blobs freed.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use isocall_blob::{BlobHandle, Pool};
use isocall_ringbuf::{SharedRegion, Spinner, WaitStrategy};
use rkyv::util::AlignedVec;

use super::core::{Info, RoomWait, holds_back, put};
use super::io::next_frame;
use super::lock::StoreLock;
use super::reply::{Abandoned, Handles, Pending, Reply, ReplyBlobSet, ReplyBytes, SlotBody};
use super::slots::{FreeMark, SlotOrder};
use super::{ClientOptions, connect_link};
use crate::endpoint::TransportError;
use crate::rpc::body::{self, Body};
use crate::rpc::error::{CallError, ConnectError, ReplyError};
use crate::rpc::large::LargeBlob;
// The link's enums under the names the ring endpoint's types had here.
use crate::rpc::address::IntoEndpoint;
use crate::rpc::link::{
    Link, ReadFrame, RecvFrames, RingLink, Rx as Receiver, SendFrames, Tx as Sender, stream_gone,
};
use crate::rpc::method::{Message, MessageRef, Method, MethodRef};
use crate::rpc::wire::{self, CloseReason, Status, kind};
use crate::segment::SegmentLayout;
use crate::stream::LargeBlobs;
use crate::sys::{PeerCred, futex_wait, futex_wake};

/// Slot index bits of a call id.
const INDEX_BITS: u32 = 16;
/// Most slots (calls in flight) of a shared client.
const MAX_SLOTS: usize = 1 << INDEX_BITS;
/// The slot index bits of a call id.
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

/// The index of the slot of call `id`.
#[inline(always)]
fn slot_index(id: u64) -> usize {
    (id & INDEX_MASK) as usize
}

/// A slot's caller waits for its reply.
const WAITING: u32 = 0;
/// The reply is in the slot.
const READY: u32 = 1;
/// The slot's caller is asked to lead.
const LEAD: u32 = 2;
/// The slot's caller sleeps on the slot (futex): whoever moves the state
/// away from this wakes it, and only then (a caller that spins costs its
/// leader no system call).
const PARKED: u32 = 3;

/// Where one call's reply lands.
#[derive(Default)]
struct SlotData {
    status: u32,
    blobs: Vec<BlobHandle>,
    body: AlignedVec<16>,
}

struct Slot {
    /// The call id this slot serves now; a free slot's has no index bits
    /// (its generation only), so no reply's id matches it. Compared with a
    /// reply's id under `data`'s lock, by the receiver's holder; set back
    /// to free under that lock too (a reply being delivered never lands in
    /// a slot being freed), except by the leader freeing its own call's
    /// slot, which holds the receiver and so is the only deliverer (see
    /// `own_reply_bytes`). Armed for a call without it (Release, after
    /// `method` and `state`): no reply can be for a call before it is
    /// armed.
    id: AtomicU64,
    /// `WAITING`, `READY`, `LEAD` or `PARKED`; the caller sleeps on it.
    state: AtomicU32,
    /// The method of the call it serves (for an error reply's message).
    method: AtomicU32,
    data: Mutex<SlotData>,
    /// The call's own short reply, when its caller led (see
    /// `Inner::own_reply_bytes`).
    own: SlotBody,
    /// Whether the slot is free (taken by the sender, see `slots`).
    free: FreeMark,
}

impl Slot {
    /// Slot `index`, free.
    fn new(index: u32) -> Slot {
        Slot {
            id: AtomicU64::new(0),
            state: AtomicU32::new(WAITING),
            method: AtomicU32::new(0),
            data: Mutex::default(),
            own: SlotBody::default(),
            free: FreeMark::new(index),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Rx {
    rx: Receiver,
    /// Why the server closed the connection, once it did.
    closed: Option<CloseReason>,
    /// The ring failed (corrupt); every later wait fails the same way.
    broken: Option<String>,
}

/// What the sender's lock holds.
struct Tx {
    tx: Sender,
    arena: rkyv::ser::allocator::Arena,
    /// Only the sender takes slots (see `slots`).
    order: SlotOrder,
    /// Requests sent (held back or published).
    started: u64,
}

struct Inner {
    info: Info,
    /// The sender, its serializer's arena and the order of the slots;
    /// released by a plain store (see `StoreLock`), as is the receiver.
    tx: StoreLock<Tx>,
    rx: StoreLock<Rx>,
    slots: Box<[Slot]>,
    /// The calls whose callers sleep on their slot, to be asked to lead
    /// (call ids, not slot indexes: a slot may serve another call by the
    /// time its entry is taken, see `ask_to_lead`).
    parked: Mutex<VecDeque<u64>>,
    parked_n: AtomicUsize,
    abandoned: Arc<Abandoned>,
    spares: Mutex<Vec<AlignedVec<16>>>,
    pool: Option<Arc<Pool<SharedRegion>>>,
    /// A reason code once the server closed (0: open), for the paths that
    /// do not hold the receiver.
    closed: AtomicU32,
    /// Requests written but held back (not yet published), on the ring:
    /// changed only under the sender's lock, read without it (a waiter
    /// publishes them before it spins or sleeps).
    held_back: AtomicU32,
    /// Replies read from the ring: written only under the receiver's
    /// lock (a load and a store), read by the sender to estimate the
    /// calls in flight.
    answered: AtomicU64,
    next_large: AtomicU64,
    /// A stream connection's large blobs (shared by its two halves).
    large: Option<Arc<LargeBlobs>>,
    // Dropped last: the watch, then the socket (shared memory).
    ring: Option<RingLink>,
}

/// A connection shared by many threads: `Clone + Send + Sync`, `call(&self)`.
/// Clones are handles on one connection (one segment, one pair of rings);
/// replies are matched to their callers by call id, and whoever waits reads
/// the replies for everyone (see the module doc), so a lone caller pays no
/// hand-off to another thread.
#[derive(Clone)]
pub struct SharedClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SharedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedClient")
            .field("server", &self.inner.info.server)
            .field("methods", &self.inner.info.methods.len())
            .finish_non_exhaustive()
    }
}

impl SharedClient {
    /// Connects with the default options.
    ///
    /// # Errors
    ///
    /// As [`Client::connect`](super::Client::connect).
    pub fn connect(to: impl IntoEndpoint) -> Result<SharedClient, ConnectError> {
        Self::connect_with(to, ClientOptions::default())
    }

    /// Connects with `options` (`max_in_flight` is the number of calls the
    /// threads together may have in flight, at most 65536).
    ///
    /// # Errors
    ///
    /// As [`Client::connect`](super::Client::connect).
    pub fn connect_with(
        to: impl IntoEndpoint,
        options: ClientOptions,
    ) -> Result<SharedClient, ConnectError> {
        let (link, info) = connect_link(to, &options)?;
        Ok(Self::from_parts(link, info))
    }

    /// Runs the handshake over `sock`, a socket already connected to a
    /// server.
    ///
    /// # Errors
    ///
    /// As [`Client::over_socket`](super::Client::over_socket).
    pub fn over_socket(
        sock: std::os::fd::OwnedFd,
        options: ClientOptions,
    ) -> Result<SharedClient, ConnectError> {
        let (link, info) = super::core::handshake(sock, options)?;
        Ok(Self::from_parts(link, info))
    }

    fn from_parts(link: Link, info: Info) -> SharedClient {
        let n = info.options.max_in_flight.clamp(1, MAX_SLOTS - 1);
        let abandoned = Abandoned::register(info.tag);
        let Link { tx, rx, pool, ring } = link;
        let large = tx.stream().map(|s| s.large().clone());
        SharedClient {
            inner: Arc::new(Inner {
                info,
                tx: StoreLock::new(Tx {
                    tx,
                    arena: rkyv::ser::allocator::Arena::new(),
                    order: SlotOrder::new(n as u32),
                    started: 0,
                }),
                rx: StoreLock::new(Rx {
                    rx,
                    closed: None,
                    broken: None,
                }),
                // Slot 0 is never used: an id is never 0.
                slots: (0..=n as u32).map(Slot::new).collect(),
                parked: Mutex::new(VecDeque::new()),
                parked_n: AtomicUsize::new(0),
                abandoned,
                spares: Mutex::new(Vec::new()),
                pool,
                closed: AtomicU32::new(0),
                held_back: AtomicU32::new(0),
                answered: AtomicU64::new(0),
                next_large: AtomicU64::new(1),
                large,
                ring,
            }),
        }
    }

    /// Resolves `m` on this connection (see
    /// [`Client::method`](super::Client::method)).
    ///
    /// # Errors
    ///
    /// `NoSuchMethod`; `TypeMismatch` naming both sides' types.
    pub fn method<Req: Body, Resp: Body>(
        &self,
        m: Method<Req, Resp>,
    ) -> Result<MethodRef<Req, Resp>, CallError> {
        self.inner.info.resolve(m)
    }

    /// Resolves the one-way `m` on this connection.
    ///
    /// # Errors
    ///
    /// As [`method`](Self::method).
    pub fn message<M: Body>(&self, m: Message<M>) -> Result<MessageRef<M>, CallError> {
        self.inner.info.resolve_message(m)
    }

    /// The connection's blob pool, if it has one.
    pub fn pool(&self) -> Option<&Arc<Pool<SharedRegion>>> {
        self.inner.pool.as_ref()
    }

    /// The server's credentials, from the socket ([`PeerCred::REMOTE`]
    /// over TCP).
    pub fn server(&self) -> PeerCred {
        self.inner.info.server
    }

    /// The layout of the connection's segment (over a stream socket: no
    /// ring, and the classes of each side's pool).
    pub fn layout(&self) -> SegmentLayout {
        self.inner.info.layout
    }

    /// False once the server is known dead or gone, or closed the
    /// connection.
    pub fn is_alive(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire) == 0 && !self.inner.peer_gone()
    }

    /// Calls in flight on this connection, from every thread, counted as
    /// [`max_in_flight`](ClientOptions#structfield.max_in_flight) counts
    /// them: a call whose short reply is still held (its body lives in the
    /// call's slot until the [`Reply`] is dropped) counts too, so that
    /// `in_flight() < max_in_flight` means a slot is free for the next
    /// start (unless another thread takes it first).
    pub fn in_flight(&self) -> usize {
        self.inner
            .slots
            .iter()
            .filter(|s| !s.free.is_free())
            .count()
    }

    /// A large blob of `len` bytes (see
    /// [`Client::alloc_large`](super::Client::alloc_large)).
    ///
    /// # Errors
    ///
    /// As `Client::alloc_large`.
    pub fn alloc_large(&self, len: usize) -> Result<LargeBlob, CallError> {
        if len == 0 || len > u32::MAX as usize {
            return Err(CallError::Os(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a large blob of {len} bytes (1 byte to 4 GiB - 1)"),
            )));
        }
        let id = self.inner.next_large.fetch_add(1, Ordering::Relaxed);
        let mem = crate::sys::BlobMem::create(&format!("isocall:large:{id}"), len)?;
        Ok(LargeBlob {
            id,
            mem,
            shared: false,
        })
    }

    /// The handle of `blob` for a call, sending its memfd to the server the
    /// first time.
    ///
    /// # Errors
    ///
    /// As [`Client::share_large`](super::Client::share_large).
    pub fn share_large(&self, blob: &mut LargeBlob) -> Result<BlobHandle, CallError> {
        if !blob.shared {
            let deadline = crate::deadline_in(self.inner.info.options.call_timeout);
            match (&self.inner.ring, &self.inner.large) {
                (Some(ring), _) => super::share_over(ring.sock.as_fd(), blob, deadline)?,
                (None, Some(large)) => {
                    large.share(blob).map_err(TransportError::from)?;
                }
                (None, None) => return Err(CallError::PeerDied),
            }
            blob.shared = true;
        }
        Ok(blob.handle())
    }

    #[inline(always)]
    fn check_open(&self) -> Result<(), CallError> {
        match self.inner.closed.load(Ordering::Acquire) {
            0 => Ok(()),
            c => Err(closed_error(c)),
        }
    }

    /// Gives up the calls whose `Pending` was dropped.
    #[inline(always)]
    fn forget_given_up(&self) {
        if !self.inner.abandoned.maybe_any() {
            return;
        }
        self.forget_given_up_slow();
    }

    #[inline(never)]
    fn forget_given_up_slow(&self) {
        let mut ids = Vec::new();
        self.inner.abandoned.take(&mut ids);
        for id in ids {
            self.inner.release_slot(id);
        }
    }

    /// Starts a call (see [`Client::start`](super::Client::start)); the
    /// threads together may have `max_in_flight` calls in flight. With
    /// [`batch_requests`](super::ClientOptions::batch_requests), its
    /// request may be held back until some thread waits for a reply it
    /// does not find yet, or [`flush`](Self::flush) (see the module doc).
    ///
    /// # Errors
    ///
    /// As `Client::start`.
    pub fn start<Req: Body, Resp: Body>(
        &self,
        m: MethodRef<Req, Resp>,
        request: &Req,
        blobs: &[BlobHandle],
    ) -> Result<Pending<Resp>, CallError> {
        let id = self.start_id(m, request, blobs, true)?;
        Ok(Pending {
            id,
            client: self.inner.info.tag,
            method: m.name,
            armed: true,
            _t: std::marker::PhantomData,
        })
    }

    /// Starts a call; its request may be held back if `hold` (the caller
    /// does not wait for it at once; see the module doc).
    fn start_id<Req: Body, Resp: Body>(
        &self,
        m: MethodRef<Req, Resp>,
        request: &Req,
        blobs: &[BlobHandle],
        hold: bool,
    ) -> Result<u64, CallError> {
        self.inner.info.check_ref(m.client, m.name)?;
        self.check_open()?;
        self.forget_given_up();
        self.send_frame(
            kind::REQUEST,
            m.id,
            |buf, a| body::encode(request, buf, a),
            blobs,
            hold,
        )
    }

    /// Sends a frame of `frame_kind`; a request first takes a slot, under
    /// the sender's lock (only the sender takes slots), and its call id is
    /// returned (0 for another frame). On the ring a request may be held
    /// back if `hold` (see the module doc); any other frame publishes
    /// every frame held back before it.
    fn send_frame(
        &self,
        frame_kind: u16,
        method: u32,
        encode: impl FnMut(
            &mut [u8],
            &mut rkyv::ser::allocator::Arena,
        ) -> Result<usize, body::EncodeError>,
        blobs: &[BlobHandle],
        hold: bool,
    ) -> Result<u64, CallError> {
        let inner = &*self.inner;
        let mut guard = inner.tx.lock();
        let Tx {
            tx,
            arena,
            order,
            started,
        } = &mut *guard;
        let id = if frame_kind == kind::REQUEST {
            inner.take_slot(order, method)?
        } else {
            0
        };
        let out = Out {
            frame_kind,
            id,
            method,
            blobs,
            defer: false,
        };
        // One dispatch per call: the ring's path is built without a branch
        // on the transport per frame operation.
        let sent = match tx {
            Sender::Ring(ring) if inner.info.options.batch_requests => {
                let answered = inner.answered.load(Ordering::Relaxed);
                let defer = hold && holds_back(ring.unpublished(), *started, answered);
                let sent = inner.put_on(ring, arena, Out { defer, ..out }, encode);
                if sent.is_ok() && frame_kind == kind::REQUEST {
                    *started += 1;
                }
                let held = u32::try_from(ring.unpublished()).unwrap_or(u32::MAX);
                inner.held_back.store(held, Ordering::Relaxed);
                sent
            }
            Sender::Ring(ring) => inner.put_on(ring, arena, out, encode),
            other => inner.put_on(other, arena, out, encode),
        };
        drop(guard);
        match sent {
            Ok(()) => Ok(id),
            Err(e) => {
                inner.release_slot(id);
                Err(e)
            }
        }
    }

    /// Publishes now the requests of started calls held back (with
    /// [`batch_requests`](super::ClientOptions::batch_requests); see the
    /// module doc): a thread that starts calls and then does not wait for
    /// a while calls this, or the server may not see them until some
    /// thread waits. Without the option, or over a stream socket, it does
    /// nothing.
    ///
    /// # Errors
    ///
    /// `Closed` (the server closed the connection).
    pub fn flush(&self) -> Result<(), CallError> {
        self.check_open()?;
        let mut g = self.inner.tx.lock();
        if let Sender::Ring(ring) = &mut g.tx {
            ring.publish();
        }
        self.inner.held_back.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Waits for the reply of `pending` (see
    /// [`Client::wait`](super::Client::wait)).
    ///
    /// # Errors
    ///
    /// As `Client::wait`.
    pub fn wait<Resp: Body>(
        &self,
        pending: Pending<Resp>,
        deadline: Option<Instant>,
    ) -> Result<Reply<'_, Resp>, CallError> {
        // Checked before the pending is disarmed: one of another client,
        // refused, is dropped armed and given up on its own client.
        self.inner
            .info
            .check_ref(pending.client, "a pending call")?;
        let (id, _) = pending.defuse();
        self.wait_id(id, deadline)
    }

    /// Calls `m` and waits for its reply.
    ///
    /// # Errors
    ///
    /// As [`Client::call`](super::Client::call).
    #[inline]
    pub fn call<Req: Body, Resp: Body>(
        &self,
        m: MethodRef<Req, Resp>,
        request: &Req,
    ) -> Result<Reply<'_, Resp>, CallError> {
        let id = self.start_id(m, request, &[], false)?;
        self.wait_id(id, None)
    }

    /// Calls `m` with blobs and a deadline.
    ///
    /// # Errors
    ///
    /// As [`Client::call_with`](super::Client::call_with).
    pub fn call_with<Req: Body, Resp: Body>(
        &self,
        m: MethodRef<Req, Resp>,
        request: &Req,
        blobs: &[BlobHandle],
        deadline: Option<Instant>,
    ) -> Result<Reply<'_, Resp>, CallError> {
        let id = self.start_id(m, request, blobs, false)?;
        self.wait_id(id, deadline)
    }

    /// Sends the one-way message `m`.
    ///
    /// # Errors
    ///
    /// As [`Client::send`](super::Client::send).
    pub fn send<M: Body>(
        &self,
        m: MessageRef<M>,
        message: &M,
        blobs: &[BlobHandle],
    ) -> Result<(), CallError> {
        self.inner.info.check_ref(m.client, m.name)?;
        self.check_open()?;
        self.forget_given_up();
        self.send_frame(
            kind::MESSAGE,
            m.id,
            |buf, a| body::encode(message, buf, a),
            blobs,
            false,
        )
        .map(drop)
    }

    fn wait_id<Resp: Body>(
        &self,
        id: u64,
        deadline: Option<Instant>,
    ) -> Result<Reply<'_, Resp>, CallError> {
        let inner = &*self.inner;
        let idx = slot_index(id);
        let slot = &inner.slots[idx];
        let timeout = inner.info.options.call_timeout;
        let mut deadline = deadline;
        let mut spinner = Spinner::yielding(inner.info.options.strategy);
        loop {
            if slot.state.load(Ordering::Acquire) == READY {
                return inner.take_reply(id);
            }
            if let Some(mut rx) = inner.rx.try_lock() {
                let r = inner.lead::<Resp>(&mut rx, id, &mut deadline, timeout);
                drop(rx);
                inner.hand_off();
                return r;
            }
            // Before this caller spins or sleeps: the requests held back
            // (its own among them) go out.
            inner.publish_held_back();
            if spinner.spin() {
                continue;
            }
            if inner.held_back.load(Ordering::Relaxed) != 0 {
                // Not asleep while a request is held back (it may be
                // ours): a sender holding its lock now publishes them, or
                // holds back more and leaves, and the next look here
                // publishes them all (a sender that finds the ring full
                // publishes first and clears the count).
                let d = *deadline.get_or_insert_with(|| crate::deadline_in(timeout));
                if Instant::now() >= d && slot.state.load(Ordering::Acquire) != READY {
                    inner.release_slot(id);
                    return Err(CallError::Timeout);
                }
                std::hint::spin_loop();
                continue;
            }
            // Sleep on the slot until the leader delivers the reply or asks
            // us to lead; registered before the last look at the receiver,
            // so a leader leaving now finds us.
            lock(&inner.parked).push_back(id);
            inner.parked_n.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let free_now = inner.rx.try_lock().is_some();
            let d = *deadline.get_or_insert_with(|| crate::deadline_in(timeout));
            // Asleep only from WAITING: a reply delivered or a lead asked
            // for meanwhile fails the exchange, and we look again instead.
            if !free_now
                && slot
                    .state
                    .compare_exchange(WAITING, PARKED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                let left = d.saturating_duration_since(Instant::now());
                // A bounded sleep: every wake-up re-checks everything.
                let _ = futex_wait(
                    &slot.state,
                    PARKED,
                    Some(left.min(Duration::from_millis(100))),
                );
            }
            inner.unpark(id);
            // Out of time: the slot is freed with any request to lead still
            // in it, which `release_slot` passes on (taken down first, it
            // would be lost with this caller, and every other parked caller
            // would sleep out its bound with nobody reading).
            if Instant::now() >= d && slot.state.load(Ordering::Acquire) != READY {
                inner.release_slot(id);
                return Err(CallError::Timeout);
            }
            for from in [PARKED, LEAD] {
                let _ =
                    slot.state
                        .compare_exchange(from, WAITING, Ordering::AcqRel, Ordering::Acquire);
            }
            spinner = Spinner::yielding(inner.info.options.strategy);
        }
    }
}

/// The error of a call on a connection the server closed with `code`.
#[cold]
fn closed_error(code: u32) -> CallError {
    CallError::Closed(CloseReason::from_code(code))
}

/// A frame to send, but its body.
struct Out<'b> {
    frame_kind: u16,
    id: u64,
    method: u32,
    blobs: &'b [BlobHandle],
    /// Held back: written but not published (see the module doc).
    defer: bool,
}

/// What one look at the ring gave the leader.
enum Polled {
    /// The ring is empty.
    Nothing,
    /// A frame was handled (delivered to its slot, or discarded).
    Handled,
}

impl Inner {
    /// Takes a free slot for a new call (`order`: the sender's, whose lock
    /// the caller holds) and arms it; returns the call id.
    #[inline]
    fn take_slot(&self, order: &mut SlotOrder, method: u32) -> Result<u64, CallError> {
        let idx = order
            .take(|i| &self.slots[i as usize].free)
            .ok_or_else(|| CallError::TooManyInFlight {
                limit: self.slots.len() - 1,
            })?;
        let slot = &self.slots[idx as usize];
        let generation = (slot.id.load(Ordering::Relaxed) >> INDEX_BITS).wrapping_add(1);
        let id = (generation.max(1) << INDEX_BITS) | u64::from(idx);
        slot.method.store(method, Ordering::Relaxed);
        // Release: an ask to lead whose exchange reads this store
        // (`ask_to_lead`, Acquire) then sees the id cleared when the slot
        // was freed (before the free mark's Release), not the id of the
        // call that had it.
        slot.state.store(WAITING, Ordering::Release);
        // Release: a leader that finds this id here (Acquire, under the
        // data lock) sees the state and method above.
        slot.id.store(id, Ordering::Release);
        Ok(id)
    }

    /// Writes a frame on `tx` (the sender, under its lock), reading
    /// replies while the ring is full if nobody else does.
    #[inline(always)]
    fn put_on<T: SendFrames>(
        &self,
        tx: &mut T,
        arena: &mut rkyv::ser::allocator::Arena,
        out: Out<'_>,
        encode: impl FnMut(
            &mut [u8],
            &mut rkyv::ser::allocator::Arena,
        ) -> Result<usize, body::EncodeError>,
    ) -> Result<(), CallError> {
        let Out {
            frame_kind,
            id,
            method,
            blobs,
            defer,
        } = out;
        let mut room = RoomWait::new(&self.info.options, None);
        let on_full = |tx: &mut T| -> Result<(), CallError> {
            // `put` published every request held back before this: a
            // waiter must not wait for this sender to (it may wait here
            // for room until the call's deadline).
            self.held_back.store(0, Ordering::Relaxed);
            // Read replies if nobody else does: the server may wait for
            // room for them before it takes our requests.
            let mut drained = false;
            if let Some(mut rx) = self.rx.try_lock() {
                while let Polled::Handled = self.poll_one(&mut rx)? {
                    drained = true;
                }
                drop(rx);
                self.hand_off();
            }
            room.after_reading(drained, tx, frame_kind)
        };
        put(
            defer,
            tx,
            arena,
            self.info.max_frame,
            frame_kind,
            id,
            method,
            encode,
            blobs,
            on_full,
        )
    }

    /// Whether the server is known gone (see `Link::peer_gone`); a stream
    /// whose sender is busy in another thread is taken as alive.
    fn peer_gone(&self) -> bool {
        match &self.ring {
            Some(r) => r.liveness.peer_gone(),
            None => match self.tx.try_lock() {
                Some(g) => g.tx.stream().is_none_or(stream_gone),
                None => false,
            },
        }
    }

    /// Reads frames as the leader until `id`'s reply comes (returned
    /// directly, never delivered to the slot's data), or it was delivered
    /// to its slot meanwhile (taken from there), or the deadline passes
    /// (the call given up, its slot freed). One return type all the way
    /// up: the reply is built where the caller gets it, not moved (128
    /// bytes) from one wrapper to the next.
    #[inline(always)]
    fn lead<Resp: Body>(
        &self,
        rx: &mut Rx,
        id: u64,
        deadline: &mut Option<Instant>,
        timeout: Duration,
    ) -> Result<Reply<'_, Resp>, CallError> {
        let Rx { rx, closed, broken } = rx;
        // One dispatch per wait: the ring's path is built without a branch
        // on the transport per frame operation.
        match rx {
            Receiver::Ring(ring) => self.lead_on(ring, true, closed, broken, id, deadline, timeout),
            other => self.lead_on(other, false, closed, broken, id, deadline, timeout),
        }
    }

    /// `lead` on the receiver `rx` (`ring`: the shared-memory one).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn lead_on<Resp: Body, R: RecvFrames>(
        &self,
        rx: &mut R,
        ring: bool,
        closed: &mut Option<CloseReason>,
        broken: &mut Option<String>,
        id: u64,
        deadline: &mut Option<Instant>,
        timeout: Duration,
    ) -> Result<Reply<'_, Resp>, CallError> {
        let idx = slot_index(id);
        let slot = &self.slots[idx];
        let strategy = self.info.options.strategy;
        // Frames for other calls handled since the clock was last read.
        let mut others = 0u32;
        loop {
            if slot.state.load(Ordering::Acquire) == READY {
                return self.take_reply(id);
            }
            if let Some(r) = *closed {
                return Err(self.give_up(id, CallError::Closed(r)));
            }
            if broken.is_some() {
                return Err(self.give_up(id, CallError::PeerDied));
            }
            let frame = match self.next_frame(rx, ring, strategy, deadline, timeout) {
                Ok(f) => f,
                Err(TransportError::Timeout) => return Err(self.give_up(id, CallError::Timeout)),
                Err(TransportError::PeerDied) => {
                    self.wake_everyone();
                    return Err(self.give_up(id, CallError::PeerDied));
                }
                Err(e) => {
                    *broken = Some(e.to_string());
                    self.wake_everyone();
                    return Err(self.give_up(id, e.into()));
                }
            };
            let k = frame.kind();
            if k == kind::CLOSE {
                let p = frame.payload();
                let code = p
                    .get(..4)
                    .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                let r = CloseReason::from_code(code);
                frame.release();
                *closed = Some(r);
                self.closed.store(r.code().max(1), Ordering::Release);
                self.wake_everyone();
                return Err(self.give_up(id, CallError::Closed(r)));
            }
            if k != kind::RESPONSE {
                frame.release();
                *broken = Some(format!("frame kind {k}"));
                self.wake_everyone();
                return Err(self.give_up(
                    id,
                    CallError::BadReply(ReplyError::UnexpectedKind { kind: k }),
                ));
            }
            let p = match wire::parse(frame.payload()) {
                Ok(p) => p,
                Err(e) => {
                    // The frame stays unreleased: the ring is broken.
                    *broken = Some(e.to_string());
                    self.wake_everyone();
                    return Err(self.give_up(id, CallError::BadReply(e.into())));
                }
            };
            if p.head.id == id {
                // Ours: copied out (the copy rule), checked, returned.
                let status = p.head.status;
                // Read before the slot is freed, and only for an error.
                let method = slot.method.load(Ordering::Relaxed);
                let blobs = ReplyBlobSet::new(Handles::of(&p), self.pool.as_deref());
                let body = self.own_reply_bytes(id, p.body);
                frame.release();
                self.count_answered();
                return self.finish_reply(method, status, body, blobs);
            }
            self.deliver(&p);
            frame.release();
            self.count_answered();
            // Replies for others (or a hostile server's strays) that keep
            // coming must not keep this call past its deadline: the clock
            // is read every 16 of them.
            others += 1;
            if others.is_multiple_of(16)
                && Instant::now() >= *deadline.get_or_insert_with(|| crate::deadline_in(timeout))
            {
                return Err(self.give_up(id, CallError::Timeout));
            }
        }
    }

    /// Counts a reply read (under the receiver's lock, the only writer),
    /// if requests are published in batches (the count is for them).
    #[inline(always)]
    fn count_answered(&self) {
        if self.info.options.batch_requests {
            let n = self.answered.load(Ordering::Relaxed);
            self.answered.store(n + 1, Ordering::Relaxed);
        }
    }

    /// Publishes the requests held back, if any, unless a sender holds
    /// the lock now (it may hold back more: the caller looks again, and
    /// does not sleep while any is held back; see `next_frame` and
    /// `SharedClient::wait_id`).
    #[inline]
    fn publish_held_back(&self) {
        if self.held_back.load(Ordering::Relaxed) != 0
            && let Some(mut g) = self.tx.try_lock()
        {
            g.tx.publish();
            self.held_back.store(0, Ordering::Relaxed);
        }
    }

    /// `e`, the error that ends the wait for `id`'s reply before it came:
    /// the call is given up, its slot freed.
    #[cold]
    fn give_up(&self, id: u64, e: CallError) -> CallError {
        self.release_slot(id);
        e
    }

    /// The leader's wait for the next frame. On a ring with `BusySpin`, a
    /// spin that yields the CPU now and then (see [`Spinner::yielding`]):
    /// the threads of a shared client and its server may be more than the
    /// cores, and a leader that never yields keeps the server off a core
    /// it shares, for a whole time slice, while nothing can come. A reply
    /// that comes within a few microseconds is found before any yield.
    /// Otherwise (a stream, or another strategy), the connection's wait.
    #[inline(always)]
    fn next_frame<'r, R: RecvFrames>(
        &self,
        rx: &'r mut R,
        ring: bool,
        strategy: WaitStrategy,
        deadline: &mut Option<Instant>,
        timeout: Duration,
    ) -> Result<R::Frame<'r>, TransportError> {
        if strategy != WaitStrategy::BusySpin || !ring {
            // This wait may sleep: not before every request held back is
            // out (the reply waited for may need one), whatever a sender
            // busy meanwhile holds back; frames that come are read.
            // (Not the sender's lock itself: a sender waiting for room
            // in a full ring waits for this leader to read.)
            let mut turns = 0u32;
            while self.held_back.load(Ordering::Relaxed) != 0 {
                self.publish_held_back();
                if rx.has_frame()? {
                    return rx.try_recv()?.ok_or(TransportError::PeerDied);
                }
                if self.turn_ends_wait(&mut turns, deadline, timeout)? {
                    return rx.try_recv()?.ok_or(TransportError::PeerDied);
                }
                std::hint::spin_loop();
            }
            return next_frame(rx, strategy, deadline, timeout, || ());
        }
        let mut spinner = Spinner::yielding(strategy);
        let mut turns = 0u32;
        loop {
            if rx.has_frame()? {
                return rx.try_recv()?.ok_or(TransportError::PeerDied);
            }
            // Nothing to read: the requests held back go out now.
            self.publish_held_back();
            if self.turn_ends_wait(&mut turns, deadline, timeout)? {
                return rx.try_recv()?.ok_or(TransportError::PeerDied);
            }
            spinner.spin();
        }
    }

    /// Counts a turn of a leader's spin; every 1024th reads the clock and
    /// looks at the server: `Err(Timeout)` past the deadline, `Ok(true)`
    /// if the server is gone (the caller reads what it sent before it
    /// died, or fails with `PeerDied`).
    #[inline(always)]
    fn turn_ends_wait(
        &self,
        turns: &mut u32,
        deadline: &mut Option<Instant>,
        timeout: Duration,
    ) -> Result<bool, TransportError> {
        *turns = turns.wrapping_add(1);
        if !turns.is_multiple_of(1024) {
            return Ok(false);
        }
        let d = *deadline.get_or_insert_with(|| crate::deadline_in(timeout));
        if Instant::now() >= d {
            return Err(TransportError::Timeout);
        }
        Ok(self.peer_gone())
    }

    /// One frame for whoever it is (used while waiting for room to send):
    /// delivered to its slot or discarded.
    fn poll_one(&self, rx: &mut Rx) -> Result<Polled, CallError> {
        let frame = match rx.rx.try_recv() {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(Polled::Nothing),
            Err(e) => return Err(e.into()),
        };
        if frame.kind() != kind::RESPONSE {
            // Leave it for a waiter to report.
            return Ok(Polled::Nothing);
        }
        match wire::parse(frame.payload()) {
            Ok(p) => self.deliver(&p),
            Err(_) => return Ok(Polled::Nothing),
        }
        frame.release();
        self.count_answered();
        Ok(Polled::Handled)
    }

    /// Hands a reply to its slot (copying its body out of the ring) and
    /// wakes its caller; discards one whose call is gone, freeing its
    /// blobs.
    fn deliver(&self, p: &wire::Parsed<'_>) {
        let idx = slot_index(p.head.id);
        if let Some(slot) = self.slots.get(idx).filter(|_| idx != 0) {
            let mut d = lock(&slot.data);
            if slot.id.load(Ordering::Acquire) == p.head.id
                && slot.state.load(Ordering::Acquire) != READY
            {
                d.status = p.head.status;
                p.copy_blobs(&mut d.blobs);
                d.body.clear();
                d.body.extend_from_slice(p.body);
                let was = slot.state.swap(READY, Ordering::AcqRel);
                drop(d);
                if was == PARKED {
                    let _ = futex_wake(&slot.state, 1);
                }
                return;
            }
        }
        ReplyBlobSet::free(&p.blob_vec(), self.pool.as_deref());
    }

    /// The reply delivered to `id`'s slot; frees the slot.
    fn take_reply<Resp: Body>(&self, id: u64) -> Result<Reply<'_, Resp>, CallError> {
        let idx = slot_index(id);
        let slot = &self.slots[idx];
        let method = slot.method.load(Ordering::Relaxed);
        let (status, blobs, body) = {
            let mut d = lock(&slot.data);
            let body = match ReplyBytes::inline(&d.body) {
                Some(b) => b,
                None => {
                    let spare = self.spare();
                    ReplyBytes::Owned(std::mem::replace(&mut d.body, spare), Some(&self.spares))
                }
            };
            let taken = (d.status, std::mem::take(&mut d.blobs), body);
            // Freed under the same lock (a reply never lands in a slot being freed).
            if slot.id.load(Ordering::Acquire) == id {
                Self::unarm(slot, id);
                drop(d);
                slot.free.give_back();
            }
            taken
        };
        let blobs = ReplyBlobSet::new(Handles::owned(blobs), self.pool.as_deref());
        self.finish_reply(method, status, body, blobs)
    }

    /// `bytes` (a reply body in the ring) copied out: into the reply itself
    /// when short, else into a spare buffer.
    #[inline]
    fn reply_bytes(&self, bytes: &[u8]) -> ReplyBytes<'_> {
        match ReplyBytes::inline(bytes) {
            Some(b) => b,
            None => {
                let mut v = self.spare();
                v.extend_from_slice(bytes);
                ReplyBytes::Owned(v, Some(&self.spares))
            }
        }
    }

    /// The reply of a call of `method` from its status, private body and
    /// blobs: the server's error, a body that fails the check, or the
    /// checked reply.
    #[inline(always)]
    fn finish_reply<'c, Resp: Body>(
        &self,
        method: u32,
        status: u32,
        body: ReplyBytes<'c>,
        blobs: ReplyBlobSet<'c>,
    ) -> Result<Reply<'c, Resp>, CallError> {
        if status != Status::Ok as u32 {
            return Err(self.info.status_error(method, status, body.bytes()));
        }
        if let Err(e) = body::check::<Resp>(body.bytes()) {
            return Err(CallError::BadReply(ReplyError::Invalid(e)));
        }
        Ok(Reply::new(body, blobs))
    }

    fn spare(&self) -> AlignedVec<16> {
        let mut v = lock(&self.spares).pop().unwrap_or_default();
        v.clear();
        v
    }

    /// Frees `id`'s slot if it still serves `id` (a reply already in it is
    /// discarded, its blobs freed). A caller that was asked to lead and
    /// gives up instead passes the request on to another parked caller.
    fn release_slot(&self, id: u64) {
        let idx = slot_index(id);
        let Some(slot) = self.slots.get(idx).filter(|_| idx != 0) else {
            return;
        };
        let mut d = lock(&slot.data);
        if slot.id.load(Ordering::Acquire) != id {
            return;
        }
        if slot.state.load(Ordering::Acquire) == READY {
            ReplyBlobSet::free(&d.blobs, self.pool.as_deref());
            d.blobs.clear();
        }
        Self::clear_id(slot, id);
        // A swap, not `unarm`'s store: a request to lead that came meanwhile
        // must be seen to be passed on. Release: an ask whose exchange
        // reads it (Acquire) sees the id cleared above.
        let was = slot.state.swap(WAITING, Ordering::AcqRel);
        drop(d);
        slot.free.give_back();
        if was == LEAD {
            self.hand_off_parked();
        }
    }

    /// The leader's own reply body `bytes` (`id`'s), copied out of the
    /// ring: a short one into its slot's buffer, the slot unarmed and not
    /// given back until the reply is dropped (a reply that moves carries a
    /// pointer, not the bytes); a long one as `reply_bytes`, the slot
    /// freed.
    ///
    /// Without the slot's lock, which keeps a reply from being delivered
    /// into a slot being freed: replies are delivered only by the
    /// receiver's holder, the leader itself, and no other thread frees a
    /// call whose caller waits for it (only given-up calls are freed by
    /// others).
    #[inline(always)]
    fn own_reply_bytes(&self, id: u64, bytes: &[u8]) -> ReplyBytes<'_> {
        let idx = slot_index(id);
        let slot = &self.slots[idx];
        if slot.id.load(Ordering::Relaxed) != id {
            return self.reply_bytes(bytes);
        }
        Self::unarm(slot, id);
        // Unarmed, the slot gets no delivery; not given back, no call
        // takes it until the `ReplyBytes::Slot` made here gives it back
        // when dropped; the last fill's slice went back with the slot
        // before this call took it.
        #[allow(unsafe_code)]
        // SAFETY: this call holds the slot (see above).
        match unsafe { slot.own.fill(bytes) } {
            Some(b) => ReplyBytes::Slot {
                bytes: b,
                free: &slot.free,
            },
            None => {
                slot.free.give_back();
                self.reply_bytes(bytes)
            }
        }
    }

    /// Unarms `slot`, which serves `id` (its generation kept): no reply's
    /// id matches it any more; the slot is not given back (see `FreeMark`).
    /// Under the slot's data lock, but by the leader for its own call (see
    /// `own_reply_bytes`).
    #[inline(always)]
    fn unarm(slot: &Slot, id: u64) {
        Self::clear_id(slot, id);
        slot.state.store(WAITING, Ordering::Release);
    }

    /// Clears the index bits of `slot`'s id (`id`), keeping its generation:
    /// no reply's id, nor any parked entry's, matches it any more.
    #[inline(always)]
    fn clear_id(slot: &Slot, id: u64) {
        slot.id.store(id & !INDEX_MASK, Ordering::Release);
    }

    /// The leader left: asks one parked caller to lead (one still waiting:
    /// a parked caller whose reply came meanwhile is passed over). Nothing
    /// to do with `BusySpin`, whose callers never park (their spinner has
    /// no budget to run out of): not even the fence, a locked instruction
    /// that waits for this thread's stores to the ring to drain.
    #[inline(always)]
    fn hand_off(&self) {
        if self.info.options.strategy != WaitStrategy::BusySpin {
            self.hand_off_parked();
        }
    }

    #[inline(never)]
    fn hand_off_parked(&self) {
        fence(Ordering::SeqCst);
        if self.parked_n.load(Ordering::SeqCst) == 0 {
            return;
        }
        loop {
            let Some(id) = lock(&self.parked).pop_front() else {
                return;
            };
            self.parked_n.fetch_sub(1, Ordering::SeqCst);
            if self.ask_to_lead(id) {
                return;
            }
        }
    }

    /// Removes a parked caller (it woke up).
    fn unpark(&self, id: u64) {
        let mut p = lock(&self.parked);
        if let Some(pos) = p.iter().position(|&i| i == id) {
            p.remove(pos);
            self.parked_n.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Wakes every parked caller (the connection is over: each finds out).
    fn wake_everyone(&self) {
        let parked: Vec<u64> = lock(&self.parked).drain(..).collect();
        self.parked_n.fetch_sub(parked.len(), Ordering::SeqCst);
        for id in parked {
            self.ask_to_lead(id);
        }
    }

    /// Asks the caller of call `id` to lead, waking it if it sleeps; false
    /// if it cannot be relied on to: its reply came meanwhile (it needs no
    /// leader), or its slot serves another call now. Between the entry's
    /// removal from `parked` and this, the caller may have woken, given
    /// up and freed the slot, and another call taken it, whose caller may
    /// not be waiting at all (a call started and not yet waited for).
    /// That caller gets the request anyway (harmless: one asked to lead
    /// only tries the receiver's lock), and the next parked caller is
    /// asked too.
    fn ask_to_lead(&self, id: u64) -> bool {
        let slot = &self.slots[slot_index(id)];
        let state = &slot.state;
        for from in [PARKED, WAITING] {
            if state
                .compare_exchange(from, LEAD, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if from == PARKED {
                    let _ = futex_wake(state, 1);
                }
                // The exchange (Acquire) read a state stored, with
                // Release, after any clearing of the id: by
                // `release_slot`'s swap, which follows its clearing, or by
                // `take_slot`'s store, which follows the clearing through
                // the free mark. So a slot given up since shows an id other
                // than `id` here.
                return slot.id.load(Ordering::Relaxed) == id;
            }
        }
        false
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let tx = &mut self.tx.get_mut().tx;
        if let Ok(mut g) = tx.try_reserve(kind::CLOSE, 4) {
            g.bytes_mut()
                .copy_from_slice(&CloseReason::ClientClosed.code().to_le_bytes());
            let _ = g.commit_all();
            tx.publish();
        }
    }
}

/// The hand-off of the receiver between parked callers, played step by
/// step on a real connection: calls are started (their requests reach an
/// in-process server, whose replies nobody reads), and the parking and
/// waking a race would interleave are made by hand.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{AppError, CallCtx, Server, ServerBuilder};
    use crate::sys::SocketName;

    const ECHO: Method<u64, u64> = Method::new("echo");

    fn server_and_client(test: &str) -> (Server, SharedClient) {
        server_and_client_with(test, ClientOptions::default())
    }

    /// An in-process echo server and a `Blocking` client of it with
    /// `opts` otherwise.
    fn server_and_client_with(test: &str, opts: ClientOptions) -> (Server, SharedClient) {
        let name = format!("isocall-unit-{test}-{}", std::process::id());
        let server = ServerBuilder::new(SocketName::Abstract(name.clone()))
            .method(ECHO, |n: &rkyv::rend::u64_le, _: &mut CallCtx<'_>| {
                Ok::<u64, AppError>(n.to_native())
            })
            .spawn()
            .expect("server");
        let opts = opts.strategy(WaitStrategy::Blocking);
        let client = SharedClient::connect_with(SocketName::Abstract(name), opts).expect("client");
        (server, client)
    }

    /// A client with `batch_requests` (calls time out after 20 s) and
    /// three calls started: the ids of the first two, published, and the
    /// third, whose request is held back.
    fn third_held_back(test: &str) -> (Server, SharedClient, [u64; 2], Pending<u64>) {
        let opts = ClientOptions::default()
            .batch_requests(true)
            .call_timeout(Duration::from_secs(20));
        let (server, c) = server_and_client_with(test, opts);
        let m = c.method(ECHO).expect("method");
        let (a, _) = c.start(m, &1, &[]).expect("start a").defuse();
        let (b, _) = c.start(m, &2, &[]).expect("start b").defuse();
        let p = c.start(m, &3, &[]).expect("start the third");
        assert_eq!(
            c.inner.held_back.load(Ordering::Relaxed),
            1,
            "the third request is not held back"
        );
        (server, c, [a, b], p)
    }

    /// Waits until `cond` holds, failing the test after 10 s.
    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::yield_now();
        }
    }

    /// A connection with two calls started, `x` and then `z`, whose
    /// callers are parked in that order, as `wait_id` parks them.
    fn two_parked(test: &str) -> (Server, SharedClient, MethodRef<u64, u64>, u64, u64) {
        let (server, c) = server_and_client(test);
        let m = c.method(ECHO).expect("method");
        let (x, _) = c.start(m, &1, &[]).expect("start x").defuse();
        let (z, _) = c.start(m, &2, &[]).expect("start z").defuse();
        for id in [x, z] {
            lock(&c.inner.parked).push_back(id);
            c.inner.parked_n.fetch_add(1, Ordering::SeqCst);
            assert!(
                slot(&c.inner, id)
                    .state
                    .compare_exchange(WAITING, PARKED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            );
        }
        (server, c, m, x, z)
    }

    /// `two_parked`, then the leader leaves and asks x to lead (z sleeps
    /// on).
    fn x_asked_to_lead(test: &str) -> (Server, SharedClient, u64, u64) {
        let (server, c, _, x, z) = two_parked(test);
        c.inner.hand_off_parked();
        assert_eq!(state(&c.inner, x), LEAD);
        assert_eq!(state(&c.inner, z), PARKED);
        (server, c, x, z)
    }

    fn slot(inner: &Inner, id: u64) -> &Slot {
        &inner.slots[slot_index(id)]
    }

    fn state(inner: &Inner, id: u64) -> u32 {
        slot(inner, id).state.load(Ordering::Acquire)
    }

    #[test]
    fn a_hand_off_passes_over_a_parked_entry_whose_slot_serves_another_call() {
        let (_server, c, m, x, z) = two_parked("handoff-reused");
        let inner = &*c.inner;
        // Between the leaving leader's taking x's entry and its asking,
        // x's caller wakes and gives up, and a call started since takes
        // its slot (not waited for). The entry is left in the list here:
        // the ask that follows is the one that leader makes.
        inner.release_slot(x);
        let mut later = Vec::new();
        let y = loop {
            let (y, _) = c.start(m, &3, &[]).expect("start y").defuse();
            if slot_index(y) == slot_index(x) {
                break y;
            }
            later.push(y);
            assert!(later.len() < 1000, "x's slot was never taken again");
        };
        assert_ne!(y, x);
        inner.hand_off_parked();
        assert_eq!(
            state(inner, z),
            LEAD,
            "the parked caller z was not asked to lead: the request went to x's slot, now y's"
        );
    }

    #[test]
    fn a_caller_asked_to_lead_whose_wait_runs_out_passes_the_request_on() {
        // The leader leaves and asks x; another thread takes the receiver
        // before x can, and x's deadline has passed when it looks.
        let (_server, c, x, z) = x_asked_to_lead("handoff-wait-late");
        let inner = &*c.inner;
        let rx = inner.rx.try_lock().expect("the receiver is free");
        let r = c.wait_id::<u64>(x, Some(Instant::now()));
        assert!(matches!(r, Err(CallError::Timeout)), "{r:?}");
        drop(rx);
        assert_eq!(
            state(inner, z),
            LEAD,
            "x's wait ran out with the request to lead, and z was left asleep"
        );
    }

    #[test]
    fn a_leader_does_not_sleep_while_a_request_is_held_back_behind_a_busy_sender() {
        // With batch_requests, the third of three calls started is held
        // back. Its caller leads, reads the first two replies and then
        // waits for its own, which cannot come before its request is out.
        // Meanwhile a sender holds the sender's lock (here, the test), so
        // the leader's try to publish fails. Were it to go to sleep on the
        // ring then, nobody would publish the request after the sender
        // leaves, and the call would time out.
        let (_server, c, [a, b], p) = third_held_back("held-back-busy-sender");
        let inner = &*c.inner;
        let sender = inner.tx.lock();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| c.wait(p, None).map(|r| r.to_native()));
            // The waiter leads and has read both replies that can come:
            // it now waits for its own.
            wait_until(
                "the waiter leads and has read the first two replies",
                || {
                    state(inner, a) == READY
                        && state(inner, b) == READY
                        && inner.rx.try_lock().is_none()
                },
            );
            drop(sender);
            let r = waiter.join().expect("the waiter panicked");
            assert!(
                matches!(r, Ok(3)),
                "the held-back request was never published: {r:?}"
            );
        });
    }

    #[test]
    fn a_waiter_does_not_park_while_a_request_is_held_back_behind_a_busy_sender() {
        // As above, but another thread leads (here, the test holds the
        // receiver) and so cannot publish for the waiter either. Asleep on
        // its slot, the waiter would wait for a leader that has nothing to
        // read until the request goes out, which nobody would do: it must
        // keep looking until it can publish it itself.
        let (_server, c, _, p) = third_held_back("held-back-busy-both");
        let inner = &*c.inner;
        let id = p.id;
        let leader = inner.rx.try_lock().expect("the receiver is free");
        let sender = inner.tx.lock();
        let started = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                started.store(true, Ordering::Release);
                c.wait(p, None).map(|r| r.to_native())
            });
            // Timed from the waiter's start (a thread slow to be scheduled
            // would otherwise let the window pass before it waits): far
            // longer than a wait spins before it parks (a `Blocking` waiter
            // parks within microseconds).
            wait_until("the waiter starts", || started.load(Ordering::Acquire));
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until {
                assert_ne!(
                    state(inner, id),
                    PARKED,
                    "the waiter went to sleep with its request held back"
                );
                std::thread::yield_now();
            }
            drop(sender);
            drop(leader);
            let r = waiter.join().expect("the waiter panicked");
            assert!(matches!(r, Ok(3)), "{r:?}");
        });
    }

    #[test]
    fn a_short_reply_still_held_counts_as_in_flight() {
        let (_server, c) = server_and_client("in-flight");
        let m = c.method(ECHO).expect("method");
        assert_eq!(c.in_flight(), 0);
        let p = c.start(m, &7, &[]).expect("start");
        assert_eq!(c.in_flight(), 1);
        let r = c.wait(p, None).expect("reply");
        assert_eq!(*r, 7);
        assert_eq!(c.in_flight(), 1, "the reply holds its call's slot");
        drop(r);
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn a_caller_asked_to_lead_that_gives_up_passes_the_request_on() {
        // The leader leaves and asks x, which then runs out of time.
        let (_server, c, x, z) = x_asked_to_lead("handoff-given-up");
        let inner = &*c.inner;
        inner.unpark(x);
        inner.release_slot(x);
        assert_eq!(
            state(inner, z),
            LEAD,
            "x gave up with the request to lead, and z was left asleep"
        );
    }
}
