//! A supervisor's counters, kept in a small sealed memfd named
//! `isocall:supervisor:<service>` so that `isocall inspect` can read them
//! out of the supervising process, the way it reads connection segments.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::SharedMem;

/// Prefix of the memfd name (followed by the service name).
pub const MEMFD_PREFIX: &str = "isocall:supervisor:";

const MAGIC: u64 = u64::from_le_bytes(*b"ISOCSUPV");
const VERSION: u64 = 1;
const LEN: usize = 4096;

/// Word indexes in the block.
#[derive(Clone, Copy, Debug)]
#[repr(usize)]
pub(crate) enum Word {
    Magic = 0,
    Version,
    SupervisorPid,
    ServicePid,
    State,
    Standby,
    Starts,
    Exits,
    Crashes,
    Restarts,
    Retries,
    CallsFailed,
    Recoveries,
    RecoveryNanos,
    SparesReady,
}

const WORDS: usize = Word::SparesReady as usize + 1;

/// What the supervisor is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SupervisorState {
    /// Starting or restarting the service, or serving.
    Running,
    /// The restart-intensity limit stopped a crash loop; calls fail.
    Failed,
    /// The supervisor is shutting down or gone.
    Stopped,
}

impl SupervisorState {
    fn from_word(w: u64) -> Option<Self> {
        match w {
            0 => Some(SupervisorState::Running),
            1 => Some(SupervisorState::Failed),
            2 => Some(SupervisorState::Stopped),
            _ => None,
        }
    }

    /// A lowercase name (`running`, `failed`, `stopped`).
    pub fn name(self) -> &'static str {
        match self {
            SupervisorState::Running => "running",
            SupervisorState::Failed => "failed",
            SupervisorState::Stopped => "stopped",
        }
    }
}

/// A snapshot of a supervisor's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SupervisorStats {
    /// The supervising process.
    pub supervisor_pid: u32,
    /// The instance serving calls now (0 when none is).
    pub service_pid: u32,
    /// Running, failed (intensity limit) or stopped.
    pub state: SupervisorState,
    /// Warm spares configured.
    pub standby: u32,
    /// Spares started and handshaken now.
    pub spares_ready: u32,
    /// Processes started (first start, restarts and spares).
    pub starts: u64,
    /// Processes that exited, for any reason.
    pub exits: u64,
    /// Exits the supervisor did not ask for (signals, any exit status).
    pub crashes: u64,
    /// Starts that replaced a dead instance.
    pub restarts: u64,
    /// Calls sent again after their server died (idempotent calls only).
    pub retries: u64,
    /// Calls that failed because their server died (not idempotent, out
    /// of retries or deadline) or the supervisor gave up.
    pub calls_failed: u64,
    /// Crashes after which a call succeeded on the successor.
    pub recoveries: u64,
    /// Sum of those recoveries' times, from the death seen by a client to
    /// the successor's first answer, in nanoseconds.
    pub recovery_nanos: u64,
}

impl SupervisorStats {
    /// Mean time from a crash seen by a client to the next successful call,
    /// if there was any recovery.
    pub fn mean_recovery(&self) -> Option<std::time::Duration> {
        (self.recoveries > 0)
            .then(|| std::time::Duration::from_nanos(self.recovery_nanos / self.recoveries))
    }
}

/// The block, mapped read-write by the supervisor.
#[derive(Debug)]
pub(crate) struct StatsBlock {
    mem: SharedMem,
}

impl StatsBlock {
    pub(crate) fn create(service: &str, standby: usize) -> io::Result<StatsBlock> {
        let mut name = format!("{MEMFD_PREFIX}{service}");
        name.truncate(249);
        let block = StatsBlock {
            mem: SharedMem::create(&name, LEN)?,
        };
        block.set(Word::Version, VERSION);
        block.set(Word::SupervisorPid, std::process::id().into());
        block.set(Word::Standby, standby as u64);
        // The magic last: a reader that sees it sees a formatted block.
        block.word(Word::Magic).store(MAGIC, Ordering::Release);
        Ok(block)
    }

