//! Admission against hostile numbers, with a server in the test process:
//! 1,000 connections from one user (refused past the per-uid cap, while
//! other users and, once they close, the same user are served), and
//! connections from another user that never send their hello (they hold
//! that user's handshake slots until the handshake timeout; everyone else
//! connects at once, and that user's own honest client gets in by retrying
//! `Busy`).

mod hostile;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use hostile::harness::{Test, wait_for_stats};
use hostile::probe::{expect_back, snapshot_with_server};
use hostile::proc::{Ctl, OTHER_UID, Role, field, root_or_skip, run_role};
use hostile::{ADD, Add, victim_server};
use isocall::raw::handshake::{self, REFUSED};
use isocall::raw::sys::{Ready, connect_seqpacket, poll_ready};
use isocall::rpc::Refusal;
use isocall::{Client, ClientOptions, ConnectError, Policy, SocketName};

const ROLES: &[Role] = &[
    ("flood_conns", flood_conns),
    ("one_call", one_call),
    ("silent", silent),
];

#[test]
#[ignore = "the entry point of the hostile peers, run by the tests themselves"]
fn role() {
    run_role(ROLES);
}

/// Connections the flooder attempts, and the per-uid cap.
const ATTEMPTS: usize = 1000;
const PER_UID: usize = 100;

fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// A server policy that lets this user and the second one in.
fn two_users() -> Policy {
    Policy::Allow {
        uids: vec![uid(), OTHER_UID],
        gids: vec![],
    }
}

/// Attacker: `ATTEMPTS` connections from four threads at once, keeping
/// those that succeed; says `held ok=N too_many=M other=K` (K: any other
/// outcome, the first described after it), then closes them all when told
/// `close` and says `closed`; exits when told.
fn flood_conns(arg: &str, ctl: &mut Ctl) {
    let socket = SocketName::Abstract(arg.to_string());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let (mut held, mut too_many, mut other) = (Vec::new(), 0usize, Vec::new());
                for _ in 0..ATTEMPTS / 4 {
                    match Client::connect_with(
                        &socket,
                        ClientOptions::default().handshake_timeout(Duration::from_secs(20)),
                    ) {
                        Ok(c) => held.push(c),
                        Err(ConnectError::Refused(Refusal::TooManyForUid { .. })) => too_many += 1,
                        Err(e) => other.push(e.to_string()),
                    }
                }
                (held, too_many, other)
            })
        })
        .collect();
    let (mut held, mut too_many, mut other) = (Vec::new(), 0, Vec::new());
    for t in threads {
        let (h, n, o) = t.join().expect("a connecting thread");
        held.extend(h);
        too_many += n;
        other.extend(o);
    }
    ctl.say(&format!(
        "held ok={} too_many={too_many} other={} {:?}",
        held.len(),
        other.len(),
        other.first()
    ));
    assert_eq!(ctl.hear(), "close");
    drop(held);
    ctl.say("closed");
    let _ = ctl.hear();
}

/// A client (of whichever user it runs as): connects, calls `add`, says
/// `ok MS` (the connect's milliseconds) or `err WHAT`.
fn one_call(arg: &str, ctl: &mut Ctl) {
    let socket = SocketName::Abstract(arg.to_string());
    let t = Instant::now();
    let r = Client::connect_with(
        &socket,
        ClientOptions::default()
            .server_policy(Policy::Anyone)
            .handshake_timeout(Duration::from_secs(10)),
    )
    .map_err(|e| e.to_string())
    .and_then(|mut c| {
        let took = t.elapsed();
        let add = c.method(ADD).map_err(|e| e.to_string())?;
        let s = c
            .call(add, &Add { a: 2, b: 40 })
            .map_err(|e| e.to_string())?;
        (s.sum.to_native() == 42)
            .then_some(took)
            .ok_or_else(|| "a wrong sum".to_string())
    });
    match r {
        Ok(took) => ctl.say(&format!("ok {}", took.as_millis())),
        Err(e) => ctl.say(&format!("err {e}")),
    }
}

fn count(line: &str, key: &str) -> usize {
    field(line, key)
}

