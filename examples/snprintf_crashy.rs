//! The seed's case made real: a formatting library that crashes the process
//! on about one call in forty lives in a child process, babysat by a
//! `Supervisor`. Its `format` calls `abort()` (a real `SIGABRT`, not an
//! error) on about one call in forty; the client formats 100,000 strings
//! through the supervisor and checks every answer. `format` is declared
//! idempotent, so a call whose server crashed is sent again to the
//! restarted one (with its blob copied over) and the caller only sees the
//! answer. One binary holds both sides: the supervisor re-enters it in the
//! `snprintf` role.
//!
//! ```sh
//! cargo run --release --example snprintf_crashy                  # 100,000 calls, 1 warm spare
//! cargo run --release --example snprintf_crashy -- 10000 0       # fewer calls, no spare
//! ```

use std::time::{Duration, Instant};

use isocall::{AppError, CallCtx, Method, ServerBuilder, Supervisor, supervise};

type Error = Box<dyn std::error::Error>;

/// What to format: `"{name}: {value:>width$}"`.
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
struct Format {
    name: String,
    width: u32,
    value: i64,
}

/// The number of bytes written into the caller's blob.
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
struct Written {
    len: u32,
}

/// The method, declared once for both sides, and idempotent: formatting
/// twice is harmless, so a call whose server crashed is sent again.
const FORMAT: Method<Format, Written> = Method::new("format").idempotent();

fn expected(name: &str, width: u32, value: i64) -> String {
    format!("{name}: {value:>w$}", w = width as usize)
}

/// The buggy library: crashes the process on about one call in forty.
struct Flaky(std::sync::atomic::AtomicU64, u64);

impl Flaky {
    fn seeded() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        // One call in `CRASH_ONE_IN` (default 40; 0 never) crashes.
        let one_in = std::env::var("CRASH_ONE_IN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(40);
        Flaky(
            std::sync::atomic::AtomicU64::new(t ^ u64::from(std::process::id()) << 32 | 1),
            one_in,
        )
    }

    fn crash_now(&self) -> bool {
        // xorshift64; one worker thread, so a plain load/store suffices.
        let mut x = self.0.load(std::sync::atomic::Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.store(x, std::sync::atomic::Ordering::Relaxed);
        self.1 != 0 && x.is_multiple_of(self.1)
    }
}

/// The service, in the child: `format` writes into the request's blob.
fn serve() -> Result<(), Error> {
    let flaky = Flaky::seeded();
    ServerBuilder::supervised()?
        .method(
            FORMAT,
            move |req: &ArchivedFormat, ctx: &mut CallCtx<'_>| {
                let text = expected(
                    req.name.as_str(),
                    req.width.to_native(),
                    req.value.to_native(),
                );
                let fail = |e: &dyn std::fmt::Display| AppError::new(1, e.to_string());
                let mut out = ctx.blob_mut(0).map_err(|e| fail(&e))?;
                let n = text.len().min(out.capacity());
                out.set_len(n).map_err(|e| fail(&e))?;
                out.copy_from_slice(&text.as_bytes()[..n]);
                if flaky.crash_now() {
                    // Half-written answer in the caller's blob, then down.
                    std::process::abort();
                }
                ctx.reply_blob(out).map_err(|e| fail(&e))?;
                Ok(Written {
                    len: text.len() as u32,
                })
            },
        )
        .spawn()?
        .run();
    Ok(())
}

fn main() -> Result<(), Error> {
    if supervise::role().as_deref() == Some("snprintf") {
        return serve();
    }
    let args: Vec<String> = std::env::args().collect();
    let number = |i: usize, default: u64| -> Result<u64, Error> {
        args.get(i).map_or(Ok(default), |n| {
            n.parse().map_err(|_| format!("not a number: {n}").into())
        })
    };
    let calls = number(1, 100_000)?;
    let standby = number(2, 1)? as usize;

    // About one call in forty crashes, so thousands of restarts are the
    // plan here, not a crash loop: allow them (the default is 10 in 10 s).
    let supervisor = Supervisor::role("snprintf", "snprintf")?
        .intensity(100_000, Duration::from_secs(10))
        .retries(16)
        .standby(standby)
        .spawn()?;
    let mut client = supervisor.client();
    let format = client.method(FORMAT)?;
    let started = Instant::now();
    for i in 0..calls {
        let name = ["alpha", "beta", "gamma", "delta"][(i % 4) as usize];
        let (width, value) = ((i % 17) as u32, (i as i64).wrapping_mul(7919) - 500_000);
        let req = Format {
            name: name.into(),
            width,
            value,
        };
        let pool = client.pool()?.ok_or("the service gave no blob pool")?;
        let mut buf = pool.alloc(256)?;
        buf.set_len(256)?;
        let handle = buf.send()?;
        let want = expected(name, width, value);
        // The answer is read in place, in the blob of whichever instance
        // answered (the reply knows its pool).
        let mut reply = client.call_with(format, &req, &[handle], None)?;
        let len = reply.len.to_native() as usize;
        let out = reply.blob(0)?;
        if len != want.len() || &out[..] != want.as_bytes() {
            return Err(format!(
                "call {i}: got {:?}, expected {want:?}",
                String::from_utf8_lossy(&out)
            )
            .into());
        }
    }
    let took = started.elapsed();
    let s = supervisor.stats();
    drop(client);
    drop(supervisor);
    println!(
        "{calls} of {calls} strings formatted right by a service that crashed {} times \
         ({} restarts, {} calls retried, {} failed, {standby} warm spare(s)): {:.0} calls/s, \
         mean recovery {:.1} µs",
        s.crashes,
        s.restarts,
        s.retries,
        s.calls_failed,
        calls as f64 / took.as_secs_f64(),
        s.mean_recovery().unwrap_or_default().as_secs_f64() * 1e6,
    );
    Ok(())
}
