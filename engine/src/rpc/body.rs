//! Request and reply bodies: rkyv archives written in place into a frame,
//! and read back only from memory the peer cannot reach.
//!
//! # The copy rule
//!
//! A body arrives in a ring the peer can still write. A check of those
//! bytes proves nothing about the next read of them: a peer that rewrites a
//! `String`'s relative pointer after bytecheck passed makes the reader
//! follow it out of bounds (a double fetch). So every body is first copied
//! into private, 16-aligned memory owned by this process ([`Inbox`], reused
//! from call to call), then validated there with bytecheck, then read
//! there. Validation of what nobody else can write holds for as long as it
//! is read: [`Checked`] is that fact as a type. For the bodies of calls
//! (tens to hundreds of bytes) the copy costs less than the validation.
//!
//! Only a connection whose owner declared the peer trusted (an `unsafe`
//! promise that it writes only valid archives of the right types) reads
//! bodies in place in the ring, without copy or validation.
#![allow(unsafe_code)] // bytecheck and access on bounds checked here, and the arena behind `Scratch`: see each SAFETY

use std::alloc::Layout;
use std::marker::PhantomData;
use std::ptr::NonNull;

use rkyv::Portable;
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::{Arena, ArenaHandle};
use rkyv::util::AlignedVec;

/// The serializer bodies are written with: rkyv's low-level serializer,
/// writing into a frame, with scratch space from an arena the caller keeps
/// (a client's, a worker's; see [`Scratch`]) and no pointer sharing.
pub type Ser<'a, 'b> =
    rkyv::api::low::LowSerializer<rkyv::ser::writer::Buffer<'b>, Scratch<'a>, rancor::Error>;

/// A serializer's scratch space: an arena acquired only when the value
/// asks for some. Fields of numbers, strings and lists of numbers need
/// none (lists of structs or strings, and maps, do); rkyv's
/// `Arena::acquire` first walks and frees the blocks the last
/// serialization added, some 25 instructions a body, which such a body now
/// skips.
pub struct Scratch<'a> {
    /// The arena, until the first request for space.
    arena: Option<&'a mut Arena>,
    /// Its handle, from then on.
    handle: Option<ArenaHandle<'a>>,
}

impl<'a> Scratch<'a> {
    /// Scratch space from `arena`, acquired on first use.
    pub fn new(arena: &'a mut Arena) -> Scratch<'a> {
        Scratch {
            arena: Some(arena),
            handle: None,
        }
    }
}

/// A request for scratch space that found neither the arena nor its
/// handle (cannot happen: the arena leaves only to become the handle).
#[derive(Debug, thiserror::Error)]
#[error("the serializer's scratch space is gone")]
struct ScratchGone;

// SAFETY: every allocation comes from the arena's handle, which upholds the
// trait's contract (unaliased memory that fits `layout`); this type only
// puts off acquiring it until the first `push_alloc`. A `pop_alloc` before
// any push would break the caller's side of the contract (it pops only
// what it pushed), and finds nothing to give back.
unsafe impl<E: rancor::Source> rkyv::ser::Allocator<E> for Scratch<'_> {
    // SAFETY (the caller's, as the trait states): `layout` has a non-zero
    // size. Passed on unchanged to the arena's handle, which returns
    // unaliased memory that fits it.
    #[inline]
    unsafe fn push_alloc(&mut self, layout: Layout) -> Result<NonNull<[u8]>, E> {
        if self.handle.is_none()
            && let Some(arena) = self.arena.take()
        {
            self.handle = Some(arena.acquire());
        }
        match &mut self.handle {
            // SAFETY: the caller's promise (`layout` has a non-zero size)
            // is the handle's requirement.
            Some(handle) => unsafe { handle.push_alloc(layout) },
            None => Err(E::new(ScratchGone)),
        }
    }

    // SAFETY (the caller's, as the trait states): `ptr` and `layout` are
    // the last allocation pushed and not yet popped. Every push went to the
    // handle, so it is the handle's to take back; with no handle there was
    // no push, and nothing is freed.
    #[inline]
    unsafe fn pop_alloc(&mut self, ptr: NonNull<u8>, layout: Layout) -> Result<(), E> {
        match &mut self.handle {
            // SAFETY: the caller's promise (`ptr` and `layout` are the last
            // allocation pushed and not popped) is the handle's
            // requirement, and every push went to this handle.
            Some(handle) => unsafe { handle.pop_alloc(ptr, layout) },
            None => Ok(()),
        }
    }
}

