//! `stream_frames`: the stream transport's frame decoder ([`codec::decode`],
//! [`codec::read_varint`]) and the decompression of its parts
//! ([`Section::decode_into`]).

use isocall::ring::MAX_USER_KIND;
use isocall::stream::Part;
use isocall::stream::codec::{
    self, CodecError, Decoded, Encoder, FLAG_BLOBS, FLAG_LZ4, FrameLayout, HEADER, Limits,
    MAX_INLINE_BLOBS, MAX_VARINT, Section,
};

/// Frame limits, from small (every edge within reach of short inputs) to
/// the size of a real connection's frames.
const FRAMES: [usize; 4] = [64 << 10, 4096, 64, HEADER];

/// `stream_frames`: the input's first byte chooses the receiver's limits
/// (bit 0: lz4 negotiated; bits 1-2: the frame limit from [`FRAMES`];
/// bit 3: a payload limit of 256 bytes instead of the frame limit), the
/// rest is the bytes a socket delivered. Checks [`codec::read_varint`] on
/// them (a value read re-encodes to the same minimal bytes), then
/// [`codec::decode`]: an incomplete frame needs more than the buffer and
/// no more than the limit allows; a frame's parts lie in order inside it,
/// within the limits, each compressed only if lz4 was negotiated, and
/// every strict prefix of it is incomplete; an error says what is wrong.
/// Each part of a frame is then decoded ([`Section::decode_into`]): a
/// stored part is its bytes, a compressed one decompresses to exactly its
/// length or fails with `BadLz4` naming it; a frame whose parts all
/// decode encodes back (without compression) to a frame that decodes to
/// the same parts, and to the same bytes if it was not compressed.
pub fn stream_frames(data: &[u8]) {
    let Some((&sel, buf)) = data.split_first() else {
        return;
    };
    let max_frame = FRAMES[usize::from(sel >> 1) & 3];
    let limits = Limits {
        max_frame,
        max_payload: if sel & 8 != 0 { 256 } else { max_frame },
        lz4: sel & 1 != 0,
    };
    varint(buf);
    match codec::decode(buf, &limits) {
        Ok(Decoded::Incomplete { need }) => {
            if let Some(need) = need {
                assert!(need > buf.len(), "incomplete, yet {need} <= {}", buf.len());
                assert!(need <= MAX_VARINT + max_frame, "needs {need} bytes");
            } else {
                assert!(buf.len() < MAX_VARINT);
                assert!(buf.iter().all(|b| b & 0x80 != 0), "a whole varint unread");
            }
        }
        Ok(Decoded::Frame(f)) => frame(buf, &limits, &f),
        Err(e) => error(buf, &limits, &e),
    }
}

