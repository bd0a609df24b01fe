//! Stream sockets (TCP, Unix `SOCK_STREAM`) for the socket transport.
//!
//! Every socket here is non-blocking and close-on-exec. Nothing waits past
//! a deadline: a connect that the listener's backlog holds up waits in
//! `poll` until the deadline; a send never waits (`MSG_DONTWAIT`) and never
//! raises `SIGPIPE` (`MSG_NOSIGNAL`: a library must not kill a C host
//! program whose peer hung up); a receive never waits.

use std::io;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvFlags, SendAncillaryBuffer, SendFlags, Shutdown, SocketAddrUnix,
    SocketFlags, SocketType, accept_with, bind, connect, listen, recv, send, sendmsg, shutdown,
    socket_with, sockopt,
};

/// Where a stream socket connects or listens.
#[derive(Clone, Copy, Debug)]
pub enum StreamTarget<'a> {
    /// An IPv4 or IPv6 address and port.
    Inet(SocketAddr),
    /// A Unix socket at a path.
    UnixPath(&'a Path),
    /// A Unix socket in Linux's abstract namespace (the name without the
    /// leading NUL).
    UnixAbstract(&'a [u8]),
}

impl StreamTarget<'_> {
    fn family(&self) -> AddressFamily {
        match self {
            StreamTarget::Inet(SocketAddr::V4(_)) => AddressFamily::INET,
            StreamTarget::Inet(SocketAddr::V6(_)) => AddressFamily::INET6,
            _ => AddressFamily::UNIX,
        }
    }

    fn unix(&self) -> io::Result<Option<SocketAddrUnix>> {
        Ok(match self {
            StreamTarget::Inet(_) => None,
            StreamTarget::UnixPath(p) => Some(SocketAddrUnix::new(*p)?),
            StreamTarget::UnixAbstract(n) => Some(SocketAddrUnix::new_abstract_name(n)?),
        })
    }

    fn bind_to(&self, fd: &OwnedFd) -> Result<(), Errno> {
        match self {
            StreamTarget::Inet(a) => bind(fd, a),
            _ => bind(fd, &self.unix().map_err(|_| Errno::INVAL)?.expect("unix")),
        }
    }

    fn connect_to(&self, fd: &OwnedFd) -> Result<(), Errno> {
        match self {
            StreamTarget::Inet(a) => connect(fd, a),
            _ => connect(fd, &self.unix().map_err(|_| Errno::INVAL)?.expect("unix")),
        }
    }
}

fn timespec(t: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    }
}

