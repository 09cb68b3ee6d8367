//! untaken: a gRPC sidecar that recovers the counterfactual an LLM model router erases.
//!
//! The router calls `Mirror` for each request; untaken hash-samples a fraction,
//! sends the sampled request to the route the router did not take, pairs both
//! answers and publishes the pair to Kafka for an LLM judge to grade.
//!
//! Modules (every one in the tree), from the pure core outwards:
//! - [`config`]: typed config, defaults, validation naming the bad key.
//! - [`sampling`]: the deterministic sha256 sampling decision and its rules.
//! - [`routes`]: the route catalog and the counterfactual of each route.
//! - [`usage`]: token usage, tool calls and cost read from an answer.
//! - [`redact`]: the redaction rules applied to bodies before they leave the process.
//! - [`record`]: builds and encodes the `PairRecord` (pure).
//! - [`memory`]: the worst-case memory a config allows (pure).
//! - [`effective_config`]: `check-config --effective-json`, the config as it will run (defaults
//!   applied, durations in seconds, secrets as references only) for deploy/check_manifests.py.
//! - [`sidecar`]: the request path: `validate`, `engine` (Mirror/Complete), `admission`,
//!   `dispatch` (shadow calls), `pairing` (join table), `expiry`, `finish` (record
//!   building), `publisher` (delivery, spool, replay).
//! - [`upstream`]: the OpenAI-compatible HTTP client for shadow calls.
//! - [`sink`]: the [`sink::Sink`] trait and its Kafka (with its own delivery-report thread) and file implementations; the disk spool.
//! - [`server`]: the gRPC edge (`Mirror`, health, reflection, auth, TLS).
//! - [`admin`]: `/live`, `/ready`, `/metrics`; [`metrics`]: the Prometheus registry.
//! - [`app`]: wires it all, reloads the config, and drains on shutdown (`app::shutdown`).
//! - [`supervise`], [`log_limit`]: background tasks that cannot die silently, and
//!   log lines that repeat per record, at most one a second.
//! - [`librdkafka_log`]: librdkafka's own log and error lines, one per severity per 10 s.
//! - [`judge`]: `untaken judge`, the grading worker (pairs in, `GradeRecord`s out).
//! - [`secrets`]: secret files re-read when they rotate (`SecretWatch`, shared by both roles): the
//!   sidecar's token, TLS and Kafka/route files, the judge's API key and Kafka files.
//! - [`report`]: `untaken report`: grades → per-slice statistics and regression flags.
//! - [`demo`], [`simulate`]: `untaken demo` and the fake peers (OpenAI upstreams) it and
//!   the tests use.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod demo;
pub mod effective_config;
pub mod http_client;
pub mod log_limit;
pub mod judge;
pub mod librdkafka_log;
pub mod memory;
pub mod metrics;
pub mod record;
pub mod redact;
pub mod report;
pub mod routes;
pub mod sampling;
pub mod secrets;
pub mod server;
pub mod sidecar;
pub mod simulate;
pub mod supervise;
pub mod sink;
pub mod upstream;
pub mod usage;

/// Bodies up to this size are rewritten, redacted and encoded on the shadow
/// pipeline's thread (microseconds); larger ones on the blocking pool, so no other
/// pair's shadow call or delivery waits behind them.
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
