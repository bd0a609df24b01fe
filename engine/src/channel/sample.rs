//! A received message: a guard that derefs to the validated archive.
//!
//! By the copy rule (see [`crate::rpc::body`]) a message's body leaves the
//! ring for the subscriber's private inbox before it is validated, and the
//! ring frame is released right then: the guard reads the inbox. A
//! subscriber declared trusted reads bodies in place: its guard holds the
//! ring frame and releases it when dropped.
//!
//! Opts in to `unsafe` for the trusted read in place: see SAFETY.
#![allow(unsafe_code)]

use std::ops::Range;

use isocall_blob::{Blob, SharedBlob};
use isocall_ringbuf::SharedRegion;

use crate::endpoint::RxFrame;
use crate::rpc::body::{Body, Checked};

/// One blob of a sample: shared in the channel's pool (shared memory), or
/// a blob of the stream connection's own pool, its bytes copied in as
/// the message arrived.
pub(crate) enum SampleBlob<'a> {
    Shared(SharedBlob<'a, SharedRegion>),
    Local(Blob<'a, SharedRegion>),
}

impl std::ops::Deref for SampleBlob<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            SampleBlob::Shared(b) => b,
            SampleBlob::Local(b) => b,
        }
    }
}

/// Where a sample's body is.
pub(crate) enum Source<'a, T: Body> {
    /// Copied out and checked.
    Private(Checked<'a, T>),
    /// In the ring, unchecked (a trusted subscriber); the frame is
    /// released when the sample drops (`None` once it is).
    InRing(Option<RxFrame<'a>>, Range<usize>),
}

/// A message received from a channel: derefs to the archived value, and
/// holds the message's blobs, read in place in the channel's pool (over
/// a stream socket: in the connection's own pool, where they were copied
/// as they arrived). It
/// borrows its subscriber; drop it before the next receive. Dropping it
/// gives up this subscriber's references to the blobs (the last holder's
/// drop frees a blob's slot).
pub struct Sample<'a, T: Body> {
    src: Source<'a, T>,
    blobs: Vec<SampleBlob<'a>>,
    seq: u64,
    history: bool,
}

impl<'a, T: Body> Sample<'a, T> {
    pub(crate) fn new(
        src: Source<'a, T>,
        blobs: Vec<SampleBlob<'a>>,
        seq: u64,
        history: bool,
    ) -> Self {
        Sample {
            src,
            blobs,
            seq,
            history,
        }
    }

    /// How many blobs the message carries.
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// Blob `i`'s bytes, in place in the pool. They are the publisher's to
    /// have written: read them as bytes (a hostile publisher could still
    /// change them while they are read; they are never an address).
    pub fn blob(&self, i: usize) -> Option<&[u8]> {
        self.blobs.get(i).map(|b| &b[..])
    }

    /// The message's sequence number: how many messages its publisher had
    /// sent before it. A gap between two samples is messages this
    /// subscriber did not get (dropped by its backpressure policy, or sent
    /// before it joined).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether the message was sent before this subscriber joined, as the
    /// history it asked for.
    pub fn is_history(&self) -> bool {
        self.history
    }
}

impl<T: Body> std::ops::Deref for Sample<'_, T> {
    type Target = T::Archived;

    #[inline]
    fn deref(&self) -> &T::Archived {
        match &self.src {
            Source::Private(c) => c.get(),
            Source::InRing(frame, body) => {
                let frame = frame
                    .as_ref()
                    .expect("a sample's frame is released only when it drops");
                // SAFETY: trusted subscriber (`set_trusted`'s caller
                // promised valid `T` archives, never rewritten); `body` is
                // inside the frame (parsed at receive), which stays in the
                // ring until this sample drops.
                unsafe { Checked::<T>::trusted(&frame.payload()[body.clone()]).get() }
            }
        }
    }
}

impl<T: Body> Drop for Sample<'_, T> {
    fn drop(&mut self) {
        // The blobs first: the frame (trusted) after.
        self.blobs.clear();
        if let Source::InRing(frame, _) = &mut self.src
            && let Some(f) = frame.take()
        {
            f.release();
        }
    }
}

impl<T: Body> std::fmt::Debug for Sample<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample")
            .field("seq", &self.seq)
            .field("history", &self.history)
            .field("blobs", &self.blobs.len())
            .finish_non_exhaustive()
    }
}
