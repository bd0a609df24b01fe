//! Supervision with real processes: services (this test binary re-executed
//! as a command line) that abort now and then, crash at once, or are killed
//! with `SIGKILL` from outside, behind a `Supervisor`.

mod common;

use std::time::{Duration, Instant};

use common::calc::{ADD, Add};
use common::services::{
    self, BUMP, Bump, CRASH_ONE_IN, FILE, HOLD, SUM_BLOB, supervisor, temp_file,
};
use common::supervised::{
    add, bumps_at_most_once, current_segment, fails_again, holders_of, patient, pipelined_adds,
    segment_inode, served_pid, sigkill, sigstop, wait_released,
};
use common::wait_until;
use isocall::blob::{BlobError, SlotState};
use isocall::raw::Side;
use isocall::raw::sys::PidFd;
use isocall::supervise::{ENV_SERVICE, LastExit, NotSupervised, SupervisorState};
use isocall::{CallError, ServerBuilder, ServiceFailure, SuperviseError, SupervisedError};

const LIMIT: Duration = Duration::from_secs(30);

/// The entry the supervised children run (see `common::services`).
#[test]
#[ignore = "run by the supervision tests as a supervised child"]
fn service() {
    services::serve();
}

#[test]
fn pipelined_idempotent_calls_through_a_crashing_service_all_answer_right() {
    let sup = supervisor("crashy-pipelined", "crashy")
        .env(CRASH_ONE_IN, "40")
        .retries(20)
        .standby(1)
        .spawn()
        .expect("supervisor");
    let mut c = sup.client();
    pipelined_adds(&mut c, 250, "shared memory");
    let s = sup.stats();
    assert!(s.crashes > 10, "one call in 40 crashes: {s:?}");
    assert!(s.retries >= s.crashes / 2, "{s:?}");
    assert_eq!(s.calls_failed, 0, "{s:?}");
    assert_eq!(s.state, SupervisorState::Running);
}

#[test]
fn calls_that_are_not_idempotent_run_at_most_once_across_crashes() {
    let log = temp_file("bump");
    let sup = supervisor("at-most-once", "counter")
        .env(CRASH_ONE_IN, "10")
        .env(FILE, &log)
        .spawn()
        .expect("supervisor");
    let mut c = sup.client();
    let died = bumps_at_most_once(&mut c, 100, &log, "shared memory");
    let s = sup.stats();
    assert_eq!(s.retries, 0, "nothing is retried: {s:?}");
    assert_eq!(s.calls_failed, died.len() as u64, "{s:?}");
    assert!(s.crashes > 0);
}

/// With `batch_requests`, the third of three calls started together is
/// held back (written, not published). The server is stopped before the
/// calls (it reads none of them), then killed. The two published calls
/// fail with `PeerDied`: the server may have run them, and `bump` is not
/// idempotent. The one held back never reached it: it is sent to the
/// successor, and answered, and runs once. Before, it failed with
/// `PeerDied` too, and a wait published it into the dead server's ring.
#[test]
fn a_call_held_back_when_its_server_dies_goes_to_the_successor_whatever_its_method() {
    let log = temp_file("held-back");
    let sup = supervisor("held-back", "counter")
        .env(FILE, &log)
        .client_options(patient().batch_requests(true))
        .spawn()
        .expect("supervisor");
    let mut c = sup.client();
    let victim = served_pid(&mut c);
    let m = c.method(BUMP).expect("bump");
    assert!(!m.is_idempotent());
    sigstop(victim);
    let pending: Vec<_> = (1..=3u64)
        .map(|id| (id, c.start(m, &Bump { id }, &[]).expect("start")))
        .collect();
    sigkill(victim);
    wait_until(LIMIT, "the supervisor to count the crash", || {
        (sup.stats().crashes >= 1).then_some(())
    });
    let mut answered = Vec::new();
    for (id, p) in pending {
        match c.wait(p, None) {
            Ok(v) => {
                assert_eq!(v.sum.to_native(), id);
                answered.push(id);
            }
            Err(SupervisedError::Call(CallError::PeerDied)) => assert!(id < 3, "call {id} lost"),
            Err(e) => panic!("call {id}: unexpected {e}"),
        }
    }
    assert_eq!(answered, [3], "only the call held back is sent again");
    assert_ne!(served_pid(&mut c), victim);
    let text = std::fs::read_to_string(&log).expect("the successor's log");
    let _ = std::fs::remove_file(&log);
    assert_eq!(
        text, "3\n",
        "the stopped server ran nothing, the successor call 3 once"
    );
    let s = sup.stats();
    assert_eq!((s.retries, s.calls_failed), (1, 2), "{s:?}");
}

