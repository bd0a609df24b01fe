//! The datagram of a lossy channel: a 32-byte header, then the message's
//! rkyv archive. All integers little-endian.
//!
//! ```text
//! offset  size  field
//!      0     4  magic, b"ISOU"
//!      4     2  version (1)
//!      6     2  reserved, 0
//!      8     8  the message type's fingerprint (Schema::FINGERPRINT)
//!     16     8  sequence number: messages the publisher sent before this one
//!     24     4  stream: a number the publisher drew when it started
//!     28     4  body length: the bytes after the header, exactly
//!     32     …  body: the rkyv archive of the message
//! ```
//!
//! One message is one datagram: a message whose datagram would exceed the
//! publisher's limit is refused, never split. A receiver checks the header
//! (magic, version, length) before anything else, then the fingerprint,
//! then validates the body with bytecheck; what fails is counted and
//! dropped.

/// The header's length: the body starts here.
pub const HEADER_LEN: usize = 32;
/// The header's first four bytes.
pub const MAGIC: [u8; 4] = *b"ISOU";
/// The version of this layout.
pub const VERSION: u16 = 1;
/// The default limit on a datagram (header and body): what fits an
/// Ethernet frame of 1500 bytes over IPv4 without IP fragmentation.
pub const DEFAULT_MAX_DATAGRAM: usize = 1472;
/// The largest limit that may be set: the most a UDP datagram over IPv4
/// carries.
pub const MAX_DATAGRAM: usize = 65507;

/// A datagram's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The message type's fingerprint.
    pub fingerprint: u64,
    /// The message's sequence number (never `u64::MAX`).
    pub seq: u64,
    /// The publisher's stream number.
    pub stream: u32,
    /// The body's length.
    pub body_len: u32,
}

/// Why a datagram is not one of a lossy channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadDatagram {
    /// Shorter than a header.
    #[error("{len} bytes, shorter than the {HEADER_LEN}-byte header")]
    Short {
        /// Its length.
        len: usize,
    },
    /// The magic is not `b"ISOU"`.
    #[error("not a lossy channel's datagram (bad magic)")]
    Magic,
    /// A version this build does not read.
    #[error("datagram version {0}, this build reads {VERSION}")]
    Version(u16),
    /// The body length is not what follows the header.
    #[error("the header says {said} body bytes, {got} follow it")]
    Length {
        /// What the header says.
        said: u32,
        /// What came.
        got: usize,
    },
    /// The sequence number is `u64::MAX`, which no publisher sends.
    #[error("sequence number out of range")]
    Seq,
}

impl Header {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4..6].copy_from_slice(&VERSION.to_le_bytes());
        h[8..16].copy_from_slice(&self.fingerprint.to_le_bytes());
        h[16..24].copy_from_slice(&self.seq.to_le_bytes());
        h[24..28].copy_from_slice(&self.stream.to_le_bytes());
        h[28..32].copy_from_slice(&self.body_len.to_le_bytes());
        h
    }

    /// Reads the header of `datagram` and checks it against the
    /// datagram's length; the body is `datagram[HEADER_LEN..]`.
    ///
    /// # Errors
    ///
    /// The [`BadDatagram`] saying what is wrong.
    pub fn decode(datagram: &[u8]) -> Result<Header, BadDatagram> {
        let Some(h) = datagram.first_chunk::<HEADER_LEN>() else {
            return Err(BadDatagram::Short {
                len: datagram.len(),
            });
        };
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
        if h[0..4] != MAGIC {
            return Err(BadDatagram::Magic);
        }
        if u16_at(4) != VERSION {
            return Err(BadDatagram::Version(u16_at(4)));
        }
        let header = Header {
            fingerprint: u64_at(8),
            seq: u64_at(16),
            stream: u32_at(24),
            body_len: u32_at(28),
        };
        let got = datagram.len() - HEADER_LEN;
        if header.body_len as usize != got {
            return Err(BadDatagram::Length {
                said: header.body_len,
                got,
            });
        }
        if header.seq == u64::MAX {
            return Err(BadDatagram::Seq);
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_bad_ones_say_why() {
        let h = Header {
            fingerprint: 0x0123_4567_89ab_cdef,
            seq: 1 << 40,
            stream: 7,
            body_len: 3,
        };
        let mut d = h.encode().to_vec();
        d.extend_from_slice(&[1, 2, 3]);
        assert_eq!(Header::decode(&d), Ok(h));
        assert_eq!(
            Header::decode(&d[..31]),
            Err(BadDatagram::Short { len: 31 })
        );
        assert_eq!(
            Header::decode(&d[..34]),
            Err(BadDatagram::Length { said: 3, got: 2 })
        );
        let mut m = d.clone();
        m[0] = b'X';
        assert_eq!(Header::decode(&m), Err(BadDatagram::Magic));
        let mut v = d.clone();
        v[4] = 9;
        assert_eq!(Header::decode(&v), Err(BadDatagram::Version(9)));
        let mut s = Header { seq: u64::MAX, ..h }.encode().to_vec();
        s.extend_from_slice(&[1, 2, 3]);
        assert_eq!(Header::decode(&s), Err(BadDatagram::Seq));
    }
}
