//! The two charts of the HTML page as inline SVG: the forest plot of per-group effects and
//! the reasoning-eligibility calibration chart, plus the scale and tick arithmetic they share.
//!
//! Owns: geometry (scales, ticks, row layout) and the SVG markup. Must never compute a
//! statistic (every figure comes from the [`Report`]), never reference anything outside the
//! page (no external fonts, images or scripts) and never put data text into markup unescaped.
//!
//! Marks carry stable ids and classes (`#zero-line`, `#overall-line`, `#noise-band`,
//! `.row.flagged`, `.ci`, `.est`) so the page's browser test can find what a reader sees.
use std::fmt::Write as _;

use super::analysis::describe_group;
use super::model::{Calibration, GroupResult, GroupStatus, Interval, Report};
use super::render_html::escape;

/// A linear map from data values to pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub domain: (f64, f64),
    pub range: (f64, f64),
}

impl Scale {
    /// The pixel position of `x`; values outside the domain map outside the range.
    pub fn at(&self, x: f64) -> f64 {
        let (d0, d1) = self.domain;
        let (r0, r1) = self.range;
        if d1 == d0 {
            return (r0 + r1) / 2.0;
        }
        r0 + (x - d0) / (d1 - d0) * (r1 - r0)
    }

    /// `x` clamped to the domain, and whether it had to be.
    pub fn clamp(&self, x: f64) -> (f64, bool) {
        let c = x.clamp(self.domain.0.min(self.domain.1), self.domain.0.max(self.domain.1));
        (c, c != x)
    }
}

/// "Nice" tick positions (steps of 1, 2 or 5 × 10^k) covering `[lo, hi]` with about
/// `target` intervals; the first tick is ≤ lo and the last ≥ hi, so the axis ends on a tick.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    let span = if hi - lo > 0.0 { hi - lo } else { lo.abs().max(1.0) };
    let raw = span / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude);
    let first = (lo / step).floor() as i64;
    let last = (hi / step).ceil() as i64;
    let last = if last == first { first + 1 } else { last };
    // Multiplying integer indices (not accumulating) keeps 0 exactly 0.
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Formats a tick in points: `-10`, `0`, `+2.5`.
fn tick_label(x: f64) -> String {
    let s = if x.fract().abs() < 1e-9 { format!("{:.0}", x) } else { format!("{:.1}", x) };
    if x > 0.0 {
        format!("+{s}")
    } else if x == 0.0 {
        "0".to_string()
    } else {
        s
    }
}

/// Cuts `s` to at most `max` characters, ending with `…` when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// A group's label in the plot: `slice multi_step · fast → reasoning`.
pub fn row_label(g: &GroupResult) -> String {
    format!("{} · {} → {}", describe_group(&g.dimension, &g.group), g.route_taken, g.route_not_taken)
}

// Layout of the forest plot, in pixels.
const WIDTH: f64 = 1060.0;
const LABEL_X: f64 = 8.0;
const PLOT_LEFT: f64 = 350.0;
const PLOT_RIGHT: f64 = 750.0;
const FIGURE_X: f64 = 765.0;
const TOP: f64 = 58.0;
const ROW: f64 = 20.0;
const HEADER: f64 = 24.0;
const AXIS: f64 = 44.0;
/// Label characters that fit left of the plot at 12px.
const LABEL_CHARS: usize = 52;

/// The x-range of the forest plot: every tested group's interval, zero, the overall interval
/// and the noise band. Groups too small to be tested do not stretch it (their intervals can
/// span ±100 points); they are drawn clipped, with an arrow.
fn forest_domain(r: &Report) -> (f64, f64) {
    let band = r.settings.noise_band_points.abs();
    let mut lo = -band.max(1.0);
    let mut hi = band.max(1.0);
    let mut take = |i: &Interval| {
        lo = lo.min(i.lower);
        hi = hi.max(i.upper);
    };
    for g in r.groups.iter().filter(|g| g.status != GroupStatus::TooFewPairs) {
        if let Some(i) = &g.mean_points {
            take(i);
        }
    }
    if let Some(i) = &r.overall.weighted_points {
        take(i);
    }
    (lo.max(-100.0), hi.min(100.0))
}

