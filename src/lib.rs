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
//! - [`report`]: `untaken report`: grades → per-slice statistics and regression flags.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod app;
pub mod config;
pub mod demo;
pub mod engine;
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
pub mod sink;
pub mod upstream;
pub mod usage;

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