/// The validator bodies are checked with (no pointer sharing); its errors
/// keep their message.
pub type Validator<'a> = rkyv::api::low::LowValidator<'a, rancor::BoxedError>;

/// What a type must be to travel as a request, reply or message body:
/// rkyv serializable into a frame, its archive checkable with bytecheck,
/// and described by a [`Schema`](isocall_schema::Schema) so that both
/// sides can check at connect time that they agree on it.
/// `#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]` gives all
/// three.
///
/// Bodies use rkyv's low-level API: every field is archived on its own,
/// with no pointer sharing, so a shared pointer (`Rc`, `Arc`) is not a body
/// field (wrap it with rkyv's `Unshare`, or send what it points to). That
/// keeps the serializer and the validator of a small body to a few dozen
/// instructions.
pub trait Body:
    for<'a, 'b> rkyv::Serialize<Ser<'a, 'b>>
    + rkyv::Archive<Archived: Portable + for<'a> CheckBytes<Validator<'a>>>
    + isocall_schema::Schema
{
}

impl<T> Body for T where
    T: for<'a, 'b> rkyv::Serialize<Ser<'a, 'b>>
        + rkyv::Archive<Archived: Portable + for<'a> CheckBytes<Validator<'a>>>
        + isocall_schema::Schema
{
}

/// Why a body could not be written into a frame: it does not fit (or rkyv
/// could not serialize it).
#[derive(Debug, thiserror::Error)]
#[error("the body does not fit the {room} bytes a frame has for it")]
pub struct EncodeError {
    /// Bytes that were available.
    pub room: usize,
    /// rkyv's error, if rkyv was writing it.
    #[source]
    pub source: Option<rancor::Error>,
}

/// Serializes `value` into `buf`, with scratch space from `arena`;
/// returns the archive's length.
///
/// # Errors
///
/// The archive does not fit `buf` (or the value cannot be serialized).
#[inline]
pub(crate) fn encode<T>(value: &T, buf: &mut [u8], arena: &mut Arena) -> Result<usize, EncodeError>
where
    T: for<'a, 'b> rkyv::Serialize<Ser<'a, 'b>>,
{
    let room = buf.len();
    rkyv::api::low::to_bytes_in_with_alloc::<_, _, rancor::Error>(
        value,
        rkyv::ser::writer::Buffer::from(buf),
        Scratch::new(arena),
    )
    .map(|w| w.len())
    .map_err(|source| EncodeError {
        room,
        source: Some(source),
    })
}

/// Why a body failed validation: the archive is not a valid `T`.
#[derive(Debug, thiserror::Error)]
#[error("not a valid archive of {type_name}: {source}")]
pub struct ValidationError {
    /// The type it was checked as.
    pub type_name: String,
    /// bytecheck's account of what is wrong.
    #[source]
    pub source: rancor::BoxedError,
}

