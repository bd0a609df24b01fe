//! Helpers shared by the stream transport tests.
#![allow(dead_code)] // each test binary uses some of them

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use isocall_engine::blob::{BlobHandle, PoolConfig};
use isocall_engine::raw::Side;
use isocall_engine::raw::wire::{self, CallHead};
use isocall_engine::stream::{
    Address, Connection, Listener, Security, SocketKind, StreamConfig, StreamError, StreamFrame,
    StreamRx, StreamTx, connect, endpoint,
};

pub type End = (StreamTx, StreamRx);

/// Kinds past the call kinds, for payloads that are no call frames (a
/// call frame's payload starts with a call head naming its blobs).
pub const RAW: u16 = 10;
pub const RAW2: u16 = 11;

pub fn after(d: Duration) -> Instant {
    Instant::now() + d
}

pub fn soon() -> Instant {
    after(Duration::from_secs(10))
}

pub fn pool() -> PoolConfig {
    PoolConfig::new()
        .class(256, 16)
        .class(64 << 10, 4)
        .class(1 << 20, 2)
}

pub fn unix_pair(config: &StreamConfig) -> (End, End) {
    let (a, b) = UnixStream::pair().unwrap();
    (
        endpoint(Connection::from_unix(a).unwrap(), Side::Client, config).unwrap(),
        endpoint(Connection::from_unix(b).unwrap(), Side::Server, config).unwrap(),
    )
}

pub fn tcp_pair_on(
    address: &str,
    client: &StreamConfig,
    server: &StreamConfig,
) -> Option<(End, End)> {
    let l = Listener::bind(&[Address::parse(address).unwrap()], Security::Anyone).ok()?;
    let at = l.addresses().remove(0);
    let c = connect(&at, soon()).unwrap();
    assert_eq!(c.kind(), SocketKind::Tcp);
    let s = l.accept(Some(soon())).unwrap().establish(soon()).unwrap();
    Some((
        endpoint(c, Side::Client, client).unwrap(),
        endpoint(s, Side::Server, server).unwrap(),
    ))
}

/// A payload whose bytes say where they are.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Random bytes (xorshift), which lz4 cannot shrink.
pub fn noise(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends a call frame: head, handles, body.
pub fn put_call(
    tx: &mut StreamTx,
    k: u16,
    id: u64,
    blobs: &[BlobHandle],
    body: &[u8],
) -> Result<(), StreamError> {
    let len = wire::HEAD + blobs.len() * wire::HANDLE + body.len();
    let mut g = tx.reserve(k, len, Some(soon()))?;
    let head = CallHead {
        id,
        nblobs: blobs.len() as u32,
        body_len: body.len() as u32,
        ..CallHead::default()
    };
    let at = wire::write_head(g.bytes_mut(), &head, blobs);
    g.bytes_mut()[at..].copy_from_slice(body);
    g.commit_all()?;
    tx.publish()
}

/// Receives a call frame: its head, handles and body.
pub fn get_call(rx: &mut StreamRx, k: u16) -> (CallHead, Vec<BlobHandle>, Vec<u8>) {
    let f = rx.recv(Some(soon())).unwrap();
    assert_eq!(f.kind(), k);
    let p = wire::parse(f.payload()).unwrap();
    let got = (p.head, p.blob_vec(), p.body.to_vec());
    f.release();
    got
}

/// Receives the next frame while this thread's own sender still has
/// bytes to push (a frame larger than the socket's buffer goes out only
/// as the other end reads it: here both ends are this thread's).
pub fn pump<'r>(tx: &mut StreamTx, rx: &'r mut StreamRx) -> StreamFrame<'r> {
    let deadline = soon();
    // `try_recv` reads the socket (`arm_doorbell` does not after a read
    // that drained it: it expects its caller to poll next). A frame found
    // and not released stays the current one, which `recv` returns.
    loop {
        tx.publish().unwrap();
        if rx.try_recv().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no frame came");
    }
    rx.recv(Some(deadline)).unwrap()
}

pub fn send_and_check(tx: &mut StreamTx, rx: &mut StreamRx, sizes: &[usize]) {
    for (i, &n) in sizes.iter().enumerate() {
        let data = pattern(n, i as u8);
        // Kinds past the call kinds: these payloads are no call frames.
        let k = 10 + i as u16;
        let mut g = tx.reserve(k, n, Some(soon())).unwrap();
        g.set_flags(0x0100 | i as u16);
        g.bytes_mut().copy_from_slice(&data);
        g.commit_all().unwrap();
        tx.publish().unwrap();
        let f = pump(tx, rx);
        assert_eq!(f.kind(), k);
        assert_eq!(f.flags(), 0x0100 | i as u16);
        assert_eq!(f.len(), n);
        assert_eq!(
            f.payload().as_ptr() as usize % 16,
            0,
            "payload of {n} bytes aligned"
        );
        assert!(f.payload() == &data[..], "payload of {n} bytes intact");
        f.release();
    }
}

pub const SIZES: &[usize] = &[0, 1, 15, 16, 100, 4096, 100_000, 1 << 20];
