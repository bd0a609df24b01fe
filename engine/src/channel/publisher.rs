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
//! A message's blobs ([`Publisher::loan_blob`]) are written once into the
//! channel's pool and shared, in one compare-and-swap per blob, with every
//! subscriber whose ring takes the message: each gets the same handle, and
//! the slot is free once the last of them drops it. Nothing is copied,
//! whatever the blob's size. (A subscriber whose ring is full gets the
//! message queued, and copies of its blobs when it is delivered: see
//! the `kept` module.)
//!
//! A send is all or nothing: it first makes sure that every subscriber
//! whose policy is [`Backpressure::Block`] has room (waiting up to the
//! send's deadline), and only then writes. Subscribers of the other
//! policies never make it wait (see the `policy` module).
//!
//! Everything that is not a send (adopting subscribers and sending them
//! their history, moving backlogs into rings, disconnecting laggards,
//! forgetting the dead) happens on the publisher's own thread, at its next
//! call: a send, [`Publisher::poll`], [`Publisher::flush`] or
//! [`Publisher::wait_for_subscribers`]. A publisher that sends nothing for
//! a while should call `poll` now and then (a late subscriber gets its
//! history then).
//!
//! Stream subscribers (see [`PublisherBuilder::listen`]) get the same
//! frame, copied into their connection's send buffer (the ring capacity
//! in bytes) with their blobs' bytes inline; a full buffer is a full ring
//! to their policy, and a backlog holds whole messages. What the socket
//! does not take at once is sent by the publisher's pump thread, so it
//! reaches the subscriber while the publisher is quiet; a stream
//! subscriber's hang-up or garbage is noticed at `poll` (or a failed
//! send), and it is closed with its reason in a last frame.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isocall_blob::{BlobHandle, BlobMut, Member, Parties, Pool, SharedHandle};
use isocall_ringbuf::SharedRegion;
use rkyv::ser::allocator::Arena;
use rkyv::util::AlignedVec;

use crate::endpoint::TransportError;
use crate::rpc::body::{self, Body, EncodeError};
use crate::rpc::wire::{self, CallHead, HANDLE, HEAD, MAX_BLOBS};
use crate::sys::{PidFd, SocketName, unlink_socket};

use super::accept::Shared;
use super::builder::PublisherBuilder;
use super::error::{CloseReason, PublishError, SendError};
use super::history::History;
use super::kept::Kept;
use super::loan::{BlobLoan, Loan};
use super::outlet::{Fate, Outlet, release_frame};
use super::policy::Backpressure;
use super::remote::outlet::StreamOutlet;
use super::remote::pump::Pump;
use super::remote::{Msg, Queued};
use super::stats::{PubWord, PublisherStats, SubscriberStats};
use super::{FLAG_HISTORY, MESSAGE};

/// Times a send retries a full ring before it waits with a deadline.
const FULL_TRIES: u32 = 64;

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

    pub(crate) fn get(&mut self) -> Instant {
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
    /// The channel's blob pool (the publisher's party 0), if it has one;
    /// a loan's blobs borrow it while the loan borrows `core`.
    pool: Option<Arc<Pool<SharedRegion>>>,
    core: Core<T>,
}

/// Everything of a publisher but its pool.
pub(crate) struct Core<T: Body> {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    /// The stream listener's thread, if the publisher listens on stream
    /// addresses.
    stream_accept: Option<JoinHandle<()>>,
    /// The stream addresses listened on (TCP ports as bound).
    addresses: Vec<crate::rpc::Endpoint>,
    subs: Vec<Outlet>,
    /// Subscribers over a stream socket.
    streams: Vec<StreamOutlet>,
    /// Sends what stream sockets did not take, and closes closed stream
    /// subscribers (with a stream listener only). Dropped after the
    /// subscribers.
    pump: Option<Pump>,
    /// Subscribers the publisher closed that have not let go yet: they
    /// keep their id (and their blob pool party) until then.
    closing: Vec<Outlet>,
    /// Subscribers that closed their end while their process lives: what
    /// they still hold in the pool is reclaimed once it exits.
    departed: Vec<(Member, Option<PidFd>)>,
    history: History,
    /// The references the publisher keeps to blobs that queued or kept
    /// frames name (`None` without a pool).
    kept: Option<Kept>,
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
            .field("socket", &self.core.shared.socket)
            .field("subscribers", &self.core.count())
            .field("seq", &self.core.seq)
            .finish_non_exhaustive()
    }
}

