//! A lossy subscriber's counters, and the small shared block they are
//! mirrored into for `isocall inspect`: a sealed memfd named
//! `isocall:udp:<bound address>` (see [`UDP_MEMFD_PREFIX`]), written only
//! by the subscriber, read-only by anyone who can open it through
//! `/proc/PID/fd`. It holds the subscriber's pid, the message type's name
//! and fingerprint, its label, its bound address, and the counters of
//! [`UdpStats`].

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use crate::sys::SharedMem;

/// Prefix of the name of a lossy subscriber's memfd (followed by the
/// address it is bound to, e.g. `isocall:udp:127.0.0.1:9000`).
pub const UDP_MEMFD_PREFIX: &str = "isocall:udp:";

/// `b"ISOUDPSB"`: marks a lossy subscriber's block.
const MAGIC: u64 = u64::from_le_bytes(*b"ISOUDPSB");
const VERSION: u64 = 1;
const BLOCK_LEN: usize = 4096;
/// Where the strings lie (each a `u16` length, then its bytes).
const TYPE_NAME_AT: usize = 512;
const TYPE_NAME_MAX: usize = 1024;
const LABEL_AT: usize = 1600;
const LABEL_MAX: usize = 64;
const ADDRESS_AT: usize = 1696;
const ADDRESS_MAX: usize = 256;
const _: () = assert!(TYPE_NAME_AT + 2 + TYPE_NAME_MAX <= LABEL_AT);
const _: () = assert!(LABEL_AT + 2 + LABEL_MAX <= ADDRESS_AT);
const _: () = assert!(ADDRESS_AT + 2 + ADDRESS_MAX <= BLOCK_LEN);

/// Words of the block.
#[derive(Clone, Copy, Debug)]
#[repr(usize)]
enum Word {
    Magic = 0,
    Version,
    Pid,
    Fingerprint,
    Received,
    Lost,
    Reordered,
    Duplicates,
    Late,
    Malformed,
    Foreign,
    Restarts,
}

const _: () = assert!((Word::Restarts as usize + 1) * 8 <= TYPE_NAME_AT);

/// What a lossy subscriber counted, since it was bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpStats {
    /// Messages delivered (valid, of the channel's type, not duplicates).
    pub received: u64,
    /// Sequence numbers skipped and not (yet) arrived: messages lost on
    /// the way (or dropped by a full receive buffer). One that arrives
    /// late is taken off.
    pub lost: u64,
    /// Messages that arrived after a later one (delivered all the same).
    pub reordered: u64,
    /// Messages that arrived twice (the second dropped).
    pub duplicates: u64,
    /// Messages older than the window of sequence numbers remembered
    /// ([`WINDOW`](super::WINDOW)): dropped, and still counted lost.
    pub late: u64,
    /// Datagrams that are not a lossy channel's (bad magic, version,
    /// length) or whose body is not a valid archive of the type: dropped
    /// unread.
    pub malformed: u64,
    /// Datagrams of another message type (another fingerprint): dropped
    /// unread.
    pub foreign: u64,
    /// Times the publisher's stream changed (a publisher restarted, or
    /// another one sends to this address).
    pub restarts: u64,
}

/// A lossy subscriber's block as `isocall inspect` reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpSubscriberInfo {
    /// The subscribing process.
    pub pid: u32,
    /// The address it is bound to.
    pub address: String,
    /// The message type's name.
    pub type_name: String,
    /// The message type's fingerprint.
    pub fingerprint: u64,
    /// The name the subscriber gave itself.
    pub label: String,
    /// Its counters.
    pub stats: UdpStats,
}

/// The block, mapped read-write by its subscriber.
#[derive(Debug)]
pub(crate) struct UdpBlock {
    mem: SharedMem,
}

fn put_str(mem: &SharedMem, at: usize, max: usize, s: &str) {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    let mut bytes = (n as u16).to_le_bytes().to_vec();
    bytes.extend_from_slice(&s.as_bytes()[..n]);
    if let Some(words) = mem.u64_words() {
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            words[at / 8 + i].store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
    }
}

fn get_str(mem: &SharedMem, at: usize, max: usize) -> String {
    let bytes: Vec<u8> = (at / 8..(at + 2 + max).div_ceil(8))
        .flat_map(|i| {
            mem.load_u64(i, Ordering::Relaxed)
                .unwrap_or(0)
                .to_le_bytes()
        })
        .collect();
    let len = (u16::from_le_bytes([bytes[0], bytes[1]]) as usize).min(max);
    String::from_utf8_lossy(&bytes[2..2 + len]).into_owned()
}