/// As above, with `batch_requests`: requests are held back as the calls
/// start and published by the first wait, so a crash (in a handler) finds
/// them published, and none may be sent again: the client's record of
/// what it held back must not let one run twice.
#[test]
fn calls_that_are_not_idempotent_run_at_most_once_across_crashes_when_held_back() {
    let log = temp_file("bump-held");
    let sup = supervisor("at-most-once-held", "counter")
        .env(CRASH_ONE_IN, "10")
        .env(FILE, &log)
        .client_options(patient().batch_requests(true))
        .spawn()
        .expect("supervisor");
    let mut c = sup.client();
    let died = bumps_at_most_once(&mut c, 100, &log, "shared memory, held back");
    let s = sup.stats();
    assert_eq!(s.calls_failed, died.len() as u64, "{s:?}");
    assert!(s.crashes > 0);
}

#[test]
fn a_service_that_crashes_at_start_hits_the_intensity_limit_with_a_clear_error() {
    let sup = supervisor("doomed", "crash-at-start")
        .intensity(3, Duration::from_secs(30))
        .backoff(Duration::from_millis(1), Duration::from_millis(20))
        .client_options(patient())
        .spawn()
        .expect("supervisor");
    let mut c = sup.client();
    let t = Instant::now();
    let e = c.method(ADD).expect_err("the service never comes up");
    assert!(
        t.elapsed() < LIMIT,
        "the limit stopped it, not the deadline"
    );
    let msg = e.to_string();
    let SupervisedError::Service(ServiceFailure::TooManyRestarts {
        service,
        restarts,
        limit,
        last_exit,
        ..
    }) = &e
    else {
        panic!("expected the intensity limit, got {e:?}");
    };
    assert_eq!(service, "doomed", "names the service");
    assert_eq!((*restarts, *limit), (3, 3), "{msg}");
    assert!(
        matches!(last_exit, LastExit::Signaled { signal: 6, .. }),
        "names the last exit (SIGABRT): {msg}"
    );
    let s = sup.stats();
    assert_eq!(s.state, SupervisorState::Failed);
    assert_eq!(s.starts, 4, "{s:?}");
    assert_eq!(s.crashes, 4, "{s:?}");
    // Every later call fails the same way, at once.
    fails_again(&mut c, &msg, |f| {
        matches!(f, ServiceFailure::TooManyRestarts { .. })
    });
}

#[test]
fn a_service_killed_while_idle_is_replaced_before_the_next_call() {
    let sup = supervisor("killed-idle", "plain")
        .spawn()
        .expect("supervisor");
    let mut c = sup.client();
    assert_eq!(add(&mut c, 2, 3).unwrap(), 5);
    let first = served_pid(&mut c);
    assert_eq!(c.server_pid(), Some(first));
    let dead = current_segment(&mut c);
    assert!(!holders_of(dead).is_empty(), "the live segment is found");
    sigkill(first);
    // The next call (idempotent) goes to the successor.
    assert_eq!(add(&mut c, 20, 22).unwrap(), 42);
    let second = served_pid(&mut c);
    assert_ne!(first, second);
    assert_ne!(current_segment(&mut c), dead, "the successor has its own");
    // The dead instance's segment is released (dropped in the background).
    wait_released(dead, "the dead instance's segment");
    let s = sup.stats();
    assert_eq!((s.starts, s.crashes, s.restarts), (2, 1, 1), "{s:?}");
    assert_eq!(s.service_pid, second);
}

#[test]
fn a_call_that_is_not_idempotent_fails_when_its_server_is_killed_during_it() {
    let marker = temp_file("hold");
    let sup = supervisor("killed-in-call", "plain")
        .env(FILE, &marker)
        .spawn()
        .expect("supervisor");
    let mut c = sup.client();
    let hold = c.method(HOLD).expect("hold");
    let pool = c.pool().unwrap().expect("a pool");
    let mut blob = pool.alloc(1000).unwrap();
    blob.fill(7);
    let h = blob.send().unwrap();
    let p = c.start(hold, &Add { a: 1, b: 1 }, &[h]).unwrap();
    wait_until(LIMIT, "the server holding the blob", || {
        let (state, _) = pool.slot_state(h.class as usize, h.slot as usize)?;
        (state == SlotState::Held(Side::Server.into()) && marker.exists()).then_some(())
    });
    let pid = c.server_pid().unwrap();
    let dead = segment_inode(&pool);
    sigkill(pid);
    let e = c.wait(p, None).unwrap_err();
    assert!(e.is_peer_died(), "{e:?}");
    let _ = std::fs::remove_file(&marker);
    drop(pool);
    // The successor serves.
    assert_eq!(add(&mut c, 1, 1).unwrap(), 2);
    assert_ne!(served_pid(&mut c), pid);
    assert_eq!(sup.stats().calls_failed, 1);
    // The dead instance's segment, with the blob it held, is gone.
    assert_ne!(current_segment(&mut c), dead, "the successor has its own");
    wait_released(dead, "the dead instance's segment");
}

