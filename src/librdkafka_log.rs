//! librdkafka's log and error callbacks, rate limited. An unreachable broker makes
//! librdkafka report every reconnect attempt, several times a second per client
//! (a log line and an error callback each time); this lets one line per severity
//! and period through, carrying how many were held back.
//!
//! Used as the client context of every producer untaken creates and inside the
//! judge's consumer context. Logs librdkafka's own text (broker addresses, error
//! codes), never record contents.

use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::ClientContext;

use crate::log_limit::LogLimit;

/// At most one line per severity (errors, warnings, notices) per period.
pub const PERIOD: Duration = Duration::from_secs(10);

/// How a librdkafka line is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
    Info,
    Debug,
}

impl Severity {
    pub fn of(level: RDKafkaLogLevel) -> Self {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => Severity::Error,
            RDKafkaLogLevel::Warning => Severity::Warning,
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => Severity::Info,
            RDKafkaLogLevel::Debug => Severity::Debug,
        }
    }
}

/// A client context whose librdkafka lines are rate limited.
pub struct LimitedLogs {
    errors: LogLimit,
    warnings: LogLimit,
    infos: LogLimit,
}

impl Default for LimitedLogs {
    fn default() -> Self {
        Self { errors: LogLimit::new(PERIOD), warnings: LogLimit::new(PERIOD), infos: LogLimit::new(PERIOD) }
    }
}

impl LimitedLogs {
    /// `Some(held_back)` when a line of this severity may be logged now (debug lines
    /// always may: they are off unless asked for).
    pub fn admit(&self, severity: Severity) -> Option<u64> {
        match severity {
            Severity::Error => self.errors.allow(),
            Severity::Warning => self.warnings.allow(),
            Severity::Info => self.infos.allow(),
            Severity::Debug => Some(0),
        }
    }

    /// librdkafka's log callback.
    pub fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let severity = Severity::of(level);
        let Some(held_back) = self.admit(severity) else { return };
        match severity {
            Severity::Error => tracing::error!(target: "librdkafka", facility, held_back, "{message}"),
            Severity::Warning => tracing::warn!(target: "librdkafka", facility, held_back, "{message}"),
            Severity::Info => tracing::info!(target: "librdkafka", facility, held_back, "{message}"),
            Severity::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    /// librdkafka's error callback (client-wide errors: brokers down, ...).
    pub fn error(&self, error: KafkaError, reason: &str) {
        if let Some(held_back) = self.admit(Severity::Error) {
            tracing::error!(target: "librdkafka", %error, held_back, "{reason}");
        }
    }
}

impl ClientContext for LimitedLogs {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        LimitedLogs::log(self, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        LimitedLogs::error(self, error, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_storm_lets_one_line_per_severity_through() {
        let logs = LimitedLogs::default();
        let through = |s| (0..1000).filter(|_| logs.admit(s).is_some()).count();
        assert_eq!(through(Severity::Error), 1);
        assert_eq!(through(Severity::Warning), 1, "its own allowance, not taken by errors");
        assert_eq!(through(Severity::Info), 1);
        assert_eq!(through(Severity::Debug), 1000, "debug lines are filtered by the log level instead");
        assert_eq!(Severity::of(RDKafkaLogLevel::Critical), Severity::Error);
        assert_eq!(Severity::of(RDKafkaLogLevel::Notice), Severity::Info);
    }
}
