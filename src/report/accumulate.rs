//! Per-group streaming accumulators: one pass over the grades, memory bounded by the
//! number of groups, never by the number of grades.
//!
//! Owns: what each grade adds to the counters, sums and latency sketches of every group
//! it belongs to (one per dimension and direction), to the overall estimate, the CONTROL
//! noise floor, judge health, judge–human agreement and eligibility calibration.
//! Must never hold a grade after `add` returns, test anything or decide a flag.
use std::collections::{BTreeMap, HashMap};

use foldhash::HashMapExt as _;

use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use super::dimensions::{self, Dimensions};
use super::stats::{Moments, WeightedSums};
use crate::proto::v1::{GradeOutcome, GradeRecord, HalfSummary, PairKind};

/// The inverse sampling probability of a grade: `sampling_weight`, else 1/`sampling_rate`,
/// else 1 (a record that says nothing about its sampling counts as itself).
pub fn weight_of(grade: &GradeRecord) -> f64 {
    if grade.sampling_weight.is_finite() && grade.sampling_weight > 0.0 {
        grade.sampling_weight
    } else if grade.sampling_rate.is_finite() && grade.sampling_rate > 0.0 && grade.sampling_rate <= 1.0 {
        1.0 / grade.sampling_rate
    } else {
        1.0
    }
}

/// A latency distribution (DDSketch, 1% relative accuracy: Masson, Rim & Lee 2019,
/// VLDB 12:2195), so p50/p95 cost bounded memory per group.
#[derive(Clone)]
pub struct Latency(DDSketch);

impl Default for Latency {
    fn default() -> Self {
        Latency(DDSketch::new(SketchConfig::defaults()))
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Latency(n={})", self.0.count())
    }
}

impl Latency {
    fn add(&mut self, ms: f64) {
        if ms.is_finite() && ms >= 0.0 {
            self.0.add(ms);
        }
    }
    /// The q-quantile in ms; None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.0.quantile(q).ok().flatten()
    }
}

/// One half's outcome counters within a group.
#[derive(Debug, Clone, Default)]
pub struct HalfAcc {
    /// Grades where this half failed (error, non-2xx) or never arrived.
    pub failed: u64,
    pub latency: Latency,
    /// Cost over the halves that arrived.
    pub cost: Moments,
}

impl HalfAcc {
    fn add(&mut self, half: Option<&HalfSummary>) {
        match half {
            Some(h) if h.present => {
                self.failed += h.failed as u64;
                if h.latency_ms > 0.0 {
                    self.latency.add(h.latency_ms);
                }
                self.cost.add(if h.cost_usd.is_finite() { h.cost_usd } else { 0.0 });
            }
            _ => self.failed += 1,
        }
    }
}

/// Everything one group (dimension × group × direction) needs.
#[derive(Debug, Clone, Default)]
pub struct GroupAcc {
    /// PAIR grades of any outcome, and their weight (for the traffic share).
    pub grades: u64,
    pub weight: f64,
    /// GRADED grades: win / tie / loss of the counterfactual, Hájek sums, plain moments.
    pub wins: u64,
    pub ties: u64,
    pub losses: u64,
    pub weighted: WeightedSums,
    pub scores: Moments,
    /// Judge errors, out of `judgeable` (grades where the judge was asked).
    pub judge_errors: u64,
    pub judgeable: u64,
    pub taken: HalfAcc,
    pub not_taken: HalfAcc,
    /// human − judge on the graded pairs that carry a human verdict (PPI rectifier), weighted.
    pub human_minus_judge: WeightedSums,
}

/// CONTROL grades: the judge comparing a route with itself.
#[derive(Debug, Clone, Default)]
pub struct ControlAcc {
    pub overall: ControlScores,
    /// Keyed like the `slice` dimension: an empty slice is `(none)`.
    pub per_slice: HashMap<String, ControlScores>,
}

/// Graded CONTROL scores: their moments and their signs, as for a group.
#[derive(Debug, Clone, Default)]
pub struct ControlScores {
    pub scores: Moments,
    pub wins: u64,
    pub ties: u64,
    pub losses: u64,
}

