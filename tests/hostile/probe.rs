//! Leak probes over `/proc/self`: descriptors, memfds, the engine's
//! threads, shared mappings and address space, compared against a baseline
//! after a wait with a deadline for the counts to come back.

use std::collections::BTreeMap;
use std::time::Duration;

use super::proc::wait_for;

/// What this process holds now, as far as a connection can hold it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Open descriptors.
    pub fds: usize,
    /// Open descriptors by what they are (`socket`, `anon_inode:[pidfd]`,
    /// `memfd`...), for the failure messages.
    pub fd_kinds: BTreeMap<String, usize>,
    /// Names of the memfds held open, with their counts.
    pub memfds: BTreeMap<String, usize>,
    /// Threads of the engine (names starting with `isocall`), by name.
    pub threads: BTreeMap<String, usize>,
    /// Bytes mapped from memfds (segments, large blobs), by name.
    pub mapped: BTreeMap<String, u64>,
    /// Virtual address space, in KiB (`VmSize`).
    pub vm_kib: u64,
}

impl Snapshot {
    fn mapped_total(&self) -> u64 {
        self.mapped.values().sum()
    }

    fn thread_total(&self) -> usize {
        self.threads.values().sum()
    }
}

/// The process's threads whose names start with `prefix`, by name.
pub fn threads_named(prefix: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let comm = comm.trim();
            if comm.starts_with(prefix) {
                *out.entry(comm.to_string()).or_default() += 1;
            }
        }
    }
    out
}

/// Takes a snapshot.
pub fn snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for e in dir.flatten() {
            s.fds += 1;
            if let Ok(target) = std::fs::read_link(e.path()) {
                let t = target.to_string_lossy();
                let kind = if let Some(name) = t.strip_prefix("/memfd:") {
                    *s.memfds.entry(name.to_string()).or_default() += 1;
                    "memfd".to_string()
                } else if let Some(k) = t.split(":[").next().filter(|_| t.contains(":[")) {
                    if k == "anon_inode" {
                        t.to_string()
                    } else {
                        k.to_string()
                    }
                } else {
                    t.to_string()
                };
                *s.fd_kinds.entry(kind).or_default() += 1;
            }
        }
    }
    s.threads = threads_named("isocall");
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    for line in maps.lines() {
        let Some(at) = line.find("/memfd:") else {
            continue;
        };
        let range = line.split_whitespace().next().unwrap_or("");
        let mut ends = range
            .split('-')
            .map(|x| u64::from_str_radix(x, 16).unwrap_or(0));
        let (a, b) = (ends.next().unwrap_or(0), ends.next().unwrap_or(0));
        *s.mapped.entry(line[at + 7..].to_string()).or_default() += b.saturating_sub(a);
    }
    s.vm_kib = vm_size_kib();
    s
}

/// A snapshot taken once a server just spawned in this process has named
/// its threads (a thread names itself after it starts, so a snapshot taken
/// at once may miss their names).
pub fn snapshot_with_server() -> Snapshot {
    wait_for(
        Duration::from_secs(10),
        "the server's threads to take their names",
        || {
            let t = threads_named("isocall");
            (t.contains_key("isocall-accept") && t.contains_key("isocall-worker-"))
                .then_some(())
                .ok_or(format!("{t:?}"))
        },
    );
    snapshot()
}

/// `VmSize` of this process in KiB.
pub fn vm_size_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What `now` holds beyond `base`, or `None` if nothing.
fn excess(base: &Snapshot, now: &Snapshot) -> Option<String> {
    let mut what = Vec::new();
    if now.fds > base.fds {
        what.push(format!(
            "{} descriptors more (now {:?}, before {:?})",
            now.fds - base.fds,
            now.fd_kinds,
            base.fd_kinds
        ));
    }
    for (name, n) in &now.memfds {
        let b = base.memfds.get(name).copied().unwrap_or(0);
        if *n > b {
            what.push(format!("memfd {name} held {} more time(s)", n - b));
        }
    }
    if now.thread_total() > base.thread_total() {
        what.push(format!(
            "engine threads {:?} (before: {:?})",
            now.threads, base.threads
        ));
    }
    if now.mapped_total() > base.mapped_total() {
        let grown: Vec<String> = now
            .mapped
            .iter()
            .filter(|(k, v)| base.mapped.get(*k).copied().unwrap_or(0) < **v)
            .map(|(k, v)| format!("{k}: {v} bytes"))
            .collect();
        what.push(format!(
            "{} more bytes mapped from memfds ({})",
            now.mapped_total() - base.mapped_total(),
            grown.join(", ")
        ));
    }
    (!what.is_empty()).then(|| what.join("; "))
}

/// Waits until this process holds no more than `base` did (descriptors,
/// memfds, engine threads, memfd mappings), failing after `limit` with what
/// was left.
pub fn expect_back(base: &Snapshot, limit: Duration, when: &str) {
    wait_for(limit, &format!("the resources to come back {when}"), || {
        let now = snapshot();
        match excess(base, &now) {
            None => Ok(()),
            Some(left) => Err(format!("left: {left}")),
        }
    });
}

/// CPU time (user + system) used so far by this process's threads whose
/// names start with `prefix`, from `/proc/self/task/*/stat`.
pub fn thread_cpu(prefix: &str) -> Duration {
    let mut ticks = 0u64;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if !comm.trim().starts_with(prefix) {
                continue;
            }
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // After the command (in parentheses): state is field 3, utime
            // and stime fields 14 and 15 of the whole line.
            if let Some(rest) = stat.rsplit(')').next() {
                let f: Vec<&str> = rest.split_whitespace().collect();
                for i in [11, 12] {
                    ticks += f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
                }
            }
        }
    }
    // USER_HZ is 100 on Linux for user space.
    Duration::from_millis(ticks * 10)
}
