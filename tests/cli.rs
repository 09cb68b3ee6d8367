//! The binary as an operator runs it: `check-config` exit codes, and `serve`
//! logging nothing of the prompts and answers it handles, then exiting 0 on SIGTERM.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::metrics::metric;
use common::proc::free_port;
use untaken::config::{Config, RouteConfig};

use untaken::proto::v1::mirror_client::MirrorClient;
use untaken::proto::v1::{Answer, MirrorRequest};
use untaken::simulate::{Behaviour, FakeUpstream};

const BIN: &str = env!("CARGO_BIN_EXE_untaken");

/// The config file `serve` and `check-config` read: two routes to `url`, the file sink
/// and a spool in `dir`, on the given ports (the binary must be told them in the file).
fn config(dir: &Path, url: &str, grpc: u16, admin: u16) -> String {
    let mut c = Config::default();
    c.server.listen = format!("127.0.0.1:{grpc}");
    c.server.admin_listen = format!("127.0.0.1:{admin}");
    c.server.shutdown_grace = Duration::from_secs(3);
    c.log.level = "debug".into();
    c.sampling.default_rate = 1.0;
    let route = |model: &str, counterfactual: &str| RouteConfig {
        counterfactual: Some(counterfactual.into()),
        timeout: Duration::from_secs(60),
        ..common::config::route(url, model)
    };
    c.routes.insert("fast".into(), route("fast-model", "reasoning"));
    c.routes.insert("reasoning".into(), route("reasoning-model", "fast"));
    c.sink.file.path = dir.join("pairs.jsonl");
    c.spool.dir = Some(dir.join("spool"));
    common::config::to_toml(&c)
}

