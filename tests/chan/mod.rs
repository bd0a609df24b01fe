//! Shared code of the channel tests: the message type and its check, a
//! receive loop that tallies what a subscriber got, and the subscriber
//! role a test starts as a child process.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use isocall::SocketName;
use isocall::channel::{RecvError, Subscriber, SubscriberOptions};
use isocall::rpc::Endpoint;

use super::proc::Ctl;

/// A channel's message: a sequence number and bytes derived from it.
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
pub struct Item {
    pub seq: u64,
    pub data: Vec<u8>,
}

/// Another type, for the mismatch test.
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
pub struct Other {
    pub seq: u32,
}

/// The `i`th message of a stream: 3 to 63 bytes derived from `i`.
pub fn item(i: u64) -> Item {
    let len = (i % 61) as usize + 3;
    Item {
        seq: i,
        data: (0..len)
            .map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8))
            .collect(),
    }
}

/// Whether `got` is message `seq` of the stream.
pub fn is_item(got: &ArchivedItem, seq: u64) -> bool {
    let want = item(seq);
    got.seq == seq && got.data.as_slice() == want.data.as_slice()
}

/// Fills the blob of message `seq`: its sequence number, then a pattern
/// of it.
pub fn fill_blob(seq: u64, b: &mut [u8]) {
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u64).wrapping_mul(7).wrapping_add(seq) as u8;
    }
    if b.len() >= 8 {
        b[..8].copy_from_slice(&seq.to_le_bytes());
    }
}

/// Whether `b` is the blob of message `seq`, `len` bytes.
pub fn is_blob(seq: u64, len: usize, b: &[u8]) -> bool {
    let mut want = vec![0; len];
    fill_blob(seq, &mut want);
    b == want.as_slice()
}

/// What a subscriber received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages received.
    pub got: u64,
    /// First and last sequence numbers.
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// Places where the sequence skipped ahead.
    pub gaps: u64,
    /// Messages whose sequence number went backwards or repeated, or
    /// whose contents were wrong.
    pub bad: u64,
    /// History messages.
    pub history: u64,
    /// Messages that carried a blob (each checked).
    pub blobs: u64,
    /// How the receiving ended: `count` (got what it wanted), `died`,
    /// `closed:<reason>`, `timeout`, or `error:<e>`.
    pub end: String,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = |x: Option<u64>| x.map_or("-".into(), |v| v.to_string());
        write!(
            f,
            "got={} first={} last={} gaps={} bad={} history={} blobs={} end={}",
            self.got,
            o(self.first),
            o(self.last),
            self.gaps,
            self.bad,
            self.history,
            self.blobs,
            self.end
        )
    }
}

impl Tally {
    /// Parses what [`Display`](std::fmt::Display) wrote.
    pub fn parse(line: &str) -> Tally {
        let p = params(line);
        let n = |k: &str| p.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        let o = |k: &str| p.get(k).and_then(|v| v.parse().ok());
        Tally {
            got: n("got"),
            first: o("first"),
            last: o("last"),
            gaps: n("gaps"),
            bad: n("bad"),
            history: n("history"),
            blobs: n("blobs"),
            end: p.get("end").cloned().unwrap_or_default(),
        }
    }
}

/// Receives until `want` messages came (0: until the subscription ends),
/// or nothing came for `idle`; checks each message (and its blob, whose
/// length is the message's `data` length times 64) and the order.
pub fn receive(sub: &mut Subscriber<Item>, want: u64, idle: Duration) -> Tally {
    receive_holding(sub, want, idle, None)
}

/// [`receive`], and after the first message that carries a blob, calls
/// `hold` with it still held (the sample, and its blob, live until `hold`
/// returns).
pub fn receive_holding(
    sub: &mut Subscriber<Item>,
    want: u64,
    idle: Duration,
    mut hold: Option<&mut dyn FnMut()>,
) -> Tally {
    let mut t = Tally::default();
    loop {
        if want > 0 && t.got >= want {
            t.end = "count".into();
            return t;
        }
        match sub.recv_timeout(idle) {
            Ok(s) => {
                let seq = s.seq();
                if !is_item(&s, seq) {
                    t.bad += 1;
                }
                if s.blob_count() > 0 {
                    t.blobs += 1;
                    let len = s.data.len() * 64;
                    if s.blob_count() != 1 || !s.blob(0).is_some_and(|b| is_blob(seq, len, b)) {
                        t.bad += 1;
                    }
                    if let Some(h) = hold.take() {
                        h();
                    }
                }
                match t.last {
                    Some(l) if seq <= l => t.bad += 1,
                    Some(l) if seq > l + 1 => t.gaps += 1,
                    _ => {}
                }
                t.first.get_or_insert(seq);
                t.last = Some(seq);
                t.history += u64::from(s.is_history());
                t.got += 1;
            }
            Err(RecvError::PeerDied) => {
                t.end = "died".into();
                return t;
            }
            Err(RecvError::Closed(r)) => {
                t.end = format!("closed:{r:?}");
                return t;
            }
            Err(RecvError::Timeout) => {
                t.end = "timeout".into();
                return t;
            }
            Err(e) => {
                t.end = format!("error:{}", e.to_string().replace(' ', "_"));
                return t;
            }
        }
    }
}

/// Parses `key=value` words.
pub fn params(s: &str) -> HashMap<String, String> {
    s.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Role: a subscriber. Its argument: `socket=NAME want=N hold=0|1
/// history=H label=L idle_ms=MS`. Says `ready id=ID`; with `hold=1`
/// waits for `go` (or `go N`: then it wants N) before it reads; receives
/// (see [`receive`]) and says `done <tally>`.
pub fn subscriber(arg: &str, ctl: &mut Ctl) {
    let socket = SocketName::Abstract(params(arg).get("socket").cloned().unwrap_or_default());
    subscriber_at(arg, ctl, Endpoint::shared_memory(socket));
}

/// The subscriber role, connecting to `at` (a shared-memory name or a
/// stream address): as [`subscriber`], the other words the same.
pub fn subscriber_at(arg: &str, ctl: &mut Ctl, at: Endpoint) {
    let p = params(arg);
    let get = |k: &str| p.get(k).cloned().unwrap_or_default();
    let num = |k: &str| get(k).parse::<u64>().unwrap_or(0);
    let options = SubscriberOptions::default()
        .history(num("history") as u32)
        .label(get("label"));
    let mut sub = match Subscriber::<Item>::connect_with(at, options) {
        Ok(s) => s,
        Err(e) => {
            ctl.say(&format!("error {e}"));
            return;
        }
    };
    ctl.say(&format!("ready id={}", sub.id()));
    let mut want = num("want");
    if num("hold") == 1 {
        loop {
            let line = ctl.hear();
            match line.split_once(' ') {
                _ if line == "go" => break,
                Some(("go", n)) => {
                    want = n.parse().unwrap_or(want);
                    break;
                }
                // The parent is gone.
                _ if line.is_empty() => return,
                _ => {}
            }
        }
    }
    let idle = Duration::from_millis(num("idle_ms").max(1));
    if num("hold_blob") == 1 {
        // Holds the first blob it gets until the parent kills it.
        let mut hold = || {
            ctl.say("holding");
            let _ = ctl.hear();
        };
        receive_holding(&mut sub, want, idle, Some(&mut hold));
        return;
    }
    let t = receive(&mut sub, want, idle);
    ctl.say(&format!("done {t}"));
}
