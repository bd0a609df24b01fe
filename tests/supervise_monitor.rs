//! The supervisor's monitor with real processes: a child whose supervisor
//! is gone refuses to serve, restarts back off exponentially, a program
//! that cannot run fails at once, the intensity limit names the death it
//! counted, a slow start outlasts the handshake timeout, and every start,
//! exit and restart is traced.

mod common;

use std::os::fd::AsFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::calc::ADD;
use common::services::{
    self, FILE, LOG_START_AND_EXIT, SERVICE, SLOW_START, SUPERVISOR_GONE, supervisor, temp_file,
};
use common::supervised::{add, fails_again, patient, sigkill};
use common::wait_until;
use isocall::raw::sys::{PidFd, send_with_fds, seqpacket_pair};
use isocall::supervise::{ENV_LISTEN, ENV_SERVICE, ENV_SUPERVISOR_PID, LastExit, SupervisorState};
use isocall::{CallError, ClientOptions, ServiceFailure, SupervisedError, Supervisor};

const LIMIT: Duration = Duration::from_secs(30);

/// The entry the supervised children run (see `common::services`).
#[test]
#[ignore = "run by the supervision tests as a supervised child"]
fn service() {
    match std::env::var(SERVICE).as_deref() {
        Ok(LOG_START_AND_EXIT) => services::log_start_and_exit(),
        Ok(SLOW_START) => services::slow_start(),
        _ => services::serve(),
    }
}

/// A child this test started itself: killed and reaped if the test
/// fails before it exits.
struct Reaped(Option<Child>);

