//! Backpressure: what a publisher does when a subscriber's ring is full,
//! and the private backlog two of the policies keep.
//!
//! A ring is single-producer, single-consumer, and what the publisher has
//! published is the subscriber's: it cannot take a frame back to drop it.
//! So the policies that do not wait ([`Backpressure::DropOldest`] and
//! [`Backpressure::Disconnect`]) queue what does not fit in a bounded
//! backlog in the publisher's own memory, and move it into the ring, oldest
//! first, as room appears (on the publisher's next send, `poll` or
//! `flush`). "Drop oldest" drops the oldest message of that backlog when it
//! overflows, and counts it; the messages already in the ring are always
//! delivered.

use std::collections::VecDeque;
use std::time::Duration;

/// Backlog of the non-blocking policies when none is given.
pub const DEFAULT_BACKLOG: usize = 1024;

/// What a publisher does when one subscriber's ring has no room for a
/// message. Chosen by the publisher, per subscriber (see
/// [`PublisherBuilder::backpressure`](super::PublisherBuilder::backpressure)
/// and [`PublisherBuilder::backpressure_with`](super::PublisherBuilder::backpressure_with)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backpressure {
    /// The publisher waits for room, up to its send deadline (the
    /// default). A slow subscriber slows the publisher, and so every other
    /// subscriber; nothing is lost. A send that times out delivered the
    /// message to no subscriber.
    #[default]
    Block,
    /// The publisher never waits for this subscriber: what does not fit
    /// its ring queues in a private backlog of at most `backlog` messages,
    /// and beyond that the oldest queued message is dropped and counted.
    DropOldest {
        /// Most messages queued for the subscriber outside its ring.
        backlog: usize,
    },
    /// The publisher never waits for this subscriber: what does not fit
    /// queues (at most `backlog` messages), and a subscriber whose ring
    /// stays full longer than `after`, or whose backlog overflows, is
    /// disconnected: it reads what was in its ring, then gets
    /// [`CloseReason::Lagging`](super::CloseReason::Lagging).
    Disconnect {
        /// How long the ring may stay full.
        after: Duration,
        /// Most messages queued for the subscriber outside its ring.
        backlog: usize,
    },
}

impl Backpressure {
    /// [`DropOldest`](Self::DropOldest) with a backlog of
    /// [`DEFAULT_BACKLOG`] messages.
    pub const fn drop_oldest() -> Backpressure {
        Backpressure::DropOldest {
            backlog: DEFAULT_BACKLOG,
        }
    }

    /// [`Disconnect`](Self::Disconnect) after `after`, with a backlog of
    /// [`DEFAULT_BACKLOG`] messages.
    pub const fn disconnect_after(after: Duration) -> Backpressure {
        Backpressure::Disconnect {
            after,
            backlog: DEFAULT_BACKLOG,
        }
    }

    /// Whether the publisher waits for this subscriber.
    pub const fn blocks(self) -> bool {
        matches!(self, Backpressure::Block)
    }

    /// The backlog bound (0 for [`Block`](Self::Block), which queues only
    /// the history a late subscriber asked for).
    pub const fn backlog(self) -> usize {
        match self {
            Backpressure::Block => 0,
            Backpressure::DropOldest { backlog } | Backpressure::Disconnect { backlog, .. } => {
                backlog
            }
        }
    }

    /// As the counters in shared memory hold it: a code, the backlog, and
    /// the deadline in milliseconds.
    pub(crate) fn encode(self) -> (u64, u64, u64) {
        match self {
            Backpressure::Block => (1, 0, 0),
            Backpressure::DropOldest { backlog } => (2, backlog as u64, 0),
            Backpressure::Disconnect { after, backlog } => {
                (3, backlog as u64, after.as_millis() as u64)
            }
        }
    }

    /// The policy [`encode`](Self::encode) wrote, if the words make one.
    pub(crate) fn decode(code: u64, backlog: u64, ms: u64) -> Option<Backpressure> {
        let backlog = usize::try_from(backlog).ok()?;
        match code {
            1 => Some(Backpressure::Block),
            2 => Some(Backpressure::DropOldest { backlog }),
            3 => Some(Backpressure::Disconnect {
                after: Duration::from_millis(ms),
                backlog,
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for Backpressure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backpressure::Block => f.write_str("block"),
            Backpressure::DropOldest { backlog } => write!(f, "drop-oldest({backlog})"),
            Backpressure::Disconnect { after, backlog } => {
                write!(f, "disconnect({after:?}, {backlog})")
            }
        }
    }
}

/// Frames queued for one subscriber outside its ring, oldest first: each
/// a whole frame payload (head, handles, body), in buffers that are
/// reused.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    frames: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
}

/// Buffers kept for reuse at most.
const SPARE: usize = 64;

impl Backlog {
    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Queues a copy of `payload`.
    pub(crate) fn push(&mut self, payload: &[u8]) {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(payload);
        self.frames.push_back(b);
    }

    /// Queues a copy of `payload`, then lets `f` change the copy.
    pub(crate) fn push_then(&mut self, payload: &[u8], f: impl FnOnce(&mut [u8])) {
        self.push(payload);
        if let Some(b) = self.frames.back_mut() {
            f(b);
        }
    }

    /// The oldest frame.
    pub(crate) fn front(&self) -> Option<&[u8]> {
        self.frames.front().map(Vec::as_slice)
    }

    /// Takes the oldest frame out; the caller gives its buffer back with
    /// [`recycle`](Self::recycle).
    pub(crate) fn pop(&mut self) -> Option<Vec<u8>> {
        self.frames.pop_front()
    }

    /// A buffer to reuse.
    pub(crate) fn recycle(&mut self, b: Vec<u8>) {
        if self.spare.len() < SPARE {
            self.spare.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_round_trip_through_their_words() {
        for p in [
            Backpressure::Block,
            Backpressure::drop_oldest(),
            Backpressure::DropOldest { backlog: 3 },
            Backpressure::disconnect_after(Duration::from_millis(250)),
        ] {
            let (c, b, ms) = p.encode();
            assert_eq!(Backpressure::decode(c, b, ms), Some(p));
        }
        assert_eq!(Backpressure::decode(9, 0, 0), None);
        assert_eq!(Backpressure::default(), Backpressure::Block);
        assert!(Backpressure::Block.blocks());
        assert_eq!(Backpressure::drop_oldest().backlog(), DEFAULT_BACKLOG);
    }

    #[test]
    fn a_backlog_is_first_in_first_out_and_reuses_its_buffers() {
        let mut b = Backlog::default();
        b.push(b"one");
        b.push(b"two");
        assert_eq!(b.len(), 2);
        assert_eq!(b.front(), Some(&b"one"[..]));
        let one = b.pop().unwrap();
        assert_eq!(one, b"one");
        b.recycle(one);
        b.push(b"three");
        b.push_then(b"four", |f| f[0] = b'F');
        let rest: Vec<Vec<u8>> = std::iter::from_fn(|| b.pop()).collect();
        assert_eq!(rest, [b"two".to_vec(), b"three".to_vec(), b"Four".to_vec()]);
        assert!(b.is_empty());
    }
}
