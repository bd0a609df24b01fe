//! `Duration` and the `core::net` addresses.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use core::time::Duration;

use crate::{Fingerprint, Schema};

macro_rules! plain {
    ($($t:ident,)*) => {$(
        impl Schema for $t {
            const NAME: &'static str = stringify!($t);
            const FINGERPRINT: u64 = Fingerprint::new(stringify!($t)).finish();
        }
    )*};
}

plain! {
    Duration,
    Ipv4Addr,
    Ipv6Addr,
    IpAddr,
    SocketAddrV4,
    SocketAddrV6,
    SocketAddr,
}
