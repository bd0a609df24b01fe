//! isocall-engine: processes, memory and wake-ups around the rings.
//!
//! A connection between two processes owns one [`segment::Segment`]: a
//! sealed memfd with a validated header, a ring each way and (later) a blob
//! pool, mapped by both. Each side attaches a [`endpoint::Sender`] to the
//! ring it writes and a [`endpoint::Receiver`] to the ring it reads; they
//! wait by the chosen `WaitStrategy`, sleep on a shared futex (or an eventfd
//! doorbell for event loops) only when there is nothing to do, and the
//! peer's death becomes a prompt `PeerDied` for every waiter: a waiter reads
//! the peer's lifeline in the segment (a robust futex the kernel marks as
//! the peer dies) and a [`liveness::PeerWatch`] thread wakes the sleepers
//! (on that lifeline, the socket's hang-up or a pidfd). Everything the engine needs from the
//! OS is in [`sys`], behind safe functions.
#![deny(unsafe_code)]

/// The ring the endpoints are built on, re-exported so that users of the
/// engine (the tools, the bindings) need no other crate.
pub use isocall_blob as blob;
pub use isocall_ringbuf as ring;
pub use isocall_ringbuf::WaitStrategy;

pub mod endpoint;
pub mod liveness;
pub mod rpc;
pub mod segment;
pub mod supervise;
pub mod sys;
pub mod wake;

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
