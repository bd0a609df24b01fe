//! Kernel baselines, two processes, 64-byte messages: a round trip over a
//! Unix stream socket, a pair of pipes and TCP on loopback, and a one-way
//! stream over a Unix socket (one `write` per message, as a real sender
//! does; the reader uses a 64 KiB buffered reader).

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::Res;
use super::measure::{Budget, Measured, answer64, check_reply, fill64, latency, rate, read_all};
use super::peer::{Control, PEER_TIMEOUT, Peer};

/// Round trips of 64 bytes over `(reader, writer)` against a peer that
/// answers each.
fn rtt_over(budget: &Budget, mut r: impl Read, mut w: impl Write) -> Res<Measured> {
    let mut req = [0u8; 64];
    let mut rep = [0u8; 64];
    latency(budget, |seq| {
        fill64(&mut req, seq);
        w.write_all(&req)?;
        r.read_exact(&mut rep)?;
        check_reply(&rep, seq)
    })
}

/// The peer's side of a round-trip baseline: answer until the stream ends.
fn answer_over(mut r: impl Read, mut w: impl Write) -> Res<()> {
    let mut req = [0u8; 64];
    let mut rep = [0u8; 64];
    loop {
        match r.read_exact(&mut req) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        answer64(&req, &mut rep);
        w.write_all(&rep)?;
    }
}

/// `uds.rtt.64`.
pub fn uds_rtt(budget: &Budget) -> Res<Measured> {
    let (ours, theirs) = UnixStream::pair()?;
    let peer = Peer::start("uds.rtt.64", "", &[theirs.as_fd()])?;
    drop(theirs);
    ours.set_read_timeout(Some(PEER_TIMEOUT))?;
    let m = rtt_over(budget, &ours, &ours)?;
    drop(ours);
    peer.finish()?;
    Ok(m)
}

/// Peer of `uds.rtt.64`.
pub fn uds_peer(mut ctl: Control) -> Res<()> {
    let s = UnixStream::from(ctl.fds.pop().ok_or("no socket")?);
    answer_over(&s, &s)
}

/// `pipe.rtt.64`.
pub fn pipe_rtt(budget: &Budget) -> Res<Measured> {
    let (to_peer_r, to_peer_w) = make_pipe()?;
    let (from_peer_r, from_peer_w) = make_pipe()?;
    let peer = Peer::start("pipe.rtt.64", "", &[to_peer_r.as_fd(), from_peer_w.as_fd()])?;
    drop((to_peer_r, from_peer_w));
    let m = rtt_over(
        budget,
        std::fs::File::from(from_peer_r),
        std::fs::File::from(to_peer_w),
    )?;
    peer.finish()?;
    Ok(m)
}

fn make_pipe() -> Res<(OwnedFd, OwnedFd)> {
    let (r, w) = std::io::pipe()?;
    Ok((OwnedFd::from(r), OwnedFd::from(w)))
}

/// Peer of `pipe.rtt.64`.
pub fn pipe_peer(mut ctl: Control) -> Res<()> {
    let w = ctl.fds.pop().ok_or("no pipe")?;
    let r = ctl.fds.pop().ok_or("no pipe")?;
    answer_over(std::fs::File::from(r), std::fs::File::from(w))
}

/// `tcp.rtt.64`, over 127.0.0.1 with `TCP_NODELAY`.
pub fn tcp_rtt(budget: &Budget) -> Res<Measured> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let peer = Peer::start("tcp.rtt.64", &format!("port={port}"), &[])?;
    let (s, _) = listener.accept()?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(PEER_TIMEOUT))?;
    let m = rtt_over(budget, &s, &s)?;
    drop(s);
    peer.finish()?;
    Ok(m)
}

/// Peer of `tcp.rtt.64`.
pub fn tcp_peer(ctl: Control) -> Res<()> {
    let port = ctl.param("port")?;
    let s = TcpStream::connect(("127.0.0.1", u16::try_from(port)?))?;
    s.set_nodelay(true)?;
    answer_over(&s, &s)
}

