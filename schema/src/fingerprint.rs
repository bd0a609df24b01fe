//! The `const fn` hash behind every
//! [`Schema::FINGERPRINT`](crate::Schema::FINGERPRINT).

/// The starting state: the bytes of `"isocall1"` read as a big-endian word.
const SEED: u64 = 0x6973_6f63_616c_6c31;
/// Added after each xor so that the all-zero state is not a fixed point.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

const TAG_KIND: u64 = 1;
const TAG_STR: u64 = 2;
const TAG_U64: u64 = 3;
const TAG_FIELD: u64 = 4;
const TAG_VARIANT: u64 = 5;
const TAG_END: u64 = 6;

/// The SplitMix64 finaliser: a bijection on `u64` with full avalanche.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A structural hash under construction, built with `const fn` combinators.
///
/// Start with [`new`](Self::new) and the kind of thing described, add its
/// parts in order, and [`finish`](Self::finish). This is what
/// `#[derive(Schema)]` writes; a hand-written [`Schema`](crate::Schema) impl
/// uses it the same way:
///
/// ```
/// use isocall_schema::{Fingerprint, Schema};
///
/// // What the derive writes for `struct Add { a: u64, b: u64 }`.
/// const ADD: u64 = Fingerprint::new("struct")
///     .str("Add")
///     .field("a", <u64 as Schema>::FINGERPRINT)
///     .field("b", <u64 as Schema>::FINGERPRINT)
///     .finish();
///
/// // Order matters: the same fields the other way round are another type.
/// const SWAPPED: u64 = Fingerprint::new("struct")
///     .str("Add")
///     .field("b", <u64 as Schema>::FINGERPRINT)
///     .field("a", <u64 as Schema>::FINGERPRINT)
///     .finish();
/// assert_ne!(ADD, SWAPPED);
/// ```
///
/// # Algorithm
///
/// A [`Fingerprint`] absorbs a stream of typed tokens (a kind, strings,
/// numbers, fields, variants) and [`finish`](Fingerprint::finish)es into a
/// `u64`. The encoding is unambiguous: every token starts with its own tag
/// word, strings carry their length, fields and variants their index, and the
/// end carries the number of fields or variants, so two different token
/// streams never absorb the same words. Words are absorbed one at a time
/// through a bijective 64-bit mixer (the SplitMix64 finaliser), so a one-bit
/// change anywhere spreads to every bit of the result.
///
/// Everything is plain integer arithmetic on `u64` with wrapping operations,
/// and strings are read as little-endian 8-byte words whatever the target, so
/// a fingerprint is the same on every build, compiler, target and machine.
/// The exact algorithm:
///
/// ```text
/// absorb(h, w)   = mix((h ^ w) + 0x9e37_79b9_7f4a_7c15)
/// mix(z)         = z ^= z >> 30; z *= 0xbf58_476d_1ce4_e5b9;
///                  z ^= z >> 27; z *= 0x94d0_49bb_1331_11eb; z ^ (z >> 31)
/// string s       = absorb len(s) (UTF-8 bytes), then s in 8-byte little-endian
///                  words, the last one padded with zero bytes
/// new(kind)      = h = 0x6973_6f63_616c_6c31 ("isocall1"); absorb KIND; string kind
/// str(s)         = absorb STR; string s
/// u64(v)         = absorb U64; absorb v
/// field(n, f)    = absorb FIELD; absorb index; string n; absorb f; index += 1
/// variant(n,d,f) = absorb VARIANT; absorb index; string n;
///                  absorb low 64 bits of d; absorb high 64 bits of d; absorb f;
///                  index += 1
/// finish()       = absorb END; absorb index; mix(h)
/// tags           KIND = 1, STR = 2, U64 = 3, FIELD = 4, VARIANT = 5, END = 6
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use = "a Fingerprint does nothing until it is finished"]
pub struct Fingerprint {
    /// The hash state so far.
    state: u64,
    /// How many fields or variants were added: the index of the next one.
    items: u64,
}

impl Fingerprint {
    /// Starts a fingerprint of a thing of the given kind.
    ///
    /// The derive uses `"struct"` and `"enum"` for the types it describes,
    /// `"fields"` for the body of an enum variant and `"opaque"` for an
    /// opaque field; the impls of this crate use `"primitive"`, `"tuple"`,
    /// `"array"`, `"slice"` or the name of the standard type (`"Vec"`,
    /// `"Option"`, `"NonZero"`, ...). Kinds keep unrelated things apart: a
    /// struct named `Vec` is not a `Vec`.
    pub const fn new(kind: &str) -> Self {
        Self {
            state: SEED,
            items: 0,
        }
        .word(TAG_KIND)
        .string(kind)
    }

