//! A client of a supervised service: a [`Client`](crate::rpc::Client) that
//! reconnects to the successor after a crash and retries idempotent calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use isocall_blob::{Blob, BlobError, BlobHandle, BlobMut, Pool, SlotState};
use isocall_ringbuf::SharedRegion;

use super::stats::Word;
use super::{Connection, Inner, Live};
use crate::rpc::archive::{self, Body};
use crate::rpc::{CallError, Client, LARGE_CLASS, MethodId, Pending};
use crate::segment::Side;

/// A method of a supervised service, resolved by name, with whether calls
/// to it are retried after a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceMethod {
    index: u32,
    idempotent: bool,
}

impl ServiceMethod {
    /// The same method with its calls declared idempotent (`true`: retried
    /// on the successor when the server dies during the call) or not
    /// (`false`: such a call fails with `PeerDied` and never runs twice).
    /// By default, what the server declared when it registered it.
    #[must_use]
    pub fn idempotent(self, yes: bool) -> Self {
        ServiceMethod {
            idempotent: yes,
            ..self
        }
    }

    /// Whether its calls are retried.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }
}

/// A call started with [`SupervisedClient::start`], to wait for. Dropping
/// it gives the call up: its reply is dropped when it comes (or was), and
/// a dead instance's connection is not kept for it.
#[derive(Debug)]
#[must_use = "a started call is waited for with SupervisedClient::wait"]
pub struct SupervisedPending {
    seq: u64,
    /// Where a dropped call is recorded (`None` once waited for).
    given_up: Option<GivenUp>,
}

/// The calls whose [`SupervisedPending`] was dropped, for the client to
/// forget at its next call.
type GivenUp = Arc<std::sync::Mutex<Vec<u64>>>;

impl Drop for SupervisedPending {
    fn drop(&mut self) {
        if let Some(g) = self.given_up.take() {
            g.lock().unwrap_or_else(|p| p.into_inner()).push(self.seq);
        }
    }
}

/// The blobs a reply carries, with the pool they live in: the pool of the
/// instance that answered, which after a crash may no longer be the one
/// [`SupervisedClient::pool`] gives (a reply that arrived before the crash
/// is delivered from the dead instance's ring).
#[derive(Clone, Copy, Debug)]
pub struct ReplyBlobs<'a> {
    handles: &'a [BlobHandle],
    pool: Option<&'a Arc<Pool<SharedRegion>>>,
}

impl<'a> ReplyBlobs<'a> {
    /// The handles, in the order the server attached them.
    pub fn handles(&self) -> &'a [BlobHandle] {
        self.handles
    }

    /// How many blobs the reply carries.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether the reply carries no blob.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The pool the blobs are in (clone the `Arc` to accept them after the
    /// read closure returned); `None` if the service has no blob pool.
    pub fn pool(&self) -> Option<&'a Arc<Pool<SharedRegion>>> {
        self.pool
    }

    /// Accepts blob `i` to read it in place (dropping it frees the slot).
    ///
    /// # Errors
    ///
    /// `NoSuchBlob` if there is no blob `i`, `NoPool` if there is no pool; as
    /// [`Pool::accept`] for a handle the pool refuses.
    pub fn accept(&self, i: usize) -> Result<Blob<'a, SharedRegion>, BlobError> {
        let (pool, h) = self.get(i)?;
        pool.accept(h)
    }

    /// Accepts blob `i` to read and write it in place (and, say, send it
    /// back with the next call).
    ///
    /// # Errors
    ///
    /// As [`accept`](Self::accept).
    pub fn accept_mut(&self, i: usize) -> Result<BlobMut<'a, SharedRegion>, BlobError> {
        let (pool, h) = self.get(i)?;
        pool.accept_mut(h)
    }

    fn get(&self, i: usize) -> Result<(&'a Arc<Pool<SharedRegion>>, &'a BlobHandle), BlobError> {
        let h = self.handles.get(i).ok_or(BlobError::NoSuchBlob {
            index: i,
            count: self.handles.len(),
        })?;
        let pool = self.pool.ok_or(BlobError::NoPool)?;
        Ok((pool, h))
    }
}

