//! Owned strings, sequences, pointers, `Option`, `Result`, arrays, slices,
//! ranges and `PhantomData`.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::ops::{Range, RangeInclusive};
use std::rc::Rc;
use std::sync::Arc;

use super::generic_name;
use crate::{Fingerprint, NameBuf, Schema};

impl Schema for String {
    const NAME: &'static str = "String";
    const FINGERPRINT: u64 = Fingerprint::new("String").finish();
}

/// The fingerprint of a generic standard type with one argument.
const fn of_one(kind: &str, arg: u64) -> u64 {
    Fingerprint::new(kind).u64(arg).finish()
}

macro_rules! wrappers {
    ($($t:ident $(: ?$unsized:ident)? => $name:literal,)*) => {$(
        impl<T: Schema $(+ ?$unsized)?> Schema for $t<T> {
            const NAME: &'static str = generic_name!($name, T);
            const FINGERPRINT: u64 = of_one($name, T::FINGERPRINT);
        }
    )*};
}

wrappers! {
    Vec => "Vec",
    Box: ?Sized => "Box",
    Arc: ?Sized => "Arc",
    Rc: ?Sized => "Rc",
    Option => "Option",
    PhantomData: ?Sized => "PhantomData",
    Range => "Range",
    RangeInclusive => "RangeInclusive",
}

/// Fingerprinted as `Vec<T>`: rkyv archives both as `ArchivedVec`.
impl<T: Schema> Schema for VecDeque<T> {
    const NAME: &'static str = generic_name!("VecDeque", T);
    const FINGERPRINT: u64 = <Vec<T> as Schema>::FINGERPRINT;
}

impl<T: Schema, E: Schema> Schema for Result<T, E> {
    const NAME: &'static str = generic_name!("Result", T, E);
    const FINGERPRINT: u64 = Fingerprint::new("Result")
        .u64(T::FINGERPRINT)
        .u64(E::FINGERPRINT)
        .finish();
}

/// Named `[T; N]`; the fingerprint holds `N`.
impl<T: Schema, const N: usize> Schema for [T; N] {
    const NAME: &'static str = {
        let name: &'static NameBuf = &NameBuf::new()
            .push("[")
            .push(T::NAME)
            .push("; ")
            .push_u128(N as u128)
            .push("]");
        name.as_str()
    };
    const FINGERPRINT: u64 = Fingerprint::new("array")
        .u64(N as u64)
        .u64(T::FINGERPRINT)
        .finish();
}

/// Named `[T]`: not a field type by itself, but the `T` of `Box<[T]>`,
/// `Arc<[T]>` and `Rc<[T]>`.
impl<T: Schema> Schema for [T] {
    const NAME: &'static str = {
        let name: &'static NameBuf = &NameBuf::new().push("[").push(T::NAME).push("]");
        name.as_str()
    };
    const FINGERPRINT: u64 = of_one("slice", T::FINGERPRINT);
}
