//! The monitoring in `deploy/monitoring/` names only metrics untaken really
//! exports, and shows all of them: a running sidecar (in-process, against the
//! real broker, fake upstreams) and a running `untaken judge` worker (fake judge
//! endpoint) that graded the sidecar's pair are scraped over HTTP, after going
//! through the paths that create each labelled series (a family without series
//! has no `# TYPE` line). Every `untaken_*` name in the Grafana dashboard, the
//! PrometheusRule and its promtool tests must be a series of a family they
//! expose (counters as `_total`, histograms as `_bucket` / `_sum` / `_count`),
//! and every exported family must have a panel.
//!
//! The rules themselves are checked by `promtool check rules` / `promtool test
//! rules` in deploy/validate.sh (tests/deploy_manifests.rs).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::app::{mirror_req, primary_answer, test_config, topic};
use common::kafka::{create_topic_async, shared_bootstrap_async};
use tokio_util::sync::CancellationToken;
use untaken::judge::fake::{FakeJudge, Preference};
use untaken::proto::v1::{CompleteRequest, MirrorRequest};
use untaken::simulate::{Behaviour, FakeUpstream};

/// The files whose metric names must exist, relative to the crate root.
const MONITORING: &[&str] =
    &["deploy/monitoring/untaken-dashboard.json", "deploy/monitoring/prometheusrule.yaml", "deploy/monitoring/rules.test.yaml"];
const DASHBOARD: &str = "deploy/monitoring/untaken-dashboard.json";

/// Metric family -> its Prometheus type, from the `# TYPE` lines of an exposition.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
        .collect()
}

/// The series names PromQL can select for one family.
fn series_names(family: &str, kind: &str) -> Vec<String> {
    match kind {
        "counter" => vec![format!("{family}_total")],
        "histogram" => ["_bucket", "_sum", "_count"].iter().map(|s| format!("{family}{s}")).collect(),
        _ => vec![family.to_string()],
    }
}

/// Every `untaken_…` identifier in a text (PromQL, JSON, YAML alike).
fn metric_names(text: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("untaken_") {
        let preceded = rest[..i].chars().next_back().is_some_and(ident);
        let len = rest[i..].find(|c: char| !ident(c)).unwrap_or(rest.len() - i);
        if !preceded {
            names.insert(rest[i..i + len].to_string());
        }
        rest = &rest[i + len..];
    }
    names
}

/// Polls the /metrics of `admin` until it contains `needle` (30 s at most); returns the text.
async fn wait_for(admin: SocketAddr, needle: &str) -> String {
    common::metrics::wait_metrics(admin, &format!("`{needle}`"), Duration::from_secs(30), |m| m.contains(needle)).await
}

