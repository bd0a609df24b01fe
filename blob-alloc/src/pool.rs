//! The pool: size classes of slots over a region, shared by two sides or,
//! for fan-out, by up to [`MAX_PARTIES`] parties.
//!
//! # How a slot changes hands
//!
//! A slot's state word (`state`) is the only authority on
//! its owner, and every allocation is one compare-and-swap on it, from
//! `Free(g)` to `Held(me, g + 1)`. Freeing stores `Free(g)`; sending swaps
//! `Held(me, g)` for `InFlight(peer, g)`; accepting swaps `InFlight(me, g)`
//! for `Held(me, g)`.
//!
//! Each class also has a bitmap of hints, one bit per slot, meaning "maybe
//! free". An allocator tries the slots whose bits are set; a bit whose slot
//! turns out to be taken is cleared on the way; a free sets its slot's bit
//! if it is clear. A claimed slot keeps its bit, so a slot that one thread
//! allocates and frees again and again costs one locked instruction per
//! pair (the claim), where malloc's thread cache costs none and a Treiber
//! stack two. Hints can be wrong both ways and nothing depends on them: a
//! set bit on a taken slot costs a look, and a free slot whose bit a racing
//! scan cleared is found by the slow path, a scan of the state words, which
//! runs before any `Exhausted` is reported.
//!
//! Why not a Treiber stack (index and ABA tag in one word): its pop and the
//! ownership mark are two steps, and a process killed between them leaves a
//! slot that is neither on the list nor owned; repairing that requires
//! knowing whether the slot is on the list, which races with the survivor's
//! own pushes and pops, and pushing it twice corrupts the list. Here a
//! `SIGKILL` at any instruction leaves each slot in exactly one state, which
//! [`Pool::reclaim`] reads; there is no list to corrupt and no ABA problem.
//!
//! Memory ordering: the store or CAS that frees or sends a slot is Release,
//! the CAS that claims or accepts it is Acquire, so the bytes written by
//! one owner happen before the next owner touches them. The hint bits carry
//! no data and are Relaxed.
//!
//! # Shared slots
//!
//! A slot one party holds can be shared, read-only, with a set of parties:
//! one compare-and-swap (Release) turns `Held(me, g)` into
//! `Shared(holders, g)`, the holders a bit mask in the same word (see
//! [`state`](crate::SlotState)). Each holder gets a
//! [`SharedBlob`](crate::SharedBlob) with [`Pool::accept_shared`], which
//! changes no shared word: it checks, with an Acquire load, that the word
//! is `Shared` at the handle's generation with the holder's bit set, after
//! marking the reference taken in this process's record (so a second
//! accept of it here is refused). Dropping the guard gives the reference
//! up: one compare-and-swap (AcqRel, bounded) clears the holder's bit, and
//! the one that clears the last bit writes `Free(g)` instead, so exactly
//! one release frees the slot, and every holder's reads happen before
//! whoever claims it next (each release reads the previous one; the last
//! is Release, the next claim Acquire). A reference is only ever given up
//! by its holder, or by [`Pool::reclaim_party`] once the holder is dead.
//!
//! Why one word: holders and generation change together, so a release
//! racing another release, an accept or a reclaim is decided by one
//! compare-and-swap, and a crash at any instruction leaves the word with
//! exactly the references not yet given up: a holder killed before its
//! compare-and-swap still has its bit (which `reclaim_party` clears), one
//! killed after has none (and its process-local record dies with it). A
//! count beside a mask, or a count alone, would need two words (or could
//! not tell whose reference a dead party's was).
//!
//! # What the peer cannot make this process do
//!
//! The peer can write every state word. Whatever it writes, this process
//! never hands out two blobs over one slot at once: beside the shared word,
//! each process keeps a private flag per slot, set while one of its blobs
//! holds it, taken before the word's compare-and-swap and refused when set
//! (see [`held`](crate::held)). A peer that rewrites a slot this process
//! holds to `InFlight(me)` and resends the handle gets
//! [`BlobError::HeldHere`]; one that rewrites it to `Free` sees the next
//! allocation pass it by; [`Pool::reclaim`] leaves it alone. The same
//! record holds one bit per party for shared slots: a reference accepted
//! here is not accepted again here whatever the word says again, no blob
//! of this process takes a slot a shared blob of it reads, and dropping a
//! shared blob clears its party's bit only in a word that still holds it
//! at its generation: it never gives up another party's reference, nor
//! frees a slot the peer took from it.
//!
//! Nor can it make this process spin: every compare-and-swap loop on a
//! state word gives up after [`CAS_RETRIES`] attempts (a claim moves on to
//! another slot, an accept or send fails with [`BlobError::Contended`],
//! `reclaim` skips the slot). A correct peer changes a word between our
//! load and our compare-and-swap only rarely, and never many times running.

