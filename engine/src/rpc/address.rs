//! Where a connection goes, and how a client talks over it: an
//! [`Endpoint`] names a shared-memory service socket (today's names) or a
//! stream socket (`tcp://host:port`, `unix:/path`, `unix-stream:@name`),
//! with the client's TLS configuration and compression choice for a
//! stream. The transport shows nowhere else: the same [`Client`],
//! [`SharedClient`] and [`Server`] run over either.
//!
//! [`Client`]: crate::rpc::Client
//! [`SharedClient`]: crate::rpc::SharedClient
//! [`Server`]: crate::rpc::Server

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::stream::{Address, AddressError, MAX_UNIX_NAME};
use crate::sys::SocketName;

/// lz4 compression of a stream connection's frames, as one side wants it.
/// It is negotiated in the hello: a connection compresses when the client
/// asks for it and the server does not refuse it. Shared memory never
/// compresses (nothing is copied to compress).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// A client asks for it over TCP and not over a Unix socket (where
    /// copying is cheaper than compressing); a server grants what a
    /// client asks.
    #[default]
    Auto,
    /// A client asks for it on any stream socket; a server grants it.
    Lz4,
    /// A client does not ask for it; a server refuses it.
    Off,
}

/// Where a connection goes: its location, and for a client the transport
/// options of a stream.
///
/// Written as a string, an endpoint is one of:
///
/// - `tcp://host:port` (a name, an IPv4 address, or an IPv6 one in
///   brackets), `unix:/path` or `unix-stream:@name`: a stream socket
///   (see [`Address`]), for a peer on another host or one without shared
///   memory; frames and their blobs are copied over it;
/// - `@name` (an abstract socket), or a path with a `/`: a shared-memory
///   service socket, as [`SocketName`] names it;
/// - a bare service name (`adder`): its [`default_socket`](crate::rpc::default_socket),
///   resolved when it is used.
///
/// ```
/// use isocall_engine::rpc::{Compression, Endpoint};
/// let e: Endpoint = "tcp://[::1]:7000".parse().unwrap();
/// assert!(e.stream_address().is_some());
/// let e = Endpoint::parse("@adder").unwrap().compression(Compression::Off);
/// assert_eq!(e.to_string(), "@adder");
/// assert!(Endpoint::parse("udp://x:1").is_err());
/// ```
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub(crate) at: At,
    pub(crate) compression: Compression,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::stream::TlsClient>,
}

/// An endpoint's location.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum At {
    /// A shared-memory service socket.
    Shm(SocketName),
    /// A service's default socket, by name.
    Service(String),
    /// A stream socket.
    Stream(Address),
}

impl Endpoint {
    /// Parses an endpoint (see the type's docs).
    ///
    /// # Errors
    ///
    /// The [`AddressError`] naming what is wrong: an unknown scheme
    /// (`udp://...`), an empty name, a stream address that does not parse.
    pub fn parse(s: &str) -> Result<Endpoint, AddressError> {
        s.parse()
    }

    /// A shared-memory service socket.
    pub fn shared_memory(name: SocketName) -> Endpoint {
        Endpoint::at(At::Shm(name))
    }

    /// A stream socket.
    pub fn stream(address: Address) -> Endpoint {
        Endpoint::at(At::Stream(address))
    }

    fn at(at: At) -> Endpoint {
        Endpoint {
            at,
            compression: Compression::Auto,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The endpoint with `c` as the client's compression choice (stream
    /// sockets only).
    #[must_use]
    pub fn compression(mut self, c: Compression) -> Endpoint {
        self.compression = c;
        self
    }

    /// The endpoint with TLS: a client runs a TLS handshake on a TCP
    /// address with `tls` (the server's certificate checked against its
    /// CAs and the host dialled, this client's certificate presented if
    /// it has one). Unix sockets stay plain: their peers are known by
    /// their credentials.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls(mut self, tls: crate::stream::TlsClient) -> Endpoint {
        self.tls = Some(tls);
        self
    }

    /// The shared-memory socket, if it is one (a bare service name is
    /// resolved when used, and is not).
    pub fn socket_name(&self) -> Option<&SocketName> {
        match &self.at {
            At::Shm(s) => Some(s),
            _ => None,
        }
    }

    /// The stream address, if it is one.
    pub fn stream_address(&self) -> Option<&Address> {
        match &self.at {
            At::Stream(a) => Some(a),
            _ => None,
        }
    }

    /// The same endpoint (compression, TLS) at the stream address `a`
    /// instead: a TCP port 0 once a port was picked.
    pub(crate) fn set_stream_address(&mut self, a: Address) {
        self.at = At::Stream(a);
    }

    /// Whether it is a stream socket (not shared memory).
    pub fn is_stream(&self) -> bool {
        matches!(self.at, At::Stream(_))
    }

    /// Whether it is a TCP address.
    pub fn is_tcp(&self) -> bool {
        matches!(&self.at, At::Stream(a) if a.is_tcp())
    }

    /// The shared-memory socket (a service name resolved now).
    pub(crate) fn shm_socket(&self) -> Option<std::io::Result<SocketName>> {
        match &self.at {
            At::Shm(s) => Some(Ok(s.clone())),
            At::Service(n) => Some(crate::rpc::default_socket(n)),
            At::Stream(_) => None,
        }
    }
}

impl FromStr for Endpoint {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Endpoint, AddressError> {
        if s.starts_with("tcp://") || s.starts_with("unix:") || s.starts_with("unix-stream:") {
            return Ok(Endpoint::stream(s.parse()?));
        }
        if s.contains("://") {
            return Err(AddressError::UnknownScheme {
                address: s.to_string(),
            });
        }
        let empty = || AddressError::Empty {
            address: s.to_string(),
        };
        let at = if let Some(name) = s.strip_prefix('@') {
            if name.is_empty() {
                return Err(empty());
            }
            if name.len() > MAX_UNIX_NAME || name.contains('\0') {
                return Err(AddressError::BadUnixName {
                    address: s.to_string(),
                });
            }
            At::Shm(SocketName::Abstract(name.to_string()))
        } else if s.is_empty() {
            return Err(empty());
        } else if s.contains('/') {
            At::Shm(SocketName::Path(PathBuf::from(s)))
        } else {
            At::Service(s.to_string())
        };
        Ok(Endpoint::at(at))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            At::Shm(s) => write!(f, "{s}"),
            At::Service(n) => f.write_str(n),
            At::Stream(a) => write!(f, "{a}"),
        }
    }
}

