//! The part of a connection both ends build the same way once the
//! handshake gave them a segment and a doorbell: this side's sender and
//! receiver, its view of the blob pool, and the watch on the peer.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use isocall_blob::Pool;
use isocall_ringbuf::SharedRegion;

use crate::WaitStrategy;
use crate::endpoint::{EndpointError, Receiver, Sender, endpoint};
use crate::liveness::{Liveness, PeerWatch, Watched};
use crate::segment::{Segment, SegmentError, Side};
use crate::sys::{Doorbell, PeerCred, peer_pidfd};

/// One side of an established connection.
pub(crate) struct Link {
    pub(crate) tx: Sender,
    pub(crate) rx: Receiver,
    pub(crate) pool: Option<Arc<Pool<SharedRegion>>>,
    pub(crate) liveness: Liveness,
    pub(crate) doorbell: Arc<Doorbell>,
    /// Dropped before the socket: the watch thread, then the socket (the
    /// peer's hang-up).
    pub(crate) watch: PeerWatch,
    pub(crate) sock: OwnedFd,
}

/// Why a link could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error("peer watch: {0}")]
    Io(#[from] std::io::Error),
}

impl Link {
    /// Builds `side`'s link on `segment`: attaches this side, its sender
    /// and receiver, opens the pool, and starts the watch on the peer
    /// (`peer` are the socket's credentials: its pidfd is watched too).
    pub(crate) fn attach(
        segment: Segment,
        side: Side,
        doorbell: Doorbell,
        strategy: WaitStrategy,
        sock: OwnedFd,
        peer: &PeerCred,
    ) -> Result<Link, LinkError> {
        let segment = Arc::new(segment);
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
        let pool = segment.blob_pool(side)?.map(Arc::new);
        let watched = Watched {
            sock: Some(sock.try_clone()?),
            pidfd: peer_pidfd(sock.as_fd(), peer),
        };
        let watch = PeerWatch::connection(
            watched,
            liveness.clone(),
            segment.clone(),
            side,
            Some(doorbell.clone()),
        )?;
        Ok(Link {
            tx,
            rx,
            pool,
            liveness,
            doorbell,
            watch,
            sock,
        })
    }
}
