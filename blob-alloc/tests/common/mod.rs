//! Helpers of the pool's tests on a heap region: the two sides of one
//! pool, and a slot's state word as the peer's process sees it (to read it,
//! or to rewrite it as a hostile or dying peer would).
#![allow(dead_code)] // not every test binary uses every helper

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use isocall_blob::{BlobHandle, Pool, PoolConfig, Side, SlotState};
use isocall_ringbuf::{HeapRegion, Region};

/// A pool of `config` on a fresh heap region: side A created it, side B
/// opened it.
pub fn pair(config: &PoolConfig) -> (Pool<Arc<HeapRegion>>, Pool<Arc<HeapRegion>>) {
    let region = Arc::new(HeapRegion::new(config.region_size().unwrap()));
    let a = Pool::create(region.clone(), config, Side::A).unwrap();
    let b = Pool::open(region, Side::B).unwrap();
    (a, b)
}

/// The state word of the slot `h` names (offsets from the layout module).
pub fn state_word<'p>(p: &'p Pool<Arc<HeapRegion>>, h: &BlobHandle) -> &'p AtomicU64 {
    let desc = 64 + 64 * h.class as usize;
    let states = p.region().u64_at(desc + 24).load(Ordering::Relaxed) as usize;
    p.region().u64_at(states + 8 * h.slot as usize)
}

/// A state word as the peer would write it (layout of `state.rs`).
pub fn state_bits(generation: u32, state: SlotState) -> u64 {
    let code = match state {
        SlotState::Free => 0,
        SlotState::Held(Side::A) => 1,
        SlotState::Held(Side::B) => 2,
        SlotState::InFlight(Side::A) => 3,
        SlotState::InFlight(Side::B) => 4,
        SlotState::Invalid(c) => u64::from(c),
        _ => unreachable!("a state this test does not know"),
    };
    u64::from(generation) << 32 | code
}

/// The peer writes `state` (at the handle's generation) into `h`'s slot.
pub fn rewrite(p: &Pool<Arc<HeapRegion>>, h: &BlobHandle, state: SlotState) {
    state_word(p, h).store(state_bits(h.generation, state), Ordering::Release);
}

/// Side A for `true`, B for `false` (a side drawn by proptest).
pub fn side(a: bool) -> Side {
    if a { Side::A } else { Side::B }
}
