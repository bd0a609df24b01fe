//! Hostile clients that make a server in the test process spend: clients
//! that never read their replies (their reply rings stay full), clients
//! that send sparse memfds of up to 64 TiB as large blobs, clients that
//! connect and then say nothing (closed at the idle timeout), and a
//! process that holds many connections (each costs the pages it touched,
//! not its whole segment). The server's other clients stay fast, what
//! passes its caps is refused with a typed error, its memory and address
//! space stay bounded, and nothing is left once the attackers are gone.

mod hostile;

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hostile::harness::Test;
use hostile::probe::{expect_back, snapshot, snapshot_with_server, vm_size_kib};
use hostile::proc::{Ctl, Role, run_role, wait_for};
use hostile::raw::{RawClient, archive};
use hostile::{ADD, Add, ArchivedDigest, Digest, Honest, digest, victim_server};
use isocall::blob::BlobHandle;
use isocall::raw::SegmentLayout;
use isocall::raw::sys::send_with_fds;
use isocall::raw::wire::{CallHead, ErrorBody, Status, kind};
use isocall::rpc::{BlobAccessError, LARGE_CLASS, LargeError, LargeLimits};
use isocall::{AppError, CallCtx, CallError, Client, CloseReason, Method, SocketName};

const ROLES: &[Role] = &[
    ("stall", stall),
    ("huge_blobs", huge_blobs),
    ("hold_conns", hold_conns),
];

#[test]
#[ignore = "the entry point of the hostile peers, run by the tests themselves"]
fn role() {
    run_role(ROLES);
}

/// Stalled connections the attacker holds at once, and how many times it
/// stalls a new set.
const STALLED: usize = 3;
const ROUNDS: usize = 3;

/// Attacker: `ROUNDS` times, opens `STALLED` connections and pipelines
/// `add` requests on each until its request ring is full, never reading a
/// reply; says `stalled` once they all are, then `closed FIRST FULL` for
/// each as the server hangs it up (milliseconds since its first request,
/// and since its request ring was found full).
fn stall(arg: &str, ctl: &mut Ctl) {
    let socket = SocketName::Abstract(arg.to_string());
    let body = archive(&Add { a: 1, b: 2 });
    for _ in 0..ROUNDS {
        let mut conns = Vec::new();
        for _ in 0..STALLED {
            let mut c = RawClient::connect(&socket).expect("connect");
            let method = c.method(ADD.name());
            let first = Instant::now();
            let mut id = 0u64;
            let limit = Instant::now() + Duration::from_secs(20);
            // Full means: the request ring stays full while the server
            // has stopped taking requests (its reply ring is full).
            let mut full_since: Option<Instant> = None;
            loop {
                id += 1;
                let head = CallHead {
                    id,
                    method,
                    ..CallHead::default()
                };
                match c.link.try_put(kind::REQUEST, head, &body).expect("put") {
                    Some(()) => full_since = None,
                    None => {
                        let since = *full_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_millis(20) {
                            break;
                        }
                    }
                }
                assert!(Instant::now() < limit, "the rings never filled");
            }
            conns.push((c, first, Instant::now()));
        }
        ctl.say("stalled");
        let limit = Instant::now() + Duration::from_secs(30);
        while !conns.is_empty() {
            let mut i = 0;
            while i < conns.len() {
                if conns[i].0.link.hung_up() {
                    let (_, first, full) = conns.swap_remove(i);
                    ctl.say(&format!(
                        "closed {} {}",
                        first.elapsed().as_millis(),
                        full.elapsed().as_millis()
                    ));
                } else {
                    i += 1;
                }
            }
            assert!(Instant::now() < limit, "the server never closed them");
            std::thread::park_timeout(Duration::from_millis(1));
        }
    }
}

