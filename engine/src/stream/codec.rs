//! The stream frame format: pure functions from frames to bytes and back.
//!
//! ```text
//! frame    = varint(N)  header  [count]  payload  blob{count}
//! varint   = LEB128 of N, 1 to 5 bytes, minimal, N <= u32::MAX
//! N        = bytes after the varint (header included)
//! header   = len: u32 LE   kind: u16 LE   flags: u16 LE   (the ring's header)
//! count    = u32 LE, 1..=16, present iff flags has FLAG_BLOBS
//! payload  = len bytes                    (flags without FLAG_LZ4)
//!          | clen: u32 LE, clen bytes     (FLAG_LZ4: an lz4 block, clen >= 1,
//!                                          that decompresses to exactly len)
//! blob     = blen: u32 LE, clen: u32 LE, then
//!            blen raw bytes               (clen = 0)
//!          | an lz4 block of clen bytes   (clen > 0, lz4 negotiated: it
//!                                          decompresses to exactly blen)
//! ```
//!
//! So a 64-byte payload of kind 1 without blobs is `0x48` (N = 72), then
//! `40 00 00 00 01 00 00 00`, then the 64 bytes: 73 bytes in all.
//!
//! `len` is the payload's decoded length, what the receiver's frame
//! carries; `kind` is `1..=MAX_USER_KIND`, as on the ring; the two top bits
//! of `flags` are the transport's ([`FLAG_LZ4`], [`FLAG_BLOBS`]), the
//! others the sender's own ([`USER_FLAGS`]). Everything is little-endian.
//!
//! [`decode`] is strict and checks before it trusts: a varint longer than 5
//! bytes, overlong or past `u32::MAX`, a length over the connection's frame
//! limit (checked as soon as the varint is read, before the frame's bytes
//! are waited for or allocated), a bad kind, flags the connection did not
//! negotiate, a section past the frame's end, bytes left over, and decoded
//! sizes over the limits are each a [`CodecError`]. It never allocates and
//! never panics, whatever the bytes: it is the fuzz target of the format.
//! Decompression ([`Section::decode_into`]) checks the block against the
//! announced size.

use std::ops::Range;

use isocall_ringbuf::MAX_USER_KIND;

mod encode;
pub use encode::{Encoder, Lz4};

/// Most bytes of a length varint.
pub const MAX_VARINT: usize = 5;
/// Bytes of the frame header.
pub const HEADER: usize = 8;
/// The payload (and maybe blobs) is lz4-compressed.
pub const FLAG_LZ4: u16 = 0x8000;
/// Inline blobs follow the payload.
pub const FLAG_BLOBS: u16 = 0x4000;
/// The flags the transport owns.
pub const TRANSPORT_FLAGS: u16 = FLAG_LZ4 | FLAG_BLOBS;
/// The flags a sender may use for itself.
pub const USER_FLAGS: u16 = !TRANSPORT_FLAGS;
/// Most inline blobs one frame carries (a call frame's most handles).
pub const MAX_INLINE_BLOBS: usize = crate::rpc::wire::MAX_BLOBS;
/// Bytes before a blob's data: its length and its compressed length.
pub const BLOB_HEAD: usize = 8;
/// Bytes of frame beyond the payload and blobs, at most: varint, header,
/// count, the payload's compressed length, each blob's head.
pub const OVERHEAD: usize = MAX_VARINT + HEADER + 4 + 4 + MAX_INLINE_BLOBS * BLOB_HEAD;

/// A part of a frame, for errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Part {
    /// The payload.
    Payload,
    /// Inline blob number `n` (from 0).
    Blob(u8),
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::Payload => f.write_str("the payload"),
            Part::Blob(n) => write!(f, "inline blob {n}"),
        }
    }
}

