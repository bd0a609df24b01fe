//! What can go wrong on a stream connection.

use std::io;

use isocall_blob::BlobError;

use super::codec::CodecError;

/// What is wrong with a socket handed over to listen on
/// ([`StreamError::Adopt`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdoptProblem {
    /// It is not a stream socket (another kind of socket, or a file).
    #[error("not a stream socket")]
    NotStream,
    /// It does not listen (a connected socket, or one shut down).
    #[error("not a listening socket")]
    NotListening,
    /// The address is TCP and the socket is not.
    #[error("not a TCP socket")]
    NotTcp,
    /// The address is a Unix socket's and the socket is not.
    #[error("not a Unix socket")]
    NotUnix,
    /// The OS refused to look at it or make it non-blocking.
    #[error("{}", os(*errno))]
    Os {
        /// The OS error.
        errno: i32,
    },
}

/// Why a stream connection could not be made, or a frame sent or received.
///
/// Errors marked *fatal* close the connection: the socket is shut down
/// (the peer reads its end) and every later call on either half returns
/// the same error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The peer closed the connection or reset it (fatal). A receiver
    /// reports it once every whole frame sent before has been read.
    #[error("peer died")]
    PeerDied,
    /// The deadline passed first.
    #[error("timed out")]
    Timeout,
    /// The send buffer holds as much as allowed and the socket takes
    /// nothing now; the caller asked not to wait.
    #[error("send buffer full")]
    Full,
    /// A payload this large is over the connection's limit.
    #[error("frame of {len} bytes exceeds the largest payload of {max} bytes")]
    TooLarge {
        /// Requested payload length.
        len: usize,
        /// Largest payload the connection carries.
        max: usize,
    },
    /// The kind is not a user kind (`1..=MAX_USER_KIND`).
    #[error("frame kind {kind:#06x} is reserved")]
    BadKind {
        /// Kind requested.
        kind: u16,
    },
    /// The peer's bytes are not a frame (fatal).
    #[error("malformed frame from the peer: {0}")]
    Frame(CodecError),
    /// A frame to send could not be encoded (the frame is dropped, the
    /// connection goes on).
    #[error("frame cannot be sent: {0}")]
    Encode(CodecError),
    /// The connection ended in the middle of a frame (fatal).
    #[error("the connection ended {have} bytes into a frame{}", need.map_or(String::new(), |n| format!(" of {n} bytes")))]
    Truncated {
        /// Bytes of the frame received.
        have: usize,
        /// Bytes the whole frame takes, if its length was read.
        need: Option<usize>,
    },
    /// A call frame's blobs do not match its head: handles without inline
    /// blobs or the other way round, or an inline blob of another length
    /// than its handle says (fatal when received; when sending, the frame
    /// is dropped).
    #[error(
        "call frame of kind {kind} names {handles} blob handles but carries {inline} inline blobs"
    )]
    BlobMismatch {
        /// The frame's kind.
        kind: u16,
        /// Handles its head names (0 when it has no call head).
        handles: u32,
        /// Inline blobs it carries.
        inline: usize,
    },
    /// An inline blob's length differs from its handle's.
    #[error("inline blob {index} has {inline} bytes, its handle says {handle}")]
    BlobLength {
        /// Its index in the frame.
        index: usize,
        /// Bytes the handle says.
        handle: u32,
        /// Bytes inline.
        inline: usize,
    },
    /// A frame names a pool blob, and the connection has no pool.
    #[error("the frame names a pool blob, and the connection has no blob pool")]
    NoPool,
    /// A pool blob could not be taken back from the local pool to be sent
    /// (the frame is dropped; blobs already taken are in flight again), or
    /// one received could not be allocated (fatal).
    #[error("blob {index}: {source}")]
    Blob {
        /// Its index in the frame.
        index: usize,
        /// Why.
        source: BlobError,
    },
    /// A frame names a large blob this side does not know.
    #[error("large blob {id} is not known on this connection (never shared)")]
    LargeUnknown {
        /// Its id.
        id: u64,
    },
    /// A large blob's handle names more bytes than the blob has.
    #[error("large blob {id} has {have} bytes; the handle says {len}")]
    LargeTooLong {
        /// Its id.
        id: u64,
        /// Bytes named.
        len: u64,
        /// Bytes it has.
        have: usize,
    },
    /// Receiving a new large blob would pass the connection's caps (fatal).
    #[error(
        "large blob {id} of {len} bytes would pass the connection's caps of {count} blobs / {bytes} bytes"
    )]
    LargeCap {
        /// Its id.
        id: u64,
        /// Its length.
        len: u64,
        /// Most large blobs received.
        count: usize,
        /// Most bytes of them.
        bytes: u64,
    },
    /// Memory for a large blob could not be had, or a large blob's memfd
    /// could not be mapped.
    #[error("large blob {id}: {}", os(*errno))]
    LargeMemory {
        /// Its id.
        id: u64,
        /// The OS error.
        errno: i32,
    },
    /// The configuration's limits do not fit together.
    #[error(
        "a frame limit of {max_frame} bytes must be at most u32::MAX and hold a payload of {max_payload} bytes with its header"
    )]
    Limits {
        /// The frame limit asked for.
        max_frame: usize,
        /// The largest payload asked for.
        max_payload: usize,
    },
    /// The name of a TCP address could not be resolved.
    #[error("cannot resolve {host}: {detail}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's words.
        detail: String,
    },
    /// Connecting failed.
    #[error("cannot connect to {address}: {}", os(*errno))]
    Connect {
        /// Where.
        address: String,
        /// The OS error.
        errno: i32,
    },
    /// Listening failed.
    #[error("cannot listen on {address}: {}", os(*errno))]
    Listen {
        /// Where.
        address: String,
        /// The OS error.
        errno: i32,
    },
    /// A listening socket handed over by another process (see
    /// [`Listener::adopt`](super::Listener::adopt)) is not what its
    /// address says.
    #[error("the socket handed over for {address} cannot be listened on: {problem}")]
    Adopt {
        /// The address it was handed over for.
        address: String,
        /// What is wrong with it.
        problem: AdoptProblem,
    },
    /// A plain (non-TLS) TCP listener was asked for without saying that
    /// anyone may connect ([`Security::Anyone`](super::Security::Anyone)).
    #[error(
        "refusing to listen on {address} without TLS: anyone who reaches the port could call; say Security::Anyone to allow it"
    )]
    PlainTcpRefused {
        /// The TCP address.
        address: String,
    },
    /// A socket operation failed (fatal).
    #[error("socket: {}", os(*errno))]
    Os {
        /// The OS error.
        errno: i32,
    },
    /// TLS failed: a certificate refused, the peer's refusal, or the
    /// protocol (fatal).
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
}

fn os(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// The errno of an I/O error (`EIO` for one that carries none).
pub(crate) fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl StreamError {
    /// An OS failure on the socket: a peer that is gone is `PeerDied`.
    pub(crate) fn from_io(e: &io::Error) -> StreamError {
        match e.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof => StreamError::PeerDied,
            io::ErrorKind::TimedOut => StreamError::Timeout,
            _ => StreamError::Os { errno: errno_of(e) },
        }
    }
}
