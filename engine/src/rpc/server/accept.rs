//! The accept thread and the server's end of the handshake.
//!
//! For each socket the accept thread reads the peer's credentials and
//! applies the policy and the caps at once, answering a refusal without
//! waiting; only an admitted socket gets a handshake thread. When the
//! process runs out of descriptors (`EMFILE`, `ENFILE`) or memory, the
//! thread stops accepting for a while that doubles up to a second instead
//! of spinning on the error, and accepts again afterwards.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::rpc::error::Refusal;
use crate::rpc::handshake::{
    self, ABORT, ClientHello, HandshakeError, MethodInfo, READY, ServerHelloHead,
};
use crate::rpc::large::LargeCache;
use crate::rpc::link::Link;
use crate::rpc::wire::PROTOCOL_VERSION;
use crate::segment::{SIDE_ABSENT, Segment, Side};
use crate::sys::{Doorbell, PeerCred, Ready, peer_cred, poll_ready, recv_message, send_with_fds};

use super::stream;
use crate::stream::Incoming;

use super::admission::{Key, Ticket};
use super::ctx::Large;
use super::source::{Conns, Next};
use super::worker::Conn;
use super::{Shared, handshake_stack};

/// How long a refusal may take to send (the socket is fresh: it goes at
/// once unless the client is gone).
const REFUSAL_SEND: Duration = Duration::from_millis(100);
/// First pause after running out of descriptors or memory.
const BACKOFF_FIRST: Duration = Duration::from_millis(5);
/// Longest pause.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often TLS connections that wait for a handshake slot try again.
const WAITING_RETRY: Duration = Duration::from_millis(2);

