//! Helpers of the supervision tests: killing an instance, a typed call,
//! the calls through a crashing service that every transport's tests make,
//! and where this process still holds a connection's segment.

use std::collections::HashMap;
use std::fmt::Display;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use isocall::blob::Pool;
use isocall::ring::SharedRegion;
use isocall::{CallError, ClientOptions, ServiceFailure, SupervisedClient, SupervisedError};
use rustix::process::{Pid, Signal, kill_process};

use super::calc::{ADD, Add};
use super::services::{BUMP, Bump, PID};
use super::wait_until;

const LIMIT: Duration = Duration::from_secs(30);

/// Client options whose calls may take the tests' time limit (a call that
/// waits for the intensity limit or a slow start is not cut short).
pub fn patient() -> ClientOptions {
    ClientOptions::default().call_timeout(LIMIT)
}

/// Sends `SIGKILL` to `pid`.
pub fn sigkill(pid: u32) {
    kill_process(Pid::from_raw(pid as i32).expect("pid"), Signal::KILL).expect("kill");
}

/// Sends `SIGSTOP` to `pid` and returns once every one of its threads is
/// stopped: from then on it runs no more (and reads nothing) until killed
/// or continued. `kill` only queues the signal; a worker spinning on
/// another core goes on reading its rings until the stop reaches it, so
/// the return waits for `/proc` to show each thread in state `T`.
pub fn sigstop(pid: u32) {
    kill_process(Pid::from_raw(pid as i32).expect("pid"), Signal::STOP).expect("stop");
    wait_until(LIMIT, "every thread of the stopped server to stop", || {
        all_threads_stopped(pid).then_some(())
    });
}

/// Whether every thread of `pid` is in state `T` (stopped by a signal).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses
            // and may itself hold any byte: read after the last ')'.
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    })
}

/// Calls the common services' `add`.
pub fn add(c: &mut SupervisedClient, a: u64, b: u64) -> Result<u64, SupervisedError> {
    let m = c.method(ADD)?;
    Ok(c.call(m, &Add { a, b })?.sum.to_native())
}

/// The pid of the instance that serves `c`'s calls now (the services'
/// `pid`).
pub fn served_pid(c: &mut SupervisedClient) -> u32 {
    let m = c.method(PID).expect("pid method");
    c.call(m, &Add { a: 0, b: 0 })
        .expect("pid call")
        .sum
        .to_native() as u32
}

/// Makes `windows` windows of 16 pipelined idempotent `add`s on `c` and
/// checks that every one answers right (`what` starts a failure's
/// message).
pub fn pipelined_adds(c: &mut SupervisedClient, windows: u64, what: impl Display) {
    let m = c.method(ADD).expect("add");
    assert!(m.is_idempotent(), "the server declared add idempotent");
    for window in 0..windows {
        let pending: Vec<_> = (0..16u64)
            .map(|k| {
                let i = window * 16 + k;
                (i, c.start(m, &Add { a: i, b: 1000 }, &[]).expect("start"))
            })
            .collect();
        for (i, p) in pending {
            let sum = c
                .wait(p, None)
                .unwrap_or_else(|e| panic!("{what}: call {i} failed: {e}"))
                .sum
                .to_native();
            assert_eq!(sum, i + 1000, "call {i}");
        }
    }
}

