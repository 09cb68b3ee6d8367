//! The judge worker's typed configuration (`untaken judge --config judge.toml`).
//!
//! Same conventions as the sidecar's [`crate::config`]: built-in defaults, then the
//! TOML file, then `UNTAKEN_` environment variables with `__` between levels
//! (`UNTAKEN_KAFKA__BROKERS=...`, `UNTAKEN_LIMITS__BUDGET_USD_PER_HOUR=5`); the judge
//! is its own process, so the prefix is shared. Every mistake is an error naming its
//! key. A judge config is recognised by its top-level `[judge]` table.
//!
//! Owns parsing and validation only; it must never log a secret (the judge's API
//! key is read into [`Secret`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::config::{check_addr, env_overrides, figment_error, file_figment, read_secret, text_figment, ConfigError, Encoding, KafkaConfig, LogConfig, Secret};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeConfig {
    /// Which judge grades the pairs, and how.
    pub judge: JudgeSection,
    /// Rate limit, concurrency cap and spend budget of the judge's calls.
    pub limits: LimitsConfig,
    /// Where pairs are read from and grades written to.
    pub kafka: JudgeKafkaConfig,
    /// Admin port and shutdown.
    pub server: JudgeServerConfig,
    /// Log level and format.
    pub log: LogConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum JudgeKind {
    /// An LLM compares the two answers, in both orders.
    #[default]
    Pairwise,
    /// Each answer is checked against a known answer carried by the request.
    Reference,
}

