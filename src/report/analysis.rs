//! From accumulators to the report: per-group statistics, Benjamini–Hochberg across every
//! group of every dimension, the CONTROL noise floor, regression flags and their
//! hidden-ness, "slow route for nothing" notes, judge health, judge–human agreement with
//! prediction-powered estimates, eligibility calibration and the per-slice trade.
//!
//! Owns the flag rule (documented on [`analyze`] and in the README). Pure: no I/O, no clock.
//! Must never read grades (only accumulators) nor print.
use super::accumulate::{Accumulator, GroupAcc, HalfAcc};
use super::model::*;
use super::stats::{self, Moments, CONFIDENCE};
use crate::proto::v1::GradeOutcome;

/// The knobs of the flag rule.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisSettings {
    /// Benjamini–Hochberg false-discovery rate.
    pub q: f64,
    /// Overall effect in points the team treats as "no change".
    pub noise_band_points: f64,
    /// Groups with fewer graded pairs are shown but not tested.
    pub min_pairs: u64,
}

/// Longer-answer win rate above which the judge is called length-biased.
pub const LONGER_WINS_WARNING: f64 = 0.7;
/// Judge error rate above which the report warns.
pub const JUDGE_ERRORS_WARNING: f64 = 0.05;
/// α and power of the minimum detectable effect.
const MDE_ALPHA: f64 = 0.05;
const MDE_POWER: f64 = 0.8;

fn points(i: Interval) -> Interval {
    Interval { estimate: i.estimate * 100.0, lower: i.lower * 100.0, upper: i.upper * 100.0 }
}

fn wilson(k: u64, n: u64) -> Option<Interval> {
    stats::wilson(k, n, CONFIDENCE)
}

fn mean_points(m: &Moments) -> Option<Interval> {
    stats::mean_interval(m, CONFIDENCE).map(points)
}

/// Builds the report from the accumulators.
///
/// **Flag rule.** For every group (dimension × group × direction) with at least
/// `min_pairs` graded pairs: the one-sided exact sign test on non-ties, H1 "the route not
/// taken wins more often than it loses" (valid whatever the sampling weights). The
/// p-values of all tested groups of all dimensions go through Benjamini–Hochberg together.
/// A group is a **regression** when its BH q-value ≤ `q` *and* the lower bound of its
/// Hájek interval, widened for the selection (false-coverage-rate level 1 − q·R/m with R
/// groups selected of m tested), exceeds the noise floor. The test is on unweighted signs,
/// so a group that mixes an oversampled slice could be "significant" while its
/// traffic-weighted effect is not; requiring the weighted interval too keeps the two
/// consistent. The floor: how far the 95% interval of the mean CONTROL score
/// lies from 0 (its slice's controls when the slice has `min_pairs` of them, else all
/// controls; 0 when the interval contains 0 or there are no controls). A regression is
/// **hidden** when the overall Hájek interval includes 0 or |overall| < `noise_band_points`.
pub fn analyze(acc: &Accumulator, settings: &AnalysisSettings, input: InputSummary, source: String, generated_at: String) -> Report {
    let overall = overall(acc, settings);
    let noise_floor = noise_floor(acc, settings.min_pairs);
    let mut groups = groups(acc, settings, &noise_floor);
    apply_flag_rule(&mut groups, settings);
    let judge_health = judge_health(acc);
    let mut findings = Vec::new();
    regression_findings(&groups, &overall, &mut findings);
    slow_route_findings(&groups, &mut findings);
    findings.extend(judge_health.warnings.iter().map(|w| warning(FindingKind::JudgeWarning, w.clone())));
    input_warnings(&input, &noise_floor, &mut findings);
    Report {
        schema_version: SCHEMA_VERSION,
        generated_at,
        source,
        settings: Settings {
            q: settings.q,
            noise_band_points: settings.noise_band_points,
            min_pairs: settings.min_pairs,
            confidence: CONFIDENCE,
            dimensions: acc.dimension_names.clone(),
            human_label: acc.settings.human_label.clone(),
            eligibility_label: acc.settings.eligibility_label.clone(),
            reasoning_route: acc.settings.reasoning_route.clone(),
        },
        input,
        findings,
        trades: trades(&groups),
        overall,
        noise_floor,
        judge_health,
        human: human(acc),
        calibration: calibration(acc, settings.min_pairs),
        groups,
    }
}

