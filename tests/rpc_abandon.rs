//! Calls given up and replies ignored leak nothing: 100,000 calls whose
//! `Pending` is dropped without being waited for, and 100,000 replies that
//! carry a blob the caller never takes (it drops the `Reply`), against a
//! server in another process. Afterwards no call is in flight, every blob
//! slot is free as both sides see the pool, and the client's private
//! memory is where it was after a warm-up. Its own test binary, so that no
//! other test's memory counts; on every transport, one at a time.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use common::calc::*;
use common::transport::{Transport, serve_transport_for_parent, server_process_on};
use common::*;
use isocall::rpc::Endpoint;
use isocall::{AppError, CallCtx, Client, Method};

on_every_transport!(dropped_pendings_and_ignored_reply_blobs_leak_nothing);

/// One transport's run at a time: each measures this process's memory.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const CALLS: u64 = 100_000;
const WARM_UP: u64 = 10_000;

/// The bound on the growth of the client's private resident memory over
/// the measured calls. What the client keeps per connection is bounded and
/// reached in the warm-up (its window of calls in flight, a few reusable
/// reply buffers, its inbox); what remains is the allocator's noise, a few
/// pages. Any per-call leak passes it many times over: the smallest heap
/// allocation takes 32 bytes, so one lost per call is 6.4 MB over the
/// 200,000 calls, and one handle or id kept per call (8 to 16 bytes) is
/// 1.6 MB or more.
const GROWTH_BOUND: u64 = 1 << 20;

/// What a stream connection may keep besides, reached only when the calls
/// given up fill the socket: its sender's buffers of bytes the socket did
/// not take yet (two, swapped at each publish, each kept at up to 1 MiB
/// once emptied) and its receiver's read buffer. Still far under what a
/// leak of one allocation per call would grow.
const STREAM_BUFFERS: u64 = 3 << 20;

/// The pool as the server sees it: slots in use, and blobs it sent back.
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
struct Census {
    used: u64,
    blobs_sent: u64,
}

/// Answers `b` with a blob of `a` bytes attached, each byte `b as u8`.
const BLOB_REPLY: Method<Add, Sum> = Method::new("blob_reply");
/// The server's view of the pool.
const CENSUS: Method<Add, Census> = Method::new("census");

/// A server in a child process on transport `t`; returns once it
/// listens, with the endpoint to dial.
fn server_process(t: Transport) -> (Peer, Endpoint) {
    server_process_on("abandon_server_entry", t, "abandon", "")
}

#[test]
#[ignore = "entry point of the server process that the other tests spawn"]
fn abandon_server_entry() {
    static SENT: AtomicU64 = AtomicU64::new(0);
    serve_transport_for_parent(|b, _| {
        b.method(ADD, |r: &ArchivedAdd, _: &mut CallCtx<'_>| {
            Ok(Sum {
                sum: r.a.to_native() + r.b.to_native(),
            })
        })
        .method(BLOB_REPLY, |r: &ArchivedAdd, ctx: &mut CallCtx<'_>| {
            let fail = |e: &dyn std::fmt::Display| AppError::new(1, e.to_string());
            let mut blob = ctx.alloc(r.a.to_native() as usize).map_err(|e| fail(&e))?;
            blob.fill(r.b.to_native() as u8);
            ctx.reply_blob(blob).map_err(|e| fail(&e))?;
            SENT.fetch_add(1, Ordering::Relaxed);
            Ok(Sum {
                sum: r.b.to_native(),
            })
        })
        .method(CENSUS, |_: &ArchivedAdd, ctx: &mut CallCtx<'_>| {
            Ok(Census {
                used: ctx.pool().map_or(u64::MAX, |p| p.stats().used() as u64),
                blobs_sent: SENT.load(Ordering::Relaxed),
            })
        })
    });
}

/// This process's private resident memory in bytes: `RssAnon` of
/// `/proc/self/status` (what `/proc/self/statm` gives as resident less
/// shared pages), so that the pages of the connection's segment, shared
/// with the server, do not count.
fn private_resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("RssAnon in kB");
    kb << 10
}

/// `n` calls started and given up (their `Pending` dropped at once), then
/// `n` calls whose reply's blob is ignored, then one call, whose answer
/// means every earlier reply was read (replies come in order).
fn round(c: &mut Client, n: u64) {
    let m = c.method(BLOB_REPLY).unwrap();
    for i in 0..n {
        drop(c.start(m, &Add { a: 64, b: i }, &[]).expect("start"));
    }
    for i in 0..n {
        let r = c.call(m, &Add { a: 64, b: i }).expect("call");
        assert_eq!(r.sum.to_native(), i);
        assert_eq!(r.blob_handles().len(), 1, "the reply carries a blob");
        // Dropped without taking the blob: the reply frees it.
    }
    assert_eq!(add(c, 2, 40).unwrap(), 42);
}

fn dropped_pendings_and_ignored_reply_blobs_leak_nothing(t: Transport) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_server, socket) = server_process(t);
    let mut c = Client::connect(&socket).expect("connect");
    let pool = c.pool().expect("a pool").clone();
    let census = c.method(CENSUS).unwrap();
    round(&mut c, WARM_UP);
    let before = private_resident();
    round(&mut c, CALLS);
    let after = private_resident();

    assert_eq!(c.in_flight(), 0, "no call in flight");
    assert_eq!(pool.stats().used(), 0, "the client sees every slot free");
    let (used, sent) = {
        let r = c.call(census, &Add { a: 0, b: 0 }).unwrap();
        (r.used.to_native(), r.blobs_sent.to_native())
    };
    assert_eq!(used, 0, "the server sees every slot free");
    // Every ignored reply carried one (checked above); a given-up call's
    // reply carried one too unless the pool was short of slots then.
    assert!(
        sent >= WARM_UP + CALLS,
        "the server sent {sent} blobs in all"
    );
    let bound = GROWTH_BOUND + if t.is_stream() { STREAM_BUFFERS } else { 0 };
    assert!(
        after <= before + bound,
        "private memory grew from {before} to {after} bytes over {} calls",
        2 * CALLS
    );
    eprintln!("private resident memory: {before} bytes after the warm-up, {after} after");
}