    fn word(&self, w: Word) -> &AtomicU64 {
        &self
            .mem
            .u64_words()
            .expect("the supervisor's own block is writable")[w as usize]
    }

    pub(crate) fn add(&self, w: Word, n: u64) {
        self.word(w).fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(&self, w: Word, v: u64) {
        self.word(w).store(v, Ordering::Relaxed);
    }

    pub(crate) fn set_state(&self, s: SupervisorState) {
        self.set(Word::State, s as u64);
    }

    pub(crate) fn snapshot(&self) -> SupervisorStats {
        // Not strict: another process of this user could scribble on the
        // block; what it wrote is then reported, never trusted.
        decode(&self.mem, false).unwrap_or(SupervisorStats {
            supervisor_pid: std::process::id(),
            service_pid: 0,
            state: SupervisorState::Running,
            standby: 0,
            spares_ready: 0,
            starts: 0,
            exits: 0,
            crashes: 0,
            restarts: 0,
            retries: 0,
            calls_failed: 0,
            recoveries: 0,
            recovery_nanos: 0,
        })
    }
}

fn decode(mem: &SharedMem, strict: bool) -> Option<SupervisorStats> {
    if mem.len() / 8 < WORDS {
        return None;
    }
    let g = |w: Word| mem.load_u64(w as usize, Ordering::Acquire).unwrap_or(0);
    if strict && (g(Word::Magic) != MAGIC || g(Word::Version) != VERSION) {
        return None;
    }
    Some(SupervisorStats {
        supervisor_pid: g(Word::SupervisorPid) as u32,
        service_pid: g(Word::ServicePid) as u32,
        state: match SupervisorState::from_word(g(Word::State)) {
            Some(st) => st,
            None if !strict => SupervisorState::Running,
            None => return None,
        },
        standby: g(Word::Standby) as u32,
        spares_ready: g(Word::SparesReady) as u32,
        starts: g(Word::Starts),
        exits: g(Word::Exits),
        crashes: g(Word::Crashes),
        restarts: g(Word::Restarts),
        retries: g(Word::Retries),
        calls_failed: g(Word::CallsFailed),
        recoveries: g(Word::Recoveries),
        recovery_nanos: g(Word::RecoveryNanos),
    })
}

/// Reads the counters of another process's supervisor from its memfd
/// (found by `isocall inspect` in `/proc/PID/fd`), mapped read-only.
///
/// # Errors
///
/// `InvalidData` for a memfd that is not sealed, too short, or not a
/// supervisor's block (magic, version or state word wrong).
pub fn read_stats(fd: OwnedFd) -> io::Result<SupervisorStats> {
    let mem = SharedMem::open_read_only(fd)?;
    decode(&mem, true).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "not an isocall supervisor block (bad magic, version or state)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_through_a_read_only_mapping() {
        let b = StatsBlock::create("t", 2).unwrap();
        b.add(Word::Starts, 3);
        b.add(Word::Crashes, 2);
        b.add(Word::Recoveries, 2);
        b.add(Word::RecoveryNanos, 3000);
        b.set_state(SupervisorState::Failed);
        let fd = b.mem.fd().try_clone_to_owned().unwrap();
        let s = read_stats(fd).unwrap();
        assert_eq!(s, b.snapshot());
        assert_eq!((s.starts, s.crashes, s.standby), (3, 2, 2));
        assert_eq!(s.state, SupervisorState::Failed);
        assert_eq!(
            s.mean_recovery(),
            Some(std::time::Duration::from_nanos(1500))
        );
    }

    #[test]
    fn a_segment_is_not_a_supervisor_block() {
        let mem = SharedMem::create("isocall:supervisor:fake", 4096).unwrap();
        let fd = mem.fd().try_clone_to_owned().unwrap();
        let e = read_stats(fd).unwrap_err();
        assert!(e.to_string().contains("bad magic"), "{e}");
    }
}
