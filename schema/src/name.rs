//! [`NameBuf`], the `const fn` string builder behind the names of generic
//! types.

use core::fmt;

/// A type's name built at compile time: a fixed-capacity UTF-8 buffer with
/// `const fn` appends.
///
/// Stable Rust cannot size an array by a generic expression, so the name of
/// a generic type (`"Vec<u32>"`, made of `"Vec<"`, `<u32 as Schema>::NAME`
/// and `">"`) is written into a buffer of [`CAPACITY`](Self::CAPACITY) bytes
/// instead, and a borrow of the buffer taken in the initializer of a `const`
/// lives for the whole program:
///
/// ```
/// use isocall_schema::{NameBuf, Schema};
///
/// struct Tagged<T>(T);
///
/// impl<T: Schema> Tagged<T> {
///     const NAME: &'static str = {
///         let name: &'static NameBuf =
///             &NameBuf::new().push("Tagged<").push(T::NAME).push(">");
///         name.as_str()
///     };
/// }
///
/// assert_eq!(Tagged::<Vec<u8>>::NAME, "Tagged<Vec<u8>>");
/// ```
///
/// A name that would not fit is cut at a character boundary and ends in
/// `"..."`; [`is_truncated`](Self::is_truncated) tells. Names are for
/// messages, never compared for compatibility (fingerprints are), so a cut
/// name costs clarity only.
#[derive(Clone, Copy)]
pub struct NameBuf {
    /// `bytes[..len]` is valid UTF-8; the rest is zero.
    bytes: [u8; NameBuf::CAPACITY],
    /// Bytes in use, at most `CAPACITY`.
    len: usize,
    /// Whether something did not fit; then the name ends in `"..."` and
    /// further appends are ignored.
    truncated: bool,
}

/// What a cut name ends with.
const ELLIPSIS: &str = "...";

impl NameBuf {
    /// The most bytes a name holds, including the `"..."` of a cut one.
    pub const CAPACITY: usize = 256;

    /// An empty name.
    pub const fn new() -> Self {
        Self {
            bytes: [0; Self::CAPACITY],
            len: 0,
            truncated: false,
        }
    }

    /// Appends `s`. If it does not fit, appends as much of it as fits (whole
    /// characters only) followed by `"..."`, and ignores later appends.
    pub const fn push(self, s: &str) -> Self {
        if self.truncated {
            return self;
        }
        let src = s.as_bytes();
        let room = Self::CAPACITY - self.len;
        if src.len() <= room {
            return self.copy(src, src.len());
        }
        // Keep room for the ellipsis, and cut at a char boundary: back off
        // while the first byte left out is a UTF-8 continuation byte.
        let mut take = room.saturating_sub(ELLIPSIS.len());
        while take > 0 && (src[take] & 0xC0) == 0x80 {
            take -= 1;
        }
        // Earlier pushes may have filled the buffer right up to the end: then
        // make room for the ellipsis by dropping whole characters already in.
        let mut next = self.copy(src, take);
        while Self::CAPACITY - next.len < ELLIPSIS.len() {
            next.len -= 1;
            while (next.bytes[next.len] & 0xC0) == 0x80 {
                next.len -= 1;
            }
        }
        let mut i = next.len;
        while i < Self::CAPACITY {
            next.bytes[i] = 0;
            i += 1;
        }
        next = next.copy(ELLIPSIS.as_bytes(), ELLIPSIS.len());
        next.truncated = true;
        next
    }

    /// Appends an unsigned number in decimal, e.g. the length of an array.
    pub const fn push_u128(self, value: u128) -> Self {
        // u128::MAX has 39 digits.
        let mut digits = [0u8; 39];
        let mut start = digits.len();
        let mut v = value;
        loop {
            start -= 1;
            digits[start] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let (_, used) = digits.split_at(start);
        match core::str::from_utf8(used) {
            Ok(s) => self.push(s),
            Err(_) => panic!("decimal digits are ASCII"),
        }
    }

    /// Appends a signed number in decimal, e.g. a const generic argument.
    pub const fn push_i128(self, value: i128) -> Self {
        if value < 0 {
            self.push("-").push_u128(value.unsigned_abs())
        } else {
            self.push_u128(value.unsigned_abs())
        }
    }

    /// Appends `true` or `false`.
    pub const fn push_bool(self, value: bool) -> Self {
        self.push(if value { "true" } else { "false" })
    }

    /// Appends a character in single quotes, as a `char` const generic
    /// argument is written.
    pub const fn push_char(self, value: char) -> Self {
        let mut utf8 = [0u8; 4];
        let encoded: &str = value.encode_utf8(&mut utf8);
        self.push("'").push(encoded).push("'")
    }

    /// The name built so far.
    pub const fn as_str(&self) -> &str {
        let (used, _) = self.bytes.split_at(self.len);
        match core::str::from_utf8(used) {
            Ok(s) => s,
            Err(_) => panic!("NameBuf holds whole UTF-8 characters only"),
        }
    }

    /// Whether a push did not fit, so the name was cut and ends in `"..."`.
    pub const fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// Copies `src[..n]` to the end; the caller checked that it fits.
    const fn copy(mut self, src: &[u8], n: usize) -> Self {
        debug_assert!(n <= src.len() && self.len + n <= Self::CAPACITY);
        let mut i = 0;
        while i < n {
            self.bytes[self.len + i] = src[i];
            i += 1;
        }
        self.len += n;
        self
    }
}

impl Default for NameBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for NameBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for NameBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for NameBuf {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str() && self.truncated == other.truncated
    }
}

impl Eq for NameBuf {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_names() {
        let n = NameBuf::new().push("[u8; ").push_u128(16).push("]");
        assert_eq!(n.as_str(), "[u8; 16]");
        assert!(!n.is_truncated());
        assert_eq!(NameBuf::new().push_u128(0).as_str(), "0");
        assert_eq!(
            NameBuf::new().push_u128(u128::MAX).as_str(),
            "340282366920938463463374607431768211455"
        );
        assert_eq!(
            NameBuf::new().push_i128(i128::MIN).as_str(),
            "-170141183460469231731687303715884105728"
        );
        assert_eq!(NameBuf::new().push_bool(true).as_str(), "true");
        assert_eq!(NameBuf::new().push_char('é').as_str(), "'é'");
    }

    #[test]
    fn long_names_are_cut_at_char_boundaries() {
        // 'é' is two bytes, so a cut can fall inside one.
        for prefix in 0..4 {
            let long = "é".repeat(NameBuf::CAPACITY);
            let n = NameBuf::new()
                .push(&"a".repeat(prefix))
                .push(&long)
                .push("more");
            assert!(n.is_truncated());
            assert!(n.as_str().ends_with("..."));
            assert!(n.as_str().len() <= NameBuf::CAPACITY);
            assert!(n.as_str().len() >= NameBuf::CAPACITY - 4);
        }
    }

    #[test]
    fn a_full_buffer_still_gets_its_ellipsis() {
        let exact = "é".repeat(NameBuf::CAPACITY / 2);
        let full = NameBuf::new().push(&exact);
        assert!(!full.is_truncated());
        assert_eq!(full.as_str(), exact);
        let over = full.push("x");
        assert!(over.is_truncated());
        assert_eq!(over.as_str().len(), NameBuf::CAPACITY - 1);
        assert!(over.as_str().ends_with("é..."));
    }
}
