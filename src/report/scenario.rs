//! Synthetic grades drawn from a known truth: the simulations that check the report's
//! statistics end to end, the benchmark's grade file, and anyone who needs a realistic
//! grade stream without running the sidecar and a judge.
//!
//! The model: requests fall into slices; a latency-budget router sends almost all of them
//! to the `fast` route; the sidecar samples each slice at its own rate (the rare slice
//! oversampled) and turns a few samples into CONTROL pairs; a reference judge marks each
//! answer right or wrong against a known answer, so score = correct(counterfactual) −
//! correct(route taken).
//!
//! Owns: the scenario parameters and the draw. Must never be used to produce a figure in a
//! report (reports read grades only) and never touches I/O.
use rand::Rng;

use crate::proto::v1::{GradeOutcome, GradeRecord, HalfSummary, JudgeInfo, PairKind, ReferenceResult, RequestFeatures, RouteRef};

pub const FAST: &str = "fast";
pub const REASONING: &str = "reasoning";
/// Label names the scenario sets.
pub const TENANT_LABEL: &str = "tenant";
pub const LANGUAGE_LABEL: &str = "language";
pub const ELIGIBILITY_LABEL: &str = "reasoning_eligibility";
pub const HUMAN_LABEL: &str = "human_verdict";

/// One slice of traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceSpec {
    pub name: String,
    /// Share of all requests.
    pub share: f64,
    /// Probability each route answers correctly.
    pub fast_accuracy: f64,
    pub reasoning_accuracy: f64,
    /// The sidecar's sampling rate for this slice.
    pub sampling_rate: f64,
    /// Range of the router's reasoning-eligibility score on this slice.
    pub eligibility: (f64, f64),
    /// Range of prompt tokens.
    pub prompt_tokens: (u32, u32),
}

/// A whole day of traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Requests the router saw.
    pub requests: usize,
    pub slices: Vec<SliceSpec>,
    /// Share of requests the router sends to the reasoning route.
    pub reasoning_share: f64,
    /// Share of sampled requests sent to the route taken again, as CONTROL pairs.
    pub control_share: f64,
    /// Share of requests that offer tools (no label says so; only the request shows it).
    pub tools_share: f64,
    /// Accuracy the fast route loses on requests with tools (a cohort nobody labelled).
    pub tools_fast_penalty: f64,
    /// Share of graded pairs that also carry a human verdict.
    pub human_share: f64,
}

fn slice(name: &str, share: f64, fast: f64, reasoning: f64, rate: f64, eligibility: (f64, f64), tokens: (u32, u32)) -> SliceSpec {
    SliceSpec { name: name.into(), share, fast_accuracy: fast, reasoning_accuracy: reasoning, sampling_rate: rate, eligibility, prompt_tokens: tokens }
}

/// Trials up to and including the next success of a Bernoulli(p) process (≥ 1).
fn geometric_gap(rng: &mut impl Rng, p: f64) -> usize {
    if p >= 1.0 {
        return 1;
    }
    if p <= 0.0 {
        return usize::MAX / 2;
    }
    let u: f64 = 1.0 - rng.random::<f64>(); // in (0, 1]
    (u.ln() / (1.0 - p).ln()).floor() as usize + 1
}

impl Scenario {
    /// The story: 20,000 requests; parity on the easy slices; the reasoning route
    /// 15 points better on `multi_step`, 5% of traffic; 4.9% of traffic shadowed, with
    /// `multi_step` sampled at 40% and the rest at 3%; 5% of the samples are CONTROL pairs.
    pub fn essay() -> Self {
        Scenario {
            requests: 20_000,
            slices: vec![
                slice("chat", 0.45, 0.90, 0.90, 0.03, (0.0, 0.4), (50, 900)),
                slice("code", 0.25, 0.85, 0.85, 0.03, (0.2, 0.6), (200, 6000)),
                slice("summarize", 0.25, 0.92, 0.92, 0.03, (0.0, 0.3), (1000, 20000)),
                slice("multi_step", 0.05, 0.80, 0.95, 0.40, (0.5, 1.0), (300, 3000)),
            ],
            reasoning_share: 0.03,
            control_share: 0.05,
            tools_share: 0.10,
            tools_fast_penalty: 0.0,
            human_share: 0.0,
        }
    }

    /// The same traffic with no difference anywhere.
    pub fn null() -> Self {
        let mut s = Self::essay();
        for sl in &mut s.slices {
            sl.reasoning_accuracy = sl.fast_accuracy;
        }
        s
    }