/// `uds.stream.64`: one-way messages, msg/s.
pub fn uds_stream(budget: &Budget) -> Res<Measured> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut peer = Peer::start("uds.stream.64", "", &[theirs.as_fd()])?;
    drop(theirs);
    // A sixteenth of ring.stream.64's count: the socket carries some 40
    // times fewer a second.
    let n = (budget.stream_msgs / 16).max(1000);
    let mut reps = Vec::new();
    let mut msg = [0u8; 64];
    let mut w = &ours;
    for _ in 0..budget.stream_reps {
        peer.write_line(&format!("go {n}"))?;
        let start = Instant::now();
        let mut sum = 0u64;
        for i in 0..n {
            fill64(&mut msg, i);
            sum = sum.wrapping_add(read_all(&msg));
            w.write_all(&msg)?;
        }
        let got: u64 = peer.read_line()?.parse()?;
        reps.push((n, start.elapsed()));
        if got != sum {
            return Err("uds stream: reader got wrong bytes".into());
        }
    }
    peer.write_line("stop")?;
    drop(ours);
    peer.finish()?;
    Ok(rate(&mut reps, 64))
}

/// Peer of `uds.stream.64`.
pub fn uds_stream_peer(mut ctl: Control) -> Res<()> {
    let s = UnixStream::from(ctl.fds.pop().ok_or("no socket")?);
    let mut r = BufReader::with_capacity(1 << 16, &s);
    let mut msg = [0u8; 64];
    ctl.serve_reps(|n| {
        let mut sum = 0u64;
        for _ in 0..n {
            r.read_exact(&mut msg)?;
            sum = sum.wrapping_add(read_all(&msg));
        }
        Ok(sum)
    })
}

/// `uds.rtt.{65536,1048576}`: the bytes of `blob.rtt.e2e.*` through a Unix
/// socket. We write every byte of the request and send it, the peer
/// receives it, reads every byte, writes every byte of its answer and sends
/// it back, and we read every byte of the answer.
pub fn uds_rtt_bytes(budget: &Budget, len: usize) -> Res<Measured> {
    let (ours, theirs) = UnixStream::pair()?;
    let peer = Peer::start(
        &format!("uds.rtt.{len}"),
        &format!("len={len}"),
        &[theirs.as_fd()],
    )?;
    drop(theirs);
    ours.set_read_timeout(Some(PEER_TIMEOUT))?;
    let mut req = vec![0u8; len];
    let mut rep = vec![0u8; len];
    let m = latency(budget, |seq| {
        let w = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        fill_words(&mut req, w);
        (&ours).write_all(&req)?;
        (&ours).read_exact(&mut rep)?;
        if sum_words(&rep) != (w.wrapping_mul((len / 8) as u64)).wrapping_mul((len / 8) as u64) {
            return Err(format!("uds.rtt.{len}: wrong reply to {seq}").into());
        }
        Ok(())
    })?;
    drop(ours);
    peer.finish()?;
    Ok(m)
}

/// Peer of `uds.rtt.{65536,1048576}`.
pub fn uds_bytes_peer(mut ctl: Control) -> Res<()> {
    let len = ctl.param("len")? as usize;
    let s = UnixStream::from(ctl.fds.pop().ok_or("no socket")?);
    let mut buf = vec![0u8; len];
    loop {
        match (&s).read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let sum = sum_words(&buf);
        fill_words(&mut buf, sum);
        (&s).write_all(&buf)?;
    }
}

/// Writes `w` into every 8-byte word of `buf`.
pub fn fill_words(buf: &mut [u8], w: u64) {
    let w = w.to_le_bytes();
    for c in buf.chunks_exact_mut(8) {
        c.copy_from_slice(&w);
    }
}

/// The wrapping sum of the 8-byte words of `buf` (reads every byte).
pub fn sum_words(buf: &[u8]) -> u64 {
    buf.chunks_exact(8).fold(0u64, |s, c| {
        s.wrapping_add(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
    })
}
