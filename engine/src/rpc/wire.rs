//! The call frames on the rings: what a REQUEST, RESPONSE, MESSAGE,
//! CANCEL and CLOSE frame carries, and how a receiver splits one.
//!
//! A call frame's payload is a [`CallHead`], then `nblobs` blob handles of
//! 16 bytes, then the body (an rkyv archive; for an error status, what
//! [`ErrorBody`] says). Ring payloads are 16-byte aligned and both the head
//! and the handles are multiples of 16 bytes, so the body is too, as rkyv
//! wants. [`parse`] copies the head out of the frame once and checks every
//! length against the frame before anything is used; nothing it returns is
//! read from the frame again.

use bytemuck::{Pod, Zeroable};
use isocall_blob::BlobHandle;

/// Version of the connection protocol; both sides must speak the same.
pub const PROTOCOL_VERSION: u32 = 3;

/// Ring frame kinds.
pub mod kind {
    /// A call: expects a RESPONSE with the same call id.
    pub const REQUEST: u16 = 1;
    /// The answer to a REQUEST.
    pub const RESPONSE: u16 = 2;
    /// A one-way message: no answer.
    pub const MESSAGE: u16 = 3;
    /// The caller gave up on a call (its answer may still come; ignored).
    pub const CANCEL: u16 = 4;
    /// The sender closes the connection; the body is a `u32` close reason.
    pub const CLOSE: u16 = 5;
    /// A handshake message on a stream connection (the body is one message
    /// of [`handshake`](crate::raw::handshake), its tag first); never on a
    /// ring.
    pub const HANDSHAKE: u16 = 6;
}

/// What a RESPONSE says about its call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum Status {
    /// The handler answered; the body is its archived reply.
    Ok = 0,
    /// The handler returned an application error: code and message.
    AppError = 1,
    /// No such method id.
    UnknownMethod = 2,
    /// The handler panicked; the server kept serving. The body is the
    /// panic's message.
    HandlerPanicked = 3,
    /// The request failed validation (bytecheck) or named bad blobs. The
    /// body says why.
    BadRequest = 4,
    /// The reply did not fit the frame limit.
    TooLarge = 5,
}

impl Status {
    /// Decodes a status word (`None`: not a status).
    pub fn from_u32(v: u32) -> Option<Status> {
        Some(match v {
            0 => Status::Ok,
            1 => Status::AppError,
            2 => Status::UnknownMethod,
            3 => Status::HandlerPanicked,
            4 => Status::BadRequest,
            5 => Status::TooLarge,
            _ => return None,
        })
    }
}

/// The head of every call frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CallHead {
    /// Call id (REQUEST/RESPONSE/CANCEL), 0 for a MESSAGE.
    pub id: u64,
    /// Method id (REQUEST/MESSAGE).
    pub method: u32,
    /// [`Status`] (RESPONSE).
    pub status: u32,
    /// Blob handles after the head.
    pub nblobs: u32,
    /// Bytes of body after the handles.
    pub body_len: u32,
    /// Reserved, zero.
    pub _reserved: u64,
}

/// Size of [`CallHead`].
pub const HEAD: usize = 32;
/// Size of one blob handle on the wire.
pub const HANDLE: usize = 16;
/// Most blobs one call frame may carry.
pub const MAX_BLOBS: usize = 16;
/// Where a body starts when the frame carries every possible blob: a
/// reply's body may move this far (the server writes it right after the
/// head, before it knows how many blobs the handler returns, in a span
/// that ends this much before the frame's room does).
pub const FAR_BODY: usize = HEAD + MAX_BLOBS * HANDLE;

const _: () = {
    assert!(std::mem::size_of::<CallHead>() == HEAD);
    assert!(std::mem::size_of::<BlobHandle>() == HANDLE);
    assert!(FAR_BODY.is_multiple_of(16));
};

/// Why a call frame could not be split.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame is shorter than a call head.
    #[error("call frame of {len} bytes is shorter than its {HEAD}-byte head")]
    TooShort {
        /// Payload length.
        len: usize,
    },
    /// More blobs than a frame may carry.
    #[error("call frame names {count} blobs (at most {MAX_BLOBS})")]
    TooManyBlobs {
        /// Blobs announced.
        count: u32,
    },
    /// The head announces more bytes than the frame carries.
    #[error("call frame says {nblobs} blobs and {body_len} body bytes, but carries {len} bytes")]
    PastEnd {
        /// Blobs announced.
        nblobs: u32,
        /// Body bytes announced.
        body_len: u32,
        /// Payload length.
        len: usize,
    },
}

