//! The LiteLLM integration against a real LiteLLM proxy (the pinned release from
//! PyPI, installed with the callback package by `integrations/litellm/venv.sh`
//! into a cached venv), started on the example config with the callback loaded,
//! two fake OpenAI upstreams behind its two model groups, the sidecar in-process
//! and the real broker.
//!
//! What a LiteLLM user would notice: every request through the proxy (plain,
//! streaming, failing) yields a pair on Kafka whose `primary` is what the proxy
//! returned and whose `counterfactual` is the other model group's answer; with
//! untaken stopped, the proxy answers exactly as before; nothing the callback
//! logs quotes a prompt or an answer. Failing to install or start LiteLLM fails
//! the test with the reason.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use untaken::simulate::Behaviour;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The venv with the pinned LiteLLM and the callback (built from this checkout).
fn litellm_venv() -> PathBuf {
    let script = format!("{ROOT}/integrations/litellm/venv.sh");
    let out = Command::new("bash").arg(&script).stdin(Stdio::null()).output().expect("run bash");
    assert!(
        out.status.success(),
        "installing LiteLLM and the untaken callback failed ({script}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A `litellm --config` proxy on a loopback port; killed on drop.
struct Proxy {
    child: Child,
    url: String,
    /// The master key: the client's bearer token.
    key: String,
    log: PathBuf,
}

impl Proxy {
    async fn start(venv: &Path, config: &Path, env: &[(&str, String)], log: PathBuf) -> Proxy {
        let port = common::proc::free_port();
        let key = format!("sk-{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>());
        let out = std::fs::File::create(&log).expect("create proxy log");
        let mut cmd = common::proc::watched(venv.join("bin/litellm").to_str().unwrap());
        cmd.args(["--config", config.to_str().unwrap(), "--host", "127.0.0.1", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            // No fetch of the model price map from the internet: the bundled copy.
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("LITELLM_TELEMETRY", "False")
            .env("LITELLM_MASTER_KEY", &key);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("UNTAKEN_") || k.to_string_lossy().starts_with("LITELLM_UNTAKEN_") {
                cmd.env_remove(&k);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let child = cmd.spawn().expect("spawn litellm");
        let mut proxy = Proxy { child, url: format!("http://127.0.0.1:{port}"), key, log };
        proxy.wait_ready(Duration::from_secs(120)).await;
        proxy
    }

    async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let http = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("litellm exited before it was ready ({status}):\n{}", self.log_text());
            }
            if let Ok(r) = http.get(format!("{}/health/liveliness", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "litellm not ready after {timeout:?}:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the proxy's log until it contains `needle` and returns it; panics with
    /// the log after `timeout` (the callback says the sidecar is unreachable).
    async fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "`{needle}` not in the proxy's log within {timeout:?}:\n{log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the client got back from one request through the proxy.
#[derive(Debug)]
struct Reply {
    status: u16,
    call_id: String,
    /// The answer's content (assembled from the chunks when streamed).
    content: String,
    /// The error body the client got (Null on success).
    error: Value,
}

async fn ask(http: &reqwest::Client, proxy: &Proxy, group: &str, question: &str, stream: bool) -> Reply {
    ask_at(http, &proxy.url, &proxy.key, group, question, stream).await
}

async fn ask_at(http: &reqwest::Client, url: &str, key: &str, group: &str, question: &str, stream: bool) -> Reply {
    ask_with(http, url, key, group, question, stream, json!({})).await
}

/// `ask_at` with `extra` keys merged into the request body.
async fn ask_with(
    http: &reqwest::Client, url: &str, key: &str, group: &str, question: &str, stream: bool, extra: Value,
) -> Reply {
    let mut body = json!({
        "model": group,
        "stream": stream,
        "messages": [{"role": "user", "content": question}],
        "metadata": {"untaken_slice": "multi_step", "tags": ["tenant-acme"]},
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("the proxy answers");
    let status = r.status().as_u16();
    let call_id = r.headers().get("x-litellm-call-id").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let text = r.text().await.expect("response body");
    let error = if status != 200 { serde_json::from_str(&text).unwrap_or(Value::String(text.clone())) } else { Value::Null };
    let content = if status != 200 {
        String::new()
    } else if stream {
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
            .collect()
    } else {
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string()
    };
    Reply { status, call_id, content, error }
}

fn other(group: &str) -> &'static str {
    if group == "fast" { "reasoning" } else { "fast" }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litellm_proxy_pairs_every_request_and_keeps_answering_without_untaken() {
    pairs_through_a_real_proxy("auto").await;
}

/// `LITELLM_UNTAKEN_PAIRING=one_phase`: mirrored once, with the answer, from the
/// logging events (the path the LiteLLM SDK takes): the same pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litellm_proxy_one_phase_pairs_the_same() {
    pairs_through_a_real_proxy("one_phase").await;
}

async fn pairs_through_a_real_proxy(pairing: &str) {
    let venv = tokio::task::spawn_blocking(litellm_venv).await.unwrap();
    let t = common::app::spawn_app(&format!("litellm-{pairing}"), |_| {}).await;
    let work = tempfile::tempdir().unwrap();
    // The example config as shipped; only its os.environ/ values are set here.
    let config = Path::new(ROOT).join("integrations/litellm/config.example.yaml");
    let base = |u: &untaken::simulate::FakeUpstream| format!("http://{}/v1", u.addr);
    let env = [
        ("FAST_API_BASE", base(&t.fast)),
        ("FAST_API_KEY", "sk-fast-upstream".to_string()),
        ("REASONING_API_BASE", base(&t.reasoning)),
        ("REASONING_API_KEY", "sk-reasoning-upstream".to_string()),
        ("LITELLM_UNTAKEN_TARGET", t.app.grpc_addr.to_string()),
        ("LITELLM_UNTAKEN_PAIRING", pairing.to_string()),
    ];
    // Every record of the callback's logger, at every level, on its own prefixed line
    // (a sitecustomize the proxy's Python imports at start), so the test reads them all.
    std::fs::write(work.path().join("sitecustomize.py"), LOG_ALL_RECORDS).unwrap();
    let env: Vec<(&str, String)> =
        env.into_iter().chain([("PYTHONPATH", work.path().display().to_string())]).collect();
    let proxy = Proxy::start(&venv, &config, &env, work.path().join("litellm.log")).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();

    // Healthy: plain and streaming through each model group.
    let mut sent: Vec<(String, bool, String, Reply)> = Vec::new();
    for (i, (group, stream)) in [("fast", false), ("fast", true), ("reasoning", false), ("reasoning", true)].into_iter().enumerate() {
        let q = format!("Question {i} (zq-prompt-marker): plan three legs, then price them.");
        let reply = ask(&http, &proxy, group, &q, stream).await;
        assert_eq!(reply.status, 200, "{group} stream={stream}: {reply:?}\n{}", proxy.log_text());
        assert!(reply.content.contains(&format!("[{group}/{group}-model]")), "{reply:?}");
        sent.push((group.to_string(), stream, q, reply));
    }
    // untaken's own shadow calls (its routes may point at the proxy) are answered but
    // never mirrored again: no pair for this one.
    let r = http
        .post(format!("{}/v1/chat/completions", proxy.url))
        .bearer_auth(&proxy.key)
        .header("x-untaken-shadow", "1")
        .json(&json!({"model": "fast", "messages": [{"role": "user", "content": "A shadow call (zq-prompt-marker)"}]}))
        .send()
        .await
        .expect("the proxy answers a shadow call");
    assert_eq!(r.status().as_u16(), 200, "a shadow call through the proxy");
    let shadow_id = r.headers().get("x-litellm-call-id").expect("call id").to_str().unwrap().to_string();
    // Each phase changes an upstream's behaviour: first let the pairs of the requests
    // so far land (one-phase mirrors only after the answer, so its shadow calls lag).
    let settle = |n: usize| common::kafka::consume_async(&t.bootstrap, &t.topic, n, Duration::from_secs(60));
    assert_eq!(settle(sent.len()).await.len(), sent.len(), "pairs of the healthy requests");

    // Two-phase: the shadow call runs while the primary is still being answered
    // (one-phase: only after it).
    t.fast.set(Behaviour::Answer { delay: Duration::from_secs(3) });
    let q = "Slow question (zq-prompt-marker)".to_string();
    let (h, url, key, q2) = (http.clone(), proxy.url.clone(), proxy.key.clone(), q.clone());
    let slow = tokio::spawn(async move { ask_at(&h, &url, &key, "fast", &q2, false).await });
    let shadowed = |s: &untaken::simulate::Seen| {
        s.headers.get("x-untaken-shadow").is_some() && s.body["messages"][0]["content"] == json!(q)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !t.reasoning.seen().iter().any(shadowed) && !slow.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if pairing == "auto" {
        assert!(t.reasoning.seen().iter().any(shadowed), "the shadow call was made");
        assert!(!slow.is_finished(), "the shadow call started before the proxy had the primary's answer");
    }
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    sent.push(("fast".to_string(), false, q, reply));
    assert_eq!(settle(sent.len()).await.len(), sent.len(), "pair of the slow request");

    // The fast upstream fails: the proxy returns its error, and the pair must show it.
    t.fast.set(Behaviour::Status500);
    for (i, stream) in [false, true].into_iter().enumerate() {
        let q = format!("Failing question {i} (zq-prompt-marker)");
        let reply = ask(&http, &proxy, "fast", &q, stream).await;
        assert!(reply.status >= 500, "a failing upstream gives the client an error: {reply:?}");
        sent.push(("fast".to_string(), stream, q, reply));
    }
    // The same with a LiteLLM fallback to `reasoning`: the client gets reasoning's answer,
    // and the pair records a failure of the route taken (fast), not reasoning's answer.
    let fallback = ask_with(&http, &proxy.url, &proxy.key, "fast", "Fallback question (zq-prompt-marker)", false,
        json!({"fallbacks": ["reasoning"]})).await;
    assert_eq!(fallback.status, 200, "the fallback answered: {fallback:?}\n{}", proxy.log_text());
    assert!(fallback.content.contains("[reasoning/reasoning-model]"), "{fallback:?}");
    t.fast.set(Behaviour::Answer { delay: Duration::from_millis(5) });

    let records = settle(sent.len() + 1).await;
    let by_id: HashMap<String, Value> = records
        .iter()
        .map(|c| {
            let v: Value = serde_json::from_slice(&c.payload).unwrap();
            (v["request_id"].as_str().unwrap().to_string(), v)
        })
        .collect();
    assert_eq!(by_id.len(), sent.len() + 1, "one pair per request: {:?}\n{}", by_id.keys(), proxy.log_text());
    assert!(!by_id.contains_key(&shadow_id), "untaken's shadow call was mirrored again");
    let r = by_id.get(&fallback.call_id).unwrap_or_else(|| panic!("no pair for the fallback call {}", fallback.call_id));
    assert_eq!(r["route_taken"]["name"], json!("fast"), "{r}");
    assert_ne!(r["primary"]["status_code"], json!(200), "a fallback's answer is not the route's: {}", r["primary"]);
    let error = r["primary"]["error"].as_str().unwrap_or_default();
    assert!(!r["primary"].to_string().contains("[reasoning/reasoning-model]"), "{}", r["primary"]);
    if pairing == "auto" {
        assert!(error.contains("fallback model group reasoning"), "the pair names the fallback: {error:?}");
    } else {
        // One-phase: the primary's failure event comes first and completes the pair.
        assert!(!error.is_empty(), "{}", r["primary"]);
    }
    for (group, stream, question, reply) in &sent {
        let r = by_id.get(&reply.call_id).unwrap_or_else(|| panic!("no pair for call {}", reply.call_id));
        let what = format!("{group} stream={stream} status={}", reply.status);
        assert_eq!(r["route_taken"]["name"], json!(group), "{what}");
        assert_eq!(r["route_not_taken"]["name"], json!(other(group)), "{what}");
        assert_eq!(r["status"], json!("PAIR_STATUS_COMPLETE"), "{what}: {r}");
        assert_eq!(r["slice"], json!("multi_step"), "{what}");
        assert_eq!(r["labels"]["tags"], json!("tenant-acme"), "{what}: the request's tags are a label");
        assert_eq!(r["request"]["messages"][0]["content"], json!(question), "{what}");
        assert!(r["request"].get("metadata").is_none(), "the proxy's own keys stay out of the request: {}", r["request"]);
        let text = r.to_string();
        for secret in [proxy.key.as_str(), "sk-fast-upstream", "sk-reasoning-upstream"] {
            assert!(!text.contains(secret), "{what}: an API key reached the record");
        }
        let counterfactual = r["counterfactual"]["body"]["choices"][0]["message"]["content"].as_str().unwrap_or_default();
        let shadow_tag = format!("[{0}/{0}-model]", other(group));
        assert!(counterfactual.contains(&shadow_tag), "{what}: counterfactual {counterfactual:?}");
        if reply.status == 200 {
            let primary = r["primary"]["body"]["choices"][0]["message"]["content"].as_str().unwrap_or_default();
            assert_eq!(primary, reply.content, "{what}: primary is what the proxy returned");
            assert_eq!(r["primary"]["status_code"], json!(200), "{what}");
        } else {
            assert_eq!(r["primary"]["status_code"], json!(reply.status), "{what}: {}", r["primary"]);
            let body = &r["primary"]["body"];
            if pairing == "auto" {
                assert_eq!(*body, reply.error, "{what}: the pair's error body is what the client got");
            } else {
                // One-phase reports from the failure event, before the proxy appends its
                // note on fallbacks to the message: the same error, type and code.
                for key in ["type", "param", "code"] {
                    assert_eq!(body["error"][key], reply.error["error"][key], "{what}: error.{key}: {body}");
                }
                let (sent, got) = (body["error"]["message"].as_str().unwrap(), reply.error["error"]["message"].as_str().unwrap());
                assert!(!sent.is_empty() && got.starts_with(sent), "{what}: message {sent:?} vs the client's {got:?}");
            }
            assert!(!r["primary"]["error"].as_str().unwrap_or_default().is_empty(), "{what}: {}", r["primary"]);
        }
    }

    // untaken goes away while slow requests are in flight (mirrored, not yet answered):
    // the proxy still answers them, with no error added.
    t.fast.set(Behaviour::Answer { delay: Duration::from_secs(2) });
    let before = t.fast.seen().len();
    let in_flight: Vec<_> = (0..3)
        .map(|i| {
            let (h, url, key) = (http.clone(), proxy.url.clone(), proxy.key.clone());
            tokio::spawn(async move {
                ask_at(&h, &url, &key, "fast", &format!("In flight {i} (zq-prompt-marker)"), i == 2).await
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while t.fast.seen().len() < before + 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(in_flight.iter().all(|h| !h.is_finished()), "the requests are still in flight when untaken stops");
    t.app.shutdown();
    t.app.wait().await;
    for (i, h) in in_flight.into_iter().enumerate() {
        let reply = h.await.unwrap();
        assert_eq!(reply.status, 200, "in-flight request {i} after untaken stopped: {reply:?}\n{}", proxy.log_text());
        assert!(reply.content.contains("[fast/fast-model]"), "in-flight request {i}: {reply:?}");
    }
    t.fast.set(Behaviour::Answer { delay: Duration::from_millis(5) });

    // untaken stays away: the proxy answers every request as before.
    for i in 0..8 {
        let (group, stream) = (["fast", "reasoning"][i % 2], i % 4 >= 2);
        let reply = ask(&http, &proxy, group, &format!("After the sidecar stopped {i} (zq-prompt-marker)"), stream).await;
        assert_eq!(reply.status, 200, "request {i} without untaken: {reply:?}\n{}", proxy.log_text());
        assert!(reply.content.contains(&format!("[{group}/{group}-model]")), "{reply:?}");
    }
    // The callback runs after each answer: poll the proxy's log for its line.
    let log = proxy.wait_log("untaken callback: mirror_UNAVAILABLE", Duration::from_secs(15)).await;
    let callback_lines: Vec<&str> = log.lines().filter(|l| l.starts_with(LOG_PREFIX)).collect();
    assert!(
        callback_lines.iter().any(|l| l.contains("mirrored")) && callback_lines.iter().any(|l| l.contains("WARNING")),
        "every level of the callback's logger is read (debug and warning lines):\n{log}"
    );
    for line in &callback_lines {
        assert!(
            !line.contains("zq-prompt-marker") && !line.contains("concluded") && !line.contains("-model]"),
            "prompt or answer text in a log line of the untaken_litellm logger: {line}"
        );
    }
}

/// The prefix of each line `LOG_ALL_RECORDS` writes.
const LOG_PREFIX: &str = "untaken_litellm-record ";

/// A `sitecustomize` for the proxy: a handler on the `untaken_litellm` logger at DEBUG
/// that writes every record, with its message and all its `extra` fields.
const LOG_ALL_RECORDS: &str = r#"
import logging, sys

class _Everything(logging.Formatter):
    _std = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record):
        extra = {k: v for k, v in vars(record).items() if k not in self._std}
        return "untaken_litellm-record %s %s %r" % (record.levelname, record.getMessage(), extra)

_h = logging.StreamHandler(sys.stderr)
_h.setFormatter(_Everything())
_log = logging.getLogger("untaken_litellm")
_log.setLevel(logging.DEBUG)
_log.addHandler(_h)
"#;

#[test]
fn callback_unit_tests_pass() {
    let venv = litellm_venv();
    let tests = format!("{ROOT}/integrations/litellm/tests");
    // Run from the venv, not the package's source dir: the tests import the installed
    // package, whose gRPC stubs the build generated.
    let out = Command::new(venv.join("bin/python"))
        .args(["-m", "unittest", "discover", "-s", &tests, "-v"])
        .current_dir(&venv)
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .stdin(Stdio::null())
        .output()
        .expect("run python");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python unit tests of the callback failed:\n{err}");
    assert!(err.contains("OK") && !err.contains("Ran 0 tests"), "{err}");
}