impl JudgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JudgeKind::Pairwise => "pairwise",
            JudgeKind::Reference => "reference",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeSection {
    /// `pairwise` (an LLM judge) or `reference` (a known answer, no model).
    pub kind: JudgeKind,
    /// Settings of the pairwise judge (required when kind = "pairwise").
    pub pairwise: Option<PairwiseConfig>,
    /// Settings of the reference judge (required when kind = "reference").
    pub reference: Option<ReferenceConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairwiseConfig {
    /// OpenAI-compatible chat-completions endpoint of the judge (full URL).
    pub url: String,
    /// The judge model, sent as `model`.
    pub model: String,
    /// Environment variable holding the judge's API key (sent as a bearer token).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// File holding the judge's API key. Never put the key itself in the config.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// What "better" means for this traffic; inserted into the judge prompt. Part of
    /// the prompt version, so changing it starts a new version.
    #[serde(default = "default_rubric")]
    pub rubric: String,
    /// Ask for `{"verdict": ...}` through `response_format` (JSON schema), for
    /// endpoints that support structured output; otherwise the judge ends its answer
    /// with a `[[VERDICT: A]]` marker line.
    #[serde(default)]
    pub structured_output: bool,
    /// Sampling temperature of the judge.
    #[serde(default)]
    pub temperature: f64,
    /// Most tokens the judge may write per verdict.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Judge calls per verdict when the answer is malformed (1 = no retry); past it
    /// the pair is recorded as a judge error, never guessed.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Retries of one call on HTTP 429, 5xx, timeouts and connection errors.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// First retry delay; doubled on each retry (with jitter), at most 10 s. A 429's
    /// `Retry-After` is honoured up to the same cap.
    #[serde(default = "default_retry_backoff", with = "crate::effective_config::duration")]
    pub retry_backoff: Duration,
    /// Whole-call timeout of one judge call.
    #[serde(default = "default_judge_timeout", with = "crate::effective_config::duration")]
    pub timeout: Duration,
    /// Answers longer than this many characters are cut (and marked) in the prompt.
    #[serde(default = "default_max_answer_chars")]
    pub max_answer_chars: usize,
    /// Price in USD per million input tokens of the judge model.
    #[serde(default)]
    pub input_usd_per_mtok: f64,
    /// Price in USD per million output tokens of the judge model.
    #[serde(default)]
    pub output_usd_per_mtok: f64,
    /// Let the judge model grade a pair in which it is one of the arms (self-preference
    /// bias); refused by default, recorded as a judge error.
    #[serde(default)]
    pub allow_self_judging: bool,
    /// Consecutive connection errors, timeouts or 5xx (over all calls) that open the
    /// circuit: consumption pauses and calls wait until a probe is answered.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// Delay before the first probe of an open circuit; doubled after each failed probe.
    #[serde(default = "default_breaker_probe_interval", with = "crate::effective_config::duration")]
    pub breaker_probe_interval: Duration,
    /// Longest delay between probes of an open circuit.
    #[serde(default = "default_breaker_max_probe_interval", with = "crate::effective_config::duration")]
    pub breaker_max_probe_interval: Duration,
}

impl PairwiseConfig {
    /// A judge `model` at `url` with every other setting at its default (as a file
    /// naming only `url` and `model` would give).
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> PairwiseConfig {
        PairwiseConfig {
            url: url.into(),
            model: model.into(),
            api_key_env: None,
            api_key_file: None,
            rubric: default_rubric(),
            structured_output: false,
            temperature: 0.0,
            max_tokens: default_max_tokens(),
            max_attempts: default_max_attempts(),
            max_retries: default_max_retries(),
            retry_backoff: default_retry_backoff(),
            timeout: default_judge_timeout(),
            max_answer_chars: default_max_answer_chars(),
            input_usd_per_mtok: 0.0,
            output_usd_per_mtok: 0.0,
            allow_self_judging: false,
            breaker_failures: default_breaker_failures(),
            breaker_probe_interval: default_breaker_probe_interval(),
            breaker_max_probe_interval: default_breaker_max_probe_interval(),
        }
    }

    /// The circuit breaker's settings.
    pub fn breaker(&self) -> super::breaker::BreakerConfig {
        super::breaker::BreakerConfig {
            failures: self.breaker_failures,
            probe_interval: self.breaker_probe_interval,
            max_probe_interval: self.breaker_max_probe_interval,
        }
    }
}

fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_probe_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_breaker_max_probe_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_rubric() -> String {
    "Which answer better serves the user: correct, complete, and following the instructions. Length is not a merit.".into()
}
fn default_max_tokens() -> u32 {
    512
}
fn default_max_attempts() -> u32 {
    3
}
fn default_max_retries() -> u32 {
    4
}
fn default_retry_backoff() -> Duration {
    Duration::from_millis(250)
}
fn default_judge_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_answer_chars() -> usize {
    24_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchMethod {
    /// Byte-for-byte equal after trimming surrounding whitespace.
    Exact,
    /// Equal after Unicode lowercasing, removing punctuation and collapsing whitespace.
    Normalized,
    /// The last number in the answer is within `tolerance` of the known answer.
    Numeric,
    /// The known answer is a regular expression the answer must match.
    Regex,
}

impl MatchMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchMethod::Exact => "exact",
            MatchMethod::Normalized => "normalized",
            MatchMethod::Numeric => "numeric",
            MatchMethod::Regex => "regex",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceConfig {
    /// Label of the pair holding the known answer (e.g. "expected_answer").
    #[serde(default)]
    pub label: Option<String>,
    /// JSON pointer into the request holding the known answer (e.g. "/metadata/answer");
    /// used when `label` is unset or absent on the pair.
    #[serde(default)]
    pub pointer: Option<String>,
    /// How an answer is compared with the known answer.
    #[serde(default = "default_method")]
    pub method: MatchMethod,
    /// `numeric`: largest absolute difference still counted as correct.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
}

fn default_method() -> MatchMethod {
    MatchMethod::Normalized
}
fn default_tolerance() -> f64 {
    1e-6
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Judge calls per second; calls past it wait (they are never dropped).
    pub max_rps: Option<u32>,
    /// Judge calls in flight at once. A pair makes two (one per order), run together.
    pub max_concurrency: u32,
    /// Judge spend per rolling `budget_window`, in USD. When it is spent the worker
    /// pauses consumption until the window allows more; no pair is skipped.
    pub budget_usd_per_hour: Option<f64>,
    /// Length of the budget's rolling window (an hour; shorter only for tests and demos).
    #[serde(with = "crate::effective_config::duration")]
    pub budget_window: Duration,
    /// Tokio worker threads of `untaken judge` (restart only). The worker waits on the
    /// network: one thread (a current-thread runtime: the consume loop and the gradings
    /// share it) grades over 800 pairs a second with a 200 ms judge; a second one
    /// measured no CPU gain and ~5 MiB more RSS (BENCHMARKS.md, "Judge worker").
    pub worker_threads: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_rps: None,
            max_concurrency: 256,
            budget_usd_per_hour: None,
            budget_window: Duration::from_secs(3600),
            worker_threads: default_worker_threads(),
        }
    }
}