#[test]
fn clients_that_never_read_replies_do_not_slow_the_others() {
    let test = Test::start("stall", Duration::from_secs(120));
    let reply_timeout = Duration::from_millis(1000);
    let server = victim_server(&test.socket)
        .workers(1)
        .reply_timeout(reply_timeout)
        .max_frame(4096)
        .layout(SegmentLayout {
            ring_capacity: 64 << 10,
            ..SegmentLayout::default()
        })
        .spawn()
        .expect("server");
    let honest = Honest::running(&test.socket, Duration::from_secs(10));
    let base = snapshot();
    let mut attacker = test.peer("stall");
    let mut closed_after = Vec::new();
    for round in 0..ROUNDS {
        attacker.expect("stalled", Duration::from_secs(30));
        // While the three are stalled, the honest client goes on.
        honest.progresses(20, reply_timeout / 2);
        for _ in 0..STALLED {
            let l = attacker.expect("closed", reply_timeout * 5);
            let ms: Vec<u64> = l
                .split_whitespace()
                .map(|w| w.parse().expect("ms"))
                .collect();
            closed_after.push((Duration::from_millis(ms[0]), Duration::from_millis(ms[1])));
        }
        eprintln!("stall: round {round} closed after {closed_after:?}");
    }
    attacker.wait_ok(Duration::from_secs(10));
    for (from_first, from_full) in &closed_after {
        // Paused no earlier than its first request, so closed no earlier
        // than reply_timeout after it; and not long after its rings were
        // full.
        assert!(
            *from_first >= reply_timeout && *from_full < reply_timeout * 4,
            "a stalled connection was closed {from_first:?} after its first request, \
             {from_full:?} after its rings were full (reply_timeout {reply_timeout:?})"
        );
    }
    let report = honest.finish_ok();
    eprintln!(
        "stall: the honest client made {} calls, the slowest {:?}",
        report.calls, report.slowest
    );
    assert!(
        report.slowest < reply_timeout / 4,
        "an honest call took {:?} beside clients that read no replies (reply_timeout {reply_timeout:?})",
        report.slowest
    );
    let s = server.stats();
    assert!(s.paused >= (STALLED * ROUNDS) as u64, "{s:?}");
    assert!(s.closed >= (STALLED * ROUNDS) as u64, "{s:?}");
    expect_back(
        &base,
        Duration::from_secs(10),
        "after the stalled connections closed",
    );
    test.stop_server(server);
}

/// The digest of the first MiB of a large blob (or its typed refusal).
const LARGE: Method<Add, Digest> = Method::new("large");

/// AppError codes the `large` handler answers with, by the refusal.
fn refusal_code(e: &BlobAccessError) -> u32 {
    match e {
        BlobAccessError::Large(LargeError::TooManyBytes { .. }) => 10,
        BlobAccessError::Large(LargeError::Map { .. }) => 11,
        BlobAccessError::Large(LargeError::LongerThanShared { .. }) => 12,
        BlobAccessError::Large(LargeError::NeverShared { .. }) => 13,
        BlobAccessError::Large(LargeError::TooMany { .. }) => 14,
        _ => 99,
    }
}

const TIB: u64 = 1 << 40;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// One hostile large blob: the memfd's size, whether it is sealed, the
/// length announced with it, the length its handle names, whether it is
/// shared at all, and what the server must answer (0: a digest).
struct Case {
    name: &'static str,
    size: u64,
    sealed: bool,
    announced: u64,
    handle_len: u32,
    shared: bool,
    code: u32,
}

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    let c = |name, size, sealed, announced, handle_len, shared, code| Case {
        name, size, sealed, announced, handle_len, shared, code,
    };
    // Mapped bytes add up on the connection (the cap is 1 GiB).
    vec![
        c("64TiB-announced-1MiB", 64 * TIB, true, MIB, MIB as u32, true, 0),
        c("64TiB-announced-64TiB", 64 * TIB, true, 64 * TIB, u32::MAX, true, 10),
        c("64TiB-announced-2GiB", 64 * TIB, true, 2 * GIB, u32::MAX, true, 10),
        c("4KiB-announced-256MiB", 4096, true, 256 * MIB, 4096, true, 11),
        c("unsealed-1MiB", MIB, false, MIB, MIB as u32, true, 11),
        c("64TiB-announced-512MiB", 64 * TIB, true, 512 * MIB, MIB as u32, true, 0),
        c("64TiB-announced-512MiB-past-the-cap", 64 * TIB, true, 512 * MIB, MIB as u32, true, 10),
        c("handle-longer-than-announced", 64 * TIB, true, 4096, 8192, true, 12),
        c("never-shared", 0, true, 0, 4096, false, 13),
        c("64TiB-announced-1MiB-again", 64 * TIB, true, MIB, MIB as u32, true, 0),
    ]
}

