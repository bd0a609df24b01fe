//! The fingerprints of the standard types: distinct unless rkyv archives
//! them as the same archived type.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::num::{NonZero, NonZeroI32, NonZeroU32, NonZeroUsize};
use std::ops::{Range, RangeInclusive};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use isocall_schema::Schema;

/// `(name, fingerprint)` of each type listed.
macro_rules! described {
    ($($t:ty),* $(,)?) => {
        [$((<$t as Schema>::NAME, <$t as Schema>::FINGERPRINT)),*]
    };
}

#[test]
fn distinct_types_have_distinct_fingerprints() {
    let all = described![
        u8, u16, u32, u64, u128, i8, i16, i32, i64, i128, f32, f64, bool, char, str,
        String, (), (u8,), (u8, u8), ((u8, u8), u8), (u8, (u8, u8)),
        (u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8),
        [u8; 0], [u8; 1], [u8; 2], [u16; 1], [(); 1], [u8],
        Vec<u8>, Vec<i8>, Vec<Vec<u8>>, Vec<()>, Box<u8>, Box<[u8]>, Box<str>,
        Arc<u8>, Arc<[u8]>, Arc<str>, Rc<u8>, Rc<[u8]>, Rc<str>,
        Option<u8>, Option<Option<u8>>, Option<()>,
        Result<u8, u8>, Result<u8, i8>, Result<i8, u8>, Result<(), ()>,
        HashMap<u8, u16>, HashMap<u16, u8>, BTreeMap<u8, u16>, HashSet<u8>, BTreeSet<u8>,
        PhantomData<u8>, PhantomData<str>, Range<u8>, RangeInclusive<u8>, Duration,
        Ipv4Addr, Ipv6Addr, IpAddr, SocketAddrV4, SocketAddrV6, SocketAddr,
        NonZeroU32, NonZeroI32, NonZero<u8>, NonZero<u128>,
    ];
    for (i, (a, fa)) in all.iter().enumerate() {
        for (b, fb) in &all[i + 1..] {
            assert_ne!(fa, fb, "{a} and {b} collide");
        }
    }
}

#[test]
#[cfg(not(any(feature = "pointer_width_16", feature = "pointer_width_64")))]
fn pointer_sized_integers_are_what_rkyv_archives() {
    // rkyv 0.8 archives usize as u32 unless a `pointer_width_*` feature says
    // otherwise; so does this crate.
    assert_eq!(usize::FINGERPRINT, u32::FINGERPRINT);
    assert_eq!(isize::FINGERPRINT, i32::FINGERPRINT);
    assert_eq!(NonZeroUsize::FINGERPRINT, NonZeroU32::FINGERPRINT);
    assert_eq!(<Vec<usize>>::FINGERPRINT, <Vec<u32>>::FINGERPRINT);
    // Names stay as written.
    assert_eq!(<Vec<usize>>::NAME, "Vec<usize>");
}

#[test]
#[cfg(feature = "pointer_width_64")]
fn pointer_sized_integers_follow_the_feature() {
    assert_eq!(usize::FINGERPRINT, u64::FINGERPRINT);
    assert_eq!(isize::FINGERPRINT, i64::FINGERPRINT);
}

#[test]
fn same_archived_type_same_fingerprint() {
    assert_eq!(<VecDeque<u8>>::FINGERPRINT, <Vec<u8>>::FINGERPRINT);
    // A hasher is not part of the archive.
    type Custom = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
    assert_eq!(
        <HashMap<u8, u8, Custom>>::FINGERPRINT,
        <HashMap<u8, u8>>::FINGERPRINT
    );
    assert_eq!(
        <HashSet<u8, Custom>>::FINGERPRINT,
        <HashSet<u8>>::FINGERPRINT
    );
}

mod shadow {
    /// A unit struct named like the standard `Vec`.
    #[derive(isocall_schema::Schema)]
    #[schema(crate = "isocall_schema")]
    pub struct Vec;
}

#[test]
fn a_struct_is_not_the_standard_type_of_its_name() {
    use isocall_schema::Fingerprint;
    assert_eq!(shadow::Vec::NAME, "Vec");
    assert_ne!(shadow::Vec::FINGERPRINT, Fingerprint::new("Vec").finish());
    assert_ne!(shadow::Vec::FINGERPRINT, <Vec<()>>::FINGERPRINT);
}
