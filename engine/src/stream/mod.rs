//! The socket transport: the frames of a connection over a stream socket
//! (TCP, Unix, either under TLS), for a peer on another host or one
//! without shared memory.
//!
//! It has the frame-level interface of the ring endpoint
//! ([`raw::endpoint`](crate::raw::endpoint)): a [`StreamTx`] reserves
//! grants, commits them and publishes; a [`StreamRx`] hands out frames
//! whose payload is 16-byte aligned and releases them. The call layer runs
//! on it (see [`Endpoint`](crate::rpc::Endpoint)): its hello travels in
//! frames of kind [`HANDSHAKE`](crate::raw::wire::kind::HANDSHAKE) and
//! negotiates compression and the pool; this module is the transport
//! alone, for programs that move frames themselves.
//!
//! # The wire
//!
//! Each frame is a LEB128 varint length (1 to 5 bytes), then the ring's
//! 8-byte header (`len: u32, kind: u16, flags: u16`), then the payload,
//! then the blobs the frame names, inline (see [`codec`] for every byte).
//! The receiver checks the length against the connection's frame limit as
//! soon as the varint is read, before it waits for or allocates the
//! frame; a malformed, truncated or oversized frame closes the connection
//! with a typed [`StreamError`].
//!
//! Writes are batched: frames committed between two publishes go out in
//! one `send`. Reads are buffered. Neither ever blocks past the caller's
//! deadline: what the socket does not take stays buffered, and goes with
//! the next publish or while either half waits.
//!
//! # Blobs
//!
//! A call frame (`REQUEST`, `RESPONSE`, `MESSAGE`) names blobs by handle,
//! as on shared memory, and the call layer uses the same blob API: it
//! allocates from [`StreamTx::pool`], fills, `send`s the blob and puts the
//! handle in the frame; the receiving side `accept`s the handles of the
//! frame it got. Over the socket each side has its own pool, a private
//! mapping (see [`LargeBlobs`] for large blobs):
//!
//! - on commit, the sender takes each pool blob the frame names back from
//!   its pool (it is in flight to the peer, as `send` left it), copies its
//!   bytes inline after the payload and frees it;
//! - the receiver allocates a blob of the same length from its own pool
//!   for each, fills it, sends it to its own side (in flight to it, as if
//!   the peer had sent it), and rewrites the frame's handle to name it.
//!
//! So the receiver's handles differ from the sender's: a blob sent back
//! (the in/out buffer) arrives as a new blob with the answer's bytes, not
//! as the sender's slot; and the sender's blob is gone once committed. A
//! large blob keeps its handle (its id), and its bytes land in the
//! receiver's entry of that id.
//!
//! # Compression and TLS
//!
//! With [`Lz4`] negotiated, a payload or inline blob of at least the
//! threshold is compressed when that saves an eighth (a flag in the
//! header, a compressed length per blob); off on Unix sockets by default,
//! on for TCP ([`StreamConfig::for_connection`]). With the feature `tls`,
//! `TlsClient` and `TlsServer` (rustls, from PEM files) run a
//! handshake on the [`Connection`] before it becomes an endpoint, and each
//! side knows the other's certificate identity.
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use isocall_engine::raw::Side;
//! use isocall_engine::stream::{Connection, StreamConfig, endpoint};
//!
//! let (a, b) = UnixStream::pair().unwrap();
//! let config = StreamConfig::default();
//! let (mut tx, _rx) = endpoint(Connection::from_unix(a).unwrap(), Side::Client, &config).unwrap();
//! let (_tx, mut rx) = endpoint(Connection::from_unix(b).unwrap(), Side::Server, &config).unwrap();
//!
//! let mut g = tx.reserve(7, 5, None).unwrap();   // reserve
//! g.bytes_mut().copy_from_slice(b"hello");      // write in place
//! g.commit_all().unwrap();                      // commit
//! tx.publish().unwrap();                        // publish: one send
//!
//! let f = rx.recv(None).unwrap();               // receive
//! assert_eq!((f.kind(), f.payload()), (7, &b"hello"[..]));
//! assert_eq!(f.payload().as_ptr() as usize % 16, 0);
//! f.release();                                  // release
//! ```

