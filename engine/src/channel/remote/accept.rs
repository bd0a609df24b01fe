//! The publisher's stream listener: its accept thread and its end of a
//! stream subscriber's handshake.
//!
//! As the shared-memory accept thread (admission before cost): a Unix
//! socket's subscriber is checked by its credentials against the policy
//! and counted against its uid's caps at once; a TCP subscriber (no
//! credentials) is counted against its IP address's caps, and the policy
//! waits for the certificate its TLS handshake shows. Each admitted
//! connection gets a short-lived handshake thread: TLS, the policy on a
//! certificate, the channel's hello and type check, then the stream's
//! part (compression, pool), and the connection reconfigured in place.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isocall_blob::PoolConfig;

use crate::rpc::Compression;
use crate::rpc::handshake;
use crate::rpc::over_stream::{
    connection_config, expect_ready, grant_lz4, handshake_config, recv_message, stream_hello,
};
use crate::rpc::wire::kind;
use crate::rpc::{Key, Refusal, Ticket, Who};
use crate::segment::Side;
use crate::stream::{
    Connection, Incoming, Listener, Lz4, PeerAddr, StreamConfig, StreamTx, endpoint, reconfigure,
};
use crate::sys::{PeerCred, Ready, poll_ready};

use super::super::accept::{MAX_SUBSCRIBERS, Shared, SubscriberInfo, lock, spawn_handshake};
use super::super::hello::{self, CHANNEL_VERSION};
use super::super::stats::PubWord;
use super::encode_stream_part;
use super::outlet::StreamArrival;

/// How long a refusal may take to send.
const REFUSAL_SEND: Duration = Duration::from_millis(100);
const BACKOFF_FIRST: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Stack of a handshake thread: a TLS handshake needs more than a
/// shared-memory one.
const HANDSHAKE_STACK: usize = 1 << 20;

/// What the stream listener needs besides the publisher's shared state.
pub(crate) struct StreamSetup {
    pub(crate) listener: Listener,
    /// Whether lz4 is granted to a subscriber that asks.
    pub(crate) compression: Compression,
    /// Largest message payload (the ring's largest frame).
    pub(crate) max_payload: usize,
    /// The classes of each connection's private pool (the channel's).
    pub(crate) pool: Option<PoolConfig>,
    /// Each subscriber's send buffer (the ring capacity).
    pub(crate) send_buffer: usize,
    /// Whether TCP addresses run TLS (nothing can be said to a client
    /// before its TLS handshake).
    pub(crate) tcp_tls: bool,
}

/// Starts the stream accept thread.
pub(crate) fn spawn(shared: Arc<Shared>, setup: StreamSetup) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("isocall-chan-stream".into())
        .spawn(move || run(&shared, &Arc::new(setup)))
}

fn run(shared: &Arc<Shared>, setup: &Arc<StreamSetup>) {
    let mut handshakes: Vec<JoinHandle<()>> = Vec::new();
    let mut backoff = BACKOFF_FIRST;
    let mut backing_off = false;
    while !shared.stopping.load(Ordering::Acquire) {
        let mut fds = vec![(shared.stop.as_fd(), Ready::Readable)];
        if !backing_off {
            fds.extend(
                setup
                    .listener
                    .poll_fds()
                    .into_iter()
                    .map(|f| (f, Ready::Readable)),
            );
        }
        match poll_ready(&fds, backing_off.then_some(backoff)) {
            Ok(r) if r[0] => break,
            Ok(_) if backing_off => {
                backing_off = false;
                continue;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "channel stream accept poll failed; stops accepting");
                break;
            }
        }
        let incoming = match setup.listener.try_accept() {
            Ok(Some(i)) => {
                backoff = BACKOFF_FIRST;
                i
            }
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, pause = ?backoff, "channel stream accept failed; pausing");
                backing_off = true;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let Some((ticket, incoming)) = admit(shared, setup, incoming) else {
            continue;
        };
        let (sh, st) = (shared.clone(), setup.clone());
        spawn_handshake(shared, &mut handshakes, HANDSHAKE_STACK, move || {
            handshake_thread(&sh, &st, incoming, ticket)
        });
    }
    for h in handshakes {
        let _ = h.join();
    }
}

