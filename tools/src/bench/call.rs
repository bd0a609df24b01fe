//! RPC figures: a 64-byte call and reply through isocall's client and
//! server (bytecheck validation on) in each wait strategy, 64 calls in
//! flight, a call carrying a 1 MiB in/out blob, the same 64-byte call
//! over a Unix socket (rkyv bodies, validated, one `write` each way) as the
//! baseline, and the plot's calls of every size (`call.rtt.busy.<len>`:
//! the body in the frame up to the frame limit, then a blob). The server
//! runs in the peer process.
//!
//! Every use of the engine's `Client`/`Server` API by the bench is in this
//! file (the instruction counts' call loops included) and, for the socket
//! transport's figures, in `call_stream.rs`, so that a change of that API
//! is adapted there alone.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use isocall_engine::WaitStrategy;
use isocall_engine::blob::PoolConfig;
use isocall_engine::raw::SegmentLayout;
use isocall_engine::rpc::{
    AppError, CallCtx, Caller, Client, ClientOptions, Method, ServerBuilder, SharedClient,
    SocketName,
};

use super::Res;
use super::measure::{Budget, Measured, latency, rate};
use super::peer::{Control, PEER_TIMEOUT, Peer, strategy_code, strategy_from};
use super::sockets::{fill_words, sum_words};

/// A 64-byte request or reply.
#[derive(rkyv::Archive, rkyv::Serialize, isocall_engine::Schema)]
#[schema(crate = "isocall_engine")]
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
    let sum = sum_words(req);
    let mut data = [0u8; 64];
    data[..8].copy_from_slice(&sum.to_le_bytes());
    Bytes64 { data }
}

pub fn check(reply: &[u8; 64], seq: u64) -> Res<()> {
    let want = sum_words(&request(seq).data);
    let got = u64::from_le_bytes(reply[..8].try_into()?);
    if got != want {
        return Err(format!("wrong reply to call {seq}").into());
    }
    Ok(())
}

/// A request or reply body of any length (the plot's calls).
#[derive(rkyv::Archive, rkyv::Serialize, isocall_engine::Schema)]
#[schema(crate = "isocall_engine")]
pub struct Bytes {
    /// The body's bytes.
    pub data: Vec<u8>,
}

/// A 64-byte call, every byte read, answered with 64 bytes.
pub const ECHO64: Method<Bytes64, Bytes64> = Method::new("echo64");
/// A 64-byte call carrying a blob, passed through.
pub const BLOB: Method<Bytes64, Bytes64> = Method::new("blob");
/// A body of any length, every byte read, answered as long.
pub const ECHO: Method<Bytes, Bytes> = Method::new("echo");
/// A blob read whole and written whole in place, sent back.
pub const BLOB_E2E: Method<Bytes, Bytes> = Method::new("blob_e2e");

/// A 64-byte call carrying a blob of text, read whole; the reply's first
/// word is the sum of the blob's words (`isocall bench --netem`).
pub const TEXT: Method<Bytes64, Bytes64> = Method::new("text");

/// A blob error as the handler's application error.
fn app(e: impl std::fmt::Display) -> AppError {
    AppError::new(1, e.to_string())
}

/// The largest call frame the server takes and sends: `ServerBuilder`'s
/// default, which the bench's server keeps.
const MAX_FRAME: usize = 64 << 10;

/// Whether a body of `len` bytes travels in the call's frame (the rest of
/// the frame: the call's head, room for blob handles, the archive's own
/// fields); larger bodies go as a blob.
pub fn body_fits_frame(len: usize) -> bool {
    len + 512 <= MAX_FRAME
}

/// Starts the server peer on a fresh abstract socket and connects to it.
fn connect(figure: &str, strategy: WaitStrategy) -> Res<(Peer, Client)> {
    connect_with_blobs(figure, strategy, 0)
}

/// As `connect`; with `blob_len` > 0 the server's connections have a
/// blob pool of two `blob_len`-byte slots instead of the default pool.
fn connect_with_blobs(
    figure: &str,
    strategy: WaitStrategy,
    blob_len: usize,
) -> Res<(Peer, Client)> {
    let (peer, socket) = start_server(figure, strategy, blob_len)?;
    let opts = ClientOptions::default().strategy(strategy);
    let client = Client::connect_with(&socket, opts)?;
    Ok((peer, client))
}

