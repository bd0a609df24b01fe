//! isocall's ring between two processes over a real segment: round trips of
//! 64-byte frames in BusySpin and in Blocking, and one-way streams. The
//! parent is the segment's server side, the peer its client.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use isocall_engine::WaitStrategy;
use isocall_engine::raw::Liveness;
use isocall_engine::raw::sys::Doorbell;
use isocall_engine::raw::{Receiver, Sender, Side, endpoint};
use isocall_engine::raw::{Segment, SegmentLayout};

use super::Res;
use super::measure::{
    Budget, Measured, answer64, check_reply, fill64, latency, pattern_sum, rate, read_all,
};
use super::peer::{Control, PEER_TIMEOUT, Peer, strategy_code, strategy_from};

const DATA: u16 = 1;
const STOP: u16 = 2;
const RING: usize = 1 << 20;

fn strategy_name(s: WaitStrategy) -> &'static str {
    match s {
        WaitStrategy::BusySpin => "busy",
        WaitStrategy::Adaptive => "adaptive",
        WaitStrategy::Blocking => "blocking",
        _ => "other",
    }
}

/// A deadline refreshed every 4096 calls: reading the clock per message
/// would cost more than the message (20+ ns), so a long-lived deadline is
/// what a latency-sensitive caller passes.
pub struct Deadline {
    at: Instant,
    calls: u32,
}

impl Deadline {
    /// A deadline `PEER_TIMEOUT` from now.
    pub fn new() -> Self {
        Deadline {
            at: Instant::now() + PEER_TIMEOUT,
            calls: 0,
        }
    }

    /// The deadline, refreshed every 4096 calls.
    #[inline]
    pub fn get(&mut self) -> Option<Instant> {
        self.calls = self.calls.wrapping_add(1);
        if self.calls.is_multiple_of(4096) {
            self.at = Instant::now() + PEER_TIMEOUT;
        }
        Some(self.at)
    }
}

/// Creates a segment and starts the peer of `figure` on it.
fn setup(figure: &str, params: &str, strategy: WaitStrategy) -> Res<(Peer, Sender, Receiver)> {
    let layout = SegmentLayout {
        ring_capacity: RING,
        blobs: Default::default(),
    };
    let (peer, _, tx, rx) = setup_with(figure, params, strategy, &layout)?;
    Ok((peer, tx, rx))
}

/// Creates a segment of `layout` and starts the peer of `figure` on it; we
/// are the server side.
pub fn setup_with(
    figure: &str,
    params: &str,
    strategy: WaitStrategy,
    layout: &SegmentLayout,
) -> Res<(Peer, Arc<Segment>, Sender, Receiver)> {
    let seg = Segment::create(&format!("isocall:bench:{figure}"), layout)?;
    let (bell, theirs) = Doorbell::pair()?;
    let params = format!("{params} strategy={}", strategy_code(strategy));
    let peer = Peer::start(figure, &params, &[seg.fd(), theirs.as_fd()])?;
    drop(theirs);
    let (seg, tx, rx) = open_side(seg, Side::Server, bell, strategy)?;
    Ok((peer, seg, tx, rx))
}

/// `side`'s ends of the rings of `seg`: attaches the side and makes its
/// endpoint, which rings the other side through `bell`.
fn open_side(
    seg: Segment,
    side: Side,
    bell: Doorbell,
    strategy: WaitStrategy,
) -> Res<(Arc<Segment>, Sender, Receiver)> {
    let seg = Arc::new(seg);
    seg.attach_side(side);
    let (tx, rx) = endpoint(seg.clone(), side, Arc::new(bell), strategy, Liveness::new())?;
    Ok((seg, tx, rx))
}

/// The peer's client side on the segment the parent sent.
fn attach(ctl: &mut Control) -> Res<(Sender, Receiver)> {
    let (_, tx, rx) = attach_segment(ctl)?;
    Ok((tx, rx))
}

/// The peer's client side on the segment the parent sent, with the segment.
pub fn attach_segment(ctl: &mut Control) -> Res<(Arc<Segment>, Sender, Receiver)> {
    let bell = Doorbell::from_peer_end(ctl.fds.pop().ok_or("no doorbell")?)?;
    let seg = Segment::open(ctl.fds.pop().ok_or("no memfd")?)?;
    let strategy = strategy_from(ctl.param("strategy")?);
    open_side(seg, Side::Client, bell, strategy)
}

/// The largest message `rtt` sends in one frame: what a frame of the
/// bench's ring can carry (larger ones go as blobs).
pub fn max_frame_payload() -> usize {
    isocall_engine::ring::max_payload(RING)
}

