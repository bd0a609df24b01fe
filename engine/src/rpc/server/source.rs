//! Where a server's connections come from: a socket it listens on, or a
//! handoff socket over which another process (a supervisor, a name
//! service) passes it sockets already connected to clients.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use crate::stream::{Address, Incoming, Listener, Security, StreamError};
use crate::sys::{
    SocketName, accept_seqpacket, is_seqpacket, listen_seqpacket, recv_with_fds, send_with_fds,
    unlink_socket,
};

/// Tag of a handoff message: one connected socket, and optionally a
/// segment made ahead of need for its connection.
pub const HANDOFF: u8 = b'C';

/// Where a server gets its connections.
#[derive(Debug)]
#[non_exhaustive]
pub enum Source {
    /// A socket the server binds and accepts on.
    Listen(SocketName),
    /// A `SOCK_SEQPACKET` socket over which each message carries one
    /// socket connected to a client (a supervisor's hand-off). The server serves until
    /// the other end hangs up.
    Handoff(OwnedFd),
}

/// Passes `conn`, a socket connected to a client, to the server at the
/// other end of `handoff`, with `segment` (a segment made ahead of need,
/// which the server uses if it fits its layout).
///
/// # Errors
///
/// As [`send_with_fds`] (`TimedOut` at `deadline`, `EPIPE` if the server
/// is gone).
pub fn hand_off(
    handoff: BorrowedFd<'_>,
    conn: BorrowedFd<'_>,
    segment: Option<BorrowedFd<'_>>,
    deadline: Instant,
) -> io::Result<()> {
    let mut fds = vec![conn];
    fds.extend(segment);
    send_with_fds(handoff, &[HANDOFF], &fds, deadline)
}

/// What the accept loop reads connections from: seqpacket listeners (the
/// shared-memory names), a handoff socket, stream listeners (Unix sockets
/// plain, TCP under TLS or said open to anyone).
pub(crate) struct Conns {
    seqpacket: Vec<OwnedFd>,
    handoff: Option<OwnedFd>,
    streams: Vec<Listener>,
}

/// What the next look at the source gave.
pub(crate) enum Next {
    /// A connected socket, with a premade segment if one came.
    Conn(OwnedFd, Option<OwnedFd>),
    /// A stream connection just accepted (before any TLS handshake).
    Stream(Box<Incoming>),
    /// Nothing now (a spurious wake-up, a message without a socket).
    Nothing,
    /// The handoff peer hung up: the server is retired.
    Retired,
}

/// What a server listens on, as the builder collected it.
pub(crate) struct Plan {
    pub(crate) source: Option<Source>,
    pub(crate) shm: Vec<SocketName>,
    pub(crate) unix: Vec<Address>,
    pub(crate) tcp: Vec<Address>,
    /// The TCP listener's security (TLS, or open to anyone).
    pub(crate) tcp_security: Security,
    /// Listening sockets handed over (by a supervisor), with their
    /// addresses.
    pub(crate) adopted: Vec<(Address, OwnedFd)>,
}

impl Conns {
    /// Binds everything `plan` names; returns the sources, the shared-memory
    /// names and the stream addresses as bound (TCP ports picked).
    pub(crate) fn open(
        plan: Plan,
    ) -> Result<(Conns, Vec<SocketName>, Vec<Address>), super::ServerError> {
        let mut conns = Conns {
            seqpacket: Vec::new(),
            handoff: None,
            streams: Vec::new(),
        };
        let mut names = Vec::new();
        let mut shm = plan.shm;
        match plan.source {
            Some(Source::Listen(name)) => shm.insert(0, name),
            Some(Source::Handoff(fd)) => {
                if !is_seqpacket(fd.as_fd()) {
                    return Err(super::ServerError::BadHandoff);
                }
                conns.handoff = Some(fd);
            }
            None => {}
        }
        for name in shm {
            match listen_seqpacket(&name) {
                Ok(l) => {
                    conns.seqpacket.push(l);
                    names.push(name);
                }
                Err(source) => {
                    for n in &names {
                        unlink_socket(n);
                    }
                    return Err(super::ServerError::Listen {
                        socket: name.to_string(),
                        source,
                    });
                }
            }
        }
        // Stream listeners: the sockets handed over, then those bound here.
        let mut streams: Vec<Result<Listener, StreamError>> = Vec::new();
        for (a, fd) in plan.adopted {
            let security = if a.is_tcp() {
                plan.tcp_security.clone()
            } else {
                Security::Plain
            };
            streams.push(Listener::adopt(&a, fd, security));
        }
        for (addresses, security) in [(plan.unix, Security::Plain), (plan.tcp, plan.tcp_security)] {
            if !addresses.is_empty() {
                streams.push(Listener::bind(&addresses, security));
            }
        }
        let mut bound = Vec::new();
        for l in streams {
            match l {
                Ok(l) => {
                    bound.extend(l.addresses());
                    conns.streams.push(l);
                }
                Err(e) => {
                    for n in &names {
                        unlink_socket(n);
                    }
                    return Err(super::ServerError::Stream(e));
                }
            }
        }
        Ok((conns, names, bound))
    }

    /// The descriptors to poll, in the order [`next`](Self::next) takes
    /// their index.
    pub(crate) fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds: Vec<BorrowedFd<'_>> = self.seqpacket.iter().map(AsFd::as_fd).collect();
        fds.extend(self.handoff.as_ref().map(AsFd::as_fd));
        for l in &self.streams {
            fds.extend(l.poll_fds());
        }
        fds
    }

    /// The next connection from the source of descriptor `i` (an index
    /// into [`fds`](Self::fds)), without waiting.
    ///
    /// # Errors
    ///
    /// The OS error of `accept` (`EMFILE` and the like, which the caller
    /// backs off on).
    pub(crate) fn next(&self, mut i: usize) -> io::Result<Next> {
        if let Some(l) = self.seqpacket.get(i) {
            return match accept_seqpacket(l.as_fd()) {
                Ok(s) => Ok(Next::Conn(s, None)),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    Ok(Next::Nothing)
                }
                Err(e) => Err(e),
            };
        }
        i -= self.seqpacket.len();
        if let Some(c) = &self.handoff {
            if i == 0 {
                return handoff_next(c);
            }
            i -= 1;
        }
        for l in &self.streams {
            let n = l.poll_fds().len();
            if i < n {
                return match l.try_accept() {
                    Ok(Some(incoming)) => Ok(Next::Stream(Box::new(incoming))),
                    Ok(None) => Ok(Next::Nothing),
                    Err(StreamError::Os { errno }) => Err(io::Error::from_raw_os_error(errno)),
                    Err(e) => Err(io::Error::other(e.to_string())),
                };
            }
            i -= n;
        }
        Ok(Next::Nothing)
    }
}

/// The next socket the handoff peer passed.
fn handoff_next(c: &OwnedFd) -> io::Result<Next> {
    let mut tag = [0u8; 8];
    let (n, fds) = match recv_with_fds(c.as_fd(), &mut tag, 2) {
        Ok(got) => got,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            return Ok(Next::Nothing);
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            tracing::debug!(error = %e, "bad handoff message; skipped");
            return Ok(Next::Nothing);
        }
        Err(e) => return Err(e),
    };
    if n == 0 && fds.is_empty() {
        return Ok(Next::Retired);
    }
    let mut fds = fds.into_iter();
    match (tag[0], fds.next()) {
        (HANDOFF, Some(sock)) => Ok(Next::Conn(sock, fds.next())),
        (t, _) => {
            tracing::debug!(tag = t, "handoff message without a socket; skipped");
            Ok(Next::Nothing)
        }
    }
}
