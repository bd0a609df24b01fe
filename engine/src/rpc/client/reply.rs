//! What a call gives back: a [`Reply`] guard over the validated reply and
//! its blobs, and a [`Pending`] call to wait for.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use isocall_blob::{Blob, BlobHandle, BlobMut, Pool};
use isocall_ringbuf::SharedRegion;
use rkyv::util::AlignedVec;

use super::slots::FreeMark;
use crate::rpc::body::{Body, Checked, copy_body};
use crate::rpc::large::large_id;
use crate::rpc::link::Frame as RxFrame;
use crate::rpc::server::BlobAccessError;
use crate::rpc::wire::MAX_BLOBS;

/// Where a reply's bytes are.
pub(crate) enum ReplyBytes<'c> {
    /// In the client's private inbox.
    Borrowed(&'c [u8]),
    /// In a buffer of their own (a reply stashed while another was waited
    /// for, or delivered to a shared client's caller), given back to
    /// `spares` when the reply is dropped.
    Owned(AlignedVec<16>, Option<&'c Mutex<Vec<AlignedVec<16>>>>),
    /// In place in the ring (a trusted connection): the frame is released
    /// when the reply is dropped.
    Frame(Option<RxFrame<'c>>, std::ops::Range<usize>),
    /// In the reply itself (a shared client's short reply): no buffer to
    /// fetch from, or give back to, a list other threads share. The
    /// length beside the bytes, not in them: it shares the tag's 16 bytes,
    /// so a `Reply` is 128 bytes, which moves by vector stores where a
    /// larger one took a `memcpy` call at each move.
    Inline { len: u8, body: InlineBody },
    /// In the buffer of the call's slot in a shared client (the leader's
    /// own short reply): copied once, to an address that does not move
    /// with the reply. The slot is given back (`free`) when the reply is
    /// dropped.
    Slot { bytes: &'c [u8], free: &'c FreeMark },
}

/// The longest reply body a [`ReplyBytes::Inline`] holds.
pub(crate) const INLINE_BODY: usize = 64;

/// A short reply body, copied into the reply: 16-aligned, as rkyv's
/// archives want. Not less: a root that needs 8 may hold sub-objects that
/// need 16 (a `Vec<u128>`), checked where they lie; and the reply is
/// checked at one address and read at another after it moves, so only the
/// type's own alignment keeps both aligned alike.
#[repr(C, align(16))]
pub(crate) struct InlineBody {
    buf: [u8; INLINE_BODY],
}

/// The buffer of one slot of a shared client for its call's own short
/// reply body (see [`ReplyBytes::Slot`]). It belongs to the call that holds
/// the slot: from the slot's taking to its giving back.
#[derive(Default)]
pub(crate) struct SlotBody(UnsafeCell<InlineBody>);

impl Default for InlineBody {
    fn default() -> Self {
        InlineBody {
            buf: [0; INLINE_BODY],
        }
    }
}

impl InlineBody {
    /// Copies `bytes` in, if they fit; the bytes now here.
    #[inline(always)]
    fn copy_in(&mut self, bytes: &[u8]) -> Option<&mut [u8]> {
        let dst = self.buf.get_mut(..bytes.len())?;
        copy_body(dst, bytes);
        Some(dst)
    }
}

// SAFETY: the buffer is written and read only by the call that holds its
// slot (see `fill`'s contract), one thread at a time; handing the slot to
// another call goes through the slot's free mark (Release when given
// back, Acquire when taken).
#[allow(unsafe_code)]
unsafe impl Sync for SlotBody {}

impl SlotBody {
    /// Copies `bytes` in, if they fit, and gives them back from there.
    ///
    /// # Safety
    ///
    /// The caller's call holds this buffer's slot (took it and has not
    /// given it back), and no slice from an earlier `fill` is alive (each
    /// is given back with the slot it lives in).
    #[inline(always)]
    #[allow(unsafe_code)]
    // SAFETY: an unsafe fn: its callers uphold the contract above.
    pub(crate) unsafe fn fill(&self, bytes: &[u8]) -> Option<&[u8]> {
        // SAFETY: by the contract nothing else reads or writes the buffer
        // while this borrow lives, nor while the shared slice returned from
        // it does.
        let body = unsafe { &mut *self.0.get() };
        body.copy_in(bytes).map(|b| &*b)
    }
}

impl ReplyBytes<'static> {
    /// `bytes` copied into the reply, if they are short enough.
    #[inline(always)]
    pub(crate) fn inline(bytes: &[u8]) -> Option<ReplyBytes<'static>> {
        let mut body = InlineBody::default();
        let len = u8::try_from(body.copy_in(bytes)?.len()).ok()?;
        Some(ReplyBytes::Inline { len, body })
    }
}

