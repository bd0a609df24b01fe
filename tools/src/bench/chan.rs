//! Channel figures: a typed stream to one subscriber in another process
//! (`chan.stream.64`, beside `ring.stream.64`: what the types, the
//! validation and the channel's bookkeeping cost), and a blob fanned out
//! to four subscriber processes (`chan.fanout.handle.*.x4`: the time until
//! all four have it, which must not grow with the blob's size, since
//! nothing is copied).
//!
//! The same stream over a stream socket (`unix_stream.chan.stream.64`,
//! `tcp.chan.stream.64`: the publisher listens on an address beside its
//! name, the subscriber connects there; frames copied over the socket),
//! beside `uds.stream.64`.
//!
//! The parent publishes; each peer subscribes by the channel's name (made
//! of the figure's name and the parent's pid), or at the address the
//! parent says (`at=`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use isocall_engine::SocketName;
use isocall_engine::WaitStrategy;
use isocall_engine::blob::PoolConfig;
use isocall_engine::channel::{Publisher, RecvError, Subscriber, SubscriberOptions};
use isocall_engine::raw::sys::SharedMem;
use isocall_engine::rpc::{Compression, Policy};

use super::Res;
use super::call::Bytes64;
use super::measure::{Budget, Measured, rate, timed_samples};
use super::peer::{Control, PEER_TIMEOUT, Peer};
use super::ring::Deadline;
use super::sockets::{fill_words, sum_words};

/// Subscribers of the fan-out figures.
const FANOUT: usize = 4;

fn channel(figure: &str, parent: u64) -> SocketName {
    SocketName::Abstract(format!("isocall-bench-{figure}-{parent}"))
}

