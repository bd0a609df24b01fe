//! What the typed call API promises, against a server in another process:
//! a client that declares a method with other types than the server (the
//! reply type, the request type, a type with one field more, a call where
//! the server has a one-way message or the reverse) fails when it
//! resolves the method, with an error naming both sides' types; a request
//! whose bytes the server's type does not accept comes back as
//! `BadRequest` naming the type the server expects; a handler's
//! application error reaches the caller with its code, and a handler's
//! panic with its message while the server goes on serving. Each test runs
//! on every transport.

mod common;

use common::calc::*;
use common::transport::{Transport, serve_transport_for_parent, server_process_on};
use common::*;
use isocall::rpc::{Endpoint, MethodKind, TypeMismatch, TypeSig};
use isocall::{
    AppError, CallCtx, CallError, Client, Message, Method, Schema, ServerBuilder, SharedClient,
};

on_every_transport!(
    a_reply_type_that_differs_from_the_server_s_is_refused_at_resolve,
    a_request_type_that_differs_from_the_server_s_is_refused_at_resolve,
    a_type_with_one_field_more_is_another_type,
    a_one_way_message_declared_as_a_call_and_a_call_declared_as_a_message_are_refused,
    a_request_the_server_s_type_refuses_is_a_bad_request_naming_that_type,
    an_application_error_reaches_the_caller_with_its_code,
    a_handler_panic_is_reported_with_its_message_and_the_server_serves_on,
);

/// A one-way message of the server.
const LOG: Message<Add> = Message::new("log");
/// Refuses with an application error: code [`REFUSED`], a message naming
/// `a`.
const REFUSE: Method<Add, Sum> = Method::new("refuse");
/// Panics with a message naming `a`.
const BOOM: Method<Add, Sum> = Method::new("boom");

/// The application error code of `refuse`.
const REFUSED: u32 = 42;

/// A reply type the server does not use for `add`.
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
struct Other {
    other: u64,
}

/// A request type the server does not use for `add` (the same fields as
/// `Add`, another name).
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
struct Sub {
    a: u64,
    b: u64,
}

/// `Add` as a newer build of the client declares it: one field more.
mod v2 {
    #[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
    pub struct Add {
        pub a: u64,
        pub b: u64,
        pub saturating: bool,
    }
}

/// A body that is no archive of `Add` (four bytes, where an archived `Add`
/// takes sixteen), under a schema that claims to be `Add`'s: the one way
/// the typed API can be made to put bytes the server's type refuses into
/// a request, as a buggy or hostile client writes them.
#[derive(rkyv::Archive, rkyv::Serialize)]
struct NotAnAdd {
    x: u32,
}

impl Schema for NotAnAdd {
    const NAME: &'static str = <Add as Schema>::NAME;
    const FINGERPRINT: u64 = <Add as Schema>::FINGERPRINT;
}

fn server(b: ServerBuilder) -> ServerBuilder {
    b.method(ADD, serve_add)
        .message(LOG, |_: &ArchivedAdd, _: &mut CallCtx<'_>| {})
        .method(REFUSE, |r: &ArchivedAdd, _: &mut CallCtx<'_>| {
            Err(AppError::new(
                REFUSED,
                format!("no thanks: {}", r.a.to_native()),
            ))
        })
        .method(BOOM, |r: &ArchivedAdd, _: &mut CallCtx<'_>| {
            panic!("boom at {}", r.a.to_native())
        })
}

/// A server in a child process on transport `t`; returns once it
/// listens, with the endpoint to dial.
fn server_process(t: Transport, tag: &str) -> (Peer, Endpoint) {
    server_process_on("typed_server_entry", t, tag, "")
}

#[test]
#[ignore = "entry point of the server process that the other tests spawn"]
fn typed_server_entry() {
    serve_transport_for_parent(|b, _| server(b));
}

