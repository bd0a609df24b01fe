//! Unit tests of the stream codec: round trips, every prefix, garbage, and
//! each strict check.

use super::*;

const LIMITS: Limits = Limits {
    max_frame: 1 << 20,
    max_payload: 1 << 16,
    lz4: true,
};

/// A small deterministic generator (xorshift64*), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn frame(enc: &mut Encoder, kind: u16, flags: u16, payload: &[u8], blobs: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let n = enc
        .encode(&mut out, kind, flags, payload, blobs, LIMITS.max_frame)
        .unwrap();
    assert_eq!(n, out.len());
    out
}

fn whole(buf: &[u8], limits: &Limits) -> FrameLayout {
    match decode(buf, limits).unwrap() {
        Decoded::Frame(f) => f,
        other => panic!("expected a whole frame, got {other:?}"),
    }
}

fn section_bytes(buf: &[u8], s: &Section, part: Part) -> Vec<u8> {
    let mut out = vec![0u8; s.len];
    s.decode_into(buf, &mut out, part).unwrap();
    out
}

#[test]
fn varints_are_minimal_leb128_of_at_most_five_bytes() {
    for v in [
        0u32,
        1,
        127,
        128,
        300,
        16_383,
        16_384,
        1 << 21,
        1 << 28,
        u32::MAX,
    ] {
        let mut b = [0u8; MAX_VARINT];
        let n = write_varint(v, &mut b);
        assert_eq!(n, varint_len(v), "{v}");
        assert_eq!(read_varint(&b[..n]).unwrap(), Some((v, n)), "{v}");
        // Every proper prefix asks for more.
        for k in 0..n {
            assert_eq!(read_varint(&b[..k]).unwrap(), None);
        }
    }
    assert_eq!(write_varint(300, &mut [0; 5]), 2);
    let mut b = [0u8; 5];
    write_varint(300, &mut b);
    assert_eq!(&b[..2], &[0xAC, 0x02]);
}

#[test]
fn bad_varints_are_typed_errors() {
    // Six bytes: five with the continuation bit, then more.
    assert_eq!(
        read_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]),
        Err(CodecError::VarintTooLong)
    );
    // The sixth byte need not even be there: the fifth says it follows.
    assert_eq!(
        read_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
        Err(CodecError::VarintTooLong)
    );
    assert_eq!(
        read_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x1F]),
        Err(CodecError::VarintOverflow)
    );
    assert_eq!(read_varint(&[0x80, 0x00]), Err(CodecError::VarintOverlong));
    assert_eq!(
        decode(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01], &LIMITS),
        Err(CodecError::VarintTooLong)
    );
}

