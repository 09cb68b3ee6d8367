//! The report as data: the struct tree `untaken report` builds, prints as a table,
//! writes as `--json` and renders as an HTML page.
//!
//! Owns: the shape and meaning of every reported figure, and its JSON schema
//! (`schema_version`). Must never compute anything (that is `analysis`) nor read input.
//!
//! Conventions, which the JSON schema inherits:
//! - Scores are from the counterfactual's side, in **points** (grade score × 100):
//!   positive = the route *not* taken was better = the route taken gave up quality.
//! - Rates are fractions in [0, 1]; latencies in milliseconds; costs in USD per request.
//! - Every interval is a two-sided 95% interval, `{estimate, lower, upper}`.
//! - Fields are only ever added under one `schema_version`; a rename or removal bumps it.
use serde::Serialize;

/// Version of the `--json` schema below.
pub const SCHEMA_VERSION: u32 = 1;

/// The whole report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// [`SCHEMA_VERSION`]: consumers check it before reading anything else.
    pub schema_version: u32,
    /// When the report was made (RFC 3339, UTC).
    pub generated_at: String,
    /// Where the grades came from, e.g. `file grades.jsonl` or `kafka untaken.grades`.
    pub source: String,
    /// The settings the figures depend on, so a reader can reproduce them.
    pub settings: Settings,
    /// What was read: counts of lines, grades, duplicates, malformed lines.
    pub input: InputSummary,
    /// The conclusions, most serious first: regressions, then notes and warnings.
    pub findings: Vec<Finding>,
    /// The quality the router gave up over all PAIR grades (all directions together).
    pub overall: Overall,
    /// What the judge's own noise looks like, from CONTROL grades.
    pub noise_floor: NoiseFloor,
    /// One row per (dimension, group, direction): every group that was seen.
    pub groups: Vec<GroupResult>,
    /// Whether the judge can be trusted: order agreement, position and length bias, errors.
    pub judge_health: JudgeHealth,
    /// Judge against human verdicts; present when a human-verdict label is configured.
    pub human: Option<HumanAgreement>,
    /// Reasoning-eligibility calibration; present when an eligibility label is configured.
    pub calibration: Option<Calibration>,
    /// Per slice and direction: quality given up against latency and cost saved.
    pub trades: Vec<Trade>,
}

/// The settings that shaped the figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Settings {
    /// Benjamini–Hochberg false-discovery rate across all tested groups.
    pub q: f64,
    /// The overall effect, in points, the team treats as "no change".
    pub noise_band_points: f64,
    /// Groups with fewer graded pairs are shown but not tested.
    pub min_pairs: u64,
    /// Confidence level of every interval (0.95).
    pub confidence: f64,
    /// Every dimension the grades were grouped by (`all`, `slice`, labels, computed features).
    pub dimensions: Vec<String>,
    /// Label carrying a human verdict in [-1, 1], when configured.
    pub human_label: Option<String>,
    /// Label carrying a reasoning-eligibility score in [0, 1], when configured.
    pub eligibility_label: Option<String>,
    /// Route name treated as the reasoning route by the calibration.
    pub reasoning_route: String,
}

/// What was read.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct InputSummary {
    /// Lines (file) or messages (Kafka) read, blank lines excluded.
    pub records_read: u64,
    /// Grades kept after dropping duplicates and malformed records.
    pub grades: u64,
    /// Grades whose `pair_id` was already seen (counted once).
    pub duplicates: u64,
    /// Records that could not be decoded: counted, reported, skipped.
    pub malformed: u64,
    /// The first few malformed records: where, and why (never their content).
    pub malformed_examples: Vec<MalformedRecord>,
    /// Kept grades of kind PAIR.
    pub pair_grades: u64,
    /// Kept grades of kind CONTROL.
    pub control_grades: u64,
    /// Kept grades by outcome (`GRADE_OUTCOME_GRADED`, `GRADE_OUTCOME_JUDGE_ERROR`, ...).
    pub outcomes: Vec<Count>,
}

