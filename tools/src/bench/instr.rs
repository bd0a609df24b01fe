//! `isocall bench --instructions`: instructions per message on each side
//! of the hot paths, counted by valgrind's callgrind, so that they repeat
//! on a noisy machine where times do not.
//!
//! # Method
//!
//! Each path runs in its one-process, two-thread form (a hidden
//! subcommand, `__bench-instr FIGURE`, that the bench re-executes itself
//! with under `valgrind --tool=callgrind --separate-threads=yes`):
//!
//! - `ring.rtt.64`: a 64-byte request and its 64-byte reply over one
//!   segment's rings, BusySpin endpoints, payloads written and read whole
//!   as in `ring.rtt.busy.64`;
//! - `ring.stream.64`: one-way 64-byte frames, each published on its own,
//!   the sender in streaming mode, as in `ring.stream.64`;
//! - `call.rtt.64`: a 64-byte call and reply through `Client::start` and
//!   `Client::wait` to an in-process `Server` (one worker), BusySpin,
//!   bytecheck on, as in `call.rtt.busy.64`;
//! - `call.pipelined.64`: the same calls in batches of 64, up to 128 in
//!   flight;
//! - `call.shared.pipelined.64`: those batches through a `SharedClient`
//!   used by one thread: what its slots, locks and copies add to a call
//!   (contention between threads is the timed figure's to show).
//!
//! Under valgrind the threads are serialized: one runs at a time, and a
//! thread that spins waiting for the other spins until valgrind switches
//! threads, thousands of instructions that depend on scheduling. So on the
//! measured path no thread waits by spinning: they take turns through a
//! baton (a futex: the waiting thread sleeps in the kernel, where callgrind
//! counts nothing), and each receive runs only when its message is already
//! there, so it succeeds on its first look. The baton's own code is
//! excluded with `--toggle-collect=*instr_handoff*` (collection is off
//! inside the function that passes it); the few instructions around the
//! call that remain (16 and 13) are measured by a loop that only passes
//! the baton (`baseline`) and subtracted.
//!
//! Each thread marks its measured loop: it calls `instr_mark_start_<side>`
//! after a warm-up, where `--zero-before` zeroes that thread's counts, and
//! `instr_mark_end_<side>` after N iterations, where `--dump-before` writes
//! that thread's counts to a file of its own. Setup, warm-up and teardown
//! are outside the marks. The bench parses those dumps (the trigger names
//! the side) and divides by the messages of N iterations.
//!
//! The call server's worker thread is the engine's, not ours, so its marks
//! and its baton are in the handler, at the last call of each batch: the
//! worker sleeps there while the client starts the next batch and reads the
//! previous one's replies. For round trips the client alternates two
//! connections: when the worker resumes it writes the reply, publishes it
//! at once (nothing is queued behind it on that connection, as after any
//! round trip) and finds the next call on the other connection instead of
//! spinning on an empty ring. Each call is still a round trip on its own
//! connection; what the worker is spared is only its spin (and half of its
//! loop's turn per call, one turn serving both connections).
//!
//! The figures are `instr.<path>.client` (the sender, or caller) and
//! `instr.<path>.server` (the receiver, or server), unit `instr`, the count
//! per message in `value`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use isocall_engine::WaitStrategy;
use isocall_engine::raw::Liveness;
use isocall_engine::raw::sys::{futex_wait, futex_wake};
use isocall_engine::raw::{Receiver, Sender, Side, endpoint};
use isocall_engine::raw::{Segment, SegmentLayout};

use super::callgrind;
use super::measure::{Measured, answer64, check_reply, fill64, read_all};
use super::ring::Deadline;
use super::{BenchArgs, Res, Row, Unit, call, glob_match};

/// Frame kind of the ring loops.
const DATA: u16 = 1;

/// Messages of a stream batch, and calls of a pipelined batch: one baton
/// pass per batch.
pub const BATCH: u64 = 64;