/// Why bytes are not a frame (or a frame cannot be encoded).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The length varint runs past 5 bytes.
    #[error("frame length varint longer than {MAX_VARINT} bytes")]
    VarintTooLong,
    /// The length varint's value passes `u32::MAX`.
    #[error("frame length varint past u32::MAX")]
    VarintOverflow,
    /// The length varint is not minimal (a trailing zero byte).
    #[error("frame length varint is overlong (not minimal)")]
    VarintOverlong,
    /// The frame is shorter than its header.
    #[error("frame of {len} bytes is shorter than its {HEADER}-byte header")]
    FrameTooShort {
        /// The announced length.
        len: u32,
    },
    /// The frame is longer than the connection allows.
    #[error("frame of {len} bytes is over the connection's limit of {limit} bytes")]
    FrameTooLarge {
        /// The announced (or encoded) length.
        len: u64,
        /// The connection's limit.
        limit: usize,
    },
    /// The kind is not a user kind (`1..=MAX_USER_KIND`).
    #[error("frame kind {kind:#06x} is not a user kind")]
    BadKind {
        /// The kind.
        kind: u16,
    },
    /// The frame is compressed, and the connection did not negotiate lz4.
    #[error("frame compressed with lz4, which the connection did not negotiate")]
    Lz4NotNegotiated,
    /// The payload is longer than the connection allows.
    #[error("payload of {len} bytes is over the connection's limit of {limit} bytes")]
    PayloadTooLarge {
        /// Its decoded length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The blob count is 0 or more than a frame carries.
    #[error("frame says {count} inline blobs (1 to {MAX_INLINE_BLOBS} with the blob flag)")]
    BadBlobCount {
        /// The count.
        count: u64,
    },
    /// A part announces more bytes than the frame has left.
    #[error("{part} needs {need} bytes, the frame has {have} left")]
    PastEnd {
        /// Which part.
        part: Part,
        /// Bytes it announces (with its head).
        need: u64,
        /// Bytes left in the frame.
        have: usize,
    },
    /// Bytes are left in the frame after its last part.
    #[error("{extra} bytes left over after the frame's last part")]
    TrailingBytes {
        /// Bytes left.
        extra: usize,
    },
    /// The payload and blobs decode to more than the frame limit.
    #[error("frame decodes to {len} bytes, over the connection's limit of {limit} bytes")]
    DecodedTooLarge {
        /// Decoded bytes announced.
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// A compressed part is not a valid lz4 block of its announced size.
    #[error("{part} is not a valid lz4 block of its announced size")]
    BadLz4 {
        /// Which part.
        part: Part,
    },
    /// An encoder was asked for more inline blobs than a frame carries.
    #[error("{count} inline blobs (at most {MAX_INLINE_BLOBS})")]
    TooManyBlobs {
        /// Blobs asked for.
        count: usize,
    },
}

/// What a receiver accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes after the varint (header, payload and blobs as sent); at
    /// most `u32::MAX`. Also the most the payload and blobs may decode to.
    pub max_frame: usize,
    /// Most bytes of decoded payload.
    pub max_payload: usize,
    /// Whether compressed frames are allowed (lz4 was negotiated).
    pub lz4: bool,
}

/// One part of a frame: where its bytes are, and what they decode to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Section {
    /// Decoded length.
    pub len: usize,
    /// Where its bytes (as sent) start, from the start of the buffer given
    /// to [`decode`].
    pub start: usize,
    /// Where they end.
    pub end: usize,
    /// Whether they are an lz4 block.
    pub lz4: bool,
}

