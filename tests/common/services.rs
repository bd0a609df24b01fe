//! Services the supervision tests run as supervised child processes: the
//! test binary re-executed (a command line: `--exact service --ignored`)
//! with `SERVICE` in its environment saying which one.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use isocall::engine::rpc::{CallCtx, ServerBuilder};
use isocall::engine::supervise::{Supervisor, SupervisorBuilder};

use super::calc::{Add, ArchivedAdd, Sum};

/// Environment variable naming the service to run.
pub const SERVICE: &str = "ISOCALL_TEST_SERVICE";
/// One call in this many crashes the process (`abort`); 0 never.
pub const CRASH_ONE_IN: &str = "ISOCALL_TEST_CRASH_ONE_IN";
/// File the services write to (executions, "holding" markers).
pub const FILE: &str = "ISOCALL_TEST_FILE";

/// Request of `bump` (not idempotent: each execution is recorded).
#[derive(rkyv::Archive, rkyv::Serialize)]
pub struct Bump {
    pub id: u64,
}

/// A supervisor of this test binary running `service`, with the test
/// harness told to run only the `service` entry (an ignored test that calls
/// [`serve`]).
pub fn supervisor(name: &str, service: &str) -> SupervisorBuilder {
    let exe = std::env::current_exe().expect("current_exe");
    Supervisor::command(
        name,
        exe,
        ["--exact", "service", "--ignored", "--nocapture", "-q"],
    )
    .env(SERVICE, service)
    .intensity(1_000_000, Duration::from_secs(1))
}

/// A file path no other test uses.
pub fn temp_file(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir();
    let p = dir.join(format!("isocall-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

struct Flaky {
    state: std::sync::atomic::AtomicU64,
    one_in: u64,
}

impl Flaky {
    fn from_env() -> Flaky {
        let one_in = std::env::var(CRASH_ONE_IN)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32
            | 1;
        Flaky {
            state: std::sync::atomic::AtomicU64::new(seed),
            one_in,
        }
    }

    fn maybe_crash(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut x = self.state.load(Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state.store(x, Relaxed);
        if self.one_in != 0 && x.is_multiple_of(self.one_in) {
            std::process::abort();
        }
    }
}

fn file() -> PathBuf {
    PathBuf::from(std::env::var_os(FILE).expect("the test sets the service's file"))
}

/// Runs the service named in the environment; returns when the supervisor
/// retires it.
pub fn serve() {
    let service = std::env::var(SERVICE).expect("run by a supervision test");
    if service == "crash-at-start" {
        std::process::abort();
    }
    let flaky = std::sync::Arc::new(Flaky::from_env());
    let f = flaky.clone();
    let mut b = ServerBuilder::supervised()
        .expect("started by a supervisor")
        // `add`: idempotent, crashes now and then before answering.
        .idempotent_method::<Add, Sum, _>("add", move |r: &ArchivedAdd, _: &mut CallCtx<'_>| {
            f.maybe_crash();
            Ok(Sum {
                sum: r.a.to_native() + r.b.to_native(),
            })
        })
        .idempotent_method::<Add, Sum, _>("pid", |_: &ArchivedAdd, _: &mut CallCtx<'_>| {
            Ok(Sum {
                sum: u64::from(std::process::id()),
            })
        });
    let f = flaky.clone();
    // `bump`: not idempotent; each execution appends its id to the file,
    // then the process may crash before it answers.
    b = b.method::<Bump, Sum, _>("bump", move |r: &ArchivedBump, _: &mut CallCtx<'_>| {
        let mut out = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(file())
            .map_err(|e| e.to_string())?;
        out.write_all(format!("{}\n", r.id.to_native()).as_bytes())
            .map_err(|e| e.to_string())?;
        drop(out);
        f.maybe_crash();
        Ok(Sum {
            sum: r.id.to_native(),
        })
    });
    // `hold`: takes the request's blob and never answers (until killed).
    b = b.method::<Add, Sum, _>("hold", |_: &ArchivedAdd, ctx: &mut CallCtx<'_>| {
        let blob = ctx.accept_mut(0).map_err(|e| e.to_string())?;
        let _ = std::fs::write(file(), b"holding");
        loop {
            std::thread::park();
            let _ = &blob;
        }
    });
    // `sum_blob`: idempotent; the sum of the blob's bytes. The first
    // instance to see a blob starting with 1 holds it forever instead
    // (the test kills it there); later instances answer.
    b = b.idempotent_method::<Add, Sum, _>("sum_blob", |_: &ArchivedAdd, ctx: &mut CallCtx<'_>| {
        let blob = ctx.accept_mut(0).map_err(|e| e.to_string())?;
        if blob.first() == Some(&1)
            && std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(file())
                .is_ok()
        {
            loop {
                std::thread::park();
                let _ = &blob;
            }
        }
        Ok(Sum {
            sum: blob.iter().map(|&b| u64::from(b)).sum(),
        })
    });
    b.spawn().expect("server").run();
}

/// Service kind of [`log_start_and_exit`] (dispatched by the test's
/// `service` entry, not by [`serve`]).
pub const LOG_START_AND_EXIT: &str = "log-start-and-exit";

/// A service that never serves: appends the `CLOCK_MONOTONIC` instant of
/// its start (nanoseconds, one line) to the file, then exits with status 1.
pub fn log_start_and_exit() -> ! {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let ns = now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128;
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(file())
        .expect("the service's file");
    // One write of a short line to a file opened for appending: lines of
    // different instances never interleave.
    out.write_all(format!("{ns}\n").as_bytes())
        .expect("append the start");
    std::process::exit(1);
}

/// Service kind of [`slow_start`] (dispatched by the test's `service`
/// entry, not by [`serve`]).
pub const SLOW_START: &str = "slow-start";

/// How long [`slow_start`] takes before it answers a handshake.
pub const SLOW_START_DELAY: Duration = Duration::from_millis(500);

/// A service slow to start (a long initialisation, simulated by waiting
/// [`SLOW_START_DELAY`]): then serves as [`serve`] does.
pub fn slow_start() {
    // The slowness is what the test is about (a start longer than the
    // handshake timeout), not a way to wait for something.
    std::thread::sleep(SLOW_START_DELAY);
    serve();
}