/// The mismatch `r` must be, for method `name`.
fn mismatch<T: std::fmt::Debug>(r: Result<T, CallError>, name: &str) -> TypeMismatch {
    match r {
        Err(CallError::TypeMismatch(m)) => {
            assert_eq!(m.method, name);
            *m
        }
        other => panic!("expected a type mismatch on {name:?}, got {other:?}"),
    }
}

fn a_reply_type_that_differs_from_the_server_s_is_refused_at_resolve(t: Transport) {
    let (_server, socket) = server_process(t, "reply-type");
    let c = Client::connect(&socket).expect("connect");
    let m = mismatch(c.method(Method::<Add, Other>::new("add")), "add");
    assert_eq!(m.ours.kind, MethodKind::Call);
    assert_eq!(m.ours.request, m.theirs.request, "the requests agree");
    assert_eq!(m.ours.reply, Some(TypeSig::of::<Other>()));
    assert_eq!(m.theirs.reply, Some(TypeSig::of::<Sum>()));
    let text = CallError::from(m).to_string();
    for name in ["\"add\"", "Other", "Sum"] {
        assert!(text.contains(name), "names {name}: {text}");
    }
    // A shared client resolves the same way.
    let shared = SharedClient::connect(&socket).expect("connect");
    let m = mismatch(shared.method(Method::<Add, Other>::new("add")), "add");
    assert_eq!(m.theirs.reply, Some(TypeSig::of::<Sum>()));
    // The right declaration resolves, on the same connections.
    let mut c = c;
    assert_eq!(add(&mut c, 2, 40).unwrap(), 42);
    let add = shared.method(ADD).unwrap();
    assert_eq!(
        shared
            .call(add, &Add { a: 1, b: 2 })
            .unwrap()
            .sum
            .to_native(),
        3
    );
}

fn a_request_type_that_differs_from_the_server_s_is_refused_at_resolve(t: Transport) {
    let (_server, socket) = server_process(t, "request-type");
    let mut c = Client::connect(&socket).expect("connect");
    let m = mismatch(c.method(Method::<Sub, Sum>::new("add")), "add");
    assert_eq!(m.ours.request, TypeSig::of::<Sub>());
    assert_eq!(m.theirs.request, TypeSig::of::<Add>());
    assert_eq!(m.ours.reply, m.theirs.reply, "the replies agree");
    let text = CallError::from(m).to_string();
    for name in ["\"add\"", "Sub", "Add"] {
        assert!(text.contains(name), "names {name}: {text}");
    }
    assert_eq!(add(&mut c, 2, 40).unwrap(), 42);
}

fn a_type_with_one_field_more_is_another_type(t: Transport) {
    let (_server, socket) = server_process(t, "field-added");
    let mut c = Client::connect(&socket).expect("connect");
    let m = mismatch(c.method(Method::<v2::Add, Sum>::new("add")), "add");
    // Both are named `Add`: the fingerprints tell them apart, and the
    // message shows both.
    assert_eq!(m.ours.request.name, "Add");
    assert_eq!(m.theirs.request.name, "Add");
    assert_eq!(m.ours.request.fingerprint, <v2::Add as Schema>::FINGERPRINT);
    assert_eq!(m.theirs.request.fingerprint, <Add as Schema>::FINGERPRINT);
    assert_ne!(m.ours.request.fingerprint, m.theirs.request.fingerprint);
    let text = CallError::from(m).to_string();
    for fp in [
        <v2::Add as Schema>::FINGERPRINT,
        <Add as Schema>::FINGERPRINT,
    ] {
        let hex = format!("{fp:016x}");
        assert!(text.contains(&hex), "shows fingerprint {hex}: {text}");
    }
    assert!(text.contains("\"add\"") && text.contains("Add"), "{text}");
    assert_eq!(add(&mut c, 2, 40).unwrap(), 42);
}

