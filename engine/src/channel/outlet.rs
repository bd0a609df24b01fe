//! One subscriber as its publisher holds it: its connection, its policy,
//! its backlog, its counters, and how a message reaches its ring.
//!
//! A message arrives here as a whole frame payload (head, blob handles,
//! body), serialized once by the publisher. What fits goes into the ring
//! at once; what does not is handled by the policy (see the
//! `policy` module). A queued frame with blobs names blobs the
//! publisher keeps a reference to ([`Kept`]): when it reaches the ring the
//! subscriber gets copies of them, shared with it alone, since a shared
//! slot cannot gain holders; when it is dropped the publisher's use of
//! them ends.

use std::time::Instant;

use isocall_blob::{BlobMut, Member, Parties, Party, SharedHandle};
use isocall_ringbuf::SharedRegion;

use crate::endpoint::TransportError;
use crate::rpc::Ticket;
use crate::rpc::wire::{HANDLE, HEAD, MAX_BLOBS};

use super::MESSAGE;
use super::accept::{Arrival, IdLease, SubscriberInfo};
use super::conn::Conn;
use super::error::{CloseReason, SendError};
use super::kept::Kept;
use super::policy::{Backlog, Backpressure};
use super::publisher::Until;
use super::stats::{SubCounters, SubWord, SubscriberStats};

/// What becomes of a subscriber.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fate {
    /// It died or closed its end.
    Dead,
    /// The publisher closes it.
    Close(CloseReason),
}

/// The blob handles a frame this publisher made carries.
pub(crate) fn frame_handles(payload: &[u8]) -> impl Iterator<Item = SharedHandle> + '_ {
    let n = payload
        .get(16..20)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])) as usize;
    (0..n.min(MAX_BLOBS))
        .filter_map(move |i| payload.get(HEAD + i * HANDLE..HEAD + (i + 1) * HANDLE))
        .filter_map(SharedHandle::from_bytes)
}

/// Ends the publisher's use of the blobs a queued or kept frame names.
pub(crate) fn release_frame(kept: &mut Option<Kept>, payload: &[u8]) {
    if let Some(k) = kept {
        for h in frame_handles(payload) {
            k.release(&h);
        }
    }
}

/// What became of a queued frame offered to the ring.
enum Offer {
    Written,
    NoRoom,
    /// Its blobs could not be copied (the pool is full): dropped.
    Dropped,
}

/// One subscriber. Fields drop in order: the connection before the
/// admission ticket and the id.
pub(crate) struct Outlet {
    pub(crate) info: SubscriberInfo,
    /// Its party in the channel's blob pool.
    pub(crate) party: Party,
    pub(crate) conn: Conn,
    pub(crate) policy: Backpressure,
    pub(crate) backlog: Backlog,
    /// Since when its ring has been full with messages queued.
    full_since: Option<Instant>,
    counters: SubCounters,
    pub(crate) dropped: u64,
    pub(crate) full: u64,
    pub(crate) history: u64,
    /// What a send or poll decided to do with it (acted on by the
    /// publisher's `settle`).
    pub(crate) fate: Option<Fate>,
    /// Whether the message being sent goes into its ring now (set by the
    /// publisher before it shares the message's blobs).
    pub(crate) takes: bool,
    _ticket: Ticket,
    lease: Option<IdLease>,
}

impl Outlet {
    pub(crate) fn from_arrival(a: Arrival) -> Outlet {
        Outlet {
            party: a.lease.party().unwrap_or(Party::PUBLISHER),
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
            takes: false,
            _ticket: a.ticket,
            lease: Some(a.lease),
        }
    }

    /// The fate a transport error decides.
    pub(crate) fn fail(&mut self, e: &TransportError) {
        let fate = match e {
            TransportError::PeerDied => Fate::Dead,
            _ => {
                tracing::debug!(id = self.info.id, error = %e, "subscriber's ring unusable; closing it");
                Fate::Close(CloseReason::ProtocolViolation)
            }
        };
        self.fate.get_or_insert(fate);
    }

