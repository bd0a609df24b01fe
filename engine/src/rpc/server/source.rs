//! Where a server's connections come from: a socket it listens on, or a
//! handoff socket over which another process (a supervisor, a name
//! service) passes it sockets already connected to clients.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use crate::sys::{
    SocketName, accept_seqpacket, is_seqpacket, listen_seqpacket, recv_with_fds, send_with_fds,
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
    /// A `SOCK_SEQPACKET` socket over which each message ([`hand_off`])
    /// carries one socket connected to a client. The server serves until
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

/// What the accept loop reads connections from.
pub(crate) enum Conns {
    Listener(OwnedFd),
    Handoff(OwnedFd),
}

/// What the next look at the source gave.
pub(crate) enum Next {
    /// A connected socket, with a premade segment if one came.
    Conn(OwnedFd, Option<OwnedFd>),
    /// Nothing now (a spurious wake-up, a message without a socket).
    Nothing,
    /// The handoff peer hung up: the server is retired.
    Retired,
}

impl Conns {
    pub(crate) fn open(source: Source) -> Result<(Conns, Option<SocketName>), super::ServerError> {
        match source {
            Source::Listen(name) => {
                let l = listen_seqpacket(&name).map_err(|source| super::ServerError::Listen {
                    socket: name.to_string(),
                    source,
                })?;
                Ok((Conns::Listener(l), Some(name)))
            }
            Source::Handoff(fd) => {
                if !is_seqpacket(fd.as_fd()) {
                    return Err(super::ServerError::BadHandoff);
                }
                Ok((Conns::Handoff(fd), None))
            }
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conns::Listener(f) | Conns::Handoff(f) => f.as_fd(),
        }
    }

    /// The next connected socket, without waiting.
    ///
    /// # Errors
    ///
    /// The OS error of `accept` (`EMFILE` and the like, which the caller
    /// backs off on).
    pub(crate) fn next(&self) -> io::Result<Next> {
        match self {
            Conns::Listener(l) => match accept_seqpacket(l.as_fd()) {
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
            },
            Conns::Handoff(c) => {
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
        }
    }
}
