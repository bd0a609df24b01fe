//! isocall-ringbuf
#![deny(unsafe_code)]

pub mod region;
mod raw;
pub mod sync;

pub use region::{HeapRegion, Region, SharedRegion};
