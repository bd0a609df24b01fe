//! A channel's counters, in shared memory that `isocall inspect` reads out
//! of the publishing process:
//!
//! - each subscriber's, in the creator's words of its segment
//!   ([`Segment::owner_words`]), written only by the publisher: its id,
//!   backpressure policy, drops, backlog, full-ring stalls, history sent,
//!   and why the publisher closed it; what it was sent is its ring's own
//!   count of frames published;
//! - the publisher's totals, in a small sealed memfd named
//!   `isocall:publisher:<channel>` (subscribers now and ever, messages
//!   sent, drops, disconnections, refusals), which outlives the segments
//!   of subscribers that left.
//!
//! What a reader loads from these words is the writer's word: display
//! only, never trusted (a subscriber can write its segment's words too).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use isocall_ringbuf::snapshot;

use super::error::CloseReason;
use super::policy::Backpressure;
use crate::segment::{Direction, OWNER_WORDS, Segment};
use crate::sys::SharedMem;

/// `b"ISOCHSUB"`: marks a segment as a channel subscriber's.
const SUB_MAGIC: u64 = u64::from_le_bytes(*b"ISOCHSUB");
/// `b"ISOCHPUB"`: marks a publisher's block.
const PUB_MAGIC: u64 = u64::from_le_bytes(*b"ISOCHPUB");
const VERSION: u64 = 1;

/// Prefix of the name of a publisher's memfd (followed by the channel's
/// name).
pub const PUBLISHER_MEMFD_PREFIX: &str = "isocall:publisher:";
/// Prefix of the name of a channel's blob pool memfd (followed by the
/// channel's name): the pool alone, from offset 0, mapped by the publisher
/// and every subscriber.
pub const POOL_MEMFD_PREFIX: &str = "isocall:chanpool:";
/// Prefix of the name of a subscriber's segment (followed by the
/// channel's name, `:` and the subscriber's id).
pub const SEGMENT_PREFIX: &str = "isocall:chan:";

/// Words of a subscriber's counters, in its segment's creator words.
#[derive(Clone, Copy, Debug)]
#[repr(usize)]
pub(crate) enum SubWord {
    Magic = 0,
    Version,
    Id,
    Policy,
    PolicyBacklog,
    PolicyMillis,
    Dropped,
    Queued,
    Full,
    History,
    Close,
    Fingerprint,
}

const _: () = assert!((SubWord::Fingerprint as usize) < OWNER_WORDS);

/// One subscriber's counters, as the publisher keeps them for it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberStats {
    /// Its id on the channel.
    pub id: u32,
    /// The name it gave itself.
    pub label: String,
    /// Its backpressure policy (`None` if the words do not name one).
    pub policy: Option<Backpressure>,
    /// Messages published into its ring (history included).
    pub sent: u64,
    /// Messages dropped from its backlog (policy `DropOldest`).
    pub dropped: u64,
    /// Messages queued for it outside its ring now.
    pub queued: u64,
    /// Times its ring was found full.
    pub full: u64,
    /// History messages it was sent when it joined.
    pub history: u64,
    /// Why the publisher closed it, if it did.
    pub closed: Option<CloseReason>,
    /// Sleeps of its ring's consumer that lasted to their end and found a
    /// message waiting: lost wake-ups, each found by the
    /// subscriber's own look after at most
    /// [`RECHECK`](crate::raw::RECHECK) (see
    /// [`CONS_UNWOKEN`](isocall_ringbuf::layout::CONS_UNWOKEN)). As the
    /// subscriber wrote it; 0 over a stream or once it is gone.
    pub unwoken: u64,
    /// Of those, the sleeps whose announcement the publisher never took
    /// down (it published without seeing that the subscriber slept); the
    /// rest were wake-ups given and not received.
    pub unseen: u64,
}

/// A subscriber's counters in its segment, written by the publisher.
#[derive(Debug)]
pub(crate) struct SubCounters {
    seg: Arc<Segment>,
}

impl SubCounters {
    /// Formats the counters of subscriber `id` of a segment this process
    /// made; the magic last, with Release.
    pub(crate) fn create(
        seg: Arc<Segment>,
        id: u32,
        policy: Backpressure,
        fingerprint: u64,
    ) -> SubCounters {
        let c = SubCounters { seg };
        c.set(SubWord::Version, VERSION);
        c.set(SubWord::Id, id.into());
        c.set_policy(policy);
        c.set(SubWord::Fingerprint, fingerprint);
        if let Some(w) = c.seg.owner_words() {
            w[SubWord::Magic as usize].store(SUB_MAGIC, Ordering::Release);
        }
        c
    }

    pub(crate) fn set(&self, w: SubWord, v: u64) {
        if let Some(words) = self.seg.owner_words() {
            words[w as usize].store(v, Ordering::Relaxed);
        }
    }

    pub(crate) fn set_policy(&self, p: Backpressure) {
        let (code, backlog, ms) = p.encode();
        self.set(SubWord::Policy, code);
        self.set(SubWord::PolicyBacklog, backlog);
        self.set(SubWord::PolicyMillis, ms);
    }

