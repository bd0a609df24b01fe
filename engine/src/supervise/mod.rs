//! Supervision: a service run as a babysat child process, restarted when
//! it dies, and a client that rides through the restarts.
//!
//! A [`Supervisor`] starts the service (a command line, or this executable
//! re-entered in a named [role]) with one end of a `SOCK_SEQPACKET`
//! socketpair as its standard input: the control socket. The child builds
//! its server with [`ServerBuilder::supervised`](crate::rpc::ServerBuilder::supervised),
//! which takes that socket, arms `PR_SET_PDEATHSIG` (so the child dies with
//! the thread that started it, the supervisor's monitor thread, which
//! lives as long as the supervisor) and serves every connection the
//! supervisor sends over it: a [`SupervisedClient`] asks for a connection by
//! sending one end of a fresh socketpair and runs the ordinary handshake
//! over the other end.
//!
//! The monitor thread waits in `poll` on the children's pidfds (no
//! `SIGCHLD` handler, no polling loop), reaps a child that exits, logs it
//! (`tracing`, target `isocall::supervise`) and starts a successor: at once
//! after an instance that served (answered a handshake), after an
//! exponential backoff after one that died before serving. More than N
//! restarts within T seconds stop the loop: the supervisor fails every
//! call with [`SupervisedError::Service`] naming the service and its last
//! exit status or signal.
//!
//! With [`standby(n)`](SupervisorBuilder::standby) the supervisor also keeps
//! n spare instances started, each with a connection already handshaken:
//! after a crash the first client to notice promotes a spare and sends its
//! call on the waiting connection, and a new spare starts in the
//! background.
//!
//! Counters ([`SupervisorStats`]) live in a small memfd named
//! `isocall:supervisor:<service>`, which `isocall inspect` shows.

mod builder;
mod child;
mod client;
mod error;
mod monitor;
mod stats;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use builder::SupervisorBuilder;
pub use child::{NotSupervised, role};
pub use client::SupervisedClient;
pub use error::{LastExit, ServiceFailure, SuperviseError, SupervisedError};
pub use stats::{MEMFD_PREFIX, SupervisorState, SupervisorStats, read_stats};
use stats::{StatsBlock, Word};

use crate::rpc::{CallError, Client, ConnectError, HandshakeError, hand_off};
use crate::segment::{Segment, SegmentLayout};
use crate::stream::{Address, Listener, Security, StreamError};
use crate::sys::{EventFd, PidFd, seqpacket_pair};

/// Longest a spare's replacement waits for the recovery it would slow.
const SPARE_HOLD: Duration = Duration::from_millis(20);

/// Environment variable naming the service a supervised child serves.
pub const ENV_SERVICE: &str = "ISOCALL_SERVICE";
/// Environment variable with the supervising process's pid.
pub const ENV_SUPERVISOR_PID: &str = "ISOCALL_SUPERVISOR_PID";
/// Environment variable naming the role this executable was re-entered in.
pub const ENV_ROLE: &str = "ISOCALL_ROLE";
/// Environment variable with the stream address a supervised server
/// listens on too (see [`SupervisorBuilder::address`]).
pub const ENV_LISTEN: &str = "ISOCALL_LISTEN";

/// Binds and listens on a service's stream address, for its instances to
/// accept on (the supervisor never accepts).
pub(crate) fn bind_address(address: &Address) -> Result<Listener, StreamError> {
    Listener::bind(std::slice::from_ref(address), Security::Anyone)
}

/// Tag of the first message on an instance's control socket when the
/// service has a stream address: the listening socket, attached.
pub(crate) const LISTENER: u8 = b'L';

/// First pause before connecting again to an instance that does not listen
/// on the service's address yet.
const NOT_LISTENING_FIRST: Duration = Duration::from_micros(200);

/// A started instance, as clients see it.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) id: u64,
    pub(crate) pid: u32,
    control: OwnedFd,
    /// Set once a handshake with it succeeded.
    served: AtomicBool,
}

