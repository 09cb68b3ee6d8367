//! `untaken judge`: the grading half. Reads paired answers, grades each pair (blind,
//! in both orders, or against a known answer) and writes one `untaken.v1.GradeRecord`
//! per pair, from Kafka to a grades topic ([`run_kafka`]) or from a JSON-lines file
//! to another ([`run_file`]).
//!
//! Modules, from the pure core outwards:
//! - [`config`]: the worker's typed config (its own file, same conventions).
//! - [`pair`]: a pair record as the judge reads it, bodies decoded once (pure).
//! - [`features`]: request features, half summaries, answer text (pure).
//! - [`verdict`]: strict verdict parsing (pure).
//! - [`prompt`]: the versioned pairwise prompt (pure).
//! - [`reference`](mod@reference): matching an answer against a known answer (pure).
//! - [`grade`]: outcome, score and encoding of a grade (pure).
//! - [`offsets`]: which offsets may be committed (pure).
//! - [`dedup`]: recently graded pair ids, bounded (pure).
//! - [`breaker`]: the judge endpoint's circuit breaker (outage or bad pair).
//! - [`budget`]: judge call admission: rate, concurrency, spend per window.
//! - [`client`]: the judge's HTTP calls with bounded retries.
//! - [`grader`]: one pair in, one grade out.
//! - [`worker`]: the Kafka consumer group loop.
//! - [`metrics`]: the worker's Prometheus series.
//! - [`fake`]: a fake judge endpoint for tests, the benchmark and demos.

pub mod breaker;
pub mod budget;
pub mod client;
pub mod config;
pub mod dedup;
pub mod fake;
pub mod features;
pub mod grade;
pub mod grader;
pub mod metrics;
pub mod offsets;
pub mod pair;
pub mod prompt;
pub mod reference;
pub mod verdict;
pub mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio_util::sync::CancellationToken;

use self::config::JudgeConfig;
use self::grade::Origin;
use self::grader::Grader;
use self::metrics::{outcome_label, JudgeMetrics};
use self::pair::Pair;
use crate::config::ConfigError;
use crate::proto::v1::PairRecord;

pub use self::worker::WorkerSummary;

/// Why the judge could not run (per-pair problems are grades or counters, not errors).
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kafka: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error("admin listener {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a pair record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a protobuf PairRecord: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// Only the kind of error and where: serde's own message can quote the record's
    /// text (`invalid type: string "…"`), and logs never carry prompt or answer text.
    #[error("not a JSON PairRecord: {:?} error at line {}, column {}", .0.classify(), .0.line(), .0.column())]
    Json(#[from] serde_json::Error),
}

/// Decodes a pair record: protobuf when the `content-type` header says so, else the
/// proto3 JSON mapping (the sidecar's default, and what records without headers are).
pub fn decode_pair(payload: &[u8], content_type: Option<&str>) -> Result<Pair, DecodeError> {
    match content_type {
        Some(ct) if ct.starts_with("application/x-protobuf") => Ok(PairRecord::decode(payload)?.into()),
        _ => match pair::from_json(payload) {
            Some(pair) => Ok(pair),
            None => Ok(serde_json::from_slice::<PairRecord>(payload)?.into()),
        },
    }
}

/// What a file run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileSummary {
    /// Non-blank lines read.
    pub pairs_read: u64,
    pub grades_written: u64,
    /// Lines that were not a pair record (skipped, counted, logged by line number).
    pub undecodable: u64,
    /// Pairs whose pair_id appeared earlier in the file (graded once).
    pub duplicates: u64,
    /// Grades by outcome label (`graded`, `primary_failed`, ...).
    pub outcomes: BTreeMap<String, u64>,
}

