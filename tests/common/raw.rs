//! A hostile peer's view of a stream endpoint (Unix stream or plain TCP):
//! a blocking socket, frames written and read by hand as the codec lays
//! them out, and a wait for the other side to close.

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::time::Duration;

use isocall::rpc::Endpoint;
use isocall::stream::Address;
use isocall::stream::codec::Encoder;

/// How long a raw socket waits for a read.
pub const LIMIT: Duration = Duration::from_secs(30);

/// A blocking socket to a stream endpoint, as a hostile peer holds it.
pub trait Socket: Read + Write + Send {
    fn shut_write(&self);
    fn clone_box(&self) -> Box<dyn Socket>;
}

impl Socket for std::net::TcpStream {
    fn shut_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
    fn clone_box(&self) -> Box<dyn Socket> {
        Box::new(self.try_clone().unwrap())
    }
}

impl Socket for std::os::unix::net::UnixStream {
    fn shut_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
    fn clone_box(&self) -> Box<dyn Socket> {
        Box::new(self.try_clone().unwrap())
    }
}

/// A raw socket connected to `at`, reads timing out after [`LIMIT`].
pub fn raw_socket(at: &Endpoint) -> Box<dyn Socket> {
    match at.stream_address().expect("a stream endpoint") {
        Address::Tcp { host, port } => {
            let s = std::net::TcpStream::connect((host.as_str(), *port)).unwrap();
            s.set_read_timeout(Some(LIMIT)).unwrap();
            Box::new(s)
        }
        Address::Abstract(name) => {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
            let s = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
            s.set_read_timeout(Some(LIMIT)).unwrap();
            Box::new(s)
        }
        other => panic!("no raw socket to {other}"),
    }
}

/// One frame of `kind` with `payload`, as the codec writes it.
pub fn frame(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::new(None)
        .encode(&mut out, kind, 0, payload, &[], u32::MAX as usize)
        .unwrap();
    out
}

/// Reads one frame (no compression, no blobs): its kind and payload;
/// `None` at the end of the stream.
pub fn read_frame(s: &mut dyn Socket) -> Option<(u16, Vec<u8>)> {
    let mut n: u32 = 0;
    for i in 0..5 {
        let mut b = [0u8; 1];
        if s.read(&mut b).ok()? == 0 {
            return None;
        }
        n |= u32::from(b[0] & 0x7F) << (7 * i);
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut f = vec![0u8; n as usize];
    s.read_exact(&mut f).ok()?;
    let len = u32::from_le_bytes(f[..4].try_into().unwrap()) as usize;
    let k = u16::from_le_bytes(f[4..6].try_into().unwrap());
    Some((k, f[8..8 + len].to_vec()))
}

/// Reads until the peer closes the connection (a CLOSE frame may come
/// first); fails the test, saying `what` did not happen, if it does not
/// within [`LIMIT`].
pub fn wait_closed(s: &mut dyn Socket, what: &str) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("{what} within {LIMIT:?}: {e}"),
        }
    }
}
