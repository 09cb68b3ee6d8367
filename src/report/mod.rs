//! `untaken report`: turns grades into per-slice estimates with honest intervals, and
//! flags the slices where the route taken gave up quality.
//!
//! Owns the pipeline: input → per-group accumulators → analysis → [`model::Report`].
//! Must never hold grades in memory: one streaming pass, memory grows with the number of
//! groups (and the set of seen `pair_id`s), never with the number of grades.
//!
//! Modules, from the pure core outwards:
//! - [`stats`]: the estimators (Wilson, sign test, Hájek, BH, MDE, PPI), pure.
//! - [`dimensions`]: which groupings a grade belongs to (slice, labels, computed features).
//! - [`accumulate`]: per-group streaming accumulators.
//! - [`analysis`]: accumulators → per-group results, the flag rule, findings.
//! - [`model`]: the report's struct tree and `--json` schema.
//! - [`render_text`] / [`render_html`]: the terminal table and the HTML page;
//!   [`svg`]: the page's forest plot and calibration chart.
//! - [`options`]: [`ReportOptions`] and `report.toml`.
//! - [`input`]: JSON lines from a file or stdin, or a Kafka topic; dedup on `pair_id`.
//! - [`grade_json`]: the fast JSON grade decoder (pbjson's decides what it does not take).
//! - [`scenario`]: synthetic grades from a known truth, for simulations and benchmarks.
use std::io::BufReader;

pub mod accumulate;
pub mod analysis;
pub mod dimensions;
pub mod grade_json;
pub mod input;
pub mod model;
pub mod options;
pub mod render_html;
pub mod render_text;
pub mod scenario;
pub mod stats;
pub mod svg;

pub use input::{KafkaSource, KafkaStart, Source};
pub use model::Report;
pub use options::{ReportConfig, ReportOptions};

use accumulate::{Accumulator, AccumulatorSettings};
use analysis::AnalysisSettings;
use dimensions::Dimensions;
use input::{Ingest, InputError};

use crate::config::ConfigError;
use crate::proto::v1::GradeRecord;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A bad option or config value (exit 64).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The input could not be read: unreadable file, brokers unreachable (exit 1).
    #[error(transparent)]
    Input(#[from] InputError),
    /// Nothing to report on (exit 1).
    #[error("no grades in {input}: {records} record(s) read, {malformed} malformed, {duplicates} duplicate(s)")]
    Empty { input: String, records: u64, malformed: u64, duplicates: u64 },
}

impl ReportError {
    /// 64 for bad configuration, 1 when the report could not be made.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReportError::Config(_) => 64,
            ReportError::Input(_) | ReportError::Empty { .. } => 1,
        }
    }
}

/// The streaming core shared by every input: feed grades, then `finish`.
/// Simulations drive it directly with synthetic grades, so they test the real code path.
pub struct Pipeline {
    ingest: Ingest,
    acc: Accumulator,
    analysis: AnalysisSettings,
}

impl Pipeline {
    pub fn new(opts: &ReportOptions) -> Self {
        let dimensions = Dimensions { labels: opts.labels.clone(), eligibility_label: opts.eligibility_label.clone(), features: opts.features };
        Pipeline {
            ingest: Ingest::default(),
            acc: Accumulator::new(AccumulatorSettings {
                dimensions,
                human_label: opts.human_label.clone(),
                eligibility_label: opts.eligibility_label.clone(),
                reasoning_route: opts.reasoning_route.clone(),
            }),
            analysis: AnalysisSettings { q: opts.q, noise_band_points: opts.noise_band_points, min_pairs: opts.min_pairs },
        }
    }

    /// One decoded grade (deduplicated on `pair_id`).
    pub fn offer(&mut self, grade: GradeRecord) {
        self.ingest.offer(Ok(grade), String::new, &mut self.acc);
    }

    /// The report, or [`ReportError::Empty`] when no grade was kept.
    pub fn finish(self, source: String, generated_at: String) -> Result<Report, ReportError> {
        let mut summary = self.ingest.summary;
        if summary.grades == 0 {
            return Err(ReportError::Empty { input: source, records: summary.records_read, malformed: summary.malformed, duplicates: summary.duplicates });
        }
        summary.pair_grades = self.acc.pair_grades;
        summary.control_grades = self.acc.control_grades;
        summary.outcomes = analysis::outcome_counts(&self.acc);
        Ok(analysis::analyze(&self.acc, &self.analysis, summary, source, generated_at))
    }
}

