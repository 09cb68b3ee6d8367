//! Where pair records go, behind the [`Sink`] trait: Kafka in production, a JSON-lines file as the embedded
//! default when no brokers are configured.
//!
//! A sink only sends; it never decides what to do with a failure. The publisher
//! turns a failure into a spool write, so a sink must report every failure.

pub mod delivery;
pub mod file;
pub mod kafka;
pub mod spool;

use std::future::Future;
use std::time::Duration;

use crate::config::{Config, Encoding, SinkType};
use crate::metrics::Metrics;
use crate::record::Encoded;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Kafka did not acknowledge the record (broker down, timeout, queue full).
    #[error("kafka delivery failed: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
    /// A failure retrying cannot fix (record too large, topic not authorised).
    #[error("kafka rejected the record permanently: {0}")]
    Permanent(#[source] rdkafka::error::KafkaError),
    #[error("file sink: {0}")]
    Io(#[from] std::io::Error),
    #[error("sink configuration: {0}")]
    Config(String),
}

impl SinkError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SinkError::Kafka(_) => "transient",
            SinkError::Permanent(_) => "permanent",
            SinkError::Io(_) => "io",
            SinkError::Config(_) => "config",
        }
    }
}

/// Where the publisher sends records. One `send` per record; its future resolves when
/// the record is acknowledged (`Ok`), fails (`Err`: the publisher spools it, or drops
/// it counted when permanent), or never, while the sink stalls (the publisher bounds
/// how many sends wait at once and spools around a stall).
///
/// Implemented by [`KafkaSink`](kafka::KafkaSink) and [`FileSink`](file::FileSink),
/// chosen at start-up as a [`ConfiguredSink`]; the publisher's tests use a fake.
pub trait Sink: Send + Sync + 'static {
    /// Sends one record and waits for its acknowledgement (network or disk).
    fn send(&self, record: &Encoded) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Fails every send not yet acknowledged back to its caller, at once (shutdown,
    /// past the grace). A sink that acknowledges synchronously has nothing to purge.
    fn purge(&self) {}

    /// Blocks until everything sent is acknowledged or `timeout` passes. Call off
    /// the async runtime (`spawn_blocking`).
    fn flush_blocking(&self, timeout: Duration) -> Result<(), SinkError>;

    /// One line for the start-up log: where records go.
    fn describe(&self) -> String;
}

/// The sink the config names: Kafka in production, a file when no brokers are set.
pub enum ConfiguredSink {
    Kafka(kafka::KafkaSink),
    File(file::FileSink),
}

impl ConfiguredSink {
    /// Opens the sink named by config. Does not wait for Kafka to be reachable.
    pub fn open(config: &Config, metrics: Arc<Metrics>) -> Result<Self, SinkError> {
        Ok(match config.sink.effective_kind() {
            SinkType::Kafka => ConfiguredSink::Kafka(kafka::KafkaSink::new(&config.sink.kafka, metrics)?),
            SinkType::File => ConfiguredSink::File(file::FileSink::open(&config.sink.file.path)?),
        })
    }

    /// The encoding records must be in for this sink (the file sink is always JSON lines).
    pub fn encoding(&self, configured: Encoding) -> Encoding {
        match self {
            ConfiguredSink::Kafka(_) => configured,
            ConfiguredSink::File(_) => Encoding::Json,
        }
    }

    /// How long no acknowledgement may arrive while sends wait before the publisher
    /// spools new records instead: `sink.kafka.stall_timeout`; a local file never stalls.
    pub fn stall_timeout(&self, config: &Config) -> Duration {
        match self {
            ConfiguredSink::Kafka(_) => config.sink.kafka.stall_timeout,
            ConfiguredSink::File(_) => Duration::from_secs(3600),
        }
    }
}

impl Sink for ConfiguredSink {
    async fn send(&self, record: &Encoded) -> Result<(), SinkError> {
        match self {
            ConfiguredSink::Kafka(k) => k.send(record).await,
            ConfiguredSink::File(f) => f.send(record).await,
        }
    }

    fn purge(&self) {
        match self {
            ConfiguredSink::Kafka(k) => k.purge(),
            ConfiguredSink::File(f) => f.purge(),
        }
    }

    fn flush_blocking(&self, timeout: Duration) -> Result<(), SinkError> {
        match self {
            ConfiguredSink::Kafka(k) => k.flush_blocking(timeout),
            ConfiguredSink::File(f) => f.flush_blocking(timeout),
        }
    }

    fn describe(&self) -> String {
        match self {
            ConfiguredSink::Kafka(k) => k.describe(),
            ConfiguredSink::File(f) => f.describe(),
        }
    }
}