fn overall(acc: &Accumulator, settings: &AnalysisSettings) -> Overall {
    let weighted = stats::hajek(&acc.overall, CONFIDENCE).map(points);
    let ppi = acc.human.as_ref().and_then(|_| stats::ppi_mean(&acc.overall, &acc.overall_human_minus_judge, CONFIDENCE)).map(points);
    Overall {
        pairs: acc.overall.n,
        estimated_requests: acc.overall.w,
        looks_fine: weighted.is_none_or(|w| w.contains(0.0) || w.estimate.abs() < settings.noise_band_points),
        weighted_points: weighted,
        unweighted_points: mean_points(&acc.overall_scores),
        ppi_points: ppi,
    }
}

/// The part of the judge's bias on CONTROL pairs that is distinguishable from zero: the
/// distance from 0 to the control interval (0 when the interval contains 0). Random noise
/// is already priced in by the sign test; the floor only adds what the controls show the
/// judge does systematically (e.g. favour the answer it sees second).
fn floor_of(i: &Interval) -> f64 {
    if i.contains(0.0) {
        0.0
    } else {
        i.lower.abs().min(i.upper.abs())
    }
}

fn noise_floor(acc: &Accumulator, min_pairs: u64) -> NoiseFloor {
    let overall = mean_points(&acc.controls.overall.scores);
    let mut per_slice: Vec<SliceNoise> = acc
        .controls
        .per_slice
        .iter()
        .filter(|(_, c)| c.scores.n >= min_pairs.max(2))
        .filter_map(|(slice, c)| {
            let points = mean_points(&c.scores)?;
            Some(SliceNoise { slice: slice.clone(), control_pairs: c.scores.n, floor_points: floor_of(&points), points, verdicts: control_verdicts(c) })
        })
        .collect();
    per_slice.sort_by(|a, b| a.slice.cmp(&b.slice));
    NoiseFloor {
        control_pairs: acc.controls.overall.scores.n,
        verdicts: control_verdicts(&acc.controls.overall),
        floor_points: overall.as_ref().map_or(0.0, floor_of),
        overall_points: overall,
        per_slice,
    }
}

/// The same win/tie/loss statistics as a group's, on CONTROL grades: a judge comparing a
/// route with itself should split wins and losses evenly.
fn control_verdicts(c: &super::accumulate::ControlScores) -> ControlVerdicts {
    let n = c.scores.n;
    let sign = stats::sign_test(c.wins, c.losses);
    ControlVerdicts {
        wins: c.wins,
        ties: c.ties,
        losses: c.losses,
        win_rate: wilson(c.wins, n),
        loss_rate: wilson(c.losses, n),
        sign_test: (n > 0).then_some(SignTest { non_ties: c.wins + c.losses, p_not_taken_better: sign.greater, p_taken_better: sign.less, p_two_sided: sign.two_sided }),
    }
}

fn latency(taken: &HalfAcc, not_taken: &HalfAcc) -> LatencyComparison {
    let (t50, t95) = (taken.latency.quantile(0.5), taken.latency.quantile(0.95));
    let (n50, n95) = (not_taken.latency.quantile(0.5), not_taken.latency.quantile(0.95));
    let diff = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
    LatencyComparison {
        diff_p50_ms: diff(n50, t50),
        diff_p95_ms: diff(n95, t95),
        taken_p50_ms: t50,
        taken_p95_ms: t95,
        not_taken_p50_ms: n50,
        not_taken_p95_ms: n95,
    }
}

fn cost(taken: &HalfAcc, not_taken: &HalfAcc) -> CostComparison {
    let (t, n) = (taken.cost.mean(), not_taken.cost.mean());
    CostComparison { diff_usd: t.zip(n).map(|(t, n)| n - t), taken_usd: t, not_taken_usd: n }
}

