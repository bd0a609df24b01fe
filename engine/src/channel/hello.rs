//! The channel handshake on the subscriber's seqpacket socket: what each
//! message holds, encoded and decoded.
//!
//! ```text
//! subscriber                               publisher
//!   SubscriberHello (magic, version,  ->
//!     type, history wanted, label)
//!                                     <-   Refused (code, ids, reason)
//!                                      or  Mismatch (the publisher's type)
//!                                      or  Hello (magic, version, id, type)
//!                                          + memfd + doorbell [+ blob pool]
//!   Ready | Abort (reason)            ->
//! ```
//!
//! The subscriber names its message type in its first message, so a
//! publisher refuses a subscriber of another type before it spends a
//! segment on it; the subscriber checks the publisher's type in the hello
//! too (a publisher may lie, and the check costs nothing). Refusals,
//! `Ready` and `Abort` are the call handshake's (see
//! [`crate::raw::handshake`]). Every message is one datagram; a decoder
//! copies what it reads into owned values and checks every length against
//! the message first.

use bytemuck::{Pod, Zeroable};

use crate::rpc::HandshakeError;
use crate::rpc::TypeSig;
use crate::rpc::handshake::MAX_TYPE_NAME;

/// `b"ISOCHANS"`: first word of a subscriber's hello and of a
/// publisher's.
pub const CHANNEL_MAGIC: u64 = u64::from_le_bytes(*b"ISOCHANS");
/// Version of the channel protocol (handshake and frames); both sides
/// must speak the same.
pub const CHANNEL_VERSION: u32 = 1;

/// Tag of an accepting hello.
pub const HELLO: u8 = b'H';
/// Tag of a refusal for a type mismatch (followed by the publisher's type).
pub const MISMATCH: u8 = b'T';
/// Longest label a subscriber gives itself (longer ones are cut).
pub const MAX_LABEL: usize = 64;

/// Hello flag: a blob pool's memfd follows the doorbell.
pub const FLAG_POOL: u32 = 1;

/// The fixed part of a subscriber's first message; its type name and
/// label follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct SubscriberHello {
    /// [`CHANNEL_MAGIC`].
    pub magic: u64,
    /// The channel protocol version the subscriber speaks.
    pub version: u32,
    /// Messages of history it asks for (the publisher sends at most what
    /// it keeps).
    pub history: u32,
    /// The fingerprint of its message type.
    pub fingerprint: u64,
    /// Bytes of type name after this head.
    pub name_len: u16,
    /// Bytes of label after the type name.
    pub label_len: u16,
    /// Reserved, zero.
    pub _reserved: u32,
}

/// The fixed part of a publisher's accepting hello (after its tag); its
/// type name follows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct PublisherHello {
    /// [`CHANNEL_MAGIC`].
    pub magic: u64,
    /// The publisher's channel protocol version.
    pub version: u32,
    /// The subscriber's id on this channel (1 to 30: its party in the
    /// blob pool).
    pub subscriber: u32,
    /// The fingerprint of the publisher's message type.
    pub fingerprint: u64,
    /// Largest frame payload the publisher sends.
    pub max_frame: u32,
    /// [`FLAG_POOL`] if a blob pool's memfd comes with the hello.
    pub flags: u32,
    /// Bytes of type name after this head.
    pub name_len: u16,
    /// Reserved, zero.
    pub _reserved: [u16; 3],
}

const _: () = {
    assert!(std::mem::size_of::<SubscriberHello>() == 32);
    assert!(std::mem::size_of::<PublisherHello>() == 40);
};

/// A subscriber's hello, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriberRequest {
    /// The version it speaks.
    pub version: u32,
    /// Its message type.
    pub ty: TypeSig,
    /// Messages of history it asks for.
    pub history: u32,
    /// The name it gave itself (for `isocall inspect` and the publisher's
    /// choice of backpressure).
    pub label: String,
}

/// A publisher's accepting hello, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherAccept {
    /// The version it speaks.
    pub version: u32,
    /// The subscriber's id.
    pub subscriber: u32,
    /// The publisher's message type.
    pub ty: TypeSig,
    /// Largest frame payload the publisher sends.
    pub max_frame: u32,
    /// Whether a blob pool's memfd comes with the hello.
    pub pool: bool,
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &[u8] {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s.as_bytes()[..n]
}

fn text(b: &[u8], what: &'static str) -> Result<String, HandshakeError> {
    String::from_utf8(b.to_vec()).map_err(|_| HandshakeError::NotUtf8 { what })
}

fn take<'a>(
    msg: &'a [u8],
    at: &mut usize,
    n: usize,
    what: &'static str,
) -> Result<&'a [u8], HandshakeError> {
    let end = at
        .checked_add(n)
        .filter(|&e| e <= msg.len())
        .ok_or(HandshakeError::Truncated { what })?;
    let s = &msg[*at..end];
    *at = end;
    Ok(s)
}

/// Encodes a subscriber's hello.
pub fn encode_subscribe(ty: &TypeSig, history: u32, label: &str) -> Vec<u8> {
    let name = cut(&ty.name, MAX_TYPE_NAME);
    let label = cut(label, MAX_LABEL);
    let head = SubscriberHello {
        magic: CHANNEL_MAGIC,
        version: CHANNEL_VERSION,
        history,
        fingerprint: ty.fingerprint,
        name_len: name.len() as u16,
        label_len: label.len() as u16,
        _reserved: 0,
    };
    let mut m = bytemuck::bytes_of(&head).to_vec();
    m.extend_from_slice(name);
    m.extend_from_slice(label);
    m
}

