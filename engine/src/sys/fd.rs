//! Descriptor-based primitives: a private eventfd, the pidfd, polling, and
//! passing descriptors over a Unix socket.
//!
//! Nothing here blocks on a descriptor the peer can reach: sends and
//! receives on a connection's socket pass `MSG_DONTWAIT` (its flags are
//! shared with nobody, but a full peer buffer must not hold us) and wait in
//! `poll` with a deadline instead.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags, epoll, eventfd, poll};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use rustix::process::{Pid, PidfdFlags, pidfd_open};

fn timespec(t: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    }
}

/// What [`poll_ready`] waits for on one descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ready {
    /// Readable (or hung up, or in error).
    Readable,
    /// Hung up by the peer (`POLLRDHUP`/`POLLHUP`) or in error; data waiting
    /// to be read does not count. For a socket that may carry messages
    /// while its end is what matters.
    HangUp,
    /// Readable or writable (or hung up, or in error): a stream socket
    /// with bytes waiting to be sent.
    ReadWrite,
    /// Writable (or hung up, or in error), whatever there is to read: a
    /// stream socket whose reading is paused until its peer takes what was
    /// sent (bytes the peer keeps sending must not wake the sleeper).
    Writable,
}

/// Waits until any of `fds` is ready as asked, or `timeout` passes; returns
/// which are. `EINTR` returns all false.
///
/// # Errors
///
/// A failure of `poll` other than `EINTR`.
pub fn poll_ready(
    fds: &[(BorrowedFd<'_>, Ready)],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let gone = PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL;
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|(fd, r)| match r {
            Ready::Readable => PollFd::new(fd, PollFlags::IN),
            Ready::HangUp => PollFd::new(fd, PollFlags::RDHUP),
            Ready::ReadWrite => PollFd::new(fd, PollFlags::IN | PollFlags::OUT),
            Ready::Writable => PollFd::new(fd, PollFlags::OUT),
        })
        .collect();
    let ts = timeout.map(timespec);
    match poll(&mut pfds, ts.as_ref()) {
        Ok(_) => Ok(pfds
            .iter()
            .zip(fds)
            .map(|(p, (_, r))| match r {
                Ready::Readable => p.revents().intersects(PollFlags::IN | gone),
                Ready::HangUp => p.revents().intersects(PollFlags::RDHUP | gone),
                Ready::ReadWrite => p
                    .revents()
                    .intersects(PollFlags::IN | PollFlags::OUT | gone),
                Ready::Writable => p.revents().intersects(PollFlags::OUT | gone),
            })
            .collect()),
        Err(Errno::INTR) => Ok(vec![false; fds.len()]),
        Err(e) => Err(e.into()),
    }
}

/// A set of descriptors to sleep on, kept by the kernel between waits
/// (epoll, level-triggered): a worker with many connections registers each
/// once, and a wait costs the same with one connection or a thousand,
/// where `poll` sets up and tears down a wait on every descriptor each
/// time. Each descriptor is known by a token of the caller's choosing.
/// Close-on-exec.
#[derive(Debug)]
pub struct Poller {
    fd: OwnedFd,
}

/// Events read by one [`Poller::wait`]; more stay for the next (level-
/// triggered).
const POLLER_BATCH: usize = 64;

fn epoll_flags(ready: Ready) -> epoll::EventFlags {
    match ready {
        Ready::Readable => epoll::EventFlags::IN,
        Ready::HangUp => epoll::EventFlags::RDHUP,
        Ready::ReadWrite => epoll::EventFlags::IN | epoll::EventFlags::OUT,
        Ready::Writable => epoll::EventFlags::OUT,
    }
}

impl Poller {
    /// An empty set.
    ///
    /// # Errors
    ///
    /// The OS refused the epoll instance (e.g. out of descriptors).
    pub fn new() -> io::Result<Poller> {
        Ok(Poller {
            fd: epoll::create(epoll::CreateFlags::CLOEXEC)?,
        })
    }

    /// Watches `fd` for `ready` (hang-up and errors always count), under
    /// `token`.
    ///
    /// # Errors
    ///
    /// The kernel refused (out of memory, the per-user watch limit, or `fd`
    /// already watched).
    pub fn watch(&self, fd: BorrowedFd<'_>, token: u64, ready: Ready) -> io::Result<()> {
        Ok(epoll::add(
            &self.fd,
            fd,
            epoll::EventData::new_u64(token),
            epoll_flags(ready),
        )?)
    }

    /// Changes what a watched `fd` is watched for.
    ///
    /// # Errors
    ///
    /// As [`watch`](Self::watch), or `fd` is not watched.
    pub fn rewatch(&self, fd: BorrowedFd<'_>, token: u64, ready: Ready) -> io::Result<()> {
        Ok(epoll::modify(
            &self.fd,
            fd,
            epoll::EventData::new_u64(token),
            epoll_flags(ready),
        )?)
    }

    /// Stops watching `fd`. Called before `fd` is closed: the kernel keys a
    /// watch by the open file, which a copy of the descriptor elsewhere
    /// would keep alive, and with it the watch.
    ///
    /// # Errors
    ///
    /// `fd` is not watched.
    pub fn unwatch(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(epoll::delete(&self.fd, fd)?)
    }

    /// Waits until a watched descriptor is ready, or `timeout` passes (none:
    /// no limit); replaces `tokens` with the tokens of those ready (at most
    /// 64; the others are there at the next wait). `EINTR` gives none.
    ///
    /// # Errors
    ///
    /// A failure of `epoll_wait` other than `EINTR`.
    pub fn wait(&self, tokens: &mut Vec<u64>, timeout: Option<Duration>) -> io::Result<()> {
        tokens.clear();
        let ts = timeout.map(timespec);
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); POLLER_BATCH];
        match epoll::wait(&self.fd, &mut events, ts.as_ref()) {
            Ok((got, _)) => {
                tokens.extend(got.iter().map(|e| e.data.u64()));
                Ok(())
            }
            Err(Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Waits until any of `fds` is readable (or hung up, or in error), or
/// `timeout` passes; returns which are. `EINTR` returns all false.
///
/// # Errors
///
/// A failure of `poll` other than `EINTR`.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let fds: Vec<_> = fds.iter().map(|fd| (*fd, Ready::Readable)).collect();
    poll_ready(&fds, timeout)
}

/// An eventfd that this process keeps to itself: one of its threads rings
/// it, another polls it (a stop signal, a worker's inbox). It is never
/// passed to another process: a peer that held it could clear its
/// `O_NONBLOCK` flag (flags live in the shared file description) and make
/// [`notify`](Self::notify) block. Doorbells between processes are
/// [`Doorbell`](super::Doorbell)s. Non-blocking and close-on-exec.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new doorbell, not ringing.
    ///
    /// # Errors
    ///
    /// The OS refused the eventfd (e.g. out of descriptors).
    pub fn new() -> io::Result<EventFd> {
        Ok(EventFd {
            fd: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
        })
    }

    /// Rings it. One already rung 2^64-2 times without being drained stays
    /// rung (`EAGAIN` is not an error).
    ///
    /// # Errors
    ///
    /// A failure of `write` (not expected on an eventfd).
    pub fn notify(&self) -> io::Result<()> {
        match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until it rings or `timeout` passes, then drains it.
    /// Returns whether it rang.
    ///
    /// # Errors
    ///
    /// A failure of `poll` or `read`.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let ready = poll_readable(&[self.fd.as_fd()], timeout)?[0];
        if ready {
            self.drain()?;
        }
        Ok(ready)
    }

    /// Resets it without waiting; returns whether it had rung.
    ///
    /// # Errors
    ///
    /// A failure of `read` other than "not rung" (`EAGAIN`).
    pub fn drain(&self) -> io::Result<bool> {
        let mut buf = [0u8; 8];
        match rustix::io::read(&self.fd, &mut buf) {
            Ok(_) => Ok(true),
            Err(Errno::AGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A handle on a process that becomes readable when the process exits (it
/// cannot be fooled by pid reuse).
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
}

impl From<PidFd> for OwnedFd {
    fn from(p: PidFd) -> OwnedFd {
        p.fd
    }
}

impl PidFd {
    /// Adopts a pidfd (e.g. one `SO_PEERPIDFD` returned).
    pub(crate) fn from_owned(fd: OwnedFd) -> PidFd {
        PidFd { fd }
    }

    /// Opens a pidfd on process `pid`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for pid 0; `ESRCH` if no such process exists (it may
    /// already be gone).
    pub fn open(pid: u32) -> io::Result<PidFd> {
        let pid = i32::try_from(pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("invalid pid {pid}"))
            })?;
        Ok(PidFd {
            fd: pidfd_open(pid, PidfdFlags::empty())?,
        })
    }

    /// Whether the process has exited (without waiting).
    ///
    /// # Errors
    ///
    /// A failure of `poll`.
    pub fn has_exited(&self) -> io::Result<bool> {
        self.wait_exit(Some(Duration::ZERO))
    }

    /// Waits until the process exits or `timeout` passes; returns whether it
    /// exited.
    ///
    /// # Errors
    ///
    /// A failure of `poll`.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> io::Result<bool> {
        Ok(poll_readable(&[self.fd.as_fd()], timeout)?[0])
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Most descriptors one message carries.
pub const MAX_FDS: usize = 16;

/// Sends `data` with `fds` attached (`SCM_RIGHTS`) in one message, waiting
/// (until `deadline`) for room if the peer's buffer is full; never blocks
/// past the deadline, whatever the peer does.
///
/// # Errors
///
/// `InvalidInput` for more than `MAX_FDS` descriptors or empty `data`;
/// `TimedOut` at the deadline; a failure of `sendmsg` (`EPIPE` once the
/// peer is gone); `WriteZero` if the message was cut short.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: std::time::Instant,
) -> io::Result<()> {
    if fds.len() > MAX_FDS || data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a message carries 1+ bytes and at most {MAX_FDS} fds (got {} bytes, {} fds)",
                data.len(),
                fds.len()
            ),
        ));
    }
    loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("ancillary buffer too small"));
        }
        match sendmsg(
            sock,
            &[IoSlice::new(data)],
            &mut control,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        ) {
            Ok(sent) if sent == data.len() => return Ok(()),
            Ok(sent) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("sent {sent} of {} bytes with fds", data.len()),
                ));
            }
            Err(Errno::AGAIN) => wait_writable(sock, deadline)?,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until `sock` has room to send, or the deadline.