fn group_result(dimension: &str, group: &str, direction: &(String, String), g: &GroupAcc, acc: &Accumulator, settings: &AnalysisSettings, floor: &NoiseFloor) -> GroupResult {
    let pairs = g.scores.n;
    let tested = pairs >= settings.min_pairs.max(1);
    let sign = stats::sign_test(g.wins, g.losses);
    let noise_floor_points = if dimension == "slice" {
        floor.per_slice.iter().find(|s| s.slice == group).map_or(floor.floor_points, |s| s.floor_points)
    } else {
        floor.floor_points
    };
    GroupResult {
        dimension: dimension.to_string(),
        group: group.to_string(),
        route_taken: direction.0.clone(),
        route_not_taken: direction.1.clone(),
        grades: g.grades,
        pairs,
        traffic_share: if acc.pair_weight > 0.0 { g.weight / acc.pair_weight } else { 0.0 },
        estimated_requests: g.weight,
        wins: g.wins,
        ties: g.ties,
        losses: g.losses,
        win_rate: wilson(g.wins, pairs),
        loss_rate: wilson(g.losses, pairs),
        mean_points: stats::hajek(&g.weighted, CONFIDENCE).map(points),
        unweighted_mean_points: g.scores.mean().map(|m| m * 100.0),
        ppi_points: acc.human.as_ref().and_then(|_| stats::ppi_mean(&g.weighted, &g.human_minus_judge, CONFIDENCE)).map(points),
        sign_test: (pairs > 0).then_some(SignTest {
            non_ties: g.wins + g.losses,
            p_not_taken_better: sign.greater,
            p_taken_better: sign.less,
            p_two_sided: sign.two_sided,
        }),
        q_value: None,
        adjusted_lower_points: None,
        mde_points: g.scores.variance().and_then(|v| stats::minimum_detectable_effect(pairs, v.sqrt(), MDE_ALPHA, MDE_POWER)).map(|m| m * 100.0),
        noise_floor_points,
        taken_failure_rate: wilson(g.taken.failed, g.grades),
        not_taken_failure_rate: wilson(g.not_taken.failed, g.grades),
        judge_error_rate: wilson(g.judge_errors, g.judgeable),
        latency: latency(&g.taken, &g.not_taken),
        cost: cost(&g.taken, &g.not_taken),
        status: if tested { GroupStatus::NoDifference } else { GroupStatus::TooFewPairs },
    }
}

fn groups(acc: &Accumulator, settings: &AnalysisSettings, floor: &NoiseFloor) -> Vec<GroupResult> {
    let mut out = Vec::new();
    for (dim, by_group) in acc.dimension_names.iter().zip(&acc.groups) {
        let mut names: Vec<&String> = by_group.keys().collect();
        names.sort();
        for name in names {
            let mut dirs: Vec<(&u32, &GroupAcc)> = by_group[name].iter().collect();
            dirs.sort_by(|a, b| acc.directions[*a.0 as usize].cmp(&acc.directions[*b.0 as usize]));
            for (d, g) in dirs {
                out.push(group_result(dim, name, &acc.directions[*d as usize], g, acc, settings, floor));
            }
        }
    }
    out
}

/// BH across every tested group, then the flag rule (see [`analyze`]) and the other statuses.
fn apply_flag_rule(groups: &mut [GroupResult], settings: &AnalysisSettings) {
    let tested: Vec<usize> = (0..groups.len()).filter(|&i| groups[i].status != GroupStatus::TooFewPairs).collect();
    let p: Vec<f64> = tested.iter().map(|&i| groups[i].sign_test.map_or(1.0, |s| s.p_not_taken_better)).collect();
    let q_values = stats::benjamini_hochberg(&p);
    let selected = q_values.iter().filter(|&&q| q <= settings.q).count();
    // False-coverage-rate adjusted intervals for the BH-selected groups (Benjamini &
    // Yekutieli 2005, JASA 100:71): level 1 − q·R/m instead of 0.95, so the effects of the
    // groups singled out are not overstated by the selection.
    let widen = if selected > 0 { stats::z_two_sided(1.0 - settings.q * selected as f64 / tested.len() as f64) / stats::z_two_sided(CONFIDENCE) } else { 1.0 };
    for (&i, q) in tested.iter().zip(q_values) {
        let g = &mut groups[i];
        g.q_value = Some(q);
        let Some(mean) = g.mean_points else { continue };
        let adjusted_lower = mean.estimate - (mean.estimate - mean.lower) * widen;
        if q <= settings.q {
            g.adjusted_lower_points = Some(adjusted_lower);
        }
        g.status = if q <= settings.q && adjusted_lower > g.noise_floor_points {
            GroupStatus::Regression
        } else if mean.upper < 0.0 {
            GroupStatus::RouteTakenBetter
        } else if mean.estimate >= 0.0 && slower_and_no_cheaper(g) {
            GroupStatus::SlowRouteForNothing
        } else {
            GroupStatus::NoDifference
        };
    }
}

/// The route taken was slower at p50 and not cheaper: what it paid for must show as quality.
/// (The caller adds: the route not taken did at least as well on the grades, and the
/// group has `min_pairs`; the finding quotes the MDE so "no gain" is read with its power.)
fn slower_and_no_cheaper(g: &GroupResult) -> bool {
    g.latency.diff_p50_ms.is_some_and(|d| d < 0.0) && g.cost.diff_usd.is_none_or(|d| d <= 0.0)
}

