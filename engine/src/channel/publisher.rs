//! The publishing side: a [`Publisher`] listens under a name, adopts the
//! subscribers its accept thread handshook, and writes each message into
//! every subscriber's ring, by each one's backpressure policy.
//!
//! A send serializes the message once. With one subscriber that keeps up
//! (the common pipeline) it is serialized straight into that ring, in
//! place; otherwise into a private staging buffer, then copied into each
//! ring that has room. Each ring's frames are published as they are
//! written: a subscriber that sleeps is woken once, by the first frame
//! after it announced its sleep, and the frames that follow cost it no
//! wake-up (the ring's announce-then-sleep protocol), so a stream is
//! batched for free; a subscriber that keeps up is never woken at all.
//!
//! A send is all or nothing: it first makes sure that every subscriber
//! whose policy is [`Backpressure::Block`] has room (waiting up to the
//! send's deadline), and only then writes. Subscribers of the other
//! policies never make it wait (see [`policy`](super::policy)).
//!
//! Everything that is not a send (adopting subscribers and sending them
//! their history, moving backlogs into rings, disconnecting laggards,
//! forgetting the dead) happens on the publisher's own thread, at its next
//! call: a send, [`Publisher::poll`], [`Publisher::flush`] or
//! [`Publisher::wait_for_subscribers`]. A publisher that sends nothing for
//! a while should call `poll` now and then (a late subscriber gets its
//! history then).

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isocall_blob::BlobHandle;
use rkyv::ser::allocator::Arena;
use rkyv::util::AlignedVec;

use crate::WaitStrategy;
use crate::endpoint::TransportError;
use crate::rpc::body::{self, Body, EncodeError};
use crate::rpc::wire::{self, CallHead, HANDLE, HEAD, MAX_BLOBS};
use crate::rpc::{Admission, Limits, Policy, Ticket, TypeSig};
use crate::segment::SegmentLayout;
use crate::sys::{SocketName, listen_seqpacket, unlink_socket};

use super::accept::{
    self, Arrival, Chooser, IdLease, MAX_SUBSCRIBERS, Setup, Shared, SubscriberInfo,
};
use super::conn::Conn;
use super::error::{CloseReason, PublishError, SendError};
use super::history::History;
use super::loan::Loan;
use super::policy::{Backlog, Backpressure};
use super::stats::{PubBlock, PubWord, PublisherStats, SubCounters, SubWord, SubscriberStats};
use super::{FLAG_HISTORY, MESSAGE};

/// Builds a [`Publisher`]: its name, who may subscribe, backpressure,
/// history, rings and limits.
pub struct PublisherBuilder<T> {
    socket: SocketName,
    channel: String,
    policy: Policy,
    backpressure: Backpressure,
    choose: Option<Chooser>,
    strategy: WaitStrategy,
    ring_capacity: usize,
    history: usize,
    send_timeout: Duration,
    linger: Duration,
    handshake_timeout: Duration,
    max_subscribers: usize,
    max_subscribers_per_uid: usize,
    max_handshakes: usize,
    max_handshakes_per_uid: usize,
    _t: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for PublisherBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherBuilder")
            .field("socket", &self.socket)
            .field("backpressure", &self.backpressure)
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

impl<T: Body> PublisherBuilder<T> {
    /// A publisher of `T` listening on `socket`, with the defaults:
    /// same-uid policy, [`Backpressure::Block`] for every subscriber with
    /// a 5 s send timeout, `Adaptive` waits, 1 MiB rings, no history, at
    /// most [`MAX_SUBSCRIBERS`] subscribers, 5 s handshakes, and a drop
    /// that lingers up to 1 s to deliver what is queued.
    pub fn new(socket: SocketName) -> Self {
        // Register for membarrier now, while the process most likely has
        // one thread (see `ServerBuilder::with_source`).
        crate::sys::heavy_barrier_available();
        let channel = match &socket {
            SocketName::Path(p) => p
                .file_name()
                .map_or("channel".into(), |n| n.to_string_lossy().into_owned()),
            SocketName::Abstract(n) => n.clone(),
            #[allow(unreachable_patterns)]
            other => other.to_string(),
        };
        PublisherBuilder {
            socket,
            channel,
            policy: Policy::default(),
            backpressure: Backpressure::Block,
            choose: None,
            strategy: WaitStrategy::Adaptive,
            ring_capacity: 1 << 20,
            history: 0,
            send_timeout: Duration::from_secs(5),
            linger: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            max_subscribers: MAX_SUBSCRIBERS,
            max_subscribers_per_uid: MAX_SUBSCRIBERS,
            max_handshakes: 16,
            max_handshakes_per_uid: 8,
            _t: PhantomData,
        }
    }

