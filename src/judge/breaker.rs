//! A circuit breaker for the judge endpoint: tells an outage (the endpoint refuses
//! connections, times out or answers 5xx to everything) from a pair the judge fails
//! on, so an outage pauses the worker instead of turning every pair into a judge
//! error whose offset is committed.
//!
//! - Closed: calls go through. `failures` consecutive transport failures, timeouts or
//!   5xx (over all calls; any answer from the endpoint resets the count) open it.
//! - Open: calls wait (the worker pauses consumption and `/ready` is 503). One
//!   waiter at a time sends a *probe* (a one-token chat completion) after
//!   `probe_interval`, doubled after each failed probe up to `max_probe_interval`;
//!   the first answer closes it and the waiting calls go on.
//! - A call that used up its retries asks [`Circuit::verdict_on`]: if the endpoint
//!   answered anything (a call or a probe) after its last failure, the fault is the
//!   pair's, and the call becomes a judge error as before; if the endpoint was down
//!   (the circuit opened, or a probe failed, after that failure) the call waits for
//!   the circuit to close and starts over with fresh retries: the pair is not skipped.
//!
//! [`Breaker`] is the pure state machine (time passed in); [`Circuit`] shares it
//! between calls, wakes waiters and reports transitions (gauge, one rate-limited
//! WARN). Never does I/O itself: the probe is the caller's.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use crate::log_limit::LogLimit;

/// When the circuit opens and how it probes (from `[judge.pairwise]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub failures: u32,
    pub probe_interval: Duration,
    pub max_probe_interval: Duration,
}

/// What a caller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Call the endpoint.
    Go,
    /// Send the probe, then report it with [`Breaker::probed`].
    Probe,
    /// Wait (at most this long, or until the state changes) and ask again.
    Wait(Duration),
    /// The endpoint answered after the caller's failure: the fault is the call's.
    Up,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    consecutive: u32,
    /// While open: when the next probe may go, and the current probe interval.
    open: Option<(Instant, Duration)>,
    probing: bool,
    answered_at: Option<Instant>,
    /// Last time the endpoint was found down (the circuit opened or a probe failed).
    down_at: Option<Instant>,
}

/// How long a waiter sleeps at most before looking again (a probe in flight).
const RECHECK: Duration = Duration::from_millis(200);

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self { config, consecutive: 0, open: None, probing: false, answered_at: None, down_at: None }
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The endpoint answered (a verdict, a malformed answer, a 4xx, a 429...).
    /// True when this closed the circuit.
    pub fn answered(&mut self, now: Instant) -> bool {
        self.consecutive = 0;
        self.answered_at = Some(self.answered_at.map_or(now, |a| a.max(now)));
        self.open.take().is_some()
    }

    /// A transport failure, timeout or 5xx. True when this opened the circuit.
    pub fn failed(&mut self, now: Instant) -> bool {
        self.consecutive = self.consecutive.saturating_add(1);
        if self.open.is_none() && self.consecutive >= self.config.failures {
            self.trip(now);
            return true;
        }
        false
    }

    fn trip(&mut self, now: Instant) {
        self.open = Some((now + self.config.probe_interval, self.config.probe_interval));
        self.down_at = Some(now);
    }

    /// The probe's result. True when this changed the state (opened or closed it).
    pub fn probed(&mut self, answered: bool, now: Instant) -> bool {
        self.probing = false;
        if answered {
            return self.answered(now);
        }
        self.consecutive = self.consecutive.saturating_add(1);
        self.down_at = Some(now);
        match self.open {
            Some((_, interval)) => {
                let next = interval.saturating_mul(2).min(self.config.max_probe_interval);
                self.open = Some((now + next, next));
                false
            }
            None => {
                self.trip(now);
                true
            }
        }
    }

    /// What a caller does next. `failed_at`: `None` for a call about to be made,
    /// `Some(t)` for a call whose retries ran out with a failure at `t`.
    pub fn step(&mut self, now: Instant, failed_at: Option<Instant>) -> Step {
        if let Some(t) = failed_at {
            if self.down_at.is_some_and(|d| d >= t) {
                // Down since the failure: wait for the endpoint like any call.
                return self.step(now, None);
            }
            if self.answered_at.is_some_and(|a| a >= t) {
                return Step::Up;
            }
        }
        match self.open {
            None if failed_at.is_none() => Step::Go,
            // Closed, and nothing heard since the failure: one probe settles it.
            None => self.probe_or_wait(RECHECK),
            Some((next, _)) if now >= next => self.probe_or_wait(RECHECK),
            Some((next, _)) => Step::Wait(next - now),
        }
    }

    fn probe_or_wait(&mut self, wait: Duration) -> Step {
        if self.probing {
            Step::Wait(wait)
        } else {
            self.probing = true;
            Step::Probe
        }
    }
}

