//! What changes a derived fingerprint and what keeps it.
//!
//! Every module below defines a type named `Add` (or `Op`): the same name, so
//! only the change the module is named after tells them apart.
// The types below exist to be described, never built or read.
#![allow(dead_code)]

// The derive's default path is `::isocall`, the facade crate; here this
// crate stands in for it.
extern crate isocall_schema as isocall;

use isocall_schema::Schema;

mod base {
    #[derive(isocall::Schema)]
    pub struct Add {
        pub a: u64,
        pub b: u64,
    }
}

mod same {
    // Written differently, defined identically.
    #[derive(isocall::Schema)]
    pub struct Add {
        a: u64,
        /// Docs and visibility are not structure.
        pub(crate) b: u64,
    }
}

mod added {
    #[derive(isocall::Schema)]
    pub struct Add {
        pub a: u64,
        pub b: u64,
        pub c: u64,
    }
}

mod removed {
    #[derive(isocall::Schema)]
    pub struct Add {
        pub a: u64,
    }
}

mod renamed_field {
    #[derive(isocall::Schema)]
    pub struct Add {
        pub a: u64,
        pub rhs: u64,
    }
}

mod reordered {
    #[derive(isocall::Schema)]
    pub struct Add {
        pub b: u64,
        pub a: u64,
    }
}

mod retyped {
    #[derive(isocall::Schema)]
    pub struct Add {
        pub a: u64,
        pub b: i64,
    }
}

mod retyped_nested {
    #[derive(isocall::Schema)]
    pub struct Add {
        pub a: u64,
        pub b: Vec<Option<u32>>,
    }
}

mod retyped_nested_inner {
    #[derive(isocall::Schema)]
    pub struct Add {
        pub a: u64,
        pub b: Vec<Option<i32>>,
    }
}

mod other_name {
    #[derive(isocall::Schema)]
    pub struct Sum {
        pub a: u64,
        pub b: u64,
    }
}

mod renamed_type {
    /// The Rust type was renamed; the schema name keeps the old one.
    #[derive(isocall::Schema)]
    #[schema(rename = "Add")]
    pub struct AddRequest {
        pub a: u64,
        pub b: u64,
    }
}

mod renamed_field_kept {
    #[derive(isocall::Schema)]
    pub struct Add {
        pub a: u64,
        #[schema(rename = "b")]
        pub rhs: u64,
    }
}

mod as_enum {
    #[derive(isocall::Schema)]
    pub enum Add {
        Both { a: u64, b: u64 },
    }
}

mod tuple {
    #[derive(isocall::Schema)]
    pub struct Add(pub u64, pub u64);
}

mod unit {
    #[derive(isocall::Schema)]
    pub struct Add;
}

mod explicit_path {
    #[derive(isocall_schema::Schema)]
    #[schema(crate = "isocall_schema")]
    pub struct Add {
        pub a: u64,
        pub b: u64,
    }
}

mod usize_field {
    #[derive(isocall::Schema)]
    pub struct Add {
        pub a: u64,
        pub b: usize,
    }
}

mod u32_field {
    #[derive(isocall::Schema)]
    pub struct Add {
        pub a: u64,
        pub b: u32,
    }
}

#[test]
fn identical_definitions_agree() {
    assert_eq!(base::Add::FINGERPRINT, same::Add::FINGERPRINT);
    assert_eq!(base::Add::FINGERPRINT, explicit_path::Add::FINGERPRINT);
}

#[test]
fn every_field_change_is_seen() {
    let base = base::Add::FINGERPRINT;
    let changed = [
        ("added", added::Add::FINGERPRINT),
        ("removed", removed::Add::FINGERPRINT),
        ("renamed field", renamed_field::Add::FINGERPRINT),
        ("reordered", reordered::Add::FINGERPRINT),
        ("retyped", retyped::Add::FINGERPRINT),
        ("retyped nested", retyped_nested::Add::FINGERPRINT),
        ("other type name", other_name::Sum::FINGERPRINT),
        ("enum", as_enum::Add::FINGERPRINT),
        ("tuple", tuple::Add::FINGERPRINT),
        ("unit", unit::Add::FINGERPRINT),
    ];
    for (what, fp) in changed {
        assert_ne!(fp, base, "{what}");
    }
    // ... and each differs from every other.
    for (i, (a, fa)) in changed.iter().enumerate() {
        for (b, fb) in &changed[i + 1..] {
            assert_ne!(fa, fb, "{a} vs {b}");
        }
    }
    assert_ne!(
        retyped_nested::Add::FINGERPRINT,
        retyped_nested_inner::Add::FINGERPRINT
    );
}

