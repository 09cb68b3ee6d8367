//! Secrets rotating under a running sidecar the way Kubernetes updates a mounted
//! Secret (a new directory, then an atomic rename of the `..data` link): the gRPC
//! bearer token, a route's API key, and Kafka's SASL password file. TLS rotation is
//! in tests/tls.rs.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::app::{metric, metrics, mirror_req, primary_answer, spawn_app, spawn_app_with, wait_metric, wait_metric_at_least};
use common::kafka::{consume_async, shared_bootstrap_async};
use tonic::Code;
use untaken::simulate::SecretVolume;

fn with_token(id: &str, token: &str) -> tonic::Request<untaken::proto::v1::MirrorRequest> {
    let mut req = tonic::Request::new(mirror_req(id, "fast", Some(primary_answer("p"))));
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// The token is swapped with no overlap: the new one works from the next poll and the
/// old one is refused. An empty or non-text token file is rejected, counted, and the
/// token in force keeps working, on the connection established at start, until a
/// valid file replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_is_accepted_and_the_old_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let volume = SecretVolume::new(dir.path());
    volume.update(&[("token", b"first-token\n")]);
    let mut t = spawn_app("token-rotation", |c| {
        c.server.auth_token_file = Some(volume.path("token"));
        c.server.secret_poll_interval = Duration::from_millis(100);
    })
    .await;
    let ok = r#"untaken_secret_reloads_total{secret="server.auth_token_file",outcome="ok"}"#;
    let rejected = r#"untaken_secret_reloads_total{secret="server.auth_token_file",outcome="rejected"}"#;
    assert!(t.client.mirror(with_token("t-1", "first-token")).await.is_ok());

    volume.update(&[("token", b"second-token\n")]);
    wait_metric(&t.app, ok, 1.0).await;
    let old = t.client.mirror(with_token("t-2", "first-token")).await.unwrap_err();
    assert_eq!(old.code(), Code::Unauthenticated, "the rotated-out token is refused: {old:?}");
    assert!(t.client.mirror(with_token("t-3", "second-token")).await.is_ok(), "the new token is accepted");

    for (i, broken) in [&b"  \n"[..], &b"\xff\xfe not text"[..]].into_iter().enumerate() {
        volume.update(&[("token", broken)]);
        wait_metric(&t.app, rejected, (i + 1) as f64).await;
        let id = format!("t-kept-{i}");
        assert!(t.client.mirror(with_token(&id, "second-token")).await.is_ok(), "a broken token file leaves the token in force");
    }
    let stuck = r#"untaken_secret_file_rejected{secret="server.auth_token_file"}"#;
    assert_eq!(metric(&metrics(&t.app).await, stuck), 1.0, "the rejection stays visible until fixed");
    volume.update(&[("token", b"third-token")]);
    wait_metric(&t.app, ok, 2.0).await;
    assert_eq!(metric(&metrics(&t.app).await, stuck), 0.0);
    assert!(t.client.mirror(with_token("t-4", "third-token")).await.is_ok(), "a fixed token file is taken");
    t.app.shutdown();
    t.app.wait().await;
}

