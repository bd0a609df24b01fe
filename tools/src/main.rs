//! `isocall`: the command-line tool of isocall.
//!
//! - `isocall bench [PATTERN] [--quick] [--json] [--markdown]`: round-trip
//!   and throughput figures between two processes, beside the floors and
//!   baselines measured in the same run.
//!   `--plot FILE.svg` draws round trip against payload size instead;
//!   `--instructions` counts instructions per message under callgrind;
//!   `--netem` (root) calls with 1 MiB of text over a 100 Mbit/s link to a
//!   network namespace, lz4 on and off.
//! - `isocall inspect [PID] [--json] [--dump-frame N]`: the live segments of
//!   a process (or of every process), read-only.
#![forbid(unsafe_code)]

mod bench;
mod inspect;
mod watch;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "isocall",
    version,
    about = "isocall: zero-copy shared-memory IPC tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure isocall against its floors and baselines, two processes.
    Bench(bench::BenchArgs),
    /// Show the live isocall segments of a process (or of all), read-only.
    Inspect(inspect::InspectArgs),
    /// The peer side of a benchmark figure (internal: the bench re-executes
    /// itself with this).
    #[command(name = "__bench-peer", hide = true)]
    BenchPeer {
        /// Figure the peer serves.
        figure: String,
        /// CPU to pin to, if any.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// One path's two-thread loop, run under callgrind by `bench
    /// --instructions` (internal).
    #[command(name = "__bench-instr", hide = true)]
    BenchInstr {
        /// The path (`ring.rtt.64`, ...) or `baseline`.
        figure: String,
        /// Messages (iterations) counted.
        #[arg(long)]
        messages: u64,
        /// Iterations before the counted ones.
        #[arg(long)]
        warmup: u64,
    },
}

fn main() {
    // A service the bench supervises (this binary re-entered in a role).
    bench::serve_role();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::BenchPeer { figure, cpu } => bench::peer_main(&figure, cpu),
        Command::BenchInstr {
            figure,
            messages,
            warmup,
        } => bench::instr_main(&figure, messages, warmup),
    };
    if let Err(e) = result {
        eprintln!("isocall: {e}");
        std::process::exit(1);
    }
}
