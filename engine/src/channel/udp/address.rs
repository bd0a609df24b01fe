//! Where a lossy channel's datagrams go: `udp://host:port`, parsed and
//! resolved as the socket transport's `tcp://` addresses are.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Instant;

use crate::stream::{Address, AddressError, StreamError};

/// A UDP address: `udp://host:port`, where the host is a name (resolved
/// when binding or publishing), an IPv4 address, or an IPv6 address in
/// brackets (`udp://[::1]:9000`). Port 0 binds any free port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UdpAddress {
    /// A host name, or an IP address (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl UdpAddress {
    /// Parses an address (see the type's docs).
    ///
    /// # Errors
    ///
    /// The [`AddressError`] naming what is wrong.
    pub fn parse(s: &str) -> Result<UdpAddress, AddressError> {
        s.parse()
    }

    /// Its socket addresses, in the resolver's order (an IP literal at
    /// once; a name by the system resolver, waited on until `deadline`).
    ///
    /// # Errors
    ///
    /// [`StreamError::Resolve`] if the name has no address;
    /// [`StreamError::Timeout`] at the deadline.
    pub fn resolve(&self, deadline: Instant) -> Result<Vec<SocketAddr>, StreamError> {
        let tcp = Address::Tcp {
            host: self.host.clone(),
            port: self.port,
        };
        Ok(tcp.resolve(deadline)?.unwrap_or_default())
    }
}

/// The same error about the string the caller gave.
fn about(e: AddressError, s: &str) -> AddressError {
    let address = s.to_string();
    match e {
        AddressError::NoHost { .. } => AddressError::NoHost { address },
        AddressError::BadPort { .. } => AddressError::BadPort { address },
        AddressError::BadIpv6 { .. } => AddressError::BadIpv6 { address },
        _ => AddressError::NotUdp { address },
    }
}

impl FromStr for UdpAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<UdpAddress, AddressError> {
        let Some(rest) = s.strip_prefix("udp://") else {
            return Err(AddressError::NotUdp {
                address: s.to_string(),
            });
        };
        match Address::parse(&format!("tcp://{rest}")) {
            Ok(Address::Tcp { host, port }) => Ok(UdpAddress { host, port }),
            Ok(_) => Err(AddressError::NotUdp {
                address: s.to_string(),
            }),
            Err(e) => Err(about(e, s)),
        }
    }
}

impl fmt::Display for UdpAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "udp://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "udp://{}:{}", self.host, self.port)
        }
    }
}

impl From<SocketAddr> for UdpAddress {
    fn from(a: SocketAddr) -> UdpAddress {
        UdpAddress {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_addresses_parse_print_back_and_resolve() {
        for s in ["udp://127.0.0.1:9000", "udp://[::1]:0", "udp://localhost:7"] {
            assert_eq!(UdpAddress::parse(s).unwrap().to_string(), s);
        }
        let soon = Instant::now() + std::time::Duration::from_secs(10);
        let v6 = UdpAddress::parse("udp://[::1]:5").unwrap();
        assert_eq!(
            v6.resolve(soon).unwrap(),
            vec!["[::1]:5".parse::<SocketAddr>().unwrap()]
        );
        let local = UdpAddress::parse("udp://localhost:6").unwrap();
        assert!(
            local
                .resolve(soon)
                .unwrap()
                .iter()
                .all(|a| a.ip().is_loopback())
        );
        for (s, ok) in [
            (
                "tcp://h:1",
                matches!(
                    UdpAddress::parse("tcp://h:1"),
                    Err(AddressError::NotUdp { .. })
                ),
            ),
            (
                "udp://h",
                matches!(
                    UdpAddress::parse("udp://h"),
                    Err(AddressError::BadPort { .. })
                ),
            ),
            (
                "udp://:1",
                matches!(
                    UdpAddress::parse("udp://:1"),
                    Err(AddressError::NoHost { .. })
                ),
            ),
            (
                "udp://[x]:1",
                matches!(
                    UdpAddress::parse("udp://[x]:1"),
                    Err(AddressError::BadIpv6 { .. })
                ),
            ),
        ] {
            assert!(ok, "{s}");
            let e = UdpAddress::parse(s).unwrap_err();
            assert!(e.to_string().contains(&format!("{s:?}")), "{e}");
        }
    }
}