fn default_worker_threads() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// A new consumer group grades the whole retained history of the pairs topic.
    Earliest,
    /// A new consumer group grades only pairs published after it starts.
    Latest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeKafkaConfig {
    /// `bootstrap.servers`, comma separated. Empty only for file mode (`--pairs`).
    pub brokers: String,
    /// Topic the sidecar publishes pairs to.
    pub pairs_topic: String,
    /// Topic grades are written to.
    pub grades_topic: String,
    /// Consumer group: run more replicas with the same group to scale out.
    pub group_id: String,
    /// Where a consumer group without committed offsets starts.
    pub start_from: StartFrom,
    /// Grade encoding: `json` (proto3 JSON) or `protobuf`.
    pub encoding: Encoding,
    /// Pairs read but not yet committed, at most: bounds the pairs graded twice after
    /// a crash, and throughput (about `in_flight` / time to grade and commit a pair).
    /// Only `limits.max_concurrency` of them are decoded and graded at once; the rest
    /// wait as the bytes read from Kafka.
    pub in_flight: usize,
    /// Recently graded pair ids remembered to skip duplicates (bounded memory).
    pub dedup_capacity: usize,
    /// How often acknowledged offsets are committed.
    #[serde(with = "crate::effective_config::duration")]
    pub commit_interval: Duration,
    /// How long a grade may wait for Kafka's acknowledgement before the send is retried.
    #[serde(with = "crate::effective_config::duration")]
    pub delivery_timeout: Duration,
    /// File holding `sasl.password`.
    pub sasl_password_file: Option<PathBuf>,
    /// Environment variable holding `sasl.password`.
    pub sasl_password_env: Option<String>,
    /// Extra librdkafka settings for both the consumer and the producer. No secrets here.
    pub librdkafka: crate::config::PassThrough,
    /// librdkafka settings whose values are read from files (secrets).
    pub librdkafka_files: BTreeMap<String, PathBuf>,
}

impl Default for JudgeKafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            pairs_topic: "untaken.pairs".into(),
            grades_topic: "untaken.grades".into(),
            group_id: "untaken-judge".into(),
            start_from: StartFrom::Earliest,
            encoding: Encoding::Json,
            in_flight: 1024,
            dedup_capacity: 100_000,
            commit_interval: Duration::from_secs(1),
            delivery_timeout: Duration::from_secs(30),
            sasl_password_file: None,
            sasl_password_env: None,
            librdkafka: Default::default(),
            librdkafka_files: BTreeMap::new(),
        }
    }
}

