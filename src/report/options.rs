//! What a report is asked for: [`ReportOptions`] (constructible from code, with defaults)
//! and the optional `report.toml` ([`ReportConfig`]) the command line reads first.
//!
//! Owns: defaults, validation naming the bad key (exit 64). Must never read grades.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use super::input::Source;
use crate::config::{ConfigError, KafkaConfig};

/// Everything `run` needs. `ReportOptions { source, ..Default::default() }` is a valid start.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Where the grades come from (default: stdin).
    pub source: Source,
    /// Labels to slice by, besides `slice` and the computed features.
    pub labels: Vec<String>,
    /// Label carrying a human verdict in [-1, 1] (counterfactual's side, like `score`).
    pub human_label: Option<String>,
    /// Label carrying a reasoning-eligibility score in [0, 1].
    pub eligibility_label: Option<String>,
    /// The route the eligibility score is about.
    pub reasoning_route: String,
    /// Slice by features computed from the request (prompt length, turns, tools).
    pub features: bool,
    /// Benjamini–Hochberg false-discovery rate.
    pub q: f64,
    /// Overall effect (points) treated as "no change" when deciding a regression is hidden.
    pub noise_band_points: f64,
    /// Groups with fewer graded pairs are shown but not tested.
    pub min_pairs: u64,
}

pub fn default_q() -> f64 {
    0.05
}
pub fn default_noise_band() -> f64 {
    1.0
}
pub fn default_min_pairs() -> u64 {
    20
}
pub fn default_reasoning_route() -> String {
    "reasoning".to_string()
}
pub fn default_features() -> bool {
    true
}
pub fn default_kafka_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            source: Source::Stdin,
            labels: Vec::new(),
            human_label: None,
            eligibility_label: None,
            reasoning_route: default_reasoning_route(),
            features: default_features(),
            q: default_q(),
            noise_band_points: default_noise_band(),
            min_pairs: default_min_pairs(),
        }
    }
}

impl ReportOptions {
    /// Checks ranges; the error names the setting (`q`, `noise_band`, ...).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.q > 0.0 && self.q < 1.0) {
            return Err(ConfigError::new("q", format!("{} is not a false-discovery rate in (0, 1)", self.q)));
        }
        if !(self.noise_band_points.is_finite() && self.noise_band_points >= 0.0) {
            return Err(ConfigError::new("noise_band", format!("{} is not a number of points ≥ 0", self.noise_band_points)));
        }
        if self.min_pairs < 2 {
            return Err(ConfigError::new("min_pairs", "must be at least 2 (an interval needs two pairs)"));
        }
        for (key, name) in self.labels.iter().map(|l| ("labels", l)).chain(self.human_label.iter().map(|l| ("human_label", l))).chain(self.eligibility_label.iter().map(|l| ("eligibility_label", l))) {
            if name.trim().is_empty() {
                return Err(ConfigError::new(key, "a label name cannot be empty"));
            }
        }
        if self.reasoning_route.trim().is_empty() {
            return Err(ConfigError::new("reasoning_route", "cannot be empty"));
        }
        if let Source::Kafka(k) = &self.source {
            if k.kafka.brokers.trim().is_empty() {
                return Err(ConfigError::new("--brokers", "cannot be empty"));
            }
            if k.topic.trim().is_empty() {
                return Err(ConfigError::new("--topic", "cannot be empty"));
            }
        }
        Ok(())
    }
}

/// `report.toml`: the dimensions and thresholds a team keeps with its eval. Flags override it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Labels to slice by (tenant, language, router_version, ...).
    pub labels: Vec<String>,
    /// Label carrying a human verdict in [-1, 1] on the pairs people labelled.
    pub human_label: Option<String>,
    /// Label carrying the router's reasoning-eligibility score in [0, 1].
    pub eligibility_label: Option<String>,
    /// Route name the eligibility score is about.
    pub reasoning_route: String,
    /// Slice by prompt length, turns and tools too.
    pub features: bool,
    /// Benjamini–Hochberg false-discovery rate across all tested groups.
    pub q: f64,
    /// Overall effect in points treated as "no change" (what the team calibrates against).
    pub noise_band: f64,
    /// Groups with fewer graded pairs are shown but not tested.
    pub min_pairs: u64,
    /// Kafka client settings for `--brokers` input.
    pub kafka: ReportKafkaConfig,
}

