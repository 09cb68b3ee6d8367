//! The recently graded pair ids, so a pair the sidecar published twice (delivery is
//! at least once) is graded once. Bounded: the oldest id is forgotten first, so
//! memory stays at `capacity` ids whatever the traffic.
//!
//! An id is remembered as the first 128 bits of its sha256 (16 bytes, however long
//! the id), not as a string kept twice: at the default 100,000 ids that is about
//! 4 MB instead of about 16. Two ids share a digest with probability ~2^-128, so a
//! pair is never skipped for an id it does not have.
//!
//! Pure. Not a guarantee across restarts or workers: it only catches duplicates that
//! arrive within the last `capacity` pairs this worker saw.

use std::collections::{HashSet, VecDeque};

use sha2::{Digest, Sha256};

pub struct RecentIds {
    capacity: usize,
    set: HashSet<u128>,
    order: VecDeque<u128>,
}

/// The id's stand-in: the first 16 bytes of its sha256.
fn digest(id: &str) -> u128 {
    let h = Sha256::digest(id.as_bytes());
    u128::from_be_bytes(h[..16].try_into().expect("a sha256 has 32 bytes"))
}

impl RecentIds {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), set: HashSet::new(), order: VecDeque::new() }
    }

    /// Remembers `id`; false when it was already remembered (a duplicate).
    pub fn insert(&mut self, id: &str) -> bool {
        let d = digest(id);
        if self.set.contains(&d) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(d);
        self.order.push_back(d);
        true
    }

    /// True when `id` is remembered.
    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(&digest(id))
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

    #[test]
    fn ten_thousand_distinct_ids_are_all_new_and_all_remembered() {
        // Seeded ids of the sidecar's shape (UUIDs): no two may be taken for each other.
        let ids: Vec<String> = (0..10_000u128).map(|i| uuid::Uuid::from_u128(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)).to_string()).collect();
        let mut r = RecentIds::new(ids.len());
        assert!(ids.iter().all(|id| r.insert(id)), "a distinct id was taken for a duplicate");
        assert!(ids.iter().all(|id| r.contains(id) && !r.insert(id)));
        assert!(!r.contains("not-an-id") && !r.contains(""));
    }
}
