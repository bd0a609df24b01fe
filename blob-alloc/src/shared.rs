//! Shared slots: one blob, written once, read in place by several parties.
//!
//! A party that holds a blob alone (usually the publisher, party 0) turns
//! it into a shared one with [`BlobMut::share`](crate::BlobMut::share)
//! (or [`share_keep`](crate::BlobMut::share_keep), keeping a reference for
//! itself), naming the parties that get a reference; it sends each of them
//! the returned [`SharedHandle`]. Each turns the handle into a read-only
//! [`SharedBlob`] with [`Pool::accept_shared`], reads the bytes where they
//! are, and drops it, which gives its reference up. The slot is free again
//! when the last reference goes. See [`pool`](crate::pool) for the protocol.

use core::ops::{ControlFlow, Deref};

use bytemuck::{Pod, Zeroable};
use isocall_ringbuf::{Access, Region};

use crate::blob::{SlotRef, end};
use crate::error::BlobError;
use crate::party::{Parties, Party};
use crate::pool::{Pool, bounded_cas};
use crate::state::{SlotState, Word};
use crate::sync::{AtomicU64, Ordering};

/// Names a shared blob: what a publisher sends each party it shared the
/// blob with. Plain data, like a [`BlobHandle`](crate::BlobHandle) (and the
/// same 16 bytes on the wire): every use is checked against the slot's
/// state word (range, generation, that the slot is shared to the party
/// using it), so a forged or stale handle is an error, never a wrong blob.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SharedHandle {
    /// Size class index.
    pub class: u32,
    /// Slot index within the class.
    pub slot: u32,
    /// Generation of the slot when the blob was allocated.
    pub generation: u32,
    /// Length of the blob in bytes (the publisher's word, checked against
    /// the slot's size).
    pub len: u32,
}

impl SharedHandle {
    /// The handle's 16 bytes, to put in a message.
    pub fn to_bytes(&self) -> [u8; 16] {
        bytemuck::cast(*self)
    }

    /// A handle read from a message (any alignment), or `None` if `bytes`
    /// is not 16 bytes long. Any 16 bytes make a handle; using it checks it.
    pub fn from_bytes(bytes: &[u8]) -> Option<SharedHandle> {
        (bytes.len() == 16).then(|| bytemuck::pod_read_unaligned(bytes))
    }
}

const _: () = {
    assert!(std::mem::size_of::<SharedHandle>() == 16);
    assert!(std::mem::align_of::<SharedHandle>() == 4);
};

/// One party's reference to a shared blob, to read in place. Dropping it
/// gives the reference up; the last one dropped (of every party) frees the
/// slot. Not `Clone`: a party has one reference per blob, and this process
/// accepts it once.
pub struct SharedBlob<'p, R: Region> {
    s: SlotRef<'p, R>,
    /// This party reads the whole slot while it holds the reference; the
    /// access ends before the release's compare-and-swap.
    access: Access,
}

impl<'p, R: Region> SharedBlob<'p, R> {
    /// The guard of a reference of the pool's party that this process's
    /// record has marked taken (see [`held`](crate::held)).
    pub(crate) fn new(s: SlotRef<'p, R>) -> Self {
        debug_assert!(s.len <= s.capacity);
        let access = s.pool.region().access(s.offset, s.capacity, false);
        SharedBlob { s, access }
    }

    /// The handle naming this blob (its identity: what the publisher sent).
    pub fn handle(&self) -> SharedHandle {
        self.s.shared_handle()
    }

    /// The party whose reference this is.
    pub fn party(&self) -> Party {
        self.s.pool.party()
    }
}

impl<R: Region> Deref for SharedBlob<'_, R> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.s.bytes()
    }
}

impl<R: Region> Drop for SharedBlob<'_, R> {
    fn drop(&mut self) {
        let s = end(self.s, &mut self.access);
        s.pool.release_shared(s.class, s.slot, s.generation);
    }
}

