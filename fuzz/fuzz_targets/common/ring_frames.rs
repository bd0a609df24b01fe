//! `ring_frames`: a [`Consumer`] attached to a ring region a peer left,
//! its frames peeked and released.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use isocall::raw::wire;
use isocall::ring::layout::{CONS_ZEROES, DATA, FRAME_ALIGN, HEAD, TAIL};
use isocall::ring::wait::SpinParker;
use isocall::ring::{
    AttachError, Consumer, HeapRegion, MAX_USER_KIND, RING_CONTROL_BYTES, Region, frame_size,
};

use super::{fill, peer_u32, peer_u64, region_base, within_addr, word};

/// Ring capacity for a ring input's first byte (128 B to 4 KiB).
pub fn ring_capacity(config: u8) -> usize {
    128 << (config & 7).min(5)
}

/// Config bit: the rest of the input is the whole region (control block,
/// then frame data).
pub const RING_RAW: u8 = 8;
/// Config bit: the producer asked the consumer to zero what it releases.
pub const RING_ZEROES: u8 = 16;

/// `ring_frames`: a heap ring region as a peer left it, then a consumer
/// attached and frames peeked and released until the ring is empty or
/// `Corrupt`.
///
/// Input: a config byte (capacity [`ring_capacity`], flags [`RING_RAW`],
/// [`RING_ZEROES`]); then, raw, the region's bytes from offset 0; else 8
/// bytes of position (head and tail, rounded down to a frame boundary)
/// and the frame data from the head on, wrapping at the ring's end.
///
/// Every frame handed out must have a user kind, a payload inside the data
/// area and on a 16-byte boundary, ending before the ring's end. A ring
/// whose every slot holds a valid frame is read again on the next lap (the
/// consumer stops only at a zero header, which a peer need not write), so
/// the walk stops after two laps.
pub fn ring_frames(data: &[u8]) {
    let Some((&config, rest)) = data.split_first() else {
        return;
    };
    let cap = ring_capacity(config);
    let region = Arc::new(HeapRegion::new(RING_CONTROL_BYTES + cap));
    if config & RING_RAW != 0 {
        fill(&*region, 0, rest);
    } else {
        let (pos, frames) = rest.split_at(rest.len().min(8));
        let mut p = [0u8; 8];
        p[..pos.len()].copy_from_slice(pos);
        let head = u64::from_le_bytes(p) & !(FRAME_ALIGN as u64 - 1);
        peer_u64(&*region, HEAD).store(head, Ordering::Relaxed);
        peer_u64(&*region, TAIL).store(head, Ordering::Relaxed);
        if config & RING_ZEROES != 0 {
            peer_u32(&*region, CONS_ZEROES).store(1, Ordering::Relaxed);
        }
        let start = (head % cap as u64) as usize;
        for (i, chunk) in frames.chunks(8).take(cap / 8).enumerate() {
            let off = DATA + (start + i * 8) % cap;
            peer_u64(&*region, off).store(word(chunk), Ordering::Relaxed);
        }
    }
    let base = region_base(&*region);
    match Consumer::attach(region.clone(), SpinParker) {
        Ok(mut rx) => drain(&mut rx, cap as u64, base),
        Err(e) => {
            let _ = e.to_string();
            // Garbage counters, or an attachment word that names another
            // process (the peer's bytes say the side is taken).
            assert!(
                matches!(
                    e,
                    AttachError::Corrupt(_) | AttachError::AttachedElsewhere { .. }
                ),
                "{e}"
            );
        }
    }
    // SAFETY: the consumer is gone, and the region is only ever a ring's:
    // no slice of its control block exists.
    let snap = unsafe { isocall::ring::snapshot_region(&*region) }.expect("a ring region");
    let _ = (snap.pending_bytes(), snap.pending_frames());
}

/// Peeks and releases frames until the ring is empty, corrupt, or two laps
/// were read; checks each frame lies in the data area of the region at
/// `base`.
pub(super) fn drain<R: Region>(rx: &mut Consumer<R, SpinParker>, cap: u64, base: usize) {
    let data = base + DATA..base + DATA + cap as usize;
    let mut read = 0u64;
    while read <= 2 * cap {
        let frame = match rx.peek() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        };
        assert!(
            (1..=MAX_USER_KIND).contains(&frame.kind()),
            "kind {}",
            frame.kind()
        );
        let payload = frame.payload();
        assert_eq!(payload.len(), frame.len());
        assert!(
            within_addr(payload, data.clone()),
            "payload outside the ring"
        );
        assert!((payload.as_ptr() as usize).is_multiple_of(16));
        // The frame (header and padding) ends before the ring's end.
        let start = payload.as_ptr() as usize - 16;
        assert!(start + frame_size(payload.len()) <= data.end);
        let _ = wire::parse(payload);
        read += frame_size(frame.len()) as u64;
        frame.release();
    }
    // The calls a receiver makes when it runs out of frames.
    let _ = rx.try_next(|| true);
    let _ = rx.arm_doorbell();
    rx.flush();
}
