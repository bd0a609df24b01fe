//! The benchmark's peer process: this binary re-executed with
//! `__bench-peer FIGURE`, its stdin a Unix socket over which the parent sends
//! parameters and file descriptors and the peer answers. The peer is killed
//! and reaped when its handle drops, so an error never leaves it behind.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use isocall_engine::WaitStrategy;
use isocall_engine::raw::sys::{
    CpuTopology, allowed_cpus, cpu_topology, pin_current_thread, recv_message, send_with_fds,
};

use super::Res;

/// How long any single exchange with the peer may take before the bench
/// gives up on it (a dead or stuck peer is an error, not a hang).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(20);

/// A wait strategy as the peer's `strategy=` parameter.
pub fn strategy_code(s: WaitStrategy) -> u64 {
    match s {
        WaitStrategy::BusySpin => 0,
        WaitStrategy::Adaptive => 1,
        WaitStrategy::Blocking => 2,
        // A strategy this tool does not know: the peer waits the default way.
        _ => 1,
    }
}

/// The wait strategy of a peer's `strategy=` parameter.
pub fn strategy_from(n: u64) -> WaitStrategy {
    match n {
        0 => WaitStrategy::BusySpin,
        1 => WaitStrategy::Adaptive,
        _ => WaitStrategy::Blocking,
    }
}

/// The CPUs this process may run on, read once, before it pins itself
/// (after that its mask is one CPU).
fn all_cpus() -> &'static [usize] {
    static CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    CPUS.get_or_init(allowed_cpus)
}

/// How the two CPUs the sides run on relate, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Relation {
    /// Two cores that share their last-level cache.
    CoresSharingCache,
    /// Two cores not known to share a last-level cache.
    Cores,
    /// The kernel does not say whether they are one core's.
    Unknown,
    /// Two hardware threads of one core: no other CPU to give.
    OneCore,
}

impl Relation {
    /// What it means for the figures, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Relation::CoresSharingCache => "two cores that share their last-level cache",
            Relation::Cores => {
                "two cores, not sharing a last-level cache as far as the kernel says"
            }
            Relation::Unknown => "the kernel does not say whether they are two threads of one core",
            Relation::OneCore => {
                "two threads of one core, as no other core is allowed: lines cross through the \
                 core's own caches, so the spin floor is that of one core (faster than between \
                 two), and ratios to it are larger than between cores"
            }
        }
    }
}

/// How CPU `b` relates to the CPU whose topology is `a`.
fn relation(a: &CpuTopology, b: usize) -> Relation {
    if a.core.is_empty() {
        Relation::Unknown
    } else if a.core.contains(&b) {
        Relation::OneCore
    } else if a.last_level_cache.contains(&b) {
        Relation::CoresSharingCache
    } else {
        Relation::Cores
    }
}

/// The two CPUs of `allowed` the sides run on: the first, and the first of
/// the others on another core, one that shares its last-level cache if
/// any does (DESIGN.md, "How we measure": two threads of one physical core
/// flatter every figure); two threads of one core only if nothing else is
/// allowed. `topology` says where a CPU sits.
fn choose(
    allowed: &[usize],
    topology: impl Fn(usize) -> CpuTopology,
) -> Option<(usize, usize, Relation)> {
    let (&a, others) = allowed.split_first()?;
    let ta = topology(a);
    others
        .iter()
        .map(|&b| (a, b, relation(&ta, b)))
        .min_by_key(|&(_, _, r)| r)
}

/// The two CPUs the sides run on and how they relate, chosen once.
pub fn pair() -> Option<(usize, usize, Relation)> {
    static PAIR: std::sync::OnceLock<Option<(usize, usize, Relation)>> = std::sync::OnceLock::new();
    *PAIR.get_or_init(|| choose(all_cpus(), cpu_topology))
}

/// The two CPUs the sides run on, when the machine has two to give.
pub fn cpus() -> Option<(usize, usize)> {
    pair().map(|(a, b, _)| (a, b))
}

/// The CPU of caller thread `t` of a figure with several: one of its own
/// while the machine has CPUs besides the peer's, then in turns (on two
/// CPUs, every caller shares the first with the others). `None` when the
/// sides are not pinned.
pub fn caller_cpu(t: usize) -> Option<usize> {
    let (_, peer) = cpus()?;
    let ours: Vec<usize> = all_cpus().iter().copied().filter(|&c| c != peer).collect();
    ours.get(t % ours.len().max(1)).copied()
}

/// Pins the calling thread to `cpu` if there is one; failure only warns.
pub fn pin(cpu: Option<usize>) {
    if let Some(c) = cpu
        && let Err(e) = pin_current_thread(c)
    {
        eprintln!("isocall bench: could not pin to cpu {c}: {e}");
    }
}

/// A running peer; killed and reaped on drop.
pub struct Peer {
    child: Child,
    ctl: UnixStream,
    reader: BufReader<UnixStream>,
    figure: String,
}

