//! The floors isocall is measured against, between two processes over a
//! plain shared mapping: an atomic ping-pong (`floor.spin.rtt`, the best
//! any busy-polling transport can do), a futex ping-pong
//! (`floor.futex.rtt`, the best a sleeping waiter can do), and a minimal
//! fixed-slot ring (`floor.ring_ceiling.64`, one-way). Each moves a 64-byte
//! payload that the sender writes and the receiver reads, like the figures
//! compared to them.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use isocall_engine::raw::sys::{SharedMem, futex_wait, futex_wake};

use super::Res;
use super::measure::{Budget, Measured, latency, rate};
use super::peer::{Control, PEER_TIMEOUT, Peer};

/// Word indices (u64) of the two mailboxes; each on its own 256-byte span.
const A: usize = 0;
const B: usize = 32;
/// u32 index of the stop flag.
const STOP32: usize = 256;
/// Ring ceiling: slot array start (u64 index), slots, words per slot.
const SLOTS_AT: usize = 512;
const SLOTS: usize = 1024;
const SLOT_WORDS: usize = 16;
const MEM: usize = 8 * (SLOTS_AT + SLOTS * SLOT_WORDS);

/// Spins until `ready()` or the peer timeout.
#[inline]
pub fn spin_until(mut ready: impl FnMut() -> bool) -> Res<()> {
    let mut n = 0u32;
    let mut deadline = None;
    while !ready() {
        core::hint::spin_loop();
        n = n.wrapping_add(1);
        if n.is_multiple_of(4096) {
            let d = *deadline.get_or_insert_with(|| Instant::now() + PEER_TIMEOUT);
            if Instant::now() > d {
                return Err("peer stopped answering".into());
            }
        }
    }
    Ok(())
}

fn write_payload(words: &[AtomicU64], at: usize, seq: u64) {
    for (i, w) in words[at + 1..at + 9].iter().enumerate() {
        w.store(seq.wrapping_mul(0x9E37_79B9) ^ i as u64, Ordering::Relaxed);
    }
}

fn read_payload(words: &[AtomicU64], at: usize) -> u64 {
    words[at + 1..at + 9]
        .iter()
        .fold(0u64, |s, w| s.wrapping_add(w.load(Ordering::Relaxed)))
}

fn expected_sum(seq: u64) -> u64 {
    (0..8u64).fold(0u64, |s, i| {
        s.wrapping_add(seq.wrapping_mul(0x9E37_79B9) ^ i)
    })
}

fn new_mem(figure: &str) -> Res<SharedMem> {
    Ok(SharedMem::create(&format!("isocall:bench:{figure}"), MEM)?)
}

/// `floor.spin.rtt`.
pub fn spin_rtt(budget: &Budget) -> Res<Measured> {
    let mem = new_mem("spin")?;
    let peer = Peer::start("floor.spin.rtt", "", &[mem.fd()])?;
    let w = mem.u64_words().ok_or("the floor's memory is read-only")?;
    let m = latency(budget, |seq| {
        write_payload(w, A, seq);
        w[A].store(seq, Ordering::Release);
        spin_until(|| w[B].load(Ordering::Acquire) == seq)?;
        if read_payload(w, B) != expected_sum(seq) {
            return Err(format!("spin floor: wrong reply to {seq}").into());
        }
        Ok(())
    })?;
    w[A].store(u64::MAX, Ordering::Release);
    peer.finish()?;
    Ok(m)
}

/// Peer of `floor.spin.rtt`.
pub fn spin_peer(mut ctl: Control) -> Res<()> {
    let mem = SharedMem::open(ctl.fds.pop().ok_or("no memfd")?)?;
    let w = mem.u64_words().ok_or("the floor's memory is read-only")?;
    let mut last = 0;
    loop {
        let mut seq = 0;
        spin_until(|| {
            seq = w[A].load(Ordering::Acquire);
            seq != last
        })?;
        if seq == u64::MAX {
            return Ok(());
        }
        last = seq;
        // Read the request, answer with a payload derived from its seq.
        std::hint::black_box(read_payload(w, A));
        write_payload(w, B, seq);
        w[B].store(seq, Ordering::Release);
    }
}

fn futex_words(mem: &SharedMem) -> Res<(&AtomicU32, &AtomicU32, &AtomicU32)> {
    let w32 = mem.u32_words().ok_or("the floor's memory is read-only")?;
    Ok((&w32[A * 2], &w32[B * 2], &w32[STOP32]))
}

/// Sleeps until `word` holds `want` (no spinning: the futex floor).
fn futex_until(word: &AtomicU32, want: u32) -> Res<()> {
    let deadline = Instant::now() + PEER_TIMEOUT;
    loop {
        let cur = word.load(Ordering::Acquire);
        if cur == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("peer stopped answering".into());
        }
        futex_wait(word, cur, Some(Duration::from_secs(1)))?;
    }
}

