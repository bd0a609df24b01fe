//! The shared blobs a publisher keeps a reference to, for as long as a
//! backlog or the history still names them.
//!
//! A blob is shared, in one compare-and-swap, with the subscribers whose
//! rings take its message when it is sent; a slot cannot gain holders
//! after that. So when a message with blobs must wait in a subscriber's
//! backlog, or stay in the history for subscribers that join later, the
//! publisher shares the blob keeping a reference of its own (party 0),
//! kept here with a count of the backlog and history entries that name
//! it. When such an entry reaches a ring, that subscriber gets a copy in a
//! slot shared with it alone (see the publisher); when the last entry goes
//! (delivered, dropped, evicted), the publisher's reference goes, and the
//! slot is free once the subscribers that had it drop theirs.
//!
//! A [`SharedBlob`] borrows the pool it came from, and this store lives in
//! the publisher beside that pool: the one `unsafe` here extends the
//! borrow to the store's own `Arc` of the pool, which the store outlives
//! by construction (see SAFETY).
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;

use isocall_blob::{Pool, SharedBlob, SharedHandle};
use isocall_ringbuf::SharedRegion;

/// A kept reference and the entries that name it.
struct Entry {
    blob: SharedBlob<'static, SharedRegion>,
    uses: u32,
}

/// The publisher's own references to shared blobs, by handle. Dropping it
/// gives them all up.
pub(crate) struct Kept {
    /// Every blob here borrows `*pool`. Declared before `pool`, so dropped
    /// before it.
    blobs: HashMap<SharedHandle, Entry>,
    pool: Arc<Pool<SharedRegion>>,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept")
            .field("blobs", &self.blobs.len())
            .finish()
    }
}

impl Kept {
    /// An empty store for blobs of `pool`.
    pub(crate) fn new(pool: Arc<Pool<SharedRegion>>) -> Kept {
        Kept {
            blobs: HashMap::new(),
            pool,
        }
    }

    /// The pool.
    pub(crate) fn pool(&self) -> &Arc<Pool<SharedRegion>> {
        &self.pool
    }

    /// Keeps `blob`, named by `uses` entries.
    ///
    /// # Safety
    ///
    /// `blob` must have come from the pool of this store's `Arc` (the
    /// same allocation: a clone of it, or `self.pool()` itself).
    pub(crate) unsafe fn keep(&mut self, blob: SharedBlob<'_, SharedRegion>, uses: u32) {
        let h = blob.handle();
        // SAFETY: by the caller's promise `blob` borrows the `Pool` inside
        // the allocation `self.pool` keeps alive; the store never lets its
        // blobs out, and drops them before that `Arc` (field order, and
        // `release`), so the extended borrow never outlives the pool. The
        // pool never moves (it sits in the `Arc`'s allocation).
        let blob: SharedBlob<'static, SharedRegion> = unsafe { std::mem::transmute(blob) };
        match self.blobs.get_mut(&h) {
            // A handle kept twice: a second reference of party 0 cannot
            // exist (the pool refuses it), so this is the same blob.
            Some(e) => e.uses += uses,
            None => {
                self.blobs.insert(h, Entry { blob, uses });
            }
        }
    }

    /// One more entry names `h` (if it is kept).
    pub(crate) fn add_use(&mut self, h: &SharedHandle) -> bool {
        match self.blobs.get_mut(h) {
            Some(e) => {
                e.uses += 1;
                true
            }
            None => false,
        }
    }

    /// The bytes of kept blob `h`.
    pub(crate) fn bytes(&self, h: &SharedHandle) -> Option<&[u8]> {
        self.blobs.get(h).map(|e| &e.blob[..])
    }

    /// An entry naming `h` is gone; the last one gives the reference up.
    pub(crate) fn release(&mut self, h: &SharedHandle) {
        if let Some(e) = self.blobs.get_mut(h) {
            e.uses = e.uses.saturating_sub(1);
            if e.uses == 0 {
                self.blobs.remove(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isocall_blob::{Parties, Party, PoolConfig};

    use crate::sys::SharedMem;

    #[test]
    fn a_kept_blob_lives_until_its_last_use_goes() {
        let config = PoolConfig::new().class(4096, 4);
        let mem =
            SharedMem::create_with_regions("isocall:test:kept", config.region_size().unwrap(), 0)
                .unwrap();
        let region = mem.region(0, config.region_size().unwrap()).unwrap();
        let pool = Arc::new(Pool::create_as(region, &config, Party::PUBLISHER).unwrap());
        let mut kept = Kept::new(pool.clone());
        let mut b = pool.alloc(5).unwrap();
        b.copy_from_slice(b"frame");
        let sub = Party::new(1).unwrap();
        let (mine, h) = b.share_keep(Parties::from(sub)).unwrap();
        // SAFETY: `mine` came from `pool`, a clone of the store's `Arc`.
        unsafe { kept.keep(mine, 2) };
        assert_eq!(kept.bytes(&h), Some(&b"frame"[..]));
        kept.release(&h);
        assert!(kept.bytes(&h).is_some(), "one use left");
        assert!(kept.add_use(&h));
        kept.release(&h);
        kept.release(&h);
        assert!(kept.bytes(&h).is_none(), "no use left");
        assert!(!kept.add_use(&h));
        // Only the subscriber's reference is left.
        assert_eq!(pool.stats().references(sub), 1);
        assert_eq!(pool.stats().references(Party::PUBLISHER), 0);
        drop(kept);
        drop(pool);
    }
}
