//! Admission for judge calls: a rate limit (governor), a cap on calls in flight and
//! a spend budget per rolling window (an hour by default), in buckets of 1/60th of
//! the window as for shadow calls ([`Spend`](crate::sidecar::admission::Spend)).
//!
//! Calls in flight count against the budget as for shadow calls (the same
//! [`Spend`] reservation): a call reserves its estimated cost when admitted
//! ([`estimate_for`]: its request body's size and `max_tokens`, at the judge's prices) and settles it
//! with the actual cost on the answer. So the window's spend passes the budget only
//! by what calls cost beyond their estimates.
//!
//! Unlike the sidecar's admission, nothing here sheds: a judge call that may not
//! start yet *waits*, and while the budget is spent the worker pauses consumption
//! (see [`JudgeLimits::exhausted`]). A pair is never skipped for lack of budget.
//!
//! [`estimate_for`]: crate::sidecar::admission::estimate_for

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::LimitsConfig;
use crate::sidecar::admission::{Spend, Ticket};

pub struct JudgeLimits {
    rate: Option<DefaultDirectRateLimiter>,
    concurrency: Arc<Semaphore>,
    budget_usd: Option<f64>,
    spend: Arc<Mutex<Spend>>,
    started: Instant,
    bucket: Duration,
}

impl JudgeLimits {
    pub fn new(config: &LimitsConfig) -> Self {
        Self {
            rate: config.max_rps.and_then(NonZeroU32::new).map(|n| RateLimiter::direct(Quota::per_second(n))),
            concurrency: Arc::new(Semaphore::new(config.max_concurrency as usize)),
            budget_usd: config.budget_usd_per_hour,
            spend: Arc::new(Mutex::new(Spend::default())),
            started: Instant::now(),
            bucket: config.budget_window / 60,
        }
    }

    fn bucket_now(&self) -> u64 {
        (self.started.elapsed().as_nanos() / self.bucket.as_nanos().max(1)) as u64
    }

    /// Spend in the current window plus the reservations of calls in flight, in USD.
    pub fn spent(&self) -> f64 {
        self.spend.lock().expect("spend lock").committed(self.bucket_now())
    }

    /// True while the budget for the current window is spent or reserved: stop
    /// reading pairs.
    pub fn exhausted(&self) -> bool {
        self.budget_usd.is_some_and(|b| self.spent() >= b)
    }

    /// Waits until a judge call estimated to cost `estimate` USD may start: its
    /// estimate reserved within the budget, a concurrency slot, a rate token. An
    /// estimate above the whole budget reserves the budget (it goes alone).
    pub async fn acquire(&self, estimate: f64) -> Admitted {
        let estimate = self.budget_usd.map_or(0.0, |b| estimate.min(b));
        let wait = self.bucket.min(Duration::from_secs(1));
        loop {
            while self.budget_usd.is_some_and(|b| self.spent() + estimate > b) {
                tokio::time::sleep(wait).await;
            }
            let permit = self.concurrency.clone().acquire_owned().await.expect("the semaphore is never closed");
            if let Some(rate) = &self.rate {
                rate.until_ready().await;
            }
            let ticket = match self.budget_usd {
                None => Some(Spend::unreserved(&self.spend)),
                Some(b) => Spend::reserve(&self.spend, b, self.bucket_now(), estimate),
            };
            if let Some(ticket) = ticket {
                return Admitted { _permit: permit, ticket, bucket: self.bucket, started: self.started };
            }
        }
    }

    /// Charges a call made outside admission (the circuit breaker's probe).
    pub fn charge(&self, usd: f64) {
        Spend::unreserved(&self.spend).settle(usd, self.bucket_now());
    }
}

/// An admitted judge call: holds its concurrency slot and its reservation.
/// Dropped without [`settle`](Self::settle), the reservation is released.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    ticket: Ticket,
    bucket: Duration,
    started: Instant,
}

impl Admitted {
    /// The call cost `usd`: it replaces the reservation in the window, then the slot frees.
    pub fn settle(self, usd: f64) {
        let bucket = (self.started.elapsed().as_nanos() / self.bucket.as_nanos().max(1)) as u64;
        self.ticket.settle(usd, bucket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(budget: Option<f64>, window: Duration, conc: u32) -> JudgeLimits {
        JudgeLimits::new(&LimitsConfig { max_rps: None, max_concurrency: conc, budget_usd_per_hour: budget, budget_window: window, ..LimitsConfig::default() })
    }

    #[tokio::test]
    async fn spent_budget_makes_calls_wait_until_the_window_moves_on() {
        // A 600 ms window: buckets of 10 ms, so the charge leaves it after ~600 ms.
        let l = limits(Some(1.0), Duration::from_millis(600), 4);
        l.acquire(0.1).await.settle(1.5);
        assert!(l.exhausted());
        let started = Instant::now();
        drop(l.acquire(0.1).await);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(550) && waited <= Duration::from_secs(3), "{waited:?}");
        assert!(!l.exhausted());
    }

    #[tokio::test]
    async fn concurrency_cap_makes_calls_wait_not_fail() {
        let l = Arc::new(limits(None, Duration::from_secs(3600), 1));
        let first = l.acquire(0.0).await;
        let l2 = l.clone();
        let second = tokio::spawn(async move { drop(l2.acquire(0.0).await) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "the second call waits for the slot");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap();
        assert!(!l.exhausted(), "no budget: never exhausted");
    }

    #[tokio::test]
    async fn calls_in_flight_reserve_their_estimate_and_settle_the_actual_cost() {
        let l = Arc::new(limits(Some(1.0), Duration::from_secs(3600), 8));
        let a = l.acquire(0.4).await;
        let b = l.acquire(0.4).await;
        assert!((l.spent() - 0.8).abs() < 1e-12, "reserved, not yet spent");
        let l2 = l.clone();
        let third = tokio::spawn(async move { l2.acquire(0.4).await.settle(0.4) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished(), "0.8 reserved + 0.4 would pass the budget: it waits");
        a.settle(0.1);
        tokio::time::timeout(Duration::from_secs(5), third).await.unwrap().unwrap();
        drop(b); // a call that ends without an answer releases its reservation
        assert!((l.spent() - 0.5).abs() < 1e-12, "{}", l.spent());
        // An estimate above the whole budget still goes, alone.
        let l = limits(Some(1.0), Duration::from_secs(3600), 8);
        l.acquire(5.0).await.settle(2.0);
        assert!(l.exhausted());
    }
}
