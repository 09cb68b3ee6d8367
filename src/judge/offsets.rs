//! Which offsets may be committed: per partition, the offset after the longest
//! prefix of read records whose grades Kafka has acknowledged. A record read later
//! but acknowledged earlier waits for the ones before it, so a crash re-reads (and
//! re-grades) at most the records that were in flight, and never skips one.
//!
//! Partitions carry an epoch, bumped on every assignment: completions of work
//! started before a revocation are ignored (the partition's new owner re-reads it).
//!
//! Partitions are found by topic name and number without allocating: the worker
//! looks one up several times for every record it reads.
//!
//! Pure: the worker calls it and does the Kafka commits.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

#[derive(Debug, Default)]
struct Partition {
    epoch: u64,
    /// Read and not yet acknowledged.
    pending: BTreeSet<i64>,
    /// Acknowledged and not yet committed.
    done: BTreeSet<i64>,
    /// Highest offset read.
    highest: Option<i64>,
    /// First offset read in this assignment: committing it would say nothing new.
    first: Option<i64>,
    /// The last offset Kafka stored for this partition (the next offset to read).
    committed: Option<i64>,
}

impl Partition {
    /// The next offset to read once everything acknowledged is committed.
    fn committable(&self) -> Option<i64> {
        match self.pending.first() {
            Some(first) => Some(*first),
            None => self.highest.map(|h| h + 1),
        }
        .filter(|c| self.committed.or(self.first).is_some_and(|done| *c > done))
    }
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// By topic, then partition number.
    partitions: HashMap<Arc<str>, HashMap<i32, Partition>>,
    next_epoch: u64,
}

