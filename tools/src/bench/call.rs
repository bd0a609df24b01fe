//! RPC figures: a 64-byte call and reply through isocall's client and
//! server (bytecheck validation on) in each wait strategy, 64 calls in
//! flight, a call carrying a 1 MiB in/out blob, and the same 64-byte call
//! over a Unix socket (rkyv bodies, validated, one `write` each way) as the
//! baseline. The server runs in the peer process.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use isocall_engine::WaitStrategy;
use isocall_engine::rpc::{CallCtx, Client, ClientOptions, ServerBuilder, SocketName};

use super::Res;
use super::measure::{Budget, Measured, latency, rate};
use super::peer::{Control, PEER_TIMEOUT, Peer};

/// A 64-byte request or reply.
#[derive(rkyv::Archive, rkyv::Serialize)]
pub struct Bytes64 {
    pub data: [u8; 64],
}

pub fn request(seq: u64) -> Bytes64 {
    let mut data = [0u8; 64];
    for (i, c) in data.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&(seq.wrapping_mul(0x9E37_79B9) ^ i as u64).to_le_bytes());
    }
    Bytes64 { data }
}

/// The server's answer: every request byte read, a reply of 64 bytes
/// whose first word is their sum.
pub fn answer(req: &[u8; 64]) -> Bytes64 {
    let sum = req.iter().fold(0u64, |s, &b| s + u64::from(b));
    let mut data = [0u8; 64];
    data[..8].copy_from_slice(&sum.to_le_bytes());
    Bytes64 { data }
}

pub fn check(reply: &[u8; 64], seq: u64) -> Res<()> {
    let want = request(seq)
        .data
        .iter()
        .fold(0u64, |s, &b| s + u64::from(b));
    let got = u64::from_le_bytes(reply[..8].try_into()?);
    if got != want {
        return Err(format!("wrong reply to call {seq}").into());
    }
    Ok(())
}

fn strategy_code(s: WaitStrategy) -> u64 {
    match s {
        WaitStrategy::BusySpin => 0,
        WaitStrategy::Adaptive => 1,
        WaitStrategy::Blocking => 2,
        // A strategy this tool does not know: the peer waits the default way.
        _ => 1,
    }
}

fn strategy_from(n: u64) -> WaitStrategy {
    match n {
        0 => WaitStrategy::BusySpin,
        1 => WaitStrategy::Adaptive,
        _ => WaitStrategy::Blocking,
    }
}

/// Starts the server peer on a fresh abstract socket and connects to it.
fn connect(figure: &str, strategy: WaitStrategy) -> Res<(Peer, Client)> {
    let name = format!("isocall-bench-{}-{figure}", std::process::id());
    let mut peer = Peer::start(
        figure,
        &format!(
            "strategy={} socket_pid={}",
            strategy_code(strategy),
            std::process::id()
        ),
        &[],
    )?;
    if peer.read_line()? != "ready" {
        return Err(format!("{figure}: the server peer did not start").into());
    }
    let opts = ClientOptions {
        strategy,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&SocketName::Abstract(name), opts)?;
    Ok((peer, client))
}

/// Peer of every `call.*` figure: serves `echo64` and `blob` until the
/// parent closes the control socket.
pub fn server_peer(mut ctl: Control) -> Res<()> {
    let strategy = strategy_from(ctl.param("strategy")?);
    let figure = std::env::args().nth(2).unwrap_or_default();
    let name = format!("isocall-bench-{}-{figure}", ctl.param("socket_pid")?);
    let server = ServerBuilder::new(SocketName::Abstract(name))
        .wait_strategy(strategy)
        .method::<Bytes64, Bytes64, _>("echo64", |r: &ArchivedBytes64, _: &mut CallCtx<'_>| {
            Ok(answer(&r.data))
        })
        .method::<Bytes64, Bytes64, _>("blob", |r: &ArchivedBytes64, ctx: &mut CallCtx<'_>| {
            let blob = ctx.accept_mut(0).map_err(|e| e.to_string())?;
            let (first, last) = (blob[0], blob[blob.len() - 1]);
            ctx.reply_blob(blob).map_err(|e| e.to_string())?;
            let mut out = answer(&r.data);
            out.data[8] = first;
            out.data[9] = last;
            Ok(out)
        })
        .spawn()?;
    ctl.write_line("ready")?;
    // Until the parent says stop (or closes the socket).
    let _ = ctl.read_line();
    drop(server);
    Ok(())
}

fn finish(mut peer: Peer, client: Client) -> Res<()> {
    drop(client);
    peer.write_line("stop")?;
    peer.finish()
}

