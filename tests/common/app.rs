//! `spawn_app`: the whole sidecar in-process on port 0 against real peers (fake
//! OpenAI upstreams over HTTP, a real Kafka broker), with a real tonic client.
//! Every integration test that needs a running sidecar goes through here.

use std::collections::HashMap;
use std::time::Duration;

use tonic::transport::Channel;
use untaken::app::Running;
use untaken::proto::v1::mirror_client::MirrorClient;
use untaken::proto::v1::{Answer, MirrorRequest};
use untaken::simulate::{Behaviour, FakeUpstream};

pub struct TestApp {
    pub app: Running,
    pub client: MirrorClient<Channel>,
    pub fast: FakeUpstream,
    pub reasoning: FakeUpstream,
    pub cheap: FakeUpstream,
    pub topic: String,
    pub bootstrap: String,
    pub spool: tempfile::TempDir,
}

/// A unique topic name for one test.
pub fn topic(name: &str) -> String {
    format!("untaken-test-{name}-{}", uuid::Uuid::now_v7().simple())
}

/// Config for the three fake routes, a Kafka sink on `topic`, and `extra` TOML
/// (which may add `[sampling]`, `[pairing]`... sections; keys must not repeat).
pub fn config_toml(fast: &str, reasoning: &str, cheap: &str, bootstrap: &str, topic: &str, spool: &str, extra: &str) -> String {
    let sampling = if extra.contains("[sampling]") { "" } else { "[sampling]\ndefault_rate = 1.0\n" };
    // Lines of a leading `[server]` section in `extra` join the base server section.
    let (server_extra, extra) = match extra.strip_prefix("[server]\n") {
        Some(rest) => {
            let end = rest.find("\n[").map_or(rest.len(), |i| i + 1);
            (&rest[..end], &rest[end..])
        }
        None => ("", extra),
    };
    let grace = if server_extra.contains("shutdown_grace") { "" } else { "shutdown_grace = \"5s\"" };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{grace}
{server_extra}
[log]
format = "text"
{sampling}
[routes.fast]
url = "{fast}"
model = "fast-model"
counterfactual = "reasoning"
timeout = "2s"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.60
[routes.reasoning]
url = "{reasoning}"
model = "reasoning-model"
counterfactual = "fast"
timeout = "2s"
input_usd_per_mtok = 1.10
output_usd_per_mtok = 4.40
[routes.cheap]
url = "{cheap}"
model = "cheap-model"
timeout = "2s"
[sink.kafka]
brokers = "{bootstrap}"
topic = "{topic}"
delivery_timeout = "10s"
[spool]
dir = "{spool}"
fsync_interval = "100ms"
{extra}
"#
    )
}

pub async fn spawn_app(name: &str, extra: &str) -> TestApp {
    let bootstrap = super::kafka::shared_bootstrap_async().await;
    spawn_app_with(name, extra, &bootstrap).await
}

pub async fn spawn_app_with(name: &str, extra: &str, bootstrap: &str) -> TestApp {
    spawn_app_edited(name, extra, bootstrap, |text| text).await
}

/// [`spawn_app_with`], with the config text passed through `edit` first (to add a key
/// to a section the base config already has, such as a route's).
pub async fn spawn_app_edited(name: &str, extra: &str, bootstrap: &str, edit: impl FnOnce(String) -> String) -> TestApp {
    let answer = Behaviour::Answer { delay: Duration::from_millis(5) };
    let fast = FakeUpstream::start("fast", answer.clone()).await.unwrap();
    let reasoning = FakeUpstream::start("reasoning", answer.clone()).await.unwrap();
    let cheap = FakeUpstream::start("cheap", answer).await.unwrap();
    let topic = topic(name);
    let spool = tempfile::tempdir().unwrap();
    let text = edit(config_toml(&fast.url(), &reasoning.url(), &cheap.url(), bootstrap, &topic, spool.path().to_str().unwrap(), extra));
    let config = untaken::config::from_toml(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
    let app = untaken::app::start(config, None).await.expect("sidecar starts");
    let client = MirrorClient::connect(format!("http://{}", app.grpc_addr)).await.expect("grpc connect");
    TestApp { app, client, fast, reasoning, cheap, topic, bootstrap: bootstrap.to_string(), spool }
}

/// A valid ~2 KB chat request.
pub fn chat(i: usize) -> Vec<u8> {
    untaken::simulate::chat_request(i, "multi_step", "fast-model")
}

pub fn mirror_req(id: &str, route: &str, primary: Option<Answer>) -> MirrorRequest {
    MirrorRequest {
        request_id: id.into(),
        route_taken: route.into(),
        request_body: chat(1),
        slice: "multi_step".into(),
        labels: HashMap::from([("tenant".to_string(), "acme".to_string())]),
        primary,
        ..Default::default()
    }
}

pub fn primary_answer(text: &str) -> Answer {
    let body = serde_json::json!({
        "choices": [{"message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10}
    });
    Answer { body: serde_json::to_vec(&body).unwrap(), status_code: 200, latency_ms: 12.0, error: String::new() }
}

/// The admin port's /metrics text.
pub async fn metrics(app: &Running) -> String {
    reqwest::get(format!("http://{}/metrics", app.admin_addr)).await.unwrap().text().await.unwrap()
}

/// The value of one metric series line (exact name and labels), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Polls /metrics until `series` reads `want`; panics with the last scrape after 30 s.
pub async fn wait_metric(app: &Running, series: &str, want: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics(app).await;
        if metric(&m, series) == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {series} = {want}; last /metrics:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