impl ReplyBytes<'_> {
    #[inline(always)]
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            ReplyBytes::Borrowed(b) => b,
            ReplyBytes::Owned(v, _) => v,
            ReplyBytes::Frame(f, r) => f.as_ref().map_or(&[][..], |f| &f.payload()[r.clone()]),
            ReplyBytes::Inline { len, body } => &body.buf[..usize::from(*len)],
            ReplyBytes::Slot { bytes, .. } => bytes,
        }
    }
}

impl Drop for ReplyBytes<'_> {
    /// Inlined where a reply is dropped: the common replies (in the inbox,
    /// or in the reply itself) have nothing to give back, and cost a
    /// branch instead of a call.
    #[inline(always)]
    fn drop(&mut self) {
        match self {
            ReplyBytes::Borrowed(_) | ReplyBytes::Inline { .. } => {}
            ReplyBytes::Slot { free, .. } => free.give_back(),
            _ => self.give_back(),
        }
    }
}

impl ReplyBytes<'_> {
    /// A buffer back to its list, or a frame back to its ring.
    #[cold]
    #[inline(never)]
    fn give_back(&mut self) {
        match self {
            ReplyBytes::Owned(v, Some(spares)) => {
                let v = std::mem::take(v);
                if v.capacity() > 0 {
                    let mut s = spares.lock().unwrap_or_else(|p| p.into_inner());
                    if s.len() < 64 {
                        s.push(v);
                    }
                }
            }
            ReplyBytes::Frame(f, _) => {
                if let Some(f) = f.take() {
                    f.release();
                }
            }
            _ => {}
        }
    }
}

/// A reply's blob handles: in the client's reused list, or a list of
/// their own (no allocation for a reply without blobs).
pub(crate) enum Handles<'c> {
    Borrowed(&'c [BlobHandle]),
    Owned(Vec<BlobHandle>),
}

impl Handles<'_> {
    /// The blob handles frame `p` carries, copied; none (the usual case)
    /// without a vector. A vector made and moved here is written by one
    /// function and read back as a whole by another, by loads wider than
    /// the stores, which the CPU cannot forward: each such load waits for
    /// every older store to reach the cache, among them the request's
    /// stores to ring lines the server's core holds (see
    /// docs/performance.md, "Stores that wait").
    #[inline(always)]
    pub(crate) fn of(p: &crate::rpc::wire::Parsed<'_>) -> Self {
        if p.blobs.is_empty() {
            Handles::Borrowed(&[])
        } else {
            Handles::Owned(p.blob_vec())
        }
    }

    /// `v`, or no vector when it is empty (as [`of`](Self::of)).
    #[inline(always)]
    pub(crate) fn owned(v: Vec<BlobHandle>) -> Self {
        if v.is_empty() {
            Handles::Borrowed(&[])
        } else {
            Handles::Owned(v)
        }
    }

    #[inline(always)]
    fn as_slice(&self) -> &[BlobHandle] {
        match self {
            Handles::Borrowed(h) => h,
            Handles::Owned(v) => v,
        }
    }
}

