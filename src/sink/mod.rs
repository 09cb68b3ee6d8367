//! Where pair records go: Kafka in production, a JSON-lines file as the embedded
//! default when no brokers are configured.
//!
//! A sink only sends; it never decides what to do with a failure. The publisher
//! turns a failure into a spool write, so a sink must report every failure.

pub mod file;
pub mod kafka;
pub mod spool;

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

pub enum Sink {
    Kafka(kafka::KafkaSink),
    File(file::FileSink),
}

impl Sink {
    /// Opens the sink named by config. Does not wait for Kafka to be reachable.
    pub fn open(config: &Config, metrics: Arc<Metrics>) -> Result<Self, SinkError> {
        Ok(match config.sink.effective_kind() {
            SinkType::Kafka => Sink::Kafka(kafka::KafkaSink::new(&config.sink.kafka, metrics)?),
            SinkType::File => Sink::File(file::FileSink::open(&config.sink.file.path)?),
        })
    }

    /// The encoding records must be in for this sink (the file sink is always JSON lines).
    pub fn encoding(&self, configured: Encoding) -> Encoding {
        match self {
            Sink::Kafka(_) => configured,
            Sink::File(_) => Encoding::Json,
        }
    }

    /// Sends one record and waits for its acknowledgement (network or disk).
    pub async fn send(&self, record: &Encoded) -> Result<(), SinkError> {
        match self {
            Sink::Kafka(k) => k.send(record).await,
            Sink::File(f) => Ok(f.append(record).await?),
        }
    }

    /// Blocks until everything sent is acknowledged or `timeout` passes. Call off
    /// the async runtime (`spawn_blocking`).
    pub fn flush_blocking(&self, timeout: Duration) -> Result<(), SinkError> {
        match self {
            Sink::Kafka(k) => k.flush_blocking(timeout),
            Sink::File(f) => f.flush_blocking(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Sink::Kafka(k) => format!("kafka topic {} at {}", k.topic(), k.brokers()),
            Sink::File(f) => format!("file {}", f.path().display()),
        }
    }
}
