//! Calls between processes: a server that serves methods, a client that
//! calls them as if they were local.
//!
//! A connection starts on a seqpacket Unix socket: the server checks the
//! client's credentials (`SO_PEERCRED`) against its [`Policy`] and its
//! caps right after `accept`, the client checks the server's against its
//! own; the server creates the connection's segment (two rings and a blob
//! pool) and sends a hello with its method table (each method's name, kind
//! and type fingerprints) and the segment's memfd and this connection's
//! doorbell attached; the client checks the seals and the layout before it
//! maps anything, then says it is ready. From then on calls travel on the
//! rings only: a REQUEST frame (call id, method id, blob handles, rkyv
//! body), answered by a RESPONSE (call id, status, blob handles, body).
//!
//! Over a stream socket ([`Endpoint`]: `tcp://`, `unix:`, `unix-stream:`)
//! the same hello travels in frames, with nothing attached, and the calls
//! follow on the socket; each side keeps a blob pool of its own and blobs
//! travel inline ([`crate::stream`]). A TCP peer is known by its TLS
//! certificate, not by credentials ([`Policy`]).
//!
//! Methods are typed values declared once ([`Method`], [`Message`]);
//! resolving one on a client ([`Client::method`]) checks the server's
//! types. Replies are guards ([`Reply`]) that deref to the validated
//! archived value and free what they hold when dropped. Bodies are read
//! only from private memory (see [`raw::body`](crate::raw::body)'s copy rule). Any peer may be
//! hostile: every wait on it has a deadline, every shared descriptor is
//! used so it cannot block us, and its death is learnt from the kernel.

mod address;
pub(crate) mod body;
pub(crate) mod client;
mod error;
pub(crate) mod handshake;
pub(crate) mod large;
mod link;
pub(crate) mod method;
pub(crate) mod over_stream;
mod policy;
mod server;
pub(crate) mod wire;

use std::io;
use std::path::PathBuf;

pub(crate) use address::push_endpoint;
pub use address::{Compression, Endpoint, IntoEndpoint};
pub use body::{Body, EncodeError, ValidationError};
pub use client::{Caller, Client, ClientOptions, Pending, Reply, SharedClient};
pub use error::{
    AppError, CallError, ConnectError, Refusal, ReplyError, ServerError, TypeMismatch,
};
pub use handshake::HandshakeError;
pub use large::{LARGE_CLASS, LargeBlob, LargeError, LargeLimits, large_id};
pub use method::{Message, MessageRef, Method, MethodKind, MethodRef, Signature, TypeSig};
pub use policy::{Check, Policy, PolicyRefusal};
pub(crate) use server::hand_off;
pub use server::{BlobAccessError, CallCtx, Limits, Server, ServerBuilder, ServerStats, Source};
pub use wire::{CloseReason, FrameError, Status};

pub use crate::sys::{PeerCred, SocketName};

pub(crate) use policy::Who;
pub(crate) use server::{Admission, Key, Ticket};

/// The default socket of a service: `$XDG_RUNTIME_DIR/isocall/<service>`
/// (or `/tmp/isocall-<uid>/<service>` without `XDG_RUNTIME_DIR`), in a
/// directory created with owner-only permissions.
///
/// # Errors
///
/// `InvalidInput` for an empty name or one with `/`; the directory cannot
/// be created, or exists and is not a directory (a symlink is refused, not
/// followed) owned by this user with mode 0700.
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
    // Not `metadata`: a symlink planted at the path by another user must
    // be refused, not followed to a directory of theirs.
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory (not a symlink) owned by uid {uid} with mode 0700",
                dir.display()
            ),
        ));
    }
    Ok(SocketName::Path(dir.join(service)))
}