    /// Who may subscribe (checked right after `accept`, before anything
    /// is spent on the subscriber).
    #[must_use]
    pub fn policy(mut self, p: Policy) -> Self {
        self.policy = p;
        self
    }

    /// The backpressure policy of every subscriber (default
    /// [`Backpressure::Block`]).
    #[must_use]
    pub fn backpressure(mut self, b: Backpressure) -> Self {
        self.backpressure = b;
        self.choose = None;
        self
    }

    /// Chooses each subscriber's backpressure policy when it joins, from
    /// who it is (its credentials and the label it gave itself).
    #[must_use]
    pub fn backpressure_with(
        mut self,
        choose: impl Fn(&SubscriberInfo) -> Backpressure + Send + Sync + 'static,
    ) -> Self {
        self.choose = Some(Arc::new(choose));
        self
    }

    /// How the publisher waits for room in a [`Backpressure::Block`]
    /// subscriber's ring.
    #[must_use]
    pub fn wait_strategy(mut self, s: WaitStrategy) -> Self {
        self.strategy = s;
        self
    }

    /// The capacity of each subscriber's ring: a power of two from 4 KiB
    /// to 1 GiB (default 1 MiB). The largest message is a little less.
    #[must_use]
    pub fn ring_capacity(mut self, bytes: usize) -> Self {
        self.ring_capacity = bytes;
        self
    }

    /// Keeps the last `depth` messages, for subscribers that join late
    /// and ask for them (default 0: none; each kept message costs a copy
    /// at its send).
    #[must_use]
    pub fn history(mut self, depth: usize) -> Self {
        self.history = depth;
        self
    }

    /// How long [`Publisher::send`] waits for room in a blocking
    /// subscriber's ring (default 5 s).
    #[must_use]
    pub fn send_timeout(mut self, d: Duration) -> Self {
        self.send_timeout = d;
        self
    }

    /// How long dropping the publisher waits to deliver what is still
    /// queued for its subscribers (default 1 s).
    #[must_use]
    pub fn linger(mut self, d: Duration) -> Self {
        self.linger = d;
        self
    }

    /// How long a subscriber's handshake may take (default 5 s).
    #[must_use]
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// Most subscribers at once, in all and from one user id (each at
    /// most [`MAX_SUBSCRIBERS`]).
    #[must_use]
    pub fn max_subscribers(mut self, total: usize, per_uid: usize) -> Self {
        self.max_subscribers = total;
        self.max_subscribers_per_uid = per_uid;
        self
    }

    /// Most handshakes under way at once, in all and from one user id
    /// (default 16 and 8).
    #[must_use]
    pub fn max_handshakes(mut self, total: usize, per_uid: usize) -> Self {
        self.max_handshakes = total;
        self.max_handshakes_per_uid = per_uid;
        self
    }