impl<R: Region> std::fmt::Debug for SharedBlob<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBlob")
            .field("handle", &self.handle())
            .field("party", &self.party())
            .finish()
    }
}

/// Shares the blob holding `s` (its access `access`, ended here) with
/// `to`. The caller gave the blob up without running its drop.
pub(crate) fn share<R: Region>(
    s: SlotRef<'_, R>,
    access: &mut Access,
    to: Parties,
) -> Result<SharedHandle, BlobError> {
    let s = end(s, access);
    s.pool.share(&s, to, false)?;
    Ok(s.shared_handle())
}

/// Shares the blob holding `s` with `others` and its own party, whose
/// reference it returns. The caller gave the blob up without running its
/// drop.
pub(crate) fn share_keep<'p, R: Region>(
    s: SlotRef<'p, R>,
    access: &mut Access,
    others: Parties,
) -> Result<(SharedBlob<'p, R>, SharedHandle), BlobError> {
    let s = end(s, access);
    s.pool.share(&s, others, true)?;
    Ok((SharedBlob::new(s), s.shared_handle()))
}

/// What [`clear_reference`] did.
pub(crate) enum Clear {
    /// The reference is given up; `freed` if it was the last (the slot is
    /// `Free` now).
    Done { freed: bool },
    /// The word was not `cur` any more: it is this.
    Changed(u64),
    /// `cur` holds no reference of the party (at that generation).
    NotHeld,
}

/// One compare-and-swap clearing `party`'s bit in a shared word `cur`
/// (only at `generation`, if given), writing `Free` if it was the last.
/// AcqRel: the Release puts this holder's reads before whatever reads the
/// word next (the next release, a reclaim, the claim after the last); the
/// Acquire puts every earlier holder's reads before this one's write, so
/// the last release, which frees the slot, comes after every read. (Release
/// alone would do, through the release sequence each read-modify-write
/// extends, and the loom models pass with it; Relaxed fails them.)
pub(crate) fn clear_reference(
    word: &AtomicU64,
    cur: u64,
    party: Party,
    generation: Option<u32>,
) -> Clear {
    let w = Word::decode(cur);
    let SlotState::Shared(holders) = w.state else {
        return Clear::NotHeld;
    };
    if !holders.contains(party) || generation.is_some_and(|g| g != w.generation) {
        return Clear::NotHeld;
    }
    let rest = holders.without(party);
    let new = if rest.is_empty() {
        SlotState::Free
    } else {
        SlotState::Shared(rest)
    };
    match word.compare_exchange(
        cur,
        Word::encode(w.generation, new),
        Ordering::AcqRel,
        Ordering::Relaxed,
    ) {
        Ok(_) => Clear::Done {
            freed: rest.is_empty(),
        },
        Err(now) => Clear::Changed(now),
    }
}