use core::ops::ControlFlow;
use core::sync::atomic::{AtomicUsize, Ordering as LocalOrdering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use isocall_ringbuf::Region;

use crate::blob::{Blob, BlobHandle, BlobMut, SlotRef};
use crate::error::BlobError;
use crate::held::Held;
use crate::layout::{ClassLayout, PoolConfig};
use crate::party::{MAX_PARTIES, Party};
use crate::raw;
use crate::state::{Side, SlotState, Word, held_code};
use crate::sync::{AtomicU64, Ordering};

/// A blob pool in a region, as seen by one party (one side of a two-sided
/// pool).
///
/// `Sync`: the threads of one process may allocate, send, accept, share
/// and free at once, and so may the other parties' processes.
pub struct Pool<R: Region> {
    /// Which slots this process's blobs hold, shared by every handle this
    /// process has on the region (see [`held`](crate::held)). Declared
    /// before `region`, so dropped first: the record leaves the registry
    /// before the region's memory can be freed and its address reused.
    pub(crate) held: Arc<Held>,
    region: R,
    party: Party,
    /// The low half of a state word saying `party` holds a slot.
    held_code: u64,
    /// Validated copy of the class descriptors, taken once.
    pub(crate) classes: Box<[ClassLayout]>,
    /// Per class, the bitmap word where this process last found a free
    /// slot. Process-local, a hint only.
    cursors: Box<[CachePadded<AtomicUsize>]>,
}

impl<R: Region> std::fmt::Debug for Pool<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("party", &self.party)
            .field("classes", &self.classes.len())
            .field("bytes", &self.region.len())
            .finish()
    }
}

/// One class of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassInfo {
    /// Bytes per slot.
    pub slot_size: usize,
    /// Number of slots.
    pub count: usize,
}

/// A census of one class: every slot counted once, by its state word, in
/// exactly one of `free`, `held_by`, `in_flight`, `shared` and `invalid`
/// (`held` is a view of `held_by`; `references` counts the references in
/// the `shared` slots).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Bytes per slot.
    pub slot_size: usize,
    /// Number of slots.
    pub count: usize,
    /// Free slots.
    pub free: usize,
    /// Slots held by side A and by side B (parties 0 and 1: the first two
    /// of `held_by`).
    pub held: [usize; 2],
    /// Slots sent to side A and to side B, not yet accepted.
    pub in_flight: [usize; 2],
    /// Slots held by each party, by party id.
    pub held_by: [usize; MAX_PARTIES],
    /// Shared slots.
    pub shared: usize,
    /// References each party holds (accepted or not) in shared slots, by
    /// party id.
    pub references: [usize; MAX_PARTIES],
    /// Slots whose state word holds a code no correct party writes.
    pub invalid: usize,
}

impl ClassStats {
    /// Slots not free.
    pub fn used(&self) -> usize {
        self.count - self.free
    }

    /// Whether every slot is counted exactly once (true of every census:
    /// a check for tests and inspectors).
    pub fn is_exact(&self) -> bool {
        let held: usize = self.held_by.iter().sum();
        self.held == [self.held_by[0], self.held_by[1]]
            && self.free + held + self.in_flight[0] + self.in_flight[1] + self.shared + self.invalid
                == self.count
    }
}

/// A census of the pool ([`Pool::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Per class, smallest first.
    pub classes: Vec<ClassStats>,
}

impl PoolStats {
    /// Slots not free, over all classes.
    pub fn used(&self) -> usize {
        self.classes.iter().map(ClassStats::used).sum()
    }

    /// Slots held by `side` or in flight to it, over all classes.
    pub fn owned_by(&self, side: Side) -> usize {
        let i = side_index(side);
        self.classes
            .iter()
            .map(|c| c.held[i] + c.in_flight[i])
            .sum()
    }

    /// Shared slots, over all classes.
    pub fn shared(&self) -> usize {
        self.classes.iter().map(|c| c.shared).sum()
    }