/// Writes a message frame into `buf`: head, room for `nblobs` handles,
/// body; returns its length.
#[inline]
fn encode_frame<T: Body>(
    buf: &mut [u8],
    msg: &T,
    seq: u64,
    nblobs: usize,
    arena: &mut Arena,
) -> Result<usize, EncodeError> {
    let body_at = HEAD + nblobs * HANDLE;
    let room = buf.len();
    let out = buf
        .get_mut(body_at..)
        .ok_or(EncodeError { room, source: None })?;
    let n = body::encode(msg, out, arena)?;
    let head = CallHead {
        id: seq,
        method: 0,
        status: 0,
        nblobs: nblobs as u32,
        body_len: n as u32,
        _reserved: 0,
    };
    wire::write_head(buf, &head, &[]);
    Ok(body_at + n)
}

/// A history frame as a stream subscriber gets it: the payload marked as
/// history, with its blobs' bytes (read from the kept blobs it names);
/// `None` if a blob is no longer there.
fn stream_message(f: &[u8], kept: Option<&Kept>) -> Option<Queued> {
    let mut payload = f.to_vec();
    mark_history(&mut payload);
    let mut blobs = Vec::new();
    for h in super::outlet::frame_handles(f) {
        blobs.push(kept?.bytes(&h)?.to_vec());
    }
    Some(Arc::new(Msg { payload, blobs }))
}

/// Marks a frame payload as a history message (its head's status word).
fn mark_history(payload: &mut [u8]) {
    if let Some(w) = payload.get_mut(12..16) {
        w.copy_from_slice(&FLAG_HISTORY.to_le_bytes());
    }
}

