//! The seed inputs of every target, made by the real encoders: valid
//! messages, their truncations, and lies in each field. Written to
//! `fuzz/corpus/<target>/seed-*` by `regenerate_seeds`.

use std::sync::Arc;

use crate::common::{self, BlobOp, RING_RAW, RING_ZEROES};
use isocall::blob::{BlobHandle, PoolConfig};
use isocall::raw::handshake::{self, ClientHello, MethodInfo, ServerHelloHead};
use isocall::raw::wire::{self, CallHead, ErrorBody, PROTOCOL_VERSION, Status};
use isocall::raw::{PAGE, Segment, SegmentLayout};
use isocall::ring::wait::SpinParker;
use isocall::ring::{Consumer, HeapRegion, Producer, RING_CONTROL_BYTES, Region};
use isocall::rpc::{MethodKind, PolicyRefusal, Refusal, Signature, TypeSig};
use isocall::stream::codec;

/// Every target's seeds, by target name.
pub fn all() -> [(&'static str, Seeds); 9] {
    [
        ("frame_head", frame_seeds()),
        ("hello", hello_seeds()),
        ("segment_header", segment_seeds()),
        ("ring_frames", ring_seeds()),
        ("blob_handles", blob_seeds()),
        ("body", body_seeds()),
        ("stream_frames", stream_frame_seeds()),
        ("stream_hello", stream_hello_seeds()),
        ("udp_datagram", udp_datagram_seeds()),
    ]
}

/// Named inputs for one target.
pub type Seeds = Vec<(String, Vec<u8>)>;

/// Prefixes of `bytes` cut at each of `cuts` (those shorter than it).
fn cuts(name: &str, bytes: &[u8], cuts: &[usize]) -> Seeds {
    cuts.iter()
        .filter(|&&n| n < bytes.len())
        .map(|&n| (format!("{name}-cut{n}"), bytes[..n].to_vec()))
        .collect()
}

fn handle(class: u32, slot: u32, generation: u32, len: u32) -> BlobHandle {
    BlobHandle {
        class,
        slot,
        generation,
        len,
    }
}

fn call_frame(head: CallHead, blobs: &[BlobHandle], body: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; wire::HEAD + blobs.len() * wire::HANDLE + body.len()];
    let at = wire::write_head(&mut buf, &head, blobs);
    buf[at..].copy_from_slice(body);
    buf
}

fn frame_seeds() -> Seeds {
    let add = rkyv::to_bytes::<rkyv::rancor::Error>(&common::Add { a: 2, b: 40 }).unwrap();
    let req = CallHead {
        id: 1,
        method: 0,
        body_len: add.len() as u32,
        ..CallHead::default()
    };
    let blobs = [handle(0, 3, 1, 100), handle(1, 0, 7, 4096)];
    let two = CallHead {
        id: 9,
        status: Status::Ok as u32,
        nblobs: 2,
        body_len: 5,
        ..CallHead::default()
    };
    let two_blobs = call_frame(two, &blobs, b"hello");
    let mut err = vec![0u8; 64];
    let n = ErrorBody::write(&mut err, 7, "the handler said no: «non»");
    err.truncate(n);
    let app = CallHead {
        id: 3,
        status: Status::AppError as u32,
        body_len: err.len() as u32,
        ..CallHead::default()
    };
    let close = 5u32.to_le_bytes();
    let mut v = vec![
        ("request-add".into(), call_frame(req, &[], &add)),
        ("response-two-blobs".into(), two_blobs.clone()),
        ("response-app-error".into(), call_frame(app, &[], &err)),
        (
            "close-protocol-violation".into(),
            call_frame(
                CallHead {
                    body_len: 4,
                    ..CallHead::default()
                },
                &[],
                &close,
            ),
        ),
        (
            "sixteen-blobs".into(),
            call_frame(
                CallHead {
                    nblobs: 16,
                    ..CallHead::default()
                },
                &[handle(0, 1, 2, 3); 16],
                b"",
            ),
        ),
        (
            "seventeen-blobs".into(),
            call_frame(
                CallHead {
                    nblobs: 17,
                    ..CallHead::default()
                },
                &[handle(0, 1, 2, 3); 16],
                &[0; 16],
            ),
        ),
        (
            "body-len-max".into(),
            call_frame(
                CallHead {
                    nblobs: 1,
                    body_len: u32::MAX,
                    ..CallHead::default()
                },
                &blobs[..1],
                b"x",
            ),
        ),
        (
            "error-not-utf8".into(),
            call_frame(
                CallHead {
                    status: Status::BadRequest as u32,
                    body_len: 8,
                    ..CallHead::default()
                },
                &[],
                &[0, 0, 0, 0, 0xff, 0xfe, b'a', 0xc3],
            ),
        ),
        ("empty".into(), Vec::new()),
    ];
    v.extend(cuts(
        "response-two-blobs",
        &two_blobs,
        &[8, 31, 32, 40, 48, 80],
    ));
    v
}

