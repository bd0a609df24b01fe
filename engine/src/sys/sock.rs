//! Unix `SOCK_SEQPACKET` sockets: the connection's control channel. A
//! seqpacket socket keeps message boundaries (one handshake message is one
//! `recvmsg`), carries descriptors, reports the peer's credentials, and
//! reads 0 bytes once the peer is gone, which is how a side learns that the
//! other process died.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::net::{
    AddressFamily, SocketAddrUnix, SocketFlags, SocketType, accept_with, bind, connect, listen,
    socket_with, sockopt,
};

use super::fd::{poll_readable, recv_with_fds};

/// Where a server listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SocketName {
    /// A path in the file system (the socket file is created by `bind`).
    Path(PathBuf),
    /// A name in Linux's abstract namespace (no file; gone with the
    /// listener).
    Abstract(String),
}

impl SocketName {
    fn addr(&self) -> io::Result<SocketAddrUnix> {
        Ok(match self {
            SocketName::Path(p) => SocketAddrUnix::new(p.as_path())?,
            SocketName::Abstract(n) => SocketAddrUnix::new_abstract_name(n.as_bytes())?,
        })
    }
}

impl std::fmt::Display for SocketName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketName::Path(p) => write!(f, "{}", p.display()),
            SocketName::Abstract(n) => write!(f, "@{n}"),
        }
    }
}

fn new_socket(flags: SocketFlags) -> io::Result<OwnedFd> {
    Ok(socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | flags,
        None,
    )?)
}

/// A connected pair of `SOCK_SEQPACKET` sockets (close-on-exec): how a
/// supervisor talks to the child it started.
///
/// # Errors
///
/// The OS refused the sockets.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Whether `fd` is a Unix `SOCK_SEQPACKET` socket.
pub fn is_seqpacket(fd: BorrowedFd<'_>) -> bool {
    sockopt::socket_type(fd).is_ok_and(|t| t == SocketType::SEQPACKET)
}

/// Binds and listens on `name`, non-blocking (an `accept` with nothing
/// queued fails with `WouldBlock` instead of waiting). A socket file left
/// by a dead server (no one accepts on it) is replaced; one a live server
/// listens on is not.
///
/// # Errors
///
/// `AddrInUse` naming the socket when a live server holds it; other OS
/// errors of `socket`, `bind`, `listen`.
pub fn listen_seqpacket(name: &SocketName) -> io::Result<OwnedFd> {
    let addr = name.addr()?;
    let fd = new_socket(SocketFlags::NONBLOCK)?;
    match bind(&fd, &addr) {
        Ok(()) => {}
        Err(rustix::io::Errno::ADDRINUSE) => {
            let SocketName::Path(path) = name else {
                return Err(in_use(name));
            };
            // Is anyone there? A refused connection means a stale file.
            match connect_seqpacket(name) {
                Ok(_) => return Err(in_use(name)),
                Err(e)
                    if e.raw_os_error() == Some(rustix::io::Errno::CONNREFUSED.raw_os_error()) =>
                {
                    std::fs::remove_file(path)?;
                    bind(&fd, &addr)?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e.into()),
    }
    listen(&fd, 128)?;
    Ok(fd)
}

fn in_use(name: &SocketName) -> io::Error {
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("a live server already listens on {name}"),
    )
}

/// Connects to a listening seqpacket socket.
///
/// # Errors
///
/// The OS error of `connect` (`NotFound` for a missing path,
/// `ConnectionRefused` when no one listens).
pub fn connect_seqpacket(name: &SocketName) -> io::Result<OwnedFd> {
    let fd = new_socket(SocketFlags::empty())?;
    connect(&fd, &name.addr()?)?;
    Ok(fd)
}

/// Accepts one connection (close-on-exec).
///
/// # Errors
///
/// The OS error of `accept`: `WouldBlock` when none is queued on a
/// non-blocking listener, `EMFILE`/`ENFILE` when out of descriptors.
pub fn accept_seqpacket(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(accept_with(listener, SocketFlags::CLOEXEC)?)
}

/// Receives one message with up to `max_fds` descriptors, waiting until
/// `deadline`, or until `stop` (a private eventfd) is readable.
///
/// A peer that closed its end with messages of ours unread makes the
/// kernel report `ECONNRESET` once, before the messages the peer sent
/// before it closed (a server that refuses a client closes at once, its
/// refusal sent and the client's hello unread): those are still received;
/// the reset is returned only if none is left.
///
/// # Errors
///
/// `TimedOut` at the deadline; `ConnectionAborted` when `stop` rang;
/// `UnexpectedEof` if the peer closed; `ConnectionReset` if it closed with
/// our messages unread and sent nothing before; as
/// [`recv_with_fds`](super::recv_with_fds) otherwise.
pub fn recv_message(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    deadline: Instant,
    stop: Option<BorrowedFd<'_>>,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut fds = vec![sock.as_fd()];
    fds.extend(stop);
    // The reset the kernel reported (once: reading it clears it).
    let mut reset: Option<io::Error> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left == Duration::ZERO {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer before the deadline",
            ));
        }
        match poll_readable(&fds, Some(left)) {
            Ok(r) if r.get(1) == Some(&true) => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "stopped while waiting for the peer",
                ));
            }
            Ok(r) if r.first() == Some(&true) => {}
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        match recv_with_fds(sock, buf, max_fds) {
            Ok((0, _)) => {
                return Err(reset.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the socket")
                }));
            }
            Ok(got) => return Ok(got),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && reset.is_none() => {
                reset = Some(e);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Removes a socket file (a path name) when the listener goes away.
pub fn unlink_socket(name: &SocketName) {
    if let SocketName::Path(p) = name {
        let _ = std::fs::remove_file(Path::new(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn what_a_peer_sent_before_a_close_that_resets_is_still_received() {
        let (a, b) = seqpacket_pair().unwrap();
        super::super::send_with_fds(a.as_fd(), b"hello", &[], soon()).unwrap();
        super::super::send_with_fds(b.as_fd(), b"refused", &[], soon()).unwrap();
        // Closed with our hello unread: the kernel reports a reset first.
        drop(b);
        let mut buf = [0u8; 16];
        let (n, _) = recv_message(a.as_fd(), &mut buf, 0, soon(), None).unwrap();
        assert_eq!(&buf[..n], b"refused");
        let e = recv_message(a.as_fd(), &mut buf, 0, soon(), None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");

        // Nothing sent before the close: the reset is the error.
        let (a, b) = seqpacket_pair().unwrap();
        super::super::send_with_fds(a.as_fd(), b"hello", &[], soon()).unwrap();
        drop(b);
        let e = recv_message(a.as_fd(), &mut buf, 0, soon(), None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    }
}
