//! Two processes, one shared segment: the parent sends 100,000 requests of
//! 64 bytes, the child (this program re-executed) answers each in place, and
//! the parent checks every answer and prints the median round trip.
//!
//! ```sh
//! cargo run --release --example pingpong            # Adaptive (default)
//! cargo run --release --example pingpong -- busy    # BusySpin
//! cargo run --release --example pingpong -- blocking
//! ```

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isocall::WaitStrategy;
use isocall::raw::sys::{Doorbell, PidFd, recv_message, send_with_fds};
use isocall::raw::{Liveness, PeerWatch, Segment, SegmentLayout, Side, Watched, endpoint};

const ROUND_TRIPS: u64 = 100_000;
const REQUEST: u16 = 1;
const REPLY: u16 = 2;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(&args[2]);
    }
    let mode = args.get(1).cloned().unwrap_or_else(|| "adaptive".into());
    let strategy = parse(&mode)?;

    // The segment and the child's end of the doorbell pair, handed to the
    // child over a socket that is its stdin.
    let layout = SegmentLayout {
        ring_capacity: 64 * 1024,
        blobs: Default::default(),
    };
    let segment = Arc::new(Segment::create("isocall:pingpong:0", &layout)?);
    let (doorbell, kids_end) = Doorbell::pair()?;
    let doorbell = Arc::new(doorbell);
    let (ours, theirs) = UnixStream::pair()?;
    let mut kid = Command::new(std::env::current_exe()?)
        .args(["--child", &mode])
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()?;
    send_with_fds(
        ours.as_fd(),
        b"segment",
        &[segment.fd(), kids_end.as_fd()],
        Instant::now() + Duration::from_secs(10),
    )?;
    drop(kids_end);

    // Our side is the server: we write server-to-client.
    let live = Liveness::new();
    let (mut tx, mut rx) = endpoint(
        segment.clone(),
        Side::Server,
        doorbell.clone(),
        strategy,
        live.clone(),
    )?;
    // The child's death, from the kernel: its pidfd becomes readable.
    let watched = Watched {
        sock: None,
        pidfd: Some(PidFd::open(kid.id())?),
    };
    let _watch = PeerWatch::spawn(watched, live, segment, Side::Server.tx(), Some(doorbell))?;

    let deadline = Some(Instant::now() + Duration::from_secs(60));
    let mut times = Vec::with_capacity(ROUND_TRIPS as usize);
    for seq in 0..ROUND_TRIPS {
        let start = Instant::now();
        let mut grant = tx.reserve(REQUEST, 64, deadline)?;
        grant.bytes_mut().fill(seq as u8);
        grant.bytes_mut()[..8].copy_from_slice(&seq.to_le_bytes());
        grant.commit_all();
        tx.publish();
        let reply = rx.recv(deadline)?;
        let echoed = u64::from_le_bytes(reply.payload()[..8].try_into()?);
        let sum = u64::from_le_bytes(reply.payload()[8..16].try_into()?);
        if reply.kind() != REPLY || echoed != seq || sum != expected_sum(seq) {
            return Err(format!("round trip {seq}: wrong reply").into());
        }
        reply.release();
        times.push(start.elapsed());
    }
    tx.send(REQUEST, &[], deadline)?; // empty request: goodbye
    let status = kid.wait()?;
    if !status.success() {
        return Err(format!("child failed: {status}").into());
    }
    times.sort();
    println!(
        "{ROUND_TRIPS} round trips of 64 B ({mode}): median {:?}, p99 {:?}, every reply checked",
        times[times.len() / 2],
        times[times.len() * 99 / 100]
    );
    Ok(())
}

fn child(mode: &str) -> Result<(), Error> {
    let sock = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut buf = [0u8; 64];
    let (_, mut fds) = recv_message(
        sock.as_fd(),
        &mut buf,
        2,
        Instant::now() + Duration::from_secs(10),
        None,
    )?;
    let doorbell = Arc::new(Doorbell::from_peer_end(fds.pop().ok_or("no doorbell")?)?);
    let segment = Arc::new(Segment::open(fds.pop().ok_or("no memfd")?)?);
    let live = Liveness::new();
    let (mut tx, mut rx) = endpoint(
        segment.clone(),
        Side::Client,
        doorbell.clone(),
        parse(mode)?,
        live.clone(),
    )?;
    let watched = Watched {
        sock: None,
        pidfd: Some(PidFd::open(std::os::unix::process::parent_id())?),
    };
    let _watch = PeerWatch::spawn(watched, live, segment, Side::Client.tx(), Some(doorbell))?;
    loop {
        let request = rx.recv(Some(Instant::now() + Duration::from_secs(60)))?;
        if request.is_empty() {
            return Ok(());
        }
        // Read every byte of the request, answer in place in our ring.
        let sum: u64 = request.payload().iter().map(|&b| u64::from(b)).sum();
        let mut grant = tx.reserve(REPLY, 64, None)?;
        grant.bytes_mut()[..8].copy_from_slice(&request.payload()[..8]);
        grant.bytes_mut()[8..16].copy_from_slice(&sum.to_le_bytes());
        grant.commit(16);
        request.release();
        tx.publish();
    }
}

fn expected_sum(seq: u64) -> u64 {
    seq.to_le_bytes().iter().map(|&b| u64::from(b)).sum::<u64>() + 56 * u64::from(seq as u8)
}

fn parse(mode: &str) -> Result<WaitStrategy, Error> {
    Ok(match mode {
        "busy" => WaitStrategy::BusySpin,
        "adaptive" => WaitStrategy::Adaptive,
        "blocking" => WaitStrategy::Blocking,
        other => return Err(format!("unknown mode {other:?}: busy, adaptive or blocking").into()),
    })
}
