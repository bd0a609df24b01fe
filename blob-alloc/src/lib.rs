//! isocall-blob: the slab allocator for blobs inside a shared region.
//!
//! **Not built yet.** This crate is a placeholder so that the workspace has
//! its final shape; the allocator (size classes, lock-free free lists shared
//! by two processes, generation-checked handles, reclamation after a crash)
//! arrives with the blob issue. It exports nothing today, so nothing can be
//! mistaken for a working allocator.
#![deny(unsafe_code)]