#[test]
fn check_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, config(dir.path(), "http://127.0.0.1:9/v1/chat/completions", 1, 2)).unwrap();
    let out = Command::new(BIN).args(["check-config", good.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let base = config(dir.path(), "http://127.0.0.1:9/x", 1, 2);
    let cases = [
        ("default_rate = 1.0", "default_rate = 2.0", "sampling.default_rate"),
        ("counterfactual = \"fast\"", "counterfactual = \"fastest\"", "routes.reasoning.counterfactual"),
        ("[log]", "[log]\nverbosity = 3", "log.verbosity"),
        // A zero interval used to panic the spool task at start-up, after which nothing replayed.
        ("fsync_interval = \"1s\"", "fsync_interval = \"0s\"", "spool.fsync_interval"),
    ];
    for (from, to, key) in cases {
        assert_eq!(base.matches(from).count(), 1, "`{from}` is in the file once:\n{base}");
        let bad_text = base.replace(from, to);
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, bad_text).unwrap();
        let out = Command::new(BIN).args(["check-config", bad.to_str().unwrap()]).output().unwrap();
        assert_eq!(out.status.code(), Some(64));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "stderr names `{key}`: {err}");
    }
    // serve refuses a bad config the same way, before binding anything.
    let out = Command::new(BIN).args(["serve", "--config", dir.path().join("bad.toml").to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(BIN).args(["serve", "--config", "/nonexistent/untaken.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_no_prompt_or_answer_text_and_exits_zero_on_sigterm() {
    let up = FakeUpstream::start("up", Behaviour::Answer { delay: Duration::from_millis(1) }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (grpc, admin) = (free_port(), free_port());
    let path = dir.path().join("untaken.toml");
    std::fs::write(&path, config(dir.path(), &up.url(), grpc, admin)).unwrap();
    // Logs go to a file: a pipe nobody reads would fill and stall the process.
    let log_path = dir.path().join("stderr.log");
    let mut child = Command::new(BIN)
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "trace")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = MirrorClient::connect(format!("http://127.0.0.1:{grpc}")).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = client.expect("untaken serve listens");
    const PROMPT: &str = "SECRET-PROMPT-MARKER-7f3a";
    const ANSWER: &str = "SECRET-ANSWER-MARKER-91bc";
    for i in 0..5 {
        let body = serde_json::json!({"model": "fast-model", "messages": [{"role": "user", "content": PROMPT}]});
        let answer = serde_json::json!({"choices": [{"message": {"content": ANSWER}}]});
        let resp = client
            .mirror(MirrorRequest {
                request_id: format!("log-{i}"),
                route_taken: "fast".into(),
                request_body: serde_json::to_vec(&body).unwrap(),
                primary: Some(Answer { body: serde_json::to_vec(&answer).unwrap(), status_code: 200, ..Default::default() }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(resp.sampled);
    }
    // A bad request too, whose body would be the easiest thing to echo in an error.
    let _ = client
        .mirror(MirrorRequest { request_id: "bad".into(), route_taken: "fast".into(), request_body: PROMPT.as_bytes().to_vec(), ..Default::default() })
        .await
        .unwrap_err();
    let out = dir.path().join("pairs.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&out).map(|t| t.lines().count()).unwrap_or(0) < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let s = child.wait().unwrap();
        (s, std::fs::read_to_string(&log_path).unwrap())
    });
    let (status, stderr) = tokio::time::timeout(Duration::from_secs(15), status).await.expect("exits within the grace period").unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("drained"), "the drain is logged: {stderr}");
    assert!(!stderr.contains(PROMPT), "prompt text leaked into logs");
    assert!(!stderr.contains(ANSWER), "answer text leaked into logs");
    let pairs = std::fs::read_to_string(&out).unwrap();
    assert_eq!(pairs.lines().count(), 5, "every sampled pair was written before exit");
    assert!(pairs.contains(ANSWER), "the record itself carries the answer");
}

async fn wait_for_grpc(port: u16) -> MirrorClient<tonic::transport::Channel> {
    for _ in 0..200 {
        if let Ok(c) = MirrorClient::connect(format!("http://127.0.0.1:{port}")).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("untaken serve did not listen on {port}");
}

async fn metric_value(admin: u16, series: &str) -> f64 {
    let admin = format!("127.0.0.1:{admin}").parse().unwrap();
    metric(&common::metrics::scrape(admin).await, series)
}

/// Pairs waiting for a half live in memory: a SIGKILL loses them by design, and
/// the next start says how many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_pending_at_a_crash_are_counted_on_the_next_start() {
    let up = FakeUpstream::start("hang", Behaviour::Hang).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (grpc, admin) = (free_port(), free_port());
    let path = dir.path().join("untaken.toml");
    std::fs::write(&path, config(dir.path(), &up.url(), grpc, admin)).unwrap();
    let spawn = || {
        Command::new(BIN)
            .args(["serve", "--config", path.to_str().unwrap()])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = spawn();
    let mut client = wait_for_grpc(grpc).await;
    for i in 0..3 {
        let body = br#"{"messages":[{"role":"user","content":"hi"}]}"#.to_vec();
        let r = client
            .mirror(MirrorRequest { request_id: format!("crash-{i}"), route_taken: "fast".into(), request_body: body, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(r.sampled);
    }
    // The marker is written once a second: wait until it says 3.
    let marker = dir.path().join("spool").join("pending-pairs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&marker).map(|t| t.trim() != "3").unwrap_or(true) {
        assert!(Instant::now() < deadline, "the pending-pairs marker never said 3");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = spawn();
    let _ = wait_for_grpc(grpc).await;
    let lost = metric_value(admin, "untaken_pairs_lost_in_crash_total").await;
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(lost, 3.0, "three pairs were pending at the SIGKILL");
    assert_eq!(status.code(), Some(0));
}

/// `check-config --effective-json` is what deploy/check_manifests.py reads: the
/// config as the binary will run it (defaults applied, durations in seconds, any
/// spelling humantime accepts), with secrets as references that are not read and
/// never printed; a bad config still exits 64 naming the key.
#[test]
fn check_config_effective_json_prints_the_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = dir.path().join("untaken.toml");
    let base = "[server]\nshutdown_grace = \"1min 30sec\"\n\
        [routes.a]\nurl = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n\
        [sink.kafka]\nbrokers = \"127.0.0.1:9\"\nsasl_password_file = \"/nowhere/password\"\n\
        [sink.kafka.librdkafka]\n\"sasl.oauthbearer.client.secret\" = \"hunter2\"\n";
    std::fs::write(&sidecar, base).unwrap();
    let out_json = dir.path().join("effective.json");
    let run = |file: &Path| {
        Command::new(BIN)
            .args(["check-config", "--effective-json", out_json.to_str().unwrap(), file.to_str().unwrap()])
            .env_remove("UNTAKEN_SINK__KAFKA__SASL_PASSWORD_FILE")
            .output()
            .unwrap()
    };
    let out = run(&sidecar);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = std::fs::read_to_string(&out_json).unwrap();
    assert!(!written.contains("hunter2"), "a secret value was printed:\n{written}");
    let json: serde_json::Value = serde_json::from_str(&written).unwrap();
    assert_eq!(json["server"]["shutdown_grace"], 90.0, "{written}");
    assert_eq!(json["server"]["max_body_bytes"], 1024 * 1024, "the default applies:\n{written}");
    assert_eq!(json["sink"]["kafka"]["sasl_password_file"], "/nowhere/password");

    let judge = dir.path().join("judge.toml");
    std::fs::write(&judge, "[judge]\nkind = \"pairwise\"\n[judge.pairwise]\nurl = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\napi_key_env = \"UNTAKEN_TEST_NO_SUCH_KEY\"\n").unwrap();
    let out = run(&judge);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    assert_eq!(json["server"]["shutdown_grace"], 20.0, "the judge's own default");
    assert_eq!(json["judge"]["pairwise"]["api_key_env"], "UNTAKEN_TEST_NO_SUCH_KEY");

    std::fs::write(&sidecar, base.replace("1min 30sec", "soon")).unwrap();
    let out = run(&sidecar);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shutdown_grace"), "{}", String::from_utf8_lossy(&out.stderr));
}