fn sig(req: &str, reply: Option<&str>) -> Signature {
    Signature {
        kind: if reply.is_some() {
            MethodKind::Call
        } else {
            MethodKind::Message
        },
        request: TypeSig {
            name: req.into(),
            fingerprint: 0x1234_5678_9abc_def0,
        },
        reply: reply.map(|r| TypeSig {
            name: r.into(),
            fingerprint: 42,
        }),
    }
}

fn hello_seeds() -> Seeds {
    let methods = vec![
        MethodInfo {
            name: "add".into(),
            idempotent: true,
            signature: sig("Add", Some("Sum")),
        },
        MethodInfo {
            name: "log".into(),
            idempotent: false,
            signature: sig("Line", None),
        },
        MethodInfo {
            name: "größe".into(),
            idempotent: false,
            signature: sig("Vec<u32>", Some("Option<String>")),
        },
    ];
    let head = ServerHelloHead {
        magic: handshake::HELLO_MAGIC,
        version: PROTOCOL_VERSION,
        nmethods: methods.len() as u32,
        max_frame: 1 << 20,
        conn: 7,
    };
    let hello = handshake::encode_hello(&head, &methods);
    let lying = handshake::encode_hello(
        &ServerHelloHead {
            nmethods: u32::MAX,
            ..head
        },
        &methods[..1],
    );
    let refusals = [
        Refusal::Policy(PolicyRefusal::NotSameUid {
            uid: 1000,
            expected: 0,
        }),
        Refusal::Policy(PolicyRefusal::NotAllowed { uid: 5, gid: 9 }),
        Refusal::Policy(PolicyRefusal::Custom {
            reason: "only on tuesdays".into(),
        }),
        Refusal::Version {
            server: 3,
            client: 2,
        },
        Refusal::TooManyConnections { limit: 1024 },
        Refusal::TooManyForUid {
            uid: 1000,
            limit: 256,
        },
        Refusal::Busy { limit: 64 },
        Refusal::Stopping,
        Refusal::Resources { errno: 24 },
        Refusal::Other { code: 99 },
    ];
    let mut v = vec![
        ("server-hello".into(), hello.clone()),
        (
            "server-hello-empty".into(),
            handshake::encode_hello(
                &ServerHelloHead {
                    nmethods: 0,
                    ..head
                },
                &[],
            ),
        ),
        ("server-hello-lying-count".into(), lying),
        (
            "client-hello".into(),
            bytemuck::bytes_of(&ClientHello::ours()).to_vec(),
        ),
        ("client-hello-bad-magic".into(), vec![0x49; 16]),
        ("abort".into(), handshake::encode_abort("cannot map")),
        ("ready".into(), vec![handshake::READY]),
    ];
    for (i, r) in refusals.iter().enumerate() {
        v.push((format!("refusal-{i}"), handshake::encode_refusal(r)));
    }
    v.extend(cuts("server-hello", &hello, &[1, 10, 25, 30, 49, 60, 80]));
    v
}

/// The bytes of a memfd from `at`, `n` of them.
fn read_fd(seg: &Segment, at: u64, n: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::from(seg.fd().try_clone_to_owned().unwrap());
    let mut buf = vec![0u8; n];
    f.read_exact_at(&mut buf, at).unwrap();
    buf
}

