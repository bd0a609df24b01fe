//! Integers, floats, `bool`, `char`, `str`, and the `NonZero` integers.

use core::num::NonZero;

use crate::{Fingerprint, Schema};

/// The fingerprint of a primitive: its kind and its name.
const fn primitive(name: &str) -> u64 {
    Fingerprint::new("primitive").str(name).finish()
}

macro_rules! primitives {
    ($($t:ty => $name:literal,)*) => {$(
        impl Schema for $t {
            const NAME: &'static str = $name;
            const FINGERPRINT: u64 = primitive($name);
        }
    )*};
}

primitives! {
    u8 => "u8", u16 => "u16", u32 => "u32", u64 => "u64", u128 => "u128",
    i8 => "i8", i16 => "i16", i32 => "i32", i64 => "i64", i128 => "i128",
    f32 => "f32", f64 => "f64",
    bool => "bool",
    char => "char",
    str => "str",
}

#[cfg(all(feature = "pointer_width_16", feature = "pointer_width_64"))]
compile_error!(
    "isocall-schema: features `pointer_width_16` and `pointer_width_64` are mutually exclusive"
);

/// The integer rkyv archives a `usize` as, and so the one whose fingerprint
/// `usize` has (rkyv's `pointer_width_*` features; 32 bits by default).
#[cfg(not(any(feature = "pointer_width_16", feature = "pointer_width_64")))]
type ArchivedUsize = u32;
#[cfg(feature = "pointer_width_16")]
type ArchivedUsize = u16;
#[cfg(all(feature = "pointer_width_64", not(feature = "pointer_width_16")))]
type ArchivedUsize = u64;

/// The integer rkyv archives an `isize` as: the signed twin of
/// [`ArchivedUsize`].
#[cfg(not(any(feature = "pointer_width_16", feature = "pointer_width_64")))]
type ArchivedIsize = i32;
#[cfg(feature = "pointer_width_16")]
type ArchivedIsize = i16;
#[cfg(all(feature = "pointer_width_64", not(feature = "pointer_width_16")))]
type ArchivedIsize = i64;

/// Named `usize`, fingerprinted as the fixed-width integer rkyv archives it
/// as: `u32` by default, `u16` or `u64` with this crate's feature
/// `pointer_width_16` or `pointer_width_64` (enable the same one as rkyv's).
impl Schema for usize {
    const NAME: &'static str = "usize";
    const FINGERPRINT: u64 = <ArchivedUsize as Schema>::FINGERPRINT;
}

/// Named `isize`, fingerprinted as the fixed-width integer rkyv archives it
/// as: `i32` by default (see `usize`).
impl Schema for isize {
    const NAME: &'static str = "isize";
    const FINGERPRINT: u64 = <ArchivedIsize as Schema>::FINGERPRINT;
}

macro_rules! non_zero {
    ($($t:ty => $name:literal,)*) => {$(
        /// Named `NonZero<int>` (what `NonZeroU32` and the other aliases
        /// stand for); `NonZero<usize>` and `NonZero<isize>` fingerprint as
        /// rkyv archives them, like `usize` and `isize`.
        impl Schema for NonZero<$t> {
            const NAME: &'static str = $name;
            const FINGERPRINT: u64 =
                Fingerprint::new("NonZero").u64(<$t as Schema>::FINGERPRINT).finish();
        }
    )*};
}

non_zero! {
    u8 => "NonZero<u8>", u16 => "NonZero<u16>", u32 => "NonZero<u32>",
    u64 => "NonZero<u64>", u128 => "NonZero<u128>", usize => "NonZero<usize>",
    i8 => "NonZero<i8>", i16 => "NonZero<i16>", i32 => "NonZero<i32>",
    i64 => "NonZero<i64>", i128 => "NonZero<i128>", isize => "NonZero<isize>",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_sized_integers_fingerprint_as_archived() {
        assert_eq!(usize::FINGERPRINT, ArchivedUsize::FINGERPRINT);
        assert_eq!(isize::FINGERPRINT, ArchivedIsize::FINGERPRINT);
        assert_eq!(
            <NonZero<usize>>::FINGERPRINT,
            <NonZero<ArchivedUsize>>::FINGERPRINT
        );
        assert_ne!(usize::FINGERPRINT, isize::FINGERPRINT);
    }
}
