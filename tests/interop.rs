//! Cross-language contract: a Python router built from `proto/` alone calls the
//! running sidecar, and a Python grader reads the pairs from Kafka with `json.loads`.
//! (tests/python/run.sh installs grpcio and kafka-python into a cached venv.)

mod common;

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_router_and_grader_use_only_the_published_contract() {
    let t = common::app::spawn_app("python", |_| {}).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/run.sh");
    let (addr, bootstrap, topic) = (t.app.grpc_addr.to_string(), t.bootstrap.clone(), t.topic.clone());
    let out = tokio::task::spawn_blocking(move || Command::new("bash").args([script, &addr, &bootstrap, &topic]).output())
        .await
        .unwrap()
        .expect("bash runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python interop failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("2 pairs read and checked"), "{stdout}");
    t.app.shutdown();
    t.app.wait().await;
}
