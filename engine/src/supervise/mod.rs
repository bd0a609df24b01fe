//! Supervision: a service run as a babysat child process, restarted when
//! it dies, and a client that rides through the restarts.
//!
//! A [`Supervisor`] starts the service (a command line, or this executable
//! re-entered in a named [role](role)) with one end of a `SOCK_SEQPACKET`
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
//! call with [`CallError::ServiceFailed`](crate::rpc::CallError::ServiceFailed)
//! naming the service and its last exit status or signal.
//!
//! With [`standby(n)`](SupervisorBuilder::standby) the supervisor also keeps
//! n spare instances started, each with a connection already handshaken:
//! after a crash the first client to notice promotes a spare and sends its
//! call on the waiting connection, and a new spare starts in the
//! background.
//!
//! Counters ([`SupervisorStats`]) live in a small memfd named
//! `isocall:supervisor:<service>`, which `isocall inspect` shows.

mod client;
mod stats;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use client::{ReplyBlobs, ServiceMethod, SupervisedClient, SupervisedPending};
pub use stats::{MEMFD_PREFIX, SupervisorState, SupervisorStats, read_stats};
use stats::{StatsBlock, Word};

use crate::rpc::{CallError, Client, ClientOptions, ConnectError};
use crate::segment::{Segment, SegmentLayout};
use crate::sys::{EventFd, PidFd, is_seqpacket, poll_readable, send_with_fds, seqpacket_pair};

/// Longest a spare's replacement waits for the recovery it would slow.
const SPARE_HOLD: Duration = Duration::from_millis(20);

/// Tag of a supervisor's control message carrying one connected socket.
pub const CONNECT: u8 = b'C';

/// Environment variable naming the service a supervised child serves.
pub const ENV_SERVICE: &str = "ISOCALL_SERVICE";
/// Environment variable with the supervising process's pid.
pub const ENV_SUPERVISOR_PID: &str = "ISOCALL_SUPERVISOR_PID";
/// Environment variable naming the role this executable was re-entered in.
pub const ENV_ROLE: &str = "ISOCALL_ROLE";

/// The service role this process was started in by a [`Supervisor`] built
/// with [`SupervisorBuilder::role`], if it was: a binary that holds both
/// sides checks this first thing in `main` and, for `Some(role)`, builds
/// its server with `ServerBuilder::supervised()` and serves.
pub fn role() -> Option<String> {
    std::env::var_os(ENV_SUPERVISOR_PID)?;
    std::env::var(ENV_ROLE).ok()
}

/// What a supervised child takes from its supervisor.
pub(crate) struct ChildEnv {
    pub(crate) control: OwnedFd,
    pub(crate) service: String,
}

impl ChildEnv {
    /// Takes the control socket from standard input (pointing standard
    /// input at `/dev/null` instead), arms `PR_SET_PDEATHSIG` and checks
    /// that the supervisor did not die before it was armed.
    pub(crate) fn take() -> Result<ChildEnv, String> {
        let not_supervised =
            |what: &str| format!("{what}: this process was not started by an isocall Supervisor");
        let service = std::env::var(ENV_SERVICE).map_err(|_| not_supervised(ENV_SERVICE))?;
        let parent: i32 = std::env::var(ENV_SUPERVISOR_PID)
            .ok()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| not_supervised(ENV_SUPERVISOR_PID))?;
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
        // Armed now; a supervisor that died before has made us someone
        // else's child.
        let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
        if ppid != parent {
            return Err(format!(
                "the supervisor (pid {parent}) of service {service:?} is gone (parent is now {ppid})"
            ));
        }
        let control = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("standard input: {e}"))?;
        if !is_seqpacket(control.as_fd()) {
            return Err(
                "standard input is not the supervisor's control socket (a SOCK_SEQPACKET socket)"
                    .into(),
            );
        }
        let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
        rustix::stdio::dup2_stdin(&null).map_err(|e| format!("dup2 onto stdin: {e}"))?;
        Ok(ChildEnv { control, service })
    }
}

/// What the supervisor starts.
#[derive(Clone, Debug)]
enum Program {
    Command {
        program: PathBuf,
        args: Vec<OsString>,
    },
    Role {
        exe: PathBuf,
        role: String,
    },
}

