//! [`StoreLock`]: a lock released by a plain store, for the halves of a
//! [`SharedClient`](super::SharedClient).
//!
//! `std`'s `Mutex` releases with a locked exchange (it must learn whether a
//! thread sleeps on it), and on x86 a locked instruction waits until every
//! earlier store of this thread has drained from its store buffer. The
//! stores just before the sender's release are a request frame's, to lines
//! the server's core last read: each release waited for those lines to
//! cross, one call at a time, where a thread that releases with a plain
//! store goes on and lets the transfers of successive calls overlap. On
//! `call.shared.pipelined.64` the exchange of the sender's release was
//! four fifths of the samples of `start` (docs/performance.md).
//!
//! A release wakes nobody, so a waiter spins, then yields, then naps (10
//! µs, doubling to 1 ms) and looks again. Long waits are those for a sender
//! that waits for room in a full ring, which take as long as the server
//! does anyway; two senders that meet wait a few hundred nanoseconds.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A value behind a lock that is released with a plain store (see the
/// module doc). No poisoning: a panic while it is held releases it.
pub(crate) struct StoreLock<T> {
    held: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one thread at a time (the guard's
// invariant), as `Mutex<T>` does, so it may be sent and shared when `T`
// may be sent.
#[allow(unsafe_code)]
unsafe impl<T: Send> Send for StoreLock<T> {}
// SAFETY: as above: shared references to the lock give `&T`/`&mut T` only
// through a guard, held by one thread at a time.
#[allow(unsafe_code)]
unsafe impl<T: Send> Sync for StoreLock<T> {}

/// Access to a [`StoreLock`]'s value; releases the lock when dropped.
pub(crate) struct StoreGuard<'a, T> {
    lock: &'a StoreLock<T>,
    /// Makes the guard `Sync` only when `T` is (as `MutexGuard`): shared
    /// guards give shared `&T`s on several threads.
    _t: PhantomData<&'a mut T>,
}

impl<T> StoreLock<T> {
    pub(crate) fn new(value: T) -> StoreLock<T> {
        StoreLock {
            held: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// The value, if no one holds the lock. A plain load first: a thread
    /// that polls a held lock keeps the line shared instead of taking it.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<StoreGuard<'_, T>> {
        if self.held.load(Ordering::Relaxed) {
            return None;
        }
        // Acquire: the last holder's writes (its Release store) are seen.
        self.held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| StoreGuard {
                lock: self,
                _t: PhantomData,
            })
    }

    /// The value, once the lock is free (see the module doc for the wait).
    #[inline]
    pub(crate) fn lock(&self) -> StoreGuard<'_, T> {
        if let Some(g) = self.try_lock() {
            return g;
        }
        self.lock_slow()
    }

    #[inline(never)]
    fn lock_slow(&self) -> StoreGuard<'_, T> {
        let mut turns = 0u32;
        let mut nap = Duration::from_micros(10);
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            turns = turns.saturating_add(1);
            if turns < 128 {
                std::hint::spin_loop();
            } else if turns < 256 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(1));
            }
        }
    }

    /// The value, through a unique borrow (no one else can hold the lock).
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }
}

impl<T> Deref for StoreGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: this guard exists only while `held` is true, set by its
        // own compare-exchange (Acquire) and cleared only by its drop:
        // no other reference to the value exists meanwhile.
        #[allow(unsafe_code)]
        unsafe {
            &*self.lock.value.get()
        }
    }
}

impl<T> DerefMut for StoreGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this borrow the only one
        // through the guard.
        #[allow(unsafe_code)]
        unsafe {
            &mut *self.lock.value.get()
        }
    }
}

impl<T> Drop for StoreGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // Release, by a plain store (the point of this lock): this
        // holder's writes to the value are seen by the next one.
        self.lock.held.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::StoreLock;

    #[test]
    fn one_holder_at_a_time() {
        let l = StoreLock::new(0u64);
        let g = l.try_lock().expect("free");
        assert!(l.try_lock().is_none(), "held twice");
        drop(g);
        assert!(l.try_lock().is_some());
    }

    #[test]
    fn threads_counting_under_it_lose_no_increment() {
        const THREADS: u64 = 4;
        const EACH: u64 = 100_000;
        let l = StoreLock::new(0u64);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    for _ in 0..EACH {
                        *l.lock() += 1;
                    }
                });
            }
        });
        assert_eq!(*l.lock(), THREADS * EACH);
    }
}
