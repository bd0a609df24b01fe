//! isocall-ringbuf: a single-producer, single-consumer ring of
//! variable-length frames over a region of shared bytes.
//!
//! The ring is the control channel of an isocall connection. It lives in a
//! [`Region`], a run of bytes that is a heap buffer in unit tests and a
//! shared mapping between two processes in real use; the code is the same.
//! The producer *reserves* room for a frame, *writes* it in place, *commits*
//! it, and *publishes* a batch of committed frames with one Release store.
//! The consumer *peeks* at the next frame, *reads* it in place and
//! *releases* it. Frames never wrap: a frame that would cross the end of the
//! ring is preceded by a padding frame, so a reader always sees one
//! contiguous slice, and every payload starts on a 16-byte boundary.
//!
//! The consumer finds new frames by loading the header word of the next frame
//! (zero until published, see [`layout`]), so it never polls the producer's
//! counter and a small frame arrives in the cache lines it occupies. The
//! producer reloads the consumer's head only when the ring looks full. Every
//! value read from the region is loaded once and checked: a peer that
//! scribbles on the ring produces a [`Corrupt`] error, never a panic or an
//! access out of bounds. Sleeping and waking are described in [`wait`].
//!
//! A ring has one [`Producer`] and one [`Consumer`] at a time: attaching a
//! second of either, in this process or (through the control block) in
//! another, fails with [`AttachError`], so a grant or a frame is never
//! aliased. An inspector reads a live ring through a read-only mapping of
//! its own ([`ReadOnlyRegion`]) with [`snapshot`], which only loads. No safe
//! function reaches a region's word by offset: a word of a grant's bytes
//! would alias the grant (see [`region`]).
//!
//! ```
//! use isocall_ringbuf::{channel, wait::{CondvarParker, WaitStrategy}};
//!
//! let (mut tx, mut rx) = channel(4096, CondvarParker::default()).unwrap();
//! let mut grant = tx.reserve(1, 5).unwrap(); // kind 1, 5 bytes
//! grant.bytes_mut().copy_from_slice(b"hello");
//! grant.commit_all();
//! tx.publish();
//!
//! let frame = rx.wait(WaitStrategy::Blocking, None, || false).unwrap();
//! assert_eq!((frame.kind(), frame.payload()), (1, &b"hello"[..]));
//! frame.release();
//! assert!(rx.peek().unwrap().is_none());
//! ```
#![deny(unsafe_code)]

mod consumer;
mod error;
pub mod layout;
mod producer;
#[cfg(not(loom))]
mod raw;
pub mod region;
mod ring;
pub mod sync;
pub mod wait;

#[cfg(not(loom))]
use std::sync::Arc;

pub use consumer::{Consumer, ConsumerStats, Frame};
pub use error::{AttachError, Corrupt, ReserveError};
pub use layout::{MAX_USER_KIND, RING_CONTROL_BYTES, frame_size, max_payload, ring_region_size};
pub use producer::{Grant, Producer, ProducerStats, ReserveWaitError};
pub use region::{Access, ReadRegion, Region, region_key};
#[cfg(not(loom))]
pub use region::{HeapRegion, ReadOnlyRegion, SharedRegion};
#[cfg(not(loom))]
pub use ring::snapshot;
pub use ring::{RingSide, RingSnapshot, snapshot_region};
pub use wait::{Parker, Spinner, WaitError, WaitStrategy};

/// Both halves of a ring in a heap region, as [`channel`] returns them.
#[cfg(not(loom))]
pub type HeapChannel<P> = (Producer<Arc<HeapRegion>, P>, Consumer<Arc<HeapRegion>, P>);

#[cfg(not(loom))]
/// A ring in a fresh heap region, split into its two halves, each side
/// waking the other through a clone of `parker`: for threads of one process,
/// tests and benchmarks.
///
/// # Errors
///
/// [`AttachError::BadRegionSize`] if `capacity` is not a power of two from
/// 128 B to 1 GiB. (The region is new, so each side attaches once.)
pub fn channel<P: Parker + Clone>(
    capacity: usize,
    parker: P,
) -> Result<HeapChannel<P>, AttachError> {
    let len = ring_region_size(capacity).ok_or(AttachError::BadRegionSize {
        len: capacity.saturating_add(RING_CONTROL_BYTES),
    })?;
    let region = Arc::new(HeapRegion::new(len));
    Ok((
        Producer::attach(region.clone(), parker.clone())?,
        Consumer::attach(region, parker)?,
    ))
}
