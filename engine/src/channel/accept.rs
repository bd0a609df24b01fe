//! The publisher's accept thread and its end of the handshake.
//!
//! As a server's: for each socket the thread reads the peer's credentials
//! and applies the policy and the caps at once (admission before cost),
//! refusing without waiting; an admitted socket gets a short-lived
//! handshake thread, so a subscriber that never answers delays no one.
//! The handshake checks the subscriber's protocol version and message type
//! before it makes a segment, chooses the subscriber's backpressure policy,
//! and hands the finished connection to the publisher, which adopts it on
//! its next call. Out of descriptors or memory, the thread pauses (doubling
//! up to a second) instead of spinning on the error.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isocall_blob::{Member, Party, Pool, Roster};
use isocall_ringbuf::SharedRegion;

use crate::WaitStrategy;
use crate::rpc::handshake::{self, ABORT, READY};
use crate::rpc::{Admission, HandshakeError, Key, Policy, Refusal, Ticket, TypeSig};
use crate::segment::{Segment, SegmentLayout, Side};
use crate::sys::{
    Doorbell, EventFd, PeerCred, Ready, SharedMem, SocketName, accept_seqpacket, peer_cred,
    poll_ready, recv_message, send_with_fds,
};

use super::conn::Conn;
use super::hello::{self, CHANNEL_VERSION};
use super::policy::Backpressure;
use super::stats::{PubBlock, PubWord, SEGMENT_PREFIX, SubCounters};

/// Most subscribers a channel has at once: ids 1 to 30, so that each is a
/// party of the channel's blob pool (party 0 is the publisher).
pub const MAX_SUBSCRIBERS: usize = 30;

/// How long a refusal may take to send.
const REFUSAL_SEND: Duration = Duration::from_millis(100);
const BACKOFF_FIRST: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Stack of a handshake thread: it makes a segment and little else.
const HANDSHAKE_STACK: usize = 256 << 10;

/// Who a subscriber is, as the publisher chooses its backpressure.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberInfo {
    /// Its id on the channel (1 to [`MAX_SUBSCRIBERS`]).
    pub id: u32,
    /// Its process's credentials.
    pub peer: PeerCred,
    /// The name it gave itself
    /// ([`SubscriberOptions::label`](super::SubscriberOptions::label)).
    pub label: String,
}

/// Chooses a subscriber's backpressure when it joins.
pub(crate) type Chooser = Arc<dyn Fn(&SubscriberInfo) -> Backpressure + Send + Sync>;

/// A subscriber that completed its handshake, for the publisher to adopt.
pub(crate) struct Arrival {
    pub(crate) info: SubscriberInfo,
    pub(crate) conn: Conn,
    pub(crate) policy: Backpressure,
    pub(crate) counters: SubCounters,
    /// Messages of history it asked for.
    pub(crate) history: u32,
    pub(crate) ticket: Ticket,
    pub(crate) lease: IdLease,
}

/// What the publisher and its accept thread share.
pub(crate) struct Shared {
    /// The channel's name (for memfd names and logs).
    pub(crate) channel: String,
    pub(crate) socket: SocketName,
    pub(crate) policy: Policy,
    pub(crate) choose: Chooser,
    pub(crate) ty: TypeSig,
    pub(crate) layout: SegmentLayout,
    pub(crate) strategy: WaitStrategy,
    pub(crate) handshake_timeout: Duration,
    pub(crate) admission: Admission,
    pub(crate) stopping: AtomicBool,
    /// Rung when the publisher stops: ends every wait of its threads.
    pub(crate) stop: EventFd,
    /// Who holds which id.
    ids: Mutex<Ids>,
    /// The channel's blob pool, if it has one: its memory (whose memfd
    /// each hello carries) and the publisher's handle on it.
    pub(crate) pool: Option<(Arc<SharedMem>, Arc<Pool<SharedRegion>>)>,
    arrivals: Mutex<Vec<Arrival>>,
    /// Stream subscribers that finished their handshake.
    pub(crate) stream_arrivals: Mutex<Vec<super::remote::outlet::StreamArrival>>,
    /// Set when `arrivals` or `stream_arrivals` holds someone: one load on the send path.
    pub(crate) arrived: AtomicBool,
    /// Rung on each arrival.
    pub(crate) bell: EventFd,
    pub(crate) block: PubBlock,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Who holds which subscriber id.
enum Ids {
    /// No blob pool: bit `i` set while id `i` is given.
    Plain(u32),
    /// A blob pool: an id is a party of it, given again only once the pool
    /// holds nothing of its last holder (see [`Roster`]).
    Roster(Roster),
}

/// A subscriber id, given to one subscriber. Dropped without
/// [`IdLease::finish`] (a handshake that failed), the id is given back at
/// once: its holder never got anything.
pub(crate) struct IdLease {
    shared: Arc<Shared>,
    id: u32,
    member: Option<Member>,
    done: bool,
}

impl IdLease {
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// The subscriber's party in the blob pool.
    pub(crate) fn party(&self) -> Option<Party> {
        Party::new(self.id as usize)
    }