/// Attacker: for each case, makes a memfd of the case's size (sparse:
/// nothing is written but a marker), seals it or not, sends it with the
/// large-blob message (`b'L'`, id, announced length) and calls `large`
/// with its handle; says `case NAME STATUS CODE` for each, then `done`.
fn huge_blobs(arg: &str, ctl: &mut Ctl) {
    let socket = SocketName::Abstract(arg.to_string());
    let mut c = RawClient::connect(&socket).expect("connect");
    let method = c.method(LARGE.name());
    let body = archive(&Add { a: 0, b: 0 });
    for (i, case) in cases().iter().enumerate() {
        let id = 0x5EED_0000_0000u64 + i as u64;
        if case.shared {
            use rustix::fs::{MemfdFlags, SealFlags};
            let fd =
                rustix::fs::memfd_create("hostile:huge", MemfdFlags::ALLOW_SEALING).expect("memfd");
            rustix::fs::ftruncate(&fd, case.size).expect("ftruncate");
            rustix::io::pwrite(&fd, b"hostile", 0).expect("marker");
            if case.sealed {
                rustix::fs::fcntl_add_seals(
                    &fd,
                    SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
                )
                .expect("seal");
            }
            let mut msg = vec![b'L'];
            msg.extend_from_slice(&id.to_le_bytes());
            msg.extend_from_slice(&case.announced.to_le_bytes());
            send_with_fds(
                c.link.sock.as_fd(),
                &msg,
                &[fd.as_fd()],
                Instant::now() + Duration::from_secs(10),
            )
            .expect("send the memfd");
        }
        let handle = BlobHandle {
            class: LARGE_CLASS,
            slot: id as u32,
            generation: (id >> 32) as u32,
            len: case.handle_len,
        };
        c.request(i as u64 + 1, method, &[handle], &body)
            .expect("request");
        let (status, _, reply) = c
            .response(i as u64 + 1, Instant::now() + Duration::from_secs(20))
            .expect("response");
        let code = if status == Status::Ok as u32 {
            let d = rkyv::access::<ArchivedDigest, rkyv::rancor::Error>(&reply).expect("digest");
            let want = digest(b"hostile");
            assert_eq!(d.sum.to_native(), want.1, "{}: the marker", case.name);
            0
        } else {
            ErrorBody::read(&reply).0
        };
        ctl.say(&format!("case {} {status} {code}", case.name));
    }
    ctl.say("done");
    let _ = ctl.hear();
}

