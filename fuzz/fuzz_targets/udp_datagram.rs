//! Fuzz target `udp_datagram`: see `common::udp_datagram` for its input and what it checks.
#![no_main]

#[path = "common/mod.rs"]
#[allow(dead_code, unused_imports)] // what only the replay test uses
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::udp_datagram(data));