    /// Whether the ring has room for a `len`-byte frame now (after the
    /// backlog, which must be empty).
    pub(crate) fn has_room(&mut self, len: usize) -> bool {
        if !self.backlog.is_empty() || self.fate.is_some() {
            return false;
        }
        match self.conn.tx.try_reserve(MESSAGE, len) {
            Ok(_) => true,
            Err(TransportError::Full) => false,
            Err(e) => {
                self.fail(&e);
                false
            }
        }
    }

    /// Offers the oldest queued frame to the ring.
    fn offer(&mut self, kept: &mut Option<Kept>) -> Result<Offer, TransportError> {
        let Some(f) = self.backlog.front() else {
            return Ok(Offer::NoRoom);
        };
        let mut g = match self.conn.tx.try_reserve(MESSAGE, f.len()) {
            Ok(g) => g,
            Err(TransportError::Full) => return Ok(Offer::NoRoom),
            Err(e) => return Err(e),
        };
        let buf = g.bytes_mut();
        buf.copy_from_slice(f);
        let handles: Vec<SharedHandle> = frame_handles(f).collect();
        if !handles.is_empty() {
            // Copies of the kept blobs, all made before any is shared: a
            // copy that cannot be made drops the frame, leaving nothing
            // behind.
            let Some(k) = kept.as_ref() else {
                return Ok(Offer::Dropped);
            };
            let mut copies: Vec<BlobMut<'_, SharedRegion>> = Vec::with_capacity(handles.len());
            for h in &handles {
                let made = k.bytes(h).and_then(|bytes| {
                    let mut b = k.pool().alloc(bytes.len()).ok()?;
                    b.copy_from_slice(bytes);
                    Some(b)
                });
                match made {
                    Some(b) => copies.push(b),
                    None => return Ok(Offer::Dropped),
                }
            }
            for (i, b) in copies.into_iter().enumerate() {
                let Ok(h) = b.share(Parties::from(self.party)) else {
                    // A state word rewritten behind our back (a hostile
                    // peer of the pool): the frame cannot go.
                    return Ok(Offer::Dropped);
                };
                buf[HEAD + i * HANDLE..HEAD + (i + 1) * HANDLE].copy_from_slice(&h.to_bytes());
            }
        }
        g.commit_all();
        Ok(Offer::Written)
    }