impl Peer {
    /// Starts the peer for `figure` and sends it `params` and `fds`.
    pub fn start(figure: &str, params: &str, fds: &[BorrowedFd<'_>]) -> Res<Peer> {
        Peer::start_via(&[], figure, params, fds)
    }

    /// As [`Peer::start`], this binary started by the command `launcher`
    /// (its program and first arguments, e.g. `ip netns exec NAME`, which
    /// execs it in a network namespace); empty: directly.
    pub fn start_via(
        launcher: &[String],
        figure: &str,
        params: &str,
        fds: &[BorrowedFd<'_>],
    ) -> Res<Peer> {
        let (ours, theirs) = UnixStream::pair()?;
        let exe = std::env::current_exe()?;
        let mut cmd = match launcher {
            [] => Command::new(&exe),
            [program, args @ ..] => {
                let mut c = Command::new(program);
                c.args(args).arg(&exe);
                c
            }
        };
        cmd.args(["__bench-peer", figure]);
        if let Some((_, cpu)) = cpus() {
            cmd.args(["--cpu", &cpu.to_string()]);
        }
        let child = cmd
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("{figure}: cannot start peer: {e}"))?;
        ours.set_read_timeout(Some(PEER_TIMEOUT))?;
        let reader = BufReader::new(ours.try_clone()?);
        let msg = if params.is_empty() { "-" } else { params };
        let peer = Peer {
            child,
            ctl: ours,
            reader,
            figure: figure.to_string(),
        };
        let deadline = std::time::Instant::now() + PEER_TIMEOUT;
        send_with_fds(peer.ctl.as_fd(), msg.as_bytes(), fds, deadline)
            .map_err(|e| format!("{figure}: cannot hand the peer its descriptors: {e}"))?;
        Ok(peer)
    }

    /// Reads one line the peer wrote on the control socket.
    pub fn read_line(&mut self) -> Res<String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| format!("{}: no answer from peer: {e}", self.figure))?;
        if n == 0 {
            let status = self.child.try_wait().ok().flatten();
            return Err(
                format!("{}: peer closed its socket (exit: {status:?})", self.figure).into(),
            );
        }
        Ok(line.trim_end().to_string())
    }

    /// Writes one line to the peer.
    pub fn write_line(&mut self, line: &str) -> Res<()> {
        writeln!(self.ctl, "{line}")
            .map_err(|e| format!("{}: cannot reach peer: {e}", self.figure))?;
        Ok(())
    }

    /// What the peer can tell of itself now, for an error message: the
    /// lines it wrote that nobody read (waiting at most `wait` for them),
    /// then whether it exited and how or, while it runs, where its main
    /// thread sleeps in the kernel (`wchan`, e.g. `futex_do_wait`, and
    /// `syscall`: its number and arguments, e.g. a futex's address, op and
    /// expected value). Stops nothing: the peer is still killed and reaped
    /// when it drops.
    pub fn report(&mut self, wait: Duration) -> String {
        let mut said = Vec::new();
        // The reader reads a duplicate of this socket: one receive timeout.
        if self.ctl.set_read_timeout(Some(wait)).is_ok() {
            // A few lines at most: a peer that floods its socket is
            // reported by its first lines.
            for _ in 0..8 {
                let mut line = String::new();
                let got = self.reader.read_line(&mut line);
                let line = line.trim_end();
                if !line.is_empty() {
                    said.push(line.to_string());
                }
                if !matches!(got, Ok(n) if n > 0) {
                    break;
                }
            }
        }
        let state = match self.child.try_wait() {
            Ok(Some(status)) => format!("exited ({status})"),
            Ok(None) => {
                let pid = self.child.id();
                let proc = |what: &str| {
                    std::fs::read_to_string(format!("/proc/{pid}/{what}"))
                        .map_or_else(|e| format!("? ({e})"), |s| s.trim().to_string())
                };
                format!(
                    "running (pid {pid}, wchan {}, syscall {})",
                    proc("wchan"),
                    proc("syscall")
                )
            }
            Err(e) => format!("status unknown ({e})"),
        };
        if said.is_empty() {
            format!("{state}, said nothing more")
        } else {
            format!("{state}, said {}", said.join(" / "))
        }
    }

    /// Waits for the peer to exit successfully.
    pub fn finish(mut self) -> Res<()> {
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("{}: peer failed: {status}", self.figure).into());
        }
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The peer's side of the control socket (its stdin).
pub struct Control {
    sock: UnixStream,
    reader: BufReader<UnixStream>,
    /// Parameters the parent sent.
    pub params: String,
    /// Descriptors the parent sent.
    pub fds: Vec<OwnedFd>,
}

