//! A client of a supervised service: the calls of a [`Client`], through
//! whichever instance serves, reconnecting after a crash and retrying
//! idempotent calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use isocall_blob::{BlobHandle, Pool, SlotState};
use isocall_ringbuf::SharedRegion;

use super::error::SupervisedError;
use super::stats::Word;
use super::{Connection, Inner, Live};
use crate::rpc::body::{self, Body};
use crate::rpc::client::reply::Abandoned;
use crate::rpc::{
    CallError, Caller, Client, LARGE_CLASS, Message, MessageRef, Method, MethodRef, Pending, Reply,
    Signature,
};
use crate::segment::Side;

/// A method this client resolved: its name and signature, resolved again
/// on each instance.
struct Known {
    name: &'static str,
    signature: Signature,
}

/// A connection to one instance.
struct Conn {
    client: Client,
    live: Arc<Live>,
    /// Server method ids on this connection, by the index of [`Known`].
    ids: Vec<Option<u32>>,
}

/// A call in flight.
struct InFlight {
    /// The instance it was last sent to.
    conn: u64,
    /// Its id on that instance's connection.
    call: u64,
    /// Index of its method in `known`.
    method: u32,
    idempotent: bool,
    /// The request's archive, kept for a retry: an idempotent call's, and
    /// another's while its request is held back (see `start_until`).
    body: Option<Vec<u8>>,
    blobs: Vec<BlobHandle>,
    deadline: Instant,
    attempts: u32,
}

/// A client of a supervised service: the calls of a
/// [`Client`](crate::rpc::Client), through whichever instance is serving.
///
/// It connects on first use. When the server dies, every call in flight
/// meets `PeerDied`: an idempotent one (the server declared it so, or the
/// caller said so with [`MethodRef::with_idempotent`]) is sent again on the
/// successor (at most [`retries`](super::SupervisorBuilder::retries)
/// times, within its deadline) and its caller sees only the answer; any
/// other fails with `PeerDied` and is never sent again (it ran at most
/// once), unless its request was still held back
/// ([`batch_requests`](crate::rpc::ClientOptions::batch_requests)) when
/// the server died: never published, it never reached the server, and it
/// is sent to the successor as an idempotent call is. A reply that
/// arrived before the crash is still delivered, with the blobs of the pool
/// it came in. Blobs of a retried call are copied into the successor's
/// pool. The next call after a crash goes to the successor.
pub struct SupervisedClient {
    inner: Arc<Inner>,
    tag: u64,
    known: Vec<Known>,
    current: Option<Conn>,
    /// Dead connections with calls still to wait for (their replies from
    /// before the crash are still in their rings).
    old: Vec<Conn>,
    calls: HashMap<u64, InFlight>,
    abandoned: Arc<Abandoned>,
    given_up: Vec<u64>,
    next: u64,
    /// When a connection was last seen dead, until a call succeeds again.
    died_at: Option<Instant>,
    /// The buffer a call's body is copied into in case it is held back,
    /// kept for the next call when it was not (no allocation per call).
    spare_body: Vec<u8>,
}

impl std::fmt::Debug for SupervisedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisedClient")
            .field("service", &self.inner.service())
            .field("server_pid", &self.server_pid())
            .field("in_flight", &self.calls.len())
            .finish()
    }
}

