//! Lifelines: the earliest sign a process can give of its death, a robust
//! futex.
//!
//! When a process is killed, its sockets hang up and its pidfd becomes
//! readable only after the kernel has torn down its address space (for a
//! process with a shared segment mapped, hundreds of microseconds). Before
//! that teardown, in `exit_mm`, every exiting thread's *robust futex list*
//! is walked: each listed word that holds the thread's id gets
//! `FUTEX_OWNER_DIED` set and, if `FUTEX_WAITERS` is set, one waiter is
//! woken. A lifeline is one such word in a shared segment, held by a thread
//! that lives as long as the connection: the peer waits on it and learns of
//! the death as soon as it begins.
//!
//! The holder registers a robust list of its own (one entry: the word) for
//! its thread, saving the C library's registration, and restores it when it
//! lets go ([`Lifeline::release`]), marking the word as a dead owner would
//! be marked, so a clean close looks the same to the peer.
//!
//! A thread holds one lifeline at a time (the kernel keeps one robust list
//! per thread): a second [`Lifeline::hold`] on a thread that holds one is
//! refused. Were it allowed, dropping the two holds out of order would
//! register the first hold's freed list again.
//!
//! The kernel keeps a pointer to the word (and to the list) for as long as
//! the registration stands, and writes through it when the thread exits.
//! So a hold owns what keeps the word's memory alive (an `Arc` of its
//! mapping): a hold that is forgotten (`mem::forget`) instead of dropped
//! leaks that memory with it, and the kernel's late write still lands in
//! memory that exists. The word is shared with the peer, which may write
//! anything into it: it is only ever accessed as an atomic, and what is
//! read from it is a hint checked against the kernel's own signs (see
//! `liveness`).
#![allow(unsafe_code)] // the robust-list syscalls and their boxes: see SAFETY

use std::any::Any;
use std::cell::Cell;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::futex::{futex_wait, futex_wake};

/// Bits of the thread id in a robust futex word.
pub const TID_MASK: u32 = 0x3fff_ffff;
/// Set by the kernel when the holder died (or by [`Lifeline::release`]).
pub const OWNER_DIED: u32 = 0x4000_0000;
/// Set by a waiter: the kernel wakes one waiter on the holder's death.
pub const WAITERS: u32 = 0x8000_0000;

thread_local! {
    /// Whether this thread holds a lifeline (its robust list is ours).
    /// Stays set for a hold that is forgotten: the kernel still points at
    /// its (leaked) list.
    static HOLDING: Cell<bool> = const { Cell::new(false) };
}

/// `struct robust_list` of the kernel ABI.
#[repr(C)]
struct RobustList {
    next: *mut RobustList,
}

/// `struct robust_list_head` of the kernel ABI.
#[repr(C)]
struct RobustHead {
    list: RobustList,
    futex_offset: isize,
    list_op_pending: *mut RobustList,
}

/// The calling thread's hold on a lifeline word. Not `Send`: the robust
/// list is the holding thread's.
pub struct Lifeline {
    /// The word, inside `owner`'s memory. Invariant: valid as long as
    /// `owner` lives, which is as long as this hold (or, if the hold is
    /// forgotten, forever: the `Arc` leaks with it).
    word: *const AtomicU32,
    /// Keeps the word's memory alive while the kernel may write it.
    _owner: Arc<dyn Any + Send + Sync>,
    tid: u32,
    /// The registration this thread had before (the C library's).
    previous: usize,
    previous_len: usize,
    /// Our head and entry: boxed, so they stay put while registered.
    head: *mut RobustHead,
    entry: *mut RobustList,
    _not_send: PhantomData<*const ()>,
}

fn last_os_error_if(r: libc::c_long) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl std::fmt::Debug for Lifeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifeline").field("tid", &self.tid).finish()
    }
}