/// As `connect` (BusySpin), with a [`SharedClient`].
fn connect_shared(figure: &str) -> Res<(Peer, SharedClient)> {
    connect_shared_batched(figure, false)
}

/// As `connect_shared`, its requests published in batches if `batch`
/// (`ClientOptions::batch_requests`).
fn connect_shared_batched(figure: &str, batch: bool) -> Res<(Peer, SharedClient)> {
    let (peer, socket) = start_server(figure, WaitStrategy::BusySpin, 0)?;
    let opts = ClientOptions::default()
        .strategy(WaitStrategy::BusySpin)
        .batch_requests(batch);
    let client = SharedClient::connect_with(&socket, opts)?;
    Ok((peer, client))
}

/// Starts the server peer of `figure` on a fresh abstract socket; returns
/// the peer and the socket once it listens.
fn start_server(figure: &str, strategy: WaitStrategy, blob_len: usize) -> Res<(Peer, SocketName)> {
    let name = format!("isocall-bench-{}-{figure}", std::process::id());
    let mut peer = Peer::start(
        figure,
        &format!(
            "strategy={} socket_pid={} blob_len={blob_len}",
            strategy_code(strategy),
            std::process::id()
        ),
        &[],
    )?;
    if peer.read_line()? != "ready" {
        return Err(format!("{figure}: the server peer did not start").into());
    }
    Ok((peer, SocketName::Abstract(name)))
}

/// The bench's server: `echo64` (64-byte call), `blob` (a blob passed
/// through, first and last byte read), `echo` (a body of any length, every
/// byte read, a reply as long written), `blob_e2e` (a blob read whole
/// and written whole in place, then sent back) and `text` (a blob read
/// whole, its sum answered).
pub fn server(name: SocketName, strategy: WaitStrategy, blob_len: usize) -> ServerBuilder {
    let mut b = ServerBuilder::new(name).wait_strategy(strategy);
    if blob_len > 0 {
        b = b.layout(SegmentLayout {
            ring_capacity: 1 << 20,
            blobs: PoolConfig::new().class(blob_len.next_multiple_of(64), 2),
        });
    }
    b.method(ECHO64, |r: &ArchivedBytes64, _: &mut CallCtx<'_>| {
        Ok(answer(&r.data))
    })
    .method(BLOB, |r: &ArchivedBytes64, ctx: &mut CallCtx<'_>| {
        let blob = ctx.blob_mut(0).map_err(app)?;
        let (first, last) = (blob[0], blob[blob.len() - 1]);
        ctx.reply_blob(blob).map_err(app)?;
        let mut out = answer(&r.data);
        out.data[8] = first;
        out.data[9] = last;
        Ok(out)
    })
    .method(ECHO, |r: &ArchivedBytes, _: &mut CallCtx<'_>| {
        let mut data = vec![0u8; r.data.len()];
        fill_words(&mut data, sum_words(&r.data));
        Ok(Bytes { data })
    })
    .method(TEXT, |_: &ArchivedBytes64, ctx: &mut CallCtx<'_>| {
        let blob = ctx.blob(0).map_err(app)?;
        let mut data = [0u8; 64];
        data[..8].copy_from_slice(&sum_words(&blob).to_le_bytes());
        Ok(Bytes64 { data })
    })
    .method(BLOB_E2E, |_: &ArchivedBytes, ctx: &mut CallCtx<'_>| {
        let mut blob = ctx.blob_mut(0).map_err(app)?;
        let sum = sum_words(&blob);
        fill_words(&mut blob, sum);
        ctx.reply_blob(blob).map_err(app)?;
        Ok(Bytes { data: Vec::new() })
    })
}

/// Peer of every `call.*` figure: serves [`server`]'s methods until the
/// parent closes the control socket.
pub fn server_peer(mut ctl: Control) -> Res<()> {
    let strategy = strategy_from(ctl.param("strategy")?);
    let figure = std::env::args().nth(2).unwrap_or_default();
    let name = format!("isocall-bench-{}-{figure}", ctl.param("socket_pid")?);
    let server = server(
        SocketName::Abstract(name),
        strategy,
        ctl.param("blob_len")? as usize,
    )
    .spawn()?;
    ctl.write_line("ready")?;
    // Until the parent says stop (or closes the socket).
    let _ = ctl.read_line();
    drop(server);
    Ok(())
}