    /// References `party` holds in shared slots, over all classes.
    pub fn references(&self, party: Party) -> usize {
        self.classes.iter().map(|c| c.references[party.id()]).sum()
    }

    /// Everything the pool has of `party`: slots it holds, slots in flight
    /// to it, and its references in shared slots. Zero once a party that
    /// left has given everything up, or was reclaimed: its id may then be
    /// given to a new party (see [`Roster`](crate::Roster)).
    pub fn holds(&self, party: Party) -> usize {
        let p = party.id();
        self.classes
            .iter()
            .map(|c| c.held_by[p] + c.references[p] + c.in_flight.get(p).copied().unwrap_or(0))
            .sum()
    }
}

/// What [`Pool::reclaim`], [`Pool::reclaim_party`] or [`Pool::leave`]
/// gave back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reclaimed {
    /// Slots the dead side held.
    pub held: usize,
    /// Slots sent to the dead side that it never accepted.
    pub in_flight_to_dead: usize,
    /// Slots the dead side sent that the survivor never accepted.
    pub in_flight_from_dead: usize,
    /// References of the party in shared slots, given up (accepted by it
    /// or not).
    pub references: usize,
    /// Shared slots freed because the party's reference was the last.
    pub shared_freed: usize,
    /// Free slots missing from the index (a process died between freeing
    /// or claiming a slot and updating the bitmap), put back.
    pub repaired: usize,
    /// Slots whose state word says the dead side holds them, one side has
    /// them in flight or the party has a reference, but which a blob or
    /// shared blob of this process holds: left alone.
    pub held_here: usize,
    /// Slots whose state word kept changing under the scan (a peer flipping
    /// it, so not a dead one): left alone after [`CAS_RETRIES`] attempts.
    pub contended: usize,
}

impl Reclaimed {
    /// Slots freed (repairs not counted).
    pub fn freed(&self) -> usize {
        self.held + self.in_flight_to_dead + self.in_flight_from_dead + self.shared_freed
    }
}

/// A Release store of a state word. Under loom it is a swap: loom lets a
/// plain store land between the read and the write of a concurrent
/// read-modify-write (tokio-rs/loom#254, a history C11 forbids), which
/// would show the models lost frees that cannot happen.
#[inline]
fn store_release(word: &AtomicU64, v: u64) {
    #[cfg(loom)]
    word.swap(v, Ordering::Release);
    #[cfg(not(loom))]
    word.store(v, Ordering::Release);
}

/// Most compare-and-swap attempts on one state word per operation (the
/// word is the peer's to write too: one that flips it forever must not keep
/// us spinning).
pub const CAS_RETRIES: u32 = 64;

/// Runs a compare-and-swap loop on a peer-writable word, at most
/// [`CAS_RETRIES`] times. Each attempt gets the value last seen and either
/// finishes (`Break`) or returns the value its failed compare-and-swap found
/// (`Continue`). `None`: the word kept changing.
#[inline]
pub(crate) fn bounded_cas<T>(
    mut cur: u64,
    mut attempt: impl FnMut(u64) -> ControlFlow<T, u64>,
) -> Option<T> {
    for _ in 0..CAS_RETRIES {
        match attempt(cur) {
            ControlFlow::Break(done) => return Some(done),
            ControlFlow::Continue(now) => cur = now,
        }
    }
    None
}

pub(crate) fn side_index(s: Side) -> usize {
    match s {
        Side::A => 0,
        Side::B => 1,
    }
}

impl<R: Region> Pool<R> {
    /// Formats a pool in `region` and returns it as seen by `side`. The
    /// region's previous contents are overwritten; the other side then
    /// [`open`](Self::open)s the same region.
    ///
    /// # Errors
    ///
    /// The configuration's errors (see [`PoolConfig::region_size`]);
    /// [`BlobError::RegionTooSmall`] for a region smaller than it needs;
    /// [`BlobError::InUse`] if a pool handle of this process is open on the
    /// region (drop every one first).
    pub fn create(region: R, config: &PoolConfig, side: Side) -> Result<Self, BlobError> {
        Self::create_as(region, config, side.into())
    }

