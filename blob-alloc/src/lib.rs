//! isocall-blob: a slab allocator for blobs inside a region two processes
//! share, with handles that cannot be forged and nothing leaked by a crash.
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
//! The peer may write any state word, so each process also keeps a record
//! of the slots its own blobs hold (see [`held`]): whatever the peer writes,
//! this process never has two blobs over one slot, and no compare-and-swap
//! loop on a word the peer can flip runs unbounded.
//!
//! Like the ring, the pool is generic over where its bytes live
//! ([`Region`](isocall_ringbuf::Region)): a heap buffer in tests, a shared
//! mapping in real use, with the same code. An inspector with a read-only
//! mapping ([`ReadRegion`](isocall_ringbuf::ReadRegion)) takes a [`census`]
//! instead: a `Pool`, which writes, cannot be built over one.
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
#![deny(unsafe_code)]

mod blob;
mod error;
pub mod held;
pub mod layout;
mod party;
pub mod pool;
mod raw;
mod reclaim;
mod state;

pub(crate) use isocall_ringbuf::sync;

pub use blob::{Blob, BlobHandle, BlobMut};
pub use error::{BlobError, PoolPart};
pub use layout::{ClassConfig, MAX_CLASSES, MAX_SLOT, MAX_SLOTS, MIN_SLOT, PoolConfig};
pub use party::{MAX_PARTIES, Parties, Party};
pub use pool::{ClassInfo, ClassStats, Pool, PoolStats, Reclaimed, census};
pub use state::{Side, SlotState};
