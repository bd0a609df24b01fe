//! This process's record of the slots its blobs hold.
//!
//! A slot's state word is the authority between the two processes, but the
//! peer can write it too: rewrite a slot this process holds from `Held(me)`
//! back to `InFlight(me)` and resend the handle, or to `Free` and let this
//! process's next allocation claim it again. Going by the word alone, the
//! pool would then hand out a second blob over bytes a live blob of this
//! process already has: two `&mut [u8]` over the same bytes, undefined
//! behaviour reached from safe code.
//!
//! So each process keeps its own record, which the peer cannot reach: one
//! flag per slot, set while a blob of this process holds the slot. Every
//! pool handle this process opens on one region shares it (a process-global
//! registry keyed by the region's base address, holding it weakly; see the
//! [`Region`](isocall_ringbuf::Region) contract), both sides' handles
//! included: a slot is held by one side at a time, and a blob of side A and
//! one of side B over the same bytes would alias just the same.
//!
//! The protocol, for every way a blob comes to be (claim, accept, recall,
//! take back): set the slot's flag with a swap *before* the state word's
//! compare-and-swap; a flag found set means a blob of this process holds the
//! slot already, and the slot is refused (an allocation moves on to another
//! slot; an accept fails with [`HeldHere`](crate::BlobError::HeldHere)); a
//! compare-and-swap that fails clears the flag again. Every way a blob ends
//! (free, send) clears the flag *before* the state word's store or
//! compare-and-swap, so that whoever finds the word free or in flight to it
//! finds the flag clear too (the word's Release store orders the clear
//! before that finding). The cost on the hot path is one process-local
//! swap per allocation and one plain store per free.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use crate::error::BlobError;
use crate::layout::ClassLayout;
use crate::sync::{AtomicBool, Ordering};

/// The flags of one pool region in this process.
pub(crate) struct Held {
    /// Base address of the region (the registry key).
    base: usize,
    /// The layout the flags were made for: every handle sharing them must
    /// have read the same one.
    classes: Box<[ClassLayout]>,
    /// Per class, per slot: whether a blob of this process holds it.
    flags: Box<[Box<[AtomicBool]>]>,
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
                .map(|c| (0..c.count).map(|_| AtomicBool::new(false)).collect())
                .collect(),
        }
    }

    /// The record of the region at `base` for a handle that read `classes`
    /// from its header: the one this process has already, or a new one.
    ///
    /// # Errors
    ///
    /// [`BlobError::LayoutChanged`] if this process holds a record of the
    /// region made for another layout (its header was rewritten since).
    pub(crate) fn open(base: usize, classes: &[ClassLayout]) -> Result<Arc<Held>, BlobError> {
        let mut map = registry();
        if let Some(held) = map.get(&base).and_then(Weak::upgrade) {
            if *held.classes != *classes {
                return Err(BlobError::LayoutChanged);
            }
            return Ok(held);
        }
        let held = Arc::new(Held::new(base, classes));
        map.insert(base, Arc::downgrade(&held));
        Ok(held)
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

    /// Marks slot `slot` of class `class` held by a blob of this process;
    /// false if one holds it already. Acquire: pairs with the Release of
    /// the clear in [`release`](Self::release).
    #[inline]
    pub(crate) fn claim(&self, class: usize, slot: usize) -> bool {
        !self.flags[class][slot].swap(true, Ordering::Acquire)
    }

    /// Marks the slot no longer held here (its blob is freed or sent, or a
    /// claim of it failed). Release: pairs with the next claim's Acquire.
    ///
    /// A plain store; under loom a swap, because loom lets a plain store
    /// land between the read and the write of a concurrent swap
    /// (tokio-rs/loom#254, a history C11 forbids), which would leave the
    /// flag set with no holder (as for the state word's `store_release`).
    #[inline]
    pub(crate) fn release(&self, class: usize, slot: usize) {
        let flag = &self.flags[class][slot];
        #[cfg(loom)]
        flag.swap(false, Ordering::Release);
        #[cfg(not(loom))]
        flag.store(false, Ordering::Release);
    }

    /// Whether a blob of this process holds the slot now.
    #[inline]
    pub(crate) fn is_held(&self, class: usize, slot: usize) -> bool {
        self.flags[class][slot].load(Ordering::Acquire)
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