    /// The subscriber is gone: if its process `exited`, everything it held
    /// in the pool is reclaimed and its id is free; if it lives (it closed
    /// its end), its id comes back once the pool holds nothing of it, and
    /// the returned member is to be reclaimed with [`Shared::died`] when
    /// its process exits (it may hold shared blobs until then).
    pub(crate) fn finish(mut self, exited: bool) -> Option<Member> {
        self.done = true;
        self.give_back(exited)
    }

    fn give_back(&mut self, exited: bool) -> Option<Member> {
        let mut ids = lock(&self.shared.ids);
        match &mut *ids {
            Ids::Plain(bits) => {
                *bits &= !(1 << self.id);
                None
            }
            Ids::Roster(r) => {
                let m = self.member?;
                match (&self.shared.pool, exited) {
                    (Some((_, pool)), true) => {
                        if let Some(got) = r.died(pool, m) {
                            tracing::debug!(
                                id = self.id,
                                freed = got.freed(),
                                "dead subscriber's blobs reclaimed"
                            );
                        }
                        None
                    }
                    _ => {
                        r.leave(m);
                        Some(m)
                    }
                }
            }
        }
    }
}

impl Drop for IdLease {
    fn drop(&mut self) {
        if !self.done {
            self.give_back(true);
        }
    }
}

/// Everything [`Shared::new`] needs.
pub(crate) struct Setup {
    pub(crate) channel: String,
    pub(crate) socket: SocketName,
    pub(crate) policy: Policy,
    pub(crate) choose: Chooser,
    pub(crate) ty: TypeSig,
    pub(crate) layout: SegmentLayout,
    pub(crate) strategy: WaitStrategy,
    pub(crate) handshake_timeout: Duration,
    pub(crate) admission: Admission,
    pub(crate) block: PubBlock,
    pub(crate) pool: Option<(Arc<SharedMem>, Arc<Pool<SharedRegion>>)>,
}

impl Shared {
    pub(crate) fn new(s: Setup) -> std::io::Result<Shared> {
        Ok(Shared {
            channel: s.channel,
            socket: s.socket,
            policy: s.policy,
            choose: s.choose,
            ty: s.ty,
            layout: s.layout,
            strategy: s.strategy,
            handshake_timeout: s.handshake_timeout,
            admission: s.admission,
            stopping: AtomicBool::new(false),
            stop: EventFd::new()?,
            ids: Mutex::new(if s.pool.is_some() {
                Ids::Roster(Roster::new())
            } else {
                Ids::Plain(0)
            }),
            pool: s.pool,
            arrivals: Mutex::new(Vec::new()),
            stream_arrivals: Mutex::new(Vec::new()),
            arrived: AtomicBool::new(false),
            bell: EventFd::new()?,
            block: s.block,
        })
    }

    /// A free id, taken (the lowest, or the pool's roster's choice).
    pub(crate) fn lease(self: &Arc<Self>) -> Option<IdLease> {
        let mut ids = lock(&self.ids);
        let (id, member) = match &mut *ids {
            Ids::Plain(bits) => {
                let id = (1..=MAX_SUBSCRIBERS as u32).find(|i| *bits & (1 << i) == 0)?;
                *bits |= 1 << id;
                (id, None)
            }
            Ids::Roster(r) => {
                let (_, pool) = self.pool.as_ref()?;
                let m = r
                    .join(pool)
                    .inspect_err(|e| tracing::debug!(error = %e, "no party for a subscriber"))
                    .ok()?;
                (m.party().id() as u32, Some(m))
            }
        };
        Some(IdLease {
            shared: self.clone(),
            id,
            member,
            done: false,
        })
    }

    /// The process of `m`, a subscriber that had closed its end, exited:
    /// reclaims what it still held in the pool, and frees its id. False if
    /// the id was given again since (nothing is done then).
    pub(crate) fn died(&self, m: Member) -> bool {
        let mut ids = lock(&self.ids);
        match (&mut *ids, &self.pool) {
            (Ids::Roster(r), Some((_, pool))) => r.died(pool, m).is_some(),
            _ => false,
        }
    }