impl Lifeline {
    /// Holds the word that `word` finds in `owner` (typically a shared
    /// segment, whose lifeline words the peer watches) on the calling
    /// thread: stores the thread's id in it and registers it as this
    /// thread's robust list. The hold keeps `owner` alive.
    ///
    /// # Errors
    ///
    /// `AlreadyExists` if this thread holds a lifeline already (one per
    /// thread); the kernel refused the robust list (`ENOSYS` in some
    /// sandboxes), and the peer then only sees the socket hang up.
    pub fn hold<O: Any + Send + Sync>(
        owner: Arc<O>,
        word: impl for<'a> FnOnce(&'a O) -> &'a AtomicU32,
    ) -> io::Result<Lifeline> {
        if HOLDING.get() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "this thread holds a lifeline already (one per thread: the kernel keeps one robust list per thread)",
            ));
        }
        let word: *const AtomicU32 = word(&owner);
        // SAFETY: `word` was borrowed from `*owner`, which the `Arc` keeps
        // alive (and never hands out `&mut`: we hold a clone) for as long as
        // this function and the hold it returns use it; an atomic permits
        // the peer's concurrent writes.
        let w: &AtomicU32 = unsafe { &*word };
        let owner: Arc<dyn Any + Send + Sync> = owner;
        let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32 & TID_MASK;
        let mut previous: *mut libc::c_void = std::ptr::null_mut();
        let mut previous_len: libc::size_t = 0;
        // SAFETY: get_robust_list(0, ...) writes the calling thread's head
        // pointer and its length into the two locals passed by address.
        last_os_error_if(unsafe {
            libc::syscall(
                libc::SYS_get_robust_list,
                0 as libc::c_long,
                &mut previous as *mut *mut libc::c_void,
                &mut previous_len as *mut libc::size_t,
            )
        })?;
        let entry = Box::into_raw(Box::new(RobustList {
            next: std::ptr::null_mut(),
        }));
        let head = Box::into_raw(Box::new(RobustHead {
            list: RobustList { next: entry },
            futex_offset: word as isize - entry as isize,
            list_op_pending: std::ptr::null_mut(),
        }));
        // SAFETY: both pointers come from `Box::into_raw` just above, so
        // they are valid and unaliased; the entry's `next` closes the list
        // on the head, as the kernel expects.
        unsafe {
            (*entry).next = &mut (*head).list;
        }
        // The word holds our id before the kernel may look at it.
        w.fetch_update(Ordering::Release, Ordering::Relaxed, |v| {
            Some(v & WAITERS | tid)
        })
        .ok();
        // SAFETY: `head` lists one entry whose word is `word`; both boxes
        // live until `Drop` unregisters them (forever if forgotten), and
        // `owner`, kept (or leaked) by the hold, keeps `word` mapped for the
        // kernel's walk at exit.
        let r = last_os_error_if(unsafe {
            libc::syscall(
                libc::SYS_set_robust_list,
                head,
                std::mem::size_of::<RobustHead>(),
            )
        });
        if let Err(e) = r {
            // SAFETY: not registered; the boxes are ours to free.
            unsafe {
                drop(Box::from_raw(head));
                drop(Box::from_raw(entry));
            }
            w.fetch_and(!TID_MASK, Ordering::Relaxed);
            return Err(e);
        }
        HOLDING.set(true);
        Ok(Lifeline {
            word,
            _owner: owner,
            tid,
            previous: previous as usize,
            previous_len,
            head,
            entry,
            _not_send: PhantomData,
        })
    }

    /// Lets go: restores the thread's previous robust list, then marks the
    /// word as the kernel marks a dead holder's and wakes the waiter.
    pub fn release(self) {
        // Keeps the word's memory alive past the drop below.
        let owner = self._owner.clone();
        let (word, tid) = (self.word, self.tid);
        // Unregisters and frees (Drop).
        drop(self);
        // SAFETY: `owner` (cloned above) keeps the word's memory alive.
        let word: &AtomicU32 = unsafe { &*word };
        let _ = word.fetch_update(Ordering::Release, Ordering::Relaxed, |w| {
            (w & TID_MASK == tid).then_some(w & WAITERS | OWNER_DIED)
        });
        let _ = futex_wake(word, u32::MAX >> 1);
        drop(owner);
    }
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        // SAFETY: restores the registration this thread had before `hold`
        // (a head the C library keeps alive for the thread's life, or
        // none); Lifeline is not Send, so this is the holder's thread.
        unsafe {
            libc::syscall(
                libc::SYS_set_robust_list,
                self.previous as *mut libc::c_void,
                self.previous_len,
            );
        }
        HOLDING.set(false);
        // SAFETY: unregistered above; the pointers come from
        // `Box::into_raw` in `hold` and are freed once, here.
        unsafe {
            drop(Box::from_raw(self.head));
            drop(Box::from_raw(self.entry));
        }
    }
}

/// What a waiter learns from a lifeline word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LifelineState {
    /// No one holds it (yet): the peer has not registered it.
    Unheld,
    /// Held by a live thread.
    Held,
    /// The holder died or let go.
    Gone,
}

impl LifelineState {
    /// The state a lifeline word's value says.
    pub fn of(w: u32) -> LifelineState {
        if w & OWNER_DIED != 0 {
            LifelineState::Gone
        } else if w & TID_MASK == 0 {
            LifelineState::Unheld
        } else {
            LifelineState::Held
        }
    }
}

/// The state of a lifeline word.
pub fn lifeline_state(word: &AtomicU32) -> LifelineState {
    LifelineState::of(word.load(Ordering::Acquire))
}

/// Waits (at most `timeout`) for the holder of `word` to die or let go,
/// or until `cancelled()` is true. Returns the state seen last.
///
/// `cancelled` is asked after this waiter has announced itself in the word
/// (the `WAITERS` bit), so a [`cancel_waiters`] that made it true is never
/// missed: either this waiter sees it, or the word changed under it and the
/// futex refuses to sleep, or the wake finds it asleep.
pub fn wait_lifeline(
    word: &AtomicU32,
    timeout: Option<Duration>,
    cancelled: impl Fn() -> bool,
) -> LifelineState {
    // AcqRel: pairs with the AcqRel `fetch_and` of `cancel_waiters`.
    let old = word.fetch_or(WAITERS, Ordering::AcqRel);
    if old & OWNER_DIED != 0 {
        return LifelineState::Gone;
    }
    if old & TID_MASK == 0 {
        return LifelineState::Unheld;
    }
    if cancelled() {
        return lifeline_state(word);
    }
    let _ = futex_wait(word, old | WAITERS, timeout);
    lifeline_state(word)
}