fn a_one_way_message_declared_as_a_call_and_a_call_declared_as_a_message_are_refused(t: Transport) {
    let (_server, socket) = server_process(t, "kinds");
    let mut c = Client::connect(&socket).expect("connect");
    // The server's `log` is a one-way message.
    let m = mismatch(c.method(Method::<Add, Sum>::new("log")), "log");
    assert_eq!(m.ours.kind, MethodKind::Call);
    assert_eq!(m.theirs.kind, MethodKind::Message);
    assert_eq!(m.theirs.reply, None);
    let text = CallError::from(m).to_string();
    assert!(
        text.contains("\"log\"") && text.contains("a call") && text.contains("a message"),
        "{text}"
    );
    // The server's `add` is a call.
    let m = mismatch(c.message(Message::<Add>::new("add")), "add");
    assert_eq!(m.ours.kind, MethodKind::Message);
    assert_eq!(m.theirs.kind, MethodKind::Call);
    // Declared as the server has them, both work.
    let log = c.message(LOG).unwrap();
    c.send(log, &Add { a: 1, b: 1 }, &[]).unwrap();
    assert_eq!(add(&mut c, 2, 40).unwrap(), 42);
}

fn a_request_the_server_s_type_refuses_is_a_bad_request_naming_that_type(t: Transport) {
    let (_server, socket) = server_process(t, "bad-request");
    let mut c = Client::connect(&socket).expect("connect");
    let liar = c
        .method(Method::<NotAnAdd, Sum>::new("add"))
        .expect("its schema claims to be Add's");
    let e = c.call(liar, &NotAnAdd { x: 7 }).unwrap_err();
    match &e {
        CallError::BadRequest {
            method,
            expected,
            detail,
        } => {
            assert_eq!(method, "add");
            assert_eq!(expected, <Add as Schema>::NAME, "the server's request type");
            assert!(!detail.is_empty(), "the server says what is wrong");
        }
        other => panic!("expected BadRequest, got {other:?}"),
    }
    // The connection and the server go on.
    assert_eq!(add(&mut c, 2, 40).unwrap(), 42);
    let e = c.call(liar, &NotAnAdd { x: 8 }).unwrap_err();
    assert!(matches!(e, CallError::BadRequest { .. }), "{e}");
    assert_eq!(add(&mut c, 1, 1).unwrap(), 2);
}

fn an_application_error_reaches_the_caller_with_its_code(t: Transport) {
    let (_server, socket) = server_process(t, "app-error");
    let mut c = Client::connect(&socket).expect("connect");
    let refuse = c.method(REFUSE).unwrap();
    for a in [7u64, 8] {
        let e = c.call(refuse, &Add { a, b: 0 }).unwrap_err();
        match e {
            CallError::App(AppError { code, message }) => {
                assert_eq!(code, REFUSED);
                assert_eq!(message, format!("no thanks: {a}"));
            }
            other => panic!("expected an application error, got {other:?}"),
        }
    }
    assert_eq!(add(&mut c, 2, 40).unwrap(), 42);
}

fn a_handler_panic_is_reported_with_its_message_and_the_server_serves_on(t: Transport) {
    let (_server, socket) = server_process(t, "panic");
    let mut c = Client::connect(&socket).expect("connect");
    let boom = c.method(BOOM).unwrap();
    for a in [1u64, 2, 3] {
        let e = c.call(boom, &Add { a, b: 0 }).unwrap_err();
        match e {
            CallError::HandlerPanicked { method, message } => {
                assert_eq!(method, "boom");
                assert_eq!(message, format!("boom at {a}"));
            }
            other => panic!("expected HandlerPanicked, got {other:?}"),
        }
        assert_eq!(
            add(&mut c, a, 40).unwrap(),
            a + 40,
            "the server serves on after the panic"
        );
    }
    // Another connection is served too.
    let mut other = Client::connect(&socket).expect("connect after the panics");
    assert_eq!(add(&mut other, 1, 2).unwrap(), 3);
}