/// A sidecar that has been through every path that creates a series: a pair
/// published, a pair too large for the producer (dropped, delivery error), a
/// Complete for an unknown request, a route with a budget, an invalid reload, a
/// rejected secret file.
/// Returns its /metrics text and the topic holding the published pair.
async fn sidecar_exposition(bootstrap: &str) -> (String, String) {
    let answer = Behaviour::Answer { delay: Duration::from_millis(5) };
    let fast = FakeUpstream::start("fast", answer.clone()).await.unwrap();
    let reasoning = FakeUpstream::start("reasoning", answer.clone()).await.unwrap();
    let cheap = FakeUpstream::start("cheap", answer).await.unwrap();
    let pairs = topic("monitoring");
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // The producer refuses records over 100 kB: the large pair below is dropped.
    let mut config = test_config(&fast.url(), &reasoning.url(), &cheap.url(), bootstrap, &pairs, &spool);
    config.sink.kafka.librdkafka = serde_json::from_value(serde_json::json!({"message.max.bytes": "100000"})).unwrap();
    config.routes.get_mut("reasoning").expect("route reasoning").budget_usd_per_hour = Some(50.0);
    let key = dir.path().join("api-key");
    std::fs::write(&key, "sk-1").unwrap();
    config.routes.get_mut("cheap").expect("route cheap").api_key_file = Some(key.clone());
    config.server.secret_poll_interval = Duration::from_millis(100);
    let file = dir.path().join("untaken.toml");
    common::config::write(&config, &file);
    let app = common::app::start(config, Some(file.clone())).await;
    let mut client = common::app::client(&app).await;
    let url = app.admin_addr;

    client.mirror(mirror_req("small", "fast", Some(primary_answer("p")))).await.unwrap();
    let big = serde_json::json!({"model": "fast-model", "messages": [{"role": "user", "content": "x".repeat(200_000)}]});
    let big = MirrorRequest { request_body: serde_json::to_vec(&big).unwrap(), ..mirror_req("big", "fast", Some(primary_answer("p"))) };
    client.mirror(big).await.unwrap();
    client.complete(CompleteRequest { request_id: "never-mirrored".into(), primary: Some(primary_answer("p")) }).await.ok();
    wait_for(url, "untaken_pairs_published_total 1").await;
    wait_for(url, r#"untaken_pairs_dropped_total{reason="rejected_permanently"} 1"#).await;
    std::fs::write(&key, "").unwrap();
    wait_for(url, r#"untaken_secret_file_rejected{secret="routes.api_key_file"} 1"#).await;
    std::fs::write(&file, "[server\nnot toml").unwrap();
    let exposition = wait_for(url, r#"untaken_config_reloads_total{reason="invalid"}"#).await;
    app.shutdown();
    app.wait().await;
    (exposition, pairs)
}

/// A judge worker (pairwise, fake judge endpoint) that graded the pair in `pairs`.
async fn judge_exposition(bootstrap: &str, pairs: &str) -> String {
    let judge = FakeJudge::start(Preference::Longer, Duration::from_millis(5), false).await.unwrap();
    let grades = topic("monitoring-grades");
    create_topic_async(bootstrap, &grades, 1).await;
    let mut config = common::config::judge(common::config::pairwise(&judge.url()), bootstrap, pairs, &grades, &grades);
    // A judge key file, broken once the pair is graded: the rejection series exist.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("judge-api-key");
    std::fs::write(&key, "sk-judge").unwrap();
    config.judge.pairwise.as_mut().expect("pairwise").api_key_file = Some(key.clone());
    config.server.secret_poll_interval = Duration::from_millis(100);
    let config = common::config::validated_judge(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let admin = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let worker = tokio::spawn(async move { untaken::judge::run_kafka_on(&config, listener, s).await });
    wait_for(admin, "untaken_judge_grades_published_total{").await;
    wait_for(admin, "untaken_judge_offsets_committed_total 1").await;
    std::fs::write(&key, "").unwrap();
    let exposition = wait_for(admin, r#"untaken_judge_secret_file_rejected{secret="judge.pairwise.api_key_file"} 1"#).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), worker).await.expect("judge stops").unwrap().expect("judge ran");
    exposition
}

/// A family whose series only appear after a failure this test does not provoke
/// (a grade Kafka refuses), its type, and the family seen live that shares its
/// code: the judge registers the sink's own delivery-error counter under this name.
const FAILURE_ONLY: &[(&str, &str, &str)] = &[("untaken_judge_grade_delivery_errors", "counter", "untaken_kafka_delivery_errors")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_name_only_exported_metrics_and_show_them_all() {
    let bootstrap = shared_bootstrap_async().await;
    let (sidecar_text, pairs) = sidecar_exposition(&bootstrap).await;
    let judge_text = judge_exposition(&bootstrap, &pairs).await;
    // The two gauges the dashboard and alerts need for ratios carry the config.
    assert!(sidecar_text.contains(r#"untaken_shadow_budget_usd_per_hour{route="reasoning"} 50.0"#), "{sidecar_text}");
    assert!(!sidecar_text.contains(r#"untaken_shadow_budget_usd_per_hour{route="fast"}"#), "no budget, no series: {sidecar_text}");
    assert!(sidecar_text.contains(&format!("untaken_spool_max_bytes {}", untaken::config::SpoolConfig::default().max_bytes)), "{sidecar_text}");

    let mut exported: BTreeMap<String, String> = families(&sidecar_text).into_iter().chain(families(&judge_text)).collect();
    for (family, kind, seen) in FAILURE_ONLY {
        assert_eq!(exported.get(*seen).map(String::as_str), Some(*kind), "{seen} not exported: {sidecar_text}");
        exported.entry(family.to_string()).or_insert_with(|| kind.to_string());
    }
    let series: BTreeSet<String> = exported.iter().flat_map(|(f, k)| series_names(f, k)).collect();

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut unknown = Vec::new();
    for rel in MONITORING {
        let text = std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"));
        let named = metric_names(&text);
        assert!(named.len() >= 5, "{rel} names only {named:?}: is it the monitoring file?");
        unknown.extend(named.into_iter().filter(|n| !series.contains(n)).map(|n| format!("{rel}: {n}")));
    }
    assert!(
        unknown.is_empty(),
        "metrics named in deploy/monitoring that untaken does not export (a typo, or a renamed metric?):\n  {}\nexported series: {series:?}",
        unknown.join("\n  ")
    );

    // Every family untaken exports has a panel: a new metric goes on the dashboard.
    let dashboard = metric_names(&std::fs::read_to_string(root.join(DASHBOARD)).unwrap());
    let missing: Vec<&String> =
        exported.iter().filter(|(f, k)| !series_names(f, k).iter().any(|s| dashboard.contains(s))).map(|(f, _)| f).collect();
    assert!(missing.is_empty(), "exported metric families with no panel in {DASHBOARD}: {missing:?}");
}

#[test]
fn metric_names_are_read_from_promql_and_series_from_types() {
    let names = metric_names(r#"sum by (route) (rate(untaken_shadow_calls_total{outcome!="ok"}[5m])) / x_untaken_not"#);
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["untaken_shadow_calls_total"]);
    let f = families("# HELP untaken_a A.\n# TYPE untaken_a counter\nuntaken_a_total 1\n# TYPE untaken_h histogram\n");
    assert_eq!(series_names("untaken_a", &f["untaken_a"]), ["untaken_a_total"]);
    assert_eq!(series_names("untaken_h", &f["untaken_h"]), ["untaken_h_bucket", "untaken_h_sum", "untaken_h_count"]);
}

/// What Grafana's import needs: a schemaVersion, a Prometheus data source
/// variable every panel and query uses (no data source uid of another
/// installation), unique panel ids, and a PromQL expression in every query.
#[test]
fn dashboard_is_importable_as_it_is() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DASHBOARD);
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard is JSON");
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion: {}", d["schemaVersion"]);
    assert!(d["uid"].is_string() && d["title"].is_string());
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "no Prometheus data source variable: {vars:?}"
    );
    let ds = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "duplicate panel id {}", p["id"]);
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"], ds, "panel {}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"], ds, "query of panel {}", p["title"]);
            assert!(t["expr"].as_str().is_some_and(|e| e.contains("untaken_")), "panel {}: {t}", p["title"]);
            queries += 1;
        }
    }
    assert!(queries >= 30, "only {queries} queries");
}