impl Control {
    /// Receives the parameters and descriptors from the parent.
    pub fn receive() -> Res<Control> {
        let sock = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
        sock.set_read_timeout(Some(PEER_TIMEOUT))?;
        let mut buf = vec![0u8; 4096];
        // Waits for the parent's message (`recv_with_fds` alone does not).
        let deadline = std::time::Instant::now() + PEER_TIMEOUT;
        let (n, fds) = recv_message(sock.as_fd(), &mut buf, 8, deadline, None)?;
        let params = String::from_utf8(buf[..n].to_vec())?;
        let reader = BufReader::new(sock.try_clone()?);
        Ok(Control {
            sock,
            reader,
            params,
            fds,
        })
    }

    /// The value of `key=value` in the parameters.
    pub fn param(&self, key: &str) -> Res<u64> {
        self.params
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .ok_or_else(|| format!("peer: parameter {key} missing from {:?}", self.params))?
            .parse()
            .map_err(|e| format!("peer: parameter {key}: {e}").into())
    }

    /// Writes one line to the parent.
    pub fn write_line(&mut self, line: &str) -> Res<()> {
        writeln!(self.sock, "{line}")?;
        Ok(())
    }

    /// Serves the parent's repetitions of a stream: for each `go N` line,
    /// runs `rep(N)` and answers with the checksum it returns; stops at any
    /// other line.
    pub fn serve_reps(&mut self, mut rep: impl FnMut(u64) -> Res<u64>) -> Res<()> {
        while let Some(n) = self.next_reps()? {
            let sum = rep(n)?;
            self.write_line(&sum.to_string())?;
        }
        Ok(())
    }

    /// The parent's next repetition of a stream: `N` for a `go N` line,
    /// `None` for any other line (the end).
    pub fn next_reps(&mut self) -> Res<Option<u64>> {
        let line = self.read_line()?;
        match line.strip_prefix("go ") {
            Some(n) => Ok(Some(n.parse()?)),
            None => Ok(None),
        }
    }

    /// Reads one line from the parent.
    pub fn read_line(&mut self) -> Res<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err("peer: parent closed the control socket".into());
        }
        Ok(line.trim_end().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine of `cores` cores of `threads` threads each, numbered as
    /// Linux does on most x86 (the first thread of every core, then the
    /// second), `per_cache` cores to a last-level cache.
    fn machine(cores: usize, threads: usize, per_cache: usize) -> impl Fn(usize) -> CpuTopology {
        move |cpu| {
            let core = cpu % cores;
            let cache = core / per_cache;
            CpuTopology {
                core: (0..threads).map(|t| core + t * cores).collect(),
                last_level_cache: (0..cores * threads)
                    .filter(|c| (c % cores) / per_cache == cache)
                    .collect(),
            }
        }
    }

    #[test]
    fn the_sides_run_on_two_cores_that_share_a_cache_when_there_are_any() {
        // Siblings numbered apart (0 and 4): the first two are two cores.
        let all: Vec<usize> = (0..8).collect();
        assert_eq!(
            choose(&all, machine(4, 2, 4)),
            Some((0, 1, Relation::CoresSharingCache))
        );
        // Siblings numbered side by side (0 and 1, as many VMs do): not 1.
        let adjacent = |cpu: usize| CpuTopology {
            core: vec![cpu & !1, cpu | 1],
            last_level_cache: (0..8).collect(),
        };
        assert_eq!(
            choose(&all, adjacent),
            Some((0, 2, Relation::CoresSharingCache))
        );
        // Two caches of two cores each: the core beside it, not the far one.
        let two_caches = machine(4, 1, 2);
        assert_eq!(
            choose(&[0, 2, 1], &two_caches),
            Some((0, 1, Relation::CoresSharingCache))
        );
        assert_eq!(choose(&[0, 2], &two_caches), Some((0, 2, Relation::Cores)));
    }

    #[test]
    fn one_core_is_used_only_when_nothing_else_is_allowed_and_is_said() {
        assert_eq!(
            choose(&[0, 4], machine(4, 2, 4)),
            Some((0, 4, Relation::OneCore))
        );
        assert_eq!(choose(&[0, 4, 5], machine(4, 2, 4)).map(|p| p.1), Some(5));
        assert!(Relation::OneCore.describe().contains("one core"));
        // The kernel silent: the first two, said to be unknown.
        assert_eq!(
            choose(&[3, 7], |_| CpuTopology::default()),
            Some((3, 7, Relation::Unknown))
        );
        assert_eq!(choose(&[3], machine(4, 2, 4)), None);
        assert_eq!(choose(&[], machine(4, 2, 4)), None);
    }

    #[test]
    fn this_machine_gives_two_distinct_cpus_when_it_has_two() {
        match (allowed_cpus().len(), pair()) {
            (n, None) => assert!(n < 2),
            (_, Some((a, b, r))) => {
                assert_ne!(a, b);
                // Where the kernel says, the pair is not one core's unless
                // every allowed CPU is in the first one's core.
                let core = cpu_topology(a).core;
                if r == Relation::OneCore {
                    assert!(allowed_cpus().iter().all(|c| core.contains(c)));
                }
            }
        }
    }
}