#[test]
fn sparse_huge_memfds_as_large_blobs_are_mapped_only_as_announced_or_refused() {
    let test = Test::start("huge_blobs", Duration::from_secs(120));
    let vm_max = Arc::new(AtomicU64::new(0));
    let vm = vm_max.clone();
    let server = victim_server(&test.socket)
        .limits({
            let mut l = isocall::Limits::default();
            l.large = LargeLimits {
                count: 16,
                bytes: GIB,
            };
            l
        })
        .method(
            LARGE,
            move |_: &hostile::ArchivedAdd, ctx: &mut CallCtx<'_>| {
                let r = match ctx.large(0) {
                    Ok(bytes) => {
                        let (_, sum) = digest(&bytes[..bytes.len().min(MIB as usize)]);
                        Ok(Digest {
                            len: bytes.len() as u64,
                            sum,
                        })
                    }
                    Err(e) => Err(AppError::new(refusal_code(&e), e.to_string())),
                };
                vm.fetch_max(vm_size_kib(), Ordering::Relaxed);
                r
            },
        )
        .spawn()
        .expect("server");
    let honest = Honest::running(&test.socket, Duration::from_secs(10));
    let base = snapshot();
    let mut attacker = test.peer("huge_blobs");
    for case in cases() {
        let got = attacker.expect("case", Duration::from_secs(30));
        let want_status = if case.code == 0 {
            Status::Ok as u32
        } else {
            Status::AppError as u32
        };
        assert_eq!(
            got,
            format!("{} {want_status} {}", case.name, case.code),
            "case {}: `name status code`",
            case.name
        );
        // Address space: at most the announced bytes (all under the
        // 1 GiB cap) beyond the baseline, never the memfd's 64 TiB.
        let grown = vm_max.load(Ordering::Relaxed).saturating_sub(base.vm_kib) << 10;
        assert!(
            grown < 2 * GIB,
            "case {}: the address space grew by {grown} bytes",
            case.name
        );
    }
    attacker.expect("done", Duration::from_secs(10));
    // Mapped: exactly the announced lengths of the blobs taken.
    let mapped: u64 = snapshot()
        .mapped
        .iter()
        .filter(|(name, _)| name.starts_with("hostile:huge"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        mapped,
        MIB + 512 * MIB + 4096 + MIB,
        "bytes mapped from the memfds"
    );
    attacker.send("exit");
    attacker.wait_ok(Duration::from_secs(10));
    honest.progresses(10, Duration::from_secs(10));
    expect_back(
        &base,
        Duration::from_secs(10),
        "after the attacker's connection closed (large blobs unmapped)",
    );
    honest.finish_ok();
    let s = server.stats();
    eprintln!(
        "huge_blobs: VmSize peaked {} MiB above the baseline; {s:?}",
        vm_max.load(Ordering::Relaxed).saturating_sub(base.vm_kib) >> 10
    );
    test.stop_server(server);
}

/// The idle limit of the idle tests.
const IDLE: Duration = Duration::from_millis(500);

/// A real client that made one call and then says nothing: returns it
/// and when its call ended.
/// A client that makes one call, then none; with an instant before that
/// call (the server saw it active after it: a clock read after the reply
/// could come late on a loaded machine, and make the server's close look
/// early).
fn quiet_client(socket: &SocketName) -> (Client, Instant) {
    let mut quiet = Client::connect(socket).expect("the idle client connects");
    let add = quiet.method(ADD).expect("add");
    let before = Instant::now();
    let sum = quiet.call(add, &Add { a: 1, b: 2 }).expect("a first call");
    assert_eq!(sum.sum.to_native(), 3);
    drop(sum);
    (quiet, before)
}

