//! Benchmark: untaken's Kafka sink alone ([`untaken::sink::kafka::KafkaSink`]),
//! publishing the records of a file with many sends in flight, as the publisher
//! does, each awaited to its acks=all delivery report.
//!
//!     cargo run --release --example sink_bench -- --brokers HOST:PORT --topic T --file RECORDS
//!         [--concurrency 4096] [--warmup 1]
//!
//! RECORDS holds one record a line, `key:payload` (the format `kcat -P -K:` reads),
//! so the same file can be timed with kcat. The first `--warmup` lines are sent and
//! acknowledged before the clock starts (topic creation, metadata, connections);
//! the rest are timed from the first send to the last acknowledgement, plus a final
//! flush. Prints one JSON line: records, seconds, records_per_s, mb_per_s, errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use untaken::config::KafkaConfig;
use untaken::metrics::Metrics;
use untaken::record::Encoded;
use untaken::sink::kafka::KafkaSink;
use untaken::sink::Sink as _;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// One `key:payload` record a line.
    #[arg(long)]
    file: std::path::PathBuf,
    /// Sends in flight at once (the publisher allows 4096).
    #[arg(long, default_value_t = 4096)]
    concurrency: usize,
    /// Lines sent before timing starts; they are timed by neither side.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
}

fn record(i: usize, line: &str) -> Encoded {
    let (key, payload) = line.split_once(':').unwrap_or(("", line));
    Encoded {
        pair_id: format!("bench-pair-{i}"),
        key: key.to_string(),
        headers: vec![
            ("content-type", "application/json".to_string()),
            ("untaken-schema", untaken::record::SCHEMA_NAME.to_string()),
            ("untaken-schema-version", untaken::record::SCHEMA_VERSION.to_string()),
            ("untaken-slice", "simple_qa".to_string()),
            ("untaken-route-taken", "fast".to_string()),
        ],
        payload: payload.as_bytes().to_vec(),
        slice: "simple_qa".to_string(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.file)?;
    let records: Vec<Encoded> = text.lines().filter(|l| !l.is_empty()).enumerate().map(|(i, l)| record(i, l)).collect();
    let warmup = args.warmup.min(records.len());
    let config = KafkaConfig { brokers: args.brokers.clone(), topic: args.topic.clone(), ..KafkaConfig::default() };
    let sink = Arc::new(KafkaSink::new(&config, Arc::new(Metrics::new()))?);

    for r in &records[..warmup] {
        sink.send(r).await?;
    }
    let timed = &records[warmup..];
    let bytes: usize = timed.iter().map(|r| r.payload.len() + r.key.len()).sum();
    let started = Instant::now();
    let errors = futures::stream::iter(timed.iter())
        .map(|r| {
            let sink = sink.clone();
            async move { sink.send(r).await.is_err() }
        })
        .buffer_unordered(args.concurrency.max(1))
        .fold(0usize, |n, failed| async move { n + usize::from(failed) })
        .await;
    let s = sink.clone();
    tokio::task::spawn_blocking(move || s.flush_blocking(Duration::from_secs(30))).await??;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"records\":{},\"seconds\":{secs:.3},\"records_per_s\":{:.0},\"mb_per_s\":{:.2},\"errors\":{errors},\"concurrency\":{}}}",
        timed.len(),
        timed.len() as f64 / secs,
        bytes as f64 / secs / 1e6,
        args.concurrency
    );
    if errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}