/// Closes the connection (`client`), then stops the server peer.
pub(super) fn finish<C>(mut peer: Peer, client: C) -> Res<()> {
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
    let (peer, c) = connect(name, strategy)?;
    rtt_through(budget, name, peer, c)
}

/// The round trips of `figure` through `c`, a client of `peer`'s server:
/// 64-byte calls one at a time, every reply checked (after the timed
/// loop); then closes `c` and stops `peer`.
pub(super) fn rtt_through<C: Caller>(
    budget: &Budget,
    figure: &str,
    peer: Peer,
    mut c: C,
) -> Res<Measured> {
    let m = c.method(ECHO64)?;
    let mut wrong = None;
    let out = latency(budget, |seq| {
        if check(&c.call(m, &request(seq))?.data, seq).is_err() {
            wrong = Some(seq);
        }
        Ok(())
    })?;
    if let Some(seq) = wrong {
        return Err(format!("{figure}: wrong reply to call {seq}").into());
    }
    finish(peer, c)?;
    Ok(out)
}

/// `call.pipelined.64`: calls per second with 64 in flight.
pub fn pipelined(budget: &Budget) -> Res<Measured> {
    let figure = "call.pipelined.64";
    let (peer, c) = connect(figure, WaitStrategy::BusySpin)?;
    let n = (budget.stream_msgs / 4).max(10_000);
    pipelined_through(budget, figure, n, 64, peer, c)
}

/// `call.pipelined.1x32.64`: `call.pipelined.64` with 32 calls in flight,
/// the window of each caller of `call.shared.pipelined.64`. Where those
/// two callers share one CPU (a 2-CPU machine: the server has the other),
/// one runs at a time, and while it does, the other's calls are answered
/// and it starts no more: this figure is what they can reach together.
pub fn pipelined_half(budget: &Budget) -> Res<Measured> {
    let figure = "call.pipelined.1x32.64";
    let (peer, c) = connect(figure, WaitStrategy::BusySpin)?;
    let n = (budget.stream_msgs / 4).max(10_000);
    pipelined_through(budget, figure, n, 32, peer, c)
}

/// `call.pipelined.batched.64`: `call.pipelined.64` with the requests
/// published in batches (`ClientOptions::batch_requests`).
pub fn pipelined_batched(budget: &Budget) -> Res<Measured> {
    let figure = "call.pipelined.batched.64";
    let (peer, socket) = start_server(figure, WaitStrategy::BusySpin, 0)?;
    let opts = ClientOptions::default()
        .strategy(WaitStrategy::BusySpin)
        .batch_requests(true);
    let c = Client::connect_with(&socket, opts)?;
    let n = (budget.stream_msgs / 4).max(10_000);
    pipelined_through(budget, figure, n, 64, peer, c)
}

/// The rate of `figure` through `c`, a client of `peer`'s server: `n`
/// 64-byte calls with `in_flight` in flight, every reply checked, per
/// repetition; then closes `c` and stops `peer`.
pub(super) fn pipelined_through(
    budget: &Budget,
    figure: &str,
    n: u64,
    in_flight: usize,
    peer: Peer,
    mut c: Client,
) -> Res<Measured> {
    let m = c.method(ECHO64)?;
    let mut reps = Vec::new();
    for _ in 0..budget.stream_reps {
        let start = Instant::now();
        let mut window = std::collections::VecDeque::with_capacity(in_flight);
        for seq in 0..n {
            if window.len() == in_flight {
                let (p, s) = window.pop_front().ok_or("empty window")?;
                let r: isocall_engine::Reply<'_, Bytes64> = c.wait(p, None)?;
                if check(&r.data, s).is_err() {
                    return Err(format!("{figure}: wrong reply to {s}").into());
                }
            }
            window.push_back((c.start(m, &request(seq), &[])?, seq));
        }
        for (p, s) in window {
            if check(&c.wait(p, None)?.data, s).is_err() {
                return Err(format!("{figure}: wrong reply to {s}").into());
            }
        }
        reps.push((n, start.elapsed()));
    }
    finish(peer, c)?;
    Ok(rate(&mut reps, 64))
}

