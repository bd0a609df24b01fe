//! Shared code of the hostile-peer tests: the methods a victim serves, an
//! honest client that checks every answer while an attacker works, the
//! targeted rewrite of an rkyv `String` and of a blob slot's state word,
//! and (in submodules) the frame each test runs in, the attacker
//! processes, raw peers that speak the protocol themselves, and leak
//! probes over `/proc/self`.
//!
//! The victim is the test process wherever the attack allows (a server or
//! a client in it), so its leak probes read `/proc/self`; the attacker is
//! the test binary re-executed in a role ([`proc::Peer`]). The tests of one
//! binary run one at a time ([`proc::serial`]) so that each one's probes
//! see only its own objects.
#![allow(dead_code)]

pub mod harness;
pub mod probe;
pub mod proc;
pub mod raw;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isocall::blob::{BlobHandle, Pool};
use isocall::ring::{ReadRegion, SharedRegion};
use isocall::{AppError, CallCtx, Client, ClientOptions, Method, ServerBuilder, SocketName};

/// Two numbers to add.
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
pub struct Add {
    pub a: u64,
    pub b: u64,
}

/// Their sum.
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
pub struct Sum {
    pub sum: u64,
}

/// A string (an rkyv archive with a relative pointer and a length).
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
pub struct Text {
    pub s: String,
}

/// The length and byte sum of a string.
#[derive(rkyv::Archive, rkyv::Serialize, isocall::Schema)]
pub struct Digest {
    pub len: u64,
    pub sum: u64,
}

/// `a + b`.
pub const ADD: Method<Add, Sum> = Method::new("add");
/// The digest of a string: the handler reads every byte of it.
pub const DIGEST: Method<Text, Digest> = Method::new("digest");
/// The string back.
pub const ECHO: Method<Text, Text> = Method::new("echo");

/// The digest of `bytes`.
pub fn digest(bytes: &[u8]) -> (u64, u64) {
    (
        bytes.len() as u64,
        bytes.iter().map(|&b| u64::from(b)).sum(),
    )
}

/// A server builder on `socket` with `add`, `digest` and `echo`.
pub fn victim_server(socket: &SocketName) -> ServerBuilder {
    ServerBuilder::new(socket.clone())
        .method(ADD, |r: &ArchivedAdd, _: &mut CallCtx<'_>| {
            Ok(Sum {
                sum: r.a.to_native().wrapping_add(r.b.to_native()),
            })
        })
        .method(DIGEST, |r: &ArchivedText, _: &mut CallCtx<'_>| {
            let (len, sum) = digest(r.s.as_bytes());
            Ok::<_, AppError>(Digest { len, sum })
        })
        .method(ECHO, |r: &ArchivedText, _: &mut CallCtx<'_>| {
            Ok(Text {
                s: r.s.as_str().to_string(),
            })
        })
}

/// What an honest client saw.
#[derive(Debug, Default)]
pub struct HonestReport {
    /// Calls answered right.
    pub calls: u64,
    /// The slowest call.
    pub slowest: Duration,
    /// The first failure, if any (a wrong answer or an error).
    pub failure: Option<String>,
}

/// A client of the victim server on a thread of its own, calling `add`
/// with answers it checks, until stopped.
pub struct Honest {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    thread: Option<JoinHandle<HonestReport>>,
}

