//! Operating the sidecar: admin probes and metrics over HTTP, gRPC health and
//! reflection, bearer-token auth, live reload, redaction and the opt-out label.

mod common;

use std::time::Duration;

use common::app::{config_toml, metric, metrics, mirror_req, primary_answer, spawn_app, TestApp};
use common::kafka::{consume_async, shared_bootstrap_async};
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
    let mut t = spawn_app("ops", "").await;
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
    let mut t = spawn_app("drain", "[server]\nshutdown_grace = \"3s\"\n").await;
    t.reasoning.set(Behaviour::Answer { delay: Duration::from_millis(1500) });
    assert!(t.client.mirror(mirror_req("d-1", "fast", None)).await.unwrap().into_inner().sampled);
    let admin = format!("http://{}", t.app.admin_addr);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", t.app.grpc_addr)).unwrap().connect().await.unwrap();
    let token = t.app.shutdown_token();
    token.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let extra = format!("[server]\nauth_token_file = {:?}\n", token_file.display().to_string());
    let mut t = spawn_app("auth", &extra).await;
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
    let t = spawn_app("inflight", "[server]\nshutdown_grace = \"200ms\"\n").await;
    t.reasoning.set(Behaviour::Hang);
    let mut client = t.client.clone();
    for i in 0..3 {
        assert!(client.mirror(mirror_req(&format!("h-{i}"), "fast", Some(primary_answer("p")))).await.unwrap().into_inner().sampled);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&metrics(&t.app).await, "untaken_shadow_inflight") < 3.0 {
        assert!(std::time::Instant::now() < deadline, "3 shadow calls never in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let write = |rate: &str, extra: &str| {
        let text = config_toml(&up.url(), &up.url(), &up.url(), &bootstrap, &topic, dir.path().join("spool").to_str().unwrap(), &format!("[sampling]\ndefault_rate = {rate}\n{extra}"));
        std::fs::write(&path, text).unwrap();
    };
    write("0.0", "");
    let config = untaken::config::load(Some(&path)).unwrap();
    let app = untaken::app::start(config, Some(path.clone())).await.unwrap();
    let mut client = MirrorClient::connect(format!("http://{}", app.grpc_addr)).await.unwrap();
    let sampled = |c: &mut MirrorClient<_>, id: String| {
        let mut c = c.clone();
        async move { c.mirror(mirror_req(&id, "fast", Some(primary_answer("p")))).await.unwrap().into_inner() }
    };
    assert!(!sampled(&mut client, "before".into()).await.sampled);

    // Rate 0 → 1 by editing the file (as a ConfigMap update does).
    tokio::time::sleep(Duration::from_millis(1100)).await; // a different mtime second
    write("1.0", "");
    let mut i = 0;
    let reloaded = loop {
        i += 1;
        let r = sampled(&mut client, format!("after-{i}")).await;
        if r.sampled || i > 60 {
            break r.sampled;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reloaded, "the new rate took effect without a restart");

    // A restart-only key changed in the file (server.max_body_bytes): the reload applies
    // the rest and keeps the running value, as its log line says, until a restart.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let text = std::fs::read_to_string(&path).unwrap().replacen("[server]\n", "[server]\nmax_body_bytes = 100\n", 1);
    std::fs::write(&path, text).unwrap();
    for _ in 0..60 {
        if metric(&metrics(&app).await, r#"untaken_config_reloads_total{reason="ok"}"#) >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&metrics(&app).await, r#"untaken_config_reloads_total{reason="ok"}"#), 2.0);
    let r = client.mirror(mirror_req("restart-only", "fast", Some(primary_answer("p")))).await;
    assert!(r.expect("a 2 KB body is within the running limit until a restart").into_inner().sampled);

    // A bad file is rejected, counted, and the old config (rate 1.0) stays in force.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write("7.5", "");
    let mut m = String::new();
    for _ in 0..60 {
        m = metrics(&app).await;
        if metric(&m, r#"untaken_config_reloads_total{reason="invalid"}"#) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&m, r#"untaken_config_reloads_total{reason="invalid"}"#), 1.0, "{m}");
    assert!(sampled(&mut client, "still".into()).await.sampled, "old config still in force");
    app.shutdown();
    app.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redaction_and_opt_out_keep_data_out_of_kafka() {
    let extra = r#"
[redaction]
rules = [
  { name = "email", pattern = '[\w.+-]+@[\w-]+\.[\w.-]+' },
  { name = "card", pattern = '\b(?:\d[ -]?){13,19}\b' },
  { name = "phone", pattern = '\+?\d{1,3}[ .-]?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}' },
]
"#;
    let mut t: TestApp = spawn_app("redact", extra).await;
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
    // The base config's reasoning route gains an api_key_file; a second [routes.reasoning]
    // table is not allowed, so patch the generated text.
    let bootstrap = shared_bootstrap_async().await;
    let up = FakeUpstream::start("any", Behaviour::Answer { delay: Duration::from_millis(1) }).await.unwrap();
    let topic = common::app::topic("secrets");
    let text = config_toml(&up.url(), &up.url(), &up.url(), &bootstrap, &topic, dir.path().join("spool").to_str().unwrap(), "")
        .replace("model = \"reasoning-model\"", &format!("model = \"reasoning-model\"\napi_key_file = {:?}", key_file.display().to_string()));
    let config = untaken::config::from_toml(&text).unwrap();
    assert!(!format!("{config:?}").contains("DO-NOT-LEAK"), "config debug output holds only the path");
    let app = untaken::app::start(config, None).await.unwrap();
    let mut client = MirrorClient::connect(format!("http://{}", app.grpc_addr)).await.unwrap();
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
