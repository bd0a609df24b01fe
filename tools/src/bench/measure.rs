//! Timing: latency histograms (one clock read per round trip) and rates.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::Res;

/// How long each figure runs.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Untimed warm-up per latency figure.
    pub warmup: Duration,
    /// Timed part per latency figure.
    pub measure: Duration,
    /// Messages per stream repetition, for 64-byte messages (scaled down
    /// for larger ones).
    pub stream_msgs: u64,
    /// Repetitions of each stream per round; the median is kept.
    pub stream_reps: usize,
    /// Rounds: every selected figure is measured once per round, each
    /// just after the figures it is compared to (measured again if
    /// needed: `round_order` in the bench's module), and each figure
    /// reports the median of its measurements and the median over rounds
    /// of its ratio to each of them. On a shared machine the speed of
    /// cross-core traffic jumps as the host moves the two CPUs (4x seen
    /// here, at times several times a second); a figure and its floor
    /// measured seconds apart would compare two machines, and short
    /// measurements taken back to back rarely straddle a jump.
    pub rounds: usize,
    /// Round trips a latency figure measures at least, even past
    /// `measure` (so that the p99 of a slow figure rests on more than a
    /// handful of samples); 0 for most figures.
    pub min_samples: u64,
}

impl Budget {
    /// The `--quick` budget: the whole run under a minute (31 to 33 s on
    /// the shared 2-core development VM).
    pub fn quick() -> Budget {
        Budget {
            warmup: Duration::from_millis(20),
            measure: Duration::from_millis(60),
            stream_msgs: 1_000_000,
            stream_reps: 1,
            rounds: 5,
            min_samples: 0,
        }
    }

    /// The default budget.
    pub fn full() -> Budget {
        Budget {
            warmup: Duration::from_millis(50),
            measure: Duration::from_millis(300),
            stream_msgs: 5_000_000,
            stream_reps: 1,
            rounds: 9,
            min_samples: 0,
        }
    }
}

/// One measured figure.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measured {
    /// Median latency, ns.
    pub p50: Option<f64>,
    /// 99th percentile, ns.
    pub p99: Option<f64>,
    /// 99.9th percentile, ns.
    pub p999: Option<f64>,
    /// A rate (msg/s).
    pub value: Option<f64>,
    /// Bytes per second of payload, as GB/s, for streams.
    pub gbps: Option<f64>,
    /// Samples (round trips) or messages measured.
    pub samples: u64,
}

/// Runs `round_trip(seq)` for the warm-up, then for the measured time,
/// recording each round trip's duration.
pub fn latency(budget: &Budget, mut round_trip: impl FnMut(u64) -> Res<()>) -> Res<Measured> {
    let mut seq = 1u64;
    let warm_end = Instant::now() + budget.warmup;
    // Batches between clock reads grow to 64, so that a round trip of
    // milliseconds (16 MiB) does not warm up for 64 of them.
    let mut batch = 1;
    while Instant::now() < warm_end {
        for _ in 0..batch {
            round_trip(seq)?;
            seq += 1;
        }
        batch = (batch * 2).min(64);
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)?;
    let start = Instant::now();
    let mut last = start;
    loop {
        round_trip(seq)?;
        seq += 1;
        let now = Instant::now();
        hist.saturating_record((now - last).as_nanos() as u64);
        last = now;
        if (now - start >= budget.measure && hist.len() >= budget.min_samples)
            || hist.len() >= 20_000_000
        {
            break;
        }
    }
    Ok(percentiles(&hist))
}

/// The percentiles of a latency histogram.
fn percentiles(hist: &Histogram<u64>) -> Measured {
    Measured {
        p50: Some(hist.value_at_quantile(0.5) as f64),
        p99: Some(hist.value_at_quantile(0.99) as f64),
        p999: Some(hist.value_at_quantile(0.999) as f64),
        samples: hist.len(),
        ..Measured::default()
    }
}

/// Runs `sample()` (which times what it measures itself and returns the
/// duration) once untimed, then until the budget's measured time is spent
/// or `max` samples are taken: for figures of milliseconds each, where
/// setting up a sample must not count.
pub fn timed_samples(
    budget: &Budget,
    max: u64,
    mut sample: impl FnMut() -> Res<Duration>,
) -> Res<Measured> {
    sample()?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3)?;
    let start = Instant::now();
    while hist.len() < max.max(1) {
        hist.saturating_record(sample()?.as_nanos() as u64);
        if start.elapsed() >= budget.measure {
            break;
        }
    }
    Ok(percentiles(&hist))
}

/// The median of `xs` (`None` if empty).
pub fn median(xs: &mut [f64]) -> Option<f64> {
    xs.sort_by(f64::total_cmp);
    (!xs.is_empty()).then(|| xs[xs.len() / 2])
}

/// The per-field median of several rounds of one figure.
pub fn median_of(rounds: &[Measured]) -> Measured {
    let field = |f: fn(&Measured) -> Option<f64>| {
        let mut v: Vec<f64> = rounds.iter().filter_map(f).collect();
        median(&mut v)
    };
    Measured {
        p50: field(|m| m.p50),
        p99: field(|m| m.p99),
        p999: field(|m| m.p999),
        value: field(|m| m.value),
        gbps: field(|m| m.gbps),
        samples: rounds.iter().map(|m| m.samples).sum(),
    }
}

