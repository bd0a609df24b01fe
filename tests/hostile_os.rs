//! Hostile conditions from the OS's side: a server whose process runs out
//! of descriptors while clients keep connecting (its accept thread backs
//! off instead of spinning on `EMFILE`, and it serves again once
//! descriptors free up, with nothing left of the connections it could not
//! take), and a process squatting on a server's name as
//! another user (the client refuses it before it sends anything, and
//! keeps nothing of it).

mod hostile;

use std::time::{Duration, Instant};

use hostile::harness::Test;
use hostile::probe::{expect_back, snapshot_with_server};
use hostile::proc::{Ctl, OTHER_UID, Peer, Role, root_or_skip, run_role, wait_for};
use hostile::{ADD, Add, victim_server};
use isocall::raw::sys::connect_seqpacket;
use isocall::rpc::PolicyRefusal;
use isocall::{Client, ClientOptions, ConnectError, Policy, SocketName};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

const ROLES: &[Role] = &[("silent_conns", silent_conns), ("squatter", squatter)];

#[test]
#[ignore = "the entry point of the hostile peers, run by the tests themselves"]
fn role() {
    run_role(ROLES);
}

/// Attacker: opens `arg` connections to the socket named in the first
/// line it hears and never says a word on them; says `held N`, then holds
/// them until told to exit (or killed).
fn silent_conns(arg: &str, ctl: &mut Ctl) {
    let n: usize = arg.parse().expect("a count");
    let name = ctl.hear();
    let socket = SocketName::Abstract(name);
    let held: Vec<_> = (0..n)
        .filter_map(|_| connect_seqpacket(&socket).ok())
        .collect();
    ctl.say(&format!("held {}", held.len()));
    let _ = ctl.hear();
    drop(held);
}

/// Attacker: a server on the socket `arg` that lets anyone in, run as
/// another user; says `ready`, serves until told to exit.
fn squatter(arg: &str, ctl: &mut Ctl) {
    let server = victim_server(&SocketName::Abstract(arg.to_string()))
        .policy(Policy::Anyone)
        .spawn()
        .expect("the squatter listens");
    ctl.say("ready");
    let _ = ctl.hear();
    drop(server);
}

/// Descriptors this process has open.
fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Whether the descriptor table is full (opening anything fails).
fn table_full() -> bool {
    std::fs::File::open("/dev/null")
        .err()
        .is_some_and(|e| e.raw_os_error() == Some(rustix::io::Errno::MFILE.raw_os_error()))
}

/// The `stat` file of this process's thread named `name`, opened now (it
/// can be read again with `pread` once the descriptor table is full).
fn thread_stat(name: &str) -> std::fs::File {
    for t in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return std::fs::File::open(t.path().join("stat")).expect("its stat");
        }
    }
    panic!("no thread named {name}");
}

/// The CPU time in a thread's `stat` (user + system).
fn cpu_of(stat: &std::fs::File) -> Duration {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 1024];
    let n = stat.read_at(&mut buf, 0).expect("read stat");
    let text = String::from_utf8_lossy(&buf[..n]);
    let fields: Vec<&str> = text
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    // USER_HZ is 100 for user space on Linux.
    Duration::from_millis(ticks * 10)
}

/// Restores the descriptor limit when dropped (also when the test fails).
struct Limit(Rlimit);

impl Drop for Limit {
    fn drop(&mut self) {
        let _ = setrlimit(Resource::Nofile, self.0);
    }
}