#[test]
fn an_idempotent_call_whose_server_dies_holding_its_blob_is_retried_with_the_blob() {
    let marker = temp_file("sum-blob");
    let sup = supervisor("killed-holding", "plain")
        .env(FILE, &marker)
        .spawn()
        .expect("supervisor");
    let mut c = sup.client();
    let m = c.method(SUM_BLOB).expect("sum_blob");
    let pool = c.pool().unwrap().expect("a pool");
    let mut blob = pool.alloc(4096).unwrap();
    for (i, b) in blob.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    blob[0] = 1;
    let want: u64 = blob.iter().map(|&b| u64::from(b)).sum();
    let h = blob.send().unwrap();
    let p = c.start(m, &Add { a: 0, b: 0 }, &[h]).unwrap();
    wait_until(LIMIT, "the first instance holding the blob", || {
        marker.exists().then_some(())
    });
    let pid = c.server_pid().unwrap();
    let dead = segment_inode(&pool);
    sigkill(pid);
    // Retried on the successor, with the blob's bytes copied over.
    let sum = c.wait(p, None).unwrap().sum.to_native();
    assert_eq!(sum, want);
    assert_ne!(served_pid(&mut c), pid);
    let _ = std::fs::remove_file(&marker);
    let s = sup.stats();
    assert_eq!((s.retries, s.calls_failed), (1, 0), "{s:?}");
    // A handle of the dead instance's pool is refused on the new one: its
    // slot there is not in flight to the server.
    let e = c.call_with(m, &Add { a: 0, b: 0 }, &[h], None).unwrap_err();
    assert!(
        matches!(
            e,
            SupervisedError::Call(CallError::Blob(BlobError::WrongState { .. }))
        ),
        "{e:?}"
    );
    // After the recovery the dead instance's segment, with its blobs, is
    // gone from this process (the test's `pool` held it last).
    assert_ne!(current_segment(&mut c), dead, "the successor has its own");
    drop(pool);
    wait_released(dead, "the dead instance's segment");
}

#[test]
fn a_warm_spare_takes_over_and_is_replaced() {
    let sup = supervisor("standby", "plain")
        .standby(1)
        .spawn()
        .expect("supervisor");
    assert!(sup.wait_spares_ready(1, LIMIT));
    let spare = sup.spare_pids();
    assert_eq!(spare.len(), 1);
    let mut c = sup.client();
    let first = served_pid(&mut c);
    assert!(!spare.contains(&first));
    sigkill(first);
    assert_eq!(add(&mut c, 4, 4).unwrap(), 8);
    assert_eq!(served_pid(&mut c), spare[0], "the spare took over");
    // A new spare is started and handshaken in the background.
    assert!(sup.wait_spares_ready(1, LIMIT));
    let new_spare = sup.spare_pids();
    assert_eq!(new_spare.len(), 1);
    assert!(!new_spare.contains(&spare[0]) && !new_spare.contains(&first));
}

#[test]
fn the_service_dies_with_its_supervisor() {
    // The supervisor lives in a helper process, which is killed.
    let mut host = common::Peer::spawn("supervisor_host", "host");
    let line = host.read_line(LIMIT);
    let pid: u32 = line
        .strip_prefix("service ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("host said {line:?}"));
    let service = PidFd::open(pid).expect("pidfd of the service");
    sigkill(host.child.id());
    let _ = host.wait(LIMIT);
    assert!(
        service.wait_exit(Some(LIMIT)).expect("wait"),
        "the service outlived its supervisor"
    );
}

/// The helper process of `the_service_dies_with_its_supervisor`.
#[test]
#[ignore = "run by the_service_dies_with_its_supervisor"]
fn supervisor_host() {
    if std::env::var(common::ROLE_ENV).is_err() {
        return;
    }
    // Stdin is the socket to the test; take it before the supervisor
    // starts children (they get their own stdin).
    let sock = std::os::fd::AsFd::as_fd(&std::io::stdin())
        .try_clone_to_owned()
        .expect("dup stdin");
    let mut sock = std::os::unix::net::UnixStream::from(sock);
    let sup = supervisor("host", "plain").spawn().expect("supervisor");
    let pid = sup.wait_serving(LIMIT).expect("serving");
    std::io::Write::write_all(&mut sock, format!("service {pid}\n").as_bytes()).expect("tell");
    // Until killed.
    let mut buf = [0u8; 1];
    let _ = std::io::Read::read(&mut sock, &mut buf);
}

#[test]
fn a_server_not_started_by_a_supervisor_says_so() {
    // This test process has no supervisor environment.
    let e = ServerBuilder::supervised().expect_err("not supervised");
    assert!(
        matches!(e, NotSupervised::MissingEnv { var } if var == ENV_SERVICE),
        "{e:?}"
    );
}

#[test]
fn a_bad_supervisor_configuration_is_refused() {
    let e = supervisor("", "plain").spawn().unwrap_err();
    assert!(
        matches!(&e, SuperviseError::BadName { name } if name.is_empty()),
        "{e}"
    );
    let e = supervisor("a/b", "plain").spawn().unwrap_err();
    assert!(
        matches!(&e, SuperviseError::BadName { name } if name == "a/b"),
        "{e}"
    );
}
