//! This process's record of the slots its blobs and shared blobs hold.
//!
//! A slot's state word is the authority between the processes, but the
//! peers can write it too: rewrite a slot this process holds from `Held(me)`
//! back to `InFlight(me)` and resend the handle, or to `Free` and let this
//! process's next allocation claim it again, or to `Shared` with this
//! process's party in it again after its reference was accepted. Going by
//! the word alone, the pool would then hand out a second blob over bytes a
//! live blob of this process already has: two `&mut [u8]` over the same
//! bytes (or a `&mut` beside a `&`), undefined behaviour reached from safe
//! code.
//!
//! So each process keeps its own record, which no peer can reach: one
//! 32-bit word per slot, with bit 31 set while a [`BlobMut`](crate::BlobMut)
//! or [`Blob`](crate::Blob) of this process holds the slot alone, and bit
//! `p` set while a [`SharedBlob`](crate::SharedBlob) of party `p` holds a
//! reference to it (so a record fits the 31 parties). Every pool handle
//! this process opens on one region shares it (a process-global registry
//! keyed by the region's base address, holding it weakly; see the
//! [`Region`](isocall_ringbuf::Region) contract), every party's handles
//! included: a blob of one party and one of another over the same bytes
//! would alias just the same.
//!
//! The protocol, for every way a blob comes to be (claim, accept, recall,
//! take back): set the exclusive bit, by a compare-and-swap from an empty
//! record, *before* the state word's compare-and-swap; a record found not
//! empty means a blob or shared blob of this process holds the slot, and
//! the slot is refused (an allocation moves on to another slot; an accept
//! fails with [`HeldHere`](crate::BlobError::HeldHere)); a state word
//! compare-and-swap that fails clears the record again. Every way a blob
//! ends (free, send, share) clears the record *before* the state word's
//! store or compare-and-swap, so that whoever finds the word free, in
//! flight or shared to it finds the record clear too (the word's Release
//! orders the clear before that finding). While the exclusive bit is set
//! nobody else in this process writes the record, so its holder clears it
//! (or, sharing and keeping a reference, turns it into its party's bit)
//! with a plain store.
//!
//! A shared blob of party `p` sets bit `p` only if neither the exclusive
//! bit nor bit `p` is set (a compare-and-swap loop on this private word:
//! only this process's threads contend for it), before it checks the state
//! word; it clears the bit *after* the compare-and-swap that gives up its
//! reference, so that no second shared blob of `p` over the slot can be
//! accepted here in between. A reclaim of party `p`'s references run in
//! this process takes bit `p` the same way first, so it never clears a
//! reference a shared blob of this process holds.
//!
//! The cost on the hot path is what it was with one flag per slot: one
//! process-local locked instruction per allocation (a compare-and-swap
//! where the flag took a swap) and one plain store per free.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use crate::error::BlobError;
use crate::layout::ClassLayout;
use crate::party::Party;
use crate::sync::{AtomicU32, Ordering};

/// The record's bit for a slot held by a blob of this process alone.
const EXCLUSIVE: u32 = 1 << 31;

/// The flags of one pool region in this process.
pub(crate) struct Held {
    /// Base address of the region (the registry key).
    base: usize,
    /// The layout the flags were made for: every handle sharing them must
    /// have read the same one.
    classes: Box<[ClassLayout]>,
    /// Per class, per slot: bit 31 while a blob of this process holds it
    /// alone, bit `p` while a shared blob of party `p` of this process
    /// holds a reference to it (module doc).
    flags: Box<[Box<[AtomicU32]>]>,
}

