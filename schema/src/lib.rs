//! isocall-schema: type names and structural fingerprints computed at compile
//! time, so that two processes agree on the types of a method before its
//! first call instead of reading garbage after it.
//!
//! isocall's requests and replies travel as rkyv archives validated with
//! bytecheck. Validation proves that the bytes are *a* valid archive of the
//! type the reader asks for, not that the writer used that type: a reply
//! written as `Sum { total: u64 }` and read as `Pair { a: u32, b: u32 }`
//! passes and means nothing. So each type that crosses a connection says
//! what it is with a [`Schema`]:
//!
//! - [`NAME`](Schema::NAME), the type's name as written, without a module
//!   path, with its generic arguments: `"Add"`, `"Vec<u32>"`. For messages.
//! - [`FINGERPRINT`](Schema::FINGERPRINT), a 64-bit hash of its structure: the
//!   kind (struct or enum), the name, and every field's position, name and
//!   type's fingerprint, every variant's position, name, discriminant and
//!   fields. It changes when any of them does, and is the same for the same
//!   definition in every build, on every compiler, target and machine. For
//!   checks.
//!
//! A method declared once as a typed value carries the fingerprints of its
//! request and reply types into the handshake; a client and a server that
//! disagree fail at connect time with an error naming both sides' types.
//!
//! Fingerprints describe the *archived* form: two types share one exactly
//! when rkyv archives them as the same archived type, so `usize` shares
//! `u32`'s (rkyv's default; see the features below) and `VecDeque<T>` shares
//! `Vec<T>`'s, while `Box<T>` and `Arc<T>` differ. Field and variant names
//! count too, because renaming a field is a change of meaning.
//!
//! Everything is a `const`: [`Fingerprint`] is a `const fn` hash with
//! combinators, and [`NameBuf`] a `const fn` string builder for the names of
//! generic types. `#[derive(Schema)]` (feature `derive`, on by default)
//! writes the impl for a struct or an enum:
//!
//! ```
//! use isocall_schema::Schema;
//!
//! // Through the `isocall` facade the derive needs no `crate` attribute;
//! // depending on this crate directly, name it.
//! mod client {
//!     #[derive(isocall_schema::Schema)]
//!     #[schema(crate = "isocall_schema")]
//!     pub struct Add { pub a: u64, pub b: u64 }
//! }
//! mod server {
//!     #[derive(isocall_schema::Schema)]
//!     #[schema(crate = "isocall_schema")]
//!     pub struct Add { pub a: u64, pub b: u64 }
//! }
//! mod server_v2 {
//!     #[derive(isocall_schema::Schema)]
//!     #[schema(crate = "isocall_schema")]
//!     pub struct Add { pub a: u64, pub b: u64, pub saturating: bool }
//! }
//!
//! // The same definition in two places: the same fingerprint.
//! assert_eq!(client::Add::FINGERPRINT, server::Add::FINGERPRINT);
//! // One more field: another type, and the names say which.
//! assert_ne!(client::Add::FINGERPRINT, server_v2::Add::FINGERPRINT);
//! assert_eq!(client::Add::NAME, "Add");
//!
//! // Generic types are named and fingerprinted with their arguments.
//! assert_eq!(<Vec<Option<u32>> as Schema>::NAME, "Vec<Option<u32>>");
//! assert_ne!(<Vec<u32>>::FINGERPRINT, <Vec<i32>>::FINGERPRINT);
//!
//! // And it is all known at compile time.
//! const _: () = assert!(client::Add::FINGERPRINT != server_v2::Add::FINGERPRINT);
//! ```
//!
//! The derive's attributes: `#[schema(crate = "path")]` on the type names
//! the crate or module that exports `Schema`, `Fingerprint` and `NameBuf`
//! (default `::isocall`); `#[schema(rename = "Name")]` on the type, a field
//! or a variant names it in `NAME` and the fingerprint in place of its Rust
//! name, so a fingerprint survives a rename in the source; `#[schema(opaque
//! = "name")]` on a field whose type has no `Schema` hashes that string in
//! place of the type's fingerprint. The macro's own documentation says more.
//!
//! # Features
//!
//! - `derive` (default): re-exports `#[derive(Schema)]` from
//!   `isocall-derive`, so that `use isocall_schema::Schema;` brings the trait
//!   and the derive.
//! - `pointer_width_16`, `pointer_width_64`: fingerprint `usize` and `isize`
//!   (and `NonZero` of them) as the 16- or 64-bit integers. Enable the one
//!   enabled on rkyv, whose features of the same names make it archive
//!   `usize` with that width; without either, both use 32 bits.
#![forbid(unsafe_code)]

