//! `untaken demo`: the whole loop on one machine with nothing else running.
//!
//! Starts two simulated OpenAI-compatible upstreams (a fast model and a slow
//! "reasoning" one), the sidecar in-process on loopback, and a synthetic router
//! that sends a few hundred requests across several slices; pairs go to a
//! JSON-lines file (or to Kafka with `--brokers`). Prints what happened.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{self, Config};
use crate::simulate::{self, Behaviour, FakeUpstream};

pub struct DemoOptions {
    pub requests: usize,
    pub out: PathBuf,
    pub brokers: Option<String>,
    pub topic: String,
}

/// The demo's config: 10% of everything, more of the rare slices.
pub fn demo_config(fast_url: &str, reasoning_url: &str, opts: &DemoOptions, spool: &std::path::Path) -> Result<Config, config::ConfigError> {
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
        default_rate = 0.1
        [[sampling.rules]]
        slice = "multi_step"
        rate = 0.5
        [[sampling.rules]]
        slice = "out_of_distribution"
        rate = 1.0
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
        [spool]
        dir = {spool:?}
        {sink}
        "#,
        spool = spool.display().to_string(),
    ))
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let fast = FakeUpstream::start("fast", Behaviour::Answer { delay: Duration::from_millis(5) }).await?;
    let reasoning = FakeUpstream::start("reasoning", Behaviour::Answer { delay: Duration::from_millis(80) }).await?;
    let spool = tempfile_dir()?;
    let config = demo_config(&fast.url(), &reasoning.url(), &opts, &spool)?;
    if opts.brokers.is_none() {
        // Start from an empty file so the count below is this run's.
        let _ = std::fs::remove_file(&opts.out);
    }
    let app = crate::app::start(config, None).await?;
    println!("untaken demo: sidecar on {} (admin http://{}/metrics), writing to {}", app.grpc_addr, app.admin_addr, app.sink_description);
    println!("synthetic router: {} requests, all routed to `fast`; untaken shadows a sample to `reasoning`", opts.requests);
    let report = simulate::run_router(app.grpc_addr, &fast, opts.requests).await.map_err(|e| anyhow::anyhow!(e))?;
    let metrics = app.engine.metrics().clone();
    app.shutdown();
    app.wait().await;
    if opts.brokers.is_none() || std::fs::read_dir(&spool).map(|d| d.filter_map(Result::ok).all(|e| !e.path().extension().is_some_and(|x| x == "seg"))).unwrap_or(true) {
        let _ = std::fs::remove_dir_all(&spool);
    } else {
        println!("kafka did not take every pair: they wait in {}; `untaken serve` with this spool.dir replays them", spool.display());
    }

    println!();
    println!("{:<22} {:>8} {:>8}", "slice", "requests", "sampled");
    let mut slices: Vec<_> = report.by_slice.iter().collect();
    slices.sort();
    for (slice, (n, s)) in slices {
        println!("{slice:<22} {n:>8} {s:>8}");
    }
    println!("{:<22} {:>8} {:>8}", "total", report.requests, report.sampled);
    println!("slowest Mirror call seen by the router: {:.2} ms", report.max_mirror_latency.as_secs_f64() * 1000.0);
    let text = metrics.render();
    let published = text.lines().find_map(|l| l.strip_prefix("untaken_pairs_published_total ")).unwrap_or("0");
    println!("pairs published: {published} (one-phase and two-phase, {} completed via Complete)", report.completed);
    if opts.brokers.is_none() {
        let path = std::fs::canonicalize(&opts.out).unwrap_or(opts.out.clone());
        let lines = std::fs::read_to_string(&path).map(|t| t.lines().count()).unwrap_or(0);
        println!("wrote {lines} pair records to {}", path.display());
        println!("read one: python3 -c \"import json; r=json.loads(open('{}').readline()); print(r['slice'], r['counterfactual']['body']['choices'][0]['message']['content'])\"", path.display());
    } else {
        println!("records are on topic `{}` at {}", opts.topic, opts.brokers.as_deref().unwrap_or_default());
    }
    Ok(())
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("untaken-demo-spool-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
