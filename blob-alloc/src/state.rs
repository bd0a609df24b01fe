//! The state word of a slot, and the two sides that own slots.
//!
//! Each slot has one `u64` in shared memory: its generation in the high 32
//! bits, its state in the low 32. The word is the single authority on who
//! owns the slot: every change of owner is one compare-and-swap on it, so
//! a process that dies at any instruction leaves each slot in exactly one
//! state, which the survivors can read and
//! [`reclaim`](crate::Pool::reclaim_party). The generation grows by one on
//! every allocation, so a handle to an earlier life of the slot no longer
//! matches.
//!
//! The low 32 bits:
//!
//! ```text
//! bit 31 clear: one owner. Bits 8..31 zero, bits 0..8 a code:
//!     0          Free
//!     1, 2       Held by party 0 (side A), by party 1 (side B)
//!     3, 4       InFlight to party 0 (side A), to party 1 (side B)
//!     0x40 + p   Held by party p, 2 <= p < 31
//! bit 31 set:   Shared. Bits 0..31 are the parties holding a reference
//!               (bit p for party p), never all zero: the compare-and-swap
//!               that clears the last one writes Free instead.
//! ```
//!
//! Every state has exactly one encoding; any other word decodes as
//! [`SlotState::Invalid`] (no correct party writes one). The codes of a
//! two-sided pool are those of the first layout version, unchanged.

use crate::party::{MAX_PARTIES, Parties, Party};

/// One of the two parties that share a two-sided pool (by convention the
/// client is `A` and the server `B`); parties 0 and 1 of a pool of more
/// (see [`Party`]). A two-sided pool has exactly two, so this enum is not
/// `#[non_exhaustive]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The first party.
    A,
    /// The second party.
    B,
}

impl Side {
    /// The other party.
    pub fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Who owns a slot, as decoded from its state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SlotState {
    /// Free: in no one's hands.
    Free,
    /// Allocated or received by `Side` (party 0 or 1), which may read and
    /// write it.
    Held(Side),
    /// Sent to `Side`, which has not accepted it yet.
    InFlight(Side),
    /// Allocated by a party of id 2 or more (parties 0 and 1 show as
    /// [`Held`](SlotState::Held); [`SlotState::held`] builds either).
    HeldBy(Party),
    /// Shared: read-only, each party of the set holding one reference; the
    /// last one given up frees the slot. Never empty.
    Shared(Parties),
    /// A word no correct party writes (a peer scribbled on it): the code
    /// in its low byte, or `0xFF` if bits above the code are set.
    Invalid(u8),
}

impl SlotState {
    /// The state of a slot held by `party`: [`Held`](SlotState::Held) for
    /// parties 0 and 1, [`HeldBy`](SlotState::HeldBy) for the others.
    pub const fn held(party: Party) -> SlotState {
        match party.side() {
            Some(side) => SlotState::Held(side),
            None => SlotState::HeldBy(party),
        }
    }

    /// The party that holds the slot alone, if one does.
    pub const fn holder(self) -> Option<Party> {
        match self {
            SlotState::Held(Side::A) => Some(Party::PUBLISHER),
            SlotState::Held(Side::B) => Party::new(1),
            SlotState::HeldBy(p) => Some(p),
            _ => None,
        }
    }

    fn code(self) -> u64 {
        match self {
            SlotState::Free => FREE,
            SlotState::Held(Side::A) => HELD_A,
            SlotState::Held(Side::B) => HELD_B,
            SlotState::InFlight(Side::A) => TO_A,
            SlotState::InFlight(Side::B) => TO_B,
            SlotState::HeldBy(p) => held_code(p),
            SlotState::Shared(holders) => SHARED | u64::from(holders.bits()),
            SlotState::Invalid(c) => u64::from(c),
        }
    }
}

const FREE: u64 = 0;
const HELD_A: u64 = 1;
const HELD_B: u64 = 2;
const TO_A: u64 = 3;
const TO_B: u64 = 4;
/// Code of `Held(p)` for parties from 2: `HELD_BY + p`.
const HELD_BY: u64 = 0x40;
/// The "shared" bit; the bits below it are the holders.
const SHARED: u64 = 1 << 31;

/// The low 32 bits of a word saying `party` holds the slot.
#[inline]
pub(crate) const fn held_code(party: Party) -> u64 {
    match party.id() {
        0 => HELD_A,
        1 => HELD_B,
        p => HELD_BY + p as u64,
    }
}

/// A decoded state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Word {
    pub generation: u32,
    pub state: SlotState,
}

