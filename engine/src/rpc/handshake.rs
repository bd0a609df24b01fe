//! The handshake on the connection's seqpacket socket, both ends of it:
//! what each message holds and how it is encoded and decoded.
//!
//! ```text
//! client                                   server
//!   ClientHello (magic, version)     ->
//!                                    <-    Refused (code, ids, reason)
//!                                     or   Hello (magic, version, limits,
//!                                          method table) + memfd + doorbell
//!   Ready | Abort (reason)           ->
//! ```
//!
//! Every message is one seqpacket datagram. A decoder copies what it reads
//! into owned values and checks every length and count against the
//! message before it uses it; nothing here trusts the peer.
//!
//! Over a stream socket the same messages travel, one per frame of kind
//! [`HANDSHAKE`](super::wire::kind::HANDSHAKE), with the stream's own
//! part after the fixed heads: the client's [`StreamClientHello`] (it asks
//! for lz4), the server's [`StreamServerHello`] (lz4 granted or not, its
//! pid, the classes of the connection's blob pools, which both sides make
//! privately). Nothing is attached: there is no segment and no doorbell.

use bytemuck::{Pod, Zeroable};

use super::error::Refusal;
use super::method::{MethodKind, Signature, TypeSig};
use super::policy::PolicyRefusal;
use super::wire::PROTOCOL_VERSION;

/// `b"ISOCALLH"`: first word of every hello.
pub const HELLO_MAGIC: u64 = u64::from_le_bytes(*b"ISOCALLH");

/// Tag of a refusal.
pub const REFUSED: u8 = b'R';
/// Tag of an accepting hello.
pub const HELLO: u8 = b'H';
/// Tag of the client's "ready" after it mapped the segment.
pub const READY: u8 = b'K';
/// Tag of the client's "abort" (followed by the reason).
pub const ABORT: u8 = b'A';

/// Largest handshake message (a seqpacket datagram).
pub const MAX_MESSAGE: usize = 60 << 10;
/// Longest method name.
pub const MAX_NAME: usize = 1024;
/// Longest type name carried (longer ones are cut: they are for display,
/// the fingerprints are what is compared).
pub const MAX_TYPE_NAME: usize = 255;

/// Method flag: the server declared it idempotent.
const FLAG_IDEMPOTENT: u8 = 1;
/// Method flag: a one-way message (no reply type).
const FLAG_MESSAGE: u8 = 2;

/// The client's first message.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ClientHello {
    /// [`HELLO_MAGIC`].
    pub magic: u64,
    /// The protocol version the client speaks.
    pub version: u32,
    /// Reserved, zero.
    pub _reserved: u32,
}

impl ClientHello {
    /// This build's hello.
    pub fn ours() -> ClientHello {
        ClientHello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
            _reserved: 0,
        }
    }

    /// Decodes a client hello.
    ///
    /// # Errors
    ///
    /// `Truncated`, `BadMagic`.
    pub fn decode(msg: &[u8]) -> Result<ClientHello, HandshakeError> {
        const N: usize = std::mem::size_of::<ClientHello>();
        let h: ClientHello =
            msg.get(..N)
                .map(bytemuck::pod_read_unaligned)
                .ok_or(HandshakeError::Truncated {
                    what: "client hello",
                })?;
        if h.magic != HELLO_MAGIC {
            return Err(HandshakeError::BadMagic { found: h.magic });
        }
        Ok(h)
    }
}

/// The fixed part of the server's hello.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ServerHelloHead {
    /// [`HELLO_MAGIC`].
    pub magic: u64,
    /// The protocol version of the server.
    pub version: u32,
    /// Number of methods that follow.
    pub nmethods: u32,
    /// Largest call frame payload the server accepts.
    pub max_frame: u32,
    /// Connection number on this server.
    pub conn: u32,
}

/// One method as the server's hello describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodInfo {
    /// Its name.
    pub name: String,
    /// Whether the server declared it idempotent.
    pub idempotent: bool,
    /// Its kind and types.
    pub signature: Signature,
}

/// A stream connection's part of the client's hello.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct StreamClientHello {
    /// As on shared memory.
    pub hello: ClientHello,
    /// [`STREAM_LZ4`]: the client asks for lz4.
    pub flags: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// Reserved, zero.
    pub _reserved2: u64,
}

