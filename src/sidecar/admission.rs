//! Admission control for shadow work, per shadow route: a rate limit (governor),
//! a cap on concurrent calls, and a spend budget per rolling hour.
//!
//! The budget counts calls in flight too: admission reserves the call's estimated
//! cost ([`estimate_cost`]: from the request's size and `max_tokens`, at the route's
//! prices) and sheds when spend plus reservations plus this estimate would pass the
//! budget; the answer settles the reservation with the actual cost. So the hour's
//! spend passes the budget only by what calls cost beyond their estimates.
//!
//! Decisions are made on the request path, so everything here is non-blocking:
//! a check either admits at once or sheds with a reason.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use std::time::Instant;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;

/// Why a sampled request was not shadowed. The string is `MirrorResponse.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    RateLimited,
    ConcurrencyLimited,
    BudgetExhausted,
}

impl Shed {
    pub fn reason(self) -> &'static str {
        match self {
            Shed::RateLimited => "rate_limited",
            Shed::ConcurrencyLimited => "concurrency_limited",
            Shed::BudgetExhausted => "budget_exhausted",
        }
    }
}

/// Spend over a rolling hour, in one-minute buckets. Pure: the caller passes the minute.
#[derive(Debug, Clone)]
pub struct SpendWindow {
    buckets: [f64; 60],
    /// Minute index of the newest bucket written.
    newest: u64,
}

impl Default for SpendWindow {
    fn default() -> Self {
        Self { buckets: [0.0; 60], newest: 0 }
    }
}

impl SpendWindow {
    fn advance(&mut self, minute: u64) {
        if minute <= self.newest {
            return;
        }
        let gap = (minute - self.newest).min(60);
        for i in 1..=gap {
            self.buckets[((self.newest + i) % 60) as usize] = 0.0;
        }
        self.newest = minute;
    }

    pub fn add(&mut self, usd: f64, minute: u64) {
        self.advance(minute);
        self.buckets[(minute % 60) as usize] += usd;
    }

    /// Spend in the 60 minutes ending with `minute`.
    pub fn total(&mut self, minute: u64) -> f64 {
        self.advance(minute);
        self.buckets.iter().sum()
    }
}

/// Output tokens assumed for a request that sets neither `max_completion_tokens`
/// nor `max_tokens`: a long answer, so the estimate errs high.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 1024;

/// What a shadow call is expected to cost, in USD, before it is made: input tokens
/// at most a third of the request's bytes (English runs ~4 characters a token, and
/// JSON framing adds bytes, not tokens), output tokens the request's own cap or
/// [`DEFAULT_OUTPUT_TOKENS`]. Pure.
pub fn estimate_cost(request_body: &[u8], input_usd_per_mtok: f64, output_usd_per_mtok: f64) -> f64 {
    #[derive(Deserialize)]
    struct Caps {
        max_completion_tokens: Option<u64>,
        max_tokens: Option<u64>,
    }
    let caps = serde_json::from_slice::<Caps>(request_body).ok();
    let output = caps.and_then(|c| c.max_completion_tokens.or(c.max_tokens)).unwrap_or(DEFAULT_OUTPUT_TOKENS);
    let input = (request_body.len() as u64).div_ceil(3);
    (input as f64 * input_usd_per_mtok + output as f64 * output_usd_per_mtok) / 1_000_000.0
}

/// A route's spend: finished calls in the rolling window, plus the estimates
/// reserved by calls still in flight.
#[derive(Debug, Clone, Default)]
pub struct Spend {
    window: SpendWindow,
    reserved: f64,
}

/// Limits of one shadow route. Kept across config reloads when unchanged, so a
/// reload does not reset the spend window or in-flight counts.
pub struct RouteLimits {
    rate: Option<(u32, Arc<DefaultDirectRateLimiter>)>,
    concurrency: Option<(u32, Arc<Semaphore>)>,
    budget_usd_per_hour: Option<f64>,
    /// Shared with every ticket in flight and with the limits a reload replaces this
    /// with, so a call settles into the spend the budget is checked against.
    spend: Arc<Mutex<Spend>>,
}

/// Held for the life of a shadow call; releases its concurrency slot on drop, and
/// its cost reservation when dropped without [`Ticket::settle`].
pub struct Ticket {
    _permit: Option<OwnedSemaphorePermit>,
    spend: Arc<Mutex<Spend>>,
    reserved: f64,
}

impl Ticket {
    /// The call finished and cost `usd`: it replaces the reservation in the spend window.
    pub fn settle(mut self, usd: f64, minute: u64) {
        let mut spend = self.spend.lock().expect("spend lock");
        spend.reserved = (spend.reserved - self.reserved).max(0.0);
        self.reserved = 0.0;
        if usd > 0.0 {
            spend.window.add(usd, minute);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.reserved > 0.0 {
            let mut spend = self.spend.lock().expect("spend lock");
            spend.reserved = (spend.reserved - self.reserved).max(0.0);
        }
    }
}

impl RouteLimits {
    fn new(max_rps: Option<u32>, max_concurrency: Option<u32>, budget: Option<f64>) -> Self {
        Self {
            rate: max_rps.and_then(NonZeroU32::new).map(|n| (n.get(), Arc::new(RateLimiter::direct(Quota::per_second(n))))),
            concurrency: max_concurrency.map(|n| (n, Arc::new(Semaphore::new(n as usize)))),
            budget_usd_per_hour: budget,
            spend: Arc::new(Mutex::new(Spend::default())),
        }
    }

