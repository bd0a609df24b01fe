//! Services the supervision tests run as supervised child processes: the
//! test binary re-executed (a command line: `--exact service --ignored`)
//! with `SERVICE` in its environment saying which one.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use isocall::supervise::NotSupervised;
use isocall::{AppError, CallCtx, Method, ServerBuilder, Supervisor, SupervisorBuilder};

use super::calc::{ADD, Add, ArchivedAdd, Sum};

/// Environment variable naming the service to run.
pub const SERVICE: &str = "ISOCALL_TEST_SERVICE";
/// One call in this many crashes the process (`abort`); 0 never.
pub const CRASH_ONE_IN: &str = "ISOCALL_TEST_CRASH_ONE_IN";
/// File the services write to (executions, "holding" markers).
pub const FILE: &str = "ISOCALL_TEST_FILE";

/// Request of `bump` (not idempotent: each execution is recorded).
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
pub struct Bump {
    pub id: u64,
}

/// `pid`: the serving process's pid (idempotent).
pub const PID: Method<Add, Sum> = Method::new("pid").idempotent();
/// `bump`: records `id` in the file, may crash, answers `id`.
pub const BUMP: Method<Bump, Sum> = Method::new("bump");
/// `hold`: takes the request's blob and never answers.
pub const HOLD: Method<Add, Sum> = Method::new("hold");
/// `sabotage`: shuts down every listening socket the process holds (the
/// supervisor's socket for the service's stream address, which every
/// instance shares), then crashes if `a` is 1, hangs (never answers,
/// never exits until killed) if `a` is 2, or answers.
pub const SABOTAGE: Method<Add, Sum> = Method::new("sabotage");
/// `sum_blob`: the sum of the blob's bytes (idempotent).
pub const SUM_BLOB: Method<Add, Sum> = Method::new("sum_blob").idempotent();

/// A handler's failure to use a blob, as an application error.
pub fn blob_failure(e: impl std::fmt::Display) -> AppError {
    AppError::new(BLOB_FAILURE, e.to_string())
}

/// The code of [`blob_failure`].
pub const BLOB_FAILURE: u32 = 1;

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

/// The exit status of a service that finds its supervisor gone.
pub const SUPERVISOR_GONE: i32 = 3;

/// The server builder of a supervised child. A child whose supervisor is
/// gone says so on stderr, as `not supervised: SupervisorGone
/// supervisor=<pid> parent=<pid>` (the variant and its fields, for the
/// test that starts one so), and exits with [`SUPERVISOR_GONE`].
fn supervised() -> ServerBuilder {
    match ServerBuilder::supervised() {
        Ok(b) => b,
        Err(NotSupervised::SupervisorGone {
            supervisor, parent, ..
        }) => {
            eprintln!("not supervised: SupervisorGone supervisor={supervisor} parent={parent}");
            std::process::exit(SUPERVISOR_GONE);
        }
        Err(e) => panic!("not started by a supervisor: {e}"),
    }
}

/// Runs `f` on every listening socket among this process's descriptors.
fn for_each_listener(mut f: impl FnMut(std::os::fd::BorrowedFd<'_>)) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for n in fds {
        // SAFETY: `n` was open when listed and nothing here closes it; a
        // number a server thread closes meanwhile gives EBADF, or names
        // the descriptor that took it (used only if it listens), which
        // these test services accept; no memory is touched.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(n) };
        if rustix::net::sockopt::socket_acceptconn(fd).unwrap_or(false) {
            f(fd);
        }
    }
}

/// Shuts down (both ways) every listening socket among this process's
/// descriptors: a hostile instance's shot at its successors.
fn shut_down_listeners() {
    for_each_listener(|fd| {
        let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Both);
    });
}

/// Waits (up to `limit`) until a client waits in the backlog of one of
/// this process's listening sockets: a listening socket polls readable
/// while a connection is queued for `accept`.
fn wait_for_a_queued_client(limit: Duration) {
    let mut raw = Vec::new();
    for_each_listener(|fd| raw.push(std::os::fd::AsRawFd::as_raw_fd(&fd)));
    // SAFETY: as in `for_each_listener`; the descriptors are the
    // supervisor's listening socket, which this process keeps open.
    let fds: Vec<_> = raw
        .iter()
        .map(|&n| unsafe { std::os::fd::BorrowedFd::borrow_raw(n) })
        .collect();
    let mut polled: Vec<_> = fds
        .iter()
        .map(|fd| rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN))
        .collect();
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let timeout = rustix::time::Timespec::try_from(left).expect("a timeout");
        match rustix::event::poll(&mut polled, Some(&timeout)) {
            Ok(n) if n > 0 => return,
            Err(rustix::io::Errno::INTR) => {}
            _ if left.is_zero() => return,
            _ => {}
        }
    }
}

