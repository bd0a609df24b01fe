//! The parties that map a pool, and sets of them.
//!
//! A pool is mapped by up to [`MAX_PARTIES`] parties, each named by a small
//! id. A two-sided pool (one connection) has parties 0 and 1, the sides
//! [`A`](Side::A) and [`B`](Side::B). A pool for fan-out has a publisher,
//! party 0, and subscribers, each given an id from 1 up when it joins (see
//! [`Roster`](crate::Roster), which also says when an id may be given again).

use crate::state::Side;

/// Most parties one pool can have: ids `0..MAX_PARTIES`.
///
/// Why 31: a shared slot's state word holds the slot's generation (32 bits,
/// as for every slot, so that a stale handle is refused for 2^32 lives of
/// its slot), one bit saying "shared", and one bit per party that holds a
/// reference, all in one `u64`, so that one compare-and-swap decides every
/// change (see [`pool`](crate::pool)). That leaves 31 bits of holders. (The
/// process-local record of what this process holds, a `u32` per slot, has
/// the same 31 bits and one for a blob that holds the slot alone.)
pub const MAX_PARTIES: usize = 31;

/// One party of a pool: an id below [`MAX_PARTIES`].
///
/// ```
/// use isocall_blob::{Party, Side};
/// assert_eq!(Party::from(Side::B), Party::new(1).unwrap());
/// assert!(Party::new(31).is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Party(u8);

impl Party {
    /// Party 0: the publisher of a fan-out pool, and side
    /// [`A`](Side::A) of a two-sided one.
    pub const PUBLISHER: Party = Party(0);

    /// The party of id `id`, or `None` if `id >= MAX_PARTIES`.
    pub const fn new(id: usize) -> Option<Party> {
        if id < MAX_PARTIES {
            Some(Party(id as u8))
        } else {
            None
        }
    }

    /// The party's id, below [`MAX_PARTIES`].
    pub const fn id(self) -> usize {
        self.0 as usize
    }

    /// The side this party is in a two-sided pool: [`Side::A`] for party
    /// 0, [`Side::B`] for party 1, `None` for the others.
    pub const fn side(self) -> Option<Side> {
        match self.0 {
            0 => Some(Side::A),
            1 => Some(Side::B),
            _ => None,
        }
    }

    /// This party's bit in a [`Parties`] set.
    #[inline]
    pub(crate) const fn bit(self) -> u32 {
        1 << self.0
    }
}

impl From<Side> for Party {
    /// Side A is party 0, side B party 1.
    fn from(side: Side) -> Party {
        match side {
            Side::A => Party(0),
            Side::B => Party(1),
        }
    }
}

impl std::fmt::Display for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "party {}", self.0)
    }
}

/// A set of parties: one bit per party id, as a shared slot's state word
/// holds its holders.
///
/// ```
/// use isocall_blob::{Parties, Party};
/// let subs: Parties = [1, 4, 7].into_iter().filter_map(Party::new).collect();
/// assert_eq!(subs.len(), 3);
/// assert!(subs.contains(Party::new(4).unwrap()));
/// assert_eq!(subs.iter().map(Party::id).collect::<Vec<_>>(), [1, 4, 7]);
/// assert_eq!(Parties::from_bits(subs.bits()), Some(subs));
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Parties(u32);

impl Parties {
    /// No party.
    pub const EMPTY: Parties = Parties(0);
    /// Every party id a pool can have.
    pub const ALL: Parties = Parties((1 << MAX_PARTIES) - 1);

    /// The set whose bit `i` is set for each party `i` in it; `None` if a
    /// bit at or above [`MAX_PARTIES`] is set.
    pub const fn from_bits(bits: u32) -> Option<Parties> {
        if bits & !Parties::ALL.0 == 0 {
            Some(Parties(bits))
        } else {
            None
        }
    }

    /// The set as bits (bit `i` for party `i`).
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The set with `party` added.
    #[must_use]
    pub const fn with(self, party: Party) -> Parties {
        Parties(self.0 | party.bit())
    }

    /// The set with `party` taken out.
    #[must_use]
    pub const fn without(self, party: Party) -> Parties {
        Parties(self.0 & !party.bit())
    }

    /// Whether `party` is in the set.
    pub const fn contains(self, party: Party) -> bool {
        self.0 & party.bit() != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// How many parties are in the set.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The parties in the set, smallest id first.
    pub fn iter(self) -> impl Iterator<Item = Party> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let id = bits.trailing_zeros();
            bits &= bits - 1;
            Some(Party(id as u8))
        })
    }
}

impl From<Party> for Parties {
    fn from(party: Party) -> Parties {
        Parties(party.bit())
    }
}

impl FromIterator<Party> for Parties {
    fn from_iter<I: IntoIterator<Item = Party>>(iter: I) -> Parties {
        iter.into_iter().fold(Parties::EMPTY, Parties::with)
    }
}

impl std::fmt::Debug for Parties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter().map(Party::id)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_sets() {
        assert_eq!(Party::new(0), Some(Party::PUBLISHER));
        assert_eq!(Party::new(30).map(Party::id), Some(30));
        assert_eq!(Party::new(MAX_PARTIES), None);
        assert_eq!(Party::PUBLISHER.side(), Some(Side::A));
        assert_eq!(Party::new(1).unwrap().side(), Some(Side::B));
        assert_eq!(Party::new(2).unwrap().side(), None);
        assert_eq!(Parties::ALL.len(), MAX_PARTIES);
        assert_eq!(Parties::from_bits(1 << 31), None);
        assert_eq!(Parties::ALL.iter().count(), MAX_PARTIES);
        let p = Party::new(5).unwrap();
        let s = Parties::EMPTY.with(p).with(Party::PUBLISHER);
        assert_eq!(format!("{s:?}"), "{0, 5}");
        assert!(s.without(p).contains(Party::PUBLISHER));
        assert!(!s.without(p).contains(p));
        assert!(s.without(p).without(Party::PUBLISHER).is_empty());
    }
}
