//! `untaken report`: turns grades into per-slice estimates with honest intervals,
//! and flags the slices where the route taken gave up quality.
//!
//! Owns the pipeline: input → per-group accumulators → analysis → [`model::Report`].
//! Must never hold grades in memory: one streaming pass, memory grows with the number of
//! groups (and the set of seen `pair_id`s), never with the number of grades.
//!
//! Modules, from the pure core outwards:
//! - [`model`]: the report's struct tree and `--json` schema.
pub mod accumulate;
pub mod dimensions;
pub mod model;
pub mod stats;
pub mod render_html;

pub use model::Report;