/// Grades every pair of a JSON-lines file of `PairRecord`s into a JSON-lines file of
/// `GradeRecord`s (created or truncated), in input order, with the judge's limits.
/// Streams: reads ahead at most `limits.max_concurrency / 2` pairs.
/// No Kafka: the embedded default, used by the demo and by teams trying untaken out.
pub async fn run_file(config: &JudgeConfig, pairs: &Path, grades: &Path) -> Result<FileSummary, JudgeError> {
    let metrics = Arc::new(JudgeMetrics::new(&crate::metrics::Metrics::new()));
    let grader = Grader::new(config, metrics.clone())?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| JudgeError::Io { path, source }
    };
    let input = tokio::fs::File::open(pairs).await.map_err(io(pairs))?;
    let output = tokio::fs::File::create(grades).await.map_err(io(grades))?;
    let mut out = BufWriter::new(output);
    let mut lines = BufReader::new(input).lines();
    let mut summary = FileSummary::default();
    let mut seen = dedup::RecentIds::new(config.kafka.dedup_capacity);
    let mut line_no = 0u64;
    // Streamed: at most `window` pairs are held (read and not yet written), so the
    // file may be larger than memory, or a pipe still being written.
    let window = (config.limits.max_concurrency as usize / 2).max(1);
    let grader = &grader;
    let mut graded = futures::stream::FuturesOrdered::new();
    let mut eof = false;
    loop {
        // Reading and grading go on together: a pipe may be slow to give its next line.
        // `next_line` is cancellation safe.
        tokio::select! {
            biased;
            Some(g) = graded.next(), if !graded.is_empty() => {
                let mut line = grade::encode(&g, crate::config::Encoding::Json).payload;
                line.push(b'\n');
                out.write_all(&line).await.map_err(io(grades))?;
                summary.grades_written += 1;
                metrics.published(g.outcome());
                *summary.outcomes.entry(outcome_label(g.outcome()).to_string()).or_default() += 1;
                if graded.is_empty() {
                    // Caught up with the input: make the grades visible.
                    out.flush().await.map_err(io(grades))?;
                }
            }
            line = lines.next_line(), if !eof && graded.len() < window => {
                let Some(line) = line.map_err(io(pairs))? else {
                    eof = true;
                    continue;
                };
                line_no += 1;
                if line.trim().is_empty() {
                    continue;
                }
                summary.pairs_read += 1;
                metrics.pairs_consumed.inc();
                match decode_pair(line.as_bytes(), None) {
                    Ok(pair) if !seen.insert(&pair.record.pair_id) => summary.duplicates += 1,
                    Ok(pair) => {
                        let origin = Origin { topic: String::new(), partition: 0, offset: line_no as i64 };
                        graded.push_back(async move { grader.grade(pair, &origin).await });
                    }
                    Err(e) => {
                        summary.undecodable += 1;
                        metrics.pairs_undecodable.inc();
                        tracing::warn!(file = %pairs.display(), line = line_no, error = %e, "undecodable pair record skipped");
                    }
                }
            }
            else => break,
        }
    }
    out.flush().await.map_err(io(grades))?;
    out.into_inner().sync_all().await.map_err(io(grades))?;
    Ok(summary)
}

/// The worker as the admin port sees it.
struct AdminView {
    ready: Arc<AtomicBool>,
    metrics: Arc<JudgeMetrics>,
}

impl crate::admin::Admin for AdminView {
    /// Ready only while consuming: started, not draining, with at least one partition
    /// of the pairs topic assigned (a replica beyond the partition count never is),
    /// and the judge endpoint up.
    fn readiness(&self) -> Result<(), &'static str> {
        if !self.ready.load(Ordering::SeqCst) {
            return Err("not consuming (starting, or draining)");
        }
        if self.metrics.assigned_partitions.get() <= 0 {
            return Err("no partition of the pairs topic assigned");
        }
        if self.metrics.circuit_open.get() > 0 {
            return Err("judge endpoint down (circuit open): consumption paused");
        }
        Ok(())
    }
    fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}

/// Runs the Kafka worker and its admin port (`/live`, `/ready`, `/metrics` on
/// `server.admin_listen`) until `stop` is cancelled, then drains (see [`worker::run`]).
pub async fn run_kafka(config: &JudgeConfig, stop: CancellationToken) -> Result<WorkerSummary, JudgeError> {
    check_brokers(config)?;
    let addr = config.server.admin_listen.clone();
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|source| JudgeError::Bind { addr: addr.clone(), source })?;
    run_kafka_on(config, listener, stop).await
}

