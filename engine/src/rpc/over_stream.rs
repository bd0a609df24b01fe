//! What both ends of a call connection over a stream socket share: the
//! configuration of the endpoint during the handshake and after it, and
//! waiting for one handshake message.
//!
//! The handshake runs on a provisional endpoint (small frames, no pool,
//! no compression), in frames of kind [`HANDSHAKE`](kind::HANDSHAKE); once
//! the server's hello has said what the connection uses, both sides
//! [reconfigure](crate::stream::reconfigure) it in place, so that no byte
//! already read is lost.

use std::os::fd::BorrowedFd;
use std::time::Instant;

use isocall_blob::PoolConfig;

use crate::rpc::handshake::MAX_MESSAGE;
use crate::rpc::large::LargeLimits;
use crate::rpc::wire::{MAX_BLOBS, kind};
use crate::stream::{DEFAULT_MAX_FRAME, Lz4, StreamConfig, StreamError, StreamRx, codec};
use crate::sys::{Ready, poll_ready};

/// Largest handshake message on a stream: a hello (at most
/// [`MAX_MESSAGE`]) and the stream's part.
const MAX_HANDSHAKE: usize = MAX_MESSAGE + 4096;

/// The provisional endpoint's configuration: handshake messages only.
pub(crate) fn handshake_config() -> StreamConfig {
    StreamConfig {
        max_frame: MAX_HANDSHAKE + codec::OVERHEAD,
        max_payload: MAX_HANDSHAKE,
        pool: None,
        lz4: None,
        large: LargeLimits { count: 0, bytes: 0 },
        ..StreamConfig::default()
    }
}

/// The configuration the hello makes: call payloads of `max_payload`
/// bytes, a pool of `pool`'s classes, lz4 if granted, and `large` for the
/// large blobs received. A frame may carry as many blobs of the largest
/// class as a call names, and large blobs inline up to
/// [`DEFAULT_MAX_FRAME`] in all.
pub(crate) fn connection_config(
    max_payload: usize,
    pool: Option<PoolConfig>,
    lz4: Option<Lz4>,
    large: LargeLimits,
) -> StreamConfig {
    let largest = pool
        .as_ref()
        .and_then(|p| p.classes().last())
        .map_or(0, |c| c.slot_size);
    let max_frame = max_payload
        .saturating_add(MAX_BLOBS.saturating_mul(largest))
        .saturating_add(codec::OVERHEAD)
        .max(DEFAULT_MAX_FRAME)
        .min(u32::MAX as usize);
    StreamConfig {
        max_frame,
        max_payload,
        pool,
        lz4,
        large,
        ..StreamConfig::default()
    }
}

/// Why no handshake message came.
#[derive(Debug)]
pub(crate) enum NoMessage {
    /// The deadline passed.
    Timeout,
    /// The stop signal rang (a server stopping).
    Stopped,
    /// A frame that is not a handshake message.
    Kind(u16),
    /// The connection failed (`PeerDied`: the peer hung up).
    Stream(StreamError),
}

impl std::fmt::Display for NoMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoMessage::Timeout => f.write_str("timed out"),
            NoMessage::Stopped => f.write_str("the server is stopping"),
            NoMessage::Kind(k) => write!(f, "a frame of kind {k} where a handshake message goes"),
            NoMessage::Stream(e) => write!(f, "{e}"),
        }
    }
}

/// The next handshake message, waiting until `deadline` (and no longer
/// than `stop` stays quiet): however slowly its bytes trickle in, the
/// wait ends at the deadline.
pub(crate) fn recv_message(
    rx: &mut StreamRx,
    deadline: Instant,
    stop: Option<BorrowedFd<'_>>,
) -> Result<Vec<u8>, NoMessage> {
    loop {
        if let Some(f) = rx.try_recv().map_err(NoMessage::Stream)? {
            if f.kind() != kind::HANDSHAKE {
                return Err(NoMessage::Kind(f.kind()));
            }
            let msg = f.payload().to_vec();
            f.release();
            return Ok(msg);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NoMessage::Timeout);
        }
        let ready = if rx.wants_write() {
            Ready::ReadWrite
        } else {
            Ready::Readable
        };
        let mut fds = vec![(rx.poll_fd(), ready)];
        fds.extend(stop.map(|s| (s, Ready::Readable)));
        let r = poll_ready(&fds, Some(left)).map_err(|e| {
            NoMessage::Stream(StreamError::Os {
                errno: e.raw_os_error().unwrap_or(0),
            })
        })?;
        if r.get(1) == Some(&true) {
            return Err(NoMessage::Stopped);
        }
    }
}
