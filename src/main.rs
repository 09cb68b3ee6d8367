//! Command line: `serve`, `check-config`, `demo`. Everything else lives in the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use untaken::config::{self, ConfigError, LogFormat};

/// Exit code for bad configuration (EX_CONFIG would be 78; sysexits EX_USAGE is 64,
/// which is what our deployment tooling expects for "fix your config").
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "untaken", version, about = "Shadow a sample of LLM requests to the route the router did not take, and stream the paired answers to Kafka.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Serve {
        /// TOML config file; `UNTAKEN_*` environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print the worst-case memory it allows (exit 0 when
    /// valid, 64 when not).
    CheckConfig { file: PathBuf },
    /// Run the whole loop locally: fake upstreams, the sidecar, a synthetic router.
    Demo {
        /// Number of router requests to send.
        #[arg(long, default_value_t = 300)]
        requests: usize,
        /// JSON-lines file for the pairs (when no --brokers).
        #[arg(long, default_value = "untaken-demo-pairs.jsonl")]
        out: PathBuf,
        /// Kafka bootstrap servers; pairs go to Kafka instead of the file.
        #[arg(long)]
        brokers: Option<String>,
        #[arg(long, default_value = "untaken.pairs")]
        topic: String,
    },
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match cli.command {
        Command::CheckConfig { file } => match config::load(Some(&file)) {
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
        Command::Demo { requests, out, brokers, topic } => {
            init_logging("warn", LogFormat::Text);
            match runtime.block_on(untaken::demo::run(untaken::demo::DemoOptions { requests, out, brokers, topic })) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("untaken demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
