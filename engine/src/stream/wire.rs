//! The socket under both halves of a stream endpoint: plain or TLS, the
//! bytes published and not yet taken by the socket, and the reads.
//!
//! Both halves hold the [`Wire`]. The sender appends published frames to
//! its output buffer and sends what the socket takes; what it does not
//! take stays there, and is sent by the next publish, by a sender waiting
//! for room, or by a receiver waiting for frames (a caller that published
//! a request and waits for its reply must not wait on bytes that never
//! left). A TLS session is shared by the two halves behind a mutex (taken
//! for the length of one non-blocking read or write, never across a
//! wait); the output buffer's mutex is always taken before it.

use std::io::{self, IoSlice};
#[cfg(feature = "tls")]
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};

use super::conn::Connection;
use super::error::StreamError;
use crate::sys::{recv_nowait, recv_wait, send_nowait, shutdown_stream, shutdown_stream_write};

/// Bytes an output buffer keeps allocated when it is empty again.
const KEEP: usize = 1 << 20;

/// The socket of one stream connection, shared by its two halves.
pub(crate) struct Wire {
    sock: OwnedFd,
    #[cfg(feature = "tls")]
    tls: Option<Mutex<rustls::Connection>>,
    out: Mutex<Out>,
    /// Bytes are waiting to be sent (in `out` or in the TLS session).
    /// Release in `flush`, Acquire where read: a hint for waits, re-checked
    /// under the lock.
    pending: AtomicBool,
    /// Set once the connection is over (the peer gone, or an error).
    closed: AtomicBool,
    /// The error that ended the connection, first one wins.
    fatal: OnceLock<StreamError>,
    /// `send` system calls that moved bytes.
    pub(crate) sends: AtomicU64,
    /// Bytes the socket took (TLS: plaintext taken by the session).
    pub(crate) sent_bytes: AtomicU64,
}

/// Published bytes, `sent..` not yet taken.
#[derive(Default)]
pub(crate) struct Out {
    buf: Vec<u8>,
    sent: usize,
}

impl Out {
    pub(crate) fn unsent(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Appends `staged` (left empty) to the bytes to send.
    #[inline]
    fn append(&mut self, staged: &mut Vec<u8>) {
        if self.unsent() == 0 {
            // The common case: nothing is left over, so the staged frames
            // become the output buffer as they are (no copy).
            self.buf.clear();
            self.sent = 0;
            std::mem::swap(&mut self.buf, staged);
        } else {
            self.buf.append(staged);
        }
    }
}

/// What one read found.
pub(crate) enum Got {
    /// Bytes.
    Bytes(usize),
    /// Nothing now.
    WouldBlock,
    /// The peer's end.
    Eof,
}

/// The socket as `Read`/`Write` for rustls: never waits.
#[cfg(feature = "tls")]
pub(crate) struct FdIo<'a>(pub(crate) BorrowedFd<'a>);

#[cfg(feature = "tls")]
impl Read for FdIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        recv_nowait(self.0, buf)
    }
}

/// The socket as `Read` for rustls, waiting in `recv` at most the
/// socket's read timeout ([`block_reads`](crate::sys::block_reads)).
#[cfg(feature = "tls")]
struct FdIoWait<'a>(BorrowedFd<'a>);

#[cfg(feature = "tls")]
impl Read for FdIoWait<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        recv_wait(self.0, buf)
    }
}

