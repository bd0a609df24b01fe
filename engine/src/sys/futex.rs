//! Futex wait and wake on a word of shared memory (not `FUTEX_PRIVATE`, so
//! the word may live in a mapping shared with another process).

use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::io::Errno;
use rustix::thread::futex;

/// Sleeps while `*word == expected`, until woken, interrupted or `timeout`.
///
/// Returns `Ok(())` on a wake-up, when the word did not hold `expected`
/// (`EAGAIN`), on `EINTR` and on timeout: the caller re-checks its
/// condition in every case.
///
/// # Errors
///
/// Any other failure of the syscall.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> io::Result<()> {
    let ts = timeout.map(|t| rustix::time::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    match futex::wait(word, futex::Flags::empty(), expected, ts.as_ref()) {
        Ok(()) | Err(Errno::AGAIN | Errno::INTR | Errno::TIMEDOUT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Wakes up to `n` threads sleeping on `word`, in any process; returns how
/// many were woken.
///
/// # Errors
///
/// A failure of the syscall (not expected on a valid word).
pub fn futex_wake(word: &AtomicU32, n: u32) -> io::Result<usize> {
    Ok(futex::wake(
        word,
        futex::Flags::empty(),
        n.min(i32::MAX as u32),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    #[test]
    fn wait_returns_at_once_when_the_word_differs() {
        let w = AtomicU32::new(1);
        futex_wait(&w, 0, None).unwrap();
    }

    #[test]
    fn wait_times_out() {
        let w = AtomicU32::new(0);
        let t = Instant::now();
        futex_wait(&w, 0, Some(Duration::from_millis(5))).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(4));
    }

    #[test]
    fn wake_reaches_a_sleeping_thread() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            while w2.load(Ordering::Acquire) == 0 {
                futex_wait(&w2, 0, Some(Duration::from_secs(30))).unwrap();
            }
        });
        w.store(1, Ordering::Release);
        futex_wake(&w, 1).unwrap();
        t.join().unwrap();
    }
}