    /// Moves as much of the backlog into the ring as fits, without
    /// waiting.
    pub(crate) fn flush_backlog(&mut self, kept: &mut Option<Kept>) {
        let mut wrote = false;
        while !self.backlog.is_empty() {
            match self.offer(kept) {
                Ok(Offer::NoRoom) => break,
                Ok(o) => {
                    if matches!(o, Offer::Dropped) {
                        self.dropped += 1;
                    }
                    wrote |= matches!(o, Offer::Written);
                    if let Some(b) = self.backlog.pop() {
                        release_frame(kept, &b);
                        self.backlog.recycle(b);
                    }
                }
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
    pub(crate) fn make_room(
        &mut self,
        len: usize,
        until: &mut Until,
        kept: &mut Option<Kept>,
    ) -> Result<(), SendError> {
        loop {
            if self.fate.is_some() {
                return Ok(());
            }
            self.flush_backlog(kept);
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

    /// Writes `payload` into the ring, which has room (`has_room` or
    /// `make_room` said so).
    pub(crate) fn write(&mut self, payload: &[u8]) {
        if let Err(e) = self.try_write(payload) {
            self.fail(&e);
        }
    }

    /// Writes and publishes `payload` as one frame if the ring has room
    /// for it (`Full` if not).
    #[inline]
    fn try_write(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        let mut g = self.conn.tx.try_reserve(MESSAGE, payload.len())?;
        g.bytes_mut().copy_from_slice(payload);
        g.commit_all();
        self.conn.tx.publish();
        self.full_since = None;
        Ok(())
    }

    /// Gives it `payload` by its policy: into the ring if there is room
    /// after its backlog, else queued, dropped or disconnected. A frame
    /// with blobs comes here only to be queued (the publisher writes it
    /// into the rings that take it), naming blobs the publisher keeps:
    /// each queued copy is one more use of them.
    pub(crate) fn deliver(&mut self, payload: &[u8], kept: &mut Option<Kept>) {
        if self.fate.is_some() {
            return;
        }
        let has_blobs = frame_handles(payload).next().is_some();
        if !has_blobs {
            if !self.backlog.is_empty() {
                self.flush_backlog(kept);
            }
            if self.backlog.is_empty() {
                match self.try_write(payload) {
                    Ok(()) => return,
                    Err(TransportError::Full) => {}
                    Err(e) => return self.fail(&e),
                }
            }
        }
        self.full += 1;
        let queue = |me: &mut Outlet, kept: &mut Option<Kept>| {
            me.backlog.push(payload);
            if let Some(k) = kept {
                for h in frame_handles(payload) {
                    k.add_use(&h);
                }
            }
        };
        match self.policy {
            // `make_room` made room; a blocking subscriber gets here only
            // if it somehow has none: queue, as its history is.
            Backpressure::Block => queue(self, kept),
            Backpressure::DropOldest { backlog } => {
                queue(self, kept);
                while self.backlog.len() > backlog {
                    if let Some(b) = self.backlog.pop() {
                        release_frame(kept, &b);
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
                    queue(self, kept);
                }
            }
        }
        self.mirror();
    }

    /// Drops everything queued (the subscriber is closed).
    pub(crate) fn clear_backlog(&mut self, kept: &mut Option<Kept>) {
        while let Some(b) = self.backlog.pop() {
            release_frame(kept, &b);
            self.backlog.recycle(b);
        }
    }

    /// Closes it if its policy is `Disconnect` and its ring has been full
    /// too long.
    pub(crate) fn check_deadline(&mut self) {
        if let (Backpressure::Disconnect { after, .. }, Some(since)) =
            (self.policy, self.full_since)
            && since.elapsed() >= after
        {
            self.fate.get_or_insert(Fate::Close(CloseReason::Lagging));
        }
    }

    /// Records why the publisher closed it, for it and for the inspector.
    pub(crate) fn set_closed(&self, r: CloseReason) {
        self.counters.set_closed(r);
    }

    /// Sets its policy.
    pub(crate) fn set_policy(&mut self, p: Backpressure) {
        self.policy = p;
        self.counters.set_policy(p);
    }

    /// Copies the counters into its segment.
    pub(crate) fn mirror(&self) {
        self.counters.set(SubWord::Dropped, self.dropped);
        self.counters
            .set(SubWord::Queued, self.backlog.len() as u64);
        self.counters.set(SubWord::Full, self.full);
        self.counters.set(SubWord::History, self.history);
    }

    pub(crate) fn stats(&self) -> SubscriberStats {
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
            unwoken: self.conn.tx.consumer_unwoken(),
            unseen: self.conn.tx.consumer_unseen(),
        }
    }

    /// Gives its id back without reclaiming anything: the publisher is
    /// going away, and the subscriber may still read the blobs of the
    /// messages in its ring.
    pub(crate) fn abandon(mut self) {
        if let Some(lease) = self.lease.take() {
            drop(self);
            lease.finish(false);
        }
    }

    /// Gives its id back now that it is gone: what it held in the pool is
    /// reclaimed at once if its process exited or it closed cleanly (a
    /// subscriber does so only once it holds nothing: its samples borrow
    /// it; one that lies only pulls its own blobs from under itself);
    /// otherwise the member to reclaim once its process exits, and its
    /// pidfd to learn when.
    pub(crate) fn finish(mut self) -> Option<(Member, Option<crate::sys::PidFd>)> {
        let exited =
            self.conn.peer_exited() || self.conn.peer_closed_cleanly(crate::segment::Side::Client);
        let pidfd = self.conn.take_pidfd();
        let lease = self.lease.take()?;
        drop(self);
        lease.finish(exited).map(|m| (m, pidfd))
    }
}