/// A p- or q-value: three decimals, or scientific below 0.001.
pub fn fmt_p(p: f64) -> String {
    if p < 1e-16 {
        // Below double precision's resolution near 1: the exact value means nothing more.
        "<1e-16".to_string()
    } else if p < 0.001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

fn fmt_points(i: &Interval) -> String {
    format!("{:.1} points [95% CI {:.1}, {:.1}]", i.estimate, i.lower, i.upper)
}

/// "slice multi_step", "tenant=acme", "prompt_tokens 1k-4k", "all traffic".
pub fn describe_group(dimension: &str, group: &str) -> String {
    match dimension {
        "all" => "all traffic".to_string(),
        "slice" => format!("slice {group}"),
        "tools" => format!("requests with {}", if group == "tools" { "tools" } else { "no tools" }),
        "prompt_tokens" => format!("prompts of {group} tokens"),
        "turns" => format!("conversations of {group} user turns"),
        "eligibility" => format!("reasoning-eligibility score {group}"),
        d => match d.split_once(':') {
            Some((_, label)) => format!("{label}={group}"),
            None => format!("{d}={group}"),
        },
    }
}

fn regression_findings(groups: &[GroupResult], overall: &Overall, out: &mut Vec<Finding>) {
    let mut flagged: Vec<&GroupResult> = groups.iter().filter(|g| g.status == GroupStatus::Regression).collect();
    flagged.sort_by(|a, b| a.q_value.unwrap_or(1.0).total_cmp(&b.q_value.unwrap_or(1.0)));
    for g in flagged {
        let hidden = overall.looks_fine && g.dimension != "all";
        let effect = g.mean_points.expect("flagged groups have a mean");
        let overall_text = match &overall.weighted_points {
            Some(o) if hidden => format!("; overall only {} — inside the noise an aggregate eval would show", fmt_points(o)),
            Some(o) => format!("; overall {}", fmt_points(o)),
            None => String::new(),
        };
        let message = format!(
            "REGRESSION{}: on {} ({:.1}% of traffic, {} pairs) the route taken `{}` answers {} worse than `{}` (q = {}, noise floor {:.1}){}",
            if hidden { " (hidden)" } else { "" },
            describe_group(&g.dimension, &g.group),
            g.traffic_share * 100.0,
            g.pairs,
            g.route_taken,
            fmt_points(&effect),
            g.route_not_taken,
            fmt_p(g.q_value.unwrap_or(1.0)),
            g.noise_floor_points,
            overall_text,
        );
        out.push(Finding { hidden, overall_points: overall.weighted_points, ..group_finding(FindingKind::Regression, g, message) });
    }
    // Hidden first: those are the ones nobody else will see.
    out.sort_by_key(|f| !f.hidden);
}

/// Notes for whole slices (and all traffic): a note per label value or feature band would
/// bury the regressions; those groups still carry the status in the table.
fn slow_route_findings(groups: &[GroupResult], out: &mut Vec<Finding>) {
    let worth_a_note = |g: &&GroupResult| g.status == GroupStatus::SlowRouteForNothing && (g.dimension == "slice" || g.dimension == "all");
    for g in groups.iter().filter(worth_a_note) {
        let effect = g.mean_points.expect("tested groups have a mean");
        let cost = g.cost.diff_usd.map(|d| format!(" and ${:.4} more per request", -d)).unwrap_or_default();
        let message = format!(
            "SLOW ROUTE FOR NOTHING: on {} ({:.1}% of traffic, {} pairs) the router sent requests to `{}`, {:.0} ms slower at p50{}, and they were no better than `{}` would have been: {}; at this size only a difference above {:.1} points would show",
            describe_group(&g.dimension, &g.group),
            g.traffic_share * 100.0,
            g.pairs,
            g.route_taken,
            -g.latency.diff_p50_ms.unwrap_or(0.0),
            cost,
            g.route_not_taken,
            fmt_points(&effect),
            g.mde_points.unwrap_or(f64::NAN),
        );
        out.push(group_finding(FindingKind::SlowRouteForNothing, g, message));
    }
}

/// A finding about a group (not hidden, no overall figure: the caller sets those).
fn group_finding(kind: FindingKind, g: &GroupResult, message: String) -> Finding {
    Finding {
        kind,
        hidden: false,
        dimension: g.dimension.clone(),
        group: g.group.clone(),
        route_taken: g.route_taken.clone(),
        route_not_taken: g.route_not_taken.clone(),
        pairs: g.pairs,
        traffic_share: Some(g.traffic_share),
        effect_points: g.mean_points,
        q_value: g.q_value,
        overall_points: None,
        message,
    }
}

fn warning(kind: FindingKind, message: String) -> Finding {
    Finding {
        kind,
        hidden: false,
        dimension: String::new(),
        group: String::new(),
        route_taken: String::new(),
        route_not_taken: String::new(),
        pairs: 0,
        traffic_share: None,
        effect_points: None,
        q_value: None,
        overall_points: None,
        message,
    }
}

fn input_warnings(input: &InputSummary, floor: &NoiseFloor, out: &mut Vec<Finding>) {
    if input.malformed > 0 {
        out.push(warning(FindingKind::InputWarning, format!("{} malformed record(s) skipped (first: {})", input.malformed, input.malformed_examples.first().map_or(String::new(), |m| format!("{}: {}", m.position, m.error)))));
    }
    if floor.control_pairs == 0 {
        out.push(warning(FindingKind::InputWarning, "no graded CONTROL grades: the noise floor is taken as 0 (set [sampling] control_rate on the sidecar)".to_string()));
    }
}

fn judge_health(acc: &Accumulator) -> JudgeHealth {
    let j = &acc.judge;
    let mut h = JudgeHealth {
        graded: j.graded,
        judge_errors: j.judge_errors,
        judge_error_rate: (j.judgeable > 0).then(|| j.judge_errors as f64 / j.judgeable as f64),
        pairwise_both_orders: j.both_orders,
        orders_agree_rate: wilson(j.orders_agree, j.both_orders),
        first_position_win_rate: wilson(j.first_position_wins, j.decisive_verdicts),
        longer_answer_win_rate: wilson(j.longer_wins, j.decisive_with_lengths),
        judges: j.judges.iter().map(|((kind, model, prompt_version), n)| JudgeSeen { kind: kind.clone(), model: model.clone(), prompt_version: prompt_version.clone(), grades: *n }).collect(),
        warnings: Vec::new(),
    };
    if let Some(r) = h.longer_answer_win_rate.filter(|r| r.estimate > LONGER_WINS_WARNING) {
        h.warnings.push(format!("the longer answer wins {:.0}% of decisive grades (above {:.0}%): the judge may reward length, not quality", r.estimate * 100.0, LONGER_WINS_WARNING * 100.0));
    }
    if let Some(r) = h.first_position_win_rate.filter(|r| !r.contains(0.5)) {
        h.warnings.push(format!("the answer shown first wins {:.0}% of decisive verdicts [95% CI {:.0}%, {:.0}%]: position bias", r.estimate * 100.0, r.lower * 100.0, r.upper * 100.0));
    }
    if let Some(r) = h.orders_agree_rate.filter(|r| r.estimate < 0.5) {
        h.warnings.push(format!("the two answer orders agree on only {:.0}% of pairs: verdicts are close to coin flips", r.estimate * 100.0));
    }
    if let Some(r) = h.judge_error_rate.filter(|&r| r > JUDGE_ERRORS_WARNING) {
        h.warnings.push(format!("the judge failed on {:.1}% of the pairs it was asked about ({} errors)", r * 100.0, j.judge_errors));
    }
    h
}

fn human(acc: &Accumulator) -> Option<HumanAgreement> {
    let h = acc.human.as_ref()?;
    Some(HumanAgreement {
        label: acc.settings.human_label.clone()?,
        labelled_pairs: h.labelled,
        unreadable_labels: h.unreadable,
        agreement_rate: wilson(h.sign_agree, h.labelled),
        bias_points: mean_points(&h.human_minus_judge),
    })
}

fn calibration(acc: &Accumulator, min_pairs: u64) -> Option<Calibration> {
    let c = acc.calibration.as_ref()?;
    let bands: Vec<CalibrationBand> = c
        .bands
        .iter()
        .enumerate()
        .map(|(i, b)| CalibrationBand {
            lower: i as f64 / 10.0,
            upper: (i + 1) as f64 / 10.0,
            pairs: b.pairs,
            reasoning_better_rate: wilson(b.reasoning_better, b.pairs),
            reasoning_advantage_points: stats::hajek(&b.weighted_advantage, CONFIDENCE).map(points),
        })
        .collect();
    let suggested = suggested_threshold(&c.bands, min_pairs);
    let slices = c
        .slices
        .iter()
        .map(|(slice, s)| SliceEligibility {
            slice: slice.clone(),
            pairs: s.pairs,
            mean_score: s.score_sum / s.pairs as f64,
            sent_to_reasoning: s.sent_to_reasoning as f64 / s.pairs as f64,
            would_send_to_reasoning: suggested.map(|t| s.per_band[(t * 10.0).round() as usize..].iter().sum::<u64>() as f64 / s.pairs as f64),
        })
        .collect();
    Some(Calibration {
        label: acc.settings.eligibility_label.clone()?,
        reasoning_route: acc.settings.reasoning_route.clone(),
        pairs: c.bands.iter().map(|b| b.pairs).sum(),
        unreadable_labels: c.unreadable,
        bands,
        suggested_threshold: suggested,
        slices,
    })
}

/// The lowest band edge from which the reasoning route is better on the traffic: its band
/// has at least `min_pairs` pairs and a traffic-weighted (Hájek) advantage whose 95%
/// interval lies above 0, and every band above it with `min_pairs` pairs has a positive
/// advantage. Bands with fewer pairs say nothing either way. None when no edge qualifies.
fn suggested_threshold(bands: &[super::accumulate::BandAcc; 10], min_pairs: u64) -> Option<f64> {
    let enough = |b: &&super::accumulate::BandAcc| b.pairs >= min_pairs.max(2);
    let advantage = |b: &super::accumulate::BandAcc| stats::hajek(&b.weighted_advantage, CONFIDENCE);
    (0..bands.len())
        .find(|&i| {
            let clear = Some(&bands[i]).filter(enough).and_then(advantage).is_some_and(|a| a.lower > 0.0);
            clear && bands[i + 1..].iter().filter(enough).all(|b| advantage(b).is_some_and(|a| a.estimate > 0.0))
        })
        .map(|i| i as f64 / 10.0)
}

fn trades(groups: &[GroupResult]) -> Vec<Trade> {
    groups
        .iter()
        .filter(|g| g.dimension == "slice")
        .map(|g| Trade {
            slice: g.group.clone(),
            route_taken: g.route_taken.clone(),
            route_not_taken: g.route_not_taken.clone(),
            pairs: g.pairs,
            traffic_share: g.traffic_share,
            quality_given_up_points: g.mean_points,
            latency_saved_p50_ms: g.latency.diff_p50_ms,
            latency_saved_p95_ms: g.latency.diff_p95_ms,
            cost_saved_usd: g.cost.diff_usd,
        })
        .collect()
}

/// Grade outcomes by name, for the input summary.
pub fn outcome_counts(acc: &Accumulator) -> Vec<Count> {
    acc.outcomes
        .iter()
        .map(|(&o, &count)| Count { name: GradeOutcome::try_from(o).map_or_else(|_| format!("outcome {o}"), |o| o.as_str_name().to_string()), count })
        .collect()
}

/// The finding rules on synthetic grades drawn with fixed seeds, through [`Pipeline`] (the
/// same ingest, accumulators and analysis as `untaken report`).
///
/// [`Pipeline`]: crate::report::Pipeline
#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::proto::v1::{GradeRecord, HalfSummary, JudgeInfo, PairKind, RouteRef, Verdict};
    use crate::report::{Pipeline, ReportOptions};

    /// A route's answers: latency (ms), cost (USD), length (chars) and accuracy.
    #[derive(Clone, Copy)]
    struct Route {
        name: &'static str,
        latency_ms: f64,
        cost_usd: f64,
        chars: u32,
        accuracy: f64,
    }

    const FAST: Route = Route { name: "fast", latency_ms: 300.0, cost_usd: 0.0004, chars: 600, accuracy: 0.9 };
    const REASONING: Route = Route { name: "reasoning", latency_ms: 2500.0, cost_usd: 0.008, chars: 1500, accuracy: 0.9 };

    fn half(r: &Route, rng: &mut StdRng) -> HalfSummary {
        let u: f64 = rng.random();
        HalfSummary { present: true, status_code: 200, latency_ms: r.latency_ms * (0.8 + 0.4 * u), cost_usd: r.cost_usd, answer_chars: r.chars, ..Default::default() }
    }

    /// A reference-judged PAIR grade: score = correct(not taken) − correct(taken).
    fn grade(rng: &mut StdRng, slice: &str, taken: Route, not_taken: Route) -> GradeRecord {
        let score = rng.random_bool(not_taken.accuracy) as i32 as f64 - rng.random_bool(taken.accuracy) as i32 as f64;
        GradeRecord {
            pair_id: format!("{:032x}", rng.random::<u128>()),
            slice: slice.into(),
            sampling_weight: 1.0,
            kind: PairKind::Pair as i32,
            route_taken: Some(RouteRef { name: taken.name.into(), model: String::new() }),
            route_not_taken: Some(RouteRef { name: not_taken.name.into(), model: String::new() }),
            primary: Some(half(&taken, rng)),
            counterfactual: Some(half(&not_taken, rng)),
            outcome: GradeOutcome::Graded as i32,
            judge: Some(JudgeInfo { kind: "reference".into(), model: "exact".into(), prompt_version: String::new() }),
            score,
            ..Default::default()
        }
    }

    fn report(opts: &ReportOptions, grades: impl IntoIterator<Item = GradeRecord>) -> Report {
        let mut p = Pipeline::new(opts);
        grades.into_iter().for_each(|g| p.offer(g));
        p.finish("test".into(), String::new()).expect("grades")
    }

    fn slice_group<'a>(r: &'a Report, slice: &str, taken: &str) -> &'a GroupResult {
        r.groups.iter().find(|g| g.dimension == "slice" && g.group == slice && g.route_taken == taken).expect("group")
    }

    /// The router sends slice `hard` to the slow, costly route, which answers no better: a
    /// "slow route for nothing" note exactly when the group shows no loss and no gain, never
    /// for the fast route's slice.
    #[test]
    fn a_slow_route_that_gains_nothing_gets_a_note() {
        let opts = ReportOptions::default();
        let mut noted = 0;
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            let grades: Vec<_> = (0..600).map(|i| if i % 2 == 0 { grade(&mut rng, "hard", REASONING, FAST) } else { grade(&mut rng, "easy", FAST, REASONING) }).collect();
            let r = report(&opts, grades);
            let note = |slice: &str| r.findings.iter().find(|f| f.kind == FindingKind::SlowRouteForNothing && f.dimension == "slice" && f.group == slice);
            let hard = slice_group(&r, "hard", "reasoning");
            let expected = hard.status != GroupStatus::Regression && hard.status != GroupStatus::RouteTakenBetter && hard.mean_points.unwrap().estimate >= 0.0;
            assert_eq!(note("hard").is_some(), expected, "seed {seed}: {:?} {:?}", hard.status, hard.mean_points);
            assert!(note("easy").is_none(), "seed {seed}: the fast route is not slow: {:?}", r.findings);
            if let Some(f) = note("hard") {
                noted += 1;
                assert!(f.message.contains("SLOW ROUTE FOR NOTHING") && f.message.contains("ms slower at p50"), "{}", f.message);
                assert_eq!(f.route_taken, "reasoning");
            }
        }
        assert!(noted >= 10, "a slow route that gains nothing was noted in {noted} of 40 data sets");
    }

    /// A pairwise judge's verdicts on `n` grades: the counterfactual (longer) answer wins
    /// with probability `longer_wins`; with probability `first_wins` the verdict goes to the
    /// answer shown first when the two orders would otherwise tie.
    fn judged(seed: u64, n: usize, longer_wins: f64, first_wins: f64) -> Vec<GradeRecord> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let mut g = grade(&mut rng, "all", FAST, REASONING);
                g.judge = Some(JudgeInfo { kind: "pairwise".into(), model: "judge".into(), prompt_version: "v1".into() });
                let counterfactual_wins = rng.random_bool(longer_wins);
                g.score = if counterfactual_wins { 1.0 } else { -1.0 };
                // The verdict in each order: the first-shown answer wins with probability
                // `first_wins`, whatever the quality.
                let verdict = |order: &str, rng: &mut StdRng| {
                    let counterfactual_first = order == "counterfactual_first";
                    let first_won = rng.random_bool(first_wins);
                    let result = if first_won == counterfactual_first { 1 } else { -1 };
                    Verdict { order: order.into(), raw: String::new(), counterfactual_result: result, ..Default::default() }
                };
                g.verdicts = vec![verdict("primary_first", &mut rng), verdict("counterfactual_first", &mut rng)];
                g.orders_agree = g.verdicts[0].counterfactual_result == g.verdicts[1].counterfactual_result;
                g
            })
            .collect()
    }

    fn judge_warnings(r: &Report) -> Vec<&str> {
        r.findings.iter().filter(|f| f.kind == FindingKind::JudgeWarning).map(|f| f.message.as_str()).collect()
    }

    /// Length bias is warned about above a fixed rate, position bias when its 95% interval
    /// excludes ½: so a fair judge is warned about position in about 5% of data sets.
    #[test]
    fn a_judge_that_rewards_length_or_position_is_warned_about() {
        let opts = ReportOptions::default();
        let runs = 100;
        let warned = |r: &Report, what: &str| judge_warnings(r).iter().any(|m| m.contains(what)) as u32;
        let (mut length, mut position, mut fair_length, mut fair_position, mut cross) = (0, 0, 0, 0, 0);
        for seed in 0..runs {
            let long = report(&opts, judged(seed, 400, 0.85, 0.5));
            let first = report(&opts, judged(1000 + seed, 400, 0.5, 0.7));
            let fair = report(&opts, judged(2000 + seed, 400, 0.5, 0.5));
            length += warned(&long, "longer answer wins");
            position += warned(&first, "position bias");
            cross += warned(&first, "longer answer wins");
            fair_length += warned(&fair, "longer answer wins");
            fair_position += warned(&fair, "position bias");
        }
        eprintln!("judge health: length {length}/{runs}, position {position}/{runs}; fair judge: length {fair_length}, position {fair_position}");
        assert_eq!((length, position), (runs as u32, runs as u32), "biased judges warned about");
        assert_eq!((fair_length, cross), (0, 0), "a judge that does not favour length was said to");
        assert!(fair_position <= 10, "a fair judge was said to favour a position in {fair_position} of {runs} data sets");
    }

    /// A 20-point loss on a tenth of the traffic, parity elsewhere: the overall figure is
    /// about 2 points with an interval that excludes 0, so only the noise band hides it.
    #[test]
    fn a_regression_is_hidden_when_the_overall_figure_is_inside_the_noise_band() {
        let mut rng = StdRng::seed_from_u64(3);
        let worse = Route { accuracy: 0.7, ..FAST };
        let perfect = |r: Route| Route { accuracy: 1.0, ..r };
        let grades: Vec<_> = (0..4000).map(|i| if i % 10 == 0 { grade(&mut rng, "rare", worse, REASONING) } else { grade(&mut rng, "common", perfect(FAST), perfect(REASONING)) }).collect();
        let wide = report(&ReportOptions { noise_band_points: 5.0, ..Default::default() }, grades.clone());
        let o = wide.overall.weighted_points.unwrap();
        assert!(!o.contains(0.0) && o.estimate.abs() < 5.0, "{o:?}");
        let rare = wide.regressions().find(|f| f.group == "rare").expect("the rare slice is flagged");
        assert!(rare.hidden, "{rare:?}");
        assert!(rare.message.contains("(hidden)"), "{}", rare.message);
        // With a band below the overall figure, nothing hides it.
        let narrow = report(&ReportOptions { noise_band_points: 1.0, ..Default::default() }, grades);
        assert!(!narrow.regressions().find(|f| f.group == "rare").expect("flagged").hidden);
    }

    /// CONTROL grades get a group's statistics, and those with no slice set the floor of
    /// the `(none)` slice group, like PAIR grades with no slice.
    #[test]
    fn controls_get_win_tie_loss_and_a_sign_test_and_an_empty_slice_keys_as_none() {
        let mut rng = StdRng::seed_from_u64(5);
        let control = |rng: &mut StdRng, slice: &str, favour: f64| {
            let mut g = grade(rng, slice, FAST, FAST);
            g.kind = PairKind::Control as i32;
            // A judge that prefers the second copy with probability `favour`, else a tie or a coin flip.
            g.score = if rng.random_bool(favour) { 1.0 } else if rng.random_bool(0.5) { 0.0 } else if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            g
        };
        let mut grades: Vec<_> = (0..400).map(|i| grade(&mut rng, if i % 2 == 0 { "" } else { "chat" }, FAST, REASONING)).collect();
        grades.extend((0..100).map(|_| control(&mut rng, "", 0.4)));
        grades.extend((0..100).map(|_| control(&mut rng, "chat", 0.0)));
        let r = report(&ReportOptions::default(), grades);
        let n = &r.noise_floor;
        let v = &n.verdicts;
        assert_eq!((n.control_pairs, v.wins + v.ties + v.losses), (200, 200));
        assert!(v.win_rate.unwrap().estimate > v.loss_rate.unwrap().estimate, "{v:?}");
        let none = n.per_slice.iter().find(|s| s.slice == crate::report::dimensions::MISSING).expect("controls with no slice key as (none)");
        assert_eq!(none.control_pairs, 100);
        assert!(none.verdicts.sign_test.unwrap().p_not_taken_better < 0.001, "{:?}", none.verdicts);
        let chat = n.per_slice.iter().find(|s| s.slice == "chat").unwrap();
        assert!(chat.verdicts.sign_test.unwrap().p_two_sided > 0.01, "{:?}", chat.verdicts);
        assert!(none.floor_points > n.floor_points, "the biased slice's floor {} vs overall {}", none.floor_points, n.floor_points);
        assert_eq!(slice_group(&r, crate::report::dimensions::MISSING, "fast").noise_floor_points, none.floor_points);
        let text = crate::report::render_text::render(&r);
        assert!(text.contains(&format!("win/tie/loss {}/{}/{}", v.wins, v.ties, v.losses)), "{text}");
    }
}
