//! `untaken demo`: the whole story on one machine with nothing else running.
//!
//! A simulated world (see [`world`]): a fast model and a reasoning model that are
//! equally good on easy questions and 15 points apart on the `multi_step` slice,
//! 5% of traffic. A latency-budget [`router`] sends almost everything to the fast
//! model. The sidecar, in-process on loopback, shadows a small sample (the rare
//! slice oversampled, a few control pairs) to the route not taken and writes the
//! pairs to a file; the reference judge grades them against the known answers;
//! the report finds the loss the aggregate hides.
//!
//! Every number printed comes from the pairs and the grades, not from the world's
//! parameters.

pub mod router;
pub mod world;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::{self, Config};
use crate::report::{Report, ReportOptions, Source};
use crate::simulate::{Behaviour, FakeUpstream};

pub struct DemoOptions {
    pub requests: usize,
    /// JSON-lines file for the pairs (when no `brokers`).
    pub out: PathBuf,
    /// JSON-lines file for the grades.
    pub grades: PathBuf,
    /// The report as one HTML page.
    pub html: PathBuf,
    pub brokers: Option<String>,
    pub topic: String,
}

/// The sidecar's config for the demo: 2% of traffic, half of the rare slice,
/// and a tenth of the sampled requests asked again of the route taken (control).
pub fn demo_config(fast_url: &str, reasoning_url: &str, opts: &DemoOptions, spool: &Path) -> Result<Config, config::ConfigError> {
    let sink = match &opts.brokers {
        Some(b) => format!("[sink]\ntype = \"kafka\"\n[sink.kafka]\nbrokers = \"{b}\"\ntopic = \"{}\"\ndelivery_timeout = \"10s\"\n", opts.topic),
        None => format!("[sink]\ntype = \"file\"\n[sink.file]\npath = {:?}\n", opts.out.display().to_string()),
    };
    config::from_toml(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        shutdown_grace = "10s"
        [sampling]
        salt = "demo"
        default_rate = 0.02
        control_rate = 0.1
        [[sampling.rules]]
        slice = "multi_step"
        rate = 0.5
        [routes.fast]
        url = "{fast_url}"
        model = "fast-model"
        counterfactual = "reasoning"
        timeout = "5s"
        input_usd_per_mtok = 0.15
        output_usd_per_mtok = 0.60
        [routes.reasoning]
        url = "{reasoning_url}"
        model = "reasoning-model"
        counterfactual = "fast"
        timeout = "20s"
        input_usd_per_mtok = 1.10
        output_usd_per_mtok = 4.40
        [pairing]
        timeout = "30s"
        [queue]
        capacity = 4096
        [spool]
        dir = {spool:?}
        {sink}
        "#,
        spool = spool.display().to_string(),
    ))
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let fast = FakeUpstream::start("fast", Behaviour::Model(world::FAST)).await?;
    let reasoning = FakeUpstream::start("reasoning", Behaviour::Model(world::REASONING)).await?;
    let spool = std::env::temp_dir().join(format!("untaken-demo-spool-{}", std::process::id()));
    std::fs::create_dir_all(&spool)?;
    let config = demo_config(&fast.url(), &reasoning.url(), &opts, &spool)?;
    if opts.brokers.is_none() {
        // Start from an empty file so what is graded is this run's.
        let _ = std::fs::remove_file(&opts.out);
    }
    let app = crate::app::start(config, None).await?;
    println!("untaken demo: a latency-budget router in front of `fast` and `reasoning`, untaken beside it");
    println!("  sidecar on {} (admin http://{}/metrics), pairs to {}", app.grpc_addr, app.admin_addr, app.sink_description);
    let upstreams = router::Upstreams { fast: fast.url(), reasoning: reasoning.url() };
    let traffic = router::run(app.grpc_addr, upstreams, opts.requests, 32).await?;
    app.shutdown();
    app.wait().await;
    let spooled = std::fs::read_dir(&spool)?.filter_map(Result::ok).any(|e| e.path().extension().is_some_and(|x| x == "seg"));
    if spooled {
        println!("kafka did not take every pair: they wait in {}; `untaken serve` with this spool.dir replays them", spool.display());
    } else {
        let _ = std::fs::remove_dir_all(&spool);
    }
    print_traffic(&traffic);
    if opts.brokers.is_some() {
        println!("pairs are on topic `{}`: grade them with `untaken judge` and read `untaken report`", opts.topic);
        return Ok(());
    }
    // The judge: known answers travel as the `expected_answer` label; the answer is
    // the number an answer ends with.
    let judge = crate::judge::config::from_toml(
        r#"
        [judge]
        kind = "reference"
        [judge.reference]
        label = "expected_answer"
        method = "numeric"
        tolerance = 0.0
        "#,
    )?;
    let graded = crate::judge::run_file(&judge, &opts.out, &opts.grades).await?;
    println!();
    println!(
        "judge (reference, known answers): {} pairs read, {} grades written to {}",
        graded.pairs_read,
        graded.grades_written,
        opts.grades.display()
    );

    let options = ReportOptions {
        source: Source::File(opts.grades.clone()),
        labels: vec!["tenant".into()],
        eligibility_label: Some("reasoning_score".into()),
        ..ReportOptions::default()
    };
    let grades = opts.grades.clone();
    let report = tokio::task::spawn_blocking(move || crate::report::run(&options)).await?.map_err(|e| anyhow::anyhow!("report on {}: {e}", grades.display()))?;
    println!();
    println!("{}", crate::report::render_text::render(&report));
    std::fs::write(&opts.html, crate::report::render_html::render(&report))?;
    print_story(&report);
    let html = std::fs::canonicalize(&opts.html).unwrap_or(opts.html.clone());
    println!("the report as a page: file://{}", html.display());
    println!("(demo finished in {:.1} s; `untaken report --grades {}` prints it again, exit code 2 = regression found)", started.elapsed().as_secs_f64(), opts.grades.display());
    Ok(())
}