/// The blobs a reply carries, with the pool they are in. Those the caller
/// does not take are freed when the reply is dropped.
pub(crate) struct ReplyBlobSet<'c> {
    pub(crate) handles: Handles<'c>,
    /// Bit `i`: blob `i` was taken (or needs no freeing).
    pub(crate) taken: u32,
    pub(crate) pool: Option<&'c Pool<SharedRegion>>,
}

impl<'c> ReplyBlobSet<'c> {
    pub(crate) fn new(handles: Handles<'c>, pool: Option<&'c Pool<SharedRegion>>) -> Self {
        debug_assert!(handles.as_slice().len() <= MAX_BLOBS);
        ReplyBlobSet {
            handles,
            taken: 0,
            pool,
        }
    }

    /// Frees the pool blobs of `handles` now (a reply nobody takes).
    pub(crate) fn free(handles: &[BlobHandle], pool: Option<&Pool<SharedRegion>>) {
        if handles.is_empty() {
            return;
        }
        drop(ReplyBlobSet::new(Handles::Borrowed(handles), pool));
    }

    fn count(&self) -> usize {
        self.handles.as_slice().len()
    }

    fn take(
        &mut self,
        index: usize,
    ) -> Result<(&'c Pool<SharedRegion>, BlobHandle), BlobAccessError> {
        let h = *self
            .handles
            .as_slice()
            .get(index)
            .ok_or(BlobAccessError::NoSuchBlob {
                index,
                count: self.count(),
            })?;
        if large_id(&h).is_some() {
            return Err(BlobAccessError::IsLarge { index });
        }
        let pool = self.pool.ok_or(BlobAccessError::NoPool)?;
        self.taken |= 1 << index;
        Ok((pool, h))
    }
}

impl Drop for ReplyBlobSet<'_> {
    /// Inlined where a reply is dropped: a reply without blobs (the common
    /// case) costs a branch instead of a call.
    #[inline(always)]
    fn drop(&mut self) {
        if !self.handles.as_slice().is_empty() {
            self.free_untaken();
        }
    }
}

impl ReplyBlobSet<'_> {
    /// Frees the pool blobs the caller did not take.
    #[cold]
    #[inline(never)]
    fn free_untaken(&mut self) {
        let Some(pool) = self.pool else {
            return;
        };
        for (i, h) in self.handles.as_slice().iter().enumerate() {
            if self.taken & (1 << i) == 0 && large_id(h).is_none() {
                // Accepting and dropping frees it; a handle the pool
                // refuses (stale, forged) is nobody's to free.
                drop(pool.accept(h));
            }
        }
    }
}

/// A call's reply: derefs to the validated archived value, gives the
/// reply's blobs, and frees what it holds when dropped (its buffer, its
/// frame, and the blobs the caller did not take).
///
/// It borrows the client it came from: on a [`Client`](super::Client) the
/// next call waits until the reply is dropped.
pub struct Reply<'c, Resp: Body> {
    pub(crate) bytes: ReplyBytes<'c>,
    pub(crate) blobs: ReplyBlobSet<'c>,
    pub(crate) _t: PhantomData<fn() -> Resp>,
}

impl<'c, Resp: Body> Reply<'c, Resp> {
    /// A reply over `bytes`, which must have been checked as an archive of
    /// `Resp` (or come from a trusted connection) and be private.
    pub(crate) fn new(checked: ReplyBytes<'c>, blobs: ReplyBlobSet<'c>) -> Self {
        Reply {
            bytes: checked,
            blobs,
            _t: PhantomData,
        }
    }

    /// The reply's blob handles, in the order the server attached them.
    pub fn blob_handles(&self) -> &[BlobHandle] {
        self.blobs.handles.as_slice()
    }