    /// Listens, and starts the accept thread.
    ///
    /// # Errors
    ///
    /// [`PublishError::Listen`] if the name is taken;
    /// [`PublishError::BadLimit`] for a limit of 0 or above
    /// [`MAX_SUBSCRIBERS`]; [`PublishError::Layout`] for a ring capacity
    /// that is not a power of two from 4 KiB to 1 GiB;
    /// [`PublishError::Io`] if the OS refuses a thread or memory.
    pub fn create(self) -> Result<Publisher<T>, PublishError> {
        let bad = |what| Err(PublishError::BadLimit { what });
        if !(1..=MAX_SUBSCRIBERS).contains(&self.max_subscribers)
            || !(1..=MAX_SUBSCRIBERS).contains(&self.max_subscribers_per_uid)
        {
            return bad("subscribers: from 1 to 30, in all and per uid");
        }
        if self.max_handshakes == 0 || self.max_handshakes_per_uid == 0 {
            return bad("handshakes: at least 1, in all and per uid");
        }
        let cap = self.ring_capacity;
        if !(4096..=1 << 30).contains(&cap) || !cap.is_power_of_two() {
            return Err(crate::segment::SegmentError::BadCapacity { capacity: cap }.into());
        }
        let ty = TypeSig::of::<T>();
        let block = PubBlock::create(&self.channel, &ty.name, ty.fingerprint, self.history)?;
        let listener = listen_seqpacket(&self.socket).map_err(|source| PublishError::Listen {
            socket: self.socket.to_string(),
            source,
        })?;
        let limits = Limits {
            max_connections: self.max_subscribers,
            max_connections_per_uid: self.max_subscribers_per_uid,
            max_handshakes: self.max_handshakes,
            max_handshakes_per_uid: self.max_handshakes_per_uid,
            ..Limits::default()
        };
        let fixed = self.backpressure;
        let shared = Arc::new(Shared::new(Setup {
            channel: self.channel,
            socket: self.socket.clone(),
            policy: self.policy,
            choose: self.choose.unwrap_or_else(|| Arc::new(move |_| fixed)),
            ty,
            layout: SegmentLayout {
                ring_capacity: cap,
                ..SegmentLayout::default()
            },
            strategy: self.strategy,
            handshake_timeout: self.handshake_timeout,
            admission: Admission::new(&limits),
            block,
        })?);
        let accept = match accept::spawn(shared.clone(), listener) {
            Ok(t) => t,
            Err(e) => {
                unlink_socket(&self.socket);
                return Err(e.into());
            }
        };
        tracing::debug!(channel = %shared.channel, "publisher listening");
        Ok(Publisher {
            shared,
            accept: Some(accept),
            subs: Vec::new(),
            closing: Vec::new(),
            history: History::new(self.history),
            scratch: AlignedVec::new(),
            arena: Arena::new(),
            seq: 0,
            guess: 256,
            max_frame: isocall_ringbuf::max_payload(cap),
            send_timeout: self.send_timeout,
            linger: self.linger,
            totals: Totals::default(),
            _t: PhantomData,
        })
    }
}

/// One subscriber, as its publisher holds it. Fields drop in order: the
/// connection before the admission ticket and the id.
struct Sub {
    info: SubscriberInfo,
    conn: Conn,
    policy: Backpressure,
    backlog: Backlog,
    /// Since when its ring has been full with messages queued.
    full_since: Option<Instant>,
    counters: SubCounters,
    dropped: u64,
    full: u64,
    history: u64,
    /// What this send or poll decided to do with it (acted on by
    /// `settle`).
    fate: Option<Fate>,
    _ticket: Ticket,
    _lease: IdLease,
}

/// What becomes of a subscriber.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// It died or closed its end.
    Dead,
    /// The publisher closes it.
    Close(CloseReason),
}

impl Sub {
    fn from_arrival(a: Arrival) -> Sub {
        Sub {
            info: a.info,
            conn: a.conn,
            policy: a.policy,
            backlog: Backlog::default(),
            full_since: None,
            counters: a.counters,
            dropped: 0,
            full: 0,
            history: 0,
            fate: None,
            _ticket: a.ticket,
            _lease: a.lease,
        }
    }

    /// The fate a transport error decides.
    fn fail(&mut self, e: &TransportError) {
        let fate = match e {
            TransportError::PeerDied => Fate::Dead,
            _ => Fate::Close(CloseReason::ProtocolViolation),
        };
        if !matches!(e, TransportError::PeerDied) {
            tracing::debug!(id = self.info.id, error = %e, "subscriber's ring unusable; closing it");
        }
        self.fate.get_or_insert(fate);
    }