impl SupervisedClient {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        let tag = crate::rpc::method::next_client_tag();
        SupervisedClient {
            inner,
            tag,
            known: Vec::new(),
            current: None,
            old: Vec::new(),
            calls: HashMap::new(),
            abandoned: Abandoned::register(tag),
            given_up: Vec::new(),
            next: 1,
            died_at: None,
            spare_body: Vec::new(),
        }
    }

    fn resolve_all(&self, client: &Client) -> Vec<Option<u32>> {
        self.known
            .iter()
            .map(|k| client.resolve_sig(k.name, &k.signature).map(|(id, _)| id))
            .collect()
    }

    /// The serving connection, (re)connecting if there is none or it died.
    fn ensure(&mut self, deadline: Instant) -> Result<&mut Conn, SupervisedError> {
        if self.current.as_ref().is_some_and(|c| !c.client.is_alive()) {
            self.retire_current();
        }
        if self.current.is_none() {
            let Connection { client, live } = self.inner.connect(deadline)?;
            let ids = self.resolve_all(&client);
            if self.died_at.is_none() {
                // Not a recovery: nothing to slow down.
                self.inner.refill_premade();
            }
            tracing::debug!(target: "isocall::supervise", service = %self.inner.service(),
                pid = live.pid, "connected to an instance");
            self.current = Some(Conn { client, live, ids });
        }
        Ok(self.current.as_mut().expect("connected above"))
    }

    /// The current connection died: report it and keep it while calls on
    /// it wait.
    fn retire_current(&mut self) {
        if let Some(c) = self.current.take() {
            self.inner.report_dead(c.live.id);
            self.died_at.get_or_insert_with(Instant::now);
            // Kept until no call waits on it (`drop_idle_old`).
            self.old.push(c);
        }
    }

    fn conn_mut(&mut self, id: u64) -> Option<&mut Conn> {
        if self.current.as_ref().is_some_and(|c| c.live.id == id) {
            return self.current.as_mut();
        }
        self.old.iter_mut().find(|c| c.live.id == id)
    }

    /// Forgets the calls whose `Pending` was dropped, then drops dead
    /// connections no call waits on (their segments and blobs go with
    /// them), but `keep`.
    fn drop_idle_old(&mut self, keep: Option<u64>) {
        self.abandoned.take(&mut self.given_up);
        for seq in std::mem::take(&mut self.given_up) {
            if let Some(call) = self.calls.remove(&seq)
                && let Some(conn) = self.conn_mut(call.conn)
            {
                conn.client.give_up(call.call);
            }
        }
        if self.old.is_empty() {
            return;
        }
        let (kept, idle): (Vec<Conn>, Vec<Conn>) =
            std::mem::take(&mut self.old).into_iter().partition(|c| {
                Some(c.live.id) == keep || self.calls.values().any(|k| k.conn == c.live.id)
            });
        self.old = kept;
        for c in idle {
            self.inner.dispose(c.client);
        }
    }

    fn default_deadline(&self) -> Instant {
        crate::deadline_in(self.inner.call_timeout())
    }

    /// Resolves `m` on the serving instance (connecting first if needed):
    /// the server must have registered it with the same types. It is
    /// resolved again on each successor.
    ///
    /// # Errors
    ///
    /// `NoSuchMethod`, `TypeMismatch`; as a call for the connection
    /// (`Service`, `Timeout`).
    pub fn method<Req: Body, Resp: Body>(
        &mut self,
        m: Method<Req, Resp>,
    ) -> Result<MethodRef<Req, Resp>, SupervisedError> {
        let deadline = self.default_deadline();
        let conn = self.ensure(deadline)?;
        let r = conn.client.method(m)?;
        let signature = m.signature();
        let index = match self.known.iter().position(|k| k.name == m.name()) {
            Some(i) if self.known[i].signature == signature => i,
            Some(i) => {
                // Re-declared with other types: the latest declaration wins.
                self.known[i].signature = signature;
                for c in self.current.iter_mut().chain(self.old.iter_mut()) {
                    c.ids[i] = c.client.resolve_sig(m.name(), &m.signature()).map(|x| x.0);
                }
                i
            }
            None => {
                self.known.push(Known {
                    name: m.name(),
                    signature,
                });
                for c in self.current.iter_mut().chain(self.old.iter_mut()) {
                    c.ids
                        .push(c.client.resolve_sig(m.name(), &m.signature()).map(|x| x.0));
                }
                self.known.len() - 1
            }
        };
        Ok(MethodRef::new(
            index as u32,
            self.tag,
            m.name(),
            r.is_idempotent(),
        ))
    }

    /// Resolves the one-way `m` (sent at most once, never retried).
    ///
    /// # Errors
    ///
    /// As [`method`](Self::method).
    pub fn message<M: Body>(&mut self, m: Message<M>) -> Result<MessageRef<M>, SupervisedError> {
        let deadline = self.default_deadline();
        let conn = self.ensure(deadline)?;
        conn.client.message(m)?;
        let signature = m.signature();
        let index = match self.known.iter().position(|k| k.name == m.name()) {
            Some(i) => i,
            None => {
                self.known.push(Known {
                    name: m.name(),
                    signature: signature.clone(),
                });
                for c in self.current.iter_mut().chain(self.old.iter_mut()) {
                    c.ids
                        .push(c.client.resolve_sig(m.name(), &signature).map(|x| x.0));
                }
                self.known.len() - 1
            }
        };
        Ok(MessageRef::new(index as u32, self.tag, m.name()))
    }

    /// The pool of the current connection (connecting first if needed):
    /// allocate request blobs here and pass their handles to the next
    /// call. Blobs sent on an instance that died since go with the next
    /// call to the successor (copied) while the dead connection is kept (a
    /// call waits on it); once it is dropped they are refused.
    ///
    /// # Errors
    ///
    /// As a call for the connection.
    pub fn pool(&mut self) -> Result<Option<Arc<Pool<SharedRegion>>>, SupervisedError> {
        let deadline = self.default_deadline();
        Ok(self.ensure(deadline)?.client.pool().cloned())
    }

    /// The pid of the instance this client talks to now, if connected.
    pub fn server_pid(&self) -> Option<u32> {
        // Not the socket's credentials: those of a socketpair are its
        // creator's (this process), so the supervisor's record is the truth.
        self.current.as_ref().map(|c| c.live.pid)
    }

    /// Publishes the requests of started calls held back on the current
    /// connection (see [`Client::flush`]).
    ///
    /// # Errors
    ///
    /// As [`Client::flush`].
    pub fn flush(&mut self) -> Result<(), SupervisedError> {
        match &mut self.current {
            Some(c) => Ok(c.client.flush()?),
            None => Ok(()),
        }
    }

    /// Calls started and not yet waited for.
    pub fn in_flight(&self) -> usize {
        self.calls.len()
    }

    fn server_id(&self, conn: &Conn, method: u32) -> Result<u32, CallError> {
        conn.ids
            .get(method as usize)
            .copied()
            .flatten()
            .ok_or_else(|| CallError::NoSuchMethod {
                name: self
                    .known
                    .get(method as usize)
                    .map_or_else(|| format!("#{method}"), |k| k.name.to_string()),
            })
    }

    fn check_ref(&self, client: u64, method: &'static str) -> Result<(), CallError> {
        if client == self.tag {
            Ok(())
        } else {
            Err(CallError::ForeignMethod { method })
        }
    }

    /// Starts a call; see [`Client::start`]. An idempotent call keeps a
    /// copy of its request for a retry.
    ///
    /// A request that cannot be sent because the server died (found dead
    /// here, or dying while the ring was full) was not sent: it goes to the
    /// successor, whatever the method, and so do blobs sent on an instance
    /// that died since (they are copied into the successor's pool).
    ///
    /// # Errors
    ///
    /// As [`Client::start`]; `Service` if the supervisor gave up;
    /// `PeerDied` if the successors kept dying until the deadline or the
    /// retry budget ran out; `Blob` for a blob in flight on no connection
    /// of this client (e.g. sent on an instance whose connection was
    /// dropped since).
    pub fn start<Req: Body, Resp: Body>(
        &mut self,
        m: MethodRef<Req, Resp>,
        request: &Req,
        blobs: &[BlobHandle],
    ) -> Result<Pending<Resp>, SupervisedError> {
        self.check_ref(m.client, m.name)?;
        let deadline = self.default_deadline();
        let r = self.start_until(m.id, m.idempotent, request, blobs, deadline);
        if matches!(
            r,
            Err(SupervisedError::Call(CallError::PeerDied) | SupervisedError::Service(_))
        ) {
            self.inner.stats.add(Word::CallsFailed, 1);
        }
        let seq = r?;
        Ok(Pending {
            id: seq,
            client: self.tag,
            method: m.name,
            armed: true,
            _t: std::marker::PhantomData,
        })
    }

    fn start_until<Req: Body>(
        &mut self,
        method: u32,
        idempotent: bool,
        request: &Req,
        blobs: &[BlobHandle],
        deadline: Instant,
    ) -> Result<u64, SupervisedError> {
        let mut blobs = blobs.to_vec();
        let mut tries = 0u32;
        loop {
            self.ensure(deadline)?;
            let conn = self.current.as_ref().expect("ensured");
            let id = self.server_id(conn, method)?;
            if let Err(e) = check_blobs(conn, &blobs) {
                // Sent on an instance that died since: take them along.
                let from = self
                    .old
                    .iter()
                    .find(|c| check_blobs(c, &blobs).is_ok())
                    .map(|c| c.live.id)
                    .ok_or(e)?;
                blobs = self.move_blobs(from, &blobs)?;
            }
            self.drop_idle_old(None);
            let conn = self.current.as_mut().expect("ensured");
            // A request that may be held back is kept too: if the server
            // dies before it is published, it is sent to the successor.
            let mut keep = if idempotent {
                Some(Vec::new())
            } else if conn.client.batches() {
                Some(std::mem::take(&mut self.spare_body))
            } else {
                None
            };
            let sent = conn.client.start_keep(
                id,
                |buf, a| body::encode(request, buf, a),
                &blobs,
                keep.as_mut(),
            );
            match sent {
                Ok(call) => {
                    if !idempotent
                        && !conn.client.never_sent(call)
                        && let Some(spare) = keep.take()
                    {
                        self.spare_body = spare;
                    }
                    let seq = self.next;
                    self.next += 1;
                    let conn = conn.live.id;
                    self.calls.insert(
                        seq,
                        InFlight {
                            conn,
                            call,
                            method,
                            idempotent,
                            body: keep,
                            blobs,
                            deadline,
                            attempts: 0,
                        },
                    );
                    return Ok(seq);
                }
                // Nothing was published: the successor gets it.
                Err(CallError::PeerDied)
                    if tries < self.inner.retries() && Instant::now() < deadline =>
                {
                    tries += 1;
                    self.retire_current();
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits for a started call; see [`Client::wait`]. If the server died,
    /// an idempotent call, or one whose request was still held back (never
    /// published), is sent again on the successor (blobs copied over) and
    /// waited for there. The reply's blobs are in the pool of the
    /// instance that answered.
    ///
    /// # Errors
    ///
    /// As [`Client::wait`]: `PeerDied` for a call that is not idempotent
    /// (or out of retries) whose server died; `Service` if the supervisor
    /// gave up.
    pub fn wait<Resp: Body>(
        &mut self,
        pending: Pending<Resp>,
        deadline: Option<Instant>,
    ) -> Result<Reply<'_, Resp>, SupervisedError> {
        // Checked before the pending is disarmed: one of another client,
        // refused, is dropped armed and given up on its own client.
        self.check_ref(pending.client, "a pending call")?;
        let (seq, _) = pending.defuse();
        let mut call = self.calls.remove(&seq).ok_or(CallError::ForeignMethod {
            method: "a call waited for twice",
        })?;
        let deadline = deadline.unwrap_or(call.deadline);
        let outcome = loop {
            let conn_id = call.conn;
            let r = match self.conn_mut(conn_id) {
                Some(conn) => conn.client.await_reply(call.call, Some(deadline)),
                None => Err(CallError::PeerDied),
            };
            match r {
                Ok(()) => break Ok(conn_id),
                Err(CallError::PeerDied) => {
                    // Still held back: never published, so the server never
                    // saw it, and any call may go to the successor.
                    let unsent = call.body.is_some()
                        && self
                            .conn_mut(conn_id)
                            .is_some_and(|c| c.client.never_sent(call.call));
                    if self.current.as_ref().is_some_and(|c| c.live.id == conn_id) {
                        self.retire_current();
                    }
                    let retry = (call.idempotent || unsent)
                        && call.attempts < self.inner.retries()
                        && Instant::now() < deadline;
                    if !retry {
                        break Err(SupervisedError::Call(CallError::PeerDied));
                    }
                    if let Err(e) = self.resend(&mut call, deadline) {
                        break Err(e);
                    }
                }
                Err(e) => break Err(e.into()),
            }
        };
        let conn_id = match outcome {
            Ok(c) => c,
            Err(e) => {
                if matches!(
                    e,
                    SupervisedError::Call(CallError::PeerDied) | SupervisedError::Service(_)
                ) {
                    self.inner.stats.add(Word::CallsFailed, 1);
                }
                if let Some(conn) = self.conn_mut(call.conn) {
                    conn.client.give_up(call.call);
                }
                self.drop_idle_old(None);
                return Err(e);
            }
        };
        self.drop_idle_old(Some(conn_id));
        let recovering =
            self.current.as_ref().is_some_and(|c| c.live.id == conn_id) && self.died_at.is_some();
        if recovering && let Some(t) = self.died_at.take() {
            let ns = t.elapsed().as_nanos() as u64;
            self.inner.stats.add(Word::Recoveries, 1);
            self.inner.stats.add(Word::RecoveryNanos, ns);
            // Recovered: the work held back may go on.
            self.inner.recovered();
        }
        let conn = self.conn_mut(conn_id).expect("kept above");
        Ok(conn.client.wait_id::<Resp>(call.call, None)?)
    }

    /// Sends `call` again on the serving instance (connecting to it), its
    /// blobs copied over from the instance it was last sent to; tries the
    /// next successor if that one is found dead before the request is out,
    /// within `deadline`. Counts one attempt per request sent.
    fn resend(&mut self, call: &mut InFlight, deadline: Instant) -> Result<(), SupervisedError> {
        let body = call.body.take().unwrap_or_default();
        let r = (|| loop {
            self.ensure(deadline)?;
            let to = self.current.as_ref().expect("ensured");
            let id = self.server_id(to, call.method)?;
            if call.conn != to.live.id {
                call.blobs = self.move_blobs(call.conn, &call.blobs)?;
                call.conn = self.current.as_ref().expect("ensured").live.id;
            }
            let to = self.current.as_mut().expect("ensured");
            match to.client.start_raw(id, &body, &call.blobs) {
                Ok(c) => return Ok::<_, SupervisedError>(c),
                // Not sent: the next successor, while there is time.
                Err(CallError::PeerDied) if Instant::now() < deadline => self.retire_current(),
                Err(e) => return Err(e.into()),
            }
        })();
        call.body = Some(body);
        call.call = r?;
        call.attempts += 1;
        self.inner.stats.add(Word::Retries, 1);
        tracing::debug!(target: "isocall::supervise", service = %self.inner.service(),
            attempt = call.attempts, idempotent = call.idempotent, "call sent again");
        Ok(())
    }

    /// Copies the blobs a call sent on dead connection `from` into the
    /// current connection's pool and sends them there.
    fn move_blobs(
        &mut self,
        from: u64,
        handles: &[BlobHandle],
    ) -> Result<Vec<BlobHandle>, SupervisedError> {
        if handles.is_empty() {
            return Ok(Vec::new());
        }
        let old_pool = self
            .old
            .iter()
            .chain(self.current.iter())
            .find(|c| c.live.id == from)
            .and_then(|c| c.client.pool().cloned());
        let new_pool = self.current.as_ref().and_then(|c| c.client.pool().cloned());
        let (Some(old_pool), Some(new_pool)) = (old_pool, new_pool) else {
            return Err(CallError::PeerDied.into());
        };
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            if h.class == LARGE_CLASS {
                // A large blob's memfd went to the dead server only.
                return Err(CallError::PeerDied.into());
            }
            // A stream copied the blob out and freed it when it sent the
            // call: nothing is left to send again (the call ran at most
            // once, as a call that cannot be retried).
            let old = old_pool.take_back(h).map_err(|_| CallError::PeerDied)?;
            let mut new = new_pool.alloc(old.len()).map_err(CallError::from)?;
            new.copy_from_slice(&old);
            out.push(new.send().map_err(CallError::from)?);
        }
        Ok(out)
    }

    /// Calls `m` and waits for its reply; see [`Client::call`].
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start) and [`wait`](Self::wait).
    pub fn call<Req: Body, Resp: Body>(
        &mut self,
        m: MethodRef<Req, Resp>,
        request: &Req,
    ) -> Result<Reply<'_, Resp>, SupervisedError> {
        let p = self.start(m, request, &[])?;
        self.wait(p, None)
    }

    /// Calls `m` with blobs and a deadline; see [`Client::call_with`].
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start) and [`wait`](Self::wait).
    pub fn call_with<Req: Body, Resp: Body>(
        &mut self,
        m: MethodRef<Req, Resp>,
        request: &Req,
        blobs: &[BlobHandle],
        deadline: Option<Instant>,
    ) -> Result<Reply<'_, Resp>, SupervisedError> {
        let p = self.start(m, request, blobs)?;
        self.wait(p, deadline)
    }

    /// Sends a one-way message (never retried: at most once).
    ///
    /// # Errors
    ///
    /// As [`Client::send`].
    pub fn send<M: Body>(
        &mut self,
        m: MessageRef<M>,
        message: &M,
        blobs: &[BlobHandle],
    ) -> Result<(), SupervisedError> {
        self.check_ref(m.client, m.name)?;
        let deadline = self.default_deadline();
        self.ensure(deadline)?;
        let conn = self.current.as_ref().expect("ensured");
        let id = self.server_id(conn, m.id)?;
        check_blobs(conn, blobs)?;
        let conn = self.current.as_mut().expect("ensured");
        let m = MessageRef::<M>::new(id, conn.client.tag(), m.name);
        Ok(conn.client.send(m, message, blobs)?)
    }
}

