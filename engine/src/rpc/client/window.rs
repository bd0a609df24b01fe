//! A client's calls in flight: a window of consecutive call ids, so that
//! starting, matching and finishing a call cost a few index operations,
//! not a hash map's.

use std::collections::VecDeque;

use isocall_blob::BlobHandle;
use rkyv::util::AlignedVec;

/// A reply that came while another call was waited for: copied out of the
/// ring (private memory), to be checked when its call is waited for.
pub(crate) struct Stashed {
    pub(crate) method: u32,
    pub(crate) status: u32,
    pub(crate) blobs: Vec<BlobHandle>,
    pub(crate) body: AlignedVec<16>,
}

/// The state of one call id.
pub(crate) enum Entry {
    /// Sent; no reply yet.
    Waiting {
        /// The method called.
        method: u32,
    },
    /// Its reply came and is kept (boxed: the window's entries stay small,
    /// so moving one in or out costs a few words).
    Stashed(Box<Stashed>),
    /// Done, given up, or never used: a reply to it is discarded.
    Gone,
}

/// Call ids `base..base + entries.len()`; ids below `base` are done.
pub(crate) struct Window {
    base: u64,
    entries: VecDeque<Entry>,
    /// Entries that are `Waiting` or `Stashed`.
    live: usize,
}

impl Window {
    pub(crate) fn new() -> Window {
        Window {
            base: 1,
            entries: VecDeque::new(),
            live: 0,
        }
    }

    /// Entries held (live ones and the gone ones not yet trimmed).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Calls waiting for their reply or their caller.
    pub(crate) fn waiting(&self) -> usize {
        self.live
    }

    /// The id the next call gets.
    #[inline]
    pub(crate) fn next_id(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    /// Records the call just sent with [`next_id`](Self::next_id).
    #[inline]
    pub(crate) fn push(&mut self, method: u32) {
        self.entries.push_back(Entry::Waiting { method });
        self.live += 1;
    }

    #[inline]
    fn index(&self, id: u64) -> Option<usize> {
        id.checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < self.entries.len())
    }

    #[inline]
    pub(crate) fn get(&self, id: u64) -> Option<&Entry> {
        self.index(id).map(|i| &self.entries[i])
    }

    /// Whether call `id` waits for its reply.
    pub(crate) fn is_waiting(&self, id: u64) -> bool {
        matches!(self.get(id), Some(Entry::Waiting { .. }))
    }

    /// Keeps the reply of call `id`, which waits for it.
    pub(crate) fn stash(&mut self, id: u64, s: Stashed) {
        if let Some(i) = self.index(id) {
            debug_assert!(matches!(self.entries[i], Entry::Waiting { .. }));
            self.entries[i] = Entry::Stashed(Box::new(s));
        }
    }

    /// Takes the stashed reply of call `id`; the call is done.
    pub(crate) fn take_stash(&mut self, id: u64) -> Option<Stashed> {
        let i = self.index(id)?;
        match std::mem::replace(&mut self.entries[i], Entry::Gone) {
            Entry::Stashed(s) => {
                self.live -= 1;
                self.trim();
                Some(*s)
            }
            other => {
                self.entries[i] = other;
                None
            }
        }
    }

    /// Call `id`'s reply came and is taken: the call is done. Returns its
    /// method if it was waiting.
    #[inline]
    pub(crate) fn finish(&mut self, id: u64) -> Option<u32> {
        // The usual case: the oldest call finishes (one in flight, or
        // replies in order).
        if id == self.base
            && let Some(Entry::Waiting { method }) = self.entries.front()
        {
            let method = *method;
            self.entries.pop_front();
            self.base += 1;
            self.live -= 1;
            self.trim();
            return Some(method);
        }
        let i = self.index(id)?;
        match std::mem::replace(&mut self.entries[i], Entry::Gone) {
            Entry::Waiting { method } => {
                self.live -= 1;
                self.trim();
                Some(method)
            }
            other => {
                self.entries[i] = other;
                None
            }
        }
    }

    /// Gives call `id` up: its reply, if it comes, is discarded. Returns a
    /// stashed reply to free.
    pub(crate) fn give_up(&mut self, id: u64) -> Option<Stashed> {
        let i = self.index(id)?;
        let old = std::mem::replace(&mut self.entries[i], Entry::Gone);
        if !matches!(old, Entry::Gone) {
            self.live -= 1;
        }
        self.trim();
        match old {
            Entry::Stashed(s) => Some(*s),
            _ => None,
        }
    }

    /// Drops done calls from the front.
    #[inline]
    fn trim(&mut self) {
        while matches!(self.entries.front(), Some(Entry::Gone)) {
            self.entries.pop_front();
            self.base += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stash() -> Stashed {
        Stashed {
            method: 0,
            status: 0,
            blobs: Vec::new(),
            body: AlignedVec::new(),
        }
    }

    #[test]
    fn calls_finish_in_any_order_and_the_window_shrinks() {
        let mut w = Window::new();
        let a = w.next_id();
        w.push(1);
        let b = w.next_id();
        w.push(2);
        let c = w.next_id();
        w.push(3);
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(w.waiting(), 3);
        w.stash(b, stash());
        assert!(w.is_waiting(c) && !w.is_waiting(b));
        assert_eq!(w.finish(c), Some(3));
        assert_eq!(w.len(), 3, "gone, but behind a live one");
        assert!(w.give_up(a).is_none());
        assert_eq!(w.len(), 2);
        assert!(w.take_stash(b).is_some());
        assert_eq!((w.len(), w.waiting()), (0, 0));
        assert_eq!(w.next_id(), 4);
        assert!(w.get(2).is_none() && w.finish(99).is_none());
    }
}
