//! Benchmark: does building big records stall `Mirror`? (issue "never slow the router, for real")
//!
//! Runs `untaken serve` pinned to one CPU (`taskset -c 0`: Tokio then runs one
//! worker, as in a pod with a 1-CPU limit), with a file sink; this process (probe
//! client, streamer, fake upstream) runs on the other CPU. A probe client calls
//! `Mirror` every 5 ms with small requests that are not sampled and records each
//! latency, while a streamer sends `Mirror` calls whose request and primary answer
//! are 1 MiB each, 10 a second.
//! Run A: the 1 MiB calls are not sampled and there are no redaction rules.
//! Run B: they are all sampled, and the README's redaction rules scan every string of
//! both bodies. The difference is untaken's record building (redaction, JSON,
//! encoding, the file write); decoding and validating the 1 MiB calls costs the same
//! in both. Prints p50/p99/max of the probes and B/A.
//!
//!     cargo build --release && taskset -c 1 cargo run --release --example mirror_isolation

use std::collections::HashMap;
use std::time::{Duration, Instant};


use untaken::proto::v1::mirror_client::MirrorClient;
use untaken::proto::v1::{Answer, MirrorRequest};
use untaken::simulate::{Behaviour, FakeUpstream};

const PROBES: usize = 2000;
const PROBE_EVERY: Duration = Duration::from_millis(5);
const BIG: usize = 1024 * 1024;

fn big_body(n: usize, what: &str) -> Vec<u8> {
    let filler = "Contact jane.doe@example.com or card 4111 1111 1111 1111 about order 1234. ".repeat(n / 76);
    serde_json::to_vec(&serde_json::json!({
        "model": "fast-model",
        "messages": [{"role": "user", "content": format!("{what}: {filler}")}],
        "choices": [{"message": {"role": "assistant", "content": filler}}],
    }))
    .unwrap()
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn run(sampled: bool) -> Vec<Duration> {
    let upstream = FakeUpstream::start("reasoning", Behaviour::Answer { delay: Duration::from_millis(1) }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (grpc, admin) = (free_addr(), free_addr());
    let (rate, redaction) = if sampled {
        ("1.0", "rules = [\n  { name = \"email\", pattern = '[\\w.+-]+@[\\w-]+\\.[\\w.-]+' },\n  { name = \"card\", pattern = '\\b(?:\\d[ -]?){13,19}\\b' },\n]")
    } else {
        ("0.0", "rules = []")
    };
    let cfg = format!(
        r#"
[server]
listen = "{grpc}"
admin_listen = "{admin}"
max_body_bytes = 2097152
[log]
level = "warn"
[sampling]
default_rate = 0.0
[[sampling.rules]]
slice = "big"
rate = {rate}
[routes.fast]
url = "{u}"
model = "fast-model"
counterfactual = "reasoning"
[routes.reasoning]
url = "{u}"
model = "reasoning-model"
counterfactual = "fast"
[sink]
type = "file"
[sink.file]
path = {out:?}
[spool]
dir = {spool:?}
[redaction]
{redaction}
"#,
        u = upstream.url(),
        out = dir.path().join("pairs.jsonl").display().to_string(),
        spool = dir.path().join("spool").display().to_string(),
    );
    let cfg_path = dir.path().join("untaken.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/untaken");
    let mut server = std::process::Command::new("taskset")
        .args(["-c", "0"])
        .arg(&bin)
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .spawn()
        .expect("taskset and target/release/untaken (cargo build --release)");
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let stop_big = tokio_util::sync::CancellationToken::new();
    let streamer = {
        let mut client = MirrorClient::new(channel.clone()).max_encoding_message_size(8 * BIG);
        let stop = stop_big.clone();
        tokio::spawn(async move {
            let (req, ans) = (big_body(BIG, "q"), big_body(BIG, "a"));
            let mut i = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.is_cancelled() {
                tick.tick().await;
                i += 1;
                let r = MirrorRequest {
                    request_id: format!("big-{i}"),
                    route_taken: "fast".into(),
                    request_body: req.clone(),
                    slice: "big".into(),
                    primary: Some(Answer { body: ans.clone(), status_code: 200, latency_ms: 5.0, error: String::new() }),
                    ..Default::default()
                };
                let resp = client.mirror(r).await.unwrap().into_inner();
                assert_eq!(resp.sampled, sampled);
            }
            i
        })
    };
    let mut probe = MirrorClient::new(channel);
    let small = big_body(1500, "small");
    let mut lat = Vec::with_capacity(PROBES);
    let mut tick = tokio::time::interval(PROBE_EVERY);
    for i in 0..PROBES {
        tick.tick().await;
        let started = Instant::now();
        probe
            .mirror(MirrorRequest {
                request_id: format!("probe-{i}"),
                route_taken: "fast".into(),
                request_body: small.clone(),
                slice: "probe".into(),
                labels: HashMap::new(),
                ..Default::default()
            })
            .await
            .unwrap();
        lat.push(started.elapsed());
    }
    stop_big.cancel();
    let n = streamer.await.unwrap();
    let pairs = std::fs::read_to_string(dir.path().join("pairs.jsonl")).map(|t| t.lines().count()).unwrap_or(0);
    eprintln!("  ({n} calls of 1 MiB + 1 MiB during the probes, sampled: {sampled}; {pairs} pairs written so far)");
    let _ = std::process::Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    lat.sort();
    lat
}

fn pct(l: &[Duration], p: f64) -> f64 {
    l[((l.len() as f64 * p) as usize).min(l.len() - 1)].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = run(false).await;
    let b = run(true).await;
    println!("| run | probes | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    println!("| A: 1 MiB calls not sampled, no redaction | {} | {:.3} | {:.3} | {:.3} |", a.len(), pct(&a, 0.5), pct(&a, 0.99), pct(&a, 1.0));
    println!("| B: 1 MiB calls sampled, redaction rules | {} | {:.3} | {:.3} | {:.3} |", b.len(), pct(&b, 0.5), pct(&b, 0.99), pct(&b, 1.0));
    println!("p99 B/A = {:.2}x (target ≤ 1.25x)", pct(&b, 0.99) / pct(&a, 0.99));
}