/// A route's API key file rotates: the next shadow call carries the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_route_key_is_sent_on_the_next_shadow_call() {
    let dir = tempfile::tempdir().unwrap();
    let volume = SecretVolume::new(dir.path());
    volume.update(&[("api-key", b"sk-first\n")]);
    let bootstrap = shared_bootstrap_async().await;
    let mut t = spawn_app_with(
        "route-key-rotation",
        |c| {
            c.server.secret_poll_interval = Duration::from_millis(100);
            c.routes.get_mut("reasoning").expect("route reasoning").api_key_file = Some(volume.path("api-key"));
        },
        &bootstrap,
    )
    .await;
    // `fast` is shadowed to `reasoning`; the key is the one in force when the call is made.
    let shadow_key = |n| shadow_authorization(&t.reasoning, n);
    t.client.mirror(mirror_req("k-1", "fast", Some(primary_answer("p")))).await.unwrap();
    assert_eq!(shadow_key(1).await, "Bearer sk-first");

    volume.update(&[("api-key", b"sk-second\n")]);
    wait_metric(&t.app, r#"untaken_secret_reloads_total{secret="routes.api_key_file",outcome="ok"}"#, 1.0).await;
    t.client.mirror(mirror_req("k-2", "fast", Some(primary_answer("p")))).await.unwrap();
    assert_eq!(shadow_key(2).await, "Bearer sk-second");

    volume.update(&[("api-key", b"")]);
    wait_metric(&t.app, r#"untaken_secret_reloads_total{secret="routes.api_key_file",outcome="rejected"}"#, 1.0).await;
    t.client.mirror(mirror_req("k-3", "fast", Some(primary_answer("p")))).await.unwrap();
    assert_eq!(shadow_key(3).await, "Bearer sk-second", "an empty key file leaves the key in force");
    t.app.shutdown();
    t.app.wait().await;
}

/// The `authorization` header of the `n`th call `upstream` received (waits for it).
async fn shadow_authorization(upstream: &untaken::simulate::FakeUpstream, n: usize) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = upstream.seen();
        if seen.len() >= n {
            return seen[n - 1].headers.get("authorization").cloned().unwrap_or_default();
        }
        assert!(std::time::Instant::now() < deadline, "shadow call {n} never reached the upstream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `Mirror` calls with ids `kr-{range}`, each sampled and complete, `gap` apart.
async fn send(mut client: untaken::proto::v1::mirror_client::MirrorClient<tonic::transport::Channel>, ids: std::ops::Range<usize>, gap: Duration) {
    for i in ids {
        let r = client.mirror(mirror_req(&format!("kr-{i}"), "fast", Some(primary_answer("p")))).await.unwrap();
        assert!(r.into_inner().sampled);
        tokio::time::sleep(gap).await;
    }
}

/// Kafka's secret files rotate while records flow. Each valid version builds a new
/// producer that takes every record from then on (shown by rotating to a
/// `security.protocol` that cannot reach the broker: records then fall back to the
/// spool), the replaced one is flushed, not purged, a version librdkafka refuses is
/// rejected and counted, and every record reaches the topic exactly once. The test
/// broker has no SASL listener, so the password itself is not checked by a login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_kafka_secret_files_rebuild_the_producer_without_losing_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let volume = SecretVolume::new(dir.path());
    let rotate = |password: &str, protocol: &str| volume.update(&[("password", password.as_bytes()), ("protocol", protocol.as_bytes())]);
    rotate("first-password", "plaintext");
    let bootstrap = shared_bootstrap_async().await;
    let t = spawn_app_with(
        "kafka-rotation",
        |c| {
            c.server.secret_poll_interval = Duration::from_millis(100);
            c.sink.kafka.sasl_password_file = Some(volume.path("password"));
            c.sink.kafka.librdkafka_files.insert("security.protocol".into(), volume.path("protocol"));
        },
        &bootstrap,
    )
    .await;
    let ok = r#"untaken_secret_reloads_total{secret="sink.kafka",outcome="ok"}"#;
    let rejected = r#"untaken_secret_reloads_total{secret="sink.kafka",outcome="rejected"}"#;
    let (published, spooled) = ("untaken_pairs_published_total", "untaken_pairs_spooled_total");

    // A new password while records flow: nothing is lost, and nothing needs the spool.
    let flow = tokio::spawn(send(t.client.clone(), 0..200, Duration::from_millis(5)));
    wait_metric_at_least(&t.app, published, 50.0).await;
    rotate("second-password", "plaintext");
    wait_metric(&t.app, ok, 1.0).await;
    let at_rotation = metric(&metrics(&t.app).await, published);
    flow.await.unwrap();
    wait_metric_at_least(&t.app, published, 200.0).await;
    assert!(at_rotation < 200.0, "records still flowed after the rotation ({at_rotation} before it)");
    assert_eq!(metric(&metrics(&t.app).await, spooled), 0.0, "the replaced producer was flushed, not purged");

    // A producer that cannot reach the broker takes the next records: they go to the spool.
    rotate("second-password", "ssl");
    wait_metric(&t.app, ok, 2.0).await;
    send(t.client.clone(), 200..220, Duration::ZERO).await;
    wait_metric_at_least(&t.app, spooled, 1.0).await;

    // A value librdkafka refuses: rejected, and the producer in force stays.
    rotate("third-password", "carrier-pigeon");
    wait_metric(&t.app, rejected, 1.0).await;

    // Back to a working protocol: the spooled records are replayed, new ones delivered.
    rotate("third-password", "plaintext");
    wait_metric(&t.app, ok, 3.0).await;
    send(t.client.clone(), 220..240, Duration::ZERO).await;

    let got = consume_async(&t.bootstrap, &t.topic, 240, Duration::from_secs(90)).await;
    let ids: HashSet<String> = got
        .iter()
        .map(|c| serde_json::from_slice::<serde_json::Value>(&c.payload).unwrap()["request_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!((got.len(), ids.len()), (240, 240), "every record exactly once");
    let m = metrics(&t.app).await;
    assert_eq!(metric(&m, rejected), 1.0, "{m}");
    t.app.shutdown();
    t.app.wait().await;
}

/// Logs never contain a secret: the tokens in force and rotated in, the Kafka
/// password, and the value librdkafka refused in a rotated file appear nowhere in
/// the log (the sidecar's or librdkafka's), while each rejection is logged, naming
/// the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_name_each_rejected_secret_and_never_contain_a_secret_value() {
    let log = common::logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let volume = SecretVolume::new(dir.path());
    volume.update(&[("token", b"zq-token-one\n"), ("password", b"zq-password-one"), ("protocol", b"plaintext")]);
    let bootstrap = shared_bootstrap_async().await;
    let mut t = spawn_app_with(
        "secret-logs",
        |c| {
            c.server.auth_token_file = Some(volume.path("token"));
            c.server.secret_poll_interval = Duration::from_millis(100);
            c.sink.kafka.sasl_password_file = Some(volume.path("password"));
            c.sink.kafka.librdkafka_files.insert("security.protocol".into(), volume.path("protocol"));
        },
        &bootstrap,
    )
    .await;
    assert!(t.client.mirror(with_token("l-1", "zq-token-one")).await.is_ok());
    let refused = t.client.mirror(with_token("l-2", "zq-token-wrong")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // A token rotated in, then a token file that is not text: rejected.
    volume.update(&[("token", b"zq-token-two\n"), ("password", b"zq-password-one"), ("protocol", b"plaintext")]);
    wait_metric(&t.app, r#"untaken_secret_reloads_total{secret="server.auth_token_file",outcome="ok"}"#, 1.0).await;
    volume.update(&[("token", b"\xff\xfe zq-token-broken"), ("password", b"zq-password-one"), ("protocol", b"plaintext")]);
    wait_metric(&t.app, r#"untaken_secret_reloads_total{secret="server.auth_token_file",outcome="rejected"}"#, 1.0).await;
    // A new password with a protocol librdkafka refuses: rejected.
    volume.update(&[("token", b"zq-token-two\n"), ("password", b"zq-password-two"), ("protocol", b"carrier-pigeon")]);
    wait_metric(&t.app, r#"untaken_secret_reloads_total{secret="sink.kafka",outcome="rejected"}"#, 1.0).await;
    assert!(t.client.mirror(with_token("l-3", "zq-token-two")).await.is_ok());
    t.app.shutdown();
    t.app.wait().await;

    let text = log.text();
    let rejections: Vec<&str> = text.lines().filter(|l| l.contains("new secret rejected")).collect();
    for secret in ["server.auth_token_file", "sink.kafka"] {
        assert!(
            rejections.iter().any(|l| l.contains(&format!("secret=\"{secret}\""))),
            "the rejection of {secret} is logged, naming it; rejections logged:\n{}",
            rejections.join("\n")
        );
    }
    for value in ["zq-token-one", "zq-token-two", "zq-token-wrong", "zq-token-broken", "zq-password-one", "zq-password-two", "carrier-pigeon"] {
        let leaks: Vec<&str> = text.lines().filter(|l| l.contains(value)).collect();
        assert!(leaks.is_empty(), "`{value}` is in the log:\n{}", leaks.join("\n"));
    }
}
