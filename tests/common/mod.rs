//! Shared helpers of the whole-system tests: a peer process (this test
//! binary re-executed in a named role), file descriptors handed to it over a
//! socket, deadlines instead of sleeps, and a deterministic payload stream.
#![allow(dead_code)]

pub mod calc;
pub mod netns;
#[cfg(feature = "tls")]
pub mod pki;
pub mod raw;
pub mod services;
pub mod supervised;
pub mod transport;

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isocall::raw::sys::{Doorbell, PidFd, recv_message, send_with_fds};

/// Environment variable that tells a re-executed test binary its role.
pub const ROLE_ENV: &str = "ISOCALL_TEST_ROLE";

/// A peer process that is killed and reaped when dropped.
pub struct Peer {
    pub child: Child,
    /// The parent's end of the socket that is the child's stdin.
    pub sock: UnixStream,
}

impl Peer {
    /// Re-executes this test binary, running only the ignored test `entry`,
    /// with `role` in the environment; the child's stdin is a Unix socket.
    pub fn spawn(entry: &str, role: &str) -> Peer {
        Peer::spawn_via(&[], entry, role)
    }

    /// As [`Peer::spawn`], the test binary started by the command
    /// `launcher` (its program and first arguments; e.g. `ip netns exec
    /// NAME`, which execs it in a network namespace); empty: directly.
    pub fn spawn_via(launcher: &[String], entry: &str, role: &str) -> Peer {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = match launcher {
            [] => Command::new(&exe),
            [program, args @ ..] => {
                let mut c = Command::new(program);
                c.args(args).arg(&exe);
                c
            }
        };
        let child = cmd
            .args([
                "--exact",
                entry,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE_ENV, role)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn peer");
        Peer { child, sock: ours }
    }

    /// Sends `msg` and `fds` to the child.
    pub fn send(&self, msg: &str, fds: &[BorrowedFd<'_>]) {
        send_with_fds(
            self.sock.as_fd(),
            msg.as_bytes(),
            fds,
            Instant::now() + PARENT_LIMIT,
        )
        .expect("send fds to peer");
    }

    /// Waits for the child to exit (on its pidfd, no polling), failing the
    /// test after `limit`.
    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let pidfd = PidFd::open(self.child.id()).expect("pidfd of peer");
        let exited = pidfd.wait_exit(Some(limit)).expect("wait on pidfd");
        assert!(exited, "peer did not exit within {limit:?}");
        self.child.wait().expect("reap peer")
    }

    /// Waits until the child writes a line on the socket.
    pub fn read_line(&mut self, limit: Duration) -> String {
        self.sock
            .set_read_timeout(Some(limit))
            .expect("set timeout");
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match self.sock.read(&mut byte) {
                Ok(0) => panic!("peer closed its socket before answering"),
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) => buf.push(byte[0]),
                Err(e) => panic!("no answer from peer within {limit:?}: {e}"),
            }
        }
        String::from_utf8(buf).expect("utf8 answer")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long a peer waits for its parent's first message, and the parent
/// for room to send it.
const PARENT_LIMIT: Duration = Duration::from_secs(30);

/// In a peer: the message and descriptors the parent sent on stdin.
pub fn receive_from_parent() -> (String, Vec<OwnedFd>, UnixStream) {
    let stdin = std::io::stdin();
    let fd = stdin.as_fd().try_clone_to_owned().expect("dup stdin");
    let sock = UnixStream::from(fd);
    let mut buf = vec![0u8; 4096];
    let (n, fds) = recv_message(
        sock.as_fd(),
        &mut buf,
        8,
        Instant::now() + PARENT_LIMIT,
        None,
    )
    .expect("receive fds from parent");
    (
        String::from_utf8(buf[..n].to_vec()).expect("utf8 message"),
        fds,
        sock,
    )
}

/// A segment for a peer and the doorbell pair between the two: this
/// side's doorbell, and the peer's end to send it (after the memfd, see
/// [`segment_from_parent`]).
pub fn segment_for_peer(
    name: &str,
    layout: &isocall::raw::SegmentLayout,
) -> (isocall::raw::Segment, Arc<Doorbell>, OwnedFd) {
    let segment = isocall::raw::Segment::create(name, layout).expect("create segment");
    let (ours, theirs) = Doorbell::pair().expect("doorbell pair");
    (segment, Arc::new(ours), theirs)
}

/// In a peer: the segment and doorbell end the parent sent (memfd, then
/// this side's end of the doorbell pair), the segment checked by
/// `Segment::open`.
pub fn segment_from_parent(mut fds: Vec<OwnedFd>) -> (isocall::raw::Segment, Arc<Doorbell>) {
    assert_eq!(fds.len(), 2, "expected a memfd and a doorbell end");
    let bell = Doorbell::from_peer_end(fds.pop().unwrap()).expect("a doorbell end");
    let segment = isocall::raw::Segment::open(fds.pop().unwrap()).expect("open segment");
    (segment, Arc::new(bell))
}

/// Starts this test binary's ignored test `entry` as a server process
/// listening on `socket` (an abstract name), telling it `params` (more
/// `key=value` words) too; returns once it listens. The entry calls
/// [`serve_for_parent`].
pub fn server_process(entry: &str, socket: &isocall::SocketName, params: &str) -> Peer {
    let isocall::SocketName::Abstract(name) = socket else {
        panic!("a test server listens on an abstract name, not {socket}")
    };
    let mut peer = Peer::spawn(entry, "server");
    peer.send(&format!("socket={name} {params}"), &[]);
    assert_eq!(peer.read_line(PARENT_LIMIT), "ready");
    peer
}

/// In a server process that [`server_process`] started (and nowhere else:
/// it returns at once without [`ROLE_ENV`]): spawns the server `build`
/// makes for the socket and the message the parent sent, says it is
/// ready, and serves until the parent closes the socket or kills us.
pub fn serve_for_parent(build: impl FnOnce(isocall::SocketName, &str) -> isocall::ServerBuilder) {
    if std::env::var(ROLE_ENV).is_err() {
        return;
    }
    let (msg, _, mut sock) = receive_from_parent();
    let socket = isocall::SocketName::Abstract(param(&msg, "socket").to_string());
    let server = build(socket, &msg).spawn().expect("server");
    use std::io::Write;
    writeln!(sock, "ready").expect("tell the parent");
    let _ = sock.read(&mut [0u8; 1]);
    drop(server);
}

/// Polls `f` until it returns `Some`, failing the test with what was
/// missing after `limit`. Yields between polls; never sleeps a fixed time.
pub fn wait_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    let mut backoff = Duration::from_micros(50);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        // Park with a growing timeout: a bounded poll, not synchronisation
        // by sleeping; the condition is re-checked every turn.
        std::thread::park_timeout(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(20));
    }
}

/// Parses `key=value` words.
pub fn param<'a>(msg: &'a str, key: &str) -> &'a str {
    msg.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("message {msg:?} lacks {key}"))
}

/// A small, fast PRNG (xorshift64*), deterministic from its seed.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }
    #[inline]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Length of frame `i` of a stream: log-uniform from 1 B to 64 KiB.
pub fn frame_len(seed: u64, i: u64) -> usize {
    let mut r = Rng::new(seed.wrapping_mul(31).wrapping_add(i));
    let exp = r.next() % 17;
    1 + (r.next() % (1u64 << exp)) as usize
}

/// Fills `buf` with the payload of frame `i`.
#[inline]
pub fn fill_payload(seed: u64, i: u64, buf: &mut [u8]) {
    let mut r = Rng::new(seed ^ i.rotate_left(17));
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&r.next().to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let last = r.next().to_le_bytes();
    let n = rest.len();
    rest.copy_from_slice(&last[..n]);
}

/// Folds `bytes` into a running checksum (FNV-1a over 8-byte words).
#[inline]
pub fn checksum(mut h: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h = (h ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(0x100_0000_01B3);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
    }
    h
}