/// The median of several stream repetitions, each `(messages, elapsed)`.
pub fn rate(reps: &mut [(u64, Duration)], msg_bytes: usize) -> Measured {
    let mut rates: Vec<f64> = reps
        .iter()
        .map(|(n, t)| *n as f64 / t.as_secs_f64().max(1e-9))
        .collect();
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    Measured {
        value: Some(median),
        gbps: Some(median * msg_bytes as f64 / 1e9),
        samples: reps.iter().map(|r| r.0).sum(),
        ..Measured::default()
    }
}

/// Fills the request of round trip `seq` (64 bytes in most figures, any
/// length of at least 16): every byte written, a word at a time as a sender
/// that builds its message in place would.
#[inline]
pub fn fill64(buf: &mut [u8], seq: u64) {
    fill_pattern(buf, seq as u8);
    buf[..8].copy_from_slice(&seq.to_le_bytes());
}

/// The word whose eight bytes are all `b`.
#[inline]
fn splat(b: u8) -> u64 {
    u64::from(b) * 0x0101_0101_0101_0101
}

/// Writes `b` to every byte of `buf`, eight at a time.
#[inline]
pub fn fill_pattern(buf: &mut [u8], b: u8) {
    let w = splat(b).to_le_bytes();
    let mut words = buf.chunks_exact_mut(8);
    for c in &mut words {
        c.copy_from_slice(&w);
    }
    words.into_remainder().fill(b);
}

/// Reads every byte of a message; returns the wrapping sum of its
/// little-endian 8-byte words (and of the bytes after the last whole word).
#[inline]
pub fn read_all(buf: &[u8]) -> u64 {
    let words = buf.chunks_exact(8);
    let tail = words
        .remainder()
        .iter()
        .fold(0u64, |s, &b| s.wrapping_add(u64::from(b)));
    words.fold(tail, |s, c| {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        s.wrapping_add(u64::from_le_bytes(w))
    })
}

/// What [`read_all`] gives for `len` bytes that all hold `b`.
#[inline]
pub fn pattern_sum(len: usize, b: u8) -> u64 {
    (len as u64 / 8)
        .wrapping_mul(splat(b))
        .wrapping_add((len as u64 % 8) * u64::from(b))
}

/// Checks a reply to [`fill64`]'s request `seq` made by [`answer64`].
#[inline]
pub fn check_reply(buf: &[u8], seq: u64) -> Res<()> {
    let sum = read_all(&buf[16..]);
    let got_seq = u64::from_le_bytes(buf[..8].try_into()?);
    let got_sum = u64::from_le_bytes(buf[8..16].try_into()?);
    let expect_req_sum = request_sum(seq, buf.len());
    if got_seq != seq
        || got_sum != expect_req_sum
        || sum != pattern_sum(buf.len() - 16, seq as u8 ^ 0x5A)
    {
        return Err(
            format!("reply to round trip {seq} is wrong (seq {got_seq}, sum {got_sum})").into(),
        );
    }
    Ok(())
}

/// What [`read_all`] gives for request `seq` of `len` bytes.
#[inline]
pub fn request_sum(seq: u64, len: usize) -> u64 {
    seq.wrapping_add(pattern_sum(len - 8, seq as u8))
}

/// Writes the answer to a request (as long as the request, at least 16
/// bytes): its seq, the sum of every byte read, and a filled body.
#[inline]
pub fn answer64(request: &[u8], reply: &mut [u8]) {
    let seq = u64::from_le_bytes(request[..8].try_into().unwrap_or([0; 8]));
    let sum = read_all(request);
    fill_pattern(&mut reply[16..], seq as u8 ^ 0x5A);
    reply[..8].copy_from_slice(&seq.to_le_bytes());
    reply[8..16].copy_from_slice(&sum.to_le_bytes());
}

/// Times `op` in batches of `batch` calls for the budget's measured time
/// (after its warm-up); each batch's mean is one sample, so the clock's own
/// cost (20+ ns) does not swamp an operation of a few nanoseconds.
pub fn per_op(budget: &Budget, batch: u32, mut op: impl FnMut() -> Res<()>) -> Res<Measured> {
    // A quarter of the budget: one process, no peer to warm up, and tens of
    // millions of calls in that time already.
    let warm_end = Instant::now() + budget.warmup / 4;
    while Instant::now() < warm_end {
        for _ in 0..batch {
            op()?;
        }
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            op()?;
        }
        let now = Instant::now();
        samples.push((now - t).as_nanos() as f64 / f64::from(batch));
        if now - start >= budget.measure / 4 {
            break;
        }
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    Ok(Measured {
        p50: Some(at(0.5)),
        p99: Some(at(0.99)),
        p999: Some(at(0.999)),
        samples: samples.len() as u64 * u64::from(batch),
        ..Measured::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_answered_checks_out_and_a_wrong_one_does_not() {
        let mut req = [0u8; 64];
        let mut rep = [0u8; 64];
        fill64(&mut req, 300);
        answer64(&req, &mut rep);
        check_reply(&rep, 300).unwrap();
        assert!(check_reply(&rep, 301).is_err());
        rep[40] ^= 1;
        assert!(check_reply(&rep, 300).is_err());
    }
}