    /// Moves as much of the backlog into the ring as fits, without
    /// waiting.
    fn flush_backlog(&mut self) {
        let mut wrote = false;
        while let Some(f) = self.backlog.front() {
            match self.conn.tx.try_reserve(MESSAGE, f.len()) {
                Ok(mut g) => {
                    g.bytes_mut().copy_from_slice(f);
                    g.commit_all();
                    wrote = true;
                    if let Some(b) = self.backlog.pop() {
                        self.backlog.recycle(b);
                    }
                }
                Err(TransportError::Full) => break,
                Err(e) => {
                    self.fail(&e);
                    break;
                }
            }
        }
        if wrote {
            self.conn.tx.publish();
        }
        if self.backlog.is_empty() {
            self.full_since = None;
        }
    }

    /// Makes room for a frame of `len` bytes after the backlog, waiting
    /// until `until` (policy `Block`). `Err` names the subscriber if the
    /// deadline passed first; a dead or broken subscriber gets its fate
    /// and no error.
    fn make_room(&mut self, len: usize, until: &mut Until) -> Result<(), SendError> {
        loop {
            if self.fate.is_some() {
                return Ok(());
            }
            self.flush_backlog();
            let need = self.backlog.front().map_or(len, <[u8]>::len);
            let waited = match self.conn.tx.try_reserve(MESSAGE, need) {
                Ok(_) if self.backlog.is_empty() => return Ok(()),
                Ok(_) => continue,
                Err(TransportError::Full) => {
                    self.full += 1;
                    let at = until.get();
                    self.conn.tx.reserve(MESSAGE, need, Some(at)).map(drop)
                }
                Err(e) => Err(e),
            };
            match waited {
                Ok(()) => {}
                Err(TransportError::Timeout) => {
                    self.mirror();
                    return Err(SendError::Timeout {
                        subscriber: self.info.id,
                    });
                }
                Err(e) => self.fail(&e),
            }
        }
    }

    /// Gives it `payload` by its policy: into the ring if there is room
    /// after its backlog, else queued, dropped or disconnected.
    fn deliver(&mut self, payload: &[u8]) {
        if self.fate.is_some() {
            return;
        }
        if !self.backlog.is_empty() {
            self.flush_backlog();
        }
        if self.backlog.is_empty() {
            match self.conn.tx.try_reserve(MESSAGE, payload.len()) {
                Ok(mut g) => {
                    g.bytes_mut().copy_from_slice(payload);
                    g.commit_all();
                    self.conn.tx.publish();
                    self.full_since = None;
                    return;
                }
                Err(TransportError::Full) => {}
                Err(e) => return self.fail(&e),
            }
        }
        self.full += 1;
        match self.policy {
            // `make_room` made room; a blocking subscriber gets here only
            // if it somehow has none: queue, as its history is.
            Backpressure::Block => self.backlog.push(payload),
            Backpressure::DropOldest { backlog } => {
                self.backlog.push(payload);
                while self.backlog.len() > backlog {
                    if let Some(b) = self.backlog.pop() {
                        self.backlog.recycle(b);
                    }
                    self.dropped += 1;
                }
                self.full_since.get_or_insert_with(Instant::now);
            }
            Backpressure::Disconnect { after, backlog } => {
                let since = *self.full_since.get_or_insert_with(Instant::now);
                if self.backlog.len() >= backlog || since.elapsed() >= after {
                    self.fate = Some(Fate::Close(CloseReason::Lagging));
                } else {
                    self.backlog.push(payload);
                }
            }
        }
        self.mirror();
    }

    /// Closes it if its policy is `Disconnect` and its ring has been full
    /// too long.
    fn check_deadline(&mut self) {
        if let (Backpressure::Disconnect { after, .. }, Some(since)) =
            (self.policy, self.full_since)
            && since.elapsed() >= after
        {
            self.fate.get_or_insert(Fate::Close(CloseReason::Lagging));
        }
    }

    /// Copies the counters into its segment.
    fn mirror(&self) {
        self.counters.set(SubWord::Dropped, self.dropped);
        self.counters
            .set(SubWord::Queued, self.backlog.len() as u64);
        self.counters.set(SubWord::Full, self.full);
        self.counters.set(SubWord::History, self.history);
    }

    fn stats(&self) -> SubscriberStats {
        SubscriberStats {
            id: self.info.id,
            label: self.info.label.clone(),
            policy: Some(self.policy),
            sent: self.conn.tx.stats().frames,
            dropped: self.dropped,
            queued: self.backlog.len() as u64,
            full: self.full,
            history: self.history,
            closed: None,
        }
    }
}

