//! [`Caller`]: what code that calls needs of a client, whichever it holds.

use std::sync::Arc;
use std::time::Instant;

use isocall_blob::{BlobHandle, Pool};
use isocall_ringbuf::SharedRegion;

use super::{Client, Pending, Reply, SharedClient};
use crate::rpc::body::Body;
use crate::rpc::error::CallError;
use crate::rpc::method::{Message, MessageRef, Method, MethodRef};

/// The calls of a client: implemented by [`Client`], [`SharedClient`] and
/// the supervised client, so that code that calls does not care which one
/// it holds.
///
/// ```no_run
/// use isocall_engine::rpc::{Caller, Method};
/// # #[derive(rkyv::Archive, rkyv::Serialize, isocall_schema::Schema)]
/// # #[schema(crate = "isocall_schema")]
/// # struct Add { a: u64, b: u64 }
/// # #[derive(rkyv::Archive, rkyv::Serialize, isocall_schema::Schema)]
/// # #[schema(crate = "isocall_schema")]
/// # struct Sum { sum: u64 }
/// const ADD: Method<Add, Sum> = Method::new("add");
///
/// fn total<C: Caller>(c: &mut C, xs: &[u64]) -> Result<u64, C::Error> {
///     let add = c.method(ADD)?;
///     let mut sum = 0;
///     for &x in xs {
///         sum = c.call(add, &Add { a: sum, b: x })?.sum.to_native();
///     }
///     Ok(sum)
/// }
/// ```
pub trait Caller {
    /// The error of a call: [`CallError`], or one that wraps it (the
    /// supervised client's adds the supervisor's own failures).
    type Error: std::error::Error + From<CallError> + Send + Sync + 'static;

    /// Resolves `m` (checked against the server's types).
    ///
    /// # Errors
    ///
    /// `NoSuchMethod`, `TypeMismatch`; connection errors for a client that
    /// connects lazily.
    fn method<Req: Body, Resp: Body>(
        &mut self,
        m: Method<Req, Resp>,
    ) -> Result<MethodRef<Req, Resp>, Self::Error>;

    /// Resolves the one-way `m`.
    ///
    /// # Errors
    ///
    /// As [`method`](Self::method).
    fn message<M: Body>(&mut self, m: Message<M>) -> Result<MessageRef<M>, Self::Error>;

    /// Calls `m` and waits for its reply.
    ///
    /// # Errors
    ///
    /// As the client's `call`.
    fn call<Req: Body, Resp: Body>(
        &mut self,
        m: MethodRef<Req, Resp>,
        request: &Req,
    ) -> Result<Reply<'_, Resp>, Self::Error>;

    /// Calls `m` with blobs and a deadline.
    ///
    /// # Errors
    ///
    /// As the client's `call_with`.
    fn call_with<Req: Body, Resp: Body>(
        &mut self,
        m: MethodRef<Req, Resp>,
        request: &Req,
        blobs: &[BlobHandle],
        deadline: Option<Instant>,
    ) -> Result<Reply<'_, Resp>, Self::Error>;

    /// Starts a call; many may be in flight.
    ///
    /// # Errors
    ///
    /// As the client's `start`.
    fn start<Req: Body, Resp: Body>(
        &mut self,
        m: MethodRef<Req, Resp>,
        request: &Req,
        blobs: &[BlobHandle],
    ) -> Result<Pending<Resp>, Self::Error>;

    /// Waits for a started call.
    ///
    /// # Errors
    ///
    /// As the client's `wait`.
    fn wait<Resp: Body>(
        &mut self,
        pending: Pending<Resp>,
        deadline: Option<Instant>,
    ) -> Result<Reply<'_, Resp>, Self::Error>;

    /// Sends a one-way message.
    ///
    /// # Errors
    ///
    /// As the client's `send`.
    fn send<M: Body>(
        &mut self,
        m: MessageRef<M>,
        message: &M,
        blobs: &[BlobHandle],
    ) -> Result<(), Self::Error>;

    /// The blob pool request blobs are allocated from (connecting first if
    /// the client connects lazily).
    ///
    /// # Errors
    ///
    /// Connection errors for a client that connects lazily.
    fn pool(&mut self) -> Result<Option<Arc<Pool<SharedRegion>>>, Self::Error>;

    /// Sends now the requests of started calls the client holds back (over
    /// a stream socket, or on shared memory with
    /// [`batch_requests`](super::ClientOptions::batch_requests)).
    ///
    /// # Errors
    ///
    /// As the client's `flush`. The default does nothing (a client that
    /// holds nothing back).
    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

macro_rules! forward_caller {
    ($t:ty) => {
        impl Caller for $t {
            type Error = CallError;

            fn method<Req: Body, Resp: Body>(
                &mut self,
                m: Method<Req, Resp>,
            ) -> Result<MethodRef<Req, Resp>, CallError> {
                <$t>::method(self, m)
            }

            fn message<M: Body>(&mut self, m: Message<M>) -> Result<MessageRef<M>, CallError> {
                <$t>::message(self, m)
            }

            fn call<Req: Body, Resp: Body>(
                &mut self,
                m: MethodRef<Req, Resp>,
                request: &Req,
            ) -> Result<Reply<'_, Resp>, CallError> {
                <$t>::call(self, m, request)
            }

            fn call_with<Req: Body, Resp: Body>(
                &mut self,
                m: MethodRef<Req, Resp>,
                request: &Req,
                blobs: &[BlobHandle],
                deadline: Option<Instant>,
            ) -> Result<Reply<'_, Resp>, CallError> {
                <$t>::call_with(self, m, request, blobs, deadline)
            }

            fn start<Req: Body, Resp: Body>(
                &mut self,
                m: MethodRef<Req, Resp>,
                request: &Req,
                blobs: &[BlobHandle],
            ) -> Result<Pending<Resp>, CallError> {
                <$t>::start(self, m, request, blobs)
            }

            fn wait<Resp: Body>(
                &mut self,
                pending: Pending<Resp>,
                deadline: Option<Instant>,
            ) -> Result<Reply<'_, Resp>, CallError> {
                <$t>::wait(self, pending, deadline)
            }

            fn send<M: Body>(
                &mut self,
                m: MessageRef<M>,
                message: &M,
                blobs: &[BlobHandle],
            ) -> Result<(), CallError> {
                <$t>::send(self, m, message, blobs)
            }

            fn pool(&mut self) -> Result<Option<Arc<Pool<SharedRegion>>>, CallError> {
                Ok(<$t>::pool(self).cloned())
            }

            fn flush(&mut self) -> Result<(), CallError> {
                <$t>::flush(self)
            }
        }
    };
}

forward_caller!(Client);
forward_caller!(SharedClient);
