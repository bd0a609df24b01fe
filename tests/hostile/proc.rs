//! Peer processes and time bounds: the test binary re-executed in a named
//! role (the attacker), a control socket to talk to it line by line, a
//! watchdog that kills the test's children and aborts when a test overruns,
//! and waits on conditions with deadlines (never a sleep).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isocall::raw::sys::PidFd;

/// Tells a re-executed test binary its role.
pub const ROLE_ENV: &str = "ISOCALL_HOSTILE_ROLE";
/// The role's argument (a socket name, a count...).
pub const ARG_ENV: &str = "ISOCALL_HOSTILE_ARG";
/// The name of the ignored test every hostile test binary defines as the
/// entry point of its roles.
pub const ENTRY: &str = "role";

/// Pids of the children the running test started and has not reaped: the
/// watchdog kills these, and only these.
static CHILDREN: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn children() -> MutexGuard<'static, Option<HashSet<u32>>> {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
}

/// The tests of one binary share `/proc/self`: each holds this for its
/// whole run so that its leak probes see only its own objects.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the binary-wide test lock (a test that panicked leaves it usable).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A peer process running `role` of this test binary. Killed and reaped
/// when dropped.
pub struct Peer {
    child: Option<Child>,
    /// Closed once the child is reaped (so a leak probe does not count it).
    ctl: Option<BufReader<UnixStream>>,
    role: String,
}

impl Peer {
    /// Starts this test binary again in `role` with `arg`.
    pub fn spawn(role: &str, arg: &str) -> Peer {
        Self::spawn_as(role, arg, None)
    }

    /// Starts this test binary again in `role` with `arg`, as user `uid`
    /// (the child calls `setuid` before `exec`; needs root).
    pub fn spawn_as(role: &str, arg: &str, uid: Option<u32>) -> Peer {
        let (ours, theirs) = UnixStream::pair().expect("socketpair for a peer");
        let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
        cmd.args([
            "--exact",
            ENTRY,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_ENV, role)
        .env(ARG_ENV, arg)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        let child = cmd.spawn().expect("spawn a peer");
        children()
            .get_or_insert_with(HashSet::new)
            .insert(child.id());
        Peer {
            child: Some(child),
            ctl: Some(BufReader::new(ours)),
            role: role.to_string(),
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends one line to the child.
    pub fn send(&mut self, line: &str) {
        let s = self.ctl.as_mut().expect("a running peer").get_mut();
        s.write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("{}: cannot write to the peer: {e}", self.role));
    }

    /// The next line the child writes, waiting at most `limit`.
    pub fn line(&mut self, limit: Duration) -> String {
        let ctl = self.ctl.as_mut().expect("a running peer");
        ctl.get_ref()
            .set_read_timeout(Some(limit))
            .expect("read timeout");
        let mut s = String::new();
        match ctl.read_line(&mut s) {
            Ok(0) => panic!(
                "{}: the peer closed its control socket without a line (it died?)",
                self.role
            ),
            Ok(_) => s.trim_end().to_string(),
            Err(e) => panic!("{}: no line from the peer within {limit:?}: {e}", self.role),
        }
    }

    /// Waits for a line starting with `prefix` (skipping others) and
    /// returns the rest of it.
    pub fn expect(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: no line `{prefix}...` within {limit:?}",
                self.role
            );
            let l = self.line(left);
            if let Some(rest) = l.strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
    }

    /// Waits (on its pidfd, no polling) for the child to exit and reaps it.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("a running peer");
        let exited = PidFd::open(child.id())
            .and_then(|p| p.wait_exit(Some(limit)))
            .unwrap_or(true);
        if !exited {
            let _ = child.kill();
        }
        let status = child.wait().expect("reap the peer");
        self.ctl = None;
        children()
            .get_or_insert_with(HashSet::new)
            .remove(&child.id());
        assert!(
            exited,
            "{}: the peer did not exit within {limit:?}",
            self.role
        );
        status
    }

    /// Waits for the child to exit with success.
    pub fn wait_ok(&mut self, limit: Duration) {
        let role = self.role.clone();
        let st = self.wait(limit);
        assert!(st.success(), "{role}: the peer failed: {st}");
    }

    /// Kills the child (SIGKILL, by its pid) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            children().get_or_insert_with(HashSet::new).remove(&c.id());
        }
        self.ctl = None;
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// In a child: the control socket to the parent (its stdin).
pub struct Ctl {
    r: BufReader<UnixStream>,
}

