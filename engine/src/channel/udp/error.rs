//! The errors of lossy channels: one enum per operation.

use std::io;

use crate::stream::{AddressError, StreamError};

/// Why a lossy publisher or subscriber could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UdpOpenError {
    /// The address does not parse.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The address's host name does not resolve.
    #[error("cannot resolve the address: {0}")]
    Resolve(#[from] StreamError),
    /// A limit is not valid.
    #[error("bad lossy channel limit: {what}")]
    BadLimit {
        /// Which limit, and what it must be.
        what: String,
    },
    /// No socket could be bound (in use, not a local address).
    #[error("cannot bind {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// The OS error (of the last address tried).
        #[source]
        source: io::Error,
    },
    /// The subscriber's counters block could not be made.
    #[error("counters for inspect: {0}")]
    Stats(#[source] io::Error),
}

/// Why a message was not sent. A message that was not sent took no
/// sequence number.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UdpSendError {
    /// The message's datagram would exceed the publisher's limit: it is
    /// refused (isocall never splits a message over datagrams).
    #[error(
        "message too large for one datagram: {size} bytes (a {header}-byte header and the archive) exceed the limit of {limit}"
    )]
    TooLarge {
        /// The datagram's size, header and archive (an archive over
        /// 16 MiB is not measured further: then this is at least that).
        size: usize,
        /// The header's part of it.
        header: usize,
        /// The publisher's limit.
        limit: usize,
    },
    /// The OS refused the datagram (no route, a buffer full).
    #[error("send: {0}")]
    Io(#[from] io::Error),
}

/// Why no message was received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UdpRecvError {
    /// No message before the deadline.
    #[error("no message before the deadline")]
    Timeout,
    /// The OS failed a receive or a wait.
    #[error("receive: {0}")]
    Io(#[from] io::Error),
}
