//! The sending side of a lossy channel: one datagram per message, to one
//! UDP address, no retransmission.

use std::marker::PhantomData;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rkyv::ser::allocator::Arena;

use super::address::UdpAddress;
use super::datagram::{DEFAULT_MAX_DATAGRAM, HEADER_LEN, Header, MAX_DATAGRAM};
use super::error::{UdpOpenError, UdpSendError};
use crate::rpc::body::{self, Body};

/// How long a publisher waits for its address's name to resolve.
const RESOLVE: Duration = Duration::from_secs(10);
/// The largest archive a refused message is measured up to.
const MEASURE_CAP: usize = 16 << 20;

/// Sends messages of type `T` to a UDP address, one datagram each, lossy:
/// nothing is retransmitted, nothing waits for a subscriber. Each datagram
/// carries the type's fingerprint and the message's sequence number, from
/// which the subscriber counts losses and reorderings.
///
/// ```
/// use isocall_engine::channel::udp::{UdpPublisher, UdpSubscriber};
/// # #[derive(rkyv::Archive, rkyv::Serialize, isocall_schema::Schema)]
/// # #[schema(crate = "isocall_schema")]
/// # struct Reading { sensor: u32, value: f64 }
/// let mut sub = UdpSubscriber::<Reading>::bind("udp://127.0.0.1:0").unwrap();
/// let to = format!("udp://{}", sub.local_addr());
/// let mut publisher = UdpPublisher::<Reading>::connect(&to).unwrap();
/// publisher.send(&Reading { sensor: 7, value: 21.5 }).unwrap();
/// let got = sub.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
/// assert_eq!((got.sensor.to_native(), got.value.to_native()), (7, 21.5));
/// assert_eq!(got.seq(), 0);
/// ```
pub struct UdpPublisher<T: Body> {
    socket: UdpSocket,
    target: SocketAddr,
    address: UdpAddress,
    /// The datagram being written: `max_datagram` bytes.
    buf: Vec<u8>,
    arena: Arena,
    seq: u64,
    stream: u32,
    _t: PhantomData<fn(&T)>,
}

impl<T: Body> std::fmt::Debug for UdpPublisher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpPublisher")
            .field("address", &self.address)
            .field("target", &self.target)
            .field("seq", &self.seq)
            .field("max_datagram", &self.buf.len())
            .finish_non_exhaustive()
    }
}

/// Configures a [`UdpPublisher`].
#[derive(Clone, Debug)]
#[must_use]
pub struct UdpPublisherBuilder<T: Body> {
    address: String,
    max_datagram: usize,
    _t: PhantomData<fn(&T)>,
}

impl<T: Body> UdpPublisherBuilder<T> {
    /// The largest datagram (header and archive) this publisher sends;
    /// larger messages are refused with [`UdpSendError::TooLarge`].
    /// Default [`DEFAULT_MAX_DATAGRAM`] (1472, an IPv4 Ethernet frame);
    /// at most [`MAX_DATAGRAM`] (65507). Above the path's MTU the kernel
    /// fragments IP packets, and one lost fragment loses the message.
    pub fn max_datagram(mut self, bytes: usize) -> Self {
        self.max_datagram = bytes;
        self
    }

