//! `Schema` for the standard types a request or reply body holds.
//!
//! The rule, everywhere: **a fingerprint describes the archived form**. Two
//! types that rkyv archives as the same archived type share a fingerprint
//! (`usize` and `u32`, `Vec<T>` and `VecDeque<T>`), because a reader of one
//! reads the other's bytes correctly; any other two types differ, even when
//! their archived bytes happen to look alike (`Box<T>` and `Arc<T>`,
//! `HashMap` and `BTreeMap`). A generic type's fingerprint is made from its
//! arguments' fingerprints, never from their names.

use crate::NameBuf;

mod collection;
mod container;
mod primitive;
mod time_net;
mod tuple;

/// Builds `base<arg0, arg1, ...>`: the name of a generic type from the
/// names of its arguments.
const fn generic_name_buf(base: &str, args: &[&str]) -> NameBuf {
    let mut name = NameBuf::new().push(base).push("<");
    let mut i = 0;
    while i < args.len() {
        if i > 0 {
            name = name.push(", ");
        }
        name = name.push(args[i]);
        i += 1;
    }
    name.push(">")
}

/// The `const` initializer of a generic type's `NAME`:
/// `generic_name!("Vec", T)` is `"Vec<" + T::NAME + ">"`.
macro_rules! generic_name {
    ($base:literal $(, $arg:ty)+) => {{
        // A borrow taken in a const initializer lives for the whole program.
        let name: &'static $crate::NameBuf = &$crate::impls::generic_name_buf(
            $base,
            &[$(<$arg as $crate::Schema>::NAME),+],
        );
        name.as_str()
    }};
}
use generic_name;
