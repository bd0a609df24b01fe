//! `isocall bench`: every figure of DESIGN.md's "How we measure" that exists
//! so far, measured between two processes in one run, each beside the floor
//! it is compared to.

mod blob;
mod call;
mod call_stream;
mod callgrind;
mod chan;
mod floors;
mod instr;
mod measure;
mod netns;
mod peer;
mod plot;
mod report;
mod ring;
mod sockets;
mod supervise;
mod svg;

pub use instr::child_main as instr_main;
pub use supervise::serve_role;

use std::time::Instant;

use isocall_engine::WaitStrategy;

pub use measure::Measured;

/// Errors of the bench (a binary: boxed errors that say what failed).
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Arguments of `isocall bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Run only the figures whose names match this glob (`*` matches any
    /// run of characters), plus the floors they are compared to.
    pub pattern: Option<String>,
    /// Fewer samples: the whole run stays under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Print one JSON array of figures on stdout (nothing else).
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Print the table as Markdown (for the README).
    #[arg(long)]
    pub markdown: bool,
    /// Instead of the figures: round trip against payload size (64 B to
    /// 16 MiB) for the ring, calls, blobs and UDS, drawn as an SVG into
    /// this file (the pattern, if any, picks among the plot's figures).
    #[arg(long, value_name = "FILE.svg", conflicts_with = "instructions")]
    pub plot: Option<std::path::PathBuf>,
    /// Instead of the figures: instructions per message on each side of
    /// the hot paths, counted under valgrind's callgrind (one process, two
    /// threads; repeatable on a noisy machine).
    #[arg(long)]
    pub instructions: bool,
    /// Instead of the figures: calls carrying 1 MiB of text to a server in
    /// a network namespace over a veth pair limited to 100 Mbit/s with
    /// `tc`, lz4 on and off (`tcp.call.1048576.text.{lz4,plain}`). Root
    /// only; the namespace is removed afterwards.
    #[arg(long, conflicts_with_all = ["plot", "instructions"])]
    pub netem: bool,
}

/// Unit of a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds per round trip (percentiles).
    Ns,
    /// Messages per second (a rate in `value`).
    MsgPerSec,
    /// Calls per second (a rate in `value`).
    CallPerSec,
    /// Instructions per message (a count in `value`).
    Instr,
}

impl Unit {
    /// As written in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Ns => "ns",
            Unit::MsgPerSec => "msg/s",
            Unit::CallPerSec => "call/s",
            Unit::Instr => "instr",
        }
    }
}

/// One figure: its stable name, unit, what it is compared to, and how to
/// measure it.
pub struct Figure {
    /// Stable name (DESIGN.md).
    pub name: &'static str,
    /// Unit.
    pub unit: Unit,
    /// The figure it is divided by for its ratio, if any.
    pub floor: Option<&'static str>,
    /// Other figures it is also compared to (ratios in the JSON).
    pub also: &'static [&'static str],
    run: fn(&measure::Budget) -> Res<Measured>,
    peer: fn(peer::Control) -> Res<()>,
}

/// Every figure, in the order they run (floors first).
pub fn figures() -> Vec<Figure> {
    use Unit::*;
    vec![
        Figure {
            name: "floor.spin.rtt",
            unit: Ns,
            floor: None,
            also: &[],
            run: floors::spin_rtt,
            peer: floors::spin_peer,
        },
        Figure {
            name: "floor.futex.rtt",
            unit: Ns,
            floor: None,
            also: &[],
            run: floors::futex_rtt,
            peer: floors::futex_peer,
        },
        Figure {
            name: "floor.ring_ceiling.64",
            unit: MsgPerSec,
            floor: None,
            also: &[],
            run: floors::ring_ceiling,
            peer: floors::ring_ceiling_peer,
        },
        Figure {
            name: "uds.rtt.64",
            unit: Ns,
            floor: Some("floor.futex.rtt"),
            also: &[],
            run: sockets::uds_rtt,
            peer: sockets::uds_peer,
        },
        Figure {
            name: "pipe.rtt.64",
            unit: Ns,
            floor: Some("floor.futex.rtt"),
            also: &[],
            run: sockets::pipe_rtt,
            peer: sockets::pipe_peer,
        },
        Figure {
            name: "tcp.rtt.64",
            unit: Ns,
            floor: Some("floor.futex.rtt"),
            also: &[],
            run: sockets::tcp_rtt,
            peer: sockets::tcp_peer,
        },
        Figure {
            name: "uds.stream.64",
            unit: MsgPerSec,
            floor: Some("floor.ring_ceiling.64"),
            also: &[],
            run: sockets::uds_stream,
            peer: sockets::uds_stream_peer,
        },
        Figure {
            name: "ring.rtt.busy.64",
            unit: Ns,
            floor: Some("floor.spin.rtt"),
            also: &["uds.rtt.64"],
            run: |b| ring::rtt(b, WaitStrategy::BusySpin, 64),
            peer: ring::rtt_peer,
        },
        Figure {
            name: "ring.rtt.blocking.64",
            unit: Ns,
            floor: Some("floor.futex.rtt"),
            also: &["uds.rtt.64"],
            run: |b| ring::rtt(b, WaitStrategy::Blocking, 64),
            peer: ring::rtt_peer,
        },
        Figure {
            name: "ring.stream.64",
            unit: MsgPerSec,
            floor: Some("floor.ring_ceiling.64"),
            also: &["uds.stream.64"],
            run: |b| ring::stream(b, 64),
            peer: ring::stream_peer,
        },
        Figure {
            name: "ring.stream.4096",
            unit: MsgPerSec,
            floor: None,
            also: &[],
            run: |b| ring::stream(b, 4096),
            peer: ring::stream_peer,
        },
        Figure {
            name: "malloc.alloc_free.256",
            unit: Ns,
            floor: None,
            also: &[],
            run: |b| blob::malloc_free(b, 256),
            peer: no_peer,
        },
        Figure {
            name: "malloc.alloc_free.65536",
            unit: Ns,
            floor: None,
            also: &[],
            run: |b| blob::malloc_free(b, 65536),
            peer: no_peer,
        },
        Figure {
            name: "blob.alloc_free.256",
            unit: Ns,
            floor: Some("malloc.alloc_free.256"),
            also: &[],
            run: |b| blob::alloc_free(b, 256),
            peer: no_peer,
        },
        Figure {
            name: "blob.alloc_free.65536",
            unit: Ns,
            floor: Some("malloc.alloc_free.65536"),
            also: &[],
            run: |b| blob::alloc_free(b, 65536),
            peer: no_peer,
        },
        Figure {
            name: "blob.rtt.handle.4096",
            unit: Ns,
            floor: Some("floor.spin.rtt"),
            also: &[],
            run: |b| blob::rtt(b, 4096, false),
            peer: blob::rtt_peer,
        },
        Figure {
            name: "blob.rtt.handle.1048576",
            unit: Ns,
            floor: Some("blob.rtt.handle.4096"),
            also: &[],
            run: |b| blob::rtt(b, 1 << 20, false),
            peer: blob::rtt_peer,
        },
        Figure {
            name: "blob.rtt.handle.16777216",
            unit: Ns,
            floor: Some("blob.rtt.handle.4096"),
            also: &[],
            run: |b| blob::rtt(b, 16 << 20, false),
            peer: blob::rtt_peer,
        },
        Figure {
            name: "uds.rtt.65536",
            unit: Ns,
            floor: None,
            also: &[],
            run: |b| sockets::uds_rtt_bytes(b, 65536),
            peer: sockets::uds_bytes_peer,
        },
        Figure {
            name: "uds.rtt.1048576",
            unit: Ns,
            floor: None,
            also: &[],
            run: |b| sockets::uds_rtt_bytes(b, 1 << 20),
            peer: sockets::uds_bytes_peer,
        },
        Figure {
            name: "blob.rtt.e2e.65536",
            unit: Ns,
            floor: Some("uds.rtt.65536"),
            also: &[],
            run: |b| blob::rtt(b, 65536, true),
            peer: blob::rtt_peer,
        },
        Figure {
            name: "blob.rtt.e2e.1048576",
            unit: Ns,
            floor: Some("uds.rtt.1048576"),
            also: &[],
            run: |b| blob::rtt(b, 1 << 20, true),
            peer: blob::rtt_peer,
        },
        Figure {
            name: "uds.call.64",
            unit: Ns,
            floor: Some("floor.futex.rtt"),
            also: &[],
            run: call::uds_call,
            peer: call::uds_call_peer,
        },
        Figure {
            name: "call.rtt.busy.64",
            unit: Ns,
            floor: Some("floor.spin.rtt"),
            also: &["uds.call.64"],
            run: |b| call::rtt(b, WaitStrategy::BusySpin),
            peer: call::server_peer,
        },
        Figure {
            name: "call.rtt.adaptive.64",
            unit: Ns,
            floor: Some("floor.spin.rtt"),
            also: &["uds.call.64"],
            run: |b| call::rtt(b, WaitStrategy::Adaptive),
            peer: call::server_peer,
        },
        Figure {
            name: "call.rtt.blocking.64",
            unit: Ns,
            floor: Some("floor.futex.rtt"),
            also: &["uds.call.64"],
            run: |b| call::rtt(b, WaitStrategy::Blocking),
            peer: call::server_peer,
        },
        Figure {
            name: "call.pipelined.64",
            unit: CallPerSec,
            floor: None,
            also: &[],
            run: call::pipelined,
            peer: call::server_peer,
        },
        Figure {
            name: "call.pipelined.1x32.64",
            unit: CallPerSec,
            floor: Some("call.pipelined.64"),
            also: &[],
            run: call::pipelined_half,
            peer: call::server_peer,
        },
        Figure {
            name: "call.shared.rtt.busy.64",
            unit: Ns,
            floor: Some("call.rtt.busy.64"),
            also: &["floor.spin.rtt"],
            run: call::shared_rtt,
            peer: call::server_peer,
        },
        Figure {
            name: "call.shared.pipelined.64",
            unit: CallPerSec,
            floor: Some("call.pipelined.64"),
            also: &["call.pipelined.1x32.64"],
            run: call::shared_pipelined,
            peer: call::server_peer,
        },
        Figure {
            name: "call.shared.pipelined.1x64.64",
            unit: CallPerSec,
            floor: Some("call.pipelined.64"),
            also: &["call.shared.pipelined.64"],
            run: call::shared_pipelined_lone,
            peer: call::server_peer,
        },
        Figure {
            name: "call.pipelined.batched.64",
            unit: CallPerSec,
            floor: Some("call.pipelined.64"),
            also: &[],
            run: call::pipelined_batched,
            peer: call::server_peer,
        },
        Figure {
            name: "call.shared.pipelined.batched.64",
            unit: CallPerSec,
            floor: Some("call.pipelined.batched.64"),
            also: &["call.shared.pipelined.64"],
            run: call::shared_pipelined_batched,
            peer: call::server_peer,
        },
        Figure {
            name: "call.shared.pipelined.1x64.batched.64",
            unit: CallPerSec,
            floor: Some("call.pipelined.batched.64"),
            also: &["call.shared.pipelined.1x64.64"],
            run: call::shared_pipelined_lone_batched,
            peer: call::server_peer,
        },
        Figure {
            name: "unix_stream.call.rtt.64",
            unit: Ns,
            floor: Some("uds.rtt.64"),
            also: &["call.rtt.blocking.64"],
            run: |b| call_stream::rtt(b, call_stream::Net::Unix),
            peer: call_stream::server_peer,
        },
        Figure {
            name: "tcp.call.rtt.64",
            unit: Ns,
            floor: Some("tcp.rtt.64"),
            also: &[],
            run: |b| call_stream::rtt(b, call_stream::Net::Tcp),
            peer: call_stream::server_peer,
        },
        #[cfg(feature = "tls")]
        Figure {
            name: "tls.call.rtt.64",
            unit: Ns,
            floor: Some("tcp.call.rtt.64"),
            also: &["tcp.rtt.64"],
            run: |b| call_stream::rtt(b, call_stream::Net::Tls),
            peer: call_stream::server_peer,
        },
        Figure {
            name: "tcp.call.pipelined.64",
            unit: CallPerSec,
            floor: None,
            also: &[],
            run: call_stream::pipelined,
            peer: call_stream::server_peer,
        },
        Figure {
            name: "chan.stream.64",
            unit: MsgPerSec,
            floor: Some("ring.stream.64"),
            also: &[],
            run: chan::stream,
            peer: chan::stream_peer,
        },
        Figure {
            name: "unix_stream.chan.stream.64",
            unit: MsgPerSec,
            floor: Some("uds.stream.64"),
            also: &["chan.stream.64"],
            run: |b| chan::stream_net(b, chan::Net::Unix),
            peer: chan::stream_peer,
        },
        Figure {
            name: "tcp.chan.stream.64",
            unit: MsgPerSec,
            floor: Some("uds.stream.64"),
            also: &["chan.stream.64"],
            run: |b| chan::stream_net(b, chan::Net::Tcp),
            peer: chan::stream_peer,
        },
        Figure {
            name: "chan.fanout.handle.4096.x4",
            unit: Ns,
            floor: None,
            also: &[],
            run: |b| chan::fanout(b, 4096),
            peer: chan::fanout_peer,
        },
        Figure {
            name: "chan.fanout.handle.16777216.x4",
            unit: Ns,
            floor: Some("chan.fanout.handle.4096.x4"),
            also: &[],
            run: |b| chan::fanout(b, 16 << 20),
            peer: chan::fanout_peer,
        },
        Figure {
            name: "call.rtt.blob.1048576",
            unit: Ns,
            floor: Some("call.rtt.busy.64"),
            also: &[],
            run: call::rtt_blob,
            peer: call::server_peer,
        },
        Figure {
            name: "floor.spawn",
            unit: Ns,
            floor: None,
            also: &[],
            run: supervise::floor_spawn,
            peer: no_peer,
        },
        Figure {
            name: "supervise.recovery",
            unit: Ns,
            floor: Some("floor.spawn"),
            also: &[],
            run: |b| supervise::recovery(b, 0, supervise::Crash::InCall),
            peer: no_peer,
        },
        Figure {
            name: "supervise.recovery.standby",
            unit: Ns,
            floor: Some("floor.spawn"),
            also: &[],
            run: |b| supervise::recovery(b, 1, supervise::Crash::InCall),
            peer: no_peer,
        },
        Figure {
            name: "supervise.recovery.standby.kill",
            unit: Ns,
            floor: Some("floor.spawn"),
            also: &[],
            run: |b| supervise::recovery(b, 1, supervise::Crash::Killed),
            peer: no_peer,
        },
    ]
}

/// The peer of a figure measured in one process: there is none.
fn no_peer(_: peer::Control) -> Res<()> {
    Err("this figure runs in one process and has no peer".into())
}

/// Whether `name` matches the glob `pattern` (`*` = any run of characters).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The figures a pattern selects: the matching ones and every figure they
/// are compared to, in registry order.
pub fn select<'a>(all: &'a [Figure], pattern: Option<&str>) -> Vec<&'a Figure> {
    let Some(pattern) = pattern else {
        return all.iter().collect();
    };
    let mut wanted: Vec<&str> = all
        .iter()
        .filter(|f| glob_match(pattern, f.name))
        .flat_map(|f| {
            std::iter::once(f.name)
                .chain(f.floor)
                .chain(f.also.iter().copied())
        })
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    all.iter().filter(|f| wanted.contains(&f.name)).collect()
}

/// A measured figure with its comparisons.
pub struct Row {
    /// The figure.
    pub name: String,
    /// Its unit.
    pub unit: Unit,
    /// Its measurement.
    pub m: Measured,
    /// Name and ratio to its floor.
    pub floor: Option<(String, f64)>,
    /// Other comparisons.
    pub also: Vec<(String, f64)>,
}

/// `self / other` for latencies (p50), `self / other` for rates (value).
fn ratio(unit: Unit, m: &Measured, other: &Measured) -> Option<f64> {
    match unit {
        Unit::Ns => Some(m.p50? / other.p50?),
        Unit::MsgPerSec | Unit::CallPerSec | Unit::Instr => Some(m.value? / other.value?),
    }
}

/// What [`measure_rounds`] measures of one figure: its name, unit and
/// the figures it is compared to.
pub struct Spec {
    /// Stable name.
    pub name: String,
    /// Unit.
    pub unit: Unit,
    /// The figure it is divided by for its ratio, if any.
    pub floor: Option<String>,
    /// Other figures it is also compared to.
    pub also: Vec<String>,
}

/// One measurement of a round: figure `fig`, and whether its ratios are
/// taken from it (false: a figure measured again only because a figure
/// after it is compared to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Index into the specs.
    pub fig: usize,
    /// Its ratios to the figures it is compared to are taken here.
    pub compare: bool,
}

/// The indices of the figures of `specs` that figure `i` is compared to
/// (its floor first), among those present.
fn refs_of(specs: &[Spec], i: usize) -> Vec<usize> {
    let f = &specs[i];
    f.floor
        .iter()
        .chain(&f.also)
        .filter_map(|name| specs.iter().position(|g| &g.name == name))
        .collect()
}

/// Whether figure `i`'s floor is among `specs` (then it is the first of
/// [`refs_of`]).
fn floor_present(specs: &[Spec], i: usize) -> bool {
    specs[i]
        .floor
        .as_ref()
        .is_some_and(|fl| specs.iter().any(|g| &g.name == fl))
}

/// The measurements of one round, in order: every figure once, in the
/// order of `specs`, each preceded by those of the figures it is compared
/// to that were not measured just before it (with nothing between but
/// others of them), and its floor last, right before it. A ratio then
/// divides two measurements taken back to back: on a shared machine the
/// cost of a cache line crossing between the two CPUs jumps (by 4x, seen
/// here) as the host moves them, at times several times a second, and a
/// figure and its floor measured a few seconds apart compared two
/// different machines. The floor, the ratio a target reads, is never more
/// than one measurement away: with a socket baseline between them (a
/// quarter of a second of `uds.call.64`), the host had time to change
/// state between the floor and the figure.
pub fn round_order(specs: &[Spec]) -> Vec<Step> {
    let mut order: Vec<Step> = Vec::new();
    for i in 0..specs.len() {
        let refs = refs_of(specs, i);
        let floor = refs.first().copied().filter(|_| floor_present(specs, i));
        for &j in refs.iter().filter(|&&j| Some(j) != floor) {
            let since = order.iter().rposition(|s| s.fig == j);
            let fresh = since.is_some_and(|k| order[k + 1..].iter().all(|s| refs.contains(&s.fig)));
            if !fresh {
                order.push(Step {
                    fig: j,
                    compare: false,
                });
            }
        }
        if let Some(j) = floor.filter(|&j| order.last().is_none_or(|s| s.fig != j)) {
            order.push(Step {
                fig: j,
                compare: false,
            });
        }
        order.push(Step {
            fig: i,
            compare: true,
        });
    }
    order
}

/// Measures every figure of `specs` once per round (`run(i)` measures
/// figure i) in [`round_order`], with progress on stderr, and gives one
/// row per figure: the median of all its measurements, and each ratio
/// as the median over rounds of the ratio of the figure to the
/// measurement of the other taken just before it (see
/// [`measure::Budget::rounds`]). Ratios to figures not in `specs` are
/// left out.
pub fn measure_rounds(
    specs: &[Spec],
    rounds: usize,
    mut run: impl FnMut(usize) -> Res<Measured>,
) -> Res<Vec<Row>> {
    if let Some((a, b, relation)) = peer::pair() {
        peer::pin(Some(a));
        eprintln!(
            "isocall bench: the two sides run on cpu {a} and cpu {b}: {}",
            relation.describe()
        );
    } else {
        eprintln!("isocall bench: fewer than 2 CPUs allowed; the two processes are not pinned");
    }
    let started = Instant::now();
    let order = round_order(specs);
    // Every measurement of each figure.
    let mut all: Vec<Vec<Measured>> = vec![Vec::new(); specs.len()];
    // ratios[i][k]: figure i to its k-th reference, one per round.
    let refs: Vec<Vec<usize>> = (0..specs.len()).map(|i| refs_of(specs, i)).collect();
    let mut ratios: Vec<Vec<Vec<f64>>> = refs.iter().map(|r| vec![Vec::new(); r.len()]).collect();
    // On a terminal, a progress bar on stderr; otherwise (CI, pipes) one
    // line per measurement.
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new((rounds * order.len()) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "isocall bench {bar:30} {pos}/{len} {elapsed} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    for r in 0..rounds {
        // The latest measurement of each figure in this round.
        let mut latest: Vec<Option<Measured>> = vec![None; specs.len()];
        for step in &order {
            let f = &specs[step.fig];
            let what = format!("round {}/{rounds}: {}", r + 1, f.name);
            match &bar {
                Some(b) => b.set_message(what),
                None => eprintln!("isocall bench: {what}"),
            }
            let m = run(step.fig).map_err(|e| format!("{}: {e}", f.name))?;
            if step.compare {
                for (k, &j) in refs[step.fig].iter().enumerate() {
                    if let Some(x) = latest[j].as_ref().and_then(|o| ratio(f.unit, &m, o)) {
                        ratios[step.fig][k].push(x);
                    }
                }
            }
            all[step.fig].push(m);
            latest[step.fig] = Some(m);
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let rows = specs
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut compared = refs[i]
                .iter()
                .zip(&mut ratios[i])
                .map(|(&j, per_round)| Some((specs[j].name.clone(), measure::median(per_round)?)));
            // The floor, if present, is the first reference.
            let floor = floor_present(specs, i)
                .then(|| compared.next().flatten())
                .flatten();
            Row {
                name: f.name.clone(),
                unit: f.unit,
                m: measure::median_of(&all[i]),
                floor,
                also: compared.flatten().collect(),
            }
        })
        .collect();
    eprintln!(
        "isocall bench: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(rows)
}

/// Prints `rows` on stdout as `args` asks: JSON, Markdown or a table.
pub fn print_rows(args: &BenchArgs, rows: &[Row]) {
    let out = if args.json {
        report::json(rows)
    } else if args.markdown {
        report::markdown(rows)
    } else {
        report::table(rows)
    };
    println!("{out}");
}

/// Runs `isocall bench`.
pub fn run(args: &BenchArgs) -> Res<()> {
    if let Some(path) = &args.plot {
        return plot::run(args, path);
    }
    if args.instructions {
        return instr::run(args);
    }
    if args.netem {
        return run_netem(args);
    }
    let all = figures();
    let chosen = select(&all, args.pattern.as_deref());
    if chosen.is_empty() {
        let names: Vec<&str> = all.iter().map(|f| f.name).collect();
        return Err(format!(
            "no figure matches {:?}; figures: {}",
            args.pattern.as_deref().unwrap_or(""),
            names.join(", ")
        )
        .into());
    }
    let budget = if args.quick {
        measure::Budget::quick()
    } else {
        measure::Budget::full()
    };
    let specs: Vec<Spec> = chosen
        .iter()
        .map(|f| Spec {
            name: f.name.to_string(),
            unit: f.unit,
            floor: f.floor.map(str::to_string),
            also: f.also.iter().map(|s| s.to_string()).collect(),
        })
        .collect();
    let rows = measure_rounds(&specs, budget.rounds, |i| (chosen[i].run)(&budget))?;
    print_rows(args, &rows);
    Ok(())
}

/// The figures of `--netem`: the plain one first (the lz4 one's floor).
const NETEM_FIGURES: [&str; 2] = ["tcp.call.1048576.text.plain", "tcp.call.1048576.text.lz4"];

/// The rate `--netem` limits the link to, as `tc` writes it.
const NETEM_RATE: &str = "100mbit";

/// Runs `isocall bench --netem`: makes the link (root only), measures its
/// figures (those the pattern picks, plain always: it is the floor) in
/// rounds, removes the link.
fn run_netem(args: &BenchArgs) -> Res<()> {
    let pattern = args.pattern.as_deref().unwrap_or("*");
    let lz4 = glob_match(pattern, NETEM_FIGURES[1]);
    if !lz4 && !glob_match(pattern, NETEM_FIGURES[0]) {
        return Err(format!(
            "no figure of --netem matches {pattern:?}; figures: {}",
            NETEM_FIGURES.join(", ")
        )
        .into());
    }
    let link = netns::Link::create(NETEM_RATE)?;
    eprintln!(
        "isocall bench: server in namespace at {}, link limited by `{}` on both ends",
        link.ns_addr, link.qdisc
    );
    let budget = measure::Budget {
        warmup: std::time::Duration::from_millis(300),
        measure: std::time::Duration::from_secs(if args.quick { 1 } else { 3 }),
        stream_msgs: 0,
        stream_reps: 1,
        rounds: if args.quick { 1 } else { 3 },
        min_samples: 5,
    };
    let mut specs = vec![Spec {
        name: NETEM_FIGURES[0].into(),
        unit: Unit::Ns,
        floor: None,
        also: vec![],
    }];
    if lz4 {
        specs.push(Spec {
            name: NETEM_FIGURES[1].into(),
            unit: Unit::Ns,
            floor: Some(NETEM_FIGURES[0].into()),
            also: vec![],
        });
    }
    let rows = measure_rounds(&specs, budget.rounds, |i| {
        call_stream::text_rtt(&budget, &link, i == 1)
    })?;
    drop(link);
    print_rows(args, &rows);
    Ok(())
}

/// The peer process of figure `name`.
pub fn peer_main(name: &str, cpu: Option<usize>) -> Res<()> {
    peer::pin(cpu);
    let all = figures();
    let serve = all
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.peer)
        .or_else(|| plot::peer_of(name))
        .or_else(|| {
            NETEM_FIGURES
                .contains(&name)
                .then_some(call_stream::server_peer as fn(peer::Control) -> Res<()>)
        })
        .ok_or_else(|| format!("no figure named {name}"))?;
    let ctl = peer::Control::receive()?;
    serve(ctl).map_err(|e| format!("peer of {name}: {e}").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_anywhere() {
        assert!(glob_match("ring.*", "ring.rtt.busy.64"));
        assert!(glob_match("*.64", "uds.rtt.64"));
        assert!(glob_match("uds.rtt.64", "uds.rtt.64"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("r*t*4", "ring.rtt.busy.64"));
        assert!(!glob_match("ring.*", "floor.spin.rtt"));
        assert!(!glob_match("uds.rtt.6", "uds.rtt.64"));
    }

    #[test]
    fn a_pattern_brings_its_floors_along() {
        let all = figures();
        let names: Vec<&str> = select(&all, Some("ring.rtt.busy.64"))
            .iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["floor.spin.rtt", "uds.rtt.64", "ring.rtt.busy.64"]);
        let names: Vec<&str> = select(&all, Some("ring.stream.*"))
            .iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(
            names,
            [
                "floor.ring_ceiling.64",
                "uds.stream.64",
                "ring.stream.64",
                "ring.stream.4096"
            ]
        );
        assert!(select(&all, Some("nope")).is_empty());
        assert_eq!(select(&all, None).len(), all.len());
    }

    /// A spec named `name`, compared to `floor` and `also`.
    fn spec(name: &str, floor: Option<&str>, also: &[&str]) -> Spec {
        Spec {
            name: name.into(),
            unit: Unit::Ns,
            floor: floor.map(str::to_string),
            also: also.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_round_measures_each_reference_just_before_the_figure_compared_to_it() {
        let specs = [
            spec("a", None, &[]),
            spec("b", Some("a"), &[]),
            spec("c", None, &[]),
            spec("d", Some("a"), &["c"]),
            spec("e", Some("d"), &["missing"]),
        ];
        let got: Vec<(&str, bool)> = round_order(&specs)
            .iter()
            .map(|s| (specs[s.fig].name.as_str(), s.compare))
            .collect();
        // `a` is measured again before `d` (`b` and `c` came between),
        // `c` is not (only `a`, another reference of `d`, came since),
        // `d` is not before `e` (it was the last one).
        assert_eq!(
            got,
            [
                ("a", true),
                ("b", true),
                ("c", true),
                ("a", false),
                ("d", true),
                ("e", true)
            ]
        );
    }

    #[test]
    fn every_ratio_divides_measurements_taken_back_to_back() {
        let all = figures();
        let specs: Vec<Spec> = all.iter().map(|f| spec(f.name, f.floor, f.also)).collect();
        let order = round_order(&specs);
        for (k, step) in order.iter().enumerate().filter(|(_, s)| s.compare) {
            let refs = refs_of(&specs, step.fig);
            for &j in &refs {
                let at = order[..k]
                    .iter()
                    .rposition(|s| s.fig == j)
                    .unwrap_or_else(|| panic!("{} before its reference", specs[step.fig].name));
                assert!(
                    order[at + 1..k].iter().all(|s| refs.contains(&s.fig)),
                    "{}: {} measured too long before it",
                    specs[step.fig].name,
                    specs[j].name
                );
            }
            // The floor (the ratio a target reads) right before it.
            if let Some(fl) = &specs[step.fig].floor {
                assert_eq!(
                    &specs[order[k - 1].fig].name,
                    fl,
                    "{}: its floor is not measured right before it",
                    specs[step.fig].name
                );
            }
        }
        // Each figure is measured for itself once a round.
        assert_eq!(order.iter().filter(|s| s.compare).count(), all.len());
    }

    #[test]
    fn names_are_unique_and_floors_exist() {
        let all = figures();
        for f in &all {
            assert_eq!(
                all.iter().filter(|g| g.name == f.name).count(),
                1,
                "{}",
                f.name
            );
            for r in f.floor.iter().chain(f.also) {
                assert!(
                    all.iter().any(|g| g.name == *r),
                    "{} refers to missing {r}",
                    f.name
                );
            }
        }
    }
}