/// A stream hello's flag: lz4 asked for (client) or granted (server).
pub const STREAM_LZ4: u32 = 1;

/// A stream connection's part of the server's hello, after its
/// [`ServerHelloHead`]; `nclasses` pairs of `u32` (slot size, count)
/// follow it, then the method table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct StreamServerHello {
    /// [`STREAM_LZ4`]: lz4 is on for the connection.
    pub flags: u32,
    /// The size from which a part is compressed.
    pub lz4_threshold: u32,
    /// The server's process id (in its own pid namespace).
    pub pid: u32,
    /// Classes of the connection's blob pool that follow (0: no pool).
    pub nclasses: u32,
    /// Reserved, zero.
    pub _reserved: u64,
    /// Reserved, zero.
    pub _reserved2: u64,
}

/// Most bytes of blob pool a client makes for a stream connection (the
/// server says how much; more is refused at the handshake).
pub const MAX_STREAM_POOL: usize = 1 << 30;
/// Largest call frame payload a client accepts from a stream server.
pub const MAX_STREAM_PAYLOAD: usize = 256 << 20;

/// The server's hello, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHello {
    /// Its fixed part.
    pub head: ServerHelloHead,
    /// Its methods, in id order.
    pub methods: Vec<MethodInfo>,
}

/// Why a handshake message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A message whose tag byte is not one this point of the handshake
    /// expects.
    #[error("unexpected handshake message (tag {tag:#04x})")]
    UnexpectedTag {
        /// The tag.
        tag: u8,
    },
    /// A message cut short.
    #[error("the {what} is cut short")]
    Truncated {
        /// What was being read.
        what: &'static str,
    },
    /// A hello without the magic.
    #[error("not an isocall peer (bad hello magic {found:#018x})")]
    BadMagic {
        /// The word found.
        found: u64,
    },
    /// A name that is not UTF-8.
    #[error("a {what} that is not UTF-8")]
    NotUtf8 {
        /// What it names.
        what: &'static str,
    },
    /// More methods than the message can hold.
    #[error("{count} methods announced, more than the hello holds")]
    TooManyMethods {
        /// The count announced.
        count: u32,
    },
    /// The wrong number of descriptors came with the hello.
    #[error("expected {expected} descriptors with the hello, got {got}")]
    Descriptors {
        /// How many the protocol sends.
        expected: usize,
        /// How many came.
        got: usize,
    },
    /// The doorbell sent is not a Unix seqpacket socket.
    #[error("the doorbell the server sent is not a Unix seqpacket socket")]
    NotADoorbell,
    /// The peer closed the socket during the handshake.
    #[error("the peer closed the socket during the handshake")]
    Closed,
    /// The client gave up on the handshake (its reason; server side only).
    #[error("the client aborted the handshake: {reason}")]
    Aborted {
        /// The client's reason, for the server's log.
        reason: String,
    },
    /// A stream server's blob pool classes are not a pool.
    #[error("the server's blob pool classes are refused: {0}")]
    BadPool(isocall_blob::BlobError),
    /// A stream server asks for a larger blob pool or frames than a client
    /// makes.
    #[error("the server asks for {what} of {asked} bytes, more than the {max} a client allows")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Bytes asked for.
        asked: u64,
        /// The most allowed.
        max: u64,
    },
}

/// Encodes an accepting hello: tag, fixed part, method table.
pub fn encode_hello(head: &ServerHelloHead, methods: &[MethodInfo]) -> Vec<u8> {
    let mut m = vec![HELLO];
    m.extend_from_slice(bytemuck::bytes_of(head));
    encode_methods(&mut m, methods);
    m
}