#[derive(Default)]
struct State {
    active: Option<Arc<Live>>,
    /// Spare instances, started, not yet serving.
    spares: VecDeque<Arc<Live>>,
    /// Connections handshaken ahead of need, by instance id.
    ready: Vec<(u64, Client)>,
    failed: Option<ServiceFailure>,
    stopping: bool,
    /// Ids of instances known dead (reported by a client or reaped), the
    /// last 64.
    dead: VecDeque<u64>,
    /// Instances replaced but not yet reaped (they may still accept on
    /// the service's stream socket); kept by the monitor.
    lingering: usize,
    /// A spare was promoted: its replacement waits until the promoted one
    /// answered (a client reports the recovery) or until this instant, so
    /// that starting a process does not compete for the CPU with the
    /// recovery.
    hold_spares_until: Option<Instant>,
}

impl State {
    /// Records that instance `id` died; promotes a spare if it was the
    /// active one. Returns the connections to it that were waiting (to be
    /// dropped outside the lock), or `None` if its death was known.
    fn mark_dead(&mut self, id: u64) -> Option<Vec<Client>> {
        if self.dead.contains(&id) {
            return None;
        }
        self.dead.push_back(id);
        if self.dead.len() > 64 {
            self.dead.pop_front();
        }
        if self.active.as_ref().is_some_and(|a| a.id == id) {
            self.active = None;
        }
        self.spares.retain(|l| l.id != id);
        if self.active.is_none() {
            self.active = self.spares.pop_front();
            if self.active.is_some() {
                self.hold_spares_until = Some(Instant::now() + SPARE_HOLD);
            }
        }
        let (gone, kept) = std::mem::take(&mut self.ready)
            .into_iter()
            .partition(|(i, _)| *i == id);
        self.ready = kept;
        Some(gone.into_iter().map(|(_, c)| c).collect())
    }

    /// Drops everything (instances retired or failed).
    fn clear(&mut self) -> Vec<Client> {
        self.active = None;
        self.spares.clear();
        std::mem::take(&mut self.ready)
            .into_iter()
            .map(|(_, c)| c)
            .collect()
    }
}

pub(crate) struct Inner {
    config: SupervisorBuilder,
    /// The service's stream address, bound once and handed to each
    /// instance (see [`SupervisorBuilder::address`]); dropped (a Unix
    /// socket file removed) when the supervisor is dropped or the service
    /// fails.
    listener: Mutex<Option<Listener>>,
    state: Mutex<State>,
    changed: Condvar,
    wake: EventFd,
    pub(crate) stats: StatsBlock,
    premade: Mutex<Premade>,
    /// Connections to dead instances, dropped by the monitor thread: an
    /// unmap and the release of a segment's memory take milliseconds that
    /// must not delay the call that found the death.
    graveyard: Mutex<Vec<Client>>,
    /// The monitor is dropping connections it took from the graveyard.
    burying: AtomicBool,
    /// Background threads (a spare's handshake, a segment made ahead),
    /// joined when the supervisor is dropped; `None` from then on, when
    /// no more are started.
    helpers: Mutex<Option<Vec<JoinHandle<()>>>>,
}

/// A segment made ahead of need for the next connection, so that an
/// instance's first handshake does not wait for one to be made (reserving
/// and zeroing a segment's memory costs milliseconds).
#[derive(Default)]
struct Premade {
    /// The layout the service's server uses, learnt from a connection.
    layout: Option<SegmentLayout>,
    ready: Option<Segment>,
    making: bool,
    made: u64,
}

/// A connection to an instance, with the instance it goes to.
pub(crate) struct Connection {
    pub(crate) client: Client,
    pub(crate) live: Arc<Live>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The service's listening socket (`None` without an address, or once
    /// the service failed).
    fn lock_listener(&self) -> MutexGuard<'_, Option<Listener>> {
        self.listener.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A descriptor of the service's socket for the monitor to watch for
    /// a hang-up (a duplicate: the lock is not held across the wait).
    pub(super) fn listener_watch(&self) -> Option<OwnedFd> {
        let l = self.lock_listener();
        let fd = l.as_ref()?.poll_fds().into_iter().next()?;
        fd.try_clone_to_owned().ok()
    }

