//! `body`: bytecheck of call bodies ([`Inbox::check`]) as the engine runs
//! it, on archives of a few types like those calls carry.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;

use isocall::raw::body::Inbox;

use super::within;

/// A call body with a string and a list (the shape of the RPC tests').
#[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, isocall::Schema)]
pub struct Greeting {
    /// A name.
    pub name: String,
    /// Some numbers.
    pub values: Vec<u32>,
}

/// Plain numbers (the `add` request of the examples).
#[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, isocall::Schema)]
pub struct Add {
    /// One.
    pub a: u64,
    /// Two.
    pub b: u64,
}

/// An enum with data in its variants.
#[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, isocall::Schema)]
pub enum Shape {
    /// No data.
    Empty,
    /// A named field.
    Square {
        /// Side.
        side: u32,
    },
    /// A string.
    Named(String),
    /// A list of pairs.
    Path(Vec<(i32, i32)>),
}

/// A hasher with fixed keys, so that the seeds are the same on every run
/// (the archived map is the same whatever the native map's hasher).
pub type Fixed = BuildHasherDefault<DefaultHasher>;

/// Nested lists, options, chars, bools and maps.
#[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, isocall::Schema)]
pub struct Record {
    /// Nested structs with strings and lists.
    pub items: Vec<Greeting>,
    /// An optional string.
    pub tag: Option<String>,
    /// A bool (only 0 and 1 are valid).
    pub flag: bool,
    /// A char (only scalar values are valid).
    pub letter: char,
    /// An enum.
    pub shape: Shape,
    /// A hash map (a swiss table to validate).
    pub index: HashMap<String, u32, Fixed>,
    /// A B-tree map.
    pub sorted: BTreeMap<u32, String>,
}

/// `body`: the input, copied into a private aligned buffer as the engine
/// does ([`Inbox`]), checked as an archive of [`Greeting`], [`Add`],
/// [`Shape`] and [`Record`]. A body that passes must be readable entirely
/// (every string and list inside the buffer, strings UTF-8), deserialize,
/// and serialize back to an archive that passes and holds the same value.
pub fn body(data: &[u8]) {
    let mut inbox = Inbox::new();
    inbox.fill(data);
    let buf = inbox.bytes();
    same_verdict_as_rkyv::<Greeting>(&inbox);
    same_verdict_as_rkyv::<Add>(&inbox);
    same_verdict_as_rkyv::<Shape>(&inbox);
    same_verdict_as_rkyv::<Record>(&inbox);
    if let Ok(c) = inbox.check::<Greeting>() {
        let g = c.get();
        greeting_inside(g, buf);
        round_trip::<Greeting>(g);
    }
    if let Ok(c) = inbox.check::<Add>() {
        round_trip::<Add>(c.get());
    }
    if let Ok(c) = inbox.check::<Shape>() {
        shape_inside(c.get(), buf);
        round_trip::<Shape>(c.get());
    }
    match inbox.check::<Record>() {
        Ok(c) => {
            let r = c.get();
            for g in r.items.iter() {
                greeting_inside(g, buf);
            }
            if let Some(t) = r.tag.as_ref() {
                assert!(within(t.as_bytes(), buf));
            }
            let _ = (r.flag, char::from(r.letter));
            shape_inside(&r.shape, buf);
            for (k, _) in r.index.iter() {
                assert!(within(k.as_bytes(), buf));
                // Lookups must not fail or read outside; but bytecheck does
                // not check that an entry sits where its hash leads, so a
                // peer's map may list a key that `get` does not find.
                if let Some(v) = r.index.get(k.as_str()) {
                    assert!(slice_within(std::slice::from_ref(v), buf));
                }
            }
            for (_, v) in r.sorted.iter() {
                assert!(within(v.as_bytes(), buf));
            }
            round_trip::<Record>(r);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// The engine's check (its own root bookkeeping, see `body::check`)
/// passes exactly the bodies rkyv's `access` passes.
fn same_verdict_as_rkyv<T: isocall::Body>(inbox: &Inbox) {
    let ours = inbox.check::<T>().is_ok();
    let rkyvs =
        rkyv::api::low::access::<T::Archived, rkyv::rancor::BoxedError>(inbox.bytes()).is_ok();
    assert_eq!(
        ours,
        rkyvs,
        "the engine and rkyv disagree on a {}",
        std::any::type_name::<T>()
    );
}

fn greeting_inside(g: &ArchivedGreeting, buf: &[u8]) {
    assert!(within(g.name.as_bytes(), buf), "name outside the body");
    assert!(std::str::from_utf8(g.name.as_bytes()).is_ok());
    let values = g.values.as_slice();
    assert!(slice_within(values, buf), "values outside the body");
    let _ = values
        .iter()
        .fold(0u32, |a, v| a.wrapping_add(v.to_native()));
}

fn shape_inside(s: &ArchivedShape, buf: &[u8]) {
    match s {
        ArchivedShape::Named(n) => assert!(within(n.as_bytes(), buf)),
        ArchivedShape::Path(p) => assert!(slice_within(p.as_slice(), buf)),
        ArchivedShape::Empty | ArchivedShape::Square { .. } => {}
    }
}

/// Whether the elements of `s` lie inside `buf` (compared as addresses).
fn slice_within<T>(s: &[T], buf: &[u8]) -> bool {
    let start = s.as_ptr() as usize;
    if s.is_empty() {
        return true;
    }
    let outer = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    start >= outer.start && start + std::mem::size_of_val(s) <= outer.end
}

/// Deserializes a checked archive, serializes it again, and checks the new
/// archive holds the same value.
fn round_trip<T>(archived: &T::Archived)
where
    T: isocall::Body
        + PartialEq
        + std::fmt::Debug
        + for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        > + rkyv::Archive<
            Archived: rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
        >,
{
    let value: T = rkyv::deserialize::<T, rkyv::rancor::Error>(archived).expect("deserialize");
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&value).expect("serialize");
    let mut inbox = Inbox::new();
    inbox.fill(&bytes);
    let again = inbox.check::<T>().expect("a re-serialized body checks");
    let back: T = rkyv::deserialize::<T, rkyv::rancor::Error>(again.get()).expect("deserialize");
    assert_eq!(back, value);
}
