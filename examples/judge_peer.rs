//! Peers for the judge benchmark (benches/judge.sh):
//!
//!     cargo run --release --example judge_peer -- judge [--port 0] [--delay-ms 200]
//!         serves the fake judge (untaken::judge::fake, prefers the longer answer) on
//!         127.0.0.1:PORT until killed; prints `listening on ADDR` once bound.
//!     cargo run --release --example judge_peer -- pairs --count 30000 > pairs.txt
//!         writes COUNT pair records as `key:payload` lines (what `kcat -P -K:` reads):
//!         realistic sizes (a few-turn conversation, answers of a few hundred
//!         characters), complete, JSON as the sidecar publishes them.

use std::io::Write;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use untaken::config::Encoding;
use untaken::judge::fake::{FakeJudge, Preference};
use untaken::proto::v1::PairKind;
use untaken::record::{self, Half, PairMeta, RouteInfo, Source};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Judge {
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long, default_value_t = 200)]
        delay_ms: u64,
    },
    Pairs {
        #[arg(long)]
        count: usize,
    },
}

fn answer(text: &str) -> Half {
    let body = serde_json::json!({
        "id": "chatcmpl-bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 180, "completion_tokens": 90}
    });
    Half { body: Bytes::from(body.to_string()), status_code: 200, latency_ms: 800.0, error: String::new(), source: Source::Untaken }
}

fn route(name: &str, model: &str) -> RouteInfo {
    RouteInfo { name: name.into(), model: model.into(), input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.6 }
}

fn main() {
    let args = Args::parse();
    match args.command {
        Cmd::Judge { port, delay_ms } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let addr = format!("127.0.0.1:{port}");
                let judge = FakeJudge::start_on(&addr, Preference::Longer, Duration::from_millis(delay_ms), false).await.unwrap();
                println!("listening on {}", judge.addr);
                std::future::pending::<()>().await;
            });
        }
        Cmd::Pairs { count } => {
            let out = std::io::stdout();
            let mut out = std::io::BufWriter::new(out.lock());
            let short = "The capital of France is Paris. ".repeat(4);
            let long = "Paris has been the capital of France since the 10th century, apart from short periods. ".repeat(5);
            for i in 0..count {
                let meta = PairMeta {
                    pair_id: format!("bench-{i:08}"),
                    request_id: format!("req-{i:08}"),
                    sampling_key: format!("req-{i:08}"),
                    received_at: SystemTime::now(),
                    slice: ["chat", "multi_step", "tools"][i % 3].into(),
                    labels: [("tenant".to_string(), "acme".to_string())].into(),
                    rate: 0.1,
                    route_taken: route("fast", "small"),
                    route_not_taken: route("reasoning", "big"),
                    request_body: Bytes::from(format!(
                        r#"{{"model":"small","messages":[{{"role":"system","content":"You answer geography questions."}},{{"role":"user","content":"Question {i}: what is the capital of France, and since when?"}}]}}"#
                    )),
                    traceparent: String::new(),
                    kind: PairKind::Pair,
                };
                let rec = record::build(&meta, Some(&answer(&short)), Some(&answer(&long)), "", SystemTime::now());
                let enc = record::encode(rec.clone(), Encoding::Json);
                out.write_all(enc.key.as_bytes()).unwrap();
                out.write_all(b":").unwrap();
                out.write_all(&enc.payload).unwrap();
                out.write_all(b"\n").unwrap();
            }
        }
    }
}