/// Decodes a subscriber's hello.
///
/// # Errors
///
/// `Truncated`, `BadMagic`, `NotUtf8`.
pub fn decode_subscribe(msg: &[u8]) -> Result<SubscriberRequest, HandshakeError> {
    const N: usize = std::mem::size_of::<SubscriberHello>();
    let mut at = 0;
    let head: SubscriberHello =
        bytemuck::pod_read_unaligned(take(msg, &mut at, N, "subscriber hello")?);
    if head.magic != CHANNEL_MAGIC {
        return Err(HandshakeError::BadMagic { found: head.magic });
    }
    let name = take(msg, &mut at, head.name_len as usize, "subscriber hello")?;
    let label = take(msg, &mut at, head.label_len as usize, "subscriber hello")?;
    Ok(SubscriberRequest {
        version: head.version,
        ty: TypeSig {
            name: text(name, "type name")?,
            fingerprint: head.fingerprint,
        },
        history: head.history,
        label: text(label, "subscriber label")?,
    })
}

/// Encodes an accepting hello: tag, fixed part, type name.
pub fn encode_hello(subscriber: u32, ty: &TypeSig, max_frame: u32, pool: bool) -> Vec<u8> {
    let name = cut(&ty.name, MAX_TYPE_NAME);
    let head = PublisherHello {
        magic: CHANNEL_MAGIC,
        version: CHANNEL_VERSION,
        subscriber,
        fingerprint: ty.fingerprint,
        max_frame,
        flags: if pool { FLAG_POOL } else { 0 },
        name_len: name.len() as u16,
        _reserved: [0; 3],
    };
    let mut m = vec![HELLO];
    m.extend_from_slice(bytemuck::bytes_of(&head));
    m.extend_from_slice(name);
    m
}

/// Decodes an accepting hello (the bytes after the tag).
///
/// # Errors
///
/// `Truncated`, `BadMagic`, `NotUtf8`.
pub fn decode_hello(msg: &[u8]) -> Result<PublisherAccept, HandshakeError> {
    const N: usize = std::mem::size_of::<PublisherHello>();
    let mut at = 0;
    let head: PublisherHello =
        bytemuck::pod_read_unaligned(take(msg, &mut at, N, "publisher hello")?);
    if head.magic != CHANNEL_MAGIC {
        return Err(HandshakeError::BadMagic { found: head.magic });
    }
    let name = take(msg, &mut at, head.name_len as usize, "publisher hello")?;
    Ok(PublisherAccept {
        version: head.version,
        subscriber: head.subscriber,
        ty: TypeSig {
            name: text(name, "type name")?,
            fingerprint: head.fingerprint,
        },
        max_frame: head.max_frame,
        pool: head.flags & FLAG_POOL != 0,
    })
}

/// Encodes a refusal for a type mismatch: tag, the publisher's
/// fingerprint, its type name.
pub fn encode_mismatch(ty: &TypeSig) -> Vec<u8> {
    let name = cut(&ty.name, MAX_TYPE_NAME);
    let mut m = vec![MISMATCH];
    m.extend_from_slice(&ty.fingerprint.to_le_bytes());
    m.extend_from_slice(name);
    m
}

/// Decodes a refusal for a type mismatch (the bytes after the tag): the
/// publisher's type.
///
/// # Errors
///
/// `Truncated`, `NotUtf8`.
pub fn decode_mismatch(msg: &[u8]) -> Result<TypeSig, HandshakeError> {
    let fp = msg.get(..8).ok_or(HandshakeError::Truncated {
        what: "type refusal",
    })?;
    Ok(TypeSig {
        name: text(&msg[8..], "type name")?,
        fingerprint: u64::from_le_bytes(fp.try_into().expect("8 bytes")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty() -> TypeSig {
        TypeSig {
            name: "Frame".into(),
            fingerprint: 0x1234,
        }
    }

    #[test]
    fn a_subscribe_round_trips_and_every_prefix_is_refused() {
        let m = encode_subscribe(&ty(), 7, "monitor");
        let r = decode_subscribe(&m).unwrap();
        assert_eq!(
            r,
            SubscriberRequest {
                version: CHANNEL_VERSION,
                ty: ty(),
                history: 7,
                label: "monitor".into()
            }
        );
        for n in 0..m.len() {
            assert!(decode_subscribe(&m[..n]).is_err(), "prefix {n}");
        }
        let mut bad = m.clone();
        bad[0] ^= 1;
        assert!(matches!(
            decode_subscribe(&bad),
            Err(HandshakeError::BadMagic { .. })
        ));
    }

    #[test]
    fn a_hello_round_trips_and_every_prefix_is_refused() {
        let m = encode_hello(3, &ty(), 4096, true);
        assert_eq!(m[0], HELLO);
        let h = decode_hello(&m[1..]).unwrap();
        assert_eq!(
            h,
            PublisherAccept {
                version: CHANNEL_VERSION,
                subscriber: 3,
                ty: ty(),
                max_frame: 4096,
                pool: true
            }
        );
        for n in 0..m.len() - 1 {
            assert!(decode_hello(&m[1..1 + n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn a_mismatch_names_the_publishers_type_and_long_names_are_cut() {
        let long = TypeSig {
            name: "é".repeat(200),
            fingerprint: 9,
        };
        let m = encode_mismatch(&long);
        assert_eq!(m[0], MISMATCH);
        let got = decode_mismatch(&m[1..]).unwrap();
        assert_eq!(got.fingerprint, 9);
        assert!(got.name.len() <= MAX_TYPE_NAME && long.name.starts_with(&got.name));
        assert!(decode_mismatch(&[1, 2]).is_err());
        let label = "x".repeat(500);
        let r = decode_subscribe(&encode_subscribe(&ty(), 0, &label)).unwrap();
        assert_eq!(r.label.len(), MAX_LABEL);
    }
}
