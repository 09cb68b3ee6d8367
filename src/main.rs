//! Command line: `serve`, `judge`, `report`, `check-config`, `demo`. Everything else lives in the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use untaken::config::{self, ConfigError, LogFormat};

/// Exit code for bad configuration (EX_CONFIG would be 78; sysexits EX_USAGE is 64,
/// which is what our deployment tooling expects for "fix your config").
const EXIT_CONFIG: u8 = 64;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "untaken", version, about = "Shadow a sample of LLM requests to the route the router did not take, and stream the paired answers to Kafka.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Run the sidecar.
    Serve {
        /// TOML config file; `UNTAKEN_*` environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the grading worker: pairs in (Kafka, or --pairs FILE), grades out.
    Judge {
        /// Judge TOML config file; `UNTAKEN_*` environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// JSON-lines file of pair records to grade instead of reading Kafka.
        #[arg(long, requires = "grades")]
        pairs: Option<PathBuf>,
        /// JSON-lines file the grades are written to (with --pairs).
        #[arg(long, requires = "pairs")]
        grades: Option<PathBuf>,
    },
    /// Validate a config file and exit (0 when valid, 64 when not). A file with a
    /// top-level [judge] table is checked as a judge config; a sidecar config also
    /// prints the worst-case memory it allows.
    CheckConfig {
        file: PathBuf,
        /// Write the effective config to this file as JSON instead (defaults applied,
        /// durations in seconds, secrets as their `*_env`/`*_file` references, never read).
        #[arg(long, value_name = "OUT")]
        effective_json: Option<PathBuf>,
    },
    /// The whole story locally: a router, the sidecar, the judge and the report, on simulated models.
    Demo {
        /// Number of router requests to send.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// JSON-lines file for the pairs (when no --brokers).
        #[arg(long, default_value = "untaken-demo-pairs.jsonl")]
        out: PathBuf,
        /// JSON-lines file for the grades.
        #[arg(long, default_value = "untaken-demo-grades.jsonl")]
        grades: PathBuf,
        /// The report as one self-contained HTML page.
        #[arg(long, default_value = "untaken-demo-report.html")]
        html: PathBuf,
        /// Kafka bootstrap servers; pairs go to Kafka instead of the file (and the demo stops there).
        #[arg(long)]
        brokers: Option<String>,
        #[arg(long, default_value = "untaken.pairs")]
        topic: String,
    },
    /// Per-slice statistics from grades; exit 0 when no regression is flagged, 2 when one
    /// is, 1 when the report could not be made, 64 for a bad flag or config value.
    Report(ReportArgs),
}