fn segment_seeds() -> Seeds {
    let header = std::mem::size_of::<isocall::raw::SegmentHeader>();
    let plain = Segment::create(
        "isocall:seed:plain",
        &SegmentLayout {
            ring_capacity: 4096,
            blobs: PoolConfig::new(),
        },
    )
    .unwrap();
    let pooled = Segment::create(
        "isocall:seed:pool",
        &SegmentLayout {
            ring_capacity: 8192,
            blobs: PoolConfig::new().class(64, 8).class(256, 3),
        },
    )
    .unwrap();
    pooled.write_method_table(&["add", "log", "snprintf"]);
    // The creator's pid, fixed so that the seeds are the same on every run.
    let pid = 4242u32.to_le_bytes();
    let mut page = read_fd(&pooled, 0, PAGE as usize);
    page[80..84].copy_from_slice(&pid);
    let pool = read_fd(&pooled, pooled.header().blobs.offset, 512);
    let mut plain_head = read_fd(&plain, 0, header);
    plain_head[80..84].copy_from_slice(&pid);
    let mut v = vec![
        ("plain-header".into(), plain_head.clone()),
        ("pool-header-only".into(), page[..header].to_vec()),
        ("pool-page-and-pool".into(), [&page[..], &pool[..]].concat()),
        ("pool-page".into(), page.clone()),
    ];
    // One field at a time made wrong, as the engine's own tests do.
    let fields: [(&str, usize, u64); 8] = [
        ("magic", 0, 7),
        ("version", 8, 2 | (104 << 32)),
        ("total", 16, 1 << 40),
        ("capacity", 24, 8192),
        ("c2s-offset", 32, 4097),
        ("s2c-on-c2s", 48, 4096),
        ("blob-size", 72, u64::MAX),
        ("blob-offset", 64, 4096),
    ];
    for (name, at, value) in fields {
        let mut b = plain_head.clone();
        b[at..at + 8].copy_from_slice(&value.to_le_bytes());
        v.push((format!("plain-bad-{name}"), b));
    }
    v.extend(cuts("plain-header", &plain_head, &[8, 24, 100]));
    v
}

/// A region's bytes, read word by word (with no grant, frame or blob of
/// it live).
fn dump<R: Region>(r: &R) -> Vec<u8> {
    // SAFETY: the callers dump a region once its ring or pool is done with
    // (no grant, frame or blob of it is live), so no slice covers a word.
    let load = |i: usize| unsafe { r.load_u64(i * 8) };
    (0..r.len() / 8)
        .flat_map(|i| load(i).to_le_bytes())
        .collect()
}

/// A ring of `cap` bytes after `steps`: frames pushed (`Some(len)`, kind
/// 1 + len % 5, published each time) or read (`None`), dumped raw.
fn ring_after(cap: usize, steps: &[Option<usize>]) -> Vec<u8> {
    let region = Arc::new(HeapRegion::new(RING_CONTROL_BYTES + cap));
    let mut tx = Producer::attach(region.clone(), SpinParker).unwrap();
    let mut rx = Consumer::attach(region.clone(), SpinParker).unwrap();
    for (i, s) in steps.iter().enumerate() {
        match s {
            Some(len) => {
                let payload: Vec<u8> = (0..*len).map(|b| (b + i) as u8).collect();
                tx.push(1 + (*len % 5) as u16, &payload).unwrap();
                tx.publish();
            }
            None => {
                let f = rx.peek().unwrap().expect("a frame to read");
                f.release();
                rx.flush();
            }
        }
    }
    let config = (cap / 128).trailing_zeros() as u8 | RING_RAW;
    [&[config][..], &dump(&*region)].concat()
}