    /// Records why the publisher closed the subscriber (Release: the
    /// subscriber loads it with Acquire once it finds the connection
    /// over).
    pub(crate) fn set_closed(&self, r: CloseReason) {
        if let Some(words) = self.seg.owner_words() {
            words[SubWord::Close as usize].store(r.code().into(), Ordering::Release);
        }
    }
}

/// Why the publisher of `seg` closed it, as it wrote (the peer's word).
pub(crate) fn close_reason(seg: &Segment) -> Option<CloseReason> {
    CloseReason::from_code(seg.owner_word(SubWord::Close as usize) as u32)
}

/// The counters a publisher keeps in a subscriber's segment, if `seg` is
/// one (the magic says so); the label is the segment's string table's
/// third entry, the sends its ring's count of frames published. Works on
/// a segment opened read-only; everything is the writer's word, display
/// only.
pub fn subscriber_stats(seg: &Segment) -> Option<SubscriberStats> {
    let w = |i: SubWord| seg.owner_word(i as usize);
    if w(SubWord::Magic) != SUB_MAGIC || w(SubWord::Version) != VERSION {
        return None;
    }
    let ring = seg
        .ring_view(Direction::ServerToClient)
        .and_then(|v| snapshot(&v).ok());
    let sent = ring.as_ref().map_or(0, |s| s.frames_published);
    let unwoken = ring.as_ref().map_or(0, |s| s.consumer_unwoken);
    let unseen = ring.as_ref().map_or(0, |s| s.consumer_unseen);
    Some(SubscriberStats {
        id: w(SubWord::Id) as u32,
        label: seg.method_table().into_iter().nth(2).unwrap_or_default(),
        policy: Backpressure::decode(
            w(SubWord::Policy),
            w(SubWord::PolicyBacklog),
            w(SubWord::PolicyMillis),
        ),
        sent,
        dropped: w(SubWord::Dropped),
        queued: w(SubWord::Queued),
        full: w(SubWord::Full),
        history: w(SubWord::History),
        closed: CloseReason::from_code(w(SubWord::Close) as u32),
        unwoken,
        unseen,
    })
}

/// Words of a publisher's block.
#[derive(Clone, Copy, Debug)]
#[repr(usize)]
pub(crate) enum PubWord {
    Magic = 0,
    Version,
    Pid,
    Fingerprint,
    Subscribers,
    Joined,
    Left,
    Refused,
    Failed,
    Sent,
    Dropped,
    Disconnected,
    HistoryDepth,
    HistoryHeld,
}

const PUB_WORDS: usize = PubWord::HistoryHeld as usize + 1;
/// Where the type name lies in the block: a `u16` length, then the bytes.
const TYPE_NAME_AT: usize = 512;
const BLOCK_LEN: usize = 4096;
const _: () = assert!(PUB_WORDS * 8 <= TYPE_NAME_AT);

/// A publisher's totals.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublisherStats {
    /// The publishing process.
    pub pid: u32,
    /// The message type's name.
    pub type_name: String,
    /// The message type's fingerprint.
    pub fingerprint: u64,
    /// Subscribers connected now.
    pub subscribers: u64,
    /// Subscribers that completed the handshake, ever.
    pub joined: u64,
    /// Subscribers that left (closed, died or were disconnected).
    pub left: u64,
    /// Subscribers refused (policy, caps, version, type).
    pub refused: u64,
    /// Handshakes that failed otherwise.
    pub failed: u64,
    /// Messages sent.
    pub sent: u64,
    /// Messages dropped, over every subscriber (policy `DropOldest`).
    pub dropped: u64,
    /// Subscribers disconnected for lagging (policy `Disconnect`) or a
    /// corrupt segment.
    pub disconnected: u64,
    /// Messages of history kept at most.
    pub history_depth: u64,
    /// Messages of history held now.
    pub history_held: u64,
}

/// A publisher's block, mapped read-write by the publisher.
#[derive(Debug)]
pub(crate) struct PubBlock {
    mem: SharedMem,
}

