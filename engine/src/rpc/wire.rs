//! The connection's wire formats: the handshake messages on the socket and
//! the call frames on the rings.
//!
//! A call frame's payload is a [`CallHead`], then `nblobs` blob handles of
//! 16 bytes, then the body (an rkyv archive, or a UTF-8 message for an
//! error status). Ring payloads are 16-byte aligned and both the head and
//! the handles are multiples of 16 bytes, so the body is too, as rkyv
//! wants. Every field is checked against the frame before use.

use bytemuck::{Pod, Zeroable};
use isocall_blob::BlobHandle;

/// Version of the connection protocol; both sides must speak the same.
pub const PROTOCOL_VERSION: u32 = 2;
/// `b"ISOCALLH"`: first word of every handshake message.
pub const HELLO_MAGIC: u64 = u64::from_le_bytes(*b"ISOCALLH");

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
    /// The sender closes the connection cleanly.
    pub const CLOSE: u16 = 5;
}

/// What a RESPONSE says about its call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    /// The handler answered; the body is its archived reply.
    Ok = 0,
    /// The handler returned an error; the body is its message.
    AppError = 1,
    /// No such method id.
    UnknownMethod = 2,
    /// The handler panicked; the server kept serving.
    HandlerPanicked = 3,
    /// The request failed validation (bytecheck) or named bad blobs.
    BadRequest = 4,
    /// The reply did not fit the server's frame limit.
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

const _: () = {
    assert!(std::mem::size_of::<CallHead>() == HEAD);
    assert!(std::mem::size_of::<BlobHandle>() == HANDLE);
};

/// A call frame's parts, checked against the payload.
pub struct Parsed<'a> {
    /// Its head.
    pub head: CallHead,
    /// Its blob handles.
    pub blobs: &'a [u8],
    /// Its body.
    pub body: &'a [u8],
}

/// Splits a call frame's payload, checking every length against it.
///
/// # Errors
///
/// A message naming what does not fit.
pub fn parse(payload: &[u8]) -> Result<Parsed<'_>, String> {
    let head: CallHead = payload
        .get(..HEAD)
        .map(bytemuck::pod_read_unaligned)
        .ok_or_else(|| {
            format!(
                "call frame of {} bytes is shorter than its head",
                payload.len()
            )
        })?;
    let nblobs = head.nblobs as usize;
    if nblobs > MAX_BLOBS {
        return Err(format!("{nblobs} blobs in one call (at most {MAX_BLOBS})"));
    }
    let body_at = HEAD + nblobs * HANDLE;
    let end = body_at + head.body_len as usize;
    if end > payload.len() {
        return Err(format!(
            "call frame says {nblobs} blobs and {} body bytes, but carries {} bytes",
            head.body_len,
            payload.len()
        ));
    }
    Ok(Parsed {
        head,
        blobs: &payload[HEAD..body_at],
        body: &payload[body_at..end],
    })
}

/// The blob handles of a parsed frame.
pub fn handles(blobs: &[u8]) -> impl Iterator<Item = BlobHandle> + '_ {
    blobs
        .chunks_exact(HANDLE)
        .filter_map(BlobHandle::from_bytes)
}

/// Writes a call head and handles at the start of `buf`; returns where the
/// body starts.
pub fn write_head(buf: &mut [u8], head: &CallHead, blobs: &[BlobHandle]) -> usize {
    buf[..HEAD].copy_from_slice(bytemuck::bytes_of(head));
    for (i, h) in blobs.iter().enumerate() {
        buf[HEAD + i * HANDLE..HEAD + (i + 1) * HANDLE].copy_from_slice(&h.to_bytes());
    }
    HEAD + blobs.len() * HANDLE
}

/// The client's first message on the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ClientHello {
    /// [`HELLO_MAGIC`].
    pub magic: u64,
    /// [`PROTOCOL_VERSION`] of the client.
    pub version: u32,
    /// Reserved, zero.
    pub _reserved: u32,
}

/// The server's answer when it accepts: followed by the method table (per
/// method a `u16` length, a flags byte ([`METHOD_IDEMPOTENT`]) and the
/// name in UTF-8), with the memfd and the two doorbell eventfds attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ServerHello {
    /// [`HELLO_MAGIC`].
    pub magic: u64,
    /// [`PROTOCOL_VERSION`] of the server.
    pub version: u32,
    /// Number of methods that follow.
    pub nmethods: u32,
    /// Largest call frame payload the server accepts.
    pub max_frame: u32,
    /// Connection number on this server.
    pub conn: u32,
}

/// Method flag in the hello's table: the server declared the method
/// idempotent (running it twice has the effect of running it once), so a
/// supervised client may retry it on a restarted server.
pub const METHOD_IDEMPOTENT: u8 = 1;

/// Tag of a refusal (followed by the reason in UTF-8).
pub const REFUSED: u8 = b'R';
/// Tag of an accepting hello.
pub const HELLO: u8 = b'H';
/// Tag of the client's "ready" after it mapped the segment.
pub const READY: u8 = b'K';
/// Tag of the client's "abort" (followed by the reason).
pub const ABORT: u8 = b'A';
