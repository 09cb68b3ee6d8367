//! `untaken report --html` as a person sees it: the real binary writes the page from a grade
//! file with a planted regression (the fast route loses 15 points on the `multi_step` slice,
//! 5% of traffic), and headless Chromium (Debian's `chromium` package, driven over CDP) opens
//! it. The checks read the rendered page: what is highlighted, where marks land on screen,
//! and what the browser fetched. A screenshot is kept under `target/tmp/report_html/`.
//!
//! Needs `/usr/bin/chromium`: installed with apt-get when missing and running as root (a fresh
//! machine, CI), else `apt-get install chromium` by hand. Without
//! it the test fails and says so: it never skips.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::{Network, Page};
use headless_chrome::{Browser, LaunchOptions, Tab};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;
use untaken::report::scenario::{self, Scenario};

const BIN: &str = env!("CARGO_BIN_EXE_untaken");
const CHROMIUM: &str = "/usr/bin/chromium";
/// A tenant label value that would run if the page did not escape user data.
const INJECTED: &str = "<script>window.__injected = 1</script><img src=x onerror=\"window.__injected = 2\">";

/// The essay scenario, a bigger day so the planted loss is flagged on this seed, with one
/// tenant label replaced by markup.
fn write_grades(path: &Path) {
    let mut day = Scenario::essay();
    day.requests = 40_000;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut n = 0;
    day.generate(&mut StdRng::seed_from_u64(7), |mut g| {
        n += 1;
        if g.labels.get(scenario::TENANT_LABEL).is_some_and(|t| t == "initech") {
            g.labels.insert(scenario::TENANT_LABEL.into(), INJECTED.into());
        }
        serde_json::to_writer(&mut f, &g).unwrap();
        f.write_all(b"\n").unwrap();
    });
    assert!(n > 1000, "{n} grades");
}

/// Installs Debian's chromium when it is missing and we are root with apt-get (a fresh
/// machine or CI), as the Kafka harness fetches the broker's jars: `cargo test` needs no
/// manual step. Anyone else gets the command to run in the failure message below.
fn ensure_chromium() {
    if Path::new(CHROMIUM).exists() {
        return;
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root && Path::new("/usr/bin/apt-get").exists() {
        eprintln!("report_html: {CHROMIUM} is missing; installing Debian's chromium with apt-get (once)");
        let status = Command::new("sh")
            .args(["-c", "apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        eprintln!("report_html: apt-get finished: {status:?}");
    }
}

fn launch_chromium() -> Browser {
    ensure_chromium();
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: this test renders the report in headless Chromium. Install Debian's package: `apt-get update && apt-get install -y chromium` (.ci/run does this)"
    );
    let options = LaunchOptions::default_builder()
        .path(Some(PathBuf::from(CHROMIUM)))
        .headless(true)
        // Root in a container: Chromium's sandbox needs user namespaces it may not have.
        .sandbox(false)
        .window_size(Some((1280, 1000)))
        // Containers often have a small /dev/shm.
        .args(vec![std::ffi::OsStr::new("--disable-dev-shm-usage")])
        .idle_browser_timeout(Duration::from_secs(120))
        .build()
        .expect("launch options");
    Browser::new(options).unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e:#}"))
}

/// Evaluates `expression` (which must produce a JSON string) in the page.
fn eval_json(tab: &Tab, expression: &str) -> Value {
    let result = tab.evaluate(expression, false).expect("evaluate");
    let text = result.value.and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_else(|| panic!("no string from {expression}"));
    serde_json::from_str(&text).unwrap()
}

/// What a person sees, measured in the rendered page (CSS pixels, computed styles).
const MEASURE: &str = r#"JSON.stringify((() => {
  const box = el => { if (!el) return null; const r = el.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, height: r.height}; };
  const flaggedFinding = document.querySelector('#findings li.finding.flagged');
  const mark = flaggedFinding && flaggedFinding.querySelector('mark.group-name');
  const row = document.querySelector('#forest-plot g.row.flagged[data-dimension="slice"][data-group="multi_step"]');
  const calm = [...document.querySelectorAll('#forest-plot g.row:not(.flagged)')][0];
  return {
    title: document.title,
    text: document.body.innerText,
    findingText: flaggedFinding && flaggedFinding.innerText,
    findingBefore: !!flaggedFinding && !!document.querySelector('#overall') && !!(flaggedFinding.compareDocumentPosition(document.querySelector('#forest-plot')) & Node.DOCUMENT_POSITION_FOLLOWING),
    mark: mark && mark.textContent,
    markBackground: mark && getComputedStyle(mark).backgroundColor,
    markColor: mark && getComputedStyle(mark).color,
    pageBackground: getComputedStyle(document.body).backgroundColor,
    row: row && {text: row.textContent, bg: getComputedStyle(row.querySelector('.flag-bg')).fill, labelFill: getComputedStyle(row.querySelector('text.label')).fill, ciStroke: getComputedStyle(row.querySelector('.ci')).stroke, ci: box(row.querySelector('.ci')), est: box(row.querySelector('.est')), box: box(row)},
    calmStroke: calm && getComputedStyle(calm.querySelector('.ci')).stroke,
    zero: box(document.querySelector('#zero-line')),
    overall: box(document.querySelector('#overall-line')),
    band: box(document.querySelector('#noise-band')),
    diamond: box(document.querySelector('#overall-diamond')),
    plotTitle: document.querySelector('#forest-plot > title') && document.querySelector('#forest-plot > title').textContent,
    calibration: box(document.querySelector('#calibration-chart')),
    calibrationPoints: document.querySelectorAll('#calibration-chart .band-rate').length,
    threshold: box(document.querySelector('#threshold-line')),
    thresholdLabel: box(document.querySelector('#calibration-chart .threshold-label')),
    injected: window.__injected === undefined ? null : window.__injected,
    scripts: document.scripts.length,
    images: document.images.length,
    resources: performance.getEntriesByType('resource').length,
    size: {width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight},
  };
})())"#;

