//! Which of a shared client's slots are free, without a locked instruction.
//!
//! A slot is given back by whoever ends its call (its caller taking the
//! reply, the short reply it holds when dropped, a leader whose wait ended
//! without the reply, a caller whose request could not be sent, the next
//! thread to start a call after a `Pending` was dropped) with one Release
//! store to its [`FreeMark`]; it is taken only by the sender's lock
//! holder, which alone uses the [`SlotOrder`]. So neither end pays a
//! compare-and-swap: on x86 a locked instruction waits for every store
//! before it to leave the core, and a caller's last stores are to the
//! ring, lines its server reads, so each one cost a cross-core fetch (a
//! lone pipelining caller measured about 5 % more calls a second than
//! with a lock-free stack). A call refused for want of a slot waits for
//! the sender's lock first, as a call that gets one does.
//!
//! The sender looks first at the slot its own thread gave back last (a
//! thread that waits for a reply, drops it and starts the next call takes
//! back the slot it just gave), then at a few used slots from a cursor
//! (taken in turn and given back in turn, the cursor's slot is the one
//! taken longest ago: a thread that only starts calls while another waits
//! for them), then at a slot never used, then at all the used ones. So
//! the slots in use stay about as many as the calls in flight, and their
//! lines stay in the cache: looking at the marks of slots other threads
//! wait on costs a cross-core fetch each.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    /// The mark this thread last gave back (its address, 0 for none) and
    /// its slot: a hint, checked against the marks it is used on.
    static LAST_GIVEN: Cell<(usize, u32)> = const { Cell::new((0, 0)) };
}

/// Whether one slot is free.
#[derive(Debug)]
pub(crate) struct FreeMark {
    free: AtomicBool,
    /// The slot's index.
    slot: u32,
}

impl FreeMark {
    /// The mark of slot `slot`, free.
    pub(crate) fn new(slot: u32) -> FreeMark {
        FreeMark {
            free: AtomicBool::new(true),
            slot,
        }
    }

    /// Gives the slot back; only the holder of the slot's call does.
    #[inline]
    pub(crate) fn give_back(&self) {
        // Release: the holder's last writes to the slot before its next
        // taker's first (which reads the mark with Acquire).
        self.free.store(true, Ordering::Release);
        LAST_GIVEN.set((std::ptr::from_ref(self) as usize, self.slot));
    }

    /// Whether the slot is free now (a snapshot, for counting).
    pub(crate) fn is_free(&self) -> bool {
        self.free.load(Ordering::Relaxed)
    }

