//! History for late subscribers: the last messages a publisher sent, kept
//! in its own memory, so that a subscriber that joins late and asks for
//! them gets them before the live stream.
//!
//! Each message is kept as the frame payload it was sent as (head,
//! handles, body), a copy in a reused buffer; a publisher that keeps no
//! history (depth 0, the default) copies nothing.

use std::collections::VecDeque;

/// The last messages a publisher sent, at most `depth`.
#[derive(Debug, Default)]
pub(crate) struct History {
    depth: usize,
    frames: VecDeque<Vec<u8>>,
}

impl History {
    /// A history of at most `depth` messages.
    pub(crate) fn new(depth: usize) -> History {
        History {
            depth,
            frames: VecDeque::with_capacity(depth.min(4096)),
        }
    }

    /// Whether it keeps anything.
    #[inline]
    pub(crate) fn is_on(&self) -> bool {
        self.depth > 0
    }

    /// Messages held now.
    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    /// Keeps a copy of `payload`. If the history was full its oldest
    /// message falls out: `evicted` sees it (to release what it holds),
    /// and its buffer is reused.
    pub(crate) fn push(&mut self, payload: &[u8], evicted: impl FnOnce(&[u8])) {
        if self.depth == 0 {
            return;
        }
        let mut b = if self.frames.len() >= self.depth {
            let old = self
                .frames
                .pop_front()
                .expect("a full history holds frames");
            evicted(&old);
            old
        } else {
            Vec::with_capacity(payload.len())
        };
        b.clear();
        b.extend_from_slice(payload);
        self.frames.push_back(b);
    }

    /// The last `n` messages (fewer if fewer are held), oldest first.
    pub(crate) fn last(&self, n: usize) -> impl Iterator<Item = &[u8]> {
        let skip = self.frames.len().saturating_sub(n);
        self.frames.iter().skip(skip).map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_keeps_the_last_depth_messages_oldest_first() {
        let mut h = History::new(3);
        for i in 0u8..5 {
            let mut out = None;
            h.push(&[i], |old| out = Some(old.to_vec()));
            assert_eq!(out, (i >= 3).then(|| vec![i - 3]));
        }
        assert_eq!(h.len(), 3);
        let all: Vec<&[u8]> = h.last(10).collect();
        assert_eq!(all, [&[2u8][..], &[3], &[4]]);
        let two: Vec<&[u8]> = h.last(2).collect();
        assert_eq!(two, [&[3u8][..], &[4]]);
        assert_eq!(h.last(0).count(), 0);
    }

    #[test]
    fn depth_zero_keeps_nothing() {
        let mut h = History::new(0);
        assert!(!h.is_on());
        h.push(b"x", |_| {
            unreachable!("nothing is kept, so nothing falls out")
        });
        assert_eq!(h.len(), 0);
    }
}