/// Makes `rounds` rounds of 8 pipelined `bump`s (not idempotent) on `c`,
/// whose service writes the id of each call it runs to `log`, and checks
/// that no call ran twice and every call that succeeded ran once. The ids
/// of the calls that failed with `PeerDied` (the others fail the test).
pub fn bumps_at_most_once(
    c: &mut SupervisedClient,
    rounds: usize,
    log: &Path,
    what: impl Display,
) -> Vec<u64> {
    let m = c.method(BUMP).expect("bump");
    assert!(!m.is_idempotent());
    let (mut ok, mut died) = (Vec::new(), Vec::new());
    let mut id = 0u64;
    for _ in 0..rounds {
        // Eight pipelined, each on its own.
        let pending: Vec<_> = (0..8)
            .map(|_| {
                id += 1;
                (id, c.start(m, &Bump { id }, &[]).expect("start"))
            })
            .collect();
        for (id, p) in pending {
            match c.wait(p, None) {
                Ok(v) => {
                    assert_eq!(v.sum.to_native(), id);
                    ok.push(id);
                }
                Err(SupervisedError::Call(CallError::PeerDied)) => died.push(id),
                Err(e) => panic!("{what}: call {id}: unexpected {e}"),
            }
        }
    }
    let text = std::fs::read_to_string(log).expect("the service's log");
    let _ = std::fs::remove_file(log);
    let mut runs: HashMap<u64, u32> = HashMap::new();
    for line in text.lines() {
        *runs.entry(line.parse().expect("an id")).or_default() += 1;
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "calls ran twice: {twice:?}");
    for id in &ok {
        assert_eq!(runs.get(id), Some(&1), "call {id} succeeded: it ran once");
    }
    assert_eq!(ok.len() + died.len(), rounds * 8);
    assert!(!died.is_empty(), "one call in ten crashes the service");
    died
}

/// Checks that a later call on `c`, whose supervisor has failed, fails
/// the same way: with a service failure that `is_it` recognises and the
/// same message, `msg`.
pub fn fails_again(c: &mut SupervisedClient, msg: &str, is_it: impl Fn(&ServiceFailure) -> bool) {
    let again = add(c, 1, 2).expect_err("still failed");
    assert!(
        matches!(&again, SupervisedError::Service(f) if is_it(f)),
        "{again:?}"
    );
    assert_eq!(again.to_string(), msg, "the same failure");
}

/// The isocall segments this process maps: (start, end, inode, line) of
/// each `/proc/self/maps` line of a `/memfd:isocall:` file.
fn mapped_segments() -> Vec<(usize, usize, u64, String)> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    maps.lines()
        .filter_map(|line| {
            // start-end perms offset dev inode path
            let f: Vec<&str> = line.split_whitespace().collect();
            if !f.get(5)?.starts_with("/memfd:isocall:") {
                return None;
            }
            let (start, end) = f.first()?.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            Some((start, end, f.get(4)?.parse().ok()?, line.to_string()))
        })
        .collect()
}

/// The inode of the segment (memfd) that holds `pool`.
pub fn segment_inode(pool: &Pool<SharedRegion>) -> u64 {
    segment_at(isocall::ring::region_key(pool.region()))
}

/// The inode of the segment (memfd) mapped at `addr` in this process.
pub fn segment_at(addr: usize) -> u64 {
    mapped_segments()
        .into_iter()
        .find(|(start, end, _, _)| (*start..*end).contains(&addr))
        .map(|(_, _, inode, _)| inode)
        .unwrap_or_else(|| panic!("no isocall segment is mapped at {addr:#x}"))
}

/// The segment of `c`'s current connection (connecting if needed).
pub fn current_segment(c: &mut SupervisedClient) -> u64 {
    let pool = c.pool().expect("connected").expect("a pool");
    segment_inode(&pool)
}

/// Where this process still holds the memfd `inode`: its mappings and its
/// descriptors (`/proc/self/fd`).
pub fn holders_of(inode: u64) -> Vec<String> {
    let mut held: Vec<String> = mapped_segments()
        .into_iter()
        .filter(|(_, _, i, _)| *i == inode)
        .map(|(_, _, _, l)| format!("mapped: {l}"))
        .collect();
    for e in std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
    {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        if link.to_string_lossy().starts_with("/memfd:isocall:")
            && std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == inode)
        {
            held.push(format!("open: fd {:?} -> {link:?}", e.file_name()));
        }
    }
    held
}

/// Waits until this process holds the segment `inode` no more.
pub fn wait_released(inode: u64, what: &str) {
    wait_until(
        LIMIT,
        &format!("{what} (memfd inode {inode}) unmapped and closed"),
        || holders_of(inode).is_empty().then_some(()),
    );
}