/// Encodes a stream connection's accepting hello: tag, fixed part, the
/// stream's part and its pool classes, method table.
pub fn encode_stream_hello(
    head: &ServerHelloHead,
    stream: &StreamServerHello,
    classes: &[isocall_blob::ClassConfig],
    methods: &[MethodInfo],
) -> Vec<u8> {
    let mut m = vec![HELLO];
    m.extend_from_slice(bytemuck::bytes_of(head));
    let stream = StreamServerHello {
        nclasses: classes.len() as u32,
        ..*stream
    };
    m.extend_from_slice(bytemuck::bytes_of(&stream));
    for c in classes {
        m.extend_from_slice(&(c.slot_size as u32).to_le_bytes());
        m.extend_from_slice(&(c.count as u32).to_le_bytes());
    }
    encode_methods(&mut m, methods);
    m
}

fn encode_methods(m: &mut Vec<u8>, methods: &[MethodInfo]) {
    for info in methods {
        let sig = &info.signature;
        let mut flags = 0;
        if info.idempotent {
            flags |= FLAG_IDEMPOTENT;
        }
        if sig.kind == MethodKind::Message {
            flags |= FLAG_MESSAGE;
        }
        let cut = |s: &str| -> Vec<u8> {
            let mut n = s.len().min(MAX_TYPE_NAME);
            while !s.is_char_boundary(n) {
                n -= 1;
            }
            s.as_bytes()[..n].to_vec()
        };
        let req = cut(&sig.request.name);
        let resp = sig.reply.as_ref().map(|r| cut(&r.name)).unwrap_or_default();
        m.extend_from_slice(&(info.name.len() as u16).to_le_bytes());
        m.push(flags);
        m.push(0);
        m.extend_from_slice(&sig.request.fingerprint.to_le_bytes());
        m.extend_from_slice(
            &sig.reply
                .as_ref()
                .map_or(0, |r| r.fingerprint)
                .to_le_bytes(),
        );
        m.extend_from_slice(&(req.len() as u16).to_le_bytes());
        m.extend_from_slice(&(resp.len() as u16).to_le_bytes());
        m.extend_from_slice(info.name.as_bytes());
        m.extend_from_slice(&req);
        m.extend_from_slice(&resp);
    }
}

/// Bytes of one method entry before its names.
const ENTRY_FIXED: usize = 24;

/// A reader over a message that fails with [`HandshakeError::Truncated`].
struct Reader<'a> {
    msg: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HandshakeError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.msg.len());
        let end = end.ok_or(HandshakeError::Truncated { what: self.what })?;
        let s = &self.msg[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, HandshakeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u16(&mut self) -> Result<u16, HandshakeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Result<u64, HandshakeError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn string(&mut self, n: usize, what: &'static str) -> Result<String, HandshakeError> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| HandshakeError::NotUtf8 { what })
    }
}

/// Decodes an accepting hello (the bytes after the tag).
///
/// # Errors
///
/// A [`HandshakeError`] naming what is wrong.
pub fn decode_hello(msg: &[u8]) -> Result<ServerHello, HandshakeError> {
    const N: usize = std::mem::size_of::<ServerHelloHead>();
    let mut r = Reader {
        msg,
        at: 0,
        what: "server hello",
    };
    let head: ServerHelloHead = bytemuck::pod_read_unaligned(r.take(N)?);
    if head.magic != HELLO_MAGIC {
        return Err(HandshakeError::BadMagic { found: head.magic });
    }
    let methods = decode_methods(&mut r, &head)?;
    Ok(ServerHello { head, methods })
}

/// How many pool classes follow a stream hello part: at most
/// [`MAX_CLASSES`](isocall_blob::MAX_CLASSES).
pub(crate) fn stream_classes(stream: &StreamServerHello) -> Result<usize, HandshakeError> {
    if stream.nclasses as usize > isocall_blob::MAX_CLASSES {
        return Err(HandshakeError::BadPool(
            isocall_blob::BlobError::TooManyClasses,
        ));
    }
    Ok(stream.nclasses as usize)
}

/// The pool a stream hello lists, checked: none without a class, else a
/// valid pool of at most [`MAX_STREAM_POOL`] bytes.
pub(crate) fn stream_pool(
    pool: isocall_blob::PoolConfig,
) -> Result<Option<isocall_blob::PoolConfig>, HandshakeError> {
    if pool.is_empty() {
        return Ok(None);
    }
    let bytes = pool.region_size().map_err(HandshakeError::BadPool)?;
    if bytes > MAX_STREAM_POOL {
        return Err(HandshakeError::TooLarge {
            what: "a blob pool",
            asked: bytes as u64,
            max: MAX_STREAM_POOL as u64,
        });
    }
    Ok(Some(pool))
}

