//! The platform contract: everything isocall needs from the operating
//! system, and nothing else, behind safe functions and types. Other modules
//! of the engine (and the tools, through this public module) never call the
//! OS directly and never see a raw file descriptor number.
//!
//! What an OS must provide:
//! - a futex on a 32-bit word in memory shared between processes
//!   ([`futex_wait`], [`futex_wake`]);
//! - a doorbell that an event loop can poll ([`EventFd`]);
//! - anonymous shared memory that can be sealed against resizing, passed to
//!   another process as a descriptor and mapped by it ([`SharedMem`]);
//! - passing descriptors over a Unix socket ([`send_with_fds`],
//!   [`recv_with_fds`]), on seqpacket sockets that report the peer's
//!   credentials ([`listen_seqpacket`], [`connect_seqpacket`], [`peer_cred`]);
//! - a handle on another process that becomes readable when it exits
//!   ([`PidFd`]), and waiting on several descriptors ([`poll_readable`]);
//! - a heavy memory barrier that fences the running threads of other
//!   processes ([`heavy_barrier`]), so hot paths can use compiler fences;
//! - pinning a thread to a CPU ([`pin_current_thread`], [`available_cpus`]).
//!
//! Only Linux is implemented.

mod barrier;
mod cpu;
mod fd;
mod futex;
pub mod lifeline;
mod shm;
mod sock;

pub use barrier::{heavy_barrier, heavy_barrier_available};
pub use cpu::{allow_current_thread, allowed_cpus, available_cpus, pin_current_thread};
pub use fd::{EventFd, PidFd, Ready, poll_readable, poll_ready, recv_with_fds, send_with_fds};
pub use futex::{futex_wait, futex_wake};
pub use shm::SharedMem;
pub use sock::{
    PeerCred, SocketName, accept_seqpacket, connect_seqpacket, is_seqpacket, listen_seqpacket,
    peer_cred, recv_message, seqpacket_pair, unlink_socket,
};
