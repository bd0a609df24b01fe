//! From a struct or enum to its `Schema` impl.

use proc_macro2::{Literal, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Expr, Fields, GenericParam, Generics, Ident, Path, parse_quote};

use crate::attr::{Attrs, Place};

/// The integer types an enum's `#[repr(...)]` or a const parameter may have.
const UNSIGNED: &[&str] = &["u8", "u16", "u32", "u64", "u128", "usize"];
/// See [`UNSIGNED`].
const SIGNED: &[&str] = &["i8", "i16", "i32", "i64", "i128", "isize"];

/// Writes `impl Schema for <input>`.
pub(crate) fn expand(mut input: DeriveInput) -> syn::Result<TokenStream> {
    let attrs = Attrs::parse(&input.attrs, Place::Type)?;
    let krate: Path = attrs.krate.unwrap_or_else(|| parse_quote!(::isocall));
    let base = attrs
        .rename
        .map_or_else(|| input.ident.unraw().to_string(), |name| name.value());
    let consts = const_values(&krate, &input.generics)?;

    // A const parameter's value is part of the type, as a type argument's
    // is; a type argument reaches the fingerprint through the fields.
    let const_strs = consts.iter().map(|v| quote!(.str(#v.as_str())));
    let fingerprint = match &input.data {
        Data::Struct(data) => {
            let fields = fields(&krate, &data.fields)?;
            quote! {
                #krate::Fingerprint::new("struct")
                    .str(#base)
                    #(#const_strs)*
                    #fields
                    .finish()
            }
        }
        Data::Enum(data) => {
            let repr = enum_repr(&input);
            // A variant's discriminant is its explicit value, or the one
            // before it plus one: rkyv's archived tag keeps them.
            let mut last_explicit: Option<&Expr> = None;
            let mut offset: i128 = 0;
            let mut variants = TokenStream::new();
            for variant in &data.variants {
                let vattrs = Attrs::parse(&variant.attrs, Place::Variant)?;
                let name = vattrs
                    .rename
                    .map_or_else(|| variant.ident.unraw().to_string(), |n| n.value());
                if let Some((_, expr)) = &variant.discriminant {
                    last_explicit = Some(expr);
                    offset = 0;
                }
                let offset_lit = Literal::i128_suffixed(offset);
                let discriminant = match last_explicit {
                    None => offset_lit.into_token_stream(),
                    Some(expr) => quote_spanned! {expr.span()=>
                        ({ let value: #repr = #expr; value as i128 } + #offset_lit)
                    },
                };
                offset += 1;
                let body = fields(&krate, &variant.fields)?;
                variants.extend(quote! {
                    .variant(
                        #name,
                        #discriminant,
                        #krate::Fingerprint::new("fields") #body .finish(),
                    )
                });
            }
            quote! {
                #krate::Fingerprint::new("enum")
                    .str(#base)
                    #(#const_strs)*
                    #variants
                    .finish()
            }
        }
        Data::Union(data) => {
            return Err(syn::Error::new(
                data.union_token.span(),
                "`Schema` cannot be derived for a union: bytecheck cannot tell which \
                 field a union holds, so a union cannot be a request or a reply",
            ));
        }
    };

    let name = name(&krate, &base, &input.generics, &consts);
    add_bounds(&krate, &mut input.generics);
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics #krate::Schema for #ident #ty_generics #where_clause {
            const NAME: &'static str = #name;
            const FINGERPRINT: u64 = #fingerprint;
        }
    })
}

/// The `.field(name, fingerprint)` calls for a struct's or a variant's
/// fields, in order.
fn fields(krate: &Path, fields: &Fields) -> syn::Result<TokenStream> {
    let mut out = TokenStream::new();
    for (index, field) in fields.iter().enumerate() {
        let attrs = Attrs::parse(&field.attrs, Place::Field)?;
        let name = match (&attrs.rename, &field.ident) {
            (Some(rename), _) => rename.value(),
            (None, Some(ident)) => ident.unraw().to_string(),
            (None, None) => index.to_string(),
        };
        let ty = &field.ty;
        let fingerprint = match &attrs.opaque {
            Some(opaque) => quote! {
                #krate::Fingerprint::new("opaque").str(#opaque).finish()
            },
            None => quote_spanned! {ty.span()=>
                <#ty as #krate::Schema>::FINGERPRINT
            },
        };
        out.extend(quote!(.field(#name, #fingerprint)));
    }
    Ok(out)
}

/// The integer type of an enum's discriminants: its `#[repr(int)]`, or
/// `isize` as in Rust.
fn enum_repr(input: &DeriveInput) -> Ident {
    let mut repr = Ident::new("isize", proc_macro2::Span::call_site());
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("repr")) {
        // Other repr contents (`C`, `align(..)`) are no concern here; a
        // malformed repr is rustc's to report.
        let _ = attr.parse_nested_meta(|meta| {
            if let Some(ident) = meta.path.get_ident() {
                let s = ident.to_string();
                if UNSIGNED.contains(&s.as_str()) || SIGNED.contains(&s.as_str()) {
                    repr = ident.clone();
                }
            }
            if meta.input.peek(syn::token::Paren) {
                let _ = meta.input.parse::<proc_macro2::Group>();
            }
            Ok(())
        });
    }
    repr
}

/// For each const parameter, in order, a `NameBuf` expression that holds its
/// value as it is written in a type.
fn const_values(krate: &Path, generics: &Generics) -> syn::Result<Vec<TokenStream>> {
    generics
        .const_params()
        .map(|param| {
            let ident = &param.ident;
            let ty = &param.ty;
            let kind = match ty {
                syn::Type::Path(p) if p.qself.is_none() => p.path.get_ident().map(Ident::to_string),
                _ => None,
            }
            .unwrap_or_default();
            let push = if UNSIGNED.contains(&kind.as_str()) {
                quote!(push_u128(#ident as u128))
            } else if SIGNED.contains(&kind.as_str()) {
                quote!(push_i128(#ident as i128))
            } else if kind == "bool" {
                quote!(push_bool(#ident))
            } else if kind == "char" {
                quote!(push_char(#ident))
            } else {
                return Err(syn::Error::new(
                    ty.span(),
                    "`Schema` can name a const parameter of an integer type, `bool` or `char` only",
                ));
            };
            Ok(quote!(#krate::NameBuf::new().#push))
        })
        .collect()
}

/// The `NAME` initializer: a literal for a type without type or const
/// parameters, else a `NameBuf` built in a const block (lifetimes are not
/// part of a name).
fn name(krate: &Path, base: &str, generics: &Generics, consts: &[TokenStream]) -> TokenStream {
    let mut consts = consts.iter();
    let args: Vec<TokenStream> = generics
        .params
        .iter()
        .filter_map(|param| match param {
            GenericParam::Type(t) => {
                let ident = &t.ident;
                Some(quote!(<#ident as #krate::Schema>::NAME))
            }
            GenericParam::Const(_) => consts.next().map(|v| quote!(#v.as_str())),
            GenericParam::Lifetime(_) => None,
        })
        .collect();
    if args.is_empty() {
        return quote!(#base);
    }
    let pushes = args.iter().enumerate().map(|(i, arg)| {
        let sep = if i == 0 { "<" } else { ", " };
        quote!(.push(#sep).push(#arg))
    });
    quote! {{
        // A borrow taken in a const initializer lives for the whole program.
        let name: &'static #krate::NameBuf =
            &#krate::NameBuf::new().push(#base) #(#pushes)* .push(">");
        name.as_str()
    }}
}

/// Adds `T: Schema` for every type parameter `T`.
fn add_bounds(krate: &Path, generics: &mut Generics) {
    let params: Vec<Ident> = generics.type_params().map(|t| t.ident.clone()).collect();
    let where_clause = generics.make_where_clause();
    for ident in params {
        where_clause
            .predicates
            .push(parse_quote!(#ident: #krate::Schema));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message of the error `expand` gives for `input`.
    fn error(input: DeriveInput) -> String {
        match expand(input) {
            Ok(tokens) => panic!("expected an error, got {tokens}"),
            Err(e) => e.to_string(),
        }
    }

    /// `expand`'s output with whitespace removed, for `contains` checks.
    fn squashed(input: DeriveInput) -> String {
        let out = expand(input).unwrap().to_string();
        out.chars().filter(|c| !c.is_whitespace()).collect()
    }

    #[test]
    fn a_plain_struct() {
        let out = squashed(parse_quote! {
            struct Add { a: u64, b: u64 }
        });
        assert!(out.contains("impl::isocall::SchemaforAdd"), "{out}");
        assert!(out.contains("constNAME:&'staticstr=\"Add\";"), "{out}");
        assert!(
            out.contains(
                "::isocall::Fingerprint::new(\"struct\").str(\"Add\")\
                 .field(\"a\",<u64as::isocall::Schema>::FINGERPRINT)\
                 .field(\"b\",<u64as::isocall::Schema>::FINGERPRINT).finish()"
            ),
            "{out}"
        );
    }

    #[test]
    fn generics_get_bounds_and_names() {
        let out = squashed(parse_quote! {
            #[schema(crate = "my::schema")]
            struct Pair<'a, T: Copy, const N: usize> where T: Default { t: &'a [T; N] }
        });
        assert!(out.contains("whereT:Default,T:my::schema::Schema"), "{out}");
        assert!(
            out.contains(".push(<Tasmy::schema::Schema>::NAME)"),
            "{out}"
        );
        assert!(out.contains("push_u128(Nasu128)"), "{out}");
        assert!(!out.contains("'a>::NAME"), "{out}");
    }

    #[test]
    fn unions_are_refused() {
        let e = error(parse_quote! { union U { a: u32, b: f32 } });
        assert!(e.contains("cannot be derived for a union"), "{e}");
    }

    #[test]
    fn bad_attributes_are_refused() {
        let cases: Vec<(DeriveInput, &str)> = vec![
            (
                parse_quote! { #[schema(opaque = "x")] struct S; },
                "schema attribute `opaque` is not allowed on the type: expected `crate`, `rename`",
            ),
            (
                parse_quote! { #[schema(renamed = "x")] struct S; },
                "schema attribute `renamed` is unknown on the type",
            ),
            (
                parse_quote! { struct S { #[schema(crate = "x")] a: u8 } },
                "schema attribute `crate` is not allowed on a field: expected `rename`, `opaque`",
            ),
            (
                parse_quote! { enum E { #[schema(opaque = "x")] A } },
                "schema attribute `opaque` is not allowed on a variant: expected `rename`",
            ),
            (
                parse_quote! { #[schema(rename = "A", rename = "B")] struct S; },
                "duplicate schema attribute `rename`",
            ),
            (
                parse_quote! { #[schema(rename = "A")] #[schema(rename = "B")] struct S; },
                "duplicate schema attribute `rename`",
            ),
            (
                parse_quote! { #[schema(rename = 3)] struct S; },
                "expected a string: `#[schema(rename = \"...\")]`",
            ),
            (
                parse_quote! { #[schema(rename = "")] struct S; },
                "schema attribute `rename` needs a non-empty string",
            ),
            (
                parse_quote! { #[schema(crate = "not a path")] struct S; },
                "expected a path",
            ),
            (
                parse_quote! { #[schema] struct S; },
                "expected attribute arguments in parentheses",
            ),
            (
                parse_quote! { struct S { #[schema(opaque)] a: u8 } },
                "expected `=`",
            ),
            (
                parse_quote! { struct S<const N: Foo>; },
                "const parameter of an integer type, `bool` or `char` only",
            ),
        ];
        for (input, expected) in cases {
            let e = error(input);
            assert!(e.contains(expected), "{e:?} does not say {expected:?}");
        }
    }

    #[test]
    fn other_attributes_are_ignored() {
        squashed(parse_quote! {
            #[derive(Debug)]
            #[rkyv(compare(PartialEq))]
            #[repr(C, u8)]
            enum E { #[doc = "x"] A(#[rkyv(with = Skip)] u8) }
        });
    }

    #[test]
    fn discriminants_follow_the_repr() {
        let out = squashed(parse_quote! {
            #[repr(C, u32)]
            enum E { A = 0x8000_0000, B, C = 7 }
        });
        assert!(
            out.contains("letvalue:u32=0x8000_0000;valueasi128}+0i128"),
            "{out}"
        );
        assert!(
            out.contains("letvalue:u32=0x8000_0000;valueasi128}+1i128"),
            "{out}"
        );
        assert!(out.contains("letvalue:u32=7;valueasi128}+0i128"), "{out}");
    }
}
