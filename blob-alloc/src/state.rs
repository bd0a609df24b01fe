//! The state word of a slot, and the two sides that own slots.
//!
//! Each slot has one `u64` in shared memory: its generation in the high 32
//! bits, its state code in the low 8 (the bits between are zero). The word
//! is the single authority on who owns the slot: every change of owner is
//! one compare-and-swap on it, so a process that dies at any instruction
//! leaves each slot in exactly one state, which the survivor can read and
//! [`reclaim`](crate::Pool::reclaim). The generation grows by one on every
//! allocation, so a handle to an earlier life of the slot no longer matches.

/// One of the two parties that share a pool (by convention the client is
/// `A` and the server `B`). A pool has exactly two, so this enum is not
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
    /// Allocated or received by `Side`, which may read and write it.
    Held(Side),
    /// Sent to `Side`, which has not accepted it yet.
    InFlight(Side),
    /// A code no correct party writes (the peer scribbled on the word).
    Invalid(u8),
}

const FREE: u64 = 0;
const HELD_A: u64 = 1;
const HELD_B: u64 = 2;
const TO_A: u64 = 3;
const TO_B: u64 = 4;

impl SlotState {
    fn code(self) -> u64 {
        match self {
            SlotState::Free => FREE,
            SlotState::Held(Side::A) => HELD_A,
            SlotState::Held(Side::B) => HELD_B,
            SlotState::InFlight(Side::A) => TO_A,
            SlotState::InFlight(Side::B) => TO_B,
            SlotState::Invalid(c) => u64::from(c),
        }
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
        let state = if w & 0xFFFF_FF00 != 0 {
            SlotState::Invalid(0xFF)
        } else {
            match w & 0xFF {
                FREE => SlotState::Free,
                HELD_A => SlotState::Held(Side::A),
                HELD_B => SlotState::Held(Side::B),
                TO_A => SlotState::InFlight(Side::A),
                TO_B => SlotState::InFlight(Side::B),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for st in [
            SlotState::Free,
            SlotState::Held(Side::A),
            SlotState::Held(Side::B),
            SlotState::InFlight(Side::A),
            SlotState::InFlight(Side::B),
        ] {
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
        assert_eq!(Word::decode(9).state, SlotState::Invalid(9));
        assert_eq!(Word::decode(1 << 8).state, SlotState::Invalid(0xFF));
        assert_eq!(Side::A.peer(), Side::B);
    }
}
