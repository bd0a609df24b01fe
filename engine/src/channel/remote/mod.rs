//! Channels over a stream socket: a publisher that also listens on
//! stream addresses (`tcp://host:port`, `unix:/path`,
//! `unix-stream:@name`), and a subscriber that connects to one, with the
//! same [`Publisher`](super::Publisher) and [`Subscriber`](super::Subscriber)
//! API as on shared memory.
//!
//! Everything below the channel is the socket transport's
//! ([`crate::stream`]): LEB128 framing, the frame limit, TLS, lz4, and
//! blobs inline. A message is the same frame as in a ring (kind
//! [`MESSAGE`](super::MESSAGE): a call head, blob handles, the rkyv
//! body); its blobs are copied into the connection's private pool on the
//! publisher's side, travel inline, and arrive as blobs of the
//! subscriber's own pool, so a [`Sample`](super::Sample) reads them the
//! same way.
//!
//! The handshake is the channel's (see [`hello`](super::hello)), each
//! message in a frame of kind [`HANDSHAKE`](crate::rpc::wire::kind::HANDSHAKE),
//! plus one frame each way for the stream's own part:
//!
//! ```text
//! subscriber                                publisher
//!   SubscriberHello                    ->
//!   stream flags (u32: lz4 wanted)     ->
//!                                      <-   Refused | Mismatch | Hello
//!                                      <-   StreamServerHello + pool classes
//!   Ready | Abort                      ->
//! ```
//!
//! Per subscriber the publisher keeps the connection's send buffer (its
//! [`StreamConfig::send_buffer`](crate::stream::StreamConfig), the
//! channel's ring capacity) in place of a ring: a subscriber whose socket
//! and buffer are full is "full", and its backpressure policy decides as
//! on shared memory; a backlog is a private queue of messages. Sends
//! never block on a socket without the send's deadline. When the
//! publisher closes a subscriber it says why in a frame of kind
//! [`CLOSE`](crate::rpc::wire::kind::CLOSE) (the reason's code), after
//! every message it sent; a subscriber that finds the socket's end with
//! no such frame reports the publisher dead.

pub(crate) mod accept;
pub(crate) mod connect;
pub(crate) mod outlet;
pub(crate) mod pump;

use std::sync::Arc;

use isocall_blob::PoolConfig;

use crate::rpc::HandshakeError;
use crate::rpc::handshake::{StreamServerHello, stream_classes, stream_pool};

/// One message as the publisher queues it for stream subscribers: the
/// frame's payload (head, handles to be rewritten, body) and the bytes
/// of its blobs. Shared by every subscriber that queues it.
#[derive(Debug)]
pub(crate) struct Msg {
    pub(crate) payload: Vec<u8>,
    pub(crate) blobs: Vec<Vec<u8>>,
}

/// A queued message.
pub(crate) type Queued = Arc<Msg>;

/// Encodes the publisher's stream part: compression and the pool's
/// classes.
pub(crate) fn encode_stream_part(stream: &StreamServerHello, pool: Option<&PoolConfig>) -> Vec<u8> {
    let classes = pool.map_or(&[][..], |p| p.classes());
    let head = StreamServerHello {
        nclasses: classes.len() as u32,
        ..*stream
    };
    let mut m = bytemuck::bytes_of(&head).to_vec();
    for c in classes {
        m.extend_from_slice(&(c.slot_size as u32).to_le_bytes());
        m.extend_from_slice(&(c.count as u32).to_le_bytes());
    }
    m
}

/// Decodes the publisher's stream part: every length checked, the pool at
/// most [`MAX_STREAM_POOL`](crate::rpc::handshake::MAX_STREAM_POOL) bytes.
pub(crate) fn decode_stream_part(
    msg: &[u8],
) -> Result<(StreamServerHello, Option<PoolConfig>), HandshakeError> {
    const S: usize = std::mem::size_of::<StreamServerHello>();
    let truncated = HandshakeError::Truncated {
        what: "stream hello",
    };
    let head: StreamServerHello = bytemuck::pod_read_unaligned(msg.get(..S).ok_or(truncated)?);
    let n = stream_classes(&head)?;
    let body = msg.get(S..S + n * 8).ok_or(HandshakeError::Truncated {
        what: "pool classes",
    })?;
    let mut pool = PoolConfig::new();
    for c in body.chunks_exact(8) {
        let size = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let count = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        pool = pool.class(size as usize, count as usize);
    }
    Ok((head, stream_pool(pool)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream side (connections, the pump's handle) keeps both ends
    /// movable to another thread, as they were.
    #[test]
    fn publishers_and_subscribers_stay_send() {
        fn send<T: Send>() {}
        #[derive(rkyv::Archive, rkyv::Serialize, isocall_schema::Schema)]
        #[schema(crate = "isocall_schema")]
        struct X {
            a: u64,
        }
        send::<super::super::Publisher<X>>();
        send::<super::super::Subscriber<X>>();
    }

    #[test]
    fn the_stream_part_round_trips_and_every_prefix_is_refused() {
        let pool = PoolConfig::new().class(256, 8).class(4096, 2);
        let head = StreamServerHello {
            flags: 1,
            lz4_threshold: 512,
            pid: 7,
            ..StreamServerHello::default()
        };
        let m = encode_stream_part(&head, Some(&pool));
        let (h, p) = decode_stream_part(&m).unwrap();
        assert_eq!(
            (h.flags, h.lz4_threshold, h.pid, h.nclasses),
            (1, 512, 7, 2)
        );
        assert_eq!(p.unwrap().classes(), pool.classes());
        for n in 0..m.len() {
            assert!(decode_stream_part(&m[..n]).is_err(), "prefix {n}");
        }
        let (_, none) = decode_stream_part(&encode_stream_part(&head, None)).unwrap();
        assert!(none.is_none());
    }
}