/// A deadline computed only when a send first has to wait (reading the
/// clock for every message would cost more than the message).
pub(crate) struct Until {
    at: Option<Instant>,
    timeout: Duration,
}

impl Until {
    pub(crate) fn after(timeout: Duration) -> Until {
        Until { at: None, timeout }
    }

    pub(crate) fn at(deadline: Instant) -> Until {
        Until {
            at: Some(deadline),
            timeout: Duration::ZERO,
        }
    }

    fn get(&mut self) -> Instant {
        *self
            .at
            .get_or_insert_with(|| crate::deadline_in(self.timeout))
    }
}

/// The publisher's own totals (mirrored into its block).
#[derive(Debug, Default)]
struct Totals {
    joined: u64,
    left: u64,
    dropped: u64,
    disconnected: u64,
}

/// Publishes messages of type `T` to every subscriber of a channel.
///
/// ```
/// use std::time::Duration;
/// use isocall_engine::channel::{Publisher, Subscriber};
/// use isocall_engine::SocketName;
/// # #[derive(rkyv::Archive, rkyv::Serialize, isocall_schema::Schema)]
/// # #[schema(crate = "isocall_schema")]
/// # struct Tick { seq: u64 }
/// let name = SocketName::Abstract(format!("doc-channel-{}", std::process::id()));
/// let mut publisher = Publisher::<Tick>::create(name.clone()).unwrap();
/// let mut subscriber = Subscriber::<Tick>::connect(&name).unwrap();
/// assert_eq!(publisher.wait_for_subscribers(1, Duration::from_secs(5)), 1);
/// publisher.send(&Tick { seq: 7 }).unwrap();
/// let tick = subscriber.recv().unwrap(); // a guard over the validated archive
/// assert_eq!(tick.seq, 7);
/// ```
pub struct Publisher<T: Body> {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    subs: Vec<Sub>,
    /// Subscribers the publisher closed that have not let go yet: they
    /// keep their id (and their blob pool party) until then.
    closing: Vec<Sub>,
    history: History,
    /// A whole frame payload, staged: head, handles, body.
    pub(crate) scratch: AlignedVec<16>,
    arena: Arena,
    /// The next message's sequence number.
    seq: u64,
    /// Room to reserve for the next body in place: twice the largest body
    /// so far (a body that does not fit is written again with all the
    /// room a frame has).
    guess: usize,
    max_frame: usize,
    send_timeout: Duration,
    linger: Duration,
    totals: Totals,
    _t: PhantomData<fn(&T)>,
}

impl<T: Body> std::fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("socket", &self.shared.socket)
            .field("subscribers", &self.subs.len())
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// Writes a message frame into `buf`: head, handles, body; returns its
/// length.
#[inline]
fn encode_frame<T: Body>(
    buf: &mut [u8],
    msg: &T,
    seq: u64,
    blobs: &[BlobHandle],
    arena: &mut Arena,
) -> Result<usize, EncodeError> {
    let body_at = HEAD + blobs.len() * HANDLE;
    let room = buf.len();
    let out = buf
        .get_mut(body_at..)
        .ok_or(EncodeError { room, source: None })?;
    let n = body::encode(msg, out, arena)?;
    let head = CallHead {
        id: seq,
        method: 0,
        status: 0,
        nblobs: blobs.len() as u32,
        body_len: n as u32,
        _reserved: 0,
    };
    wire::write_head(buf, &head, blobs);
    Ok(body_at + n)
}

/// Marks a frame payload as a history message (its head's status word).
fn mark_history(payload: &mut [u8]) {
    if let Some(w) = payload.get_mut(12..16) {
        w.copy_from_slice(&FLAG_HISTORY.to_le_bytes());
    }
}

impl<T: Body> Publisher<T> {
    /// A publisher of `T` on `socket` with the defaults (see
    /// [`PublisherBuilder::new`]).
    ///
    /// # Errors
    ///
    /// As [`PublisherBuilder::create`].
    pub fn create(socket: SocketName) -> Result<Publisher<T>, PublishError> {
        PublisherBuilder::new(socket).create()
    }