/// `call.shared.rtt.busy.64`: `call.rtt.busy.64` through a
/// [`SharedClient`] (one call at a time, from one thread: what the handle
/// shared by threads costs a lone caller).
pub fn shared_rtt(budget: &Budget) -> Res<Measured> {
    let figure = "call.shared.rtt.busy.64";
    let (peer, c) = connect_shared(figure)?;
    rtt_through(budget, figure, peer, c)
}

/// `call.shared.pipelined.64`: calls per second from two threads sharing
/// one connection through clones of a [`SharedClient`], 32 calls in flight
/// each (64 in all, as `call.pipelined.64`), each thread on a CPU of its
/// own if the machine has one besides the server's. On two CPUs they
/// share one and take turns, and together reach at most what one caller
/// with 32 in flight does (`call.pipelined.1x32.64`, the figure it is also
/// compared to).
pub fn shared_pipelined(budget: &Budget) -> Res<Measured> {
    shared_pipelined_by(budget, "call.shared.pipelined.64", 2, 32, false)
}

/// `call.shared.pipelined.batched.64`: `call.shared.pipelined.64` with the
/// requests published in batches (`ClientOptions::batch_requests`).
pub fn shared_pipelined_batched(budget: &Budget) -> Res<Measured> {
    shared_pipelined_by(budget, "call.shared.pipelined.batched.64", 2, 32, true)
}

/// `call.shared.pipelined.1x64.batched.64`: `call.shared.pipelined.1x64.64`
/// with the requests published in batches.
pub fn shared_pipelined_lone_batched(budget: &Budget) -> Res<Measured> {
    shared_pipelined_by(budget, "call.shared.pipelined.1x64.batched.64", 1, 64, true)
}

/// `call.shared.pipelined.1x64.64`: `call.pipelined.64` (one thread, 64
/// calls in flight) through a [`SharedClient`]. Beside
/// `call.shared.pipelined.64` it tells what the shared handle costs per
/// call from what two threads taking turns on one CPU cost.
pub fn shared_pipelined_lone(budget: &Budget) -> Res<Measured> {
    shared_pipelined_by(budget, "call.shared.pipelined.1x64.64", 1, 64, false)
}

/// Calls per second from `threads` threads sharing one connection through
/// clones of a [`SharedClient`], `window` 64-byte calls in flight each,
/// every reply checked; requests published in batches if `batch`. Each
/// thread runs on the CPU [`caller_cpu`](super::peer::caller_cpu) gives
/// it.
fn shared_pipelined_by(
    budget: &Budget,
    figure: &str,
    threads: u64,
    window: usize,
    batch: bool,
) -> Res<Measured> {
    let (peer, c) = connect_shared_batched(figure, batch)?;
    let m = c.method(ECHO64)?;
    // As many calls in all as `call.pipelined.64` makes.
    let per_thread = (budget.stream_msgs / 4 / threads).max(5_000);
    let mut reps = Vec::new();
    for _ in 0..budget.stream_reps {
        let start = Instant::now();
        let results: Vec<Res<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let c = c.clone();
                    s.spawn(move || -> Res<()> {
                        // A CPU of its own where the machine has one to
                        // spare (this process is pinned to one CPU, which
                        // a new thread would share).
                        super::peer::pin(super::peer::caller_cpu(t as usize));
                        let mut pending = std::collections::VecDeque::with_capacity(window);
                        for i in 0..per_thread {
                            let seq = t * per_thread + i;
                            if pending.len() == window {
                                let (p, s) = pending.pop_front().ok_or("empty window")?;
                                let r: isocall_engine::Reply<'_, Bytes64> = c.wait(p, None)?;
                                check(&r.data, s)?;
                            }
                            pending.push_back((c.start(m, &request(seq), &[])?, seq));
                        }
                        for (p, s) in pending {
                            let r: isocall_engine::Reply<'_, Bytes64> = c.wait(p, None)?;
                            check(&r.data, s)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a caller thread panicked".into()))
                })
                .collect()
        });
        for r in results {
            r.map_err(|e| format!("{figure}: {e}"))?;
        }
        reps.push((threads * per_thread, start.elapsed()));
    }
    finish(peer, c)?;
    Ok(rate(&mut reps, 64))
}