impl JudgeKafkaConfig {
    /// The shared Kafka client settings (brokers, secrets, passthrough), with the
    /// grades topic as the producer's topic.
    pub fn client(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: self.brokers.clone(),
            topic: self.grades_topic.clone(),
            sasl_password_file: self.sasl_password_file.clone(),
            sasl_password_env: self.sasl_password_env.clone(),
            delivery_timeout: self.delivery_timeout,
            librdkafka: self.librdkafka.clone(),
            librdkafka_files: self.librdkafka_files.clone(),
            ..KafkaConfig::default()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeServerConfig {
    /// Admin HTTP listen address (`/live`, `/ready`, `/metrics`).
    pub admin_listen: String,
    /// On SIGTERM, how long in-flight grades may take to finish before the worker
    /// exits anyway (their offsets stay uncommitted and are graded again later).
    #[serde(with = "crate::effective_config::duration")]
    pub shutdown_grace: Duration,
    /// How often the secret files (`judge.pairwise.api_key_file`, `kafka.sasl_password_file`,
    /// `kafka.librdkafka_files`) are re-read, as the sidecar's setting of the same name; a
    /// changed one is validated and put in force without a restart (see "Rotating secrets").
    #[serde(with = "crate::effective_config::duration")]
    pub secret_poll_interval: Duration,
}

impl Default for JudgeServerConfig {
    fn default() -> Self {
        Self {
            admin_listen: "127.0.0.1:9465".into(),
            shutdown_grace: Duration::from_secs(20),
            secret_poll_interval: crate::config::default_secret_poll_interval(),
        }
    }
}

/// True when the TOML file has a top-level `[judge]` table: a judge config, not a sidecar's.
pub fn is_judge_config(path: &Path) -> bool {
    Figment::from(Toml::file_exact(path)).find_value("judge").is_ok()
}

/// Reads a judge config file (if any) and the `UNTAKEN_` environment, then validates.
pub fn load(path: Option<&Path>) -> Result<JudgeConfig, ConfigError> {
    let config: JudgeConfig = file_figment::<JudgeConfig>(path)?.merge(env_overrides()).extract().map_err(figment_error)?;
    config.validate()?;
    Ok(config)
}

/// Parses TOML text (no environment), then validates. Used by tests and the demo.
pub fn from_toml(text: &str) -> Result<JudgeConfig, ConfigError> {
    let config: JudgeConfig = text_figment::<JudgeConfig>(text).extract().map_err(figment_error)?;
    config.validate()?;
    Ok(config)
}

fn non_negative(key: &str, v: f64) -> Result<(), ConfigError> {
    if !v.is_finite() || v < 0.0 {
        return Err(ConfigError::new(key, "must be a non-negative number"));
    }
    Ok(())
}

fn positive<T: PartialOrd + Default>(key: &str, v: T) -> Result<(), ConfigError> {
    if v <= T::default() {
        return Err(ConfigError::new(key, "must be greater than 0"));
    }
    Ok(())
}

impl JudgeConfig {
    /// Checks everything serde cannot: the judge named by `kind` is configured, URLs,
    /// secrets, ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.judge.kind {
            JudgeKind::Pairwise => {
                let p = self
                    .judge
                    .pairwise
                    .as_ref()
                    .ok_or_else(|| ConfigError::new("judge.pairwise", "required when judge.kind = \"pairwise\""))?;
                p.validate()?;
            }
            JudgeKind::Reference => {
                let r = self
                    .judge
                    .reference
                    .as_ref()
                    .ok_or_else(|| ConfigError::new("judge.reference", "required when judge.kind = \"reference\""))?;
                r.validate()?;
            }
        }
        if self.limits.max_rps == Some(0) {
            return Err(ConfigError::new("limits.max_rps", "must be greater than 0 (omit for no limit)"));
        }
        positive("limits.max_concurrency", self.limits.max_concurrency)?;
        positive("limits.worker_threads", self.limits.worker_threads)?;
        if let Some(b) = self.limits.budget_usd_per_hour {
            non_negative("limits.budget_usd_per_hour", b)?;
        }
        if self.limits.budget_window < Duration::from_secs(1) {
            return Err(ConfigError::new("limits.budget_window", "must be at least 1s"));
        }
        let k = &self.kafka;
        for (key, v) in [("kafka.pairs_topic", &k.pairs_topic), ("kafka.grades_topic", &k.grades_topic), ("kafka.group_id", &k.group_id)] {
            if v.trim().is_empty() {
                return Err(ConfigError::new(key, "must not be empty"));
            }
        }
        if k.pairs_topic == k.grades_topic {
            return Err(ConfigError::new("kafka.grades_topic", "must differ from kafka.pairs_topic"));
        }
        positive("kafka.in_flight", k.in_flight)?;
        positive("kafka.dedup_capacity", k.dedup_capacity)?;
        positive("kafka.commit_interval", k.commit_interval)?;
        positive("kafka.delivery_timeout", k.delivery_timeout)?;
        for key in ["bootstrap.servers", "sasl.password", "group.id", "enable.auto.commit"] {
            if k.librdkafka.contains_key(key) {
                return Err(ConfigError::new(format!("kafka.librdkafka.\"{key}\""), "set by untaken (use the kafka.* settings)"));
            }
        }
        read_secret("kafka.sasl_password".into(), k.sasl_password_env.as_ref(), k.sasl_password_file.as_ref())?;
        for (name, path) in k.librdkafka_files.iter().filter(|_| !crate::effective_config::secrets_absent()) {
            std::fs::metadata(path).map_err(|e| {
                ConfigError::new(format!("kafka.librdkafka_files.\"{name}\""), format!("cannot read {}: {e}", path.display()))
            })?;
        }
        check_addr("server.admin_listen", &self.server.admin_listen)?;
        positive("server.secret_poll_interval", self.server.secret_poll_interval)?;
        Ok(())
    }