#[test]
fn the_page_shows_the_planted_regression_where_a_person_looks_and_fetches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let grades = dir.path().join("grades.jsonl");
    let page = dir.path().join("report.html");
    write_grades(&grades);
    let out = Command::new(BIN)
        .args(["report", "--grades"])
        .arg(&grades)
        .args(["--label", scenario::TENANT_LABEL, "--eligibility-label", scenario::ELIGIBILITY_LABEL, "--html"])
        .arg(&page)
        .stdin(Stdio::null())
        .output()
        .expect("run untaken report");
    assert_eq!(out.status.code(), Some(2), "the planted regression is flagged: {}", String::from_utf8_lossy(&out.stderr));

    let browser = launch_chromium();
    let tab = browser.new_tab().expect("a tab");
    // Two shared cores under a parallel build: give navigation and evaluation room.
    tab.set_default_timeout(Duration::from_secs(60));
    let page_url = format!("file://{}", page.display());
    // Every request the page makes, seen by the browser (the page's own load excluded).
    let requests = Arc::new(Mutex::new(Vec::<String>::new()));
    tab.call_method(Network::Enable { max_total_buffer_size: None, max_resource_buffer_size: None, max_post_data_size: None, report_direct_socket_traffic: None, enable_durable_messages: None })
        .expect("Network.enable");
    let seen = Arc::clone(&requests);
    tab.add_event_listener(Arc::new(move |event: &Event| {
        if let Event::NetworkRequestWillBeSent(e) = event {
            seen.lock().unwrap().push(e.params.request.url.clone());
        }
    }))
    .unwrap();
    tab.navigate_to(&page_url).unwrap().wait_until_navigated().unwrap();
    let m = eval_json(&tab, MEASURE);
    screenshot(&tab, &m["size"]);

    // The page's own title says there is a regression.
    let title = m["title"].as_str().unwrap();
    assert!(title.contains("regression") && title.ends_with("flagged") && !title.contains("no regression"), "{title}");

    // User data is shown as text, never run; the page loads no script, image or other resource.
    assert!(m["injected"].is_null(), "a label's markup ran: {}", m["injected"]);
    assert!(m["text"].as_str().unwrap().contains("<script>window.__injected = 1</script>"), "the label reads as text");
    assert_eq!((m["scripts"].as_u64(), m["images"].as_u64(), m["resources"].as_u64()), (Some(0), Some(0), Some(0)));

    // Findings come first; the flagged slice's name is highlighted, and the finding says REGRESSION in words.
    assert!(m["findingBefore"].as_bool().unwrap(), "the findings come before the plot");
    assert_eq!(m["mark"], "slice multi_step");
    assert_ne!(m["markBackground"], m["pageBackground"], "the name is highlighted");
    let finding = m["findingText"].as_str().unwrap();
    assert!(finding.contains("REGRESSION") && finding.contains("HIDDEN"), "{finding}");

    // The plot: the flagged row is shaded, drawn in another colour than calm rows, and says REGRESSION.
    let row = &m["row"];
    assert!(row.is_object(), "a flagged multi_step row in the forest plot");
    assert!(row["text"].as_str().unwrap().contains("slice multi_step") && row["text"].as_str().unwrap().contains("REGRESSION"), "{}", row["text"]);
    assert_ne!(row["bg"], "none");
    assert_ne!(row["ciStroke"], m["calmStroke"], "flagged intervals are drawn in their own colour");
    // Highlighted text stays readable: WCAG AA contrast (4.5:1) on its highlight.
    for (fg, bg) in [(&m["markColor"], &m["markBackground"]), (&row["labelFill"], &row["bg"])] {
        let ratio = contrast(fg.as_str().unwrap(), bg.as_str().unwrap());
        assert!(ratio >= 4.5, "{fg} on {bg}: contrast {ratio:.1}");
    }
    assert_eq!(m["plotTitle"], "Forest plot: effect per group in points, with 95% intervals");

    // Geometry: the interval lies right of the zero line (the route taken is worse); the overall
    // line sits inside the noise band, closer to zero than the flagged estimate.
    let x = |v: &Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} of {v}"));
    let (ci, est, zero, overall, band) = (&row["ci"], &row["est"], &m["zero"], &m["overall"], &m["band"]);
    assert!(x(ci, "width") > 4.0 && x(ci, "left") > x(zero, "right"), "interval {ci} vs zero line {zero}");
    let centre = |v: &Value| (x(v, "left") + x(v, "right")) / 2.0;
    // "Looks fine" as drawn: the overall line inside the noise band, or its interval (the
    // diamond) across the zero line.
    let diamond = &m["diamond"];
    let in_band = x(band, "left") <= centre(overall) && centre(overall) <= x(band, "right");
    let spans_zero = x(diamond, "left") <= centre(zero) && centre(zero) <= x(diamond, "right");
    assert!(in_band || spans_zero, "overall {overall} (interval {diamond}) neither inside the band {band} nor across zero {zero}");
    assert!(x(diamond, "left") <= centre(overall) && centre(overall) <= x(diamond, "right"), "the overall line is inside its own interval");
    assert!(x(band, "left") < centre(zero) && centre(zero) < x(band, "right"), "the band is around zero");
    assert!((centre(overall) - centre(zero)).abs() < (centre(est) - centre(zero)).abs() / 2.0, "overall {overall} near zero {zero}, flagged estimate {est} far");
    assert!(x(&row["box"], "bottom") <= x(&m["size"], "height"), "the row is on the page");

    // Calibration chart, with one point per band that has pairs and the threshold drawn.
    assert!(x(&m["calibration"], "height") > 100.0 && m["calibrationPoints"].as_u64().unwrap() >= 5, "{}", m["calibration"]);
    assert!(m["threshold"].is_object(), "the essay's reasoning route is better from some score up");
    let (label, chart) = (&m["thresholdLabel"], &m["calibration"]);
    assert!(x(chart, "left") <= x(label, "left") && x(label, "right") <= x(chart, "right"), "the threshold label {label} is inside the chart {chart}");

    let fetched: Vec<String> = requests.lock().unwrap().iter().filter(|u| **u != page_url).cloned().collect();
    assert!(fetched.is_empty(), "the page made requests: {fetched:?}");
    assert!(!requests.lock().unwrap().is_empty(), "the listener saw the page's own load, so it would see others");
}

