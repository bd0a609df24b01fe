//! Giving back what a party held: after it died ([`Pool::reclaim_party`],
//! [`Pool::reclaim`]), or, for a party leaving cleanly, what its own
//! process does not hold any more ([`Pool::leave`]).
//!
//! Each is one scan of the state words, one bounded compare-and-swap per
//! slot to change, so it runs while the other parties keep working (their
//! slots and references are left as they are) and gives each slot or
//! reference back exactly once, however many scans run at once: the
//! compare-and-swap that changes a word is the one that counts it.

use core::ops::ControlFlow;

use isocall_ringbuf::Region;

use crate::party::Party;
use crate::pool::{Pool, Reclaimed, bounded_cas};
use crate::shared::{Clear, clear_reference};
use crate::state::{Side, SlotState, Word};
use crate::sync::Ordering;

impl<R: Region> Pool<R> {
    /// Frees every slot the `dead` side held, every slot in flight to it,
    /// and every slot it sent that this side has not accepted; gives up its
    /// references in shared slots (freeing those left with none); and puts
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
    /// alone; clears its reference in every shared slot, freeing each slot
    /// whose last reference that was (whether or not it had accepted it);
    /// if it is party 0 or 1, frees every slot in flight between the two
    /// (to it, or from it and not accepted); and puts back into the index
    /// free slots a crash left out of it.
    ///
    /// Safe to run while the other parties keep working: it changes only
    /// words that name `dead`, one bounded compare-and-swap each, so their
    /// slots and references stay theirs, and each of `dead`'s is given
    /// back exactly once (a second run, or one racing this one, finds
    /// nothing left). Call it once `dead` is known dead (its pid exited),
    /// and before its id is given to another party (a [`Roster`] does
    /// both in order): run later, it would clear the new party's
    /// references. Calling it while `dead` is alive pulls its blobs from
    /// under it (its bytes may then be overwritten while it reads them; its
    /// later releases fail quietly).
    ///
    /// What a blob or shared blob of *this process* holds is never given
    /// up, whatever the word says (counted in [`Reclaimed::held_here`]).
    ///
    /// [`Roster`]: crate::Roster
    pub fn reclaim_party(&self, dead: Party) -> Reclaimed {
        self.give_up(dead, true)
    }

    /// For a party leaving cleanly, in its own process: gives up every
    /// reference of this handle's party in shared slots that no shared blob
    /// of this process holds (those shared to it that it never accepted:
    /// still in its ring, or lost), freeing each slot whose last reference
    /// that was. What its shared blobs hold stays (counted in
    /// [`Reclaimed::held_here`]), so nothing is freed under this process's
    /// feet: each such reference is given up when its blob drops (a blob
    /// leaked with `mem::forget` keeps its reference, as a leaked blob keeps
    /// its slot, until the process dies and is reclaimed). Slots it holds
    /// alone, and blobs in flight, are left as they are.
    ///
    /// This is the clean counterpart of [`reclaim_party`](Self::reclaim_party),
    /// which the publisher cannot run for a live party: only this process
    /// knows which of its references its blobs still hold. The publisher
    /// gives the party's id to another only once the pool holds nothing of
    /// it ([`PoolStats::holds`](crate::PoolStats::holds) is zero: after
    /// this call and the last of its shared blobs dropped) or once its
    /// process died and was reclaimed; a [`Roster`](crate::Roster) keeps
    /// that rule. Call it after the publisher has stopped sharing to this
    /// party: a reference shared after it runs stays until the next call.
    pub fn leave(&self) -> Reclaimed {
        self.give_up(self.party(), false)
    }

    /// One scan: the references of `party` in shared slots, and, if it is
    /// `dead`, its other slots and the free slots missing from the index.
    fn give_up(&self, party: Party, dead: bool) -> Reclaimed {
        let mut r = Reclaimed::default();
        for (ci, c) in self.classes.iter().enumerate() {
            for slot in 0..c.count {
                let word = self.state_word(ci, slot);
                let cur = word.load(Ordering::Acquire);
                match Word::decode(cur).state {
                    SlotState::Shared(holders) if holders.contains(party) => {
                        self.give_up_reference((ci, slot), party, cur, &mut r);
                    }
                    _ if dead => self.reclaim_slot((ci, slot), party, cur, &mut r),
                    _ => {}
                }
            }
        }
        r
    }

    /// Clears `party`'s reference in a shared slot (any generation),
    /// unless a shared blob of this process holds it: the reference is
    /// taken in this process's record first, as an accept would, so that
    /// no accept here can slip in between (see [`held`](crate::held)).
    fn give_up_reference(
        &self,
        (ci, slot): (usize, usize),
        party: Party,
        cur: u64,
        r: &mut Reclaimed,
    ) {
        if !self.held.claim_ref(ci, slot, party) {
            r.held_here += 1;
            return;
        }
        let word = self.state_word(ci, slot);
        let done = bounded_cas(cur, |cur| match clear_reference(word, cur, party, None) {
            Clear::Done { freed } => ControlFlow::Break(Some(freed)),
            Clear::Changed(now) => ControlFlow::Continue(now),
            // Given up meanwhile (by its holder, or a racing scan).
            Clear::NotHeld => ControlFlow::Break(None),
        });
        self.held.release_ref(ci, slot, party);
        match done {
            Some(Some(freed)) => {
                r.references += 1;
                if freed {
                    r.shared_freed += 1;
                    self.mark_free(ci, slot);
                }
            }
            Some(None) => {}
            None => r.contended += 1,
        }
    }

    /// Frees a slot the dead party held alone, or, if it is party 0 or 1,
    /// one in flight between them; repairs the hint of a free slot.
    fn reclaim_slot(&self, (ci, slot): (usize, usize), dead: Party, cur: u64, r: &mut Reclaimed) {
        let word = self.state_word(ci, slot);
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
                    let bits = self.bitmap_word(ci, slot / 64);
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
                    self.mark_free(ci, slot);
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
