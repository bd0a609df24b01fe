//! The server's end of connections over stream sockets.
//!
//! Admission comes first, in the accept thread, before anything is spent:
//! a Unix socket's client is checked by its credentials against the
//! policy and counted against its uid's caps; a TCP client (no
//! credentials) is counted against its IP address's caps, and its policy
//! waits for the certificate its TLS handshake shows. Then, in a
//! handshake thread: the TLS handshake (under the handshake timeout), the
//! policy on the client's certificate, and the hello in frames of kind
//! [`HANDSHAKE`](kind::HANDSHAKE). A refusal is sent as a refusal message
//! where the client can read one (plain sockets, or after TLS); before a
//! TLS handshake the connection is just closed.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::rpc::error::Refusal;
use crate::rpc::handshake::{self, ClientHello, HandshakeError};
use crate::rpc::link::Link;
use crate::rpc::over_stream::{
    connection_config, expect_ready, grant_lz4, handshake_config, recv_message, stream_hello,
};
use crate::rpc::policy::Who;
use crate::rpc::wire::{PROTOCOL_VERSION, kind};
use crate::segment::Side;
use crate::stream::{Connection, Incoming, PeerAddr, StreamTx, endpoint, reconfigure};
use crate::sys::PeerCred;

use super::Shared;
use super::accept::{Failed, finish, hello_head};
use super::admission::{Key, Ticket};
use super::ctx::Large;
use super::worker::Conn;

/// Stack of a stream handshake thread: a TLS handshake needs more than a
/// shared-memory one.
pub(super) const HANDSHAKE_STACK: usize = 1 << 20;
/// How long a refusal may take to send.
const REFUSAL_SEND: Duration = Duration::from_millis(100);

/// What admission made of a connection just accepted.
pub(super) enum Admitted {
    /// Go on with the handshake.
    Go(Ticket, Incoming),
    /// Too many handshakes under way, and the client cannot be told
    /// (before TLS): it waits, accepted, until a handshake ends.
    Wait(Incoming),
    /// Refused (and closed).
    Refused,
}

/// Applies the policy (Unix sockets) and the caps to a connection just
/// accepted; refuses it at once (and closes it), has it wait, or returns
/// its ticket.
pub(super) fn admit(shared: &Shared, incoming: Incoming) -> Admitted {
    let key = match (incoming.peer_cred(), *incoming.peer()) {
        (Some(cred), _) => {
            if let Err(p) = shared.policy.check(&cred) {
                refuse_incoming(shared, incoming, &Refusal::Policy(p));
                return Admitted::Refused;
            }
            Key::Uid(cred.uid)
        }
        (None, PeerAddr::Tcp(a)) => Key::Ip(a.ip()),
        (None, _) => {
            tracing::debug!("no credentials for a Unix stream socket; dropped");
            shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            return Admitted::Refused;
        }
    };
    match shared.admission.admit(key) {
        Ok(t) => Admitted::Go(t, incoming),
        Err(Refusal::Busy { .. }) if before_tls(shared, &incoming) => Admitted::Wait(incoming),
        Err(r) => {
            refuse_incoming(shared, incoming, &r);
            Admitted::Refused
        }
    }
}

/// Whether the connection will run TLS, so that nothing can be said to
/// its client before a TLS handshake.
fn before_tls(shared: &Shared, incoming: &Incoming) -> bool {
    incoming.address().is_tcp() && shared.tcp_tls
}

/// Refuses a connection just accepted: with a refusal message on a plain
/// socket; by closing it before a TLS handshake (which would be the cost
/// admission spares).
fn refuse_incoming(shared: &Shared, incoming: Incoming, r: &Refusal) {
    shared.stats.refused.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(peer = %incoming.peer(), refusal = %r, "stream connection refused");
    if before_tls(shared, &incoming) {
        return;
    }
    if let Ok(conn) = incoming.establish(Instant::now()) {
        send_refusal(conn, r);
    }
}

/// Sends refusal `r` on `conn` (waiting at most [`REFUSAL_SEND`]), then
/// closes it: the client reads the refusal, then the end.
fn send_refusal(conn: Connection, r: &Refusal) {
    let Ok((tx, mut rx)) = endpoint(conn, Side::Server, &handshake_config()) else {
        return;
    };
    refuse_on(tx, &mut rx, r);
}

