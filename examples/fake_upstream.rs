//! Benchmark helper: one OpenAI-compatible fake upstream
//! ([`untaken::simulate::FakeUpstream`]) in its own process, so its CPU is not
//! counted as the sidecar's.
//!
//!     cargo run --release --example fake_upstream -- [--name NAME] [--hang | --delay-ms N [--jitter-ms J]]
//!
//! Prints `url <http://127.0.0.1:PORT/v1/chat/completions>` on stdout once bound,
//! then serves until killed. `--hang` accepts every request and never answers;
//! otherwise each request gets a chat completion after `--delay-ms` (default 0), plus
//! up to `--jitter-ms` more drawn for each request.
//!
//! It stands in for a remote model server, yet shares the benchmark machine's two
//! cores with the sidecar, ghz and Kafka: so it keeps nothing of the requests it
//! answers (`FakeUpstream::start_with(.., record: false)`) and runs on one thread
//! (a current-thread runtime), spending as little of them as it can. The answers are
//! the same bytes as before (BENCHMARKS.md has what it cost before and after).

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use untaken::simulate::{Behaviour, FakeUpstream};

#[derive(Parser)]
struct Args {
    /// Name put into the answers' content.
    #[arg(long, default_value = "bench")]
    name: String,
    /// Never answer (the client times out).
    #[arg(long, conflicts_with = "delay_ms")]
    hang: bool,
    /// Answer after this many milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Answer after `delay_ms` plus up to this many milliseconds more, drawn for each
    /// request (answers arrive spread, as a real model's do).
    #[arg(long, default_value_t = 0, conflicts_with = "hang")]
    jitter_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let min = Duration::from_millis(args.delay_ms);
    let behaviour = match (args.hang, args.jitter_ms) {
        (true, _) => Behaviour::Hang,
        (false, 0) => Behaviour::Answer { delay: min },
        (false, j) => Behaviour::AnswerBetween { min, max: min + Duration::from_millis(j) },
    };
    let upstream = FakeUpstream::start_with(&args.name, behaviour, false).await?;
    println!("url {}", upstream.url());
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