    /// The subscribers that arrived since the last call.
    pub(crate) fn take_arrivals(
        &self,
    ) -> (Vec<Arrival>, Vec<super::remote::outlet::StreamArrival>) {
        // Cleared before the locks: an arrival pushed after the take sets
        // it again.
        self.arrived.store(false, Ordering::Relaxed);
        (
            std::mem::take(&mut *lock(&self.arrivals)),
            std::mem::take(&mut *lock(&self.stream_arrivals)),
        )
    }
}

/// Starts the accept thread on `listener`.
pub(crate) fn spawn(shared: Arc<Shared>, listener: OwnedFd) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("isocall-chan-accept".into())
        .spawn(move || run(&shared, &listener))
}

/// The accept loop: until the publisher stops.
fn run(shared: &Arc<Shared>, listener: &OwnedFd) {
    let mut handshakes: Vec<JoinHandle<()>> = Vec::new();
    let mut backoff = BACKOFF_FIRST;
    let mut backing_off = false;
    while !shared.stopping.load(Ordering::Acquire) {
        let fds = if backing_off {
            vec![(shared.stop.as_fd(), Ready::Readable)]
        } else {
            vec![
                (shared.stop.as_fd(), Ready::Readable),
                (listener.as_fd(), Ready::Readable),
            ]
        };
        match poll_ready(&fds, backing_off.then_some(backoff)) {
            Ok(r) if r[0] => break,
            Ok(_) if backing_off => {
                backing_off = false;
                continue;
            }
            Ok(r) if r.get(1) == Some(&true) => {}
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "channel accept poll failed; the publisher stops accepting");
                break;
            }
        }
        let sock = match accept_seqpacket(listener.as_fd()) {
            Ok(s) => {
                backoff = BACKOFF_FIRST;
                s
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, pause = ?backoff, "channel accept failed; pausing");
                backing_off = true;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let Some((cred, ticket)) = admit(shared, &sock) else {
            continue;
        };
        let sh = shared.clone();
        spawn_handshake(shared, &mut handshakes, HANDSHAKE_STACK, move || {
            handshake_thread(&sh, sock, cred, ticket)
        });
    }
    for h in handshakes {
        let _ = h.join();
    }
}

/// Runs a subscriber's handshake `run` on a thread of `stack` bytes,
/// kept in `handshakes` (the finished ones dropped first); without a
/// thread, the subscriber is dropped and counted as failed.
pub(crate) fn spawn_handshake(
    shared: &Shared,
    handshakes: &mut Vec<JoinHandle<()>>,
    stack: usize,
    run: impl FnOnce() + Send + 'static,
) {
    handshakes.retain(|h| !h.is_finished());
    let spawned = std::thread::Builder::new()
        .name("isocall-chan-handshake".into())
        .stack_size(stack)
        .spawn(run);
    match spawned {
        Ok(h) => handshakes.push(h),
        Err(e) => {
            tracing::warn!(error = %e, "no thread for a subscriber's handshake; dropped");
            shared.block.add(PubWord::Failed, 1);
        }
    }
}

/// Applies the policy and the caps to a fresh socket; refuses it at once
/// or returns its credentials and ticket.
fn admit(shared: &Shared, sock: &OwnedFd) -> Option<(PeerCred, Ticket)> {
    let cred = match peer_cred(sock.as_fd()) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "no credentials for a subscriber's socket; dropped");
            shared.block.add(PubWord::Failed, 1);
            return None;
        }
    };
    let refusal = match shared.policy.check(&cred) {
        Err(p) => Refusal::Policy(p),
        Ok(()) => match shared.admission.admit(Key::Uid(cred.uid)) {
            Ok(t) => return Some((cred, t)),
            Err(r) => r,
        },
    };
    refuse(shared, sock, &handshake::encode_refusal(&refusal));
    None
}

/// Sends a refusal without waiting for a slow subscriber, and counts it.
fn refuse(shared: &Shared, sock: &OwnedFd, msg: &[u8]) {
    shared.block.add(PubWord::Refused, 1);
    let _ = send_with_fds(sock.as_fd(), msg, &[], Instant::now() + REFUSAL_SEND);
}