#[test]
fn an_idle_connection_is_closed_as_idle_while_an_active_one_stays_open() {
    let test = Test::start("idle", Duration::from_secs(60));
    let server = victim_server(&test.socket)
        .idle_timeout(Some(IDLE))
        .spawn()
        .expect("server");
    // The active client calls all the time, through several idle limits.
    let honest = Honest::running(&test.socket, Duration::from_secs(10));
    let base = snapshot();
    // Two idle clients: one that reads its ring itself, one real.
    let mut raw = RawClient::connect(&test.socket).expect("the raw client connects");
    let method = raw.method(ADD.name());
    // Before the request: the server's last sight of this client is later.
    let raw_last = Instant::now();
    raw.request(1, method, &[], &archive(&Add { a: 2, b: 3 }))
        .expect("a request");
    let limit = Instant::now() + Duration::from_secs(10);
    let (status, _, _) = raw.response(1, limit).expect("a response");
    assert_eq!(status, Status::Ok as u32);
    let (mut quiet, quiet_last) = quiet_client(&test.socket);
    // The server tells the raw client why it closes it, then hangs up.
    let (frame_kind, _, _, body) = raw
        .link
        .take(limit)
        .expect("the raw client's ring")
        .expect("a frame before the deadline");
    let closed_after = raw_last.elapsed();
    assert_eq!(
        frame_kind,
        kind::CLOSE,
        "a CLOSE frame, not kind {frame_kind}"
    );
    let code = u32::from_le_bytes(body[..4].try_into().expect("a reason code"));
    assert_eq!(CloseReason::from_code(code), CloseReason::Idle);
    assert!(
        closed_after >= IDLE,
        "closed {closed_after:?} after its last call, before the idle limit of {IDLE:?}"
    );
    wait_for(Duration::from_secs(10), "the raw client's hang-up", || {
        raw.link.hung_up().then_some(()).ok_or("open".to_string())
    });
    drop(raw);
    // The real one too, and its next call fails.
    wait_for(
        Duration::from_secs(10),
        "the server to close both idle connections",
        || {
            let s = server.stats();
            (s.closed >= 2).then_some(()).ok_or(format!("{s:?}"))
        },
    );
    assert!(quiet_last.elapsed() >= IDLE);
    let add = quiet.method(ADD).expect("add");
    match quiet.call(add, &Add { a: 1, b: 2 }) {
        // The reason read from the CLOSE, or (today) the hang-up noticed
        // first: see `a_client_closed_as_idle_is_told_why`.
        Err(CallError::Closed(CloseReason::Idle) | CallError::PeerDied) => {}
        Err(e) => panic!("the idle client's next call failed with {e:?}"),
        Ok(_) => panic!("the idle client's next call succeeded on a closed connection"),
    }
    assert!(!quiet.is_alive());
    drop(quiet);
    // The active client stays open through three more idle limits.
    let t0 = Instant::now();
    wait_for(IDLE * 6, "three idle limits to pass", || {
        (t0.elapsed() >= IDLE * 3)
            .then_some(())
            .ok_or(format!("{:?} passed", t0.elapsed()))
    });
    honest.progresses(10, Duration::from_secs(10));
    let s = server.stats();
    assert_eq!(s.closed, 2, "only the idle connections were closed: {s:?}");
    expect_back(
        &base,
        Duration::from_secs(10),
        "after the idle connections closed",
    );
    honest.finish_ok();
    test.stop_server(server);
}

/// The server writes CLOSE(Idle) into the client's ring before it hangs
/// up; the client's next call, which finds the server gone when it sends,
/// reads that frame and reports why (it used to fail with `PeerDied`).
#[test]
fn a_client_closed_as_idle_is_told_why() {
    let test = Test::start("idle_told", Duration::from_secs(60));
    let server = victim_server(&test.socket)
        .idle_timeout(Some(IDLE))
        .spawn()
        .expect("server");
    let (mut quiet, _) = quiet_client(&test.socket);
    wait_for(
        Duration::from_secs(10),
        "the server to close the idle connection",
        || {
            let s = server.stats();
            (s.closed >= 1).then_some(()).ok_or(format!("{s:?}"))
        },
    );
    let add = quiet.method(ADD).expect("add");
    match quiet.call(add, &Add { a: 1, b: 2 }) {
        Err(CallError::Closed(CloseReason::Idle)) => {}
        Err(e) => panic!("the idle client's next call failed with {e:?}, not Closed(Idle)"),
        Ok(_) => panic!("the idle client's next call succeeded on a closed connection"),
    }
    drop(quiet);
    test.stop_server(server);
}

/// Connections the holder keeps open.
const HELD: usize = 50;