mod address;
pub(crate) mod blobs;
pub mod codec;
mod conn;
mod error;
#[cfg(feature = "tls")]
mod identity;
mod net;
mod rx;
#[cfg(feature = "tls")]
mod tls;
mod tx;
mod wire;

use std::sync::Arc;

use isocall_blob::PoolConfig;

pub use address::{Address, AddressError, MAX_UNIX_NAME};
pub use blobs::LargeBlobs;
pub use codec::{CodecError, Lz4, Part};
pub use conn::{Connection, PeerAddr, SocketKind};
pub use error::{AdoptProblem, StreamError};
#[cfg(feature = "tls")]
pub use net::connect_tls;
pub use net::{Incoming, Listener, Security, connect};
pub use rx::{RxStats, StreamFrame, StreamRx};
#[cfg(feature = "tls")]
pub use tls::{CertMatch, CertPolicy, PeerIdentity, TlsClient, TlsError, TlsServer, Untrusted};
pub(crate) use tx::Flusher;
pub use tx::{DEFER_LIMIT, StreamGrant, StreamTx, TxStats};

use crate::rpc::large::LargeLimits;
use crate::segment::Side;

/// The default frame limit: bytes after a frame's varint, its blobs
/// included (16 blobs of 4 MiB, the largest default pool class, and a
/// payload of 1 MiB fit).
pub const DEFAULT_MAX_FRAME: usize = 80 << 20;
/// The default largest payload.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;
/// The default send buffer: bytes published and not yet taken by the
/// socket, past which a sender waits (or gets `Full`).
pub const DEFAULT_SEND_BUFFER: usize = 4 << 20;

/// How a stream endpoint is built: the connection's limits, compression
/// and pool (the hello will negotiate them; for now the caller says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamConfig {
    /// Most bytes after a frame's varint (header, payload and inline
    /// blobs, as sent), both ways; at most `u32::MAX`.
    pub max_frame: usize,
    /// Largest payload (decoded) a frame may carry, both ways.
    pub max_payload: usize,
    /// Bytes published and not yet sent past which a sender waits.
    pub send_buffer: usize,
    /// lz4, if negotiated: what is compressed, and that compressed frames
    /// are accepted. `None`: neither.
    pub lz4: Option<Lz4>,
    /// The classes of the connection's private blob pool (`None`: no
    /// pool; frames naming pool blobs are refused). Size it like the
    /// peer's: a blob the peer sends must fit one of its classes.
    pub pool: Option<PoolConfig>,
    /// Caps on the large blobs the peer may send.
    pub large: LargeLimits,
}

impl Default for StreamConfig {
    /// The default limits, no compression, no pool.
    fn default() -> StreamConfig {
        StreamConfig {
            max_frame: DEFAULT_MAX_FRAME,
            max_payload: DEFAULT_MAX_PAYLOAD,
            send_buffer: DEFAULT_SEND_BUFFER,
            lz4: None,
            pool: None,
            large: LargeLimits {
                count: 256,
                bytes: 4 << 30,
            },
        }
    }
}

impl StreamConfig {
    /// The defaults for `conn`: lz4 on TCP, off on Unix sockets.
    pub fn for_connection(conn: &Connection) -> StreamConfig {
        StreamConfig {
            lz4: (conn.kind() == SocketKind::Tcp).then(Lz4::default),
            ..StreamConfig::default()
        }
    }

    /// Sets the frame limit.
    #[must_use]
    pub fn max_frame(mut self, bytes: usize) -> StreamConfig {
        self.max_frame = bytes;
        self
    }

