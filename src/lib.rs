//! untaken: a gRPC sidecar that recovers the counterfactual an LLM model router erases.
//!
//! The router calls `Mirror` for each request; untaken hash-samples a fraction,
//! sends the sampled request to the route the router did not take, pairs both
//! answers and publishes the pair to Kafka for an LLM judge to grade.
//!
//! Modules, from the pure core outwards:
//! - [`config`]: typed config, defaults, validation naming the bad key.
//! - [`sampling`]: the deterministic sha256 sampling decision and its rules.
//! - [`usage`]: token usage, tool calls and cost read from an answer.
//! - [`record`]: builds and encodes the `PairRecord` (pure).
//! - [`judge`]: `untaken judge`, the grading worker (pairs in, `GradeRecord`s out).
//! - [`memory`]: the worst-case memory a config allows (pure).
//! - [`supervise`], [`log_limit`]: background tasks that cannot die silently, and
//!   log lines that repeat per record, at most one a second.
//! - [`report`]: `untaken report`: grades → per-slice statistics and regression flags.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod app;
pub mod config;
pub mod demo;
pub mod log_limit;
pub mod engine;
pub mod judge;
pub mod librdkafka_log;
pub mod memory;
pub mod metrics;
pub mod pairing;
pub mod publisher;
pub mod record;
pub mod redact;
pub mod report;
pub mod routes;
pub mod sampling;
pub mod server;
pub mod simulate;
pub mod supervise;
pub mod sink;
pub mod upstream;
pub mod usage;

/// Bodies up to this size are rewritten, redacted and encoded on the runtime's
/// workers (microseconds); larger ones on the blocking pool, so no `Mirror` waits
/// behind them.
pub const INLINE_CPU_BYTES: usize = 64 * 1024;

/// Generated code for `proto/untaken/v1`.
pub mod proto {
    pub mod v1 {
        #![allow(clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/untaken.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/untaken.v1.serde.rs"));
    }
    /// Encoded descriptors, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/untaken_descriptor.bin"));
}
