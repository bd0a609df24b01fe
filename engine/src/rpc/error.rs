//! The errors of connections and calls: one enum per operation, each
//! variant naming what went wrong in fields, not in prose.

use std::io;
use std::time::Duration;

use isocall_blob::BlobError;

use super::body::{EncodeError, ValidationError};
use super::handshake::HandshakeError;
use super::method::Signature;
use super::policy::PolicyRefusal;
use super::wire::{CloseReason, FrameError};
use crate::endpoint::TransportError;
use crate::segment::SegmentError;

/// Why a server refused a connection: what the client learns from the
/// refusal message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The server's policy refused this process's credentials.
    #[error("the server's policy refused this process: {0}")]
    Policy(PolicyRefusal),
    /// The server speaks another protocol version.
    #[error("protocol version mismatch: the server speaks {server}, this client {client}")]
    Version {
        /// The server's version.
        server: u32,
        /// The version the client said it speaks.
        client: u32,
    },
    /// The server holds as many connections as it allows.
    #[error("the server holds its limit of {limit} connections")]
    TooManyConnections {
        /// The limit.
        limit: u32,
    },
    /// The server holds as many connections for this user as it allows.
    #[error("the server holds its limit of {limit} connections for uid {uid}")]
    TooManyForUid {
        /// This process's uid.
        uid: u32,
        /// The limit.
        limit: u32,
    },
    /// The server holds as many connections from this client's address
    /// (over TCP) as it allows.
    #[error("the server holds its limit of {limit} connections from this address")]
    TooManyForAddress {
        /// The limit.
        limit: u32,
    },
    /// Too many handshakes are under way (in all or for this user); try
    /// again.
    #[error("the server has {limit} handshakes under way already; try again")]
    Busy {
        /// The limit that was reached.
        limit: u32,
    },
    /// The server is stopping.
    #[error("the server is stopping")]
    Stopping,
    /// The server could not make the connection's resources (memory,
    /// descriptors); the OS error number.
    #[error("the server could not make the connection: {}", io::Error::from_raw_os_error(*errno))]
    Resources {
        /// The OS error number.
        errno: i32,
    },
    /// A refusal code this build does not know.
    #[error("the server refused the connection (code {code})")]
    Other {
        /// The code.
        code: u32,
    },
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The socket could not be reached (no server, permission).
    #[error("cannot connect to {socket}: {source}")]
    Connect {
        /// The socket.
        socket: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The server refused the connection.
    #[error("the server refused the connection: {0}")]
    Refused(Refusal),
    /// This client's policy refused the server's credentials (a squatter on
    /// the name, or the wrong server).
    #[error("the server's credentials are refused: {0}")]
    ServerRefused(PolicyRefusal),
    /// Client and server speak different protocol versions.
    #[error("protocol version mismatch: this client speaks {ours}, the server {theirs}")]
    VersionMismatch {
        /// This client's version.
        ours: u32,
        /// The server's.
        theirs: u32,
    },
    /// The server did not finish the handshake in time.
    #[error("the server did not answer the handshake within {0:?}")]
    Timeout(Duration),
    /// The server's hello is malformed.
    #[error("bad handshake from the server: {0}")]
    Handshake(#[from] HandshakeError),
    /// The segment the server sent is refused (seals, magic, layout).
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// An OS error during the handshake.
    #[error("handshake: {0}")]
    Io(#[from] io::Error),
    /// The endpoint is not one (a string that does not parse).
    #[error(transparent)]
    Address(#[from] crate::stream::AddressError),
    /// The stream connection failed: a TLS handshake (a certificate
    /// refused either way, with the reason), a name that does not
    /// resolve, a peer that broke the stream's framing.
    #[error(transparent)]
    Stream(crate::stream::StreamError),
}

/// An application error: what a handler returns instead of a reply, and
/// what the caller gets as [`CallError::App`]. Like a gRPC status, a code
/// the two sides agree on and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("application error {code}: {message}")]
pub struct AppError {
    /// The application's code.
    pub code: u32,
    /// What went wrong, for people.
    pub message: String,
}

impl AppError {
    /// An error with `code` and `message`.
    pub fn new(code: u32, message: impl Into<String>) -> AppError {
        AppError {
            code,
            message: message.into(),
        }
    }

    /// An error with code 0 and `message`.
    pub fn msg(message: impl Into<String>) -> AppError {
        AppError::new(0, message)
    }
}

/// The two sides disagree on a method: its kind or its types.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "method {method:?}: this side has {ours}, the server has {theirs}; rebuild one side with the other's types"
)]
pub struct TypeMismatch {
    /// The method.
    pub method: String,
    /// What this side declared.
    pub ours: Signature,
    /// What the server registered.
    pub theirs: Signature,
}

/// Why a reply could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The reply frame is malformed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The reply body is not a valid archive of the reply type.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The status word is not a status.
    #[error("unknown reply status {status}")]
    UnknownStatus {
        /// The word.
        status: u32,
    },
    /// A frame of a kind a server never sends to a client.
    #[error("unexpected frame kind {kind} from the server")]
    UnexpectedKind {
        /// The kind.
        kind: u16,
    },
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The server died or its connection hung up.
    #[error("the server died or closed the connection")]
    PeerDied,
    /// The server closed the connection, saying why.
    #[error("the server closed the connection: {0}")]
    Closed(CloseReason),
    /// No reply before the deadline (the call may still run).
    #[error("no reply before the deadline")]
    Timeout,
    /// The server has no method of that name.
    #[error("the server has no method {name:?}")]
    NoSuchMethod {
        /// The name asked for.
        name: String,
    },
    /// The two sides declare the method with different types or kinds.
    #[error(transparent)]
    TypeMismatch(Box<TypeMismatch>),
    /// A method resolved on another client was used on this one.
    #[error("method {method:?} was resolved on another client")]
    ForeignMethod {
        /// The method.
        method: &'static str,
    },
    /// The server answered that it does not know the method id.
    #[error("the server does not know method id {id}")]
    UnknownMethod {
        /// The id sent.
        id: u32,
    },
    /// The handler returned an application error.
    #[error(transparent)]
    App(AppError),
    /// The handler panicked (the server keeps serving).
    #[error("the handler of {method:?} panicked: {message}")]
    HandlerPanicked {
        /// The method.
        method: String,
        /// The panic's message.
        message: String,
    },
    /// The server found the request invalid: not a valid archive of the
    /// type it expects, or bad blobs.
    #[error("the server refused the request to {method:?} (it expects {expected}): {detail}")]
    BadRequest {
        /// The method.
        method: String,
        /// The request type the server registered.
        expected: String,
        /// The server's account of what is wrong.
        detail: String,
    },
    /// The request does not fit a frame.
    #[error("request too large: {0}")]
    RequestTooLarge(#[from] EncodeError),
    /// The reply did not fit the server's frame limit.
    #[error("the reply of {method:?} did not fit the frame limit: {detail}")]
    ReplyTooLarge {
        /// The method.
        method: String,
        /// The server's account.
        detail: String,
    },
    /// More blobs than a call carries.
    #[error("{count} blobs in one call (at most {max})")]
    TooManyBlobs {
        /// Blobs given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// As many calls are in flight as the client allows; wait for some.
    #[error("{limit} calls in flight, the client's limit")]
    TooManyInFlight {
        /// The limit.
        limit: usize,
    },
    /// The reply is malformed.
    #[error("bad reply from the server: {0}")]
    BadReply(#[from] ReplyError),
    /// A blob could not be handled.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The ring failed (corrupt counters or frame).
    #[error(transparent)]
    Transport(TransportError),
    /// The OS refused memory or a descriptor.
    #[error("os: {0}")]
    Os(#[from] io::Error),
}

impl From<TransportError> for CallError {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::PeerDied => CallError::PeerDied,
            TransportError::Timeout => CallError::Timeout,
            other => CallError::Transport(other),
        }
    }
}

impl From<TypeMismatch> for CallError {
    fn from(e: TypeMismatch) -> Self {
        CallError::TypeMismatch(Box::new(e))
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The socket could not be bound (e.g. a live server holds it).
    #[error("cannot listen on {socket}: {source}")]
    Listen {
        /// The socket.
        socket: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A method name was registered twice.
    #[error("method {name:?} registered twice")]
    DuplicateMethod {
        /// The name.
        name: String,
    },
    /// A method name longer than the handshake carries.
    #[error("method name of {len} bytes (at most {max})")]
    NameTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More methods than the handshake carries.
    #[error("{count} methods (at most {max})")]
    TooManyMethods {
        /// Methods registered.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The segment layout is not valid.
    #[error("bad segment layout: {0}")]
    Layout(#[from] SegmentError),
    /// A limit is not valid (zero where at least one is needed).
    #[error("bad server limit: {what} must be at least 1")]
    BadLimit {
        /// Which limit.
        what: &'static str,
    },
    /// The server was given no source of connections.
    #[error("the server has no source of connections")]
    NoSource,
    /// The handoff socket is not a Unix seqpacket socket.
    #[error("the handoff descriptor is not a Unix seqpacket socket")]
    BadHandoff,
    /// The OS refused a thread or an eventfd.
    #[error("server: {0}")]
    Io(#[from] io::Error),
    /// An address to listen on is not one.
    #[error(transparent)]
    Address(#[from] crate::stream::AddressError),
    /// A stream address could not be listened on.
    #[error(transparent)]
    Stream(crate::stream::StreamError),
    /// A TCP address with a policy that lets no TCP peer in: without TLS
    /// only [`Policy::Anyone`](crate::rpc::Policy::Anyone), said
    /// explicitly, admits peers over TCP (anyone who reaches the port
    /// could call); with TLS, `Anyone` or `Certificate`.
    #[error(
        "refusing to listen on {address}: {}",
        if *tls {
            "the policy admits no TCP peer (they have no credentials): allow them by certificate (Policy::Certificate) or say Policy::Anyone"
        } else {
            "without TLS anyone who reaches the port could call; configure TLS, or say Policy::Anyone explicitly"
        }
    )]
    TcpPolicy {
        /// The TCP address.
        address: String,
        /// Whether the server has TLS.
        tls: bool,
    },
}