    /// Sets the largest payload.
    #[must_use]
    pub fn max_payload(mut self, bytes: usize) -> StreamConfig {
        self.max_payload = bytes;
        self
    }

    /// Sets the send buffer.
    #[must_use]
    pub fn send_buffer(mut self, bytes: usize) -> StreamConfig {
        self.send_buffer = bytes;
        self
    }

    /// Sets compression.
    #[must_use]
    pub fn lz4(mut self, lz4: Option<Lz4>) -> StreamConfig {
        self.lz4 = lz4;
        self
    }

    /// Sets the blob pool's classes.
    #[must_use]
    pub fn pool(mut self, pool: Option<PoolConfig>) -> StreamConfig {
        self.pool = pool;
        self
    }

    /// Sets the caps on large blobs received.
    #[must_use]
    pub fn large(mut self, limits: LargeLimits) -> StreamConfig {
        self.large = limits;
        self
    }
}

/// Builds this side's sender and receiver on a connected stream: the
/// stream-socket counterpart of [`raw::endpoint`](crate::raw::endpoint).
/// `side` names this end (its view of the private pool).
///
/// # Errors
///
/// [`StreamError::Limits`] for a frame limit past `u32::MAX` or too small
/// for the largest payload; [`StreamError::Blob`] or [`StreamError::Os`]
/// if the pool cannot be made.
pub fn endpoint(
    conn: Connection,
    side: Side,
    config: &StreamConfig,
) -> Result<(StreamTx, StreamRx), StreamError> {
    let (pool, large) = config_parts(side, config)?;
    let wire = Arc::new(wire::Wire::new(conn));
    let tx = StreamTx::new(
        wire.clone(),
        send_limits(config),
        config.lz4,
        pool.clone(),
        large.clone(),
    );
    let rx = StreamRx::new(wire, recv_limits(config), pool, large);
    Ok((tx, rx))
}

/// The pool and large blobs `config` asks for, once its limits are
/// checked.
fn config_parts(
    side: Side,
    config: &StreamConfig,
) -> Result<(Option<Arc<blobs::LocalPool>>, Arc<LargeBlobs>), StreamError> {
    if config.max_frame > u32::MAX as usize || config.max_frame < config.max_payload + codec::HEADER
    {
        return Err(StreamError::Limits {
            max_frame: config.max_frame,
            max_payload: config.max_payload,
        });
    }
    let pool = match &config.pool {
        Some(c) => Some(Arc::new(blobs::LocalPool::new(c, side)?)),
        None => None,
    };
    Ok((pool, Arc::new(LargeBlobs::new(config.large))))
}

/// What `config` limits the sending half to.
fn send_limits(config: &StreamConfig) -> tx::SendLimits {
    tx::SendLimits {
        max_payload: config.max_payload,
        max_frame: config.max_frame,
        send_buffer: config.send_buffer,
    }
}

/// What `config` limits the receiving half to.
fn recv_limits(config: &StreamConfig) -> codec::Limits {
    codec::Limits {
        max_frame: config.max_frame,
        max_payload: config.max_payload,
        lz4: config.lz4.is_some(),
    }
}

/// Gives the endpoint `tx`, `rx` (two halves of one [`endpoint`]) the
/// configuration a handshake negotiated: limits, compression, a new pool
/// and new large blobs. Call it between frames, with no grant open and
/// no frame handed out: frames committed before go out as they were
/// encoded, frames decoded after (including bytes already read) follow
/// the new limits.
///
/// # Errors
///
/// As [`endpoint`]; the halves keep their old configuration.
pub(crate) fn reconfigure(
    tx: &mut StreamTx,
    rx: &mut StreamRx,
    side: Side,
    config: &StreamConfig,
) -> Result<(), StreamError> {
    let (pool, large) = config_parts(side, config)?;
    tx.reconfigure(send_limits(config), config.lz4, pool.clone(), large.clone());
    rx.reconfigure(recv_limits(config), pool, large);
    Ok(())
}
