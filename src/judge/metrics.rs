//! The judge worker's Prometheus metrics (prefix `untaken_judge_`): pairs consumed,
//! undecodable and skipped as duplicates, grades published by outcome, judge calls
//! by outcome, judge spend, consumer lag, in-flight pairs, whether consumption is
//! paused (budget spent or judge endpoint down) and the judge's circuit, and the grade producer's delivery times.
//!
//! Labels are fixed vocabularies (outcomes), never slices, models or ids.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::metrics::{Metrics as SinkMetrics, Reason};
use crate::proto::v1::GradeOutcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

pub struct JudgeMetrics {
    registry: Registry,
    pub pairs_consumed: Counter,
    pub pairs_undecodable: Counter,
    pub pairs_duplicate: Counter,
    pub grades_published: Family<Outcome, Counter>,
    pub grade_send_retries: Counter,
    pub judge_calls: Family<Outcome, Counter>,
    pub judge_call_seconds: Histogram,
    pub judge_spend_usd: Counter<f64, AtomicU64>,
    pub consumer_lag: Gauge,
    pub in_flight: Gauge,
    pub paused: Gauge,
    pub circuit_open: Gauge,
    pub circuit_opened: Counter,
    pub offsets_committed: Counter,
    pub assigned_partitions: Gauge,
    pub rebalances: Family<Reason, Counter>,
}

/// A grade outcome as a metric label: `graded`, `primary_failed`, ...
pub fn outcome_label(o: GradeOutcome) -> &'static str {
    match o {
        GradeOutcome::Unspecified => "unspecified",
        GradeOutcome::Graded => "graded",
        GradeOutcome::PrimaryFailed => "primary_failed",
        GradeOutcome::CounterfactualFailed => "counterfactual_failed",
        GradeOutcome::BothFailed => "both_failed",
        GradeOutcome::Incomplete => "incomplete",
        GradeOutcome::JudgeError => "judge_error",
        GradeOutcome::NoReference => "no_reference",
    }
}

impl JudgeMetrics {
    /// `sink` is the grade producer's metrics; its delivery series are exposed here too.
    pub fn new(sink: &SinkMetrics) -> Self {
        let mut r = Registry::with_prefix("untaken_judge");
        let m = JudgeMetrics {
            registry: Registry::default(),
            pairs_consumed: Counter::default(),
            pairs_undecodable: Counter::default(),
            pairs_duplicate: Counter::default(),
            grades_published: Family::default(),
            grade_send_retries: Counter::default(),
            judge_calls: Family::default(),
            judge_call_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            judge_spend_usd: Counter::default(),
            consumer_lag: Gauge::default(),
            in_flight: Gauge::default(),
            paused: Gauge::default(),
            circuit_open: Gauge::default(),
            circuit_opened: Counter::default(),
            offsets_committed: Counter::default(),
            assigned_partitions: Gauge::default(),
            rebalances: Family::default(),
        };
        r.register("pairs_consumed", "Pair records read (from Kafka or the pairs file)", m.pairs_consumed.clone());
        r.register("pairs_undecodable", "Pair records that could not be decoded (skipped, offset committed)", m.pairs_undecodable.clone());
        r.register("pairs_duplicate", "Pairs skipped because their pair_id was graded recently", m.pairs_duplicate.clone());
        r.register("grades_published", "Grades acknowledged by the sink, by outcome", m.grades_published.clone());
        r.register("grade_send_retries", "Grade sends retried after Kafka did not acknowledge them", m.grade_send_retries.clone());
        r.register("calls", "Judge HTTP calls by outcome", m.judge_calls.clone());
        r.register("call_seconds", "Judge HTTP call latency", m.judge_call_seconds.clone());
        r.register("spend_usd", "Judge spend, in USD", m.judge_spend_usd.clone());
        r.register("consumer_lag", "Pairs in the assigned partitions not yet committed (high watermark minus committed offset, asked of the broker; counts while paused)", m.consumer_lag.clone());
        r.register("in_flight", "Pairs read whose offsets are not committed yet (at most kafka.in_flight)", m.in_flight.clone());
        r.register("paused", "1 while consumption is paused: the judge budget is spent or the judge endpoint is down", m.paused.clone());
        r.register("circuit_open", "1 while the judge endpoint is considered down (calls wait for a probe to be answered)", m.circuit_open.clone());
        r.register("circuit_opened", "Times the judge endpoint's circuit opened", m.circuit_opened.clone());
        r.register("offsets_committed", "Offset commits made", m.offsets_committed.clone());
        r.register("assigned_partitions", "Partitions of the pairs topic assigned to this worker", m.assigned_partitions.clone());
        r.register("rebalances", "Consumer group rebalances by kind", m.rebalances.clone());
        r.register("grade_delivery_seconds", "Time from send to Kafka acknowledgement of a grade", sink.kafka_delivery_seconds.clone());
        r.register("grade_delivery_errors", "Grade deliveries Kafka failed, by error", sink.kafka_delivery_errors.clone());
        crate::metrics::register_secret_series(&mut r, sink);
        JudgeMetrics { registry: r, ..m }
    }

    pub fn published(&self, outcome: GradeOutcome) {
        self.grades_published.get_or_create(&Outcome { outcome: outcome_label(outcome) }).inc();
    }

    pub fn call(&self, outcome: &'static str) {
        self.judge_calls.get_or_create(&Outcome { outcome }).inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        crate::metrics::render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_worker_series() {
        let sink = SinkMetrics::new();
        let m = JudgeMetrics::new(&sink);
        sink.secret_reloads.get_or_create(&crate::metrics::SecretOutcome { secret: "kafka", outcome: "ok" }).inc();
        m.published(GradeOutcome::CounterfactualFailed);
        m.call("malformed");
        m.judge_spend_usd.inc_by(0.25);
        let text = m.render();
        assert!(text.contains(r#"untaken_judge_grades_published_total{outcome="counterfactual_failed"} 1"#), "{text}");
        assert!(text.contains(r#"untaken_judge_calls_total{outcome="malformed"} 1"#), "{text}");
        assert!(text.contains("untaken_judge_spend_usd_total 0.25"), "{text}");
        assert!(text.contains("untaken_judge_consumer_lag 0"), "{text}");
        assert!(text.contains("untaken_judge_grade_delivery_seconds_count 0"), "{text}");
        assert!(text.contains(r#"untaken_judge_secret_reloads_total{secret="kafka",outcome="ok"} 1"#), "{text}");
    }
}
