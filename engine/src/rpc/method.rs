//! Methods as typed values, declared once and shared by client and server
//! code, and their signatures, which travel in the handshake.
//!
//! ```
//! use isocall_engine::rpc::{Message, Method};
//! # #[derive(rkyv::Archive, rkyv::Serialize, isocall_schema::Schema)]
//! # #[schema(crate = "isocall_schema")]
//! # struct Add { a: u64, b: u64 }
//! # #[derive(rkyv::Archive, rkyv::Serialize, isocall_schema::Schema)]
//! # #[schema(crate = "isocall_schema")]
//! # struct Sum { sum: u64 }
//! # #[derive(rkyv::Archive, rkyv::Serialize, isocall_schema::Schema)]
//! # #[schema(crate = "isocall_schema")]
//! # struct Line { text: String }
//! /// A call: the server answers each request with a reply.
//! const ADD: Method<Add, Sum> = Method::new("add").idempotent();
//! /// A one-way message: no answer.
//! const LOG: Message<Line> = Message::new("log");
//! assert_eq!(ADD.name(), "add");
//! assert!(ADD.is_idempotent());
//! ```
//!
//! A server registers a method's handler with the value; a client resolves
//! the value once per connection (`Client::method`), which checks that the
//! server registered the method with the same kind and the same request
//! and reply types: each type's [`Schema`](isocall_schema::Schema)
//! fingerprint (its name and the names, order and types of its fields)
//! travels in the server's hello. A mismatch is an error at that moment,
//! naming both sides' types, never garbage later. What is resolved is a
//! [`MethodRef`], a `Copy` value that calls cost nothing more to use.

use std::fmt;
use std::marker::PhantomData;

use isocall_schema::Schema;

use super::body::Body;

/// A call `Req -> Resp`, named `name` on the server.
pub struct Method<Req, Resp> {
    name: &'static str,
    idempotent: bool,
    _t: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> Clone for Method<Req, Resp> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Req, Resp> Copy for Method<Req, Resp> {}

impl<Req, Resp> fmt::Debug for Method<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Method")
            .field("name", &self.name)
            .field("idempotent", &self.idempotent)
            .finish()
    }
}

impl<Req, Resp> Method<Req, Resp> {
    /// The method `name`.
    pub const fn new(name: &'static str) -> Self {
        Method {
            name,
            idempotent: false,
            _t: PhantomData,
        }
    }

    /// The same method, declared idempotent: running it twice has the
    /// effect of running it once, so a supervised client sends it again
    /// to a restarted server when the server dies during the call. The
    /// server announces what it registered; methods not declared so are
    /// never run twice.
    pub const fn idempotent(self) -> Self {
        Method {
            idempotent: true,
            ..self
        }
    }

    /// Its name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Whether it is declared idempotent.
    pub const fn is_idempotent(&self) -> bool {
        self.idempotent
    }
}

impl<Req: Body, Resp: Body> Method<Req, Resp> {
    /// Its signature: a call from `Req` to `Resp`.
    pub fn signature(&self) -> Signature {
        Signature {
            kind: MethodKind::Call,
            request: TypeSig::of::<Req>(),
            reply: Some(TypeSig::of::<Resp>()),
        }
    }
}

/// A one-way message of type `M`, named `name` on the server.
pub struct Message<M> {
    name: &'static str,
    _t: PhantomData<fn(M)>,
}

impl<M> Clone for Message<M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for Message<M> {}

impl<M> fmt::Debug for Message<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message").field("name", &self.name).finish()
    }
}

impl<M> Message<M> {
    /// The message `name`.
    pub const fn new(name: &'static str) -> Self {
        Message {
            name,
            _t: PhantomData,
        }
    }

    /// Its name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<M: Body> Message<M> {
    /// Its signature: a one-way message of `M`.
    pub fn signature(&self) -> Signature {
        Signature {
            kind: MethodKind::Message,
            request: TypeSig::of::<M>(),
            reply: None,
        }
    }
}

/// Whether a method answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MethodKind {
    /// A call: a request answered by a reply.
    Call,
    /// A one-way message.
    Message,
}

/// A type as the handshake names it: its name and its fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TypeSig {
    /// Its name (e.g. `Add`, `Vec<u32>`).
    pub name: String,
    /// Its structural fingerprint.
    pub fingerprint: u64,
}

impl TypeSig {
    /// The signature of `T`.
    pub fn of<T: Schema>() -> TypeSig {
        TypeSig {
            name: T::NAME.to_string(),
            fingerprint: T::FINGERPRINT,
        }
    }
}

impl fmt::Display for TypeSig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (#{:016x})", self.name, self.fingerprint)
    }
}

/// What a method takes and gives, as the handshake carries it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Signature {
    /// A call or a message.
    pub kind: MethodKind,
    /// The request (or message) type.
    pub request: TypeSig,
    /// The reply type (`None` for a message).
    pub reply: Option<TypeSig>,
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.reply) {
            (MethodKind::Call, Some(r)) => write!(f, "a call {} -> {}", self.request, r),
            (_, _) => write!(f, "a message {}", self.request),
        }
    }
}

/// A method resolved on one client: its id on the server, checked to have
/// the types `Req -> Resp` there. `Copy`; using it on another client is an
/// error ([`CallError::ForeignMethod`](super::CallError::ForeignMethod)).
pub struct MethodRef<Req, Resp> {
    pub(crate) id: u32,
    pub(crate) client: u64,
    pub(crate) name: &'static str,
    pub(crate) idempotent: bool,
    _t: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> Clone for MethodRef<Req, Resp> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Req, Resp> Copy for MethodRef<Req, Resp> {}

impl<Req, Resp> fmt::Debug for MethodRef<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodRef")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("idempotent", &self.idempotent)
            .finish()
    }
}

impl<Req, Resp> MethodRef<Req, Resp> {
    pub(crate) fn new(id: u32, client: u64, name: &'static str, idempotent: bool) -> Self {
        MethodRef {
            id,
            client,
            name,
            idempotent,
            _t: PhantomData,
        }
    }

    /// The method's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether calls through it are retried by a supervised client after a
    /// crash (by default, what the server declared).
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// The same method with its calls declared idempotent (`true`: a
    /// supervised client retries them on the successor when the server
    /// dies during the call) or not (`false`: such a call fails with
    /// `PeerDied` and never runs twice).
    #[must_use]
    pub fn with_idempotent(self, yes: bool) -> Self {
        MethodRef {
            idempotent: yes,
            ..self
        }
    }
}

/// A one-way message resolved on one client.
pub struct MessageRef<M> {
    pub(crate) id: u32,
    pub(crate) client: u64,
    pub(crate) name: &'static str,
    _t: PhantomData<fn(M)>,
}

impl<M> Clone for MessageRef<M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for MessageRef<M> {}

impl<M> fmt::Debug for MessageRef<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageRef")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish()
    }
}

impl<M> MessageRef<M> {
    pub(crate) fn new(id: u32, client: u64, name: &'static str) -> Self {
        MessageRef {
            id,
            client,
            name,
            _t: PhantomData,
        }
    }

    /// The message's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// A distinct tag for each client made in this process, so a
/// [`MethodRef`] cannot be used on a client it was not resolved on.
pub(crate) fn next_client_tag() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    // 64 bits: never reused (a tag also keys the table that dropped
    // `Pending`s report to, see `Abandoned`).
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