    /// No slice differs, but the fast route loses 15 points on requests that offer tools
    /// (10% of traffic, no label): 100,000 requests, 5% shadowed uniformly.
    pub fn unlabelled_cohort() -> Self {
        let mut s = Self::null();
        s.requests = 100_000;
        for sl in &mut s.slices {
            sl.sampling_rate = 0.05;
        }
        s.tools_fast_penalty = 0.15;
        s
    }

    /// Share of requests shadowed, in expectation.
    pub fn shadowed_share(&self) -> f64 {
        self.slices.iter().map(|s| s.share * s.sampling_rate).sum()
    }

    /// Draws one day: calls `emit` with each grade, in request order.
    pub fn generate(&self, rng: &mut impl Rng, mut emit: impl FnMut(GradeRecord)) {
        for sl in &self.slices {
            let n = (sl.share * self.requests as f64).round() as usize;
            // Bernoulli sampling of each request, drawn as geometric gaps between the
            // sampled ones (the same process, one draw per sample instead of per request).
            let mut i = 0usize;
            loop {
                i += geometric_gap(rng, sl.sampling_rate);
                if i > n {
                    break;
                }
                emit(self.grade(sl, rng));
            }
        }
    }

    fn grade(&self, sl: &SliceSpec, rng: &mut impl Rng) -> GradeRecord {
        let taken_reasoning = rng.random_bool(self.reasoning_share);
        let control = rng.random_bool(self.control_share);
        let tools = rng.random_bool(self.tools_share);
        let (taken, not_taken) = if taken_reasoning { (REASONING, FAST) } else { (FAST, REASONING) };
        let not_taken = if control { taken } else { not_taken };
        let accuracy = |route: &str| {
            if route == REASONING {
                sl.reasoning_accuracy
            } else {
                sl.fast_accuracy - if tools { self.tools_fast_penalty } else { 0.0 }
            }
        };
        let primary_correct = rng.random_bool(accuracy(taken).clamp(0.0, 1.0));
        let counterfactual_correct = rng.random_bool(accuracy(not_taken).clamp(0.0, 1.0));
        let score = counterfactual_correct as i32 as f64 - primary_correct as i32 as f64;
        let half = |route: &str, rng: &mut dyn rand::RngCore| {
            let u: f64 = rng.random();
            let (latency, cost, chars) = if route == REASONING { (1500.0 + 3000.0 * u, 0.006 + 0.004 * u, 1200) } else { (200.0 + 400.0 * u, 0.0003 + 0.0002 * u, 600) };
            HalfSummary { present: true, status_code: 200, latency_ms: latency, cost_usd: cost, answer_chars: chars + (u * 400.0) as u32, output_tokens: chars / 4, ..Default::default() }
        };
        let tokens = rng.random_range(sl.prompt_tokens.0..=sl.prompt_tokens.1);
        let mut labels = std::collections::HashMap::new();
        labels.insert(TENANT_LABEL.to_string(), ["acme", "globex", "initech"][rng.random_range(0..3)].to_string());
        let language = match rng.random::<f64>() {
            x if x < 0.7 => "en",
            x if x < 0.9 => "de",
            _ => "ja",
        };
        labels.insert(LANGUAGE_LABEL.to_string(), language.to_string());
        labels.insert(ELIGIBILITY_LABEL.to_string(), format!("{:.3}", rng.random_range(sl.eligibility.0..sl.eligibility.1)));
        if !control && rng.random_bool(self.human_share) {
            labels.insert(HUMAN_LABEL.to_string(), format!("{score}"));
        }
        let turns = rng.random_range(1..=6);
        GradeRecord {
            schema_version: 1,
            pair_id: uuid::Builder::from_random_bytes(rng.random()).into_uuid().to_string(),
            request_id: format!("req-{:016x}", rng.random::<u64>()),
            slice: sl.name.clone(),
            labels,
            sampling_rate: sl.sampling_rate,
            sampling_weight: 1.0 / sl.sampling_rate,
            kind: if control { PairKind::Control } else { PairKind::Pair } as i32,
            route_taken: Some(RouteRef { name: taken.into(), model: format!("{taken}-model") }),
            route_not_taken: Some(RouteRef { name: not_taken.into(), model: format!("{not_taken}-model") }),
            features: Some(RequestFeatures { prompt_tokens: tokens, prompt_chars: tokens * 4, turns, messages: turns * 2, tools_present: tools }),
            primary: Some(half(taken, rng)),
            counterfactual: Some(half(not_taken, rng)),
            outcome: GradeOutcome::Graded as i32,
            judge: Some(JudgeInfo { kind: "reference".into(), model: "exact".into(), prompt_version: String::new() }),
            reference: Some(ReferenceResult { method: "exact".into(), primary_correct, counterfactual_correct }),
            score,
            ..Default::default()
        }
    }
}
