//! A pipeline of processes joined by typed channels: a source writes
//! frames of 4 KiB into blobs, a transform rewrites each one into a blob of
//! its own channel, a sink checks every frame (its sequence number, its
//! checksum and every byte), and a monitor watches the source's channel
//! beside the transform without ever slowing it down (its backpressure
//! policy drops the oldest frames it has not read, and counts them).
//!
//! ```text
//! source ──"<name>.src"──> transform ──"<name>.out"──> sink
//!        └───────────────> monitor (drop-oldest)
//! ```
//!
//! Each blob is written once by its publisher and read in place by every
//! subscriber: nothing copies a frame's bytes between processes. The
//! program re-executes itself with a role for each of the four processes,
//! and waits for all of them whatever happens.
//!
//! With a second argument, `unix-stream` or `tcp`, each publisher also
//! listens on a stream address (a Unix stream socket, or TCP on
//! 127.0.0.1) and the stages subscribe there instead: the same code, the
//! frames and their blobs copied over the socket. Only the address
//! differs.
//!
//! ```sh
//! cargo run --release --example pipeline              # 1,000,000 frames
//! cargo run --release --example pipeline -- 10000     # fewer
//! cargo run --release --example pipeline -- 10000 tcp # over TCP
//! ```

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use isocall::blob::PoolConfig;
use isocall::channel::{
    Backpressure, CloseReason, Publisher, RecvError, Subscriber, SubscriberOptions,
};
use isocall::{Policy, SocketName};

type Error = Box<dyn std::error::Error>;

/// Bytes of each frame's blob.
const FRAME: usize = 4096;

/// A frame's message: its sequence number and the checksum of its blob.
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
struct Frame {
    seq: u64,
    sum: u64,
}

/// Word `i` of the source's frame `seq`.
fn source_word(seq: u64, i: usize) -> u64 {
    ((seq << 12) | i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// What the transform makes of a word of frame `seq`.
fn transformed(word: u64, seq: u64) -> u64 {
    word.rotate_left(13) ^ seq
}

/// The checksum of a blob: its words, mixed in order.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.chunks_exact(8).fold(0u64, |s, w| {
        (s ^ u64::from_le_bytes(w.try_into().unwrap_or_default())).wrapping_mul(0x100_0000_01B3)
    })
}

fn write_words(out: &mut [u8], word: impl Fn(usize) -> u64) {
    for (i, w) in out.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&word(i).to_le_bytes());
    }
}

/// A channel's publisher: blobs of 4 KiB, and rings that hold a few
/// hundred frames each (so the pool always has a free slot: every slot in
/// use is in a ring, in the monitor's backlog, or being read). With `net`
/// (`unix-stream` or `tcp`), it listens on a stream address too.
fn publisher(name: &str, net: &str) -> Result<Publisher<Frame>, Error> {
    let b = Publisher::<Frame>::builder(SocketName::Abstract(name.into()));
    let b = match net {
        "shm" => b,
        "unix-stream" => b.listen(format!("unix-stream:@{name}.stream").as_str()),
        // Plain TCP on loopback: anyone who reaches the port may
        // subscribe, said explicitly (a remote channel would use TLS).
        "tcp" => b.listen("tcp://127.0.0.1:0").policy(Policy::Anyone),
        other => return Err(format!("unknown transport {other}").into()),
    };
    Ok(b.ring_capacity(32 << 10)
        .blobs(PoolConfig::new().class(FRAME, 2048))
        .backpressure_with(|s| {
            if s.label == "monitor" {
                Backpressure::DropOldest { backlog: 64 }
            } else {
                Backpressure::Block
            }
        })
        .send_timeout(Duration::from_secs(30))
        .create()?)
}

/// Where a publisher's subscribers connect: its stream address if it
/// has one, else its shared-memory name.
fn address(p: &Publisher<Frame>) -> String {
    match p.addresses().first() {
        Some(a) => a.to_string(),
        None => p.socket().to_string(),
    }
}

/// Subscribes at `at`: a shared-memory name (`@name`) or a stream address
/// (`unix-stream:@name`, `tcp://host:port`), the same call for both.
fn subscribe(at: &str, label: &str) -> Result<Subscriber<Frame>, Error> {
    let options = SubscriberOptions::default().label(label);
    Ok(Subscriber::connect_with(at, options)?)
}

