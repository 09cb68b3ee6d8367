//! Reading grades: JSON lines from a file or stdin, or a Kafka topic read up to the high
//! watermarks seen at start. Deduplicates on `pair_id`, counts malformed records.
//!
//! Owns: decoding (JSON lines; Kafka by `content-type` header, protobuf or JSON), the
//! `pair_id` set, the input counters. Must never hold a grade after handing it to the
//! accumulator, never stop on a malformed record, and never log record content.
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::accumulate::Accumulator;
use super::model::{InputSummary, MalformedRecord};
use crate::proto::v1::GradeRecord;

/// How many malformed records are quoted (by position and error) in the report.
pub const MALFORMED_EXAMPLES: usize = 5;

/// Where the grades come from.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // built once per report; boxing would only cost callers a Box::new
pub enum Source {
    /// A JSON-lines file.
    File(PathBuf),
    /// JSON lines on standard input.
    Stdin,
    /// A Kafka topic.
    Kafka(KafkaSource),
}

impl Source {
    /// For the report header: `file grades.jsonl`, `stdin`, `kafka untaken.grades`.
    pub fn describe(&self) -> String {
        match self {
            Source::File(p) => format!("file {}", p.display()),
            Source::Stdin => "stdin".to_string(),
            Source::Kafka(k) => format!("kafka topic {} at {}", k.topic, k.kafka.brokers),
        }
    }
}

/// Where to start reading each partition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KafkaStart {
    /// The low watermark.
    Beginning,
    /// This offset in every partition (or the low watermark when that is later).
    Offset(i64),
    /// The first record with a timestamp at or after this time.
    Since(SystemTime),
}

/// A grades topic to read once, up to the high watermarks seen at start.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    pub topic: String,
    pub start: KafkaStart,
    /// Records with a later timestamp are skipped.
    pub until: Option<SystemTime>,
    /// Brokers, secrets and librdkafka passthrough, as the sidecar's `[sink.kafka]`.
    pub kafka: crate::config::KafkaConfig,
    /// How long the brokers may stay silent (metadata, watermarks, no new record) before giving up.
    pub timeout: Duration,
}

/// Why the grades could not be read (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot read {what}: {source}")]
    Read { what: String, source: std::io::Error },
    #[error("kafka: {0}")]
    Kafka(String),
}

/// Deduplication and input counters, fed record by record.
#[derive(Debug, Default)]
pub struct Ingest {
    /// 128-bit keys of the `pair_id`s seen (a UUID's bits, else a 128-bit hash): 16 bytes a
    /// grade. foldhash: the keys are random already, SipHash's DoS guard buys nothing here.
    seen: HashSet<u128, foldhash::fast::RandomState>,
    pub summary: InputSummary,
}

fn pair_key(pair_id: &str) -> u128 {
    if let Ok(u) = uuid::Uuid::try_parse(pair_id) {
        return u.as_u128();
    }
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        pair_id.hash(&mut h);
        h.finish() as u128
    };
    (half(1) << 64) | half(2)
}

impl Ingest {
    /// Counts one record and hands it to `acc` unless it is malformed or a duplicate.
    /// `position` is only evaluated for malformed records.
    pub fn offer(&mut self, decoded: Result<GradeRecord, String>, position: impl FnOnce() -> String, acc: &mut Accumulator) {
        self.summary.records_read += 1;
        match decoded {
            Err(error) => {
                self.summary.malformed += 1;
                if self.summary.malformed_examples.len() < MALFORMED_EXAMPLES {
                    self.summary.malformed_examples.push(MalformedRecord { position: position(), error });
                }
            }
            Ok(grade) => {
                if !grade.pair_id.is_empty() && !self.seen.insert(pair_key(&grade.pair_id)) {
                    self.summary.duplicates += 1;
                    return;
                }
                self.summary.grades += 1;
                acc.add(&grade);
            }
        }
    }
}

/// A JSON grade (proto3 JSON mapping): the fast decoder, falling back to pbjson's.
pub fn decode_json(bytes: &[u8]) -> Result<GradeRecord, String> {
    super::grade_json::decode(bytes)
}

/// A protobuf-encoded grade.
pub fn decode_protobuf(bytes: &[u8]) -> Result<GradeRecord, String> {
    GradeRecord::decode(bytes).map_err(|e| e.to_string())
}

/// Reads JSON lines until EOF. Blank lines are skipped; a line that is not UTF-8 or not a
/// grade is counted as malformed. Only an I/O error stops the reading.
pub fn read_lines<R: BufRead>(mut reader: R, what: &str, ingest: &mut Ingest, acc: &mut Accumulator) -> Result<(), InputError> {
    let mut line = Vec::with_capacity(4096);
    let mut number = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(|source| InputError::Read { what: what.to_string(), source })?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        ingest.offer(decode_json(text), || format!("line {number}"), acc);
    }
}