impl PubBlock {
    pub(crate) fn create(
        channel: &str,
        type_name: &str,
        fingerprint: u64,
        history: usize,
    ) -> io::Result<PubBlock> {
        let mut name = format!("{PUBLISHER_MEMFD_PREFIX}{channel}");
        let mut n = name.len().min(249);
        while !name.is_char_boundary(n) {
            n -= 1;
        }
        name.truncate(n);
        let b = PubBlock {
            mem: SharedMem::create(&name, BLOCK_LEN)?,
        };
        b.set(PubWord::Version, VERSION);
        b.set(PubWord::Pid, std::process::id().into());
        b.set(PubWord::Fingerprint, fingerprint);
        b.set(PubWord::HistoryDepth, history as u64);
        let t = &type_name.as_bytes()[..type_name.len().min(1024)];
        let mut bytes = (t.len() as u16).to_le_bytes().to_vec();
        bytes.extend_from_slice(t);
        if let Some(words) = b.mem.u64_words() {
            for (i, chunk) in bytes.chunks(8).enumerate() {
                let mut w = [0u8; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                words[TYPE_NAME_AT / 8 + i].store(u64::from_le_bytes(w), Ordering::Relaxed);
            }
            // The magic last: a reader that sees it sees a formatted block.
            words[PubWord::Magic as usize].store(PUB_MAGIC, Ordering::Release);
        }
        Ok(b)
    }

    fn word(&self, w: PubWord) -> Option<&AtomicU64> {
        self.mem.u64_words().map(|words| &words[w as usize])
    }

    pub(crate) fn set(&self, w: PubWord, v: u64) {
        if let Some(a) = self.word(w) {
            a.store(v, Ordering::Relaxed);
        }
    }

    pub(crate) fn add(&self, w: PubWord, n: u64) {
        if let Some(a) = self.word(w) {
            a.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The block's memfd (for tests).
    #[cfg(test)]
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.mem.fd()
    }

    pub(crate) fn snapshot(&self) -> PublisherStats {
        decode(&self.mem, false).expect("the publisher's own block is long enough")
    }
}

fn decode(mem: &SharedMem, strict: bool) -> Option<PublisherStats> {
    if mem.len() < BLOCK_LEN {
        return None;
    }
    let g = |w: PubWord| mem.load_u64(w as usize, Ordering::Acquire).unwrap_or(0);
    if strict && (g(PubWord::Magic) != PUB_MAGIC || g(PubWord::Version) != VERSION) {
        return None;
    }
    let bytes: Vec<u8> = (TYPE_NAME_AT / 8..BLOCK_LEN / 8)
        .flat_map(|i| {
            mem.load_u64(i, Ordering::Relaxed)
                .unwrap_or(0)
                .to_le_bytes()
        })
        .collect();
    let len = (u16::from_le_bytes([bytes[0], bytes[1]]) as usize).min(bytes.len() - 2);
    Some(PublisherStats {
        pid: g(PubWord::Pid) as u32,
        type_name: String::from_utf8_lossy(&bytes[2..2 + len]).into_owned(),
        fingerprint: g(PubWord::Fingerprint),
        subscribers: g(PubWord::Subscribers),
        joined: g(PubWord::Joined),
        left: g(PubWord::Left),
        refused: g(PubWord::Refused),
        failed: g(PubWord::Failed),
        sent: g(PubWord::Sent),
        dropped: g(PubWord::Dropped),
        disconnected: g(PubWord::Disconnected),
        history_depth: g(PubWord::HistoryDepth),
        history_held: g(PubWord::HistoryHeld),
    })
}

/// Reads the totals of another process's publisher from its memfd (found
/// by `isocall inspect` in `/proc/PID/fd` under
/// [`PUBLISHER_MEMFD_PREFIX`]), mapped read-only.
///
/// # Errors
///
/// `InvalidData` for a memfd that is not sealed, too short, or not a
/// publisher's block (magic or version wrong).
pub fn read_publisher_stats(fd: OwnedFd) -> io::Result<PublisherStats> {
    let mem = SharedMem::open_read_only(fd)?;
    decode(&mem, true).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "not an isocall publisher block (bad magic or version)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::SegmentLayout;

    #[test]
    fn a_publishers_totals_round_trip_through_a_read_only_mapping() {
        let b = PubBlock::create("t", "Frame<u8>", 42, 8).unwrap();
        b.add(PubWord::Joined, 3);
        b.set(PubWord::Sent, 1000);
        b.add(PubWord::Dropped, 7);
        let s = read_publisher_stats(b.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(s, b.snapshot());
        assert_eq!((s.joined, s.sent, s.dropped), (3, 1000, 7));
        assert_eq!((s.type_name.as_str(), s.fingerprint), ("Frame<u8>", 42));
        assert_eq!(s.history_depth, 8);
        assert_eq!(s.pid, std::process::id());
        let other = SharedMem::create("isocall:publisher:fake", 4096).unwrap();
        let e = read_publisher_stats(other.fd().try_clone_to_owned().unwrap()).unwrap_err();
        assert!(e.to_string().contains("bad magic"), "{e}");
    }

    #[test]
    fn a_subscribers_counters_are_read_from_its_segment() {
        let layout = SegmentLayout {
            ring_capacity: 4096,
            ..SegmentLayout::default()
        };
        let seg = Arc::new(Segment::create("isocall:chan:t:1", &layout).unwrap());
        assert_eq!(subscriber_stats(&seg), None, "no magic yet");
        seg.write_method_table(&["t", "Frame", "monitor"]);
        let c = SubCounters::create(seg.clone(), 5, Backpressure::drop_oldest(), 42);
        c.set(SubWord::Dropped, 9);
        c.set_closed(CloseReason::Lagging);
        let ro = Segment::open_read_only(seg.fd().try_clone_to_owned().unwrap()).unwrap();
        let s = subscriber_stats(&ro).unwrap();
        assert_eq!(s.id, 5);
        assert_eq!(s.label, "monitor");
        assert_eq!(s.policy, Some(Backpressure::drop_oldest()));
        assert_eq!((s.dropped, s.sent), (9, 0));
        assert_eq!(s.closed, Some(CloseReason::Lagging));
        assert_eq!(close_reason(&ro), Some(CloseReason::Lagging));
    }
}
