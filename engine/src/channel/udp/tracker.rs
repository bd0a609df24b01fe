//! What a lossy subscriber makes of sequence numbers: which datagrams to
//! deliver, and how many were lost, reordered or duplicated.
//!
//! The tracker keeps the highest sequence number seen (`next` is one
//! past it) and, for the last [`WINDOW`] numbers below `next`, whether
//! each arrived. A number at or above `next` is delivered; the numbers it
//! skipped are counted lost. A number below `next` but inside the window
//! that has not arrived is delivered late: counted reordered, and taken
//! off the lost count (it had been counted lost when it was skipped); one
//! that has arrived is a duplicate and dropped. A number older than the
//! window cannot be told from a duplicate: it is dropped as late and stays
//! counted lost.
//!
//! A datagram of another stream (a publisher that restarted, drawing a new
//! stream number) starts the count afresh from its sequence number; the
//! numbers before it are not counted lost.

use super::stats::UdpStats;

/// Sequence numbers remembered below the highest seen.
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

/// What to do with a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Deliver it; `reordered` if it came after a later one.
    Deliver { reordered: bool },
    /// Drop it: it came before.
    Duplicate,
    /// Drop it: too old to tell.
    Late,
}

/// The sequence state of one stream.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// The stream followed, once a datagram came.
    stream: Option<u32>,
    /// The first sequence number of the stream seen: numbers below it
    /// were never counted lost.
    base: u64,
    /// One past the highest sequence number seen.
    next: u64,
    /// Bit `seq % WINDOW`: whether `seq` arrived, for `seq` in
    /// `next - WINDOW .. next`.
    seen: [u64; WORDS],
}

fn bit(seq: u64) -> (usize, u64) {
    let i = seq % WINDOW;
    ((i / 64) as usize, 1 << (i % 64))
}

impl Tracker {
    /// Takes datagram `seq` of `stream` (`seq < u64::MAX`, checked by the
    /// header's decoder), counting into `st`.
    pub(crate) fn take(&mut self, stream: u32, seq: u64, st: &mut UdpStats) -> Verdict {
        debug_assert!(seq < u64::MAX);
        if self.stream != Some(stream) {
            if self.stream.is_some() {
                st.restarts += 1;
            }
            *self = Tracker {
                stream: Some(stream),
                base: seq,
                next: seq,
                seen: [0; WORDS],
            };
        }
        if seq >= self.next {
            let skipped = seq - self.next;
            st.lost = st.lost.saturating_add(skipped);
            if skipped >= WINDOW {
                self.seen = [0; WORDS];
            } else {
                for s in self.next..seq {
                    let (w, b) = bit(s);
                    self.seen[w] &= !b;
                }
            }
            let (w, b) = bit(seq);
            self.seen[w] |= b;
            self.next = seq + 1;
            return Verdict::Deliver { reordered: false };
        }
        if self.next - seq > WINDOW {
            st.late += 1;
            return Verdict::Late;
        }
        let (w, b) = bit(seq);
        if self.seen[w] & b != 0 {
            st.duplicates += 1;
            return Verdict::Duplicate;
        }
        self.seen[w] |= b;
        st.reordered += 1;
        if seq >= self.base {
            st.lost = st.lost.saturating_sub(1);
        }
        Verdict::Deliver { reordered: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u64]) -> (UdpStats, Vec<Verdict>) {
        let mut t = Tracker::default();
        let mut st = UdpStats::default();
        let v = seqs.iter().map(|&s| t.take(1, s, &mut st)).collect();
        (st, v)
    }

    #[test]
    fn gaps_are_lost_until_they_arrive_late() {
        let (st, v) = run(&[0, 1, 3, 2, 6, 4]);
        assert_eq!((st.lost, st.reordered, st.duplicates), (1, 2, 0));
        assert_eq!(v[3], Verdict::Deliver { reordered: true });
        let (st, v) = run(&[0, 1, 1, 0, 2]);
        assert_eq!((st.lost, st.reordered, st.duplicates), (0, 0, 2));
        assert_eq!(v[2], Verdict::Duplicate);
    }

    #[test]
    fn a_swap_at_the_start_is_reordered_and_not_lost() {
        let (st, _) = run(&[5, 4, 6]);
        assert_eq!((st.lost, st.reordered), (0, 1));
    }

    #[test]
    fn too_old_is_late_and_a_new_stream_starts_afresh() {
        let mut t = Tracker::default();
        let mut st = UdpStats::default();
        t.take(1, 0, &mut st);
        t.take(1, WINDOW + 10, &mut st);
        assert_eq!(st.lost, WINDOW + 9);
        assert_eq!(t.take(1, 5, &mut st), Verdict::Late);
        assert_eq!(t.take(1, 20, &mut st), Verdict::Deliver { reordered: true });
        assert_eq!(st.lost, WINDOW + 8);
        assert_eq!(t.take(2, 0, &mut st), Verdict::Deliver { reordered: false });
        assert_eq!(st.restarts, 1);
        assert_eq!(
            t.take(1, u64::MAX - 1, &mut st),
            Verdict::Deliver { reordered: false }
        );
        assert_eq!((st.late, st.restarts), (1, 2));
    }
}
