//! The effective config as JSON, for deployment tooling (`untaken check-config
//! --effective-json FILE`): the sidecar's or the judge's config with its defaults
//! applied, every duration in seconds (a number), and each secret as its
//! `*_env` / `*_file` reference. Owns that JSON shape and the two switches it
//! needs while one config is loaded and printed on this thread.
//!
//! Must never read a secret's value or print one: the pod's Secrets are not where
//! this runs, and a value put into a `librdkafka` table under a key naming a
//! password or secret is printed as `[redacted]`.

use std::cell::Cell;
use std::time::Duration;

use serde::{Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::config::ConfigError;

thread_local! {
    static DURATIONS_AS_SECONDS: Cell<bool> = const { Cell::new(false) };
    static SECRETS_ABSENT: Cell<bool> = const { Cell::new(false) };
}

/// True while [`effective_json`] loads a config: secrets are references only, and
/// [`crate::config::read_secret`] does not read them.
pub fn secrets_absent() -> bool {
    SECRETS_ABSENT.with(Cell::get)
}

/// Loads a config with `load` (defaults, file, `UNTAKEN_` environment, validation
/// except reading secrets) and returns it as the effective-config JSON.
pub fn effective_json<T: Serialize>(load: impl FnOnce() -> Result<T, ConfigError>) -> Result<Value, ConfigError> {
    SECRETS_ABSENT.with(|s| s.set(true));
    let loaded = load();
    SECRETS_ABSENT.with(|s| s.set(false));
    let config = loaded?;
    DURATIONS_AS_SECONDS.with(|s| s.set(true));
    let value = serde_json::to_value(&config);
    DURATIONS_AS_SECONDS.with(|s| s.set(false));
    let mut value = value.map_err(|e| ConfigError::new("--effective-json", format!("cannot represent the config as JSON: {e}")))?;
    redact(&mut value);
    Ok(value)
}

/// Replaces string values under keys naming a password or secret (other than the
/// `*_env` / `*_file` references) with `[redacted]`.
fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let k = key.to_ascii_lowercase();
                let names_secret = k.contains("password") || k.contains("secret");
                if names_secret && v.is_string() && !k.ends_with("_env") && !k.ends_with("_file") {
                    *v = Value::String("[redacted]".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// `#[serde(with = "crate::effective_config::duration")]`: durations read as
/// humantime text ("30s", "1m 30s"), written as such, or as seconds inside
/// [`effective_json`].
pub mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if DURATIONS_AS_SECONDS.with(Cell::get) {
            d.as_secs_f64().serialize(s)
        } else {
            humantime_serde::serialize(d, s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        humantime_serde::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_defaults_durations_in_seconds_and_secret_references() {
        let json = effective_json(|| {
            crate::config::from_toml(
                r#"
                [server]
                shutdown_grace = "1m 30s"
                auth_token_file = "/nonexistent/token"
                [server.tls]
                cert_file = "/nonexistent/tls.crt"
                key_file = "/nonexistent/tls.key"
                [routes.a]
                url = "http://127.0.0.1:1/v1"
                model = "m"
                api_key_env = "UNTAKEN_TEST_UNSET_VARIABLE"
                [sink.kafka]
                brokers = "127.0.0.1:9"
                [sink.kafka.librdkafka]
                "sasl.oauthbearer.client.secret" = "hunter2"
                "client.id" = "x"
                [sink.kafka.librdkafka_files]
                "ssl.key.pem" = "/nonexistent/client.key"
                "#,
            )
        })
        .expect("loads without reading the secrets");
        assert_eq!(json["server"]["shutdown_grace"], 90.0);
        assert_eq!(json["server"]["max_body_bytes"], 1024 * 1024, "the default is applied");
        assert_eq!(json["spool"]["max_bytes"], 256 * 1024 * 1024);
        assert_eq!(json["server"]["auth_token_file"], "/nonexistent/token");
        assert_eq!(json["routes"]["a"]["api_key_env"], "UNTAKEN_TEST_UNSET_VARIABLE");
        assert_eq!(json["sink"]["kafka"]["librdkafka"]["sasl.oauthbearer.client.secret"], "[redacted]");
        assert_eq!(json["sink"]["kafka"]["librdkafka_files"]["ssl.key.pem"], "/nonexistent/client.key");
        assert_eq!(json["server"]["tls"]["key_file"], "/nonexistent/tls.key");
        assert_eq!(json["sink"]["kafka"]["librdkafka"]["client.id"], "x");
        assert!(!json.to_string().contains("hunter2"));
        // Outside effective_json, secrets are read and durations are text again.
        let err = crate::config::from_toml("[server]\nauth_token_file = \"/nonexistent/token\"\n").unwrap_err();
        assert!(err.to_string().contains("server.auth_token_file"), "{err}");
        let text = serde_json::to_value(crate::config::Config::default()).unwrap();
        assert_eq!(text["server"]["shutdown_grace"], "30s");
    }

    #[test]
    fn judge_config_prints_its_own_defaults() {
        let json = effective_json(|| {
            crate::judge::config::from_toml(
                r#"
                [judge]
                kind = "pairwise"
                [judge.pairwise]
                url = "http://127.0.0.1:1/v1"
                model = "m"
                api_key_file = "/nonexistent/key"
                [kafka]
                brokers = "127.0.0.1:9"
                [kafka.librdkafka_files]
                "ssl.key.pem" = "/nonexistent/client.key"
                "#,
            )
        })
        .expect("loads without reading the key");
        assert_eq!(json["server"]["shutdown_grace"], 20.0);
        assert_eq!(json["server"]["admin_listen"], "127.0.0.1:9465");
        assert_eq!(json["judge"]["pairwise"]["api_key_file"], "/nonexistent/key");
    }
}
