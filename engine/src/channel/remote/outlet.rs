//! One stream subscriber as its publisher holds it: the connection's
//! sending half (its send buffer in place of a ring), the receiving half
//! (to learn of the subscriber's hang-up or garbage), its policy, its
//! private queue and its counters (in-process: there is no segment to
//! mirror them into).
//!
//! A message reaches the socket as the ring frame would reach a ring: the
//! same payload, its blob handles rewritten to blobs of the connection's
//! private pool, which the transport then copies inline. Nothing here
//! waits, except [`StreamOutlet::make_room`], up to the send's deadline.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use isocall_blob::{BlobHandle, Pool};
use isocall_ringbuf::SharedRegion;

use crate::rpc::Ticket;
use crate::rpc::wire::{HANDLE, HEAD, kind};
use crate::stream::{StreamError, StreamRx, StreamTx};

use super::super::MESSAGE;
use super::super::accept::{IdLease, SubscriberInfo};
use super::super::error::{CloseReason, SendError};
use super::super::outlet::Fate;
use super::super::policy::Backpressure;
use super::super::publisher::Until;
use super::super::stats::SubscriberStats;
use super::pump::Kick;
use super::{Msg, Queued};

/// A stream subscriber that completed its handshake, for the publisher
/// to adopt.
pub(crate) struct StreamArrival {
    pub(crate) info: SubscriberInfo,
    pub(crate) tx: StreamTx,
    pub(crate) rx: StreamRx,
    pub(crate) policy: Backpressure,
    pub(crate) history: u32,
    pub(crate) ticket: Ticket,
    pub(crate) lease: IdLease,
}

/// One stream subscriber. Fields drop in order: the connection before
/// the ticket and the id.
pub(crate) struct StreamOutlet {
    pub(crate) info: SubscriberInfo,
    tx: StreamTx,
    rx: StreamRx,
    pub(crate) policy: Backpressure,
    /// Messages that did not fit the send buffer, oldest first.
    pub(crate) queue: VecDeque<Queued>,
    full_since: Option<Instant>,
    pub(crate) dropped: u64,
    pub(crate) full: u64,
    pub(crate) history: u64,
    pub(crate) fate: Option<Fate>,
    /// Frames the connection had sent before it was adopted (its
    /// handshake's): not messages.
    base: u64,
    /// Wakes the publisher's pump when a publish leaves bytes unsent.
    kick: Arc<Kick>,
    _ticket: Ticket,
    lease: Option<IdLease>,
}

/// What the publisher keeps of a stream subscriber it closed: the
/// connection, until its last frames (and the reason) are sent, the
/// subscriber hangs up, or the deadline passes.
pub(crate) struct Closing {
    tx: StreamTx,
    rx: StreamRx,
    until: Instant,
    _lease: Option<IdLease>,
}

impl Closing {
    /// Sends what it can; true once it is done (all sent, the peer gone,
    /// or past its deadline): the connection then closes.
    pub(crate) fn progress(&mut self) -> bool {
        let now = Instant::now();
        let sent = matches!(self.tx.flush(Some(now)), Ok(()));
        let gone = self.rx.try_recv().map(|f| f.map(|f| f.release())).is_err();
        sent || gone || now >= self.until
    }

    /// Ends its sending (the peer reads the reason, then the end).
    pub(crate) fn finish(self) {
        let _ = self.tx.close(Some(Instant::now()));
    }
}

/// How long a closed subscriber has to take its last frames.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

impl StreamOutlet {
    pub(crate) fn from_arrival(a: StreamArrival, kick: Arc<Kick>) -> StreamOutlet {
        let base = a.tx.stats().frames;
        StreamOutlet {
            base,
            info: a.info,
            tx: a.tx,
            rx: a.rx,
            policy: a.policy,
            queue: VecDeque::new(),
            full_since: None,
            dropped: 0,
            full: 0,
            history: 0,
            fate: None,
            kick,
            _ticket: a.ticket,
            lease: Some(a.lease),
        }
    }

    /// The fate a stream error decides.
    pub(crate) fn fail(&mut self, e: &StreamError) {
        let fate = match e {
            StreamError::PeerDied => Fate::Dead,
            _ => {
                tracing::debug!(id = self.info.id, error = %e, "stream subscriber's connection failed; closing it");
                Fate::Close(CloseReason::ProtocolViolation)
            }
        };
        self.fate.get_or_insert(fate);
    }