    /// Takes blob `index` to read in place (dropping it frees it).
    ///
    /// # Errors
    ///
    /// `NoSuchBlob`, `IsLarge`, `NoPool`; the pool's errors for a handle it
    /// refuses (stale, forged, taken already).
    pub fn blob(&mut self, index: usize) -> Result<Blob<'c, SharedRegion>, BlobAccessError> {
        let (pool, h) = self.blobs.take(index)?;
        Ok(pool.accept(&h)?)
    }

    /// Takes blob `index` to read and write in place (e.g. to send it with
    /// the next call).
    ///
    /// # Errors
    ///
    /// As [`blob`](Self::blob).
    pub fn blob_mut(&mut self, index: usize) -> Result<BlobMut<'c, SharedRegion>, BlobAccessError> {
        let (pool, h) = self.blobs.take(index)?;
        Ok(pool.accept_mut(&h)?)
    }

    /// Takes blob `index` out of the reply as a handle (it is then not
    /// freed with the reply): to accept it from a pool handle of the
    /// caller's own (e.g. a clone of the client's `Arc<Pool>`), so that the
    /// blob does not borrow the client.
    ///
    /// # Errors
    ///
    /// `NoSuchBlob`, `IsLarge`, `NoPool`.
    pub fn take_handle(&mut self, index: usize) -> Result<BlobHandle, BlobAccessError> {
        Ok(self.blobs.take(index)?.1)
    }

    /// The reply's archived bytes (private to this process).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.bytes()
    }
}

impl<Resp: Body> Deref for Reply<'_, Resp> {
    type Target = Resp::Archived;

    #[inline]
    fn deref(&self) -> &Resp::Archived {
        // SAFETY: a `Reply`'s bytes passed bytecheck as a `Resp` archive in
        // private memory, or are a trusted connection's frame (`unsafe fn
        // Client::set_trusted`); the reply owns or borrows them unchanged.
        #[allow(unsafe_code)]
        unsafe {
            Checked::<Resp>::trusted(self.bytes.bytes()).get()
        }
    }
}

impl<Resp: Body> std::fmt::Debug for Reply<'_, Resp>
where
    Resp::Archived: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("value", &**self)
            .field("blobs", &self.blob_handles())
            .finish()
    }
}

/// Ids of calls whose [`Pending`] was dropped, for the client to forget.
///
/// A `Pending` does not point at it: it names its client by tag, and a
/// drop looks the client up in a table of this process's clients. A
/// pointer would be an `Arc`, whose count is a locked instruction on every
/// call (at `start`, and again at `wait`); a locked instruction waits for
/// this thread's stores to drain, and the stores just made are the
/// request's, to a line the server's core holds: the pipelined calls paid
/// a cross-core transfer each, one at a time, where they otherwise overlap.
/// A drop that gives up a call is rare; it pays the table's lock.
#[derive(Debug)]
pub(crate) struct Abandoned {
    tag: u64,
    ids: Mutex<Vec<u64>>,
    /// Set when `ids` may hold something: a call path looks at this flag,
    /// not at the lock.
    any: std::sync::atomic::AtomicBool,
}

/// The clients of this process that may be told of a dropped `Pending`,
/// by tag.
fn clients() -> &'static Mutex<HashMap<u64, Weak<Abandoned>>> {
    static CLIENTS: OnceLock<Mutex<HashMap<u64, Weak<Abandoned>>>> = OnceLock::new();
    CLIENTS.get_or_init(Mutex::default)
}