/// A record that could not be decoded.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MalformedRecord {
    /// `line 12` for a file, `partition 0 offset 41` for Kafka.
    pub position: String,
    /// The decoder's message.
    pub error: String,
}

/// A named count.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Count {
    pub name: String,
    pub count: u64,
}

/// A point estimate with its 95% interval.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Interval {
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
}

impl Interval {
    /// True when the interval contains `x`.
    pub fn contains(&self, x: f64) -> bool {
        self.lower <= x && x <= self.upper
    }
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The route taken gave up quality on a group, beyond the noise floor (flagged: exit 2).
    Regression,
    /// The router paid for the slower/costlier route on a group and gained no quality (reported, not flagged).
    SlowRouteForNothing,
    /// The judge looks biased or unreliable (reported, not flagged).
    JudgeWarning,
    /// Something about the input a reader must know (malformed lines, no controls...).
    InputWarning,
}

/// One conclusion, in words and in numbers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    pub kind: FindingKind,
    /// Regression only: the overall figure looks fine (its interval includes 0, or it is inside the noise band).
    pub hidden: bool,
    /// The group concerned; empty for judge and input warnings.
    pub dimension: String,
    pub group: String,
    pub route_taken: String,
    pub route_not_taken: String,
    /// Graded pairs in the group.
    pub pairs: u64,
    /// The group's estimated share of all traffic (weighted by inverse sampling probability).
    pub traffic_share: Option<f64>,
    /// The group's effect in points.
    pub effect_points: Option<Interval>,
    /// Benjamini–Hochberg adjusted p-value of the group's sign test.
    pub q_value: Option<f64>,
    /// The overall effect in points, for comparison.
    pub overall_points: Option<Interval>,
    /// The finding in words a router engineer understands.
    pub message: String,
}

/// The overall estimate.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Overall {
    /// Graded PAIR grades.
    pub pairs: u64,
    /// Σ weight: the estimated number of requests the graded pairs stand for.
    pub estimated_requests: f64,
    /// Hájek estimate Σw·s/Σw in points, with its linearisation (sandwich) interval.
    pub weighted_points: Option<Interval>,
    /// Plain mean of the scores in points, with its t interval (biased when sampling rates differ).
    pub unweighted_points: Option<Interval>,
    /// Prediction-powered estimate corrected with human verdicts, when a human label is configured.
    pub ppi_points: Option<Interval>,
    /// True when the weighted interval includes 0 or |estimate| is inside the noise band.
    pub looks_fine: bool,
}

/// The judge's noise, from CONTROL grades (the same route judged against itself).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NoiseFloor {
    /// Graded CONTROL grades.
    pub control_pairs: u64,
    /// Wins, ties and losses of all controls, with Wilson intervals and the sign test.
    #[serde(flatten)]
    pub verdicts: ControlVerdicts,
    /// Mean control score in points over all controls, with its interval.
    pub overall_points: Option<Interval>,
    /// Per slice, where a slice has at least `min_pairs` controls.
    pub per_slice: Vec<SliceNoise>,
    /// The floor applied where no per-slice figure exists: the distance from 0 to the overall
    /// control interval (0 when it contains 0, or without controls).
    pub floor_points: f64,
}

/// The noise floor of one slice.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SliceNoise {
    pub slice: String,
    pub control_pairs: u64,
    pub points: Interval,
    /// Distance from 0 to `points` (0 when it contains 0): the floor applied to this slice's groups.
    pub floor_points: f64,
    #[serde(flatten)]
    pub verdicts: ControlVerdicts,
}

/// CONTROL grades judged like a group: "win" = the second copy of the route judged better.
/// An unbiased judge splits wins and losses evenly (sign test p-values large).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ControlVerdicts {
    pub wins: u64,
    pub ties: u64,
    pub losses: u64,
    /// Wilson intervals of the win and loss rates over all controls (ties included in n).
    pub win_rate: Option<Interval>,
    pub loss_rate: Option<Interval>,
    pub sign_test: Option<SignTest>,
}

