//! isocall: calls between processes on one host at shared-memory speed,
//! surviving the callee's crashes.
//!
//! Declare a method once, as a typed value both sides share:
//!
//! ```
//! #[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
//! struct Add { a: u64, b: u64 }
//! #[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
//! struct Sum { sum: u64 }
//!
//! const ADD: isocall::Method<Add, Sum> = isocall::Method::new("add");
//! ```
//!
//! A [`Server`] (built with a [`ServerBuilder`]) serves it; a [`Client`],
//! a [`SharedClient`] or a [`SupervisedClient`] (all [`Caller`]s) calls it
//! and gets a [`Reply`] guard over the validated reply. The README has the
//! whole round trip; [`raw`] holds the machinery under it (segments, rings,
//! blob pools, the OS layer) for programs that move frames themselves.
#![deny(unsafe_code)]

pub use isocall_engine::*;

/// The README's code, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