    /// Formats a pool in `region` and returns it as seen by `party`
    /// (usually the publisher, party 0): as [`create`](Self::create), for a
    /// pool of more than two parties, which each
    /// [`open_as`](Self::open_as) it.
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create).
    pub fn create_as(region: R, config: &PoolConfig, party: Party) -> Result<Self, BlobError> {
        let (classes, need) = config.plan()?;
        if region.len() < need {
            return Err(BlobError::RegionTooSmall {
                need,
                len: region.len(),
            });
        }
        // Registered before the format: no handle of this process can be
        // open on the region meanwhile (formatting would free its blobs'
        // slots), and none can open a half-written header and use it.
        let held = raw::format(&region, &classes)?;
        Ok(Self::with(region, party, classes, held))
    }

    /// Opens a pool formatted by the other side (or by this one earlier),
    /// checking its header against the region first.
    ///
    /// # Errors
    ///
    /// The variant naming what is wrong with the header:
    /// [`RegionTooShort`](BlobError::RegionTooShort),
    /// [`BadMagic`](BlobError::BadMagic), [`BadVersion`](BlobError::BadVersion),
    /// [`BadClassCount`](BlobError::BadClassCount),
    /// [`LengthMismatch`](BlobError::LengthMismatch),
    /// [`HeaderSlotSize`](BlobError::HeaderSlotSize),
    /// [`HeaderSlotCount`](BlobError::HeaderSlotCount),
    /// [`PartOutOfBounds`](BlobError::PartOutOfBounds),
    /// [`PartsOverlap`](BlobError::PartsOverlap); and
    /// [`LayoutChanged`](BlobError::LayoutChanged) if this process has the
    /// pool open already and the header now says something else.
    pub fn open(region: R, side: Side) -> Result<Self, BlobError> {
        Self::open_as(region, side.into())
    }

    /// Opens a pool made by another party (or by this one earlier), as
    /// `party`: as [`open`](Self::open), for a pool of more than two
    /// parties (a subscriber opens its publisher's pool with the id the
    /// publisher gave it).
    ///
    /// Nothing in the pool records which parties exist: a party is who the
    /// processes agree it is, and two processes opening the pool as the
    /// same party would each hold that party's references.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_as(region: R, party: Party) -> Result<Self, BlobError> {
        let (classes, held) = raw::open(&region)?;
        Ok(Self::with(region, party, classes, held))
    }

    fn with(region: R, party: Party, classes: Vec<ClassLayout>, held: Arc<Held>) -> Self {
        let cursors = classes
            .iter()
            .map(|_| CachePadded::new(AtomicUsize::new(0)))
            .collect();
        Pool {
            region,
            party,
            held_code: held_code(party),
            classes: classes.into_boxed_slice(),
            cursors,
            held,
        }
    }

    /// The side this handle acts for: [`Side::A`] for party 0,
    /// [`Side::B`] for every other party. Only parties 0 and 1 can use the
    /// two-sided calls ([`send`](BlobMut::send), [`accept`](Self::accept),
    /// [`recall`](Self::recall), [`take_back`](Self::take_back)); the
    /// others get [`BlobError::NotTwoSided`].
    pub fn side(&self) -> Side {
        self.party.side().unwrap_or(Side::B)
    }

    /// The party this handle acts for.
    pub fn party(&self) -> Party {
        self.party
    }

    /// This handle's side, if its party has one (0 or 1): the two-sided
    /// calls need it.
    pub(crate) fn two_sided(&self) -> Result<Side, BlobError> {
        self.party
            .side()
            .ok_or(BlobError::NotTwoSided { party: self.party })
    }

    /// The classes, smallest first.
    pub fn classes(&self) -> impl ExactSizeIterator<Item = ClassInfo> + '_ {
        self.classes.iter().map(|c| ClassInfo {
            slot_size: c.slot_size,
            count: c.count,
        })
    }

    /// The configuration the pool was made with (as read from its header).
    pub fn config(&self) -> PoolConfig {
        self.classes
            .iter()
            .fold(PoolConfig::new(), |c, l| c.class(l.slot_size, l.count))
    }

    /// The largest blob this pool can hold.
    pub fn max_blob(&self) -> usize {
        self.classes.last().map_or(0, |c| c.slot_size)
    }

    /// The region the pool lives in.
    pub fn region(&self) -> &R {
        &self.region
    }

    /// Allocates a blob of `len` bytes from the smallest class that holds
    /// it, to be written in place. Its bytes are whatever the slot held
    /// before. Dropping it frees it.
    ///
    /// # Errors
    ///
    /// [`BlobError::TooLarge`] beyond the largest class;
    /// [`BlobError::Exhausted`] when that class has no free slot (a larger
    /// class is not tried: a full class is a sizing problem worth seeing).
    pub fn alloc(&self, len: usize) -> Result<BlobMut<'_, R>, BlobError> {
        let ci =
            self.classes
                .iter()
                .position(|c| c.slot_size >= len)
                .ok_or(BlobError::TooLarge {
                    len,
                    max: self.max_blob(),
                })?;
        let (slot, generation) = self.claim_free(ci).ok_or(BlobError::Exhausted {
            class: ci,
            slot_size: self.classes[ci].slot_size,
        })?;
        Ok(BlobMut::new(self.slot_ref(ci, slot, generation, len)))
    }

    /// Finds a free slot of class `ci` and claims it for this side: first
    /// through the bitmap's hints, then, if none of them leads to a free
    /// slot, by reading every state word, so that `None` (exhausted) means
    /// no slot was free when the scan passed it.
    fn claim_free(&self, ci: usize) -> Option<(usize, u32)> {
        let c = &self.classes[ci];
        let words = c.words();
        let start = self.cursors[ci].load(LocalOrdering::Relaxed);
        let start = if start < words { start } else { 0 };
        for k in 0..words {
            let mut wi = start + k;
            if wi >= words {
                wi -= words;
            }
            let word = self.bitmap_word(ci, wi);
            let mut bits = word.load(Ordering::Relaxed);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                let mask = 1u64 << b;
                let slot = wi * 64 + b;
                if slot < c.count
                    && let Some(generation) = self.claim(ci, slot, false)
                {
                    if k != 0 {
                        self.cursors[ci].store(wi, LocalOrdering::Relaxed);
                    }
                    return Some((slot, generation));
                }
                // A stale hint (the slot is taken, here or by the peer, or
                // there is no such slot): clear it so that later scans skip
                // it.
                word.fetch_and(!mask, Ordering::Relaxed);
                bits &= !mask;
            }
        }
        // Every hint was stale. A slot freed while a scan cleared its bit
        // is free without a hint; find it the slow way.
        let from = start * 64 % c.count;
        (from..c.count).chain(0..from).find_map(|slot| {
            let generation = self.claim(ci, slot, true)?;
            self.cursors[ci].store(slot / 64, LocalOrdering::Relaxed);
            Some((slot, generation))
        })
    }

    /// `Free(g)` -> `Held(me, g + 1)` by compare-and-swap: the only way a
    /// slot is allocated (a shared slot only becomes free again when its
    /// last reference goes). `None` if the slot is not free, or if a blob of
    /// this process holds it (the peer marked it free behind our back).
    ///
    /// `fresh` reads the state word with a read-modify-write (Acquire),
    /// which sees the latest value: a plain load may show a state older
    /// than a free another process made, and the slow path must not call a
    /// pool exhausted on such a view (loom found this); Acquire, so that a
    /// free it sees orders that free's clear of the held flag before our
    /// claim of it. The fast path's plain load may be stale either way: the
    /// compare-and-swap decides.
    fn claim(&self, ci: usize, slot: usize, fresh: bool) -> Option<u32> {
        let word = self.state_word(ci, slot);
        let cur = if fresh {
            word.fetch_add(0, Ordering::Acquire)
        } else {
            word.load(Ordering::Relaxed)
        };
        if !Word::is_free(cur) {
            return None;
        }
        if !self.held.claim(ci, slot) {
            // Held here: not ours to claim again, nor to clear.
            return None;
        }
        let got = self.claim_from(word, cur);
        if got.is_none() {
            self.held.release(ci, slot);
        }
        got
    }

    /// The claim's compare-and-swap, retried while the slot stays free;
    /// `None` if it is taken, or if its word keeps changing (bounded).
    fn claim_from(&self, word: &AtomicU64, cur: u64) -> Option<u32> {
        bounded_cas(cur, |cur| {
            if !Word::is_free(cur) {
                return ControlFlow::Break(None);
            }
            // The generation wraps by design: a handle 2^32 lives old is
            // as good as new (the state check still guards the slot).
            let generation = ((cur >> 32) as u32).wrapping_add(1);
            // Acquire: pairs with the Release of the free that made it Free
            // (or of the last release of a shared slot), so the previous
            // owners' accesses happen before ours.
            match word.compare_exchange(
                cur,
                (u64::from(generation) << 32) | self.held_code,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => ControlFlow::Break(Some(generation)),
                Err(now) => ControlFlow::Continue(now),
            }
        })
        .flatten()
    }

    pub(crate) fn slot_ref(
        &self,
        ci: usize,
        slot: usize,
        generation: u32,
        len: usize,
    ) -> SlotRef<'_, R> {
        let c = &self.classes[ci];
        SlotRef {
            pool: self,
            class: ci,
            slot,
            generation,
            len,
            offset: c.data_at(slot),
            capacity: c.slot_size,
        }
    }

    /// Checks that `h` names a slot of this pool with a length it can hold.
    fn check(&self, h: &BlobHandle) -> Result<(usize, usize, usize), BlobError> {
        self.check_parts(h.class, h.slot, h.len)
    }

    /// Checks that a handle's class, slot and length name a slot of this
    /// pool with a length it can hold.
    pub(crate) fn check_parts(
        &self,
        class: u32,
        slot: u32,
        len: u32,
    ) -> Result<(usize, usize, usize), BlobError> {
        let (ci, slot, len) = (class as usize, slot as usize, len as usize);
        let c = self.classes.get(ci).ok_or(BlobError::NoSuchClass {
            class: ci,
            classes: self.classes.len(),
        })?;
        if slot >= c.count {
            return Err(BlobError::NoSuchSlot {
                class: ci,
                slot,
                count: c.count,
            });
        }
        if len > c.slot_size {
            return Err(BlobError::LengthBeyondSlot {
                class: ci,
                len,
                slot_size: c.slot_size,
            });
        }
        Ok((ci, slot, len))
    }

    /// Swaps the state of slot `slot` of class `ci` from one of `from` to
    /// `to`, keeping generation `generation`, which the word must hold;
    /// [`BlobError::Contended`] if the word keeps changing under it.
    pub(crate) fn transition(
        &self,
        (ci, slot): (usize, usize),
        generation: u32,
        from: &[SlotState],
        to: SlotState,
        expected: &'static str,
        success: Ordering,
    ) -> Result<(), BlobError> {
        let word = self.state_word(ci, slot);
        // The first look is a plain load, which may show a state older than
        // the one the handle was sent in (a handle that came by a way that
        // orders nothing). A refusal is only ever made on a value read by a
        // read-modify-write (the latest): the first refusal reads again.
        let mut fresh = false;
        bounded_cas(word.load(Ordering::Relaxed), |cur| {
            let w = Word::decode(cur);
            let refusal = if w.generation != generation {
                Some(BlobError::Stale {
                    class: ci,
                    slot,
                    handle: generation,
                    now: w.generation,
                })
            } else if !from.contains(&w.state) {
                Some(BlobError::WrongState {
                    class: ci,
                    slot,
                    found: w.state,
                    expected,
                })
            } else {
                None
            };
            if let Some(e) = refusal {
                if fresh {
                    return ControlFlow::Break(Err(e));
                }
                fresh = true;
                return ControlFlow::Continue(word.fetch_add(0, Ordering::Relaxed));
            }
            fresh = true;
            match word.compare_exchange(
                cur,
                Word::encode(generation, to),
                success,
                Ordering::Relaxed,
            ) {
                Ok(_) => ControlFlow::Break(Ok(())),
                Err(now) => ControlFlow::Continue(now),
            }
        })
        .unwrap_or(Err(BlobError::Contended { class: ci, slot }))
    }

    /// Makes the slot `h` names a blob of this side: marks it held in this
    /// process, then swaps its state from one of `from` to `Held(me)`
    /// (Acquire: pairs with the Release that put it in that state).
    fn acquire(
        &self,
        h: &BlobHandle,
        from: &[SlotState],
        expected: &'static str,
    ) -> Result<BlobMut<'_, R>, BlobError> {
        let (ci, slot, len) = self.check(h)?;
        if !self.held.claim(ci, slot) {
            return Err(BlobError::HeldHere { class: ci, slot });
        }
        let to = SlotState::held(self.party);
        match self.transition(
            (ci, slot),
            h.generation,
            from,
            to,
            expected,
            Ordering::Acquire,
        ) {
            Ok(()) => Ok(BlobMut::new(self.slot_ref(ci, slot, h.generation, len))),
            Err(e) => {
                self.held.release(ci, slot);
                Err(e)
            }
        }
    }

    /// Accepts a blob the peer sent, to read in place. Dropping it frees it.
    ///
    /// # Errors
    ///
    /// [`BlobError::NoSuchClass`], [`NoSuchSlot`](BlobError::NoSuchSlot) or
    /// [`LengthBeyondSlot`](BlobError::LengthBeyondSlot) for a handle naming
    /// no slot of this pool, [`BlobError::Stale`] for an earlier life of the slot,
    /// [`BlobError::WrongState`] for a blob not in flight to this side
    /// (accepted already, or never sent); [`BlobError::HeldHere`] if a blob
    /// of this process holds the slot already (the peer rewrote its state
    /// word); [`BlobError::Contended`] if the peer keeps changing the word;
    /// [`BlobError::NotTwoSided`] for a party other than 0 and 1.
    pub fn accept(&self, h: &BlobHandle) -> Result<Blob<'_, R>, BlobError> {
        self.accept_mut(h).map(BlobMut::freeze)
    }

    /// Accepts a blob the peer sent, to read and answer in place (the
    /// caller-allocated in/out buffer): write into it and send it back.
    ///
    /// # Errors
    ///
    /// As [`accept`](Self::accept).
    pub fn accept_mut(&self, h: &BlobHandle) -> Result<BlobMut<'_, R>, BlobError> {
        let side = self.two_sided()?;
        self.acquire(h, &[SlotState::InFlight(side)], "in flight to this side")
    }

    /// Takes back a blob this side sent that the peer has not accepted (a
    /// message that could not be delivered).
    ///
    /// # Errors
    ///
    /// As [`accept`](Self::accept), for a blob not in flight to the peer.
    pub fn recall(&self, h: &BlobHandle) -> Result<BlobMut<'_, R>, BlobError> {
        let from = [SlotState::InFlight(self.two_sided()?.peer())];
        self.acquire(h, &from, "in flight to the peer")
    }

    /// Takes back a blob this side sent to a peer that has since died,
    /// whether the peer accepted it or not (in flight to the peer, or held
    /// by it): to send its bytes again elsewhere, e.g. when a call is
    /// retried on a restarted server. Its bytes are what the peer left.
    ///
    /// Call it only once the peer is known dead: taking a blob from a live
    /// peer that holds it pulls it from under its feet.
    ///
    /// # Errors
    ///
    /// As [`accept`](Self::accept), for a blob neither in flight to the
    /// peer nor held by it.
    pub fn take_back(&self, h: &BlobHandle) -> Result<BlobMut<'_, R>, BlobError> {
        let peer = self.two_sided()?.peer();
        let from = [SlotState::InFlight(peer), SlotState::Held(peer)];
        self.acquire(h, &from, "in flight to the peer or held by it")
    }

    /// `Held(me)` -> `InFlight(peer)`, Release: pairs with the Acquire of
    /// the peer's `accept`. The blob is given up whatever comes of it, so
    /// the slot's held flag is cleared first (before the Release, so that
    /// whoever accepts it finds the flag clear).
    /// The blob checked [`two_sided`](Self::two_sided) before it gave
    /// itself up (it is freed if that fails).
    pub(crate) fn send(&self, h: &BlobHandle) -> Result<(), BlobError> {
        let side = self.two_sided()?;
        let (ci, slot, _) = self.check(h)?;
        self.held.release(ci, slot);
        let to = SlotState::InFlight(side.peer());
        let from = [SlotState::Held(side)];
        self.transition(
            (ci, slot),
            h.generation,
            &from,
            to,
            "held by this side",
            Ordering::Release,
        )
    }

    /// `Held(me, g)` -> `Free(g)` (Release: pairs with the next claim's
    /// Acquire), then sets the slot's hint bit.
    ///
    /// The held flag is cleared before the store: were it after, a claim in
    /// this process could take the free slot and then find the flag still
    /// set and pass it by, leaving it `Held` by no one.
    ///
    /// A plain store, not a compare-and-swap: only the blob that holds the
    /// slot frees it, and nothing else changes a held slot's word except a
    /// hostile peer (which may write any word anyway; the held flags keep
    /// this process from handing out one slot twice) or a `reclaim` wrongly
    /// run while this side lives. With the claim's hint left set, an
    /// alloc+free pair then costs one locked instruction on the state word
    /// and one on the process-local flag.
    pub(crate) fn free(&self, class: usize, slot: usize, generation: u32) {
        self.held.release(class, slot);
        store_release(
            self.state_word(class, slot),
            Word::encode(generation, SlotState::Free),
        );
        self.mark_free(class, slot);
    }

    /// Sets the slot's hint bit, unless it is set already (a claimed slot
    /// keeps its bit until a scan finds it taken, so a slot allocated and
    /// freed by one thread costs no bitmap write at all).
    pub(crate) fn mark_free(&self, ci: usize, slot: usize) {
        let mask = 1u64 << (slot % 64);
        let word = self.bitmap_word(ci, slot / 64);
        if word.load(Ordering::Relaxed) & mask == 0 {
            word.fetch_or(mask, Ordering::Relaxed);
        }
    }

    /// A census of every class: each slot's state word read once. Exact
    /// when no side is changing the pool; a moving pool gives a snapshot in
    /// which each slot is counted exactly once.
    pub fn stats(&self) -> PoolStats {
        count_states(
            |ci, slot| self.state_word(ci, slot).load(Ordering::Relaxed),
            &self.classes,
        )
    }

    /// The state of one slot (for tests and the inspector), or `None` if
    /// there is no such slot.
    pub fn slot_state(&self, class: usize, slot: usize) -> Option<(SlotState, u32)> {
        self.classes.get(class).filter(|c| slot < c.count)?;
        let w = Word::decode(self.state_word(class, slot).load(Ordering::Relaxed));
        Some((w.state, w.generation))
    }
}