/// What the flag rule concluded for a group.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GroupStatus {
    /// Fewer than `min_pairs` graded pairs: shown, not tested.
    TooFewPairs,
    /// Tested, nothing to report.
    NoDifference,
    /// Flagged: the route taken gave up quality.
    Regression,
    /// The route not taken is significantly worse: the router chose well.
    RouteTakenBetter,
    /// Reported: the route taken was slower/costlier and gained nothing measurable.
    SlowRouteForNothing,
}

/// Latency of each half and the difference (route not taken − route taken).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct LatencyComparison {
    pub taken_p50_ms: Option<f64>,
    pub taken_p95_ms: Option<f64>,
    pub not_taken_p50_ms: Option<f64>,
    pub not_taken_p95_ms: Option<f64>,
    /// not taken − taken: positive means the route taken was faster.
    pub diff_p50_ms: Option<f64>,
    pub diff_p95_ms: Option<f64>,
}

/// Mean cost per request of each half and the difference (route not taken − route taken).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct CostComparison {
    pub taken_usd: Option<f64>,
    pub not_taken_usd: Option<f64>,
    /// not taken − taken: positive means the route taken was cheaper.
    pub diff_usd: Option<f64>,
}

/// The exact sign test on the non-tied pairs.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct SignTest {
    /// Pairs with a non-zero score.
    pub non_ties: u64,
    /// P(wins ≥ observed) under H0 p = ½: small = the route not taken is better.
    pub p_not_taken_better: f64,
    /// P(wins ≤ observed) under H0: small = the route taken is better.
    pub p_taken_better: f64,
    pub p_two_sided: f64,
}

/// One group of one dimension, in one direction.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupResult {
    /// `all`, `slice`, `label:<name>`, or a computed feature (`prompt_tokens`, `turns`, `tools`).
    pub dimension: String,
    /// The group's value, e.g. `multi_step`, `1k-4k`, `present`.
    pub group: String,
    pub route_taken: String,
    pub route_not_taken: String,
    /// PAIR grades of any outcome in the group.
    pub grades: u64,
    /// Graded PAIR grades (outcome GRADED): the n of every score statistic.
    pub pairs: u64,
    /// Σ weight of the group's grades over Σ weight of all PAIR grades.
    pub traffic_share: f64,
    pub estimated_requests: f64,
    /// Counterfactual won (score > 0), tied (= 0), lost (< 0).
    pub wins: u64,
    pub ties: u64,
    pub losses: u64,
    /// Wilson intervals on the win and loss rates among graded pairs.
    pub win_rate: Option<Interval>,
    pub loss_rate: Option<Interval>,
    /// Hájek (weighted) mean score in points with its interval.
    pub mean_points: Option<Interval>,
    /// Plain mean in points.
    pub unweighted_mean_points: Option<f64>,
    /// PPI-corrected mean in points, when a human label is configured and the group has labelled pairs.
    pub ppi_points: Option<Interval>,
    pub sign_test: Option<SignTest>,
    /// Benjamini–Hochberg adjusted p-value (one-sided, "route not taken better"), for tested groups.
    pub q_value: Option<f64>,
    /// For groups BH selected (q ≤ `q`): the lower bound of the mean's interval widened to the
    /// false-coverage-rate level 1 − q·R/m (Benjamini–Yekutieli); the flag rule compares it
    /// with the noise floor.
    pub adjusted_lower_points: Option<f64>,
    /// Smallest true effect in points this group detects with 80% power (two-sided α = 0.05).
    pub mde_points: Option<f64>,
    /// The noise floor applied to this group, in points.
    pub noise_floor_points: f64,
    /// Failure rates (Wilson) of each half among the group's grades, and judge error rate.
    pub taken_failure_rate: Option<Interval>,
    pub not_taken_failure_rate: Option<Interval>,
    pub judge_error_rate: Option<Interval>,
    pub latency: LatencyComparison,
    pub cost: CostComparison,
    pub status: GroupStatus,
}