fn new_stream(family: AddressFamily) -> io::Result<OwnedFd> {
    Ok(socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// Connects a new non-blocking stream socket to `target`, waiting in
/// `poll` no later than `deadline` for the connection to complete (TCP's
/// handshake, or room in a Unix listener's backlog). TCP sockets get
/// `TCP_NODELAY`.
///
/// # Errors
///
/// `TimedOut` at the deadline; the OS error of the connection otherwise
/// (`ConnectionRefused`, `NotFound` for a missing path, ...).
pub fn connect_stream(target: StreamTarget<'_>, deadline: Instant) -> io::Result<OwnedFd> {
    let fd = new_stream(target.family())?;
    let unix = !matches!(target, StreamTarget::Inet(_));
    loop {
        match target.connect_to(&fd) {
            Ok(()) => break,
            Err(Errno::INTR) => continue,
            // A Unix listener's backlog is full: try again when it may
            // have room (there is no completion to wait for).
            Err(Errno::AGAIN) if unix => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(timed_out("the listener's backlog stayed full"));
                }
                // Poll the socket for nothing in particular: a short nap
                // bounded by the deadline, without a sleep call.
                let nap = left.min(Duration::from_millis(5));
                let mut pfd = [PollFd::new(&fd, PollFlags::empty())];
                let _ = poll(&mut pfd, Some(&timespec(nap)));
            }
            Err(Errno::INPROGRESS) => {
                wait_connected(&fd, deadline)?;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !unix {
        sockopt::set_tcp_nodelay(&fd, true)?;
    }
    Ok(fd)
}

/// Waits for a non-blocking TCP connect to complete and reports its
/// outcome (`SO_ERROR`).
fn wait_connected(fd: &OwnedFd, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out("the connection was not made before the deadline"));
        }
        let mut pfd = [PollFd::new(fd, PollFlags::OUT)];
        match poll(&mut pfd, Some(&timespec(left))) {
            Ok(0) | Err(Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        return match sockopt::socket_error(fd)? {
            Ok(()) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
}

fn timed_out(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, msg.to_string())
}

/// Binds and listens on `target`, non-blocking. A Unix socket file left by
/// a dead server (no one accepts on it) is replaced; one a live server
/// listens on is not. TCP listeners set `SO_REUSEADDR` (a restarted server
/// binds again at once).
///
/// # Errors
///
/// `AddrInUse` when a live server holds the address; other OS errors of
/// `socket`, `bind`, `listen`.
pub fn listen_stream(target: StreamTarget<'_>) -> io::Result<OwnedFd> {
    let fd = new_stream(target.family())?;
    if let StreamTarget::Inet(a) = target {
        sockopt::set_socket_reuseaddr(&fd, true)?;
        if a.is_ipv6() {
            // `[::]` means IPv6 only: an IPv4 wildcard is its own address.
            sockopt::set_ipv6_v6only(&fd, true)?;
        }
    }
    match target.bind_to(&fd) {
        Ok(()) => {}
        Err(Errno::ADDRINUSE) => {
            let StreamTarget::UnixPath(path) = target else {
                return Err(Errno::ADDRINUSE.into());
            };
            // Is anyone there? A refused connection means a stale file.
            match connect_stream(target, Instant::now() + Duration::from_millis(100)) {
                Ok(_) => return Err(Errno::ADDRINUSE.into()),
                Err(e) if e.raw_os_error() == Some(Errno::CONNREFUSED.raw_os_error()) => {
                    std::fs::remove_file(path)?;
                    target.bind_to(&fd)?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e.into()),
    }
    listen(&fd, 128)?;
    Ok(fd)
}

/// Accepts one connection, non-blocking and close-on-exec; `None` when none
/// is queued. TCP connections get `TCP_NODELAY`.
///
/// # Errors
///
/// The OS error of `accept` (`EMFILE`/`ENFILE` when out of descriptors).
pub fn accept_stream(listener: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    loop {
        match accept_with(listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
            Ok(fd) => {
                if is_inet(fd.as_fd()) {
                    sockopt::set_tcp_nodelay(&fd, true)?;
                }
                return Ok(Some(fd));
            }
            Err(Errno::AGAIN) => return Ok(None),
            // The client gave up between its connect and our accept.
            Err(Errno::INTR) | Err(Errno::CONNABORTED) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `fd` is an IPv4 or IPv6 socket.
pub fn is_inet(fd: BorrowedFd<'_>) -> bool {
    matches!(
        sockopt::socket_domain(fd),
        Ok(AddressFamily::INET) | Ok(AddressFamily::INET6)
    )
}

/// Whether `fd` is a stream socket.
pub fn is_stream(fd: BorrowedFd<'_>) -> bool {
    sockopt::socket_type(fd).is_ok_and(|t| t == SocketType::STREAM)
}

/// Makes a stream socket non-blocking, and sets `TCP_NODELAY` on TCP.
///
/// # Errors
///
/// `InvalidInput` if `fd` is not a stream socket; the OS error otherwise.
pub fn prepare_stream(fd: BorrowedFd<'_>) -> io::Result<()> {
    if !is_stream(fd) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a stream socket",
        ));
    }
    rustix::io::ioctl_fionbio(fd, true)?;
    if is_inet(fd) {
        sockopt::set_tcp_nodelay(fd, true)?;
    }
    Ok(())
}

/// Whether `fd` is a Unix socket.
pub fn is_unix(fd: BorrowedFd<'_>) -> bool {
    matches!(sockopt::socket_domain(fd), Ok(AddressFamily::UNIX))
}

/// Whether `fd` is a socket that listens and accepts: `SO_ACCEPTCONN`,
/// and no hang-up (another holder may have shut it down: TCP then stops
/// listening; a Unix socket still says it listens, but refuses every
/// connection and polls as hung up).
pub fn is_listening(fd: BorrowedFd<'_>) -> bool {
    // A hang-up shows at once, so the look does not wait (an `EINTR`
    // reads as none: the next look sees it).
    sockopt::socket_acceptconn(fd).unwrap_or(false)
        && super::poll_ready(&[(fd, super::Ready::HangUp)], Some(Duration::ZERO))
            .is_ok_and(|r| !r[0])
}

/// Makes `fd` non-blocking (a flag of the file description: every holder
/// of the description sees it).
///
/// # Errors
///
/// The OS error.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::io::ioctl_fionbio(fd, true)?)
}

/// The local IP address and port of an inet socket.
///
/// # Errors
///
/// The OS error; `InvalidInput` for a socket that is not inet.
pub fn local_inet_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    SocketAddr::try_from(rustix::net::getsockname(fd)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not an inet socket"))
}

/// The peer's IP address and port, for an inet socket (`None` otherwise).
pub fn peer_inet_addr(fd: BorrowedFd<'_>) -> Option<SocketAddr> {
    rustix::net::getpeername(fd)
        .ok()
        .flatten()
        .and_then(|a| SocketAddr::try_from(a).ok())
}

/// Sends as much of `bufs` as the socket takes now, in one `sendmsg` (a
/// `writev`); never waits, never raises `SIGPIPE`.
///
/// # Errors
///
/// `WouldBlock` when the socket takes nothing now; `BrokenPipe` or
/// `ConnectionReset` once the peer is gone; other OS errors.
pub fn send_nowait(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    if let [one] = bufs {
        // One buffer (the common case): `send`, which the kernel takes
        // without a message header and an iovec to copy in.
        loop {
            match send(fd, one, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
                Err(Errno::INTR) => continue,
                other => return Ok(other?),
            }
        }
    }
    loop {
        match sendmsg(
            fd,
            bufs,
            &mut SendAncillaryBuffer::default(),
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        ) {
            Err(Errno::INTR) => continue,
            other => return Ok(other?),
        }
    }
}

/// Receives what is there into `buf`, without waiting; 0 means the peer
/// closed its end (for a non-empty `buf`).
///
/// # Errors
///
/// `WouldBlock` when nothing is there; `ConnectionReset`; other OS errors.
pub fn recv_nowait(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match recv(fd, &mut *buf, RecvFlags::DONTWAIT) {
            Err(Errno::INTR) => continue,
            other => return Ok(other?.0),
        }
    }
}

/// Makes reads of `fd` that do not pass `MSG_DONTWAIT` wait, at most
/// `timeout` each (`SO_RCVTIMEO`), for [`recv_wait`]: a caller then waits
/// for its peer in one `recv` instead of `poll` and `recv`. Every other
/// send and receive here passes `MSG_DONTWAIT`, so none of them waits. For
/// a socket of this process's own only (the flag lives in the file
/// description).
///
/// # Errors
///
/// The OS error of `ioctl` or `setsockopt`.
pub fn block_reads(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    sockopt::set_socket_timeout(fd, sockopt::Timeout::Recv, Some(timeout))?;
    rustix::io::ioctl_fionbio(fd, false)?;
    Ok(())
}

/// Receives into `buf`, waiting for bytes at most the timeout
/// [`block_reads`] set (a socket without it does not wait); 0 means the
/// peer closed its end (for a non-empty `buf`).
///
/// # Errors
///
/// `WouldBlock` when the timeout passed, or a signal came, with nothing
/// there; `ConnectionReset`; other OS errors.
pub fn recv_wait(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    match recv(fd, buf, RecvFlags::empty()) {
        Err(Errno::INTR) => Err(io::ErrorKind::WouldBlock.into()),
        other => Ok(other?.0),
    }
}

/// What [`poll_stream`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamReady {
    /// Bytes (or the peer's end, or an error) to read.
    pub readable: bool,
    /// Room to write (or an error to find by writing).
    pub writable: bool,
}

/// Waits until `fd` is readable when `read` is set, or writable when
/// `write` is set, or `timeout` passes (`None`: no limit). A hang-up or an
/// error counts as both (the next read or write reports it). `EINTR`
/// returns nothing ready.
///
/// # Errors
///
/// A failure of `poll` other than `EINTR`.
pub fn poll_stream(
    fd: BorrowedFd<'_>,
    read: bool,
    write: bool,
    timeout: Option<Duration>,
) -> io::Result<StreamReady> {
    let mut flags = PollFlags::empty();
    if read {
        flags |= PollFlags::IN;
    }
    if write {
        flags |= PollFlags::OUT;
    }
    let mut pfd = [PollFd::new(&fd, flags)];
    let ts = timeout.map(timespec);
    match poll(&mut pfd, ts.as_ref()) {
        Ok(_) => {
            let r = pfd[0].revents();
            let gone = r.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL);
            Ok(StreamReady {
                readable: gone || r.contains(PollFlags::IN),
                writable: gone || r.contains(PollFlags::OUT),
            })
        }
        Err(Errno::INTR) => Ok(StreamReady::default()),
        Err(e) => Err(e.into()),
    }
}

/// Shuts both directions of a stream socket down: the peer reads its end,
/// and this process's other users of the socket see it closed. Errors (a
/// socket already shut down or never connected) are ignored.
pub fn shutdown_stream(fd: BorrowedFd<'_>) {
    let _ = shutdown(fd, Shutdown::Both);
}

/// Shuts a stream socket down for writing only: the peer reads its end
/// once it has read what was sent; this side still reads. Errors are
/// ignored, as for [`shutdown_stream`].
pub fn shutdown_stream_write(fd: BorrowedFd<'_>) {
    let _ = shutdown(fd, Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_pair_connects_sends_and_sees_the_close() {
        let l = listen_stream(StreamTarget::Inet("127.0.0.1:0".parse().unwrap())).unwrap();
        let addr = local_inet_addr(l.as_fd()).unwrap();
        assert_ne!(addr.port(), 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let c = connect_stream(StreamTarget::Inet(addr), deadline).unwrap();
        assert!(is_inet(c.as_fd()) && is_stream(c.as_fd()));
        let s = loop {
            if let Some(s) = accept_stream(l.as_fd()).unwrap() {
                break s;
            }
            poll_stream(l.as_fd(), true, false, Some(Duration::from_secs(5))).unwrap();
        };
        assert_eq!(peer_inet_addr(s.as_fd()).map(|a| a.ip()), Some(addr.ip()));
        let mut buf = [0u8; 8];
        let e = recv_nowait(s.as_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(
            send_nowait(c.as_fd(), &[IoSlice::new(b"ab"), IoSlice::new(b"cd")]).unwrap(),
            4
        );
        assert!(
            poll_stream(s.as_fd(), true, false, Some(Duration::from_secs(5)))
                .unwrap()
                .readable
        );
        assert_eq!(recv_nowait(s.as_fd(), &mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"abcd");
        drop(c);
        poll_stream(s.as_fd(), true, false, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(recv_nowait(s.as_fd(), &mut buf).unwrap(), 0);
        // Writing to a closed peer is an error, not a SIGPIPE.
        let mut saw_error = false;
        for _ in 0..100 {
            if send_nowait(s.as_fd(), &[IoSlice::new(b"x")]).is_err() {
                saw_error = true;
                break;
            }
            poll_stream(s.as_fd(), false, true, Some(Duration::from_millis(10))).unwrap();
        }
        assert!(saw_error);
    }

    #[test]
    fn nobody_listening_is_refused_and_a_stale_unix_file_is_replaced() {
        let l = listen_stream(StreamTarget::Inet("127.0.0.1:0".parse().unwrap())).unwrap();
        let addr = local_inet_addr(l.as_fd()).unwrap();
        drop(l);
        let deadline = Instant::now() + Duration::from_secs(5);
        let e = connect_stream(StreamTarget::Inet(addr), deadline).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);

        let dir = std::env::temp_dir().join(format!("isocall-sys-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let l = listen_stream(StreamTarget::UnixPath(&path)).unwrap();
        let e = listen_stream(StreamTarget::UnixPath(&path)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(l);
        // The file stays behind a dead listener: binding again replaces it.
        let _l = listen_stream(StreamTarget::UnixPath(&path)).unwrap();
        let c = connect_stream(StreamTarget::UnixPath(&path), deadline).unwrap();
        assert!(!is_inet(c.as_fd()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