/// The paths counted, and the baseline every count is corrected with.
const PATHS: [&str; 5] = [
    "ring.rtt.64",
    "ring.stream.64",
    "call.rtt.64",
    "call.pipelined.64",
    "call.shared.pipelined.64",
];

/// The side names, as in the figures and the marker functions.
const SIDES: [&str; 2] = ["client", "server"];

/// The client's turn of the baton.
pub const CLIENT: u32 = 1;
/// The server's turn of the baton.
pub const SERVER: u32 = 2;

/// Two threads taking turns: the one whose turn it is runs, the other
/// sleeps on the futex (no spinning: see the module doc).
#[derive(Default)]
pub struct Baton {
    turn: AtomicU32,
    stopped: AtomicBool,
}

impl Baton {
    /// A baton whose first turn is the client's.
    pub fn new() -> Arc<Baton> {
        Arc::new(Baton {
            turn: AtomicU32::new(CLIENT),
            stopped: AtomicBool::new(false),
        })
    }

    /// Ends the turns: every wait returns false from now on.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.turn.store(0, Ordering::Release);
        let _ = futex_wake(&self.turn, i32::MAX as u32);
    }
}

/// Gives the turn to `give` (if any) and sleeps until it is `me`'s turn;
/// false once the baton is stopped. Callgrind counts nothing in here
/// (`--toggle-collect`); never inlined, so that there is a function to
/// toggle on.
#[inline(never)]
pub fn instr_handoff(b: &Baton, me: u32, give: Option<u32>) -> bool {
    if let Some(other) = give {
        // Release: pairs with the Acquire load below in the other thread,
        // so it sees every frame written before the pass.
        b.turn.store(other, Ordering::Release);
        let _ = futex_wake(&b.turn, 1);
    }
    loop {
        if b.stopped.load(Ordering::Acquire) {
            return false;
        }
        let t = b.turn.load(Ordering::Acquire);
        if t == me {
            return true;
        }
        let _ = futex_wait(&b.turn, t, Some(Duration::from_secs(1)));
    }
}

/// Start of the client side's measured loop (`--zero-before`).
#[inline(never)]
pub fn instr_mark_start_client() {
    std::hint::black_box(1u32);
}

/// Start of the server side's measured loop (`--zero-before`).
#[inline(never)]
pub fn instr_mark_start_server() {
    std::hint::black_box(2u32);
}

/// End of the client side's measured loop (`--dump-before`).
#[inline(never)]
pub fn instr_mark_end_client() {
    std::hint::black_box(3u32);
}

/// End of the server side's measured loop (`--dump-before`).
#[inline(never)]
pub fn instr_mark_end_server() {
    std::hint::black_box(4u32);
}

/// Where a side is in its loop of `warmup + n + 1` iterations (1-based):
/// marks the start before iteration `warmup + 1` and the end before
/// iteration `warmup + n + 1`, so that exactly `n` iterations are counted.
#[derive(Clone, Copy, Debug)]
pub struct Marks {
    /// Uncounted iterations first.
    pub warmup: u64,
    /// Counted iterations.
    pub n: u64,
}

impl Marks {
    /// Iterations in all.
    pub fn total(&self) -> u64 {
        self.warmup + self.n + 1
    }

    /// Marks the client side before iteration `i` (1-based) if due.
    #[inline]
    pub fn client(&self, i: u64) {
        if i == self.warmup + 1 {
            instr_mark_start_client();
        } else if i == self.warmup + self.n + 1 {
            instr_mark_end_client();
        }
    }

    /// Marks the server side before iteration `i` (1-based) if due.
    #[inline]
    pub fn server(&self, i: u64) {
        if i == self.warmup + 1 {
            instr_mark_start_server();
        } else if i == self.warmup + self.n + 1 {
            instr_mark_end_server();
        }
    }
}