/// [`run_kafka`] with the admin port served on `listener`, already bound
/// (`server.admin_listen` is not used): tests bind 127.0.0.1:0 and read the port
/// from the listener instead of probing for a free one.
pub async fn run_kafka_on(config: &JudgeConfig, listener: tokio::net::TcpListener, stop: CancellationToken) -> Result<WorkerSummary, JudgeError> {
    check_brokers(config)?;
    let sink_metrics = Arc::new(crate::metrics::Metrics::new());
    let metrics = Arc::new(JudgeMetrics::new(&sink_metrics));
    let ready = Arc::new(AtomicBool::new(false));
    let admin_stop = CancellationToken::new();
    let view = Arc::new(AdminView { ready: ready.clone(), metrics: metrics.clone() });
    let admin = tokio::spawn(crate::admin::serve(listener, view, admin_stop.clone().cancelled_owned()));
    let result = worker::run(config, metrics, sink_metrics, stop, ready).await;
    admin_stop.cancel();
    let _ = admin.await;
    result
}

/// The Kafka worker needs `kafka.brokers`; without it the error says what to set.
fn check_brokers(config: &JudgeConfig) -> Result<(), JudgeError> {
    if !config.has_brokers() {
        return Err(ConfigError::new("kafka.brokers", "required to read pairs from Kafka (or pass --pairs and --grades)").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::PairKind;

    #[test]
    fn pair_records_decode_by_content_type_with_json_as_the_default() {
        let pair = PairRecord { pair_id: "p".into(), kind: PairKind::Control as i32, ..Default::default() };
        let json = serde_json::to_vec(&pair).unwrap();
        assert_eq!(decode_pair(&json, Some("application/json")).unwrap().record, pair);
        assert_eq!(decode_pair(&json, None).unwrap().record, pair, "no header: JSON");
        let proto = pair.encode_to_vec();
        assert_eq!(decode_pair(&proto, Some("application/x-protobuf")).unwrap().record, pair);
        assert!(matches!(decode_pair(&proto, None), Err(DecodeError::Json(_))));
        let quoting = br#"{"pair_id":"p","primary":"SECRET ANSWER TEXT from the model"}"#;
        let e = decode_pair(quoting, Some("application/json")).unwrap_err().to_string();
        assert!(!e.contains("SECRET"), "the error names where, never what: {e}");
        assert!(e.contains("line 1, column"), "{e}");
        assert!(matches!(decode_pair(b"\xff\xff", Some("application/x-protobuf")), Err(DecodeError::Protobuf(_))));
        let old: PairRecord = serde_json::from_str(r#"{"pair_id":"old"}"#).unwrap();
        assert_eq!(old.kind(), PairKind::Pair, "records from before `kind` decode as PAIR");
    }

    #[test]
    fn json_pairs_from_a_newer_sidecar_with_unknown_fields_decode_with_nothing_lost() {
        let pair = PairRecord {
            pair_id: "p".into(),
            request_id: "r".into(),
            slice: "s".into(),
            sampling_rate: 0.25,
            primary: Some(crate::proto::v1::AnswerRecord { status_code: 200, latency_ms: 12.5, ..Default::default() }),
            ..Default::default()
        };
        let mut json: serde_json::Value = serde_json::to_value(&pair).unwrap();
        json["added_by_a_newer_sidecar"] = serde_json::json!({"nested": [1, 2]});
        json["primary"]["another_new_field"] = serde_json::json!("x");
        let payload = serde_json::to_vec(&json).unwrap();
        let decoded = decode_pair(&payload, Some("application/json")).expect("unknown fields are ignored");
        assert_eq!(decoded.record, pair, "every known field kept");
        // Known fields are still checked: a wrong type is an error, not ignored.
        assert!(decode_pair(br#"{"pair_id": 42, "newer": 1}"#, None).is_err());
    }
}