mod fingerprint;
mod impls;
mod name;

pub use fingerprint::Fingerprint;
#[cfg(feature = "derive")]
pub use isocall_derive::Schema;
pub use name::NameBuf;

/// A type that can cross an isocall connection, described by its name and a
/// structural fingerprint.
///
/// Derive it for your own structs and enums (`#[derive(Schema)]`); this
/// crate implements it for the standard types an rkyv body holds: integers,
/// floats, `bool`, `char`, `String`, `Vec`, `VecDeque`, `Box`, `Arc`, `Rc`,
/// `Option`, `Result`, arrays, slices (as in `Box<[T]>`), `str` (as in
/// `Box<str>`), tuples of up to twelve elements, `HashMap`, `BTreeMap`,
/// `HashSet`, `BTreeSet`, `Duration`, `PhantomData`, `Range`,
/// `RangeInclusive`, the `NonZero` integers and the `core::net` addresses.
///
/// # Implementing it by hand
///
/// Use [`Fingerprint`] as the derive does, starting from a kind that no
/// other type uses, and [`NameBuf`] for the name of a generic type:
///
/// ```
/// use isocall_schema::{Fingerprint, NameBuf, Schema};
///
/// /// Archived as a `u64` of milliseconds (say, with an rkyv wrapper).
/// struct Millis(std::time::Duration);
///
/// impl Schema for Millis {
///     const NAME: &'static str = "Millis";
///     const FINGERPRINT: u64 = Fingerprint::new("Millis").finish();
/// }
///
/// struct Tagged<T>(u32, T);
///
/// impl<T: Schema> Schema for Tagged<T> {
///     const NAME: &'static str = {
///         // A borrow in a const initializer lives for the whole program.
///         let name: &'static NameBuf =
///             &NameBuf::new().push("Tagged<").push(T::NAME).push(">");
///         name.as_str()
///     };
///     const FINGERPRINT: u64 = Fingerprint::new("struct")
///         .str("Tagged")
///         .field("0", u32::FINGERPRINT)
///         .field("1", T::FINGERPRINT)
///         .finish();
/// }
///
/// assert_eq!(<Tagged<Millis>>::NAME, "Tagged<Millis>");
/// ```
///
/// # Recursive types
///
/// A type that contains itself (`struct Tree { children: Vec<Tree> }`) has
/// no finite structural fingerprint: deriving `Schema` for it fails with a
/// cycle in const evaluation. Mark the recursive field
/// `#[schema(opaque = "Vec<Tree>")]` to hash a name there instead.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `Schema`, so it has no fingerprint",
    label = "no `Schema` for this type",
    note = "derive `Schema` for it, or mark the field `#[schema(opaque = \"name\")]` to hash a name in its place"
)]
pub trait Schema {
    /// The type's name as written, without a module path, with its generic
    /// arguments: `"Add"`, `"Vec<u32>"`, `"HashMap<String, (u8, bool)>"`.
    ///
    /// For messages only: names are never compared to decide compatibility.
    /// A name longer than [`NameBuf::CAPACITY`] bytes is cut and ends in
    /// `"..."`.
    const NAME: &'static str;

    /// A hash of the type's structure: its kind, its name, and each field's
    /// position, name and type's fingerprint, each variant's position, name,
    /// discriminant and fields.
    ///
    /// It changes when a field or a variant is added, removed, renamed,
    /// reordered or retyped, and is identical for identical definitions
    /// across builds, compilers, targets and machines.
    const FINGERPRINT: u64;
}