/// Decodes a stream connection's accepting hello (the bytes after the
/// tag): the hello, the stream's part, and the pool's classes (checked:
/// a valid pool of at most [`MAX_STREAM_POOL`] bytes, or none).
///
/// # Errors
///
/// A [`HandshakeError`] naming what is wrong.
pub fn decode_stream_hello(
    msg: &[u8],
) -> Result<
    (
        ServerHello,
        StreamServerHello,
        Option<isocall_blob::PoolConfig>,
    ),
    HandshakeError,
> {
    const N: usize = std::mem::size_of::<ServerHelloHead>();
    const S: usize = std::mem::size_of::<StreamServerHello>();
    let mut r = Reader {
        msg,
        at: 0,
        what: "server hello",
    };
    let head: ServerHelloHead = bytemuck::pod_read_unaligned(r.take(N)?);
    if head.magic != HELLO_MAGIC {
        return Err(HandshakeError::BadMagic { found: head.magic });
    }
    let stream: StreamServerHello = bytemuck::pod_read_unaligned(r.take(S)?);
    stream_classes(&stream)?;
    r.what = "pool classes";
    let mut pool = isocall_blob::PoolConfig::new();
    for _ in 0..stream.nclasses {
        let (size, count) = (r.u32()?, r.u32()?);
        pool = pool.class(size as usize, count as usize);
    }
    let pool = stream_pool(pool)?;
    if head.max_frame as usize > MAX_STREAM_PAYLOAD {
        return Err(HandshakeError::TooLarge {
            what: "frames",
            asked: head.max_frame.into(),
            max: MAX_STREAM_PAYLOAD as u64,
        });
    }
    let methods = decode_methods(&mut r, &head)?;
    Ok((ServerHello { head, methods }, stream, pool))
}

/// The method table of a hello, after its heads.
fn decode_methods(
    r: &mut Reader<'_>,
    head: &ServerHelloHead,
) -> Result<Vec<MethodInfo>, HandshakeError> {
    let msg = r.msg;
    if head.nmethods as usize > msg.len() / ENTRY_FIXED {
        return Err(HandshakeError::TooManyMethods {
            count: head.nmethods,
        });
    }
    r.what = "method table";
    let mut methods = Vec::with_capacity(head.nmethods as usize);
    for _ in 0..head.nmethods {
        let name_len = r.u16()? as usize;
        let flags = r.take(2)?[0];
        let req_fp = r.u64()?;
        let resp_fp = r.u64()?;
        let req_len = r.u16()? as usize;
        let resp_len = r.u16()? as usize;
        let name = r.string(name_len, "method name")?;
        let req = r.string(req_len, "type name")?;
        let resp = r.string(resp_len, "type name")?;
        let message = flags & FLAG_MESSAGE != 0;
        methods.push(MethodInfo {
            name,
            idempotent: flags & FLAG_IDEMPOTENT != 0,
            signature: Signature {
                kind: if message {
                    MethodKind::Message
                } else {
                    MethodKind::Call
                },
                request: TypeSig {
                    name: req,
                    fingerprint: req_fp,
                },
                reply: (!message).then_some(TypeSig {
                    name: resp,
                    fingerprint: resp_fp,
                }),
            },
        });
    }
    Ok(methods)
}

/// Refusal codes on the wire.
mod code {
    pub const NOT_SAME_UID: u32 = 1;
    pub const NOT_ALLOWED: u32 = 2;
    pub const CUSTOM: u32 = 3;
    pub const VERSION: u32 = 4;
    pub const TOO_MANY: u32 = 5;
    pub const TOO_MANY_FOR_UID: u32 = 6;
    pub const BUSY: u32 = 7;
    pub const STOPPING: u32 = 8;
    pub const RESOURCES: u32 = 9;
    pub const NO_CREDENTIALS: u32 = 10;
    pub const NO_CERTIFICATE: u32 = 11;
    pub const CERTIFICATE: u32 = 12;
    pub const TOO_MANY_FOR_ADDRESS: u32 = 13;
}