impl Default for ReportConfig {
    fn default() -> Self {
        let o = ReportOptions::default();
        ReportConfig {
            labels: o.labels,
            human_label: o.human_label,
            eligibility_label: o.eligibility_label,
            reasoning_route: o.reasoning_route,
            features: o.features,
            q: o.q,
            noise_band: o.noise_band_points,
            min_pairs: o.min_pairs,
            kafka: ReportKafkaConfig::default(),
        }
    }
}

/// Kafka client settings for reading grades (brokers and topic come from the flags).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReportKafkaConfig {
    /// File holding `sasl.password`.
    pub sasl_password_file: Option<PathBuf>,
    /// Environment variable holding `sasl.password`.
    pub sasl_password_env: Option<String>,
    /// Extra librdkafka settings (TLS, SASL mechanism...). Put no secret here.
    pub librdkafka: crate::config::PassThrough,
    /// librdkafka settings whose values are read from files (secrets).
    pub librdkafka_files: BTreeMap<String, PathBuf>,
    /// How long the brokers may stay silent before the report gives up (exit 1).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ReportKafkaConfig {
    fn default() -> Self {
        ReportKafkaConfig {
            sasl_password_file: None,
            sasl_password_env: None,
            librdkafka: Default::default(),
            librdkafka_files: BTreeMap::new(),
            timeout: default_kafka_timeout(),
        }
    }
}

impl ReportKafkaConfig {
    /// The sidecar's Kafka settings type, so secrets are read the same way.
    pub fn client(&self, brokers: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.to_string(),
            sasl_password_file: self.sasl_password_file.clone(),
            sasl_password_env: self.sasl_password_env.clone(),
            librdkafka: self.librdkafka.clone(),
            librdkafka_files: self.librdkafka_files.clone(),
            ..KafkaConfig::default()
        }
    }
}

impl ReportConfig {
    /// Reads a `report.toml` (every key optional).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::new("--config", format!("file {} does not exist", path.display())));
        }
        Figment::from(Serialized::defaults(ReportConfig::default())).merge(Toml::file_exact(path)).extract().map_err(crate::config::figment_error)
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Figment::from(Serialized::defaults(ReportConfig::default())).merge(Toml::string(text)).extract().map_err(crate::config::figment_error)
    }

    /// The options for `source`, validated.
    pub fn into_options(self, source: Source) -> Result<ReportOptions, ConfigError> {
        let options = ReportOptions {
            source,
            labels: self.labels,
            human_label: self.human_label,
            eligibility_label: self.eligibility_label,
            reasoning_route: self.reasoning_route,
            features: self.features,
            q: self.q,
            noise_band_points: self.noise_band,
            min_pairs: self.min_pairs,
        };
        options.validate()?;
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_key() {
        assert_eq!(ReportConfig::from_toml("qq = 1").unwrap_err().key, "qq");
        assert_eq!(ReportConfig::from_toml("q = \"x\"").unwrap_err().key, "q");
        let bad_q = ReportConfig::from_toml("q = 1.5").unwrap().into_options(Source::Stdin).unwrap_err();
        assert_eq!(bad_q.key, "q");
        let bad_band = ReportConfig::from_toml("noise_band = -1").unwrap().into_options(Source::Stdin).unwrap_err();
        assert_eq!(bad_band.key, "noise_band");
        assert_eq!(ReportConfig::from_toml("[kafka]\nfoo = 1").unwrap_err().key, "kafka.foo");
    }

    #[test]
    fn a_config_file_sets_labels_and_thresholds() {
        let o = ReportConfig::from_toml("labels = [\"tenant\"]\nq = 0.1\nnoise_band = 2\n[kafka]\ntimeout = \"5s\"").unwrap();
        assert_eq!(o.kafka.timeout, Duration::from_secs(5));
        let o = o.into_options(Source::Stdin).unwrap();
        assert_eq!((o.labels.as_slice(), o.q, o.noise_band_points, o.min_pairs), (&["tenant".to_string()][..], 0.1, 2.0, 20));
    }
}
