//! One subscriber's connection, as both ends hold it once the handshake
//! gave them a segment and a doorbell: this side's sender and receiver on
//! the segment's rings, the peer's liveness, and the watch on the peer
//! (its socket's hang-up, its pidfd, its lifeline), as a call connection
//! has them.
//!
//! The publisher is the segment's server side: it writes the ring to the
//! subscriber (`s2c`). The ring back (`c2s`) carries nothing today; it
//! costs no memory until written (segments are committed as touched).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::WaitStrategy;
use crate::endpoint::{Receiver, Sender, endpoint};
use crate::liveness::{Liveness, PeerWatch, Watched};
use crate::segment::{SIDE_CLOSED, Segment, Side};
use crate::sys::{Doorbell, PeerCred, PidFd, Ready, peer_pidfd, poll_ready};

/// One side of a subscriber's connection. Fields drop in order: the
/// watch thread stops (and lets go of this side's lifeline) before the
/// socket closes (the peer's hang-up).
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) tx: Sender,
    pub(crate) rx: Receiver,
    pub(crate) liveness: Liveness,
    pub(crate) segment: Arc<Segment>,
    /// `None` once this side let go of its lifeline (see
    /// [`let_go`](Self::let_go)).
    watch: Option<PeerWatch>,
    /// The peer's pidfd, to learn of its exit once the watch is gone.
    pidfd: Option<PidFd>,
    pub(crate) sock: OwnedFd,
}

/// Why a connection could not be built on a segment.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error(transparent)]
    Endpoint(#[from] crate::endpoint::EndpointError),
    #[error("peer watch: {0}")]
    Io(#[from] std::io::Error),
}

impl Conn {
    /// Builds `side`'s connection on `segment`: attaches this side, its
    /// sender and receiver, and starts the watch on the peer (`peer` are
    /// the socket's credentials: its pidfd is watched too).
    pub(crate) fn attach(
        segment: Arc<Segment>,
        side: Side,
        doorbell: Doorbell,
        strategy: WaitStrategy,
        sock: OwnedFd,
        peer: &PeerCred,
    ) -> Result<Conn, ConnError> {
        segment.attach_side(side);
        let doorbell = Arc::new(doorbell);
        let liveness = Liveness::connection(segment.clone(), side);
        let (tx, rx) = endpoint(
            segment.clone(),
            side,
            doorbell.clone(),
            strategy,
            liveness.clone(),
        )?;
        let watched = Watched::socket(&sock, peer)?;
        let pidfd = peer_pidfd(sock.as_fd(), peer);
        let watch = PeerWatch::connection(
            watched,
            liveness.clone(),
            segment.clone(),
            side,
            Some(doorbell.clone()),
        )?;
        Ok(Conn {
            tx,
            rx,
            liveness,
            segment,
            watch: Some(watch),
            pidfd,
            sock,
        })
    }

    /// Lets go of this side's lifeline and stops watching the peer, but
    /// keeps the socket open: to the peer this side looks closed (its
    /// lifeline reads gone, at once), while this side can still learn,
    /// from [`peer_left`](Self::peer_left), when the peer has let go in
    /// turn.
    pub(crate) fn let_go(&mut self) {
        self.watch = None;
    }

    /// Whether the peer closed its side of the segment cleanly (its word:
    /// a subscriber says so once it holds nothing of the channel's pool).
    pub(crate) fn peer_closed_cleanly(&self, peer: Side) -> bool {
        self.segment.side_state(peer).state == SIDE_CLOSED
    }

    /// Whether the peer's process has exited, asked without waiting (false
    /// if the kernel gave no pidfd to ask).
    pub(crate) fn peer_exited(&self) -> bool {
        self.pidfd
            .as_ref()
            .is_some_and(|p| p.has_exited().unwrap_or(true))
    }

    /// The peer's pidfd, taken out (to watch for its exit after the
    /// connection is gone).
    pub(crate) fn take_pidfd(&mut self) -> Option<PidFd> {
        self.pidfd.take()
    }

    /// Whether the peer closed its end of the socket or exited, asked
    /// without waiting.
    pub(crate) fn peer_left(&self) -> bool {
        let mut fds = vec![(self.sock.as_fd(), Ready::HangUp)];
        if let Some(p) = &self.pidfd {
            fds.push((p.as_fd(), Ready::Readable));
        }
        match poll_ready(&fds, Some(std::time::Duration::ZERO)) {
            Ok(r) => r.iter().any(|&x| x),
            // A poll that fails cannot tell: call the peer gone, as the
            // watch does.
            Err(_) => true,
        }
    }
}
