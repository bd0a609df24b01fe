//! What both ends of a connection over a stream socket share (a call's
//! and a channel's): opening it and checking who the peer is, the
//! configuration of the endpoint during the handshake and after it,
//! deciding on lz4, waiting for one handshake message, and abandoning a
//! handshake.
//!
//! The handshake runs on a provisional endpoint (small frames, no pool,
//! no compression), in frames of kind [`HANDSHAKE`](kind::HANDSHAKE); once
//! the server's hello has said what the connection uses, both sides
//! [reconfigure](crate::stream::reconfigure) it in place, so that no byte
//! already read is lost.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use isocall_blob::PoolConfig;

use crate::rpc::address::{Compression, Endpoint};
use crate::rpc::handshake::StreamServerHello;
use crate::rpc::handshake::{self, ABORT, HandshakeError, MAX_MESSAGE, READY, STREAM_LZ4};
use crate::rpc::large::LargeLimits;
use crate::rpc::policy::{Policy, PolicyRefusal, Who};
use crate::rpc::wire::{MAX_BLOBS, kind};
use crate::stream::{
    Address, Connection, DEFAULT_MAX_FRAME, Lz4, SocketKind, StreamConfig, StreamError, StreamRx,
    StreamTx, codec,
};
use crate::sys::{PeerCred, Ready, poll_ready};

/// Largest handshake message on a stream: a hello (at most
/// [`MAX_MESSAGE`]) and the stream's part.
const MAX_HANDSHAKE: usize = MAX_MESSAGE + 4096;

/// The socket to `address`, connected (and TLS established, if `to` asks
/// for it and the address is TCP).
pub(crate) fn open(
    address: &Address,
    to: &Endpoint,
    deadline: Instant,
) -> Result<Connection, StreamError> {
    #[cfg(feature = "tls")]
    if let Some(tls) = to.tls.as_ref().filter(|_| address.is_tcp()) {
        return crate::stream::connect_tls(address, tls, deadline);
    }
    let _ = to;
    crate::stream::connect(address, deadline)
}

/// Checks the peer of a connection this side opened against `policy`:
/// on a Unix socket its credentials (returned); without them (TCP), its
/// certificate, and only if the policy decides by certificates (else the
/// address dialled is taken as the peer it names).
pub(crate) fn check_peer(
    conn: &Connection,
    policy: &Policy,
) -> Result<Option<PeerCred>, PolicyRefusal> {
    let cred = conn.peer_cred();
    match &cred {
        Some(c) => policy.check(c)?,
        None if policy.without_credentials() => policy.decide(&Who::remote(conn))?,
        None => {}
    }
    Ok(cred)
}

/// Whether to ask for lz4 on `conn`, as `compression` says (`Auto`: over
/// TCP).
pub(crate) fn wants_lz4(conn: &Connection, compression: Compression) -> bool {
    match compression {
        Compression::Auto => conn.kind() == SocketKind::Tcp,
        Compression::Lz4 => true,
        Compression::Off => false,
    }
}

/// The lz4 the accepting side grants for the `flags` the connecting side
/// sent: the default, if it asked and `compression` is not `Off`.
pub(crate) fn grant_lz4(flags: u32, compression: Compression) -> Option<Lz4> {
    (flags & STREAM_LZ4 != 0 && compression != Compression::Off).then(Lz4::default)
}

/// The accepting side's stream part of its hello (before the pool's
/// classes): `lz4` as granted, and this process's id.
pub(crate) fn stream_hello(lz4: Option<Lz4>) -> StreamServerHello {
    StreamServerHello {
        flags: if lz4.is_some() { STREAM_LZ4 } else { 0 },
        lz4_threshold: lz4.map_or(0, |l| l.threshold as u32),
        pid: std::process::id(),
        ..StreamServerHello::default()
    }
}

/// The lz4 that the accepting side's stream part `stream` turns on, if
/// any.
pub(crate) fn granted_lz4(stream: &StreamServerHello) -> Option<Lz4> {
    (stream.flags & STREAM_LZ4 != 0).then(|| Lz4 {
        threshold: (stream.lz4_threshold as usize).max(1),
    })
}

/// Tells the peer why this side gives the handshake up, as far as the
/// socket takes it at once (best effort: the peer may be gone).
pub(crate) fn abort(tx: &mut StreamTx, reason: &str) {
    let _ = tx.send(
        kind::HANDSHAKE,
        &handshake::encode_abort(reason),
        Some(Instant::now()),
    );
    let _ = tx.flush(Some(Instant::now() + Duration::from_millis(100)));
}

/// Reads the connecting side's last handshake message: `Ok` for
/// [`READY`]; its reason if it aborted; an unexpected tag otherwise.
pub(crate) fn expect_ready(msg: &[u8]) -> Result<(), HandshakeError> {
    match msg.first() {
        Some(&READY) => Ok(()),
        Some(&ABORT) => Err(HandshakeError::Aborted {
            reason: String::from_utf8_lossy(&msg[1..]).into_owned(),
        }),
        tag => Err(HandshakeError::UnexpectedTag {
            tag: tag.copied().unwrap_or(0),
        }),
    }
}

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
