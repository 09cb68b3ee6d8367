//! Typed configuration: one struct tree, defaults as named functions, and a
//! validation pass that turns every mistake into an error naming its key.
//!
//! Sources, later ones winning: built-in defaults, the TOML file, then
//! environment variables prefixed `UNTAKEN_` with `__` between levels
//! (`UNTAKEN_SAMPLING__DEFAULT_RATE=0.1`, `UNTAKEN_SINK__KAFKA__BROKERS=...`).
//!
//! This module owns parsing and validation only. It must never log a secret:
//! API keys and passwords are read into [`Secret`], which never prints.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use humantime_serde::re::humantime::format_duration;
use serde::{Deserialize, Serialize};

/// A configuration mistake, naming the key a user has to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("config error at `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listen addresses and request limits.
    pub server: ServerConfig,
    /// Log level and format.
    pub log: LogConfig,
    /// Which requests are shadowed.
    pub sampling: SamplingConfig,
    /// The route catalog: route name → upstream and its counterfactual.
    pub routes: BTreeMap<String, RouteConfig>,
    /// How long a half-finished pair waits for its other half.
    pub pairing: PairingConfig,
    /// The hand-off queue between `Mirror` and the shadow workers.
    pub queue: QueueConfig,
    /// Where pair records go.
    pub sink: SinkConfig,
    /// Local disk spool used while Kafka is unreachable.
    pub spool: SpoolConfig,
    /// Regular expressions applied to bodies before they leave the process.
    pub redaction: crate::redact::RedactionConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listen address. Loopback by default: the router is in the same pod.
    pub listen: String,
    /// Admin HTTP listen address (`/live`, `/ready`, `/metrics`).
    pub admin_listen: String,
    /// Largest `request_body` accepted by `Mirror`, and largest answer body kept.
    pub max_body_bytes: usize,
    /// Most labels a request may carry.
    pub max_labels: usize,
    /// Longest label key or value, in bytes.
    pub max_label_bytes: usize,
    /// How long shutdown waits for in-flight shadow calls before spooling the rest.
    #[serde(with = "crate::effective_config::duration")]
    pub shutdown_grace: Duration,
    /// File holding a bearer token `Mirror` and `Complete` callers must present.
    pub auth_token_file: Option<PathBuf>,
    /// Environment variable holding that bearer token.
    pub auth_token_env: Option<String>,
    /// TLS on the gRPC port; with `client_ca_file`, mutual TLS.
    pub tls: Option<TlsConfig>,
    /// How often the secret files (auth token, TLS, routes' API keys, Kafka's) are
    /// re-read; a changed one is validated and put in force without a restart.
    /// Kubernetes refreshes a mounted Secret within about a minute, so 10 s adds little.
    #[serde(with = "crate::effective_config::duration")]
    pub secret_poll_interval: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: PathBuf,
    /// PEM private key of the server.
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