/// `call.rtt.blob.1048576`: a 64-byte call carrying a filled 1 MiB blob,
/// which the server reads (first and last byte) and sends back.
pub fn rtt_blob(budget: &Budget) -> Res<Measured> {
    let (peer, mut c) = connect("call.rtt.blob.1048576", WaitStrategy::BusySpin)?;
    let m = c.method(BLOB)?;
    let pool = c.pool().ok_or("no blob pool")?.clone();
    let mut blob = pool.alloc(1 << 20)?;
    blob.fill(0xA5);
    let mut slot = Some(blob);
    let out = latency(budget, |seq| {
        let blob = slot.take().ok_or("blob lost")?;
        let h = blob.send()?;
        let mut r = c.call_with(m, &request(seq), &[h], None)?;
        let ok = check(&r.data, seq).is_ok() && r.data[8] == 0xA5 && r.data[9] == 0xA5;
        let back = r.take_handle(0)?;
        drop(r);
        if !ok {
            return Err(format!("call.rtt.blob: wrong reply to {seq}").into());
        }
        slot = Some(pool.accept_mut(&back)?);
        Ok(())
    })?;
    drop(slot);
    finish(peer, c)?;
    Ok(out)
}

/// The word call `seq` of the plot fills its body with.
fn word(seq: u64) -> u64 {
    seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// What `sum_words` gives for `len` bytes of the word `w`.
fn sum_of(len: usize, w: u64) -> u64 {
    w.wrapping_mul((len / 8) as u64)
}

/// `call.rtt.busy.<len>` of the plot, BusySpin on both sides: 64 bytes is
/// `call.rtt.busy.64` itself; up to the frame limit the request body
/// (every byte written) travels in the frame, the server reads every byte
/// and answers with a body as long (every byte written), which we read
/// whole; beyond it the body is a blob that we fill, the server reads
/// whole, writes whole in place and sends back, and we read whole (as
/// `blob.rtt.e2e.<len>`, with a call around it).
pub fn rtt_sized(budget: &Budget, len: usize) -> Res<Measured> {
    if len == 64 {
        return rtt(budget, WaitStrategy::BusySpin);
    }
    if len < 8 || !len.is_multiple_of(8) {
        return Err(format!("call.rtt.busy: {len} is not a multiple of 8 bytes").into());
    }
    let name = format!("call.rtt.busy.{len}");
    let inline = body_fits_frame(len);
    let blob_len = if inline { 0 } else { len };
    let (peer, mut c) = connect_with_blobs(&name, WaitStrategy::BusySpin, blob_len)?;
    let want = |seq| sum_of(len, sum_of(len, word(seq)));
    let out = if inline {
        let m = c.method(ECHO)?;
        let mut req = Bytes {
            data: vec![0u8; len],
        };
        latency(budget, |seq| {
            fill_words(&mut req.data, word(seq));
            let got = sum_words(&c.call(m, &req)?.data);
            if got != want(seq) {
                return Err(format!("{name}: wrong reply to call {seq}").into());
            }
            Ok(())
        })?
    } else {
        let m = c.method(BLOB_E2E)?;
        let pool = c.pool().ok_or("no blob pool")?.clone();
        let mut slot = Some(pool.alloc(len)?);
        let empty = Bytes { data: Vec::new() };
        let out = latency(budget, |seq| {
            let mut blob = slot.take().ok_or("blob lost")?;
            fill_words(&mut blob, word(seq));
            let h = blob.send()?;
            let back = c.call_with(m, &empty, &[h], None)?.take_handle(0)?;
            let back = pool.accept_mut(&back)?;
            if sum_words(&back) != want(seq) {
                return Err(format!("{name}: wrong reply to call {seq}").into());
            }
            slot = Some(back);
            Ok(())
        })?;
        drop(slot);
        out
    };
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

/// Starts an in-process server (BusySpin, one worker) whose `echo64`
/// handler calls `hook` with the 1-based index of each call before
/// answering, and connects `conns` BusySpin clients to it
/// (`--instructions`).
fn instr_connect<C>(
    conns: usize,
    hook: impl Fn(u64) + Send + Sync + 'static,
    open: impl Fn(&SocketName, ClientOptions) -> Result<C, isocall_engine::rpc::ConnectError>,
) -> Res<(isocall_engine::rpc::Server, Vec<C>)> {
    let name = SocketName::Abstract(format!("isocall-bench-instr-{}", std::process::id()));
    let calls = std::sync::atomic::AtomicU64::new(0);
    let server = ServerBuilder::new(name.clone())
        .wait_strategy(WaitStrategy::BusySpin)
        .workers(1)
        .method(ECHO64, move |r: &ArchivedBytes64, _: &mut CallCtx<'_>| {
            hook(calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
            Ok(answer(&r.data))
        })
        .spawn()?;
    let opts = ClientOptions::default().strategy(WaitStrategy::BusySpin);
    let clients = (0..conns)
        .map(|_| open(&name, opts.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((server, clients))
}

/// `--instructions` `call.rtt.64` (`batch` 1 over two connections) and
/// `call.pipelined.64` (`batch` 64 over one): in turn `j` the client starts
/// batch `j` of 64-byte calls on connection `j % conns`, passes the baton
/// and reads the replies of batch `j - 1`; the handler of each batch's
/// last call passes the baton back, so the engine's worker waits there,
/// asleep, and never polls an empty ring for long: once it resumes it
/// writes that call's reply, publishes it (no request is queued behind it
/// on its connection, as after a round trip), and finds the next batch on
/// the other (or the same) connection. Over two connections each call is a
/// round trip on its own connection, without the worker's spin between
/// two round trips. Iteration `j` is a batch; see [`Marks`](super::instr::Marks).
pub fn instr_calls(m: super::instr::Marks, batch: u64, conns: usize) -> Res<()> {
    instr_calls_with(m, batch, conns, |at, o| Client::connect_with(at, o))
}

/// `--instructions` `call.shared.pipelined.64`: as `call.pipelined.64`
/// through a [`SharedClient`] used by one thread (what its slots, locks
/// and copies cost a call, without contention).
pub fn instr_shared_calls(m: super::instr::Marks, batch: u64) -> Res<()> {
    instr_calls_with(m, batch, 1, |at, o| SharedClient::connect_with(at, o))
}

fn instr_calls_with<C: Caller<Error = isocall_engine::rpc::CallError>>(
    m: super::instr::Marks,
    batch: u64,
    conns: usize,
    open: impl Fn(&SocketName, ClientOptions) -> Result<C, isocall_engine::rpc::ConnectError>,
) -> Res<()> {
    use super::instr::{
        Baton, CLIENT, SERVER, instr_handoff, instr_mark_end_server, instr_mark_start_server,
    };
    let baton = Baton::new();
    let b = baton.clone();
    let (server, mut clients) = instr_connect(
        conns,
        move |i| {
            if i.is_multiple_of(batch) {
                let j = i / batch;
                if j == m.warmup + m.n {
                    instr_mark_end_server();
                }
                instr_handoff(&b, SERVER, Some(CLIENT));
                if j == m.warmup {
                    instr_mark_start_server();
                }
            }
        },
        open,
    )?;
    let meths = clients
        .iter_mut()
        .map(|c| c.method(ECHO64))
        .collect::<Result<Vec<_>, _>>()?;
    let mut prev = Vec::with_capacity(batch as usize);
    let mut cur = Vec::with_capacity(batch as usize);
    let mut prev_conn = 0;
    let mut wrong = None;
    for j in 1..=m.total() {
        m.client(j);
        let conn = j as usize % conns;
        cur.clear();
        for k in 1..=batch {
            let seq = (j - 1) * batch + k;
            cur.push((clients[conn].start(meths[conn], &request(seq), &[])?, seq));
        }
        instr_handoff(&baton, CLIENT, Some(SERVER));
        for (p, seq) in prev.drain(..) {
            let c = &mut clients[prev_conn];
            let r: isocall_engine::Reply<'_, Bytes64> = c.wait(p, None)?;
            if check(&r.data, seq).is_err() {
                wrong = Some(seq);
            }
        }
        std::mem::swap(&mut prev, &mut cur);
        prev_conn = conn;
    }
    // The worker waits in the last batch's last handler: let it go.
    baton.stop();
    for (p, seq) in prev {
        let c = &mut clients[prev_conn];
        if check(&c.wait(p, None)?.data, seq).is_err() {
            wrong = Some(seq);
        }
    }
    drop(clients);
    drop(server);
    match wrong {
        Some(seq) => Err(format!("wrong reply to call {seq}").into()),
        None => Ok(()),
    }
}