impl Section {
    /// Its bytes as sent, in `buf` (the buffer given to [`decode`]).
    pub fn wire<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.range()]
    }

    /// Its byte range in the buffer given to [`decode`].
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }

    /// Decodes it from `buf` (the buffer given to [`decode`]) into `out`,
    /// which must be [`len`](Self::len) bytes long.
    ///
    /// # Errors
    ///
    /// [`CodecError::BadLz4`] (naming `part`) if the block does not
    /// decompress to exactly `len` bytes.
    ///
    /// # Panics
    ///
    /// If `out` is not `len` bytes long (a bug in the caller).
    pub fn decode_into(&self, buf: &[u8], out: &mut [u8], part: Part) -> Result<(), CodecError> {
        assert_eq!(out.len(), self.len, "a section decodes into its own length");
        let wire = self.wire(buf);
        if !self.lz4 {
            out.copy_from_slice(wire);
            return Ok(());
        }
        match lz4_flex::block::decompress_into(wire, out) {
            Ok(n) if n == self.len => Ok(()),
            _ => Err(CodecError::BadLz4 { part }),
        }
    }
}

/// A whole frame found by [`decode`]: where its parts are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLayout {
    /// Bytes of the buffer the frame takes (varint included).
    pub consumed: usize,
    /// Its kind.
    pub kind: u16,
    /// Its flags, the transport's included.
    pub flags: u16,
    /// Its payload.
    pub payload: Section,
    /// Its inline blobs, the first [`nblobs`](Self::nblobs) of them.
    pub blobs: [Section; MAX_INLINE_BLOBS],
    /// How many inline blobs it carries.
    pub nblobs: usize,
}

impl FrameLayout {
    /// Its inline blobs.
    pub fn blobs(&self) -> &[Section] {
        &self.blobs[..self.nblobs]
    }

    /// The sender's own flags.
    pub fn user_flags(&self) -> u16 {
        self.flags & USER_FLAGS
    }
}

/// What [`decode`] found at the start of a buffer.
// Returned by value and never stored: boxing the layout would cost an
// allocation per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Not a whole frame yet; `need` is the frame's whole length (varint
    /// included) once the varint has been read.
    Incomplete {
        /// Bytes the whole frame takes, if known.
        need: Option<usize>,
    },
    /// A whole, checked frame.
    Frame(FrameLayout),
}

/// Reads a length varint at the start of `buf`: `Ok(None)` if more bytes
/// are needed, else the value and the bytes it took.
///
/// # Errors
///
/// [`CodecError::VarintTooLong`], [`VarintOverflow`](CodecError::VarintOverflow),
/// [`VarintOverlong`](CodecError::VarintOverlong).
pub fn read_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, CodecError> {
    let mut value: u64 = 0;
    for i in 0..MAX_VARINT {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= u64::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(CodecError::VarintOverlong);
            }
            return u32::try_from(value)
                .map(|v| Some((v, i + 1)))
                .map_err(|_| CodecError::VarintOverflow);
        }
    }
    Err(CodecError::VarintTooLong)
}

/// Writes `value` as a minimal LEB128 varint into `out`; returns its
/// length (1 to 5).
pub fn write_varint(mut value: u32, out: &mut [u8; MAX_VARINT]) -> usize {
    let mut i = 0;
    loop {
        let b = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out[i] = b;
            return i + 1;
        }
        out[i] = b | 0x80;
        i += 1;
    }
}

