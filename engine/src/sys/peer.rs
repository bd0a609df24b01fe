//! Who is at the other end of a Unix socket: `SO_PEERCRED` and
//! `SO_PEERPIDFD`, read into plain integers.
//!
//! This module allows `unsafe` for the two `getsockopt` calls only. Their
//! contract: the kernel writes at most the length we pass into a local we
//! own, and reports how much it wrote; we read only what it wrote.
//!
//! The pid is not trusted to be non-zero: a peer in another PID namespace
//! (a container) has no pid in ours, and the kernel reports 0.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::fd::PidFd;

/// The credentials of the process at the other end of a socket, as the
/// kernel recorded them when the connection was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerCred {
    /// Its process id, if it has one in this PID namespace.
    pub pid: Option<u32>,
    /// Its user id.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
}

impl PeerCred {
    /// What a peer over TCP is known as: no credentials (no pid here, uid
    /// and gid `u32::MAX`, the "no user" id). Its identity, if any, is its
    /// TLS certificate.
    pub const REMOTE: PeerCred = PeerCred {
        pid: None,
        uid: u32::MAX,
        gid: u32::MAX,
    };
}

/// `SO_PEERPIDFD` (Linux 6.5; the same number on every architecture we
/// build for), spelt here because the libc crate does not export it for
/// every target.
const SO_PEERPIDFD: libc::c_int = 77;

/// The credentials of the peer of a connected Unix socket (`SO_PEERCRED`).
///
/// # Errors
///
/// The OS error of `getsockopt` (e.g. `ENOTCONN`, or `EINVAL` when it
/// wrote less than a whole `ucred`).
pub fn peer_cred(sock: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a live, writable `ucred` and `len` holds its size,
    // so the kernel writes at most that many bytes into it; `len` is
    // updated with what it wrote, checked below.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("SO_PEERCRED wrote {len} bytes"),
        ));
    }
    Ok(PeerCred {
        pid: u32::try_from(cred.pid).ok().filter(|&p| p != 0),
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// A pidfd on the peer of a connected Unix socket: from `SO_PEERPIDFD`
/// (Linux 6.5, immune to pid reuse), else from the pid in `cred` (which
/// a pid reused since the connection was made could fool, the best older
/// kernels allow). `None` when the peer has no pid here.
pub fn peer_pidfd(sock: BorrowedFd<'_>, cred: &PeerCred) -> Option<PidFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is a live, writable `c_int` and `len` holds its size; the
    // kernel writes at most that and updates `len`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 && len as usize == std::mem::size_of::<libc::c_int>() && fd >= 0 {
        // SAFETY: the kernel just installed `fd` in our table for us
        // (SO_PEERPIDFD returns a new descriptor), and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        return Some(PidFd::from_owned(owned));
    }
    cred.pid.and_then(|pid| PidFd::open(pid).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_socketpair_names_this_process() {
        let (a, _b) = super::super::seqpacket_pair().unwrap();
        let c = peer_cred(a.as_fd()).unwrap();
        assert_eq!(c.pid, Some(std::process::id()));
        assert_eq!(c.uid, rustix::process::getuid().as_raw());
        let pidfd = peer_pidfd(a.as_fd(), &c).expect("a pidfd on ourselves");
        assert!(!pidfd.has_exited().unwrap());
    }

    #[test]
    fn a_socket_that_is_not_connected_is_an_error() {
        let e = super::super::EventFd::new().unwrap();
        assert!(peer_cred(e.as_fd()).is_err());
    }
}