impl<T: Body> Publisher<T> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        accept: JoinHandle<()>,
        stream: Option<(JoinHandle<()>, Vec<crate::rpc::Endpoint>, Pump)>,
        pool: Option<Arc<Pool<SharedRegion>>>,
        history: usize,
        ring_capacity: usize,
        send_timeout: Duration,
        linger: Duration,
    ) -> Publisher<T> {
        let (stream_accept, addresses, pump) = match stream {
            Some((t, a, p)) => (Some(t), a, Some(p)),
            None => (None, Vec::new(), None),
        };
        Publisher {
            core: Core {
                shared,
                accept: Some(accept),
                stream_accept,
                addresses,
                subs: Vec::new(),
                streams: Vec::new(),
                pump,
                closing: Vec::new(),
                departed: Vec::new(),
                history: History::new(history),
                kept: pool.clone().map(Kept::new),
                scratch: AlignedVec::new(),
                arena: Arena::new(),
                seq: 0,
                guess: 256,
                max_frame: isocall_ringbuf::max_payload(ring_capacity),
                send_timeout,
                linger,
                totals: Totals::default(),
                _t: PhantomData,
            },
            pool,
        }
    }

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
        &self.core.shared.socket
    }

    /// The stream addresses it listens on too (see
    /// [`PublisherBuilder::listen`]), TCP ports as bound: what a
    /// [`Subscriber`](super::Subscriber) connects to over a socket.
    pub fn addresses(&self) -> &[crate::rpc::Endpoint] {
        &self.core.addresses
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
        let until = Until::after(self.core.send_timeout);
        self.core.send(msg, until)
    }

    /// [`send`](Self::send), waiting for blocking subscribers until
    /// `deadline` at most.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn send_deadline(&mut self, msg: &T, deadline: Instant) -> Result<(), SendError> {
        self.core.send(msg, Until::at(deadline))
    }

    /// [`send`](Self::send) without waiting: a blocking subscriber without
    /// room fails it at once.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn try_send(&mut self, msg: &T) -> Result<(), SendError> {
        self.core.send(msg, Until::at(Instant::now()))
    }

    /// Serializes `init` into the publisher's staging slot and lends it,
    /// to be changed in place ([`Loan::get_mut`]) and sent
    /// ([`Loan::send`]); dropping the loan sends nothing.
    ///
    /// # Errors
    ///
    /// [`SendError::TooLarge`] if `init` does not fit a frame.
    pub fn loan(&mut self, init: &T) -> Result<Loan<'_, T>, SendError> {
        self.core.adopt_if_arrived();
        let n = self.core.stage(init, 0)?;
        Ok(Loan::new(&mut self.core, n))
    }

    /// Allocates a blob of `len` bytes in the channel's pool and lends it,
    /// to be filled in place and sent with a message
    /// ([`BlobLoan::send`]), written once and shared with every
    /// subscriber; dropping the loan frees it. More blobs can join the
    /// same message ([`BlobLoan::add_blob`]).
    ///
    /// # Errors
    ///
    /// [`SendError::NoPool`] if the channel has no blob pool,
    /// [`SendError::Blob`] if it has no free slot that large.
    pub fn loan_blob(&mut self, len: usize) -> Result<BlobLoan<'_, T>, SendError> {
        let Publisher { pool, core } = self;
        let pool = pool.as_deref().ok_or(SendError::NoPool)?;
        core.adopt_if_arrived();
        let blob = pool.alloc(len)?;
        Ok(BlobLoan::new(core, pool, blob))
    }

    /// The channel's blob pool (the publisher's view, party 0), if it has
    /// one.
    pub fn pool(&self) -> Option<&Arc<Pool<SharedRegion>>> {
        self.pool.as_ref()
    }

    /// Does what a publisher does between sends: adopts new subscribers
    /// (sending them their history), moves backlogs into rings that have
    /// room, disconnects subscribers stuck past their deadline, forgets
    /// those that left. Never waits. Returns the messages still queued
    /// outside the rings.
    pub fn poll(&mut self) -> usize {
        self.core.poll()
    }

    /// Messages queued outside the rings (and stream send buffers) now,
    /// over every subscriber.
    pub fn queued(&self) -> usize {
        self.core.queued()
    }

    /// Delivers what is queued for the subscribers, waiting for room up to
    /// `timeout` (subscribers closed meanwhile by their policy count as
    /// delivered). A stream subscriber's messages are delivered once its
    /// socket has taken them all.
    ///
    /// # Errors
    ///
    /// [`SendError::Timeout`] naming a subscriber that still had messages
    /// queued at the deadline.
    pub fn flush(&mut self, timeout: Duration) -> Result<(), SendError> {
        self.core.flush(timeout)
    }

    /// Waits until at least `n` subscribers are connected, or `timeout`
    /// passes; returns how many are connected.
    pub fn wait_for_subscribers(&mut self, n: usize, timeout: Duration) -> usize {
        let deadline = crate::deadline_in(timeout);
        loop {
            self.core.poll();
            let now = Instant::now();
            if self.core.count() >= n || now >= deadline {
                return self.core.count();
            }
            let _ = self.core.shared.bell.wait(Some(deadline - now));
        }
    }

    /// Subscribers connected now (the ones adopted so far), over shared
    /// memory and stream sockets.
    pub fn subscribers(&self) -> usize {
        self.core.count()
    }

    /// Sets the backpressure policy of subscriber `id`; false if there is
    /// no such subscriber.
    pub fn set_backpressure(&mut self, id: u32, policy: Backpressure) -> bool {
        if let Some(s) = self.core.subs.iter_mut().find(|s| s.info.id == id) {
            s.set_policy(policy);
            return true;
        }
        match self.core.streams.iter_mut().find(|s| s.info.id == id) {
            Some(s) => {
                s.set_policy(policy);
                true
            }
            None => false,
        }
    }

    /// The counters of each subscriber connected now. A shared-memory
    /// subscriber's are mirrored in its segment too (for `isocall
    /// inspect`); a stream subscriber's live only in this process.
    pub fn subscriber_stats(&self) -> Vec<SubscriberStats> {
        let shm = self.core.subs.iter().map(Outlet::stats);
        shm.chain(self.core.streams.iter().map(StreamOutlet::stats))
            .collect()
    }

    /// The publisher's totals.
    pub fn stats(&self) -> PublisherStats {
        self.core.mirror_totals();
        self.core.shared.block.snapshot()
    }

    /// The next message's sequence number: messages sent so far.
    pub fn sequence(&self) -> u64 {
        self.core.seq
    }
}

