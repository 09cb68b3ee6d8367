//! `untaken report` as an operator runs it: on grade files (exit codes 0/1/2/64, malformed
//! lines counted, duplicates counted once, `--json` schema) and on a real Kafka topic.
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use prost::Message as _;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value;
use untaken::proto::v1::GradeRecord;
use untaken::report::scenario::Scenario;

const BIN: &str = env!("CARGO_BIN_EXE_untaken");

fn grades(scenario: &Scenario, seed: u64) -> Vec<GradeRecord> {
    let mut out = Vec::new();
    scenario.generate(&mut StdRng::seed_from_u64(seed), |g| out.push(g));
    out
}

fn write_lines(path: &Path, grades: &[GradeRecord], extra: &[&str]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for g in grades {
        serde_json::to_writer(&mut f, g).unwrap();
        f.write_all(b"\n").unwrap();
    }
    for line in extra {
        writeln!(f, "{line}").unwrap();
    }
}

fn report(args: &[&str]) -> Output {
    Command::new(BIN).arg("report").args(args).stdin(Stdio::null()).output().expect("run untaken report")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json_file(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("the --json file")).expect("--json is JSON")
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Files { dir: tempfile::tempdir().unwrap() }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

#[test]
fn a_hidden_regression_is_printed_first_and_exits_2() {
    let f = Files::new();
    write_lines(&f.path("g.jsonl"), &grades(&Scenario::essay(), 1), &[]);
    let out = report(&["--grades", &f.s("g.jsonl"), "--label", "tenant", "--json", &f.s("r.json")]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{}", text(&out.stderr));
    let first_finding = stdout.lines().skip_while(|l| !l.starts_with("FINDINGS")).nth(1).unwrap();
    assert!(first_finding.contains("REGRESSION (hidden): on slice multi_step ("), "{stdout}");
    assert!(first_finding.contains("the route taken `fast` answers") && first_finding.contains("worse than `reasoning`"), "{first_finding}");
    // The same finding in the JSON, with the interval the text quotes.
    let r = json_file(&f.path("r.json"));
    let finding = &r["findings"][0];
    assert_eq!((finding["kind"].as_str(), finding["hidden"].as_bool(), finding["group"].as_str()), (Some("regression"), Some(true), Some("multi_step")));
    let e = &finding["effect_points"];
    assert!(first_finding.contains(&format!("[95% CI {:.1}, {:.1}]", e["lower"].as_f64().unwrap(), e["upper"].as_f64().unwrap())), "{first_finding}");
    assert!(r["overall"]["weighted_points"]["lower"].as_f64().unwrap() < 0.0 || r["overall"]["looks_fine"].as_bool().unwrap());
}

#[test]
fn no_difference_exits_0() {
    let f = Files::new();
    write_lines(&f.path("g.jsonl"), &grades(&Scenario::null(), 2), &[]);
    let out = report(&["--grades", &f.s("g.jsonl")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("No regression flagged"));
}

#[test]
fn malformed_lines_are_counted_and_reported_not_fatal() {
    let f = Files::new();
    let g = grades(&Scenario::null(), 2);
    write_lines(&f.path("g.jsonl"), &g, &["{not json", r#"{"score": "high"}"#, ""]);
    let out = report(&["--grades", &f.s("g.jsonl"), "--json", &f.s("r.json")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("2 malformed record(s) skipped"), "{stdout}");
    assert!(stdout.contains(&format!("INPUT: 2 malformed record(s) skipped (first: line {}:", g.len() + 1)), "{stdout}");
    let r = json_file(&f.path("r.json"));
    assert_eq!(r["input"]["malformed"], 2);
    assert_eq!(r["input"]["grades"], g.len() as u64);
}

#[test]
fn duplicated_grades_count_once() {
    let f = Files::new();
    let g = grades(&Scenario::essay(), 3);
    let doubled: Vec<GradeRecord> = g.iter().flat_map(|x| [x.clone(), x.clone()]).collect();
    write_lines(&f.path("once.jsonl"), &g, &[]);
    write_lines(&f.path("twice.jsonl"), &doubled, &[]);
    let once = report(&["--grades", &f.s("once.jsonl"), "--json", &f.s("once.json")]);
    let twice = report(&["--grades", &f.s("twice.jsonl"), "--json", &f.s("twice.json")]);
    assert_eq!(once.status.code(), twice.status.code());
    let (a, b) = (json_file(&f.path("once.json")), json_file(&f.path("twice.json")));
    assert_eq!(b["input"]["duplicates"], g.len() as u64);
    assert_eq!(b["input"]["grades"], a["input"]["grades"]);
    assert_eq!(a["groups"], b["groups"], "the figures do not change when every grade is delivered twice");
    assert_eq!(a["overall"], b["overall"]);
}

#[test]
fn empty_input_says_so_and_exits_1() {
    let f = Files::new();
    std::fs::write(f.path("empty.jsonl"), "\n\n").unwrap();
    let out = report(&["--grades", &f.s("empty.jsonl")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no grades in file"), "{}", text(&out.stderr));
    let out = report(&["--grades", &f.s("missing.jsonl")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot open"), "{}", text(&out.stderr));
}

#[test]
fn bad_flags_and_config_exit_64_naming_the_setting() {
    let f = Files::new();
    write_lines(&f.path("g.jsonl"), &grades(&Scenario::null(), 2), &[]);
    let out = report(&["--grades", &f.s("g.jsonl"), "--q", "1.5"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("`q`"), "{}", text(&out.stderr));
    std::fs::write(f.path("report.toml"), "noise_bnad = 2\n").unwrap();
    let out = report(&["--grades", &f.s("g.jsonl"), "--config", &f.s("report.toml")]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("noise_bnad"), "{}", text(&out.stderr));
    let out = report(&["--grades", &f.s("g.jsonl"), "--noise-band", "lots"]);
    assert_eq!(out.status.code(), Some(64), "a flag clap rejects is a usage error, not exit 2");
    let out = report(&["--brokers", "127.0.0.1:1", "--topic", "t", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("--since"), "{}", text(&out.stderr));
}

#[test]
fn json_has_the_documented_fields_and_stdin_works() {
    let f = Files::new();
    let mut scenario = Scenario::essay();
    scenario.human_share = 0.2;
    write_lines(&f.path("g.jsonl"), &grades(&scenario, 4), &[]);
    let mut child = Command::new(BIN)
        .args(["report", "--grades", "-", "--json", "-", "--label", "tenant", "--human-label", "human_verdict", "--eligibility-label", "reasoning_eligibility"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::copy(&mut std::fs::File::open(f.path("g.jsonl")).unwrap(), child.stdin.as_mut().unwrap()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let r: Value = serde_json::from_slice(&out.stdout).expect("--json - prints only JSON");
    assert_eq!(r["schema_version"], 1);
    assert_eq!(r["source"], "stdin");
    for key in ["generated_at", "settings", "input", "findings", "overall", "noise_floor", "groups", "judge_health", "human", "calibration", "trades"] {
        assert!(r.get(key).is_some(), "missing {key}");
    }
    let dims: Vec<&str> = r["settings"]["dimensions"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert_eq!(dims, ["all", "slice", "label:tenant", "eligibility", "prompt_tokens", "turns", "tools"]);
    let g = r["groups"].as_array().unwrap().iter().find(|g| g["dimension"] == "slice" && g["group"] == "multi_step" && g["route_taken"] == "fast").unwrap();
    for key in ["pairs", "wins", "ties", "losses", "win_rate", "loss_rate", "mean_points", "sign_test", "q_value", "mde_points", "taken_failure_rate", "latency", "cost", "ppi_points", "status"] {
        assert!(!g[key].is_null(), "group field {key} is null: {g}");
    }
    assert_eq!(g["status"], "regression");
    assert!(r["human"]["labelled_pairs"].as_u64().unwrap() > 50);
    assert_eq!(r["calibration"]["bands"].as_array().unwrap().len(), 10);
    assert!(r["overall"]["ppi_points"]["estimate"].is_f64());
}

// ----- Kafka --------------------------------------------------------------

async fn produce(bootstrap: &str, topic: &str, grades: &[GradeRecord], protobuf_every: usize) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("message.timeout.ms", "30000").create().expect("producer");
    for (i, g) in grades.iter().enumerate() {
        let (payload, content_type) = if protobuf_every > 0 && i % protobuf_every == 0 { (g.encode_to_vec(), "application/x-protobuf") } else { (serde_json::to_vec(g).unwrap(), "application/json") };
        let headers = OwnedHeaders::new().insert(Header { key: "content-type", value: Some(content_type) }).insert(Header { key: "untaken-pair-id", value: Some(&g.pair_id) });
        producer
            .send(FutureRecord::to(topic).key(&g.request_id).payload(&payload).headers(headers), Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("delivery of grade {i} failed: {e}"));
    }
}

async fn report_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(BIN).arg("report").args(&args).stdin(Stdio::null()).output().unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_a_kafka_topic_up_to_the_high_watermark_json_and_protobuf() {
    let bootstrap = common::kafka::shared_bootstrap_async().await;
    let topic = format!("grades-{}", uuid::Uuid::now_v7());
    common::kafka::create_topic_async(&bootstrap, &topic, 3).await;
    let g = grades(&Scenario::essay(), 5);
    produce(&bootstrap, &topic, &g, 3).await;
    // One duplicate delivery (at least once) and one malformed record.
    produce(&bootstrap, &topic, &g[..1], 0).await;
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    producer.send(FutureRecord::to(&topic).key("bad").payload("{oops"), Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let out = report_async(vec!["--brokers".into(), bootstrap.clone(), "--topic".into(), topic.clone(), "--json".into(), json.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(2), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let r = json_file(&json);
    assert_eq!(r["input"]["records_read"], g.len() as u64 + 2);
    assert_eq!(r["input"]["grades"], g.len() as u64);
    assert_eq!((r["input"]["duplicates"].as_u64(), r["input"]["malformed"].as_u64()), (Some(1), Some(1)));
    assert!(r["input"]["malformed_examples"][0]["position"].as_str().unwrap().starts_with("partition "));
    assert_eq!(r["findings"][0]["group"], "multi_step");

    // The same figures as from a file of the same grades.
    let file = dir.path().join("g.jsonl");
    write_lines(&file, &g, &[]);
    let from_file = dir.path().join("f.json");
    let out = report_async(vec!["--grades".into(), file.display().to_string(), "--json".into(), from_file.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(2));
    let (a, b) = (&json_file(&from_file)["overall"], &r["overall"]);
    assert_eq!(a["pairs"], b["pairs"]);
    let close = |k: &str| (a["weighted_points"][k].as_f64().unwrap() - b["weighted_points"][k].as_f64().unwrap()).abs() < 1e-9;
    assert!(close("estimate") && close("lower") && close("upper"), "{a}\n{b}"); // sums in another order

    // --from-offset skips the start of every partition; --until before everything reads nothing.
    let out = report_async(vec!["--brokers".into(), bootstrap.clone(), "--topic".into(), topic.clone(), "--from-offset".into(), "100000".into()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no grades in kafka topic"), "{}", text(&out.stderr));
    let out = report_async(vec!["--brokers".into(), bootstrap.clone(), "--topic".into(), topic.clone(), "--until".into(), "2000-01-01T00:00:00Z".into()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = report_async(vec!["--brokers".into(), bootstrap, "--topic".into(), topic, "--since".into(), "2000-01-01T00:00:00Z".into(), "--json".into(), json.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(json_file(&json)["input"]["grades"], g.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_brokers_or_a_missing_topic_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("report.toml");
    std::fs::write(&cfg, "[kafka]\ntimeout = \"2s\"\n").unwrap();
    let dead = common::proc::dead_addr();
    let out = report_async(vec!["--brokers".into(), dead, "--topic".into(), "grades".into(), "--config".into(), cfg.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("unreachable"), "{}", text(&out.stderr));
    let bootstrap = common::kafka::shared_bootstrap_async().await;
    let out = report_async(vec!["--brokers".into(), bootstrap, "--topic".into(), format!("absent-{}", uuid::Uuid::now_v7()), "--config".into(), cfg.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("does not exist"), "{}", text(&out.stderr));
}