fn handshake_thread(shared: &Arc<Shared>, sock: OwnedFd, cred: PeerCred, mut ticket: Ticket) {
    match handshake(shared, sock, &cred) {
        Ok(Some((info, conn, policy, counters, history, lease))) => {
            ticket.handshaken();
            tracing::debug!(
                channel = %shared.channel,
                id = info.id,
                pid = ?cred.pid,
                label = %info.label,
                %policy,
                "subscriber joined"
            );
            lock(&shared.arrivals).push(Arrival {
                info,
                conn,
                policy,
                counters,
                history,
                ticket,
                lease,
            });
            shared.arrived.store(true, Ordering::Release);
            let _ = shared.bell.notify();
        }
        Ok(None) => {}
        Err(reason) => {
            shared.block.add(PubWord::Failed, 1);
            tracing::debug!(channel = %shared.channel, %reason, "subscriber handshake failed");
        }
    }
}

type Joined = (
    SubscriberInfo,
    Conn,
    Backpressure,
    SubCounters,
    u32,
    IdLease,
);

/// The publisher's end of one handshake: `Ok(None)` if the subscriber was
/// refused (and told so), `Err` with what went wrong otherwise.
fn handshake(
    shared: &Arc<Shared>,
    sock: OwnedFd,
    cred: &PeerCred,
) -> Result<Option<Joined>, String> {
    let deadline = crate::deadline_in(shared.handshake_timeout);
    let stop = Some(shared.stop.as_fd());
    let mut buf = vec![0u8; 1024];
    let (n, _) = recv_message(sock.as_fd(), &mut buf, 0, deadline, stop)
        .map_err(|e| format!("subscriber hello: {e}"))?;
    let req = hello::decode_subscribe(&buf[..n]).map_err(|e| format!("subscriber hello: {e}"))?;
    if req.version != CHANNEL_VERSION {
        let r = Refusal::Version {
            server: CHANNEL_VERSION,
            client: req.version,
        };
        refuse(shared, &sock, &handshake::encode_refusal(&r));
        return Ok(None);
    }
    if req.ty.fingerprint != shared.ty.fingerprint {
        tracing::debug!(channel = %shared.channel, theirs = %req.ty, ours = %shared.ty, "subscriber of another type refused");
        refuse(shared, &sock, &hello::encode_mismatch(&shared.ty));
        return Ok(None);
    }
    let Some(lease) = shared.lease() else {
        // Admission caps subscribers at `MAX_SUBSCRIBERS`, and each holds
        // its ticket as long as its id: this does not happen.
        let r = Refusal::TooManyConnections {
            limit: MAX_SUBSCRIBERS as u32,
        };
        refuse(shared, &sock, &handshake::encode_refusal(&r));
        return Ok(None);
    };
    let id = lease.id();
    let info = SubscriberInfo {
        id,
        peer: *cred,
        label: req.label,
    };
    let policy = (shared.choose)(&info);
    let name = format!("{SEGMENT_PREFIX}{}:{id}", shared.channel);
    let segment = match Segment::create(&name, &shared.layout) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let errno = match &e {
                crate::segment::SegmentError::Os(io) => io.raw_os_error().unwrap_or(0),
                _ => 0,
            };
            refuse(
                shared,
                &sock,
                &handshake::encode_refusal(&Refusal::Resources { errno }),
            );
            return Err(format!("segment: {e}"));
        }
    };
    segment.write_method_table(&[&shared.channel, &shared.ty.name, &info.label]);
    let counters = SubCounters::create(segment.clone(), id, policy, shared.ty.fingerprint);
    let (ours, theirs) = Doorbell::pair().map_err(|e| format!("doorbell: {e}"))?;
    let max_frame = isocall_ringbuf::max_payload(shared.layout.ring_capacity) as u32;
    let msg = hello::encode_hello(id, &shared.ty, max_frame, shared.pool.is_some());
    let mut fds = vec![segment.fd(), theirs.as_fd()];
    if let Some((mem, _)) = &shared.pool {
        fds.push(mem.fd());
    }
    send_with_fds(sock.as_fd(), &msg, &fds, deadline).map_err(|e| format!("hello: {e}"))?;
    drop(theirs);
    let (n, _) = recv_message(sock.as_fd(), &mut buf, 0, deadline, stop)
        .map_err(|e| format!("subscriber ready: {e}"))?;
    match buf[..n].first() {
        Some(&READY) => {}
        Some(&ABORT) => {
            let e = HandshakeError::Aborted {
                reason: String::from_utf8_lossy(&buf[1..n]).into_owned(),
            };
            return Err(e.to_string());
        }
        Some(&tag) => return Err(HandshakeError::UnexpectedTag { tag }.to_string()),
        None => return Err(HandshakeError::Closed.to_string()),
    }
    let conn = Conn::attach(segment, Side::Server, ours, shared.strategy, sock, cred)
        .map_err(|e| format!("connection: {e}"))?;
    Ok(Some((info, conn, policy, counters, req.history, lease)))
}