/// Copies `src` into the start of `dst` (at least as long). A body of up
/// to 128 bytes (the common case: a few words) is moved as its first and
/// its last 2, 4, 8, 16, 32 or 64 bytes (two moves that overlap in the
/// middle), with no loop and no call; a longer one goes through `memcpy`,
/// whose wide moves win once the copy is more than a few lines.
///
/// Not a word loop: LLVM recognises a loop that copies words as `memcpy`
/// and calls libc, twice (the words, then the tail), which is what a word
/// loop here compiled to (78 instructions for 64 bytes; see
/// docs/performance.md).
///
/// The bytes where the two moves overlap are read twice from `src`, which
/// may be the peer's ring: a peer that rewrites them in between changes
/// only what lands in `dst`, and `dst` (private) is what is checked and
/// read afterwards (the copy rule), so the double read gives it nothing.
#[inline]
pub(crate) fn copy_body(dst: &mut [u8], src: &[u8]) {
    /// Moves the first `W` and the last `W` bytes (`W <= n <= 2 * W`: the
    /// two moves cover all `n`, overlapping in the middle).
    #[inline(always)]
    fn ends<const W: usize>(dst: &mut [u8], src: &[u8]) {
        let n = src.len();
        dst[..W].copy_from_slice(&src[..W]);
        dst[n - W..n].copy_from_slice(&src[n - W..]);
    }
    let n = src.len();
    let dst = &mut dst[..n];
    match n {
        0 => {}
        1 => dst[0] = src[0],
        2..=3 => ends::<2>(dst, src),
        4..=7 => ends::<4>(dst, src),
        8..=16 => ends::<8>(dst, src),
        17..=32 => ends::<16>(dst, src),
        33..=64 => ends::<32>(dst, src),
        65..=128 => ends::<64>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// Private, 16-aligned memory a body is copied into before it is checked
/// and read (see the module doc). Reused: after the first calls it grows no
/// more.
#[derive(Debug, Default)]
pub struct Inbox {
    /// Initialised up to its length, the longest body copied in so far; the
    /// body copied in last is `buf[..used]`. Kept that long so a copy
    /// writes over bytes already there instead of zeroing them first.
    buf: AlignedVec<16>,
    used: usize,
}

impl Inbox {
    /// An empty inbox.
    pub fn new() -> Inbox {
        Inbox::default()
    }

    /// Copies `bytes` (the peer's) in, replacing what was there (by two
    /// overlapping moves for a short body; see `copy_body`).
    #[inline(always)]
    pub fn fill(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        if n > self.buf.len() {
            self.buf.resize(n, 0);
        }
        self.used = n;
        copy_body(&mut self.buf[..n], bytes);
    }

    /// The bytes copied in last.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.used]
    }

    /// Checks the bytes copied in as an archive of `T`.
    ///
    /// # Errors
    ///
    /// [`ValidationError`] naming the type and what is wrong.
    #[inline(always)]
    pub fn check<T: Body>(&self) -> Result<Checked<'_, T>, ValidationError> {
        check::<T>(self.bytes())
    }
}

/// Bytes checked to hold a valid archive of `T`, in memory nobody else can
/// write for as long as this borrow lives (private memory, or the frame of
/// a connection declared trusted).
pub struct Checked<'a, T: Body> {
    bytes: &'a [u8],
    _t: PhantomData<fn() -> T>,
}

impl<T: Body> Clone for Checked<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Body> Copy for Checked<'_, T> {}

impl<'a, T: Body> Checked<'a, T> {
    /// The archived value.
    #[inline]
    pub fn get(&self) -> &'a T::Archived {
        // SAFETY: `bytes` passed bytecheck as a `T::Archived` when this
        // value was made (`check`), or the peer is trusted to write only
        // valid archives (`trusted`); either way the bytes cannot change
        // while borrowed: they are private to this process (the copy rule)
        // or the frame of a trusted peer.
        unsafe { rkyv::access_unchecked::<T::Archived>(self.bytes) }
    }

    /// The bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Bytes of a trusted peer, taken as valid without a check.
    ///
    /// # Safety
    ///
    /// `bytes` hold a valid archive of `T` (the connection was declared
    /// trusted: its peer writes only valid archives of the method's
    /// types) and are not written while this value lives.
    pub unsafe fn trusted(bytes: &'a [u8]) -> Checked<'a, T> {
        Checked {
            bytes,
            _t: PhantomData,
        }
    }
}