#[derive(clap::Args)]
struct ReportArgs {
    /// JSON-lines grade file (`-` for stdin).
    #[arg(long, conflicts_with = "brokers")]
    grades: Option<PathBuf>,
    /// Kafka bootstrap servers to read grades from (with --topic).
    #[arg(long, requires = "topic")]
    brokers: Option<String>,
    /// Grades topic.
    #[arg(long, requires = "brokers")]
    topic: Option<String>,
    /// Kafka: first record time (RFC 3339), e.g. 2026-11-30T00:00:00Z.
    #[arg(long, requires = "brokers", conflicts_with = "from_offset")]
    since: Option<String>,
    /// Kafka: last record time (RFC 3339).
    #[arg(long, requires = "brokers")]
    until: Option<String>,
    /// Kafka: `beginning` or an offset applied to every partition (default: beginning).
    #[arg(long, requires = "brokers")]
    from_offset: Option<String>,
    /// report.toml: labels, human and eligibility labels, q, noise band, min pairs, Kafka client settings.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Also write the report as JSON to this file (`-`: JSON on stdout instead of the table).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the report as a self-contained HTML page to this file.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Overall effect in points treated as "no change" (hidden-regression test).
    #[arg(long)]
    noise_band: Option<f64>,
    /// Benjamini–Hochberg false-discovery rate across all tested groups.
    #[arg(long)]
    q: Option<f64>,
    /// Label to slice by (repeatable); added to the config's labels.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Label carrying a human verdict in [-1, 1].
    #[arg(long)]
    human_label: Option<String>,
    /// Label carrying a reasoning-eligibility score in [0, 1].
    #[arg(long)]
    eligibility_label: Option<String>,
    /// Route the eligibility score is about.
    #[arg(long)]
    reasoning_route: Option<String>,
    /// Groups with fewer graded pairs are shown but not tested.
    #[arg(long)]
    min_pairs: Option<u64>,
    /// Do not slice by prompt length, turns and tools.
    #[arg(long)]
    no_features: bool,
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("untaken: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// Parses the report flags over the optional report.toml into options.
fn report_options(args: &ReportArgs) -> Result<untaken::report::ReportOptions, ConfigError> {
    use untaken::report::{KafkaSource, KafkaStart, ReportConfig, Source};
    let mut cfg = match &args.config {
        Some(path) => ReportConfig::load(path)?,
        None => ReportConfig::default(),
    };
    cfg.labels.extend(args.labels.iter().cloned());
    cfg.human_label = args.human_label.clone().or(cfg.human_label);
    cfg.eligibility_label = args.eligibility_label.clone().or(cfg.eligibility_label);
    cfg.reasoning_route = args.reasoning_route.clone().unwrap_or(cfg.reasoning_route);
    cfg.q = args.q.unwrap_or(cfg.q);
    cfg.noise_band = args.noise_band.unwrap_or(cfg.noise_band);
    cfg.min_pairs = args.min_pairs.unwrap_or(cfg.min_pairs);
    cfg.features &= !args.no_features;
    let time = |flag: &str, v: &Option<String>| {
        v.as_deref()
            .map(|t| humantime::parse_rfc3339_weak(t).map_err(|e| ConfigError::new(flag, format!("{t:?} is not an RFC 3339 time: {e}"))))
            .transpose()
    };
    let source = match (&args.grades, &args.brokers, &args.topic) {
        (Some(p), _, _) if p.as_os_str() == "-" => Source::Stdin,
        (Some(p), _, _) => Source::File(p.clone()),
        (None, Some(brokers), Some(topic)) => {
            let start = match (time("--since", &args.since)?, args.from_offset.as_deref()) {
                (Some(t), _) => KafkaStart::Since(t),
                (None, None | Some("beginning")) => KafkaStart::Beginning,
                (None, Some(o)) => KafkaStart::Offset(o.parse::<i64>().ok().filter(|o| *o >= 0).ok_or_else(|| ConfigError::new("--from-offset", format!("{o:?} is neither `beginning` nor an offset ≥ 0")))?),
            };
            Source::Kafka(KafkaSource { topic: topic.clone(), start, until: time("--until", &args.until)?, kafka: cfg.kafka.client(brokers), timeout: cfg.kafka.timeout })
        }
        _ => return Err(ConfigError::new("--grades", "give a grade file (--grades FILE, or - for stdin) or Kafka (--brokers B --topic T)")),
    };
    cfg.into_options(source)
}

fn report(args: ReportArgs) -> ExitCode {
    let opts = match report_options(&args) {
        Ok(o) => o,
        Err(e) => return config_error(&e),
    };
    let report = match untaken::report::run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("untaken report: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let json_stdout = args.json.as_ref().is_some_and(|p| p.as_os_str() == "-");
    let json = serde_json::to_string_pretty(&report).expect("the report serialises");
    if json_stdout {
        println!("{json}");
    } else {
        print!("{}", untaken::report::render_text::render(&report));
    }
    let outputs = [(args.json.as_ref().filter(|_| !json_stdout), json), (args.html.as_ref(), untaken::report::render_html::render(&report))];
    for (path, text) in outputs {
        if let Some(path) = path {
            if let Err(e) = std::fs::write(path, text) {
                eprintln!("untaken report: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::from(report.exit_code())
}

fn main() -> ExitCode {
    // Usage errors exit 64, not clap's 2: `report` uses 2 for "regression flagged".
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Command::Report(args) = cli.command {
        return report(args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match cli.command {
        Command::CheckConfig { file, effective_json: Some(out) } => {
            let json = if untaken::judge::config::is_judge_config(&file) {
                untaken::effective_config::effective_json(|| untaken::judge::config::load(Some(&file)))
            } else {
                untaken::effective_config::effective_json(|| config::load(Some(&file)))
            };
            let written = json.and_then(|j| {
                let text = serde_json::to_string_pretty(&j).expect("a JSON value prints");
                std::fs::write(&out, text + "\n")
                    .map_err(|e| ConfigError::new("--effective-json", format!("cannot write {}: {e}", out.display())))
            });
            match written {
                Ok(()) => {
                    println!("{}: ok, effective config in {}", file.display(), out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => config_error(&e),
            }
        }
        Command::CheckConfig { file, .. } if untaken::judge::config::is_judge_config(&file) => {
            match untaken::judge::config::load(Some(&file)) {
                Ok(c) => {
                    println!("{}: ok (judge {}, pairs {}, grades {})", file.display(), c.judge.kind.as_str(), c.kafka.pairs_topic, c.kafka.grades_topic);
                    ExitCode::SUCCESS
                }
                Err(e) => config_error(&e),
            }
        }
        Command::CheckConfig { file, .. } => match config::load(Some(&file)) {
            Ok(c) => {
                println!("{}: ok ({} routes, sink {:?})", file.display(), c.routes.len(), c.sink.effective_kind());
                print!("{}", untaken::memory::ceiling(&c));
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::Serve { config } => {
            let cfg = match config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => return config_error(&e),
            };
            init_logging(&cfg.log.level, cfg.log.format);
            let code = runtime.block_on(async move {
                let app = match untaken::app::start(cfg, config).await {
                    Ok(a) => a,
                    Err(untaken::app::StartError::Config(e)) => return config_error(&e),
                    Err(e) => {
                        tracing::error!(error = %e, "start failed");
                        eprintln!("untaken: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                untaken::app::termination_signal().await;
                app.shutdown();
                app.wait().await;
                ExitCode::SUCCESS
            });
            // Everything is delivered or spooled; don't wait on a blocking probe (e.g. the
            // start-up Kafka metadata check) that is still running.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            code
        }
        Command::Judge { config, pairs, grades } => {
            let cfg = match untaken::judge::config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => return config_error(&e),
            };
            init_logging(&cfg.log.level, cfg.log.format);
            drop(runtime);
            let runtime = judge_runtime(cfg.limits.worker_threads as usize);
            let code = runtime.block_on(judge(cfg, pairs.zip(grades)));
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            code
        }
        Command::Report(_) => unreachable!("handled above"),
        Command::Demo { requests, out, grades, html, brokers, topic } => {
            init_logging("warn", LogFormat::Text);
            match runtime.block_on(untaken::demo::run(untaken::demo::DemoOptions { requests, out, grades, html, brokers, topic })) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("untaken demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The judge's runtime. One worker thread (the default) is a current-thread runtime:
/// the consume loop and the gradings then run on the same thread, where a
/// multi-thread runtime of one worker runs `block_on`'s future (the consume loop) on
/// the main thread and every hand-off to a grading is a cross-thread wake-up.
/// Blocking librdkafka calls (commits, lag, closing) already go to the blocking pool;
/// a revocation's commit blocks the consumer's poll, and so this thread, for one round trip.
fn judge_runtime(threads: usize) -> tokio::runtime::Runtime {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder.enable_all().build().expect("tokio runtime")
}

async fn judge(cfg: untaken::judge::config::JudgeConfig, files: Option<(PathBuf, PathBuf)>) -> ExitCode {
    use untaken::judge::JudgeError;
    let result = match files {
        Some((pairs, grades)) => untaken::judge::run_file(&cfg, &pairs, &grades).await.map(|s| {
            tracing::info!(pairs = s.pairs_read, grades = s.grades_written, undecodable = s.undecodable, duplicates = s.duplicates, "file graded");
        }),
        None => {
            let stop = tokio_util::sync::CancellationToken::new();
            let signal_stop = stop.clone();
            tokio::spawn(async move {
                untaken::app::termination_signal().await;
                signal_stop.cancel();
            });
            untaken::judge::run_kafka(&cfg, stop).await.map(|_| ())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(JudgeError::Config(e)) => config_error(&e),
        Err(e) => {
            tracing::error!(error = %e, "judge failed");
            eprintln!("untaken judge: {e}");
            ExitCode::FAILURE
        }
    }
}
