//! Doorbells: how a side that sleeps in `poll` (an event loop, tokio, a
//! server worker) is woken by the other process.
//!
//! A connection has one doorbell pair: the two ends of a `SOCK_SEQPACKET`
//! socketpair, one per side. A side rings its peer by sending one byte on
//! its own end (the peer's end becomes readable) and sleeps by polling its
//! own end. Each end is its own open file description, so nothing the peer
//! does to its end (clearing `O_NONBLOCK`, never draining it) can make
//! this side block: every send and receive here passes `MSG_DONTWAIT`,
//! which does not depend on the descriptor's flags at all. (An eventfd
//! passed with `SCM_RIGHTS` shares one file description, and with it the
//! `O_NONBLOCK` flag: a peer could clear it, fill the counter and make the
//! next write block forever. That is why doorbells are not eventfds.)
//!
//! The same end also tells of the peer's end going away: when the peer
//! process dies its end closes and ours hangs up. And a thread of this
//! process wakes this side's sleeper for good (peer death, closing) with
//! [`Doorbell::wake_for_good`], a `shutdown(SHUT_RD)` of our own end, which
//! makes it readable from then on.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, Shutdown, SocketFlags, SocketType, recv, send, shutdown,
    socketpair,
};

use super::fd::poll_readable;

/// Most messages one [`Doorbell::drain`] reads: a peer ringing faster than
/// that only keeps the doorbell rung.
const DRAIN_AT_MOST: usize = 64;

/// One side's end of a connection's doorbell pair.
#[derive(Debug)]
pub struct Doorbell {
    end: OwnedFd,
}

impl Doorbell {
    /// A new pair: this side's doorbell, and the peer's end to pass to it
    /// (with `SCM_RIGHTS`).
    ///
    /// # Errors
    ///
    /// The OS refused the sockets (e.g. out of descriptors).
    pub fn pair() -> io::Result<(Doorbell, OwnedFd)> {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((Doorbell { end: ours }, theirs))
    }

    /// Adopts the end the peer sent.
    ///
    /// # Errors
    ///
    /// `InvalidData` if it is not a Unix seqpacket socket.
    pub fn from_peer_end(end: OwnedFd) -> io::Result<Doorbell> {
        if !super::is_seqpacket(end.as_fd()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the doorbell the peer sent is not a Unix seqpacket socket",
            ));
        }
        Ok(Doorbell { end })
    }

    /// Rings the peer. Never blocks: a doorbell the peer has not drained
    /// stays rung, and a peer that is gone is no error here (its death is
    /// learnt elsewhere).
    #[inline]
    pub fn ring_peer(&self) {
        match send(&self.end, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(_) | Err(_) => {}
        }
    }

    /// Wakes this side's sleeper, now and on every later wait: used once
    /// the connection is over (the peer died, or this side closes).
    pub fn wake_for_good(&self) {
        let _ = shutdown(&self.end, Shutdown::Read);
    }

    /// Waits until the peer rings (or hangs up, or this side was woken for
    /// good) or `timeout` passes, then drains what rang. Returns whether it
    /// rang.
    ///
    /// # Errors
    ///
    /// A failure of `poll`.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let ready = poll_readable(&[self.end.as_fd()], timeout)?[0];
        if ready {
            self.drain();
        }
        Ok(ready)
    }

    /// Reads what rang, without waiting (at most a bounded number of
    /// rings). Returns false if the doorbell is closed for good (the peer's
    /// end is gone or this side shut it): it will be readable from now on.
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 8];
        for _ in 0..DRAIN_AT_MOST {
            match recv(&self.end, &mut buf, RecvFlags::DONTWAIT) {
                Ok((0, _)) => return false,
                Ok(_) => {}
                Err(Errno::INTR) => {}
                Err(_) => return true,
            }
        }
        true
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.end.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_ring_wakes_the_peer_and_drains() {
        let (a, b) = Doorbell::pair().unwrap();
        let b = Doorbell::from_peer_end(b).unwrap();
        assert!(!b.wait(Some(Duration::ZERO)).unwrap());
        a.ring_peer();
        a.ring_peer();
        assert!(b.wait(Some(Duration::from_secs(5))).unwrap());
        assert!(!b.wait(Some(Duration::ZERO)).unwrap(), "drained");
        b.ring_peer();
        assert!(a.wait(Some(Duration::from_secs(5))).unwrap());
    }

    #[test]
    fn a_peer_that_makes_its_end_blocking_and_never_drains_cannot_block_us() {
        let (a, b) = Doorbell::pair().unwrap();
        // The peer clears O_NONBLOCK on its end (which it may: it is its
        // descriptor) and never reads; we ring far past any buffer.
        let flags = rustix::fs::fcntl_getfl(&b).unwrap();
        rustix::fs::fcntl_setfl(&b, flags - rustix::fs::OFlags::NONBLOCK).unwrap();
        for _ in 0..100_000 {
            a.ring_peer();
        }
        assert!(b.as_raw_fd() >= 0);
    }

    #[test]
    fn the_peers_death_and_a_wake_for_good_leave_it_readable() {
        let (a, b) = Doorbell::pair().unwrap();
        drop(b);
        assert!(a.wait(Some(Duration::from_secs(5))).unwrap());
        assert!(!a.drain(), "closed for good");
        let (c, _d) = Doorbell::pair().unwrap();
        c.wake_for_good();
        assert!(c.wait(Some(Duration::from_secs(5))).unwrap());
        assert!(
            c.wait(Some(Duration::from_secs(5))).unwrap(),
            "still readable"
        );
    }

    #[test]
    fn something_else_is_not_a_doorbell() {
        let e = super::super::EventFd::new().unwrap();
        let fd = e.as_fd().try_clone_to_owned().unwrap();
        assert!(Doorbell::from_peer_end(fd).is_err());
    }
}