fn ring_seeds() -> Seeds {
    // A call frame as a payload, in a ring read from position 0.
    let frame = call_frame(
        CallHead {
            id: 1,
            body_len: 8,
            ..CallHead::default()
        },
        &[],
        b"payload!",
    );
    let word = |len: u64, kind: u64, flags: u64| (len | kind << 32 | flags << 48).to_le_bytes();
    let mut simple = vec![0u8, 0, 0, 0, 0, 0, 0, 0, 0];
    simple.extend_from_slice(&word(frame.len() as u64, 1, 0));
    simple.extend_from_slice(&[0; 8]);
    simple.extend_from_slice(&frame);
    // A pad at position 64 of a 128-byte ring, then a frame at 0.
    let mut pad = vec![0u8];
    pad.extend_from_slice(&64u64.to_le_bytes());
    pad.extend_from_slice(&word(48, 0xFFFF, 0));
    pad.extend_from_slice(&[0; 56]);
    pad.extend_from_slice(&word(3, 2, 7));
    pad.extend_from_slice(&[0; 8]);
    pad.extend_from_slice(b"abc");
    // Two frames, each read forever unless the consumer zeroes.
    let mut lap = vec![RING_ZEROES];
    lap.extend_from_slice(&[0; 8]);
    for _ in 0..2 {
        lap.extend_from_slice(&word(8, 3, 0));
        lap.extend_from_slice(&[0x11; 56]);
    }
    let mut bad_kind = simple.clone();
    bad_kind[9 + 4..9 + 6].copy_from_slice(&0u16.to_le_bytes());
    let mut too_long = simple.clone();
    too_long[9..13].copy_from_slice(&1000u32.to_le_bytes());
    vec![
        ("frame-at-0".into(), simple),
        ("pad-then-wrap".into(), pad),
        ("two-laps-zeroed".into(), lap),
        ("bad-kind".into(), bad_kind),
        ("too-long".into(), too_long),
        (
            "head-near-max".into(),
            [&[1u8][..], &(u64::MAX - 63).to_le_bytes()[..]].concat(),
        ),
        ("empty-4096".into(), vec![5]),
        (
            "producer-128".into(),
            ring_after(128, &[Some(5), None, Some(20)]),
        ),
        (
            "producer-256-wrapped".into(),
            ring_after(256, &[Some(40), Some(40), None, None, Some(100), Some(1)]),
        ),
        (
            "producer-1024".into(),
            ring_after(1024, &[Some(0), Some(48), Some(49), Some(300), None]),
        ),
    ]
}

/// A blob input: the classes, no overwrite, then `ops`.
fn blob_input(classes: &[(u8, u8)], ops: &[(BlobOp, Vec<u8>)]) -> Vec<u8> {
    let mut v = vec![classes.len() as u8 - 1];
    for (size, count) in classes {
        v.extend_from_slice(&[*size, *count]);
    }
    v.extend_from_slice(&0u16.to_le_bytes());
    for (op, args) in ops {
        v.push(*op as u8);
        v.extend_from_slice(args);
    }
    v
}

