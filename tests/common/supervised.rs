//! Helpers of the supervision tests: killing an instance, a typed call,
//! and where this process still holds a connection's segment.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use isocall::blob::Pool;
use isocall::ring::{Region, SharedRegion};
use isocall::{ClientOptions, ServiceFailure, SupervisedClient, SupervisedError};
use rustix::process::{Pid, Signal, kill_process};

use super::calc::{ADD, Add};
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

/// Calls the common services' `add`.
pub fn add(c: &mut SupervisedClient, a: u64, b: u64) -> Result<u64, SupervisedError> {
    let m = c.method(ADD)?;
    Ok(c.call(m, &Add { a, b })?.sum.to_native())
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
    segment_at(std::ptr::from_ref(pool.region().u64_at(0)).addr())
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