/// Both ends of a ring pair in one process (a segment's client and server
/// sides, BusySpin).
fn ring_pair() -> Res<((Sender, Receiver), (Sender, Receiver))> {
    let layout = SegmentLayout {
        ring_capacity: 1 << 20,
        blobs: Default::default(),
    };
    let seg = Arc::new(Segment::create("isocall:bench:instr", &layout)?);
    seg.attach_side(Side::Client);
    seg.attach_side(Side::Server);
    let (ours, theirs) = isocall_engine::raw::sys::Doorbell::pair()?;
    let theirs = isocall_engine::raw::sys::Doorbell::from_peer_end(theirs)?;
    let s = WaitStrategy::BusySpin;
    let client = endpoint(
        seg.clone(),
        Side::Client,
        Arc::new(ours),
        s,
        Liveness::new(),
    )?;
    let server = endpoint(seg, Side::Server, Arc::new(theirs), s, Liveness::new())?;
    Ok((client, server))
}

/// Runs `client` on this thread and `server` on another, then stops the
/// baton (releasing a server still waiting for its turn) and joins.
fn two_threads(
    baton: &Arc<Baton>,
    client: impl FnOnce() -> Res<()>,
    server: impl FnOnce() -> Res<()> + Send + 'static,
) -> Res<()> {
    let t = std::thread::Builder::new()
        .name("instr-server".into())
        .spawn(server)?;
    let r = client();
    baton.stop();
    let s = t.join().map_err(|_| "the server thread panicked")?;
    r.and(s)
}

/// The baseline: both threads only pass the baton, once per iteration.
fn baseline(m: Marks) -> Res<()> {
    let baton = Baton::new();
    let b = baton.clone();
    two_threads(
        &baton,
        || {
            for i in 1..=m.total() {
                m.client(i);
                instr_handoff(&baton, CLIENT, Some(SERVER));
            }
            Ok(())
        },
        move || {
            let mut i = 0;
            let mut give = None;
            while instr_handoff(&b, SERVER, give) {
                give = Some(CLIENT);
                i += 1;
                m.server(i);
            }
            Ok(())
        },
    )
}

/// `ring.rtt.64`: the client writes a request, passes the baton, reads
/// the reply; the server reads the request and writes the reply.
fn ring_rtt(m: Marks) -> Res<()> {
    let ((mut ctx, mut crx), (mut stx, mut srx)) = ring_pair()?;
    let baton = Baton::new();
    let b = baton.clone();
    two_threads(
        &baton,
        || {
            let mut dl = Deadline::new();
            for seq in 1..=m.total() {
                m.client(seq);
                let mut g = ctx.reserve(DATA, 64, dl.get())?;
                fill64(g.bytes_mut(), seq);
                g.commit_all();
                ctx.publish();
                instr_handoff(&baton, CLIENT, Some(SERVER));
                let f = crx.recv(dl.get())?;
                let r = check_reply(f.payload(), seq);
                f.release();
                r?;
            }
            Ok(())
        },
        move || {
            let mut dl = Deadline::new();
            let (mut i, mut give) = (0, None);
            while instr_handoff(&b, SERVER, give) {
                give = Some(CLIENT);
                i += 1;
                m.server(i);
                let f = srx.recv(dl.get())?;
                let mut g = stx.reserve(DATA, 64, dl.get())?;
                answer64(f.payload(), g.bytes_mut());
                g.commit_all();
                f.release();
                stx.publish();
            }
            Ok(())
        },
    )
}