impl Honest {
    /// Connects to `socket` and starts calling, each call with
    /// `call_timeout`.
    pub fn start(socket: &SocketName, call_timeout: Duration) -> Honest {
        let mut client =
            Client::connect_with(socket, ClientOptions::default().call_timeout(call_timeout))
                .expect("the honest client connects");
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let (st, n) = (stop.clone(), calls.clone());
        let thread = std::thread::Builder::new()
            .name("hostile-honest".into())
            .spawn(move || {
                let add = client.method(ADD).expect("resolve add");
                let mut r = HonestReport::default();
                let mut x = 0x9E37_79B9_7F4A_7C15u64;
                while !st.load(Ordering::Acquire) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let (a, b) = (x >> 1, x.rotate_left(17) >> 1);
                    let t = Instant::now();
                    match client.call(add, &Add { a, b }) {
                        Ok(s) if s.sum.to_native() == a.wrapping_add(b) => {}
                        Ok(s) => {
                            r.failure =
                                Some(format!("wrong sum {} for {a} + {b}", s.sum.to_native()));
                            break;
                        }
                        Err(e) => {
                            r.failure = Some(format!("call {} failed: {e}", r.calls));
                            break;
                        }
                    }
                    r.slowest = r.slowest.max(t.elapsed());
                    r.calls += 1;
                    n.store(r.calls, Ordering::Release);
                }
                r
            })
            .expect("honest thread");
        Honest {
            stop,
            calls,
            thread: Some(thread),
        }
    }

    /// As [`start`](Self::start), then waits for its first ten answers
    /// (for 10 s).
    pub fn running(socket: &SocketName, call_timeout: Duration) -> Honest {
        let honest = Honest::start(socket, call_timeout);
        honest.progresses(10, Duration::from_secs(10));
        honest
    }

    /// Calls answered so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Acquire)
    }

    /// Waits until it made `more` further calls (it makes progress),
    /// failing after `limit`.
    pub fn progresses(&self, more: u64, limit: Duration) {
        let from = self.calls();
        proc::wait_for(limit, "the honest client to make progress", || {
            let now = self.calls();
            if now >= from + more {
                Ok(())
            } else if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
                Err(format!("it stopped after {now} calls (see its report)"))
            } else {
                Err(format!("{} calls of {more}", now - from))
            }
        });
    }

    /// As [`finish`](Self::finish), failing if any of its calls failed.
    pub fn finish_ok(self) -> HonestReport {
        let report = self.finish();
        assert!(report.failure.is_none(), "honest client: {report:?}");
        report
    }

    /// Stops it (and drops its client) and returns what it saw.
    pub fn finish(mut self) -> HonestReport {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("the honest client's thread panicked")
    }
}

impl Drop for Honest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Another connection of the victim's process, to an honest server in it:
/// for the tests whose victim is a client, the proof that the process's
/// other connections keep working while one of its servers attacks it.
pub struct Bystander {
    honest: Honest,
    server: isocall::Server,
}

impl Bystander {
    /// An honest server on a socket of its own (`test` makes its name)
    /// and an honest client calling it.
    pub fn start(test: &str) -> Bystander {
        let socket = proc::socket_name(&format!("{test}-bystander"));
        let server = victim_server(&socket).spawn().expect("bystander server");
        let honest = Honest::running(&socket, Duration::from_secs(10));
        Bystander { honest, server }
    }

    /// Fails unless it makes progress now.
    pub fn progresses(&self) {
        self.honest.progresses(10, Duration::from_secs(10));
    }

    /// Stops it; fails if any of its calls failed.
    pub fn finish(self) {
        self.progresses();
        let report = self.honest.finish();
        assert!(report.failure.is_none(), "bystander: {report:?}");
        drop(self.server);
    }
}

/// The targeted rewrite of an archived [`Text`]: the archive's root is an
/// `ArchivedString` of two `u32` words (length with its out-of-line flag,
/// relative offset) at the end of the body. `good` are its words as
/// serialized; `bad` point 1 GiB before the body with a 512 MiB length.
/// Every mix of good and bad words is either the good archive or an
/// invalid one (checked in [`StringAttack::new`]), so a reader that
/// validated a private copy sees the right string or a validation error,
/// and a reader that validated in place and read again follows the bad
/// pointer.
pub struct StringAttack {
    /// The body, as serialized.
    pub body: Vec<u8>,
    /// Byte offset of the root's two words in the body.
    pub root_at: usize,
    /// The root's words as serialized.
    pub good: [u32; 2],
    /// The rewritten words.
    pub bad: [u32; 2],
}