/// The forest plot: one row per group with an effect, grouped by dimension; the estimate and
/// its 95% interval, a zero line, the overall estimate, the noise band, flagged rows marked
/// in colour and in words.
pub fn forest_plot(r: &Report) -> String {
    let rows: Vec<&GroupResult> = r.groups.iter().filter(|g| g.mean_points.is_some()).collect();
    let (lo, hi) = forest_domain(r);
    let ticks = nice_ticks(lo, hi, 8);
    let x = Scale { domain: (ticks[0], *ticks.last().unwrap()), range: (PLOT_LEFT, PLOT_RIGHT) };

    let mut body = String::new();
    let mut y = TOP;
    let mut dimension: Option<&str> = None;
    for g in &rows {
        if dimension != Some(g.dimension.as_str()) {
            dimension = Some(g.dimension.as_str());
            y += if y > TOP { 6.0 } else { 0.0 };
            let _ = write!(body, r#"<text class="dim" x="{LABEL_X}" y="{:.1}">{}</text>"#, y + 16.0, escape(&g.dimension));
            y += HEADER;
        }
        forest_row(&mut body, g, &x, y);
        y += ROW;
    }
    if let Some(ov) = &r.overall.weighted_points {
        y += 6.0;
        overall_row(&mut body, ov, &x, y);
        y += ROW;
    }
    let plot_bottom = y + 4.0;
    let height = plot_bottom + AXIS;

    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg id="forest-plot" role="img" aria-labelledby="forest-title forest-desc" viewBox="0 0 {WIDTH} {height:.0}" width="{WIDTH}" height="{height:.0}">"#
    );
    let _ = write!(o, r#"<title id="forest-title">Forest plot: effect per group in points, with 95% intervals</title>"#);
    let _ = write!(
        o,
        r#"<desc id="forest-desc">One row per group; positive means the route taken answered worse. {} group(s) flagged as regressions.</desc>"#,
        rows.iter().filter(|g| g.status == GroupStatus::Regression).count()
    );

    // Background marks first, so intervals draw over them.
    let band = r.settings.noise_band_points.abs();
    let (b0, b1) = (x.at(x.clamp(-band).0), x.at(x.clamp(band).0));
    let _ = write!(
        o,
        r#"<rect id="noise-band" class="band" x="{b0:.1}" y="{TOP:.1}" width="{:.1}" height="{:.1}"><title>noise band ±{band:.1} points</title></rect>"#,
        b1 - b0,
        plot_bottom - TOP
    );
    for t in &ticks {
        let tx = x.at(*t);
        let _ = write!(o, r#"<line class="grid" x1="{tx:.1}" x2="{tx:.1}" y1="{TOP:.1}" y2="{plot_bottom:.1}"/>"#);
        // Labelled above and below: the plot is taller than a screen.
        for ty in [TOP - 6.0, plot_bottom + 16.0] {
            let _ = write!(o, r#"<text class="tick" x="{tx:.1}" y="{ty:.1}" text-anchor="middle">{}</text>"#, tick_label(*t));
        }
    }
    let _ = write!(o, r#"<line class="axis" x1="{PLOT_LEFT}" x2="{PLOT_RIGHT}" y1="{plot_bottom:.1}" y2="{plot_bottom:.1}"/>"#);
    let _ = write!(
        o,
        r#"<text class="axis-title" x="{:.1}" y="{:.1}" text-anchor="middle">points (+ = the route taken answered worse)</text>"#,
        (PLOT_LEFT + PLOT_RIGHT) / 2.0,
        plot_bottom + 36.0
    );
    let zx = x.at(0.0);
    let _ = write!(o, r#"<line id="zero-line" class="zero" x1="{zx:.1}" x2="{zx:.1}" y1="{TOP:.1}" y2="{plot_bottom:.1}"><title>zero: no difference</title></line>"#);
    if let Some(ov) = &r.overall.weighted_points {
        let ox = x.at(x.clamp(ov.estimate).0);
        let _ = write!(
            o,
            r#"<line id="overall-line" class="overall" x1="{ox:.1}" x2="{ox:.1}" y1="{TOP:.1}" y2="{plot_bottom:.1}"><title>overall {:+.1} points [{:+.1}, {:+.1}]</title></line>"#,
            ov.estimate, ov.lower, ov.upper
        );
    }
    legend(&mut o, r);
    o.push_str(&body);
    o.push_str("</svg>");
    o
}

fn legend(o: &mut String, r: &Report) {
    let y = 18.0;
    let _ = write!(o, r#"<g class="legend"><rect class="band" x="{PLOT_LEFT}" y="{:.1}" width="18" height="12"/>"#, y - 10.0);
    let _ = write!(o, r#"<text x="{:.1}" y="{y:.1}">noise band ±{:.1}</text>"#, PLOT_LEFT + 24.0, r.settings.noise_band_points.abs());
    let lx = PLOT_LEFT + 140.0;
    let _ = write!(o, r#"<line class="overall" x1="{lx:.1}" x2="{lx:.1}" y1="{:.1}" y2="{:.1}"/>"#, y - 11.0, y + 3.0);
    let overall = r.overall.weighted_points.map_or("overall: -".to_string(), |i| format!("overall {:+.1}", i.estimate));
    let _ = write!(o, r#"<text x="{:.1}" y="{y:.1}">{overall}</text>"#, lx + 8.0);
    let zx = PLOT_LEFT + 260.0;
    let _ = write!(o, r#"<line class="zero" x1="{zx:.1}" x2="{zx:.1}" y1="{:.1}" y2="{:.1}"/>"#, y - 11.0, y + 3.0);
    let _ = write!(o, r#"<text x="{:.1}" y="{y:.1}">zero</text>"#, zx + 8.0);
    let _ = write!(o, r#"<rect class="flag-bg" x="{:.1}" y="{:.1}" width="18" height="12"/>"#, zx + 60.0, y - 10.0);
    let _ = write!(o, r#"<text class="flag-text" x="{:.1}" y="{y:.1}">REGRESSION = flagged</text></g>"#, zx + 84.0);
    let _ = write!(o, r#"<text class="col-head" x="{LABEL_X}" y="{:.1}">group · route taken → route not taken</text>"#, TOP - 8.0);
    let _ = write!(o, r#"<text class="col-head" x="{FIGURE_X}" y="{:.1}">points [95% CI]</text>"#, TOP - 8.0);
}

fn forest_row(o: &mut String, g: &GroupResult, x: &Scale, y: f64) {
    let Some(m) = g.mean_points else { return };
    let flagged = g.status == GroupStatus::Regression;
    let class = match g.status {
        GroupStatus::Regression => "row flagged",
        GroupStatus::TooFewPairs => "row untested",
        _ => "row",
    };
    let label = row_label(g);
    let _ = write!(
        o,
        r#"<g class="{class}" data-dimension="{}" data-group="{}" data-route-taken="{}"><title>{}: {:+.1} points [{:+.1}, {:+.1}], {} pairs</title>"#,
        escape(&g.dimension),
        escape(&g.group),
        escape(&g.route_taken),
        escape(&label),
        m.estimate,
        m.lower,
        m.upper,
        g.pairs
    );
    if flagged {
        let _ = write!(o, r#"<rect class="flag-bg" x="0" y="{:.1}" width="{WIDTH}" height="{ROW}"/>"#, y);
    }
    let cy = y + ROW / 2.0;
    let _ = write!(o, r#"<text class="label" x="{LABEL_X}" y="{:.1}">{}</text>"#, cy + 4.0, escape(&truncate(&label, LABEL_CHARS)));
    let (l, l_clipped) = x.clamp(m.lower);
    let (u, u_clipped) = x.clamp(m.upper);
    let (lx, ux) = (x.at(l), x.at(u));
    let _ = write!(o, r#"<line class="ci" x1="{lx:.1}" x2="{ux:.1}" y1="{cy:.1}" y2="{cy:.1}"/>"#);
    if l_clipped {
        let _ = write!(o, r#"<path class="clip" d="M{lx:.1} {cy:.1} l6 -4 v8 z"/>"#);
    }
    if u_clipped {
        let _ = write!(o, r#"<path class="clip" d="M{ux:.1} {cy:.1} l-6 -4 v8 z"/>"#);
    }
    let (e, _) = x.clamp(m.estimate);
    let _ = write!(o, r#"<circle class="est" cx="{:.1}" cy="{cy:.1}" r="{}"/>"#, x.at(e), if flagged { 5 } else { 4 });
    let note = match g.status {
        GroupStatus::Regression => "  REGRESSION",
        GroupStatus::TooFewPairs => "  too few pairs",
        GroupStatus::SlowRouteForNothing => "  slow for nothing",
        GroupStatus::RouteTakenBetter => "  route taken better",
        GroupStatus::NoDifference => "",
    };
    let _ = write!(
        o,
        r#"<text class="figure" x="{FIGURE_X}" y="{:.1}">{:+.1} [{:+.1}, {:+.1}]<tspan class="note">{note}</tspan></text></g>"#,
        cy + 4.0,
        m.estimate,
        m.lower,
        m.upper
    );
}

/// The summary row under the groups: the overall estimate as a diamond spanning its interval.
fn overall_row(o: &mut String, ov: &Interval, x: &Scale, y: f64) {
    let cy = y + ROW / 2.0;
    let (l, u, e) = (x.at(x.clamp(ov.lower).0), x.at(x.clamp(ov.upper).0), x.at(x.clamp(ov.estimate).0));
    let _ = write!(
        o,
        r#"<g class="row overall-row"><title>overall (weighted): {:+.1} points [{:+.1}, {:+.1}]</title><text class="label dim" x="{LABEL_X}" y="{:.1}">overall, weighted by 1/sampling rate</text>"#,
        ov.estimate,
        ov.lower,
        ov.upper,
        cy + 4.0
    );
    let _ = write!(o, r#"<path id="overall-diamond" class="diamond" d="M{l:.1} {cy:.1} L{e:.1} {:.1} L{u:.1} {cy:.1} L{e:.1} {:.1} Z"/>"#, cy - 7.0, cy + 7.0);
    let _ = write!(o, r#"<text class="figure" x="{FIGURE_X}" y="{:.1}">{:+.1} [{:+.1}, {:+.1}]</text></g>"#, cy + 4.0, ov.estimate, ov.lower, ov.upper);
}

// Layout of the calibration chart, in pixels.
const CAL_WIDTH: f64 = 720.0;
const CAL_LEFT: f64 = 70.0;
const CAL_RIGHT: f64 = 690.0;
const CAL_TOP: f64 = 30.0;
const CAL_BOTTOM: f64 = 250.0;
const CAL_HEIGHT: f64 = 310.0;

/// The calibration chart: per band of the eligibility score, how often the reasoning route
/// was strictly better (with its 95% interval) and the pairs behind it, plus the suggested
/// threshold as a vertical line.
pub fn calibration_chart(c: &Calibration) -> String {
    let x = Scale { domain: (0.0, 1.0), range: (CAL_LEFT, CAL_RIGHT) };
    let y = Scale { domain: (0.0, 1.0), range: (CAL_BOTTOM, CAL_TOP) };
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg id="calibration-chart" role="img" aria-labelledby="calibration-title" viewBox="0 0 {CAL_WIDTH} {CAL_HEIGHT}" width="{CAL_WIDTH}" height="{CAL_HEIGHT}">"#
    );
    let _ = write!(
        o,
        r#"<title id="calibration-title">Calibration: how often the reasoning route `{}` was better, per band of the {} score, with 95% intervals</title>"#,
        escape(&c.reasoning_route),
        escape(&c.label)
    );
    for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let ty = y.at(t);
        let _ = write!(o, r#"<line class="grid" x1="{CAL_LEFT}" x2="{CAL_RIGHT}" y1="{ty:.1}" y2="{ty:.1}"/>"#);
        let _ = write!(o, r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{:.0}%</text>"#, CAL_LEFT - 6.0, ty + 4.0, t * 100.0);
    }
    for t in nice_ticks(0.0, 1.0, 10) {
        let tx = x.at(t);
        let _ = write!(o, r#"<text class="tick" x="{tx:.1}" y="{:.1}" text-anchor="middle">{t:.1}</text>"#, CAL_BOTTOM + 16.0);
    }
    let _ = write!(o, r#"<line class="axis" x1="{CAL_LEFT}" x2="{CAL_RIGHT}" y1="{CAL_BOTTOM}" y2="{CAL_BOTTOM}"/>"#);
    let _ = write!(o, r#"<line class="axis" x1="{CAL_LEFT}" x2="{CAL_LEFT}" y1="{CAL_TOP}" y2="{CAL_BOTTOM}"/>"#);
    let _ = write!(
        o,
        r#"<text class="axis-title" x="{:.1}" y="{:.1}" text-anchor="middle">{} score (pairs per band below)</text>"#,
        (CAL_LEFT + CAL_RIGHT) / 2.0,
        CAL_BOTTOM + 52.0,
        escape(&c.label)
    );
    let _ = write!(
        o,
        r#"<text class="axis-title" transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">reasoning route better</text>"#,
        (CAL_TOP + CAL_BOTTOM) / 2.0
    );
    if let Some(t) = c.suggested_threshold {
        let tx = x.at(t.clamp(0.0, 1.0));
        let _ = write!(
            o,
            r#"<line id="threshold-line" class="threshold" x1="{tx:.1}" x2="{tx:.1}" y1="{:.1}" y2="{CAL_BOTTOM}"><title>suggested threshold {t:.1}</title></line>"#,
            CAL_TOP - 8.0
        );
        // Beside the line, on the side with room: right-aligned in the chart's right half,
        // so the label never runs past the chart's edge.
        let (lx, anchor) = if tx > (CAL_LEFT + CAL_RIGHT) / 2.0 { (tx - 4.0, "end") } else { (tx + 4.0, "start") };
        let _ = write!(o, r#"<text class="threshold-label" x="{lx:.1}" y="{:.1}" text-anchor="{anchor}">suggested threshold {t:.1}</text>"#, CAL_TOP - 12.0);
    }
    for b in &c.bands {
        let bx = x.at((b.lower + b.upper) / 2.0);
        let _ = write!(o, r#"<text class="count" x="{bx:.1}" y="{:.1}" text-anchor="middle">n={}</text>"#, CAL_BOTTOM + 32.0, b.pairs);
        let Some(rate) = b.reasoning_better_rate else { continue };
        let _ = write!(
            o,
            r#"<g class="band-rate"><title>score {:.1}–{:.1}: reasoning better in {:.0}% [{:.0}, {:.0}] of {} pairs</title>"#,
            b.lower,
            b.upper,
            rate.estimate * 100.0,
            rate.lower * 100.0,
            rate.upper * 100.0,
            b.pairs
        );
        let _ = write!(o, r#"<line class="ci" x1="{bx:.1}" x2="{bx:.1}" y1="{:.1}" y2="{:.1}"/>"#, y.at(rate.lower), y.at(rate.upper));
        let _ = write!(o, r#"<circle class="est" cx="{bx:.1}" cy="{:.1}" r="4"/></g>"#, y.at(rate.estimate));
    }
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_maps_the_domain_onto_the_range_and_clamps() {
        let s = Scale { domain: (-10.0, 30.0), range: (100.0, 500.0) };
        assert_eq!(s.at(-10.0), 100.0);
        assert_eq!(s.at(30.0), 500.0);
        assert_eq!(s.at(0.0), 200.0);
        assert_eq!(s.clamp(45.0), (30.0, true));
        assert_eq!(s.clamp(5.0), (5.0, false));
        let flipped = Scale { domain: (0.0, 1.0), range: (250.0, 30.0) };
        assert!(flipped.at(1.0) < flipped.at(0.0), "y axes grow upwards");
    }

    #[test]
    fn ticks_are_round_cover_the_range_and_include_zero() {
        for (lo, hi) in [(-3.2, 17.9), (-100.0, 100.0), (-0.4, 0.3), (0.0, 1.0), (2.0, 2.0), (-55.5, -1.0)] {
            let t = nice_ticks(lo, hi, 8);
            assert!(t[0] <= lo && *t.last().unwrap() >= hi, "{lo}..{hi}: {t:?}");
            assert!(t.len() >= 2 && t.len() <= 17, "{lo}..{hi}: {t:?}");
            let step = t[1] - t[0];
            let m = step / 10f64.powf(step.log10().floor());
            assert!([1.0, 2.0, 5.0].iter().any(|n| (m - n).abs() < 1e-9), "step {step}");
            if lo <= 0.0 && hi >= 0.0 {
                assert!(t.contains(&0.0), "{lo}..{hi}: {t:?}");
            }
        }
        assert_eq!(nice_ticks(-3.2, 17.9, 8), vec![-5.0, 0.0, 5.0, 10.0, 15.0, 20.0]);
    }

    /// A simulated day with the planted multi_step loss, and every tenant label.
    fn simulated_report() -> Report {
        use crate::report::scenario::{self, Scenario};
        use crate::report::{Pipeline, ReportOptions};
        use rand::SeedableRng;
        let opts = ReportOptions { labels: vec![scenario::TENANT_LABEL.into()], ..Default::default() };
        let mut p = Pipeline::new(&opts);
        Scenario::essay().generate(&mut rand::rngs::StdRng::seed_from_u64(3), |g| p.offer(g));
        p.finish("simulation".into(), String::new()).unwrap()
    }

    #[test]
    fn small_groups_do_not_stretch_the_axis_they_are_clipped_with_an_arrow() {
        let r = simulated_report();
        let (lo, hi) = forest_domain(&r);
        let tested = r.groups.iter().filter(|g| g.status != GroupStatus::TooFewPairs).filter_map(|g| g.mean_points);
        for i in tested {
            assert!(lo <= i.lower && i.upper <= hi, "{i:?} outside {lo}..{hi}");
        }
        assert!(lo <= -r.settings.noise_band_points && hi >= r.settings.noise_band_points);
        let wide = r.groups.iter().filter(|g| g.status == GroupStatus::TooFewPairs).filter_map(|g| g.mean_points).filter(|i| i.lower < lo || i.upper > hi).count();
        assert!(wide > 0, "the essay day has small groups with wide intervals");
        let svg = forest_plot(&r);
        assert!(svg.matches(r#"class="clip""#).count() >= wide, "each clipped interval ends in an arrow");
        assert_eq!(svg.matches(r#"<g class="row"#).count(), r.groups.iter().filter(|g| g.mean_points.is_some()).count() + 1, "a row per group with an effect, and the overall row");
    }

    #[test]
    fn tick_labels_are_signed_points() {
        assert_eq!(tick_label(5.0), "+5");
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(tick_label(-2.5), "-2.5");
    }

    #[test]
    fn long_labels_are_cut_with_an_ellipsis() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdefghijkl", 5), "abcd…");
    }

    /// The threshold label stays inside the chart wherever the line is, at the page's 15px
    /// font (at most ~0.6 em per character).
    #[test]
    fn the_threshold_label_stays_inside_the_chart() {
        let calibration = |t: f64| Calibration {
            label: "score".into(),
            reasoning_route: "reasoning".into(),
            pairs: 0,
            unreadable_labels: 0,
            bands: Vec::new(),
            suggested_threshold: Some(t),
            slices: Vec::new(),
        };
        for tenth in 0..=10 {
            let svg = calibration_chart(&calibration(tenth as f64 / 10.0));
            let label = &svg[svg.find(r#"<text class="threshold-label""#).unwrap()..];
            let label = &label[..label.find("</text>").unwrap()];
            let attr = |name: &str| {
                let rest = &label[label.find(&format!(r#" {name}=""#)).unwrap() + name.len() + 3..];
                rest[..rest.find('"').unwrap()].to_string()
            };
            let x: f64 = attr("x").parse().unwrap();
            let width = label[label.find('>').unwrap() + 1..].chars().count() as f64 * 15.0 * 0.6;
            let (left, right) = if attr("text-anchor") == "end" { (x - width, x) } else { (x, x + width) };
            assert!(left >= 0.0 && right <= CAL_WIDTH, "threshold {}: label spans {left:.0}..{right:.0} of {CAL_WIDTH}", tenth as f64 / 10.0);
        }
    }
}
