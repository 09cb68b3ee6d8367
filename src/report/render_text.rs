//! The terminal report: findings first, in words a router engineer understands, then the
//! overall figure, the noise floor, the per-group table, the trades, judge health,
//! judge–human agreement and calibration.
//!
//! Owns: layout only. Must never compute a statistic (everything comes from the
//! [`Report`]) nor write anywhere (it returns a string).
use std::fmt::Write as _;

use super::analysis::{describe_group, fmt_p};
use super::model::*;

/// "win/tie/loss 3/40/5, wins 6% [2%, 17%], sign test p = 0.727".
pub(super) fn control_verdicts(v: &ControlVerdicts) -> String {
    format!(
        "win/tie/loss {}/{}/{}, wins {}, losses {}, sign test p = {}",
        v.wins,
        v.ties,
        v.losses,
        rate(&v.win_rate),
        rate(&v.loss_rate),
        v.sign_test.map_or("-".to_string(), |s| fmt_p(s.p_two_sided))
    )
}

pub(super) fn ci(i: &Option<Interval>) -> String {
    match i {
        Some(i) => format!("{:+.1} [{:+.1}, {:+.1}]", i.estimate, i.lower, i.upper),
        None => "-".to_string(),
    }
}

pub(super) fn rate(i: &Option<Interval>) -> String {
    match i {
        Some(i) => format!("{:.0}% [{:.0}, {:.0}]", i.estimate * 100.0, i.lower * 100.0, i.upper * 100.0),
        None => "-".to_string(),
    }
}

pub(super) fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:+.digits$}"))
}

pub(super) fn status(s: GroupStatus) -> &'static str {
    match s {
        GroupStatus::TooFewPairs => "too few pairs",
        GroupStatus::NoDifference => "no difference",
        GroupStatus::Regression => "REGRESSION",
        GroupStatus::RouteTakenBetter => "route taken better",
        GroupStatus::SlowRouteForNothing => "slow for nothing",
    }
}

