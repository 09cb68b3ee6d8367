//! The recently graded pair ids, so a pair the sidecar published twice (delivery is
//! at least once) is graded once. Bounded: the oldest id is forgotten first, so
//! memory stays at `capacity` ids whatever the traffic.
//!
//! Pure. Not a guarantee across restarts or workers: it only catches duplicates that
//! arrive within the last `capacity` pairs this worker saw.

use std::collections::{HashSet, VecDeque};

pub struct RecentIds {
    capacity: usize,
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentIds {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), set: HashSet::new(), order: VecDeque::new() }
    }

    /// Remembers `id`; false when it was already remembered (a duplicate).
    pub fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }

    /// True when `id` is remembered.
    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_within_capacity_are_caught_and_memory_is_bounded() {
        let mut r = RecentIds::new(3);
        assert!(r.insert("a"));
        assert!(!r.insert("a"));
        for id in ["b", "c", "d"] {
            assert!(r.insert(id));
        }
        assert_eq!(r.len(), 3);
        assert!(r.insert("a"), "`a` was the oldest and was forgotten");
        assert!(!r.insert("d"));
        assert!(r.contains("d") && !r.contains("b"));
    }
}
