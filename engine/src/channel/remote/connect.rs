//! The subscriber's end of a stream connection: connecting (with TLS on
//! a TCP address when the endpoint has it), checking who the publisher
//! is, the channel's handshake in frames, and reading messages.
//!
//! Who the publisher is: on a Unix socket its credentials, against the
//! subscriber's `publisher_policy` (a squatter is refused); over TCP its
//! TLS certificate (checked against the client's CAs and the host
//! dialled), and the policy only if it decides by certificates; a plain
//! TCP address is taken as the publisher it names.

use std::time::Duration;

use isocall_blob::{Blob, BlobHandle, Pool};
use isocall_ringbuf::SharedRegion;

use crate::rpc::Endpoint;
use crate::rpc::handshake::{self, READY, REFUSED, STREAM_LZ4};
use crate::rpc::over_stream::{
    NoMessage, abort, check_peer, granted_lz4, handshake_config, open, recv_message, wants_lz4,
};
use crate::rpc::wire::{self, kind};
use crate::rpc::{HandshakeError, TypeSig};
use crate::segment::Side;
use crate::stream::{Address, StreamError, StreamRx, StreamTx, endpoint, reconfigure};
use crate::sys::PeerCred;

use super::super::error::{ChannelTypeMismatch, CloseReason, RecvError, SubscribeError};
use super::super::hello::{self, CHANNEL_VERSION, HELLO, MISMATCH};
use super::super::subscriber::{SubscriberOptions, parse_message};
use super::accept::stream_config;
use super::decode_stream_part;

/// The longest a wait for a message sleeps in one `recv` (see
/// [`StreamRx::block_reads`]).
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// A subscriber's stream connection, handshaken.
pub(crate) struct Linked {
    pub(crate) tx: StreamTx,
    pub(crate) rx: StreamRx,
    pub(crate) pool: Option<std::sync::Arc<Pool<SharedRegion>>>,
    pub(crate) id: u32,
    pub(crate) publisher: PeerCred,
}

/// A stream error while connecting, as a subscribe error.
fn connect_error(e: StreamError, options: &SubscriberOptions) -> SubscribeError {
    match e {
        StreamError::Connect { address, errno } => SubscribeError::Connect {
            socket: address,
            source: std::io::Error::from_raw_os_error(errno),
        },
        StreamError::Timeout => SubscribeError::Timeout(options.handshake_timeout),
        StreamError::PeerDied => SubscribeError::Handshake(HandshakeError::Closed),
        other => SubscribeError::Stream(other),
    }
}