fn wait_writable(sock: BorrowedFd<'_>, deadline: std::time::Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer did not take the message before the deadline",
        ));
    }
    let mut pfd = [PollFd::new(&sock, PollFlags::OUT)];
    match poll(&mut pfd, Some(&timespec(left))) {
        Ok(_) | Err(Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Receives one message into `buf` with up to `max_fds` descriptors
/// (close-on-exec), without waiting. Returns the bytes received (0: the
/// peer closed) and the descriptors.
///
/// # Errors
///
/// A failure of `recvmsg` (`WouldBlock` when no message is there);
/// `InvalidData` if descriptors were cut off
/// (`MSG_CTRUNC`: more than `max_fds` were sent; the extra ones are closed)
/// or more than `max_fds` arrived.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let max = max_fds.min(MAX_FDS);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("peer sent more descriptors than the {max} expected"),
        ));
    }
    Ok((msg.bytes, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn doorbell_rings_once_and_drains() {
        let bell = EventFd::new().unwrap();
        assert!(!bell.wait(Some(Duration::ZERO)).unwrap());
        bell.notify().unwrap();
        bell.notify().unwrap();
        assert!(bell.wait(Some(Duration::from_secs(5))).unwrap());
        assert!(!bell.drain().unwrap());
    }

    fn soon() -> std::time::Instant {
        std::time::Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn fds_cross_a_socket_and_still_work() {
        let (a, b) = UnixStream::pair().unwrap();
        let (ours, theirs) = super::super::Doorbell::pair().unwrap();
        send_with_fds(a.as_fd(), b"bell", &[theirs.as_fd()], soon()).unwrap();
        let mut buf = [0u8; 16];
        let (n, mut fds) = recv_with_fds(b.as_fd(), &mut buf, 1).unwrap();
        assert_eq!(&buf[..n], b"bell");
        let got = super::super::Doorbell::from_peer_end(fds.pop().unwrap()).unwrap();
        got.ring_peer();
        assert!(ours.wait(Some(Duration::from_secs(5))).unwrap());
    }

    #[test]
    fn a_peer_that_never_reads_makes_a_send_time_out_not_hang() {
        let (a, _b) = super::super::seqpacket_pair().unwrap();
        let big = vec![7u8; 64 << 10];
        let deadline = std::time::Instant::now() + Duration::from_millis(200);
        let err = loop {
            if let Err(e) = send_with_fds(a.as_fd(), &big, &[], deadline) {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    }

    #[test]
    fn too_many_fds_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let bells: Vec<EventFd> = (0..3).map(|_| EventFd::new().unwrap()).collect();
        let fds: Vec<BorrowedFd<'_>> = bells.iter().map(|e| e.as_fd()).collect();
        send_with_fds(a.as_fd(), b"x", &fds, soon()).unwrap();
        let mut buf = [0u8; 4];
        let err = recv_with_fds(b.as_fd(), &mut buf, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn pidfd_sees_a_child_exit() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pidfd = PidFd::open(child.id()).unwrap();
        assert!(pidfd.wait_exit(Some(Duration::from_secs(30))).unwrap());
        assert!(pidfd.has_exited().unwrap());
        child.wait().unwrap();
        assert!(PidFd::open(0).is_err());
    }
}