/// The whole report as text for a terminal.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let i = &r.input;
    let _ = writeln!(o, "untaken report: {} grades from {} ({} PAIR, {} CONTROL; {} duplicate(s) dropped, {} malformed record(s) skipped)", i.grades, r.source, i.pair_grades, i.control_grades, i.duplicates, i.malformed);
    let _ = writeln!(o, "Scores are in points from the route not taken's side: +5 means the route taken answered 5 points worse. Intervals are 95%.\n");

    let _ = writeln!(o, "FINDINGS");
    if r.regressions().next().is_none() {
        let _ = writeln!(o, "  No regression flagged (BH q = {}, noise band {:.1} points).", r.settings.q, r.settings.noise_band_points);
    }
    for f in &r.findings {
        let tag = match f.kind {
            FindingKind::JudgeWarning => "JUDGE: ",
            FindingKind::InputWarning => "INPUT: ",
            _ => "",
        };
        let _ = writeln!(o, "  {tag}{}", f.message);
    }

    let ov = &r.overall;
    let _ = writeln!(o, "\nOVERALL ({} graded pairs standing for ~{:.0} requests)", ov.pairs, ov.estimated_requests);
    let _ = writeln!(o, "  weighted by 1/sampling rate (Hájek): {}   unweighted: {}{}", ci(&ov.weighted_points), ci(&ov.unweighted_points), ov.ppi_points.map_or(String::new(), |p| format!("   corrected with human verdicts (PPI): {}", ci(&Some(p)))));
    let _ = writeln!(o, "  {}", if ov.looks_fine { format!("looks fine in aggregate (interval includes 0 or inside the ±{:.1}-point noise band)", r.settings.noise_band_points) } else { "moves the aggregate".to_string() });

    let n = &r.noise_floor;
    let _ = writeln!(o, "\nNOISE FLOOR ({} graded CONTROL pairs: the judge comparing a route with itself)", n.control_pairs);
    let _ = writeln!(o, "  control mean {} points; {}; floor applied {:.1} points", ci(&n.overall_points), control_verdicts(&n.verdicts), n.floor_points);
    for s in &n.per_slice {
        let _ = writeln!(o, "  slice {}: {} controls, {} points, {}, floor {:.1}", s.slice, s.control_pairs, ci(&Some(s.points)), control_verdicts(&s.verdicts), s.floor_points);
    }

    let _ = writeln!(o, "\nGROUPS (every group of every dimension; tested when ≥ {} pairs, BH across all tested)", r.settings.min_pairs);
    // Columns as wide as their longest entry, so long slice or label values stay aligned.
    let gw = r.groups.iter().map(|g| g.group.chars().count()).max().unwrap_or(0).max(14);
    let dw = r.groups.iter().map(|g| g.dimension.chars().count()).max().unwrap_or(0).max(9);
    // With human verdicts, the PPI-corrected mean beside the judge's.
    let ppi = |x: String| if r.human.is_some() { format!(" {x:>22}") } else { String::new() };
    let _ = writeln!(o, "  {:<dw$} {:<gw$} {:<22} {:>6} {:>6} {:>14} {:>22}{} {:>8} {:>6} {:>11} {:>9} {:>10}  status", "dimension", "group", "taken → not taken", "pairs", "share", "win/tie/loss", "mean points [95% CI]", ppi("PPI points [95% CI]".into()), "q", "MDE", "fail t/nt %", "Δp50 ms", "Δcost $");
    for g in &r.groups {
        let fail = |x: &Option<Interval>| x.map_or("-".to_string(), |i| format!("{:.0}", i.estimate * 100.0));
        let _ = writeln!(
            o,
            "  {:<dw$} {:<gw$} {:<22} {:>6} {:>5.1}% {:>14} {:>22}{} {:>8} {:>6} {:>11} {:>9} {:>10}  {}",
            g.dimension,
            g.group,
            format!("{} → {}", g.route_taken, g.route_not_taken),
            g.pairs,
            g.traffic_share * 100.0,
            format!("{}/{}/{}", g.wins, g.ties, g.losses),
            ci(&g.mean_points),
            ppi(ci(&g.ppi_points)),
            g.q_value.map_or("-".to_string(), fmt_p),
            g.mde_points.map_or("-".to_string(), |m| format!("{m:.1}")),
            format!("{}/{}", fail(&g.taken_failure_rate), fail(&g.not_taken_failure_rate)),
            opt(g.latency.diff_p50_ms, 0),
            opt(g.cost.diff_usd, 4),
            status(g.status),
        );
    }

    let _ = writeln!(o, "\nTRADES PER SLICE (quality given up by the route taken vs what it saved)");
    let sw = r.trades.iter().map(|t| t.slice.chars().count()).max().unwrap_or(0).max(14);
    for t in &r.trades {
        let _ = writeln!(
            o,
            "  {:<sw$} {:<22} {:>5} pairs  quality given up {:>22} points  latency saved p50 {:>7} ms, p95 {:>7} ms  cost saved {:>8} $/request",
            t.slice,
            format!("{} → {}", t.route_taken, t.route_not_taken),
            t.pairs,
            ci(&t.quality_given_up_points),
            opt(t.latency_saved_p50_ms, 0),
            opt(t.latency_saved_p95_ms, 0),
            opt(t.cost_saved_usd, 4),
        );
    }

    let j = &r.judge_health;
    let _ = writeln!(o, "\nJUDGE HEALTH ({} graded, {} judge errors{})", j.graded, j.judge_errors, j.judge_error_rate.map_or(String::new(), |e| format!(", {:.1}%", e * 100.0)));
    let _ = writeln!(o, "  both orders agree: {} of {} pairwise grades; first position wins: {}; longer answer wins: {}", rate(&j.orders_agree_rate), j.pairwise_both_orders, rate(&j.first_position_win_rate), rate(&j.longer_answer_win_rate));
    for s in &j.judges {
        let version = if s.prompt_version.is_empty() { String::new() } else { format!(" (prompt {})", s.prompt_version) };
        let _ = writeln!(o, "  judge {} {}{}: {} grades", s.kind, s.model, version, s.grades);
    }

    if let Some(h) = &r.human {
        let _ = writeln!(o, "\nJUDGE vs HUMANS (label {}: {} labelled pairs, {} unreadable)", h.label, h.labelled_pairs, h.unreadable_labels);
        let _ = writeln!(o, "  same verdict: {}; human − judge: {} points (the PPI estimates above correct for it)", rate(&h.agreement_rate), ci(&h.bias_points));
    }

    if let Some(c) = &r.calibration {
        let _ = writeln!(o, "\nTO THINK OR NOT TO THINK (label {}, route `{}`: {} pairs)", c.label, c.reasoning_route, c.pairs);
        for b in c.bands.iter().filter(|b| b.pairs > 0) {
            let _ = writeln!(o, "  score {:.1}-{:.1}: {:>5} pairs, reasoning better {:>16}, advantage {:>22} points", b.lower, b.upper, b.pairs, rate(&b.reasoning_better_rate), ci(&b.reasoning_advantage_points));
        }
        match c.suggested_threshold {
            Some(t) => {
                let _ = writeln!(o, "  the reasoning route is better on the traffic from a score of {t:.1} up (its band's traffic-weighted 95% interval above 0, every band above with enough pairs favouring it)");
            }
            None => {
                let _ = writeln!(o, "  no threshold suggested: no score from which every band with enough pairs favours the reasoning route with a 95% interval above 0");
            }
        }
        for s in &c.slices {
            let would = s.would_send_to_reasoning.map_or("-".to_string(), |w| format!("{:.0}%", w * 100.0));
            let _ = writeln!(o, "  {}: mean score {:.2}, sent to reasoning {:.0}%, the threshold would send {}", describe_group("slice", &s.slice), s.mean_score, s.sent_to_reasoning * 100.0, would);
        }
    }
    o
}