fn default_listen() -> String {
    "127.0.0.1:50051".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:9464".into()
}
/// Also the judge worker's `server.secret_poll_interval` default.
pub(crate) fn default_secret_poll_interval() -> Duration {
    Duration::from_secs(10)
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            max_body_bytes: 1024 * 1024,
            max_labels: 32,
            max_label_bytes: 1024,
            shutdown_grace: Duration::from_secs(30),
            auth_token_file: None,
            auth_token_env: None,
            tls: None,
            secret_poll_interval: default_secret_poll_interval(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter directive; `RUST_LOG` wins when set.
    pub level: String,
    /// `json` (structured, for production) or `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Json }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Mixed into the hash: a new salt draws an independent sample.
    pub salt: String,
    /// Probability that a request matching no rule is shadowed.
    pub default_rate: f64,
    /// Fraction of sampled requests sent again to the route that was taken instead of
    /// the counterfactual, published as `CONTROL` pairs: the noise floor of the
    /// judge and of the sidecar's path. 0 (the default) sends none.
    pub control_rate: f64,
    /// First matching rule wins; a rule matches when every field it sets matches.
    pub rules: Vec<SamplingRule>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self { salt: "untaken".into(), default_rate: 0.05, control_rate: 0.0, rules: Vec::new() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SamplingRule {
    /// Matches `MirrorRequest.slice` exactly.
    #[serde(default)]
    pub slice: Option<String>,
    /// Matches `MirrorRequest.route_taken` exactly.
    #[serde(default)]
    pub route_taken: Option<String>,
    /// Sampling probability for matching requests.
    pub rate: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// OpenAI-compatible chat-completions endpoint (full URL).
    pub url: String,
    /// Model name written into the shadow request's `model`.
    pub model: String,
    /// The route shadowed when the router took this one; none means never shadowed.
    #[serde(default)]
    pub counterfactual: Option<String>,
    /// Whole-call timeout for a shadow request to this route.
    #[serde(default = "default_route_timeout", with = "crate::effective_config::duration")]
    pub timeout: Duration,
    /// Environment variable holding the API key (sent as a bearer token).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// File holding the API key (e.g. a mounted Kubernetes Secret).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Price in USD per million input (prompt) tokens.
    #[serde(default)]
    pub input_usd_per_mtok: f64,
    /// Price in USD per million output (completion) tokens.
    #[serde(default)]
    pub output_usd_per_mtok: f64,
    /// Shadow requests per second to this route; excess is shed (`rate_limited`).
    #[serde(default)]
    pub max_rps: Option<u32>,
    /// Concurrent shadow calls to this route; excess is shed (`concurrency_limited`).
    /// Each call holds a connection and its buffers, so this also bounds memory while
    /// the upstream hangs.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: Option<u32>,
    /// Shadow spend on this route per rolling hour; past it, shed (`budget_exhausted`).
    #[serde(default)]
    pub budget_usd_per_hour: Option<f64>,
}

fn default_max_concurrency() -> Option<u32> {
    Some(256)
}

fn default_route_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PairingConfig {
    /// How long a pair waits for its missing half before it is published without it.
    #[serde(with = "crate::effective_config::duration")]
    pub timeout: Duration,
    /// Most pairs waiting at once; past it new samples are shed (`pairing_full`).
    pub max_pending: usize,
}

impl Default for PairingConfig {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(120), max_pending: 10_000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Shadow jobs waiting for a worker; past it new samples are shed (`queue_full`).
    pub capacity: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { capacity: 1024 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    Kafka,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// proto3 JSON mapping of `untaken.v1.PairRecord`.
    #[default]
    Json,
    /// Binary protobuf `untaken.v1.PairRecord`.
    Protobuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// `kafka` or `file`; when unset, `kafka` if brokers are configured, else `file`.
    #[serde(rename = "type")]
    pub kind: Option<SinkType>,
    /// Record encoding on Kafka. The file sink always writes JSON lines.
    pub encoding: Encoding,
    pub kafka: KafkaConfig,
    pub file: FileSinkConfig,
}

impl SinkConfig {
    /// The sink in force, resolving the default.
    pub fn effective_kind(&self) -> SinkType {
        self.kind.unwrap_or(if self.kafka.brokers.trim().is_empty() {
            SinkType::File
        } else {
            SinkType::Kafka
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, comma separated.
    pub brokers: String,
    /// Topic the pair records are written to.
    pub topic: String,
    /// File holding `sasl.password` (never put the password in this file).
    pub sasl_password_file: Option<PathBuf>,
    /// Environment variable holding `sasl.password`.
    pub sasl_password_env: Option<String>,
    /// How long a record may wait for Kafka before it goes to the spool instead.
    #[serde(with = "crate::effective_config::duration")]
    pub delivery_timeout: Duration,
    /// When deliveries are outstanding and none has been acknowledged for this long,
    /// Kafka is taken to be down: new records go straight to the spool (so memory does
    /// not fill while the delivery timeout runs out) until a replay succeeds.
    #[serde(with = "crate::effective_config::duration")]
    pub stall_timeout: Duration,
    /// Extra librdkafka settings, passed through as given. Put no secret here (use
    /// `librdkafka_files`); values of keys naming a password or secret never print.
    pub librdkafka: PassThrough,
    /// librdkafka settings whose values are read from files, for secrets such as
    /// `"ssl.key.password"` or `"sasl.oauthbearer.client.secret"`.
    pub librdkafka_files: BTreeMap<String, PathBuf>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic: "untaken.pairs".into(),
            sasl_password_file: None,
            sasl_password_env: None,
            delivery_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(2),
            librdkafka: PassThrough::default(),
            librdkafka_files: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkConfig {
    /// JSON-lines file the records are appended to.
    pub path: PathBuf,
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        Self { path: PathBuf::from("untaken-pairs.jsonl") }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory for the spool. Without one, a record Kafka cannot take is dropped and counted.
    pub dir: Option<PathBuf>,
    /// The spool never grows past this many bytes; past it records are refused and counted.
    pub max_bytes: u64,
    /// How often spooled data is fsynced.
    #[serde(with = "crate::effective_config::duration")]
    pub fsync_interval: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self { dir: Some(PathBuf::from("untaken-spool")), max_bytes: 256 * 1024 * 1024, fsync_interval: Duration::from_secs(1) }
    }
}

/// `[sink.kafka.librdkafka]`: settings passed to librdkafka as given. Its `Debug`
/// output hides the value of any key containing `password` or `secret`, so a
/// secret put here by mistake never reaches a log.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PassThrough(BTreeMap<String, String>);

impl std::ops::Deref for PassThrough {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for PassThrough {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl fmt::Debug for PassThrough {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |k: &str| {
            let k = k.to_ascii_lowercase();
            k.contains("password") || k.contains("secret")
        };
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, if secret(k) { "[redacted]" } else { v.as_str() })))
            .finish()
    }
}

/// A secret value that never appears in `Debug` or `Display` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is sent to its peer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Reads a config file (if any) and the `UNTAKEN_` environment, then validates.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    // Every top-level key is a section, so a variable without `__` (UNTAKEN_TEST_BROKERS,
    // UNTAKEN_TOOLS...) cannot be a setting: leave it to whoever set it.
    load_with_env(path, env_overrides())
}

/// The `UNTAKEN_` environment as a figment provider: `__` between levels, and only
/// variables containing `__` (every top-level key is a section). Shared by every
/// config file untaken reads (the sidecar's and the judge's).
pub fn env_overrides() -> Env {
    Env::prefixed("UNTAKEN_").filter(|k| k.as_str().contains("__")).split("__")
}

fn load_with_env(path: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
    let config: Config = file_figment::<Config>(path)?.merge(env).extract().map_err(figment_error)?;
    config.validate()?;
    Ok(config)
}

/// The defaults of `T`, then the TOML file at `path` (which must exist). Shared by
/// every config file untaken reads (the sidecar's and the judge's).
pub fn file_figment<T: Serialize + Default>(path: Option<&Path>) -> Result<Figment, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = path {
        if !path.exists() {
            return Err(ConfigError::new("--config", format!("file {} does not exist", path.display())));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    Ok(figment)
}

/// The defaults of `T`, then TOML text (no environment).
pub fn text_figment<T: Serialize + Default>(text: &str) -> Figment {
    Figment::from(Serialized::defaults(T::default())).merge(Toml::string(text))
}

/// Parses TOML text (no environment), then validates. Used by tests and `demo`.
pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
    let config: Config = text_figment::<Config>(text).extract().map_err(figment_error)?;
    config.validate()?;
    Ok(config)
}

/// A figment error as a [`ConfigError`] naming the dotted key.
pub fn figment_error(err: figment::Error) -> ConfigError {
    let key = if err.path.is_empty() { "(top level)".to_string() } else { err.path.join(".") };
    let message = match &err.kind {
        figment::error::Kind::UnknownField(field, _) if err.path.is_empty() => {
            return ConfigError::new(field.clone(), "unknown key");
        }
        figment::error::Kind::UnknownField(..) => "unknown key".to_string(),
        // figment's own text nests the quotes ("expected `one of `a`, `b``").
        figment::error::Kind::UnknownVariant(found, expected) => {
            let expected: Vec<String> = expected.iter().map(|v| format!("`{v}`")).collect();
            format!("unknown value `{found}`, expected one of {}", expected.join(", "))
        }
        kind => kind.to_string(),
    };
    ConfigError::new(key, message)
}

impl Config {
    /// Checks everything serde cannot: ranges, references between routes, URLs, secrets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_addr("server.listen", &self.server.listen)?;
        check_addr("server.admin_listen", &self.server.admin_listen)?;
        self.server.auth_token()?;
        // TLS files are secrets too: not read while only the effective config is wanted.
        if let Some(tls) = self.server.tls.as_ref().filter(|_| !crate::effective_config::secrets_absent()) {
            for (key, path) in [("cert_file", Some(&tls.cert_file)), ("key_file", Some(&tls.key_file)), ("client_ca_file", tls.client_ca_file.as_ref())] {
                if let Some(path) = path {
                    if !path.is_file() {
                        return Err(ConfigError::new(format!("server.tls.{key}"), format!("{} is not a readable file", path.display())));
                    }
                }
            }
            // A key that is not the certificate's, or a PEM that does not parse, fails here
            // (and so in `check-config`) rather than at the first handshake.
            let read = |key: &str, p: &PathBuf| {
                std::fs::read(p).map_err(|e| ConfigError::new(format!("server.tls.{key}"), format!("cannot read {}: {e}", p.display())))
            };
            let ca = tls.client_ca_file.as_ref().map(|p| read("client_ca_file", p)).transpose()?;
            crate::secrets::tls::server_config(&read("cert_file", &tls.cert_file)?, &read("key_file", &tls.key_file)?, ca.as_deref())
                .map_err(|e| ConfigError::new(format!("server.tls.{}", e.file), e.message))?;
        }
        if self.server.max_body_bytes == 0 {
            return Err(ConfigError::new("server.max_body_bytes", "must be greater than 0"));
        }
        check_rate("sampling.default_rate", self.sampling.default_rate)?;
        check_rate("sampling.control_rate", self.sampling.control_rate)?;
        for (i, rule) in self.sampling.rules.iter().enumerate() {
            let key = format!("sampling.rules[{i}]");
            check_rate(&format!("{key}.rate"), rule.rate)?;
            if rule.slice.is_none() && rule.route_taken.is_none() {
                return Err(ConfigError::new(key, "a rule needs `slice` or `route_taken` (use default_rate for all)"));
            }
            if let Some(route) = &rule.route_taken {
                if !self.routes.contains_key(route) {
                    return Err(ConfigError::new(format!("{key}.route_taken"), format!("unknown route `{route}`")));
                }
            }
        }
        for (name, route) in &self.routes {
            let key = format!("routes.{name}");
            let url = url::Url::parse(&route.url)
                .map_err(|e| ConfigError::new(format!("{key}.url"), format!("not a valid URL: {e}")))?;
            if url.scheme() != "http" && url.scheme() != "https" {
                return Err(ConfigError::new(format!("{key}.url"), "scheme must be http or https"));
            }
            if route.model.trim().is_empty() {
                return Err(ConfigError::new(format!("{key}.model"), "must not be empty"));
            }
            if let Some(cf) = &route.counterfactual {
                if !self.routes.contains_key(cf) {
                    return Err(ConfigError::new(
                        format!("{key}.counterfactual"),
                        format!("unknown route `{cf}`"),
                    ));
                }
                if cf == name {
                    return Err(ConfigError::new(format!("{key}.counterfactual"), "a route cannot shadow itself"));
                }
            }
            check_duration(&format!("{key}.timeout"), route.timeout, MIN_POSITIVE)?;
            for (field, price) in
                [("input_usd_per_mtok", route.input_usd_per_mtok), ("output_usd_per_mtok", route.output_usd_per_mtok)]
            {
                if !price.is_finite() || price < 0.0 {
                    return Err(ConfigError::new(format!("{key}.{field}"), "must be a non-negative number"));
                }
            }
            if route.max_rps == Some(0) {
                return Err(ConfigError::new(format!("{key}.max_rps"), "must be greater than 0 (omit for no limit)"));
            }
            if route.max_concurrency == Some(0) {
                return Err(ConfigError::new(
                    format!("{key}.max_concurrency"),
                    "must be greater than 0 (omit for no limit)",
                ));
            }
            if let Some(b) = route.budget_usd_per_hour {
                if !b.is_finite() || b < 0.0 {
                    return Err(ConfigError::new(format!("{key}.budget_usd_per_hour"), "must be a non-negative number"));
                }
            }
            if route.api_key_env.is_some() && route.api_key_file.is_some() {
                return Err(ConfigError::new(format!("{key}.api_key_file"), "set api_key_env or api_key_file, not both"));
            }
            route.api_key(name)?;
        }
        check_duration("server.shutdown_grace", self.server.shutdown_grace, Duration::ZERO)?;
        check_duration("server.secret_poll_interval", self.server.secret_poll_interval, MIN_POSITIVE)?;
        check_duration("pairing.timeout", self.pairing.timeout, MIN_POSITIVE)?;
        // librdkafka refuses a message timeout not above `linger.ms` (sink::kafka::LINGER_MS, 50 ms),
        // and 0 means "forever".
        check_duration("sink.kafka.delivery_timeout", self.sink.kafka.delivery_timeout, Duration::from_millis(100))?;
        check_duration("sink.kafka.stall_timeout", self.sink.kafka.stall_timeout, MIN_POSITIVE)?;
        check_duration("spool.fsync_interval", self.spool.fsync_interval, MIN_POSITIVE)?;
        if self.pairing.max_pending == 0 {
            return Err(ConfigError::new("pairing.max_pending", "must be greater than 0"));
        }
        if self.queue.capacity == 0 {
            return Err(ConfigError::new("queue.capacity", "must be greater than 0"));
        }
        if self.sink.effective_kind() == SinkType::Kafka {
            if self.sink.kafka.brokers.trim().is_empty() {
                return Err(ConfigError::new("sink.kafka.brokers", "required when sink.type = \"kafka\""));
            }
            if self.sink.kafka.topic.trim().is_empty() {
                return Err(ConfigError::new("sink.kafka.topic", "must not be empty"));
            }
            for key in ["bootstrap.servers", "sasl.password"] {
                if self.sink.kafka.librdkafka.contains_key(key) {
                    return Err(ConfigError::new(
                        format!("sink.kafka.librdkafka.\"{key}\""),
                        "set through sink.kafka.brokers / sasl_password_file / sasl_password_env instead",
                    ));
                }
            }
            self.sink.kafka.sasl_password()?;
            if !crate::effective_config::secrets_absent() {
                self.sink.kafka.file_settings()?;
            }
        }
        crate::redact::Redactor::new(&self.redaction)?;
        if self.spool.max_bytes < 4096 && self.spool.dir.is_some() {
            return Err(ConfigError::new("spool.max_bytes", "must be at least 4096"));
        }
        Ok(())
    }
}

pub fn check_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError::new(key, format!("`{value}` is not an IP:port address")))
}

/// The smallest duration a timer or timeout may be set to: a zero one would panic a
/// timer (`tokio::time::interval`) or time everything out at once.
const MIN_POSITIVE: Duration = Duration::from_millis(1);
/// The largest duration any setting accepts: a week is past every sensible timeout,
/// and far below what `Instant + Duration` or librdkafka's millisecond settings overflow at.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

fn check_duration(key: &str, value: Duration, min: Duration) -> Result<(), ConfigError> {
    if value < min {
        let bound = if min == MIN_POSITIVE { "greater than 0".to_string() } else { format!("at least {}", format_duration(min)) };
        return Err(ConfigError::new(key, format!("must be {bound} (got {})", format_duration(value))));
    }
    if value > MAX_DURATION {
        let (max, got) = (format_duration(MAX_DURATION), format_duration(value));
        return Err(ConfigError::new(key, format!("must be at most {max} (got {got})")));
    }
    Ok(())
}

fn check_rate(key: &str, rate: f64) -> Result<(), ConfigError> {
    if !(0.0..=1.0).contains(&rate) {
        return Err(ConfigError::new(key, format!("rate {rate} is outside 0..=1")));
    }
    Ok(())
}

/// A secret from an environment variable or a file (`{key}_env` / `{key}_file` name
/// the setting in errors); `None` when neither is configured.
/// Reads nothing while [`crate::effective_config::effective_json`] loads a config.
pub fn read_secret(key: String, env: Option<&String>, file: Option<&PathBuf>) -> Result<Option<Secret>, ConfigError> {
    if crate::effective_config::secrets_absent() {
        return Ok(None);
    }
    if let Some(var) = env {
        return std::env::var(var)
            .map(|v| Some(Secret::new(v.trim())))
            .map_err(|_| ConfigError::new(format!("{key}_env"), format!("environment variable `{var}` is not set")));
    }
    if let Some(path) = file {
        return std::fs::read_to_string(path)
            .map(|v| Some(Secret::new(v.trim())))
            .map_err(|e| ConfigError::new(format!("{key}_file"), format!("cannot read {}: {e}", path.display())));
    }
    Ok(None)
}

impl RouteConfig {
    /// The route's API key, read from its environment variable or file.
    pub fn api_key(&self, route: &str) -> Result<Option<Secret>, ConfigError> {
        read_secret(format!("routes.{route}.api_key"), self.api_key_env.as_ref(), self.api_key_file.as_ref())
    }
}

impl ServerConfig {
    /// The bearer token callers must present, if one is configured.
    pub fn auth_token(&self) -> Result<Option<Secret>, ConfigError> {
        read_secret("server.auth_token".into(), self.auth_token_env.as_ref(), self.auth_token_file.as_ref())
    }
}

impl KafkaConfig {
    /// The `librdkafka_files` settings with their values read, as secrets.
    pub fn file_settings(&self) -> Result<Vec<(String, Secret)>, ConfigError> {
        self.librdkafka_files
            .iter()
            .map(|(k, path)| {
                std::fs::read_to_string(path).map(|v| (k.clone(), Secret::new(v.trim()))).map_err(|e| {
                    ConfigError::new(format!("sink.kafka.librdkafka_files.\"{k}\""), format!("cannot read {}: {e}", path.display()))
                })
            })
            .collect()
    }

    /// The SASL password, read from its file or environment variable.
    pub fn sasl_password(&self) -> Result<Option<Secret>, ConfigError> {
        read_secret("sink.kafka.sasl_password".into(), self.sasl_password_env.as_ref(), self.sasl_password_file.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_ROUTES: &str = r#"
        [sampling]
        default_rate = 0.1
        [[sampling.rules]]
        slice = "multi_step"
        rate = 0.5
        [routes.fast]
        url = "http://127.0.0.1:8001/v1/chat/completions"
        model = "small"
        counterfactual = "reasoning"
        [routes.reasoning]
        url = "http://127.0.0.1:8002/v1/chat/completions"
        model = "big"
        counterfactual = "fast"
        timeout = "90s"
    "#;

    #[test]
    fn two_route_config_loads_with_defaults() {
        let c = from_toml(TWO_ROUTES).unwrap();
        assert_eq!(c.routes["reasoning"].timeout, Duration::from_secs(90));
        assert_eq!(c.routes["fast"].timeout, default_route_timeout());
        assert_eq!(c.server.listen, "127.0.0.1:50051");
        assert_eq!(c.sink.effective_kind(), SinkType::File);
        assert_eq!(c.sampling.rules[0].rate, 0.5);
    }

    fn err(text: &str) -> ConfigError {
        from_toml(text).unwrap_err()
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&format!("{TWO_ROUTES}\n[pairing]\ntimout = \"1s\"\n"));
        assert_eq!(e.key, "pairing.timout", "{e}");
    }

    #[test]
    fn bad_rate_is_named() {
        let e = err(&TWO_ROUTES.replace("default_rate = 0.1", "default_rate = 1.5"));
        assert_eq!(e.key, "sampling.default_rate");
        let e = err(&TWO_ROUTES.replace("rate = 0.5", "rate = -0.5"));
        assert_eq!(e.key, "sampling.rules[0].rate");
    }

    #[test]
    fn unknown_counterfactual_is_named() {
        let e = err(&TWO_ROUTES.replace("counterfactual = \"fast\"", "counterfactual = \"fastest\""));
        assert_eq!(e.key, "routes.reasoning.counterfactual");
        assert!(e.message.contains("fastest"));
    }

    #[test]
    fn bad_url_is_named() {
        let e = err(&TWO_ROUTES.replace("http://127.0.0.1:8002/v1/chat/completions", "not a url"));
        assert_eq!(e.key, "routes.reasoning.url");
        let e = err(&TWO_ROUTES.replace("http://127.0.0.1:8002", "ftp://127.0.0.1:8002"));
        assert_eq!(e.key, "routes.reasoning.url");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = err(&TWO_ROUTES.replace("timeout = \"90s\"", "timeout = \"ninety\""));
        assert_eq!(e.key, "routes.reasoning.timeout", "{e}");
    }

    #[test]
    fn kafka_sink_requires_brokers() {
        let e = err(&format!("{TWO_ROUTES}\n[sink]\ntype = \"kafka\"\n"));
        assert_eq!(e.key, "sink.kafka.brokers");
    }

    #[test]
    fn missing_api_key_env_is_named() {
        let text = TWO_ROUTES.replace("model = \"big\"", "model = \"big\"\napi_key_env = \"UNTAKEN_TEST_SURELY_UNSET_KEY\"");
        let e = err(&text);
        assert_eq!(e.key, "routes.reasoning.api_key_env");
        assert!(e.message.contains("UNTAKEN_TEST_SURELY_UNSET_KEY"));
    }

    #[test]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, TWO_ROUTES).unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("UNTAKEN_SAMPLING__DEFAULT_RATE", "0.25");
            jail.set_env("UNTAKEN_TEST_BROKERS", "127.0.0.1:1"); // not a setting: ignored
            let c = load(Some(&path)).unwrap();
            assert_eq!(c.sampling.default_rate, 0.25);
            jail.set_env("UNTAKEN_SAMPLING__DEFUALT_RATE", "0.5");
            assert_eq!(load(Some(&path)).unwrap_err().key, "sampling.defualt_rate", "a misspelt setting is an error");
            Ok(())
        });
    }

    #[test]
    fn every_duration_is_validated_and_named() {
        let kafka = format!("{TWO_ROUTES}\n[sink.kafka]\nbrokers = \"127.0.0.1:9092\"\n");
        let cases = [
            ("[spool]\nfsync_interval = \"0s\"", "spool.fsync_interval"),
            ("[pairing]\ntimeout = \"0s\"", "pairing.timeout"),
            ("[sink.kafka]\ndelivery_timeout = \"0s\"", "sink.kafka.delivery_timeout"),
            ("[sink.kafka]\ndelivery_timeout = \"3ms\"", "sink.kafka.delivery_timeout"),
            ("[sink.kafka]\nstall_timeout = \"0s\"", "sink.kafka.stall_timeout"),
            // Past any sensible bound (and past what `Instant + Duration` or librdkafka accept).
            ("[pairing]\ntimeout = \"1000years\"", "pairing.timeout"),
            ("[server]\nshutdown_grace = \"1000years\"", "server.shutdown_grace"),
            ("[server]\nsecret_poll_interval = \"0s\"", "server.secret_poll_interval"),
            ("[sink.kafka]\ndelivery_timeout = \"30days\"", "sink.kafka.delivery_timeout"),
        ];
        for (section, key) in cases {
            let text = match section.strip_prefix("[sink.kafka]\n") {
                Some(line) => format!("{kafka}{line}\n"),
                None => format!("{TWO_ROUTES}\n{section}\n"),
            };
            let e = err(&text);
            assert_eq!(e.key, key, "{section}: {e}");
        }
        let e = err(&TWO_ROUTES.replace("timeout = \"90s\"", "timeout = \"100years\""));
        assert_eq!(e.key, "routes.reasoning.timeout", "{e}");
        // A zero grace is allowed: shadow calls are cut at once and their pairs published.
        assert!(from_toml(&format!("{TWO_ROUTES}\n[server]\nshutdown_grace = \"0s\"\n")).is_ok());
    }

    #[test]
    fn librdkafka_secrets_passed_through_never_print() {
        let mut cfg = KafkaConfig::default();
        cfg.librdkafka.insert("sasl.oauthbearer.client.secret".into(), "oauth-s3cr3t".into());
        cfg.librdkafka.insert("ssl.key.Password".into(), "key-pw-123".into());
        cfg.librdkafka.insert("security.protocol".into(), "SASL_SSL".into());
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("oauth-s3cr3t") && !shown.contains("key-pw-123"), "{shown}");
        assert!(shown.contains("SASL_SSL") && shown.contains("sasl.oauthbearer.client.secret"), "{shown}");
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("sk-very-secret");
        assert!(!format!("{s:?} {s}").contains("very-secret"));
        assert_eq!(s.expose(), "sk-very-secret");
    }
}