fn blob_seeds() -> Seeds {
    use BlobOp::*;
    let h = |class, slot, generation, len| handle(class, slot, generation, len).to_bytes().to_vec();
    let len = |n: u16| n.to_le_bytes().to_vec();
    let two = [(0u8, 7u8), (1, 2)]; // 64 B x 8, 384 B x 3
    let state = |generation: u64, code: u64| (generation << 32 | code).to_le_bytes();
    let mut v = vec![
        (
            "peer-sends-we-accept".into(),
            blob_input(
                &two,
                &[
                    (PeerSend, len(10)),
                    (Accept, h(0, 0, 1, 10)),
                    (Stats, vec![]),
                    (Drop, vec![0]),
                    (Stats, vec![]),
                ],
            ),
        ),
        (
            "in-out-buffer".into(),
            blob_input(
                &two,
                &[
                    (PeerSend, len(300)),
                    (AcceptMut, h(1, 0, 1, 300)),
                    (Send, vec![0]),
                    (PeerAccept, h(1, 0, 1, 300)),
                    (Stats, vec![]),
                ],
            ),
        ),
        (
            "alloc-send-recall".into(),
            blob_input(
                &two,
                &[
                    (Alloc, len(64)),
                    (Send, vec![0]),
                    (Recall, h(0, 0, 1, 64)),
                    (Alloc, len(65)),
                    (Stats, vec![]),
                ],
            ),
        ),
        (
            "take-back-from-dead-peer".into(),
            blob_input(
                &two,
                &[
                    (Alloc, len(8)),
                    (Send, vec![0]),
                    (PokeState, [&[0u8, 0][..], &state(1, 2)[..]].concat()),
                    (TakeBack, h(0, 0, 1, 8)),
                    (Stats, vec![]),
                ],
            ),
        ),
        (
            "reclaim-after-peer-death".into(),
            blob_input(
                &two,
                &[
                    (PeerSend, len(1)),
                    (PeerSend, len(2)),
                    (Alloc, len(3)),
                    (Send, vec![0]),
                    (Reclaim, vec![]),
                    (Stats, vec![]),
                    (Accept, h(0, 0, 1, 1)),
                ],
            ),
        ),
        (
            "stale-and-forged-handles".into(),
            blob_input(
                &two,
                &[
                    (PeerSend, len(10)),
                    (Accept, h(0, 0, 2, 10)),
                    (Accept, h(0, 99, 1, 10)),
                    (Accept, h(5, 0, 1, 10)),
                    (Accept, h(0, 0, 1, 65)),
                    (AcceptMut, h(0, 0, 1, 10)),
                    (Accept, h(0, 0, 1, 10)),
                ],
            ),
        ),
        (
            "exhausted-with-lying-bitmap".into(),
            blob_input(
                &[(0, 1)],
                &[
                    (
                        PokeBitmap,
                        [&[0u8, 0][..], &u64::MAX.to_le_bytes()[..]].concat(),
                    ),
                    (Alloc, len(1)),
                    (Alloc, len(1)),
                    (PokeState, [&[0u8, 0][..], &state(9, 0x77)[..]].concat()),
                    (Stats, vec![]),
                    (Reclaim, vec![]),
                ],
            ),
        ),
        (
            "poke-anywhere".into(),
            blob_input(
                &two,
                &[
                    (PokeAny, [&len(0)[..], &[0xff; 8][..]].concat()),
                    (PokeAny, [&len(9)[..], &[0xff; 8][..]].concat()),
                    (Alloc, len(10)),
                    (Stats, vec![]),
                ],
            ),
        ),
    ];
    // A header the peer rewrote: the first bytes of the region replaced.
    let mut bad = vec![0u8, 0, 7];
    bad.extend_from_slice(&8u16.to_le_bytes());
    bad.extend_from_slice(b"ISOBLOB2");
    v.push(("bad-magic".into(), bad));
    v
}

fn body_seeds() -> Seeds {
    use common::{Add, Greeting, Record, Shape};
    let bytes = |r: Result<rkyv::util::AlignedVec, rkyv::rancor::Error>| r.unwrap().to_vec();
    let greeting = Greeting {
        name: "hello, wörld".into(),
        values: vec![1, 2, 3, 0xdead_beef],
    };
    let record = Record {
        items: vec![
            Greeting {
                name: "a string longer than eight".into(),
                values: vec![],
            },
            Greeting {
                name: String::new(),
                values: vec![7; 5],
            },
        ],
        tag: Some("tag".into()),
        flag: true,
        letter: 'é',
        shape: Shape::Path(vec![(1, -1), (i32::MAX, i32::MIN)]),
        index: [("one".to_string(), 1), ("two".to_string(), 2)]
            .into_iter()
            .collect(),
        sorted: [(3, "three".to_string()), (1, "one".to_string())]
            .into_iter()
            .collect(),
    };
    let g = bytes(rkyv::to_bytes(&greeting));
    let r = bytes(rkyv::to_bytes(&record));
    let mut v = vec![
        ("greeting".into(), g.clone()),
        (
            "add".into(),
            bytes(rkyv::to_bytes(&Add { a: 2, b: u64::MAX })),
        ),
        ("shape-empty".into(), bytes(rkyv::to_bytes(&Shape::Empty))),
        (
            "shape-square".into(),
            bytes(rkyv::to_bytes(&Shape::Square { side: 9 })),
        ),
        (
            "shape-named".into(),
            bytes(rkyv::to_bytes(&Shape::Named("a name, long enough".into()))),
        ),
        ("record".into(), r.clone()),
    ];
    v.extend(cuts("greeting", &g, &[0, 8, 16]));
    v.extend(cuts("record", &r, &[r.len() / 2, r.len() - 8]));
    // The tail (the root) of each, alone: relative pointers to nowhere.
    v.push(("greeting-root-only".into(), g[g.len() - 16..].to_vec()));
    v.push(("record-root-only".into(), r[r.len() - 64..].to_vec()));
    v
}