/// A call frame's parts, checked against the payload: the head is a copy;
/// the handles and the body are still the frame's bytes, to be copied out
/// once ([`copy_blobs`](Parsed::copy_blobs), the body into private memory)
/// and never read from the frame again.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// Its head (a copy).
    pub head: CallHead,
    /// Its blob handles, `head.nblobs` of 16 bytes, in the frame.
    pub blobs: &'a [u8],
    /// Its body, in the frame.
    pub body: &'a [u8],
}

impl Parsed<'_> {
    /// Copies the blob handles the frame carries into `into` (cleared
    /// first).
    #[inline]
    pub fn copy_blobs(&self, into: &mut Vec<BlobHandle>) {
        // An empty vector is left unwritten: a store of its length here,
        // read back by the caller as half of the slice's (pointer, length)
        // pair, cannot be forwarded to that wider load, which then waits
        // for every older store to reach the cache, among them the
        // request's stores to ring lines the peer's core holds (one
        // cross-core transfer per call; see docs/performance.md).
        if !into.is_empty() {
            into.clear();
        }
        if self.blobs.is_empty() {
            // Most frames: no call into `extend` for nothing.
            return;
        }
        into.extend(
            self.blobs
                .chunks_exact(HANDLE)
                .map(bytemuck::pod_read_unaligned::<BlobHandle>),
        );
    }

    /// The blob handles the frame carries, copied.
    pub fn blob_vec(&self) -> Vec<BlobHandle> {
        let mut v = Vec::new();
        self.copy_blobs(&mut v);
        v
    }
}

/// Splits a call frame's payload: copies its head and handles out of the
/// frame once and checks every length against it.
///
/// # Errors
///
/// [`FrameError`] naming what does not fit.
#[inline]
pub fn parse(payload: &[u8]) -> Result<Parsed<'_>, FrameError> {
    let head: CallHead = payload
        .get(..HEAD)
        .map(bytemuck::pod_read_unaligned)
        .ok_or(FrameError::TooShort { len: payload.len() })?;
    let nblobs = head.nblobs as usize;
    if nblobs > MAX_BLOBS {
        return Err(FrameError::TooManyBlobs { count: head.nblobs });
    }
    let body_at = HEAD + nblobs * HANDLE;
    let end = body_at + head.body_len as usize;
    if end > payload.len() {
        return Err(FrameError::PastEnd {
            nblobs: head.nblobs,
            body_len: head.body_len,
            len: payload.len(),
        });
    }
    Ok(Parsed {
        head,
        blobs: &payload[HEAD..body_at],
        body: &payload[body_at..end],
    })
}

/// Writes a call head and handles at the start of `buf`; returns where the
/// body starts.
///
/// # Panics
///
/// If `buf` is shorter than the head and handles, or there are more than
/// [`MAX_BLOBS`] handles (callers check both first).
#[inline]
pub fn write_head(buf: &mut [u8], head: &CallHead, blobs: &[BlobHandle]) -> usize {
    buf[..HEAD].copy_from_slice(bytemuck::bytes_of(head));
    for (i, h) in blobs.iter().enumerate() {
        buf[HEAD + i * HANDLE..HEAD + (i + 1) * HANDLE].copy_from_slice(&h.to_bytes());
    }
    HEAD + blobs.len() * HANDLE
}

/// The body of an error RESPONSE: a `u32` code (the application's, for
/// [`Status::AppError`]; 0 otherwise), then a UTF-8 message.
pub struct ErrorBody;

impl ErrorBody {
    /// Writes `code` and as much of `message` as fits into `buf`; returns
    /// the bytes written. A message cut short is cut on a character
    /// boundary.
    pub fn write(buf: &mut [u8], code: u32, message: &str) -> usize {
        if buf.len() < 4 {
            return 0;
        }
        buf[..4].copy_from_slice(&code.to_le_bytes());
        let room = buf.len() - 4;
        let mut n = message.len().min(room);
        while !message.is_char_boundary(n) {
            n -= 1;
        }
        buf[4..4 + n].copy_from_slice(&message.as_bytes()[..n]);
        4 + n
    }

