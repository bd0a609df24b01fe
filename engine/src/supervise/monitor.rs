//! The monitor thread: starts instances, waits on their pidfds (no
//! `SIGCHLD` handler, no polling loop), reaps them, restarts them (at once
//! after one that served, with backoff after one that died before, within
//! the intensity limit) and retires them.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::builder::Program;
use super::error::{LastExit, ServiceFailure};
use super::stats::Word;
use super::{
    ENV_LISTEN, ENV_ROLE, ENV_SERVICE, ENV_SUPERVISOR_PID, Inner, LISTENER, Live, SupervisorState,
};
use crate::stream::StreamError;
use crate::sys::{PidFd, Ready, poll_ready, send_with_fds, seqpacket_pair};

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
pub(super) struct Monitor {
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
    last_exit: LastExit,
    /// Starts left before every start replaces a dead instance (the
    /// first instance and the first spares are not restarts).
    initial: usize,
    /// The address could not be bound again while an instance on its
    /// way out held it: the next reap makes the start due at once.
    rebind_waits: bool,
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
/// processes, memory or descriptors, a signal, or an address still held),
/// so that the start is tried again after the backoff. Any other
/// (`ENOENT`, `EACCES`, `ENOEXEC`, `ENOTDIR`, `EISDIR`, `ELOOP`,
/// `ENAMETOOLONG`, `E2BIG`, or an error without an errno) would fail the
/// same way again.
fn is_transient(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    // `EADDRINUSE`: the service's address, to be bound again after an
    // instance shut its socket down, still held by one on its way out.
    matches!(
        Errno::from_io_error(e),
        Some(
            Errno::AGAIN
                | Errno::NOMEM
                | Errno::MFILE
                | Errno::NFILE
                | Errno::INTR
                | Errno::ADDRINUSE
        )
    )
}

/// Reaps `child`: its status in words, how it ended, and whether it
/// exited with 0.
fn wait_status(child: &mut Child, pid: u32) -> (String, LastExit, bool) {
    use std::os::unix::process::ExitStatusExt;
    match child.wait() {
        Ok(s) => {
            let last = match (s.code(), s.signal()) {
                (Some(code), _) => LastExit::Exited { pid, code },
                (None, Some(signal)) => LastExit::Signaled { pid, signal },
                _ => LastExit::None,
            };
            (describe(s), last, s.success())
        }
        Err(e) => (
            format!("unknown ({e})"),
            LastExit::StartFailed(Arc::new(e)),
            false,
        ),
    }
}

impl Monitor {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        let initial = 1 + inner.config.standby;
        Monitor {
            inner,
            children: Vec::new(),
            next_id: 1,
            restarts: VecDeque::new(),
            backoff_level: 0,
            not_before: Instant::now(),
            last_exit: LastExit::None,
            initial,
            rebind_waits: false,
        }
    }

    fn service(&self) -> &str {
        &self.inner.config.service
    }