    /// True when pairs come from Kafka (brokers configured).
    pub fn has_brokers(&self) -> bool {
        !self.kafka.brokers.trim().is_empty()
    }
}

impl PairwiseConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let url = url::Url::parse(&self.url).map_err(|e| ConfigError::new("judge.pairwise.url", format!("not a valid URL: {e}")))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(ConfigError::new("judge.pairwise.url", "scheme must be http or https"));
        }
        positive("judge.pairwise.breaker_failures", self.breaker_failures)?;
        positive("judge.pairwise.breaker_probe_interval", self.breaker_probe_interval)?;
        if self.breaker_max_probe_interval < self.breaker_probe_interval {
            return Err(ConfigError::new("judge.pairwise.breaker_max_probe_interval", "must be at least breaker_probe_interval"));
        }
        if self.model.trim().is_empty() {
            return Err(ConfigError::new("judge.pairwise.model", "must not be empty"));
        }
        if self.rubric.trim().is_empty() {
            return Err(ConfigError::new("judge.pairwise.rubric", "must not be empty"));
        }
        if self.api_key_env.is_some() && self.api_key_file.is_some() {
            return Err(ConfigError::new("judge.pairwise.api_key_file", "set api_key_env or api_key_file, not both"));
        }
        self.api_key()?;
        positive("judge.pairwise.max_attempts", self.max_attempts)?;
        positive("judge.pairwise.max_tokens", self.max_tokens)?;
        positive("judge.pairwise.timeout", self.timeout)?;
        positive("judge.pairwise.max_answer_chars", self.max_answer_chars)?;
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(ConfigError::new("judge.pairwise.temperature", "must be within 0..=2"));
        }
        non_negative("judge.pairwise.input_usd_per_mtok", self.input_usd_per_mtok)?;
        non_negative("judge.pairwise.output_usd_per_mtok", self.output_usd_per_mtok)?;
        Ok(())
    }

    /// The judge's API key, from its environment variable or file.
    pub fn api_key(&self) -> Result<Option<Secret>, ConfigError> {
        read_secret("judge.pairwise.api_key".into(), self.api_key_env.as_ref(), self.api_key_file.as_ref())
    }
}