/// Connects to the publisher at `address` and runs the handshake for
/// type `ours`.
pub(crate) fn connect(
    address: &Address,
    to: &Endpoint,
    ours: &TypeSig,
    options: &SubscriberOptions,
) -> Result<Linked, SubscribeError> {
    let deadline = crate::deadline_in(options.handshake_timeout);
    let fail = |e| connect_error(e, options);
    let conn = open(address, to, deadline).map_err(fail)?;
    let cred =
        check_peer(&conn, &options.publisher_policy).map_err(SubscribeError::PublisherRefused)?;
    let lz4 = wants_lz4(&conn, to.compression);
    let (mut tx, mut rx) = endpoint(conn, Side::Client, &handshake_config()).map_err(fail)?;
    let msg = hello::encode_subscribe(ours, options.history, &options.label);
    let flags = if lz4 { STREAM_LZ4 } else { 0u32 };
    // A publisher that refuses may close before it reads these: the
    // refusal is still to be read.
    for m in [&msg[..], &flags.to_le_bytes()[..]] {
        match tx.send(kind::HANDSHAKE, m, Some(deadline)) {
            Ok(()) | Err(StreamError::PeerDied) => {}
            Err(e) => return Err(fail(e)),
        }
    }
    let recv = |rx: &mut StreamRx| {
        recv_message(rx, deadline, None).map_err(|e| match e {
            NoMessage::Timeout => SubscribeError::Timeout(options.handshake_timeout),
            NoMessage::Kind(k) => HandshakeError::UnexpectedTag {
                tag: k.to_le_bytes()[0],
            }
            .into(),
            NoMessage::Stream(e) => fail(e),
            NoMessage::Stopped => HandshakeError::Closed.into(),
        })
    };
    let msg = recv(&mut rx)?;
    let channel = address.to_string();
    match msg.first() {
        Some(&REFUSED) => {
            return Err(SubscribeError::Refused(handshake::decode_refusal(
                &msg[1..],
            )?));
        }
        Some(&MISMATCH) => {
            let theirs = hello::decode_mismatch(&msg[1..])?;
            return Err(SubscribeError::TypeMismatch(Box::new(
                ChannelTypeMismatch {
                    channel,
                    ours: ours.clone(),
                    theirs,
                },
            )));
        }
        Some(&HELLO) => {}
        tag => {
            return Err(HandshakeError::UnexpectedTag {
                tag: tag.copied().unwrap_or(0),
            }
            .into());
        }
    }
    let accept = hello::decode_hello(&msg[1..]).inspect_err(|e| abort(&mut tx, &e.to_string()))?;
    if accept.version != CHANNEL_VERSION {
        abort(&mut tx, "channel protocol version mismatch");
        return Err(SubscribeError::VersionMismatch {
            ours: CHANNEL_VERSION,
            theirs: accept.version,
        });
    }
    if accept.ty != *ours {
        abort(&mut tx, "type mismatch");
        return Err(SubscribeError::TypeMismatch(Box::new(
            ChannelTypeMismatch {
                channel,
                ours: ours.clone(),
                theirs: accept.ty,
            },
        )));
    }
    let part = recv(&mut rx)?;
    let (stream, pool) =
        decode_stream_part(&part).inspect_err(|e| abort(&mut tx, &e.to_string()))?;
    let lz4 = granted_lz4(&stream);
    let max_payload = (accept.max_frame as usize).max(wire::HEAD);
    let config = stream_config(max_payload, pool, lz4, crate::stream::DEFAULT_SEND_BUFFER);
    reconfigure(&mut tx, &mut rx, Side::Client, &config).map_err(fail)?;
    tx.send(kind::HANDSHAKE, &[READY], Some(deadline))
        .map_err(fail)?;
    let _ = rx.block_reads(WAIT_SLICE);
    let pool = rx.pool().cloned();
    tracing::debug!(%address, id = accept.subscriber, lz4 = lz4.is_some(), "subscribed over a stream");
    Ok(Linked {
        tx,
        rx,
        pool,
        id: accept.subscriber,
        publisher: cred.unwrap_or(PeerCred::REMOTE),
    })
}

/// What a stream frame holds for the subscriber: a message's parts, or
/// the end of the subscription.
pub(crate) enum Got<'a> {
    /// A message: its sequence number, whether it is history, its blobs
    /// (accepted from the connection's pool), and its body (copied out
    /// by the caller).
    Message {
        seq: u64,
        history: bool,
        blobs: Vec<Blob<'a, SharedRegion>>,
    },
    /// The publisher closed the subscription, for this reason.
    Closed(CloseReason),
}

/// Reads a received stream frame: a message (its body copied into
/// `inbox`) or the publisher's CLOSE. An error skips the frame.
pub(crate) fn read_frame<'a>(
    frame: crate::stream::StreamFrame<'_>,
    pool: Option<&'a Pool<SharedRegion>>,
    inbox: &mut crate::rpc::body::Inbox,
) -> Result<Got<'a>, RecvError> {
    let kind = frame.kind();
    if kind == wire::kind::CLOSE {
        let code = frame
            .payload()
            .get(..4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        frame.release();
        return Ok(Got::Closed(
            CloseReason::from_code(code).unwrap_or(CloseReason::Other(0)),
        ));
    }
    let (p, seq, history) = match parse_message(kind, frame.payload()) {
        Ok(m) => m,
        Err(e) => {
            frame.release();
            return Err(e);
        }
    };
    let handles: Vec<BlobHandle> = p
        .blobs
        .chunks_exact(wire::HANDLE)
        .filter_map(BlobHandle::from_bytes)
        .collect();
    inbox.fill(p.body);
    frame.release();
    let mut blobs = Vec::with_capacity(handles.len());
    let mut failed = None;
    for h in &handles {
        // Every handle is tried, so that none is left in flight.
        match pool.map(|p| p.accept(h)) {
            Some(Ok(b)) => blobs.push(b),
            Some(Err(e)) => {
                failed.get_or_insert(RecvError::Blob(e));
            }
            None => {
                failed.get_or_insert(RecvError::Blob(isocall_blob::BlobError::NoPool));
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(Got::Message {
        seq,
        history,
        blobs,
    })
}
