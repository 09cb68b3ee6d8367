//! Admission for judge calls: a rate limit (governor), a cap on calls in flight and
//! a spend budget per rolling window (an hour by default), in buckets of 1/60th of
//! the window as for shadow calls ([`SpendWindow`]).
//!
//! Unlike the sidecar's admission, nothing here sheds: a judge call that may not
//! start yet *waits*, and while the budget is spent the worker pauses consumption
//! (see [`JudgeLimits::exhausted`]). A pair is never skipped for lack of budget.
//! Calls already admitted may overshoot the budget by what they cost.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::LimitsConfig;
use crate::sidecar::admission::SpendWindow;

pub struct JudgeLimits {
    rate: Option<DefaultDirectRateLimiter>,
    concurrency: Arc<Semaphore>,
    budget_usd: Option<f64>,
    spend: Mutex<SpendWindow>,
    started: Instant,
    bucket: Duration,
}

impl JudgeLimits {
    pub fn new(config: &LimitsConfig) -> Self {
        Self {
            rate: config.max_rps.and_then(NonZeroU32::new).map(|n| RateLimiter::direct(Quota::per_second(n))),
            concurrency: Arc::new(Semaphore::new(config.max_concurrency as usize)),
            budget_usd: config.budget_usd_per_hour,
            spend: Mutex::new(SpendWindow::default()),
            started: Instant::now(),
            bucket: config.budget_window / 60,
        }
    }

    fn bucket_now(&self) -> u64 {
        (self.started.elapsed().as_nanos() / self.bucket.as_nanos().max(1)) as u64
    }

    /// Spend in the current window, in USD.
    pub fn spent(&self) -> f64 {
        self.spend.lock().expect("spend lock").total(self.bucket_now())
    }

    /// True while the budget for the current window is spent: stop reading pairs.
    pub fn exhausted(&self) -> bool {
        self.budget_usd.is_some_and(|b| self.spent() >= b)
    }

    /// Waits until a judge call may start: budget left, a concurrency slot, a rate
    /// token. The slot is held until the returned permit drops.
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        loop {
            while self.exhausted() {
                tokio::time::sleep(self.bucket.min(Duration::from_secs(1))).await;
            }
            let permit = self.concurrency.clone().acquire_owned().await.expect("the semaphore is never closed");
            if let Some(rate) = &self.rate {
                rate.until_ready().await;
            }
            if !self.exhausted() {
                return permit;
            }
        }
    }

    pub fn charge(&self, usd: f64) {
        if usd > 0.0 {
            self.spend.lock().expect("spend lock").add(usd, self.bucket_now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(budget: Option<f64>, window: Duration, conc: u32) -> JudgeLimits {
        JudgeLimits::new(&LimitsConfig { max_rps: None, max_concurrency: conc, budget_usd_per_hour: budget, budget_window: window })
    }

    #[tokio::test]
    async fn spent_budget_makes_calls_wait_until_the_window_moves_on() {
        // A 600 ms window: buckets of 10 ms, so the charge leaves it after ~600 ms.
        let l = limits(Some(1.0), Duration::from_millis(600), 4);
        drop(l.acquire().await);
        l.charge(1.5);
        assert!(l.exhausted());
        let started = Instant::now();
        drop(l.acquire().await);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(550) && waited <= Duration::from_secs(3), "{waited:?}");
        assert!(!l.exhausted());
    }

    #[tokio::test]
    async fn concurrency_cap_makes_calls_wait_not_fail() {
        let l = Arc::new(limits(None, Duration::from_secs(3600), 1));
        let first = l.acquire().await;
        let l2 = l.clone();
        let second = tokio::spawn(async move { drop(l2.acquire().await) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "the second call waits for the slot");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap();
        assert!(!l.exhausted(), "no budget: never exhausted");
    }
}
