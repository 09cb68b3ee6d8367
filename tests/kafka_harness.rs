//! Self-test of the real-Kafka harness (tests/common/kafka.rs): a dedicated
//! broker starts, records round-trip with key and headers, and they survive
//! a SIGKILL + restart on the same ports and data dir, which the fault tests
//! rely on.

mod common;

use std::time::{Duration, Instant};

use common::kafka::{self, Broker};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn assert_three(records: &[kafka::Consumed]) {
    assert_eq!(records.len(), 3, "expected 3 records, got {records:#?}");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.key.as_deref(), Some(format!("key-{i}").as_bytes()));
        assert_eq!(r.payload_str(), format!("payload-{i}"));
        assert_eq!(
            r.headers,
            vec![("trace".to_string(), format!("t{i}").into_bytes())]
        );
        assert_eq!(r.header("trace"), Some(format!("t{i}").as_bytes()));
        assert_eq!(r.partition, 0);
        assert_eq!(r.offset, i as i64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_round_trip_and_survives_sigkill() {
    let t0 = Instant::now();
    let mut broker = Broker::start_async().await;
    let bootstrap = broker.bootstrap();
    eprintln!("broker ready on {bootstrap} in {:?}", t0.elapsed());

    let topic = format!("harness-{}", uuid::Uuid::now_v7());
    kafka::create_topic_async(&bootstrap, &topic, 1).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    for i in 0..3 {
        let key = format!("key-{i}");
        let payload = format!("payload-{i}");
        let value = format!("t{i}");
        let headers = OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some(&value),
        });
        let delivery = producer
            .send(
                FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&payload)
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("delivery of record {i} failed: {e}"));
        assert_eq!((delivery.partition, delivery.offset), (0, i as i64));
    }
    drop(producer);

    let records = kafka::consume_async(&bootstrap, &topic, 3, Duration::from_secs(30)).await;
    assert_three(&records);
    assert_eq!(kafka::record_count(&bootstrap, &topic), 3);
    eprintln!("round trip done at {:?}", t0.elapsed());

    // SIGKILL, then bring it back on the same port and data dir.
    let old_pid = broker.pid().expect("running");
    broker.kill();
    assert!(!broker.is_running());
    assert!(
        kafka::consume(&bootstrap, &topic, 1, Duration::from_secs(2)).is_empty(),
        "a killed broker must not serve records"
    );
    let t_restart = Instant::now();
    broker.restart_async().await;
    assert_ne!(broker.pid(), Some(old_pid));
    assert_eq!(broker.bootstrap(), bootstrap, "restart must keep the port");
    eprintln!("restarted after SIGKILL in {:?}", t_restart.elapsed());

    let records = kafka::consume_async(&bootstrap, &topic, 3, Duration::from_secs(30)).await;
    assert_three(&records);

    // Blocking variant and clean stop + restart also work.
    let t_stop = Instant::now();
    broker.stop();
    eprintln!("clean stop took {:?}", t_stop.elapsed());
    let t_restart = Instant::now();
    broker.restart();
    eprintln!("restarted after clean stop in {:?}", t_restart.elapsed());
    assert_eq!(
        kafka::consume(&bootstrap, &topic, 3, Duration::from_secs(30)).len(),
        3
    );

    eprintln!("harness self-test total {:?}", t0.elapsed());
}

/// The per-process shared broker (or `UNTAKEN_TEST_BROKERS`) that most
/// integration tests use.
#[tokio::test]
async fn shared_broker_serves_records() {
    let bootstrap = kafka::shared_bootstrap_async().await;
    assert_eq!(
        bootstrap,
        kafka::shared_bootstrap_async().await,
        "one broker per process"
    );
    let topic = format!("harness-shared-{}", uuid::Uuid::now_v7());
    kafka::create_topic_async(&bootstrap, &topic, 3).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    for p in 0..3 {
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).partition(p).payload("x"),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("delivery failed: {e}"));
    }
    let mut records = kafka::consume_async(&bootstrap, &topic, 3, Duration::from_secs(30)).await;
    records.sort_by_key(|r| r.partition);
    let got: Vec<_> = records
        .iter()
        .map(|r| (r.partition, r.key.clone(), r.payload_str()))
        .collect();
    assert_eq!(got, vec![(0, None, "x"), (1, None, "x"), (2, None, "x")]);
}