    /// Learns, without waiting, whether the subscriber hung up or sent
    /// something (a subscriber sends nothing after its handshake: any
    /// frame is a protocol violation, and bytes that are no frame fail
    /// the connection with a typed error).
    pub(crate) fn check_peer(&mut self) {
        if self.fate.is_some() {
            return;
        }
        let e = match self.rx.try_recv() {
            Ok(None) => return,
            Ok(Some(f)) => {
                let k = f.kind();
                f.release();
                StreamError::BadKind { kind: k }
            }
            Err(e) => e,
        };
        self.fail(&e);
    }

    /// Writes `m` into the send buffer and publishes it if there is room
    /// now (`Full` if not). Its blobs are copied into the connection's
    /// pool and sent with it; a pool without room drops the message for
    /// this subscriber (counted).
    fn try_write(&mut self, m: &Msg) -> Result<(), StreamError> {
        let handles = match self.send_blobs(m) {
            Some(h) => h,
            None => {
                self.dropped += 1;
                return Ok(());
            }
        };
        let pool = self.tx.pool().cloned();
        let mut g = match self.tx.try_reserve(MESSAGE, m.payload.len()) {
            Ok(g) => g,
            Err(e) => {
                recall(pool.as_deref(), &handles);
                return Err(e);
            }
        };
        let buf = g.bytes_mut();
        buf.copy_from_slice(&m.payload);
        for (i, h) in handles.iter().enumerate() {
            buf[HEAD + i * HANDLE..HEAD + (i + 1) * HANDLE].copy_from_slice(&h.to_bytes());
        }
        g.commit_all()?;
        self.tx.publish()?;
        if self.tx.wants_write() {
            self.kick.pending(&self.tx.flusher());
        }
        Ok(())
    }

    /// Copies `m`'s blobs into the connection's pool and sends them (in
    /// flight to the subscriber, as the transport wants them); `None` if
    /// one cannot be had (all that were are freed).
    fn send_blobs(&mut self, m: &Msg) -> Option<Vec<BlobHandle>> {
        if m.blobs.is_empty() {
            return Some(Vec::new());
        }
        let pool = self.tx.pool()?.clone();
        let mut out = Vec::with_capacity(m.blobs.len());
        for bytes in &m.blobs {
            let sent = pool.alloc(bytes.len()).ok().and_then(|mut b| {
                b.copy_from_slice(bytes);
                b.send().ok()
            });
            match sent {
                Some(h) => out.push(h),
                None => {
                    recall(Some(&pool), &out);
                    return None;
                }
            }
        }
        Some(out)
    }

    /// Moves as much of the queue into the send buffer as fits, without
    /// waiting.
    pub(crate) fn flush_queue(&mut self) {
        while let Some(m) = self.queue.front().cloned() {
            match self.try_write(&m) {
                Ok(()) => {
                    self.queue.pop_front();
                }
                Err(StreamError::Full) => break,
                Err(e) => {
                    self.fail(&e);
                    break;
                }
            }
        }
        if self.queue.is_empty() {
            self.full_since = None;
        }
    }

    /// Makes room for a message after the queue, waiting until `until`
    /// (policy `Block`). `Err` names the subscriber if the deadline
    /// passed first; a dead or broken subscriber gets its fate and no
    /// error.
    pub(crate) fn make_room(&mut self, len: usize, until: &mut Until) -> Result<(), SendError> {
        loop {
            if self.fate.is_some() {
                return Ok(());
            }
            self.flush_queue();
            let need = self.queue.front().map_or(len, |m| m.payload.len());
            let waited = match self.tx.try_reserve(MESSAGE, need) {
                Ok(_) if self.queue.is_empty() => return Ok(()),
                Ok(_) => continue,
                Err(StreamError::Full) => {
                    self.full += 1;
                    let at = until.get();
                    self.tx.reserve(MESSAGE, need, Some(at)).map(drop)
                }
                Err(e) => Err(e),
            };
            match waited {
                Ok(()) => {}
                Err(StreamError::Timeout) => {
                    return Err(SendError::Timeout {
                        subscriber: self.info.id,
                    });
                }
                Err(e) => self.fail(&e),
            }
        }
    }

    /// Gives it message `m` by its policy: into the send buffer if there
    /// is room after its queue, else queued, dropped or disconnected.
    pub(crate) fn deliver(&mut self, m: &Queued) {
        if self.fate.is_some() {
            return;
        }
        if !self.queue.is_empty() {
            self.flush_queue();
        }
        if self.queue.is_empty() {
            match self.try_write(m) {
                Ok(()) => return,
                Err(StreamError::Full) => {}
                Err(e) => return self.fail(&e),
            }
        }
        self.full += 1;
        match self.policy {
            Backpressure::Block => self.queue.push_back(m.clone()),
            Backpressure::DropOldest { backlog } => {
                self.queue.push_back(m.clone());
                while self.queue.len() > backlog {
                    self.queue.pop_front();
                    self.dropped += 1;
                }
                self.full_since.get_or_insert_with(Instant::now);
            }
            Backpressure::Disconnect { after, backlog } => {
                let since = *self.full_since.get_or_insert_with(Instant::now);
                if self.queue.len() >= backlog || since.elapsed() >= after {
                    self.fate = Some(Fate::Close(CloseReason::Lagging));
                } else {
                    self.queue.push_back(m.clone());
                }
            }
        }
    }