/// `call.rtt.{busy,adaptive,blocking}.64`.
pub fn rtt(budget: &Budget, strategy: WaitStrategy) -> Res<Measured> {
    let name = match strategy {
        WaitStrategy::BusySpin => "call.rtt.busy.64",
        WaitStrategy::Adaptive => "call.rtt.adaptive.64",
        WaitStrategy::Blocking => "call.rtt.blocking.64",
        _ => "call.rtt.other.64",
    };
    let (peer, mut c) = connect(name, strategy)?;
    let m = c.method("echo64")?;
    let mut wrong = None;
    let out = latency(budget, |seq| {
        let ok =
            c.call::<Bytes64, Bytes64, _>(m, &request(seq), |r| check(&r.data, seq).is_ok())?;
        if !ok {
            wrong = Some(seq);
        }
        Ok(())
    })?;
    if let Some(seq) = wrong {
        return Err(format!("{name}: wrong reply to call {seq}").into());
    }
    finish(peer, c)?;
    Ok(out)
}

/// `call.pipelined.64`: calls per second with 64 in flight.
pub fn pipelined(budget: &Budget) -> Res<Measured> {
    let (peer, mut c) = connect("call.pipelined.64", WaitStrategy::BusySpin)?;
    let m = c.method("echo64")?;
    let n = (budget.stream_msgs / 4).max(10_000);
    let mut reps = Vec::new();
    for _ in 0..budget.stream_reps {
        let start = Instant::now();
        let mut window = std::collections::VecDeque::with_capacity(64);
        for seq in 0..n {
            if window.len() == 64 {
                let (p, s) = window.pop_front().ok_or("empty window")?;
                let ok = c.wait::<Bytes64, _>(p, None, |r, _| check(&r.data, s).is_ok())?;
                if !ok {
                    return Err(format!("call.pipelined.64: wrong reply to {s}").into());
                }
            }
            window.push_back((c.start(m, &request(seq), &[])?, seq));
        }
        for (p, s) in window {
            let ok = c.wait::<Bytes64, _>(p, None, |r, _| check(&r.data, s).is_ok())?;
            if !ok {
                return Err(format!("call.pipelined.64: wrong reply to {s}").into());
            }
        }
        reps.push((n, start.elapsed()));
    }
    finish(peer, c)?;
    Ok(rate(&mut reps, 64))
}

/// `call.rtt.blob.1048576`: a 64-byte call carrying a filled 1 MiB blob,
/// which the server reads (first and last byte) and sends back.
pub fn rtt_blob(budget: &Budget) -> Res<Measured> {
    let (peer, mut c) = connect("call.rtt.blob.1048576", WaitStrategy::BusySpin)?;
    let m = c.method("blob")?;
    let pool = c.pool().ok_or("no blob pool")?.clone();
    let mut blob = pool.alloc(1 << 20)?;
    blob.fill(0xA5);
    let mut slot = Some(blob);
    let out = latency(budget, |seq| {
        let blob = slot.take().ok_or("blob lost")?;
        let h = blob.send()?;
        let (ok, back) =
            c.call_with::<Bytes64, Bytes64, _>(m, &request(seq), &[h], None, |r, b| {
                (
                    check(&r.data, seq).is_ok() && r.data[8] == 0xA5 && r.data[9] == 0xA5,
                    b.first().copied(),
                )
            })?;
        if !ok {
            return Err(format!("call.rtt.blob: wrong reply to {seq}").into());
        }
        slot = Some(pool.accept_mut(&back.ok_or("the reply lost the blob")?)?);
        Ok(())
    })?;
    drop(slot);
    finish(peer, c)?;
    Ok(out)
}

/// `uds.call.64`: the same call over a Unix stream socket: the request
/// archived with rkyv and written, the peer validates it, answers with an
/// archived reply, which we validate.
pub fn uds_call(budget: &Budget) -> Res<Measured> {
    let (ours, theirs) = UnixStream::pair()?;
    let peer = Peer::start("uds.call.64", "", &[theirs.as_fd()])?;
    drop(theirs);
    ours.set_read_timeout(Some(PEER_TIMEOUT))?;
    let mut buf = rkyv::util::AlignedVec::<16>::with_capacity(256);
    let out = latency(budget, |seq| {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&request(seq))?;
        (&ours).write_all(&(bytes.len() as u32).to_le_bytes())?;
        (&ours).write_all(&bytes)?;
        read_frame(&ours, &mut buf)?;
        let r = rkyv::access::<ArchivedBytes64, rkyv::rancor::Error>(&buf)?;
        check(&r.data, seq)
    })?;
    drop(ours);
    peer.finish()?;
    Ok(out)
}

fn read_frame(mut s: &UnixStream, buf: &mut rkyv::util::AlignedVec<16>) -> Res<bool> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_le_bytes(len) as usize;
    buf.clear();
    buf.resize(n, 0);
    s.read_exact(buf)?;
    Ok(true)
}

/// Peer of `uds.call.64`.
pub fn uds_call_peer(mut ctl: Control) -> Res<()> {
    let s = UnixStream::from(ctl.fds.pop().ok_or("no socket")?);
    let mut buf = rkyv::util::AlignedVec::<16>::with_capacity(256);
    while read_frame(&s, &mut buf)? {
        let r = rkyv::access::<ArchivedBytes64, rkyv::rancor::Error>(&buf)?;
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&answer(&r.data))?;
        (&s).write_all(&(bytes.len() as u32).to_le_bytes())?;
        (&s).write_all(&bytes)?;
    }
    Ok(())
}