    /// The watched socket hung up: if it no longer listens (an instance
    /// shut it down), it is let go, to be bound again before the next
    /// start, and the serving instance, which no new client can reach, is
    /// replaced.
    pub(super) fn listener_hung_up(&self) {
        {
            let mut l = self.lock_listener();
            if l.as_ref().is_none_or(Listener::listens) {
                return;
            }
            *l = None;
        }
        tracing::warn!(target: "isocall::supervise", service = %self.config.service,
            "the service's socket no longer listens (an instance shut it down); replacing the instance");
        let active = self.lock().active.as_ref().map(|a| a.id);
        if let Some(id) = active {
            self.report_dead(id);
        }
    }

    /// Binds the service's address again if its socket no longer listens:
    /// every instance holds the socket, and one (buggy or hostile) that
    /// shut it down stopped it listening for all of them, its successors
    /// included.
    ///
    /// # Errors
    ///
    /// Why the address cannot be bound again: `EADDRINUSE` while an
    /// instance on its way out still holds the old socket (a Unix name),
    /// or someone took the port meanwhile.
    pub(super) fn relisten(&self) -> Result<(), StreamError> {
        let Some(address) = self
            .config
            .address
            .as_ref()
            .and_then(|e| e.stream_address())
        else {
            return Ok(());
        };
        let mut l = self.lock_listener();
        if l.as_ref().is_some_and(Listener::listens) {
            return Ok(());
        }
        // The old socket goes first (a Unix socket file with it).
        drop(l.take());
        *l = Some(bind_address(address)?);
        Ok(())
    }

    /// Wakes the waiters on `changed` after a change made outside the
    /// state lock (the premade segment, the graveyard). A waiter checks
    /// those while holding the state lock and then waits: taking the lock
    /// here, after the change, means the waiter either saw the change or
    /// is already waiting, so the notification cannot fall in between.
    fn notify_changed(&self) {
        drop(self.lock());
        self.changed.notify_all();
    }

    /// Starts a background helper thread, to be joined when the
    /// supervisor is dropped. Returns `Ok(false)` (and starts nothing)
    /// once the supervisor is being dropped.
    fn spawn_helper(&self, name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<bool> {
        let mut helpers = self.helpers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = helpers.as_mut() else {
            return Ok(false);
        };
        // Finished ones need no join: forget them, so the list stays short.
        list.retain(|t| !t.is_finished());
        list.push(std::thread::Builder::new().name(name.into()).spawn(f)?);
        Ok(true)
    }

    /// Joins every helper thread and lets no new one start.
    fn join_helpers(&self) {
        let list = self
            .helpers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        for t in list {
            let _ = t.join();
        }
    }

    /// A client's call succeeded on the successor of a dead instance: the
    /// background work held back for the recovery may go on.
    pub(crate) fn recovered(self: &Arc<Self>) {
        let held = self.lock().hold_spares_until.take().is_some();
        if held {
            let _ = self.wake.notify();
        }
        self.refill_premade();
    }

    /// Hands a dead connection to the monitor thread to drop.
    pub(crate) fn dispose(&self, client: Client) {
        self.graveyard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(client);
        let _ = self.wake.notify();
    }

    /// Takes the segment made ahead of need, if there is one.
    fn take_premade(&self) -> Option<Segment> {
        self.premade
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ready
            .take()
    }

    /// Has the next segment made in the background, at the lowest CPU
    /// priority, unless one is ready or being made. Called once the
    /// connection that took the last one has answered a call (not during
    /// a recovery, which it would slow down).
    pub(crate) fn refill_premade(self: &Arc<Self>) {
        let mut p = self.premade.lock().unwrap_or_else(|p| p.into_inner());
        if p.ready.is_some() {
            return;
        }
        if let Some(layout) = p.layout.filter(|_| !p.making) {
            p.making = true;
            p.made += 1;
            let name = format!("isocall:{}:premade{}", self.config.service, p.made);
            let inner = self.clone();
            let r = self.spawn_helper("isocall-premade", move || {
                // This thread only: nice 19.
                let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19);
                let seg = Segment::create(&name, &layout)
                    .inspect_err(|e| {
                        tracing::debug!(target: "isocall::supervise", error = %e,
                            "no segment made ahead")
                    })
                    .ok();
                let mut p = inner.premade.lock().unwrap_or_else(|p| p.into_inner());
                p.making = false;
                if p.layout == Some(layout) {
                    p.ready = seg;
                }
                drop(p);
                inner.notify_changed();
            });
            if !matches!(r, Ok(true)) {
                p.making = false;
            }
        }
    }