/// A `stream_frames` input: the limits selector, then the bytes.
fn selected(sel: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![sel];
    v.extend_from_slice(bytes);
    v
}

/// `stream_frames` selectors (see `common::stream_frames`).
const SEL_PLAIN: u8 = 0;
const SEL_LZ4: u8 = 1;
const SEL_SMALL_PAYLOAD: u8 = 8;
const SEL_TINY_FRAME: u8 = 4;

/// A frame written by hand: the varint of its length, the header, `rest`.
fn raw_stream_frame(len: u32, kind: u16, flags: u16, rest: &[u8]) -> Vec<u8> {
    let n = (codec::HEADER + rest.len()) as u32;
    let mut v = [0u8; codec::MAX_VARINT];
    let vlen = codec::write_varint(n, &mut v);
    let mut f = v[..vlen].to_vec();
    f.extend_from_slice(&len.to_le_bytes());
    f.extend_from_slice(&kind.to_le_bytes());
    f.extend_from_slice(&flags.to_le_bytes());
    f.extend_from_slice(rest);
    f
}

fn stream_frame_seeds() -> Seeds {
    let encode = |lz4: bool, kind: u16, flags: u16, payload: &[u8], blobs: &[&[u8]]| {
        let mut out = Vec::new();
        codec::Encoder::new(lz4.then(codec::Lz4::default))
            .encode(&mut out, kind, flags, payload, blobs, 64 << 10)
            .expect("encode a seed frame");
        out
    };
    let text: Vec<u8> = (0..4096u32)
        .flat_map(|i| format!("line {i} ").into_bytes())
        .take(4096)
        .collect();
    let plain = encode(false, 1, 0, &[7u8; 64], &[]);
    let with_blobs = encode(false, 3, 0x0102, b"head", &[b"first blob", &[0xAB; 300]]);
    let squeezed = encode(true, 2, 0, &text, &[&text[..2048], b"short"]);
    assert!(squeezed.len() < text.len(), "the lz4 seed is compressed");
    // Three varint bytes: 20,000 bytes of payload.
    let long = encode(false, 1, 0, &vec![0x5A; 20_000], &[]);
    let garbage_lz4 = {
        let mut rest = 9u32.to_le_bytes().to_vec();
        rest.extend_from_slice(&[0xFF, 0x00, 0x13, 0x37, 0xDE, 0xAD, 0xBE, 0xEF, 0x42]);
        raw_stream_frame(64, 1, codec::FLAG_LZ4, &rest)
    };
    let mut v = vec![
        ("plain".into(), selected(SEL_PLAIN, &plain)),
        ("plain-lz4-allowed".into(), selected(SEL_LZ4, &plain)),
        (
            "empty-payload".into(),
            selected(SEL_PLAIN, &encode(false, 1, 0, &[], &[])),
        ),
        ("blobs".into(), selected(SEL_PLAIN, &with_blobs)),
        ("lz4".into(), selected(SEL_LZ4, &squeezed)),
        ("lz4-not-negotiated".into(), selected(SEL_PLAIN, &squeezed)),
        ("varint-3-bytes".into(), selected(SEL_PLAIN, &long)),
        (
            "varint-3-bytes-too-large".into(),
            selected(SEL_TINY_FRAME, &long),
        ),
        (
            "payload-over-limit".into(),
            selected(SEL_SMALL_PAYLOAD, &long),
        ),
        (
            "two-frames".into(),
            selected(SEL_PLAIN, &[plain.clone(), with_blobs.clone()].concat()),
        ),
        ("lz4-garbage".into(), selected(SEL_LZ4, &garbage_lz4)),
        (
            "lz4-garbage-not-negotiated".into(),
            selected(SEL_PLAIN, &garbage_lz4),
        ),
        (
            "lz4-zero-clen".into(),
            selected(
                SEL_LZ4,
                &raw_stream_frame(16, 1, codec::FLAG_LZ4, &0u32.to_le_bytes()),
            ),
        ),
        (
            "lz4-clen-past-end".into(),
            selected(
                SEL_LZ4,
                &raw_stream_frame(16, 1, codec::FLAG_LZ4, &999u32.to_le_bytes()),
            ),
        ),
        // Five-byte varints: 2^28, u32::MAX, past u32::MAX; six bytes.
        (
            "varint-5-bytes".into(),
            selected(SEL_PLAIN, &[0x80, 0x80, 0x80, 0x80, 0x01, 1, 0, 0, 0]),
        ),
        (
            "varint-5-bytes-max".into(),
            selected(SEL_PLAIN, &[0xFF, 0xFF, 0xFF, 0xFF, 0x0F]),
        ),
        (
            "varint-5-bytes-overflow".into(),
            selected(SEL_PLAIN, &[0xFF, 0xFF, 0xFF, 0xFF, 0x10]),
        ),
        (
            "varint-6-bytes".into(),
            selected(SEL_PLAIN, &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]),
        ),
        (
            "varint-4-bytes-unfinished".into(),
            selected(SEL_PLAIN, &[0x80, 0x80, 0x80, 0x80]),
        ),
        ("varint-overlong".into(), selected(SEL_PLAIN, &[0xC8, 0x00])),
        (
            "frame-shorter-than-header".into(),
            selected(SEL_PLAIN, &[0x07, 0, 0, 0, 0, 1, 0, 0]),
        ),
        (
            "kind-0".into(),
            selected(SEL_PLAIN, &raw_stream_frame(0, 0, 0, &[])),
        ),
        (
            "kind-max".into(),
            selected(
                SEL_PLAIN,
                &raw_stream_frame(0, isocall::ring::MAX_USER_KIND, 0, &[]),
            ),
        ),
        (
            "kind-past-max".into(),
            selected(
                SEL_PLAIN,
                &raw_stream_frame(0, isocall::ring::MAX_USER_KIND + 1, 0, &[]),
            ),
        ),
        (
            "blob-count-0".into(),
            selected(
                SEL_PLAIN,
                &raw_stream_frame(0, 1, codec::FLAG_BLOBS, &0u32.to_le_bytes()),
            ),
        ),
        (
            "blob-count-17".into(),
            selected(
                SEL_PLAIN,
                &raw_stream_frame(0, 1, codec::FLAG_BLOBS, &17u32.to_le_bytes()),
            ),
        ),
        (
            "blob-count-no-room".into(),
            selected(
                SEL_PLAIN,
                &raw_stream_frame(0, 1, codec::FLAG_BLOBS, &[1, 0]),
            ),
        ),
        (
            "blob-compressed-not-negotiated".into(),
            selected(
                SEL_PLAIN,
                &raw_stream_frame(
                    0,
                    1,
                    codec::FLAG_BLOBS,
                    &[1, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 0, 0],
                ),
            ),
        ),
        (
            "blob-decodes-too-large".into(),
            selected(
                SEL_LZ4 | SEL_TINY_FRAME,
                &raw_stream_frame(
                    0,
                    1,
                    codec::FLAG_BLOBS,
                    &[1, 0, 0, 0, 0xFF, 0xFF, 0, 0, 1, 0, 0, 0, 0],
                ),
            ),
        ),
        (
            "trailing-bytes".into(),
            selected(SEL_PLAIN, &raw_stream_frame(2, 1, 0, b"abcd")),
        ),
        (
            "payload-past-end".into(),
            selected(SEL_PLAIN, &raw_stream_frame(200, 1, 0, b"abcd")),
        ),
        (
            "user-flags".into(),
            selected(SEL_PLAIN, &encode(false, 9, 0x3FFF, b"flags", &[])),
        ),
    ];
    v.extend(cuts(
        "plain",
        &selected(SEL_PLAIN, &plain),
        &[1, 2, 5, 9, 40],
    ));
    v.extend(cuts(
        "blobs",
        &selected(SEL_PLAIN, &with_blobs),
        &[14, 20, 30, 100],
    ));
    v.extend(cuts("lz4", &selected(SEL_LZ4, &squeezed), &[3, 12, 50]));
    v
}