/// Refuses blob handles that are not in flight to the server on `conn`
/// (allocated from the pool of an instance that died since).
fn check_blobs(conn: &Conn, blobs: &[BlobHandle]) -> Result<(), CallError> {
    let Some(pool) = conn.client.pool() else {
        return Ok(());
    };
    for h in blobs.iter().filter(|h| h.class != LARGE_CLASS) {
        let ok = pool
            .slot_state(h.class as usize, h.slot as usize)
            .is_some_and(|(s, g)| {
                s == SlotState::InFlight(Side::Server.into()) && g == h.generation
            });
        if !ok {
            return Err(CallError::Blob(isocall_blob::BlobError::WrongState {
                class: h.class as usize,
                slot: h.slot as usize,
                found: pool
                    .slot_state(h.class as usize, h.slot as usize)
                    .map_or(SlotState::Invalid(0), |s| s.0),
                expected: "in flight to the server on the current connection (after a restart, allocate from pool() again)",
            }));
        }
    }
    Ok(())
}

impl Caller for SupervisedClient {
    type Error = SupervisedError;

    fn method<Req: Body, Resp: Body>(
        &mut self,
        m: Method<Req, Resp>,
    ) -> Result<MethodRef<Req, Resp>, SupervisedError> {
        SupervisedClient::method(self, m)
    }

