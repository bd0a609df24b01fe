//! Where a stream connection goes: `tcp://host:port`, `unix:/path`,
//! `unix-stream:@name`.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::Instant;

use super::error::StreamError;
use crate::sys::StreamTarget;

/// Most bytes of a Unix socket path or abstract name (`sun_path` less its
/// terminating NUL, or the abstract name's leading one).
pub const MAX_UNIX_NAME: usize = 107;

/// A stream socket address.
///
/// Written `tcp://host:port` (a name, which is resolved when connecting
/// or listening, an IPv4 address, or an IPv6 address in brackets:
/// `tcp://[::1]:7000`), `unix:/path` (a socket file; a relative path is
/// taken from the working directory) or `unix-stream:@name` (a name in
/// Linux's abstract namespace: no file). `unix:` and `unix-stream:` are
/// the same scheme: each takes a path, or `@` and an abstract name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Address {
    /// A TCP address.
    Tcp {
        /// A host name, or an IP address (IPv6 without brackets).
        host: String,
        /// The port (0 to listen on any free port).
        port: u16,
    },
    /// A Unix socket file.
    Unix(PathBuf),
    /// A name in the abstract namespace.
    Abstract(String),
}

/// Why a string is not an [`Address`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// It starts with no known scheme.
    #[error("{address:?} has no known scheme (tcp://host:port, unix:/path, unix-stream:@name)")]
    UnknownScheme {
        /// The string.
        address: String,
    },
    /// A UDP address (of a lossy channel) that does not start with
    /// `udp://`.
    #[error("{address:?} is not a UDP address (udp://host:port)")]
    NotUdp {
        /// The string.
        address: String,
    },
    /// A TCP address without a host.
    #[error("{address:?} has no host")]
    NoHost {
        /// The string.
        address: String,
    },
    /// A TCP address without a port, or with one that is not 0..=65535.
    #[error("{address:?} needs a port from 0 to 65535 after the host")]
    BadPort {
        /// The string.
        address: String,
    },
    /// An IPv6 address whose brackets do not close, or something else in
    /// brackets.
    #[error("{address:?}: an IPv6 address in brackets, like [::1]:7000")]
    BadIpv6 {
        /// The string.
        address: String,
    },
    /// A Unix address with an empty path or name.
    #[error("{address:?} has an empty path or name")]
    Empty {
        /// The string.
        address: String,
    },
    /// A Unix path or name too long for a socket address, or with a NUL.
    #[error("{address:?}: a Unix path or name is 1 to {MAX_UNIX_NAME} bytes without NUL")]
    BadUnixName {
        /// The string.
        address: String,
    },
}

impl Address {
    /// Parses an address (see the type's docs).
    ///
    /// # Errors
    ///
    /// The [`AddressError`] naming what is wrong.
    pub fn parse(s: &str) -> Result<Address, AddressError> {
        s.parse()
    }

    /// Whether it is a TCP address.
    pub fn is_tcp(&self) -> bool {
        matches!(self, Address::Tcp { .. })
    }

    /// The same address on another port (TCP), for a listener bound to
    /// port 0.
    pub(crate) fn with_port(&self, port: u16) -> Address {
        match self {
            Address::Tcp { host, .. } => Address::Tcp {
                host: host.clone(),
                port,
            },
            other => other.clone(),
        }
    }

    /// The IP addresses of a TCP address, in the resolver's order: an IP
    /// literal at once, a name by the system resolver, in a helper thread
    /// waited on until `deadline` (a resolver that hangs does not hold the
    /// caller past it). `None` for a Unix address.
    ///
    /// # Errors
    ///
    /// [`StreamError::Resolve`] if the name has no address;
    /// [`StreamError::Timeout`] at the deadline.
    pub fn resolve(&self, deadline: Instant) -> Result<Option<Vec<SocketAddr>>, StreamError> {
        let Address::Tcp { host, port } = self else {
            return Ok(None);
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Some(vec![SocketAddr::new(ip, *port)]));
        }
        let (tx, rx) = mpsc::channel();
        let (name, port) = (host.clone(), *port);
        let resolver = std::thread::Builder::new()
            .name("isocall-resolve".into())
            .spawn(move || {
                let _ = tx.send((name.as_str(), port).to_socket_addrs().map(Vec::from_iter));
            })
            .map_err(|e| StreamError::Resolve {
                host: host.clone(),
                detail: format!("no thread for the resolver: {e}"),
            })?;
        let got = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        match got {
            Ok(Ok(addrs)) if !addrs.is_empty() => {
                let _ = resolver.join();
                Ok(Some(addrs))
            }
            Ok(Ok(_)) => Err(StreamError::Resolve {
                host: host.clone(),
                detail: "no address".into(),
            }),
            Ok(Err(e)) => Err(StreamError::Resolve {
                host: host.clone(),
                detail: e.to_string(),
            }),
            // The resolver thread is left to finish on its own.
            Err(_) => Err(StreamError::Timeout),
        }
    }

    /// The target of a Unix address, for the OS layer.
    pub(crate) fn unix_target(&self) -> Option<StreamTarget<'_>> {
        match self {
            Address::Tcp { .. } => None,
            Address::Unix(p) => Some(StreamTarget::UnixPath(p)),
            Address::Abstract(n) => Some(StreamTarget::UnixAbstract(n.as_bytes())),
        }
    }
}