    /// Records the layout the service uses (from a connection), so that
    /// segments can be made ahead for its next instances.
    fn learn_layout(self: &Arc<Self>, layout: SegmentLayout) {
        let mut p = self.premade.lock().unwrap_or_else(|p| p.into_inner());
        if p.layout != Some(layout) {
            p.layout = Some(layout);
            p.ready = None;
            drop(p);
            self.refill_premade();
        }
    }

    /// Sends a new connection to `live` (with a segment made ahead, if
    /// there is one) and handshakes over it, waiting at most
    /// `handshake_timeout` for the hello.
    fn connect_to(
        self: &Arc<Self>,
        live: &Live,
        handshake_timeout: Duration,
    ) -> Result<Client, ConnectError> {
        if let Some(address) = &self.config.address {
            return self.connect_at(address, live, handshake_timeout);
        }
        let (ours, theirs) = seqpacket_pair()?;
        let seg = self.take_premade();
        hand_off(
            live.control.as_fd(),
            theirs.as_fd(),
            seg.as_ref().map(Segment::fd),
            crate::deadline_in(handshake_timeout),
        )?;
        drop(theirs);
        drop(seg);
        // The socket is ours (a socketpair made here and handed only to
        // our own child): its credentials are this process's own.
        let options = self
            .config
            .client
            .clone()
            .handshake_timeout(handshake_timeout)
            .server_policy(crate::rpc::Policy::Anyone);
        let client = Client::over_socket(ours, options)?;
        self.learn_layout(client.layout());
        Ok(client)
    }