/// The last word: the overall figure inside its interval, and what it hides.
fn print_story(report: &Report) {
    println!();
    let overall = report.overall.weighted_points;
    match overall {
        Some(o) => println!(
            "OVERALL: the route not taken is {:+.1} points [95% CI {:+.1}, {:+.1}] over {} graded pairs: {}",
            o.estimate,
            o.lower,
            o.upper,
            report.overall.pairs,
            if report.overall.looks_fine { "inside the noise, the dashboard stays green" } else { "visible in the aggregate" }
        ),
        None => println!("OVERALL: no graded pairs"),
    }
    let mut any = false;
    for f in report.regressions() {
        any = true;
        let effect = f.effect_points.map(|e| format!("{:+.1} points [95% CI {:+.1}, {:+.1}]", e.estimate, e.lower, e.upper)).unwrap_or_default();
        let share = f.traffic_share.map(|s| format!("{:.1}% of traffic, ", 100.0 * s)).unwrap_or_default();
        println!(
            "FLAGGED{}: {} = {} ({}{} pairs): `{}` answers {} worse than `{}`",
            if f.hidden { " (hidden by the aggregate)" } else { "" },
            f.dimension,
            f.group,
            share,
            f.pairs,
            f.route_taken,
            effect,
            f.route_not_taken
        );
    }
    if !any {
        println!("no regression flagged");
    }
}

fn print_traffic(t: &router::Traffic) {
    println!();
    println!("{:<22} {:>9} {:>12} {:>9}", "slice", "requests", "→ reasoning", "shadowed");
    for (slice, [n, r, s]) in &t.by_slice {
        println!("{slice:<22} {n:>9} {r:>12} {s:>9}");
    }
    let [n, r, s] = t.total();
    let share = 100.0 * s as f64 / n.max(1) as f64;
    println!("{:<22} {n:>9} {r:>12} {s:>9}  ({share:.1}% of traffic shadowed, {} of them control pairs)", "total", t.control);
    if !t.shed.is_empty() {
        println!("shed by untaken (the router was never slowed): {:?}", t.shed);
    }
    println!("slowest Mirror call the router saw: {:.2} ms", t.slowest_mirror.as_secs_f64() * 1000.0);
}
