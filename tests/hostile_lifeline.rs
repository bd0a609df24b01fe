//! Clients that lie in their lifeline word, against a server in the test
//! process: one writes a thread id that is not its own (a live thread of
//! the server's process) and exits, one rewrites its word in a loop. The
//! server learns the first's death from the kernel and frees its
//! connection; the second costs its watch thread no CPU to speak of, and
//! neither delays the server's other clients or its drop.

mod hostile;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hostile::harness::{Test, wait_for_stats};
use hostile::probe::{expect_back, snapshot, thread_cpu};
use hostile::proc::{Ctl, Peer, Role, drop_promptly, run_role, wait_for};
use hostile::raw::{RawClient, RawLink};
use hostile::{Honest, victim_server};
use isocall::SocketName;
use isocall::raw::Side;
use isocall::raw::sys::futex_wake;
use isocall::raw::sys::lifeline::{TID_MASK, WAITERS};

const ROLES: &[Role] = &[
    ("fake_lifeline", fake_lifeline),
    ("flap_lifeline", flap_lifeline),
];

#[test]
#[ignore = "the entry point of the hostile peers, run by the tests themselves"]
fn role() {
    run_role(ROLES);
}

/// `socket tid` in a role's argument.
fn socket_and_tid(arg: &str) -> (SocketName, u32) {
    let (s, t) = arg.split_once(' ').expect("`socket tid`");
    (SocketName::Abstract(s.into()), t.parse().expect("a tid"))
}

/// The lifeline word of the client side of `link`.
fn lifeline(link: &RawLink) -> &AtomicU32 {
    link.segment.lifeline(Side::Client).expect("lifeline word")
}

/// Connects to the socket in `arg` as a raw client whose lifeline word
/// holds the `tid` in `arg` before the client says ready (when the
/// server's watch on it starts); returns the client and that tid.
fn connect_lying(arg: &str) -> (RawClient, u32) {
    let (socket, tid) = socket_and_tid(arg);
    let c = RawClient::connect_with(&socket, |l| {
        lifeline(l).store(tid & TID_MASK, Ordering::Release);
    })
    .expect("connect");
    (c, tid)
}

/// Attacker: before it says ready, writes `tid` (a thread of the server's
/// process, alive throughout) into its lifeline word, so the word reads
/// "held" forever and the kernel never marks it; then says `lying` and
/// exits when told, once the server's watch sleeps on the word.
fn fake_lifeline(arg: &str, ctl: &mut Ctl) {
    let (c, tid) = connect_lying(arg);
    let w = lifeline(&c.link);
    // Until the server's watch announced itself asleep on the word.
    let limit = Instant::now() + Duration::from_secs(10);
    while w.load(Ordering::Acquire) & WAITERS == 0 {
        assert!(
            Instant::now() < limit,
            "the server's watch never waited on the word"
        );
        std::thread::park_timeout(Duration::from_micros(200));
    }
    ctl.say("lying");
    let _ = ctl.hear();
    // The word still names the server's thread as the process exits.
    assert_eq!(w.load(Ordering::Acquire) & TID_MASK, tid & TID_MASK);
}

/// Starts the attacker `role` against the test's server with the id of
/// this thread (a live thread of the server's process) to lie with.
fn spawn_liar(test: &Test, role: &str) -> Peer {
    let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
    Peer::spawn(
        role,
        &format!("{} {tid}", hostile::abstract_name(&test.socket)),
    )
}

#[test]
fn a_client_that_wrote_a_live_thread_into_its_lifeline_and_died_is_found_dead() {
    let test = Test::start("fake_lifeline", Duration::from_secs(60));
    let server = victim_server(&test.socket).spawn().expect("server");
    let honest = Honest::running(&test.socket, Duration::from_secs(10));
    let base = snapshot();
    let mut liar = spawn_liar(&test, "fake_lifeline");
    liar.expect("lying", Duration::from_secs(20));
    wait_for_stats(
        &server,
        Duration::from_secs(10),
        "the liar's connection",
        |s| s.open == 2 && s.accepted == 2,
    );
    liar.send("exit");
    liar.wait_ok(Duration::from_secs(10));
    let died = Instant::now();
    // Death is learnt from the kernel within the watch's recheck (0.5 s);
    // a watch that believed the word would wait forever.
    wait_for_stats(
        &server,
        Duration::from_secs(5),
        "the server to close the dead liar's connection",
        |s| s.closed == 1 && s.open == 1,
    );
    let took = died.elapsed();
    eprintln!("fake_lifeline: the death was learnt in {took:?}");
    assert!(took < Duration::from_secs(2), "learnt in {took:?}");
    expect_back(
        &base,
        Duration::from_secs(10),
        "after the liar's death (segment unmapped, fds and threads back)",
    );
    honest.progresses(10, Duration::from_secs(10));
    honest.finish_ok();
    test.stop_server(server);
}

/// Attacker: holds a word that reads "held" by `tid`, then rewrites it
/// (two held values in turn) and wakes its waiters as fast as it can,
/// until told to stop; says `flapping` first and `flaps N` at the end.
fn flap_lifeline(arg: &str, ctl: &mut Ctl) {
    let (c, tid) = connect_lying(arg);
    let w = lifeline(&c.link);
    ctl.say("flapping");
    let mut n = 0u64;
    loop {
        for _ in 0..1000 {
            n += 1;
            let v = if n & 1 == 0 { tid } else { tid ^ 1 };
            w.store(v & TID_MASK, Ordering::Release);
            let _ = futex_wake(w, u32::MAX >> 1);
        }
        if ctl.hear_within(Duration::from_micros(1)).is_some() {
            break;
        }
    }
    ctl.say(&format!("flaps {n}"));
}

#[test]
fn a_client_flapping_its_lifeline_burns_no_cpu_of_the_server() {
    let test = Test::start("flap_lifeline", Duration::from_secs(60));
    let server = victim_server(&test.socket).spawn().expect("server");
    let honest = Honest::running(&test.socket, Duration::from_secs(10));
    let mut flapper = spawn_liar(&test, "flap_lifeline");
    flapper.expect("flapping", Duration::from_secs(20));
    // The watch threads (ours of the flapper, and both of the honest
    // connection) while the word flaps for two seconds of wall time.
    let window = Duration::from_secs(2);
    let cpu0 = thread_cpu("isocall-peer");
    let t0 = Instant::now();
    honest.progresses(100, Duration::from_secs(10));
    wait_for(window * 2, "two seconds of flapping", || {
        (t0.elapsed() >= window)
            .then_some(())
            .ok_or_else(|| format!("{:?}", t0.elapsed()))
    });
    let wall = t0.elapsed();
    let used = thread_cpu("isocall-peer").saturating_sub(cpu0);
    eprintln!("flap_lifeline: the watch threads used {used:?} of CPU in {wall:?} of flapping");
    assert!(
        used * 10 < wall,
        "the watch threads used {used:?} of CPU in {wall:?} of a flapping lifeline"
    );
    let s = server.stats();
    assert_eq!(
        (s.open, s.closed),
        (2, 0),
        "a flapping word is no death: {s:?}"
    );
    honest.finish_ok();
    // Dropping the server while the word still flaps returns.
    drop_promptly(server, "server");
    flapper.send("stop");
    let flaps = flapper.expect("flaps", Duration::from_secs(10));
    eprintln!("flap_lifeline: {flaps} rewrites of the word");
    flapper.wait_ok(Duration::from_secs(10));
    test.expect_back("after the server stopped");
}
