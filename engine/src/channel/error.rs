//! The errors of channels: one enum per operation, each variant naming
//! what went wrong in fields.

use std::io;
use std::time::Duration;

use isocall_blob::BlobError;

use crate::endpoint::TransportError;
use crate::rpc::{
    EncodeError, FrameError, HandshakeError, PolicyRefusal, Refusal, TypeSig, ValidationError,
};
use crate::segment::SegmentError;
use crate::stream::{AddressError, StreamError};

/// Why a publisher closed a subscriber's connection: what the subscriber
/// learns once it has read every message the publisher had published to
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The publisher was dropped (or closed the channel) cleanly.
    PublisherClosed,
    /// The subscriber's ring stayed full longer than its backpressure
    /// policy ([`Backpressure::Disconnect`](super::Backpressure::Disconnect))
    /// allows, or its backlog overflowed.
    Lagging,
    /// The publisher found the subscriber's side of the segment corrupt.
    ProtocolViolation,
    /// A code this build does not know.
    Other(u32),
}

impl CloseReason {
    /// The code in the segment (never 0: 0 is "open").
    pub fn code(self) -> u32 {
        match self {
            CloseReason::PublisherClosed => 1,
            CloseReason::Lagging => 2,
            CloseReason::ProtocolViolation => 3,
            CloseReason::Other(c) => c,
        }
    }

    /// The reason a code names; `None` for 0 (open).
    pub fn from_code(c: u32) -> Option<CloseReason> {
        Some(match c {
            0 => return None,
            1 => CloseReason::PublisherClosed,
            2 => CloseReason::Lagging,
            3 => CloseReason::ProtocolViolation,
            c => CloseReason::Other(c),
        })
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::PublisherClosed => f.write_str("the publisher closed the channel"),
            CloseReason::Lagging => {
                f.write_str("the subscriber fell behind longer than its publisher allows")
            }
            CloseReason::ProtocolViolation => {
                f.write_str("the publisher found the subscriber's segment corrupt")
            }
            CloseReason::Other(c) => write!(f, "closed for reason {c}"),
        }
    }
}

/// A subscriber and its publisher disagree on the message type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "channel {channel}: this subscriber reads {ours}, the publisher sends {theirs}; rebuild one side with the other's type"
)]
pub struct ChannelTypeMismatch {
    /// The channel (its socket name).
    pub channel: String,
    /// The type this subscriber reads.
    pub ours: TypeSig,
    /// The type the publisher sends.
    pub theirs: TypeSig,
}

