//! The receiving side of a lossy channel: a UDP socket bound to an
//! address, datagrams checked and counted, messages handed out as
//! validated archives.

use std::io;
use std::marker::PhantomData;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;

use super::address::UdpAddress;
use super::datagram::{HEADER_LEN, Header};
use super::error::{UdpOpenError, UdpRecvError};
use super::stats::{UdpBlock, UdpStats};
use super::tracker::{Tracker, Verdict};
use crate::rpc::body::{self, Body, Checked};

/// How long a subscriber waits for its address's name to resolve.
const RESOLVE: Duration = Duration::from_secs(10);
/// The receive buffer: room for any UDP datagram, and one byte more so
/// that none is cut short unnoticed.
const RECV_BUF: usize = 65536;

/// How a lossy subscriber binds.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct UdpSubscriberOptions {
    /// The socket's receive buffer to ask for, in bytes (default: the
    /// kernel's; it caps the request at `net.core.rmem_max`). Datagrams
    /// that arrive while it is full are lost, and counted so when a later
    /// one comes.
    pub recv_buffer: Option<usize>,
    /// A name for this subscriber, shown by `isocall inspect` (at most 64
    /// bytes).
    pub label: String,
}

impl UdpSubscriberOptions {
    /// Asks for a receive buffer of `bytes`.
    #[must_use]
    pub fn recv_buffer(mut self, bytes: usize) -> Self {
        self.recv_buffer = Some(bytes);
        self
    }

    /// Names this subscriber.
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }
}

/// Receives the messages of type `T` that lossy publishers send to a UDP
/// address. Each datagram's header is checked, then its type fingerprint
/// (another type's datagram is counted foreign and never read), then its
/// body is validated with bytecheck in this process's own memory (where
/// the kernel copied it). Sequence numbers give what was lost, reordered
/// or duplicated ([`UdpStats`]); the counters are also kept in a small
/// shared block that `isocall inspect` shows.
///
/// Nothing authenticates a datagram: anyone who can reach the port can
/// send messages (or forge sequence numbers). Use it for what may be lost,
/// where the network is trusted.
pub struct UdpSubscriber<T: Body> {
    socket: UdpSocket,
    local: SocketAddr,
    /// 16-aligned, so that a body at `HEADER_LEN` is too.
    buf: AlignedVec<16>,
    tracker: Tracker,
    stats: UdpStats,
    block: UdpBlock,
    _t: PhantomData<fn() -> T>,
}

impl<T: Body> std::fmt::Debug for UdpSubscriber<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpSubscriber")
            .field("local", &self.local)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A message received from a lossy channel: derefs to the validated
/// archive, in the subscriber's private buffer. It borrows its
/// subscriber; drop it before the next receive.
pub struct UdpSample<'a, T: Body> {
    body: Checked<'a, T>,
    seq: u64,
    reordered: bool,
}

impl<T: Body> UdpSample<'_, T> {
    /// The message's sequence number: how many messages its publisher had
    /// sent before it.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether it arrived after a message sent later.
    pub fn is_reordered(&self) -> bool {
        self.reordered
    }
}

impl<T: Body> std::ops::Deref for UdpSample<'_, T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        self.body.get()
    }
}

impl<T: Body> std::fmt::Debug for UdpSample<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpSample")
            .field("seq", &self.seq)
            .field("reordered", &self.reordered)
            .finish_non_exhaustive()
    }
}

impl<T: Body> UdpSubscriber<T> {
    /// Binds to `address` (`udp://host:port`; `udp://0.0.0.0:9000` for
    /// every IPv4 interface, port 0 for any free port).
    ///
    /// # Errors
    ///
    /// As [`bind_with`](Self::bind_with).
    pub fn bind(address: &str) -> Result<UdpSubscriber<T>, UdpOpenError> {
        Self::bind_with(address, UdpSubscriberOptions::default())
    }