impl ControlScores {
    fn add(&mut self, score: f64) {
        self.scores.add(score);
        match sign(score) {
            1 => self.wins += 1,
            -1 => self.losses += 1,
            _ => self.ties += 1,
        }
    }
}

/// Judge-health counters over every graded grade (PAIR and CONTROL).
#[derive(Debug, Clone, Default)]
pub struct JudgeAcc {
    pub graded: u64,
    pub judge_errors: u64,
    pub judgeable: u64,
    pub both_orders: u64,
    pub orders_agree: u64,
    /// Decisive verdicts, and those won by the answer shown first.
    pub decisive_verdicts: u64,
    pub first_position_wins: u64,
    /// Decisive grades whose answers differ in length, and those the longer answer won.
    pub decisive_with_lengths: u64,
    pub longer_wins: u64,
    /// (kind, model, prompt_version) → grades.
    pub judges: BTreeMap<(String, String, String), u64>,
}

/// Judge against human verdicts.
#[derive(Debug, Clone, Default)]
pub struct HumanAcc {
    pub labelled: u64,
    pub unreadable: u64,
    pub sign_agree: u64,
    pub human_minus_judge: Moments,
}

/// One tenth of the eligibility score.
#[derive(Debug, Clone, Default)]
pub struct BandAcc {
    pub pairs: u64,
    pub reasoning_better: u64,
    /// Reasoning route's advantage (positive = reasoning better).
    pub advantage: Moments,
    /// The same advantage with each grade's sampling weight, for the traffic-weighted mean.
    pub weighted_advantage: WeightedSums,
}

/// Per slice, for "where a threshold would have sent it".
#[derive(Debug, Clone, Default)]
pub struct SliceEligibilityAcc {
    pub pairs: u64,
    pub score_sum: f64,
    pub sent_to_reasoning: u64,
    /// Pairs per tenth of the score.
    pub per_band: [u64; 10],
}

/// Eligibility calibration.
#[derive(Debug, Clone, Default)]
pub struct CalibrationAcc {
    pub unreadable: u64,
    pub bands: [BandAcc; 10],
    pub slices: BTreeMap<String, SliceEligibilityAcc>,
}

/// What the accumulator needs to know beyond the dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct AccumulatorSettings {
    pub dimensions: Dimensions,
    pub human_label: Option<String>,
    pub eligibility_label: Option<String>,
    pub reasoning_route: String,
}

/// The per-grade lookups are the hot path; foldhash is several times faster than SipHash
/// on short keys, and the keys (slices, labels, routes) come from our own records.
pub type FastMap<K, V> = foldhash::HashMap<K, V>;

/// All accumulators of one report.
#[derive(Debug)]
pub struct Accumulator {
    pub settings: AccumulatorSettings,
    /// Dimension names, in the order of `groups`.
    pub dimension_names: Vec<String>,
    /// Interned directions (route taken, route not taken).
    pub directions: Vec<(String, String)>,
    direction_ids: FastMap<String, FastMap<String, u32>>,
    /// Per dimension: group → direction id → accumulator.
    pub groups: Vec<FastMap<String, FastMap<u32, GroupAcc>>>,
    /// Σ weight of all PAIR grades (the traffic-share denominator).
    pub pair_weight: f64,
    /// All graded PAIR grades: Hájek sums and plain moments.
    pub overall: WeightedSums,
    pub overall_scores: Moments,
    pub overall_human_minus_judge: WeightedSums,
    pub controls: ControlAcc,
    pub judge: JudgeAcc,
    pub human: Option<HumanAcc>,
    pub calibration: Option<CalibrationAcc>,
    /// Grades by kind and outcome.
    pub pair_grades: u64,
    pub control_grades: u64,
    pub outcomes: BTreeMap<i32, u64>,
}

fn route_name(r: &Option<crate::proto::v1::RouteRef>) -> &str {
    r.as_ref().map(|r| r.name.as_str()).filter(|n| !n.is_empty()).unwrap_or(dimensions::MISSING)
}

