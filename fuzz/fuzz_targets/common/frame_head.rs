//! `frame_head`: the split of a call frame's payload ([`wire::parse`]) and
//! the bodies read from it ([`ErrorBody::read`], [`CloseReason::from_code`]).

use isocall::blob::BlobHandle;
use isocall::raw::wire::{self, CloseReason, ErrorBody, FrameError};
use isocall::rpc::Status;

use super::within;

/// `frame_head`: the input is the payload of a call frame as a ring hands
/// it over. Checks [`wire::parse`] (a parsed frame's head, handles and body
/// are exactly the payload's bytes, the body inside the payload; an error
/// names what does not fit), then [`ErrorBody::read`] and
/// [`CloseReason::from_code`] on the body, as a receiver of an error
/// RESPONSE or a CLOSE does.
pub fn frame_head(data: &[u8]) {
    match wire::parse(data) {
        Ok(p) => {
            let n = p.head.nblobs as usize;
            assert!(n <= wire::MAX_BLOBS, "{n} blobs accepted");
            let head: wire::CallHead = bytemuck::pod_read_unaligned(&data[..wire::HEAD]);
            assert_eq!(p.head, head, "the head is a copy of the payload's");
            let body_at = wire::HEAD + n * wire::HANDLE;
            assert_eq!(p.body.len(), p.head.body_len as usize);
            assert!(within(p.body, data), "body outside the payload");
            assert_eq!(
                p.body.as_ptr() as usize - data.as_ptr() as usize,
                body_at,
                "body not right after the handles"
            );
            assert!(within(p.blobs, data), "handles outside the payload");
            assert_eq!(p.blobs.len(), n * wire::HANDLE);
            let handles: Vec<BlobHandle> = p.blob_vec();
            assert_eq!(handles.len(), n);
            for (i, h) in handles.iter().enumerate() {
                let at = wire::HEAD + i * wire::HANDLE;
                assert_eq!(&h.to_bytes()[..], &data[at..at + wire::HANDLE]);
            }
            if let Some(s) = Status::from_u32(p.head.status) {
                assert_eq!(s as u32, p.head.status);
            }
            error_body(p.body);
            close_body(p.body);
        }
        Err(e) => {
            let _ = e.to_string();
            match e {
                FrameError::TooShort { len } => {
                    assert_eq!(len, data.len());
                    assert!(len < wire::HEAD);
                }
                FrameError::TooManyBlobs { count } => {
                    assert!(data.len() >= wire::HEAD);
                    assert!(count as usize > wire::MAX_BLOBS);
                }
                FrameError::PastEnd {
                    nblobs,
                    body_len,
                    len,
                } => {
                    assert_eq!(len, data.len());
                    let need = wire::HEAD + nblobs as usize * wire::HANDLE + body_len as usize;
                    assert!(need > len, "{need} bytes fit {len}");
                }
                _ => {}
            }
        }
    }
    error_body(data);
    close_body(data);
}

/// [`ErrorBody::read`] on a body: the code is its first word, the message
/// the rest; a valid message survives a round trip through `write`.
fn error_body(body: &[u8]) {
    let (code, msg) = ErrorBody::read(body);
    match body.get(..4) {
        None => assert_eq!((code, msg.as_str()), (0, "")),
        Some(c) => {
            assert_eq!(code, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            assert_eq!(msg, String::from_utf8_lossy(&body[4..]));
            let mut buf = vec![0u8; body.len()];
            let n = ErrorBody::write(&mut buf, code, &msg);
            assert!(n <= buf.len());
            let (c2, m2) = ErrorBody::read(&buf[..n]);
            assert_eq!(c2, code);
            assert!(msg.starts_with(&m2), "{m2:?} is not a prefix of {msg:?}");
            if std::str::from_utf8(&body[4..]).is_ok() {
                assert_eq!(n, body.len());
                assert_eq!(m2, msg);
            }
        }
    }
}

/// A CLOSE frame's body: a `u32` reason code, any value.
fn close_body(body: &[u8]) {
    if let Some(c) = body.get(..4) {
        let code = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let r = CloseReason::from_code(code);
        assert_eq!(r.code(), code);
        assert!(!r.to_string().is_empty());
    }
}
