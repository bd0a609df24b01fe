//! `blob_handles`: a blob [`Pool`] a peer formatted and scribbles on,
//! operated by both sides.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use isocall::blob::{Blob, BlobHandle, BlobMut, Pool, PoolConfig, Side as PoolSide};
use isocall::ring::{HeapRegion, ReadRegion};

use super::{Input, fill_bytes, overlaps, peer_u64, region_base};

/// `blob_handles`: a pool the peer (side B) formatted, then scribbled on,
/// opened by this side (A), then a sequence of operations by both sides
/// and writes by the peer anywhere in the region.
///
/// Input: a class count byte, then two bytes per class (slot size
/// `64 * (4 i + 1 + b % 4)`, count `1 + b % 96`); the pool is formatted
/// with them. Then a `u16` count of bytes that overwrite the region from
/// offset 0 (the pool header the peer wrote, then its bitmaps and states),
/// and those bytes. Then [`Pool::open`]; if it succeeds, operations until
/// the input ends, one opcode byte each (see [`BlobOp`]).
///
/// After each operation: every blob this side holds lies in the slot data
/// of the class and slot its handle names, inside the pool, no two of them
/// share a slot, and none covers the pool's header, bitmaps or state words.
pub fn blob_handles(data: &[u8]) {
    let mut input = Input(data);
    let config = pool_config(&mut input);
    let size = config.region_size().expect("a valid config");
    let region = Arc::new(HeapRegion::new(size));
    let peer = Pool::create(region.clone(), &config, PoolSide::B).expect("format");
    let n = input.u16() as usize;
    fill_bytes(&*region, 0, input.take(n));
    let pool = match Pool::open(region.clone(), PoolSide::A) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let map = PoolMap::read(&pool);
    let mut live: Vec<Live<'_>> = Vec::new();
    while let Some(op) = input.byte() {
        run_op(op, &mut input, &pool, &peer, &mut live);
        map.check(&pool, &live);
    }
    drop(live);
    let _ = pool.reclaim(PoolSide::B);
    let stats = pool.stats();
    assert_eq!(stats.classes.len(), map.classes.len());
}

/// The classes a blob input asks for.
fn pool_config(input: &mut Input<'_>) -> PoolConfig {
    let n = 1 + input.byte().unwrap_or(0) as usize % 3;
    (0..n).fold(PoolConfig::new(), |c, i| {
        let size = 64 * (4 * i + 1 + input.byte().unwrap_or(0) as usize % 4);
        let count = 1 + input.byte().unwrap_or(0) as usize % 96;
        c.class(size, count)
    })
}

/// The operations of the blob target, by opcode (`byte % 14`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BlobOp {
    /// Peer writes state word: class byte, slot byte, `u64`.
    PokeState = 0,
    /// Peer writes bitmap word: class byte, word byte, `u64`.
    PokeBitmap = 1,
    /// Peer writes any word: `u16` word index, `u64`.
    PokeAny = 2,
    /// `accept` of a 16-byte handle.
    Accept = 3,
    /// `accept_mut` of a 16-byte handle; the blob is written.
    AcceptMut = 4,
    /// `recall` of a 16-byte handle.
    Recall = 5,
    /// `take_back` of a 16-byte handle.
    TakeBack = 6,
    /// `reclaim` of the peer's slots.
    Reclaim = 7,
    /// `stats` and `slot_state` of every slot.
    Stats = 8,
    /// `alloc` of a `u16` length; the blob is written.
    Alloc = 9,
    /// Drop (free) the held blob at an index byte.
    Drop = 10,
    /// Send the held blob at an index byte to the peer.
    Send = 11,
    /// The peer allocates a `u16` length and sends it to this side.
    PeerSend = 12,
    /// The peer accepts a 16-byte handle and frees it.
    PeerAccept = 13,
}