impl Ctl {
    fn from_stdin() -> Ctl {
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .expect("dup stdin");
        Ctl {
            r: BufReader::new(UnixStream::from(fd)),
        }
    }

    /// Writes one line to the parent.
    pub fn say(&mut self, line: &str) {
        let _ = self.r.get_mut().write_all(format!("{line}\n").as_bytes());
    }

    /// The next line from the parent (empty at EOF: the parent is gone).
    pub fn hear(&mut self) -> String {
        let mut s = String::new();
        let _ = self.r.get_ref().set_read_timeout(None);
        let _ = self.r.read_line(&mut s);
        s.trim_end().to_string()
    }

    /// The next line from the parent if one comes within `limit`.
    pub fn hear_within(&mut self, limit: Duration) -> Option<String> {
        let _ = self
            .r
            .get_ref()
            .set_read_timeout(Some(limit.max(Duration::from_micros(1))));
        let mut s = String::new();
        match self.r.read_line(&mut s) {
            Ok(0) => Some(String::new()),
            Ok(_) => Some(s.trim_end().to_string()),
            Err(_) => None,
        }
    }
}

/// A role: its name and what it runs (the argument, the control socket).
pub type Role = (&'static str, fn(&str, &mut Ctl));

/// The body of a test binary's ignored `role` test: in a child started by
/// [`Peer::spawn`] runs the role it was given; run by hand (no role), does
/// nothing.
pub fn run_role(roles: &[Role]) {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let arg = std::env::var(ARG_ENV).unwrap_or_default();
    let (_, f) = roles
        .iter()
        .find(|(n, _)| *n == role)
        .unwrap_or_else(|| panic!("no role {role:?} in this binary"));
    let mut ctl = Ctl::from_stdin();
    f(&arg, &mut ctl);
}

/// Bounds a test in time: if it is not dropped within `limit`, kills the
/// children the test started and, if the test still has not ended 10 s
/// later, aborts the test binary (a hang in the victim is a failure, not a
/// stuck CI run).
pub struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the watchdog of test `name`.
pub fn watchdog(name: &'static str, limit: Duration) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("hostile-watchdog".into())
        .spawn(move || {
            if rx.recv_timeout(limit) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            eprintln!("{name}: WATCHDOG: still running after {limit:?}; killing its peers");
            let pids: Vec<u32> = children()
                .as_ref()
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            for pid in pids {
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            if rx.recv_timeout(Duration::from_secs(10)) == Err(mpsc::RecvTimeoutError::Timeout) {
                eprintln!("{name}: WATCHDOG: the test is hung (over {limit:?} + 10 s); aborting");
                std::process::abort();
            }
        })
        .expect("watchdog thread");
    Watchdog {
        done: Some(tx),
        thread: Some(thread),
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls `f` until it returns `Some`, failing with `what` and the last
/// state `f` described after `limit`. Parks with a growing timeout between
/// polls (a bounded poll; the condition is checked every turn).
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_micros(100);
    loop {
        match f() {
            Ok(v) => return v,
            Err(state) => {
                assert!(
                    Instant::now() < deadline,
                    "timed out after {limit:?} waiting for {what}: {state}"
                );
            }
        }
        std::thread::park_timeout(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Drops `value` and fails unless the drop returned within 5 s: dropping
/// a victim (a client, a server) must not hang on a hostile peer.
pub fn drop_promptly<T>(value: T, what: &str) {
    let t = Instant::now();
    drop(value);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "{what} drop took {took:?}");
}

/// The value of the word `KEY=value` in a line a peer said (`key` is
/// given with its `=`).
pub fn field<T: std::str::FromStr>(line: &str, key: &str) -> T {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} in {line:?}"))
}

/// A socket name unique to this test and this process.
pub fn socket_name(test: &str) -> isocall::SocketName {
    isocall::SocketName::Abstract(format!("isocall-hostile-{test}-{}", std::process::id()))
}

/// The second user of the tests that need one (they run as root).
pub const OTHER_UID: u32 = 65534;

/// Whether this process runs as root (for the tests that need a second
/// user).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether `test`, or the part of it that `what` describes, can run: it
/// needs root (CI runs the tests as root). If not, says on one line that
/// it is skipped and why, so a run as another user shows what it did not
/// check.
pub fn root_or_skip(test: &str, what: &str) -> bool {
    let root = is_root();
    if !root {
        eprintln!("skipped: {test}: {what} (needs root)");
    }
    root
}