/// Ends the waits of [`wait_lifeline`] on `word` whose `cancelled()` the
/// caller has just made true: clears the waiter bit, so that a waiter about
/// to sleep finds the word changed, and wakes those asleep. The holder is
/// not affected (its death is still marked; no waiter is woken for it).
pub fn cancel_waiters(word: &AtomicU32) {
    // AcqRel: the caller's store to the flag `cancelled` reads is
    // sequenced before this, and a waiter's `fetch_or` that comes after it
    // in the word's order acquires it.
    word.fetch_and(!WAITERS, Ordering::AcqRel);
    let _ = futex_wake(word, u32::MAX >> 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_released_lifeline_wakes_its_waiter() {
        let word = Arc::new(AtomicU32::new(0));
        assert_eq!(lifeline_state(&word), LifelineState::Unheld);
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let w = word.clone();
        let holder = std::thread::spawn(move || {
            let l = Lifeline::hold(w, |w| w).expect("robust list");
            held_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            l.release();
        });
        held_rx.recv().unwrap();
        assert_eq!(lifeline_state(&word), LifelineState::Held);
        go_tx.send(()).unwrap();
        let mut st = LifelineState::Held;
        while st == LifelineState::Held {
            st = wait_lifeline(&word, Some(Duration::from_secs(10)), || false);
        }
        assert_eq!(st, LifelineState::Gone);
        holder.join().unwrap();
    }

    #[test]
    fn a_thread_holds_one_lifeline_at_a_time() {
        let a = Arc::new(AtomicU32::new(0));
        let b = Arc::new(AtomicU32::new(0));
        std::thread::spawn(move || {
            let first = Lifeline::hold(a.clone(), |w| w).expect("robust list");
            // A second hold would leave the kernel the first's list once
            // the two are dropped out of order: refused.
            let e = Lifeline::hold(b.clone(), |w| w).expect_err("a second hold");
            assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
            assert_eq!(lifeline_state(&b), LifelineState::Unheld);
            drop(first);
            // Let go: the thread may hold again.
            let again = Lifeline::hold(b.clone(), |w| w).expect("robust list");
            assert_eq!(lifeline_state(&b), LifelineState::Held);
            again.release();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_thread_that_exits_holding_a_lifeline_is_marked_dead_by_the_kernel() {
        let word = Arc::new(AtomicU32::new(0));
        let w = word.clone();
        let holder = std::thread::spawn(move || {
            let l = Lifeline::hold(w, |w| w).expect("robust list");
            // Exit without letting go: the kernel walks the list at exit.
            std::mem::forget(l);
        });
        holder.join().unwrap();
        assert_eq!(lifeline_state(&word), LifelineState::Gone);
        // The forgotten hold leaked its clone of the owner: the kernel's
        // write landed in memory that still exists.
        assert_eq!(Arc::strong_count(&word), 2);
    }

    /// Runs `wait_lifeline` on `word` (held by another thread) in a thread
    /// and says whether it returned within ten seconds.
    fn returns(
        word: &'static AtomicU32,
        cancelled: &'static std::sync::atomic::AtomicBool,
    ) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let st = wait_lifeline(word, None, || cancelled.load(Ordering::Acquire));
            let _ = tx.send(st);
        });
        rx.recv_timeout(Duration::from_secs(10)) == Ok(LifelineState::Held)
    }

    fn held_word() -> &'static AtomicU32 {
        let word: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _hold = Lifeline::hold(Arc::new(()), |_| word).expect("robust list");
            tx.send(()).unwrap();
            // Holds it for the rest of the test process.
            loop {
                std::thread::park();
            }
        });
        rx.recv().unwrap();
        word
    }

    #[test]
    fn a_cancel_before_the_wait_is_not_missed() {
        let word = held_word();
        let cancelled: &'static _ = Box::leak(Box::new(std::sync::atomic::AtomicBool::new(false)));
        cancelled.store(true, Ordering::Release);
        cancel_waiters(word);
        assert!(
            returns(word, cancelled),
            "the waiter slept through a cancel"
        );
        assert_eq!(lifeline_state(word), LifelineState::Held);
    }

    #[test]
    fn a_cancel_wakes_a_sleeping_waiter() {
        let word = held_word();
        let cancelled: &'static _ = Box::leak(Box::new(std::sync::atomic::AtomicBool::new(false)));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(wait_lifeline(word, None, || {
                cancelled.load(Ordering::Acquire)
            }));
        });
        // Whether it is asleep yet or not, the cancel ends its wait.
        let limit = std::time::Instant::now() + Duration::from_secs(10);
        while word.load(Ordering::Acquire) & WAITERS == 0 {
            assert!(
                std::time::Instant::now() < limit,
                "the waiter never announced itself in the word"
            );
            std::thread::yield_now();
        }
        cancelled.store(true, Ordering::Release);
        cancel_waiters(word);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)),
            Ok(LifelineState::Held)
        );
    }
}