impl Abandoned {
    /// The list of the client tagged `tag`, which dropped `Pending`s of
    /// that tag reach until it is dropped.
    pub(crate) fn register(tag: u64) -> Arc<Abandoned> {
        let a = Arc::new(Abandoned {
            tag,
            ids: Mutex::default(),
            any: std::sync::atomic::AtomicBool::new(false),
        });
        clients()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tag, Arc::downgrade(&a));
        a
    }

    /// Tells the client tagged `tag`, if it is still there, that call `id`
    /// was given up.
    fn report(tag: u64, id: u64) {
        let a = clients()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&tag)
            .and_then(Weak::upgrade);
        if let Some(a) = a {
            a.push(id);
        }
    }

    fn push(&self, id: u64) {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).push(id);
        // Release: the id pushed above is seen by whoever sees the flag.
        self.any.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether ids may have been pushed since the last `take` (one plain
    /// load: a call path looks here before it makes room to take them).
    #[inline(always)]
    pub(crate) fn maybe_any(&self) -> bool {
        self.any.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes the ids, if any (one load when there are none).
    #[inline]
    pub(crate) fn take(&self, into: &mut Vec<u64>) {
        // A plain load first: the call path pays no locked instruction
        // when nothing was given up. Acquire (the swap): pairs with the
        // Release in `push`.
        if self.any.load(std::sync::atomic::Ordering::Relaxed)
            && self.any.swap(false, std::sync::atomic::Ordering::Acquire)
        {
            let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
            into.append(&mut ids);
        }
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        let mut c = clients().lock().unwrap_or_else(|p| p.into_inner());
        // Only our own entry: a tag is never reused, but be exact.
        if c.get(&self.tag).is_some_and(|w| w.strong_count() == 0) {
            c.remove(&self.tag);
        }
    }
}

/// A call in flight, to wait for with the client's `wait`. Dropping it
/// gives the call up: its reply is discarded when it comes, with its
/// blobs freed.
#[must_use = "a pending call is waited for; dropping it gives the call up"]
pub struct Pending<Resp> {
    pub(crate) id: u64,
    /// The tag of the client it was started on.
    pub(crate) client: u64,
    pub(crate) method: &'static str,
    /// Whether a drop gives the call up (false once it is waited for).
    pub(crate) armed: bool,
    pub(crate) _t: PhantomData<fn() -> Resp>,
}

impl<Resp> Pending<Resp> {
    /// The method called.
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// Disarms the drop (the call is being waited for).
    pub(crate) fn defuse(mut self) -> (u64, u64) {
        self.armed = false;
        (self.id, self.client)
    }
}

impl<Resp> std::fmt::Debug for Pending<Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("id", &self.id)
            .field("method", &self.method)
            .finish()
    }
}

impl<Resp> Drop for Pending<Resp> {
    fn drop(&mut self) {
        if self.armed {
            Abandoned::report(self.client, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{INLINE_BODY, ReplyBytes};

    #[test]
    fn an_inline_body_keeps_what_its_sub_objects_need_wherever_it_moves() {
        assert!(ReplyBytes::inline(&[0u8; INLINE_BODY + 1]).is_none());
        assert!(std::mem::size_of::<super::Reply<'static, u64>>() <= 128);
        // A root that needs 4 over elements that need 16.
        let v: Vec<u128> = vec![u128::MAX - 1, 7];
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&v).expect("serialize");
        assert!(bytes.len() <= INLINE_BODY);
        let inline = ReplyBytes::inline(&bytes).expect("short");
        let held = |b: &ReplyBytes<'_>| {
            crate::rpc::body::check::<Vec<u128>>(b.bytes())
                .map(|c| c.get().iter().map(|x| x.to_native()).collect::<Vec<u128>>())
        };
        // Checked here, then moved (as a `Reply` is, on its way out) to
        // where a type aligned to less than 16 would sit at 8 past a
        // 16-byte boundary (a heap block is 16-aligned), then checked and
        // read again.
        assert_eq!(held(&inline).expect("aligned here"), v);
        #[repr(C)]
        struct Shifted {
            word: u64,
            body: ReplyBytes<'static>,
        }
        let moved = Box::new(Shifted {
            word: 0,
            body: inline,
        });
        let at = moved.body.bytes().as_ptr() as usize;
        assert_eq!((moved.word, at % 16), (0, 0));
        assert_eq!(held(&moved.body).expect("aligned there"), v);
    }
}