/// A census of the pool in `region` without opening it, with loads only: it
/// works on a read-only mapping (an inspector's view of a live segment),
/// where a [`Pool`], which writes, cannot be built. The header is checked
/// exactly as [`Pool::open`] checks it; then each slot's state word is read
/// once, as [`Pool::stats`] does.
///
/// A pool, which writes, cannot be built over a read-only region:
///
/// ```compile_fail
/// fn inspect(view: isocall_ringbuf::ReadOnlyRegion) {
///     let _ = isocall_blob::Pool::open(view, isocall_blob::Side::A);
/// }
/// ```
///
/// # Errors
///
/// As [`Pool::open`]: the header does not describe a pool that fits the
/// region.
///
/// The view is an inspector's read-only mapping, which no blob of this
/// process can alias, so this is safe; [`census_region`](crate::census_region)
/// takes any readable region.
#[cfg(not(loom))]
pub fn census(region: &isocall_ringbuf::ReadOnlyRegion) -> Result<PoolStats, BlobError> {
    raw::census_read_only(region)
}

/// Counts the slots of `classes` by their state words, one load each
/// (`load(class, slot)` loads one, `Relaxed`).
pub(crate) fn count_states(
    load: impl Fn(usize, usize) -> u64,
    classes: &[ClassLayout],
) -> PoolStats {
    let classes = classes
        .iter()
        .enumerate()
        .map(|(ci, c)| {
            let mut s = ClassStats {
                slot_size: c.slot_size,
                count: c.count,
                ..ClassStats::default()
            };
            for slot in 0..c.count {
                match Word::decode(load(ci, slot)).state {
                    SlotState::Free => s.free += 1,
                    SlotState::Held(x) => s.held_by[side_index(x)] += 1,
                    SlotState::HeldBy(p) => s.held_by[p.id()] += 1,
                    SlotState::InFlight(x) => s.in_flight[side_index(x)] += 1,
                    SlotState::Shared(holders) => {
                        s.shared += 1;
                        for p in holders.iter() {
                            s.references[p.id()] += 1;
                        }
                    }
                    SlotState::Invalid(_) => s.invalid += 1,
                }
            }
            s.held = [s.held_by[0], s.held_by[1]];
            debug_assert!(s.is_exact());
            s
        })
        .collect();
    PoolStats { classes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_that_keeps_changing_ends_the_loop() {
        let mut attempts = 0;
        let got: Option<()> = bounded_cas(0, |cur| {
            attempts += 1;
            ControlFlow::Continue(cur + 1)
        });
        assert_eq!((got, attempts), (None, CAS_RETRIES));
        let mut n = 0;
        let got = bounded_cas(0, |cur| {
            n += 1;
            if cur == 3 {
                ControlFlow::Break(cur)
            } else {
                ControlFlow::Continue(cur + 1)
            }
        });
        assert_eq!((got, n), (Some(3), 4));
    }
}