#[cfg(test)]
pub(super) mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use crate::report::scenario::{self, Scenario};
    use crate::report::{Pipeline, ReportOptions};

    #[test]
    fn findings_come_first_and_name_the_slice_its_size_and_interval() {
        let opts = ReportOptions {
            eligibility_label: Some(scenario::ELIGIBILITY_LABEL.into()),
            labels: vec![scenario::TENANT_LABEL.into()],
            ..Default::default()
        };
        // The first simulated day whose multi_step loss is flagged as hidden (most are).
        let r = (0..20)
            .map(|seed| {
                let mut p = Pipeline::new(&opts);
                Scenario::essay().generate(&mut StdRng::seed_from_u64(seed), |g| p.offer(g));
                p.finish("simulation".into(), String::new()).unwrap()
            })
            .find(|r| r.regressions().any(|f| f.hidden && f.group == "multi_step"))
            .expect("a hidden multi_step regression in 20 simulated days");
        let text = super::render(&r);
        let findings = text.find("FINDINGS").unwrap();
        let regression = text.find("REGRESSION (hidden): on slice multi_step (").expect(&text);
        assert!(findings < regression && regression < text.find("OVERALL").unwrap(), "{text}");
        let line = text[regression..].lines().next().unwrap();
        let g = r.groups.iter().find(|g| g.dimension == "slice" && g.group == "multi_step" && g.route_taken == "fast").unwrap();
        let m = g.mean_points.unwrap();
        assert!(line.contains(&format!("{} pairs", g.pairs)) && line.contains(&format!("[95% CI {:.1}, {:.1}]", m.lower, m.upper)), "{line}");
        assert!(line.contains("overall only"), "{line}");
        assert!(text.contains("TO THINK OR NOT TO THINK"));
    }

    /// With a human-verdict label, every group's PPI-corrected estimate is in the table
    /// (the column is absent without one).
    /// A simulated essay day (seed 4) with a human verdict on 30% of the pairs, or on none.
    pub(in crate::report) fn human_labelled_report(human_share: f64) -> crate::report::model::Report {
        let mut s = Scenario::essay();
        s.human_share = human_share;
        let opts = ReportOptions { human_label: (human_share > 0.0).then(|| scenario::HUMAN_LABEL.into()), ..Default::default() };
        let mut p = Pipeline::new(&opts);
        s.generate(&mut StdRng::seed_from_u64(4), |g| p.offer(g));
        p.finish("simulation".into(), String::new()).unwrap()
    }

    #[test]
    fn the_group_table_shows_the_ppi_estimate_when_humans_labelled_pairs() {
        let r = human_labelled_report(0.3);
        let text = super::render(&r);
        let header = text.lines().find(|l| l.contains("mean points [95% CI]")).expect(&text);
        assert!(header.contains("PPI points [95% CI]"), "{header}");
        let g = r.groups.iter().find(|g| g.dimension == "slice" && g.group == "multi_step" && g.route_taken == "fast").unwrap();
        let row = text.lines().find(|l| l.trim_start().starts_with("slice") && l.contains(" multi_step ") && l.contains("fast → reasoning")).expect(&text);
        assert!(row.contains(&super::ci(&g.ppi_points)) && g.ppi_points.is_some(), "{row}");
        let without = super::render(&human_labelled_report(0.0));
        assert!(!without.contains("PPI points"), "no human label, no PPI column");
    }
}
