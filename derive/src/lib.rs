//! isocall-derive: `#[derive(Schema)]`, which describes a struct or an enum
//! by its name and a structural fingerprint computed at compile time.
//!
//! Use it through `isocall` (or `isocall-schema`, whose default feature
//! `derive` re-exports it beside the trait); the trait, the fingerprint
//! model and the `const fn` builders the generated code calls are documented
//! there. This crate only writes the impl.
#![forbid(unsafe_code)]

mod attr;
mod expand;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Derives `Schema`: a `NAME` and a `FINGERPRINT` for a struct (named, tuple
/// or unit) or an enum (with unit, tuple and struct variants).
///
/// The fingerprint hashes the kind (`struct` or `enum`), the type's name,
/// each field's position, name (`0`, `1`, ... in a tuple) and type's
/// fingerprint, and each variant's position, name, discriminant and fields.
/// Type parameters get a `T: Schema` bound and appear in the name
/// (`Pair<u32>`), lifetimes do not; const parameters (integers, `bool`,
/// `char`) appear in the name and in the fingerprint.
///
/// # Attributes
///
/// - `#[schema(crate = "path")]` on the type: where the generated code finds
///   `Schema`, `Fingerprint` and `NameBuf`. Default `::isocall`, the facade
///   crate; write `"isocall_schema"` when depending on that crate directly.
/// - `#[schema(rename = "Name")]` on the type, a field or a variant: the name
///   used in `NAME` and in the fingerprint instead of the Rust one, so that
///   renaming the Rust item keeps the fingerprint.
/// - `#[schema(opaque = "name")]` on a field whose type does not implement
///   `Schema` (or that refers back to the type being derived): hashes
///   `"name"` in place of that type's fingerprint. Changing the type keeps
///   the fingerprint; change the string along with it.
///
/// # Example
///
/// ```
/// use isocall_schema::Schema;
///
/// #[derive(Schema)]
/// #[schema(crate = "isocall_schema")]
/// enum Shape<T> {
///     Circle { radius: T },
///     Rect(T, T),
///     Empty,
/// }
///
/// assert_eq!(<Shape<f32> as Schema>::NAME, "Shape<f32>");
/// assert_ne!(<Shape<f32>>::FINGERPRINT, <Shape<f64>>::FINGERPRINT);
/// ```
///
/// Unions and malformed `#[schema(...)]` attributes are compile errors that
/// point at the offending token.
#[proc_macro_derive(Schema, attributes(schema))]
pub fn derive_schema(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