impl Program {
    /// The file executed.
    fn path(&self) -> &Path {
        match self {
            Program::Command { program, .. } => program,
            Program::Role { exe, .. } => exe,
        }
    }
}

/// Why a supervisor could not start.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The configuration is not valid.
    #[error("bad supervisor configuration: {0}")]
    Config(String),
    /// The OS refused a descriptor, a thread or the first process.
    #[error("supervisor of {service:?}: {source}")]
    Io {
        /// The service.
        service: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Builds a [`Supervisor`].
#[derive(Clone, Debug)]
pub struct SupervisorBuilder {
    service: String,
    program: Program,
    envs: Vec<(OsString, OsString)>,
    backoff: (Duration, Duration),
    intensity: (u32, Duration),
    standby: usize,
    retries: u32,
    client: ClientOptions,
    grace: Duration,
}

impl SupervisorBuilder {
    fn new(service: &str, program: Program) -> Self {
        SupervisorBuilder {
            service: service.to_string(),
            program,
            envs: Vec::new(),
            backoff: (Duration::from_millis(10), Duration::from_secs(1)),
            intensity: (10, Duration::from_secs(10)),
            standby: 0,
            retries: 3,
            client: ClientOptions::default(),
            grace: Duration::from_secs(2),
        }
    }

    /// Supervises `program` run with `args`. The program must build its
    /// server with `ServerBuilder::supervised()`.
    pub fn command(
        service: &str,
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        Self::new(
            service,
            Program::Command {
                program: program.into(),
                args: args.into_iter().map(Into::into).collect(),
            },
        )
    }

    /// Supervises this executable re-entered in `role` (see [`role`]).
    ///
    /// # Errors
    ///
    /// The path of the current executable cannot be found.
    pub fn role(service: &str, role: &str) -> std::io::Result<Self> {
        Ok(Self::new(
            service,
            Program::Role {
                exe: std::env::current_exe()?,
                role: role.to_string(),
            },
        ))
    }

    /// Sets an environment variable for the service's processes.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Backoff before restarting an instance that died before it served:
    /// `initial`, doubling with each such death in a row, at most `max`
    /// (defaults 10 ms and 1 s). An instance that answered a handshake is
    /// replaced at once.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = (initial, max.max(initial));
        self
    }

    /// The restart-intensity limit: more than `restarts` restarts within
    /// `period` stop the supervisor with an error (default 10 in 10 s).
    ///
    /// `restarts == 0` means never restart: the first death of an instance
    /// (or the first start that fails) fails the supervisor, naming that
    /// exit. A `period` of 0 is refused by [`spawn`](Self::spawn).
    #[must_use]
    pub fn intensity(mut self, restarts: u32, period: Duration) -> Self {
        self.intensity = (restarts, period);
        self
    }

    /// Keeps `n` spare instances started and handshaken (default 0).
    #[must_use]
    pub fn standby(mut self, n: usize) -> Self {
        self.standby = n;
        self
    }

    /// How many times one idempotent call is sent again after its server
    /// died (default 3), within its deadline.
    #[must_use]
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Options of the clients' connections (wait strategy, handshake and
    /// call timeouts).
    #[must_use]
    pub fn client_options(mut self, o: ClientOptions) -> Self {
        self.client = o;
        self
    }

    /// How long a retired instance may take to exit before it is killed
    /// (default 2 s).
    #[must_use]
    pub fn grace(mut self, d: Duration) -> Self {
        self.grace = d;
        self
    }

    /// Starts the monitor thread, which starts the service (and the
    /// spares) at once.
    ///
    /// # Errors
    ///
    /// A bad configuration (empty service name, an intensity period of
    /// 0); the OS refusing the counters' memfd, an eventfd or the thread.
    /// A service that cannot be started shows up as failed calls, with the
    /// reason: at once for a program that cannot run at all (missing, not
    /// executable), after the intensity limit for a passing shortage
    /// (`EAGAIN`, `ENOMEM`, `EMFILE`, `ENFILE`, `EINTR`), which is retried
    /// with the backoff.
    pub fn spawn(self) -> Result<Supervisor, SuperviseError> {
        if self.service.is_empty() || self.service.contains(['\0', '/']) {
            return Err(SuperviseError::Config(format!(
                "service name {:?} must be non-empty, without '/' or NUL",
                self.service
            )));
        }
        if self.intensity.1.is_zero() {
            return Err(SuperviseError::Config(
                "the intensity period must be longer than 0".into(),
            ));
        }
        let io = |source| SuperviseError::Io {
            service: self.service.clone(),
            source,
        };
        let stats = StatsBlock::create(&self.service, self.standby).map_err(io)?;
        let wake = EventFd::new().map_err(io)?;
        let inner = Arc::new(Inner {
            config: self,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            wake,
            stats,
            premade: Mutex::new(Premade::default()),
            graveyard: Mutex::new(Vec::new()),
            helpers: Mutex::new(Some(Vec::new())),
        });
        let sh = inner.clone();
        let monitor = std::thread::Builder::new()
            .name(format!("isocall-supervise-{}", inner.config.service))
            .spawn(move || Monitor::new(sh).run())
            .map_err(|source| SuperviseError::Io {
                service: inner.config.service.clone(),
                source,
            })?;
        Ok(Supervisor {
            inner,
            monitor: Some(monitor),
        })
    }
}

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
    failed: Option<String>,
    stopping: bool,
    /// Ids of instances known dead (reported by a client or reaped), the
    /// last 64.
    dead: VecDeque<u64>,
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
    state: Mutex<State>,
    changed: Condvar,
    wake: EventFd,
    pub(crate) stats: StatsBlock,
    premade: Mutex<Premade>,
    /// Connections to dead instances, dropped by the monitor thread: an
    /// unmap and the release of a segment's memory take milliseconds that
    /// must not delay the call that found the death.
    graveyard: Mutex<Vec<Client>>,
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
        let (ours, theirs) = seqpacket_pair()?;
        let seg = self.take_premade();
        let mut fds = vec![theirs.as_fd()];
        fds.extend(seg.as_ref().map(Segment::fd));
        send_with_fds(live.control.as_fd(), &[CONNECT], &fds)?;
        drop(fds);
        drop(theirs);
        drop(seg);
        let options = ClientOptions {
            handshake_timeout,
            ..self.config.client
        };
        let client = Client::over_socket(ours, options)?;
        self.learn_layout(client.layout());
        Ok(client)
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

    fn publish_pids(&self, st: &State) {
        self.stats.set(
            Word::ServicePid,
            st.active.as_ref().map_or(0, |a| a.pid.into()),
        );
        self.stats.set(Word::SparesReady, st.ready.len() as u64);
    }

    /// A connection to the serving instance, waiting (until `deadline`) for
    /// one to be started if none is.
    pub(crate) fn connect(self: &Arc<Self>, deadline: Instant) -> Result<Connection, CallError> {
        let mut avoid: Option<u64> = None;
        loop {
            let live = {
                let mut st = self.lock();
                loop {
                    if let Some(f) = &st.failed {
                        return Err(CallError::ServiceFailed(f.clone()));
                    }
                    if st.stopping {
                        return Err(CallError::ServiceFailed(format!(
                            "the supervisor of {:?} is stopping",
                            self.config.service
                        )));
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
                        return Err(CallError::Timeout);
                    }
                    st = self
                        .changed
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            };
            // The handshake waits no longer than the caller.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CallError::Timeout);
            }
            let handshake = self.config.client.handshake_timeout.min(left);
            match self.connect_to(&live, handshake) {
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
                Err(ConnectError::Timeout(_)) => {
                    // Alive but slow (still starting, or busy): the same
                    // instance is asked again, until the caller's
                    // deadline.
                    tracing::debug!(target: "isocall::supervise", service = %self.config.service,
                        pid = live.pid, ?handshake, "handshake timed out; asking again");
                    if Instant::now() >= deadline {
                        return Err(CallError::Timeout);
                    }
                }
                Err(e) => {
                    return Err(CallError::ServiceFailed(format!(
                        "handshake with service {:?} (pid {}): {e}",
                        self.config.service, live.pid
                    )));
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
        ConnectError::Handshake(_) => true,
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
    /// As a call: `ServiceFailed`, `Timeout`.
    pub fn wait_serving(&self, timeout: Duration) -> Result<u32, CallError> {
        let conn = self.inner.connect(Instant::now() + timeout)?;
        Ok(conn.live.pid)
    }

    /// Waits until `n` spares have a connection handshaken and waiting
    /// (see [`SupervisorBuilder::standby`]); false if that did not happen
    /// within `timeout` (or the supervisor failed).
    pub fn wait_spares_ready(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
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
        let deadline = Instant::now() + timeout;
        let inner = &self.inner;
        let mut st = inner.lock();
        loop {
            let premade_ready = {
                let p = inner.premade.lock().unwrap_or_else(|p| p.into_inner());
                p.layout.is_none() || p.ready.is_some()
            };
            let buried = inner
                .graveyard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty();
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
        // The instances are gone, so a spare's handshake still under way
        // ends at once; no helper outlives the supervisor.
        self.inner.join_helpers();
    }
}

/// How long, at most, the intensity limit waits for the instances already
/// known dead to be reaped, so that the exit it names is the latest.
const REAP_BEFORE_FAILING: Duration = Duration::from_millis(200);

/// A child the monitor owns.
struct Running {
    live: Arc<Live>,
    child: Child,
    pidfd: PidFd,
    /// Known gone (a client saw it die, or it was reaped): a successor
    /// is on its way.
    replaced: bool,
    /// When it was told to exit (its control socket shut down); it is
    /// killed if it is still there the grace period later.
    asked: Option<Instant>,
    /// Killed by the monitor, after the grace period.
    killed: bool,
}

/// The monitor thread: starts, reaps and restarts.
struct Monitor {
    inner: Arc<Inner>,
    children: Vec<Running>,
    next_id: u64,
    /// Restarts within the intensity period.
    restarts: VecDeque<Instant>,
    /// Deaths in a row of instances that never served.
    backoff_level: u32,
    /// Not before this instant is the next instance started.
    not_before: Instant,
    /// The exit status (or the reason a start failed) of the instance
    /// reaped last, for the intensity limit's message.
    last_exit: Option<String>,
    /// Starts left before every start replaces a dead instance (the
    /// first instance and the first spares are not restarts).
    initial: usize,
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => {
            let name = rustix::process::Signal::from_named_raw(sig)
                .map(|s| format!(" ({s:?})"))
                .unwrap_or_default();
            format!("killed by signal {sig}{name}")
        }
        _ => status.to_string(),
    }
}

/// Whether a failure to start a process may pass (a shortage of
/// processes, memory or descriptors, or a signal), so that the start is
/// tried again after the backoff. Any other (`ENOENT`, `EACCES`,
/// `ENOEXEC`, `ENOTDIR`, `EISDIR`, `ELOOP`, `ENAMETOOLONG`, `E2BIG`, or an
/// error without an errno) would fail the same way again.
fn is_transient(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::AGAIN | Errno::NOMEM | Errno::MFILE | Errno::NFILE | Errno::INTR)
    )
}

/// The instant `d` from now; a delay too long to add (a backoff of
/// `Duration::MAX`) is a century.
fn after(d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

impl Monitor {
    fn new(inner: Arc<Inner>) -> Self {
        let initial = 1 + inner.config.standby;
        Monitor {
            inner,
            children: Vec::new(),
            next_id: 1,
            restarts: VecDeque::new(),
            backoff_level: 0,
            not_before: Instant::now(),
            last_exit: None,
            initial,
        }
    }

    fn service(&self) -> &str {
        &self.inner.config.service
    }

    fn run(mut self) {
        loop {
            if self.inner.lock().stopping {
                break;
            }
            // Start what is missing (unless failed or backing off).
            let wanted = 1 + self.inner.config.standby;
            let failed = {
                let st = self.inner.lock();
                // An instance a client saw die is replaced now, before it
                // is reaped (its teardown takes a while); should it still
                // run (it closed a connection), it is asked to exit.
                let mut gone = Vec::new();
                for r in &mut self.children {
                    if !r.replaced && st.dead.contains(&r.live.id) {
                        r.replaced = true;
                        r.asked = Some(Instant::now());
                        let _ = rustix::net::shutdown(&r.live.control, rustix::net::Shutdown::Both);
                        gone.push(r.live.served.load(Ordering::Relaxed));
                    }
                }
                let failed = st.failed.is_some();
                drop(st);
                for served in gone {
                    self.schedule_successor(served);
                }
                failed
            };
            let live = self.children.iter().filter(|r| !r.replaced).count();
            let mut timeout = None;
            let (serving, hold) = {
                let mut st = self.inner.lock();
                if st.hold_spares_until.is_some_and(|t| Instant::now() >= t) {
                    st.hold_spares_until = None;
                }
                (st.active.is_some(), st.hold_spares_until)
            };
            // Only spares missing, and a recovery under way: later.
            let not_before = match hold {
                Some(t) if serving => self.not_before.max(t),
                _ => self.not_before,
            };
            if !failed && live < wanted {
                let now = Instant::now();
                if now >= not_before {
                    self.start();
                    continue;
                }
                timeout = Some(not_before - now);
            }
            // An instance told to exit that is still there after the grace
            // period is killed (then reaped below, from its pidfd).
            if let Some(next) = self.kill_overdue() {
                timeout = Some(timeout.map_or(next, |t: Duration| t.min(next)));
            }
            let mut fds = vec![self.inner.wake.as_fd()];
            fds.extend(self.children.iter().map(|c| c.pidfd.as_fd()));
            let ready = match poll_readable(&fds, timeout) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.fail(format!("supervisor poll failed: {e}"));
                    break;
                }
            };
            if ready[0] {
                let _ = self.inner.wake.drain();
                let dead = std::mem::take(
                    &mut *self
                        .inner
                        .graveyard
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()),
                );
                let any = !dead.is_empty();
                drop(dead);
                if any {
                    self.inner.notify_changed();
                }
            }
            let exited: Vec<usize> = (0..self.children.len())
                .filter(|&i| ready[i + 1])
                .rev()
                .collect();
            for i in exited {
                let r = self.children.swap_remove(i);
                self.reaped(r);
            }
        }
        self.retire_all();
    }

    /// Kills the instances told to exit a grace period ago that are still
    /// there; returns how long until the next one is due, if any is
    /// waited for.
    fn kill_overdue(&mut self) -> Option<Duration> {
        let grace = self.inner.config.grace;
        let now = Instant::now();
        let mut next: Option<Duration> = None;
        for r in self.children.iter_mut().filter(|r| !r.killed) {
            let Some(due) = r.asked.and_then(|t| t.checked_add(grace)) else {
                continue;
            };
            if now >= due {
                tracing::warn!(target: "isocall::supervise", service = %self.inner.config.service,
                    pid = r.live.pid, ?grace, "service did not exit when told to; killing it");
                let _ = r.child.kill();
                r.killed = true;
            } else {
                let left = due - now;
                next = Some(next.map_or(left, |n| n.min(left)));
            }
        }
        next
    }

    fn fail(&mut self, msg: String) {
        tracing::error!(target: "isocall::supervise", service = %self.service(), "{msg}");
        let mut st = self.inner.lock();
        st.failed = Some(msg);
        let gone = st.clear();
        self.inner.publish_pids(&st);
        drop(st);
        drop(gone);
        self.inner.stats.set_state(SupervisorState::Failed);
        self.inner.changed.notify_all();
        // The instances still alive are retired.
        let rest = std::mem::take(&mut self.children);
        self.retire(rest);
    }

    /// Starts an instance (the service or a spare), unless the restart
    /// intensity limit says to give up. A start the OS refuses for now
    /// counts as an instance that died before it served; one that can
    /// never succeed fails the supervisor.
    fn start(&mut self) {
        let restart = self.initial == 0;
        if restart {
            let now = Instant::now();
            let (limit, period) = self.inner.config.intensity;
            while self
                .restarts
                .front()
                .is_some_and(|&t| now.duration_since(t) > period)
            {
                self.restarts.pop_front();
            }
            if self.restarts.len() >= limit as usize {
                // The successor of an instance a client saw die may be due
                // before that instance is reaped: reap it first, so that
                // the exit named is the latest, not an older one.
                self.reap_replaced(REAP_BEFORE_FAILING);
                self.fail(format!(
                    "service {:?} restarted {} times within {:?} (limit {limit}); giving up. Last exit: {}",
                    self.service(),
                    self.restarts.len(),
                    period,
                    self.last_exit.as_deref().unwrap_or("none")
                ));
                return;
            }
            self.restarts.push_back(now);
            self.inner.stats.add(Word::Restarts, 1);
        }
        let (child, pidfd, ours) = match self.spawn_child() {
            Ok(c) => c,
            Err(e) => return self.cannot_start(e),
        };
        let pid = child.id();
        let id = self.next_id;
        self.next_id += 1;
        self.initial = self.initial.saturating_sub(1);
        let live = Arc::new(Live {
            id,
            pid,
            control: ours,
            served: AtomicBool::new(false),
        });
        self.inner.stats.add(Word::Starts, 1);
        let spare = {
            let mut st = self.inner.lock();
            let spare = st.active.is_some();
            if spare {
                st.spares.push_back(live.clone());
            } else {
                st.active = Some(live.clone());
            }
            self.inner.publish_pids(&st);
            spare
        };
        self.inner.stats.set_state(SupervisorState::Running);
        if restart {
            tracing::info!(target: "isocall::supervise", service = %self.service(), pid, spare,
                "service restarted");
        } else {
            tracing::info!(target: "isocall::supervise", service = %self.service(), pid, spare,
                "service started");
        }
        self.inner.changed.notify_all();
        if spare {
            self.prepare_spare(live.clone());
        }
        self.children.push(Running {
            live,
            child,
            pidfd,
            replaced: false,
            asked: None,
            killed: false,
        });
    }

    /// Starts the program with its control socket as standard input;
    /// returns it with its pidfd and the supervisor's end of the socket.
    fn spawn_child(&self) -> std::io::Result<(Child, PidFd, OwnedFd)> {
        let cfg = &self.inner.config;
        let (ours, theirs) = seqpacket_pair()?;
        let mut cmd = match &cfg.program {
            Program::Command { program, args } => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            Program::Role { exe, role } => {
                let mut c = Command::new(exe);
                c.env(ENV_ROLE, role);
                c
            }
        };
        cmd.envs(cfg.envs.iter().map(|(k, v)| (k, v)))
            .env(ENV_SERVICE, &cfg.service)
            .env(ENV_SUPERVISOR_PID, std::process::id().to_string())
            .stdin(Stdio::from(theirs));
        let mut child = cmd.spawn()?;
        drop(cmd);
        match PidFd::open(child.id()) {
            Ok(pidfd) => Ok((child, pidfd, ours)),
            Err(e) => {
                // Without a pidfd the loop would never see it exit: it is
                // killed and reaped here (not yet reaped, its pid cannot
                // have been reused).
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// A start failed with `e`: a passing shortage counts as an instance
    /// that died before it served (backoff, intensity limit); anything
    /// else fails the supervisor at once.
    fn cannot_start(&mut self, e: std::io::Error) {
        let program = self.inner.config.program.path().display().to_string();
        if is_transient(&e) {
            // The next start replaces this one.
            self.initial = self.initial.saturating_sub(1);
            self.last_exit = Some(format!("cannot be started: {e}"));
            tracing::warn!(target: "isocall::supervise", service = %self.service(), %program,
                error = %e, "service cannot be started now; trying again");
            self.schedule_successor(false);
        } else {
            self.fail(format!(
                "service {:?} cannot be started: {program}: {e}",
                self.service()
            ));
        }
    }

    /// Handshakes a connection with a new spare, in the background.
    fn prepare_spare(&self, live: Arc<Live>) {
        let inner = self.inner.clone();
        let r = self.inner.spawn_helper("isocall-spare", move || {
            let conn = inner.connect_to(&live, inner.config.client.handshake_timeout);
            let mut st = inner.lock();
            match conn {
                Ok(c) if !st.dead.contains(&live.id) && !st.stopping => {
                    live.served.store(true, Ordering::Relaxed);
                    st.ready.push((live.id, c));
                    inner.refill_premade();
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(target: "isocall::supervise", pid = live.pid, error = %e,
                        "spare handshake failed");
                }
            }
            inner.publish_pids(&st);
            drop(st);
            inner.changed.notify_all();
        });
        if let Err(e) = r {
            tracing::warn!(target: "isocall::supervise", error = %e, "no thread to prepare a spare");
        }
    }

    /// Reaps the instances already known dead but not reaped yet (a
    /// client saw them die), waiting for them at most `bound` in all.
    fn reap_replaced(&mut self, bound: Duration) {
        let deadline = after(bound);
        let mut i = 0;
        while i < self.children.len() {
            let r = &self.children[i];
            let left = deadline.saturating_duration_since(Instant::now());
            if r.replaced && r.pidfd.wait_exit(Some(left)).unwrap_or(false) {
                let r = self.children.swap_remove(i);
                self.reaped(r);
            } else {
                i += 1;
            }
        }
    }

    fn reaped(&mut self, mut r: Running) {
        let (status, clean) = match r.child.wait() {
            Ok(s) => (describe(s), s.success()),
            Err(e) => (format!("unknown ({e})"), false),
        };
        let asked = self.inner.lock().stopping || r.asked.is_some();
        self.inner.stats.add(Word::Exits, 1);
        let served = r.live.served.load(Ordering::Relaxed);
        self.last_exit = Some(format!("pid {} {status}", r.live.pid));
        if !(asked && clean) {
            self.inner.stats.add(Word::Crashes, 1);
            tracing::warn!(target: "isocall::supervise", service = %self.service(), pid = r.live.pid,
                %status, served, "service exited");
        } else {
            tracing::info!(target: "isocall::supervise", service = %self.service(), pid = r.live.pid,
                %status, "service exited");
        }
        self.inner.report_dead(r.live.id);
        if !r.replaced {
            self.schedule_successor(served);
        }
    }

    /// When the successor of an instance that died may start: at once if
    /// it served, after a backoff that doubles with each death in a row of
    /// instances that never served.
    fn schedule_successor(&mut self, served: bool) {
        let (initial, max) = self.inner.config.backoff;
        if served {
            self.backoff_level = 0;
            self.not_before = Instant::now();
        } else {
            let delay = initial
                .saturating_mul(1u32 << self.backoff_level.min(20))
                .min(max);
            self.backoff_level += 1;
            self.not_before = after(delay);
            tracing::info!(target: "isocall::supervise", service = %self.service(), ?delay,
                "backing off before the restart");
        }
    }

    /// Retires instances: closes their control sockets (each child's
    /// server returns from `run`), waits one grace period for all of them,
    /// kills those still there, and reaps them, recording each status.
    fn retire(&mut self, rs: Vec<Running>) {
        // Every client's copy of a control socket sees the shutdown: the
        // child's server stops accepting and returns from `run`.
        for r in &rs {
            let _ = rustix::net::shutdown(&r.live.control, rustix::net::Shutdown::Both);
        }
        let deadline = Instant::now().checked_add(self.inner.config.grace);
        for r in rs {
            let Running {
                live,
                mut child,
                pidfd,
                killed,
                ..
            } = r;
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let kill = !killed && !pidfd.wait_exit(left).unwrap_or(false);
            if kill {
                let _ = child.kill();
            }
            let (status, clean) = match child.wait() {
                Ok(s) => (describe(s), s.success()),
                Err(e) => (format!("unknown ({e})"), false),
            };
            self.inner.stats.add(Word::Exits, 1);
            // Killed by the supervisor (now or earlier) is asked for; any
            // other unclean exit (it died before, or while retiring) is a
            // crash.
            if !(clean || kill || killed) {
                self.inner.stats.add(Word::Crashes, 1);
            }
            self.last_exit = Some(format!("pid {} {status}", live.pid));
            tracing::info!(target: "isocall::supervise", service = %self.service(), pid = live.pid,
                %status, "service retired");
        }
    }

    fn retire_all(&mut self) {
        let gone = {
            let mut st = self.inner.lock();
            let gone = st.clear();
            self.inner.publish_pids(&st);
            gone
        };
        drop(gone);
        self.inner.stats.set_state(SupervisorState::Stopped);
        let rest = std::mem::take(&mut self.children);
        self.retire(rest);
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // Children are left only if the monitor thread panicked: they
        // would die with it (PR_SET_PDEATHSIG) and stay zombies, so they
        // are killed and reaped; and the calls fail rather than wait for
        // an instance that will never start.
        for r in &mut self.children {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
        if std::thread::panicking() {
            let mut st = self.inner.lock();
            if st.failed.is_none() {
                st.failed = Some(format!(
                    "the supervisor of {:?} stopped: its monitor thread panicked",
                    self.inner.config.service
                ));
            }
            let gone = st.clear();
            self.inner.publish_pids(&st);
            drop(st);
            drop(gone);
            self.inner.stats.set_state(SupervisorState::Failed);
            self.inner.changed.notify_all();
        }
    }
}
