//! Giving back what a party held after it died ([`Pool::reclaim_party`],
//! [`Pool::reclaim`]).
//!
//! One scan of the state words, one bounded compare-and-swap per slot to
//! change, so it runs while the other parties keep working (their slots
//! are left as they are) and gives each slot back exactly once, however
//! many scans run at once: the compare-and-swap that changes a word is the
//! one that counts it.

use core::ops::ControlFlow;

use isocall_ringbuf::Region;

use crate::party::Party;
use crate::pool::{Pool, Reclaimed, bounded_cas};
use crate::state::{Side, SlotState, Word};
use crate::sync::Ordering;

impl<R: Region> Pool<R> {
    /// Frees every slot the `dead` side held, every slot in flight to it,
    /// and every slot it sent that this side has not accepted; and puts
    /// back into the index free slots a crash left out of it. The same as
    /// [`reclaim_party`](Self::reclaim_party) of `dead`'s party.
    ///
    /// Call it once the dead side is known dead (its pid exited) and after
    /// reading what it sent: blobs in flight from it that are not accepted
    /// by then are freed. Slots this side holds are untouched, so its
    /// threads may keep working meanwhile. Calling it while `dead` is alive
    /// frees blobs under its feet: its later frees and sends then fail
    /// quietly and its bytes may be overwritten.
    ///
    /// A slot a blob of *this process* holds is never freed, whatever its
    /// state word says (counted in [`Reclaimed::held_here`]): the word was
    /// rewritten behind our back, or `dead` is a side this very process
    /// still runs (a test); freeing it would let the dead side's successor
    /// write bytes this process is using.
    pub fn reclaim(&self, dead: Side) -> Reclaimed {
        self.reclaim_party(dead.into())
    }

    /// Gives back everything the `dead` party had: frees the slots it held
    /// alone; if it is party 0 or 1, frees every slot in flight between the two
    /// (to it, or from it and not accepted); and puts back into the index
    /// free slots a crash left out of it.
    ///
    /// Safe to run while the other parties keep working: it changes only
    /// words that name `dead`, one bounded compare-and-swap each, so their
    /// slots stay theirs, and each of `dead`'s is given back exactly once
    /// (a second run, or one racing this one, finds nothing left). Call it
    /// once `dead` is known dead (its pid exited), and before its id is
    /// given to another party: run later, it would free the new party's
    /// blobs. Calling it while `dead` is alive pulls its blobs from under
    /// it (its bytes may then be overwritten while it uses them).
    ///
    /// A slot a blob of *this process* holds is never freed, whatever its
    /// state word says (counted in [`Reclaimed::held_here`]).
    pub fn reclaim_party(&self, dead: Party) -> Reclaimed {
        let mut r = Reclaimed::default();
        for (ci, c) in self.classes.iter().enumerate() {
            for slot in 0..c.count {
                let cur = self
                    .region()
                    .u64_at(c.state_at(slot))
                    .load(Ordering::Acquire);
                self.reclaim_slot((ci, slot), dead, cur, &mut r);
            }
        }
        r
    }

    /// Frees a slot the dead party held alone, or, if it is party 0 or 1,
    /// one in flight between them; repairs the hint of a free slot.
    fn reclaim_slot(&self, (ci, slot): (usize, usize), dead: Party, cur: u64, r: &mut Reclaimed) {
        let c = &self.classes[ci];
        let word = self.region().u64_at(c.state_at(slot));
        let two_sided = dead.side().is_some();
        let done = bounded_cas(cur, |cur| {
            let w = Word::decode(cur);
            let frees = w.state.holder() == Some(dead)
                || two_sided && matches!(w.state, SlotState::InFlight(_));
            // Checked again on every retry: a blob of this process may have
            // taken the slot since (its claim sets the record before its
            // compare-and-swap, which also fails ours).
            if frees && self.held.is_held(ci, slot) {
                r.held_here += 1;
                return ControlFlow::Break(());
            }
            let counter = match w.state {
                _ if w.state.holder() == Some(dead) => &mut r.held,
                SlotState::InFlight(s) if two_sided && Party::from(s) == dead => {
                    &mut r.in_flight_to_dead
                }
                SlotState::InFlight(_) if two_sided => &mut r.in_flight_from_dead,
                SlotState::Free => {
                    let bit = 1u64 << (slot % 64);
                    let bits = self.region().u64_at(c.bitmap + slot / 64 * 8);
                    if bits.load(Ordering::Relaxed) & bit == 0 {
                        // A stale set bit is harmless (the claim CAS
                        // fails), so setting it cannot double-allocate.
                        bits.fetch_or(bit, Ordering::Relaxed);
                        r.repaired += 1;
                    }
                    return ControlFlow::Break(());
                }
                _ => return ControlFlow::Break(()),
            };
            match word.compare_exchange(
                cur,
                Word::encode(w.generation, SlotState::Free),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    *counter += 1;
                    self.mark_free(c, slot);
                    ControlFlow::Break(())
                }
                Err(now) => ControlFlow::Continue(now),
            }
        });
        if done.is_none() {
            r.contended += 1;
        }
    }
}
