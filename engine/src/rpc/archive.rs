//! Reading rkyv archives out of frames: validated with bytecheck by
//! default, unchecked only on a connection its owner declared trusted.
#![allow(unsafe_code)]

use rkyv::Portable;
use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;

/// The archived `T` at the root of `bytes`.
///
/// With `trusted` false (the default of every connection) the bytes are
/// checked with bytecheck first, and a malformed archive is an error
/// naming what is wrong.
///
/// # Errors
///
/// The validation error, as text.
#[inline]
pub(crate) fn read<T>(bytes: &[u8], trusted: bool) -> Result<&T, String>
where
    T: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    if trusted {
        // SAFETY: `trusted` is only set through the `unsafe fn
        // set_trusted` of a client or server, whose caller promises that
        // the peer writes only valid archives of the method's types (e.g.
        // it is the same binary). Alignment and bounds are still the
        // frame's: the body starts 16-aligned in a checked payload.
        Ok(unsafe { rkyv::access_unchecked::<T>(bytes) })
    } else {
        rkyv::access::<T, rancor::Error>(bytes).map_err(|e| e.to_string())
    }
}

/// Serializes `value` into `buf`; returns the archive's length.
///
/// # Errors
///
/// The archive does not fit `buf` (or the value cannot be serialized).
#[inline]
pub(crate) fn write_into<T>(value: &T, buf: &mut [u8]) -> Result<usize, String>
where
    T: for<'a, 'b> rkyv::Serialize<Ser<'a, 'b>>,
{
    let w = rkyv::api::high::to_bytes_in::<_, rancor::Error>(
        value,
        rkyv::ser::writer::Buffer::from(buf),
    )
    .map_err(|e| e.to_string())?;
    Ok(w.len())
}

/// The serializer `write_into` uses: rkyv's high-level serializer writing
/// into a frame.
pub type Ser<'a, 'b> = rkyv::api::high::HighSerializer<
    rkyv::ser::writer::Buffer<'b>,
    rkyv::ser::allocator::ArenaHandle<'a>,
    rancor::Error,
>;

/// What a type must be to travel as a request or reply body: rkyv
/// serializable into a frame, and its archive checkable with bytecheck.
/// `#[derive(rkyv::Archive, rkyv::Serialize)]` gives both.
pub trait Body:
    for<'a, 'b> rkyv::Serialize<Ser<'a, 'b>>
    + rkyv::Archive<Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>>
{
}

impl<T> Body for T where
    T: for<'a, 'b> rkyv::Serialize<Ser<'a, 'b>>
        + rkyv::Archive<Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>>
{
}