fn stream_hello_seeds() -> Seeds {
    let methods = vec![
        MethodInfo {
            name: "add".into(),
            idempotent: true,
            signature: sig("Add", Some("Sum")),
        },
        MethodInfo {
            name: "log".into(),
            idempotent: false,
            signature: sig("Line", None),
        },
    ];
    let head = ServerHelloHead {
        magic: handshake::HELLO_MAGIC,
        version: PROTOCOL_VERSION,
        nmethods: methods.len() as u32,
        max_frame: 64 << 10,
        conn: 3,
    };
    let stream = handshake::StreamServerHello {
        flags: handshake::STREAM_LZ4,
        lz4_threshold: 512,
        pid: 4242,
        ..handshake::StreamServerHello::default()
    };
    let pool = PoolConfig::new().class(4096, 8).class(256, 64);
    let hello = handshake::encode_stream_hello(&head, &stream, pool.classes(), &methods);
    let no_pool = handshake::encode_stream_hello(&head, &stream, &[], &methods);
    let classes = |c: &[(usize, usize)]| -> Vec<isocall::blob::ClassConfig> {
        c.iter()
            .map(|&(slot_size, count)| isocall::blob::ClassConfig { slot_size, count })
            .collect()
    };
    let huge_pool =
        handshake::encode_stream_hello(&head, &stream, &classes(&[(1 << 20, 4096)]), &methods);
    let bad_pool =
        handshake::encode_stream_hello(&head, &stream, &classes(&[(100, 3), (0, 1)]), &methods);
    let many = classes(&[(256, 1); 17]);
    let too_many_classes = handshake::encode_stream_hello(&head, &stream, &many, &methods);
    let big_frames = handshake::encode_stream_hello(
        &ServerHelloHead {
            max_frame: u32::MAX,
            ..head
        },
        &stream,
        &[],
        &methods,
    );
    let lying = handshake::encode_stream_hello(
        &ServerHelloHead {
            nmethods: 1000,
            ..head
        },
        &stream,
        pool.classes(),
        &methods,
    );
    let mut bad_magic = hello.clone();
    bad_magic[1] ^= 0xFF;
    let mut v = vec![
        ("stream-hello".into(), hello.clone()),
        ("stream-hello-no-pool".into(), no_pool),
        ("stream-hello-huge-pool".into(), huge_pool),
        ("stream-hello-bad-pool".into(), bad_pool),
        ("stream-hello-17-classes".into(), too_many_classes),
        ("stream-hello-big-frames".into(), big_frames),
        ("stream-hello-lying-count".into(), lying),
        ("stream-hello-bad-magic".into(), bad_magic),
    ];
    v.extend(cuts("stream-hello", &hello, &[1, 10, 25, 41, 57, 70, 100]));
    v
}