#[test]
fn a_thousand_connections_from_one_user_are_capped_and_others_still_get_in() {
    let test = Test::start("flood_conns", Duration::from_secs(180));
    let socket = &test.socket;
    let server = victim_server(socket)
        .policy(two_users())
        .max_connections(2048, PER_UID)
        .spawn()
        .expect("server");
    let base = snapshot_with_server();
    let mut flooder = test.peer("flood_conns");
    let line = flooder.expect("held", Duration::from_secs(150));
    eprintln!("flood_conns: {line}");
    // Checked at the end, so that the rest is checked too.
    let mut failures = Vec::new();
    assert_eq!(count(&line, "ok="), PER_UID, "{line}");
    if count(&line, "too_many=") != ATTEMPTS - PER_UID || count(&line, "other=") != 0 {
        failures.push(format!(
            "of {} connections past the cap, only {} were refused with TooManyForUid: {line}",
            ATTEMPTS - PER_UID,
            count(&line, "too_many=")
        ));
    }
    // This user is at its cap: refused at once, with the cap named.
    let t = Instant::now();
    match Client::connect(socket) {
        Err(ConnectError::Refused(Refusal::TooManyForUid { uid: u, limit })) => {
            assert_eq!((u, limit as usize), (uid(), PER_UID));
        }
        Err(e) => failures.push(format!("a connection past the cap: {e:?}")),
        Ok(_) => panic!("a connection past the per-uid cap was accepted"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "refused after {:?}",
        t.elapsed()
    );
    // Another user is served meanwhile.
    if root_or_skip(
        "flood_conns",
        "the check that a client of another uid gets in meanwhile",
    ) {
        let mut p = test.peer_as("one_call", OTHER_UID);
        let l = p.line(Duration::from_secs(30));
        assert!(l.starts_with("ok "), "uid {OTHER_UID}: {l}");
        p.wait_ok(Duration::from_secs(10));
    }
    let s = server.stats();
    assert!(s.refused >= (ATTEMPTS - PER_UID) as u64, "{s:?}");
    flooder.send("close");
    flooder.expect("closed", Duration::from_secs(30));
    wait_for_stats(
        &server,
        Duration::from_secs(10),
        "the flood's connections to close",
        |s| s.open == 0,
    );
    // The same user, once its connections closed.
    let mut c = Client::connect(socket).expect("connect after the flood closed");
    let add = c.method(ADD).expect("add");
    assert_eq!(c.call(add, &Add { a: 1, b: 2 }).expect("add").sum, 3);
    drop(c);
    flooder.send("exit");
    flooder.wait_ok(Duration::from_secs(10));
    expect_back(&base, Duration::from_secs(20), "after the flood closed");
    test.stop_server(server);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Silent connections the attacker opens.
const SILENT: usize = 200;

/// Attacker: opens `SILENT` connections and never says hello; says
/// `silent n=N`; when told `exit`, says `refused_busy=B closed=C` (what
/// the server answered each: a `Busy` refusal, or a close at its handshake
/// timeout) and exits.
fn silent(arg: &str, ctl: &mut Ctl) {
    let socket = SocketName::Abstract(arg.to_string());
    let socks: Vec<_> = (0..SILENT)
        .map(|_| connect_seqpacket(&socket).expect("connect"))
        .collect();
    ctl.say(&format!("silent n={}", socks.len()));
    let _ = ctl.hear();
    let (mut busy, mut closed) = (0, 0);
    let mut buf = [0u8; 256];
    for s in &socks {
        if !poll_ready(&[(s.as_fd(), Ready::Readable)], Some(Duration::ZERO)).expect("poll")[0] {
            continue;
        }
        match rustix::net::recv(s, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((0, _)) => closed += 1,
            Ok((n, _)) if buf[0] == REFUSED => {
                if let Ok(Refusal::Busy { .. }) = handshake::decode_refusal(&buf[1..n]) {
                    busy += 1;
                }
            }
            _ => {}
        }
    }
    ctl.say(&format!("refused_busy={busy} closed={closed}"));
}

#[test]
fn silent_connections_of_another_user_delay_no_one_elses_connect() {
    if !root_or_skip("silent", "the silent peer run as a second user") {
        return;
    }
    let test = Test::start("silent", Duration::from_secs(120));
    let socket = &test.socket;
    let handshake = Duration::from_secs(1);
    let server = victim_server(socket)
        .policy(two_users())
        .handshake_timeout(handshake)
        .spawn()
        .expect("server");
    let base = snapshot_with_server();
    let mut quiet = test.peer_as("silent", OTHER_UID);
    quiet.expect("silent", Duration::from_secs(30));
    let since = Instant::now();
    // This user connects at once, twenty times, beside them.
    let mut slowest = Duration::ZERO;
    for i in 0..20u64 {
        let t = Instant::now();
        let mut c = Client::connect(socket).unwrap_or_else(|e| panic!("connect {i}: {e}"));
        slowest = slowest.max(t.elapsed());
        let add = c.method(ADD).expect("add");
        assert_eq!(c.call(add, &Add { a: i, b: 1 }).expect("add").sum, i + 1);
    }
    eprintln!("silent: the slowest of 20 connects beside them took {slowest:?}");
    assert!(
        slowest < Duration::from_millis(500),
        "a connect took {slowest:?}"
    );
    // An honest client of the silent user gets in by retrying `Busy`
    // until the silent handshakes time out.
    let mut p = test.peer_as("one_call", OTHER_UID);
    let l = p.line(Duration::from_secs(30));
    eprintln!(
        "silent: uid {OTHER_UID}'s honest client: {l} ({:?} after the silent ones came)",
        since.elapsed()
    );
    // Checked at the end, so that the rest is checked too.
    let mut failures = Vec::new();
    if !l.starts_with("ok ") {
        failures.push(format!(
            "an honest client of uid {OTHER_UID} beside its silent connections: {l}"
        ));
    }
    p.wait_ok(Duration::from_secs(10));
    quiet.send("exit");
    let answered = quiet.expect("refused_busy=", Duration::from_secs(10));
    eprintln!("silent: the silent connections got refused_busy={answered}");
    quiet.wait_ok(Duration::from_secs(10));
    let s = server.stats();
    eprintln!("silent: server stats {s:?}");
    assert!(s.refused >= 1 && s.failed >= 1, "{s:?}");
    wait_for_stats(
        &server,
        Duration::from_secs(10),
        "the silent connections to go",
        |s| s.open == 0,
    );
    expect_back(
        &base,
        Duration::from_secs(10),
        "after the silent connections went",
    );
    test.stop_server(server);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
