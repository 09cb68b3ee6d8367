//! `spawn_app`: the whole sidecar in-process on port 0 against real peers (fake
//! OpenAI upstreams over HTTP, a real Kafka broker), with a real tonic client.
//! Every integration test that needs a running sidecar goes through here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::Channel;
use untaken::app::{Listeners, Running};
use untaken::config::{Config, RouteConfig};
use untaken::proto::v1::mirror_client::MirrorClient;
use untaken::proto::v1::{Answer, MirrorRequest};
use untaken::simulate::{Behaviour, FakeUpstream};

use super::config;
pub use super::metrics::metric;

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

/// The three fake routes (`fast` ⇄ `reasoning`, `cheap` never shadowed), a Kafka sink
/// on `topic` and a spool in `spool`, every request sampled: the config `spawn_app`
/// starts with, before the test's own changes.
pub fn test_config(fast: &str, reasoning: &str, cheap: &str, bootstrap: &str, topic: &str, spool: &Path) -> Config {
    let mut c = config::base(bootstrap, topic, spool);
    let priced = |url: &str, model: &str, counterfactual: &str, input: f64, output: f64| RouteConfig {
        counterfactual: Some(counterfactual.to_string()),
        input_usd_per_mtok: input,
        output_usd_per_mtok: output,
        ..config::route(url, model)
    };
    c.routes.insert("fast".into(), priced(fast, "fast-model", "reasoning", 0.15, 0.60));
    c.routes.insert("reasoning".into(), priced(reasoning, "reasoning-model", "fast", 1.10, 4.40));
    c.routes.insert("cheap".into(), config::route(cheap, "cheap-model"));
    c.sink.kafka.delivery_timeout = Duration::from_secs(10);
    c
}

/// Starts the sidecar in-process on port-0 listeners and returns once `/ready`
/// answers 200. `server.listen` and `server.admin_listen` are not used.
pub async fn start(config: Config, config_path: Option<PathBuf>) -> Running {
    let config = config::validated(config);
    let listeners = Listeners::loopback().await.expect("bind 127.0.0.1:0");
    let app = untaken::app::start_on(config, config_path, listeners).await.expect("sidecar starts");
    super::metrics::wait_ready_status(app.admin_addr, 200, Duration::from_secs(30)).await;
    app
}

/// A real tonic client connected to `app`.
pub async fn client(app: &Running) -> MirrorClient<Channel> {
    MirrorClient::connect(format!("http://{}", app.grpc_addr)).await.expect("grpc connect")
}

/// The sidecar on the shared broker with [`test_config`] changed by `change`.
pub async fn spawn_app(name: &str, change: impl FnOnce(&mut Config)) -> TestApp {
    let bootstrap = super::kafka::shared_bootstrap_async().await;
    spawn_app_with(name, change, &bootstrap).await
}

pub async fn spawn_app_with(name: &str, change: impl FnOnce(&mut Config), bootstrap: &str) -> TestApp {
    let answer = Behaviour::Answer { delay: Duration::from_millis(5) };
    let fast = FakeUpstream::start("fast", answer.clone()).await.unwrap();
    let reasoning = FakeUpstream::start("reasoning", answer.clone()).await.unwrap();
    let cheap = FakeUpstream::start("cheap", answer).await.unwrap();
    let topic = topic(name);
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(&fast.url(), &reasoning.url(), &cheap.url(), bootstrap, &topic, spool.path());
    change(&mut config);
    let app = start(config, None).await;
    let client = client(&app).await;
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
    super::metrics::scrape(app.admin_addr).await
}

/// Polls /metrics until `series` reads `want`; panics with the last scrape after 30 s.
pub async fn wait_metric(app: &Running, series: &str, want: f64) {
    let what = format!("{series} = {want}");
    super::metrics::wait_metrics(app.admin_addr, &what, Duration::from_secs(30), |m| metric(m, series) == want).await;
}

/// Polls /metrics until `series` reads at least `n`; panics with the last scrape after 60 s.
pub async fn wait_metric_at_least(app: &Running, series: &str, n: f64) {
    let what = format!("{series} >= {n}");
    super::metrics::wait_metrics(app.admin_addr, &what, Duration::from_secs(60), |m| metric(m, series) >= n).await;
}