impl<R: Region> Pool<R> {
    /// Accepts a reference of this handle's party to a shared blob, to
    /// read in place. Dropping the returned blob gives the reference up.
    ///
    /// It writes no shared word: it marks the reference taken in this
    /// process's record, then checks (Acquire: pairs with the share's
    /// Release) that the slot is shared at the handle's generation with
    /// this party among its holders.
    ///
    /// # Errors
    ///
    /// [`BlobError::NoSuchClass`], [`NoSuchSlot`](BlobError::NoSuchSlot) or
    /// [`LengthBeyondSlot`](BlobError::LengthBeyondSlot) for a handle naming
    /// no slot of this pool; [`BlobError::Stale`] for an earlier life of
    /// the slot; [`BlobError::WrongState`] for a slot not shared to this
    /// party (never, or its reference was given up: dropped, or reclaimed);
    /// [`BlobError::HeldHere`] if a shared blob of this party in this
    /// process holds the reference already (accepted twice, or a peer
    /// rewrote the word), or a blob of this process holds the slot alone.
    pub fn accept_shared(&self, h: &SharedHandle) -> Result<SharedBlob<'_, R>, BlobError> {
        let (ci, slot, len) = self.check_parts(h.class, h.slot, h.len)?;
        let me = self.party();
        if !self.held.claim_ref(ci, slot, me) {
            return Err(BlobError::HeldHere { class: ci, slot });
        }
        let word = self.state_word(ci, slot);
        let check = |cur: u64| {
            let w = Word::decode(cur);
            if w.generation != h.generation {
                Err(BlobError::Stale {
                    class: ci,
                    slot,
                    handle: h.generation,
                    now: w.generation,
                })
            } else if matches!(w.state, SlotState::Shared(holders) if holders.contains(me)) {
                Ok(())
            } else {
                Err(BlobError::WrongState {
                    class: ci,
                    slot,
                    found: w.state,
                    expected: "shared to this party",
                })
            }
        };
        // A load may show a state older than the share (a handle that came
        // by a way that orders nothing): a refusal is made only on a value
        // read by a read-modify-write (the latest). Acquire either way: the
        // holders' releases since the share are read-modify-writes, which
        // carry its Release on.
        let got = check(word.load(Ordering::Acquire))
            .or_else(|_| check(word.fetch_add(0, Ordering::Acquire)));
        match got {
            Ok(()) => Ok(SharedBlob::new(self.slot_ref(ci, slot, h.generation, len))),
            Err(e) => {
                self.held.release_ref(ci, slot, me);
                Err(e)
            }
        }
    }

    /// `Held(me, g)` -> `Shared(to, g)` (with this party among the holders
    /// if `keep`), Release: pairs with the Acquire of each holder's
    /// `accept_shared`. The blob is given up whatever comes of it, so this
    /// process's record is cleared first (or, if `keep`, turned into this
    /// party's reference), before the Release, as for a send.
    pub(crate) fn share(
        &self,
        s: &SlotRef<'_, R>,
        to: Parties,
        keep: bool,
    ) -> Result<(), BlobError> {
        let me = self.party();
        let (ci, slot) = (s.class, s.slot);
        let holders = if keep { to.with(me) } else { to };
        debug_assert!(!holders.is_empty());
        self.held.share(ci, slot, keep.then_some(me));
        let done = self.transition(
            (ci, slot),
            s.generation,
            &[SlotState::held(me)],
            SlotState::Shared(holders),
            "held by this party",
            Ordering::Release,
        );
        if done.is_err() && keep {
            self.held.release_ref(ci, slot, me);
        }
        done
    }

    /// Gives up this party's reference to a shared slot (its blob's drop):
    /// one bounded compare-and-swap clearing its bit at the blob's
    /// generation; if it was the last, the slot is free, and its hint is
    /// set. This process's record is cleared after the compare-and-swap
    /// (see [`held`](crate::held)), whatever came of it.
    ///
    /// A word that no longer holds the reference (a peer rewrote it, or a
    /// reclaim judged this party dead) is left alone: this party never
    /// clears another's reference, nor frees a slot it holds no reference
    /// to. A word that keeps changing keeps the reference (a leak, until a
    /// reclaim of this party) rather than spin.
    pub(crate) fn release_shared(&self, ci: usize, slot: usize, generation: u32) {
        let me = self.party();
        let word = self.state_word(ci, slot);
        // As in `accept_shared`: give up only on a value read by a
        // read-modify-write.
        let mut fresh = false;
        let done = bounded_cas(word.load(Ordering::Relaxed), |cur| {
            match clear_reference(word, cur, me, Some(generation)) {
                Clear::Done { freed } => ControlFlow::Break(freed),
                Clear::Changed(now) => {
                    fresh = true;
                    ControlFlow::Continue(now)
                }
                Clear::NotHeld if fresh => ControlFlow::Break(false),
                Clear::NotHeld => {
                    fresh = true;
                    ControlFlow::Continue(word.fetch_add(0, Ordering::Relaxed))
                }
            }
        });
        self.held.release_ref(ci, slot, me);
        if done == Some(true) {
            self.mark_free(ci, slot);
        }
    }
}