/// Why a subscriber could not connect to a publisher.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The socket could not be reached (no publisher, permission).
    #[error("cannot connect to {socket}: {source}")]
    Connect {
        /// The socket.
        socket: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The publisher refused the subscriber (policy, caps, version).
    #[error("the publisher refused the subscriber: {0}")]
    Refused(Refusal),
    /// This subscriber's policy refused the publisher's credentials (a
    /// squatter on the name).
    #[error("the publisher's credentials are refused: {0}")]
    PublisherRefused(PolicyRefusal),
    /// The two sides speak different channel protocol versions.
    #[error("channel protocol mismatch: this subscriber speaks {ours}, the publisher {theirs}")]
    VersionMismatch {
        /// This subscriber's version.
        ours: u32,
        /// The publisher's.
        theirs: u32,
    },
    /// The publisher sends another type.
    #[error(transparent)]
    TypeMismatch(Box<ChannelTypeMismatch>),
    /// The publisher did not finish the handshake in time.
    #[error("the publisher did not answer the handshake within {0:?}")]
    Timeout(Duration),
    /// The publisher's hello is malformed, or the peer is not a channel's
    /// publisher.
    #[error("bad handshake from the publisher: {0}")]
    Handshake(#[from] HandshakeError),
    /// The segment the publisher sent is refused (seals, magic, layout).
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// The blob pool the publisher sent is refused.
    #[error("the publisher's blob pool is refused: {0}")]
    Blobs(#[from] BlobError),
    /// An OS error during the handshake.
    #[error("handshake: {0}")]
    Io(#[from] io::Error),
    /// The address does not parse (a string given to
    /// [`Subscriber::connect`](super::Subscriber::connect)).
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The stream connection to a publisher's address failed (its TLS
    /// handshake included: an untrusted certificate is refused here), or
    /// its handshake frames were malformed.
    #[error("stream: {0}")]
    Stream(#[from] StreamError),
}

/// Why a publisher could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The socket could not be bound (e.g. a live publisher or server
    /// holds the name).
    #[error("cannot listen on {socket}: {source}")]
    Listen {
        /// The socket.
        socket: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A limit is not valid.
    #[error("bad channel limit: {what}")]
    BadLimit {
        /// Which limit, and what it must be.
        what: &'static str,
    },
    /// The ring capacity is not valid.
    #[error("bad segment layout: {0}")]
    Layout(#[from] SegmentError),
    /// The blob pool's configuration is not valid, or its memory could not
    /// be had.
    #[error("blob pool: {0}")]
    Blobs(#[from] BlobError),
    /// The OS refused a thread, an eventfd or memory.
    #[error("publisher: {0}")]
    Io(#[from] io::Error),
    /// A stream address does not parse.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// A stream address could not be listened on.
    #[error("stream listener: {0}")]
    Stream(#[from] StreamError),
    /// A TCP address with a policy that cannot admit a TCP subscriber: a
    /// TCP peer has no credentials, so without TLS only
    /// [`Policy::Anyone`](crate::rpc::Policy::Anyone), said explicitly,
    /// lets one in (with TLS, a certificate policy).
    #[error(
        "refusing to publish on {address}: a TCP subscriber has no credentials, so the policy must be Anyone{}",
        if *tls { " or decide by certificate" } else { " (or use TLS)" }
    )]
    TcpPolicy {
        /// The TCP address.
        address: String,
        /// Whether the publisher has TLS.
        tls: bool,
    },
}

/// Why a message was not sent. A failed send delivered the message to no
/// subscriber (see [`Publisher::send`](super::Publisher::send)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// A subscriber whose policy is [`Block`](super::Backpressure::Block)
    /// had no room for the message before the deadline.
    #[error("subscriber {subscriber} had no room before the deadline")]
    Timeout {
        /// The subscriber waited for (its id).
        subscriber: u32,
    },
    /// The message does not fit a frame.
    #[error("message too large: {0}")]
    TooLarge(#[from] EncodeError),
    /// More blobs than a message carries.
    #[error("{count} blobs in one message (at most {max})")]
    TooManyBlobs {
        /// Blobs given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The channel has no blob pool (see
    /// [`PublisherBuilder::blobs`](super::PublisherBuilder::blobs)).
    #[error("the channel has no blob pool")]
    NoPool,
    /// A blob could not be allocated or shared.
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// Why no message was received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The publisher died, after every message it published to this
    /// subscriber was read.
    #[error("the publisher died")]
    PeerDied,
    /// The publisher closed this subscriber's connection, after every
    /// message it published was read.
    #[error("the channel is closed: {0}")]
    Closed(CloseReason),
    /// No message before the deadline.
    #[error("no message before the deadline")]
    Timeout,
    /// The ring is corrupt (a hostile or broken publisher); the
    /// subscription is unusable.
    #[error(transparent)]
    Transport(TransportError),
    /// A frame is malformed; it was skipped.
    #[error("bad frame from the publisher: {0}")]
    BadFrame(#[from] FrameError),
    /// A frame of a kind a publisher does not send; it was skipped.
    #[error("unexpected frame kind {kind} from the publisher")]
    UnexpectedKind {
        /// The kind.
        kind: u16,
    },
    /// The message is not a valid archive of the channel's type; it was
    /// skipped.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A blob the message names could not be accepted (a stale or forged
    /// handle, or no pool); the message was skipped.
    #[error("a blob of the message: {0}")]
    Blob(#[from] BlobError),
    /// The stream connection to the publisher failed: a malformed,
    /// truncated or oversized frame, a TLS error, an OS error. The
    /// subscription is over (the messages read before it were whole).
    #[error("stream: {0}")]
    Stream(StreamError),
}

impl From<StreamError> for RecvError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::PeerDied => RecvError::PeerDied,
            StreamError::Timeout => RecvError::Timeout,
            other => RecvError::Stream(other),
        }
    }
}

impl From<TransportError> for RecvError {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::PeerDied => RecvError::PeerDied,
            TransportError::Timeout => RecvError::Timeout,
            other => RecvError::Transport(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_round_trip_and_zero_is_open() {
        for r in [
            CloseReason::PublisherClosed,
            CloseReason::Lagging,
            CloseReason::ProtocolViolation,
            CloseReason::Other(77),
        ] {
            assert_eq!(CloseReason::from_code(r.code()), Some(r));
        }
        assert_eq!(CloseReason::from_code(0), None);
    }
}
