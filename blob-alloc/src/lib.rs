//! isocall-blob: a slab allocator for blobs inside a region two (or more)
//! processes share, with handles that cannot be forged and nothing leaked
//! by a crash.
//!
//! Large arguments and results (pixel buffers, tensors, file contents)
//! cross between processes without being copied: the sender allocates a
//! blob in the shared pool, writes it in place and sends a 16-byte
//! [`BlobHandle`]; the receiver accepts the handle and reads the bytes where
//! they are, or writes its answer into them and sends the handle back (the
//! caller-allocated in/out buffer).
//!
//! The pool is carved into size classes of fixed-size slots. Each slot has a
//! state word in shared memory (free, held by side A or B, in flight to A or
//! B, plus a generation) that is the single authority on its owner: every
//! change of hands is one compare-and-swap on it, so a process killed at any
//! instruction leaves every slot accounted for, and [`Pool::reclaim`] gives
//! back what a dead side held. A per-class bitmap indexes the free slots for
//! fast allocation by both processes at once, lock-free. Every use of a
//! handle checks its class, slot, length and generation, so a stale,
//! double-freed or forged handle is an error, never somebody else's blob.
//! See [`pool`] for the protocol and why it is a bitmap, not a stack.
//!
//! A blob can also be written once and read by many: for fan-out, a pool is
//! mapped by up to [`MAX_PARTIES`] parties (a publisher, party 0, and
//! subscribers with ids the publisher gives out with a [`Roster`]). The
//! publisher [`share`](BlobMut::share)s a filled blob with a set of
//! parties and sends each the returned [`SharedHandle`]; each
//! [`accept_shared`](Pool::accept_shared)s it as a read-only
//! [`SharedBlob`] and drops it when done; the slot is free when the last
//! reference goes. The state word still decides everything: a shared slot's
//! word is `Shared(holders, generation)`, the holders one bit per party
//! (31 bits, which is why a pool has at most 31 parties: the generation
//! keeps its 32 and one bit says "shared"). Accepting changes no shared
//! word; giving a reference up is one bounded compare-and-swap that clears
//! the holder's bit, and the one that clears the last bit writes `Free`
//! instead, so two last releases racing free the slot exactly once. A
//! process killed at any instruction leaves each word holding exactly the
//! references not given up yet (its own among them if it had not given
//! them up), and [`Pool::reclaim_party`] clears a dead party's bits while
//! the others keep working, freeing the slots left with none. A party that
//! leaves cleanly gives up, in its own process, what its shared blobs no
//! longer hold ([`Pool::leave`]); only that process knows, so nobody else
//! frees a slot under its feet.
//!
//! The peer may write any state word, so each process also keeps a record
//! of the slots its own blobs hold (see [`held`]): whatever the peer writes,
//! this process never has two blobs over one slot (nor a blob beside a
//! shared blob, nor two shared blobs of one party), and no compare-and-swap
//! loop on a word the peer can flip runs unbounded.
//!
//! Like the ring, the pool is generic over where its bytes live
//! ([`Region`](isocall_ringbuf::Region)): a heap buffer in tests, a shared
//! mapping in real use, with the same code. An inspector with a read-only
//! mapping ([`ReadOnlyRegion`](isocall_ringbuf::ReadOnlyRegion)) takes a
//! [`census`] instead: a `Pool`, which writes, cannot be built over one.
//! The pool's own words (header, bitmaps, slot states) are reached by
//! offset only inside the crate, through accessors whose one proof is the
//! validated layout: no safe function reads a region by offset, since a
//! blob's bytes there would be aliased ([`census_region`] is `unsafe`).
//!
//! ```
//! use std::sync::Arc;
//! use isocall_blob::{Pool, PoolConfig, Side};
//! use isocall_ringbuf::HeapRegion;
//!
//! let config = PoolConfig::new().class(256, 64).class(4096, 8);
//! let region = Arc::new(HeapRegion::new(config.region_size().unwrap()));
//! let client = Pool::create(region.clone(), &config, Side::A).unwrap();
//! let server = Pool::open(region, Side::B).unwrap();
//!
//! let mut blob = client.alloc(11).unwrap();      // allocate
//! blob.copy_from_slice(b"hello world");          // fill in place
//! let handle = blob.send().unwrap();             // send: ownership moves
//!
//! let mut got = server.accept_mut(&handle).unwrap(); // receive
//! assert_eq!(&got[..], b"hello world");          // read in place
//! got[..5].copy_from_slice(b"HELLO");            // answer in place
//! let back = got.send().unwrap();
//!
//! let answer = client.accept(&back).unwrap();
//! assert_eq!(&answer[..], b"HELLO world");
//! drop(answer);                                  // drop frees
//! assert_eq!(client.stats().used(), 0);
//! assert!(client.accept(&back).is_err());        // a used handle is stale
//! ```
//!
//! Fan-out, one publisher and two subscribers:
//!
//! ```
//! use std::sync::Arc;
//! use isocall_blob::{Parties, Party, Pool, PoolConfig};
//! use isocall_ringbuf::HeapRegion;
//!
//! let config = PoolConfig::new().class(4096, 8);
//! let region = Arc::new(HeapRegion::new(config.region_size().unwrap()));
//! let publisher = Pool::create_as(region.clone(), &config, Party::PUBLISHER).unwrap();
//! let (one, two) = (Party::new(1).unwrap(), Party::new(2).unwrap());
//! let sub1 = Pool::open_as(region.clone(), one).unwrap();
//! let sub2 = Pool::open_as(region, two).unwrap();
//!
//! let mut blob = publisher.alloc(5).unwrap();    // allocate
//! blob.copy_from_slice(b"frame");                // fill once
//! let handle = blob.share(Parties::from(one).with(two)).unwrap(); // share
//!
//! let a = sub1.accept_shared(&handle).unwrap();  // each reads in place
//! let b = sub2.accept_shared(&handle).unwrap();
//! assert_eq!((&a[..], &b[..]), (&b"frame"[..], &b"frame"[..]));
//! assert!(sub1.accept_shared(&handle).is_err()); // one reference each
//! drop(a);
//! assert_eq!(publisher.stats().shared(), 1);
//! drop(b);                                       // the last one frees
//! assert_eq!(publisher.stats().used(), 0);
//! ```
#![deny(unsafe_code)]

mod blob;
mod error;
pub mod held;
pub mod layout;
mod party;
pub mod pool;
mod raw;
mod reclaim;
mod roster;
pub mod shared;
mod state;

pub(crate) use isocall_ringbuf::sync;

pub use blob::{Blob, BlobHandle, BlobMut};
pub use error::{BlobError, PoolPart};
pub use layout::{ClassConfig, MAX_CLASSES, MAX_SLOT, MAX_SLOTS, MIN_SLOT, PoolConfig};
pub use party::{MAX_PARTIES, Parties, Party};
#[cfg(not(loom))]
pub use pool::census;
pub use pool::{ClassInfo, ClassStats, Pool, PoolStats, Reclaimed};
pub use raw::census_region;
pub use roster::{Member, Roster};
pub use shared::{SharedBlob, SharedHandle};
pub use state::{Side, SlotState};
