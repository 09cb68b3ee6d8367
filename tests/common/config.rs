//! Test configs as the typed [`Config`], never `format!`ed TOML: a test changes a
//! field, the compiler checks it. A test that runs the binary writes the same value
//! to a file with [`write`] (serialised; secrets are file/env references, so no
//! secret value is ever in it). The judge worker's [`JudgeConfig`] likewise
//! ([`judge`], [`write_judge`]).

use std::path::Path;
use std::time::Duration;

use untaken::config::{Config, LogFormat, RouteConfig};
use untaken::judge::config::{JudgeConfig, JudgeKind, JudgeSection, PairwiseConfig};

/// A route to `url` serving `model`, 2 s timeout, no counterfactual, no limits.
pub fn route(url: &str, model: &str) -> RouteConfig {
    RouteConfig {
        url: url.to_string(),
        model: model.to_string(),
        counterfactual: None,
        timeout: Duration::from_secs(2),
        api_key_env: None,
        api_key_file: None,
        input_usd_per_mtok: 0.0,
        output_usd_per_mtok: 0.0,
        max_rps: None,
        max_concurrency: Some(256),
        budget_usd_per_hour: None,
    }
}

/// Every request sampled, text logs, a 5 s grace, a Kafka sink on `topic` at
/// `bootstrap`, and a spool in `spool` fsynced every 100 ms; no routes yet.
pub fn base(bootstrap: &str, topic: &str, spool: &Path) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.admin_listen = "127.0.0.1:0".into();
    c.server.shutdown_grace = Duration::from_secs(5);
    c.log.format = LogFormat::Text;
    c.sampling.default_rate = 1.0;
    c.sink.kafka.brokers = bootstrap.to_string();
    c.sink.kafka.topic = topic.to_string();
    c.spool.dir = Some(spool.to_path_buf());
    c.spool.fsync_interval = Duration::from_millis(100);
    c
}

/// `config`, checked as `untaken` checks a file; a test config that does not pass
/// fails the test naming the key.
pub fn validated(config: Config) -> Config {
    config.validate().unwrap_or_else(|e| panic!("test config: {e}\n{}", to_toml(&config)));
    config
}

/// `config` as the TOML file `untaken --config` reads.
pub fn to_toml(config: &Config) -> String {
    toml::to_string(config).expect("a Config serialises to TOML")
}

/// Writes `config` to `path` for the binary, and checks it reads back as the same config.
pub fn write(config: &Config, path: &Path) {
    let text = to_toml(config);
    std::fs::write(path, &text).unwrap();
    let back = untaken::config::from_toml(&text).unwrap_or_else(|e| panic!("test config file: {e}\n{text}"));
    assert_eq!(to_toml(&back), text, "the file reads back as the config the test built");
}

/// A judge worker grading with `judge`, reading `pairs` from `bootstrap` in consumer
/// group `group` and writing grades to `grades`: offsets committed every 200 ms, a
/// 5 s grace, text logs. `server.admin_listen` is 127.0.0.1:0; an in-process worker
/// is given its bound listener (`untaken::judge::run_kafka_on`).
pub fn judge(judge: JudgeSection, bootstrap: &str, pairs: &str, grades: &str, group: &str) -> JudgeConfig {
    let mut c = JudgeConfig { judge, ..JudgeConfig::default() };
    c.kafka.brokers = bootstrap.to_string();
    c.kafka.pairs_topic = pairs.to_string();
    c.kafka.grades_topic = grades.to_string();
    c.kafka.group_id = group.to_string();
    c.kafka.commit_interval = Duration::from_millis(200);
    c.server.admin_listen = "127.0.0.1:0".into();
    c.server.shutdown_grace = Duration::from_secs(5);
    c.log.format = LogFormat::Text;
    c
}

/// The pairwise judge `judge-model` at `url`, retrying after 10 ms (tests provoke faults).
pub fn pairwise(url: &str) -> JudgeSection {
    let pairwise = PairwiseConfig { retry_backoff: Duration::from_millis(10), ..PairwiseConfig::new(url, "judge-model") };
    JudgeSection { kind: JudgeKind::Pairwise, pairwise: Some(pairwise), reference: None }
}

/// `config` as the TOML file `untaken judge --config` reads.
pub fn judge_toml(config: &JudgeConfig) -> String {
    toml::to_string(config).expect("a JudgeConfig serialises to TOML")
}

/// `config`, checked as `untaken judge` checks a file (written and read back, so
/// what a test runs is what a file would give); fails the test naming the key.
pub fn validated_judge(config: JudgeConfig) -> JudgeConfig {
    let text = judge_toml(&config);
    untaken::judge::config::from_toml(&text).unwrap_or_else(|e| panic!("test judge config: {e}\n{text}"))
}

/// Writes `config` to `path` for `untaken judge`, and checks it reads back.
pub fn write_judge(config: &JudgeConfig, path: &Path) {
    validated_judge(config.clone());
    std::fs::write(path, judge_toml(config)).unwrap();
}