/// `ring.stream.64`: the client writes a batch of frames (each published),
/// passes the baton; the server reads every byte of each.
fn ring_stream(m: Marks) -> Res<()> {
    let ((mut ctx, _crx), (_stx, mut srx)) = ring_pair()?;
    ctx.set_latency_mode(false);
    let baton = Baton::new();
    let b = baton.clone();
    two_threads(
        &baton,
        || {
            let mut dl = Deadline::new();
            for i in 1..=m.total() {
                m.client(i);
                for k in 0..BATCH {
                    let mut g = ctx.reserve(DATA, 64, dl.get())?;
                    g.bytes_mut().fill((i * BATCH + k) as u8);
                    g.commit_all();
                    ctx.publish();
                }
                instr_handoff(&baton, CLIENT, Some(SERVER));
            }
            Ok(())
        },
        move || {
            let mut dl = Deadline::new();
            let (mut i, mut give) = (0, None);
            let mut sum = 0u64;
            while instr_handoff(&b, SERVER, give) {
                give = Some(CLIENT);
                i += 1;
                m.server(i);
                for _ in 0..BATCH {
                    let f = srx.recv(dl.get())?;
                    sum = sum.wrapping_add(read_all(f.payload()));
                    f.release();
                }
            }
            std::hint::black_box(sum);
            Ok(())
        },
    )
}

/// How a side of a figure's loop counts per message: messages per
/// iteration, and whether it passes the baton once per iteration (the
/// baseline's cost is then subtracted).
struct Shape {
    per_iter: u64,
    handoff: [bool; 2],
}

fn shape(figure: &str) -> Shape {
    match figure {
        "ring.stream.64" | "call.pipelined.64" | "call.shared.pipelined.64" => Shape {
            per_iter: BATCH,
            handoff: [true, true],
        },
        _ => Shape {
            per_iter: 1,
            handoff: [true, true],
        },
    }
}

/// The peer side of `--instructions`: runs one figure's loop (this is the
/// process valgrind runs).
pub fn child_main(figure: &str, n: u64, warmup: u64) -> Res<()> {
    let m = Marks { warmup, n };
    match figure {
        "baseline" => baseline(m),
        "ring.rtt.64" => ring_rtt(m),
        "ring.stream.64" => ring_stream(m),
        "call.rtt.64" => call::instr_calls(m, 1, 2),
        "call.pipelined.64" => call::instr_calls(m, BATCH, 1),
        "call.shared.pipelined.64" => call::instr_shared_calls(m, BATCH),
        other => Err(format!("no instruction loop named {other}").into()),
    }
}

/// The valgrind command line for one figure, its dumps going to `dir`.
fn valgrind(dir: &Path, figure: &str, m: Marks) -> Res<Command> {
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "--tool=callgrind",
        "--separate-threads=yes",
        "--fair-sched=yes",
        "--zero-before=*instr_mark_start_*",
        "--dump-before=*instr_mark_end_*",
        "--toggle-collect=*instr_handoff*",
        // After --toggle-collect, which turns collection off at start.
        "--collect-atstart=yes",
    ])
    .arg(format!(
        "--callgrind-out-file={}",
        dir.join("callgrind.out").display()
    ))
    .arg(std::env::current_exe()?)
    .args(["__bench-instr", figure])
    .args(["--messages", &m.n.to_string()])
    .args(["--warmup", &m.warmup.to_string()]);
    Ok(cmd)
}