/// The accept loop: until the server stops or its handoff peer hangs up.
pub(super) fn run(shared: &Arc<Shared>, conns: &Conns) {
    let mut handshakes: Vec<JoinHandle<()>> = Vec::new();
    let mut conn_id = 0u32;
    let mut backoff = BACKOFF_FIRST;
    let mut backing_off = false;
    // TLS connections waiting for a handshake slot (they cannot be told
    // they are early), until their handshake's deadline.
    let mut waiting: VecDeque<(Instant, Incoming)> = VecDeque::new();
    'accepting: while !shared.stopping.load(Ordering::Acquire) {
        // While backing off, only the stop signal is waited on.
        let mut fds = vec![(shared.stop.as_fd(), Ready::Readable)];
        if !backing_off {
            fds.extend(conns.fds().into_iter().map(|fd| (fd, Ready::Readable)));
        }
        let timeout = match (backing_off, waiting.is_empty()) {
            (true, _) => Some(backoff),
            (false, false) => Some(WAITING_RETRY),
            (false, true) => None,
        };
        let ready: Vec<usize> = match poll_ready(&fds, timeout) {
            Ok(r) if r[0] => break,
            Ok(_) if backing_off => {
                backing_off = false;
                continue;
            }
            Ok(r) => (1..r.len()).filter(|&i| r[i]).map(|i| i - 1).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accept poll failed; the server stops accepting");
                break;
            }
        };
        drop(fds);
        let mut nexts: Vec<Next> = Vec::new();
        for _ in 0..waiting.len() {
            let Some((until, incoming)) = waiting.pop_front() else {
                break;
            };
            if Instant::now() < until {
                nexts.push(Next::Stream(Box::new(incoming)));
            } else {
                shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("a TLS connection waited for a handshake slot too long; dropped");
            }
        }
        for i in ready {
            nexts.push(match conns.next(i) {
                Ok(Next::Nothing) => continue,
                Ok(Next::Retired) => {
                    tracing::debug!(service = %shared.service, "the handoff peer retired this server");
                    break 'accepting;
                }
                Ok(next) => {
                    backoff = BACKOFF_FIRST;
                    next
                }
                Err(e) => {
                    // Out of descriptors or memory (or another accept
                    // error): back off instead of spinning on it.
                    tracing::warn!(error = %e, pause = ?backoff, "accept failed; pausing");
                    backing_off = true;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    break;
                }
            });
        }
        for next in nexts {
            conn_id = conn_id.wrapping_add(1);
            let (sh, id) = (shared.clone(), conn_id);
            let spawned = match next {
                Next::Conn(sock, premade) => {
                    let Some(ticket) = admit(shared, &sock) else {
                        continue;
                    };
                    std::thread::Builder::new()
                        .name("isocall-handshake".into())
                        .stack_size(handshake_stack())
                        .spawn(move || handshake_thread(&sh, sock, premade, id, ticket))
                }
                Next::Stream(incoming) => {
                    let (ticket, incoming) = match stream::admit(shared, *incoming) {
                        stream::Admitted::Go(t, i) => (t, i),
                        stream::Admitted::Wait(i) => {
                            if waiting.len() < shared.limits.max_handshakes {
                                waiting.push_back((
                                    crate::deadline_in(shared.limits.handshake_timeout),
                                    i,
                                ));
                            }
                            continue;
                        }
                        stream::Admitted::Refused => continue,
                    };
                    std::thread::Builder::new()
                        .name("isocall-handshake".into())
                        .stack_size(stream::HANDSHAKE_STACK)
                        .spawn(move || stream::handshake_thread(&sh, incoming, id, ticket))
                }
                Next::Nothing | Next::Retired => continue,
            };
            handshakes.retain(|h| !h.is_finished());
            match spawned {
                Ok(h) => handshakes.push(h),
                Err(e) => {
                    tracing::warn!(error = %e, "no thread for a handshake; connection dropped");
                    shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    // Handshakes end on the stop signal.
    for h in handshakes {
        let _ = h.join();
    }
}

/// Applies the policy and the caps to a fresh socket; refuses it at once
/// (and closes it) or returns its ticket.
fn admit(shared: &Shared, sock: &OwnedFd) -> Option<Ticket> {
    let cred = match peer_cred(sock.as_fd()) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "no credentials for a socket; dropped");
            shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let refusal = match shared.policy.check(&cred) {
        Err(p) => Refusal::Policy(p),
        Ok(()) => match shared.admission.admit(Key::Uid(cred.uid)) {
            Ok(t) => return Some(t),
            Err(r) => r,
        },
    };
    refuse(shared, sock, &cred, &refusal);
    None
}

/// Sends a refusal without waiting for a slow client, and counts it.
pub(super) fn refuse(shared: &Shared, sock: &OwnedFd, cred: &PeerCred, r: &Refusal) {
    shared.stats.refused.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(pid = ?cred.pid, uid = cred.uid, refusal = %r, "connection refused");
    let _ = send_with_fds(
        sock.as_fd(),
        &handshake::encode_refusal(r),
        &[],
        Instant::now() + REFUSAL_SEND,
    );
}

/// Why a handshake did not make a connection.
pub(super) enum Failed {
    /// The client was refused (version); counted as a refusal.
    Refused,
    /// Anything else; counted as a failure.
    Other(String),
}

fn handshake_thread(
    shared: &Arc<Shared>,
    sock: OwnedFd,
    premade: Option<OwnedFd>,
    id: u32,
    ticket: Ticket,
) {
    finish(shared, handshake(shared, sock, premade, id), id, ticket);
}

/// The method table a server's hello carries, and the head that
/// announces it to connection `conn` (both transports' hellos start so).
pub(super) fn hello_head(shared: &Shared, conn: u32) -> (ServerHelloHead, Vec<MethodInfo>) {
    let infos: Vec<MethodInfo> = shared.methods.iter().map(|m| m.info.clone()).collect();
    let head = ServerHelloHead {
        magic: handshake::HELLO_MAGIC,
        version: PROTOCOL_VERSION,
        nmethods: infos.len() as u32,
        max_frame: shared.max_frame as u32,
        conn,
    };
    (head, infos)
}

/// Hands a finished handshake's connection to a worker (round-robin), or
/// counts why there is none.
pub(super) fn finish(
    shared: &Arc<Shared>,
    handshake: Result<Conn, Failed>,
    id: u32,
    mut ticket: Ticket,
) {
    match handshake {
        Ok(conn) => {
            ticket.handshaken();
            shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
            let w = shared.next_worker.fetch_add(1, Ordering::Relaxed) % shared.workers.len();
            let inbox = &shared.workers[w];
            inbox
                .new
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn.with_ticket(ticket));
            // Release: the push above is seen by the worker that sees it.
            inbox.has_new.store(true, Ordering::Release);
            let _ = inbox.bell.notify();
        }
        Err(Failed::Refused) => {}
        Err(Failed::Other(reason)) => {
            shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(conn = id, %reason, "handshake failed");
        }
    }
}