    /// Queues a history message (sent before it joined).
    pub(crate) fn queue_history(&mut self, m: Queued) {
        self.queue.push_back(m);
        self.history += 1;
    }

    /// Closes it if its policy is `Disconnect` and it has been full too
    /// long.
    pub(crate) fn check_deadline(&mut self) {
        if let (Backpressure::Disconnect { after, .. }, Some(since)) =
            (self.policy, self.full_since)
            && since.elapsed() >= after
        {
            self.fate.get_or_insert(Fate::Close(CloseReason::Lagging));
        }
    }

    /// Waits until `deadline` at most for room for the front of its
    /// queue (a publisher's `flush`).
    pub(crate) fn wait_room(&mut self, deadline: Instant) -> Result<(), StreamError> {
        let need = self.queue.front().map_or(0, |m| m.payload.len());
        self.tx.reserve(MESSAGE, need, Some(deadline)).map(drop)
    }

    /// Waits until `deadline` at most for the socket to take everything
    /// published (a publisher's `flush`); a dead or broken subscriber
    /// gets its fate and no error.
    pub(crate) fn flush_socket(&mut self, deadline: Instant) -> Result<(), SendError> {
        if self.fate.is_some() {
            return Ok(());
        }
        match self.tx.flush(Some(deadline)) {
            Ok(()) => Ok(()),
            Err(StreamError::Timeout) => Err(SendError::Timeout {
                subscriber: self.info.id,
            }),
            Err(e) => {
                self.fail(&e);
                Ok(())
            }
        }
    }

    /// Sets its policy.
    pub(crate) fn set_policy(&mut self, p: Backpressure) {
        self.policy = p;
    }

    pub(crate) fn stats(&self) -> SubscriberStats {
        SubscriberStats {
            id: self.info.id,
            label: self.info.label.clone(),
            policy: Some(self.policy),
            sent: self.tx.stats().frames - self.base,
            dropped: self.dropped,
            queued: self.queue.len() as u64,
            full: self.full,
            history: self.history,
            closed: None,
            unwoken: 0,
            unseen: 0,
        }
    }

    /// Closes it for `reason`: the reason follows what was sent, past the
    /// send buffer's limit (a lagging subscriber's buffer is full); the
    /// pump sends it and closes the connection.
    pub(crate) fn close(self, reason: CloseReason) {
        let kick = self.kick.clone();
        kick.close(self.closing(reason));
    }

    fn closing(mut self, reason: CloseReason) -> Closing {
        self.queue.clear();
        if let Ok(mut g) = self.tx.reserve_past_limit(kind::CLOSE, 4) {
            g.bytes_mut().copy_from_slice(&reason.code().to_le_bytes());
            if g.commit_all().is_ok() {
                let _ = self.tx.publish();
            }
        }
        // It holds nothing of the channel's pool: its id comes back when
        // the connection is done.
        let lease = self.lease.take();
        Closing {
            tx: self.tx,
            rx: self.rx,
            until: Instant::now() + CLOSE_LINGER,
            _lease: lease,
        }
    }

    /// Forgets it (it died): its id is free at once (it held nothing of
    /// the channel's pool).
    pub(crate) fn finish(mut self) {
        if let Some(l) = self.lease.take() {
            drop(self);
            l.finish(true);
        }
    }

    /// Delivers what is queued, waiting until `deadline`, then closes it
    /// with `reason` (waiting for the last frames until `deadline`): the
    /// publisher's drop.
    pub(crate) fn close_by(mut self, reason: CloseReason, deadline: Instant) {
        while !self.queue.is_empty() && self.fate.is_none() {
            self.flush_queue();
            if self.queue.is_empty() || Instant::now() >= deadline {
                break;
            }
            if let Err(e) = self.wait_room(deadline) {
                if e != StreamError::Timeout {
                    self.fail(&e);
                }
                break;
            }
        }
        let mut c = self.closing(reason);
        let _ = c.tx.flush(Some(deadline));
        c.finish();
    }
}

/// Takes back blobs sent and not framed, freeing them.
fn recall(pool: Option<&Pool<SharedRegion>>, handles: &[BlobHandle]) {
    if let Some(p) = pool {
        for h in handles {
            drop(p.recall(h));
        }
    }
}