/// Judge health.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct JudgeHealth {
    /// Grades with outcome GRADED (PAIR and CONTROL).
    pub graded: u64,
    /// Grades with outcome JUDGE_ERROR, and their rate among grades where both halves arrived.
    pub judge_errors: u64,
    pub judge_error_rate: Option<f64>,
    /// Pairwise grades with both orders judged.
    pub pairwise_both_orders: u64,
    /// How often both orders gave the same verdict.
    pub orders_agree_rate: Option<Interval>,
    /// Among decisive verdicts, how often the answer shown first won (0.5 = no position bias).
    pub first_position_win_rate: Option<Interval>,
    /// Among decisive grades whose answers differ in length, how often the longer answer won.
    pub longer_answer_win_rate: Option<Interval>,
    /// The judges seen (kind, model, prompt version) with their grade counts.
    pub judges: Vec<JudgeSeen>,
    /// Plain-language warnings (e.g. longer answer wins above 0.7).
    pub warnings: Vec<String>,
}

/// A judge seen in the grades.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JudgeSeen {
    pub kind: String,
    pub model: String,
    pub prompt_version: String,
    pub grades: u64,
}

/// Judge against human verdicts (pairs carrying the human-verdict label).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HumanAgreement {
    pub label: String,
    /// Graded PAIR grades with a human verdict.
    pub labelled_pairs: u64,
    /// Labels that could not be read as a number in [-1, 1].
    pub unreadable_labels: u64,
    /// How often the judge's sign (win / tie / loss) equals the human's.
    pub agreement_rate: Option<Interval>,
    /// Mean (human − judge) in points on the labelled pairs: the judge's bias.
    pub bias_points: Option<Interval>,
}

/// Reasoning-eligibility calibration.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Calibration {
    pub label: String,
    /// The route treated as "reasoning".
    pub reasoning_route: String,
    /// Graded PAIR grades with a readable score that involve the reasoning route.
    pub pairs: u64,
    pub unreadable_labels: u64,
    /// Ten bands of the score, [0, 0.1) … [0.9, 1.0].
    pub bands: Vec<CalibrationBand>,
    /// The lowest band edge whose band (with `min_pairs` pairs) has a traffic-weighted
    /// advantage with a 95% interval above 0, every band above it with `min_pairs` pairs
    /// favouring the reasoning route; None when no edge qualifies.
    pub suggested_threshold: Option<f64>,
    /// Per slice: its mean score, and where the suggested threshold would have sent it.
    pub slices: Vec<SliceEligibility>,
}

/// One band of the eligibility score.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CalibrationBand {
    pub lower: f64,
    pub upper: f64,
    pub pairs: u64,
    /// How often the reasoning route was strictly better (Wilson interval).
    pub reasoning_better_rate: Option<Interval>,
    /// Traffic-weighted (Hájek) mean advantage of the reasoning route in points (positive =
    /// reasoning better).
    pub reasoning_advantage_points: Option<Interval>,
}

/// Where a threshold sends a slice.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SliceEligibility {
    pub slice: String,
    pub pairs: u64,
    pub mean_score: f64,
    /// Share of the slice's pairs the router actually sent to the reasoning route.
    pub sent_to_reasoning: f64,
    /// Share of the slice's pairs at or above the suggested threshold.
    pub would_send_to_reasoning: Option<f64>,
}

/// The trade the router made on a slice in one direction.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Trade {
    pub slice: String,
    pub route_taken: String,
    pub route_not_taken: String,
    pub pairs: u64,
    pub traffic_share: f64,
    /// Quality given up by taking this route, in points (= the group's mean).
    pub quality_given_up_points: Option<Interval>,
    /// Latency saved by taking this route (not taken − taken), at p50 and p95.
    pub latency_saved_p50_ms: Option<f64>,
    pub latency_saved_p95_ms: Option<f64>,
    /// Cost saved per request by taking this route (not taken − taken).
    pub cost_saved_usd: Option<f64>,
}

impl Report {
    /// The process exit code: 2 when any regression is flagged, else 0.
    /// (1 and 64 are for reports that could not be made; see `ReportError`.)
    pub fn exit_code(&self) -> u8 {
        if self.findings.iter().any(|f| f.kind == FindingKind::Regression) {
            2
        } else {
            0
        }
    }

    /// The flagged regressions.
    pub fn regressions(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.kind == FindingKind::Regression)
    }
}