fn udp_datagram_seeds() -> Seeds {
    use isocall::channel::udp::datagram::Header;
    let datagram = |h: Header, body: &[u8]| {
        let mut d = h.encode().to_vec();
        d.extend_from_slice(body);
        d
    };
    let body = b"an rkyv body, or not";
    let h = Header {
        fingerprint: 0x0123_4567_89ab_cdef,
        seq: 41,
        stream: 7,
        body_len: body.len() as u32,
    };
    let good = datagram(h, body);
    let mut bad_magic = good.clone();
    bad_magic[0] ^= 0xff;
    let mut bad_version = good.clone();
    bad_version[4] = 2;
    let mut reserved = good.clone();
    reserved[6] = 0xaa;
    let mut seeds: Seeds = vec![
        ("good".into(), good.clone()),
        (
            "empty-body".into(),
            datagram(Header { body_len: 0, ..h }, &[]),
        ),
        ("bad-magic".into(), bad_magic),
        ("bad-version".into(), bad_version),
        ("reserved-set".into(), reserved),
        (
            "long-said".into(),
            datagram(
                Header {
                    body_len: u32::MAX,
                    ..h
                },
                body,
            ),
        ),
        (
            "short-said".into(),
            datagram(Header { body_len: 1, ..h }, body),
        ),
        (
            "seq-max".into(),
            datagram(Header { seq: u64::MAX, ..h }, body),
        ),
    ];
    seeds.extend(cuts("good", &good, &[0, 4, 31, 32, 40]));
    seeds
}
