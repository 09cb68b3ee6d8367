//! The `--html` page: one self-contained file a person opens in a browser. Top to bottom:
//! the findings in words (flagged and hidden regressions marked), the overall estimate next
//! to the unweighted mean, the forest plot, the calibration chart, judge health and the noise
//! floor, the per-slice trades and the per-group table.
//!
//! Owns: the page's structure and style (inline CSS; the charts come from [`super::svg`]).
//! Must never compute a statistic (everything comes from the [`Report`]), never reference
//! anything outside the page (no fonts, scripts, images or links to fetch: it must render
//! offline and leak nothing), and never write data text into the markup unescaped: slice
//! names, labels, routes and messages are user data.
use std::fmt::Write as _;

use super::analysis::{describe_group, fmt_p};
use super::model::*;
use super::render_text::{ci, control_verdicts, opt, rate, status};
use super::svg;

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Dark text on white, reds that keep 4.5:1 against their backgrounds; the flagged colour is
/// never the only signal (rows also say REGRESSION), so the page reads in greyscale.
const STYLE: &str = r#"
:root { color: #1a1a1a; background: #fff; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
body { max-width: 1180px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
.meta, .explain { color: #444; }
ul.findings { list-style: none; padding: 0; }
li.finding { border-left: 6px solid #888; background: #f4f4f4; padding: 8px 12px; margin: 8px 0; }
li.finding.flagged { border-left-color: #b00020; background: #fde7ea; }
li.finding p { margin: 4px 0 0; }
.badge { display: inline-block; font-weight: 700; font-size: 0.85em; padding: 1px 6px; border: 1px solid currentColor; border-radius: 3px; margin-right: 4px; }
.badge.flag { color: #fff; background: #b00020; border-color: #b00020; }
.badge.hidden { color: #7a0016; background: #fff; }
.badge.note { color: #333; }
mark.group-name { background: #ffd0d6; color: #5a0010; font-weight: 700; padding: 0 3px; }
.ok { color: #1d5e20; font-weight: 600; }
.moves { color: #b00020; font-weight: 600; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #eee; }
td.name, th.name { text-align: left; }
td.name { white-space: normal; max-width: 22em; overflow-wrap: anywhere; }
tr.flagged td { background: #fde7ea; color: #5a0010; font-weight: 600; }
dl.figures { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; }
dl.figures dt { color: #444; }
dl.figures dd { margin: 0; }
.scroll { overflow-x: auto; }
svg { font: 12px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
svg text { fill: #1a1a1a; }
svg .tick, svg .count { fill: #444; }
svg .dim { font-weight: 700; }
svg .col-head { fill: #444; font-style: italic; }
svg .band { fill: #d9d9d9; }
svg .grid { stroke: #eee; }
svg .axis { stroke: #333; }
svg .zero { stroke: #1a1a1a; stroke-width: 1.5; }
svg .overall { stroke: #1f4e99; stroke-width: 2; stroke-dasharray: 6 3; }
svg .ci { stroke: #333; stroke-width: 2; }
svg .est { fill: #333; }
svg .clip { fill: #333; }
svg .diamond { fill: #1f4e99; }
svg .row.untested .ci, svg .row.untested .est, svg .row.untested .clip { stroke: #777; fill: #777; }
svg .row.untested text { fill: #555; }
svg .flag-bg { fill: #fde7ea; }
svg .row.flagged .ci { stroke: #b00020; stroke-width: 3; }
svg .row.flagged .est, svg .row.flagged .clip { fill: #b00020; }
svg .row.flagged text, svg .flag-text { fill: #7a0016; font-weight: 700; }
svg .note { font-weight: 700; }
svg .threshold { stroke: #1f4e99; stroke-width: 2; stroke-dasharray: 6 3; }
svg .threshold-label { fill: #1f4e99; }
"#;

/// Renders the report as one self-contained HTML page.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>untaken report: {}</title><style>{STYLE}</style></head><body>\n",
        escape(&headline(r))
    );
    header(&mut o, r);
    findings(&mut o, r);
    overall(&mut o, r);
    let _ = writeln!(o, "<section id=\"forest\"><h2>Effect per group</h2><p class=\"explain\">Each row is one group of one dimension in one direction (route taken → route not taken): the dot is the estimate in points, the line its 95% interval. The grey band is the ±{:.1}-point noise band, the dashed line and the diamond at the bottom the overall estimate and its interval. Flagged rows are shaded and say REGRESSION.</p><div class=\"scroll\">{}</div></section>", r.settings.noise_band_points.abs(), svg::forest_plot(r));
    if let Some(c) = &r.calibration {
        calibration(&mut o, c);
    }
    judge_and_noise(&mut o, r);
    trades(&mut o, r);
    groups(&mut o, r);
    input(&mut o, r);
    o.push_str("</body></html>\n");
    o
}

/// The page title: the verdict in a few words.
fn headline(r: &Report) -> String {
    match r.regressions().count() {
        0 => "no regression flagged".to_string(),
        1 => "1 regression flagged".to_string(),
        n => format!("{n} regressions flagged"),
    }
}

fn header(o: &mut String, r: &Report) {
    let i = &r.input;
    let _ = write!(o, "<header><h1>untaken report: {}</h1>", escape(&headline(r)));
    let _ = writeln!(
        o,
        "<p class=\"meta\">{} grades from {} ({} PAIR, {} CONTROL), made {}. Scores are in points from the route not taken's side: +5 means the route taken answered 5 points worse. Intervals are 95%; groups are tested when they have at least {} pairs, with Benjamini–Hochberg q = {} across all tested groups.</p></header>",
        i.grades,
        escape(&r.source),
        i.pair_grades,
        i.control_grades,
        escape(&r.generated_at),
        r.settings.min_pairs,
        r.settings.q
    );
}

fn findings(o: &mut String, r: &Report) {
    o.push_str("<section id=\"findings\"><h2>Findings</h2>");
    if r.regressions().next().is_none() {
        let _ = write!(o, "<p class=\"ok\">No regression flagged (BH q = {}, noise band ±{:.1} points).</p>", r.settings.q, r.settings.noise_band_points.abs());
    }
    o.push_str("<ul class=\"findings\">");
    for f in &r.findings {
        let flagged = f.kind == FindingKind::Regression;
        let _ = write!(o, "<li class=\"finding {}{}\">", kind_class(f.kind), if flagged { " flagged" } else { "" });
        let badge = match f.kind {
            FindingKind::Regression => "<span class=\"badge flag\">REGRESSION</span>",
            FindingKind::SlowRouteForNothing => "<span class=\"badge note\">SLOW ROUTE FOR NOTHING</span>",
            FindingKind::JudgeWarning => "<span class=\"badge note\">JUDGE</span>",
            FindingKind::InputWarning => "<span class=\"badge note\">INPUT</span>",
        };
        o.push_str(badge);
        if f.hidden {
            o.push_str("<span class=\"badge hidden\">HIDDEN: the overall figure looks fine</span>");
        }
        if !f.dimension.is_empty() {
            // Only a flagged group's name is highlighted; notes name theirs in bold.
            let (open, close) = if flagged { ("<mark class=\"group-name\">", "</mark>") } else { ("<strong class=\"group-name\">", "</strong>") };
            let _ = write!(
                o,
                " {open}{}{close} {} → {}",
                escape(&describe_group(&f.dimension, &f.group)),
                escape(&f.route_taken),
                escape(&f.route_not_taken)
            );
            if let Some(e) = &f.effect_points {
                let _ = write!(o, ": <strong>{:+.1} points</strong> [{:+.1}, {:+.1}]", e.estimate, e.lower, e.upper);
            }
        }
        let _ = write!(o, "<p>{}</p></li>", escape(&f.message));
    }
    o.push_str("</ul></section>\n");
}

fn kind_class(k: FindingKind) -> &'static str {
    match k {
        FindingKind::Regression => "regression",
        FindingKind::SlowRouteForNothing => "slow-route",
        FindingKind::JudgeWarning => "judge-warning",
        FindingKind::InputWarning => "input-warning",
    }
}

fn overall(o: &mut String, r: &Report) {
    let ov = &r.overall;
    let _ = write!(o, "<section id=\"overall\"><h2>Overall</h2><p>{} graded pairs standing for about {:.0} requests.</p><dl class=\"figures\">", ov.pairs, ov.estimated_requests);
    let _ = write!(o, "<dt>weighted by 1/sampling rate (Hájek)</dt><dd id=\"overall-weighted\"><strong>{}</strong> points</dd>", ci(&ov.weighted_points));
    let _ = write!(o, "<dt>unweighted mean (biased when sampling rates differ)</dt><dd id=\"overall-unweighted\">{} points</dd>", ci(&ov.unweighted_points));
    if ov.ppi_points.is_some() {
        let _ = write!(o, "<dt>corrected with human verdicts (PPI)</dt><dd>{} points</dd>", ci(&ov.ppi_points));
    }
    o.push_str("</dl>");
    if ov.looks_fine {
        let _ = write!(o, "<p class=\"ok\">Looks fine in aggregate: the interval includes 0 or the estimate is inside the ±{:.1}-point noise band.{}</p>", r.settings.noise_band_points.abs(), if r.regressions().next().is_some() { " The flagged groups above are what that aggregate hides." } else { "" });
    } else {
        o.push_str("<p class=\"moves\">Moves the aggregate: the overall interval excludes 0 and the estimate is outside the noise band.</p>");
    }
    o.push_str("</section>\n");
}

fn calibration(o: &mut String, c: &Calibration) {
    let _ = write!(
        o,
        "<section id=\"calibration\"><h2>To think or not to think: calibration of {}</h2><p class=\"explain\">{} pairs that involve the reasoning route <code>{}</code>, by band of the router's eligibility score: how often the reasoning route's answer was strictly better, with 95% intervals. {}</p><div class=\"scroll\">{}</div>",
        escape(&c.label),
        c.pairs,
        escape(&c.reasoning_route),
        match c.suggested_threshold {
            Some(t) => format!("The reasoning route is better on the traffic from a score of {t:.1} up (the dashed line): that band's traffic-weighted advantage has a 95% interval above 0, and every band above it with enough pairs favours the reasoning route too."),
            None => "No threshold suggested: no score from which every band with enough pairs favours the reasoning route with a 95% interval above 0.".to_string(),
        },
        svg::calibration_chart(c)
    );
    if !c.slices.is_empty() {
        o.push_str("<table><tr><th class=\"name\">slice</th><th>pairs</th><th>mean score</th><th>sent to reasoning</th><th>the threshold would send</th></tr>");
        for s in &c.slices {
            let _ = write!(
                o,
                "<tr><td class=\"name\">{}</td><td>{}</td><td>{:.2}</td><td>{:.0}%</td><td>{}</td></tr>",
                escape(&s.slice),
                s.pairs,
                s.mean_score,
                s.sent_to_reasoning * 100.0,
                s.would_send_to_reasoning.map_or("-".to_string(), |w| format!("{:.0}%", w * 100.0))
            );
        }
        o.push_str("</table>");
    }
    if c.unreadable_labels > 0 {
        let _ = write!(o, "<p>{} grade(s) had an unreadable score.</p>", c.unreadable_labels);
    }
    o.push_str("</section>\n");
}

fn judge_and_noise(o: &mut String, r: &Report) {
    let j = &r.judge_health;
    let n = &r.noise_floor;
    o.push_str("<section id=\"judge\"><h2>Judge health and noise floor</h2><dl class=\"figures\">");
    let _ = write!(o, "<dt>graded</dt><dd>{}</dd>", j.graded);
    let _ = write!(o, "<dt>judge errors</dt><dd>{}{}</dd>", j.judge_errors, j.judge_error_rate.map_or(String::new(), |e| format!(" ({:.1}%)", e * 100.0)));
    let _ = write!(o, "<dt>both orders agree</dt><dd>{} of {} pairwise grades</dd>", rate(&j.orders_agree_rate), j.pairwise_both_orders);
    let _ = write!(o, "<dt>answer shown first wins</dt><dd>{} (50% = no position bias)</dd>", rate(&j.first_position_win_rate));
    let _ = write!(o, "<dt>longer answer wins</dt><dd>{}</dd>", rate(&j.longer_answer_win_rate));
    for s in &j.judges {
        let _ = write!(o, "<dt>judge</dt><dd>{} {} {}: {} grades</dd>", escape(&s.kind), escape(&s.model), escape(&s.prompt_version), s.grades);
    }
    let _ = write!(o, "<dt>CONTROL pairs (a route judged against itself)</dt><dd>{}</dd>", n.control_pairs);
    let _ = write!(o, "<dt>control mean</dt><dd id=\"noise-control\">{} points</dd>", ci(&n.overall_points));
    let _ = write!(o, "<dt>control verdicts</dt><dd>{}</dd>", escape(&control_verdicts(&n.verdicts)));
    let _ = write!(o, "<dt>noise floor applied</dt><dd id=\"noise-floor\">{:.1} points</dd>", n.floor_points);
    for s in &n.per_slice {
        let _ = write!(o, "<dt>slice {}</dt><dd>{} controls, {} points, {}, floor {:.1}</dd>", escape(&s.slice), s.control_pairs, ci(&Some(s.points)), escape(&control_verdicts(&s.verdicts)), s.floor_points);
    }
    o.push_str("</dl>");
    if !j.warnings.is_empty() {
        o.push_str("<ul>");
        for w in &j.warnings {
            let _ = write!(o, "<li>{}</li>", escape(w));
        }
        o.push_str("</ul>");
    }
    if let Some(h) = &r.human {
        let _ = write!(
            o,
            "<p>Judge against humans (label <code>{}</code>: {} labelled pairs, {} unreadable): same verdict {}; human − judge {} points.</p>",
            escape(&h.label),
            h.labelled_pairs,
            h.unreadable_labels,
            rate(&h.agreement_rate),
            ci(&h.bias_points)
        );
    }
    o.push_str("</section>\n");
}

fn trades(o: &mut String, r: &Report) {
    o.push_str("<section id=\"trades\"><h2>Trades per slice</h2><p class=\"explain\">Quality the route taken gave up, against the latency and cost it saved (route not taken − route taken).</p><div class=\"scroll\"><table><tr><th class=\"name\">slice</th><th class=\"name\">taken → not taken</th><th>pairs</th><th>share</th><th>quality given up, points [95% CI]</th><th>latency saved p50 ms</th><th>p95 ms</th><th>cost saved $/request</th></tr>");
    for t in &r.trades {
        let _ = write!(
            o,
            "<tr><td class=\"name\">{}</td><td class=\"name\">{} → {}</td><td>{}</td><td>{:.1}%</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&t.slice),
            escape(&t.route_taken),
            escape(&t.route_not_taken),
            t.pairs,
            t.traffic_share * 100.0,
            ci(&t.quality_given_up_points),
            opt(t.latency_saved_p50_ms, 0),
            opt(t.latency_saved_p95_ms, 0),
            opt(t.cost_saved_usd, 4)
        );
    }
    o.push_str("</table></div></section>\n");
}

fn groups(o: &mut String, r: &Report) {
    let _ = write!(o, "<section id=\"groups\"><h2>Every group</h2><div class=\"scroll\"><table><tr><th class=\"name\">dimension</th><th class=\"name\">group</th><th class=\"name\">taken → not taken</th><th>pairs</th><th>share</th><th>win/tie/loss</th><th>mean points [95% CI]</th>{}<th>q</th><th>MDE</th><th>Δp50 ms</th><th>Δcost $</th><th class=\"name\">status</th></tr>", if r.human.is_some() { "<th>corrected with human verdicts (PPI) [95% CI]</th>" } else { "" });
    for g in &r.groups {
        let flagged = g.status == GroupStatus::Regression;
        let _ = write!(
            o,
            "<tr{}><td class=\"name\">{}</td><td class=\"name\">{}</td><td class=\"name\">{} → {}</td><td>{}</td><td>{:.1}%</td><td>{}/{}/{}</td><td>{}</td>{}<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"name\">{}</td></tr>",
            if flagged { " class=\"flagged\"" } else { "" },
            escape(&g.dimension),
            escape(&g.group),
            escape(&g.route_taken),
            escape(&g.route_not_taken),
            g.pairs,
            g.traffic_share * 100.0,
            g.wins,
            g.ties,
            g.losses,
            ci(&g.mean_points),
            if r.human.is_some() { format!("<td>{}</td>", ci(&g.ppi_points)) } else { String::new() },
            g.q_value.map_or("-".to_string(), fmt_p),
            g.mde_points.map_or("-".to_string(), |m| format!("{m:.1}")),
            opt(g.latency.diff_p50_ms, 0),
            opt(g.cost.diff_usd, 4),
            status(g.status)
        );
    }
    o.push_str("</table></div></section>\n");
}

fn input(o: &mut String, r: &Report) {
    let i = &r.input;
    let _ = write!(
        o,
        "<section id=\"input\"><h2>Input</h2><p>{} records read, {} grades kept, {} duplicate(s) dropped, {} malformed record(s) skipped.</p>",
        i.records_read, i.grades, i.duplicates, i.malformed
    );
    if !i.malformed_examples.is_empty() {
        o.push_str("<ul>");
        for m in &i.malformed_examples {
            let _ = write!(o, "<li>{}: {}</li>", escape(&m.position), escape(&m.error));
        }
        o.push_str("</ul>");
    }
    o.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::report::scenario::{self, Scenario};
    use crate::report::{Pipeline, ReportOptions};

    /// A simulated day (the essay scenario: multi_step loses 15 points) rendered as a report.
    fn essay_report(seed: u64) -> Report {
        let opts = ReportOptions { eligibility_label: Some(scenario::ELIGIBILITY_LABEL.into()), labels: vec![scenario::TENANT_LABEL.into()], ..Default::default() };
        let mut p = Pipeline::new(&opts);
        Scenario::essay().generate(&mut StdRng::seed_from_u64(seed), |g| p.offer(g));
        p.finish("simulation".into(), String::new()).unwrap()
    }

    /// The first of 20 simulated days with a flagged multi_step regression.
    fn flagged_report() -> Report {
        (0..20).map(essay_report).find(|r| r.regressions().any(|f| f.group == "multi_step")).expect("a flagged multi_step in 20 simulated days")
    }

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(escape(r#"<script>alert("x&y")</script>'"#), "&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt;&#39;");
    }

    #[test]
    fn sections_come_in_reading_order() {
        let html = render(&flagged_report());
        let at = |needle: &str| html.find(needle).unwrap_or_else(|| panic!("{needle} missing"));
        let order = ["id=\"findings\"", "id=\"overall\"", "id=\"forest-plot\"", "id=\"calibration-chart\"", "id=\"judge\"", "id=\"trades\"", "id=\"groups\""];
        for w in order.windows(2) {
            assert!(at(w[0]) < at(w[1]), "{} should come before {}", w[0], w[1]);
        }
        assert!(html.starts_with("<!doctype html>"));
        let title = &html[html.find("<title>").unwrap()..html.find("</title>").unwrap()];
        assert!(title.contains("regression") && title.contains("flagged") && !title.contains("no regression"), "{title}");
    }

    #[test]
    fn the_flagged_group_is_marked_in_words_in_every_place_it_appears() {
        let r = flagged_report();
        let html = render(&r);
        let f = r.regressions().find(|f| f.group == "multi_step").unwrap();
        // Findings: a REGRESSION badge and the group's name highlighted.
        let findings = &html[html.find("id=\"findings\"").unwrap()..html.find("id=\"overall\"").unwrap()];
        assert!(findings.contains("<span class=\"badge flag\">REGRESSION</span>"), "{findings}");
        assert!(findings.contains("<mark class=\"group-name\">slice multi_step</mark>"), "{findings}");
        assert_eq!(findings.matches("<mark").count(), r.regressions().count(), "only flagged groups are highlighted");
        assert_eq!(findings.contains("HIDDEN"), f.hidden);
        // Plot: the row is flagged, shaded and says REGRESSION; so does the table row.
        let row = html.find("<g class=\"row flagged\" data-dimension=\"slice\" data-group=\"multi_step\"").expect("a flagged plot row");
        let row = &html[row..row + html[row..].find("</g>").unwrap()];
        assert!(row.contains("class=\"flag-bg\"") && row.contains("REGRESSION"), "{row}");
        assert_eq!(html.matches("<g class=\"row flagged\"").count(), r.groups.iter().filter(|g| g.status == GroupStatus::Regression).count());
        assert!(html.contains("<tr class=\"flagged\"><td class=\"name\">slice</td><td class=\"name\">multi_step</td>"));
    }

    #[test]
    fn a_report_without_regressions_says_so_and_flags_nothing() {
        let opts = ReportOptions::default();
        let r = (0..20)
            .map(|seed| {
                let mut p = Pipeline::new(&opts);
                Scenario::null().generate(&mut StdRng::seed_from_u64(seed), |g| p.offer(g));
                p.finish("simulation".into(), String::new()).unwrap()
            })
            .find(|r| r.regressions().next().is_none())
            .expect("a clean null day in 20");
        let html = render(&r);
        assert!(html.contains("<title>untaken report: no regression flagged</title>"));
        assert!(html.contains("No regression flagged"));
        assert!(!html.contains("class=\"row flagged\"") && !html.contains("badge flag"));
        assert!(!html.contains("id=\"calibration\""), "no eligibility label, no calibration chart");
    }

    #[test]
    fn user_data_cannot_inject_markup() {
        let mut r = flagged_report();
        let evil = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'";
        for g in &mut r.groups {
            g.group = format!("{}{evil}", g.group);
            g.route_taken = evil.to_string();
        }
        for f in &mut r.findings {
            f.group = evil.to_string();
            f.message = evil.to_string();
        }
        for t in &mut r.trades {
            t.slice = evil.to_string();
        }
        r.source = evil.to_string();
        if let Some(c) = &mut r.calibration {
            c.label = evil.to_string();
            c.slices.iter_mut().for_each(|s| s.slice = evil.to_string());
        }
        let html = render(&r);
        assert!(!html.contains("<script") && !html.contains("<img"), "raw markup from the data reached the page");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("=\"multi_step<"), "attribute values are escaped");
    }

    #[test]
    fn the_page_references_nothing_outside_itself() {
        let html = render(&flagged_report());
        for attr in ["src=", "href=", "url(", "@import", "<link", "<script", "<iframe", "<object"] {
            assert!(!html.contains(attr), "the page contains {attr}");
        }
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(html.contains("<svg id=\"forest-plot\" role=\"img\"") && html.contains("<svg id=\"calibration-chart\" role=\"img\""));
        assert_eq!(html.matches("<svg ").count(), html.matches("<svg id=\"").count());
        assert!(html.matches("<title").count() >= 3, "a page title and one per plot");
    }

    /// With a human-verdict label, the group table carries the PPI-corrected estimate.
    #[test]
    fn the_group_table_shows_the_ppi_estimate_when_humans_labelled_pairs() {
        let r = crate::report::render_text::tests::human_labelled_report(0.3);
        let page = render(&r);
        let table = &page[page.find("<section id=\"groups\">").unwrap()..];
        let table = &table[..table.find("</section>").unwrap()];
        assert!(table.contains("<th>corrected with human verdicts (PPI) [95% CI]</th>"), "{table}");
        let g = r.groups.iter().find(|g| g.dimension == "slice" && g.group == "multi_step" && g.route_taken == "fast").unwrap();
        let row = table.split("<tr").find(|row| row.contains(">multi_step<") && row.contains("fast → reasoning")).unwrap();
        assert!(row.contains(&format!("<td>{}</td><td>{}</td>", ci(&g.mean_points), ci(&g.ppi_points))) && g.ppi_points.is_some(), "{row}");
        assert!(!render(&essay_report(4)).contains("(PPI) [95% CI]</th>"), "no human label, no PPI column");
    }
}