impl Reaped {
    /// Waits (on its pidfd) for it to exit, then reaps it and returns its
    /// status and what it wrote on stderr.
    fn finish(mut self, limit: Duration) -> (ExitStatus, String) {
        let child = self.0.take().expect("not finished yet");
        let pidfd = PidFd::open(child.id()).expect("pidfd of the child");
        let exited = pidfd.wait_exit(Some(limit)).expect("wait on the pidfd");
        if !exited {
            self.0 = Some(child);
            panic!("the child did not exit within {limit:?}");
        }
        let out = child.wait_with_output().expect("reap the child");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts this test binary as a supervised `plain` service the way a
/// supervisor would (a `SOCK_SEQPACKET` socket as standard input, the
/// supervisor's environment), but claiming `supervisor_pid` supervises
/// it. Returns the child and the other end of its control socket.
fn start_as_supervised(supervisor_pid: u32) -> (Reaped, std::os::fd::OwnedFd) {
    start_as_supervised_at(supervisor_pid, None)
}

/// [`start_as_supervised`], told to listen on the stream address `listen`
/// too if given (as [`ENV_LISTEN`] says it).
fn start_as_supervised_at(
    supervisor_pid: u32,
    listen: Option<&str>,
) -> (Reaped, std::os::fd::OwnedFd) {
    let (ours, theirs) = seqpacket_pair().expect("socketpair");
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    if let Some(a) = listen {
        cmd.env(ENV_LISTEN, a);
    }
    let child = cmd
        .args(["--exact", "service", "--ignored", "--nocapture", "-q"])
        .env(SERVICE, "plain")
        .env(ENV_SERVICE, "orphan")
        .env(ENV_SUPERVISOR_PID, supervisor_pid.to_string())
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    (Reaped(Some(child)), ours)
}

#[test]
fn a_supervised_child_whose_supervisor_is_gone_refuses_to_serve() {
    let me = std::process::id();
    // Any pid but this process's (the child's parent) stands for a
    // supervisor that died and left the child to someone else.
    let not_parent = if me == 1 { 2 } else { 1 };
    let (child, control) = start_as_supervised(not_parent);
    // The control socket stays open meanwhile: a child that passed the
    // check would serve on it rather than exit.
    let (status, stderr) = child.finish(LIMIT);
    drop(control);
    assert_eq!(
        status.code(),
        Some(SUPERVISOR_GONE),
        "it must not serve: {status}; {stderr}"
    );
    // The child's `NotSupervised::SupervisorGone`, as it reports it.
    assert!(
        stderr.contains(&format!(
            "not supervised: SupervisorGone supervisor={not_parent} parent={me}"
        )),
        "says its supervisor is gone: {stderr}"
    );

    // The same start with the true parent's pid passes the check, serves,
    // and returns cleanly when its control socket closes.
    let (child, control) = start_as_supervised(me);
    drop(control);
    let (status, stderr) = child.finish(LIMIT);
    assert!(
        status.success(),
        "the control case serves: {status}; {stderr}"
    );
    assert!(!stderr.contains("SupervisorGone"), "{stderr}");
}

/// With a stream address, the supervisor's listening socket must come
/// first on the control socket: a child sent anything else (here a
/// hand-off of a connection, as over shared memory), or nothing before
/// the supervisor hangs up, refuses to serve and says what came.
#[test]
fn a_supervised_child_with_an_address_but_no_listening_socket_refuses_to_serve() {
    let me = std::process::id();
    let at = format!("unix-stream:@isocall-test-no-listener-{me}");
    let at = Some(at.as_str());
    let (child, control) = start_as_supervised_at(me, at);
    let (conn, _other) = seqpacket_pair().expect("socketpair");
    send_with_fds(
        control.as_fd(),
        b"C",
        &[conn.as_fd()],
        Instant::now() + LIMIT,
    )
    .expect("a hand-off");
    let (status, stderr) = child.finish(LIMIT);
    drop(control);
    assert!(!status.success(), "it must not serve: {status}; {stderr}");
    // `NotSupervised::NotAListener`, as the child reports it.
    assert!(
        stderr.contains("sent 1 byte(s) tagged 0x43 with 1 descriptor(s)"),
        "says what came instead: {stderr}"
    );

    let (child, control) = start_as_supervised_at(me, at);
    drop(control);
    let (status, stderr) = child.finish(LIMIT);
    assert!(!status.success(), "it must not serve: {status}; {stderr}");
    // `NotSupervised::ListenerNeverCame`.
    assert!(
        stderr.contains("before it handed over the listening socket"),
        "{stderr}"
    );
}

#[test]
fn instances_that_die_before_serving_are_restarted_with_exponential_backoff() {
    let log = temp_file("backoff-starts");
    let sup = supervisor("backoff", LOG_START_AND_EXIT)
        .env(FILE, &log)
        .backoff(Duration::from_millis(20), Duration::from_millis(160))
        .spawn()
        .expect("supervisor");
    let starts: Vec<u128> = wait_until(LIMIT, "six starts in the log", || {
        let text = std::fs::read_to_string(&log).ok()?;
        // Complete lines only.
        let whole = text.rsplit_once('\n').map_or("", |(w, _)| w);
        let starts: Vec<u128> = whole
            .lines()
            .map(|l| l.parse().expect("a start instant"))
            .collect();
        (starts.len() >= 6).then_some(starts)
    });
    let s = sup.stats();
    drop(sup);
    let _ = std::fs::remove_file(&log);
    // Each start is logged after the previous instance exited and was
    // reaped, and the backoff runs from the reap: these are lower bounds
    // (2 ms of slack for the clock readings), whatever the machine's load.
    let want_ms = [20u128, 40, 80, 160, 160];
    for (i, want) in want_ms.iter().enumerate() {
        let gap = starts[i + 1] - starts[i];
        assert!(
            gap >= (want - 2) * 1_000_000,
            "start {} came {:.1} ms after start {}, before the {want} ms backoff; starts (ns): {starts:?}",
            i + 1,
            gap as f64 / 1e6,
            i
        );
    }
    assert!(s.starts >= 6 && s.crashes >= 5, "{s:?}");
    assert_eq!(s.state, SupervisorState::Running, "{s:?}");
}

#[test]
fn a_program_that_does_not_exist_fails_the_first_call_at_once_naming_it() {
    let path = "/nonexistent/isocall-no-such-service";
    let sup = Supervisor::command("missing-program", path, Vec::<String>::new())
        // Were it retried, the first retry alone would take 10 s.
        .backoff(Duration::from_secs(10), Duration::from_secs(10))
        .intensity(3, Duration::from_secs(60))
        .client_options(patient())
        .spawn()
        .expect("supervisor");
    let mut c = sup.client();
    let e = c.method(ADD).expect_err("there is nothing to start");
    let msg = e.to_string();
    // Not the intensity limit: the start itself failed, once.
    let SupervisedError::Service(ServiceFailure::CannotStart {
        service,
        program,
        source,
    }) = &e
    else {
        panic!("expected CannotStart, got {e:?}");
    };
    assert_eq!(program, path, "names the program: {msg}");
    assert_eq!(service, "missing-program", "names the service: {msg}");
    assert_eq!(
        source.raw_os_error(),
        Some(rustix::io::Errno::NOENT.raw_os_error()),
        "names the error (ENOENT): {msg}"
    );
    let s = sup.stats();
    assert_eq!((s.starts, s.restarts), (0, 0), "never retried: {s:?}");
    assert_eq!(s.state, SupervisorState::Failed);
    // Later calls fail the same way.
    fails_again(&mut c, &msg, |f| {
        matches!(f, ServiceFailure::CannotStart { .. })
    });
}

#[test]
fn the_intensity_limit_names_the_death_a_client_just_saw() {
    // Intensity 0: the first death fails the supervisor. The client sees
    // the death (and the successor is due) before the monitor reaps the
    // instance; the message must still name that instance's exit.
    let sup = supervisor("never-restart", "plain")
        .intensity(0, Duration::from_secs(60))
        .client_options(patient())
        .spawn()
        .expect("supervisor");
    let mut c = sup.client();
    assert_eq!(add(&mut c, 1, 2).unwrap(), 3);
    let pid = c.server_pid().expect("connected");
    sigkill(pid);
    let e = add(&mut c, 2, 3).expect_err("no restart allowed");
    let SupervisedError::Service(ServiceFailure::TooManyRestarts {
        limit, last_exit, ..
    }) = &e
    else {
        panic!("expected the intensity limit, got {e:?}");
    };
    assert_eq!(*limit, 0, "{e}");
    assert!(
        matches!(last_exit, LastExit::Signaled { pid: p, signal: 9 } if *p == pid),
        "names the death just seen: {e}"
    );
    let s = sup.stats();
    assert_eq!(
        (s.starts, s.restarts, s.exits, s.crashes),
        (1, 0, 1, 1),
        "the death counted once: {s:?}"
    );
    assert_eq!(s.state, SupervisorState::Failed);
}

#[test]
fn a_slow_start_is_waited_for_past_the_handshake_timeout_until_the_deadline() {
    let options = |call_timeout| {
        ClientOptions::default()
            .handshake_timeout(Duration::from_millis(50))
            .call_timeout(call_timeout)
    };
    // The service answers its first handshake after about 500 ms, ten
    // handshake timeouts: the call waits for it, on the same instance.
    let sup = supervisor("slow-start", SLOW_START)
        .client_options(options(LIMIT))
        .spawn()
        .expect("supervisor");
    let mut c = sup.client();
    assert_eq!(add(&mut c, 20, 22).expect("served once started"), 42);
    let s = sup.stats();
    assert_eq!((s.starts, s.restarts, s.crashes), (1, 0, 0), "{s:?}");

    // A caller whose deadline passes before the service is up sees a
    // timeout, not a failed service.
    let late = supervisor("slow-start-late", SLOW_START)
        .client_options(options(Duration::from_millis(100)))
        .spawn()
        .expect("supervisor");
    let e = late.client().method(ADD).expect_err("not up yet");
    assert!(
        matches!(e, SupervisedError::Call(CallError::Timeout)),
        "{e:?}"
    );
    assert_eq!(late.stats().state, SupervisorState::Running);
}

/// A global `tracing` subscriber that keeps the supervisor's events (they
/// come from its monitor thread, which a thread-local default would miss).
mod capture {
    use std::fmt::Debug;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, Once};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    const TARGET: &str = "isocall::supervise";

    /// One event: its message and its other fields, formatted.
    #[derive(Clone, Debug, Default)]
    pub struct Seen {
        pub message: String,
        pub fields: Vec<(String, String)>,
    }

    impl Seen {
        pub fn field(&self, name: &str) -> Option<&str> {
            self.fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

    struct Capture {
        next_span: AtomicU64,
    }

    struct Fields<'a>(&'a mut Seen);

    impl Fields<'_> {
        fn put(&mut self, field: &Field, value: String) {
            if field.name() == "message" {
                self.0.message = value;
            } else {
                self.0.fields.push((field.name().to_string(), value));
            }
        }
    }

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
            self.put(field, format!("{value:?}"));
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            self.put(field, value.to_string());
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata.target() == TARGET
        }

        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
        }

        fn record(&self, _: &Id, _: &Record<'_>) {}

        fn record_follows_from(&self, _: &Id, _: &Id) {}

        fn event(&self, event: &Event<'_>) {
            if event.metadata().target() != TARGET {
                return;
            }
            let mut seen = Seen::default();
            event.record(&mut Fields(&mut seen));
            SEEN.lock().unwrap_or_else(|p| p.into_inner()).push(seen);
        }

        fn enter(&self, _: &Id) {}

        fn exit(&self, _: &Id) {}
    }

    /// Installs the subscriber as the global default (once).
    pub fn install() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            tracing::subscriber::set_global_default(Capture {
                next_span: AtomicU64::new(1),
            })
            .expect("no other global subscriber in this test binary");
        });
    }

    /// The events seen so far with field `service` equal to `service`.
    pub fn of_service(service: &str) -> Vec<Seen> {
        SEEN.lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| s.field("service") == Some(service))
            .cloned()
            .collect()
    }
}