/// A read record's place: where, and in which assignment epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Shared with the tracker's entry for the topic (a ticket allocates nothing).
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub epoch: u64,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The partition is (re)assigned to this worker: a new epoch, nothing pending.
    pub fn assign(&mut self, topic: &str, partition: i32) {
        self.next_epoch += 1;
        let fresh = Partition { epoch: self.next_epoch, ..Default::default() };
        match self.partitions.get_mut(topic) {
            Some(partitions) => {
                partitions.insert(partition, fresh);
            }
            None => {
                self.partitions.insert(Arc::from(topic), HashMap::from([(partition, fresh)]));
            }
        }
    }

    /// The partition was taken away: forget it (its pending work will be redone elsewhere).
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        if let Some(partitions) = self.partitions.get_mut(topic) {
            partitions.remove(&partition);
            if partitions.is_empty() {
                self.partitions.remove(topic);
            }
        }
    }

    fn partition(&self, topic: &str, partition: i32) -> Option<&Partition> {
        self.partitions.get(topic)?.get(&partition)
    }

    fn partition_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Partition> {
        self.partitions.get_mut(topic)?.get_mut(&partition)
    }

    /// Records that `offset` was read; `None` when the partition is not assigned.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) -> Option<Ticket> {
        let name = self.partitions.get_key_value(topic)?.0.clone();
        let p = self.partition_mut(topic, partition)?;
        p.pending.insert(offset);
        p.first.get_or_insert(offset);
        p.highest = Some(p.highest.map_or(offset, |h| h.max(offset)));
        Some(Ticket { topic: name, partition, offset, epoch: p.epoch })
    }

    /// Records that the grade of `ticket` was acknowledged (or that the record needs
    /// none). False when the ticket is from an older assignment and was ignored.
    pub fn complete(&mut self, ticket: &Ticket) -> bool {
        match self.partition_mut(&ticket.topic, ticket.partition) {
            Some(p) if p.epoch == ticket.epoch => p.pending.remove(&ticket.offset) && p.done.insert(ticket.offset),
            _ => false,
        }
    }

    /// True when `ticket` still belongs to the current assignment of its partition.
    pub fn is_current(&self, ticket: &Ticket) -> bool {
        self.partition(&ticket.topic, ticket.partition).is_some_and(|p| p.epoch == ticket.epoch)
    }

    fn all(&self) -> impl Iterator<Item = (&Arc<str>, i32, &Partition)> {
        self.partitions.iter().flat_map(|(t, ps)| ps.iter().map(move |(p, part)| (t, *p, part)))
    }

    /// Offsets to commit now (topic, partition, next offset to read): only those
    /// that advanced since the last [`mark_committed`](Self::mark_committed).
    pub fn to_commit(&self) -> Vec<(String, i32, i64)> {
        let mut out: Vec<_> = self.all().filter_map(|(t, p, part)| part.committable().map(|c| (t.to_string(), p, c))).collect();
        out.sort();
        out
    }

    /// Kafka stored these offsets: what is below them no longer counts as uncommitted.
    pub fn mark_committed(&mut self, offsets: &[(String, i32, i64)]) {
        for (topic, partition, offset) in offsets {
            if let Some(p) = self.partition_mut(topic, *partition) {
                if p.committed.is_none_or(|c| *offset > c) {
                    p.committed = Some(*offset);
                    p.done = p.done.split_off(offset);
                }
            }
        }
    }

    /// Offsets to commit for one partition before it is revoked (without marking).
    pub fn committable(&self, topic: &str, partition: i32) -> Option<i64> {
        self.partition(topic, partition).and_then(Partition::committable)
    }

    /// Records read and not yet acknowledged, over all partitions.
    pub fn pending(&self) -> usize {
        self.all().map(|(_, _, p)| p.pending.len()).sum()
    }

    /// Records read whose offsets are not committed yet: what a crash now would make
    /// this worker's successor read (and grade) again.
    pub fn uncommitted(&self) -> usize {
        self.all().map(|(_, _, p)| p.pending.len() + p.done.len()).sum()
    }

    /// Acknowledged records waiting for a commit.
    pub fn done(&self) -> usize {
        self.all().map(|(_, _, p)| p.done.len()).sum()
    }

    /// Partitions assigned to this worker.
    pub fn assigned(&self) -> usize {
        self.partitions.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;

    #[test]
    fn commits_only_the_contiguous_acknowledged_prefix() {
        let mut t = OffsetTracker::new();
        t.assign("p", 0);
        let tickets: Vec<_> = (10..15).map(|o| t.begin("p", 0, o).unwrap()).collect();
        assert!(t.to_commit().is_empty(), "nothing acknowledged yet");
        t.complete(&tickets[1]);
        t.complete(&tickets[2]);
        assert!(t.to_commit().is_empty(), "10 is still in flight");
        t.complete(&tickets[0]);
        assert_eq!(t.uncommitted(), 5);
        let c = t.to_commit();
        assert_eq!(c, vec![("p".into(), 0, 13)]);
        assert_eq!(t.to_commit(), c, "not stored yet: offered again");
        t.mark_committed(&c);
        assert!(t.to_commit().is_empty(), "no advance, no commit");
        assert_eq!(t.uncommitted(), 2, "10..=12 are committed");
        t.complete(&tickets[4]);
        t.complete(&tickets[3]);
        let c = t.to_commit();
        assert_eq!(c, vec![("p".into(), 0, 15)]);
        t.mark_committed(&c);
        assert_eq!((t.pending(), t.uncommitted()), (0, 0));
    }

    #[test]
    fn revoked_work_is_ignored_after_reassignment() {
        let mut t = OffsetTracker::new();
        t.assign("p", 1);
        let old = t.begin("p", 1, 5).unwrap();
        t.revoke("p", 1);
        assert!(t.begin("p", 1, 6).is_none(), "not assigned");
        t.assign("p", 1);
        assert!(!t.is_current(&old));
        assert!(!t.complete(&old), "a completion from the old assignment is ignored");
        let new = t.begin("p", 1, 5).unwrap();
        assert!(t.is_current(&new));
        assert!(t.complete(&new));
        assert_eq!(t.to_commit(), vec![("p".into(), 1, 6)]);
    }

    #[test]
    fn partitions_of_two_topics_are_kept_apart_and_a_topic_goes_with_its_last_partition() {
        let mut t = OffsetTracker::new();
        t.assign("a", 0);
        t.assign("b", 0);
        t.assign("b", 1);
        let a0 = t.begin("a", 0, 7).unwrap();
        let b0 = t.begin("b", 0, 7).unwrap();
        let b1 = t.begin("b", 1, 3).unwrap();
        assert_eq!((t.assigned(), t.pending()), (3, 3));
        assert!(t.complete(&b0));
        assert!(!t.complete(&b0), "completed once");
        assert_eq!(t.to_commit(), vec![("b".into(), 0, 8)], "only b/0 advanced; a/0 at offset 7 is still pending");
        t.revoke("a", 0);
        assert!(t.begin("a", 0, 8).is_none() && !t.is_current(&a0) && !t.complete(&a0));
        assert_eq!(t.assigned(), 2);
        t.revoke("b", 0);
        t.revoke("b", 1);
        assert_eq!((t.assigned(), t.uncommitted()), (0, 0));
        assert!(!t.is_current(&b1));
        t.assign("b", 1);
        assert!(!t.is_current(&b1), "a new epoch for the reassigned partition");
        assert_eq!(&*t.begin("b", 1, 3).unwrap().topic, "b");
    }

    /// Model check: random interleavings of reads and acknowledgements; the committed
    /// offset is always exactly one past the longest acknowledged prefix, and never
    /// goes backwards.
    #[test]
    fn random_interleavings_match_a_trivial_model() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..200 {
            let mut t = OffsetTracker::new();
            t.assign("p", 0);
            let n = 50;
            let mut tickets: Vec<_> = (0..n).map(|o| t.begin("p", 0, o).unwrap()).collect();
            tickets.shuffle(&mut rng);
            let mut acked = vec![false; n as usize];
            let mut last = 0;
            for tk in tickets {
                acked[tk.offset as usize] = true;
                t.complete(&tk);
                let model = acked.iter().take_while(|a| **a).count() as i64;
                let offsets = t.to_commit();
                for (_, _, c) in &offsets {
                    assert_eq!(*c, model);
                    assert!(*c > last);
                    last = *c;
                }
                t.mark_committed(&offsets);
                assert_eq!(t.uncommitted() as i64, n - last);
                assert_eq!(t.committable("p", 0).unwrap_or(last), model.max(last));
            }
            assert_eq!(last, n);
        }
    }
}
