//! Rate limits for log lines that repeat once per record: during an outage a
//! line per failed delivery or dropped pair would be thousands of lines a second,
//! burying everything else. One line per period gets through, carrying how many
//! were held back since the last one; the metrics count every event.
//!
//! Lock-free and never blocking: callable from any task on the request or
//! delivery path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one log line through per `period`.
pub struct LogLimit {
    period_ms: u64,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last line let through; 0 before the first.
    last_ms: AtomicU64,
    /// Lines held back since the last one let through.
    held_back: AtomicU64,
}

impl LogLimit {
    pub fn new(period: Duration) -> Self {
        Self { period_ms: period.as_millis() as u64, epoch: Instant::now(), last_ms: AtomicU64::new(0), held_back: AtomicU64::new(0) }
    }

    /// `Some(held_back)` when this line may be logged (with the number of lines held
    /// back since the previous one), `None` when it must be skipped.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(self.epoch.elapsed().as_millis() as u64)
    }

    fn allow_at(&self, now_ms: u64) -> Option<u64> {
        let now = now_ms.max(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.period_ms;
        if due && self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_carrying_the_count_held_back() {
        let l = LogLimit::new(Duration::from_secs(1));
        assert_eq!(l.allow_at(0), Some(0), "the first line always gets through");
        let mut through: Vec<u64> = (1..=2500).step_by(10).filter_map(|ms| l.allow_at(ms)).collect();
        // 250 events over 2.5 s: lines at 1 s and 2 s only.
        assert_eq!(through.len(), 2);
        assert_eq!(l.allow_at(2500), None, "not due again within the same period");
        through.push(l.allow_at(3001).expect("due"));
        // Every call after the first was either let through or held back and then reported.
        assert_eq!(through.iter().sum::<u64>() + through.len() as u64, 250 + 2);
    }

    #[test]
    fn concurrent_callers_let_one_line_through() {
        let l = std::sync::Arc::new(LogLimit::new(Duration::from_secs(3600)));
        let let_through: usize = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..8).map(|_| s.spawn(|| (0..1000).filter(|_| l.allow().is_some()).count())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(let_through, 1);
    }
}
