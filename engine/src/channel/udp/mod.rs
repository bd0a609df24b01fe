//! Lossy channels over UDP, for what may be lost: a [`UdpPublisher<T>`]
//! sends each message as one datagram to `udp://host:port`; a
//! [`UdpSubscriber<T>`] bound to that address receives them as validated
//! archives. Nothing is retransmitted, acknowledged or waited for.
//!
//! ```text
//! UdpPublisher<T> ──datagram: header + rkyv body──> UdpSubscriber<T>
//!                  (may be lost, duplicated, reordered)
//! ```
//!
//! A message whose datagram would exceed the publisher's limit (default
//! [`DEFAULT_MAX_DATAGRAM`], at most [`MAX_DATAGRAM`]) is refused with
//! [`UdpSendError::TooLarge`]; isocall never splits a message. Each
//! datagram's header ([`datagram`]) carries the type's fingerprint and a
//! sequence number: the subscriber drops datagrams of another type
//! (counted foreign) and malformed ones (counted malformed), and counts
//! from the sequence numbers what was lost, reordered and duplicated
//! ([`UdpStats`], see [`WINDOW`] for how). Those counters are mirrored in
//! a small shared block that `isocall inspect` shows (see [`stats`]).
//!
//! Unlike a channel found by name, there is no handshake: a subscriber of
//! another type learns it only from its foreign count, and nothing
//! authenticates the sender.

pub mod datagram;

mod address;
mod error;
mod publisher;
pub mod stats;
mod subscriber;
mod tracker;

pub use address::UdpAddress;
pub use datagram::{DEFAULT_MAX_DATAGRAM, MAX_DATAGRAM};
pub use error::{UdpOpenError, UdpRecvError, UdpSendError};
pub use publisher::{UdpPublisher, UdpPublisherBuilder};
pub use stats::{UdpStats, UdpSubscriberInfo};
pub use subscriber::{UdpSample, UdpSubscriber, UdpSubscriberOptions};
pub use tracker::WINDOW;
