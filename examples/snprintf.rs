//! The design note's example made real: `snprintf` lives in another process.
//! A server process offers `format`, which writes the formatted string into
//! the caller's blob (the caller-allocated buffer of C's `snprintf`) and
//! returns its length; the client formats 1,000,000 strings through it and
//! checks every one against a local `format!`.
//!
//! ```sh
//! cargo run --release --example snprintf              # 1,000,000 calls
//! cargo run --release --example snprintf -- 10000     # fewer
//! ```

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use isocall::{AppError, CallCtx, Client, Method, ServerBuilder, SocketName};

type Error = Box<dyn std::error::Error>;

/// What to format: `"{name}: {value:>width$}"`, the job of the design
/// note's `snprintf(buf, len, "%s: %*d", name, width, value)`.
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

/// The method, declared once for both sides: the client's resolution
/// checks that the server registered it with these very types.
const FORMAT: Method<Format, Written> = Method::new("format");

fn expected(name: &str, width: u32, value: i64) -> String {
    format!("{name}: {value:>w$}", w = width as usize)
}

/// The server: `format` writes into the request's blob and sends it back.
fn serve(socket: &str) -> Result<(), Error> {
    let server = ServerBuilder::new(SocketName::Abstract(socket.into()))
        .method(FORMAT, |req: &ArchivedFormat, ctx: &mut CallCtx<'_>| {
            let text = expected(
                req.name.as_str(),
                req.width.to_native(),
                req.value.to_native(),
            );
            let fail = |e: &dyn std::fmt::Display| AppError::new(1, e.to_string());
            let mut out = ctx.blob_mut(0).map_err(|e| fail(&e))?;
            // snprintf semantics: write what fits, return the full length.
            let n = text.len().min(out.capacity());
            out.set_len(n).map_err(|e| fail(&e))?;
            out.copy_from_slice(&text.as_bytes()[..n]);
            ctx.reply_blob(out).map_err(|e| fail(&e))?;
            Ok(Written {
                len: text.len() as u32,
            })
        })
        .spawn()?;
    // Tell the parent we listen, then serve until it closes our stdin.
    println!("ready");
    std::io::stdout().flush()?;
    let _ = std::io::stdin().lines().next();
    drop(server);
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        return serve(&args[2]);
    }
    let calls: u64 = match args.get(1) {
        Some(n) => n
            .parse()
            .map_err(|_| format!("not a number of calls: {n}"))?,
        None => 1_000_000,
    };
    let socket = format!("isocall-snprintf-{}", std::process::id());
    let mut server = Command::new(std::env::current_exe()?)
        .args(["--serve", &socket])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        return Err(format!("server did not start: {line:?}").into());
    }

    let mut client = Client::connect(SocketName::Abstract(socket))?;
    let format = client.method(FORMAT)?;
    let pool = client.pool().ok_or("the server gave no blob pool")?.clone();
    // One 256-byte buffer, passed to the server and back on every call.
    let mut buf = pool.alloc(256)?;
    let started = Instant::now();
    for i in 0..calls {
        let name = ["alpha", "beta", "gamma", "delta"][(i % 4) as usize];
        let (width, value) = ((i % 17) as u32, (i as i64).wrapping_mul(7919) - 500_000);
        buf.set_len(buf.capacity())?;
        let handle = buf.send()?;
        let req = Format {
            name: name.into(),
            width,
            value,
        };
        let mut reply = client.call_with(format, &req, &[handle], None)?;
        let len = reply.len.to_native();
        // The buffer comes back: accepted from our own handle on the pool,
        // so it does not borrow the client.
        let back = reply.take_handle(0)?;
        drop(reply);
        buf = pool.accept_mut(&back)?;
        let want = expected(name, width, value);
        if len as usize != want.len() || &buf[..] != want.as_bytes() {
            return Err(format!(
                "call {i}: got {:?}, expected {want:?}",
                String::from_utf8_lossy(&buf)
            )
            .into());
        }
    }
    let took = started.elapsed();
    drop(buf);
    drop(client);
    drop(server.stdin.take());
    let status = server.wait()?;
    if !status.success() {
        return Err(format!("server exited with {status}").into());
    }
    println!(
        "{calls} strings formatted in another process, every one checked: {:.0} calls/s, {:.2} µs per call",
        calls as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / calls.max(1) as f64
    );
    Ok(())
}
