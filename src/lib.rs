//! isocall: zero-copy shared-memory IPC between processes on one host.
//!
//! This facade re-exports the public API of the workspace crates.
#![deny(unsafe_code)]

pub use isocall_blob as blob;
pub use isocall_engine as engine;
pub use isocall_ringbuf as ringbuf;

/// The README's code, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
