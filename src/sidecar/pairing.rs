//! The join table: holds a sampled request until both halves of its pair have
//! arrived, or until the pairing timeout publishes it with the missing half marked.
//!
//! Pure and bounded: the caller passes the clock reading, and the table never
//! holds more than `max_pending` pairs. It never does I/O and never blocks.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::record::{Half, PairMeta};

/// A pair ready to be turned into a record.
#[derive(Debug, Clone)]
pub struct Ready {
    pub meta: PairMeta,
    pub primary: Option<Half>,
    pub counterfactual: Option<Half>,
    /// Why a half is missing; empty when both are present.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    #[error("pairing table is full")]
    Full,
    #[error("a pair for this request_id is already pending")]
    Duplicate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CompleteError {
    #[error("no pair is pending for this request_id (not sampled, unknown, or expired)")]
    NotFound,
    #[error("the primary answer for this request_id was already given")]
    AlreadyGiven,
}

struct Pending {
    meta: PairMeta,
    primary: Option<Half>,
    counterfactual: Option<Half>,
    deadline: Instant,
}

pub struct Table {
    pending: HashMap<String, Pending>,
    /// (deadline, request_id), for expiry in deadline order.
    expiry: BTreeSet<(Instant, String)>,
    max_pending: usize,
    timeout: Duration,
}

impl Table {
    pub fn new(max_pending: usize, timeout: Duration) -> Self {
        Self { pending: HashMap::new(), expiry: BTreeSet::new(), max_pending, timeout }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn set_limits(&mut self, max_pending: usize, timeout: Duration) {
        self.max_pending = max_pending;
        self.timeout = timeout;
    }

    /// Registers a sampled request, with the primary answer when the router already has it.
    pub fn insert(&mut self, meta: PairMeta, primary: Option<Half>, now: Instant) -> Result<(), InsertError> {
        if self.pending.contains_key(&meta.request_id) {
            return Err(InsertError::Duplicate);
        }
        if self.pending.len() >= self.max_pending {
            return Err(InsertError::Full);
        }
        let deadline = now + self.timeout;
        self.expiry.insert((deadline, meta.request_id.clone()));
        self.pending.insert(meta.request_id.clone(), Pending { meta, primary, counterfactual: None, deadline });
        Ok(())
    }

    /// Forgets a request whose shadow call could not be queued.
    pub fn remove(&mut self, request_id: &str) -> Option<PairMeta> {
        let p = self.pending.remove(request_id)?;
        self.expiry.remove(&(p.deadline, request_id.to_string()));
        Some(p.meta)
    }

    /// The primary answer arrived (two-phase). Returns the pair if it is now whole.
    pub fn complete(&mut self, request_id: &str, primary: Half) -> Result<(String, Option<Ready>), CompleteError> {
        let p = self.pending.get_mut(request_id).ok_or(CompleteError::NotFound)?;
        if p.primary.is_some() {
            return Err(CompleteError::AlreadyGiven);
        }
        p.primary = Some(primary);
        let pair_id = p.meta.pair_id.clone();
        Ok((pair_id, self.take_if_whole(request_id)))
    }

    /// The shadow answer arrived. Returns the pair if it is now whole; `None` also
    /// when the pair already expired (the late answer is dropped: the caller counts it).
    pub fn counterfactual(&mut self, request_id: &str, half: Half) -> Option<Ready> {
        let p = self.pending.get_mut(request_id)?;
        p.counterfactual = Some(half);
        self.take_if_whole(request_id)
    }

    pub fn contains(&self, request_id: &str) -> bool {
        self.pending.contains_key(request_id)
    }

    fn take_if_whole(&mut self, request_id: &str) -> Option<Ready> {
        let p = self.pending.get(request_id)?;
        if p.primary.is_none() || p.counterfactual.is_none() {
            return None;
        }
        let p = self.pending.remove(request_id)?;
        self.expiry.remove(&(p.deadline, request_id.to_string()));
        Some(Ready { meta: p.meta, primary: p.primary, counterfactual: p.counterfactual, reason: String::new() })
    }

    /// Pairs whose deadline has passed, with the missing half named.
    pub fn expire(&mut self, now: Instant) -> Vec<Ready> {
        let mut out = Vec::new();
        while let Some((deadline, _)) = self.expiry.first() {
            if *deadline > now {
                break;
            }
            let (_, id) = self.expiry.pop_first().expect("checked non-empty");
            if let Some(p) = self.pending.remove(&id) {
                let reason = format!("{} not reported within {:?}", missing(&p), self.timeout);
                out.push(Ready { meta: p.meta, primary: p.primary, counterfactual: p.counterfactual, reason });
            }
        }
        out
    }

    /// Everything still pending, for shutdown: published with the missing half named.
    pub fn drain(&mut self, reason: &str) -> Vec<Ready> {
        self.expiry.clear();
        self.pending
            .drain()
            .map(|(_, p)| {
                let reason = format!("{} missing: {reason}", missing(&p));
                Ready { meta: p.meta, primary: p.primary, counterfactual: p.counterfactual, reason }
            })
            .collect()
    }
}

fn missing(p: &Pending) -> &'static str {
    match (&p.primary, &p.counterfactual) {
        (None, None) => "primary and counterfactual",
        (None, Some(_)) => "primary",
        _ => "counterfactual",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{RouteInfo, Source};
    use bytes::Bytes;
    use std::collections::HashMap;
    use std::time::SystemTime;

    fn meta(id: &str) -> PairMeta {
        let route = RouteInfo { name: "r".into(), model: "m".into(), input_usd_per_mtok: 0.0, output_usd_per_mtok: 0.0 };
        PairMeta {
            pair_id: format!("pair-{id}"),
            request_id: id.into(),
            sampling_key: id.into(),
            received_at: SystemTime::now(),
            slice: String::new(),
            labels: HashMap::new(),
            rate: 1.0,
            route_taken: route.clone(),
            route_not_taken: route,
            request_body: Bytes::new(),
            traceparent: String::new(),
            kind: crate::proto::v1::PairKind::Pair,
        }
    }

    fn half(source: Source) -> Half {
        Half { body: Bytes::from_static(b"{}"), status_code: 200, latency_ms: 1.0, error: String::new(), source }
    }

    #[test]
    fn one_phase_is_whole_when_the_shadow_answers() {
        let now = Instant::now();
        let mut t = Table::new(10, Duration::from_secs(5));
        t.insert(meta("a"), Some(half(Source::Router)), now).unwrap();
        let ready = t.counterfactual("a", half(Source::Untaken)).expect("whole");
        assert!(ready.primary.is_some() && ready.counterfactual.is_some());
        assert!(t.is_empty());
        assert!(t.expire(now + Duration::from_secs(10)).is_empty(), "a published pair never expires again");
    }

    #[test]
    fn two_phase_joins_in_either_order() {
        let now = Instant::now();
        let mut t = Table::new(10, Duration::from_secs(5));
        t.insert(meta("a"), None, now).unwrap();
        t.insert(meta("b"), None, now).unwrap();
        assert!(t.counterfactual("a", half(Source::Untaken)).is_none());
        let (pair_id, ready) = t.complete("a", half(Source::Router)).unwrap();
        assert_eq!(pair_id, "pair-a");
        assert!(ready.is_some());
        let (_, ready) = t.complete("b", half(Source::Router)).unwrap();
        assert!(ready.is_none(), "shadow for b not back yet");
        assert_eq!(t.complete("b", half(Source::Router)).unwrap_err(), CompleteError::AlreadyGiven);
        assert!(t.counterfactual("b", half(Source::Untaken)).is_some());
        assert_eq!(t.complete("zzz", half(Source::Router)).unwrap_err(), CompleteError::NotFound);
    }

    #[test]
    fn missing_half_is_published_at_the_deadline() {
        let now = Instant::now();
        let mut t = Table::new(10, Duration::from_secs(5));
        t.insert(meta("a"), None, now).unwrap();
        t.insert(meta("b"), None, now + Duration::from_secs(1)).unwrap();
        t.counterfactual("a", half(Source::Untaken));
        assert!(t.expire(now + Duration::from_secs(4)).is_empty());
        let out = t.expire(now + Duration::from_secs(5));
        assert_eq!(out.len(), 1);
        assert!(out[0].primary.is_none());
        assert!(out[0].reason.starts_with("primary not reported within 5s"), "{}", out[0].reason);
        assert_eq!(t.complete("a", half(Source::Router)).unwrap_err(), CompleteError::NotFound, "expired");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn bounded_and_rejects_duplicates() {
        let now = Instant::now();
        let mut t = Table::new(2, Duration::from_secs(5));
        t.insert(meta("a"), None, now).unwrap();
        assert_eq!(t.insert(meta("a"), None, now).unwrap_err(), InsertError::Duplicate);
        t.insert(meta("b"), None, now).unwrap();
        assert_eq!(t.insert(meta("c"), None, now).unwrap_err(), InsertError::Full);
        assert!(t.remove("a").is_some());
        t.insert(meta("c"), None, now).unwrap();
        assert_eq!(t.len(), 2);
        let drained = t.drain("shutdown");
        assert_eq!(drained.len(), 2);
        assert!(drained[0].reason.contains("shutdown"));
        assert!(t.is_empty());
    }
}
