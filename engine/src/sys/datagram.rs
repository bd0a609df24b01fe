//! UDP sockets for lossy channels: bound, non-blocking, close-on-exec
//! (std's sockets are), with a receive buffer of a chosen size, and a wait
//! for the next datagram with a deadline.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

/// A non-blocking UDP socket bound to `addr` (port 0: any free port), its
/// receive buffer asked to be `recv_buffer` bytes if given (the kernel caps
/// it at `net.core.rmem_max`).
///
/// # Errors
///
/// The OS refused the socket, the address (in use, not local) or the
/// buffer size.
pub fn bind_datagram(addr: SocketAddr, recv_buffer: Option<usize>) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    if let Some(n) = recv_buffer {
        rustix::net::sockopt::set_socket_recv_buffer_size(&s, n)?;
    }
    Ok(s)
}

/// Waits until `s` has a datagram to read, at most `timeout` (`None`: no
/// limit); whether it has one.
///
/// # Errors
///
/// The OS error of `poll`.
pub fn wait_datagram(s: &UdpSocket, timeout: Option<Duration>) -> io::Result<bool> {
    super::poll_readable(&[s.as_fd()], timeout).map(|r| r.first().copied().unwrap_or(false))
}