fn refuse_on(mut tx: StreamTx, rx: &mut crate::stream::StreamRx, r: &Refusal) {
    let deadline = Instant::now() + REFUSAL_SEND;
    let _ = tx.send(
        kind::HANDSHAKE,
        &handshake::encode_refusal(r),
        Some(deadline),
    );
    // What the client sent already (its hello) is read first: closing a TCP
    // socket with unread bytes resets the connection.
    let _ = rx.try_recv();
    let _ = tx.close(Some(deadline));
}

/// Runs the handshake of an admitted stream connection and hands it to a
/// worker.
pub(super) fn handshake_thread(shared: &Arc<Shared>, incoming: Incoming, id: u32, ticket: Ticket) {
    let r = handshake(shared, incoming, id);
    finish(shared, r, id, ticket);
}

fn handshake(shared: &Shared, incoming: Incoming, id: u32) -> Result<Conn, Failed> {
    let span = tracing::debug_span!("isocall_handshake", conn = id, peer = %incoming.peer());
    let _enter = span.enter();
    let other = |what: &str, e: &dyn std::fmt::Display| Failed::Other(format!("{what}: {e}"));
    let deadline = crate::deadline_in(shared.limits.handshake_timeout);
    let stop = Some(shared.stop.as_fd());
    let cred = incoming.peer_cred();
    let conn = incoming
        .establish(deadline)
        .map_err(|e| other("TLS handshake", &e))?;
    if cred.is_none() {
        // A TCP client: its certificate (if TLS) is known now.
        if let Err(p) = shared.policy.decide(&Who::remote(&conn)) {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(refusal = %p, "stream connection refused by the policy");
            send_refusal(conn, &Refusal::Policy(p));
            return Err(Failed::Refused);
        }
    }
    let (mut tx, mut rx) =
        endpoint(conn, Side::Server, &handshake_config()).map_err(|e| other("endpoint", &e))?;
    let msg = recv_message(&mut rx, deadline, stop).map_err(|e| other("client hello", &e))?;
    let hello = ClientHello::decode(&msg).map_err(|e| other("client hello", &e))?;
    if hello.version != PROTOCOL_VERSION {
        shared.stats.refused.fetch_add(1, Ordering::Relaxed);
        let r = Refusal::Version {
            server: PROTOCOL_VERSION,
            client: hello.version,
        };
        refuse_on(tx, &mut rx, &r);
        return Err(Failed::Refused);
    }
    let flags = msg
        .get(16..20)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let lz4 = grant_lz4(flags, shared.compression);
    let pool = (!shared.layout.blobs.is_empty()).then_some(shared.layout.blobs);
    let (head, infos) = hello_head(shared, id);
    let msg = handshake::encode_stream_hello(
        &head,
        &stream_hello(lz4),
        pool.as_ref().map_or(&[][..], |p| p.classes()),
        &infos,
    );
    tx.send(kind::HANDSHAKE, &msg, Some(deadline))
        .map_err(|e| other("hello", &e))?;
    let config = connection_config(shared.max_frame, pool, lz4, shared.limits.large);
    reconfigure(&mut tx, &mut rx, Side::Server, &config).map_err(|e| other("configure", &e))?;
    let msg = recv_message(&mut rx, deadline, stop).map_err(|e| other("client ready", &e))?;
    expect_ready(&msg).map_err(|e| match e {
        HandshakeError::Aborted { .. } => other("client", &e),
        _ => other("client ready", &e),
    })?;
    tracing::debug!(pid = ?cred.and_then(|c| c.pid), lz4 = lz4.is_some(), "stream connection accepted");
    let large = Large::Stream(rx.large().clone());
    // A worker that serves this connection alone waits for its requests
    // in `recv` (a slice at a time), as a blocking server would: one
    // system call per wait rather than `epoll_wait` then `recv`. Failing
    // that, it sleeps in its poller as for any connection.
    let _ = rx.block_reads_locked(super::worker::LONE_READ_SLICE);
    Ok(Conn::new(
        id,
        cred.unwrap_or(PeerCred::REMOTE),
        Link::stream(tx, rx),
        large,
    ))
}
