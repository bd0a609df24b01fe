//! The bodies of isocall's fuzz targets: one function per decoder of peer
//! input, each taking the fuzzer's bytes and asserting the decoder's
//! contract (no panic, no hang, and any success consistent with the input).
//!
//! Shared by the `cargo fuzz` targets next to this file (nightly, with
//! libFuzzer) and by the facade's `tests/fuzz_replay.rs` (stable, every
//! file of `fuzz/corpus/<target>/` replayed), through `#[path]`. Besides
//! std it uses only `isocall`, `rkyv` and `bytemuck`, which both crates
//! depend on.
//!
//! Each function documents how it reads its input; [`seeds`] builds valid
//! inputs in the same formats with the real encoders.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use isocall::blob::{Blob, BlobHandle, BlobMut, Pool, PoolConfig, Side as PoolSide};
use isocall::raw::body::Inbox;
use isocall::raw::handshake::{self, ClientHello, HELLO_MAGIC};
use isocall::raw::sys::SharedMem;
use isocall::raw::wire::{self, CloseReason, ErrorBody, FrameError};
use isocall::raw::{Direction, PAGE, Segment, SegmentHeader, Side};
use isocall::ring::layout::{CONS_ZEROES, DATA, FRAME_ALIGN, HEAD, TAIL};
use isocall::ring::wait::SpinParker;
use isocall::ring::{
    AttachError, Consumer, HeapRegion, MAX_USER_KIND, RING_CONTROL_BYTES, Region, frame_size,
};
use isocall::rpc::{Refusal, Status};

/// A target's body: takes the fuzzer's bytes, panics on a broken contract.
pub type Target = fn(&[u8]);

/// The targets, by name: the directory names under `fuzz/corpus/` and the
/// binaries under `fuzz/fuzz_targets/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame_head", frame_head),
    ("hello", hello),
    ("segment_header", segment_header),
    ("ring_frames", ring_frames),
    ("blob_handles", blob_handles),
    ("body", body),
];

// ---------------------------------------------------------------------------
// frame_head: wire::parse, ErrorBody::read, CloseReason::from_code

/// `frame_head`: the input is the payload of a call frame as a ring hands
/// it over. Checks [`wire::parse`] (a parsed frame's head, handles and body
/// are exactly the payload's bytes, the body inside the payload; an error
/// names what does not fit), then [`ErrorBody::read`] and
/// [`CloseReason::from_code`] on the body, as a receiver of an error
/// RESPONSE or a CLOSE does.
pub fn frame_head(data: &[u8]) {
    match wire::parse(data) {
        Ok(p) => {
            let n = p.head.nblobs as usize;
            assert!(n <= wire::MAX_BLOBS, "{n} blobs accepted");
            let head: wire::CallHead = bytemuck::pod_read_unaligned(&data[..wire::HEAD]);
            assert_eq!(p.head, head, "the head is a copy of the payload's");
            let body_at = wire::HEAD + n * wire::HANDLE;
            assert_eq!(p.body.len(), p.head.body_len as usize);
            assert!(within(p.body, data), "body outside the payload");
            assert_eq!(
                p.body.as_ptr() as usize - data.as_ptr() as usize,
                body_at,
                "body not right after the handles"
            );
            assert_eq!(p.blobs().len(), n);
            for (i, h) in p.blobs().iter().enumerate() {
                let at = wire::HEAD + i * wire::HANDLE;
                assert_eq!(&h.to_bytes()[..], &data[at..at + wire::HANDLE]);
            }
            assert!(p.blobs[n..].iter().all(|h| *h == BlobHandle::default()));
            if let Some(s) = Status::from_u32(p.head.status) {
                assert_eq!(s as u32, p.head.status);
            }
            error_body(p.body);
            close_body(p.body);
        }
        Err(e) => {
            let _ = e.to_string();
            match e {
                FrameError::TooShort { len } => {
                    assert_eq!(len, data.len());
                    assert!(len < wire::HEAD);
                }
                FrameError::TooManyBlobs { count } => {
                    assert!(data.len() >= wire::HEAD);
                    assert!(count as usize > wire::MAX_BLOBS);
                }
                FrameError::PastEnd {
                    nblobs,
                    body_len,
                    len,
                } => {
                    assert_eq!(len, data.len());
                    let need = wire::HEAD + nblobs as usize * wire::HANDLE + body_len as usize;
                    assert!(need > len, "{need} bytes fit {len}");
                }
                _ => {}
            }
        }
    }
    error_body(data);
    close_body(data);
}