/// A segment the handoff peer made ahead of need, if it is fit for this
/// server: this server's layout, and neither side attached yet. Anything
/// else in it is checked like everything a client writes.
fn premade_segment(shared: &Shared, fd: OwnedFd) -> Option<Segment> {
    let seg = Segment::open(fd)
        .inspect_err(|e| tracing::debug!(error = %e, "premade segment refused"))
        .ok()?;
    let fresh = [Side::Client, Side::Server]
        .iter()
        .all(|&s| seg.side_state(s).state == SIDE_ABSENT);
    (fresh && seg.layout() == shared.layout).then_some(seg)
}

fn handshake(
    shared: &Shared,
    sock: OwnedFd,
    premade: Option<OwnedFd>,
    id: u32,
) -> Result<Conn, Failed> {
    let span = tracing::debug_span!("isocall_handshake", conn = id);
    let _enter = span.enter();
    let other = |what: &str, e: &dyn std::fmt::Display| Failed::Other(format!("{what}: {e}"));
    let deadline = crate::deadline_in(shared.limits.handshake_timeout);
    let stop = Some(shared.stop.as_fd());
    let cred = peer_cred(sock.as_fd()).map_err(|e| other("SO_PEERCRED", &e))?;
    let mut buf = [0u8; 256];
    let (n, _) = recv_message(sock.as_fd(), &mut buf, 0, deadline, stop)
        .map_err(|e| other("client hello", &e))?;
    let hello = ClientHello::decode(&buf[..n]).map_err(|e| other("client hello", &e))?;
    if hello.version != PROTOCOL_VERSION {
        refuse(
            shared,
            &sock,
            &cred,
            &Refusal::Version {
                server: PROTOCOL_VERSION,
                client: hello.version,
            },
        );
        return Err(Failed::Refused);
    }
    let name = format!("isocall:{}:{id}", shared.service);
    let segment = match premade.and_then(|fd| premade_segment(shared, fd)) {
        Some(s) => s,
        None => match Segment::create(&name, &shared.layout) {
            Ok(s) => s,
            Err(e) => {
                let errno = match &e {
                    crate::segment::SegmentError::Os(io) => io.raw_os_error().unwrap_or(0),
                    _ => 0,
                };
                refuse(shared, &sock, &cred, &Refusal::Resources { errno });
                return Err(Failed::Other(format!("segment: {e}")));
            }
        },
    };
    let (head, infos) = hello_head(shared, id);
    let names: Vec<&str> = infos.iter().map(|m| m.name.as_str()).collect();
    segment.write_method_table(&names);
    let (ours, theirs) = Doorbell::pair().map_err(|e| other("doorbell", &e))?;
    let msg = handshake::encode_hello(&head, &infos);
    send_with_fds(
        sock.as_fd(),
        &msg,
        &[segment.fd(), theirs.as_fd()],
        deadline,
    )
    .map_err(|e| other("hello", &e))?;
    drop(theirs);
    let (n, _) = recv_message(sock.as_fd(), &mut buf, 0, deadline, stop)
        .map_err(|e| other("client ready", &e))?;
    match buf[0] {
        READY => {}
        ABORT => {
            let e = HandshakeError::Aborted {
                reason: String::from_utf8_lossy(&buf[1..n]).into_owned(),
            };
            return Err(other("client", &e));
        }
        tag => {
            return Err(other(
                "client ready",
                &HandshakeError::UnexpectedTag { tag },
            ));
        }
    }
    let link = Link::attach(segment, Side::Server, ours, shared.strategy, sock, &cred)
        .map_err(|e| other("link", &e))?;
    tracing::debug!(pid = ?cred.pid, uid = cred.uid, "connection accepted");
    Ok(Conn::new(
        id,
        cred,
        link,
        Large::Mapped(LargeCache::new(shared.limits.large)),
    ))
}