    /// Reads a code and message (a message that is not UTF-8 is shown
    /// lossily: it is the peer's text, for display).
    pub fn read(body: &[u8]) -> (u32, String) {
        match body.get(..4) {
            Some(c) => (
                u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                String::from_utf8_lossy(&body[4..]).into_owned(),
            ),
            None => (0, String::new()),
        }
    }
}

/// Why a side closed a connection (the body of a CLOSE frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client closed it (dropped).
    ClientClosed,
    /// The server is stopping.
    ServerStopping,
    /// The connection was idle longer than the server allows.
    Idle,
    /// The client left its reply ring full longer than the server allows.
    RepliesNotRead,
    /// The peer broke the protocol (garbage frames, corrupt ring).
    ProtocolViolation,
    /// The server ran out of a resource for this connection (memory, or
    /// the kernel's limit on watched descriptors).
    OutOfResources,
    /// A code this build does not know.
    Other(u32),
}

impl CloseReason {
    /// The code on the wire.
    pub fn code(self) -> u32 {
        match self {
            CloseReason::ClientClosed => 1,
            CloseReason::ServerStopping => 2,
            CloseReason::Idle => 3,
            CloseReason::RepliesNotRead => 4,
            CloseReason::ProtocolViolation => 5,
            CloseReason::OutOfResources => 6,
            CloseReason::Other(c) => c,
        }
    }

    /// The reason a code names.
    pub fn from_code(c: u32) -> CloseReason {
        match c {
            1 => CloseReason::ClientClosed,
            2 => CloseReason::ServerStopping,
            3 => CloseReason::Idle,
            4 => CloseReason::RepliesNotRead,
            5 => CloseReason::ProtocolViolation,
            6 => CloseReason::OutOfResources,
            c => CloseReason::Other(c),
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::ClientClosed => f.write_str("the client closed the connection"),
            CloseReason::ServerStopping => f.write_str("the server is stopping"),
            CloseReason::Idle => f.write_str("the connection was idle too long"),
            CloseReason::RepliesNotRead => {
                f.write_str("the client left its replies unread too long")
            }
            CloseReason::ProtocolViolation => f.write_str("the peer broke the protocol"),
            CloseReason::OutOfResources => {
                f.write_str("the server ran out of resources for the connection")
            }
            CloseReason::Other(c) => write!(f, "closed for reason {c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(head: CallHead, blobs: &[BlobHandle], body: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEAD + blobs.len() * HANDLE + body.len()];
        let at = write_head(&mut buf, &head, blobs);
        buf[at..].copy_from_slice(body);
        buf
    }

    #[test]
    fn a_frame_round_trips() {
        let h = BlobHandle {
            class: 1,
            slot: 2,
            generation: 3,
            len: 4,
        };
        let head = CallHead {
            id: 9,
            method: 2,
            nblobs: 1,
            body_len: 5,
            ..CallHead::default()
        };
        let f = frame(head, &[h], b"hello");
        let p = parse(&f).unwrap();
        assert_eq!(p.head, head);
        assert_eq!(p.blob_vec(), vec![h]);
        assert_eq!(p.body, b"hello");
    }

    #[test]
    fn lies_in_the_head_are_errors() {
        assert_eq!(
            parse(&[0u8; 8]).unwrap_err(),
            FrameError::TooShort { len: 8 }
        );
        let head = CallHead {
            nblobs: 17,
            ..CallHead::default()
        };
        assert_eq!(
            parse(&frame(head, &[], b"")).unwrap_err(),
            FrameError::TooManyBlobs { count: 17 }
        );
        let head = CallHead {
            nblobs: 1,
            body_len: u32::MAX,
            ..CallHead::default()
        };
        assert!(matches!(
            parse(&frame(head, &[BlobHandle::default()], b"")),
            Err(FrameError::PastEnd { .. })
        ));
    }

    #[test]
    fn error_bodies_carry_a_code_and_a_message_cut_on_a_char_boundary() {
        let mut buf = [0u8; 9];
        let n = ErrorBody::write(&mut buf, 7, "héllo");
        assert_eq!(ErrorBody::read(&buf[..n]), (7, "héll".into()));
        assert_eq!(ErrorBody::read(b"ab"), (0, String::new()));
        for r in [
            CloseReason::ClientClosed,
            CloseReason::Idle,
            CloseReason::RepliesNotRead,
            CloseReason::OutOfResources,
            CloseReason::Other(99),
        ] {
            assert_eq!(CloseReason::from_code(r.code()), r);
        }
    }
}