/// A connection to one instance.
struct Conn {
    client: Client,
    /// Its blob pool (the client's, held here to lend to a reply's reader
    /// while the client is busy waiting).
    pool: Option<Arc<Pool<SharedRegion>>>,
    live: Arc<Live>,
    /// Method ids on this connection, by [`ServiceMethod::index`].
    ids: Vec<Option<MethodId>>,
}

/// A call in flight.
struct InFlight {
    /// The instance it was last sent to.
    conn: u64,
    pending: Pending,
    method: ServiceMethod,
    /// The request's archive, kept for a retry (idempotent calls only).
    body: Option<Vec<u8>>,
    blobs: Vec<BlobHandle>,
    deadline: Instant,
    attempts: u32,
}

/// A client of a supervised service: the calls of
/// [`Client`](crate::rpc::Client), through whichever instance is serving.
///
/// It connects on first use. When the server dies, every call in flight
/// meets `PeerDied`: an idempotent one is sent again on the successor (at
/// most [`retries`](super::SupervisorBuilder::retries) times, within its
/// deadline) and its caller sees only the answer; any other fails with
/// `PeerDied` and is never sent again (it ran at most once). A reply that
/// arrived before the crash is still delivered. Blobs of a retried call
/// are copied into the successor's pool. The next call after a crash goes
/// to the successor.
pub struct SupervisedClient {
    inner: Arc<Inner>,
    names: Vec<String>,
    current: Option<Conn>,
    /// Dead connections with calls still to wait for (their replies from
    /// before the crash are still in their rings).
    old: Vec<Conn>,
    calls: HashMap<u64, InFlight>,
    /// Calls whose `SupervisedPending` was dropped, not yet forgotten.
    given_up: GivenUp,
    next: u64,
    /// When a connection was last seen dead, until a call succeeds again.
    died_at: Option<Instant>,
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

fn resolve(client: &Client, names: &[String]) -> Vec<Option<MethodId>> {
    names.iter().map(|n| client.method(n).ok()).collect()
}

impl SupervisedClient {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        SupervisedClient {
            inner,
            names: Vec::new(),
            current: None,
            old: Vec::new(),
            calls: HashMap::new(),
            given_up: GivenUp::default(),
            next: 1,
            died_at: None,
        }
    }

    /// The serving connection, (re)connecting if there is none or it died.
    fn ensure(&mut self, deadline: Instant) -> Result<&mut Conn, CallError> {
        if self.current.as_ref().is_some_and(|c| !c.client.is_alive()) {
            self.retire_current();
        }
        if self.current.is_none() {
            let Connection { client, live } = self.inner.connect(deadline)?;
            let ids = resolve(&client, &self.names);
            if self.died_at.is_none() {
                // Not a recovery: nothing to slow down.
                self.inner.refill_premade();
            }
            tracing::debug!(target: "isocall::supervise", service = %self.inner.service(),
                pid = live.pid, "connected to an instance");
            let pool = client.pool().cloned();
            self.current = Some(Conn {
                client,
                pool,
                live,
                ids,
            });
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

    /// Forgets the calls whose `SupervisedPending` was dropped, then drops
    /// dead connections no call waits on (their segments and blobs go with
    /// them).
    fn drop_idle_old(&mut self) {
        let given_up =
            std::mem::take(&mut *self.given_up.lock().unwrap_or_else(|p| p.into_inner()));
        for seq in given_up {
            if let Some(call) = self.calls.remove(&seq)
                && let Some(conn) = self.conn_mut(call.conn)
            {
                conn.client.forget(call.pending);
            }
        }
        if self.old.is_empty() {
            return;
        }
        let (keep, idle): (Vec<Conn>, Vec<Conn>) = std::mem::take(&mut self.old)
            .into_iter()
            .partition(|c| self.calls.values().any(|k| k.conn == c.live.id));
        self.old = keep;
        for c in idle {
            self.inner.dispose(c.client);
        }
    }

    /// The method `name`, connecting first if needed.
    ///
    /// # Errors
    ///
    /// `NoSuchMethod`; as a call for the connection (`ServiceFailed`,
    /// `Timeout`).
    pub fn method(&mut self, name: &str) -> Result<ServiceMethod, CallError> {
        let deadline = crate::deadline_in(self.inner.call_timeout());
        let conn = self.ensure(deadline)?;
        let id = conn.client.method(name)?;
        let idempotent = conn.client.is_idempotent(id);
        let index = match self.names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                self.names.push(name.to_string());
                for c in self.current.iter_mut().chain(self.old.iter_mut()) {
                    c.ids.push(c.client.method(name).ok());
                }
                self.names.len() - 1
            }
        };
        Ok(ServiceMethod {
            index: index as u32,
            idempotent,
        })
    }