/// Win (1), tie (0) or loss (-1) of the counterfactual.
fn sign(x: f64) -> i8 {
    if x > 0.0 {
        1
    } else if x < 0.0 {
        -1
    } else {
        0
    }
}

/// A human verdict: a number in [-1, 1] from the counterfactual's side, like `score`.
pub fn parse_human(value: &str) -> Option<f64> {
    value.trim().parse::<f64>().ok().filter(|v| (-1.0..=1.0).contains(v))
}

impl Accumulator {
    pub fn new(settings: AccumulatorSettings) -> Self {
        let dimension_names = settings.dimensions.names();
        let groups = dimension_names.iter().map(|_| FastMap::new()).collect();
        Accumulator {
            human: settings.human_label.as_ref().map(|_| HumanAcc::default()),
            calibration: settings.eligibility_label.as_ref().map(|_| CalibrationAcc::default()),
            settings,
            dimension_names,
            directions: Vec::new(),
            direction_ids: FastMap::new(),
            groups,
            pair_weight: 0.0,
            overall: WeightedSums::default(),
            overall_scores: Moments::default(),
            overall_human_minus_judge: WeightedSums::default(),
            controls: ControlAcc::default(),
            judge: JudgeAcc::default(),
            pair_grades: 0,
            control_grades: 0,
            outcomes: BTreeMap::new(),
        }
    }

    fn direction_id(&mut self, taken: &str, not_taken: &str) -> u32 {
        if let Some(id) = self.direction_ids.get(taken).and_then(|m| m.get(not_taken)) {
            return *id;
        }
        let id = self.directions.len() as u32;
        self.directions.push((taken.to_string(), not_taken.to_string()));
        self.direction_ids.entry(taken.to_string()).or_default().insert(not_taken.to_string(), id);
        id
    }

    /// Adds one (deduplicated, decoded) grade.
    pub fn add(&mut self, grade: &GradeRecord) {
        *self.outcomes.entry(grade.outcome).or_default() += 1;
        let graded = grade.outcome == GradeOutcome::Graded as i32 && grade.score.is_finite() && (-1.0..=1.0).contains(&grade.score);
        self.add_judge_health(grade, graded);
        if grade.kind == PairKind::Control as i32 {
            self.control_grades += 1;
            if graded {
                self.controls.overall.add(grade.score);
                let slice = if grade.slice.is_empty() { dimensions::MISSING } else { grade.slice.as_str() };
                self.controls.per_slice.entry(slice.to_string()).or_default().add(grade.score);
            }
            return;
        }
        self.pair_grades += 1;
        let w = weight_of(grade);
        self.pair_weight += w;
        let human = self.settings.human_label.as_ref().and_then(|l| grade.labels.get(l)).map(|v| parse_human(v));
        let human_minus_judge = match (graded, human) {
            (true, Some(Some(h))) => Some(h - grade.score),
            _ => None,
        };
        if graded {
            self.overall.add(w, grade.score);
            self.overall_scores.add(grade.score);
            self.add_human(grade, human);
            self.add_calibration(grade, w);
        }
        if let Some(d) = human_minus_judge {
            self.overall_human_minus_judge.add(w, d);
        }
        let direction = self.direction_id(route_name(&grade.route_taken), route_name(&grade.route_not_taken));
        let mut groups = Vec::new();
        self.settings.dimensions.groups_of(grade, &mut groups);
        for (dim, group) in groups.iter().enumerate() {
            let by_group = &mut self.groups[dim];
            let by_direction = match by_group.get_mut(group.as_ref()) {
                Some(m) => m,
                None => by_group.entry(group.to_string()).or_default(),
            };
            let acc = by_direction.entry(direction).or_default();
            add_to_group(acc, grade, w, graded, human_minus_judge);
        }
    }

