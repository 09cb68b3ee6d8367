//! Admission control for shadow work, per shadow route: a rate limit (governor),
//! a cap on concurrent calls, and a spend budget per rolling hour.
//!
//! Decisions are made on the request path, so everything here is non-blocking:
//! a check either admits at once or sheds with a reason.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
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

/// Limits of one shadow route. Kept across config reloads when unchanged, so a
/// reload does not reset the spend window or in-flight counts.
pub struct RouteLimits {
    rate: Option<(u32, Arc<DefaultDirectRateLimiter>)>,
    concurrency: Option<(u32, Arc<Semaphore>)>,
    budget_usd_per_hour: Option<f64>,
    spend: Mutex<SpendWindow>,
}

/// Held for the life of a shadow call; releases its concurrency slot on drop.
pub struct Ticket {
    _permit: Option<OwnedSemaphorePermit>,
}

impl RouteLimits {
    fn new(max_rps: Option<u32>, max_concurrency: Option<u32>, budget: Option<f64>) -> Self {
        Self {
            rate: max_rps.and_then(NonZeroU32::new).map(|n| (n.get(), Arc::new(RateLimiter::direct(Quota::per_second(n))))),
            concurrency: max_concurrency.map(|n| (n, Arc::new(Semaphore::new(n as usize)))),
            budget_usd_per_hour: budget,
            spend: Mutex::new(SpendWindow::default()),
        }
    }

    /// Admits one shadow call or says why not. Never waits.
    pub fn admit(&self, minute: u64) -> Result<Ticket, Shed> {
        if let Some(budget) = self.budget_usd_per_hour {
            if self.spend.lock().expect("spend lock").total(minute) >= budget {
                return Err(Shed::BudgetExhausted);
            }
        }
        let permit = match &self.concurrency {
            Some((_, sem)) => Some(sem.clone().try_acquire_owned().map_err(|_| Shed::ConcurrencyLimited)?),
            None => None,
        };
        if let Some((_, limiter)) = &self.rate {
            if limiter.check().is_err() {
                return Err(Shed::RateLimited);
            }
        }
        Ok(Ticket { _permit: permit })
    }

    pub fn charge(&self, usd: f64, minute: u64) {
        if usd > 0.0 {
            self.spend.lock().expect("spend lock").add(usd, minute);
        }
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
                        // The spend so far always carries over: a reload never resets a budget.
                        *fresh.spend.get_mut().expect("spend lock") = o.spend.lock().expect("spend lock").clone();
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
        assert!(l.admit(0).is_ok());
        l.charge(0.6, 0);
        assert!(l.admit(0).is_ok());
        l.charge(0.6, 1);
        assert_eq!(l.admit(1).err(), Some(Shed::BudgetExhausted));
        assert!(l.admit(60).is_ok(), "minute 0's spend expired");
    }

    #[test]
    fn concurrency_cap_releases_on_drop() {
        let l = RouteLimits::new(None, Some(2), None);
        let a = l.admit(0).unwrap();
        let _b = l.admit(0).unwrap();
        assert_eq!(l.admit(0).err(), Some(Shed::ConcurrencyLimited));
        drop(a);
        assert!(l.admit(0).is_ok());
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
        let ticket = a.route("r").unwrap().admit(0).unwrap();
        a.route("r").unwrap().charge(0.9, 0);
        // New budget, same cap: the spend and the held slot carry over.
        let b = Admission::new(&cfg(0.95, 1), Some(&a));
        assert_eq!(b.route("r").unwrap().admit(0).err(), Some(Shed::ConcurrencyLimited));
        drop(ticket);
        assert!(b.route("r").unwrap().admit(0).is_ok());
        b.route("r").unwrap().charge(0.1, 0);
        // New cap: the spend still carries over.
        let c = Admission::new(&cfg(0.95, 5), Some(&b));
        assert_eq!(c.route("r").unwrap().admit(0).err(), Some(Shed::BudgetExhausted));
    }

    #[test]
    fn rate_limit_sheds_the_burst_beyond_the_quota() {
        let l = RouteLimits::new(Some(5), None, None);
        let admitted = (0..50).filter(|_| l.admit(0).is_ok()).count();
        assert!((5..=6).contains(&admitted), "admitted {admitted} of a burst of 50 at 5/s");
    }
}