#[test]
fn starts_exits_and_restarts_are_traced() {
    capture::install();
    let name = "traced";
    let sup = supervisor(name, "plain").spawn().expect("supervisor");
    let mut c = sup.client();
    assert_eq!(add(&mut c, 1, 1).unwrap(), 2);
    let first = c.server_pid().expect("connected").to_string();
    sigkill(first.parse().expect("pid"));
    // The successor serves.
    assert_eq!(add(&mut c, 2, 2).unwrap(), 4);
    let second = c.server_pid().expect("connected").to_string();
    assert_ne!(first, second);
    let has = |events: &[capture::Seen], message: &str, pid: &str| {
        events
            .iter()
            .find(|e| e.message == message && e.field("pid") == Some(pid))
            .cloned()
    };
    let (events, exited) = wait_until(LIMIT, "the kill traced", || {
        let events = capture::of_service(name);
        let exited = has(&events, "service exited", &first)?;
        has(&events, "service restarted", &second)?;
        Some((events, exited))
    });
    let started = has(&events, "service started", &first)
        .unwrap_or_else(|| panic!("the first start is traced: {events:#?}"));
    assert_eq!(started.field("spare"), Some("false"), "{started:?}");
    let status = exited.field("status").unwrap_or_default();
    assert!(
        status.contains("signal 9"),
        "the exit names the signal: {exited:?}"
    );
    assert_eq!(exited.field("served"), Some("true"), "{exited:?}");
    drop(c);
    drop(sup);
    let retired = capture::of_service(name);
    assert!(
        has(&retired, "service retired", &second).is_some(),
        "the retirement is traced: {retired:#?}"
    );
}