/// Reads `source` once: every partition from its start offset up to the high watermark
/// seen at start, then stops. Blocks; fails when the brokers stay silent for `timeout`.
pub fn read_kafka(source: &KafkaSource, ingest: &mut Ingest, acc: &mut Accumulator) -> Result<(), InputError> {
    let err = |what: &str, e: &dyn std::fmt::Display| InputError::Kafka(format!("{what}: {e}"));
    let consumer: BaseConsumer = consumer_config(&source.kafka)?.create().map_err(|e| err("cannot create consumer", &e))?;
    let topic = source.topic.as_str();
    let md = consumer.fetch_metadata(Some(topic), source.timeout).map_err(|e| err(&format!("brokers {} unreachable", source.kafka.brokers), &e))?;
    let partitions: Vec<i32> = match md.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => t.partitions().iter().map(|p| p.id()).collect(),
        _ => return Err(InputError::Kafka(format!("topic {topic} does not exist on {}", source.kafka.brokers))),
    };
    // (partition, next offset to read, high watermark at start)
    let mut todo: Vec<(i32, i64, i64)> = Vec::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, source.timeout).map_err(|e| err(&format!("watermarks of {topic}/{p}"), &e))?;
        let start = match source.start {
            KafkaStart::Beginning => low,
            KafkaStart::Offset(o) => o.max(low),
            KafkaStart::Since(t) => since_offset(&consumer, topic, p, t, high, source.timeout)?,
        };
        if start < high {
            todo.push((p, start, high));
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for &(p, start, _) in &todo {
        tpl.add_partition_offset(topic, p, Offset::Offset(start)).map_err(|e| err("bad offset", &e))?;
    }
    consumer.assign(&tpl).map_err(|e| err("assign", &e))?;
    let until_ms = source.until.map(system_ms);
    let mut last_progress = Instant::now();
    while todo.iter().any(|&(_, next, high)| next < high) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let Some(entry) = todo.iter_mut().find(|t| t.0 == m.partition()) else { continue };
                entry.1 = entry.1.max(m.offset() + 1);
                if m.offset() >= entry.2 {
                    continue; // written after we started: not part of this report
                }
                if let (Some(until), Some(ts)) = (until_ms, m.timestamp().to_millis()) {
                    if ts > until {
                        continue;
                    }
                }
                let payload = m.payload().unwrap_or_default();
                let protobuf = m.headers().and_then(|hs| hs.iter().find(|h| h.key.eq_ignore_ascii_case("content-type")).and_then(|h| h.value)).is_some_and(|v| v == b"application/x-protobuf");
                let decoded = if protobuf { decode_protobuf(payload) } else { decode_json(payload) };
                let (p, o) = (m.partition(), m.offset());
                ingest.offer(decoded, || format!("partition {p} offset {o}"), acc);
            }
            Some(Err(e)) => tracing::debug!(error = %e, "kafka poll error (retrying)"),
            // Idle: the fetch position moves past what is never delivered (transaction
            // markers, compacted-away offsets), so those do not leave a partition unfinished.
            None => {
                if let Ok(position) = consumer.position() {
                    for entry in todo.iter_mut() {
                        if let Some(Offset::Offset(o)) = position.find_partition(topic, entry.0).map(|e| e.offset()) {
                            entry.1 = entry.1.max(o);
                        }
                    }
                }
            }
        }
        if last_progress.elapsed() > source.timeout {
            let left: Vec<String> = todo.iter().filter(|t| t.1 < t.2).map(|t| format!("{}/{} at {} of {}", topic, t.0, t.1, t.2)).collect();
            return Err(InputError::Kafka(format!("no record for {:?}; still to read: {}", source.timeout, left.join(", "))));
        }
    }
    Ok(())
}

fn system_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The first offset of partition `p` at or after `since`; `high` when there is none.
fn since_offset(consumer: &BaseConsumer, topic: &str, p: i32, since: SystemTime, high: i64, timeout: Duration) -> Result<i64, InputError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Offset(system_ms(since))).map_err(|e| InputError::Kafka(e.to_string()))?;
    let found = consumer.offsets_for_times(tpl, timeout).map_err(|e| InputError::Kafka(format!("offsets for --since on {topic}/{p}: {e}")))?;
    Ok(match found.find_partition(topic, p).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => o,
        _ => high,
    })
}

/// A one-shot reader: no group membership, no commits (the report never moves anyone's offsets).
fn consumer_config(kafka: &crate::config::KafkaConfig) -> Result<ClientConfig, InputError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("group.id", format!("untaken-report-{}", uuid::Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("client.id", "untaken-report");
    crate::sink::kafka::apply_user_settings(&mut c, kafka).map_err(|e| InputError::Kafka(e.to_string()))?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::accumulate::AccumulatorSettings;
    use crate::report::dimensions::Dimensions;

    fn acc() -> Accumulator {
        Accumulator::new(AccumulatorSettings {
            dimensions: Dimensions { labels: vec![], eligibility_label: None, features: true },
            human_label: None,
            eligibility_label: None,
            reasoning_route: "reasoning".into(),
        })
    }

    #[test]
    fn malformed_lines_are_counted_duplicates_dropped_blank_lines_ignored() {
        let text = concat!(
            r#"{"pair_id":"0190a0b0-0000-7000-8000-000000000001","slice":"a","outcome":"GRADE_OUTCOME_GRADED","score":1}"#, "\n",
            "\n",
            "not json\n",
            r#"{"pair_id":"0190a0b0-0000-7000-8000-000000000001","slice":"a","outcome":"GRADE_OUTCOME_GRADED","score":1}"#, "\n",
            r#"{"pair_id":"p-2","slice":"b","outcome":"GRADE_OUTCOME_GRADED","score":-0.5,"kind":"PAIR_KIND_CONTROL"}"#, "\n",
            "\u{ff}\n",
        );
        let (mut ingest, mut acc) = (Ingest::default(), acc());
        read_lines(text.as_bytes(), "test", &mut ingest, &mut acc).unwrap();
        let s = &ingest.summary;
        assert_eq!((s.records_read, s.grades, s.duplicates, s.malformed), (5, 2, 1, 2));
        assert_eq!(s.malformed_examples[0].position, "line 3");
        assert_eq!(s.malformed_examples[1].position, "line 6");
        assert_eq!((acc.pair_grades, acc.control_grades), (1, 1));
    }

    #[test]
    fn pair_keys_of_uuids_and_other_ids_differ() {
        assert_ne!(pair_key("a"), pair_key("b"));
        assert_eq!(pair_key("0190a0b0-0000-7000-8000-000000000001"), 0x0190a0b0_0000_7000_8000_000000000001);
    }
}