/// Checks `bytes` (which must be private to this process) as an archive of
/// `T`.
///
/// This is rkyv's `access` without its root bookkeeping: the root's
/// bounds and alignment are checked here, and the validator starts with
/// the bytes before the root as its range, where rkyv's would start with
/// all of them, check the root's span against that range, claim the span
/// (shrinking the range to the bytes before it) and give it back after.
/// Every pointer the root holds is so confined to the same bytes as under
/// rkyv's `access`, for about a tenth of the instructions (rkyv's three
/// out-of-line steps are some 65 a body, the larger part of the check of
/// a small one; see docs/performance.md).
///
/// # Errors
///
/// [`ValidationError`] naming the type and what is wrong.
#[inline(always)]
pub(crate) fn check<T: Body>(bytes: &[u8]) -> Result<Checked<'_, T>, ValidationError> {
    let fail = |source| ValidationError {
        type_name: <T as isocall_schema::Schema>::NAME.to_string(),
        source,
    };
    let size = size_of::<T::Archived>();
    let Some(root) = bytes.len().checked_sub(size) else {
        return Err(fail(rancor::Source::new(RootError::Short {
            len: bytes.len(),
            size,
        })));
    };
    let at = bytes.as_ptr().wrapping_add(root);
    let align = align_of::<T::Archived>();
    if !(at as usize).is_multiple_of(align) {
        return Err(fail(rancor::Source::new(RootError::Unaligned {
            root,
            align,
        })));
    }
    let mut context = rkyv::validation::Validator::new(
        rkyv::validation::archive::ArchiveValidator::new(&bytes[..root]),
        (),
    );
    // SAFETY: `at` points to `size` bytes inside `bytes` (`root + size ==
    // bytes.len()`), aligned for `T::Archived` (checked above): what
    // `check_bytes` asks of its pointer. The context's range ends where
    // the root starts, so nothing the root points to may overlap it, as
    // with rkyv's own `access`.
    let checked = unsafe {
        <T::Archived as CheckBytes<Validator<'_>>>::check_bytes(
            at.cast(),
            rancor::Strategy::wrap(&mut context),
        )
    };
    match checked {
        Ok(()) => Ok(Checked {
            bytes,
            _t: PhantomData,
        }),
        Err(source) => Err(fail(source)),
    }
}