/// Reads the grades once and builds the report. Blocks (file, stdin or Kafka reads).
pub fn run(opts: &ReportOptions) -> Result<Report, ReportError> {
    opts.validate()?;
    let mut p = Pipeline::new(opts);
    let what = opts.source.describe();
    match &opts.source {
        Source::File(path) => {
            let file = std::fs::File::open(path).map_err(|source| InputError::Open { path: path.clone(), source })?;
            input::read_lines(BufReader::with_capacity(1 << 20, file), &what, &mut p.ingest, &mut p.acc)?;
        }
        Source::Stdin => input::read_lines(std::io::stdin().lock(), &what, &mut p.ingest, &mut p.acc)?,
        Source::Kafka(k) => input::read_kafka(k, &mut p.ingest, &mut p.acc)?,
    }
    p.finish(what, humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string())
}

/// End-to-end simulations: synthetic grades from a known truth → [`Pipeline`] (the same
/// accumulators, analysis and flag rule as `untaken report`) → findings.
#[cfg(test)]
mod simulations {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::model::{FindingKind, Report};
    use super::scenario::{self, Scenario};
    use super::*;

    const DATA_SETS: u64 = 1000;

    fn options() -> ReportOptions {
        ReportOptions { labels: vec![scenario::TENANT_LABEL.into(), scenario::LANGUAGE_LABEL.into()], ..Default::default() }
    }

    fn report(s: &Scenario, seed: u64, opts: &ReportOptions) -> Report {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut p = Pipeline::new(opts);
        s.generate(&mut rng, |g| p.offer(g));
        p.finish("simulation".into(), String::new()).expect("grades")
    }

    fn flagged(r: &Report, dimension: &str, group: &str) -> bool {
        r.regressions().any(|f| f.dimension == dimension && f.group == group && f.route_taken == scenario::FAST)
    }

    /// The scenario: 15-point loss on a 5% slice, ≤ 5% of 20,000 requests shadowed.
    #[test]
    fn the_rare_slice_is_flagged_hidden_in_at_least_90_percent_of_data_sets() {
        let s = Scenario::essay();
        assert!(s.shadowed_share() <= 0.05, "{}", s.shadowed_share());
        let opts = options();
        let (mut found, mut hidden, mut covered, mut overall_covered) = (0, 0, 0, 0);
        // The truth the intervals must cover: fast → reasoning on multi_step, and overall
        // (multi_step's 5% × 15 points, the 3% sent to reasoning counting negatively).
        let slice_truth = 15.0;
        let overall_truth = 0.05 * 15.0 * (1.0 - 2.0 * s.reasoning_share);
        for seed in 0..DATA_SETS {
            let r = report(&s, seed, &opts);
            if flagged(&r, "slice", "multi_step") {
                found += 1;
                hidden += r.regressions().any(|f| f.group == "multi_step" && f.hidden) as u64;
            }
            let g = r.groups.iter().find(|g| g.dimension == "slice" && g.group == "multi_step" && g.route_taken == scenario::FAST).unwrap();
            covered += g.mean_points.unwrap().contains(slice_truth) as u64;
            overall_covered += r.overall.weighted_points.unwrap().contains(overall_truth) as u64;
        }
        let rate = |k: u64| k as f64 / DATA_SETS as f64;
        eprintln!("essay: multi_step flagged in {found}/{DATA_SETS}, hidden in {hidden}; coverage slice {covered}, overall {overall_covered}");
        assert!(rate(found) >= 0.90, "multi_step flagged in {} of {DATA_SETS} data sets", found);
        assert!(rate(hidden) >= 0.80 * rate(found), "hidden in {hidden} of {found} flagged data sets");
        assert!((0.93..=0.97).contains(&rate(covered)), "multi_step interval covered 15 points in {covered} of {DATA_SETS}");
        assert!((0.93..=0.97).contains(&rate(overall_covered)), "overall interval covered the truth in {overall_covered} of {DATA_SETS}");
    }