    fn add_judge_health(&mut self, grade: &GradeRecord, graded: bool) {
        let j = &mut self.judge;
        let judge_error = grade.outcome == GradeOutcome::JudgeError as i32;
        if graded || judge_error {
            j.judgeable += 1;
        }
        j.judge_errors += judge_error as u64;
        if !graded {
            return;
        }
        j.graded += 1;
        if let Some(info) = &grade.judge {
            *j.judges.entry((info.kind.clone(), info.model.clone(), info.prompt_version.clone())).or_default() += 1;
        }
        let parsed: Vec<_> = grade.verdicts.iter().filter(|v| v.error.is_empty()).collect();
        if parsed.len() >= 2 {
            j.both_orders += 1;
            j.orders_agree += grade.orders_agree as u64;
        }
        for v in &parsed {
            if v.counterfactual_result != 0 {
                j.decisive_verdicts += 1;
                // Primary first: the counterfactual is shown second, so a counterfactual loss
                // is a first-position win; counterfactual first: the reverse.
                let first_won = match v.order.as_str() {
                    "primary_first" => v.counterfactual_result < 0,
                    "counterfactual_first" => v.counterfactual_result > 0,
                    _ => continue,
                };
                j.first_position_wins += first_won as u64;
            }
        }
        // Length bias is a pairwise judge's failing; a reference judge never sees lengths
        // (and the better route may simply write longer answers).
        let (p, c) = (grade.primary.as_ref(), grade.counterfactual.as_ref());
        if let (false, Some(p), Some(c), s @ (1 | -1)) = (parsed.is_empty(), p, c, sign(grade.score)) {
            if p.answer_chars != c.answer_chars {
                j.decisive_with_lengths += 1;
                let counterfactual_longer = c.answer_chars > p.answer_chars;
                j.longer_wins += ((s > 0) == counterfactual_longer) as u64;
            }
        }
    }

    fn add_human(&mut self, grade: &GradeRecord, human: Option<Option<f64>>) {
        let Some(acc) = self.human.as_mut() else { return };
        match human {
            Some(Some(h)) => {
                acc.labelled += 1;
                acc.sign_agree += (sign(h) == sign(grade.score)) as u64;
                acc.human_minus_judge.add(h - grade.score);
            }
            Some(None) => acc.unreadable += 1,
            None => {}
        }
    }

    fn add_calibration(&mut self, grade: &GradeRecord, w: f64) {
        let (Some(acc), Some(label)) = (self.calibration.as_mut(), self.settings.eligibility_label.as_ref()) else { return };
        let reasoning = self.settings.reasoning_route.as_str();
        let taken = route_name(&grade.route_taken);
        let not_taken = route_name(&grade.route_not_taken);
        // The reasoning route's advantage: the score when it is the counterfactual, its
        // negation when it was taken; grades not involving it say nothing.
        let advantage = if not_taken == reasoning {
            grade.score
        } else if taken == reasoning {
            -grade.score
        } else {
            return;
        };
        let Some(raw) = grade.labels.get(label) else { return };
        let Some(score) = dimensions::parse_unit(raw) else {
            acc.unreadable += 1;
            return;
        };
        let (band, _) = dimensions::eligibility_band(score);
        let b = &mut acc.bands[band];
        b.pairs += 1;
        b.reasoning_better += (advantage > 0.0) as u64;
        b.advantage.add(advantage);
        b.weighted_advantage.add(w, advantage);
        let s = acc.slices.entry(grade.slice.clone()).or_default();
        s.pairs += 1;
        s.score_sum += score;
        s.sent_to_reasoning += (taken == reasoning) as u64;
        s.per_band[band] += 1;
    }
}

