//! The client's end of a connection over a stream socket: connecting (with
//! TLS on a TCP address when the endpoint has it), checking who the
//! server is, and the handshake in frames.
//!
//! On a Unix socket the server's credentials are checked against the
//! client's `server_policy`, as on shared memory. A TCP server has no
//! credentials: it is identified by TLS (its certificate checked against
//! the client's CAs and the host dialled, then the `TlsClient`'s own
//! policy), and `server_policy` applies only if it decides by
//! certificates; a plain TCP address is taken as the server it names.

use std::time::{Duration, Instant};

use crate::rpc::address::Endpoint;
use crate::rpc::error::{ConnectError, Refusal};
use crate::rpc::handshake::{
    self, ClientHello, HELLO, HandshakeError, READY, REFUSED, STREAM_LZ4, StreamClientHello,
};
use crate::rpc::link::Link;
use crate::rpc::over_stream::{
    NoMessage, abort, check_peer, connection_config, granted_lz4, handshake_config, open,
    recv_message, wants_lz4,
};
use crate::rpc::wire::{self, PROTOCOL_VERSION, kind};
use crate::segment::{SegmentLayout, Side};
use crate::stream::{Address, StreamConfig, StreamError, endpoint, reconfigure};
use crate::sys::PeerCred;

use super::core::Info;
use super::{ClientOptions, wait_quietly};

/// The longest a wait for a reply sleeps in one `recv` (see
/// [`StreamRx::block_reads`](crate::stream::StreamRx::block_reads)):
/// waits with a nearer deadline poll.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// Connects to `address` and runs the handshake, trying again while the
/// server says it is busy, within the handshake timeout.
pub(crate) fn connect(
    address: &Address,
    to: &Endpoint,
    options: &ClientOptions,
) -> Result<(Link, Info), ConnectError> {
    let span = tracing::debug_span!("isocall_connect", %address);
    let _enter = span.enter();
    let deadline = crate::deadline_in(options.handshake_timeout);
    let mut pause = Duration::from_micros(200);
    loop {
        match attempt(address, to, options, deadline) {
            Err(ConnectError::Refused(Refusal::Busy { .. }))
                if Instant::now() + pause < deadline =>
            {
                wait_quietly(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// A stream error while connecting, as a connect error.
fn connect_error(e: StreamError, options: &ClientOptions) -> ConnectError {
    match e {
        StreamError::Connect { address, errno } => ConnectError::Connect {
            socket: address,
            source: std::io::Error::from_raw_os_error(errno),
        },
        StreamError::Timeout => ConnectError::Timeout(options.handshake_timeout),
        StreamError::PeerDied => ConnectError::Handshake(HandshakeError::Closed),
        other => ConnectError::Stream(other),
    }
}

fn attempt(
    address: &Address,
    to: &Endpoint,
    options: &ClientOptions,
    deadline: Instant,
) -> Result<(Link, Info), ConnectError> {
    let fail = |e| connect_error(e, options);
    let conn = open(address, to, deadline).map_err(fail)?;
    let cred = check_peer(&conn, &options.server_policy).map_err(ConnectError::ServerRefused)?;
    let lz4 = wants_lz4(&conn, to.compression);
    let (mut tx, mut rx) = endpoint(conn, Side::Client, &handshake_config()).map_err(fail)?;
    let hello = StreamClientHello {
        hello: ClientHello::ours(),
        flags: if lz4 { STREAM_LZ4 } else { 0 },
        _reserved: 0,
        _reserved2: 0,
    };
    // A server that refuses may close before it reads the hello: the hello
    // then finds the socket closed, and the refusal is still to be read.
    match tx.send(kind::HANDSHAKE, bytemuck::bytes_of(&hello), Some(deadline)) {
        Ok(()) | Err(StreamError::PeerDied) => {}
        Err(e) => return Err(fail(e)),
    }
    let msg = recv_message(&mut rx, deadline, None).map_err(|e| match e {
        NoMessage::Timeout => ConnectError::Timeout(options.handshake_timeout),
        NoMessage::Kind(k) => ConnectError::Handshake(HandshakeError::UnexpectedTag {
            tag: k.to_le_bytes()[0],
        }),
        NoMessage::Stream(e) => fail(e),
        NoMessage::Stopped => ConnectError::Handshake(HandshakeError::Closed),
    })?;
    match msg.first() {
        Some(&REFUSED) => {
            return Err(ConnectError::Refused(handshake::decode_refusal(&msg[1..])?));
        }
        Some(&HELLO) => {}
        other => {
            return Err(HandshakeError::UnexpectedTag {
                tag: other.copied().unwrap_or(0),
            }
            .into());
        }
    }
    let (hello, stream, pool) = match handshake::decode_stream_hello(&msg[1..]) {
        Ok(h) => h,
        Err(e) => {
            abort(&mut tx, &e.to_string());
            return Err(e.into());
        }
    };
    if hello.head.version != PROTOCOL_VERSION {
        abort(&mut tx, "protocol version mismatch");
        return Err(ConnectError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: hello.head.version,
        });
    }
    let max_payload = (hello.head.max_frame as usize).max(wire::HEAD);
    let lz4 = granted_lz4(&stream);
    let config = connection_config(max_payload, pool, lz4, StreamConfig::default().large);
    reconfigure(&mut tx, &mut rx, Side::Client, &config).map_err(fail)?;
    tx.send(kind::HANDSHAKE, &[READY], Some(deadline))
        .map_err(fail)?;
    // Wait for replies in `recv` itself, not in `poll` then `recv` (one
    // system call per wait, as a blocking socket's caller makes); failing
    // that, poll.
    let _ = rx.block_reads(WAIT_SLICE);
    let server = cred.unwrap_or(PeerCred::REMOTE);
    tracing::debug!(%address, server_pid = stream.pid, methods = hello.methods.len(),
        lz4 = lz4.is_some(), "connected over a stream");
    let info = Info::new(
        hello.methods,
        max_payload,
        server,
        SegmentLayout {
            ring_capacity: 0,
            blobs: pool.unwrap_or_default(),
        },
        options.clone(),
        Some(stream.pid).filter(|&p| p != 0),
    );
    Ok((Link::stream(tx, rx), info))
}
