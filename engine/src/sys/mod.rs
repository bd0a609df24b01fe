//! The platform contract: everything isocall needs from the operating
//! system, and nothing else, behind safe functions and types. Other modules
//! of the engine (and the tools, through this public module) never call the
//! OS directly and never see a raw file descriptor number.
//!
//! What an OS must provide:
//! - a futex on a 32-bit word in memory shared between processes
//!   ([`futex_wait`], [`futex_wake`]);
//! - a doorbell between two processes that an event loop can poll and that
//!   the peer cannot turn blocking ([`Doorbell`]), and a private one for
//!   this process's own threads ([`EventFd`]);
//! - anonymous shared memory that can be sealed against resizing, passed to
//!   another process as a descriptor and mapped by it ([`SharedMem`], and
//!   [`BlobMem`] for one blob's bytes);
//! - passing descriptors over a Unix socket ([`send_with_fds`],
//!   [`recv_with_fds`]), on seqpacket sockets that report the peer's
//!   credentials ([`listen_seqpacket`], [`connect_seqpacket`], [`peer_cred`],
//!   [`peer_pidfd`]); no send waits past a deadline;
//! - stream sockets for the socket transport (TCP and Unix `SOCK_STREAM`):
//!   non-blocking connects with a deadline, listeners, sends that never wait
//!   nor raise `SIGPIPE`, receives that never wait (or wait a bounded
//!   time, on a socket that asked for it), and `poll` on one of them
//!   ([`connect_stream`], [`listen_stream`], [`send_nowait`],
//!   [`recv_nowait`], [`block_reads`], [`recv_wait`], [`poll_stream`]);
//! - UDP sockets for lossy channels: bound non-blocking with a receive
//!   buffer size, and a wait for the next datagram ([`bind_datagram`],
//!   [`wait_datagram`]);
//! - a handle on another process that becomes readable when it exits
//!   ([`PidFd`]), and waiting on several descriptors ([`poll_readable`]);
//! - a heavy memory barrier that fences the running threads of other
//!   processes ([`heavy_barrier`]), so hot paths can use compiler fences;
//! - pinning a thread to a CPU ([`pin_current_thread`], [`available_cpus`]),
//!   and where a CPU sits: its core and last-level cache ([`cpu_topology`]).
//!
//! Only Linux is implemented.

mod barrier;
mod cpu;
mod datagram;
mod doorbell;
mod fd;
mod futex;
pub mod lifeline;
mod peer;
mod shm;
mod sock;
mod stream;

pub use barrier::{heavy_barrier, heavy_barrier_available};
pub use cpu::{
    CpuTopology, allow_current_thread, allowed_cpus, available_cpus, cpu_topology,
    pin_current_thread,
};
pub use datagram::{bind_datagram, wait_datagram};
pub use doorbell::Doorbell;
pub use fd::{
    EventFd, MAX_FDS, PidFd, Poller, Ready, poll_readable, poll_ready, recv_with_fds, send_with_fds,
};
pub use futex::{futex_wait, futex_wake};
pub use peer::{PeerCred, peer_cred, peer_pidfd};
pub use shm::{BlobMem, SharedMem};
pub use sock::{
    SocketName, accept_seqpacket, connect_seqpacket, is_seqpacket, listen_seqpacket, recv_message,
    seqpacket_pair, unlink_socket,
};
pub use stream::{
    StreamTarget, accept_stream, block_reads, connect_stream, is_inet, is_listening, is_stream,
    is_unix, listen_stream, local_inet_addr, peer_inet_addr, poll_stream, prepare_stream,
    recv_nowait, recv_wait, send_nowait, set_nonblocking, shutdown_stream, shutdown_stream_write,
};
