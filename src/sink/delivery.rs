//! A Kafka producer whose delivery reports come back as futures, served by one
//! thread of ours that waits on librdkafka's event queue.
//!
//! Owns that thread and nothing else: what a report means (spool, retry, count) is
//! the caller's. It replaces rdkafka's `FutureProducer`, whose own thread polls in
//! 100 ms cycles and ends every cycle in a busy loop: rdkafka 0.39's `poll` rounds
//! the time left down to whole milliseconds, so the last millisecond of each cycle
//! is spent in zero-timeout polls. That was about 1 % of a core on an idle sidecar or
//! judge (measured in BENCHMARKS.md). Here a cycle lasts [`POLL_CYCLE`], so the same
//! rounding costs a millisecond a second at most; a report is still handed over as
//! soon as librdkafka queues it (each event is served as it arrives, not at the end
//! of a cycle).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext, PurgeConfig};
use rdkafka::ClientContext;
use tokio::sync::oneshot;

use crate::librdkafka_log::LimitedLogs;

/// How long one wait of the delivery thread may last. Bounds the busy tail of each
/// wait (under a millisecond) to a thousandth of a core, and how long a dropped
/// producer's client outlives its last handle.
pub const POLL_CYCLE: Duration = Duration::from_secs(1);

/// Completes when Kafka acknowledged the record (`Ok`) or librdkafka gave up on it
/// (`Err`, purges and timeouts included). Never hangs: a producer that is dropped
/// purges what it holds, which reports every record it had.
pub type Acked = oneshot::Receiver<Result<(), KafkaError>>;

/// A record for [`Producer::send`]: its report goes to the sender's [`Acked`].
pub type Record<'a> = BaseRecord<'a, [u8], [u8], Box<oneshot::Sender<Result<(), KafkaError>>>>;

/// Log lines (rate-limited) and delivery reports of one producer.
pub struct Reports {
    logs: LimitedLogs,
}

impl ClientContext for Reports {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.logs.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logs.error(error, reason);
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<oneshot::Sender<Result<(), KafkaError>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, acked: Self::DeliveryOpaque) {
        // The sender may have stopped waiting (a send cancelled by the drain): nothing to tell.
        let _ = acked.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

pub struct Producer {
    inner: Arc<BaseProducer<Reports>>,
    stop: Arc<AtomicBool>,
}

impl Producer {
    /// Creates the client and starts its delivery thread.
    pub fn create(config: &ClientConfig) -> KafkaResult<Self> {
        let inner: Arc<BaseProducer<Reports>> = Arc::new(config.create_with_context(Reports { logs: LimitedLogs::default() })?);
        let stop = Arc::new(AtomicBool::new(false));
        let (polled, stopping) = (inner.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-delivery".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    polled.poll(POLL_CYCLE);
                }
                // The last handle may be this one: the client is purged, its reports
                // delivered and librdkafka's threads stopped here, off the runtime.
            })
            .map_err(|e| KafkaError::ClientCreation(format!("cannot start the delivery thread: {e}")))?;
        Ok(Self { inner, stop })
    }

    /// A record whose report goes to the returned receiver.
    pub fn record<'a>(topic: &'a str) -> (Record<'a>, Acked) {
        let (tx, rx) = oneshot::channel();
        (BaseRecord::with_opaque_to(topic, Box::new(tx)), rx)
    }

    /// Enqueues without blocking; a full local queue hands the record back.
    #[allow(clippy::result_large_err)]
    pub fn send<'a>(&self, record: Record<'a>) -> Result<(), (KafkaError, Record<'a>)> {
        self.inner.send(record)
    }

    /// Fails what librdkafka holds back to its senders.
    pub fn purge(&self, what: PurgeConfig) {
        self.inner.purge(what);
    }

    /// Blocks until everything queued is acknowledged or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.inner.flush(timeout)
    }
}

impl Drop for Producer {
    /// Stops the delivery thread within [`POLL_CYCLE`]; it drops the client, which
    /// purges and reports what it still held.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable_broker() -> ClientConfig {
        let mut c = ClientConfig::new();
        // A loopback port nothing listens on: records wait in librdkafka's queue.
        c.set("bootstrap.servers", "127.0.0.1:1").set("message.timeout.ms", "60000");
        c
    }

    #[tokio::test]
    async fn reports_never_hang_and_the_thread_ends_with_its_producer() {
        let producer = Producer::create(&unreachable_broker()).expect("producer");
        // The delivery thread holds the client: it is gone once that thread let go of it.
        let client = Arc::downgrade(&producer.inner);

        // A purge fails queued records back at once.
        let (record, acked) = Producer::record("t");
        producer.send(record.key(b"k".as_slice()).payload(b"v".as_slice())).map_err(|(e, _)| e).expect("queued");
        producer.purge(PurgeConfig::default().queue().inflight());
        let report = tokio::time::timeout(Duration::from_secs(5), acked).await.expect("reported within 5 s");
        assert!(matches!(report, Ok(Err(_))), "{report:?}");

        // A dropped producer tells the sender (a purge error) rather than leave it waiting
        // on a record nobody will deliver, and its thread ends.
        let (record, acked) = Producer::record("t");
        producer.send(record.key(b"k".as_slice()).payload(b"v".as_slice())).map_err(|(e, _)| e).expect("queued");
        drop(producer);
        let report = tokio::time::timeout(Duration::from_secs(10), acked).await.expect("reported within 10 s");
        assert!(matches!(report, Ok(Err(_))), "{report:?}");
        let until = std::time::Instant::now() + POLL_CYCLE * 5;
        while client.strong_count() > 0 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(client.strong_count(), 0, "the delivery thread outlived its producer");
    }
}