/// Says a line to the parent.
fn say(line: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// A stage's report: `<frames> frames in <s> s`, with its rates.
fn report(stage: &str, frames: u64, took: Duration, extra: &str) -> Result<(), Error> {
    let s = took.as_secs_f64().max(1e-9);
    say(&format!(
        "{stage}: {frames} frames in {s:.3} s: {:.0} frames/s, {:.2} GB/s{extra}",
        frames as f64 / s,
        frames as f64 * FRAME as f64 / s / 1e9,
    ))
}

/// The source: waits for its two subscribers and the parent's `go`, then
/// writes `frames` frames.
fn source(name: &str, frames: u64, net: &str) -> Result<(), Error> {
    let mut publisher = publisher(&format!("{name}.src"), net)?;
    say(&format!("ready {}", address(&publisher)))?;
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    let joined = publisher.wait_for_subscribers(2, Duration::from_secs(20));
    if joined < 2 {
        return Err(format!("only {joined} of 2 subscribers joined the source").into());
    }
    let t0 = Instant::now();
    for seq in 0..frames {
        let mut loan = publisher.loan_blob(FRAME)?;
        write_words(&mut loan, |i| source_word(seq, i));
        let sum = checksum(&loan);
        loan.send(&Frame { seq, sum })?;
    }
    let took = t0.elapsed();
    publisher.flush(Duration::from_secs(30))?;
    report("source", frames, took, "")
}

/// The transform: reads the source's frames, checks each checksum, and
/// writes each rewritten into a blob of its own channel.
fn transform(name: &str, frames: u64, net: &str, src: &str) -> Result<(), Error> {
    let mut input = subscribe(src, "transform")?;
    let mut output = publisher(&format!("{name}.out"), net)?;
    say(&format!("ready {}", address(&output)))?;
    if output.wait_for_subscribers(1, Duration::from_secs(20)) < 1 {
        return Err("the sink did not join".into());
    }
    let mut t0 = None;
    for want in 0..frames {
        let frame = input.recv()?;
        t0.get_or_insert_with(Instant::now);
        let blob = frame.blob(0).ok_or("a frame without its blob")?;
        if frame.seq != want || checksum(blob) != frame.sum {
            return Err(format!(
                "transform: frame {want} arrived as {} or damaged",
                frame.seq
            )
            .into());
        }
        let mut loan = output.loan_blob(FRAME)?;
        for (o, w) in loan.chunks_exact_mut(8).zip(blob.chunks_exact(8)) {
            let w = u64::from_le_bytes(w.try_into().unwrap_or_default());
            o.copy_from_slice(&transformed(w, want).to_le_bytes());
        }
        let sum = checksum(&loan);
        drop(frame);
        loan.send(&Frame { seq: want, sum })?;
    }
    let took = t0.map_or(Duration::ZERO, |t| t.elapsed());
    output.flush(Duration::from_secs(30))?;
    report("transform", frames, took, "")
}

/// The sink: checks every frame's sequence number, checksum and bytes.
fn sink(frames: u64, out: &str) -> Result<(), Error> {
    let mut input = subscribe(out, "sink")?;
    say("ready -")?;
    let mut t0 = None;
    for want in 0..frames {
        let frame = input.recv()?;
        t0.get_or_insert_with(Instant::now);
        let blob = frame.blob(0).ok_or("a frame without its blob")?;
        if frame.seq != want {
            return Err(format!("sink: frame {want} arrived as {}", frame.seq).into());
        }
        if checksum(blob) != frame.sum {
            return Err(format!("sink: frame {want}: checksum does not match").into());
        }
        let good = blob.chunks_exact(8).enumerate().all(|(i, w)| {
            u64::from_le_bytes(w.try_into().unwrap_or_default())
                == transformed(source_word(want, i), want)
        });
        if !good || blob.len() != FRAME {
            return Err(format!("sink: frame {want}: wrong bytes").into());
        }
    }
    let took = t0.map_or(Duration::ZERO, |t| t.elapsed());
    // Nothing more comes: the transform closes its channel once done.
    match input.recv_timeout(Duration::from_secs(30)) {
        Err(RecvError::Closed(CloseReason::PublisherClosed) | RecvError::PeerDied) => {}
        Ok(f) => return Err(format!("sink: a frame past the end ({})", f.seq).into()),
        Err(e) => return Err(e.into()),
    }
    report("sink", frames, took, ", every frame checked")
}

/// The monitor: reads what it can of the source's channel, checks each
/// frame it sees, and counts the ones its policy dropped.
fn monitor(src: &str) -> Result<(), Error> {
    let mut input = subscribe(src, "monitor")?;
    say("ready -")?;
    let (mut seen, mut missed, mut next) = (0u64, 0u64, 0u64);
    let mut t0 = None;
    loop {
        match input.recv() {
            Ok(frame) => {
                t0.get_or_insert_with(Instant::now);
                let blob = frame.blob(0).ok_or("a frame without its blob")?;
                if frame.seq < next || checksum(blob) != frame.sum {
                    return Err(
                        format!("monitor: frame {} out of order or damaged", frame.seq).into(),
                    );
                }
                missed += frame.seq - next;
                next = frame.seq + 1;
                seen += 1;
            }
            Err(RecvError::Closed(_) | RecvError::PeerDied) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let took = t0.map_or(Duration::ZERO, |t| t.elapsed());
    report(
        "monitor",
        seen,
        took,
        &format!(", {missed} dropped by its drop-oldest policy"),
    )
}

/// A child process in a role; killed (if still running) and reaped when
/// dropped, so no path leaves one behind.
struct Stage {
    role: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::io::Lines<BufReader<ChildStdout>>,
    /// Where its subscribers connect (a publishing stage).
    at: String,
}

impl Stage {
    /// Starts `role` with `args` (`name frames net at`), and waits until it
    /// is ready.
    fn spawn(role: &'static str, args: &[&str]) -> Result<Stage, Error> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--role", role])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut stage = Stage {
            role,
            child,
            stdin,
            lines,
            at: String::new(),
        };
        let line = stage.line()?;
        match line.strip_prefix("ready ") {
            Some(at) => {
                stage.at = at.to_string();
                Ok(stage)
            }
            None => Err(format!("{role}: {line}").into()),
        }
    }

    fn line(&mut self) -> Result<String, Error> {
        match self.lines.next() {
            Some(line) => Ok(line?),
            None => Err(format!("{} ended without a word", self.role).into()),
        }
    }

    /// Its report, once it has exited successfully.
    fn finish(mut self) -> Result<String, Error> {
        let line = self.line()?;
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("{} failed ({status}): {line}", self.role).into());
        }
        Ok(line)
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn run(frames: u64, net: &str) -> Result<(), Error> {
    let name = format!("isocall-pipeline-{}", std::process::id());
    let n = frames.to_string();
    let t0 = Instant::now();
    let mut source = Stage::spawn("source", &[&name, &n, net, "-"])?;
    let src = source.at.clone();
    let transform = Stage::spawn("transform", &[&name, &n, net, &src])?;
    let sink = Stage::spawn("sink", &[&name, &n, net, &transform.at])?;
    let monitor = Stage::spawn("monitor", &[&name, &n, net, &src])?;
    if let Some(mut go) = source.stdin.take() {
        writeln!(go, "go")?;
    }
    // The sink first: it is done when every frame went through.
    let mut reports = Vec::new();
    for stage in [sink, transform, source, monitor] {
        reports.push(stage.finish()?);
    }
    for r in &reports {
        println!("{r}");
    }
    println!(
        "{frames} frames of {FRAME} B through source -> transform -> sink (and a monitor) over {net} in {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--role") {
        let (role, name) = (args[2].as_str(), args[3].as_str());
        let frames: u64 = args[4].parse()?;
        let (net, at) = (args[5].as_str(), args[6].as_str());
        let done = match role {
            "source" => source(name, frames, net),
            "transform" => transform(name, frames, net, at),
            "sink" => sink(frames, at),
            "monitor" => monitor(at),
            other => Err(format!("unknown role {other}").into()),
        };
        if let Err(e) = &done {
            // The parent reads one line from each stage: say why.
            let _ = say(&format!("error: {e}"));
        }
        return done;
    }
    let frames: u64 = match args.get(1) {
        Some(n) => n
            .parse()
            .map_err(|_| format!("not a number of frames: {n}"))?,
        None => 1_000_000,
    };
    let net = args.get(2).map_or("shm", String::as_str);
    run(frames, net)
}