/// `ring.rtt.{busy,blocking}.64` (and `ring.rtt.busy.<len>` of the plot):
/// write a `len`-byte request in place, the peer reads every byte and
/// writes a `len`-byte reply in place, we read every byte of it.
pub fn rtt(budget: &Budget, strategy: WaitStrategy, len: usize) -> Res<Measured> {
    if !(16..=max_frame_payload()).contains(&len) {
        return Err(format!("ring.rtt: {len} bytes do not fit one frame").into());
    }
    let figure = format!("ring.rtt.{}.{len}", strategy_name(strategy));
    let (peer, mut tx, mut rx) = setup(&figure, &format!("len={len}"), strategy)?;
    let mut dl = Deadline::new();
    let m = latency(budget, |seq| {
        let mut g = tx.reserve(DATA, len, dl.get())?;
        fill64(g.bytes_mut(), seq);
        g.commit_all();
        tx.publish();
        let f = rx.recv(dl.get())?;
        let r = check_reply(f.payload(), seq);
        f.release();
        r
    })?;
    // Every frame sent has been answered: both sides' counts are final.
    report_lost_wake_ups(&figure, &tx, &rx);
    tx.send(STOP, &[], dl.get())?;
    peer.finish()?;
    Ok(m)
}

/// Says on stderr how many lost wake-ups each side of a ring pair
/// counted, if any: sleeps that lasted to their end and found a frame
/// waiting (see `ConsumerStats::unwoken`), rescued by the sleepers' own
/// looks (`RECHECK`), so a figure still ends with them. The peer's counts
/// are words it writes: read once, only shown.
fn report_lost_wake_ups(figure: &str, tx: &Sender, rx: &Receiver) {
    let here = rx.stats();
    let (peer, peer_unseen) = (tx.consumer_unwoken(), tx.consumer_unseen());
    if here.unwoken.saturating_add(peer) > 0 {
        eprintln!(
            "isocall bench: {figure}: {} lost wake-up(s) here and {peer} at the peer, \
             {} of them unseen by the producer",
            here.unwoken,
            here.unseen.saturating_add(peer_unseen)
        );
    }
}

/// Peer of `ring.rtt.*`.
pub fn rtt_peer(mut ctl: Control) -> Res<()> {
    let (mut tx, mut rx) = attach(&mut ctl)?;
    let len = ctl.param("len")? as usize;
    let mut dl = Deadline::new();
    loop {
        let f = rx.recv(dl.get())?;
        if f.kind() == STOP {
            return Ok(());
        }
        let mut g = tx.reserve(DATA, len, dl.get())?;
        answer64(f.payload(), g.bytes_mut());
        g.commit_all();
        f.release();
        tx.publish();
    }
}

/// `ring.stream.{64,4096}`: one-way frames of `len` bytes, each written
/// whole and published on its own (no batching); the peer reads every byte.
/// The sender runs in streaming mode (`Sender::set_latency_mode(false)`).
pub fn stream(budget: &Budget, len: usize) -> Res<Measured> {
    let figure = format!("ring.stream.{len}");
    let (mut peer, mut tx, mut rx) = setup(&figure, &format!("len={len}"), WaitStrategy::BusySpin)?;
    // A stream sends back to back: the sender's streaming setting.
    tx.set_latency_mode(false);
    let n = (budget.stream_msgs * 64 / len as u64).max(1000);
    let mut reps = Vec::new();
    let mut dl = Deadline::new();
    for _ in 0..budget.stream_reps {
        peer.write_line(&format!("go {n}"))?;
        let start = Instant::now();
        let mut sum = 0u64;
        for i in 0..n {
            let mut g = tx.reserve(DATA, len, dl.get())?;
            let b = g.bytes_mut();
            b.fill(i as u8);
            sum = sum.wrapping_add(pattern_sum(len, i as u8));
            g.commit_all();
            tx.publish();
        }
        let f = rx.recv(Some(Instant::now() + PEER_TIMEOUT + Duration::from_secs(5)))?;
        let got = u64::from_le_bytes(f.payload().try_into()?);
        f.release();
        reps.push((n, start.elapsed()));
        if got != sum {
            return Err(format!("{figure}: reader got wrong bytes").into());
        }
    }
    peer.write_line("stop")?;
    peer.finish()?;
    Ok(rate(&mut reps, len))
}

/// Peer of `ring.stream.*`.
pub fn stream_peer(mut ctl: Control) -> Res<()> {
    let (mut tx, mut rx) = attach(&mut ctl)?;
    let mut dl = Deadline::new();
    while let Some(n) = ctl.next_reps()? {
        let mut sum = 0u64;
        for _ in 0..n {
            let f = rx.recv(dl.get())?;
            sum = sum.wrapping_add(read_all(f.payload()));
            f.release();
        }
        // The checksum goes back through the ring, so the parent's clock
        // stops when the last frame was read, not when a socket woke it.
        tx.send(DATA, &sum.to_le_bytes(), dl.get())?;
    }
    Ok(())
}