/// Starts `n` peers of `figure` (`idx=<i>` each, and `params`), and waits
/// until all have subscribed to `publisher`.
fn start_peers<T: isocall_engine::rpc::Body>(
    figure: &str,
    params: &str,
    n: usize,
    publisher: &mut Publisher<T>,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Res<Vec<Peer>> {
    let ppid = std::process::id();
    let mut peers = Vec::with_capacity(n);
    for i in 0..n {
        let p = Peer::start(figure, &format!("{params} idx={i} ppid={ppid}"), fds)?;
        peers.push(p);
    }
    for p in &mut peers {
        let line = p.read_line()?;
        if line != "subscribed" {
            return Err(format!("{figure}: a peer said {line:?}").into());
        }
    }
    let joined = publisher.wait_for_subscribers(n, PEER_TIMEOUT);
    if joined < n {
        return Err(format!("{figure}: {joined} of {n} subscribers joined").into());
    }
    Ok(peers)
}

/// The peer's subscription to the parent's channel of `figure`.
fn subscribe<T: isocall_engine::rpc::Body>(
    ctl: &mut Control,
    figure: &str,
    strategy: WaitStrategy,
) -> Res<Subscriber<T>> {
    let options = SubscriberOptions::default()
        .strategy(strategy)
        .label(format!("bench-{}", ctl.param("idx")?));
    let at = ctl
        .params
        .split_whitespace()
        .find_map(|w| w.strip_prefix("at="))
        .map(str::to_string);
    let sub = match at {
        Some(at) => Subscriber::connect_with(at.as_str(), options)?,
        None => Subscriber::connect_with(channel(figure, ctl.param("ppid")?), options)?,
    };
    ctl.write_line("subscribed")?;
    Ok(sub)
}

/// `chan.stream.64`: typed 64-byte messages, one `send` each (serialized
/// in place into the ring), to one subscriber that validates each (after
/// its private copy) and reads every byte; both sides busy-spin, as for
/// `ring.stream.64`.
pub fn stream(budget: &Budget) -> Res<Measured> {
    stream_over(budget, None)
}

/// A stream socket a channel figure runs over.
#[derive(Clone, Copy, Debug)]
pub enum Net {
    /// A Unix stream socket (abstract name).
    Unix,
    /// TCP on 127.0.0.1 (plain, lz4 off: the messages are 64 bytes).
    Tcp,
}

/// `unix_stream.chan.stream.64`, `tcp.chan.stream.64`: as
/// `chan.stream.64`, the subscriber connected to the publisher's stream
/// address; the publisher publishes each message (one `send` while the
/// socket takes it), the subscriber reads in `recv` with a deadline.
pub fn stream_net(budget: &Budget, net: Net) -> Res<Measured> {
    stream_over(budget, Some(net))
}

fn stream_over(budget: &Budget, net: Option<Net>) -> Res<Measured> {
    let figure = match net {
        None => "chan.stream.64",
        Some(Net::Unix) => "unix_stream.chan.stream.64",
        Some(Net::Tcp) => "tcp.chan.stream.64",
    };
    let b = Publisher::<Bytes64>::builder(channel(figure, std::process::id().into()))
        .ring_capacity(1 << 20)
        .wait_strategy(WaitStrategy::BusySpin)
        .send_timeout(PEER_TIMEOUT);
    let b = match net {
        None => b,
        Some(Net::Unix) => b.listen(
            format!(
                "unix-stream:@isocall-bench-{figure}-{}-stream",
                std::process::id()
            )
            .as_str(),
        ),
        Some(Net::Tcp) => b
            .listen("tcp://127.0.0.1:0")
            .compression(Compression::Off)
            .policy(Policy::Anyone),
    };
    let mut publisher = b.create()?;
    let params = match publisher.addresses().first() {
        Some(a) => format!("at={a}"),
        None => String::new(),
    };
    let mut peers = start_peers(figure, &params, 1, &mut publisher, &[])?;
    let peer = &mut peers[0];
    // Half of ring.stream.64's count on the ring; over a socket, which
    // carries some 20 to 50 times fewer a second, a twentieth of that: a
    // rate all the same, and the quick run stays short.
    let n = match net {
        None => budget.stream_msgs / 2,
        Some(_) => budget.stream_msgs / 40,
    }
    .max(1000);
    let mut msg = Bytes64 { data: [0; 64] };
    let mut reps = Vec::new();
    for _ in 0..budget.stream_reps {
        peer.write_line(&format!("go {n}"))?;
        let start = Instant::now();
        let mut sum = 0u64;
        for i in 0..n {
            msg.data.fill(i as u8);
            sum = sum.wrapping_add(sum_words(&msg.data));
            publisher.send(&msg)?;
        }
        // The peer answers once it has read the last message.
        let got: u64 = peer.read_line()?.parse()?;
        reps.push((n, start.elapsed()));
        if got != sum {
            return Err(format!("{figure}: the subscriber read wrong bytes").into());
        }
    }
    peer.write_line("stop")?;
    drop(publisher);
    for p in peers {
        p.finish()?;
    }
    Ok(rate(&mut reps, 64))
}

/// Peer of `chan.stream.64`: for each `go N`, receives N messages and
/// answers with the sum of their bytes.
pub fn stream_peer(mut ctl: Control) -> Res<()> {
    let mut sub = subscribe::<Bytes64>(&mut ctl, "chan.stream.64", WaitStrategy::BusySpin)?;
    if sub.is_stream() {
        return stream_peer_loop(ctl, sub);
    }
    ctl.serve_reps(|n| {
        let mut sum = 0u64;
        let mut dl = Deadline::new();
        for _ in 0..n {
            let m = sub.recv_deadline(dl.get().ok_or("no deadline")?)?;
            sum = sum.wrapping_add(sum_words(&m.data));
        }
        Ok(sum)
    })
}

/// The stream peer's loop over a socket: as [`stream_peer`]'s, with a
/// deadline per message rather than per burst (a socket subscriber
/// sleeps in `recv`, and the deadline is cheap next to a system call).
fn stream_peer_loop(mut ctl: Control, mut sub: Subscriber<Bytes64>) -> Res<()> {
    ctl.serve_reps(|n| {
        let mut sum = 0u64;
        for _ in 0..n {
            let m = sub.recv_timeout(PEER_TIMEOUT)?;
            sum = sum.wrapping_add(sum_words(&m.data));
        }
        Ok(sum)
    })
}

/// The message of a fan-out: its number (each subscriber stores it in
/// its acknowledgement word once it holds the blob).
#[derive(rkyv::Archive, rkyv::Serialize, isocall_engine::Schema)]
#[schema(crate = "isocall_engine")]
pub struct Fanned {
    /// The message's number, from 1.
    pub seq: u64,
}

/// The acknowledgement words (one per subscriber, on its own line), in a
/// memfd the parent shares with the peers.
const ACK_STRIDE: usize = 16;

/// `chan.fanout.handle.<len>.x4`: a filled blob of `len` bytes sent once
/// to four subscribers in four processes; timed from the send until each
/// subscriber holds it (has read its first and last word and said so in
/// shared memory).
pub fn fanout(budget: &Budget, len: usize) -> Res<Measured> {
    let figure = format!("chan.fanout.handle.{len}.x4");
    let mut publisher = Publisher::<Fanned>::builder(channel(&figure, std::process::id().into()))
        .ring_capacity(64 << 10)
        .blobs(PoolConfig::new().class(len, 4))
        .send_timeout(PEER_TIMEOUT)
        .create()?;
    let acks = SharedMem::create("isocall:bench:acks", 4096)?;
    let words = acks.u64_words().ok_or("the acknowledgements do not map")?;
    let params = format!("len={len}");
    let mut peers = start_peers(&figure, &params, FANOUT, &mut publisher, &[acks.fd()])?;
    // Every slot filled once, as `blob.rtt.handle.*` fills its blob once:
    // a sample writes only the words the subscribers check, so the time
    // between samples (and whether the subscribers went to sleep
    // meanwhile) does not depend on the size.
    {
        let pool = publisher.pool().ok_or("no pool")?;
        let mut all = Vec::new();
        while let Ok(mut b) = pool.alloc(len) {
            fill_words(&mut b, 0x5A5A_5A5A_5A5A_5A5A);
            all.push(b);
        }
    }
    let mut seq = 0u64;
    let mut sample = || -> Res<Duration> {
        seq += 1;
        let mut loan = publisher.loan_blob(len)?;
        loan[..8].copy_from_slice(&seq.to_le_bytes());
        loan[len - 8..].copy_from_slice(&seq.to_le_bytes());
        let start = Instant::now();
        loan.send(&Fanned { seq })?;
        let deadline = start + PEER_TIMEOUT;
        for i in 0..FANOUT {
            wait_for_ack(&words[i * ACK_STRIDE], seq, deadline)
                .map_err(|got| format!("{figure}: subscriber {i} acknowledged {got}, not {seq}"))?;
        }
        Ok(start.elapsed())
    };
    let m = match timed_samples(budget, u64::MAX, &mut sample) {
        Ok(m) => m,
        // The peers are killed and reaped as they drop, after the report.
        Err(e) => return Err(fanout_report(e, &publisher, words, &mut peers).into()),
    };
    // Lost wake-ups are rescued by the subscribers' own looks (`RECHECK`),
    // so the figure still ends; say how many there were.
    let stats = publisher.subscriber_stats();
    let unwoken: u64 = stats.iter().map(|s| s.unwoken).sum();
    if unwoken > 0 {
        let unseen: u64 = stats.iter().map(|s| s.unseen).sum();
        eprintln!(
            "isocall bench: {figure}: {unwoken} lost wake-up(s) across the subscribers ({:?}), \
             {unseen} of them unseen by the publisher",
            stats.iter().map(|s| s.unwoken).collect::<Vec<_>>()
        );
    }
    drop(publisher);
    for p in peers {
        p.finish()?;
    }
    Ok(m)
}

/// The error `e` of a fan-out, with what each subscriber's side can tell:
/// its acknowledgement now (a late one reads the message's number), what
/// the publisher counted for it (gone from the list: closed or dead), and
/// what its peer said and is doing (see [`Peer::report`]).
fn fanout_report(
    e: Box<dyn std::error::Error + Send + Sync>,
    publisher: &Publisher<Fanned>,
    words: &[AtomicU64],
    peers: &mut [Peer],
) -> String {
    let stats = publisher.subscriber_stats();
    let mut out = format!(
        "{e}\n  publisher: sequence {}, {} subscribers",
        publisher.sequence(),
        stats.len()
    );
    for (i, peer) in peers.iter_mut().enumerate() {
        let ack = words[i * ACK_STRIDE].load(Ordering::Acquire);
        let label = format!("bench-{i}");
        let counted = match stats.iter().find(|s| s.label == label) {
            Some(s) => format!(
                "sent {}, dropped {}, queued {}, full {}, unwoken {} (unseen {}), closed {:?}",
                s.sent, s.dropped, s.queued, s.full, s.unwoken, s.unseen, s.closed
            ),
            None => "not the publisher's any more".into(),
        };
        let report = peer.report(Duration::from_millis(200));
        out += &format!("\n  subscriber {i}: ack {ack}; {counted}; peer {report}");
    }
    out
}

/// Waits until `word` reads `seq`: spins a little, then yields the CPU
/// (the four subscribers may share it); the value it read at the
/// deadline.
fn wait_for_ack(word: &AtomicU64, seq: u64, deadline: Instant) -> Result<(), u64> {
    let mut spins = 0u32;
    loop {
        // Acquire: pairs with the subscriber's Release store, after its
        // reads of the blob.
        let got = word.load(Ordering::Acquire);
        if got == seq {
            return Ok(());
        }
        spins += 1;
        if spins < 256 {
            std::hint::spin_loop();
        } else if spins.is_multiple_of(1024) && Instant::now() >= deadline {
            return Err(got);
        } else {
            std::thread::yield_now();
        }
    }
}

/// Peer of `chan.fanout.handle.*`: receives each blob, checks its first
/// and last word, and stores the message's number in its word. Says on
/// its control socket how the subscription ended (the parent reads it
/// only if the figure failed).
pub fn fanout_peer(mut ctl: Control) -> Res<()> {
    let len = ctl.param("len")? as usize;
    let idx = ctl.param("idx")? as usize;
    let acks = SharedMem::open(ctl.fds.pop().ok_or("no acknowledgement memfd")?)?;
    let words = acks.u64_words().ok_or("the acknowledgements do not map")?;
    let word = words
        .get(idx * ACK_STRIDE)
        .ok_or("subscriber index out of range")?;
    let figure = format!("chan.fanout.handle.{len}.x4");
    let mut sub = subscribe::<Fanned>(&mut ctl, &figure, WaitStrategy::Adaptive)?;
    let end = fanout_receive(&mut sub, word, len);
    // The parent may be gone (then nobody asks).
    let _ = ctl.write_line(&match &end {
        Ok(why) => format!("ended at ack {}: {why}", word.load(Ordering::Relaxed)),
        Err(e) => format!("failed at ack {}: {e}", word.load(Ordering::Relaxed)),
    });
    end.map(drop)
}

/// The fan-out peer's loop: until the publisher closes the subscription
/// or dies (`Ok`, with the error that said so) or a message is wrong.
fn fanout_receive(sub: &mut Subscriber<Fanned>, word: &AtomicU64, len: usize) -> Res<RecvError> {
    loop {
        let m = match sub.recv() {
            Ok(m) => m,
            Err(e @ (RecvError::Closed(_) | RecvError::PeerDied)) => return Ok(e),
            Err(e) => return Err(e.into()),
        };
        let seq = m.seq.to_native();
        let blob = m
            .blob(0)
            .ok_or_else(|| format!("message {seq} without its blob"))?;
        if blob.len() != len {
            return Err(format!("blob {seq}: {} bytes, not {len}", blob.len()).into());
        }
        let first = u64::from_le_bytes(blob[..8].try_into()?);
        let last = u64::from_le_bytes(blob[len - 8..].try_into()?);
        if first != seq || last != seq {
            return Err(format!("blob {seq}: wrong bytes").into());
        }
        // Release: the blob's reads happen before the parent sees it.
        word.store(seq, Ordering::Release);
    }
}
