//! Supervision over the stream transports: the supervisor's instances
//! listen on a stream address (Unix stream, TCP, TCP + TLS, TCP + lz4),
//! one after the other, and its clients connect there. A crashing service
//! answers every idempotent call (retried on the successor), runs the
//! others at most once, and a killed instance is replaced before the next
//! call. (Shared memory, where the supervisor hands each instance its
//! connections: tests/supervise.rs.)

mod common;

use std::time::Duration;

use common::calc::{ADD, Add};
use common::services::{self, CRASH_ONE_IN, FILE, PID, QUEUED_START, SABOTAGE, SERVICE, temp_file};
use common::supervised::{bumps_at_most_once, pipelined_adds, served_pid, sigkill};
use common::transport::{Transport, supervisor_on};
use common::wait_until;
use isocall::supervise::SupervisorState;
use isocall::{Client, ClientOptions, ConnectError, SuperviseError};

const LIMIT: Duration = Duration::from_secs(30);

on_stream_transports!(
    idempotent_calls_through_a_crashing_service_all_answer_right,
    calls_that_are_not_idempotent_run_at_most_once_across_crashes,
    a_killed_instance_is_replaced_at_the_same_address,
    a_client_that_connects_while_no_instance_runs_waits_for_the_next,
    an_instance_that_shuts_the_socket_down_does_not_take_the_address_with_it,
    an_instance_that_shuts_the_socket_down_and_lives_on_is_replaced,
);

/// The entry the supervised children run (see `common::services`).
#[test]
#[ignore = "run by the supervision tests as a supervised child"]
fn service() {
    match std::env::var(SERVICE).as_deref() {
        Ok(QUEUED_START) => services::queued_start(),
        _ => services::serve(),
    }
}

fn idempotent_calls_through_a_crashing_service_all_answer_right(t: Transport) {
    let sup = supervisor_on(t, "crashy-stream", "crashy")
        .env(CRASH_ONE_IN, "40")
        .retries(20)
        .spawn()
        .expect("supervisor");
    let mut c = sup.client();
    pipelined_adds(&mut c, 50, format!("{t:?}"));
    let s = sup.stats();
    assert!(s.crashes > 2, "one call in 40 crashes: {s:?}");
    assert_eq!(s.calls_failed, 0, "{s:?}");
}

fn calls_that_are_not_idempotent_run_at_most_once_across_crashes(t: Transport) {
    let log = temp_file(&format!("bump-stream-{}", t.name()));
    let sup = supervisor_on(t, "at-most-once-stream", "counter")
        .env(CRASH_ONE_IN, "10")
        .env(FILE, &log)
        .spawn()
        .expect("supervisor");
    let mut c = sup.client();
    bumps_at_most_once(&mut c, 25, &log, format!("{t:?}"));
    assert_eq!(sup.stats().retries, 0);
}

fn a_killed_instance_is_replaced_at_the_same_address(t: Transport) {
    let sup = supervisor_on(t, "killed-stream", "plain")
        .spawn()
        .expect("supervisor");
    let mut c = sup.client();
    let first = served_pid(&mut c);
    assert_eq!(c.server_pid(), Some(first));
    sigkill(first);
    wait_until(LIMIT, "the successor serving", || {
        sup.service_pid().filter(|&p| p != first)
    });
    // The next call notices the death and goes to the successor, which
    // took the address over.
    let second = served_pid(&mut c);
    assert_ne!(second, first);
    assert_eq!(c.server_pid(), Some(second));
    let add = c.method(ADD).expect("add");
    assert_eq!(
        c.call(add, &Add { a: 2, b: 40 })
            .expect("add")
            .sum
            .to_native(),
        42
    );
}

#[test]
fn spares_and_an_address_are_refused_together() {
    let e = supervisor_on(Transport::UnixStream, "spares-stream", "plain")
        .standby(1)
        .spawn()
        .unwrap_err();
    assert!(matches!(e, SuperviseError::StandbyOnAddress), "{e}");
    let e = services::supervisor("no-address", "plain")
        .address("@a-shared-memory-name")
        .spawn()
        .unwrap_err();
    assert!(matches!(e, SuperviseError::Address(_)), "{e}");
}

/// The supervisor holds the address's socket across instances: a client
/// (not the supervisor's own) that connects after an instance was killed
/// and before its successor accepts waits in the socket's backlog and is
/// served by the successor. Where each instance bound the address itself,
/// nothing listened meanwhile and the connect was refused.
fn a_client_that_connects_while_no_instance_runs_waits_for_the_next(t: Transport) {
    let marker = temp_file(&format!("between-{}", t.name()));
    let sup = supervisor_on(t, "between-stream", QUEUED_START)
        .env(FILE, &marker)
        .spawn()
        .expect("supervisor");
    let first = sup.wait_serving(LIMIT).expect("the first instance serving");
    let at = sup.address().expect("a stream address").clone();
    sigkill(first);
    // The successor is started once the first is reaped; it serves only
    // once this client's connection is queued on the socket.
    let second = wait_until(LIMIT, "the successor started", || {
        sup.service_pid().filter(|&p| p != first)
    });
    assert_eq!(outside_served_pid(at), second);
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn an_address_in_use_fails_the_spawn_and_names_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let at = format!("tcp://{}", taken.local_addr().expect("its address"));
    let e = services::supervisor("taken-stream", "plain")
        .address(at.as_str())
        .spawn()
        .unwrap_err();
    assert!(matches!(e, SuperviseError::Listen { .. }), "{e}");
    let port = taken.local_addr().expect("its address").port().to_string();
    assert!(e.to_string().contains(&port), "{e}");
}

