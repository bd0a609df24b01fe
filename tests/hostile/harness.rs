//! The frame every hostile test runs in: the binary's test lock, a
//! watchdog, a socket named after the test and what the process held
//! before it started; and the checks the tests end with (the victim's
//! drop returns, everything held comes back).

use std::sync::MutexGuard;
use std::time::Duration;

use isocall::{Server, ServerStats, SocketName};

use super::abstract_name;
use super::probe::{self, Snapshot, snapshot};
use super::proc::{Peer, Watchdog, drop_promptly, serial, socket_name, wait_for, watchdog};

/// One hostile test while it runs. Declare it first in the test, so that
/// it is dropped last: its watchdog bounds everything else, and its lock
/// is held to the end.
pub struct Test {
    /// The test's socket (the victim's or the attacker's listener).
    pub socket: SocketName,
    /// What this process held before the test started.
    pub before: Snapshot,
    // Dropped before the lock, as when they were two locals.
    _dog: Watchdog,
    _serial: MutexGuard<'static, ()>,
}

impl Test {
    /// Takes the binary's test lock, starts a watchdog of `limit`, names
    /// the socket after `name` and takes the baseline.
    pub fn start(name: &'static str, limit: Duration) -> Test {
        let serial = serial();
        let dog = watchdog(name, limit);
        let socket = socket_name(name);
        let before = snapshot();
        Test {
            socket,
            before,
            _dog: dog,
            _serial: serial,
        }
    }

    /// The test binary again, in `role`, given the test's socket.
    pub fn peer(&self, role: &str) -> Peer {
        Peer::spawn(role, &abstract_name(&self.socket))
    }

    /// As [`peer`](Self::peer), run as user `uid` (needs root).
    pub fn peer_as(&self, role: &str, uid: u32) -> Peer {
        Peer::spawn_as(role, &abstract_name(&self.socket), Some(uid))
    }

    /// Waits until this process holds no more than before the test (see
    /// [`probe::expect_back`]), for 10 s.
    pub fn expect_back(&self, when: &str) {
        probe::expect_back(&self.before, Duration::from_secs(10), when);
    }

    /// Drops the victim server (the drop must return within 5 s) and
    /// waits until everything the test took came back.
    pub fn stop_server(&self, server: Server) {
        drop_promptly(server, "server");
        self.expect_back("after the server stopped");
    }
}

/// Waits until `server`'s counters satisfy `ok`, failing after `limit`
/// with `what` and the last counters.
pub fn wait_for_stats(
    server: &Server,
    limit: Duration,
    what: &str,
    ok: impl Fn(&ServerStats) -> bool,
) {
    wait_for(limit, what, || {
        let s = server.stats();
        ok(&s).then_some(()).ok_or(format!("{s:?}"))
    });
}