#[test]
fn a_server_out_of_descriptors_backs_off_and_serves_again() {
    let test = Test::start("emfile", Duration::from_secs(60));
    let socket = &test.socket;
    let name = hostile::abstract_name(socket);
    let server = victim_server(socket)
        .handshake_timeout(Duration::from_secs(30))
        .spawn()
        .expect("server");
    // What the process holds with the server up and no client: the
    // connections accepted (or failed) while out of descriptors must all
    // be given back.
    let base = snapshot_with_server();
    // The attacker is started (and its pipes made) before the limit drops,
    // and so is the accept thread's stat file, read while the table is
    // full.
    let mut attacker = Peer::spawn("silent_conns", "64");
    let accept_stat = thread_stat("isocall-accept");
    // Room for a few accepted sockets, then the table is full: accepting
    // the next connection fails with EMFILE while it waits in the backlog,
    // so the listener stays readable.
    let old = getrlimit(Resource::Nofile);
    let restore = Limit(old);
    let limit = open_fds() + 6;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(limit),
            maximum: old.maximum,
        },
    )
    .expect("lower the descriptor limit");
    attacker.send(&name);
    let held = attacker.expect("held", Duration::from_secs(20));
    wait_for(Duration::from_secs(20), "a full descriptor table", || {
        if table_full() {
            Ok(())
        } else {
            Err(format!("room left under a limit of {limit}"))
        }
    });
    // A second of EMFILE: the accept thread pauses (5 ms doubling to a
    // second) instead of polling a listener that stays readable.
    let window = Duration::from_secs(1);
    let cpu0 = cpu_of(&accept_stat);
    let t0 = Instant::now();
    wait_for(window * 2, "a second of a full table", || {
        if t0.elapsed() >= window {
            Ok(())
        } else {
            Err(format!("{:?} passed", t0.elapsed()))
        }
    });
    let used = cpu_of(&accept_stat).saturating_sub(cpu0);
    assert!(table_full(), "the table stayed full through the window");
    assert!(
        used < window / 10,
        "the accept thread used {used:?} of CPU in {window:?} out of descriptors ({held})"
    );
    // Descriptors come back: the server serves a client again.
    drop(restore);
    attacker.send("exit");
    attacker.wait_ok(Duration::from_secs(20));
    let reply = wait_for(Duration::from_secs(20), "an honest call", || {
        let mut c = Client::connect(socket).map_err(|e| e.to_string())?;
        let add = c.method(ADD).map_err(|e| e.to_string())?;
        let sum = c
            .call(add, &Add { a: 40, b: 2 })
            .map_err(|e| e.to_string())?
            .sum
            .to_native();
        Ok(sum)
    });
    assert_eq!(reply, 42);
    drop(accept_stat);
    expect_back(
        &base,
        Duration::from_secs(20),
        "after the descriptors came back and the silent connections went",
    );
    test.stop_server(server);
}

#[test]
fn a_client_refuses_a_server_of_another_user_squatting_on_the_name() {
    if !root_or_skip("squatter", "a squatter run as another user") {
        return;
    }
    let test = Test::start("squatter", Duration::from_secs(60));
    let socket = &test.socket;
    let mut squatter = test.peer_as("squatter", OTHER_UID);
    squatter.expect("ready", Duration::from_secs(20));
    let me = rustix::process::getuid().as_raw();
    match Client::connect(socket) {
        Err(ConnectError::ServerRefused(PolicyRefusal::NotSameUid { uid, expected })) => {
            assert_eq!((uid, expected), (OTHER_UID, me));
        }
        Err(e) => panic!("expected ServerRefused(NotSameUid), got {e}"),
        Ok(_) => panic!("a client connected to a server of another user"),
    }
    // A client that expects that user gets in.
    let mut c = Client::connect_with(
        socket,
        ClientOptions::default().server_policy(Policy::uid(OTHER_UID)),
    )
    .expect("a client that allows the server's user");
    let add = c.method(ADD).expect("add");
    assert_eq!(c.call(add, &Add { a: 1, b: 2 }).expect("call").sum, 3);
    drop(c);
    squatter.send("exit");
    squatter.wait_ok(Duration::from_secs(20));
    // Nothing the squatter sent (its hello's descriptors, if any came)
    // stays with the client that refused it.
    test.expect_back("after the squatter was refused");
}
