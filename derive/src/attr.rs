//! The `#[schema(...)]` attributes: which keys go where, and their values.

use syn::spanned::Spanned;
use syn::{Attribute, LitStr, Path};

/// Where an attribute sits, which decides the keys it may hold.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// On the struct or enum.
    Type,
    /// On a field of a struct or of a variant.
    Field,
    /// On an enum variant.
    Variant,
}

impl Place {
    /// The keys allowed here.
    fn keys(self) -> &'static [&'static str] {
        match self {
            Place::Type => &["crate", "rename"],
            Place::Field => &["rename", "opaque"],
            Place::Variant => &["rename"],
        }
    }

    /// How an error message names this place.
    fn noun(self) -> &'static str {
        match self {
            Place::Type => "the type",
            Place::Field => "a field",
            Place::Variant => "a variant",
        }
    }
}

/// The `#[schema(...)]` keys found on one item, each at most once.
#[derive(Default)]
pub(crate) struct Attrs {
    /// `crate = "path"`: where `Schema`, `Fingerprint` and `NameBuf` are.
    pub(crate) krate: Option<Path>,
    /// `rename = "Name"`: the name to describe instead of the Rust one.
    pub(crate) rename: Option<LitStr>,
    /// `opaque = "name"`: hash this instead of the field type's fingerprint.
    pub(crate) opaque: Option<LitStr>,
}

impl Attrs {
    /// Reads every `#[schema(...)]` among `attrs`, allowing the keys of
    /// `place`; other attributes are left alone.
    pub(crate) fn parse(attrs: &[Attribute], place: Place) -> syn::Result<Self> {
        let mut out = Attrs::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident("schema")) {
            attr.parse_nested_meta(|meta| {
                let key = meta
                    .path
                    .get_ident()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                if !place.keys().contains(&key.as_str()) {
                    let shown = if key.is_empty() {
                        "this".to_owned()
                    } else {
                        format!("`{key}`")
                    };
                    let allowed = place
                        .keys()
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let known = ["crate", "rename", "opaque"].contains(&key.as_str());
                    let what = if known {
                        "not allowed on"
                    } else {
                        "unknown on"
                    };
                    return Err(meta.error(format!(
                        "schema attribute {shown} is {what} {}: expected {allowed}",
                        place.noun()
                    )));
                }
                let value: LitStr = meta.value()?.parse().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        format!("expected a string: `#[schema({key} = \"...\")]`"),
                    )
                })?;
                if value.value().is_empty() {
                    return Err(syn::Error::new(
                        value.span(),
                        format!("schema attribute `{key}` needs a non-empty string"),
                    ));
                }
                let slot_taken = match key.as_str() {
                    "crate" => {
                        let path: Path = value.parse().map_err(|_| {
                            syn::Error::new(
                                value.span(),
                                "expected a path, e.g. `#[schema(crate = \"::isocall\")]`",
                            )
                        })?;
                        out.krate.replace(path).is_some()
                    }
                    "rename" => out.rename.replace(value).is_some(),
                    _ => out.opaque.replace(value).is_some(),
                };
                if slot_taken {
                    return Err(syn::Error::new(
                        meta.path.span(),
                        format!("duplicate schema attribute `{key}`"),
                    ));
                }
                Ok(())
            })?;
        }
        Ok(out)
    }
}