    /// The pool of the current connection (connecting first if needed):
    /// allocate request blobs here and pass their handles to the next
    /// call. Blobs sent on an instance that died since go with the next
    /// call to the successor (copied) while the dead connection is kept
    /// (a call waits on it); once it is dropped they are refused.
    ///
    /// # Errors
    ///
    /// As a call for the connection.
    pub fn pool(&mut self) -> Result<Option<Arc<Pool<SharedRegion>>>, CallError> {
        let deadline = crate::deadline_in(self.inner.call_timeout());
        Ok(self.ensure(deadline)?.client.pool().cloned())
    }

    /// The pid of the instance this client talks to now, if connected.
    pub fn server_pid(&self) -> Option<u32> {
        // Not `Client::server_pid`: the credentials of a socketpair are its
        // creator's (this process), so the supervisor's record is the truth.
        self.current.as_ref().map(|c| c.live.pid)
    }

    /// Calls started and not yet waited for.
    pub fn in_flight(&self) -> usize {
        self.calls.len()
    }

    fn method_id(&self, conn: &Conn, m: ServiceMethod) -> Result<MethodId, CallError> {
        conn.ids
            .get(m.index as usize)
            .copied()
            .flatten()
            .ok_or_else(|| {
                CallError::NoSuchMethod(
                    self.names
                        .get(m.index as usize)
                        .cloned()
                        .unwrap_or_else(|| format!("#{}", m.index)),
                )
            })
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
    /// As [`Client::start`]; `ServiceFailed` if the supervisor gave up;
    /// `PeerDied` if the successors kept dying until the deadline or the
    /// retry budget ran out; `Blob(NotInFlightHere)` for a blob in flight on no
    /// connection of this client (e.g. sent on an instance whose connection
    /// was dropped since).
    pub fn start<Req: Body>(
        &mut self,
        m: ServiceMethod,
        request: &Req,
        blobs: &[BlobHandle],
    ) -> Result<SupervisedPending, CallError> {
        let deadline = crate::deadline_in(self.inner.call_timeout());
        let r = self.start_until(m, request, blobs, deadline);
        if matches!(r, Err(CallError::PeerDied | CallError::ServiceFailed(_))) {
            self.inner.stats.add(Word::CallsFailed, 1);
        }
        r
    }

    fn start_until<Req: Body>(
        &mut self,
        m: ServiceMethod,
        request: &Req,
        blobs: &[BlobHandle],
        deadline: Instant,
    ) -> Result<SupervisedPending, CallError> {
        let mut blobs = blobs.to_vec();
        let mut tries = 0u32;
        loop {
            self.ensure(deadline)?;
            let conn = self.current.as_ref().expect("ensured");
            let id = self.method_id(conn, m)?;
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
            self.drop_idle_old();
            let mut keep = m.idempotent.then(Vec::new);
            let conn = self.current.as_mut().expect("ensured");
            let sent = conn.client.start_encoded(
                id,
                |buf| archive::write_into(request, buf),
                &blobs,
                keep.as_mut(),
            );
            match sent {
                Ok(pending) => {
                    let seq = self.next;
                    self.next += 1;
                    let conn = conn.live.id;
                    self.calls.insert(
                        seq,
                        InFlight {
                            conn,
                            pending,
                            method: m,
                            body: keep,
                            blobs,
                            deadline,
                            attempts: 0,
                        },
                    );
                    return Ok(SupervisedPending {
                        seq,
                        given_up: Some(self.given_up.clone()),
                    });
                }
                // Nothing was published: the successor gets it.
                Err(CallError::PeerDied)
                    if tries < self.inner.retries() && Instant::now() < deadline =>
                {
                    tries += 1;
                    self.retire_current();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for a started call; see [`Client::wait`]. If the server died,
    /// an idempotent call is sent again on the successor (blobs copied
    /// over) and waited for there. `read` gets the reply and its blobs,
    /// with the pool they are in ([`ReplyBlobs`]).
    ///
    /// # Errors
    ///
    /// As [`Client::wait`]: `PeerDied` for a call that is not idempotent
    /// (or out of retries) whose server died; `ServiceFailed` if the
    /// supervisor gave up.
    pub fn wait<Resp: Body, T>(
        &mut self,
        pending: SupervisedPending,
        deadline: Option<Instant>,
        read: impl FnOnce(&Resp::Archived, &ReplyBlobs<'_>) -> T,
    ) -> Result<T, CallError> {
        let mut pending = pending;
        // Waited for: not given up.
        pending.given_up = None;
        let mut call = self
            .calls
            .remove(&pending.seq)
            .ok_or_else(|| CallError::BadReply("not a call of this client".into()))?;
        let deadline = deadline.unwrap_or(call.deadline);
        let mut read = Some(read);
        let result = loop {
            let conn_id = call.conn;
            let outcome = match self.conn_mut(conn_id) {
                Some(conn) => {
                    let pool = conn.pool.as_ref();
                    conn.client.wait::<Resp, Option<T>>(
                        call.pending.again(),
                        Some(deadline),
                        |r, handles| {
                            let blobs = ReplyBlobs { handles, pool };
                            read.take().map(|f| f(r, &blobs))
                        },
                    )
                }
                None => Err(CallError::PeerDied),
            };
            match outcome {
                Ok(Some(v)) => {
                    if self.current.as_ref().is_some_and(|c| c.live.id == conn_id)
                        && let Some(t) = self.died_at.take()
                    {
                        let ns = t.elapsed().as_nanos() as u64;
                        self.inner.stats.add(Word::Recoveries, 1);
                        self.inner.stats.add(Word::RecoveryNanos, ns);
                        // Recovered: the work held back may go on.
                        self.inner.recovered();
                    }
                    break Ok(v);
                }
                Ok(None) => break Err(CallError::BadReply("reply read twice".into())),
                Err(CallError::PeerDied) => {
                    if self.current.as_ref().is_some_and(|c| c.live.id == conn_id) {
                        self.retire_current();
                    }
                    let retry = call.method.idempotent
                        && call.attempts < self.inner.retries()
                        && Instant::now() < deadline;
                    if !retry {
                        self.inner.stats.add(Word::CallsFailed, 1);
                        break Err(CallError::PeerDied);
                    }
                    if let Err(e) = self.resend(&mut call, deadline) {
                        if matches!(e, CallError::PeerDied | CallError::ServiceFailed(_)) {
                            self.inner.stats.add(Word::CallsFailed, 1);
                        }
                        break Err(e);
                    }
                }
                Err(CallError::ServiceFailed(e)) => {
                    self.inner.stats.add(Word::CallsFailed, 1);
                    break Err(CallError::ServiceFailed(e));
                }
                Err(e) => break Err(e),
            }
        };
        self.drop_idle_old();
        result
    }

    /// Sends `call` again on the serving instance (connecting to it), its
    /// blobs copied over from the instance it was last sent to; tries the
    /// next successor if that one is found dead before the request is out,
    /// within `deadline`. Counts one attempt per request sent.
    fn resend(&mut self, call: &mut InFlight, deadline: Instant) -> Result<(), CallError> {
        let body = call.body.take().unwrap_or_default();
        let r = (|| loop {
            self.ensure(deadline)?;
            let to = self.current.as_ref().expect("ensured");
            let id = self.method_id(to, call.method)?;
            if call.conn != to.live.id {
                call.blobs = self.move_blobs(call.conn, &call.blobs)?;
                call.conn = self.current.as_ref().expect("ensured").live.id;
            }
            let to = self.current.as_mut().expect("ensured");
            match to.client.start_raw(id, &body, &call.blobs) {
                Ok(p) => return Ok::<_, CallError>(p),
                // Not sent: the next successor, while there is time.
                Err(CallError::PeerDied) if Instant::now() < deadline => self.retire_current(),
                Err(e) => return Err(e),
            }
        })();
        call.body = Some(body);
        call.pending = r?;
        call.attempts += 1;
        self.inner.stats.add(Word::Retries, 1);
        tracing::debug!(target: "isocall::supervise", service = %self.inner.service(),
            attempt = call.attempts, "idempotent call sent again");
        Ok(())
    }

    /// Copies the blobs a call sent on dead connection `from` into the
    /// current connection's pool and sends them there.
    fn move_blobs(
        &mut self,
        from: u64,
        handles: &[BlobHandle],
    ) -> Result<Vec<BlobHandle>, CallError> {
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
            return Err(CallError::PeerDied);
        };
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            if h.class == LARGE_CLASS {
                // A large blob's memfd went to the dead server only.
                return Err(CallError::PeerDied);
            }
            let old = old_pool.take_back(h)?;
            let mut new = new_pool.alloc(old.len())?;
            new.copy_from_slice(&old);
            out.push(new.send()?);
        }
        Ok(out)
    }

    /// Waits for every call of `pending`, in order.
    pub fn wait_all<Resp: Body, T>(
        &mut self,
        pending: Vec<SupervisedPending>,
        deadline: Option<Instant>,
        mut read: impl FnMut(&Resp::Archived, &ReplyBlobs<'_>) -> T,
    ) -> Vec<Result<T, CallError>> {
        pending
            .into_iter()
            .map(|p| self.wait::<Resp, T>(p, deadline, &mut read))
            .collect()
    }

    /// Calls `m` and waits for its reply, read in place; see
    /// [`Client::call`].
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start) and [`wait`](Self::wait).
    pub fn call<Req: Body, Resp: Body, T>(
        &mut self,
        m: ServiceMethod,
        request: &Req,
        read: impl FnOnce(&Resp::Archived) -> T,
    ) -> Result<T, CallError> {
        let p = self.start(m, request, &[])?;
        self.wait::<Resp, T>(p, None, |r, _| read(r))
    }

    /// Calls `m` with blobs and a deadline; see [`Client::call_with`].
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start) and [`wait`](Self::wait).
    pub fn call_with<Req: Body, Resp: Body, T>(
        &mut self,
        m: ServiceMethod,
        request: &Req,
        blobs: &[BlobHandle],
        deadline: Option<Instant>,
        read: impl FnOnce(&Resp::Archived, &ReplyBlobs<'_>) -> T,
    ) -> Result<T, CallError> {
        let p = self.start(m, request, blobs)?;
        self.wait::<Resp, T>(p, deadline, read)
    }

    /// Sends a one-way message (never retried: at most once).
    ///
    /// # Errors
    ///
    /// As [`Client::send_message`].
    pub fn send_message<Msg: Body>(
        &mut self,
        m: ServiceMethod,
        message: &Msg,
        blobs: &[BlobHandle],
    ) -> Result<(), CallError> {
        let deadline = crate::deadline_in(self.inner.call_timeout());
        self.ensure(deadline)?;
        let conn = self.current.as_ref().expect("ensured");
        let id = self.method_id(conn, m)?;
        check_blobs(conn, blobs)?;
        let conn = self.current.as_mut().expect("ensured");
        conn.client.send_message(id, message, blobs)
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
            return Err(CallError::Blob(BlobError::NotInFlightHere {
                class: h.class,
                slot: h.slot,
                generation: h.generation,
            }));
        }
    }
    Ok(())
}