impl BlobOp {
    fn decode(b: u8) -> BlobOp {
        const ALL: [BlobOp; 14] = [
            BlobOp::PokeState,
            BlobOp::PokeBitmap,
            BlobOp::PokeAny,
            BlobOp::Accept,
            BlobOp::AcceptMut,
            BlobOp::Recall,
            BlobOp::TakeBack,
            BlobOp::Reclaim,
            BlobOp::Stats,
            BlobOp::Alloc,
            BlobOp::Drop,
            BlobOp::Send,
            BlobOp::PeerSend,
            BlobOp::PeerAccept,
        ];
        ALL[b as usize % ALL.len()]
    }
}

/// A blob this side holds.
enum Live<'p> {
    Mut(BlobMut<'p, Arc<HeapRegion>>),
    Ro(Blob<'p, Arc<HeapRegion>>),
}

impl Live<'_> {
    fn handle(&self) -> BlobHandle {
        match self {
            Live::Mut(b) => b.handle(),
            Live::Ro(b) => b.handle(),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Live::Mut(b) => b,
            Live::Ro(b) => b,
        }
    }
}

fn run_op<'p>(
    op: u8,
    input: &mut Input<'_>,
    pool: &'p Pool<Arc<HeapRegion>>,
    peer: &Pool<Arc<HeapRegion>>,
    live: &mut Vec<Live<'p>>,
) {
    let region = pool.region();
    let desc = |class: usize, field: usize| -> Option<usize> {
        let at = 64 + 64 * class + field;
        (at + 8 <= region.len()).then(|| peer_u64(region, at).load(Ordering::Relaxed) as usize)
    };
    let poke = |off: Option<usize>, v: u64| {
        let Some(off) = off.filter(|o| o.is_multiple_of(8) && o + 8 <= region.len()) else {
            return;
        };
        peer_u64(region, off).store(v, Ordering::Relaxed);
    };
    let keep = |r: Result<BlobMut<'p, Arc<HeapRegion>>, _>, live: &mut Vec<Live<'p>>| match r {
        Ok(mut b) => {
            b.fill(0x5A);
            live.push(Live::Mut(b));
        }
        Err(e) => {
            let _ = isocall::blob::BlobError::to_string(&e);
        }
    };
    match BlobOp::decode(op) {
        BlobOp::PokeState => {
            let (class, slot) = (input.byte().unwrap_or(0), input.byte().unwrap_or(0));
            let v = input.u64();
            poke(
                desc(class as usize, 24).map(|s| s.wrapping_add(8 * slot as usize)),
                v,
            );
        }
        BlobOp::PokeBitmap => {
            let (class, w) = (input.byte().unwrap_or(0), input.byte().unwrap_or(0));
            let v = input.u64();
            poke(
                desc(class as usize, 16).map(|s| s.wrapping_add(8 * w as usize)),
                v,
            );
        }
        BlobOp::PokeAny => {
            let at = 8 * input.u16() as usize;
            let v = input.u64();
            poke(Some(at), v);
        }
        BlobOp::Accept => match pool.accept(&input.handle()) {
            Ok(b) => live.push(Live::Ro(b)),
            Err(e) => {
                let _ = e.to_string();
            }
        },
        BlobOp::AcceptMut => keep(pool.accept_mut(&input.handle()), live),
        BlobOp::Recall => keep(pool.recall(&input.handle()), live),
        BlobOp::TakeBack => keep(pool.take_back(&input.handle()), live),
        BlobOp::Reclaim => {
            let r = pool.reclaim(PoolSide::B);
            let _ = r.freed();
        }
        BlobOp::Stats => {
            let s = pool.stats();
            for (ci, (c, info)) in s.classes.iter().zip(pool.classes()).enumerate() {
                assert_eq!((c.slot_size, c.count), (info.slot_size, info.count));
                let counted = c.free + c.held.iter().sum::<usize>();
                assert_eq!(
                    counted + c.in_flight.iter().sum::<usize>() + c.invalid,
                    c.count
                );
                for slot in 0..c.count {
                    assert!(pool.slot_state(ci, slot).is_some());
                }
                assert!(pool.slot_state(ci, c.count).is_none());
            }
            let _ = (s.used(), s.owned_by(PoolSide::A));
        }
        BlobOp::Alloc => {
            let len = input.u16() as usize;
            keep(pool.alloc(len), live);
        }
        BlobOp::Drop => {
            let i = input.byte().unwrap_or(0) as usize;
            if !live.is_empty() {
                live.swap_remove(i % live.len());
            }
        }
        BlobOp::Send => {
            let i = input.byte().unwrap_or(0) as usize;
            if !live.is_empty() {
                let b = live.swap_remove(i % live.len());
                let h = b.handle();
                let sent = match b {
                    Live::Mut(b) => b.send(),
                    Live::Ro(b) => b.send(),
                };
                if let Ok(s) = sent {
                    assert_eq!(s, h);
                }
            }
        }
        BlobOp::PeerSend => {
            let len = input.u16() as usize;
            if let Ok(b) = peer.alloc(len) {
                let _ = b.send();
            }
        }
        BlobOp::PeerAccept => {
            let _ = peer.accept(&input.handle());
        }
    }
}

