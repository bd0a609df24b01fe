//! Calls between processes: a server that listens on a Unix socket and
//! serves methods, a client that connects and calls them as if they were
//! local.
//!
//! A connection starts on a seqpacket Unix socket: the client says its
//! protocol version, the server checks the client's credentials
//! (`SO_PEERCRED`) against its [`Policy`], creates the connection's
//! segment (two rings and a blob pool) and sends a hello with the method
//! table and the segment's memfd and doorbells attached; the client checks
//! the seals and the layout before it maps anything, then says it is
//! ready. From then on calls travel on the rings only: a REQUEST frame
//! (call id, method id, blob handles, rkyv body), answered by a RESPONSE
//! (call id, status, blob handles, body). The socket stays open and idle;
//! its end (EOF) is how each side learns that the other died, and every
//! waiter then gets `PeerDied`.
//!
//! The client and server API does not mention rings or segments, so a
//! socket transport can sit under the same API later.

pub(crate) mod archive;
pub mod client;
pub mod large;
pub mod policy;
pub mod server;
pub mod wire;

use std::io;
use std::path::PathBuf;

pub use archive::{Body, Ser};
pub use client::{CallError, Client, ClientOptions, ConnectError, MethodId, Pending};
pub use large::{LARGE_CLASS, LargeBlob, large_id};
pub use policy::Policy;
pub use server::{CallCtx, Server, ServerBuilder, ServerError, ServerStats};
pub use wire::Status;

pub use crate::sys::{PeerCred, SocketName};

/// The default socket of a service: `$XDG_RUNTIME_DIR/isocall/<service>`
/// (or `/tmp/isocall-<uid>/<service>` without `XDG_RUNTIME_DIR`), in a
/// directory created with owner-only permissions.
///
/// # Errors
///
/// The directory cannot be created, or exists and is not owned by this
/// user with mode 0700.
pub fn default_socket(service: &str) -> io::Result<SocketName> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if service.is_empty() || service.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("service name {service:?} must be non-empty and contain no '/'"),
        ));
    }
    let uid = rustix::process::getuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("isocall"),
        None => PathBuf::from(format!("/tmp/isocall-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::metadata(&dir)?;
    if meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory owned by uid {uid} with mode 0700",
                dir.display()
            ),
        ));
    }
    Ok(SocketName::Path(dir.join(service)))
}