impl<T: Body> Core<T> {
    /// Subscribers connected, over either transport.
    fn count(&self) -> usize {
        self.subs.len() + self.streams.len()
    }

    /// Messages queued outside the rings and send buffers.
    fn queued(&self) -> usize {
        self.subs.iter().map(|s| s.backlog.len()).sum::<usize>()
            + self.streams.iter().map(|s| s.queue.len()).sum::<usize>()
    }

    #[inline]
    pub(crate) fn adopt_if_arrived(&mut self) {
        if self.shared.arrived.load(Ordering::Relaxed) {
            self.adopt();
        }
    }

    #[inline]
    fn send(&mut self, msg: &T, mut until: Until) -> Result<(), SendError> {
        self.adopt_if_arrived();
        if self.subs.len() == 1
            && self.streams.is_empty()
            && !self.history.is_on()
            && let Some(r) = self.send_in_place(msg, &mut until)
        {
            return r;
        }
        let n = self.stage(msg, 0)?;
        self.send_staged(n, &mut until, Vec::new())
    }

    /// The fast path: one subscriber, with no backlog, and room in its
    /// ring (or a policy that waits for room, as
    /// [`Outlet::make_room`] would); the message is serialized straight
    /// into its ring. `None` sends the message the general way.
    #[inline]
    fn send_in_place(&mut self, msg: &T, until: &mut Until) -> Option<Result<(), SendError>> {
        let sub = &mut self.subs[0];
        if !sub.backlog.is_empty() || sub.fate.is_some() {
            return None;
        }
        let max = self.max_frame;
        let mut room = (HEAD + self.guess).min(max);
        loop {
            let mut g = match sub.conn.tx.try_reserve(MESSAGE, room) {
                Ok(g) => g,
                // A stream outruns its subscriber: wait for room here
                // rather than stage the message to wait in `make_room`;
                // a few tries first, since room comes back in batches
                // and the deadline costs a clock read.
                Err(TransportError::Full) if sub.policy.blocks() => {
                    sub.full += 1;
                    let mut tries = 0;
                    let quick = loop {
                        if tries == FULL_TRIES {
                            break None;
                        }
                        tries += 1;
                        std::hint::spin_loop();
                        match sub.conn.tx.try_reserve(MESSAGE, room) {
                            Err(TransportError::Full) => {}
                            other => break Some(other),
                        }
                    };
                    let got = match quick {
                        Some(got) => got,
                        None => sub.conn.tx.reserve(MESSAGE, room, Some(until.get())),
                    };
                    match got {
                        Ok(g) => g,
                        Err(TransportError::Timeout) => {
                            sub.mirror();
                            return Some(Err(SendError::Timeout {
                                subscriber: sub.info.id,
                            }));
                        }
                        // Dead or broken: the general path sorts it out.
                        Err(_) => return None,
                    }
                }
                Err(_) => return None,
            };
            match encode_frame(g.bytes_mut(), msg, self.seq, 0, &mut self.arena) {
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

    /// Serializes `msg` into the staging buffer, after room for `nblobs`
    /// handles; returns the frame's length.
    pub(crate) fn stage(&mut self, msg: &T, nblobs: usize) -> Result<usize, SendError> {
        if nblobs > MAX_BLOBS {
            return Err(SendError::TooManyBlobs {
                count: nblobs,
                max: MAX_BLOBS,
            });
        }
        let max = self.max_frame;
        let mut room = (HEAD + nblobs * HANDLE + self.guess).min(max);
        loop {
            if self.scratch.len() < room {
                self.scratch.resize(room, 0);
            }
            match encode_frame(
                &mut self.scratch[..room],
                msg,
                self.seq,
                nblobs,
                &mut self.arena,
            ) {
                Ok(n) => return Ok(n),
                Err(_) if room < max => room = max,
                Err(e) => return Err(SendError::TooLarge(e)),
            }
        }
    }

    /// Sends the `n`-byte frame staged in the scratch buffer with `blobs`
    /// (whose handles it has room for): room in every blocking subscriber
    /// first (or nothing is sent, and the blobs are freed), then the
    /// blobs shared with every subscriber whose ring takes the frame now,
    /// then each subscriber by its policy, then the history.
    pub(crate) fn send_staged(
        &mut self,
        n: usize,
        until: &mut Until,
        blobs: Vec<BlobMut<'_, SharedRegion>>,
    ) -> Result<(), SendError> {
        self.notice_dead();
        let kept = &mut self.kept;
        for sub in self.subs.iter_mut().filter(|s| s.policy.blocks()) {
            if let Err(e) = sub.make_room(n, until, kept) {
                self.settle();
                return Err(e);
            }
        }
        for sub in self.streams.iter_mut().filter(|s| s.policy.blocks()) {
            if let Err(e) = sub.make_room(n, until) {
                self.settle();
                return Err(e);
            }
        }
        // Stream subscribers get the blobs' bytes (copied inline), taken
        // before the blobs are shared.
        let stream_blobs: Vec<Vec<u8>> = if self.streams.is_empty() {
            Vec::new()
        } else {
            blobs.iter().map(|b| b.to_vec()).collect()
        };
        if !blobs.is_empty() {
            self.share_blobs(n, blobs)?;
        }
        let payload = &self.scratch[..n];
        let with_blobs = payload.get(16..20) != Some(&[0u8; 4][..]);
        for sub in &mut self.subs {
            if with_blobs && sub.takes {
                sub.write(payload);
            } else {
                sub.deliver(payload, &mut self.kept);
            }
        }
        if !self.streams.is_empty() {
            let m: Queued = Arc::new(Msg {
                payload: payload.to_vec(),
                blobs: stream_blobs,
            });
            let check = self.seq.is_multiple_of(256);
            for sub in &mut self.streams {
                sub.deliver(&m);
                if check {
                    sub.check_peer();
                }
            }
        }
        if self.history.is_on() {
            if let Some(k) = &mut self.kept {
                for h in super::outlet::frame_handles(payload) {
                    k.add_use(&h);
                }
            }
            let kept = &mut self.kept;
            self.history.push(payload, |old| release_frame(kept, old));
        }
        if with_blobs {
            // The send's own use of the kept blobs ends.
            release_frame(&mut self.kept, &self.scratch[..n]);
        }
        self.sent(n - HEAD);
        self.settle();
        Ok(())
    }

    /// Shares the message's blobs with every subscriber whose ring takes
    /// the `n`-byte staged frame now (keeping a reference for the
    /// publisher if a backlog or the history will name them), and writes
    /// their handles into the frame.
    fn share_blobs(
        &mut self,
        n: usize,
        blobs: Vec<BlobMut<'_, SharedRegion>>,
    ) -> Result<(), SendError> {
        let mut takers = Parties::EMPTY;
        let mut queued = false;
        for sub in &mut self.subs {
            if sub.fate.is_some() {
                sub.takes = false;
                continue;
            }
            if !sub.backlog.is_empty() {
                sub.flush_backlog(&mut self.kept);
            }
            sub.takes = sub.has_room(n);
            if sub.takes {
                takers = takers.with(sub.party);
            } else if sub.fate.is_none() {
                queued = true;
            }
        }
        let keep = queued || self.history.is_on();
        for (i, b) in blobs.into_iter().enumerate() {
            let h: SharedHandle = match (&mut self.kept, keep) {
                (Some(k), true) => {
                    let (mine, h) = b.share_keep(takers)?;
                    // SAFETY: `b` came from the publisher's pool (a loan of
                    // `Publisher::pool`), a clone of the `Arc` the store
                    // holds.
                    #[allow(unsafe_code)]
                    unsafe {
                        k.keep(mine, 1)
                    };
                    h
                }
                _ if takers.is_empty() => {
                    // No one takes it and no one will: the blob is freed,
                    // and the frame names nothing.
                    drop(b);
                    SharedHandle::default()
                }
                _ => b.share(takers)?,
            };
            let at = HEAD + i * HANDLE;
            let bh = BlobHandle::from_bytes(&h.to_bytes()).expect("16 bytes");
            self.scratch[at..at + HANDLE].copy_from_slice(&bh.to_bytes());
        }
        Ok(())
    }

    /// Adopts the subscribers the accept thread handshook: each gets the
    /// history it asked for (as much as is kept), before any new message.
    fn adopt(&mut self) {
        let (arrivals, streams) = self.shared.take_arrivals();
        if arrivals.is_empty() && streams.is_empty() {
            return;
        }
        for a in streams {
            let want = a.history as usize;
            let Some(pump) = &self.pump else {
                continue;
            };
            let mut sub = StreamOutlet::from_arrival(a, pump.kick());
            for f in self.history.last(want) {
                match stream_message(f, self.kept.as_ref()) {
                    Some(m) => sub.queue_history(m),
                    None => sub.dropped += 1,
                }
            }
            sub.flush_queue();
            self.totals.joined += 1;
            self.streams.push(sub);
        }
        for a in arrivals {
            let want = a.history as usize;
            let mut sub = Outlet::from_arrival(a);
            // An id given again: the record of its last holder is moot.
            self.departed.retain(|(m, _)| m.party() != sub.party);
            for f in self.history.last(want) {
                sub.backlog.push_then(f, mark_history);
                if let Some(k) = &mut self.kept {
                    for h in super::outlet::frame_handles(f) {
                        k.add_use(&h);
                    }
                }
                sub.history += 1;
            }
            sub.flush_backlog(&mut self.kept);
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
    /// let go, and reclaims what departed ones held once they exit.
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
            s.clear_backlog(&mut self.kept);
            match fate {
                Fate::Dead => {
                    tracing::debug!(id = s.info.id, "subscriber left");
                    self.retire(s);
                }
                Fate::Close(reason) => {
                    tracing::debug!(id = s.info.id, %reason, "subscriber closed");
                    self.totals.disconnected += 1;
                    s.set_closed(reason);
                    s.mirror();
                    s.conn.let_go();
                    self.closing.push(s);
                }
            }
        }
        let mut j = 0;
        while j < self.streams.len() {
            let Some(fate) = self.streams[j].fate.take() else {
                j += 1;
                continue;
            };
            changed = true;
            let s = self.streams.swap_remove(j);
            self.totals.left += 1;
            self.totals.dropped += s.dropped;
            match fate {
                Fate::Dead => {
                    tracing::debug!(id = s.info.id, "stream subscriber left");
                    s.finish();
                }
                Fate::Close(reason) => {
                    tracing::debug!(id = s.info.id, %reason, "stream subscriber closed");
                    self.totals.disconnected += 1;
                    s.close(reason);
                }
            }
        }
        let mut k = 0;
        while k < self.closing.len() {
            if self.closing[k].conn.peer_left() {
                let s = self.closing.swap_remove(k);
                self.retire(s);
            } else {
                k += 1;
            }
        }
        let shared = &self.shared;
        self.departed.retain(|(m, pidfd)| match pidfd {
            Some(p) if p.has_exited().unwrap_or(true) => {
                shared.died(*m);
                false
            }
            _ => true,
        });
        if changed {
            self.mirror_totals();
        }
    }

    /// Gives a gone subscriber's id back (see [`Outlet::finish`]).
    fn retire(&mut self, s: Outlet) {
        if let Some(d) = s.finish() {
            self.departed.push(d);
        }
    }

    fn mirror_totals(&self) {
        let b = &self.shared.block;
        b.set(PubWord::Subscribers, self.count() as u64);
        b.set(PubWord::Joined, self.totals.joined);
        b.set(PubWord::Left, self.totals.left);
        b.set(
            PubWord::Dropped,
            self.totals.dropped
                + self.subs.iter().map(|s| s.dropped).sum::<u64>()
                + self.streams.iter().map(|s| s.dropped).sum::<u64>(),
        );
        b.set(PubWord::Disconnected, self.totals.disconnected);
        b.set(PubWord::Sent, self.seq);
        b.set(PubWord::HistoryHeld, self.history.len() as u64);
    }

    fn poll(&mut self) -> usize {
        self.adopt();
        self.notice_dead();
        for s in &mut self.subs {
            if !s.backlog.is_empty() {
                s.flush_backlog(&mut self.kept);
                s.mirror();
            }
            s.check_deadline();
        }
        for s in &mut self.streams {
            s.check_peer();
            if !s.queue.is_empty() {
                s.flush_queue();
            }
            s.check_deadline();
        }
        self.settle();
        self.mirror_totals();
        self.queued()
    }

    fn flush(&mut self, timeout: Duration) -> Result<(), SendError> {
        let deadline = crate::deadline_in(timeout);
        loop {
            if self.poll() == 0 {
                // Stream subscribers: until their sockets took it all.
                for s in &mut self.streams {
                    s.flush_socket(deadline)?;
                }
                return Ok(());
            }
            // Wait at most until the next deadline check of a
            // `Disconnect` subscriber is due.
            let slice = deadline.min(Instant::now() + Duration::from_millis(10));
            if let Some(s) = self.streams.iter_mut().find(|s| !s.queue.is_empty()) {
                match s.wait_room(slice) {
                    Ok(()) => {}
                    Err(crate::stream::StreamError::Timeout) if Instant::now() >= deadline => {
                        return Err(SendError::Timeout {
                            subscriber: s.info.id,
                        });
                    }
                    Err(crate::stream::StreamError::Timeout) => {}
                    Err(e) => s.fail(&e),
                }
                continue;
            }
            let Some(s) = self.subs.iter_mut().find(|s| !s.backlog.is_empty()) else {
                return Ok(());
            };
            let need = s.backlog.front().map_or(0, <[u8]>::len);
            match s.conn.tx.reserve(MESSAGE, need, Some(slice)) {
                Ok(_) => {}
                Err(crate::endpoint::TransportError::Timeout) if Instant::now() >= deadline => {
                    return Err(SendError::Timeout {
                        subscriber: s.info.id,
                    });
                }
                Err(crate::endpoint::TransportError::Timeout) => {}
                Err(e) => s.fail(&e),
            }
        }
    }

    /// The send timeout, as a lazily computed deadline.
    pub(crate) fn until(&self) -> Until {
        Until::after(self.send_timeout)
    }
}

impl<T: Body> Drop for Core<T> {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        let _ = self.shared.stop.notify();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        if let Some(t) = self.stream_accept.take() {
            let _ = t.join();
        }
        // Subscribers that finished their handshake are closed like the
        // others.
        self.adopt();
        let until = crate::deadline_in(self.linger);
        let _ = self.flush(self.linger);
        let kept = &mut self.kept;
        for mut s in std::mem::take(&mut self.subs) {
            s.clear_backlog(kept);
            // The reason first (Release), then the lifeline and the
            // socket: a subscriber that finds the connection over reads
            // it.
            s.set_closed(CloseReason::PublisherClosed);
            s.abandon();
        }
        for s in std::mem::take(&mut self.closing) {
            s.abandon();
        }
        // Stream subscribers: what is still unsent, then the reason,
        // within what is left of the linger.
        for s in std::mem::take(&mut self.streams) {
            s.close_by(CloseReason::PublisherClosed, until);
        }
        // The pump (a field) stops after this, closing what it still
        // holds.
        self.mirror_totals();
        unlink_socket(&self.shared.socket);
        tracing::debug!(channel = %self.shared.channel, "publisher closed");
    }
}