    /// A builder for a publisher on `socket`.
    pub fn builder(socket: SocketName) -> PublisherBuilder<T> {
        PublisherBuilder::new(socket)
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &SocketName {
        &self.shared.socket
    }

    /// Sends `msg` to every subscriber, waiting for a blocking subscriber
    /// up to the publisher's send timeout.
    ///
    /// The message is serialized in place (into the ring of a sole
    /// subscriber that has room) or once into a staging buffer, then
    /// copied into each subscriber's ring. Delivery follows each
    /// subscriber's [`Backpressure`]; with no subscriber the message goes
    /// only into the history, if one is kept.
    ///
    /// # Errors
    ///
    /// [`SendError::Timeout`] if a [`Backpressure::Block`] subscriber had
    /// no room before the deadline, [`SendError::TooLarge`] for a message
    /// that does not fit a frame; in both cases no subscriber got it.
    #[inline]
    pub fn send(&mut self, msg: &T) -> Result<(), SendError> {
        let until = Until::after(self.send_timeout);
        self.send_inner(msg, until)
    }

    /// [`send`](Self::send), waiting for blocking subscribers until
    /// `deadline` at most.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn send_deadline(&mut self, msg: &T, deadline: Instant) -> Result<(), SendError> {
        self.send_inner(msg, Until::at(deadline))
    }