#[test]
fn rename_keeps_the_fingerprint() {
    assert_eq!(
        renamed_type::AddRequest::FINGERPRINT,
        base::Add::FINGERPRINT
    );
    assert_eq!(renamed_type::AddRequest::NAME, "Add");
    assert_eq!(renamed_field_kept::Add::FINGERPRINT, base::Add::FINGERPRINT);
}

#[test]
#[cfg(not(any(feature = "pointer_width_16", feature = "pointer_width_64")))]
fn usize_fields_are_archived_u32_fields() {
    assert_eq!(usize_field::Add::FINGERPRINT, u32_field::Add::FINGERPRINT);
}

mod op_base {
    #[derive(isocall::Schema)]
    pub enum Op {
        Add { a: u64, b: u64 },
        Neg(i64),
        Nop,
    }
}

mod op_same {
    #[derive(isocall::Schema)]
    pub enum Op {
        Add { a: u64, b: u64 },
        Neg(i64),
        Nop,
    }
}

mod op_added {
    #[derive(isocall::Schema)]
    pub enum Op {
        Add { a: u64, b: u64 },
        Neg(i64),
        Nop,
        Halt,
    }
}

mod op_removed {
    #[derive(isocall::Schema)]
    pub enum Op {
        Add { a: u64, b: u64 },
        Neg(i64),
    }
}

mod op_reordered {
    #[derive(isocall::Schema)]
    pub enum Op {
        Neg(i64),
        Add { a: u64, b: u64 },
        Nop,
    }
}

mod op_renamed_variant {
    #[derive(isocall::Schema)]
    pub enum Op {
        Add { a: u64, b: u64 },
        Negate(i64),
        Nop,
    }
}

mod op_renamed_variant_kept {
    #[derive(isocall::Schema)]
    pub enum Op {
        Add {
            a: u64,
            b: u64,
        },
        #[schema(rename = "Neg")]
        Negate(i64),
        Nop,
    }
}

mod op_variant_field_retyped {
    #[derive(isocall::Schema)]
    pub enum Op {
        Add { a: u64, b: u32 },
        Neg(i64),
        Nop,
    }
}

mod op_variant_shape {
    // Named field `0` cannot be written, so a struct variant with one field
    // always differs from a tuple variant with one.
    #[derive(isocall::Schema)]
    pub enum Op {
        Add { a: u64, b: u64 },
        Neg { value: i64 },
        Nop,
    }
}

mod op_discriminants {
    #[derive(isocall::Schema)]
    #[repr(u8)]
    pub enum Op {
        Add { a: u64, b: u64 } = 10,
        Neg(i64),
        Nop,
    }
}

mod op_discriminants_implicit {
    #[derive(isocall::Schema)]
    #[repr(u8)]
    pub enum Op {
        Add { a: u64, b: u64 } = 0,
        Neg(i64) = 1,
        Nop,
    }
}

#[test]
fn every_variant_change_is_seen() {
    assert_eq!(op_base::Op::FINGERPRINT, op_same::Op::FINGERPRINT);
    let base = op_base::Op::FINGERPRINT;
    for (what, fp) in [
        ("added", op_added::Op::FINGERPRINT),
        ("removed", op_removed::Op::FINGERPRINT),
        ("reordered", op_reordered::Op::FINGERPRINT),
        ("renamed", op_renamed_variant::Op::FINGERPRINT),
        ("field retyped", op_variant_field_retyped::Op::FINGERPRINT),
        ("shape", op_variant_shape::Op::FINGERPRINT),
        ("discriminants", op_discriminants::Op::FINGERPRINT),
    ] {
        assert_ne!(fp, base, "{what}");
    }
    assert_eq!(op_renamed_variant_kept::Op::FINGERPRINT, base);
    // Writing the discriminants a variant has anyway changes nothing.
    assert_eq!(op_discriminants_implicit::Op::FINGERPRINT, base);
}

#[derive(Schema)]
#[repr(i64)]
enum Signed {
    Low = -2,
    Next,
    High = 1 << 40,
}

#[derive(Schema)]
#[repr(i64)]
enum SignedOther {
    Low = -1,
    Next,
    High = 1 << 40,
}

/// A literal that only fits the enum's repr still compiles.
#[derive(Schema)]
#[repr(u32)]
enum HighBit {
    Top = 0x8000_0000,
    Next,
}