    #[test]
    fn a_judge_biased_on_controls_raises_the_floor() {
        // Every CONTROL grade says the counterfactual is better: the judge favours it.
        let s = Scenario::essay();
        let mut rng = StdRng::seed_from_u64(8);
        let mut p = Pipeline::new(&options());
        s.generate(&mut rng, |mut g| {
            if g.kind == crate::proto::v1::PairKind::Control as i32 {
                g.score = if g.pair_id.as_bytes()[0] % 2 == 0 { 1.0 } else { 0.0 };
            }
            p.offer(g)
        });
        let r = p.finish("sim".into(), String::new()).unwrap();
        assert!(r.noise_floor.floor_points > 20.0, "{:?}", r.noise_floor);
        let all = r.groups.iter().find(|g| g.dimension == "all" && g.route_taken == scenario::FAST).unwrap();
        assert!(all.noise_floor_points > 20.0);
        // The 15-point loss no longer clears a floor of 20+ points; with an honest judge it does.
        assert!(!flagged(&r, "slice", "multi_step"), "{:?}", r.findings);
        assert!(flagged(&report(&s, 8, &options()), "slice", "multi_step"));
    }

    #[test]
    fn null_data_raises_a_flag_in_at_most_5_percent_of_data_sets() {
        let (s, opts) = (Scenario::null(), options());
        let runs = 500;
        let false_flags = (0..runs).filter(|&seed| report(&s, 10_000 + seed, &opts).exit_code() == 2).count();
        eprintln!("null: {false_flags}/{runs} data sets flagged");
        assert!(false_flags as f64 / runs as f64 <= 0.05, "{false_flags} of {runs} null data sets flagged");
    }

    #[test]
    fn a_loss_in_a_cohort_no_label_names_is_found_through_a_request_feature() {
        let (s, opts) = (Scenario::unlabelled_cohort(), options());
        let runs = 100;
        let found = (0..runs).filter(|&seed| flagged(&report(&s, 20_000 + seed, &opts), "tools", "tools")).count();
        eprintln!("unlabelled cohort: tools flagged in {found}/{runs}");
        assert!(found as f64 / runs as f64 >= 0.90, "the tools cohort was flagged in {found} of {runs} data sets");
    }

    #[test]
    fn duplicates_count_once_and_controls_set_the_noise_floor() {
        let s = Scenario::essay();
        let mut rng = StdRng::seed_from_u64(7);
        let mut p = Pipeline::new(&options());
        let mut kept = 0;
        s.generate(&mut rng, |g| {
            kept += 1;
            p.offer(g.clone());
            p.offer(g);
        });
        let r = p.finish("sim".into(), String::new()).unwrap();
        assert_eq!((r.input.grades, r.input.duplicates), (kept, kept));
        assert!(r.noise_floor.control_pairs > 20);
        let control = r.noise_floor.overall_points.unwrap();
        let distance = if control.contains(0.0) { 0.0 } else { control.lower.abs().min(control.upper.abs()) };
        assert_eq!(r.noise_floor.floor_points, distance);
        assert!(r.findings.iter().all(|f| f.kind != FindingKind::InputWarning), "{:?}", r.findings);
    }

    /// The calibration's threshold follows the traffic: `multi_step` (scores 0.5–1.0, the
    /// reasoning route 15 points better) is sent to reasoning, the parity slices are not.
    #[test]
    fn the_suggested_threshold_sends_multi_step_to_reasoning() {
        let s = Scenario::essay();
        let opts = ReportOptions { eligibility_label: Some(scenario::ELIGIBILITY_LABEL.into()), ..options() };
        let runs = 100;
        let (mut sent, mut parity_sent) = (0, 0);
        for seed in 0..runs {
            let r = report(&s, 30_000 + seed, &opts);
            let c = r.calibration.expect("calibration");
            let would = |slice: &str| c.slices.iter().find(|x| x.slice == slice).and_then(|x| x.would_send_to_reasoning).unwrap_or(0.0);
            sent += (would("multi_step") >= 0.5) as u64;
            parity_sent += (would("chat") > 0.0 || would("summarize") > 0.0) as u64;
        }
        eprintln!("calibration: multi_step sent to reasoning in {sent}/{runs}, chat or summarize in {parity_sent}");
        assert!(sent as f64 / runs as f64 >= 0.90, "multi_step sent to reasoning in {sent} of {runs} data sets");
        assert!(parity_sent as f64 / runs as f64 <= 0.10, "chat or summarize sent to reasoning in {parity_sent} of {runs}");
    }
}
