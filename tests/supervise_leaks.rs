//! A thousand restarts of a supervised service leave no zombie, and the
//! supervising process's descriptors and threads are where they started.
//! Alone in its binary, so that no other test opens descriptors or starts
//! threads meanwhile.

mod common;

use std::time::Duration;

use common::calc::{ADD, Add};
use common::services::{self, supervisor};
use common::wait_until;
use rustix::process::{Pid, Signal, kill_process};

const LIMIT: Duration = Duration::from_secs(30);

/// The entry the supervised children run (see `common::services`).
#[test]
#[ignore = "run by the supervision tests as a supervised child"]
fn service() {
    services::serve();
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map_or(0, |d| d.count())
}

/// The fields of `/proc/PID/stat` after the command (field 3 on), or
/// `None` if there is no such process.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces, so split after its
    // closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// One process, whatever pid reuse does: its pid and its start time
/// (field 22 of `/proc/PID/stat`, clock ticks after boot). Read while it
/// runs; pid_max is 32768 here and each restart takes several pids, so a
/// thousand restarts may well hand a pid out twice.
fn instance(pid: u32) -> (u32, u64) {
    let fields = stat_fields(pid).unwrap_or_else(|| panic!("instance {pid} is not running"));
    assert_ne!(fields[0], "Z", "instance {pid} is a zombie, not serving");
    let start = fields
        .get(22 - 3)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no start time in /proc/{pid}/stat"));
    (pid, start)
}

/// Children of this process that are zombies (exited, not reaped).
fn zombies() -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // As in `stat_fields`.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let mut f = rest.split_whitespace();
            f.next() == Some("Z") && f.next() == Some(me.as_str())
        })
        .collect()
}

#[test]
fn a_thousand_restarts_leak_no_process_fd_or_thread() {
    let sup = supervisor("thousand", "plain").spawn().expect("supervisor");
    let mut c = sup.client();
    let m = c.method(ADD).expect("add");
    let call = |c: &mut isocall::SupervisedClient, i: u64| {
        let sum = c
            .call(m, &Add { a: i, b: 1 })
            .unwrap_or_else(|e| panic!("call {i}: {e}"))
            .sum
            .to_native();
        assert_eq!(sum, i + 1);
    };
    call(&mut c, 0);
    assert!(sup.wait_idle(LIMIT), "settled after the first start");
    let fds = count_dir("/proc/self/fd");
    let threads = count_dir("/proc/self/task");
    // Each call after a kill is served by a new instance: none serves
    // twice, and none is the one just killed.
    let mut served = std::collections::HashSet::new();
    let mut killed = None;
    for i in 1..=1000u64 {
        let pid = c.server_pid().expect("connected");
        let me = instance(pid);
        assert_ne!(
            Some(me),
            killed,
            "call {i} was served by the instance just killed"
        );
        assert!(
            served.insert(me),
            "instance {me:?} (pid, start) served twice"
        );
        kill_process(Pid::from_raw(pid as i32).expect("pid"), Signal::KILL).expect("kill");
        killed = Some(me);
        call(&mut c, i);
    }
    // The call after the last kill was served by a new instance as well.
    let pid = c.server_pid().expect("connected");
    assert!(
        !served.contains(&instance(pid)),
        "the last instance served before"
    );
    let s = sup.stats();
    assert_eq!(s.restarts, 1000, "{s:?}");
    // A call whose server was seen dead before it was sent goes to the
    // successor at once; the others are retried once.
    assert!(s.retries <= 1000 && s.calls_failed == 0, "{s:?}");
    wait_until(LIMIT, "the last crash reaped", || {
        (sup.stats().crashes == 1000).then_some(())
    });
    assert!(sup.wait_idle(LIMIT), "settled after the restarts");
    wait_until(LIMIT, "fds and threads back where they were", || {
        (count_dir("/proc/self/fd") <= fds && count_dir("/proc/self/task") <= threads).then_some(())
    });
    assert!(zombies().is_empty(), "zombies: {:?}", zombies());
    // Dropping the supervisor retires the last instance and reaps it. Its
    // pidfd, taken while it runs, names it even if its pid is reused.
    let last = c.server_pid().expect("connected");
    let last = isocall::raw::sys::PidFd::open(last).expect("pidfd of the last instance");
    drop(c);
    drop(sup);
    assert!(zombies().is_empty(), "zombies after drop: {:?}", zombies());
    let gone = last.wait_exit(Some(Duration::ZERO)).expect("wait on pidfd");
    assert!(gone, "the last instance outlived its supervisor");
}
