//! A thousand restarts of a supervised service leave no zombie, and the
//! supervising process's descriptors and threads are where they started.
//! Alone in its binary, so that no other test opens descriptors or starts
//! threads meanwhile.

mod common;

use std::time::Duration;

use common::calc::{Add, Sum};
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

/// Children of this process that are zombies (exited, not reaped).
fn zombies() -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid ...: comm may hold spaces, so split
            // after its closing parenthesis.
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
    let m = c.method("add").expect("add");
    let call = |c: &mut isocall::engine::supervise::SupervisedClient, i: u64| {
        let sum = c
            .call::<Add, Sum, _>(m, &Add { a: i, b: 1 }, |r| r.sum.to_native())
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(sum, i + 1);
    };
    call(&mut c, 0);
    assert!(sup.wait_idle(LIMIT), "settled after the first start");
    let fds = count_dir("/proc/self/fd");
    let threads = count_dir("/proc/self/task");
    let mut pids = std::collections::HashSet::new();
    for i in 1..=1000u64 {
        let pid = c.server_pid().expect("connected");
        assert!(pids.insert(pid), "pid {pid} served twice");
        kill_process(Pid::from_raw(pid as i32).expect("pid"), Signal::KILL).expect("kill");
        call(&mut c, i);
    }
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
    // Dropping the supervisor retires the last instance and reaps it.
    let last = c.server_pid().expect("connected");
    drop(c);
    drop(sup);
    assert!(zombies().is_empty(), "zombies after drop: {:?}", zombies());
    let gone = isocall::engine::sys::PidFd::open(last)
        .map_or(true, |p| p.wait_exit(Some(Duration::ZERO)).unwrap_or(false));
    assert!(gone, "the last instance outlived its supervisor");
}