    /// Adds a string, e.g. the name of the type being described.
    pub const fn str(self, s: &str) -> Self {
        self.word(TAG_STR).string(s)
    }

    /// Adds a number, e.g. the length of an array or the fingerprint of a
    /// type argument.
    pub const fn u64(self, value: u64) -> Self {
        self.word(TAG_U64).word(value)
    }

    /// Adds the next field: its position (counted by this builder), its
    /// name (`"0"`, `"1"`, ... for a tuple struct) and the fingerprint of
    /// its type.
    pub const fn field(self, name: &str, fingerprint: u64) -> Self {
        let index = self.items;
        let mut next = self
            .word(TAG_FIELD)
            .word(index)
            .string(name)
            .word(fingerprint);
        next.items = index + 1;
        next
    }

    /// Adds the next enum variant: its position (counted by this builder),
    /// its name, its discriminant (the value of its tag: its position unless
    /// the enum says `Name = value`) and the fingerprint of its fields, a
    /// `Fingerprint::new("fields")` with one [`field`](Self::field) per field.
    pub const fn variant(self, name: &str, discriminant: i128, fields: u64) -> Self {
        let index = self.items;
        // Two's complement bits, split into words: `as` is exact here.
        let bits = discriminant as u128;
        let mut next = self
            .word(TAG_VARIANT)
            .word(index)
            .string(name)
            .word(bits as u64)
            .word((bits >> 64) as u64)
            .word(fields);
        next.items = index + 1;
        next
    }

    /// Ends the fingerprint (sealing the number of fields or variants, so a
    /// type with one more of them differs) and returns it.
    #[must_use]
    pub const fn finish(self) -> u64 {
        mix(self.word(TAG_END).word(self.items).state)
    }

    /// Absorbs one word.
    const fn word(mut self, w: u64) -> Self {
        self.state = mix((self.state ^ w).wrapping_add(GOLDEN));
        self
    }

    /// Absorbs a string: its length, then its bytes as little-endian words.
    const fn string(self, s: &str) -> Self {
        let bytes = s.as_bytes();
        let mut next = self.word(bytes.len() as u64);
        let mut i = 0;
        while i < bytes.len() {
            let mut w = 0u64;
            let mut j = 0;
            while j < 8 && i + j < bytes.len() {
                w |= (bytes[i + j] as u64) << (8 * j);
                j += 1;
            }
            next = next.word(w);
            i += 8;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_length_prefixed() {
        let ab_c = Fingerprint::new("k").str("ab").str("c").finish();
        let a_bc = Fingerprint::new("k").str("a").str("bc").finish();
        assert_ne!(ab_c, a_bc);
    }

    #[test]
    fn padding_is_not_content() {
        let a = Fingerprint::new("k").str("a").finish();
        let a0 = Fingerprint::new("k").str("a\0").finish();
        assert_ne!(a, a0);
    }

    #[test]
    fn tokens_are_tagged() {
        let s = Fingerprint::new("k").str("").finish();
        let n = Fingerprint::new("k").u64(0).finish();
        assert_ne!(s, n);
    }

    #[test]
    fn field_count_is_sealed() {
        let one = Fingerprint::new("k").field("a", 1).finish();
        let none = Fingerprint::new("k").finish();
        assert_ne!(one, none);
    }

    #[test]
    fn fields_and_variants_differ() {
        let f = Fingerprint::new("k").field("a", 1).finish();
        let v = Fingerprint::new("k").variant("a", 0, 1).finish();
        assert_ne!(f, v);
    }

    #[test]
    fn discriminant_is_hashed() {
        let zero = Fingerprint::new("k").variant("a", 0, 1).finish();
        let neg = Fingerprint::new("k").variant("a", -1, 1).finish();
        let big = Fingerprint::new("k").variant("a", 1 << 64, 1).finish();
        assert_ne!(zero, neg);
        assert_ne!(zero, big);
        assert_ne!(neg, big);
    }

    #[test]
    fn one_bit_spreads() {
        let a = Fingerprint::new("k").u64(0).finish();
        let b = Fingerprint::new("k").u64(1).finish();
        let flipped = (a ^ b).count_ones();
        assert!((16..=48).contains(&flipped), "{flipped} bits differ");
    }
}