    fn message<M: Body>(&mut self, m: Message<M>) -> Result<MessageRef<M>, SupervisedError> {
        SupervisedClient::message(self, m)
    }

    fn call<Req: Body, Resp: Body>(
        &mut self,
        m: MethodRef<Req, Resp>,
        request: &Req,
    ) -> Result<Reply<'_, Resp>, SupervisedError> {
        SupervisedClient::call(self, m, request)
    }

    fn call_with<Req: Body, Resp: Body>(
        &mut self,
        m: MethodRef<Req, Resp>,
        request: &Req,
        blobs: &[BlobHandle],
        deadline: Option<Instant>,
    ) -> Result<Reply<'_, Resp>, SupervisedError> {
        SupervisedClient::call_with(self, m, request, blobs, deadline)
    }

    fn start<Req: Body, Resp: Body>(
        &mut self,
        m: MethodRef<Req, Resp>,
        request: &Req,
        blobs: &[BlobHandle],
    ) -> Result<Pending<Resp>, SupervisedError> {
        SupervisedClient::start(self, m, request, blobs)
    }

    fn wait<Resp: Body>(
        &mut self,
        pending: Pending<Resp>,
        deadline: Option<Instant>,
    ) -> Result<Reply<'_, Resp>, SupervisedError> {
        SupervisedClient::wait(self, pending, deadline)
    }

    fn send<M: Body>(
        &mut self,
        m: MessageRef<M>,
        message: &M,
        blobs: &[BlobHandle],
    ) -> Result<(), SupervisedError> {
        SupervisedClient::send(self, m, message, blobs)
    }

    fn pool(&mut self) -> Result<Option<Arc<Pool<SharedRegion>>>, SupervisedError> {
        SupervisedClient::pool(self)
    }

    fn flush(&mut self) -> Result<(), SupervisedError> {
        SupervisedClient::flush(self)
    }
}
