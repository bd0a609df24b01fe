//! Admission before cost: the counts a server keeps of its connections and
//! handshakes, in all and per user id, checked right after `accept` and
//! before a thread, a segment or a mapping is spent on a client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::rpc::error::Refusal;

use super::builder::Limits;

/// Whom the per-peer caps count a connection against: a user id (shared
/// memory, Unix sockets), or an IP address (TCP, where there is no uid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Uid(u32),
    Ip(std::net::IpAddr),
}

#[derive(Default)]
struct Counts {
    /// Connections open, handshakes under way included.
    open: usize,
    handshakes: usize,
    /// Per uid or address: (open, handshakes).
    per_uid: HashMap<Key, (usize, usize)>,
}

/// The counts, and the limits they are held to.
pub(crate) struct Admission {
    counts: Arc<Mutex<Counts>>,
    max_open: usize,
    max_open_per_uid: usize,
    max_handshakes: usize,
    max_handshakes_per_uid: usize,
}

/// One admitted connection: counted as open (and, until
/// [`handshaken`](Ticket::handshaken), as a handshake) until dropped.
pub(crate) struct Ticket {
    counts: Arc<Mutex<Counts>>,
    uid: Key,
    handshaking: bool,
}

fn lock(m: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Admission {
    pub(crate) fn new(l: &Limits) -> Admission {
        Admission {
            counts: Arc::default(),
            max_open: l.max_connections,
            max_open_per_uid: l.max_connections_per_uid,
            max_handshakes: l.max_handshakes,
            max_handshakes_per_uid: l.max_handshakes_per_uid,
        }
    }

    /// Admits a connection from `uid`, or says which limit refuses it.
    pub(crate) fn admit(&self, uid: Key) -> Result<Ticket, Refusal> {
        let mut c = lock(&self.counts);
        let (open_uid, hs_uid) = c.per_uid.get(&uid).copied().unwrap_or((0, 0));
        if c.open >= self.max_open {
            return Err(Refusal::TooManyConnections {
                limit: self.max_open as u32,
            });
        }
        if open_uid >= self.max_open_per_uid {
            let limit = self.max_open_per_uid as u32;
            return Err(match uid {
                Key::Uid(uid) => Refusal::TooManyForUid { uid, limit },
                Key::Ip(_) => Refusal::TooManyForAddress { limit },
            });
        }
        if c.handshakes >= self.max_handshakes {
            return Err(Refusal::Busy {
                limit: self.max_handshakes as u32,
            });
        }
        if hs_uid >= self.max_handshakes_per_uid {
            return Err(Refusal::Busy {
                limit: self.max_handshakes_per_uid as u32,
            });
        }
        c.open += 1;
        c.handshakes += 1;
        c.per_uid.insert(uid, (open_uid + 1, hs_uid + 1));
        Ok(Ticket {
            counts: self.counts.clone(),
            uid,
            handshaking: true,
        })
    }

    /// Connections open now (handshakes included).
    pub(crate) fn open(&self) -> usize {
        lock(&self.counts).open
    }
}

impl Ticket {
    /// The handshake is over: the connection counts as open only.
    pub(crate) fn handshaken(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            let mut c = lock(&self.counts);
            c.handshakes -= 1;
            if let Some(e) = c.per_uid.get_mut(&self.uid) {
                e.1 -= 1;
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        c.open -= 1;
        if self.handshaking {
            c.handshakes -= 1;
        }
        let gone = match c.per_uid.get_mut(&self.uid) {
            Some(e) => {
                e.0 -= 1;
                if self.handshaking {
                    e.1 -= 1;
                }
                *e == (0, 0)
            }
            None => false,
        };
        if gone {
            c.per_uid.remove(&self.uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 4,
            max_connections_per_uid: 3,
            max_handshakes: 3,
            max_handshakes_per_uid: 2,
            ..Limits::default()
        }
    }

    #[test]
    fn each_limit_refuses_with_its_name_and_tickets_give_back() {
        let a = Admission::new(&limits());
        let mut t1 = a.admit(Key::Uid(1)).unwrap();
        let t2 = a.admit(Key::Uid(1)).unwrap();
        assert_eq!(a.admit(Key::Uid(1)).err(), Some(Refusal::Busy { limit: 2 }));
        t1.handshaken();
        let mut t3 = a.admit(Key::Uid(1)).unwrap();
        t3.handshaken();
        assert_eq!(
            a.admit(Key::Uid(1)).err(),
            Some(Refusal::TooManyForUid { uid: 1, limit: 3 })
        );
        let t4 = a.admit(Key::Uid(2)).unwrap();
        assert_eq!(
            a.admit(Key::Uid(3)).err(),
            Some(Refusal::TooManyConnections { limit: 4 })
        );
        drop((t1, t2, t3, t4));
        assert_eq!(a.open(), 0);
        assert!(lock(&a.counts).per_uid.is_empty());
    }
}