/// Where the pool's parts are, as its header said when this side opened
/// it (validated by `Pool::open`).
struct PoolMap {
    base: usize,
    len: usize,
    /// Per class: slot size, count, and byte ranges of its bitmap, states
    /// and data, relative to the region.
    classes: Vec<ClassMap>,
}

struct ClassMap {
    slot_size: usize,
    count: usize,
    meta: [Range<usize>; 2],
    data: usize,
}

impl PoolMap {
    fn read(pool: &Pool<Arc<HeapRegion>>) -> PoolMap {
        let region = pool.region();
        let w = |at: usize| peer_u64(region, at).load(Ordering::Relaxed) as usize;
        let classes = pool
            .classes()
            .enumerate()
            .map(|(i, c)| {
                let d = 64 + 64 * i;
                assert_eq!((w(d), w(d + 8)), (c.slot_size, c.count));
                let (bitmap, states) = (w(d + 16), w(d + 24));
                ClassMap {
                    slot_size: c.slot_size,
                    count: c.count,
                    meta: [
                        bitmap..bitmap + c.count.div_ceil(64) * 8,
                        states..states + c.count * 8,
                    ],
                    data: w(d + 32),
                }
            })
            .collect::<Vec<_>>();
        PoolMap {
            base: region_base(region),
            len: region.len(),
            classes,
        }
    }

    /// The invariants of the blobs this side holds.
    fn check(&self, pool: &Pool<Arc<HeapRegion>>, live: &[Live<'_>]) {
        let header = 0..64 + 64 * self.classes.len();
        let mut slots: Vec<Range<usize>> = Vec::with_capacity(live.len());
        for b in live {
            let h = b.handle();
            let c = &self.classes[h.class as usize];
            assert!((h.slot as usize) < c.count);
            assert!(h.len as usize <= c.slot_size);
            assert!(pool.slot_state(h.class as usize, h.slot as usize).is_some());
            let bytes = b.bytes();
            assert_eq!(bytes.len(), h.len as usize);
            let at = bytes.as_ptr() as usize - self.base;
            assert_eq!(at, c.data + h.slot as usize * c.slot_size, "not its slot");
            let slot = at..at + c.slot_size;
            assert!(slot.end <= self.len, "slot past the pool");
            assert!(!overlaps(&slot, &header), "a blob over the pool header");
            for m in self.classes.iter().flat_map(|c| c.meta.iter()) {
                assert!(!overlaps(&slot, m), "a blob over slot states or bitmap");
            }
            for s in &slots {
                assert!(
                    !overlaps(&slot, s),
                    "one slot handed out twice: {h:?} at {slot:?}"
                );
            }
            slots.push(slot);
        }
    }
}