    /// Admits one shadow call or says why not, reserving its estimated cost against
    /// the budget (`estimate` is only called for a route with one). Never waits.
    pub fn admit(&self, minute: u64, estimate: impl FnOnce() -> f64) -> Result<Ticket, Shed> {
        // Returning early drops the ticket, which releases what it holds.
        let mut ticket = Ticket { _permit: None, spend: self.spend.clone(), reserved: 0.0 };
        if let Some(budget) = self.budget_usd_per_hour {
            let estimate = estimate().max(0.0);
            let mut spend = self.spend.lock().expect("spend lock");
            let committed = spend.window.total(minute) + spend.reserved;
            if committed >= budget || committed + estimate > budget {
                return Err(Shed::BudgetExhausted);
            }
            spend.reserved += estimate;
            ticket.reserved = estimate;
        }
        if let Some((_, sem)) = &self.concurrency {
            ticket._permit = Some(sem.clone().try_acquire_owned().map_err(|_| Shed::ConcurrencyLimited)?);
        }
        if let Some((_, limiter)) = &self.rate {
            if limiter.check().is_err() {
                return Err(Shed::RateLimited);
            }
        }
        Ok(ticket)
    }

    /// Spend in the hour ending with `minute`, and the reservations of calls in flight.
    pub fn spend(&self, minute: u64) -> (f64, f64) {
        let mut spend = self.spend.lock().expect("spend lock");
        (spend.window.total(minute), spend.reserved)
    }
}

/// Limits for every route, rebuilt on reload.
#[derive(Default)]
pub struct Admission {
    routes: HashMap<String, Arc<RouteLimits>>,
    started: Option<Instant>,
}

impl Admission {
    /// Builds limits from config, reusing `previous` limiters whose settings did not change.
    pub fn new(config: &Config, previous: Option<&Admission>) -> Self {
        let mut routes = HashMap::new();
        for (name, r) in &config.routes {
            let old = previous.and_then(|p| p.routes.get(name));
            let unchanged = old.is_some_and(|o| {
                o.rate.as_ref().map(|(n, _)| *n) == r.max_rps
                    && o.concurrency.as_ref().map(|(n, _)| *n) == r.max_concurrency
                    && o.budget_usd_per_hour == r.budget_usd_per_hour
            });
            let limits = match old {
                Some(o) if unchanged => o.clone(),
                _ => {
                    let mut fresh = RouteLimits::new(r.max_rps, r.max_concurrency, r.budget_usd_per_hour);
                    if let Some(o) = old {
                        // The spend always carries over (shared, so calls in flight settle into
                        // it): a reload never resets a budget.
                        fresh.spend = o.spend.clone();
                        // An unchanged cap keeps its semaphore, so calls in flight still count.
                        if o.concurrency.as_ref().map(|(n, _)| *n) == r.max_concurrency {
                            fresh.concurrency = o.concurrency.clone();
                        }
                        if o.rate.as_ref().map(|(n, _)| *n) == r.max_rps {
                            fresh.rate = o.rate.clone();
                        }
                    }
                    Arc::new(fresh)
                }
            };
            routes.insert(name.clone(), limits);
        }
        Self { routes, started: previous.and_then(|p| p.started).or_else(|| Some(Instant::now())) }
    }

    pub fn route(&self, name: &str) -> Option<&Arc<RouteLimits>> {
        self.routes.get(name)
    }