/// A service that failed (the restart-intensity limit) lets its address
/// go: a client that connects then is refused at once, instead of waiting
/// in the backlog of a socket no instance will accept on until its
/// handshake timeout.
#[test]
fn a_failed_service_lets_its_address_go() {
    let sup = supervisor_on(Transport::UnixStream, "failed-stream", "crash-at-start")
        .intensity(2, Duration::from_secs(60))
        .backoff(Duration::from_millis(1), Duration::from_millis(20))
        .spawn()
        .expect("supervisor");
    let at = sup.address().expect("a stream address").clone();
    wait_until(LIMIT, "the service failed", || {
        (sup.stats().state == SupervisorState::Failed).then_some(())
    });
    let e = Client::connect_with(at, ClientOptions::default().handshake_timeout(LIMIT))
        .expect_err("nobody listens");
    assert!(
        matches!(&e, ConnectError::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused),
        "{e:?}"
    );
}

/// Every instance holds the supervisor's listening socket, so one can shut
/// it down for all (TCP then stops listening; a Unix socket refuses every
/// connection). The supervisor binds the address again before it starts
/// the successor, which serves at the same address. Without that, the
/// successor took the dead socket and every later call failed.
fn an_instance_that_shuts_the_socket_down_does_not_take_the_address_with_it(t: Transport) {
    let (_sup, at, mut c, first, r) = sabotaged(supervisor_on(t, "sabotage-stream", "plain"), 1);
    let e = r.unwrap_err();
    assert!(e.to_string().contains("died"), "{e}");
    let second = served_pid(&mut c);
    assert_ne!(second, first);
    // At the address given out before: a client that is not the
    // supervisor's own reaches the successor there.
    assert_eq!(outside_served_pid(at), second);
}

/// The instance that shut the socket down lives on: its clients keep
/// their connections, but no new client reaches it. The supervisor sees
/// its socket hang up, replaces the instance, and the successor serves on
/// the address bound again, to an outside client (not the supervisor's
/// own) and to a new supervised client alike.
fn an_instance_that_shuts_the_socket_down_and_lives_on_is_replaced(t: Transport) {
    let (sup, at, _c, first, r) = sabotaged(supervisor_on(t, "shut-stream", "plain"), 0);
    r.expect("shut down, and lives on");
    let second = wait_until(LIMIT, "the instance replaced", || {
        sup.service_pid().filter(|&p| p != first)
    });
    assert_eq!(outside_served_pid(at), second);
    assert_eq!(served_pid(&mut sup.client()), second);
}

/// The instance that shut the socket down hangs (it never exits until
/// killed after the grace period) and keeps the Unix name bound: the
/// supervisor waits for its reap before it binds the name again, instead
/// of counting a failed start at every backoff, which the tight
/// intensity limit here would turn into a failed service.
#[test]
fn a_name_held_by_a_hung_instance_is_bound_again_once_it_is_reaped() {
    let b = supervisor_on(Transport::UnixStream, "hung-stream", "plain")
        .intensity(3, Duration::from_secs(60))
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .grace(Duration::from_millis(300));
    let (sup, at, _c, first, r) = sabotaged(b, 2);
    // Never answered: the instance is killed under the call.
    let e = r.unwrap_err();
    assert!(e.to_string().contains("died"), "{e}");
    let second = wait_until(LIMIT, "the instance replaced", || {
        sup.service_pid().filter(|&p| p != first)
    });
    assert_eq!(outside_served_pid(at), second);
    let s = sup.stats();
    assert_eq!(s.state, SupervisorState::Running, "{s:?}");
    assert_eq!(s.restarts, 1, "{s:?}");
}

/// Spawns `b`, then has its first instance shut its socket down with
/// `sabotage(a)` (see `services::SABOTAGE`). Returns the supervisor, its
/// address, the client that called, the first instance's pid and what
/// the call gave.
fn sabotaged(
    b: isocall::SupervisorBuilder,
    a: u64,
) -> (
    isocall::Supervisor,
    isocall::Endpoint,
    isocall::SupervisedClient,
    u32,
    Result<(), isocall::SupervisedError>,
) {
    let sup = b.spawn().expect("supervisor");
    let at = sup.address().expect("a stream address").clone();
    let mut c = sup.client();
    let first = served_pid(&mut c);
    let m = c.method(SABOTAGE).expect("sabotage");
    let r = c.call(m, &Add { a, b: 0 }).map(|_| ());
    (sup, at, c, first, r)
}

/// The pid of the instance that serves a client at `at` that is not the
/// supervisor's own (a plain `Client`, waiting up to `LIMIT` for an
/// instance to accept and greet it).
fn outside_served_pid(at: isocall::Endpoint) -> u32 {
    let mut c = Client::connect_with(at, ClientOptions::default().handshake_timeout(LIMIT))
        .expect("connected at the service's address");
    let pid = c.method(PID).expect("pid method");
    let served = c.call(pid, &Add { a: 0, b: 0 }).expect("pid call");
    served.sum.to_native() as u32
}