/// [`ErrorBody::read`] on a body: the code is its first word, the message
/// the rest; a valid message survives a round trip through `write`.
fn error_body(body: &[u8]) {
    let (code, msg) = ErrorBody::read(body);
    match body.get(..4) {
        None => assert_eq!((code, msg.as_str()), (0, "")),
        Some(c) => {
            assert_eq!(code, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            assert_eq!(msg, String::from_utf8_lossy(&body[4..]));
            let mut buf = vec![0u8; body.len()];
            let n = ErrorBody::write(&mut buf, code, &msg);
            assert!(n <= buf.len());
            let (c2, m2) = ErrorBody::read(&buf[..n]);
            assert_eq!(c2, code);
            assert!(msg.starts_with(&m2), "{m2:?} is not a prefix of {msg:?}");
            if std::str::from_utf8(&body[4..]).is_ok() {
                assert_eq!(n, body.len());
                assert_eq!(m2, msg);
            }
        }
    }
}

/// A CLOSE frame's body: a `u32` reason code, any value.
fn close_body(body: &[u8]) {
    if let Some(c) = body.get(..4) {
        let code = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let r = CloseReason::from_code(code);
        assert_eq!(r.code(), code);
        assert!(!r.to_string().is_empty());
    }
}

// ---------------------------------------------------------------------------
// hello: decode_hello, decode_refusal, ClientHello::decode

/// `hello`: the input is a handshake message. Each decoder sees it whole
/// and without its first byte (the tag a real reader strips):
/// [`handshake::decode_hello`] (a decoded hello holds exactly the methods it
/// announces and re-encodes to itself), [`handshake::decode_refusal`] (a
/// decoded refusal re-encodes to itself) and [`ClientHello::decode`] (only
/// the magic passes).
pub fn hello(data: &[u8]) {
    for msg in [data, data.get(1..).unwrap_or_default()] {
        server_hello(msg);
        refusal(msg);
        client_hello(msg);
    }
}

fn server_hello(msg: &[u8]) {
    const HEAD: usize = std::mem::size_of::<handshake::ServerHelloHead>();
    const ENTRY: usize = 24;
    let h = match handshake::decode_hello(msg) {
        Ok(h) => h,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(h.head.magic, HELLO_MAGIC);
    assert_eq!(bytemuck::bytes_of(&h.head), &msg[..HEAD]);
    assert_eq!(h.methods.len(), h.head.nmethods as usize);
    let names: usize = h
        .methods
        .iter()
        .map(|m| {
            let sig = &m.signature;
            let reply = sig.reply.as_ref().map_or(0, |r| r.name.len());
            m.name.len() + sig.request.name.len() + reply
        })
        .sum();
    assert!(
        HEAD + ENTRY * h.methods.len() + names <= msg.len(),
        "the methods hold more than the message"
    );
    // Re-encoded, the hello decodes to itself (the encoder cuts type names
    // to MAX_TYPE_NAME: longer ones only round-trip cut).
    let short = h.methods.iter().all(|m| {
        let sig = &m.signature;
        sig.request.name.len() <= handshake::MAX_TYPE_NAME
            && sig
                .reply
                .as_ref()
                .is_none_or(|r| r.name.len() <= handshake::MAX_TYPE_NAME)
    });
    if short {
        let enc = handshake::encode_hello(&h.head, &h.methods);
        assert_eq!(enc[0], handshake::HELLO);
        assert!(enc.len() - 1 <= msg.len());
        assert_eq!(handshake::decode_hello(&enc[1..]).as_ref(), Ok(&h));
    }
}

fn refusal(msg: &[u8]) {
    match handshake::decode_refusal(msg) {
        Ok(r) => {
            assert!(msg.len() >= 12);
            let _ = r.to_string();
            let long_text = matches!(
                &r,
                Refusal::Policy(isocall::rpc::PolicyRefusal::Custom { reason }) if reason.len() > 1024
            );
            if !long_text {
                let enc = handshake::encode_refusal(&r);
                assert_eq!(enc[0], handshake::REFUSED);
                assert_eq!(handshake::decode_refusal(&enc[1..]).as_ref(), Ok(&r));
            }
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(msg.len() < 12, "a refusal of {} bytes refused", msg.len());
        }
    }
}

fn client_hello(msg: &[u8]) {
    match ClientHello::decode(msg) {
        Ok(h) => {
            assert_eq!(h.magic, HELLO_MAGIC);
            assert_eq!(bytemuck::bytes_of(&h), &msg[..16]);
        }
        Err(e) => {
            let _ = e.to_string();
            let magic = msg
                .get(..8)
                .map(|m| u64::from_le_bytes(m.try_into().unwrap()));
            assert!(msg.len() < 16 || magic != Some(HELLO_MAGIC));
        }
    }
}

// ---------------------------------------------------------------------------
// segment_header: Segment::open

/// Largest memfd the segment target makes.
pub const MAX_SEGMENT: u64 = 4 << 20;

/// Size of the memfd for a segment input: the header's `total_size` (bytes
/// 16..24) if it is from one page to [`MAX_SEGMENT`], or else enough whole
/// pages for the input.
pub fn segment_file_size(data: &[u8]) -> u64 {
    let total = data
        .get(16..24)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
    if (PAGE..=MAX_SEGMENT).contains(&total) {
        total
    } else {
        (data.len() as u64)
            .div_ceil(PAGE)
            .clamp(1, MAX_SEGMENT / PAGE)
            * PAGE
    }
}

/// `segment_header`: a sealed memfd of [`segment_file_size`] bytes whose
/// header page holds the input's first 4 KiB; the input's bytes after that,
/// if any, are written where the header says the blob pool is (so the pool
/// header a peer formatted is fuzzed too). Then [`Segment::open`], as a
/// client opens the memfd a server sent. An opened segment must hold the
/// header that is in the file, parts that lie inside it, rings that attach
/// (empty or `Corrupt`, never a panic) and a blob pool that can be counted
/// and allocated from; a read-only open must agree.
pub fn segment_header(data: &[u8]) {
    let size = segment_file_size(data);
    let mem = SharedMem::create("isocall:fuzz:segment", size as usize).expect("memfd");
    let file = std::fs::File::from(mem.fd().try_clone_to_owned().expect("dup"));
    let page = &data[..data.len().min(PAGE as usize)];
    file.write_all_at(page, 0).expect("write header page");
    if let Some(rest) = data.get(PAGE as usize..) {
        let at = data
            .get(64..72)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
        if at < size {
            let n = rest.len().min((size - at) as usize);
            file.write_all_at(&rest[..n], at).expect("write pool");
        }
    }
    let seg = match Segment::open(mem.fd().try_clone_to_owned().expect("dup")) {
        Ok(s) => s,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let h = *seg.header();
    let mut raw = [0u8; std::mem::size_of::<SegmentHeader>()];
    let n = page.len().min(raw.len());
    raw[..n].copy_from_slice(&page[..n]);
    assert_eq!(
        bytemuck::bytes_of(&h),
        &raw[..],
        "the header is not the file's"
    );
    assert_eq!(h.total_size, size);
    let cap = seg.layout().ring_capacity;
    assert!(cap.is_power_of_two() && cap >= 4096);
    let parts = [h.ring_c2s, h.ring_s2c, h.blobs];
    for p in parts {
        assert!(p.offset >= PAGE && p.offset.is_multiple_of(PAGE));
        assert!(p.offset + p.size <= size, "part {p:?} past {size}");
    }
    for dir in [Direction::ClientToServer, Direction::ServerToClient] {
        let region = seg.ring_region(dir);
        assert_eq!(region.len(), RING_CONTROL_BYTES + cap);
        if let Ok(mut rx) = Consumer::attach(region, SpinParker) {
            drain(&mut rx, cap as u64, region_base(&seg.ring_region(dir)));
        }
        let _ = isocall::ring::snapshot(&seg.ring_view(dir));
    }
    for side in [Side::Client, Side::Server] {
        let _ = seg.side_state(side);
        let _ = seg.lifeline_word(side);
        let _ = seg.lifeline(side);
    }
    let _ = seg.method_table();
    match seg.blob_pool(Side::Server) {
        Ok(Some(pool)) => {
            assert!(h.blobs.size > 0);
            let stats = pool.stats();
            assert_eq!(stats.classes.len(), pool.classes().len());
            let base = region_base(pool.region());
            let len = pool.region().len();
            for c in pool.classes() {
                if let Ok(mut b) = pool.alloc(c.slot_size) {
                    assert!(within_addr(&b, base..base + len));
                    b.fill(0xA5);
                }
            }
        }
        Ok(None) => assert_eq!(h.blobs.size, 0),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let ro = Segment::open_read_only(mem.fd().try_clone_to_owned().expect("dup"))
        .expect("a segment that opens read-write opens read-only");
    assert_eq!(ro.header(), &h);
    if let Some(view) = ro.blob_view()
        && let Ok(pool) = Pool::open(view, PoolSide::A)
    {
        let _ = pool.stats();
    }
}

// ---------------------------------------------------------------------------
// ring_frames: Consumer::attach, peek, release

/// Ring capacity for a ring input's first byte (128 B to 4 KiB).
pub fn ring_capacity(config: u8) -> usize {
    128 << (config & 7).min(5)
}

/// Config bit: the rest of the input is the whole region (control block,
/// then frame data).
pub const RING_RAW: u8 = 8;
/// Config bit: the producer asked the consumer to zero what it releases.
pub const RING_ZEROES: u8 = 16;

/// `ring_frames`: a heap ring region as a peer left it, then a consumer
/// attached and frames peeked and released until the ring is empty or
/// `Corrupt`.
///
/// Input: a config byte (capacity [`ring_capacity`], flags [`RING_RAW`],
/// [`RING_ZEROES`]); then, raw, the region's bytes from offset 0; else 8
/// bytes of position (head and tail, rounded down to a frame boundary)
/// and the frame data from the head on, wrapping at the ring's end.
///
/// Every frame handed out must have a user kind, a payload inside the data
/// area and on a 16-byte boundary, ending before the ring's end. A ring
/// whose every slot holds a valid frame is read again on the next lap (the
/// consumer stops only at a zero header, which a peer need not write), so
/// the walk stops after two laps.
pub fn ring_frames(data: &[u8]) {
    let Some((&config, rest)) = data.split_first() else {
        return;
    };
    let cap = ring_capacity(config);
    let region = Arc::new(HeapRegion::new(RING_CONTROL_BYTES + cap));
    if config & RING_RAW != 0 {
        fill(&*region, 0, rest);
    } else {
        let (pos, frames) = rest.split_at(rest.len().min(8));
        let mut p = [0u8; 8];
        p[..pos.len()].copy_from_slice(pos);
        let head = u64::from_le_bytes(p) & !(FRAME_ALIGN as u64 - 1);
        region.u64_at(HEAD).store(head, Ordering::Relaxed);
        region.u64_at(TAIL).store(head, Ordering::Relaxed);
        if config & RING_ZEROES != 0 {
            region.u32_at(CONS_ZEROES).store(1, Ordering::Relaxed);
        }
        let start = (head % cap as u64) as usize;
        for (i, chunk) in frames.chunks(8).take(cap / 8).enumerate() {
            let off = DATA + (start + i * 8) % cap;
            region.u64_at(off).store(word(chunk), Ordering::Relaxed);
        }
    }
    let base = region_base(&*region);
    match Consumer::attach(region.clone(), SpinParker) {
        Ok(mut rx) => drain(&mut rx, cap as u64, base),
        Err(e) => {
            let _ = e.to_string();
            assert!(matches!(e, AttachError::Corrupt(_)), "{e}");
        }
    }
    let snap = isocall::ring::snapshot(&region).expect("a ring region");
    let _ = (snap.pending_bytes(), snap.pending_frames());
}

/// Peeks and releases frames until the ring is empty, corrupt, or two laps
/// were read; checks each frame lies in the data area of the region at
/// `base`.
fn drain<R: Region>(rx: &mut Consumer<R, SpinParker>, cap: u64, base: usize) {
    let data = base + DATA..base + DATA + cap as usize;
    let mut read = 0u64;
    while read <= 2 * cap {
        let frame = match rx.peek() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        };
        assert!(
            (1..=MAX_USER_KIND).contains(&frame.kind()),
            "kind {}",
            frame.kind()
        );
        let payload = frame.payload();
        assert_eq!(payload.len(), frame.len());
        assert!(
            within_addr(payload, data.clone()),
            "payload outside the ring"
        );
        assert!((payload.as_ptr() as usize).is_multiple_of(16));
        // The frame (header and padding) ends before the ring's end.
        let start = payload.as_ptr() as usize - 16;
        assert!(start + frame_size(payload.len()) <= data.end);
        let _ = wire::parse(payload);
        read += frame_size(frame.len()) as u64;
        frame.release();
    }
    // The calls a receiver makes when it runs out of frames.
    let _ = rx.try_next(|| true);
    let _ = rx.arm_doorbell();
    rx.flush();
}

// ---------------------------------------------------------------------------
// blob_handles: Pool::open, accept, accept_mut, recall, take_back, reclaim,
// stats, alloc, send, drop

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
        (at + 8 <= region.len()).then(|| region.u64_at(at).load(Ordering::Relaxed) as usize)
    };
    let poke = |off: Option<usize>, v: u64| {
        if let Some(off) = off.filter(|o| o.is_multiple_of(8) && o + 8 <= region.len()) {
            region.u64_at(off).store(v, Ordering::Relaxed);
        }
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
        let w = |at: usize| region.u64_at(at).load(Ordering::Relaxed) as usize;
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

// ---------------------------------------------------------------------------
// body: bytecheck of archives

/// A call body with a string and a list (the shape of the RPC tests').
#[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, isocall::Schema)]
pub struct Greeting {
    /// A name.
    pub name: String,
    /// Some numbers.
    pub values: Vec<u32>,
}

/// Plain numbers (the `add` request of the examples).
#[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, isocall::Schema)]
pub struct Add {
    /// One.
    pub a: u64,
    /// Two.
    pub b: u64,
}

/// An enum with data in its variants.
#[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, isocall::Schema)]
pub enum Shape {
    /// No data.
    Empty,
    /// A named field.
    Square {
        /// Side.
        side: u32,
    },
    /// A string.
    Named(String),
    /// A list of pairs.
    Path(Vec<(i32, i32)>),
}

/// Nested lists, options, chars, bools and maps.
#[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, isocall::Schema)]
pub struct Record {
    /// Nested structs with strings and lists.
    pub items: Vec<Greeting>,
    /// An optional string.
    pub tag: Option<String>,
    /// A bool (only 0 and 1 are valid).
    pub flag: bool,
    /// A char (only scalar values are valid).
    pub letter: char,
    /// An enum.
    pub shape: Shape,
    /// A hash map (a swiss table to validate).
    pub index: HashMap<String, u32>,
    /// A B-tree map.
    pub sorted: BTreeMap<u32, String>,
}

/// `body`: the input, copied into a private aligned buffer as the engine
/// does ([`Inbox`]), checked as an archive of [`Greeting`], [`Add`],
/// [`Shape`] and [`Record`]. A body that passes must be readable entirely
/// (every string and list inside the buffer, strings UTF-8), deserialize,
/// and serialize back to an archive that passes and holds the same value.
pub fn body(data: &[u8]) {
    let mut inbox = Inbox::new();
    inbox.fill(data);
    let buf = inbox.bytes();
    if let Ok(c) = inbox.check::<Greeting>() {
        let g = c.get();
        greeting_inside(g, buf);
        round_trip::<Greeting>(g);
    }
    if let Ok(c) = inbox.check::<Add>() {
        round_trip::<Add>(c.get());
    }
    if let Ok(c) = inbox.check::<Shape>() {
        shape_inside(c.get(), buf);
        round_trip::<Shape>(c.get());
    }
    match inbox.check::<Record>() {
        Ok(c) => {
            let r = c.get();
            for g in r.items.iter() {
                greeting_inside(g, buf);
            }
            if let Some(t) = r.tag.as_ref() {
                assert!(within(t.as_bytes(), buf));
            }
            let _ = (r.flag, char::from(r.letter));
            shape_inside(&r.shape, buf);
            for (k, v) in r.index.iter() {
                assert!(within(k.as_bytes(), buf));
                assert_eq!(r.index.get(k.as_str()), Some(v));
            }
            for (_, v) in r.sorted.iter() {
                assert!(within(v.as_bytes(), buf));
            }
            round_trip::<Record>(r);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fn greeting_inside(g: &ArchivedGreeting, buf: &[u8]) {
    assert!(within(g.name.as_bytes(), buf), "name outside the body");
    assert!(std::str::from_utf8(g.name.as_bytes()).is_ok());
    let values = g.values.as_slice();
    assert!(slice_within(values, buf), "values outside the body");
    let _ = values.iter().map(|v| v.to_native()).sum::<u32>();
}

fn shape_inside(s: &ArchivedShape, buf: &[u8]) {
    match s {
        ArchivedShape::Named(n) => assert!(within(n.as_bytes(), buf)),
        ArchivedShape::Path(p) => assert!(slice_within(p.as_slice(), buf)),
        ArchivedShape::Empty | ArchivedShape::Square { .. } => {}
    }
}

/// Whether the elements of `s` lie inside `buf` (compared as addresses).
fn slice_within<T>(s: &[T], buf: &[u8]) -> bool {
    let start = s.as_ptr() as usize;
    if s.is_empty() {
        return true;
    }
    let outer = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    start >= outer.start && start + std::mem::size_of_val(s) <= outer.end
}

/// Deserializes a checked archive, serializes it again, and checks the new
/// archive holds the same value.
fn round_trip<T>(archived: &T::Archived)
where
    T: isocall::Body
        + PartialEq
        + std::fmt::Debug
        + for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        > + rkyv::Archive<
            Archived: rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
        >,
{
    let value: T = rkyv::deserialize::<T, rkyv::rancor::Error>(archived).expect("deserialize");
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&value).expect("serialize");
    let mut inbox = Inbox::new();
    inbox.fill(&bytes);
    let again = inbox.check::<T>().expect("a re-serialized body checks");
    let back: T = rkyv::deserialize::<T, rkyv::rancor::Error>(again.get()).expect("deserialize");
    assert_eq!(back, value);
}

// ---------------------------------------------------------------------------
// helpers

/// Whether `inner` lies inside `outer`.
fn within(inner: &[u8], outer: &[u8]) -> bool {
    within_addr(
        inner,
        outer.as_ptr() as usize..outer.as_ptr() as usize + outer.len(),
    )
}

/// Whether the bytes of `inner` lie inside the address range `outer`.
fn within_addr(inner: &[u8], outer: Range<usize>) -> bool {
    // An empty slice reads nothing, wherever it points.
    let start = inner.as_ptr() as usize;
    inner.is_empty() || start >= outer.start && start + inner.len() <= outer.end
}

fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// The address of a region's first byte (the address of its first word).
fn region_base<R: Region>(r: &R) -> usize {
    std::ptr::from_ref(r.u64_at(0)) as usize
}

/// A little-endian word from up to 8 bytes (missing bytes zero).
fn word(chunk: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..chunk.len()].copy_from_slice(chunk);
    u64::from_le_bytes(w)
}

/// Stores `bytes` into the region from offset `at` (a multiple of 8), one
/// atomic word at a time; what does not fit is left out.
fn fill<R: Region>(region: &R, at: usize, bytes: &[u8]) {
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let off = at + i * 8;
        if off + 8 > region.len() {
            break;
        }
        region.u64_at(off).store(word(chunk), Ordering::Relaxed);
    }
}

/// As [`fill`], but a last partial word keeps the region's bytes after
/// the input's.
fn fill_bytes<R: Region>(region: &R, at: usize, bytes: &[u8]) {
    let whole = bytes.len() / 8 * 8;
    fill(region, at, &bytes[..whole]);
    let tail = &bytes[whole..];
    let off = at + whole;
    if !tail.is_empty() && off + 8 <= region.len() {
        let w = region.u64_at(off);
        let mut b = w.load(Ordering::Relaxed).to_le_bytes();
        b[..tail.len()].copy_from_slice(tail);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

/// The fuzzer's bytes, read front to back; past the end, reads give zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_le_bytes([
            b.first().copied().unwrap_or(0),
            b.get(1).copied().unwrap_or(0),
        ])
    }

    fn u64(&mut self) -> u64 {
        word(self.take(8))
    }

    fn handle(&mut self) -> BlobHandle {
        let mut h = [0u8; 16];
        let b = self.take(16);
        h[..b.len()].copy_from_slice(b);
        bytemuck::cast(h)
    }
}