/// Applies the policy (Unix sockets) and the caps to a connection just
/// accepted: refuses it at once (a refusal message where the peer can
/// read one) or returns its ticket.
fn admit(shared: &Shared, setup: &StreamSetup, incoming: Incoming) -> Option<(Ticket, Incoming)> {
    let key = match (incoming.peer_cred(), *incoming.peer()) {
        (Some(cred), _) => {
            if let Err(p) = shared.policy.check(&cred) {
                refuse_incoming(shared, setup, incoming, &Refusal::Policy(p));
                return None;
            }
            Key::Uid(cred.uid)
        }
        (None, PeerAddr::Tcp(a)) => Key::Ip(a.ip()),
        (None, _) => {
            tracing::debug!("no credentials for a Unix stream subscriber; dropped");
            shared.block.add(PubWord::Failed, 1);
            return None;
        }
    };
    match shared.admission.admit(key) {
        Ok(t) => Some((t, incoming)),
        Err(r) => {
            refuse_incoming(shared, setup, incoming, &r);
            None
        }
    }
}

/// Refuses a connection just accepted: with a refusal message on a plain
/// socket, by closing it before a TLS handshake.
fn refuse_incoming(shared: &Shared, setup: &StreamSetup, incoming: Incoming, r: &Refusal) {
    shared.block.add(PubWord::Refused, 1);
    tracing::debug!(peer = %incoming.peer(), refusal = %r, "stream subscriber refused");
    if incoming.address().is_tcp() && setup.tcp_tls {
        return;
    }
    // A plain socket (no TLS to run): the refusal is the first frame it
    // reads.
    if let Ok(conn) = incoming.establish(Instant::now()) {
        send_refusal(conn, &handshake::encode_refusal(r));
    }
}

/// Sends `msg` (a refusal) on a plain `conn`, then closes it: the peer
/// reads the refusal, then the end.
fn send_refusal(conn: Connection, msg: &[u8]) {
    let Ok((tx, mut rx)) = endpoint(conn, Side::Server, &handshake_config()) else {
        return;
    };
    refuse_on(tx, &mut rx, msg);
}

fn refuse_on(mut tx: StreamTx, rx: &mut crate::stream::StreamRx, msg: &[u8]) {
    let deadline = Instant::now() + REFUSAL_SEND;
    let _ = tx.send(kind::HANDSHAKE, msg, Some(deadline));
    // What the peer sent already is read first: closing a TCP socket with
    // unread bytes resets the connection (and the refusal with it).
    let _ = rx.try_recv().map(|f| f.map(|f| f.release()));
    let _ = rx.try_recv().map(|f| f.map(|f| f.release()));
    let _ = tx.close(Some(deadline));
}

fn handshake_thread(
    shared: &Arc<Shared>,
    setup: &StreamSetup,
    incoming: Incoming,
    mut ticket: Ticket,
) {
    match handshake(shared, setup, incoming) {
        Ok(Some(a)) => {
            ticket.handshaken();
            tracing::debug!(channel = %shared.channel, id = a.info.id, label = %a.info.label,
                policy = %a.policy, "stream subscriber joined");
            lock(&shared.stream_arrivals).push(StreamArrival {
                info: a.info,
                tx: a.tx,
                rx: a.rx,
                policy: a.policy,
                history: a.history,
                ticket,
                lease: a.lease,
            });
            shared.arrived.store(true, Ordering::Release);
            let _ = shared.bell.notify();
        }
        Ok(None) => {}
        Err(reason) => {
            shared.block.add(PubWord::Failed, 1);
            tracing::debug!(channel = %shared.channel, %reason, "stream subscriber handshake failed");
        }
    }
}

/// A finished handshake.
struct Joined {
    info: SubscriberInfo,
    tx: StreamTx,
    rx: crate::stream::StreamRx,
    policy: super::super::policy::Backpressure,
    history: u32,
    lease: super::super::accept::IdLease,
}

