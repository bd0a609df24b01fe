//! Making stream connections: [`connect`] to an [`Address`], and a
//! [`Listener`] on several addresses at once.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::address::Address;
use super::conn::{Connection, PeerAddr};
use super::error::{AdoptProblem, StreamError, errno_of};
use crate::sys::{
    PeerCred, StreamTarget, accept_stream, connect_stream, is_inet, is_listening, is_stream,
    is_unix, listen_stream, local_inet_addr, poll_readable, set_nonblocking, unlink_socket,
};

/// Connects to `address` (a TCP name is resolved first; each of its
/// addresses is tried in turn), giving up at `deadline`.
///
/// # Errors
///
/// [`StreamError::Resolve`], [`StreamError::Connect`] naming the address
/// and the OS error of the last attempt, [`StreamError::Timeout`].
pub fn connect(address: &Address, deadline: Instant) -> Result<Connection, StreamError> {
    let fail = |e: std::io::Error| match StreamError::from_io(&e) {
        StreamError::Timeout => StreamError::Timeout,
        _ => StreamError::Connect {
            address: address.to_string(),
            errno: errno_of(&e),
        },
    };
    let fd = match address.resolve(deadline)? {
        Some(addrs) => {
            let mut last = None;
            let mut got = None;
            for a in addrs {
                match connect_stream(StreamTarget::Inet(a), deadline) {
                    Ok(fd) => {
                        got = Some(fd);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match (got, last) {
                (Some(fd), _) => fd,
                (None, Some(e)) => return Err(fail(e)),
                (None, None) => unreachable!("resolve returns at least one address"),
            }
        }
        None => connect_stream(address.unix_target().expect("a unix address"), deadline)
            .map_err(fail)?,
    };
    Connection::from_fd(fd)
}

/// Connects to `address` and runs a TLS client handshake on it (see
/// [`Connection::tls_client`]): the server's certificate is checked
/// against the host of a TCP address, or the name set on `tls` (which a
/// Unix address needs).
///
/// # Errors
///
/// As [`connect`] and [`Connection::tls_client`];
/// [`TlsError::BadServerName`](super::TlsError::BadServerName) for a Unix
/// address and no name set.
#[cfg(feature = "tls")]
pub fn connect_tls(
    address: &Address,
    tls: &super::tls::TlsClient,
    deadline: Instant,
) -> Result<Connection, StreamError> {
    let host = match address {
        Address::Tcp { host, .. } => Some(host.as_str()),
        _ => None,
    };
    let name = tls
        .name_for(host)
        .ok_or_else(|| super::tls::TlsError::BadServerName {
            name: address.to_string(),
        })?
        .to_string();
    connect(address, deadline)?.tls_client(tls, &name, deadline)
}

/// How a listener treats who connects.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Security {
    /// No TLS. Unix sockets only: a TCP address is refused
    /// ([`StreamError::PlainTcpRefused`]), since anyone who reaches its
    /// port could call.
    Plain,
    /// No TLS, TCP included: anyone who reaches a TCP port may connect
    /// (said explicitly).
    Anyone,
    /// TLS on every address (TCP and Unix), with this configuration: its
    /// client CA and policy decide who may connect.
    #[cfg(feature = "tls")]
    Tls(std::sync::Arc<super::tls::TlsServer>),
}

/// Listens on several addresses at once: each [`accept`](Self::accept)
/// returns the next connection from any of them.
///
/// Sockets are non-blocking and close-on-exec; a Unix socket file left by
/// a dead server is replaced (one a live server listens on is not), and
/// removed again when the listener is dropped (by the listener that bound
/// it: one [adopted](Self::adopt) from another process leaves the file to
/// its owner).
#[derive(Debug)]
pub struct Listener {
    socks: Vec<(Address, OwnedFd)>,
    security: Security,
    /// Bound here (not adopted): its Unix socket files go with it.
    owns_files: bool,
    /// Where the next accept starts looking (turns taken fairly).
    next: AtomicUsize,
}

/// A connection just accepted: who it is from and on which address,
/// before any TLS handshake (so admission checks cost nothing yet).
#[derive(Debug)]
pub struct Incoming {
    conn: Connection,
    address: Address,
    security: Security,
}

impl Listener {
    /// Binds and listens on every address of `addresses` (a TCP port 0
    /// picks a free port: see [`addresses`](Self::addresses)).
    ///
    /// # Errors
    ///
    /// [`StreamError::PlainTcpRefused`] for a TCP address under
    /// [`Security::Plain`]; [`StreamError::Resolve`];
    /// [`StreamError::Listen`] naming the address that failed (the ones
    /// bound before are closed).
    pub fn bind(addresses: &[Address], security: Security) -> Result<Listener, StreamError> {
        let mut socks = Vec::with_capacity(addresses.len());
        for a in addresses {
            if a.is_tcp() && matches!(security, Security::Plain) {
                return Err(StreamError::PlainTcpRefused {
                    address: a.to_string(),
                });
            }
        }
        for a in addresses {
            let listen_error = |e: std::io::Error| StreamError::Listen {
                address: a.to_string(),
                errno: errno_of(&e),
            };
            match a.resolve(crate::deadline_in(std::time::Duration::from_secs(10)))? {
                Some(ips) => {
                    // The first address a name resolves to (a listener per
                    // address of a name would be a surprise).
                    let ip = ips[0];
                    let fd = listen_stream(StreamTarget::Inet(ip)).map_err(listen_error)?;
                    let port = local_inet_addr(fd.as_fd()).map_err(listen_error)?.port();
                    socks.push((a.with_port(port), fd));
                }
                None => {
                    let fd = listen_stream(a.unix_target().expect("a unix address"))
                        .map_err(listen_error)?;
                    socks.push((a.clone(), fd));
                }
            }
        }
        Ok(Listener {
            socks,
            security,
            owns_files: true,
            next: AtomicUsize::new(0),
        })
    }

    /// Accepts on `fd`, a socket another process bound to `address` and
    /// listens on (a supervisor that binds its service's address once, so
    /// that each instance takes the same socket over: no instance waits
    /// for its predecessor to let the address go, and connections made
    /// between two instances wait in the backlog instead of being
    /// refused). The socket is made non-blocking; dropping the listener
    /// closes this process's descriptor and leaves a Unix socket file to
    /// its owner.
    ///
    /// # Errors
    ///
    /// [`StreamError::PlainTcpRefused`] as for [`bind`](Self::bind);
    /// [`StreamError::Adopt`] if `fd` is not a listening stream socket of
    /// `address`'s kind (TCP or Unix).
    pub fn adopt(
        address: &Address,
        fd: OwnedFd,
        security: Security,
    ) -> Result<Listener, StreamError> {
        if address.is_tcp() && matches!(security, Security::Plain) {
            return Err(StreamError::PlainTcpRefused {
                address: address.to_string(),
            });
        }
        let refuse = |problem| StreamError::Adopt {
            address: address.to_string(),
            problem,
        };
        let os = |e: std::io::Error| {
            refuse(AdoptProblem::Os {
                errno: errno_of(&e),
            })
        };
        if !is_stream(fd.as_fd()) {
            return Err(refuse(AdoptProblem::NotStream));
        }
        if !is_listening(fd.as_fd()) {
            return Err(refuse(AdoptProblem::NotListening));
        }
        if address.is_tcp() && !is_inet(fd.as_fd()) {
            return Err(refuse(AdoptProblem::NotTcp));
        }
        if !address.is_tcp() && !is_unix(fd.as_fd()) {
            return Err(refuse(AdoptProblem::NotUnix));
        }
        set_nonblocking(fd.as_fd()).map_err(os)?;
        let address = if address.is_tcp() {
            let port = local_inet_addr(fd.as_fd()).map_err(os)?.port();
            address.with_port(port)
        } else {
            address.clone()
        };
        Ok(Listener {
            socks: vec![(address, fd)],
            security,
            owns_files: false,
            next: AtomicUsize::new(0),
        })
    }

    /// The addresses listened on, in the order given (TCP ports as bound).
    pub fn addresses(&self) -> Vec<Address> {
        self.socks.iter().map(|(a, _)| a.clone()).collect()
    }

    /// Whether every socket still listens: another holder of an
    /// [adopted](Self::adopt) socket may have shut it down (TCP then stops
    /// listening; a Unix socket still says it listens, but refuses every
    /// connection and polls as hung up).
    pub fn listens(&self) -> bool {
        self.socks.iter().all(|(_, fd)| is_listening(fd.as_fd()))
    }

    /// The listening sockets, for an event loop (readable: a connection
    /// waits; then call [`try_accept`](Self::try_accept)).
    pub fn poll_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.socks.iter().map(|(_, fd)| fd.as_fd()).collect()
    }

    /// The next connection queued on any address, without waiting.
    ///
    /// # Errors
    ///
    /// [`StreamError::Os`] for a failed accept (`EMFILE`/`ENFILE` when out
    /// of descriptors: back off before trying again).
    pub fn try_accept(&self) -> Result<Option<Incoming>, StreamError> {
        let n = self.socks.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            let i = (first + k) % n;
            let (address, fd) = &self.socks[i];
            match accept_stream(fd.as_fd()) {
                Ok(Some(s)) => {
                    return Ok(Some(Incoming {
                        conn: Connection::from_fd(s)?,
                        address: address.clone(),
                        security: self.security.clone(),
                    }));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(StreamError::Os {
                        errno: errno_of(&e),
                    });
                }
            }
        }
        Ok(None)
    }

    /// Waits until `deadline` (`None`: no limit) for the next connection
    /// on any address.
    ///
    /// # Errors
    ///
    /// [`StreamError::Timeout`]; as [`try_accept`](Self::try_accept).
    pub fn accept(&self, deadline: Option<Instant>) -> Result<Incoming, StreamError> {
        loop {
            if let Some(i) = self.try_accept()? {
                return Ok(i);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(std::time::Duration::ZERO) {
                return Err(StreamError::Timeout);
            }
            poll_readable(&self.poll_fds(), left).map_err(|e| StreamError::Os {
                errno: errno_of(&e),
            })?;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if !self.owns_files {
            return;
        }
        for (a, _) in &self.socks {
            if let Address::Unix(p) = a {
                unlink_socket(&crate::sys::SocketName::Path(p.clone()));
            }
        }
    }
}

impl Incoming {
    /// The address it came in on (as the listener reports it).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The peer's address.
    pub fn peer(&self) -> &PeerAddr {
        self.conn.peer()
    }

    /// The peer's credentials, on a Unix socket.
    pub fn peer_cred(&self) -> Option<PeerCred> {
        self.conn.peer_cred()
    }

    /// Makes it a connection: runs the TLS server handshake (until
    /// `deadline`) when the listener has TLS, else returns it as it is.
    ///
    /// # Errors
    ///
    /// As `Connection::tls_server` (feature `tls`).
    pub fn establish(self, deadline: Instant) -> Result<Connection, StreamError> {
        match self.security {
            #[cfg(feature = "tls")]
            Security::Tls(tls) => self.conn.tls_server(&tls, deadline),
            _ => {
                let _ = deadline;
                Ok(self.conn)
            }
        }
    }
}