impl StringAttack {
    /// The attack on the archive of `Text { s }` (`s` longer than 8 bytes,
    /// so stored out of line).
    pub fn new(s: &str) -> StringAttack {
        assert!(s.len() > 8, "an inline string has no pointer to rewrite");
        let body = raw::archive(&Text { s: s.to_string() });
        let root_at = body.len() - 8;
        assert!(root_at.is_multiple_of(4));
        let word = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().unwrap());
        let good = [word(root_at), word(root_at + 4)];
        // Out of line (first byte 0b10xx_xxxx), length 2^29.
        let len = 1u32 << 29;
        let bad_len = 0x80 | (len & 0x3f) | ((len >> 6) << 8);
        let bad = [bad_len, (-(1i32 << 30)) as u32];
        let a = StringAttack {
            body,
            root_at,
            good,
            bad,
        };
        // The good words are this string; every other mix is refused.
        for (i, mix) in [[true, true], [true, false], [false, true], [false, false]]
            .iter()
            .enumerate()
        {
            let b = a.with([
                if mix[0] { a.good[0] } else { a.bad[0] },
                if mix[1] { a.good[1] } else { a.bad[1] },
            ]);
            let r = rkyv::access::<ArchivedText, rkyv::rancor::Error>(&b);
            match i {
                0 => assert_eq!(r.expect("the good archive").s.as_str(), s),
                _ => assert!(r.is_err(), "mix {mix:?} must not validate"),
            }
        }
        a
    }

    /// The body with the root's words replaced by `w`.
    pub fn with(&self, w: [u32; 2]) -> rkyv::util::AlignedVec<16> {
        let mut b = rkyv::util::AlignedVec::<16>::new();
        b.extend_from_slice(&self.body);
        b[self.root_at..self.root_at + 4].copy_from_slice(&w[0].to_le_bytes());
        b[self.root_at + 4..self.root_at + 8].copy_from_slice(&w[1].to_le_bytes());
        b
    }

    /// Sets the root of the body published at `body_at` in `region` to
    /// the bad words (`bad`) or back to the good ones, one word at a time
    /// in the order `first_word_first` says (so every mix appears on the
    /// way).
    #[inline]
    pub fn set(&self, region: &SharedRegion, body_at: usize, bad: bool, first_word_first: bool) {
        let words = if bad { self.bad } else { self.good };
        let w = [
            raw::peer_u32(region, body_at + self.root_at),
            raw::peer_u32(region, body_at + self.root_at + 4),
        ];
        let order = if first_word_first { [0, 1] } else { [1, 0] };
        for i in order {
            w[i].store(words[i], Ordering::Relaxed);
        }
    }
}

/// A blob slot's state word as the pool writes it: the state's `code`
/// (1, 2: held by side A, B; 3, 4: in flight to side A, B) at
/// `generation`.
pub fn slot_word(generation: u32, code: u64) -> u64 {
    (u64::from(generation) << 32) | code
}

/// Sends a 64-byte blob of `fill` bytes from `pool` and finds its slot's
/// state word: the word of the pool's region that the send changed to
/// "in flight" (`in_flight`: its code, 3 or 4) at the blob's generation.
/// Returns the blob's handle and the word's offset in the region, for a
/// peer that rewrites the slot's state.
pub fn send_and_find_state(
    pool: &Pool<SharedRegion>,
    fill: u8,
    in_flight: u64,
) -> (BlobHandle, usize) {
    let region = pool.region();
    let words = || -> Vec<u64> {
        (0..region.len() / 8)
            .map(|i| raw::peer_u64(region, i * 8).load(Ordering::Acquire))
            .collect()
    };
    let before = words();
    let mut blob = pool.alloc(64).expect("alloc");
    blob.copy_from_slice(&[fill; 64]);
    let h = blob.send().expect("send");
    let after = words();
    let state_at = (0..after.len())
        .find(|&i| after[i] != before[i] && after[i] == slot_word(h.generation, in_flight))
        .expect("the slot's state word")
        * 8;
    (h, state_at)
}

/// The name of an abstract socket (the hostile tests use no others).
#[allow(dead_code)] // not every test binary names a socket this way
pub fn abstract_name(s: &isocall::SocketName) -> String {
    match s {
        isocall::SocketName::Abstract(n) => n.clone(),
        other => panic!("abstract sockets only, not {other}"),
    }
}