impl Word {
    #[inline]
    pub fn decode(w: u64) -> Word {
        let low = w & 0xFFFF_FFFF;
        let state = if low & SHARED != 0 {
            match Parties::from_bits((low & !SHARED) as u32) {
                Some(holders) if !holders.is_empty() => SlotState::Shared(holders),
                _ => SlotState::Invalid(0xFF),
            }
        } else if low & 0xFFFF_FF00 != 0 {
            SlotState::Invalid(0xFF)
        } else {
            match low {
                FREE => SlotState::Free,
                HELD_A => SlotState::Held(Side::A),
                HELD_B => SlotState::Held(Side::B),
                TO_A => SlotState::InFlight(Side::A),
                TO_B => SlotState::InFlight(Side::B),
                c if c >= HELD_BY + 2 && c < HELD_BY + MAX_PARTIES as u64 => {
                    match Party::new((c - HELD_BY) as usize) {
                        Some(p) => SlotState::HeldBy(p),
                        None => SlotState::Invalid(c as u8),
                    }
                }
                c => SlotState::Invalid(c as u8),
            }
        };
        Word {
            generation: (w >> 32) as u32,
            state,
        }
    }

    #[inline]
    pub fn encode(generation: u32, state: SlotState) -> u64 {
        (u64::from(generation) << 32) | state.code()
    }

    /// Whether the word says Free (whatever the generation): the claim's
    /// test, one comparison.
    #[inline]
    pub fn is_free(w: u64) -> bool {
        w as u32 == FREE as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(id: usize) -> Party {
        Party::new(id).unwrap()
    }

    #[test]
    fn round_trips() {
        let mut states = vec![
            SlotState::Free,
            SlotState::Held(Side::A),
            SlotState::Held(Side::B),
            SlotState::InFlight(Side::A),
            SlotState::InFlight(Side::B),
            SlotState::HeldBy(party(2)),
            SlotState::HeldBy(party(MAX_PARTIES - 1)),
            SlotState::Shared(Parties::ALL),
        ];
        for p in 0..MAX_PARTIES {
            states.push(SlotState::Shared(party(p).into()));
            states.push(SlotState::held(party(p)));
        }
        for st in states {
            for generation in [0, 1, u32::MAX] {
                assert_eq!(
                    Word::decode(Word::encode(generation, st)),
                    Word {
                        generation,
                        state: st
                    }
                );
            }
        }
        assert_eq!(Side::A.peer(), Side::B);
    }

    #[test]
    fn the_two_sided_codes_are_unchanged() {
        // The codes of layout version 1, which a two-sided peer writes.
        let code = |st| Word::encode(0, st);
        assert_eq!(code(SlotState::Free), 0);
        assert_eq!(code(SlotState::Held(Side::A)), 1);
        assert_eq!(code(SlotState::Held(Side::B)), 2);
        assert_eq!(code(SlotState::InFlight(Side::A)), 3);
        assert_eq!(code(SlotState::InFlight(Side::B)), 4);
        assert_eq!(SlotState::held(party(0)), SlotState::Held(Side::A));
        assert_eq!(SlotState::held(party(1)), SlotState::Held(Side::B));
        assert_eq!(SlotState::held(party(7)).holder(), Some(party(7)));
        assert_eq!(SlotState::Held(Side::B).holder(), Some(party(1)));
        assert_eq!(SlotState::Shared(Parties::ALL).holder(), None);
        assert!(Word::is_free(Word::encode(9, SlotState::Free)));
        assert!(!Word::is_free(Word::encode(
            0,
            SlotState::Shared(party(0).into())
        )));
    }

    #[test]
    fn every_other_word_is_invalid() {
        let st = |low: u64| Word::decode(low | 5 << 32).state;
        assert_eq!(st(9), SlotState::Invalid(9));
        assert_eq!(st(1 << 8), SlotState::Invalid(0xFF));
        // Held codes of parties 0 and 1 have one spelling only, and there
        // is no party 31.
        assert_eq!(st(HELD_BY), SlotState::Invalid(0x40));
        assert_eq!(st(HELD_BY + 1), SlotState::Invalid(0x41));
        assert_eq!(st(HELD_BY + 31), SlotState::Invalid(0x5F));
        // A shared word with no holder.
        assert_eq!(st(SHARED), SlotState::Invalid(0xFF));
        // Every low word decodes to something that encodes back to it, or
        // is invalid.
        for low in (0..0x200).chain([SHARED | 1, SHARED | 0x7FFF_FFFF, u64::from(u32::MAX)]) {
            match st(low) {
                SlotState::Invalid(_) => {}
                s => assert_eq!(Word::encode(5, s), low | 5 << 32, "{low:#x}"),
            }
        }
    }
}