/// Runs one figure under callgrind and reads each side's instructions
/// over its `n` iterations.
fn count(figure: &str, m: Marks) -> Res<[u64; 2]> {
    let dir = scratch_dir(figure)?;
    let out = valgrind(&dir, figure, m)?
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                "valgrind not found: --instructions runs the loops under valgrind's \
                 callgrind (install valgrind, e.g. apt-get install valgrind)"
                    .to_string()
            }
            _ => format!("cannot run valgrind: {e}"),
        })?;
    let result = (|| {
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(15).collect();
            return Err(format!(
                "valgrind {figure}: {}\n{}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        let mut parts = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| e.to_string())? {
            let path = e.map_err(|e| e.to_string())?.path();
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            // With --separate-threads the base file stays empty.
            if text.is_empty() {
                continue;
            }
            parts.push(callgrind::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?);
        }
        let mut c = [0u64; 2];
        for (i, side) in SIDES.iter().enumerate() {
            c[i] = callgrind::dumped_count(&parts, &format!("instr_mark_end_{side}"))
                .map_err(|e| format!("{figure}: {e}"))?;
        }
        Ok(c)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result?)
}

/// A fresh directory for one run's dumps.
fn scratch_dir(figure: &str) -> Res<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "isocall-instr-{}-{}-{}",
        std::process::id(),
        figure,
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs `isocall bench --instructions`.
pub fn run(args: &BenchArgs) -> Res<()> {
    let chosen: Vec<&str> = PATHS
        .iter()
        .copied()
        .filter(|p| {
            // By the path's name, or a figure's.
            args.pattern.as_deref().is_none_or(|pat| {
                glob_match(pat, p)
                    || SIDES
                        .iter()
                        .any(|s| glob_match(pat, &format!("instr.{p}.{s}")))
            })
        })
        .collect();
    if chosen.is_empty() {
        return Err(format!(
            "no instruction figure matches {:?}; paths: {}",
            args.pattern.as_deref().unwrap_or(""),
            PATHS.join(", ")
        )
        .into());
    }
    // Messages: the warm-up goes past the rings' first three laps (a
    // stream's consumer starts zeroing headers at its first flush, a
    // quarter of a lap in, and its producer then catches up once), and the
    // counted part spans whole laps of 128-byte frames in a 1 MiB ring, so
    // that what a ring does once per quarter or per lap is averaged in the
    // steady state: the counts repeat exactly from run to run.
    let warmup = 30_000;
    let n = if args.quick { 16_384 } else { 65_536 };
    let started = Instant::now();
    let progress = |what: &str| eprintln!("isocall bench --instructions: {what}");
    progress("baseline (the baton alone)");
    let base = count("baseline", Marks { warmup, n })?;
    let mut rows = Vec::new();
    for p in &chosen {
        let sh = shape(p);
        // Fewer iterations when each carries a batch.
        let m = Marks {
            warmup: warmup / sh.per_iter,
            n: n / sh.per_iter,
        };
        progress(p);
        let c = count(p, m)?;
        for (i, side) in SIDES.iter().enumerate() {
            let name = format!("instr.{p}.{side}");
            if args
                .pattern
                .as_deref()
                .is_some_and(|pat| !glob_match(pat, p) && !glob_match(pat, &name))
            {
                continue;
            }
            let per_iter = c[i] as f64 / m.n as f64;
            let handoff = if sh.handoff[i] {
                base[i] as f64 / n as f64
            } else {
                0.0
            };
            rows.push(Row {
                name,
                unit: Unit::Instr,
                m: Measured {
                    value: Some((per_iter - handoff) / sh.per_iter as f64),
                    samples: m.n * sh.per_iter,
                    ..Measured::default()
                },
                floor: None,
                also: Vec::new(),
            });
        }
    }
    eprintln!(
        "isocall bench --instructions: done in {:.1} s (baton alone: {:.1} / {:.1} instructions per pass, subtracted)",
        started.elapsed().as_secs_f64(),
        base[0] as f64 / n as f64,
        base[1] as f64 / n as f64,
    );
    if args.json || args.markdown {
        super::print_rows(args, &rows);
    } else {
        println!("{}", table(&rows));
    }
    Ok(())
}

/// The text table: one line per path, client and server side by side.
fn table(rows: &[Row]) -> String {
    let mut out = vec![format!(
        "{:<24} {:>14} {:>14}",
        "path (per message)", "client instr", "server instr"
    )];
    for p in PATHS {
        let get = |side: &str| {
            rows.iter()
                .find(|r| r.name == format!("instr.{p}.{side}"))
                .and_then(|r| r.m.value)
                .map_or("-".to_string(), |v| format!("{v:.1}"))
        };
        if rows
            .iter()
            .any(|r| r.name.starts_with(&format!("instr.{p}.")))
        {
            out.push(format!(
                "{p:<24} {:>14} {:>14}",
                get("client"),
                get("server")
            ));
        }
    }
    out.join("\n")
}