/// A varint read is minimal and re-encodes to the bytes it took.
fn varint(buf: &[u8]) {
    match codec::read_varint(buf) {
        Ok(Some((v, n))) => {
            assert!((1..=MAX_VARINT).contains(&n));
            let mut out = [0u8; MAX_VARINT];
            let m = codec::write_varint(v, &mut out);
            assert_eq!(&out[..m], &buf[..n], "varint {v} is not minimal");
            assert_eq!(codec::varint_len(v), n);
        }
        Ok(None) => assert!(buf.len() < MAX_VARINT && buf.iter().all(|b| b & 0x80 != 0)),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn error(buf: &[u8], limits: &Limits, e: &CodecError) {
    assert!(!e.to_string().is_empty());
    match *e {
        CodecError::VarintTooLong => {
            assert!(buf.len() >= MAX_VARINT);
            assert!(buf[..MAX_VARINT].iter().all(|b| b & 0x80 != 0));
        }
        CodecError::FrameTooShort { len } => assert!((len as usize) < HEADER),
        CodecError::FrameTooLarge { len, limit } => {
            assert_eq!(limit, limits.max_frame);
            assert!(len > limit as u64);
        }
        CodecError::BadKind { kind } => assert!(kind == 0 || kind > MAX_USER_KIND),
        CodecError::Lz4NotNegotiated => assert!(!limits.lz4),
        CodecError::PayloadTooLarge { len, limit } => {
            assert_eq!(limit, limits.max_payload);
            assert!(len > limit);
        }
        CodecError::BadBlobCount { count } => {
            assert!(count == 0 || count as usize > MAX_INLINE_BLOBS);
        }
        CodecError::DecodedTooLarge { len, limit } => assert!(len > limit as u64),
        _ => {}
    }
}

fn frame(buf: &[u8], limits: &Limits, f: &FrameLayout) {
    let total = f.consumed;
    assert!(
        total <= buf.len(),
        "a frame of {total} bytes in {}",
        buf.len()
    );
    assert!(total > HEADER);
    assert!((1..=MAX_USER_KIND).contains(&f.kind), "kind {}", f.kind);
    assert!(f.nblobs <= MAX_INLINE_BLOBS);
    assert_eq!(f.flags & FLAG_BLOBS != 0, f.nblobs > 0);
    assert_eq!(f.blobs().len(), f.nblobs);
    assert!(f.payload.len <= limits.max_payload);
    assert_eq!(f.payload.lz4, f.flags & FLAG_LZ4 != 0);
    let mut at = 0;
    let mut decoded = f.payload.len as u64;
    for s in std::iter::once(&f.payload).chain(f.blobs()) {
        assert!(s.start >= at && s.start <= s.end && s.end <= total, "{s:?}");
        assert!(!s.lz4 || limits.lz4, "a compressed part without lz4");
        if !s.lz4 {
            assert_eq!(s.end - s.start, s.len, "a stored part of other length");
        }
        at = s.end;
    }
    assert_eq!(at, total, "bytes after the last part");
    for b in f.blobs() {
        decoded += b.len as u64;
    }
    if f.nblobs > 0 {
        assert!(
            decoded <= limits.max_frame as u64,
            "decodes to {decoded} bytes"
        );
    }
    // The same frame alone, and every strict prefix of it: incomplete.
    assert_eq!(
        codec::decode(&buf[..total], limits),
        Ok(Decoded::Frame(*f)),
        "the frame alone decodes otherwise"
    );
    let step = (total / 64).max(1);
    for cut in (0..total).step_by(step).chain([total - 1]) {
        match codec::decode(&buf[..cut], limits) {
            Ok(Decoded::Incomplete { .. }) => {}
            other => panic!("a prefix of {cut} of a {total}-byte frame: {other:?}"),
        }
    }
    // Each part decodes; a frame whose parts all do encodes back.
    let mut parts = Vec::new();
    let sections = std::iter::once((Part::Payload, &f.payload)).chain(
        f.blobs()
            .iter()
            .enumerate()
            .map(|(i, s)| (Part::Blob(i as u8), s)),
    );
    for (part, s) in sections {
        if let Some(out) = section(buf, s, part) {
            parts.push(out);
        }
    }
    if parts.len() != 1 + f.nblobs {
        return;
    }
    let blobs: Vec<&[u8]> = parts[1..].iter().map(Vec::as_slice).collect();
    let mut enc = Vec::new();
    let n = Encoder::new(None)
        .encode(
            &mut enc,
            f.kind,
            f.user_flags(),
            &parts[0],
            &blobs,
            usize::MAX,
        )
        .expect("a decoded frame encodes");
    assert_eq!(n, enc.len());
    let compressed = f.payload.lz4 || f.blobs().iter().any(|b| b.lz4);
    if !compressed {
        assert_eq!(&enc[..], &buf[..total], "the frame re-encodes otherwise");
    }
    let big = Limits {
        max_frame: u32::MAX as usize,
        max_payload: u32::MAX as usize,
        lz4: false,
    };
    let Ok(Decoded::Frame(g)) = codec::decode(&enc, &big) else {
        panic!("the re-encoded frame does not decode");
    };
    assert_eq!(
        (g.kind, g.user_flags(), g.nblobs),
        (f.kind, f.user_flags(), f.nblobs)
    );
    assert_eq!(g.payload.wire(&enc), &parts[0][..]);
    for (b, p) in g.blobs().iter().zip(&parts[1..]) {
        assert_eq!(b.wire(&enc), &p[..]);
    }
}

/// Decodes a part: its bytes, or `None` if its lz4 block is bad (then the
/// error names the part).
fn section(buf: &[u8], s: &Section, part: Part) -> Option<Vec<u8>> {
    let mut out = vec![0u8; s.len];
    match s.decode_into(buf, &mut out, part) {
        Ok(()) => {
            if !s.lz4 {
                assert_eq!(&out[..], s.wire(buf));
            }
            Some(out)
        }
        Err(e) => {
            assert!(s.lz4, "a stored part failed: {e}");
            assert_eq!(e, CodecError::BadLz4 { part });
            None
        }
    }
}