/// Why a body has no room for its root, before bytecheck looks inside it.
#[derive(Debug, thiserror::Error)]
enum RootError {
    /// Fewer bytes than the archived type's size.
    #[error("{len} bytes are too few for a root of {size}")]
    Short { len: usize, size: usize },
    /// The root (at the end of the bytes) is not aligned for its type.
    #[error("the root at offset {root} is not aligned to {align}")]
    Unaligned { root: usize, align: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_body_copies_every_length_exactly() {
        let src: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in 0..=src.len() {
            // A longer destination: only its first `n` bytes are written.
            let mut dst = vec![0xEEu8; n + 17];
            copy_body(&mut dst, &src[..n]);
            assert_eq!(&dst[..n], &src[..n], "length {n}");
            assert!(
                dst[n..].iter().all(|&b| b == 0xEE),
                "length {n} wrote past its end"
            );
        }
    }

    /// Whether rkyv's own `access` passes `bytes` as a `T`.
    fn rkyv_passes<T: Body>(bytes: &[u8]) -> bool {
        rkyv::api::low::access::<T::Archived, rancor::BoxedError>(bytes).is_ok()
    }

    /// Checks every one-byte change of `bytes` (three values a byte) and
    /// every length and alignment of them as a `T`, and asserts that
    /// `check` passes exactly what rkyv's `access` passes.
    fn same_verdicts<T: Body>(bytes: &[u8]) -> (usize, usize) {
        let (mut passed, mut failed) = (0, 0);
        let mut tally = |ok: bool| if ok { passed += 1 } else { failed += 1 };
        let mut buf = AlignedVec::<16>::new();
        for at in 0..bytes.len() {
            for v in [0x00, 0x7F, 0xFF] {
                buf.clear();
                buf.extend_from_slice(bytes);
                buf[at] = v;
                let ours = check::<T>(&buf).is_ok();
                assert_eq!(ours, rkyv_passes::<T>(&buf), "byte {at} set to {v:#x}");
                tally(ours);
            }
        }
        // Shorter and longer (the root moves with the end), and moved off
        // the inbox's alignment.
        for shift in 0..16 {
            buf.clear();
            buf.extend_from_slice(&[0; 16][..shift]);
            buf.extend_from_slice(bytes);
            buf.extend_from_slice(&[0; 8]);
            for end in shift..buf.len() {
                let b = &buf[shift..end];
                let ours = check::<T>(b).is_ok();
                assert_eq!(
                    ours,
                    rkyv_passes::<T>(b),
                    "shift {shift}, length {}",
                    b.len()
                );
                tally(ours);
            }
        }
        (passed, failed)
    }

    #[test]
    fn check_passes_exactly_what_rkyv_access_passes() {
        let value: (Vec<String>, Option<String>, u32) = (
            vec!["short".into(), "a string longer than inline".into()],
            Some("tag".into()),
            7,
        );
        let bytes = rkyv::to_bytes::<rancor::Error>(&value).unwrap();
        let (passed, failed) = same_verdicts::<(Vec<String>, Option<String>, u32)>(&bytes);
        // Both verdicts occur: the comparison is not of two constants.
        assert!(passed > 0 && failed > 0, "{passed} passed, {failed} failed");
        let plain = rkyv::to_bytes::<rancor::Error>(&[7u64; 8]).unwrap();
        let (passed, failed) = same_verdicts::<[u64; 8]>(&plain);
        assert!(passed > 0 && failed > 0, "{passed} passed, {failed} failed");
    }

    #[test]
    fn a_pointer_into_the_root_itself_is_refused() {
        // A `Vec<u8>` root whose relative pointer (offset 0) points at the
        // root itself and whose length (8) covers it: its bytes would be
        // read both as the list and as its elements.
        let mut buf = AlignedVec::<16>::new();
        buf.extend_from_slice(&0i32.to_le_bytes());
        buf.extend_from_slice(&8u32.to_le_bytes());
        assert!(!rkyv_passes::<Vec<u8>>(&buf));
        let e = check::<Vec<u8>>(&buf).err().unwrap();
        assert!(
            e.to_string().contains("subtree pointer overran range"),
            "{e}"
        );
        // The same list placed before the root passes.
        buf.clear();
        buf.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        buf.extend_from_slice(&(-8i32).to_le_bytes());
        buf.extend_from_slice(&8u32.to_le_bytes());
        assert_eq!(
            check::<Vec<u8>>(&buf).unwrap().get().as_slice(),
            &[1, 2, 3, 4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn a_root_that_does_not_fit_or_is_misaligned_is_named() {
        let bytes = rkyv::to_bytes::<rancor::Error>(&[7u64; 8]).unwrap();
        let short = check::<[u64; 8]>(&bytes[..63]).err().unwrap();
        assert!(
            short
                .to_string()
                .contains("63 bytes are too few for a root of 64")
        );
        let mut buf = AlignedVec::<16>::new();
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&bytes);
        let skewed = check::<[u64; 8]>(&buf[..]).err().unwrap();
        assert!(skewed.to_string().contains("not aligned to 8"), "{skewed}");
    }

    #[test]
    fn bodies_that_need_scratch_space_and_bodies_that_do_not_encode() {
        // A list of strings (its resolvers go in scratch space) and a map
        // (built in scratch space) between plain arrays, in one arena.
        type Mixed = (Vec<String>, std::collections::HashMap<String, u32>);
        let mixed: Mixed = (
            (0..40).map(|i| format!("item {i}")).collect(),
            (0..40).map(|i| (format!("key {i}"), i)).collect(),
        );
        let mut arena = Arena::new();
        let mut out = AlignedVec::<16>::new();
        out.resize(1 << 16, 0);
        for round in 0..3u64 {
            let n = encode(&[round; 8], &mut out, &mut arena).unwrap();
            assert_eq!(check::<[u64; 8]>(&out[..n]).unwrap().get(), &[round; 8]);
            let n = encode(&mixed, &mut out, &mut arena).unwrap();
            let back = check::<Mixed>(&out[..n]).unwrap();
            let (list, map) = (&back.get().0, &back.get().1);
            assert!(
                list.iter()
                    .map(|s| s.as_str())
                    .eq(mixed.0.iter().map(|s| s.as_str()))
            );
            assert_eq!(map.len(), 40);
            assert!(
                mixed
                    .1
                    .iter()
                    .all(|(k, v)| map.get(k.as_str()).map(|v| v.to_native()) == Some(*v))
            );
        }
    }

    #[test]
    fn inbox_keeps_only_the_last_body() {
        let mut inbox = Inbox::new();
        inbox.fill(&[1; 100]);
        inbox.fill(&[2; 33]);
        assert_eq!(inbox.bytes(), &[2; 33][..]);
    }
}