/// Every pool region with a live handle in this process. A plain `std`
/// mutex in every build, loom's too: loom does not model it, and nothing
/// inside its critical sections is a loom scheduling point, so a model
/// never switches threads while it is held. Only opening and dropping a
/// pool handle take it.
static REGISTRY: LazyLock<Mutex<HashMap<usize, Weak<Held>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn registry() -> std::sync::MutexGuard<'static, HashMap<usize, Weak<Held>>> {
    // A panic while the lock was held left the map as it was before or after
    // one insert or remove: still a valid map.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Held {
    fn new(base: usize, classes: &[ClassLayout]) -> Held {
        Held {
            base,
            classes: classes.into(),
            flags: classes
                .iter()
                .map(|c| (0..c.count).map(|_| AtomicU32::new(0)).collect())
                .collect(),
        }
    }

    /// The record of the region at `base` for a handle that reads its
    /// layout with `read`: the one this process has already, or a new one.
    /// `read` runs while the registry is locked (so no handle of this
    /// process is opened, created or dropped on the region meanwhile) and
    /// is given the class count of the layout this process has open on the
    /// region, if any.
    ///
    /// # Errors
    ///
    /// `read`'s; [`BlobError::LayoutChanged`] if this process holds a
    /// record of the region made for another layout (its header was
    /// rewritten since).
    pub(crate) fn open_with(
        base: usize,
        read: impl FnOnce(Option<usize>) -> Result<Vec<ClassLayout>, BlobError>,
    ) -> Result<(Vec<ClassLayout>, Arc<Held>), BlobError> {
        let mut map = registry();
        let open = map.get(&base).and_then(Weak::upgrade);
        let classes = read(open.as_ref().map(|h| h.classes.len()))?;
        if let Some(held) = open {
            if *held.classes != *classes {
                return Err(BlobError::LayoutChanged);
            }
            return Ok((classes, held));
        }
        let held = Arc::new(Held::new(base, &classes));
        map.insert(base, Arc::downgrade(&held));
        Ok((classes, held))
    }

    /// A new record for a pool about to be formatted at `base`.
    ///
    /// # Errors
    ///
    /// [`BlobError::InUse`] if a pool handle of this process is open on the
    /// region: formatting would free the slots its blobs hold.
    pub(crate) fn create(base: usize, classes: &[ClassLayout]) -> Result<Arc<Held>, BlobError> {
        let mut map = registry();
        if map.get(&base).is_some_and(|w| w.strong_count() > 0) {
            return Err(BlobError::InUse);
        }
        let held = Arc::new(Held::new(base, classes));
        map.insert(base, Arc::downgrade(&held));
        Ok(held)
    }

    /// Marks slot `slot` of class `class` held by a blob of this process
    /// alone; false if a blob or shared blob of this process holds it
    /// already. Acquire: pairs with the Release of the clears below.
    #[inline]
    pub(crate) fn claim(&self, class: usize, slot: usize) -> bool {
        self.flags[class][slot]
            .compare_exchange(0, EXCLUSIVE, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Marks the slot no longer held here (its blob is freed or sent, or a
    /// claim of it failed). Only the holder of the exclusive bit calls it.
    /// Release: pairs with the next claim's Acquire.
    #[inline]
    pub(crate) fn release(&self, class: usize, slot: usize) {
        self.set_by_holder(class, slot, 0);
    }

    /// The blob holding the slot alone shares it: the record becomes
    /// `party`'s reference if the blob's party keeps one, else empty. Only
    /// the holder of the exclusive bit calls it. Release: as `release`.
    #[inline]
    pub(crate) fn share(&self, class: usize, slot: usize, keep: Option<Party>) {
        self.set_by_holder(class, slot, keep.map_or(0, Party::bit));
    }

    /// A plain store; under loom a swap, because loom lets a plain store
    /// land between the read and the write of a concurrent compare-and-swap
    /// (tokio-rs/loom#254, a history C11 forbids), which would leave the
    /// record set with no holder (as for the state word's `store_release`).
    /// Only the exclusive bit's holder writes while it is set (the module
    /// doc), so nothing is lost by not reading.
    #[inline]
    fn set_by_holder(&self, class: usize, slot: usize, to: u32) {
        let flag = &self.flags[class][slot];
        debug_assert!(flag.load(Ordering::Relaxed) & EXCLUSIVE != 0);
        #[cfg(loom)]
        flag.swap(to, Ordering::Release);
        #[cfg(not(loom))]
        flag.store(to, Ordering::Release);
    }

    /// Marks the slot as holding a reference of `party` here; false if a
    /// blob of this process holds it alone or a shared blob of `party`
    /// holds a reference already. Acquire: pairs with the Release of
    /// `release_ref` (and of `release`).
    ///
    /// A compare-and-swap loop, unbounded: the record is this process's
    /// own, and each failure means another thread of it changed the record
    /// (lock-free), never a peer.
    pub(crate) fn claim_ref(&self, class: usize, slot: usize, party: Party) -> bool {
        let flag = &self.flags[class][slot];
        let mut cur = flag.load(Ordering::Relaxed);
        loop {
            if cur & (EXCLUSIVE | party.bit()) != 0 {
                return false;
            }
            match flag.compare_exchange_weak(
                cur,
                cur | party.bit(),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Marks `party`'s reference to the slot no longer held here. Release:
    /// pairs with the next claim's Acquire.
    pub(crate) fn release_ref(&self, class: usize, slot: usize, party: Party) {
        let old = self.flags[class][slot].fetch_and(!party.bit(), Ordering::Release);
        debug_assert!(old & party.bit() != 0 && old & EXCLUSIVE == 0);
    }

    /// Whether a blob or shared blob of this process holds the slot now.
    #[inline]
    pub(crate) fn is_held(&self, class: usize, slot: usize) -> bool {
        self.flags[class][slot].load(Ordering::Acquire) != 0
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut map = registry();
        // Only our own entry: a handle opened since our last one dropped may
        // have put a new record in its place.
        if map
            .get(&self.base)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), self))
        {
            map.remove(&self.base);
        }
    }
}
