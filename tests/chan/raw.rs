//! Channel peers that run the handshake themselves, through `isocall::raw`
//! and `isocall::channel::hello`, so they can break the protocol: a raw
//! subscriber (its segment mapped whole, to scribble on), and a raw
//! publisher (its own hello, segment, doorbell and blob pool, then
//! whatever frames it likes).

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use isocall::SocketName;
use isocall::blob::{Party, Pool, PoolConfig};
use isocall::channel::hello::{self, HELLO};
use isocall::raw::handshake::READY;
use isocall::raw::sys::{
    Doorbell, SharedMem, connect_seqpacket, listen_seqpacket, recv_message, send_with_fds,
};
use isocall::raw::{Segment, SegmentLayout, Side};
use isocall::ring::SharedRegion;
use isocall::rpc::TypeSig;

use crate::chan::Item;
use crate::hostile::raw::{RawLink, accept_hello};

const HANDSHAKE: Duration = Duration::from_secs(10);

/// A subscriber that ran the handshake itself.
pub struct RawSub {
    /// Its id on the channel.
    pub id: u32,
    /// The connection (its `tx` writes the ring back, its `rx` reads the
    /// publisher's).
    pub link: RawLink,
}

/// Subscribes to `socket` as an [`Item`] subscriber labelled `label`.
pub fn subscribe(socket: &SocketName, label: &str) -> Result<RawSub, String> {
    let deadline = Instant::now() + HANDSHAKE;
    let sock = connect_seqpacket(socket).map_err(|e| format!("connect: {e}"))?;
    let msg = hello::encode_subscribe(&TypeSig::of::<Item>(), 0, label);
    send_with_fds(sock.as_fd(), &msg, &[], deadline).map_err(|e| format!("hello: {e}"))?;
    let mut buf = vec![0u8; 64 << 10];
    let (n, mut fds) =
        recv_message(sock.as_fd(), &mut buf, 3, deadline, None).map_err(|e| format!("{e}"))?;
    if buf[0] != HELLO {
        return Err(format!("refused (tag {:#04x})", buf[0]));
    }
    let accept = hello::decode_hello(&buf[1..n]).map_err(|e| format!("hello: {e}"))?;
    // The pool's memfd, if one came, is not mapped: this peer attacks
    // its segment only.
    if accept.pool {
        fds.pop();
    }
    let bell = Doorbell::from_peer_end(fds.pop().ok_or("no doorbell")?)
        .map_err(|e| format!("doorbell: {e}"))?;
    let segment = Segment::open(fds.pop().ok_or("no memfd")?).map_err(|e| format!("{e}"))?;
    let link = RawLink::new(sock, segment, bell, Side::Client)?;
    send_with_fds(link.sock.as_fd(), &[READY], &[], deadline).map_err(|e| format!("{e}"))?;
    Ok(RawSub {
        id: accept.subscriber,
        link,
    })
}

/// A publisher of [`Item`] that runs the handshake itself, with a blob
/// pool.
pub struct RawPub {
    listener: OwnedFd,
    /// The pool's memory (sent with each hello).
    pub pool_mem: SharedMem,
    /// The publisher's view of the pool (party 0).
    pub pool: Pool<SharedRegion>,
}

impl RawPub {
    /// Listens on `socket`.
    pub fn listen(socket: &SocketName) -> RawPub {
        let config = PoolConfig::new().class(4096, 16);
        let len = config.region_size().expect("pool size");
        let pool_mem = SharedMem::create_with_regions("isocall:hostile:chanpool", len, 0)
            .expect("pool memory");
        let region = pool_mem.region(0, len).expect("writable");
        let pool = Pool::create_as(region, &config, Party::PUBLISHER).expect("pool");
        RawPub {
            listener: listen_seqpacket(socket).expect("listen"),
            pool_mem,
            pool,
        }
    }

    /// Accepts one subscriber, gives it id 1 and a segment of `ring`
    /// bytes a ring.
    pub fn accept(&mut self, ring: usize) -> Result<RawLink, String> {
        let mut buf = [0u8; 1024];
        let (sock, n, deadline) = accept_hello(&self.listener, "subscriber", &mut buf)?;
        hello::decode_subscribe(&buf[..n]).map_err(|e| format!("subscriber hello: {e}"))?;
        let layout = SegmentLayout {
            ring_capacity: ring,
            ..SegmentLayout::default()
        };
        let segment =
            Segment::create("isocall:hostile:chan:1", &layout).map_err(|e| format!("{e}"))?;
        let (ours, theirs) = Doorbell::pair().map_err(|e| format!("doorbell: {e}"))?;
        let max = isocall::ring::max_payload(ring) as u32;
        let msg = hello::encode_hello(1, &TypeSig::of::<Item>(), max, true);
        send_with_fds(
            sock.as_fd(),
            &msg,
            &[segment.fd(), theirs.as_fd(), self.pool_mem.fd()],
            deadline,
        )
        .map_err(|e| format!("hello: {e}"))?;
        drop(theirs);
        let (n, _) = recv_message(sock.as_fd(), &mut buf, 0, deadline, None)
            .map_err(|e| format!("ready: {e}"))?;
        if n == 0 || buf[0] != READY {
            return Err(format!(
                "the subscriber did not say ready ({:?})",
                &buf[..n]
            ));
        }
        RawLink::new(sock, segment, ours, Side::Server)
    }
}