    /// Connects to `live` at the service's stream address: again while
    /// another process answers (the instance it replaces, still going:
    /// all instances accept on one socket) or nobody listens, until the
    /// handshake timeout. A socket that an instance shut down fails the
    /// connection as a dead instance's would.
    fn connect_at(
        &self,
        address: &crate::rpc::Endpoint,
        live: &Live,
        handshake_timeout: Duration,
    ) -> Result<Client, ConnectError> {
        let deadline = crate::deadline_in(handshake_timeout);
        let mut pause = NOT_LISTENING_FIRST;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConnectError::Timeout(handshake_timeout));
            }
            let options = self.config.client.clone().handshake_timeout(left);
            match Client::connect_with(address, options) {
                Ok(c) if c.server_pid() == Some(live.pid) => return Ok(c),
                Ok(c) => {
                    tracing::debug!(target: "isocall::supervise", pid = ?c.server_pid(),
                        expected = live.pid, "another process answers at the address");
                }
                Err(ConnectError::Connect { source, .. })
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                    ) =>
                {
                    if !self.lock_listener().as_ref().is_some_and(Listener::listens) {
                        // An instance shut the socket down under `live`,
                        // which can no longer be reached: it is replaced
                        // as if dead, and its successor gets the address
                        // bound again (see `relisten`).
                        return Err(ConnectError::Handshake(HandshakeError::Closed));
                    }
                }
                // Accepted, then dropped before its hello: by an instance
                // on its way out (all accept on one socket) while one is,
                // else by `live` itself (a dead instance's error).
                Err(ConnectError::Handshake(HandshakeError::Closed))
                    if self.lock().lingering > 0 => {}
                Err(e) => return Err(e),
            }
            if process_gone(live.pid) {
                // Gone before it listened: its successor is tried.
                return Err(ConnectError::Handshake(HandshakeError::Closed));
            }
            if Instant::now() + pause >= deadline {
                return Err(ConnectError::Timeout(handshake_timeout));
            }
            let word = std::sync::atomic::AtomicU32::new(0);
            let _ = crate::sys::futex_wait(&word, 0, Some(pause));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    pub(crate) fn service(&self) -> &str {
        &self.config.service
    }

    pub(crate) fn retries(&self) -> u32 {
        self.config.retries
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        self.config.client.call_timeout
    }

    /// A client saw instance `id` die: promote a spare now rather than
    /// when the monitor reaps it.
    pub(crate) fn report_dead(&self, id: u64) {
        let mut st = self.lock();
        if let Some(gone) = st.mark_dead(id) {
            self.publish_pids(&st);
            // With a spare promoted nothing is urgent: the monitor learns
            // of the death from the pidfd, rather than contend for the
            // state with the recovering client now. Without one it must
            // start the successor at once.
            let urgent = st.active.is_none();
            drop(st);
            self.changed.notify_all();
            if urgent {
                let _ = self.wake.notify();
            }
            drop(gone);
        }
    }

    /// Fails the supervisor (the first reason given stays): every call
    /// gets `Service` with `failure`, the connections waiting are dropped
    /// and the counters say so.
    pub(super) fn set_failed(&self, failure: ServiceFailure) {
        // The address is let go before anyone can see the failure: a
        // client that connects then is refused at once, where the
        // socket's backlog would hold it until its handshake timeout.
        drop(self.lock_listener().take());
        let mut st = self.lock();
        st.failed.get_or_insert(failure);
        let gone = st.clear();
        self.publish_pids(&st);
        drop(st);
        drop(gone);
        self.stats.set_state(SupervisorState::Failed);
        self.changed.notify_all();
    }

    fn publish_pids(&self, st: &State) {
        self.stats.set(
            Word::ServicePid,
            st.active.as_ref().map_or(0, |a| a.pid.into()),
        );
        self.stats.set(Word::SparesReady, st.ready.len() as u64);
    }

    /// A connection to the serving instance, waiting (until `deadline`) for
    /// one to be started if none is.
    pub(crate) fn connect(
        self: &Arc<Self>,
        deadline: Instant,
    ) -> Result<Connection, SupervisedError> {
        let mut avoid: Option<u64> = None;
        loop {
            let live = {
                let mut st = self.lock();
                loop {
                    if let Some(f) = &st.failed {
                        return Err(f.clone().into());
                    }
                    if st.stopping {
                        return Err(ServiceFailure::Stopping {
                            service: self.config.service.clone(),
                        }
                        .into());
                    }
                    if let Some(a) = st.active.clone().filter(|a| Some(a.id) != avoid) {
                        if let Some(pos) = st.ready.iter().position(|(id, _)| *id == a.id) {
                            let (_, client) = st.ready.swap_remove(pos);
                            self.publish_pids(&st);
                            return Ok(Connection { client, live: a });
                        }
                        break a;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(CallError::Timeout.into());
                    }
                    st = self
                        .changed
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            };
            // The handshake waits as long as the caller may: an instance
            // still starting (slower than the handshake timeout) is waited
            // for, with one connection sent to it, not one per timeout.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CallError::Timeout.into());
            }
            match self.connect_to(&live, left) {
                Ok(client) => {
                    live.served.store(true, Ordering::Relaxed);
                    return Ok(Connection { client, live });
                }
                Err(e) if instance_gone(&e) || process_gone(live.pid) => {
                    tracing::debug!(target: "isocall::supervise", service = %self.config.service,
                        pid = live.pid, error = %e, "instance gone during the handshake");
                    avoid = Some(live.id);
                    self.report_dead(live.id);
                }
                // Alive but not answering by the caller's deadline.
                Err(ConnectError::Timeout(_)) => return Err(CallError::Timeout.into()),
                Err(e) => {
                    return Err(ServiceFailure::Handshake {
                        service: self.config.service.clone(),
                        pid: live.pid,
                        source: Arc::new(e),
                    }
                    .into());
                }
            }
        }
    }
}

/// Whether process `pid` has exited (or is no more): a handshake that
/// failed in any way with a dead instance is retried on its successor.
fn process_gone(pid: u32) -> bool {
    // Our child: its pid is not reused before the monitor reaps it, so
    // ESRCH or an exited pidfd both mean this instance.
    PidFd::open(pid).map_or(true, |p| p.has_exited().unwrap_or(true))
}

