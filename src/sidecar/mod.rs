//! The sidecar's request path: a `Mirror` call comes in, is admitted, shadowed to the
//! route the router did not take, paired with its primary half and published.
//!
//! - [`engine`]: takes `Mirror`/`Complete` calls, decides, dispatches the shadow call.
//! - [`admission`]: the concurrency, rate and spend limits a shadow call must pass.
//! - [`pairing`]: the table joining the primary and counterfactual halves of a pair.
//! - [`publisher`]: hands encoded records to the sink, spools what it cannot deliver.
//!
//! Nothing here parses config files or binds sockets: `app` wires it, `server` and
//! `admin` expose it.

pub mod admission;
pub mod engine;
pub mod pairing;
pub mod publisher;
