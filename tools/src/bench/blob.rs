//! Blob figures: the pool's alloc+free pair beside malloc's (one process),
//! and blobs passed between two processes over a real segment, either as a
//! handle only (the cost must not grow with the size) or end to end (every
//! byte written by the sender and read by the receiver, both ways) beside
//! the same bytes through a Unix socket.

use std::hint::black_box;

use isocall_engine::WaitStrategy;
use isocall_engine::blob::{BlobHandle, Pool, PoolConfig};
use isocall_engine::raw::Side;
use isocall_engine::raw::{Segment, SegmentLayout};
use isocall_engine::ring::SharedRegion;

use super::Res;
use super::measure::{Budget, Measured, latency, per_op};
use super::peer::Control;
use super::ring::{Deadline, attach_segment, setup_with};
use super::sockets::{fill_words as fill_all, sum_words as read_all};

const HANDLE: u16 = 1;
const STOP: u16 = 2;

/// `blob.alloc_free.{256,65536}`: one alloc and its free, in one process,
/// on a pool in a real shared segment.
pub fn alloc_free(budget: &Budget, len: usize) -> Res<Measured> {
    let layout = SegmentLayout {
        ring_capacity: 4096,
        blobs: PoolConfig::new().class(256, 64).class(65536, 64),
    };
    let seg = Segment::create("isocall:bench:alloc_free", &layout)?;
    let pool = seg.blob_pool(Side::Client)?.ok_or("no pool")?;
    per_op(budget, 256, || {
        let b = pool.alloc(len).map_err(|e| e.to_string())?;
        black_box(&b);
        Ok(())
    })
}

/// `malloc.alloc_free.{256,65536}`: the same pair through the process's
/// allocator (glibc malloc), memory untouched like the pool's.
pub fn malloc_free(budget: &Budget, len: usize) -> Res<Measured> {
    per_op(budget, 256, || {
        let v: Vec<u8> = Vec::with_capacity(black_box(len));
        black_box(v.as_ptr());
        Ok(())
    })
}

/// The segment of the two-process blob figures: rings for the handles and
/// a pool with two slots of `len` bytes.
fn layout(len: usize) -> SegmentLayout {
    SegmentLayout {
        ring_capacity: 4096,
        blobs: PoolConfig::new().class(len, 2),
    }
}

fn send_handle(tx: &mut isocall_engine::raw::Sender, h: BlobHandle, dl: &mut Deadline) -> Res<()> {
    let mut g = tx.reserve(HANDLE, 16, dl.get())?;
    g.bytes_mut().copy_from_slice(&h.to_bytes());
    g.commit_all();
    tx.publish();
    Ok(())
}

fn read_handle(payload: &[u8]) -> Res<BlobHandle> {
    BlobHandle::from_bytes(payload).ok_or_else(|| "a frame without a blob handle".into())
}

/// The word request `seq` is filled with.
fn word(seq: u64) -> u64 {
    seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// What `read_all` gives for `len` bytes of the word `w`.
fn sum_of(len: usize, w: u64) -> u64 {
    w.wrapping_mul((len / 8) as u64)
}

/// `blob.rtt.handle.*` (`e2e` false) and `blob.rtt.e2e.*` (`e2e` true).
pub fn rtt(budget: &Budget, len: usize, e2e: bool) -> Res<Measured> {
    let kind = if e2e { "e2e" } else { "handle" };
    let figure = format!("blob.rtt.{kind}.{len}");
    let params = format!("len={len} e2e={}", u64::from(e2e));
    let (peer, seg, mut tx, mut rx) =
        setup_with(&figure, &params, WaitStrategy::BusySpin, &layout(len))?;
    let pool: Pool<SharedRegion> = seg.blob_pool(Side::Server)?.ok_or("no pool")?;
    let mut blob = pool.alloc(len)?;
    // Filled once: the handle figure moves no bytes per round trip.
    fill_all(&mut blob, word(1));
    let mut slot = Some(blob);
    let mut dl = Deadline::new();
    let m = latency(budget, |seq| {
        let mut blob = slot.take().ok_or("blob lost")?;
        if e2e {
            fill_all(&mut blob, word(seq));
        }
        send_handle(&mut tx, blob.send()?, &mut dl)?;
        let f = rx.recv(dl.get())?;
        let h = read_handle(f.payload())?;
        f.release();
        let back = pool.accept_mut(&h)?;
        if e2e {
            // The peer answers with the sum of what it read in every word.
            if read_all(&back) != sum_of(len, sum_of(len, word(seq))) {
                return Err(format!("blob.rtt.e2e.{len}: wrong reply to {seq}").into());
            }
        } else {
            let w = word(1).to_le_bytes();
            if (back[0], back[len - 1]) != (w[0], w[7]) {
                return Err("blob changed in flight".into());
            }
        }
        slot = Some(back);
        Ok(())
    })?;
    drop(slot);
    tx.send(STOP, &[], dl.get())?;
    peer.finish()?;
    Ok(m)
}

/// Peer of `blob.rtt.*`: accepts each blob, reads its first and last byte
/// (handle) or every byte and then writes every byte of the answer (e2e),
/// and sends it back.
pub fn rtt_peer(mut ctl: Control) -> Res<()> {
    let (seg, mut tx, mut rx) = attach_segment(&mut ctl)?;
    let pool: Pool<SharedRegion> = seg.blob_pool(Side::Client)?.ok_or("no pool")?;
    let len = ctl.param("len")? as usize;
    let e2e = ctl.param("e2e")? == 1;
    let mut dl = Deadline::new();
    loop {
        let f = rx.recv(dl.get())?;
        if f.kind() == STOP {
            return Ok(());
        }
        let h = read_handle(f.payload())?;
        f.release();
        let mut blob = pool.accept_mut(&h)?;
        if e2e {
            let sum = read_all(&blob);
            fill_all(&mut blob, sum);
        } else {
            black_box(blob[0]);
            black_box(blob[len - 1]);
        }
        send_handle(&mut tx, blob.send()?, &mut dl)?;
    }
}
