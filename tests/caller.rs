//! The `Caller` trait: one generic function calls through a `Client`, a
//! `SharedClient` and a `SupervisedClient` alike (one call at a time,
//! pipelined, with a blob and a deadline), each against a server in
//! another process, on every transport.

mod common;

use std::time::{Duration, Instant};

use common::calc::*;
use common::services::{self, SUM_BLOB, blob_failure};
use common::transport::{Transport, serve_transport_for_parent, server_process_on, supervisor_on};
use common::*;
use isocall::rpc::Endpoint;
use isocall::{CallCtx, CallError, Caller, Client, SharedClient};

on_every_transport!(one_generic_function_calls_through_every_client);

const LIMIT: Duration = Duration::from_secs(30);

/// The entry the supervised children run (see `common::services`).
#[test]
#[ignore = "run by the supervision tests as a supervised child"]
fn service() {
    services::serve();
}

/// A plain server (not supervised) in a child process, with the methods
/// [`exercise`] uses.
fn server_process(t: Transport) -> (Peer, Endpoint) {
    server_process_on("caller_server_entry", t, "caller", "")
}

#[test]
#[ignore = "entry point of the server process that the other tests spawn"]
fn caller_server_entry() {
    serve_transport_for_parent(|b, _| {
        b.method(ADD, |r: &ArchivedAdd, _: &mut CallCtx<'_>| {
            Ok(Sum {
                sum: r.a.to_native() + r.b.to_native(),
            })
        })
        .method(SUM_BLOB, |_: &ArchivedAdd, ctx: &mut CallCtx<'_>| {
            let blob = ctx.blob(0).map_err(blob_failure)?;
            Ok(Sum {
                sum: blob.iter().map(|&b| u64::from(b)).sum(),
            })
        })
    });
}

/// Adds `xs` up one call at a time, doubles each of them in calls all in
/// flight at once, and sums the bytes of a blob: through whichever client
/// it is given. Returns the total.
fn exercise<C: Caller>(c: &mut C, xs: &[u64]) -> Result<u64, C::Error> {
    let add = c.method(ADD)?;
    let mut total = 0;
    for &x in xs {
        total = c.call(add, &Add { a: total, b: x })?.sum.to_native();
    }
    let pending = xs
        .iter()
        .map(|&x| c.start(add, &Add { a: x, b: x }, &[]))
        .collect::<Result<Vec<_>, _>>()?;
    for (p, &x) in pending.into_iter().zip(xs) {
        assert_eq!(c.wait(p, None)?.sum.to_native(), 2 * x);
    }
    let sum_blob = c.method(SUM_BLOB)?;
    let pool = c.pool()?.expect("a blob pool");
    let mut blob = pool.alloc(100).map_err(CallError::from)?;
    // Not starting with 1: the supervised service's `sum_blob` answers.
    blob.fill(2);
    let h = blob.send().map_err(CallError::from)?;
    let deadline = Some(Instant::now() + LIMIT);
    let sum = c
        .call_with(sum_blob, &Add { a: 0, b: 0 }, &[h], deadline)?
        .sum
        .to_native();
    assert_eq!(sum, 200, "the blob's bytes");
    assert_eq!(pool.stats().used(), 0, "the blob was freed");
    Ok(total)
}

fn one_generic_function_calls_through_every_client(t: Transport) {
    let xs: Vec<u64> = (1..=50).collect();
    let want: u64 = xs.iter().sum();

    let (_server, socket) = server_process(t);
    let mut client = Client::connect(&socket).expect("connect");
    assert_eq!(exercise(&mut client, &xs).expect("through a Client"), want);

    let mut shared = SharedClient::connect(&socket).expect("connect");
    assert_eq!(
        exercise(&mut shared, &xs).expect("through a SharedClient"),
        want
    );

    let sup = supervisor_on(t, "caller", "plain")
        .spawn()
        .expect("supervisor");
    let mut supervised = sup.client();
    assert_eq!(
        exercise(&mut supervised, &xs).expect("through a SupervisedClient"),
        want
    );
}