    pub(super) fn run(mut self) {
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
            self.inner.lock().lingering = self.children.len() - live;
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
            let mut fds = vec![(self.inner.wake.as_fd(), Ready::Readable)];
            fds.extend(
                self.children
                    .iter()
                    .map(|c| (c.pidfd.as_fd(), Ready::Readable)),
            );
            // The service's socket, watched for a hang-up only (connections
            // queued on it do not wake us): an instance that shut it down
            // is seen even when only outside clients dial the address.
            let watch = self.inner.listener_watch();
            fds.extend(watch.as_ref().map(|fd| (fd.as_fd(), Ready::HangUp)));
            let ready = match poll_ready(&fds, timeout) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(target: "isocall::supervise", error = %e, "supervisor poll failed");
                    self.fail(ServiceFailure::Monitor {
                        service: self.service().to_string(),
                        cause: "its poll failed",
                    });
                    break;
                }
            };
            if ready[0] {
                let _ = self.inner.wake.drain();
                let dead = {
                    let mut g = self
                        .inner
                        .graveyard
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    // Set under the lock that empties the graveyard:
                    // `wait_idle` never sees it empty while its
                    // connections are still being dropped.
                    self.inner.burying.store(!g.is_empty(), Ordering::Release);
                    std::mem::take(&mut *g)
                };
                if !dead.is_empty() {
                    drop(dead);
                    self.inner.burying.store(false, Ordering::Release);
                    self.inner.notify_changed();
                }
            }
            if watch.is_some() && ready.last() == Some(&true) {
                self.inner.listener_hung_up();
            }
            let exited: Vec<usize> = (0..self.children.len())
                .filter(|&i| ready[i + 1])
                .rev()
                .collect();
            if !exited.is_empty() && std::mem::take(&mut self.rebind_waits) {
                self.not_before = Instant::now();
            }
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

    fn fail(&mut self, failure: ServiceFailure) {
        tracing::error!(target: "isocall::supervise", service = %self.service(), "{failure}");
        self.inner.set_failed(failure);
        // The instances still alive are retired (`set_failed` let the
        // address go).
        let rest = std::mem::take(&mut self.children);
        self.retire(rest);
    }

    /// Starts an instance (the service or a spare), unless the restart
    /// intensity limit says to give up. A start the OS refuses for now
    /// counts as an instance that died before it served; one that can
    /// never succeed fails the supervisor.
    fn start(&mut self) {
        // The service's address, bound again if an instance shut its
        // socket down. Still held by an instance on its way out (a Unix
        // name): its reap, which wakes the loop, is waited for (at most
        // the grace period, after which it is killed), and no restart is
        // counted meanwhile.
        let rebound = self.inner.relisten();
        if let Err(StreamError::Listen { errno, .. }) = &rebound
            && is_transient(&std::io::Error::from_raw_os_error(*errno))
            && self.children.iter().any(|r| r.replaced)
        {
            self.not_before = Instant::now() + self.inner.config.grace;
            self.rebind_waits = true;
            return;
        }
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
                self.reap_replaced(self.inner.config.grace);
                self.fail(ServiceFailure::TooManyRestarts {
                    service: self.service().to_string(),
                    restarts: self.restarts.len(),
                    within: period,
                    limit,
                    last_exit: self.last_exit.clone(),
                });
                return;
            }
            self.restarts.push_back(now);
            self.inner.stats.add(Word::Restarts, 1);
        }
        if let Err(e) = rebound {
            return match e {
                // A passing shortage, or the address held by another
                // process: tried again after the backoff, a restart
                // counted, as a start that failed.
                StreamError::Listen { errno, .. }
                    if is_transient(&std::io::Error::from_raw_os_error(errno)) =>
                {
                    self.cannot_start(std::io::Error::from_raw_os_error(errno))
                }
                source => self.fail(ServiceFailure::Listen {
                    service: self.service().to_string(),
                    source,
                }),
            };
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
        // The service's listening socket, queued first on the control
        // socket before the child exists (so a child that dies at once
        // cannot fail the send; the buffer is empty, so it never waits).
        if let Some(l) = &*self.inner.lock_listener() {
            send_with_fds(
                ours.as_fd(),
                &[LISTENER],
                &l.poll_fds(),
                crate::deadline_in(cfg.client.handshake_timeout),
            )?;
        }
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
        match &cfg.address {
            Some(a) => cmd.env(ENV_LISTEN, a.to_string()),
            None => cmd.env_remove(ENV_LISTEN),
        };
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
            let e = std::sync::Arc::new(e);
            self.last_exit = LastExit::StartFailed(e.clone());
            tracing::warn!(target: "isocall::supervise", service = %self.service(), %program,
                error = %e, "service cannot be started now; trying again");
            self.schedule_successor(false);
        } else {
            self.fail(ServiceFailure::CannotStart {
                service: self.service().to_string(),
                program,
                source: std::sync::Arc::new(e),
            });
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
        let deadline = crate::deadline_in(bound);
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
        let (status, last, clean) = wait_status(&mut r.child, r.live.pid);
        let asked = self.inner.lock().stopping || r.asked.is_some();
        self.inner.stats.add(Word::Exits, 1);
        let served = r.live.served.load(Ordering::Relaxed);
        self.last_exit = last;
        // Killed by the monitor after the grace period is asked for too.
        if !(asked && (clean || r.killed)) {
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
            self.not_before = crate::deadline_in(delay);
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
            let (status, last, clean) = wait_status(&mut child, live.pid);
            self.inner.stats.add(Word::Exits, 1);
            // Killed by the supervisor (now or earlier) is asked for; any
            // other unclean exit (it died before, or while retiring) is a
            // crash.
            if !(clean || kill || killed) {
                self.inner.stats.add(Word::Crashes, 1);
            }
            self.last_exit = last;
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
            self.inner.set_failed(ServiceFailure::Monitor {
                service: self.inner.config.service.clone(),
                cause: "its monitor thread panicked",
            });
        }
    }
}