impl From<SocketName> for Endpoint {
    fn from(s: SocketName) -> Endpoint {
        Endpoint::shared_memory(s)
    }
}

impl From<&SocketName> for Endpoint {
    fn from(s: &SocketName) -> Endpoint {
        Endpoint::shared_memory(s.clone())
    }
}

impl From<Address> for Endpoint {
    fn from(a: Address) -> Endpoint {
        Endpoint::stream(a)
    }
}

/// What [`Client::connect`](crate::rpc::Client::connect) and
/// [`ServerBuilder::listen`](crate::rpc::ServerBuilder::listen) take: an
/// [`Endpoint`], a [`SocketName`], an [`Address`], or a string that parses
/// as an endpoint.
pub trait IntoEndpoint {
    /// The endpoint.
    ///
    /// # Errors
    ///
    /// A string that is not an endpoint.
    fn into_endpoint(self) -> Result<Endpoint, AddressError>;
}

/// Adds `address` to a builder's endpoints `all`, or, if it does not
/// parse, keeps its error in `bad` (the first one), for the builder to
/// report when it builds.
pub(crate) fn push_endpoint(
    all: &mut Vec<Endpoint>,
    bad: &mut Option<AddressError>,
    address: impl IntoEndpoint,
) {
    match address.into_endpoint() {
        Ok(e) => all.push(e),
        Err(e) => {
            bad.get_or_insert(e);
        }
    }
}

impl IntoEndpoint for Endpoint {
    fn into_endpoint(self) -> Result<Endpoint, AddressError> {
        Ok(self)
    }
}

impl IntoEndpoint for &Endpoint {
    fn into_endpoint(self) -> Result<Endpoint, AddressError> {
        Ok(self.clone())
    }
}

impl IntoEndpoint for SocketName {
    fn into_endpoint(self) -> Result<Endpoint, AddressError> {
        Ok(self.into())
    }
}

impl IntoEndpoint for &SocketName {
    fn into_endpoint(self) -> Result<Endpoint, AddressError> {
        Ok(self.into())
    }
}

impl IntoEndpoint for Address {
    fn into_endpoint(self) -> Result<Endpoint, AddressError> {
        Ok(self.into())
    }
}

impl IntoEndpoint for &Address {
    fn into_endpoint(self) -> Result<Endpoint, AddressError> {
        Ok(self.clone().into())
    }
}

impl IntoEndpoint for &str {
    fn into_endpoint(self) -> Result<Endpoint, AddressError> {
        self.parse()
    }
}

impl IntoEndpoint for String {
    fn into_endpoint(self) -> Result<Endpoint, AddressError> {
        self.parse()
    }
}

impl IntoEndpoint for &String {
    fn into_endpoint(self) -> Result<Endpoint, AddressError> {
        self.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_into_their_transport_and_print_back() {
        for (s, stream) in [
            ("tcp://127.0.0.1:7000", true),
            ("tcp://[::1]:0", true),
            ("unix:/run/x", true),
            ("unix-stream:@x", true),
            ("@isocall-adder", false),
            ("/run/isocall/adder", false),
            ("adder", false),
        ] {
            let e = Endpoint::parse(s).unwrap();
            assert_eq!(e.is_stream(), stream, "{s}");
            assert_eq!(e.to_string(), s);
        }
        assert_eq!(
            Endpoint::parse("@a").unwrap().socket_name(),
            Some(&SocketName::Abstract("a".into()))
        );
        assert!(Endpoint::parse("adder").unwrap().socket_name().is_none());
        assert!(Endpoint::parse("tcp://h:1").unwrap().is_tcp());
        for bad in ["", "@", "udp://h:1", "tcp://h", "unix:"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?}");
        }
    }
}