fn unix_name(address: &str, rest: &str) -> Result<Address, AddressError> {
    let err = || AddressError::BadUnixName {
        address: address.to_string(),
    };
    let (abstract_name, name) = match rest.strip_prefix('@') {
        Some(n) => (true, n),
        None => (false, rest),
    };
    if name.is_empty() {
        return Err(AddressError::Empty {
            address: address.to_string(),
        });
    }
    if name.len() > MAX_UNIX_NAME || name.contains('\0') {
        return Err(err());
    }
    Ok(if abstract_name {
        Address::Abstract(name.to_string())
    } else {
        Address::Unix(PathBuf::from(name))
    })
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Address, AddressError> {
        if let Some(rest) = s
            .strip_prefix("unix-stream:")
            .or_else(|| s.strip_prefix("unix:"))
        {
            return unix_name(s, rest);
        }
        let Some(rest) = s.strip_prefix("tcp://") else {
            return Err(AddressError::UnknownScheme {
                address: s.to_string(),
            });
        };
        let bad_port = || AddressError::BadPort {
            address: s.to_string(),
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (ip, after) = v6.split_once(']').ok_or_else(|| AddressError::BadIpv6 {
                address: s.to_string(),
            })?;
            if ip.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(AddressError::BadIpv6 {
                    address: s.to_string(),
                });
            }
            let port = after.strip_prefix(':').ok_or_else(bad_port)?;
            (ip, port)
        } else {
            let (host, port) = rest.rsplit_once(':').ok_or_else(bad_port)?;
            if host.contains(':') {
                // An IPv6 address without brackets: its port is ambiguous.
                return Err(AddressError::BadIpv6 {
                    address: s.to_string(),
                });
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(AddressError::NoHost {
                address: s.to_string(),
            });
        }
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad_port());
        }
        let port = port.parse::<u16>().map_err(|_| bad_port())?;
        Ok(Address::Tcp {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Abstract(n) => write!(f, "unix-stream:@{n}"),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Address {
        Address::Tcp {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

impl From<&Path> for Address {
    fn from(p: &Path) -> Address {
        Address::Unix(p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Address {
        Address::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn addresses_parse_and_print_back() {
        for (s, a) in [
            ("tcp://127.0.0.1:7000", tcp("127.0.0.1", 7000)),
            ("tcp://localhost:0", tcp("localhost", 0)),
            ("tcp://[::1]:65535", tcp("::1", 65535)),
            ("tcp://[fe80::1]:80", tcp("fe80::1", 80)),
            (
                "unix:/run/isocall/svc",
                Address::Unix("/run/isocall/svc".into()),
            ),
            ("unix:relative/sock", Address::Unix("relative/sock".into())),
            (
                "unix-stream:@isocall-svc",
                Address::Abstract("isocall-svc".into()),
            ),
        ] {
            assert_eq!(Address::parse(s).unwrap(), a, "{s}");
            assert_eq!(a.to_string(), s);
        }
        // The two Unix schemes are one.
        assert_eq!(
            Address::parse("unix:@n").unwrap(),
            Address::Abstract("n".into())
        );
        assert_eq!(
            Address::parse("unix-stream:/p").unwrap(),
            Address::Unix("/p".into())
        );
        assert!(tcp("h", 1).is_tcp() && !Address::Unix("/p".into()).is_tcp());
        assert_eq!(
            Address::from("[::1]:9".parse::<SocketAddr>().unwrap()),
            tcp("::1", 9)
        );
    }

    #[test]
    fn bad_addresses_say_why() {
        use AddressError as E;
        type Check = fn(&AddressError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("http://x:1", |e| matches!(e, E::UnknownScheme { .. })),
            ("tcp://:80", |e| matches!(e, E::NoHost { .. })),
            ("tcp://host", |e| matches!(e, E::BadPort { .. })),
            ("tcp://host:", |e| matches!(e, E::BadPort { .. })),
            ("tcp://host:65536", |e| matches!(e, E::BadPort { .. })),
            ("tcp://host:+80", |e| matches!(e, E::BadPort { .. })),
            ("tcp://[::1:80", |e| matches!(e, E::BadIpv6 { .. })),
            ("tcp://[nothost]:80", |e| matches!(e, E::BadIpv6 { .. })),
            ("tcp://::1:80", |e| matches!(e, E::BadIpv6 { .. })),
            ("tcp://[::1]80", |e| matches!(e, E::BadPort { .. })),
            ("unix:", |e| matches!(e, E::Empty { .. })),
            ("unix-stream:@", |e| matches!(e, E::Empty { .. })),
            ("unix:/a\0b", |e| matches!(e, E::BadUnixName { .. })),
        ];
        for (s, ok) in cases {
            let e = Address::parse(s).unwrap_err();
            assert!(ok(&e), "{s}: {e:?}");
            assert!(e.to_string().contains(&format!("{s:?}")), "{e}");
        }
        let long = format!("unix:/{}", "x".repeat(MAX_UNIX_NAME));
        assert!(matches!(Address::parse(&long), Err(E::BadUnixName { .. })));
    }

    #[test]
    fn names_resolve_and_literals_need_no_resolver() {
        let soon = Instant::now() + std::time::Duration::from_secs(10);
        let v6 = tcp("::1", 5).resolve(soon).unwrap().unwrap();
        assert_eq!(v6, vec!["[::1]:5".parse::<SocketAddr>().unwrap()]);
        let local = tcp("localhost", 6).resolve(soon).unwrap().unwrap();
        assert!(local.iter().all(|a| a.ip().is_loopback() && a.port() == 6));
        assert_eq!(Address::Unix("/x".into()).resolve(soon).unwrap(), None);
        assert!(matches!(
            tcp("no-such-host.invalid", 1)
                .resolve(Instant::now() + std::time::Duration::from_secs(2)),
            Err(StreamError::Resolve { .. } | StreamError::Timeout)
        ));
    }
}