/// The publisher's end of one stream handshake: `Ok(None)` if the
/// subscriber was refused (and told so), `Err` with what went wrong.
fn handshake(
    shared: &Arc<Shared>,
    setup: &StreamSetup,
    incoming: Incoming,
) -> Result<Option<Joined>, String> {
    let other = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let deadline = crate::deadline_in(shared.handshake_timeout);
    let stop = Some(shared.stop.as_fd());
    let cred = incoming.peer_cred();
    let conn = incoming
        .establish(deadline)
        .map_err(|e| other("TLS handshake", &e))?;
    if cred.is_none()
        && let Err(p) = shared.policy.decide(&Who::remote(&conn))
    {
        shared.block.add(PubWord::Refused, 1);
        send_refusal(conn, &handshake::encode_refusal(&Refusal::Policy(p)));
        return Ok(None);
    }
    let (mut tx, mut rx) =
        endpoint(conn, Side::Server, &handshake_config()).map_err(|e| other("endpoint", &e))?;
    let msg = recv_message(&mut rx, deadline, stop).map_err(|e| other("subscriber hello", &e))?;
    let req = hello::decode_subscribe(&msg).map_err(|e| other("subscriber hello", &e))?;
    let flags = recv_message(&mut rx, deadline, stop).map_err(|e| other("stream flags", &e))?;
    let flags = flags
        .get(..4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let refuse = |tx, rx: &mut _, msg: &[u8]| {
        shared.block.add(PubWord::Refused, 1);
        refuse_on(tx, rx, msg);
        Ok(None)
    };
    if req.version != CHANNEL_VERSION {
        let r = Refusal::Version {
            server: CHANNEL_VERSION,
            client: req.version,
        };
        return refuse(tx, &mut rx, &handshake::encode_refusal(&r));
    }
    if req.ty.fingerprint != shared.ty.fingerprint {
        tracing::debug!(channel = %shared.channel, theirs = %req.ty, ours = %shared.ty,
            "stream subscriber of another type refused");
        return refuse(tx, &mut rx, &hello::encode_mismatch(&shared.ty));
    }
    let Some(lease) = shared.lease() else {
        let r = Refusal::TooManyConnections {
            limit: MAX_SUBSCRIBERS as u32,
        };
        return refuse(tx, &mut rx, &handshake::encode_refusal(&r));
    };
    let info = SubscriberInfo {
        id: lease.id(),
        peer: cred.unwrap_or(PeerCred::REMOTE),
        label: req.label,
    };
    let policy = (shared.choose)(&info);
    let lz4 = grant_lz4(flags, setup.compression);
    let msg = hello::encode_hello(info.id, &shared.ty, setup.max_payload as u32, false);
    tx.send(kind::HANDSHAKE, &msg, Some(deadline))
        .map_err(|e| other("hello", &e))?;
    let part = encode_stream_part(&stream_hello(lz4), setup.pool.as_ref());
    tx.send(kind::HANDSHAKE, &part, Some(deadline))
        .map_err(|e| other("stream hello", &e))?;
    let config = stream_config(setup.max_payload, setup.pool, lz4, setup.send_buffer);
    reconfigure(&mut tx, &mut rx, Side::Server, &config).map_err(|e| other("configure", &e))?;
    let msg = recv_message(&mut rx, deadline, stop).map_err(|e| other("subscriber ready", &e))?;
    expect_ready(&msg).map_err(|e| e.to_string())?;
    Ok(Some(Joined {
        info,
        tx,
        rx,
        policy,
        history: req.history,
        lease,
    }))
}

/// The configuration of a channel's stream connection, both sides:
/// messages of `max_payload` bytes, a pool of `pool`'s classes for their
/// blobs, lz4 if granted, and `send_buffer` bytes queued per subscriber.
pub(crate) fn stream_config(
    max_payload: usize,
    pool: Option<PoolConfig>,
    lz4: Option<Lz4>,
    send_buffer: usize,
) -> StreamConfig {
    let c = connection_config(max_payload, pool, lz4, StreamConfig::default().large);
    c.send_buffer(send_buffer)
}
