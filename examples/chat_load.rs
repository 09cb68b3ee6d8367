//! Benchmark helper: a closed-loop load generator for an OpenAI chat-completions
//! endpoint (a LiteLLM proxy in `benches/litellm.sh`), bounded in count.
//!
//!     cargo run --release --example chat_load -- --url http://127.0.0.1:4000 --key sk-... \
//!         --model fast --requests 2000 --concurrency 8 [--stream]
//!
//! `--concurrency` workers each send one request at a time until `--requests` have
//! been sent. Prints one JSON line: requests, errors (non-2xx or transport), rps,
//! p50/p90/p99/max latency in ms (full response read, streamed or not).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Base URL of the proxy (without /v1/chat/completions).
    #[arg(long)]
    url: String,
    /// Bearer token.
    #[arg(long)]
    key: String,
    /// Model (LiteLLM model group) to ask.
    #[arg(long)]
    model: String,
    /// Requests to send in all.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Ask for a streamed answer.
    #[arg(long)]
    stream: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("http client");
    let endpoint = format!("{}/v1/chat/completions", args.url.trim_end_matches('/'));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (http, endpoint, next) = (http.clone(), endpoint.clone(), next.clone());
        let (key, model, total, stream) = (args.key.clone(), args.model.clone(), args.requests, args.stream);
        workers.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = json!({
                    "model": model,
                    "stream": stream,
                    "messages": [{"role": "user", "content": format!("Benchmark question {i}: what is the return window?")}],
                });
                let t0 = Instant::now();
                let ok = match http.post(&endpoint).bearer_auth(&key).json(&body).send().await {
                    Ok(r) => r.status().is_success() & r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                errors += usize::from(!ok);
            }
            (lat, errors)
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    for w in workers {
        let (l, e) = w.await.expect("worker");
        lat.extend(l);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0.0);
    println!(
        "{}",
        json!({
            "requests": lat.len(), "errors": errors, "seconds": secs, "rps": lat.len() as f64 / secs,
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": pct(1.0),
        })
    );
}