/// WCAG 2 contrast ratio of two computed CSS colours (`rgb(r, g, b)`).
fn contrast(a: &str, b: &str) -> f64 {
    let luminance = |css: &str| {
        let inner = css.trim_start_matches("rgba(").trim_start_matches("rgb(").trim_end_matches(')');
        let c: Vec<f64> = inner.split(',').take(3).map(|v| v.trim().parse::<f64>().unwrap_or_else(|_| panic!("colour {css}")) / 255.0).collect();
        let lin = |v: f64| if v <= 0.03928 { v / 12.92 } else { ((v + 0.055) / 1.055).powf(2.4) };
        0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2])
    };
    let (x, y) = (luminance(a), luminance(b));
    (x.max(y) + 0.05) / (x.min(y) + 0.05)
}

/// Full-page PNG for a human to look at: target/tmp/report_html/report.png.
fn screenshot(tab: &Tab, size: &Value) {
    let (w, h) = (size["width"].as_f64().unwrap(), size["height"].as_f64().unwrap());
    let clip = Page::Viewport { x: 0.0, y: 0.0, width: w, height: h, scale: 1.0 };
    let png = tab
        .call_method(Page::CaptureScreenshot { format: Some(Page::CaptureScreenshotFormatOption::Png), quality: None, clip: Some(clip), from_surface: Some(true), capture_beyond_viewport: Some(true), optimize_for_speed: None })
        .expect("screenshot")
        .data;
    let png = base64::engine::general_purpose::STANDARD.decode(png).expect("CDP sends base64");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report_html");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("report.png"), png).unwrap();
}