/// The breaker shared by a judge's calls.
pub struct Circuit {
    breaker: Mutex<Breaker>,
    changed: Notify,
    open_gauge: Gauge,
    opened: Counter,
    warn: LogLimit,
}

/// How a call that used up its retries ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// The endpoint answers: the call is a judge error.
    GiveUp,
    /// The endpoint was down and answers again: start over.
    Retry,
}

impl Circuit {
    /// `open_gauge` is 1 while open; `opened` counts openings.
    pub fn new(config: BreakerConfig, open_gauge: Gauge, opened: Counter) -> Self {
        Self { breaker: Mutex::new(Breaker::new(config)), changed: Notify::new(), open_gauge, opened, warn: LogLimit::new(Duration::from_secs(60)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().expect("breaker lock")
    }

    pub fn is_open(&self) -> bool {
        self.lock().is_open()
    }

    pub fn answered(&self) {
        let closed = self.lock().answered(Instant::now());
        if closed {
            self.on_close();
        }
    }

    /// A transport failure, timeout or 5xx; returns when it happened.
    pub fn failed(&self) -> Instant {
        let now = Instant::now();
        if self.lock().failed(now) {
            self.on_open("consecutive judge call failures");
        }
        now
    }

    fn on_open(&self, why: &'static str) {
        self.open_gauge.set(1);
        self.opened.inc();
        if let Some(held_back) = self.warn.allow() {
            tracing::warn!(why, openings_not_logged = held_back, "judge endpoint down: circuit open, consumption paused until a probe answers");
        }
        self.changed.notify_waiters();
    }

    fn on_close(&self) {
        self.open_gauge.set(0);
        tracing::info!("judge endpoint answers again: circuit closed, consumption resumes");
        self.changed.notify_waiters();
    }

    /// Waits until a call may go; while open, probes the endpoint with `probe`
    /// (true when the endpoint answered) one caller at a time.
    pub async fn ready<F, Fut>(&self, probe: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        self.run(None, &probe).await;
    }

    /// For a call whose retries ran out with a failure at `failed_at` (from
    /// [`failed`](Self::failed)): give up, or wait out the outage and retry.
    pub async fn verdict_on<F, Fut>(&self, failed_at: Instant, probe: F) -> Exhausted
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        self.run(Some(failed_at), &probe).await
    }

    async fn run<F, Fut>(&self, mut failed_at: Option<Instant>, probe: &F) -> Exhausted
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        let mut was_down = false;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let step = self.lock().step(Instant::now(), failed_at);
            match step {
                Step::Go => return if was_down || failed_at.is_some() { Exhausted::Retry } else { Exhausted::GiveUp },
                Step::Up => return Exhausted::GiveUp,
                Step::Probe => {
                    let answered = probe().await;
                    let (changed, open) = {
                        let mut b = self.lock();
                        (b.probed(answered, Instant::now()), b.is_open())
                    };
                    match (changed, open) {
                        (true, true) => self.on_open("a probe failed"),
                        (true, false) => self.on_close(),
                        _ => self.changed.notify_waiters(),
                    }
                }
                Step::Wait(d) => {
                    was_down = true;
                    // From here on only the circuit closing matters.
                    if self.lock().is_open() {
                        failed_at = None;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = &mut changed => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: BreakerConfig = BreakerConfig { failures: 3, probe_interval: Duration::from_secs(1), max_probe_interval: Duration::from_secs(4) };

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn consecutive_failures_open_it_and_any_answer_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(CFG);
        assert!(!b.failed(t0) && !b.failed(t0));
        b.answered(t0);
        assert!(!b.failed(t0) && !b.failed(t0), "the count starts over after an answer");
        assert_eq!(b.step(t0, None), Step::Go);
        assert!(b.failed(t0), "the third in a row opens it");
        assert!(b.is_open());
        assert_eq!(b.step(at(t0, 400), None), Step::Wait(Duration::from_millis(600)));
    }

    #[test]
    fn one_probe_at_a_time_with_a_doubling_interval_and_the_first_answer_closes_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(CFG);
        for _ in 0..3 {
            b.failed(t0);
        }
        assert_eq!(b.step(at(t0, 1000), None), Step::Probe);
        assert_eq!(b.step(at(t0, 1000), None), Step::Wait(RECHECK), "a probe is in flight");
        b.probed(false, at(t0, 1100));
        assert_eq!(b.step(at(t0, 2100), None), Step::Wait(Duration::from_millis(1000)), "next probe 2 s after the failed one");
        assert_eq!(b.step(at(t0, 3100), None), Step::Probe);
        b.probed(false, at(t0, 3100));
        assert_eq!(b.step(at(t0, 6100), None), Step::Wait(Duration::from_millis(1000)), "4 s: the cap");
        assert_eq!(b.step(at(t0, 7100), None), Step::Probe);
        b.probed(false, at(t0, 7100));
        assert_eq!(b.step(at(t0, 10100), None), Step::Wait(Duration::from_millis(1000)), "still 4 s");
        assert_eq!(b.step(at(t0, 11100), None), Step::Probe);
        assert!(b.probed(true, at(t0, 11200)), "the answer closes it");
        assert!(!b.is_open());
        assert_eq!(b.step(at(t0, 11200), None), Step::Go);
        b.failed(at(t0, 11300));
        b.failed(at(t0, 11300));
        b.failed(at(t0, 11300));
        assert_eq!(b.step(at(t0, 12300), None), Step::Probe, "reopened: back to the first interval");
    }

    #[test]
    fn a_call_out_of_retries_is_the_pairs_fault_only_if_the_endpoint_answered_since() {
        let t0 = Instant::now();
        let mut b = Breaker::new(CFG);
        // A pair the judge fails on: its failure, then a probe that is answered.
        b.failed(t0);
        assert_eq!(b.step(at(t0, 1), Some(t0)), Step::Probe, "nothing heard since the failure");
        assert_eq!(b.step(at(t0, 1), Some(t0)), Step::Wait(RECHECK), "one probe for all");
        b.probed(true, at(t0, 5));
        assert_eq!(b.step(at(t0, 6), Some(t0)), Step::Up);
        // Another call answered after the failure: no probe needed.
        b.failed(at(t0, 10));
        b.answered(at(t0, 11));
        assert_eq!(b.step(at(t0, 12), Some(at(t0, 10))), Step::Up);
        // The endpoint went down after the failure: wait for it, whatever answers later.
        b.failed(at(t0, 20));
        assert_eq!(b.step(at(t0, 21), Some(at(t0, 20))), Step::Probe);
        assert!(b.probed(false, at(t0, 30)), "a failed probe opens it");
        assert_eq!(b.step(at(t0, 31), Some(at(t0, 20))), Step::Wait(Duration::from_millis(999)));
        b.probed(true, at(t0, 1100));
        assert_eq!(b.step(at(t0, 1101), Some(at(t0, 20))), Step::Go, "down then back: start over");
    }

    /// Simulation (fixed seed): outages and isolated faults at random; a call that
    /// fails during an outage is never told to give up, and one that fails while the
    /// endpoint answers others always is (after at most one probe).
    #[test]
    fn simulated_outages_never_make_a_call_give_up() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let t0 = Instant::now();
        let mut b = Breaker::new(CFG);
        let mut now = 0u64;
        for _ in 0..2000 {
            now += rng.random_range(1..50);
            let down = (now / 5000) % 2 == 1; // 5 s up, 5 s down
            let t = at(t0, now);
            let failed_at = if down || rng.random_bool(0.1) {
                b.failed(t);
                Some(t)
            } else {
                b.answered(t);
                None
            };
            let Some(f) = failed_at else { continue };
            // The exhausted call's steps, until Go or Up, the endpoint answering
            // probes exactly when it is up.
            let mut clock = now;
            let end = loop {
                match b.step(at(t0, clock), Some(f)) {
                    Step::Probe => {
                        clock += 1;
                        let up = (clock / 5000) % 2 == 0;
                        b.probed(up, at(t0, clock));
                    }
                    Step::Wait(d) => clock += d.as_millis() as u64,
                    end => break end,
                }
            };
            // Near the end of an outage the first probe may already be answered.
            if down && now % 5000 < 4900 {
                assert_eq!(end, Step::Go, "failed in an outage at {now} ms: waits and retries");
            }
            if end == Step::Up && now % 5000 < 4900 {
                assert!(!down, "told to give up in an outage at {now} ms");
            }
            now = clock;
        }
    }
}