    /// Resolves the address and opens the socket (bound to any free port
    /// of the address's family).
    ///
    /// # Errors
    ///
    /// [`UdpOpenError::Address`] for an address that does not parse,
    /// [`UdpOpenError::Resolve`] for a name that does not resolve,
    /// [`UdpOpenError::BadLimit`] for a `max_datagram` outside
    /// `HEADER_LEN + 1..=MAX_DATAGRAM`, [`UdpOpenError::Bind`] if no socket
    /// could be had.
    pub fn create(self) -> Result<UdpPublisher<T>, UdpOpenError> {
        if !(HEADER_LEN < self.max_datagram && self.max_datagram <= MAX_DATAGRAM) {
            return Err(UdpOpenError::BadLimit {
                what: format!(
                    "max_datagram is {}, it must be from {} to {MAX_DATAGRAM}",
                    self.max_datagram,
                    HEADER_LEN + 1
                ),
            });
        }
        let address = UdpAddress::parse(&self.address)?;
        let addrs = address.resolve(Instant::now() + RESOLVE)?;
        let mut last = None;
        for target in addrs {
            let any: SocketAddr = if target.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            match crate::sys::bind_datagram(any, None) {
                Ok(socket) => {
                    return Ok(UdpPublisher {
                        socket,
                        target,
                        address,
                        buf: vec![0; self.max_datagram],
                        arena: Arena::new(),
                        seq: 0,
                        stream: stream_number(),
                        _t: PhantomData,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(UdpOpenError::Bind {
            address: address.to_string(),
            source: last.unwrap_or_else(|| std::io::Error::other("the name has no address")),
        })
    }
}

/// A stream number unlikely to be another publisher's: the pid and the
/// clock, mixed.
fn stream_number() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let x = (nanos ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 32) as u32
}

impl<T: Body> UdpPublisher<T> {
    /// A publisher to `address` (`udp://host:port`) with the default
    /// limits.
    ///
    /// # Errors
    ///
    /// As [`UdpPublisherBuilder::create`].
    pub fn connect(address: &str) -> Result<UdpPublisher<T>, UdpOpenError> {
        Self::builder(address).create()
    }

    /// A builder for a publisher to `address` (`udp://host:port`).
    pub fn builder(address: &str) -> UdpPublisherBuilder<T> {
        UdpPublisherBuilder {
            address: address.to_string(),
            max_datagram: DEFAULT_MAX_DATAGRAM,
            _t: PhantomData,
        }
    }

    /// Sends `msg` as one datagram; returns its sequence number. Whether
    /// it arrives, nobody tells: the subscriber counts what it missed.
    ///
    /// # Errors
    ///
    /// [`UdpSendError::TooLarge`] if the datagram would exceed the limit
    /// (nothing is sent); [`UdpSendError::Io`] if the OS refused it (no
    /// route; `WouldBlock` when the socket's send buffer is full: the send
    /// never waits). A message not sent takes no sequence number.
    pub fn send(&mut self, msg: &T) -> Result<u64, UdpSendError> {
        let limit = self.buf.len();
        let n = match body::encode(msg, &mut self.buf[HEADER_LEN..], &mut self.arena) {
            Ok(n) => n,
            Err(_) => {
                return Err(UdpSendError::TooLarge {
                    size: HEADER_LEN + self.measure(msg, limit),
                    header: HEADER_LEN,
                    limit,
                });
            }
        };
        let header = Header {
            fingerprint: T::FINGERPRINT,
            seq: self.seq,
            stream: self.stream,
            body_len: n as u32,
        };
        self.buf[..HEADER_LEN].copy_from_slice(&header.encode());
        self.socket
            .send_to(&self.buf[..HEADER_LEN + n], self.target)?;
        self.seq += 1;
        Ok(header.seq)
    }

    /// The size of `msg`'s archive, which did not fit `limit` bytes:
    /// tried in buffers twice as large each time, up to 16 MiB.
    fn measure(&mut self, msg: &T, limit: usize) -> usize {
        let mut room = limit.max(1024) * 2;
        loop {
            let mut scratch = vec![0u8; room];
            match body::encode(msg, &mut scratch, &mut self.arena) {
                Ok(n) => return n,
                Err(_) if room >= MEASURE_CAP => return room,
                Err(_) => room = (room * 2).min(MEASURE_CAP),
            }
        }
    }

    /// The sequence number of the next message: how many were sent.
    pub fn sequence(&self) -> u64 {
        self.seq
    }

    /// The address datagrams go to, as given.
    pub fn address(&self) -> &UdpAddress {
        &self.address
    }

    /// The socket address datagrams go to (the first the name resolved
    /// to).
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The largest datagram this publisher sends.
    pub fn max_datagram(&self) -> usize {
        self.buf.len()
    }
}
