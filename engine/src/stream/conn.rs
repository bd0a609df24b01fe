//! A connected stream socket, before it becomes an endpoint: TCP or Unix,
//! maybe with a TLS session, and what is known of the peer.

use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use super::error::{StreamError, errno_of};
use crate::sys::{PeerCred, is_inet, peer_cred, peer_inet_addr, prepare_stream};

/// What kind of socket a connection runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SocketKind {
    /// TCP (IPv4 or IPv6), `TCP_NODELAY` set.
    Tcp,
    /// A Unix stream socket.
    Unix,
}

/// The other end of a connection, as the socket knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeerAddr {
    /// A TCP peer's address and port.
    Tcp(SocketAddr),
    /// A Unix socket peer (see [`Connection::peer_cred`] for who it is).
    Unix,
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(a) => write!(f, "tcp://{a}"),
            PeerAddr::Unix => f.write_str("a unix socket peer"),
        }
    }
}

/// A connected, non-blocking stream socket (TCP with `TCP_NODELAY`, or
/// Unix), with its TLS session once one is established: what
/// [`endpoint`](super::endpoint) turns into a sender and a receiver.
#[derive(Debug)]
pub struct Connection {
    pub(crate) sock: OwnedFd,
    pub(crate) kind: SocketKind,
    pub(crate) peer: PeerAddr,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<super::tls::Session>,
}

impl Connection {
    /// Takes a connected stream socket (TCP or Unix): makes it
    /// non-blocking and sets `TCP_NODELAY` on TCP.
    ///
    /// # Errors
    ///
    /// [`StreamError::Os`] with `EINVAL` if `fd` is not a stream socket;
    /// the OS error otherwise.
    pub fn from_fd(fd: OwnedFd) -> Result<Connection, StreamError> {
        prepare_stream(fd.as_fd()).map_err(|e| StreamError::Os {
            errno: errno_of(&e),
        })?;
        let (kind, peer) = if is_inet(fd.as_fd()) {
            let addr = peer_inet_addr(fd.as_fd()).ok_or(StreamError::Os {
                errno: libc::ENOTCONN,
            })?;
            (SocketKind::Tcp, PeerAddr::Tcp(addr))
        } else {
            (SocketKind::Unix, PeerAddr::Unix)
        };
        Ok(Connection {
            sock: fd,
            kind,
            peer,
            #[cfg(feature = "tls")]
            tls: None,
        })
    }

    /// Takes a connected TCP stream (see [`from_fd`](Self::from_fd)).
    ///
    /// # Errors
    ///
    /// As [`from_fd`](Self::from_fd).
    pub fn from_tcp(s: TcpStream) -> Result<Connection, StreamError> {
        Connection::from_fd(s.into())
    }

    /// Takes a connected Unix stream (see [`from_fd`](Self::from_fd)).
    ///
    /// # Errors
    ///
    /// As [`from_fd`](Self::from_fd).
    pub fn from_unix(s: UnixStream) -> Result<Connection, StreamError> {
        Connection::from_fd(s.into())
    }

    /// The kind of socket.
    pub fn kind(&self) -> SocketKind {
        self.kind
    }

    /// The peer's address.
    pub fn peer(&self) -> &PeerAddr {
        &self.peer
    }

    /// The peer's credentials on a Unix socket (`SO_PEERCRED`, for a
    /// credentials policy); `None` on TCP.
    pub fn peer_cred(&self) -> Option<PeerCred> {
        match self.kind {
            SocketKind::Unix => peer_cred(self.sock.as_fd()).ok(),
            SocketKind::Tcp => None,
        }
    }

    /// Whether a TLS session runs on it.
    pub fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// The peer's certificate identity, once a TLS handshake checked it
    /// (`None` without TLS, or when the peer sent no certificate: a server
    /// that does not ask for client certificates).
    #[cfg(feature = "tls")]
    pub fn peer_identity(&self) -> Option<&super::tls::PeerIdentity> {
        self.tls.as_ref().and_then(|t| t.identity.as_ref())
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