fn file() -> PathBuf {
    PathBuf::from(std::env::var_os(FILE).expect("the test sets the service's file"))
}

/// Runs the service named in the environment; returns when the supervisor
/// retires it.
pub fn serve() {
    serve_after(|| {});
}

/// As [`serve`], running `ready` once the server is built (its listening
/// socket, if any, taken from the supervisor) and before it serves.
fn serve_after(ready: impl FnOnce()) {
    let service = std::env::var(SERVICE).expect("run by a supervision test");
    if service == "crash-at-start" {
        std::process::abort();
    }
    let flaky = std::sync::Arc::new(Flaky::from_env());
    let f = flaky.clone();
    let mut b = supervised()
        // `add`: idempotent, crashes now and then before answering.
        .method(
            ADD.idempotent(),
            move |r: &ArchivedAdd, _: &mut CallCtx<'_>| {
                f.maybe_crash();
                Ok(Sum {
                    sum: r.a.to_native() + r.b.to_native(),
                })
            },
        )
        .method(PID, |_: &ArchivedAdd, _: &mut CallCtx<'_>| {
            Ok(Sum {
                sum: u64::from(std::process::id()),
            })
        });
    // Supervised over TCP: open to anyone, or (the test PKI given) to the
    // test client's certificate under TLS.
    let tcp = std::env::var(isocall::supervise::ENV_LISTEN).is_ok_and(|a| a.starts_with("tcp://"));
    if tcp {
        b = match std::env::var(super::transport::PKI_ENV) {
            #[cfg(feature = "tls")]
            Ok(dir) => {
                b.tls(super::pki::Pki::at(&dir).server())
                    .policy(isocall::Policy::Certificate(vec![
                        isocall::stream::CertMatch::CommonName(super::pki::CLIENT_CN.into()),
                    ]))
            }
            _ => b.policy(isocall::Policy::Anyone),
        };
    }
    let f = flaky.clone();
    // `bump`: not idempotent; each execution appends its id to the file,
    // then the process may crash before it answers.
    b = b.method(BUMP, move |r: &ArchivedBump, _: &mut CallCtx<'_>| {
        let io = |e: std::io::Error| AppError::msg(e.to_string());
        let mut out = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(file())
            .map_err(io)?;
        out.write_all(format!("{}\n", r.id.to_native()).as_bytes())
            .map_err(io)?;
        drop(out);
        f.maybe_crash();
        Ok(Sum {
            sum: r.id.to_native(),
        })
    });
    b = b.method(SABOTAGE, |r: &ArchivedAdd, _: &mut CallCtx<'_>| {
        shut_down_listeners();
        match r.a.to_native() {
            1 => std::process::abort(),
            2 => loop {
                std::thread::park();
            },
            _ => Ok(Sum { sum: 0 }),
        }
    });
    // `hold`: takes the request's blob and never answers (until killed).
    b = b.method(HOLD, |_: &ArchivedAdd, ctx: &mut CallCtx<'_>| {
        let blob = ctx.blob_mut(0).map_err(blob_failure)?;
        let _ = std::fs::write(file(), b"holding");
        loop {
            std::thread::park();
            let _ = &blob;
        }
    });
    // `sum_blob`: idempotent; the sum of the blob's bytes. The first
    // instance to see a blob starting with 1 holds it forever instead
    // (the test kills it there); later instances answer.
    b = b.method(SUM_BLOB, |_: &ArchivedAdd, ctx: &mut CallCtx<'_>| {
        let blob = ctx.blob_mut(0).map_err(blob_failure)?;
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
    ready();
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

/// Service kind of [`queued_start`] (dispatched by the test's `service`
/// entry, not by [`serve`]).
pub const QUEUED_START: &str = "queued-start";

/// A service whose first instance serves at once (it creates the file),
/// and whose later instances serve only once a client waits in the
/// backlog of the service's listening socket: a client is then known to
/// have connected while no instance accepted.
pub fn queued_start() {
    let first = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file())
        .is_ok();
    serve_after(|| {
        if !first {
            wait_for_a_queued_client(Duration::from_secs(30));
        }
    });
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
