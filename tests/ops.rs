//! Operating the sidecar: admin probes and metrics over HTTP, gRPC health and
//! reflection, bearer-token auth, live reload, redaction and the opt-out label.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::app::{metrics, mirror_req, primary_answer, spawn_app, test_config, TestApp};
use common::kafka::{consume_async, shared_bootstrap_async};
use common::metrics::{metric, wait_metrics, wait_ready_status};
use untaken::config::Config;
use untaken::redact::RedactionRule;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use untaken::proto::v1::mirror_client::MirrorClient;
use untaken::simulate::{Behaviour, FakeUpstream};

/// The standard gRPC health status of the Mirror service.
async fn mirror_health(channel: tonic::transport::Channel) -> i32 {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let req = tonic_health::pb::HealthCheckRequest { service: "untaken.v1.Mirror".into() };
    health.check(req).await.unwrap().into_inner().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_metrics_health_and_reflection() {
    let mut t = spawn_app("ops", |_| {}).await;
    let admin = format!("http://{}", t.app.admin_addr);
    assert_eq!(reqwest::get(format!("{admin}/live")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(format!("{admin}/ready")).await.unwrap().status(), 200);

    t.client.mirror(mirror_req("m-1", "fast", Some(primary_answer("p")))).await.unwrap();
    let _ = consume_async(&t.bootstrap, &t.topic, 1, Duration::from_secs(30)).await;
    let m = metrics(&t.app).await;
    assert_eq!(metric(&m, r#"untaken_mirror_requests_total{decision="sampled",reason="",slice="multi_step"}"#), 1.0, "{m}");
    assert_eq!(metric(&m, r#"untaken_shadow_calls_total{route="reasoning",outcome="ok"}"#), 1.0);
    assert_eq!(metric(&m, "untaken_pairs_published_total"), 1.0);
    assert!(m.contains("untaken_shadow_latency_seconds_bucket"));
    assert!(m.contains("untaken_kafka_delivery_seconds_count 1"));

    // Standard gRPC health: the Mirror service is SERVING.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", t.app.grpc_addr)).unwrap().connect().await.unwrap();
    assert_eq!(mirror_health(channel.clone()).await, ServingStatus::Serving as i32);

    // Reflection lists the services, as `grpcurl list` does.
    use tonic_reflection::pb::v1::{server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest, server_reflection_response::MessageResponse, ServerReflectionRequest};
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut stream = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("{resp:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"untaken.v1.Mirror".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");

    t.app.shutdown();
    t.app.wait().await;
}

/// While draining: /ready is 503, health is NOT_SERVING, Mirror is UNAVAILABLE, and
/// Complete still joins a pair whose shadow call is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_refuses_new_work_and_still_completes_pending_pairs() {
    let mut t = spawn_app("drain", |c| c.server.shutdown_grace = Duration::from_secs(3)).await;
    t.reasoning.set(Behaviour::Answer { delay: Duration::from_millis(1500) });
    assert!(t.client.mirror(mirror_req("d-1", "fast", None)).await.unwrap().into_inner().sampled);
    let admin = format!("http://{}", t.app.admin_addr);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", t.app.grpc_addr)).unwrap().connect().await.unwrap();
    let token = t.app.shutdown_token();
    token.cancel();
    wait_ready_status(t.app.admin_addr, 503, Duration::from_secs(10)).await;
    assert_eq!(reqwest::get(format!("{admin}/ready")).await.unwrap().status(), 503);
    assert_eq!(mirror_health(channel).await, ServingStatus::NotServing as i32);
    let refused = t.client.mirror(mirror_req("d-2", "fast", None)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    t.client
        .complete(untaken::proto::v1::CompleteRequest { request_id: "d-1".into(), primary: Some(primary_answer("in time")) })
        .await
        .expect("Complete is served during the drain");
    t.app.wait().await;
    let got = consume_async(&t.bootstrap, &t.topic, 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    let r: serde_json::Value = serde_json::from_slice(&got[0].payload).unwrap();
    assert_eq!(r["status"], "PAIR_STATUS_COMPLETE", "{r}");
    assert_eq!(r["primary"]["body"]["choices"][0]["message"]["content"], "in time");
}

/// Pairs accepted right before the drain get their shadow calls: the dispatcher
/// gathers queued jobs into batches (`dispatch::GATHER`), and a drain that started
/// meanwhile must start what is queued, not publish it with the counterfactual missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_accepted_just_before_the_drain_get_their_shadow_calls() {
    let mut t = spawn_app("drainq", |c| c.server.shutdown_grace = Duration::from_secs(5)).await;
    // An upstream answering at once: a batch's calls are done before the next starts.
    t.reasoning.set(Behaviour::Answer { delay: Duration::ZERO });
    const N: usize = 20;
    for i in 0..N {
        let r = t.client.mirror(mirror_req(&format!("q-{i}"), "fast", Some(primary_answer("p")))).await.unwrap().into_inner();
        assert!(r.sampled, "{r:?}");
    }
    t.app.shutdown_token().cancel();
    t.app.wait().await;
    let got = consume_async(&t.bootstrap, &t.topic, N, Duration::from_secs(30)).await;
    assert_eq!(got.len(), N);
    for m in &got {
        let r: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(r["status"], "PAIR_STATUS_COMPLETE", "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let mut t = spawn_app("auth", |c| c.server.auth_token_file = Some(token_file.clone())).await;
    let err = t.client.mirror(mirror_req("a-1", "fast", None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut bad = tonic::Request::new(mirror_req("a-2", "fast", None));
    bad.metadata_mut().insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(t.client.mirror(bad).await.unwrap_err().code(), Code::Unauthenticated);
    let mut good = tonic::Request::new(mirror_req("a-3", "fast", Some(primary_answer("p"))));
    good.metadata_mut().insert("authorization", "Bearer s3cret-token".parse().unwrap());
    assert!(t.client.mirror(good).await.unwrap().into_inner().sampled);
    // The scheme is case-insensitive (RFC 7235): `bearer` and `BEARER` are the same.
    for (i, scheme) in ["bearer", "BEARER"].iter().enumerate() {
        let mut req = tonic::Request::new(mirror_req(&format!("a-case-{i}"), "fast", Some(primary_answer("p"))));
        req.metadata_mut().insert("authorization", format!("{scheme} s3cret-token").parse().unwrap());
        assert!(t.client.mirror(req).await.expect(scheme).into_inner().sampled);
    }

    // Reflection describes the service: it needs the token too.
    use tonic_reflection::pb::v1::{server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest, ServerReflectionRequest};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", t.app.grpc_addr)).unwrap().connect().await.unwrap();
    let list = || ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut refl = ServerReflectionClient::new(channel.clone());
    let denied = match refl.server_reflection_info(tokio_stream::iter(vec![list()])).await {
        Err(status) => status,
        Ok(resp) => resp.into_inner().message().await.expect_err("reflection without a token must be refused"),
    };
    assert_eq!(denied.code(), Code::Unauthenticated, "{denied:?}");
    let mut req = tonic::Request::new(tokio_stream::iter(vec![list()]));
    req.metadata_mut().insert("authorization", "Bearer s3cret-token".parse().unwrap());
    let mut stream = refl.server_reflection_info(req).await.expect("reflection with the token").into_inner();
    assert!(stream.message().await.unwrap().is_some());
    // Health stays open: the kubelet's probe carries no token.
    assert_eq!(mirror_health(channel).await, ServingStatus::Serving as i32);
    t.app.shutdown();
    t.app.wait().await;
}

/// Shadow calls cut off by the drain leave `untaken_shadow_inflight` at 0, not at
/// the number that was hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_inflight_returns_to_zero_when_the_drain_cancels_calls() {
    let t = spawn_app("inflight", |c| c.server.shutdown_grace = Duration::from_millis(200)).await;
    t.reasoning.set(Behaviour::Hang);
    let mut client = t.client.clone();
    for i in 0..3 {
        assert!(client.mirror(mirror_req(&format!("h-{i}"), "fast", Some(primary_answer("p")))).await.unwrap().into_inner().sampled);
    }
    wait_metrics(t.app.admin_addr, "3 shadow calls in flight", Duration::from_secs(10), |m| metric(m, "untaken_shadow_inflight") >= 3.0).await;
    let engine = t.app.engine.clone();
    t.app.shutdown();
    t.app.wait().await;
    assert_eq!(engine.metrics().shadow_inflight.get(), 0, "the gauge counts the cancelled calls as done");
    assert_eq!(engine.metrics().queue_depth.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_changes_the_rate_and_a_bad_reload_keeps_the_old_config() {
    let bootstrap = shared_bootstrap_async().await;
    let up = FakeUpstream::start("any", Behaviour::Answer { delay: Duration::from_millis(1) }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("untaken.toml");
    let topic = common::app::topic("reload");
    let mut config = test_config(&up.url(), &up.url(), &up.url(), &bootstrap, &topic, &dir.path().join("spool"));
    config.sampling.default_rate = 0.0;
    let mut edits = 0;
    // Writes the file and moves its mtime on by a second per edit, as a ConfigMap
    // update does; the reload loop notices a changed mtime within a second.
    let mut edit = |config: &Config, path: &Path| {
        edits += 1;
        // Not `common::config::write`: the last edit is a file the reload must reject.
        std::fs::write(path, common::config::to_toml(config)).unwrap();
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(edits)).unwrap();
    };
    edit(&config, &path);
    let app = common::app::start(untaken::config::load(Some(&path)).unwrap(), Some(path.clone())).await;
    let mut client = common::app::client(&app).await;
    let sampled = |c: &mut MirrorClient<_>, id: String| {
        let mut c = c.clone();
        async move { c.mirror(mirror_req(&id, "fast", Some(primary_answer("p")))).await.unwrap().into_inner() }
    };
    assert!(!sampled(&mut client, "before".into()).await.sampled);
    let reloads = |n: f64| move |m: &str| metric(m, r#"untaken_config_reloads_total{reason="ok"}"#) >= n;

    // Rate 0 → 1 by editing the file.
    config.sampling.default_rate = 1.0;
    edit(&config, &path);
    wait_metrics(app.admin_addr, "the first reload", Duration::from_secs(30), reloads(1.0)).await;
    assert!(sampled(&mut client, "after".into()).await.sampled, "the new rate took effect without a restart");

    // A restart-only key changed in the file (server.max_body_bytes): the reload applies
    // the rest and keeps the running value, as its log line says, until a restart.
    config.server.max_body_bytes = 100;
    edit(&config, &path);
    wait_metrics(app.admin_addr, "the second reload", Duration::from_secs(30), reloads(2.0)).await;
    assert_eq!(metric(&metrics(&app).await, r#"untaken_config_reloads_total{reason="ok"}"#), 2.0);
    let r = client.mirror(mirror_req("restart-only", "fast", Some(primary_answer("p")))).await;
    assert!(r.expect("a 2 KB body is within the running limit until a restart").into_inner().sampled);

    // A bad file is rejected, counted, and the old config (rate 1.0) stays in force.
    config.sampling.default_rate = 7.5;
    edit(&config, &path);
    let invalid = |m: &str| metric(m, r#"untaken_config_reloads_total{reason="invalid"}"#) >= 1.0;
    let m = wait_metrics(app.admin_addr, "the bad reload to be rejected", Duration::from_secs(30), invalid).await;
    assert_eq!(metric(&m, r#"untaken_config_reloads_total{reason="invalid"}"#), 1.0, "{m}");
    assert!(sampled(&mut client, "still".into()).await.sampled, "old config still in force");
    app.shutdown();
    app.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redaction_and_opt_out_keep_data_out_of_kafka() {
    let rule = |name: &str, pattern: &str| RedactionRule { name: name.into(), pattern: pattern.into(), replacement: None };
    let rules = vec![
        rule("email", r"[\w.+-]+@[\w-]+\.[\w.-]+"),
        rule("card", r"\b(?:\d[ -]?){13,19}\b"),
        rule("phone", r"\+?\d{1,3}[ .-]?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}"),
    ];
    let mut t: TestApp = spawn_app("redact", |c| c.redaction.rules = rules).await;
    let pii = "I am jane.doe@example.com, card 4111 1111 1111 1111, phone +1 (415) 555-0134";
    let body = serde_json::json!({"model": "fast-model", "messages": [{"role": "user", "content": pii}]});
    let mut req = mirror_req("pii-1", "fast", Some(primary_answer("Sure jane.doe@example.com")));
    req.request_body = serde_json::to_vec(&body).unwrap();
    assert!(t.client.mirror(req).await.unwrap().into_inner().sampled);

    let mut opted = mirror_req("opted-out", "fast", Some(primary_answer("p")));
    opted.labels.insert("untaken.no_shadow".into(), "true".into());
    let r = t.client.mirror(opted).await.unwrap().into_inner();
    assert!(!r.sampled);
    assert_eq!(r.reason, "opted_out");

    let got = consume_async(&t.bootstrap, &t.topic, 2, Duration::from_secs(8)).await;
    assert_eq!(got.len(), 1, "the opted-out request is never published");
    let text = String::from_utf8(got[0].payload.clone()).unwrap();
    for secret in ["jane.doe", "4111 1111", "555-0134"] {
        assert!(!text.contains(secret), "{secret} leaked into the record");
    }
    assert!(text.contains("[REDACTED:email]") && text.contains("[REDACTED:card]") && text.contains("[REDACTED:phone]"));
    assert_eq!(t.reasoning.seen().len(), 1, "only the sampled request was shadowed");
    t.app.shutdown();
    t.app.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_reach_the_upstream_and_nowhere_else() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("reasoning-key");
    std::fs::write(&key_file, "sk-live-DO-NOT-LEAK-42\n").unwrap();
    let bootstrap = shared_bootstrap_async().await;
    let up = FakeUpstream::start("any", Behaviour::Answer { delay: Duration::from_millis(1) }).await.unwrap();
    let topic = common::app::topic("secrets");
    let mut config = test_config(&up.url(), &up.url(), &up.url(), &bootstrap, &topic, &dir.path().join("spool"));
    config.routes.get_mut("reasoning").unwrap().api_key_file = Some(key_file.clone());
    assert!(!format!("{config:?}").contains("DO-NOT-LEAK"), "config debug output holds only the path");
    assert!(!common::config::to_toml(&config).contains("DO-NOT-LEAK"), "the config file holds only the path");
    let app = common::app::start(config, None).await;
    let mut client = common::app::client(&app).await;
    assert!(client.mirror(mirror_req("k-1", "fast", Some(primary_answer("p")))).await.unwrap().into_inner().sampled);
    let got = consume_async(&bootstrap, &topic, 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(up.seen()[0].headers["authorization"], "Bearer sk-live-DO-NOT-LEAK-42");
    assert!(!String::from_utf8_lossy(&got[0].payload).contains("DO-NOT-LEAK"));
    assert!(got[0].headers.iter().all(|(_, v)| !String::from_utf8_lossy(v).contains("DO-NOT-LEAK")));
    assert!(!metrics(&app).await.contains("DO-NOT-LEAK"));
    app.shutdown();
    app.wait().await;
}