impl UdpBlock {
    /// Makes the block of a subscriber bound to `address`; the magic
    /// last, with Release.
    pub(crate) fn create(
        address: &str,
        type_name: &str,
        fingerprint: u64,
        label: &str,
    ) -> io::Result<UdpBlock> {
        let mut name = format!("{UDP_MEMFD_PREFIX}{address}");
        let mut n = name.len().min(249);
        while !name.is_char_boundary(n) {
            n -= 1;
        }
        name.truncate(n);
        let b = UdpBlock {
            mem: SharedMem::create(&name, BLOCK_LEN)?,
        };
        b.set(Word::Version, VERSION);
        b.set(Word::Pid, std::process::id().into());
        b.set(Word::Fingerprint, fingerprint);
        put_str(&b.mem, TYPE_NAME_AT, TYPE_NAME_MAX, type_name);
        put_str(&b.mem, LABEL_AT, LABEL_MAX, label);
        put_str(&b.mem, ADDRESS_AT, ADDRESS_MAX, address);
        if let Some(words) = b.mem.u64_words() {
            // Pairs with the reader's Acquire load of the magic: a reader
            // that sees it sees a formatted block.
            words[Word::Magic as usize].store(MAGIC, Ordering::Release);
        }
        Ok(b)
    }

    fn set(&self, w: Word, v: u64) {
        if let Some(words) = self.mem.u64_words() {
            words[w as usize].store(v, Ordering::Relaxed);
        }
    }

    /// Mirrors the counters (display only: Relaxed).
    pub(crate) fn store(&self, st: &UdpStats) {
        self.set(Word::Received, st.received);
        self.set(Word::Lost, st.lost);
        self.set(Word::Reordered, st.reordered);
        self.set(Word::Duplicates, st.duplicates);
        self.set(Word::Late, st.late);
        self.set(Word::Malformed, st.malformed);
        self.set(Word::Foreign, st.foreign);
        self.set(Word::Restarts, st.restarts);
    }
}

/// Reads another process's lossy subscriber block from its memfd (found
/// by `isocall inspect` in `/proc/PID/fd` under [`UDP_MEMFD_PREFIX`]),
/// mapped read-only. Everything in it is the subscriber's word: display
/// only.
///
/// # Errors
///
/// `InvalidData` for a memfd that is not sealed, too short, or not a
/// lossy subscriber's block (magic or version wrong).
pub fn read_udp_stats(fd: OwnedFd) -> io::Result<UdpSubscriberInfo> {
    let mem = SharedMem::open_read_only(fd)?;
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "not an isocall lossy subscriber block (bad magic or version)",
        )
    };
    if mem.len() < BLOCK_LEN {
        return Err(bad());
    }
    let g = |w: Word| mem.load_u64(w as usize, Ordering::Acquire).unwrap_or(0);
    if g(Word::Magic) != MAGIC || g(Word::Version) != VERSION {
        return Err(bad());
    }
    Ok(UdpSubscriberInfo {
        pid: g(Word::Pid) as u32,
        address: get_str(&mem, ADDRESS_AT, ADDRESS_MAX),
        type_name: get_str(&mem, TYPE_NAME_AT, TYPE_NAME_MAX),
        fingerprint: g(Word::Fingerprint),
        label: get_str(&mem, LABEL_AT, LABEL_MAX),
        stats: UdpStats {
            received: g(Word::Received),
            lost: g(Word::Lost),
            reordered: g(Word::Reordered),
            duplicates: g(Word::Duplicates),
            late: g(Word::Late),
            malformed: g(Word::Malformed),
            foreign: g(Word::Foreign),
            restarts: g(Word::Restarts),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_round_trips_through_a_read_only_mapping() {
        let b = UdpBlock::create("127.0.0.1:9", "Frame<u8>", 42, "cam").unwrap();
        let st = UdpStats {
            received: 10,
            lost: 2,
            reordered: 1,
            foreign: 3,
            ..UdpStats::default()
        };
        b.store(&st);
        let r = read_udp_stats(b.mem.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(r.stats, st);
        assert_eq!(
            (r.address.as_str(), r.type_name.as_str(), r.label.as_str()),
            ("127.0.0.1:9", "Frame<u8>", "cam")
        );
        assert_eq!((r.fingerprint, r.pid), (42, std::process::id()));
        let other = SharedMem::create("isocall:udp:fake", 4096).unwrap();
        let e = read_udp_stats(other.fd().try_clone_to_owned().unwrap()).unwrap_err();
        assert!(e.to_string().contains("bad magic"), "{e}");
    }
}