    /// Binds to `address` with `options`, trying each address the name
    /// resolves to until one binds.
    ///
    /// # Errors
    ///
    /// [`UdpOpenError::Address`] for an address that does not parse,
    /// [`UdpOpenError::Resolve`] for a name that does not resolve,
    /// [`UdpOpenError::Bind`] if no address binds,
    /// [`UdpOpenError::Stats`] if the counters' block could not be made.
    pub fn bind_with(
        address: &str,
        options: UdpSubscriberOptions,
    ) -> Result<UdpSubscriber<T>, UdpOpenError> {
        let address = UdpAddress::parse(address)?;
        let mut last = None;
        let mut bound = None;
        for a in address.resolve(Instant::now() + RESOLVE)? {
            match crate::sys::bind_datagram(a, options.recv_buffer) {
                Ok(s) => {
                    bound = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let bind_error = |source| UdpOpenError::Bind {
            address: address.to_string(),
            source,
        };
        let socket = bound.ok_or_else(|| {
            bind_error(last.unwrap_or_else(|| io::Error::other("the name has no address")))
        })?;
        let local = socket.local_addr().map_err(bind_error)?;
        let block = UdpBlock::create(&local.to_string(), T::NAME, T::FINGERPRINT, &options.label)
            .map_err(UdpOpenError::Stats)?;
        let mut buf = AlignedVec::<16>::with_capacity(RECV_BUF);
        buf.resize(RECV_BUF, 0);
        Ok(UdpSubscriber {
            socket,
            local,
            buf,
            tracker: Tracker::default(),
            stats: UdpStats::default(),
            block,
            _t: PhantomData,
        })
    }

    /// The address the socket is bound to (with the port the kernel
    /// chose, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// What it counted so far.
    pub fn stats(&self) -> UdpStats {
        self.stats
    }

    /// The next message, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// [`UdpRecvError::Io`] if the OS fails the receive.
    pub fn recv(&mut self) -> Result<UdpSample<'_, T>, UdpRecvError> {
        self.recv_until(None)
    }

    /// The next message, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`UdpRecvError::Timeout`] if none came in time;
    /// [`UdpRecvError::Io`] if the OS fails the receive.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<UdpSample<'_, T>, UdpRecvError> {
        self.recv_until(Some(crate::deadline_in(timeout)))
    }

    /// The next message, waiting at most until `deadline`.
    ///
    /// # Errors
    ///
    /// As [`recv_timeout`](Self::recv_timeout).
    pub fn recv_deadline(&mut self, deadline: Instant) -> Result<UdpSample<'_, T>, UdpRecvError> {
        self.recv_until(Some(deadline))
    }

    /// A message if one has arrived, without waiting.
    ///
    /// # Errors
    ///
    /// [`UdpRecvError::Io`] if the OS fails the receive.
    pub fn try_recv(&mut self) -> Result<Option<UdpSample<'_, T>>, UdpRecvError> {
        match self.recv_until(Some(Instant::now())) {
            Ok(s) => Ok(Some(s)),
            Err(UdpRecvError::Timeout) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn recv_until(&mut self, deadline: Option<Instant>) -> Result<UdpSample<'_, T>, UdpRecvError> {
        let (body, seq, reordered) = self.next_message(deadline)?;
        // Validated a second time here, to hand out the borrow (the loop
        // that validated cannot return it); beside the receive's system
        // call the check is cheap.
        let body = body::check::<T>(&self.buf[body]).map_err(|e| {
            io::Error::other(format!("a body checked once failed its second check: {e}"))
        })?;
        Ok(UdpSample {
            body,
            seq,
            reordered,
        })
    }

    /// Receives datagrams until one is a message to deliver: its body's
    /// place in the buffer, its sequence number, whether it is reordered.
    fn next_message(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<(Range<usize>, u64, bool), UdpRecvError> {
        loop {
            let n = match self.socket.recv(&mut self.buf[..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = match deadline {
                        Some(d) => {
                            let left = d.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                return Err(UdpRecvError::Timeout);
                            }
                            Some(left)
                        }
                        None => None,
                    };
                    match crate::sys::wait_datagram(&self.socket, left) {
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                // An ICMP error for an earlier send, or a signal: not ours
                // to report.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let got = self.take(n);
            self.block.store(&self.stats);
            if let Some(m) = got {
                return Ok(m);
            }
        }
    }

    /// Judges the datagram of `n` bytes in the buffer, counting.
    fn take(&mut self, n: usize) -> Option<(Range<usize>, u64, bool)> {
        if n >= RECV_BUF {
            // Cut short: larger than any UDP datagram should be.
            self.stats.malformed += 1;
            return None;
        }
        let Ok(h) = Header::decode(&self.buf[..n]) else {
            self.stats.malformed += 1;
            return None;
        };
        if h.fingerprint != T::FINGERPRINT {
            self.stats.foreign += 1;
            return None;
        }
        let body = HEADER_LEN..n;
        if body::check::<T>(&self.buf[body.clone()]).is_err() {
            self.stats.malformed += 1;
            return None;
        }
        match self.tracker.take(h.stream, h.seq, &mut self.stats) {
            Verdict::Deliver { reordered } => {
                self.stats.received += 1;
                Some((body, h.seq, reordered))
            }
            Verdict::Duplicate | Verdict::Late => None,
        }
    }
}