/// Attacker: opens `HELD` connections, makes one `add` on each, says
/// `held N`, then keeps them until told to exit.
fn hold_conns(arg: &str, ctl: &mut Ctl) {
    let socket = SocketName::Abstract(arg.to_string());
    let mut conns = Vec::new();
    for i in 0..HELD as u64 {
        let mut c = Client::connect(&socket).expect("connect");
        let add = c.method(ADD).expect("add");
        let s = c.call(add, &Add { a: i, b: 1 }).expect("add");
        assert_eq!(s.sum.to_native(), i + 1);
        drop(s);
        conns.push(c);
    }
    ctl.say(&format!("held {}", conns.len()));
    let _ = ctl.hear();
}

/// Shared memory this process has touched, in bytes (`RssShmem`).
fn rss_shmem() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssShmem:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("RssShmem in /proc/self/status")
        << 10
}

/// The engine's segments this process holds open: how many, and the
/// bytes of memory their memfds have committed (by whichever side touched
/// them), from the blocks `fstat` counts.
fn segments_committed() -> (usize, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut n, mut bytes) = (0, 0);
    for e in std::fs::read_dir("/proc/self/fd").expect("fds").flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("/memfd:isocall:") {
            continue;
        }
        if let Ok(m) = std::fs::metadata(e.path()) {
            n += 1;
            bytes += m.blocks() * 512;
        }
    }
    (n, bytes)
}

/// Bytes mapped from the engine's segments in this process.
fn segments_mapped() -> u64 {
    snapshot()
        .mapped
        .iter()
        .filter(|(name, _)| name.starts_with("isocall:"))
        .map(|(_, n)| n)
        .sum()
}

#[test]
fn a_held_connection_commits_a_small_part_of_its_segment() {
    let test = Test::start("hold_conns", Duration::from_secs(120));
    // The default layout: 1 MiB rings and an 8 MiB blob pool.
    let server = victim_server(&test.socket).spawn().expect("server");
    let base = snapshot_with_server();
    let (segs0, committed0) = segments_committed();
    let (mapped0, rss0) = (segments_mapped(), rss_shmem());
    let mut holder = test.peer("hold_conns");
    let held = holder.expect("held", Duration::from_secs(60));
    assert_eq!(held, HELD.to_string());
    let (segs, committed) = segments_committed();
    let (mapped, rss) = (segments_mapped(), rss_shmem());
    let n = HELD as u64;
    let per_segment = mapped.saturating_sub(mapped0) / n;
    let per_conn_committed = committed.saturating_sub(committed0) / n;
    let per_conn_rss = rss.saturating_sub(rss0) / n;
    eprintln!(
        "hold_conns: {HELD} connections, each a segment of {} KiB mapped: \
         {} KiB committed and {} KiB of RssShmem in the server per connection \
         ({} segment memfds held)",
        per_segment >> 10,
        per_conn_committed >> 10,
        per_conn_rss >> 10,
        segs - segs0
    );
    assert!(
        per_segment >= 8 * MIB,
        "each connection maps {per_segment} bytes: the test needs the large default segment"
    );
    // Held with one call made, a connection touches a few pages of each
    // ring and the pool's headers: a small part of the segment.
    let bound = per_segment / 16;
    assert!(
        per_conn_rss <= bound,
        "each held connection grew the server's RssShmem by {per_conn_rss} bytes \
         (bound {bound}, segment {per_segment})"
    );
    // The memory committed, whoever touched it: a segment reserved up
    // front (`fallocate`) counts here whole even where no side touched it.
    assert_eq!(
        segs - segs0,
        HELD,
        "the server holds a memfd per connection"
    );
    assert!(
        per_conn_committed <= bound,
        "each held connection committed {per_conn_committed} bytes of memory \
         (bound {bound}, segment {per_segment})"
    );
    holder.send("exit");
    holder.wait_ok(Duration::from_secs(20));
    expect_back(
        &base,
        Duration::from_secs(10),
        "after the held connections closed",
    );
    test.stop_server(server);
}