    /// Takes the slot if it is free; only the sender's lock holder does.
    #[inline]
    fn try_take(&self) -> bool {
        if self.free.load(Ordering::Acquire) {
            // Nobody else writes a free mark: the taker is alone (the
            // sender's lock), and a free slot has no holder to give it back.
            self.free.store(false, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// How many used slots the sender looks at, from its cursor, before it
/// takes a slot never used.
const LOOK_AHEAD: u32 = 8;

/// Where the sender looks for a free slot: the slot its thread gave back
/// last, then the used slots (`1..fresh`) in turn from a cursor that moves
/// past each one looked at (taken in turn and given back in turn, the
/// cursor's slot is the one taken longest ago), then a slot never used.
#[derive(Debug)]
pub(crate) struct SlotOrder {
    /// The next used slot to look at.
    cursor: u32,
    /// The next slot never taken (slot 0 is never used).
    fresh: u32,
    /// The last slot.
    last: u32,
}

impl SlotOrder {
    /// Slots `1..=last`, none taken yet.
    pub(crate) fn new(last: u32) -> SlotOrder {
        SlotOrder {
            cursor: 1,
            fresh: 1,
            last,
        }
    }

    /// Takes a free slot of `marks` (indexed by slot: `marks(i)` is slot
    /// `i`'s), or `None` if all are taken.
    #[inline]
    pub(crate) fn take<'m>(&mut self, marks: impl Fn(u32) -> &'m FreeMark) -> Option<u32> {
        if let Some(i) = self.take_hinted(&marks) {
            return Some(i);
        }
        let used = self.fresh - 1;
        if let Some(i) = self.take_used(used.min(LOOK_AHEAD), &marks) {
            return Some(i);
        }
        if self.fresh <= self.last && marks(self.fresh).try_take() {
            self.fresh += 1;
            return Some(self.fresh - 1);
        }
        // Every slot has been used: look at them all.
        self.take_used(used, &marks)
    }

    /// Takes the slot this thread gave back last, if it is one of these
    /// and free.
    #[inline]
    fn take_hinted<'m>(&self, marks: &impl Fn(u32) -> &'m FreeMark) -> Option<u32> {
        let (addr, i) = LAST_GIVEN.get();
        if !(1..self.fresh).contains(&i) {
            return None;
        }
        let m = marks(i);
        (std::ptr::from_ref(m) as usize == addr && m.try_take()).then_some(i)
    }

    /// Looks at up to `n` used slots from the cursor, taking the first
    /// free one; the cursor moves past each slot looked at.
    #[inline]
    fn take_used<'m>(&mut self, n: u32, marks: &impl Fn(u32) -> &'m FreeMark) -> Option<u32> {
        for _ in 0..n {
            let i = self.cursor;
            self.cursor = if i + 1 >= self.fresh { 1 } else { i + 1 };
            if marks(i).try_take() {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::{FreeMark, SlotOrder};
    use std::sync::atomic::Ordering;

    fn marks(n: u32) -> Vec<FreeMark> {
        (0..=n).map(FreeMark::new).collect()
    }

    #[test]
    fn every_slot_is_taken_once_then_none() {
        let m = marks(5);
        let mut order = SlotOrder::new(5);
        let got: Vec<u32> = std::iter::from_fn(|| order.take(|i| &m[i as usize])).collect();
        assert_eq!(got, [1, 2, 3, 4, 5]);
        m[3].give_back();
        assert_eq!(order.take(|i| &m[i as usize]), Some(3));
        assert_eq!(order.take(|i| &m[i as usize]), None);
    }

    #[test]
    fn calls_answered_in_order_reuse_the_same_few_slots() {
        let m = marks(1024);
        let mut order = SlotOrder::new(1024);
        let mut in_flight = std::collections::VecDeque::new();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10_000 {
            if in_flight.len() == 64 {
                let i: u32 = in_flight.pop_front().expect("in flight");
                m[i as usize].give_back();
            }
            let i = order.take(|i| &m[i as usize]).expect("a free slot");
            seen.insert(i);
            in_flight.push_back(i);
        }
        assert_eq!(seen.len(), 64, "slots used: {seen:?}");
    }

    #[test]
    fn a_long_call_at_the_front_does_not_stop_the_others() {
        let m = marks(16);
        let mut order = SlotOrder::new(16);
        let long = order.take(|i| &m[i as usize]).expect("a slot");
        for _ in 0..1000 {
            let i = order.take(|i| &m[i as usize]).expect("a free slot");
            assert_ne!(i, long, "the long call's slot handed out again");
            m[i as usize].give_back();
        }
        // All but the long call's slot are free and found.
        let got: Vec<u32> = std::iter::from_fn(|| order.take(|i| &m[i as usize])).collect();
        assert_eq!(got.len(), 15);
        assert!(!got.contains(&long));
    }

    #[test]
    fn slots_given_back_out_of_order_are_all_found() {
        let m = marks(64);
        let mut order = SlotOrder::new(64);
        let all: Vec<u32> = std::iter::from_fn(|| order.take(|i| &m[i as usize])).collect();
        assert_eq!(all.len(), 64);
        // Give back every third slot, from the back.
        let back: Vec<u32> = all.iter().rev().step_by(3).copied().collect();
        for &i in &back {
            m[i as usize].give_back();
        }
        let mut again: Vec<u32> = std::iter::from_fn(|| order.take(|i| &m[i as usize])).collect();
        again.sort_unstable();
        let mut want = back.clone();
        want.sort_unstable();
        assert_eq!(again, want);
    }

    #[test]
    fn threads_giving_back_while_one_takes_never_share_a_slot() {
        const SLOTS: u32 = 8;
        let m = marks(SLOTS);
        let held: Vec<std::sync::atomic::AtomicBool> = (0..=SLOTS)
            .map(|_| std::sync::atomic::AtomicBool::new(false))
            .collect();
        // The sender's lock: one taker at a time, as in a shared client.
        let order = std::sync::Mutex::new(SlotOrder::new(SLOTS));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50_000 {
                        let taken = order.lock().expect("order").take(|i| &m[i as usize]);
                        let Some(i) = taken else { continue };
                        let was = held[i as usize].swap(true, Ordering::AcqRel);
                        assert!(!was, "slot {i} handed out twice");
                        held[i as usize].store(false, Ordering::Release);
                        m[i as usize].give_back();
                    }
                });
            }
        });
        let mut order = order.into_inner().expect("order");
        let mut all: Vec<u32> = std::iter::from_fn(|| order.take(|i| &m[i as usize])).collect();
        all.sort_unstable();
        assert_eq!(all, (1..=SLOTS).collect::<Vec<_>>());
    }

    #[test]
    fn the_slot_this_thread_gave_back_last_is_taken_first() {
        let m = marks(64);
        let mut order = SlotOrder::new(64);
        let all: Vec<u32> = std::iter::from_fn(|| order.take(|i| &m[i as usize])).collect();
        assert_eq!(all.len(), 64);
        m[40].give_back();
        m[9].give_back();
        assert_eq!(order.take(|i| &m[i as usize]), Some(9));
        // Taken already: the hint is passed over, the other one found.
        assert_eq!(order.take(|i| &m[i as usize]), Some(40));
        assert_eq!(order.take(|i| &m[i as usize]), None);
        // The hint names a mark of `m`: other marks pass it over.
        let other = marks(64);
        let mut fresh = SlotOrder::new(64);
        for want in 1..=10 {
            assert_eq!(fresh.take(|i| &other[i as usize]), Some(want));
        }
        other[9].give_back();
        m[9].give_back();
        assert_eq!(fresh.take_hinted(&|i| &other[i as usize]), None);
        other[9].give_back();
        assert_eq!(fresh.take_hinted(&|i| &other[i as usize]), Some(9));
    }
}
