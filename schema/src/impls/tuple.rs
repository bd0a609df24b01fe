//! `()` and tuples of up to twelve elements.

use crate::{Fingerprint, NameBuf, Schema};

/// Builds `(A, B)`, `(A,)` or `()` from the elements' names.
const fn tuple_name(elements: &[&str]) -> NameBuf {
    let mut name = NameBuf::new().push("(");
    let mut i = 0;
    while i < elements.len() {
        if i > 0 {
            name = name.push(", ");
        }
        name = name.push(elements[i]);
        i += 1;
    }
    if elements.len() == 1 {
        name = name.push(",");
    }
    name.push(")")
}

/// The fingerprint of a tuple from its elements' fingerprints.
const fn tuple_fingerprint(elements: &[u64]) -> u64 {
    let mut fp = Fingerprint::new("tuple");
    let mut i = 0;
    while i < elements.len() {
        fp = fp.u64(elements[i]);
        i += 1;
    }
    fp.finish()
}

impl Schema for () {
    const NAME: &'static str = "()";
    const FINGERPRINT: u64 = tuple_fingerprint(&[]);
}

macro_rules! tuples {
    ($(($($t:ident),+))*) => {$(
        impl<$($t: Schema),+> Schema for ($($t,)+) {
            const NAME: &'static str = {
                let name: &'static NameBuf = &tuple_name(&[$($t::NAME),+]);
                name.as_str()
            };
            const FINGERPRINT: u64 = tuple_fingerprint(&[$($t::FINGERPRINT),+]);
        }
    )*};
}

tuples! {
    (A)
    (A, B)
    (A, B, C)
    (A, B, C, D)
    (A, B, C, D, E)
    (A, B, C, D, E, F)
    (A, B, C, D, E, F, G)
    (A, B, C, D, E, F, G, H)
    (A, B, C, D, E, F, G, H, I)
    (A, B, C, D, E, F, G, H, I, J)
    (A, B, C, D, E, F, G, H, I, J, K)
    (A, B, C, D, E, F, G, H, I, J, K, L)
}
