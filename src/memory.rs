//! The worst-case memory a config allows: every bound that holds request or
//! answer bytes, at its limit, added up. `untaken check-config` prints it, and the
//! manifest tests compare it with the container's memory limit.
//!
//! Pure: reads the config and the crate's fixed internal bounds, never measures.
//! Counted at full size: a pair holds its request and both answers (each up to
//! `server.max_body_bytes`) and its labels; a shadow call holds the rewritten
//! request it sends and the answer it reads. The queue's jobs share their request
//! with the pending pair, so they add nothing. Not counted: transient copies while
//! a record is encoded (one per thread building records: `untaken-shadow` and its
//! blocking pool), and JSON escaping of a non-JSON body, which can make its record
//! larger than the body.

use std::fmt;

use crate::config::{Config, SinkType};

/// What the process holds with no traffic: runtime, TLS, regexes, metrics,
/// librdkafka's threads and buffers (a debug build idles at 32 MiB RSS with the
/// Kafka sink; a release build at less).
pub const BASELINE_BYTES: u64 = 32 * 1024 * 1024;
/// Fixed bookkeeping per pair besides its bodies and labels (ids, routes, slice, timings).
const PAIR_OVERHEAD_BYTES: u64 = 4 * 1024;

/// One line of the ceiling: what holds memory, and how much at most.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub what: &'static str,
    /// How the bytes were counted, e.g. "10000 × 836.0 KiB".
    pub how: String,
    pub bytes: u64,
}

/// The worst case, part by part.
#[derive(Debug, Clone, PartialEq)]
pub struct Ceiling {
    pub parts: Vec<Part>,
}

impl Ceiling {
    pub fn total(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }
}

/// The worst-case memory `config` allows.
pub fn ceiling(config: &Config) -> Ceiling {
    let body = config.server.max_body_bytes as u64;
    let labels = config.server.max_labels as u64 * 2 * config.server.max_label_bytes as u64;
    let pair = 3 * body + labels + PAIR_OVERHEAD_BYTES;
    let pending = config.pairing.max_pending as u64;
    let calls: u64 = config.routes.values().map(|r| u64::from(r.max_concurrency.unwrap_or(u32::MAX))).sum();
    let channel = crate::sidecar::finish::RECORDS_CHANNEL as u64;
    let in_flight_records = crate::sidecar::publisher::MAX_IN_FLIGHT as u64;
    let in_flight_bytes = crate::sidecar::publisher::MAX_IN_FLIGHT_BYTES as u64;
    let segment = crate::sink::spool::SEGMENT_BYTES;
    let mut parts = vec![
        Part { what: "process baseline", how: "runtime, TLS, buffers".into(), bytes: BASELINE_BYTES },
        Part {
            what: "pending pairs (pairing.max_pending)",
            how: format!("{pending} × {} (3 bodies of max_body_bytes, labels)", human(pair)),
            bytes: pending.saturating_mul(pair),
        },
        Part {
            what: "shadow calls in flight (routes.*.max_concurrency)",
            how: format!("{calls} × 2 × {} (request sent, answer read)", human(body)),
            bytes: calls.saturating_mul(2 * body),
        },
        Part { what: "records handed to the publisher", how: format!("{channel} × {}", human(pair)), bytes: channel * pair },
        Part {
            what: "deliveries in flight",
            how: format!("at most {in_flight_records} records and {}", human(in_flight_bytes)),
            bytes: in_flight_bytes.max(pair).min(in_flight_records * pair),
        },
        Part {
            what: "spool replay",
            how: format!("one segment read and decoded: 2 × ({} + a record)", human(segment)),
            bytes: 2 * (segment + pair),
        },
    ];
    if config.sink.effective_kind() == SinkType::Kafka {
        let queue = crate::sink::kafka::LIBRDKAFKA_QUEUE_BYTES;
        parts.push(Part { what: "librdkafka queue", how: "queue.buffering.max.kbytes".into(), bytes: queue });
    }
    Ceiling { parts }
}

impl fmt::Display for Ceiling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "worst-case memory: {}", human(self.total()))?;
        for p in &self.parts {
            writeln!(f, "  {:>10}  {} ({})", human(p.bytes), p.what, p.how)?;
        }
        Ok(())
    }
}

/// Bytes in KiB, MiB or GiB with one decimal.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Parses a Kubernetes memory quantity (`256Mi`, `1Gi`, `500M`, `1048576`) into bytes.
pub fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim().trim_matches('"');
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let n: u64 = number.parse().ok()?;
    let factor: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        crate::config::from_toml(&format!(
            "{extra}\n[routes.a]\nurl = \"http://127.0.0.1:1/\"\nmodel = \"m\"\ncounterfactual = \"b\"\nmax_concurrency = 10\n\
             [routes.b]\nurl = \"http://127.0.0.1:1/\"\nmodel = \"m\"\nmax_concurrency = 6\n"
        ))
        .unwrap()
    }

    #[test]
    fn the_ceiling_adds_every_bound_at_its_limit() {
        let c = ceiling(&config("[server]\nmax_body_bytes = 1000\nmax_labels = 2\nmax_label_bytes = 10\n[pairing]\nmax_pending = 50\n"));
        let pair = 3 * 1000 + 2 * 2 * 10 + PAIR_OVERHEAD_BYTES;
        let part = |what: &str| c.parts.iter().find(|p| p.what.starts_with(what)).unwrap_or_else(|| panic!("{what}: {c:?}")).bytes;
        assert_eq!(part("pending pairs"), 50 * pair);
        assert_eq!(part("shadow calls"), 16 * 2 * 1000);
        assert_eq!(part("records handed"), crate::sidecar::finish::RECORDS_CHANNEL as u64 * pair);
        assert_eq!(part("deliveries in flight"), crate::sidecar::publisher::MAX_IN_FLIGHT as u64 * pair, "4,096 small records are under the byte window");
        assert!(c.parts.iter().all(|p| p.what != "librdkafka queue"), "the file sink has no librdkafka queue");
        assert_eq!(c.total(), c.parts.iter().map(|p| p.bytes).sum::<u64>());
    }

    #[test]
    fn ten_thousand_pending_pairs_of_a_mebibyte_do_not_fit_in_256_mib() {
        // The shipped config before this check existed.
        let c = ceiling(&config("[server]\nmax_body_bytes = 1048576\n[pairing]\nmax_pending = 10000\n"));
        assert!(c.total() > 30 * (1 << 30), "{c}");
        let printed = c.to_string();
        assert!(printed.starts_with("worst-case memory: "), "{printed}");
        assert!(printed.contains("10000 × 3.1 MiB"), "{printed}");
    }

    #[test]
    fn kubernetes_quantities() {
        assert_eq!(parse_quantity("256Mi"), Some(256 << 20));
        assert_eq!(parse_quantity("\"1Gi\""), Some(1 << 30));
        assert_eq!(parse_quantity("500M"), Some(500_000_000));
        assert_eq!(parse_quantity("1048576"), Some(1 << 20));
        assert_eq!(parse_quantity("lots"), None);
        assert_eq!(human(836 * 1024), "836.0 KiB");
    }
}
