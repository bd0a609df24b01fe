//! Writing frames: the inverse of [`decode`](super::decode).

use isocall_ringbuf::MAX_USER_KIND;

use super::{
    BLOB_HEAD, CodecError, FLAG_BLOBS, FLAG_LZ4, HEADER, MAX_INLINE_BLOBS, MAX_VARINT, USER_FLAGS,
    write_varint,
};

/// lz4 compression, negotiated for a connection: what a sender
/// compresses (and that a receiver accepts compressed parts).
///
/// A payload or inline blob of at least `threshold` bytes is compressed,
/// and sent compressed only when that saves at least an eighth of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lz4 {
    /// Parts shorter than this are sent as they are.
    pub threshold: usize,
}

impl Default for Lz4 {
    /// A threshold of 512 bytes.
    fn default() -> Lz4 {
        Lz4 { threshold: 512 }
    }
}

/// Writes frames, reusing its scratch memory for compressed parts.
#[derive(Debug, Default)]
pub struct Encoder {
    compression: Option<Lz4>,
    scratch: Vec<u8>,
}

/// How one part goes out.
#[derive(Clone, Copy)]
enum Out {
    Raw,
    /// Compressed, at this range of the scratch.
    Lz4(usize, usize),
}

impl Encoder {
    /// An encoder that compresses parts at or above the threshold (when
    /// that saves at least an eighth), or never (`None`).
    pub fn new(compression: Option<Lz4>) -> Encoder {
        Encoder {
            compression,
            scratch: Vec::new(),
        }
    }

    /// Compresses `input` into the scratch if that saves at least an eighth.
    fn squeeze(&mut self, input: &[u8]) -> Out {
        let Some(c) = self.compression else {
            return Out::Raw;
        };
        if input.len() < c.threshold.max(1) {
            return Out::Raw;
        }
        let start = self.scratch.len();
        let room = lz4_flex::block::get_maximum_output_size(input.len());
        self.scratch.resize(start + room, 0);
        match lz4_flex::block::compress_into(input, &mut self.scratch[start..]) {
            Ok(n) if n <= input.len() - input.len() / 8 => {
                self.scratch.truncate(start + n);
                Out::Lz4(start, start + n)
            }
            _ => {
                self.scratch.truncate(start);
                Out::Raw
            }
        }
    }

    /// Appends one frame to `out`: `kind`, the user bits of `flags`,
    /// `payload` and `blobs` inline; returns the bytes appended. On error
    /// `out` is left as it was.
    ///
    /// # Errors
    ///
    /// [`CodecError::BadKind`], [`TooManyBlobs`](CodecError::TooManyBlobs),
    /// [`FrameTooLarge`](CodecError::FrameTooLarge) when the frame would
    /// pass `max_frame` (or `u32::MAX`).
    pub fn encode(
        &mut self,
        out: &mut Vec<u8>,
        kind: u16,
        flags: u16,
        payload: &[u8],
        blobs: &[&[u8]],
        max_frame: usize,
    ) -> Result<usize, CodecError> {
        if kind == 0 || kind > MAX_USER_KIND {
            return Err(CodecError::BadKind { kind });
        }
        if blobs.len() > MAX_INLINE_BLOBS {
            return Err(CodecError::TooManyBlobs { count: blobs.len() });
        }
        let limit = max_frame.min(u32::MAX as usize);
        // A part longer than a u32 cannot be described at all. (A frame
        // whose raw parts pass the limit is still tried: compression may
        // bring it under.)
        if payload.len() > u32::MAX as usize || blobs.iter().any(|b| b.len() > u32::MAX as usize) {
            return Err(CodecError::FrameTooLarge {
                len: payload.len() as u64 + blobs.iter().map(|b| b.len() as u64).sum::<u64>(),
                limit,
            });
        }
        self.scratch.clear();
        let p = self.squeeze(payload);
        let mut outs = [Out::Raw; MAX_INLINE_BLOBS];
        for (o, b) in outs.iter_mut().zip(blobs) {
            *o = self.squeeze(b);
        }
        let mut flags = flags & USER_FLAGS;
        let mut n = HEADER as u64;
        if !blobs.is_empty() {
            flags |= FLAG_BLOBS;
            n += 4;
        }
        n += match p {
            Out::Raw => payload.len() as u64,
            Out::Lz4(s, e) => {
                flags |= FLAG_LZ4;
                4 + (e - s) as u64
            }
        };
        for (o, b) in outs.iter().zip(blobs) {
            n += BLOB_HEAD as u64
                + match o {
                    Out::Raw => b.len() as u64,
                    Out::Lz4(s, e) => (e - s) as u64,
                };
        }
        if n > limit as u64 {
            return Err(CodecError::FrameTooLarge { len: n, limit });
        }
        let n = n as u32;
        let mut v = [0u8; MAX_VARINT];
        let vlen = write_varint(n, &mut v);
        let start = out.len();
        out.reserve(vlen + n as usize);
        out.extend_from_slice(&v[..vlen]);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        if !blobs.is_empty() {
            out.extend_from_slice(&(blobs.len() as u32).to_le_bytes());
        }
        match p {
            Out::Raw => out.extend_from_slice(payload),
            Out::Lz4(s, e) => {
                out.extend_from_slice(&((e - s) as u32).to_le_bytes());
                out.extend_from_slice(&self.scratch[s..e]);
            }
        }
        for (o, b) in outs.iter().zip(blobs) {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            match *o {
                Out::Raw => {
                    out.extend_from_slice(&0u32.to_le_bytes());
                    out.extend_from_slice(b);
                }
                Out::Lz4(s, e) => {
                    out.extend_from_slice(&((e - s) as u32).to_le_bytes());
                    out.extend_from_slice(&self.scratch[s..e]);
                }
            }
        }
        debug_assert_eq!(out.len() - start, vlen + n as usize);
        Ok(out.len() - start)
    }
}