impl ReferenceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.label.as_deref().is_none_or(|l| l.trim().is_empty()) && self.pointer.is_none() {
            return Err(ConfigError::new("judge.reference.label", "set `label` or `pointer`: where the known answer is"));
        }
        if let Some(p) = &self.pointer {
            if !p.starts_with('/') {
                return Err(ConfigError::new("judge.reference.pointer", "a JSON pointer starts with `/` (e.g. \"/metadata/answer\")"));
            }
        }
        non_negative("judge.reference.tolerance", self.tolerance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_new_is_a_file_naming_only_url_and_model() {
        let from_file = from_toml(PAIRWISE).unwrap().judge.pairwise.unwrap();
        let built = PairwiseConfig::new("http://127.0.0.1:9/v1/chat/completions", "judge-1");
        assert_eq!(format!("{built:?}"), format!("{from_file:?}"), "every other field at the file's default");
    }

    const PAIRWISE: &str = r#"
        [judge]
        kind = "pairwise"
        [judge.pairwise]
        url = "http://127.0.0.1:9/v1/chat/completions"
        model = "judge-1"
        [kafka]
        brokers = "127.0.0.1:9092"
    "#;

    #[test]
    fn pairwise_loads_with_defaults() {
        let c = from_toml(PAIRWISE).unwrap();
        let p = c.judge.pairwise.unwrap();
        assert_eq!(p.max_attempts, 3);
        assert!(!p.allow_self_judging);
        assert_eq!(c.kafka.grades_topic, "untaken.grades");
        assert_eq!(c.kafka.client().topic, "untaken.grades");
        assert_eq!(c.limits.budget_window, Duration::from_secs(3600));
        assert_eq!(c.server.secret_poll_interval, Duration::from_secs(10), "the sidecar's default");
    }

    #[test]
    fn the_judge_named_by_kind_is_required() {
        let e = from_toml("[judge]\nkind = \"reference\"\n").unwrap_err();
        assert_eq!(e.key, "judge.reference");
        let e = from_toml("[judge]\nkind = \"pairwise\"\n").unwrap_err();
        assert_eq!(e.key, "judge.pairwise");
        let e = from_toml("[judge]\nkind = \"reference\"\n[judge.reference]\nmethod = \"exact\"\n").unwrap_err();
        assert_eq!(e.key, "judge.reference.label");
    }

    #[test]
    fn mistakes_are_named() {
        let e = from_toml(&PAIRWISE.replace("model = \"judge-1\"", "model = \"judge-1\"\nrubrik = \"x\"")).unwrap_err();
        assert_eq!(e.key, "judge.pairwise.rubrik", "{e}");
        let e = from_toml(&PAIRWISE.replace("http://127.0.0.1:9", "ftp://x")).unwrap_err();
        assert_eq!(e.key, "judge.pairwise.url");
        let e = from_toml(&format!("{PAIRWISE}\n[limits]\nbudget_usd_per_hour = -1\n")).unwrap_err();
        assert_eq!(e.key, "limits.budget_usd_per_hour");
        let e = from_toml(&PAIRWISE.replace("model = \"judge-1\"", "model = \"judge-1\"\napi_key_env = \"UNTAKEN_TEST_SURELY_UNSET_JUDGE_KEY\"")).unwrap_err();
        assert_eq!(e.key, "judge.pairwise.api_key_env");
        let e = from_toml("[judge]\nkind = \"reference\"\n[judge.reference]\nlabel = \"a\"\nmethod = \"fuzzy\"\n").unwrap_err();
        assert_eq!(e.key, "judge.reference.method", "{e}");
        assert_eq!(e.message, "unknown value `fuzzy`, expected one of `exact`, `normalized`, `numeric`, `regex`");
        let e = from_toml(&format!("{PAIRWISE}\npairs_topic = \"untaken.grades\"\n")).unwrap_err();
        assert_eq!(e.key, "kafka.grades_topic");
        let e = from_toml(&format!("{PAIRWISE}\n[server]\nsecret_poll_interval = \"0s\"\n")).unwrap_err();
        assert_eq!(e.key, "server.secret_poll_interval", "{e}");
    }

    #[test]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("judge.toml");
        std::fs::write(&path, PAIRWISE).unwrap();
        assert!(is_judge_config(&path));
        figment::Jail::expect_with(|jail| {
            jail.set_env("UNTAKEN_LIMITS__MAX_CONCURRENCY", "7");
            assert_eq!(load(Some(&path)).unwrap().limits.max_concurrency, 7);
            Ok(())
        });
        std::fs::write(&path, "[routes.a]\nurl = \"http://x/\"\nmodel = \"m\"\n").unwrap();
        assert!(!is_judge_config(&path));
    }
}