#[test]
fn the_documented_example_is_what_goes_out() {
    let mut enc = Encoder::new(None);
    let f = frame(&mut enc, 1, 0, &[7u8; 64], &[]);
    assert_eq!(f.len(), 73);
    assert_eq!(&f[..9], &[0x48, 0x40, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(&f[9..], &[7u8; 64]);
}

#[test]
fn frames_round_trip_with_blobs_and_compression() {
    let mut rng = Rng(7);
    let noise = rng.bytes(3000);
    let text: Vec<u8> = b"the quick brown fox "
        .iter()
        .cycle()
        .take(5000)
        .copied()
        .collect();
    for compression in [None, Some(Lz4 { threshold: 256 })] {
        let mut enc = Encoder::new(compression);
        for (payload, blobs) in [
            (&b""[..], vec![]),
            (&text[..100], vec![]),
            (&text[..], vec![&noise[..], &text[..], &b""[..]]),
            (&noise[..], vec![&text[..1000]]),
        ] {
            let f = frame(&mut enc, 3, 0x0101, payload, &blobs);
            let got = whole(&f, &LIMITS);
            assert_eq!(got.consumed, f.len());
            assert_eq!(got.kind, 3);
            assert_eq!(got.user_flags(), 0x0101);
            assert_eq!(got.nblobs, blobs.len());
            assert_eq!(got.flags & FLAG_BLOBS != 0, !blobs.is_empty());
            assert_eq!(section_bytes(&f, &got.payload, Part::Payload), payload);
            for (i, (s, b)) in got.blobs().iter().zip(&blobs).enumerate() {
                assert_eq!(section_bytes(&f, s, Part::Blob(i as u8)), *b);
            }
            // Compression only where it saves an eighth: text yes, noise no.
            let text_like = payload.len() >= 256 && payload.as_ptr() == text.as_ptr();
            assert_eq!(got.payload.lz4, compression.is_some() && text_like);
            assert!(!got.payload.lz4 || got.flags & FLAG_LZ4 != 0);
            for (s, b) in got.blobs().iter().zip(&blobs) {
                if s.lz4 {
                    assert!(s.end - s.start <= b.len() - b.len() / 8);
                } else {
                    assert_eq!(s.end - s.start, b.len());
                }
            }
        }
    }
}

#[test]
fn transport_flags_are_not_the_senders_to_set() {
    let mut enc = Encoder::new(None);
    let f = frame(&mut enc, 2, 0xFFFF, b"abc", &[]);
    let got = whole(&f, &LIMITS);
    assert_eq!(got.flags, USER_FLAGS);
    assert!(!got.payload.lz4 && got.nblobs == 0);
}

#[test]
fn every_prefix_is_incomplete_and_never_an_error() {
    let mut enc = Encoder::new(Some(Lz4 { threshold: 64 }));
    let text: Vec<u8> = b"abcabcabd".iter().cycle().take(700).copied().collect();
    let mut stream = Vec::new();
    stream.extend(frame(&mut enc, 1, 0, &text, &[&text[..300], b"xy"]));
    let first = stream.len();
    stream.extend(frame(&mut enc, 5, 0, &[1, 2, 3, 4], &[]));
    stream.extend(frame(&mut enc, 2, 0, &[0u8; 200], &[]));
    for k in 0..first {
        match decode(&stream[..k], &LIMITS).unwrap() {
            Decoded::Incomplete { need } => {
                if k > 0 {
                    assert_eq!(need, Some(first), "prefix {k}");
                }
            }
            other => panic!("prefix {k} decoded as {other:?}"),
        }
    }
    // Frame after frame, each prefix of the rest too.
    let mut at = 0;
    let mut kinds = Vec::new();
    while at < stream.len() {
        let f = whole(&stream[at..], &LIMITS);
        for k in 0..f.consumed {
            assert!(matches!(
                decode(&stream[at..at + k], &LIMITS),
                Ok(Decoded::Incomplete { .. })
            ));
        }
        kinds.push(f.kind);
        at += f.consumed;
    }
    assert_eq!(kinds, [1, 5, 2]);
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let small = Limits {
        max_frame: 4096,
        max_payload: 2048,
        lz4: true,
    };
    let mut frames = 0;
    for round in 0..20_000 {
        let len = rng.below(64);
        let mut buf = rng.bytes(len);
        // Often a plausible start, so the checks past the varint run too.
        if round % 2 == 0 && len > 9 {
            buf[0] = (len - 1) as u8 & 0x7F;
            buf[1..5].copy_from_slice(&((len - 9) as u32).to_le_bytes());
            buf[5] = rng.below(6) as u8;
            buf[6] = 0;
            buf[7] = 0;
            buf[8] = if round % 4 == 0 { 0 } else { buf[8] & 0xC0 };
        }
        match decode(&buf, &small) {
            Ok(Decoded::Frame(f)) => {
                frames += 1;
                assert!(f.consumed <= buf.len());
                let mut out = vec![0u8; f.payload.len];
                let _ = f.payload.decode_into(&buf, &mut out, Part::Payload);
                for (i, s) in f.blobs().iter().enumerate() {
                    let mut out = vec![0u8; s.len];
                    let _ = s.decode_into(&buf, &mut out, Part::Blob(i as u8));
                }
            }
            Ok(Decoded::Incomplete { need }) => {
                assert!(need.is_none_or(|n| n > buf.len()));
            }
            Err(_) => {}
        }
    }
    assert!(frames > 0, "some garbage is a frame");
    // Real frames with bytes flipped and cut: decoding them and their
    // parts never panics either.
    let mut enc = Encoder::new(Some(Lz4 { threshold: 32 }));
    let text: Vec<u8> = b"stream of bytes "
        .iter()
        .cycle()
        .take(400)
        .copied()
        .collect();
    let good = [
        frame(&mut enc, 1, 0, &text, &[&text[..100], &rng.bytes(50)]),
        frame(&mut enc, 2, 0, &rng.bytes(40), &[]),
        frame(&mut enc, 3, 0, &text[..64], &[&[]]),
    ];
    for round in 0..20_000 {
        let mut buf = good[round % good.len()].clone();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(buf.len());
            buf[i] ^= 1 << rng.below(8);
        }
        buf.truncate(buf.len() - rng.below(4));
        if let Ok(Decoded::Frame(f)) = decode(&buf, &small) {
            let mut out = vec![0u8; f.payload.len];
            let _ = f.payload.decode_into(&buf, &mut out, Part::Payload);
            for (i, s) in f.blobs().iter().enumerate() {
                let mut out = vec![0u8; s.len];
                let _ = s.decode_into(&buf, &mut out, Part::Blob(i as u8));
            }
        }
    }
    // Garbage after a good frame: the good frame still decodes whole.
    let mut enc = Encoder::new(None);
    let mut buf = frame(&mut enc, 1, 0, b"ok", &[]);
    let n = buf.len();
    buf.extend(rng.bytes(100));
    assert_eq!(whole(&buf, &small).consumed, n);
}

#[test]
fn limits_are_checked_before_the_frame_arrives() {
    // A length over the limit is refused from the varint alone.
    let mut v = [0u8; MAX_VARINT];
    let n = write_varint((LIMITS.max_frame + 1) as u32, &mut v);
    assert_eq!(
        decode(&v[..n], &LIMITS),
        Err(CodecError::FrameTooLarge {
            len: LIMITS.max_frame as u64 + 1,
            limit: LIMITS.max_frame
        })
    );
    assert_eq!(
        decode(&[3], &LIMITS),
        Err(CodecError::FrameTooShort { len: 3 })
    );
    // A bad kind, a payload over the limit or an lz4 frame to a receiver
    // that did not negotiate it: refused from the header alone.
    let head = |len: u32, kind: u16, flags: u16| {
        let mut b = vec![100u8];
        b.extend(len.to_le_bytes());
        b.extend(kind.to_le_bytes());
        b.extend(flags.to_le_bytes());
        b
    };
    assert_eq!(
        decode(&head(0, 0, 0), &LIMITS),
        Err(CodecError::BadKind { kind: 0 })
    );
    assert_eq!(
        decode(&head(0, 0xFFFF, 0), &LIMITS),
        Err(CodecError::BadKind { kind: 0xFFFF })
    );
    assert_eq!(
        decode(&head(1 << 20, 1, 0), &LIMITS),
        Err(CodecError::PayloadTooLarge {
            len: 1 << 20,
            limit: LIMITS.max_payload
        })
    );
    let no_lz4 = Limits {
        lz4: false,
        ..LIMITS
    };
    assert_eq!(
        decode(&head(10, 1, FLAG_LZ4), &no_lz4),
        Err(CodecError::Lz4NotNegotiated)
    );
    // A compressed blob to a receiver without lz4.
    let mut enc = Encoder::new(Some(Lz4 { threshold: 16 }));
    let f = frame(&mut enc, 1, 0, b"p", &[&[0u8; 500]]);
    assert_eq!(decode(&f, &no_lz4), Err(CodecError::Lz4NotNegotiated));
    assert!(matches!(decode(&f, &LIMITS), Ok(Decoded::Frame(_))));
}

#[test]
fn lies_inside_a_frame_are_typed_errors() {
    let build = |body: &[u8], len: u32, flags: u16| {
        let mut b = Vec::new();
        let mut v = [0u8; MAX_VARINT];
        let n = write_varint((HEADER + body.len()) as u32, &mut v);
        b.extend(&v[..n]);
        b.extend(len.to_le_bytes());
        b.extend(1u16.to_le_bytes());
        b.extend(flags.to_le_bytes());
        b.extend(body);
        b
    };
    // The payload is longer than the frame.
    assert!(matches!(
        decode(&build(b"abc", 4, 0), &LIMITS),
        Err(CodecError::PastEnd {
            part: Part::Payload,
            ..
        })
    ));
    // Bytes left over.
    assert_eq!(
        decode(&build(b"abcd", 3, 0), &LIMITS),
        Err(CodecError::TrailingBytes { extra: 1 })
    );
    // Blob counts of 0 and 17.
    for count in [0u32, 17] {
        assert_eq!(
            decode(&build(&count.to_le_bytes(), 0, FLAG_BLOBS), &LIMITS),
            Err(CodecError::BadBlobCount {
                count: u64::from(count)
            })
        );
    }
    // A blob that says more than is there.
    let mut body = 1u32.to_le_bytes().to_vec();
    body.extend(10u32.to_le_bytes());
    body.extend(0u32.to_le_bytes());
    body.extend(b"short");
    assert!(matches!(
        decode(&build(&body, 0, FLAG_BLOBS), &LIMITS),
        Err(CodecError::PastEnd {
            part: Part::Blob(0),
            ..
        })
    ));
    // A compressed blob that claims to decode to more than the limit.
    let mut body = 1u32.to_le_bytes().to_vec();
    body.extend(u32::MAX.to_le_bytes());
    body.extend(1u32.to_le_bytes());
    body.push(0);
    assert!(matches!(
        decode(&build(&body, 0, FLAG_BLOBS), &LIMITS),
        Err(CodecError::DecodedTooLarge { .. })
    ));
    // A compressed payload of zero bytes, and one that is not lz4.
    let mut body = 0u32.to_le_bytes().to_vec();
    assert_eq!(
        decode(&build(&body, 10, FLAG_LZ4), &LIMITS),
        Err(CodecError::BadLz4 {
            part: Part::Payload
        })
    );
    body = 3u32.to_le_bytes().to_vec();
    body.extend([0xF0, 0xFF, 0xFF]);
    let buf = build(&body, 10, FLAG_LZ4);
    let f = whole(&buf, &LIMITS);
    let mut out = [0u8; 10];
    assert_eq!(
        f.payload.decode_into(&buf, &mut out, Part::Payload),
        Err(CodecError::BadLz4 {
            part: Part::Payload
        })
    );
    // A valid block that decodes to fewer bytes than announced.
    let block = lz4_flex::block::compress(b"hello hello hello hello");
    let mut body = (block.len() as u32).to_le_bytes().to_vec();
    body.extend(&block);
    let buf = build(&body, 40, FLAG_LZ4);
    let f = whole(&buf, &LIMITS);
    let mut out = [0u8; 40];
    assert!(
        f.payload
            .decode_into(&buf, &mut out, Part::Payload)
            .is_err()
    );
}

#[test]
fn an_encoder_refuses_what_cannot_be_sent() {
    let mut enc = Encoder::new(None);
    let mut out = vec![9u8];
    assert_eq!(
        enc.encode(&mut out, 0, 0, b"", &[], 1000),
        Err(CodecError::BadKind { kind: 0 })
    );
    assert!(matches!(
        enc.encode(&mut out, 1, 0, &[0u8; 2000], &[], 1000),
        Err(CodecError::FrameTooLarge { .. })
    ));
    let blobs: Vec<&[u8]> = vec![b"x"; 17];
    assert_eq!(
        enc.encode(&mut out, 1, 0, b"", &blobs, 1000),
        Err(CodecError::TooManyBlobs { count: 17 })
    );
    assert_eq!(out, [9], "a refused frame leaves nothing behind");
}