/// Bytes of the minimal varint of `value`.
pub fn varint_len(value: u32) -> usize {
    let bits = 32 - value.max(1).leading_zeros() as usize;
    bits.div_ceil(7)
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads the frame at the start of `buf`, checking everything against
/// `limits` before trusting it. Pure: no allocation, no panic, whatever
/// the bytes.
///
/// # Errors
///
/// The [`CodecError`] naming the first thing wrong.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Decoded, CodecError> {
    let Some((n, vlen)) = read_varint(buf)? else {
        return Ok(Decoded::Incomplete { need: None });
    };
    if (n as usize) < HEADER {
        return Err(CodecError::FrameTooShort { len: n });
    }
    if n as usize > limits.max_frame {
        return Err(CodecError::FrameTooLarge {
            len: u64::from(n),
            limit: limits.max_frame,
        });
    }
    let total = vlen + n as usize;
    // The header is checked as soon as it is there, before the rest of the
    // frame arrives: a bad frame is refused without waiting for it.
    let Some(h) = buf.get(vlen..vlen + HEADER) else {
        return Ok(Decoded::Incomplete { need: Some(total) });
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let kind = u16::from_le_bytes([h[4], h[5]]);
    let flags = u16::from_le_bytes([h[6], h[7]]);
    if kind == 0 || kind > MAX_USER_KIND {
        return Err(CodecError::BadKind { kind });
    }
    if flags & FLAG_LZ4 != 0 && !limits.lz4 {
        return Err(CodecError::Lz4NotNegotiated);
    }
    if len > limits.max_payload {
        return Err(CodecError::PayloadTooLarge {
            len,
            limit: limits.max_payload,
        });
    }
    if buf.len() < total {
        return Ok(Decoded::Incomplete { need: Some(total) });
    }
    let frame = &buf[..total];
    let mut at = vlen + HEADER;
    let mut nblobs = 0;
    if flags & FLAG_BLOBS != 0 {
        let count = u32_at(frame, at).ok_or(CodecError::PastEnd {
            part: Part::Payload,
            need: 4,
            have: total - at,
        })?;
        if count == 0 || count as usize > MAX_INLINE_BLOBS {
            return Err(CodecError::BadBlobCount {
                count: u64::from(count),
            });
        }
        nblobs = count as usize;
        at += 4;
    }
    let payload = payload_section(frame, &mut at, len, flags & FLAG_LZ4 != 0)?;
    let mut decoded = len as u64;
    let mut blobs = [Section::default(); MAX_INLINE_BLOBS];
    for (i, slot) in blobs.iter_mut().enumerate().take(nblobs) {
        let part = Part::Blob(i as u8);
        let (Some(blen), Some(clen)) = (u32_at(frame, at), u32_at(frame, at + 4)) else {
            return Err(CodecError::PastEnd {
                part,
                need: BLOB_HEAD as u64,
                have: total - at,
            });
        };
        if clen != 0 && !limits.lz4 {
            return Err(CodecError::Lz4NotNegotiated);
        }
        at += BLOB_HEAD;
        decoded += u64::from(blen);
        if decoded > limits.max_frame as u64 {
            return Err(CodecError::DecodedTooLarge {
                len: decoded,
                limit: limits.max_frame,
            });
        }
        *slot = if clen == 0 {
            stored(frame, &mut at, part, blen as usize, blen as usize, false)?
        } else {
            stored(frame, &mut at, part, blen as usize, clen as usize, true)?
        };
    }
    if at != total {
        return Err(CodecError::TrailingBytes { extra: total - at });
    }
    Ok(Decoded::Frame(FrameLayout {
        consumed: total,
        kind,
        flags,
        payload,
        blobs,
        nblobs,
    }))
}

/// The payload at `*at`: `len` raw bytes or, when `lz4`, a compressed
/// length and a block.
fn payload_section(
    frame: &[u8],
    at: &mut usize,
    len: usize,
    lz4: bool,
) -> Result<Section, CodecError> {
    let part = Part::Payload;
    if !lz4 {
        return stored(frame, at, part, len, len, false);
    }
    let clen = u32_at(frame, *at).ok_or(CodecError::PastEnd {
        part,
        need: 4,
        have: frame.len() - *at,
    })? as usize;
    *at += 4;
    if clen == 0 {
        return Err(CodecError::BadLz4 { part });
    }
    stored(frame, at, part, len, clen, true)
}

/// `wire` bytes at `*at` that decode to `len`.
fn stored(
    frame: &[u8],
    at: &mut usize,
    part: Part,
    len: usize,
    wire: usize,
    lz4: bool,
) -> Result<Section, CodecError> {
    let have = frame.len() - *at;
    if wire > have {
        return Err(CodecError::PastEnd {
            part,
            need: wire as u64,
            have,
        });
    }
    let s = Section {
        len,
        start: *at,
        end: *at + wire,
        lz4,
    };
    *at += wire;
    Ok(s)
}

#[cfg(test)]
mod tests;