/// `floor.futex.rtt`.
pub fn futex_rtt(budget: &Budget) -> Res<Measured> {
    let mem = new_mem("futex")?;
    let peer = Peer::start("floor.futex.rtt", "", &[mem.fd()])?;
    let w = mem.u64_words().ok_or("the floor's memory is read-only")?;
    let (a, b, stop) = futex_words(&mem)?;
    let m = latency(budget, |seq| {
        let s = seq as u32;
        write_payload(w, A + 16, u64::from(s));
        a.store(s, Ordering::Release);
        futex_wake(a, 1)?;
        futex_until(b, s)?;
        if read_payload(w, B + 16) != expected_sum(u64::from(s)) {
            return Err(format!("futex floor: wrong reply to {seq}").into());
        }
        Ok(())
    })?;
    stop.store(1, Ordering::Release);
    a.store(0, Ordering::Release);
    futex_wake(a, 1)?;
    peer.finish()?;
    Ok(m)
}

/// Peer of `floor.futex.rtt`.
pub fn futex_peer(mut ctl: Control) -> Res<()> {
    let mem = SharedMem::open(ctl.fds.pop().ok_or("no memfd")?)?;
    let w = mem.u64_words().ok_or("the floor's memory is read-only")?;
    let (a, b, stop) = futex_words(&mem)?;
    let mut last = 0u32;
    loop {
        let deadline = Instant::now() + PEER_TIMEOUT;
        loop {
            let cur = a.load(Ordering::Acquire);
            if cur != last {
                last = cur;
                break;
            }
            if Instant::now() > deadline {
                return Err("parent stopped sending".into());
            }
            futex_wait(a, cur, Some(Duration::from_secs(1)))?;
        }
        if stop.load(Ordering::Acquire) != 0 {
            return Ok(());
        }
        std::hint::black_box(read_payload(w, A + 16));
        write_payload(w, B + 16, u64::from(last));
        b.store(last, Ordering::Release);
        futex_wake(b, 1)?;
    }
}

fn slot(w: &[AtomicU64], pos: u64) -> &[AtomicU64] {
    let i = SLOTS_AT + (pos as usize % SLOTS) * SLOT_WORDS;
    &w[i..i + SLOT_WORDS]
}

/// `floor.ring_ceiling.64`: the producer writes 64 B into a fixed slot and
/// stamps the slot's sequence word; the consumer waits for the stamp, reads
/// the 64 B and hands the slot back. No variable lengths, no wake-ups.
pub fn ring_ceiling(budget: &Budget) -> Res<Measured> {
    let mem = new_mem("ceiling")?;
    let w = mem.u64_words().ok_or("the floor's memory is read-only")?;
    for i in 0..SLOTS as u64 {
        slot(w, i)[0].store(i, Ordering::Relaxed);
    }
    let mut peer = Peer::start("floor.ring_ceiling.64", "", &[mem.fd()])?;
    let n = budget.stream_msgs * 4;
    let mut reps = Vec::new();
    let mut pos = 0u64;
    for _ in 0..budget.stream_reps {
        peer.write_line(&format!("go {n}"))?;
        let start = Instant::now();
        let mut sum = 0u64;
        for _ in 0..n {
            let s = slot(w, pos);
            spin_until(|| s[0].load(Ordering::Acquire) == pos)?;
            for (i, word) in s[1..9].iter().enumerate() {
                let v = pos ^ i as u64;
                sum = sum.wrapping_add(v);
                word.store(v, Ordering::Relaxed);
            }
            s[0].store(pos + 1, Ordering::Release);
            pos += 1;
        }
        let got: u64 = peer.read_line()?.parse()?;
        reps.push((n, start.elapsed()));
        if got != sum {
            return Err("ring ceiling: consumer read wrong bytes".into());
        }
    }
    peer.write_line("stop")?;
    peer.finish()?;
    Ok(rate(&mut reps, 64))
}

/// Peer (consumer) of `floor.ring_ceiling.64`.
pub fn ring_ceiling_peer(mut ctl: Control) -> Res<()> {
    let mem = SharedMem::open(ctl.fds.pop().ok_or("no memfd")?)?;
    let w = mem.u64_words().ok_or("the floor's memory is read-only")?;
    let mut pos = 0u64;
    ctl.serve_reps(|n| {
        let mut sum = 0u64;
        for _ in 0..n {
            let s = slot(w, pos);
            spin_until(|| s[0].load(Ordering::Acquire) == pos + 1)?;
            for word in &s[1..9] {
                sum = sum.wrapping_add(word.load(Ordering::Relaxed));
            }
            s[0].store(pos + SLOTS as u64, Ordering::Release);
            pos += 1;
        }
        Ok(sum)
    })
}
