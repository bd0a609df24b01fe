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
use common::services::{self, CRASH_ONE_IN, FILE, temp_file};
use common::supervised::{bumps_at_most_once, pipelined_adds, served_pid, sigkill};
use common::transport::{Transport, supervisor_on};
use common::wait_until;
use isocall::SuperviseError;

const LIMIT: Duration = Duration::from_secs(30);

on_stream_transports!(
    idempotent_calls_through_a_crashing_service_all_answer_right,
    calls_that_are_not_idempotent_run_at_most_once_across_crashes,
    a_killed_instance_is_replaced_at_the_same_address,
);

/// The entry the supervised children run (see `common::services`).
#[test]
#[ignore = "run by the supervision tests as a supervised child"]
fn service() {
    services::serve();
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