/// Encodes a refusal: tag, code, three numbers, then a text (a custom
/// policy's reason).
pub fn encode_refusal(r: &Refusal) -> Vec<u8> {
    let text_buf: String;
    let (c, a, b, text): (u32, u32, u32, &str) = match r {
        Refusal::Policy(PolicyRefusal::NotSameUid { uid, expected }) => {
            (code::NOT_SAME_UID, *uid, *expected, "")
        }
        Refusal::Policy(PolicyRefusal::NotAllowed { uid, gid }) => {
            (code::NOT_ALLOWED, *uid, *gid, "")
        }
        Refusal::Policy(PolicyRefusal::Custom { reason }) => (code::CUSTOM, 0, 0, reason),
        Refusal::Policy(PolicyRefusal::NoCredentials) => (code::NO_CREDENTIALS, 0, 0, ""),
        Refusal::Policy(PolicyRefusal::NoCertificate) => (code::NO_CERTIFICATE, 0, 0, ""),
        Refusal::Policy(PolicyRefusal::Certificate {
            subject,
            spki_sha256,
        }) => {
            text_buf = format!("{spki_sha256} {subject}");
            (code::CERTIFICATE, 0, 0, text_buf.as_str())
        }
        Refusal::TooManyForAddress { limit } => (code::TOO_MANY_FOR_ADDRESS, *limit, 0, ""),
        Refusal::Version { server, client } => (code::VERSION, *server, *client, ""),
        Refusal::TooManyConnections { limit } => (code::TOO_MANY, *limit, 0, ""),
        Refusal::TooManyForUid { uid, limit } => (code::TOO_MANY_FOR_UID, *uid, *limit, ""),
        Refusal::Busy { limit } => (code::BUSY, *limit, 0, ""),
        Refusal::Stopping => (code::STOPPING, 0, 0, ""),
        Refusal::Resources { errno } => (code::RESOURCES, *errno as u32, 0, ""),
        Refusal::Other { code } => (*code, 0, 0, ""),
    };
    let mut m = vec![REFUSED];
    for w in [c, a, b] {
        m.extend_from_slice(&w.to_le_bytes());
    }
    let mut n = text.len().min(1024);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    m.extend_from_slice(&text.as_bytes()[..n]);
    m
}