#[test]
fn discriminant_values_count() {
    assert_ne!(Signed::FINGERPRINT, SignedOther::FINGERPRINT);
    assert_ne!(HighBit::FINGERPRINT, 0);
}

/// Not `Schema`: a field of it needs `opaque`.
struct Foreign(u32);

mod opaque_a {
    #[derive(isocall::Schema)]
    pub struct Holder {
        #[schema(opaque = "Foreign")]
        pub f: super::Foreign,
    }
}

mod opaque_b {
    #[derive(isocall::Schema)]
    pub struct Holder {
        #[schema(opaque = "Foreign2")]
        pub f: super::Foreign,
    }
}

mod opaque_c {
    // The type changed, the opaque name did not: the same fingerprint (the
    // attribute's documented contract).
    #[derive(isocall::Schema)]
    pub struct Holder {
        #[schema(opaque = "Foreign")]
        pub f: u64,
    }
}

#[test]
fn opaque_hashes_the_given_name() {
    assert_ne!(opaque_a::Holder::FINGERPRINT, opaque_b::Holder::FINGERPRINT);
    assert_eq!(opaque_a::Holder::FINGERPRINT, opaque_c::Holder::FINGERPRINT);
}

/// A recursive type, made finite with `opaque`.
#[derive(Schema)]
struct Tree {
    value: u32,
    #[schema(opaque = "Vec<Tree>")]
    children: Vec<Tree>,
}

#[test]
fn recursive_types_use_opaque() {
    assert_ne!(Tree::FINGERPRINT, 0);
    assert_eq!(Tree::NAME, "Tree");
}

#[derive(Schema)]
struct Pair<A, B> {
    a: A,
    b: B,
}

#[derive(Schema)]
struct Buf<const N: usize> {
    data: [u8; N],
}

#[derive(Schema)]
struct Tag<const T: char, const ON: bool, const K: i8>(u8);

#[test]
fn generic_types_differ_by_argument() {
    assert_ne!(<Vec<u32>>::FINGERPRINT, <Vec<i32>>::FINGERPRINT);
    assert_ne!(<Option<u32>>::FINGERPRINT, <Vec<u32>>::FINGERPRINT);
    assert_ne!(<Pair<u32, i32>>::FINGERPRINT, <Pair<i32, u32>>::FINGERPRINT);
    assert_eq!(
        <Pair<u32, String>>::FINGERPRINT,
        <Pair<u32, String>>::FINGERPRINT
    );
    assert_ne!(<Buf<4>>::FINGERPRINT, <Buf<5>>::FINGERPRINT);
    assert_ne!(
        <Tag<'a', true, -1>>::FINGERPRINT,
        <Tag<'a', true, 1>>::FINGERPRINT
    );
    assert_ne!(
        <Tag<'a', true, 1>>::FINGERPRINT,
        <Tag<'a', false, 1>>::FINGERPRINT
    );
    assert_ne!(
        <Tag<'a', true, 1>>::FINGERPRINT,
        <Tag<'b', true, 1>>::FINGERPRINT
    );
}

// Usable in const context: a handshake table can be a `static`.
const ADD_FP: u64 = base::Add::FINGERPRINT;
const _: () = assert!(ADD_FP == same::Add::FINGERPRINT);
const _: () = assert!(ADD_FP != added::Add::FINGERPRINT);
static TABLE: [(&str, u64); 2] = [
    (base::Add::NAME, base::Add::FINGERPRINT),
    (<Vec<u32>>::NAME, <Vec<u32>>::FINGERPRINT),
];

#[test]
fn fingerprints_and_names_are_consts() {
    assert_eq!(TABLE[0], ("Add", ADD_FP));
    assert_eq!(TABLE[1].0, "Vec<u32>");
}

/// Pinned values: a change of the hash function, of what the derive hashes
/// or of a standard type's description shows here first. If it was meant,
/// the fingerprints of every deployed peer change with it: say so in the
/// commit. (The values were also computed by an independent implementation
/// of the algorithm written out in the `Fingerprint` docs.)
#[test]
fn pinned_values() {
    assert_eq!(u32::FINGERPRINT, 0xcbb7_9911_0b5f_a577, "u32");
    assert_eq!(<Vec<u32>>::FINGERPRINT, 0x8ba1_d065_a96d_0120, "Vec<u32>");
    assert_eq!(base::Add::FINGERPRINT, 0xc507_3a4a_fb4f_f412, "Add");
}
