//! isocall-engine: calls between processes over shared memory, and the
//! machinery under them.
//!
//! The API most programs need is at the root: a [`Server`] built with a
//! [`ServerBuilder`] serves typed [`Method`]s; a [`Client`] (one thread)
//! or [`SharedClient`] (many threads) calls them and gets [`Reply`] guards;
//! a [`Supervisor`] runs a crash-prone server as a child process and a
//! [`SupervisedClient`] rides through its crashes. All three clients
//! implement [`Caller`].
//!
//! Under them, a connection owns one segment: a sealed memfd with a
//! validated header, a ring each way and a blob pool, mapped by both
//! processes. Each side sends on the ring it writes and receives on the one
//! it reads; they wait by the chosen [`WaitStrategy`], sleep on a shared
//! futex (or the connection's doorbell for event loops) only when there is
//! nothing to do, and the peer's death becomes a prompt `PeerDied` for
//! every waiter. That machinery is in [`raw`], for programs that move
//! frames themselves (and for the inspector, the benchmarks and the
//! hostile-peer tests); it is not covered by the stability of the call
//! API. Everything the engine needs from the OS is in one contract module
//! (`sys`), behind safe functions.
//!
//! The same calls also run over a stream socket (TCP, Unix, under TLS with
//! the feature `tls`) for a peer on another host: a client connects to an
//! [`Endpoint`] (`"tcp://host:port"`, `"unix-stream:@name"`, or a
//! shared-memory name), a server [listens](ServerBuilder::listen) on
//! several at once. [`stream`] is that transport, with the ring
//! endpoint's frame-level interface; under the call layer the two are the
//! arms of one enum, the ring's the fast path.
#![deny(unsafe_code)]

pub mod channel;
mod endpoint;
mod liveness;
pub mod rpc;
mod segment;
pub mod stream;
pub mod supervise;
mod sys;
mod wake;

pub use isocall_blob as blob;
pub use isocall_ringbuf as ring;
pub use isocall_ringbuf::WaitStrategy;
pub use isocall_schema::{Fingerprint, NameBuf, Schema};

pub use rpc::{
    AppError, Body, CallCtx, CallError, Caller, Client, ClientOptions, CloseReason, Compression,
    ConnectError, Endpoint, IntoEndpoint, Limits, Message, MessageRef, Method, MethodRef, PeerCred,
    Pending, Policy, Refusal, Reply, Server, ServerBuilder, ServerError, ServerStats, SharedClient,
    SocketName, default_socket,
};
pub use supervise::{
    ServiceFailure, SuperviseError, SupervisedClient, SupervisedError, Supervisor,
    SupervisorBuilder,
};

/// The low level under the call API: segments, endpoints that move frames,
/// liveness, wake-ups, the wire formats and the OS layer.
///
/// For programs that move frames themselves, and for tools (the inspector,
/// the benchmarks) and tests (hostile peers, fuzzing) that must reach the
/// bytes. Not covered by the stability of the call API.
pub mod raw {
    pub use crate::endpoint::{
        EndpointError, Receiver, RxFrame, Sender, Side, TransportError, endpoint,
    };
    pub use crate::liveness::{Liveness, PeerWatch, RECHECK, Watched};
    /// Call bodies: rkyv archives, encoded in place and checked after the
    /// copy out of shared memory.
    pub mod body {
        pub use crate::rpc::body::*;
    }
    /// The hello of both ends of a connection, and its errors.
    pub mod handshake {
        pub use crate::rpc::handshake::*;
    }
    /// Large blobs: memfds shared past the pool, mapped to their
    /// announced length.
    pub mod large {
        pub use crate::rpc::large::*;
    }
    /// The call frames' wire format: heads, statuses, close reasons.
    pub mod wire {
        pub use crate::rpc::wire::*;
    }
    pub use crate::segment::{
        Direction, LAYOUT_VERSION, MAGIC, OWNER_WORDS, PAGE, PartDesc, SIDE_ABSENT, SIDE_ATTACHED,
        SIDE_CLOSED, Segment, SegmentError, SegmentHeader, SegmentLayout, SideState,
    };
    pub use crate::wake::RingParker;

    /// The OS layer: shared memory, doorbells, futexes, sockets, pidfds,
    /// peer credentials, CPU pinning.
    pub mod sys {
        pub use crate::sys::lifeline;
        pub use crate::sys::{
            BlobMem, CpuTopology, Doorbell, EventFd, MAX_FDS, PeerCred, PidFd, Ready, SharedMem,
            SocketName, accept_seqpacket, allow_current_thread, allowed_cpus, available_cpus,
            connect_seqpacket, cpu_topology, futex_wait, futex_wake, heavy_barrier,
            heavy_barrier_available, is_seqpacket, listen_seqpacket, peer_cred, peer_pidfd,
            pin_current_thread, poll_readable, poll_ready, recv_message, recv_with_fds,
            send_with_fds, seqpacket_pair, unlink_socket,
        };
        pub use crate::sys::{
            StreamTarget, accept_stream, connect_stream, listen_stream, local_inet_addr,
            poll_stream, recv_nowait, send_nowait, shutdown_stream,
        };
    }
}

/// The instant `d` from now, for a deadline: a duration too long to add to
/// the clock (a timeout of `Duration::MAX` meaning "no limit") gives a
/// century from now instead of a panic.
pub(crate) fn deadline_in(d: std::time::Duration) -> std::time::Instant {
    const CENTURY: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);
    let now = std::time::Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn a_deadline_of_no_limit_is_far_away_not_a_panic() {
        let now = Instant::now();
        assert!(super::deadline_in(Duration::MAX) > now + Duration::from_secs(86_400));
        let soon = super::deadline_in(Duration::from_millis(5));
        assert!(soon >= now + Duration::from_millis(5));
    }
}
