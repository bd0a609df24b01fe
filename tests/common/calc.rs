//! The little `add` service the call tests share.

use std::sync::atomic::{AtomicU64, Ordering};

use isocall::{AppError, CallCtx, CallError, Client, Method, SocketName};

/// Request of `add`.
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
#[rkyv(derive(Debug))]
pub struct Add {
    pub a: u64,
    pub b: u64,
}

/// Reply of `add`.
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
#[rkyv(derive(Debug))]
pub struct Sum {
    pub sum: u64,
}

/// `add`: the sum of the request's two numbers. Servers that run it
/// twice without harm register [`ADD`]`.idempotent()`.
pub const ADD: Method<Add, Sum> = Method::new("add");

/// The handler of `add` that the tests' servers register (wrapping: a
/// server must not panic on a client's numbers).
pub fn serve_add(r: &ArchivedAdd, _: &mut CallCtx<'_>) -> Result<Sum, AppError> {
    Ok(Sum {
        sum: r.a.to_native().wrapping_add(r.b.to_native()),
    })
}

/// Calls `add`.
pub fn add(c: &mut Client, a: u64, b: u64) -> Result<u64, CallError> {
    let m = c.method(ADD)?;
    Ok(c.call(m, &Add { a, b })?.sum.to_native())
}

/// An abstract socket name no other test uses.
pub fn unique(tag: &str) -> SocketName {
    static N: AtomicU64 = AtomicU64::new(0);
    SocketName::Abstract(format!(
        "isocall-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}