/// A connection error that means the instance died (or is dying).
fn instance_gone(e: &ConnectError) -> bool {
    match e {
        ConnectError::Handshake(HandshakeError::Closed) => true,
        ConnectError::Io(io) | ConnectError::Connect { source: io, .. } => matches!(
            io.kind(),
            std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// A running supervisor. Dropping it retires every instance (closes their
/// control sockets, waits the grace period, then kills) and reaps them.
pub struct Supervisor {
    inner: Arc<Inner>,
    monitor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("service", &self.inner.config.service)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Supervisor {
    /// A supervisor of `program` with `args`, with the defaults (see
    /// [`SupervisorBuilder`]).
    pub fn command(
        service: &str,
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> SupervisorBuilder {
        SupervisorBuilder::command(service, program, args)
    }

    /// A supervisor of this executable in `role`.
    ///
    /// # Errors
    ///
    /// The path of the current executable cannot be found.
    pub fn role(service: &str, role: &str) -> std::io::Result<SupervisorBuilder> {
        SupervisorBuilder::role(service, role)
    }

    /// The service's name.
    pub fn service(&self) -> &str {
        &self.inner.config.service
    }

    /// A client of the service; it connects on first use and again after
    /// each crash.
    pub fn client(&self) -> SupervisedClient {
        SupervisedClient::new(self.inner.clone())
    }

    /// The counters.
    pub fn stats(&self) -> SupervisorStats {
        self.inner.stats.snapshot()
    }

    /// Waits until an instance is started and serving (a handshake
    /// succeeded) and returns its pid.
    ///
    /// # Errors
    ///
    /// As a call: `Service`, `Timeout`.
    pub fn wait_serving(&self, timeout: Duration) -> Result<u32, SupervisedError> {
        let conn = self.inner.connect(crate::deadline_in(timeout))?;
        Ok(conn.live.pid)
    }

    /// Waits until `n` spares have a connection handshaken and waiting
    /// (see [`SupervisorBuilder::standby`]); false if that did not happen
    /// within `timeout` (or the supervisor failed).
    pub fn wait_spares_ready(&self, n: usize, timeout: Duration) -> bool {
        let deadline = crate::deadline_in(timeout);
        let mut st = self.inner.lock();
        loop {
            if st.ready.len() >= n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || st.failed.is_some() || st.stopping {
                return false;
            }
            st = self
                .inner
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until the supervisor has nothing left to do in the
    /// background: an instance serving, every spare handshaken, a segment
    /// made ahead for the next connection, dead connections dropped. A
    /// benchmark waits for this between crashes, so that each crash meets
    /// the steady state a long-running service would be in. False if that
    /// did not happen within `timeout`.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = crate::deadline_in(timeout);
        let inner = &self.inner;
        let mut st = inner.lock();
        loop {
            let premade_ready = {
                let p = inner.premade.lock().unwrap_or_else(|p| p.into_inner());
                p.layout.is_none() || p.ready.is_some()
            };
            let buried = {
                let g = inner.graveyard.lock().unwrap_or_else(|p| p.into_inner());
                // Acquire: pairs with the monitor's Release store after it
                // dropped what it took (read under the lock it is set in).
                g.is_empty() && !inner.burying.load(Ordering::Acquire)
            };
            if st.active.is_some()
                && st.ready.len() >= inner.config.standby
                && premade_ready
                && buried
            {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || st.failed.is_some() || st.stopping {
                return false;
            }
            st = inner
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Where the service's clients connect over a stream, if it was given
    /// an [`address`](SupervisorBuilder::address): the address as bound
    /// (a TCP port 0 replaced by the port picked), with the clients'
    /// compression and TLS settings. A client that is not the
    /// supervisor's own (a [`Client`] in another program) dials this.
    pub fn address(&self) -> Option<&crate::rpc::Endpoint> {
        self.inner.config.address.as_ref()
    }

    /// The pid of the instance serving now, if one is.
    pub fn service_pid(&self) -> Option<u32> {
        self.inner.lock().active.as_ref().map(|a| a.pid)
    }

    /// The pids of the spares started now.
    pub fn spare_pids(&self) -> Vec<u32> {
        self.inner.lock().spares.iter().map(|l| l.pid).collect()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.inner.lock().stopping = true;
        self.inner.changed.notify_all();
        let _ = self.inner.wake.notify();
        if let Some(m) = self.monitor.take() {
            let _ = m.join();
        }
        // The address goes with the supervisor, though its clients may
        // outlive it (a later supervisor may bind it again).
        drop(self.inner.lock_listener().take());
        // The instances are gone, so a spare's handshake still under way
        // ends at once; no helper outlives the supervisor.
        self.inner.join_helpers();
    }
}
