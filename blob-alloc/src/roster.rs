//! The publisher's record of which party ids it has given out, and when an
//! id may be given again. See [`Roster`].

use isocall_ringbuf::Region;

use crate::error::BlobError;
use crate::party::{MAX_PARTIES, Parties, Party};
use crate::pool::{Pool, Reclaimed};

/// One joined party, as the roster gave it its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    party: Party,
    /// How many times the id had been given before this join.
    epoch: u32,
}

impl Member {
    /// The party id this member holds.
    pub fn party(self) -> Party {
        self.party
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Seat {
    /// Never given, or given back.
    #[default]
    Vacant,
    /// Given to a party that is subscribed.
    Joined,
    /// Given to a party that left; vacant once the pool holds nothing of it.
    Left,
}

/// Which subscriber ids (1 to [`MAX_PARTIES`] - 1) a publisher has given
/// out, kept by the publisher's process (party 0, which it never gives).
///
/// A subscriber joins a fan-out pool with an id the publisher gives it; the
/// id is a bit in every shared slot's state word, so a new subscriber given
/// an old one's id must not inherit the old one's references (nor lose its
/// own to a reclaim of the old one). Generations already keep a new holder
/// of an id from the old one's blobs (each share makes a new set of holders
/// at the slot's current generation, and no share adds holders to a slot
/// shared before), so what is left is a reclaim that clears the id's bit
/// everywhere: it must come before the id is given again, and never after.
/// A [`Roster`] keeps that order:
///
/// - [`join`](Roster::join) gives an id that is vacant: never given, or
///   given to a party whose everything the pool has given back;
/// - [`leave`](Roster::leave) (a clean unsubscribe) frees nothing: the
///   party's process may still hold shared blobs, which only it knows of.
///   Its id stays retired until the pool holds nothing of it (the party's
///   [`Pool::leave`] gave up the references it never accepted, and its
///   shared blobs dropped), which `join` checks;
/// - [`died`](Roster::died) reclaims everything the dead party had and
///   makes its id vacant at once.
///
/// Each join returns a [`Member`] (the id and a count of its joins), so a
/// late `leave` or `died` for a party whose id was given again since is
/// ignored instead of hitting its successor.
///
/// ```
/// use std::sync::Arc;
/// use isocall_blob::{Party, Pool, PoolConfig, Roster};
/// use isocall_ringbuf::HeapRegion;
///
/// let config = PoolConfig::new().class(4096, 8);
/// let region = Arc::new(HeapRegion::new(config.region_size().unwrap()));
/// let publisher = Pool::create_as(region.clone(), &config, Party::PUBLISHER).unwrap();
/// let mut roster = Roster::new();
///
/// let alice = roster.join(&publisher).unwrap();
/// let sub = Pool::open_as(region, alice.party()).unwrap();
/// let mut blob = publisher.alloc(5).unwrap();
/// blob.copy_from_slice(b"frame");
/// let h = blob.share(roster.members()).unwrap();
/// let got = sub.accept_shared(&h).unwrap();
/// assert_eq!(&got[..], b"frame");
///
/// // Alice unsubscribes while she still reads: her id is not given again
/// // until she has dropped what she holds.
/// assert!(roster.leave(alice));
/// let bob = roster.join(&publisher).unwrap();
/// assert_ne!(bob.party(), alice.party());
/// drop(got); // the last reference: the slot is free
/// assert_eq!(publisher.stats().used(), 0);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Roster {
    seats: [Seat; MAX_PARTIES],
    epochs: [u32; MAX_PARTIES],
}

impl Roster {
    /// A roster with every subscriber id vacant.
    pub fn new() -> Roster {
        Roster::default()
    }

    /// Gives a joining party an id: the smallest vacant one, else the
    /// smallest of a party that left and of which `pool` holds nothing any
    /// more (one census of the pool).
    ///
    /// # Errors
    ///
    /// [`BlobError::NoFreeParty`] if every id is given to a subscribed
    /// party or to one that left and still holds something.
    pub fn join<R: Region>(&mut self, pool: &Pool<R>) -> Result<Member, BlobError> {
        let free =
            |seats: &[Seat; MAX_PARTIES]| (1..MAX_PARTIES).find(|&i| seats[i] == Seat::Vacant);
        let id = match free(&self.seats) {
            Some(id) => id,
            None => {
                let stats = pool.stats();
                let mut retiring = 0;
                for (id, seat) in self.seats.iter_mut().enumerate().skip(1) {
                    if *seat == Seat::Left {
                        match Party::new(id) {
                            Some(p) if stats.holds(p) == 0 => *seat = Seat::Vacant,
                            _ => retiring += 1,
                        }
                    }
                }
                free(&self.seats).ok_or(BlobError::NoFreeParty { retiring })?
            }
        };
        let party = Party::new(id).ok_or(BlobError::NoFreeParty { retiring: 0 })?;
        self.seats[id] = Seat::Joined;
        let epoch = self.epochs[id];
        self.epochs[id] = epoch.wrapping_add(1);
        Ok(Member { party, epoch })
    }

    /// The party left cleanly: no longer a member (stop sharing to it). Its
    /// id is given again once the pool holds nothing of it. False if
    /// `member` is not a current member (it left or died already).
    pub fn leave(&mut self, member: Member) -> bool {
        if !self.is_member(member) {
            return false;
        }
        self.seats[member.party.id()] = Seat::Left;
        true
    }

    /// The party's process died (its pid exited): reclaims everything it
    /// had in `pool` ([`Pool::reclaim_party`]) and makes its id vacant.
    /// `None` (nothing done) if its id was given again since, or it died
    /// already: a reclaim then would take a successor's references.
    ///
    /// Only for a dead process: a live one that left keeps its shared
    /// blobs, and its id comes back by itself (see [`leave`](Self::leave)).
    pub fn died<R: Region>(&mut self, pool: &Pool<R>, member: Member) -> Option<Reclaimed> {
        let id = member.party.id();
        if self.seats[id] == Seat::Vacant || self.epochs[id] != member.epoch.wrapping_add(1) {
            return None;
        }
        let r = pool.reclaim_party(member.party);
        self.seats[id] = Seat::Vacant;
        Some(r)
    }

    /// Whether `member` is subscribed (joined, and neither left nor died).
    pub fn is_member(&self, member: Member) -> bool {
        let id = member.party.id();
        self.seats[id] == Seat::Joined && self.epochs[id] == member.epoch.wrapping_add(1)
    }

    /// The subscribed parties: whom to share the next blob with.
    pub fn members(&self) -> Parties {
        (1..MAX_PARTIES)
            .filter(|&i| self.seats[i] == Seat::Joined)
            .filter_map(Party::new)
            .collect()
    }
}