fn add_to_group(acc: &mut GroupAcc, grade: &GradeRecord, w: f64, graded: bool, human_minus_judge: Option<f64>) {
    acc.grades += 1;
    acc.weight += w;
    acc.taken.add(grade.primary.as_ref());
    acc.not_taken.add(grade.counterfactual.as_ref());
    let judge_error = grade.outcome == GradeOutcome::JudgeError as i32;
    acc.judge_errors += judge_error as u64;
    acc.judgeable += (graded || judge_error) as u64;
    if graded {
        match sign(grade.score) {
            1 => acc.wins += 1,
            -1 => acc.losses += 1,
            _ => acc.ties += 1,
        }
        acc.weighted.add(w, grade.score);
        acc.scores.add(grade.score);
    }
    if let Some(d) = human_minus_judge {
        acc.human_minus_judge.add(w, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{RouteRef, Verdict};

    fn settings() -> AccumulatorSettings {
        AccumulatorSettings {
            dimensions: Dimensions { labels: vec![], eligibility_label: None, features: false },
            human_label: Some("human".into()),
            eligibility_label: None,
            reasoning_route: "reasoning".into(),
        }
    }

    fn grade(score: f64, slice: &str, rate: f64) -> GradeRecord {
        GradeRecord {
            slice: slice.into(),
            sampling_rate: rate,
            outcome: GradeOutcome::Graded as i32,
            score,
            route_taken: Some(RouteRef { name: "fast".into(), model: String::new() }),
            route_not_taken: Some(RouteRef { name: "reasoning".into(), model: String::new() }),
            primary: Some(HalfSummary { present: true, latency_ms: 100.0, cost_usd: 0.001, answer_chars: 100, ..Default::default() }),
            counterfactual: Some(HalfSummary { present: true, latency_ms: 900.0, cost_usd: 0.01, answer_chars: 300, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_grade_lands_in_its_group_of_every_dimension_with_its_weight() {
        let mut acc = Accumulator::new(settings());
        acc.add(&grade(1.0, "code", 0.5));
        acc.add(&grade(0.0, "code", 0.5));
        acc.add(&grade(-1.0, "chat", 0.1));
        let code = &acc.groups[1]["code"][&0];
        assert_eq!((code.wins, code.ties, code.losses, code.grades), (1, 1, 0, 2));
        assert_eq!(code.weight, 4.0);
        let all = &acc.groups[0]["all"][&0];
        assert_eq!((all.wins, all.losses), (1, 1));
        assert_eq!(acc.pair_weight, 14.0);
        assert_eq!(acc.directions, [("fast".to_string(), "reasoning".to_string())]);
        let p50 = all.not_taken.latency.quantile(0.5).unwrap();
        assert!((p50 - 900.0).abs() <= 9.0, "p50 {p50} within the sketch's 1%");
    }

    #[test]
    fn failures_controls_and_judge_health_are_counted_apart() {
        let mut acc = Accumulator::new(settings());
        let mut failed = grade(0.0, "code", 1.0);
        failed.outcome = GradeOutcome::PrimaryFailed as i32;
        failed.primary.as_mut().unwrap().failed = true;
        acc.add(&failed);
        let mut control = grade(0.5, "code", 1.0);
        control.kind = PairKind::Control as i32;
        acc.add(&control);
        let mut pairwise = grade(1.0, "code", 1.0);
        pairwise.orders_agree = true;
        pairwise.verdicts = vec![
            Verdict { order: "primary_first".into(), counterfactual_result: 1, ..Default::default() },
            Verdict { order: "counterfactual_first".into(), counterfactual_result: 1, ..Default::default() },
        ];
        pairwise.labels.insert("human".into(), "-1".into());
        acc.add(&pairwise);
        let code = &acc.groups[1]["code"][&0];
        assert_eq!((code.grades, code.taken.failed, code.scores.n), (2, 1, 1));
        assert_eq!(acc.controls.overall.scores.n, 1);
        assert_eq!((acc.judge.both_orders, acc.judge.orders_agree), (1, 1));
        assert_eq!((acc.judge.decisive_verdicts, acc.judge.first_position_wins), (2, 1));
        // The counterfactual (300 chars) is longer and won; only the pairwise grade counts.
        assert_eq!((acc.judge.decisive_with_lengths, acc.judge.longer_wins), (1, 1));
        let human = acc.human.as_ref().unwrap();
        assert_eq!((human.labelled, human.sign_agree, human.human_minus_judge.sum), (1, 0, -2.0));
    }

    #[test]
    fn weight_prefers_the_recorded_weight_then_the_rate() {
        let mut g = grade(0.0, "x", 0.25);
        assert_eq!(weight_of(&g), 4.0);
        g.sampling_weight = 8.0;
        assert_eq!(weight_of(&g), 8.0);
        g.sampling_weight = f64::NAN;
        g.sampling_rate = 0.0;
        assert_eq!(weight_of(&g), 1.0);
    }
}
