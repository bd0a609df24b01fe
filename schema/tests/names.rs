//! `Schema::NAME`: as written, no module path, with generic arguments.
// The types below exist to be described, never built or read.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use isocall_schema::{NameBuf, Schema};

fn name<T: Schema + ?Sized>() -> &'static str {
    T::NAME
}

#[test]
fn standard_types() {
    assert_eq!(name::<u8>(), "u8");
    assert_eq!(name::<usize>(), "usize");
    assert_eq!(name::<f64>(), "f64");
    assert_eq!(name::<bool>(), "bool");
    assert_eq!(name::<char>(), "char");
    assert_eq!(name::<String>(), "String");
    assert_eq!(name::<()>(), "()");
    assert_eq!(name::<(u8,)>(), "(u8,)");
    assert_eq!(name::<(u8, String)>(), "(u8, String)");
    assert_eq!(
        name::<(u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8)>(),
        "(u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8)"
    );
    assert_eq!(name::<[u8; 16]>(), "[u8; 16]");
    assert_eq!(name::<Box<[u8]>>(), "Box<[u8]>");
    assert_eq!(name::<Arc<str>>(), "Arc<str>");
    assert_eq!(name::<Rc<u8>>(), "Rc<u8>");
    assert_eq!(name::<Vec<Option<u32>>>(), "Vec<Option<u32>>");
    assert_eq!(name::<VecDeque<u8>>(), "VecDeque<u8>");
    assert_eq!(name::<Result<u32, String>>(), "Result<u32, String>");
    assert_eq!(
        name::<HashMap<String, Vec<u8>>>(),
        "HashMap<String, Vec<u8>>"
    );
    assert_eq!(name::<BTreeMap<u8, ()>>(), "BTreeMap<u8, ()>");
    assert_eq!(name::<HashSet<u8>>(), "HashSet<u8>");
    assert_eq!(name::<BTreeSet<u8>>(), "BTreeSet<u8>");
    assert_eq!(name::<PhantomData<str>>(), "PhantomData<str>");
    assert_eq!(name::<NonZeroU32>(), "NonZero<u32>");
    assert_eq!(name::<NonZeroUsize>(), "NonZero<usize>");
    assert_eq!(name::<Duration>(), "Duration");
    assert_eq!(name::<IpAddr>(), "IpAddr");
    assert_eq!(name::<SocketAddr>(), "SocketAddr");
    assert_eq!(name::<std::ops::Range<u64>>(), "Range<u64>");
}

#[derive(Schema)]
#[schema(crate = "isocall_schema")]
struct Plain {
    x: u8,
}

#[derive(Schema)]
#[schema(crate = "isocall_schema")]
struct Generic<'a, T, const N: usize, U = u8>
where
    T: Copy,
{
    t: [T; N],
    u: U,
    #[schema(opaque = "lifetime")]
    marker: PhantomData<&'a ()>,
}

#[derive(Schema)]
#[schema(crate = "isocall_schema", rename = "Renamed")]
struct Original<T>(T);

#[derive(Schema)]
#[schema(crate = "isocall_schema")]
#[allow(non_camel_case_types)]
struct r#type {
    r#match: u8,
}

#[test]
fn derived_types() {
    assert_eq!(Plain::NAME, "Plain");
    assert_eq!(
        <Generic<'static, u16, 3, String>>::NAME,
        "Generic<u16, 3, String>"
    );
    assert_eq!(<Generic<'static, u16, 3>>::NAME, "Generic<u16, 3, u8>");
    assert_eq!(<Original<Plain>>::NAME, "Renamed<Plain>");
    assert_eq!(<r#type>::NAME, "type");
}

#[test]
fn long_names_are_cut() {
    type Deep = Vec<Vec<Vec<Vec<Vec<Vec<Vec<Vec<Vec<Vec<HashMap<String, String>>>>>>>>>>>;
    type Deeper = (Deep, Deep, Deep, Deep, Deep, Deep);
    let name = <Deeper as Schema>::NAME;
    assert_eq!(name.len(), NameBuf::CAPACITY);
    assert!(name.starts_with("(Vec<Vec<"));
    assert!(name.ends_with("..."));
    // The fingerprint is not cut: it tells the last element apart.
    type Other = (Deep, Deep, Deep, Deep, Deep, Vec<u8>);
    assert_ne!(Deeper::FINGERPRINT, Other::FINGERPRINT);
}