    /// Minutes since start, the clock of the spend windows.
    pub fn minute(&self) -> u64 {
        self.started.map_or(0, |s| s.elapsed().as_secs() / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call estimated to cost nothing.
    fn free() -> f64 {
        0.0
    }

    #[test]
    fn spend_window_forgets_after_an_hour() {
        let mut w = SpendWindow::default();
        w.add(1.0, 0);
        w.add(2.0, 30);
        assert_eq!(w.total(30), 3.0);
        assert_eq!(w.total(59), 3.0);
        assert_eq!(w.total(60), 2.0, "minute 0 left the window");
        assert_eq!(w.total(90), 0.0);
        w.add(0.5, 1000);
        assert_eq!(w.total(1000), 0.5);
    }

    #[test]
    fn budget_sheds_until_the_window_allows() {
        let l = RouteLimits::new(None, None, Some(1.0));
        l.admit(0, free).unwrap().settle(0.6, 0);
        l.admit(0, free).unwrap().settle(0.6, 1);
        assert_eq!(l.admit(1, free).err(), Some(Shed::BudgetExhausted));
        assert!(l.admit(60, free).is_ok(), "minute 0's spend expired");
    }

    #[test]
    fn concurrency_cap_releases_on_drop() {
        let l = RouteLimits::new(None, Some(2), None);
        let a = l.admit(0, free).unwrap();
        let _b = l.admit(0, free).unwrap();
        assert_eq!(l.admit(0, free).err(), Some(Shed::ConcurrencyLimited));
        drop(a);
        assert!(l.admit(0, free).is_ok());
    }

    #[test]
    fn reload_keeps_spend_and_in_flight_calls() {
        let cfg = |budget: f64, conc: u32| {
            crate::config::from_toml(&format!(
                "[routes.r]\nurl = \"http://127.0.0.1:1/\"\nmodel = \"m\"\nbudget_usd_per_hour = {budget}\nmax_concurrency = {conc}\nmax_rps = 100\n"
            ))
            .unwrap()
        };
        let a = Admission::new(&cfg(1.0, 1), None);
        a.route("r").unwrap().admit(0, free).unwrap().settle(0.8, 0);
        let ticket = a.route("r").unwrap().admit(0, || 0.1).unwrap();
        // New budget, same cap: the spend, the reservation and the held slot carry over.
        let b = Admission::new(&cfg(0.95, 1), Some(&a));
        assert_eq!(b.route("r").unwrap().admit(0, free).err(), Some(Shed::ConcurrencyLimited));
        // The call admitted before the reload settles into the spend the new limits check.
        ticket.settle(0.1, 0);
        assert_eq!(b.route("r").unwrap().spend(0), (0.9, 0.0));
        b.route("r").unwrap().admit(0, free).unwrap().settle(0.1, 0);
        // New cap: the spend still carries over.
        let c = Admission::new(&cfg(0.95, 5), Some(&b));
        assert_eq!(c.route("r").unwrap().admit(0, free).err(), Some(Shed::BudgetExhausted));
    }

    #[test]
    fn rate_limit_sheds_the_burst_beyond_the_quota() {
        let l = RouteLimits::new(Some(5), None, None);
        let admitted = (0..50).filter(|_| l.admit(0, free).is_ok()).count();
        assert!((5..=6).contains(&admitted), "admitted {admitted} of a burst of 50 at 5/s");
    }

    #[test]
    fn calls_in_flight_count_against_the_budget() {
        let l = RouteLimits::new(None, None, Some(1.0));
        let a = l.admit(0, || 0.4).unwrap();
        let b = l.admit(0, || 0.4).unwrap();
        assert_eq!(l.admit(0, || 0.4).err(), Some(Shed::BudgetExhausted), "0.8 reserved + 0.4 > 1.0");
        assert!(l.admit(0, || 0.1).is_ok(), "a cheaper call still fits (its ticket, dropped, frees it)");
        a.settle(0.3, 0);
        assert_eq!(l.spend(0), (0.3, 0.4));
        drop(b); // cancelled: the reservation goes, nothing is charged
        assert_eq!(l.spend(0), (0.3, 0.0));
        assert!(l.admit(0, || 0.7).is_ok());
    }

    /// Simulation: many callers race for a budget, each call costing a random amount
    /// up to its estimate, answers arriving in random order. Spend plus reservations,
    /// and so the hour's spend, never pass the budget (estimates are upper bounds here).
    #[test]
    fn with_upper_bound_estimates_spend_never_passes_the_budget() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let budget = rng.random_range(0.5..5.0);
            let l = RouteLimits::new(None, None, Some(budget));
            let mut in_flight: Vec<(Ticket, f64)> = Vec::new();
            for _ in 0..500 {
                if rng.random_bool(0.6) {
                    let estimate = rng.random_range(0.01..0.3);
                    if let Ok(t) = l.admit(0, || estimate) {
                        in_flight.push((t, rng.random_range(0.0..=estimate)));
                    }
                } else if !in_flight.is_empty() {
                    let (t, cost) = in_flight.swap_remove(rng.random_range(0..in_flight.len()));
                    t.settle(cost, 0);
                }
                let (spent, reserved) = l.spend(0);
                assert!(spent + reserved <= budget + 1e-9, "spent {spent} + reserved {reserved} > {budget}");
            }
            for (t, cost) in in_flight.drain(..) {
                t.settle(cost, 0);
            }
            assert!(l.spend(0).0 <= budget + 1e-9);
        }
    }

    #[test]
    fn the_estimate_reads_the_requests_size_and_output_cap() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":100}"#;
        let input = (body.len() as f64 / 3.0).ceil();
        assert!((estimate_cost(body, 1.0, 2.0) - (input + 200.0) / 1e6).abs() < 1e-12);
        let newer = br#"{"max_completion_tokens":10,"max_tokens":100}"#;
        assert!((estimate_cost(newer, 0.0, 1.0) - 10.0 / 1e6).abs() < 1e-12, "the newer name wins");
        let uncapped = br#"{"messages":[]}"#;
        assert!((estimate_cost(uncapped, 0.0, 1.0) - DEFAULT_OUTPUT_TOKENS as f64 / 1e6).abs() < 1e-12);
    }
}