#[cfg(feature = "tls")]
impl Write for FdIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send_nowait(self.0, &[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send_nowait(self.0, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data valid.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a `recv` on a plain socket found.
fn got(r: io::Result<usize>) -> Result<Got, StreamError> {
    match r {
        Ok(0) => Ok(Got::Eof),
        Ok(n) => Ok(Got::Bytes(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Got::WouldBlock),
        Err(e) => match StreamError::from_io(&e) {
            StreamError::PeerDied => Ok(Got::Eof),
            other => Err(other),
        },
    }
}

impl Wire {
    pub(crate) fn new(conn: Connection) -> Wire {
        Wire {
            sock: conn.sock,
            #[cfg(feature = "tls")]
            tls: conn.tls.map(|t| Mutex::new(t.conn)),
            out: Mutex::new(Out::default()),
            pending: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            fatal: OnceLock::new(),
            sends: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Whether bytes wait to be sent (a hint: see `pending`).
    pub(crate) fn has_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// The error that ended the connection, if one did.
    pub(crate) fn failure(&self) -> Option<StreamError> {
        self.fatal.get().cloned()
    }

    /// Records the error that ends the connection (the first one is kept).
    /// Unless the peer is gone already, the socket is shut down both ways:
    /// the peer reads its end, and the other half's next read or write
    /// fails.
    pub(crate) fn fail(&self, e: StreamError) {
        let peer_gone = e == StreamError::PeerDied;
        let _ = self.fatal.set(e);
        if !peer_gone && !self.closed.swap(true, Ordering::AcqRel) {
            shutdown_stream(self.fd());
        }
    }

    /// Shuts the socket down for writing: the peer reads its end.
    pub(crate) fn shutdown_write(&self) {
        shutdown_stream_write(self.fd());
    }

    /// Bytes published and not yet sent.
    pub(crate) fn unsent(&self) -> usize {
        let n = lock(&self.out).unsent();
        #[cfg(feature = "tls")]
        if let Some(t) = &self.tls
            && lock(t).wants_write()
        {
            return n.max(1);
        }
        n
    }

    /// Publishes `staged` (left empty) and sends what the socket takes.
    /// Returns whether everything went.
    pub(crate) fn publish(&self, staged: &mut Vec<u8>) -> Result<bool, StreamError> {
        let mut out = lock(&self.out);
        out.append(staged);
        self.flush_locked(&mut out)
    }

    /// Appends `staged` (left empty) to the bytes to send, without
    /// sending them: they go with the next publish or flush, or when a
    /// receiver is about to wait (see [`StreamRx`](super::StreamRx)).
    /// Returns how many bytes now wait.
    pub(crate) fn defer(&self, staged: &mut Vec<u8>) -> usize {
        let mut out = lock(&self.out);
        out.append(staged);
        self.pending.store(true, Ordering::Release);
        out.unsent()
    }

    /// Sends what the socket takes now; whether everything went.
    pub(crate) fn flush(&self) -> Result<bool, StreamError> {
        let mut out = lock(&self.out);
        self.flush_locked(&mut out)
    }

    /// As [`flush`](Self::flush), unless the other half is at it (then
    /// `Ok(false)`: it sends).
    pub(crate) fn try_flush(&self) -> Result<bool, StreamError> {
        match self.out.try_lock() {
            Ok(mut out) => self.flush_locked(&mut out),
            Err(TryLockError::Poisoned(p)) => self.flush_locked(&mut p.into_inner()),
            Err(TryLockError::WouldBlock) => Ok(false),
        }
    }

    fn flush_locked(&self, out: &mut Out) -> Result<bool, StreamError> {
        let done = match self.send_locked(out) {
            Ok(done) => done,
            Err(e) => {
                self.pending.store(false, Ordering::Release);
                return Err(e);
            }
        };
        if out.unsent() == 0 {
            out.sent = 0;
            out.buf.clear();
            if out.buf.capacity() > KEEP {
                out.buf.shrink_to(KEEP);
            }
        } else if out.sent >= KEEP && out.sent * 2 >= out.buf.len() {
            out.buf.drain(..out.sent);
            out.sent = 0;
        }
        self.pending.store(!done, Ordering::Release);
        Ok(done)
    }

    fn send_locked(&self, out: &mut Out) -> Result<bool, StreamError> {
        #[cfg(feature = "tls")]
        if let Some(t) = &self.tls {
            return self.send_tls(out, &mut lock(t));
        }
        while out.unsent() > 0 {
            match send_nowait(self.fd(), &[IoSlice::new(&out.buf[out.sent..])]) {
                Ok(n) => {
                    self.sends.fetch_add(1, Ordering::Relaxed);
                    self.sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    out.sent += n;
                    if n == 0 {
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(StreamError::from_io(&e)),
            }
        }
        Ok(true)
    }

    #[cfg(feature = "tls")]
    fn send_tls(&self, out: &mut Out, tls: &mut rustls::Connection) -> Result<bool, StreamError> {
        loop {
            // Hand the session what it takes (it holds a bounded amount of
            // records), then write records until the socket is full.
            while out.unsent() > 0 {
                let n = tls
                    .writer()
                    .write(&out.buf[out.sent..])
                    .map_err(|e| StreamError::from_io(&e))?;
                if n == 0 {
                    break;
                }
                self.sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
                out.sent += n;
            }
            if !tls.wants_write() {
                return Ok(out.unsent() == 0);
            }
            match tls.write_tls(&mut FdIo(self.fd())) {
                Ok(0) => return Ok(false),
                Ok(_) => {
                    self.sends.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(StreamError::from_io(&e)),
            }
        }
    }

    /// Whether the socket carries the frames itself (no TLS session in
    /// between): then a read that took less than it asked for took all
    /// there was, and `poll` sees everything not yet read.
    pub(crate) fn is_plain(&self) -> bool {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return false;
        }
        true
    }

    /// Reads into `buf` (non-empty), waiting at most the socket's read
    /// timeout ([`block_reads`](crate::sys::block_reads)). Under TLS the
    /// session stays locked while it waits: for a receiver whose sending
    /// half is used by the same thread only (a server's worker).
    pub(crate) fn read_wait(&self, buf: &mut [u8]) -> Result<Got, StreamError> {
        debug_assert!(!buf.is_empty());
        #[cfg(feature = "tls")]
        if let Some(t) = &self.tls {
            return self.read_tls(buf, &mut lock(t), true);
        }
        got(recv_wait(self.fd(), buf))
    }

    /// Reads what is there into `buf` (non-empty), without waiting.
    pub(crate) fn read(&self, buf: &mut [u8]) -> Result<Got, StreamError> {
        debug_assert!(!buf.is_empty());
        #[cfg(feature = "tls")]
        if let Some(t) = &self.tls {
            return self.read_tls(buf, &mut lock(t), false);
        }
        got(recv_nowait(self.fd(), buf))
    }

    #[cfg(feature = "tls")]
    /// Plaintext into `buf`, reading the socket as needed; with `wait`,
    /// its first read of the socket waits (see [`read_wait`](Self::read_wait)).
    fn read_tls(
        &self,
        buf: &mut [u8],
        tls: &mut rustls::Connection,
        mut wait: bool,
    ) -> Result<Got, StreamError> {
        let mut socket_eof = false;
        loop {
            match tls.reader().read(buf) {
                // A clean close (the peer's close_notify).
                Ok(0) => return Ok(Got::Eof),
                Ok(n) => return Ok(Got::Bytes(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket ended without a close_notify.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Got::Eof),
                Err(e) => return Err(StreamError::from_io(&e)),
            }
            if socket_eof {
                return Ok(Got::Eof);
            }
            let read = if std::mem::take(&mut wait) {
                tls.read_tls(&mut FdIoWait(self.fd()))
            } else {
                tls.read_tls(&mut FdIo(self.fd()))
            };
            match read {
                Ok(0) => socket_eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Got::WouldBlock),
                Err(e) => match StreamError::from_io(&e) {
                    StreamError::PeerDied => socket_eof = true,
                    other => return Err(other),
                },
            }
            if let Err(e) = tls.process_new_packets() {
                // Tell the peer why (an alert rustls queued), best effort.
                let _ = tls.write_tls(&mut FdIo(self.fd()));
                return Err(super::tls::TlsError::from(e).into());
            }
            if tls.wants_write() {
                // Records the session must answer with (a key update):
                // sent now if the socket takes them, else with the next
                // flush.
                match tls.write_tls(&mut FdIo(self.fd())) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.pending.store(true, Ordering::Release);
                    }
                    Err(_) => socket_eof = true,
                }
            }
        }
    }

    /// Sends a TLS close_notify if the socket takes it now (nothing for a
    /// plain socket).
    pub(crate) fn say_goodbye(&self) {
        #[cfg(feature = "tls")]
        if let Some(t) = &self.tls {
            let mut tls = lock(t);
            tls.send_close_notify();
            let _ = tls.write_tls(&mut FdIo(self.fd()));
        }
    }
}
