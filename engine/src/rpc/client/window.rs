//! A client's calls in flight: a window of consecutive call ids, so that
//! starting, matching and finishing a call cost a few index operations,
//! not a hash map's.

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

/// Call ids `base..base + len`; ids below `base` are done. Entry `id`
/// sits in `slots[id & mask]` (ids are consecutive, and the slots are a
/// power of two, at least `len`): starting, matching and finishing the
/// oldest call are an index and a mask, with no wrap-around arithmetic
/// and no entry moved in or out of a queue.
pub(crate) struct Window {
    base: u64,
    len: usize,
    slots: Vec<Entry>,
    /// Entries that are `Waiting` or `Stashed`.
    live: usize,
}

/// Slots a window starts with (it doubles when a call finds them full).
const FIRST_SLOTS: usize = 64;

impl Window {
    pub(crate) fn new() -> Window {
        Window {
            base: 1,
            len: 0,
            slots: Vec::new(),
            live: 0,
        }
    }

    /// Entries held (live ones and the gone ones not yet trimmed).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Calls waiting for their reply or their caller.
    pub(crate) fn waiting(&self) -> usize {
        self.live
    }

    /// The id the next call gets.
    #[inline]
    pub(crate) fn next_id(&self) -> u64 {
        self.base + self.len as u64
    }

    /// The slot of `id` (which need not be held).
    #[inline(always)]
    fn slot(&self, id: u64) -> usize {
        // `slots.len()` is a power of two (or zero, with `len` zero: never
        // indexed then).
        (id as usize) & self.slots.len().wrapping_sub(1)
    }

    /// Records the call just sent with [`next_id`](Self::next_id).
    #[inline(always)]
    pub(crate) fn push(&mut self, method: u32) {
        if self.len == self.slots.len() {
            self.grow();
        }
        let i = self.slot(self.next_id());
        self.slots[i] = Entry::Waiting { method };
        self.len += 1;
        self.live += 1;
    }

    /// Twice the slots (at least [`FIRST_SLOTS`]), each held entry moved to
    /// its slot under the new mask.
    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(FIRST_SLOTS);
        let mut slots: Vec<Entry> = std::iter::repeat_with(|| Entry::Gone).take(n).collect();
        for id in self.base..self.next_id() {
            let from = self.slot(id);
            slots[(id as usize) & (n - 1)] = std::mem::replace(&mut self.slots[from], Entry::Gone);
        }
        self.slots = slots;
    }

    #[inline]
    fn index(&self, id: u64) -> Option<usize> {
        id.checked_sub(self.base)
            .filter(|&i| i < self.len as u64)
            .map(|_| self.slot(id))
    }

    #[inline]
    pub(crate) fn get(&self, id: u64) -> Option<&Entry> {
        self.index(id).map(|i| &self.slots[i])
    }

    /// Whether call `id` waits for its reply.
    pub(crate) fn is_waiting(&self, id: u64) -> bool {
        matches!(self.get(id), Some(Entry::Waiting { .. }))
    }

    /// Keeps the reply of call `id`, which waits for it.
    pub(crate) fn stash(&mut self, id: u64, s: Stashed) {
        if let Some(i) = self.index(id) {
            debug_assert!(matches!(self.slots[i], Entry::Waiting { .. }));
            self.slots[i] = Entry::Stashed(Box::new(s));
        }
    }

    /// Takes the stashed reply of call `id`; the call is done.
    pub(crate) fn take_stash(&mut self, id: u64) -> Option<Stashed> {
        let i = self.index(id)?;
        match std::mem::replace(&mut self.slots[i], Entry::Gone) {
            Entry::Stashed(s) => {
                self.live -= 1;
                self.trim();
                Some(*s)
            }
            other => {
                self.slots[i] = other;
                None
            }
        }
    }

    /// Call `id`'s reply came and is taken: the call is done. Returns its
    /// method if it was waiting.
    #[inline(always)]
    pub(crate) fn finish(&mut self, id: u64) -> Option<u32> {
        let i = self.index(id)?;
        let Entry::Waiting { method } = self.slots[i] else {
            return None;
        };
        self.slots[i] = Entry::Gone;
        self.live -= 1;
        self.trim();
        Some(method)
    }

    /// Gives call `id` up: its reply, if it comes, is discarded. Returns a
    /// stashed reply to free.
    pub(crate) fn give_up(&mut self, id: u64) -> Option<Stashed> {
        let i = self.index(id)?;
        let old = std::mem::replace(&mut self.slots[i], Entry::Gone);
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
        while self.len > 0 && matches!(self.slots[self.slot(self.base)], Entry::Gone) {
            self.base += 1;
            self.len -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

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

    #[test]
    fn the_window_wraps_and_grows_with_calls_held_behind_an_old_one() {
        let mut w = Window::new();
        // One call that stays unanswered while thousands pass behind it
        // (the slots grow), then answered (the window trims, and the
        // slots are reused lap after lap); every id keeps its method.
        let old = w.next_id();
        w.push(7);
        let mut old_live = 1;
        let mut live: VecDeque<(u64, u32)> = VecDeque::new();
        for round in 0..50u32 {
            if round == 25 {
                assert!(w.is_waiting(old));
                assert_eq!(w.finish(old), Some(7));
                old_live = 0;
                let oldest = live.front().expect("calls in flight").0;
                assert_eq!(
                    w.len() as u64,
                    w.next_id() - oldest,
                    "trimmed to the oldest live call"
                );
            }
            for k in 0..100u32 {
                let id = w.next_id();
                w.push(round * 1000 + k);
                live.push_back((id, round * 1000 + k));
            }
            // Finish all but ten, newest first then oldest first.
            while live.len() > 10 {
                let (id, m) = if round % 2 == 0 {
                    live.pop_back()
                } else {
                    live.pop_front()
                }
                .unwrap();
                assert_eq!(w.finish(id), Some(m));
                assert_eq!(w.finish(id), None, "finished twice");
            }
            assert_eq!(w.waiting(), live.len() + old_live);
        }
        for (id, m) in live {
            assert_eq!(w.finish(id), Some(m));
        }
        assert_eq!((w.len(), w.waiting()), (0, 0));
        assert_eq!(w.next_id(), 1 + 1 + 50 * 100);
    }
}