    /// [`send`](Self::send) without waiting: a blocking subscriber without
    /// room fails it at once.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn try_send(&mut self, msg: &T) -> Result<(), SendError> {
        self.send_inner(msg, Until::at(Instant::now()))
    }

    #[inline]
    fn send_inner(&mut self, msg: &T, mut until: Until) -> Result<(), SendError> {
        if self.shared.arrived.load(Ordering::Relaxed) {
            self.adopt();
        }
        if self.subs.len() == 1
            && !self.history.is_on()
            && let Some(r) = self.send_in_place(msg)
        {
            return r;
        }
        let n = self.stage(msg, &[])?;
        self.send_staged(n, &mut until)
    }

    /// The fast path: one subscriber, with room and no backlog; the
    /// message is serialized straight into its ring. `None` sends the
    /// message the general way.
    #[inline]
    fn send_in_place(&mut self, msg: &T) -> Option<Result<(), SendError>> {
        let sub = &mut self.subs[0];
        if !sub.backlog.is_empty() {
            return None;
        }
        let max = self.max_frame;
        let mut room = (HEAD + self.guess).min(max);
        loop {
            // Full, dead or broken: the general path sorts it out.
            let mut g = sub.conn.tx.try_reserve(MESSAGE, room).ok()?;
            match encode_frame(g.bytes_mut(), msg, self.seq, &[], &mut self.arena) {
                Ok(n) => {
                    g.commit(n);
                    sub.conn.tx.publish();
                    self.sent(n - HEAD);
                    return Some(Ok(()));
                }
                // Dropping the grant publishes nothing.
                Err(_) if room < max => room = max,
                Err(e) => return Some(Err(SendError::TooLarge(e))),
            }
        }
    }

    /// Counts a message sent whose body was `body` bytes.
    #[inline]
    fn sent(&mut self, body: usize) {
        self.seq += 1;
        if body * 2 > self.guess {
            self.guess = body * 2;
        }
        if self.seq.is_multiple_of(256) {
            self.shared.block.set(PubWord::Sent, self.seq);
        }
    }

    /// Serializes `msg` with `blobs` into the staging buffer; returns the
    /// frame's length.
    pub(crate) fn stage(&mut self, msg: &T, blobs: &[BlobHandle]) -> Result<usize, SendError> {
        if blobs.len() > MAX_BLOBS {
            return Err(SendError::TooManyBlobs {
                count: blobs.len(),
                max: MAX_BLOBS,
            });
        }
        let max = self.max_frame;
        let mut room = (HEAD + blobs.len() * HANDLE + self.guess).min(max);
        loop {
            if self.scratch.len() < room {
                self.scratch.resize(room, 0);
            }
            match encode_frame(
                &mut self.scratch[..room],
                msg,
                self.seq,
                blobs,
                &mut self.arena,
            ) {
                Ok(n) => return Ok(n),
                Err(_) if room < max => room = max,
                Err(e) => return Err(SendError::TooLarge(e)),
            }
        }
    }

    /// Sends the `n`-byte frame staged in the scratch buffer: room in
    /// every blocking subscriber first (or nothing is sent), then each
    /// subscriber by its policy, then the history.
    pub(crate) fn send_staged(&mut self, n: usize, until: &mut Until) -> Result<(), SendError> {
        self.notice_dead();
        for sub in self.subs.iter_mut().filter(|s| s.policy.blocks()) {
            if let Err(e) = sub.make_room(n, until) {
                self.settle();
                return Err(e);
            }
        }
        let payload = &self.scratch[..n];
        for sub in &mut self.subs {
            sub.deliver(payload);
        }
        self.history.push(payload, |_| {});
        let body = n - HEAD;
        self.sent(body);
        self.settle();
        Ok(())
    }

    /// Adopts the subscribers the accept thread handshook: each gets the
    /// history it asked for (as much as is kept), before any new message.
    fn adopt(&mut self) {
        let arrivals = self.shared.take_arrivals();
        if arrivals.is_empty() {
            return;
        }
        for a in arrivals {
            let want = a.history as usize;
            let mut sub = Sub::from_arrival(a);
            for f in self.history.last(want) {
                sub.backlog.push_then(f, mark_history);
                sub.history += 1;
            }
            sub.flush_backlog();
            sub.mirror();
            self.totals.joined += 1;
            self.subs.push(sub);
        }
        self.mirror_totals();
    }

    /// Marks the subscribers whose death the watch learnt.
    fn notice_dead(&mut self) {
        for s in &mut self.subs {
            if s.conn.liveness.is_dead() {
                s.fate.get_or_insert(Fate::Dead);
            }
        }
    }

    /// Acts on the fates decided: forgets the dead, closes the others
    /// (they keep their id until they let go); forgets closed ones that
    /// let go.
    fn settle(&mut self) {
        let mut i = 0;
        let mut changed = false;
        while i < self.subs.len() {
            let Some(fate) = self.subs[i].fate.take() else {
                i += 1;
                continue;
            };
            changed = true;
            let mut s = self.subs.swap_remove(i);
            self.totals.left += 1;
            self.totals.dropped += s.dropped;
            match fate {
                Fate::Dead => {
                    tracing::debug!(id = s.info.id, "subscriber left");
                    drop(s);
                }
                Fate::Close(reason) => {
                    tracing::debug!(id = s.info.id, %reason, "subscriber closed");
                    self.totals.disconnected += 1;
                    s.counters.set_closed(reason);
                    s.backlog.clear();
                    s.mirror();
                    s.conn.let_go();
                    self.closing.push(s);
                }
            }
        }
        let before = self.closing.len();
        self.closing.retain(|s| !s.conn.peer_left());
        if changed || before != self.closing.len() {
            self.mirror_totals();
        }
    }

    fn mirror_totals(&self) {
        let b = &self.shared.block;
        b.set(PubWord::Subscribers, self.subs.len() as u64);
        b.set(PubWord::Joined, self.totals.joined);
        b.set(PubWord::Left, self.totals.left);
        b.set(
            PubWord::Dropped,
            self.totals.dropped + self.subs.iter().map(|s| s.dropped).sum::<u64>(),
        );
        b.set(PubWord::Disconnected, self.totals.disconnected);
        b.set(PubWord::Sent, self.seq);
        b.set(PubWord::HistoryHeld, self.history.len() as u64);
    }

    /// Does what a publisher does between sends: adopts new subscribers
    /// (sending them their history), moves backlogs into rings that have
    /// room, disconnects subscribers stuck past their deadline, forgets
    /// those that left. Never waits. Returns the messages still queued
    /// outside the rings.
    pub fn poll(&mut self) -> usize {
        self.adopt();
        self.notice_dead();
        for s in &mut self.subs {
            if !s.backlog.is_empty() {
                s.flush_backlog();
                s.mirror();
            }
            s.check_deadline();
        }
        self.settle();
        self.mirror_totals();
        self.queued()
    }

    /// Messages queued outside the rings now, over every subscriber.
    pub fn queued(&self) -> usize {
        self.subs.iter().map(|s| s.backlog.len()).sum()
    }

    /// Delivers what is queued for the subscribers, waiting for room up to
    /// `timeout` (subscribers closed meanwhile by their policy count as
    /// delivered).
    ///
    /// # Errors
    ///
    /// [`SendError::Timeout`] naming a subscriber that still had messages
    /// queued at the deadline.
    pub fn flush(&mut self, timeout: Duration) -> Result<(), SendError> {
        let deadline = crate::deadline_in(timeout);
        loop {
            if self.poll() == 0 {
                return Ok(());
            }
            let Some(s) = self.subs.iter_mut().find(|s| !s.backlog.is_empty()) else {
                return Ok(());
            };
            let need = s.backlog.front().map_or(0, <[u8]>::len);
            // Wait at most until the next deadline check of a
            // `Disconnect` subscriber is due.
            let slice = deadline.min(Instant::now() + Duration::from_millis(10));
            match s.conn.tx.reserve(MESSAGE, need, Some(slice)) {
                Ok(_) => {}
                Err(TransportError::Timeout) if Instant::now() >= deadline => {
                    return Err(SendError::Timeout {
                        subscriber: s.info.id,
                    });
                }
                Err(TransportError::Timeout) => {}
                Err(e) => s.fail(&e),
            }
        }
    }

    /// Waits until at least `n` subscribers are connected, or `timeout`
    /// passes; returns how many are connected.
    pub fn wait_for_subscribers(&mut self, n: usize, timeout: Duration) -> usize {
        let deadline = crate::deadline_in(timeout);
        loop {
            self.poll();
            let now = Instant::now();
            if self.subs.len() >= n || now >= deadline {
                return self.subs.len();
            }
            let _ = self.shared.bell.wait(Some(deadline - now));
        }
    }

    /// Subscribers connected now (the ones adopted so far).
    pub fn subscribers(&self) -> usize {
        self.subs.len()
    }

    /// Sets the backpressure policy of subscriber `id`; false if there is
    /// no such subscriber.
    pub fn set_backpressure(&mut self, id: u32, policy: Backpressure) -> bool {
        match self.subs.iter_mut().find(|s| s.info.id == id) {
            Some(s) => {
                s.policy = policy;
                s.counters.set_policy(policy);
                true
            }
            None => false,
        }
    }

    /// The counters of each subscriber connected now.
    pub fn subscriber_stats(&self) -> Vec<SubscriberStats> {
        self.subs.iter().map(Sub::stats).collect()
    }

    /// The publisher's totals.
    pub fn stats(&self) -> PublisherStats {
        self.mirror_totals();
        self.shared.block.snapshot()
    }

    /// The next message's sequence number: messages sent so far.
    pub fn sequence(&self) -> u64 {
        self.seq
    }

    /// Serializes `init` into the publisher's staging slot and lends it,
    /// to be changed in place ([`Loan::get_mut`]) and sent
    /// ([`Loan::send`]); dropping the loan sends nothing.
    ///
    /// # Errors
    ///
    /// [`SendError::TooLarge`] if `init` does not fit a frame.
    pub fn loan(&mut self, init: &T) -> Result<Loan<'_, T>, SendError> {
        if self.shared.arrived.load(Ordering::Relaxed) {
            self.adopt();
        }
        let n = self.stage(init, &[])?;
        Ok(Loan::new(self, n))
    }

    /// The send timeout, as a lazily computed deadline.
    pub(crate) fn until(&self) -> Until {
        Until::after(self.send_timeout)
    }
}

impl<T: Body> Drop for Publisher<T> {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        let _ = self.shared.stop.notify();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        // Subscribers that finished their handshake are closed like the
        // others.
        self.adopt();
        let _ = self.flush(self.linger);
        for s in self.subs.drain(..) {
            // The reason first (Release), then the lifeline and the
            // socket: a subscriber that finds the connection over reads
            // it.
            s.counters.set_closed(CloseReason::PublisherClosed);
            drop(s);
        }
        self.closing.clear();
        self.mirror_totals();
        unlink_socket(&self.shared.socket);
        tracing::debug!(channel = %self.shared.channel, "publisher closed");
    }
}
