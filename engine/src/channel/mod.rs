//! Channels: typed one-way streams from one publisher to any number of
//! subscribers in other processes, found by name, at ring speed.
//!
//! A [`Publisher<T>`] listens under a name, as a server does; a
//! [`Subscriber<T>`] connects to it by that name. The handshake checks
//! both sides' credentials against their policies, and that both speak of
//! the same `T` (its [`Schema`](isocall_schema::Schema) fingerprint): a
//! subscriber of another type fails at connect with an error naming both
//! types, never with garbage later. Each subscriber gets its own segment,
//! with its own ring from the publisher, its own doorbell and its own watch
//! on the publisher's life (socket, pidfd, lifeline), as a call connection
//! does; nothing one subscriber does to its segment reaches another's.
//!
//! ```text
//! publisher ──ring──> subscriber 1
//!           ──ring──> subscriber 2      each: rkyv body, validated
//!           ──ring──> ...                after a private copy
//! ```
//!
//! [`Publisher::send`] serializes the message (in place, into the ring of
//! a sole subscriber) and publishes it to every subscriber by its
//! [`Backpressure`] policy: wait for room (the default), queue privately
//! and drop the oldest, or disconnect a subscriber that stays full too
//! long. [`Subscriber::recv`] returns a [`Sample`], a guard that derefs to
//! the validated archive. A publisher can keep a history for subscribers
//! that join late and ask for it. Counters per subscriber and per
//! publisher live in shared memory for `isocall inspect` (see [`stats`]).
//!
//! A publisher may also listen on stream addresses beside its name
//! ([`PublisherBuilder::listen`]: `tcp://host:port`, `unix:/path`,
//! `unix-stream:@name`, with TLS and lz4 negotiated as for calls), and a
//! subscriber connects to one with the same [`Subscriber::connect`]: only
//! the address says which transport runs. Over a stream socket each
//! message (and its blobs, copied inline) is framed by the socket
//! transport ([`crate::stream`]) and arrives in the subscriber's own
//! memory; the subscriber's send buffer in the publisher takes the place
//! of its ring, so the backpressure policies, history and the ends
//! (`PeerDied`, `Closed`) keep their meaning. Admission is a server's: a
//! Unix socket's credentials, a TCP peer's IP address and TLS
//! certificate; a TCP address without TLS needs
//! [`Policy::Anyone`](crate::rpc::Policy::Anyone) said explicitly. A
//! stream subscriber's counters live in the publisher's process
//! ([`Publisher::subscriber_stats`]), not in a segment for `isocall
//! inspect`.
//!
//! ```
//! # use std::time::Duration;
//! # use isocall_engine::channel::{Publisher, Subscriber};
//! # use isocall_engine::SocketName;
//! # #[derive(rkyv::Archive, rkyv::Serialize, isocall_schema::Schema)]
//! # #[schema(crate = "isocall_schema")]
//! # struct Tick { seq: u64 }
//! let name = SocketName::Abstract(format!("doc-stream-{}", std::process::id()));
//! let addr = format!("unix-stream:@doc-stream-{}.s", std::process::id());
//! let mut publisher = Publisher::<Tick>::builder(name).listen(addr.as_str()).create().unwrap();
//! let mut subscriber = Subscriber::<Tick>::connect(addr.as_str()).unwrap();
//! publisher.wait_for_subscribers(1, Duration::from_secs(5));
//! publisher.send(&Tick { seq: 3 }).unwrap();
//! assert_eq!(subscriber.recv().unwrap().seq, 3);
//! ```
//!
//! A channel may also be published lossy, to a UDP address, one datagram
//! per message: see [`udp`].
//!
//! When the publisher dies, each subscriber reads what was published to it
//! and then gets [`RecvError::PeerDied`]; when a subscriber dies, the
//! publisher forgets it and goes on with the others.
//!
//! ```
//! use std::time::Duration;
//! use isocall_engine::channel::{Backpressure, Publisher, Subscriber, SubscriberOptions};
//! use isocall_engine::SocketName;
//! # #[derive(rkyv::Archive, rkyv::Serialize, isocall_schema::Schema)]
//! # #[schema(crate = "isocall_schema")]
//! # struct Quote { symbol: String, price: u64 }
//! let name = SocketName::Abstract(format!("doc-quotes-{}", std::process::id()));
//! let mut publisher = Publisher::<Quote>::builder(name.clone())
//!     .backpressure(Backpressure::drop_oldest())
//!     .history(16)
//!     .create()
//!     .unwrap();
//! publisher.send(&Quote { symbol: "ACME".into(), price: 100 }).unwrap();
//!
//! // A late subscriber asks for the last messages sent before it joined.
//! let options = SubscriberOptions::default().history(16).label("ticker");
//! let mut subscriber = Subscriber::<Quote>::connect_with(&name, options).unwrap();
//! publisher.wait_for_subscribers(1, Duration::from_secs(5));
//! publisher.send(&Quote { symbol: "ACME".into(), price: 101 }).unwrap();
//!
//! let first = subscriber.recv().unwrap();
//! assert!(first.is_history());
//! assert_eq!((first.symbol.as_str(), first.price.to_native()), ("ACME", 100));
//! drop(first);
//! assert_eq!(subscriber.recv().unwrap().price, 101);
//! ```

mod accept;
mod builder;
mod conn;
mod error;
pub mod hello;
mod history;
mod kept;
mod loan;
mod outlet;
mod policy;
mod publisher;
mod remote;
mod sample;
pub mod stats;
mod subscriber;
pub mod udp;

pub use accept::{MAX_SUBSCRIBERS, SubscriberInfo};
pub use builder::PublisherBuilder;
pub use error::{
    ChannelTypeMismatch, CloseReason, PublishError, RecvError, SendError, SubscribeError,
};
pub use loan::{BlobLoan, Loan};
pub use policy::{Backpressure, DEFAULT_BACKLOG};
pub use publisher::Publisher;
pub use sample::Sample;
pub use stats::{PublisherStats, SubscriberStats};
pub use subscriber::{Subscriber, SubscriberOptions};

/// The ring frame kind of a channel message (a call connection's one-way
/// MESSAGE): its payload is a [`CallHead`](crate::rpc::wire::CallHead)
/// (the message's sequence number as `id`, flags in `status`), the blob
/// handles, then the rkyv body.
pub const MESSAGE: u16 = crate::rpc::wire::kind::MESSAGE;
/// Flag in a message head's `status`: a history message, sent before the
/// subscriber joined.
pub const FLAG_HISTORY: u32 = 1;
