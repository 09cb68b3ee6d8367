//! Prometheus metrics: what was sampled, shed, shadowed, published, spooled and lost.
//!
//! Names follow Prometheus conventions (`_total`, `_seconds`, base units). The
//! `slice` label comes from the router; to keep cardinality bounded only the first
//! [`MAX_SLICES`] distinct slices get their own series, the rest are `_other`.

use std::collections::HashSet;
use std::sync::RwLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub const MAX_SLICES: usize = 100;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    /// sampled, not_sampled, shed or rejected.
    pub decision: &'static str,
    /// Why (the MirrorResponse.reason, or the invalid field); empty when sampled.
    pub reason: &'static str,
    pub slice: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOutcome {
    pub route: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretOutcome {
    /// The config key of the secret (`server.tls`, `server.auth_token_file`, `sink.kafka`, `routes.api_key_file`;
    /// the judge worker: `judge.pairwise.api_key_file`, `kafka`).
    pub secret: &'static str,
    /// `ok`, or `rejected` (the previous version stays in force).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretLabel {
    pub secret: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Status {
    pub status: &'static str,
}

pub struct Metrics {
    registry: Registry,
    slices: RwLock<HashSet<String>>,
    pub mirror_requests: Family<MirrorLabels, Counter>,
    pub complete_requests: Family<Reason, Counter>,
    pub shadow_calls: Family<RouteOutcome, Counter>,
    pub shadow_latency: Family<RouteLabel, Histogram>,
    pub shadow_cost: Family<RouteLabel, Histogram>,
    pub shadow_cost_total: Family<RouteLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// `routes.<name>.budget_usd_per_hour`, for "spend against budget"; routes without a budget have no series.
    pub shadow_budget: Family<RouteLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub shadow_inflight: Gauge,
    pub pairs_built: Family<Status, Counter>,
    pub pairs_published: Counter,
    pub pairs_spooled: Counter,
    pub pairs_replayed: Counter,
    pub pairs_dropped: Family<Reason, Counter>,
    pub late_counterfactuals: Counter,
    pub queue_depth: Gauge,
    pub pending_pairs: Gauge,
    pub spool_bytes: Gauge,
    pub spool_records: Gauge,
    pub spool_corrupt_bytes: Counter,
    /// `spool.max_bytes`, so that "spool filling" is a ratio (0 without a spool).
    pub spool_max_bytes: Gauge,
    pub kafka_delivery_seconds: Histogram,
    pub kafka_delivery_errors: Family<Reason, Counter>,
    pub config_reloads: Family<Reason, Counter>,
    pub secret_reloads: Family<SecretOutcome, Counter>,
    /// 1 while a secret's files hold a version that was rejected (the previous one is in force).
    pub secret_rejected: Family<SecretLabel, Gauge>,
    pub lost_in_crash: Counter,
    pub task_failures: Family<TaskLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("untaken");
        let m = Metrics {
            slices: RwLock::new(HashSet::new()),
            mirror_requests: Family::default(),
            complete_requests: Family::default(),
            shadow_calls: Family::default(),
            shadow_latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.05, 2.0, 14))),
            shadow_cost: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.00001, 4.0, 12))),
            shadow_cost_total: Family::default(),
            shadow_budget: Family::default(),
            shadow_inflight: Gauge::default(),
            pairs_built: Family::default(),
            pairs_published: Counter::default(),
            pairs_spooled: Counter::default(),
            pairs_replayed: Counter::default(),
            pairs_dropped: Family::default(),
            late_counterfactuals: Counter::default(),
            queue_depth: Gauge::default(),
            pending_pairs: Gauge::default(),
            spool_bytes: Gauge::default(),
            spool_records: Gauge::default(),
            spool_corrupt_bytes: Counter::default(),
            spool_max_bytes: Gauge::default(),
            kafka_delivery_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            kafka_delivery_errors: Family::default(),
            config_reloads: Family::default(),
            secret_reloads: Family::default(),
            secret_rejected: Family::default(),
            lost_in_crash: Counter::default(),
            task_failures: Family::default(),
            registry: Registry::default(),
        };
        r.register("mirror_requests", "Mirror calls by decision, reason and slice", m.mirror_requests.clone());
        r.register("complete_requests", "Complete calls by outcome", m.complete_requests.clone());
        r.register("shadow_calls", "Shadow calls by route and outcome", m.shadow_calls.clone());
        r.register("shadow_latency_seconds", "Shadow call latency by route", m.shadow_latency.clone());
        r.register("shadow_cost_usd", "Cost of one shadow call by route, in USD", m.shadow_cost.clone());
        r.register("shadow_spend_usd", "Shadow spend by route, in USD", m.shadow_cost_total.clone());
        r.register("shadow_budget_usd_per_hour", "Shadow spend budget per rolling hour by route, in USD (routes.*.budget_usd_per_hour)", m.shadow_budget.clone());
        r.register("shadow_inflight", "Shadow calls in flight", m.shadow_inflight.clone());
        r.register("pairs_built", "Pair records built, by status", m.pairs_built.clone());
        r.register("pairs_published", "Pair records acknowledged by the sink", m.pairs_published.clone());
        r.register("pairs_spooled", "Pair records written to the disk spool", m.pairs_spooled.clone());
        r.register("pairs_replayed", "Spooled pair records replayed to the sink", m.pairs_replayed.clone());
        r.register("pairs_dropped", "Pair records lost, by reason", m.pairs_dropped.clone());
        r.register(
            "late_counterfactuals",
            "Shadow answers that arrived after their pair was published",
            m.late_counterfactuals.clone(),
        );
        r.register("queue_depth", "Shadow jobs waiting for a worker", m.queue_depth.clone());
        r.register("pending_pairs", "Pairs waiting for a half", m.pending_pairs.clone());
        r.register("spool_bytes", "Bytes in the disk spool", m.spool_bytes.clone());
        r.register("spool_records", "Records in the disk spool not yet delivered", m.spool_records.clone());
        r.register(
            "spool_corrupt_bytes",
            "Bytes of torn or corrupted spool frames skipped and deleted with their segment",
            m.spool_corrupt_bytes.clone(),
        );
        r.register("spool_max_bytes", "Capacity of the disk spool in bytes (spool.max_bytes; 0 without a spool)", m.spool_max_bytes.clone());
        r.register("kafka_delivery_seconds", "Time from send to Kafka acknowledgement", m.kafka_delivery_seconds.clone());
        r.register("kafka_delivery_errors", "Kafka delivery failures by error", m.kafka_delivery_errors.clone());
        r.register("config_reloads", "Config reloads by result", m.config_reloads.clone());
        register_secret_series(&mut r, &m);
        r.register(
            "pairs_lost_in_crash",
            "Pairs pending at the last crash (counted from the spool's journal on start)",
            m.lost_in_crash.clone(),
        );
        r.register(
            "background_task_failures",
            "Background tasks that panicked or ended before shutdown, by task (/ready is 503 after one)",
            m.task_failures.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The slice as a label value, bounded in cardinality.
    pub fn slice(&self, slice: &str) -> String {
        if self.slices.read().expect("metrics lock").contains(slice) {
            return slice.to_string();
        }
        let mut set = self.slices.write().expect("metrics lock");
        if set.contains(slice) || set.len() < MAX_SLICES {
            set.insert(slice.to_string());
            slice.to_string()
        } else {
            "_other".to_string()
        }
    }

    pub fn mirror(&self, decision: &'static str, reason: &'static str, slice: &str) {
        self.mirror_requests.get_or_create(&MirrorLabels { decision, reason, slice: self.slice(slice) }).inc();
    }

    /// Publishes the configured per-route shadow budgets (at start and after a reload;
    /// a route whose budget was removed loses its series).
    pub fn set_budgets<'a>(&self, budgets: impl IntoIterator<Item = (&'a str, Option<f64>)>) {
        self.shadow_budget.clear();
        for (route, budget) in budgets {
            if let Some(usd) = budget {
                self.shadow_budget.get_or_create(&RouteLabel { route: route.to_string() }).set(usd);
            }
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// Registers `m`'s secret reload series in `r` (the sidecar's registry, or the judge
/// worker's under its own prefix: both watch their secret files with `secrets::SecretWatch`).
pub fn register_secret_series(r: &mut Registry, m: &Metrics) {
    r.register(
        "secret_reloads",
        "Changed secret files re-read, by secret and outcome (rejected: the previous version stays in force)",
        m.secret_reloads.clone(),
    );
    r.register(
        "secret_file_rejected",
        "1 while a secret's files hold a version that was rejected and the previous one stays in force, by secret",
        m.secret_rejected.clone(),
    );
}

/// The Prometheus text exposition of a registry.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_conventional_names() {
        let m = Metrics::new();
        m.mirror("shed", "queue_full", "multi_step");
        m.pairs_published.inc();
        m.shadow_latency.get_or_create(&RouteLabel { route: "reasoning".into() }).observe(0.2);
        let text = m.render();
        assert!(text.contains(r#"untaken_mirror_requests_total{decision="shed",reason="queue_full",slice="multi_step"} 1"#), "{text}");
        assert!(text.contains("untaken_pairs_published_total 1"));
        assert!(text.contains("# TYPE untaken_shadow_latency_seconds histogram"), "{text}");
        assert!(text.contains(r#"untaken_shadow_latency_seconds_count{route="reasoning"} 1"#), "{text}");
    }

    #[test]
    fn budgets_follow_the_config() {
        let m = Metrics::new();
        m.set_budgets([("fast", Some(2.5)), ("cheap", None)]);
        let text = m.render();
        assert!(text.contains(r#"untaken_shadow_budget_usd_per_hour{route="fast"} 2.5"#), "{text}");
        assert!(!text.contains(r#"route="cheap""#), "{text}");
        m.set_budgets([("reasoning", Some(1.0))]);
        let text = m.render();
        assert!(!text.contains(r#"route="fast""#), "a removed budget keeps no series: {text}");
        assert!(text.contains(r#"untaken_shadow_budget_usd_per_hour{route="reasoning"} 1.0"#), "{text}");
    }

    #[test]
    fn slice_cardinality_is_bounded() {
        let m = Metrics::new();
        for i in 0..MAX_SLICES {
            assert_eq!(m.slice(&format!("s{i}")), format!("s{i}"));
        }
        assert_eq!(m.slice("one-too-many"), "_other");
        assert_eq!(m.slice("s3"), "s3");
    }
}
