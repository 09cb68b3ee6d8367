//! The sidecar's request path: a `Mirror` call comes in, is admitted, shadowed to the
//! route the router did not take, paired with its primary half and published.
//!
//! - [`validate`]: checks a `Mirror` request's fields; every refusal names the field.
//! - [`engine`]: the `Mirror`/`Complete` decisions on the request path, reload, drain.
//! - [`dispatch`]: runs the shadow calls the engine queued and joins their answers.
//! - [`expiry`]: publishes pairs whose other half did not arrive in time.
//! - [`finish`]: redacts, builds and encodes a finished pair off the request path.
//! - [`admission`]: the concurrency, rate and spend limits a shadow call must pass.
//! - [`pairing`]: the table joining the primary and counterfactual halves of a pair.
//! - [`publisher`]: hands encoded records to the sink, spools what it cannot deliver.
//!
//! Nothing here parses config files or binds sockets: `app` wires it, `server` and
//! `admin` expose it.

pub mod admission;
pub mod dispatch;
pub mod engine;
pub mod expiry;
pub mod finish;
pub mod pairing;
pub mod publisher;
pub mod validate;