/// Decodes a refusal (the bytes after the tag).
///
/// # Errors
///
/// `Truncated` for fewer than three numbers.
pub fn decode_refusal(msg: &[u8]) -> Result<Refusal, HandshakeError> {
    let w = |i: usize| -> Result<u32, HandshakeError> {
        msg.get(i * 4..i * 4 + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(HandshakeError::Truncated { what: "refusal" })
    };
    let (c, a, b) = (w(0)?, w(1)?, w(2)?);
    Ok(match c {
        code::NOT_SAME_UID => Refusal::Policy(PolicyRefusal::NotSameUid {
            uid: a,
            expected: b,
        }),
        code::NOT_ALLOWED => Refusal::Policy(PolicyRefusal::NotAllowed { uid: a, gid: b }),
        code::CUSTOM => Refusal::Policy(PolicyRefusal::Custom {
            reason: String::from_utf8_lossy(&msg[12..]).into_owned(),
        }),
        code::VERSION => Refusal::Version {
            server: a,
            client: b,
        },
        code::TOO_MANY => Refusal::TooManyConnections { limit: a },
        code::TOO_MANY_FOR_UID => Refusal::TooManyForUid { uid: a, limit: b },
        code::BUSY => Refusal::Busy { limit: a },
        code::STOPPING => Refusal::Stopping,
        code::RESOURCES => Refusal::Resources { errno: a as i32 },
        code::NO_CREDENTIALS => Refusal::Policy(PolicyRefusal::NoCredentials),
        code::NO_CERTIFICATE => Refusal::Policy(PolicyRefusal::NoCertificate),
        code::CERTIFICATE => {
            let text = String::from_utf8_lossy(&msg[12..]);
            let (spki, subject) = text.split_once(' ').unwrap_or((&text, ""));
            Refusal::Policy(PolicyRefusal::Certificate {
                subject: subject.to_string(),
                spki_sha256: spki.to_string(),
            })
        }
        code::TOO_MANY_FOR_ADDRESS => Refusal::TooManyForAddress { limit: a },
        code => Refusal::Other { code },
    })
}

/// Tells the peer on `sock` why this side gives the handshake up (the
/// abort [`encode_abort`] makes), waiting at most 100 ms to send it; a
/// peer that is gone already is not told.
pub(crate) fn send_abort(sock: std::os::fd::BorrowedFd<'_>, reason: &str) {
    let _ = crate::sys::send_with_fds(
        sock,
        &encode_abort(reason),
        &[],
        std::time::Instant::now() + std::time::Duration::from_millis(100),
    );
}

/// Encodes the client's abort with its reason.
pub fn encode_abort(reason: &str) -> Vec<u8> {
    let mut m = vec![ABORT];
    let mut n = reason.len().min(1024);
    while !reason.is_char_boundary(n) {
        n -= 1;
    }
    m.extend_from_slice(&reason.as_bytes()[..n]);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(kind: MethodKind) -> Signature {
        Signature {
            kind,
            request: TypeSig {
                name: "Add".into(),
                fingerprint: 1,
            },
            reply: (kind == MethodKind::Call).then(|| TypeSig {
                name: "Sum".into(),
                fingerprint: 2,
            }),
        }
    }

    #[test]
    fn a_hello_round_trips() {
        let head = ServerHelloHead {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
            nmethods: 2,
            max_frame: 4096,
            conn: 7,
        };
        let methods = vec![
            MethodInfo {
                name: "add".into(),
                idempotent: true,
                signature: sig(MethodKind::Call),
            },
            MethodInfo {
                name: "log".into(),
                idempotent: false,
                signature: sig(MethodKind::Message),
            },
        ];
        let m = encode_hello(&head, &methods);
        assert_eq!(m[0], HELLO);
        let got = decode_hello(&m[1..]).unwrap();
        assert_eq!(got.head, head);
        assert_eq!(got.methods, methods);
        // Every prefix is refused, never a panic.
        for n in 0..m.len() - 1 {
            assert!(decode_hello(&m[1..1 + n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn a_lying_count_is_refused_before_anything_is_allocated() {
        let head = ServerHelloHead {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
            nmethods: u32::MAX,
            max_frame: 4096,
            conn: 1,
        };
        let m = encode_hello(&head, &[]);
        assert!(matches!(
            decode_hello(&m[1..]),
            Err(HandshakeError::TooManyMethods { .. })
        ));
    }

    #[test]
    fn refusals_round_trip() {
        for r in [
            Refusal::Policy(PolicyRefusal::NotSameUid {
                uid: 5,
                expected: 6,
            }),
            Refusal::Policy(PolicyRefusal::NotAllowed { uid: 5, gid: 9 }),
            Refusal::Policy(PolicyRefusal::Custom {
                reason: "no".into(),
            }),
            Refusal::Version {
                server: 3,
                client: 2,
            },
            Refusal::TooManyConnections { limit: 10 },
            Refusal::TooManyForUid { uid: 1, limit: 2 },
            Refusal::Busy { limit: 4 },
            Refusal::Stopping,
            Refusal::Resources { errno: 24 },
            Refusal::Policy(PolicyRefusal::NoCredentials),
            Refusal::Policy(PolicyRefusal::NoCertificate),
            Refusal::Policy(PolicyRefusal::Certificate {
                subject: "CN=x, O=y z".into(),
                spki_sha256: "ab12".into(),
            }),
            Refusal::TooManyForAddress { limit: 3 },
        ] {
            let m = encode_refusal(&r);
            assert_eq!(decode_refusal(&m[1..]).unwrap(), r);
        }
        assert!(decode_refusal(&[1, 2]).is_err());
    }

    #[test]
    fn a_client_hello_is_checked() {
        let h = ClientHello::ours();
        assert_eq!(ClientHello::decode(bytemuck::bytes_of(&h)).unwrap(), h);
        assert!(ClientHello::decode(&[0; 4]).is_err());
        assert!(matches!(
            ClientHello::decode(&[0; 16]),
            Err(HandshakeError::BadMagic { found: 0 })
        ));
    }
}
