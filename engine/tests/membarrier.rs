//! The kernel gap that `heavy_barrier_available` closes (see the doc of
//! `engine/src/sys/barrier.rs`): a process that registers for `membarrier`
//! while a CPU it ran on before sits idle with its address space must still
//! be interrupted on that CPU by a peer's heavy barrier, or its compiler
//! fences pair with nothing there and a sleeper's wake-up can be lost.
//!
//! The check is the kernel's own count of function-call interrupts per
//! CPU (`CAL` in `/proc/interrupts`), read around a few hundred barriers
//! issued while the registered process spins on that CPU.
//!
//! The test has its own `main` (no harness): the child is then a
//! single-threaded process, which the kernel registers at once. A process
//! with threads waits for an RCU grace period (milliseconds) while
//! registering, and another process that runs on the CPU meanwhile
//! refreshes its state and hides the gap.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

use isocall_engine::raw::sys::{
    allowed_cpus, heavy_barrier, heavy_barrier_available, pin_current_thread,
};

/// Set in the child: which CPUs it plays on, "A,B".
const ROLE_ENV: &str = "ISOCALL_TEST_MEMBARRIER_CPUS";
/// Heavy barriers issued while the child spins on its CPU.
const BARRIERS: u64 = 400;
/// Longest a child may take to register and say so.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// Children, each of which must be reached.
const ROUNDS: usize = 3;

/// Busy for `d` on the current CPU (so that the CPU runs this process).
fn spin_for(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// This CPU's count of function-call interrupts (`CAL`), if the kernel
/// shows it.
fn call_interrupts(cpu: usize) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/interrupts").ok()?;
    let mut lines = text.lines();
    // The header names the online CPUs, one column each.
    let column = lines
        .next()?
        .split_whitespace()
        .position(|c| c == format!("CPU{cpu}"))?;
    let cal = lines.find(|l| l.trim_start().starts_with("CAL:"))?;
    cal.split_whitespace().nth(1 + column)?.parse().ok()
}

/// The child: runs on `a`, moves to `b`, registers there (so `a` holds its
/// address space idle, the case the kernel misses), moves back to `a` and
/// spins until its parent closes its stdin.
fn registered_spinner(a: usize, b: usize) {
    pin_current_thread(a).expect("pin to the first CPU");
    spin_for(Duration::from_millis(30));
    pin_current_thread(b).expect("pin to the second CPU");
    let available = heavy_barrier_available();
    pin_current_thread(a).expect("pin back to the first CPU");
    println!("ready {available}");
    std::io::stdout().flush().expect("stdout");
    // Spin on `a` until stdin ends (a poll without waiting every few
    // thousand turns), for a minute at most.
    let deadline = Instant::now() + Duration::from_secs(60);
    let stdin = std::io::stdin();
    while Instant::now() < deadline {
        spin_for(Duration::from_micros(200));
        let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
        if poll(&mut fds, Some(&Timespec::default())).is_ok_and(|n| n > 0) {
            return;
        }
    }
}

/// Kills and reaps the child however the test ends.
struct Reaped(Child, Option<ChildStdin>);

impl Drop for Reaped {
    fn drop(&mut self) {
        drop(self.1.take());
        if !matches!(self.0.try_wait(), Ok(Some(_))) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn main() {
    if let Ok(cpus) = std::env::var(ROLE_ENV) {
        let (a, b) = cpus.split_once(',').expect("A,B");
        registered_spinner(a.parse().unwrap(), b.parse().unwrap());
        return;
    }
    // The harness's own arguments, as far as they concern one test:
    // `--list`, and a name filter.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{TEST}: test");
        return;
    }
    if args
        .iter()
        .any(|a| !a.starts_with('-') && !TEST.contains(a.as_str()))
    {
        return;
    }
    println!("test {TEST} ...");
    let outcome = a_process_registered_after_leaving_a_cpu_is_still_fenced_there();
    println!("test {TEST} ... {outcome}");
}

/// The only test.
const TEST: &str = "a_process_registered_after_leaving_a_cpu_is_still_fenced_there";

/// "ok", or "skipped" (and why, on stderr) where the machine cannot run it.
fn a_process_registered_after_leaving_a_cpu_is_still_fenced_there() -> &'static str {
    let cpus = allowed_cpus();
    let [a, b, ..] = cpus[..] else {
        eprintln!("skipped: needs two CPUs, has {cpus:?}");
        return "skipped";
    };
    if call_interrupts(a).is_none() {
        eprintln!("skipped: /proc/interrupts shows no CAL count for CPU {a}");
        return "skipped";
    }
    // The parent stays on `b`, so that nothing of another process runs
    // on `a` (which would refresh its state and hide the gap) while the
    // child is away from it. Other processes of the machine may still run
    // there and hide it for one child, so three children in turn must
    // each be reached.
    pin_current_thread(b).expect("pin the parent");
    for round in 0..ROUNDS {
        let Some(interrupts) = barriers_seen_by_a_registered_child(a, b) else {
            return "skipped";
        };
        // Every barrier interrupts `a` while the child runs there; some
        // may find it switched out on a loaded machine. Without the visit
        // at registration: exactly none.
        assert!(
            interrupts >= BARRIERS / 10,
            "child {round}: CPU {a} took {interrupts} function-call interrupts during \
             {BARRIERS} heavy barriers while a registered process ran on it: the barrier \
             does not reach it"
        );
    }
    "ok"
}

/// Starts a child that registers after leaving `a` and then spins on it,
/// issues [`BARRIERS`] heavy barriers, and returns how many function-call
/// interrupts `a` took meanwhile; `None` (skipped) if heavy barriers are
/// unavailable.
fn barriers_seen_by_a_registered_child(a: usize, b: usize) -> Option<u64> {
    let mut child = Command::new(std::env::current_exe().expect("current_exe"));
    child
        .env(ROLE_ENV, format!("{a},{b}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = child.spawn().expect("spawn the registered process");
    let stdout = child.stdout.take().expect("child stdout");
    let stdin = child.stdin.take();
    let mut child = Reaped(child, stdin);
    // Its lines come through a thread, so that a child stuck before it is
    // ready fails the test instead of hanging it; read until the child
    // ends (it writes nothing else).
    let (line_tx, line_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let ready = line_rx
        .recv_timeout(READY_LIMIT)
        .expect("the child did not say it was ready");
    if ready != "ready true" {
        // Without heavy barriers both sides fence for themselves.
        eprintln!("skipped: heavy barriers unavailable here ({ready})");
        return None;
    }
    let before = call_interrupts(a).expect("CAL count");
    for _ in 0..BARRIERS {
        heavy_barrier();
    }
    let after = call_interrupts(a).expect("CAL count");
    drop(child.1.take());
    reader.join().expect("the child's reader");
    let status = child.0.wait().expect("reap the child");
    assert!(status.success(), "the registered process failed: {status}");
    Some(after - before)
}
