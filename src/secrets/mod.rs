//! Secrets that rotate without a restart: the gRPC bearer token, the TLS
//! certificate, key and client CA, the routes' API key files, and Kafka's secret
//! files (`sasl_password_file`, `librdkafka_files`, and the files librdkafka's
//! `*.location` settings name). [`SecretWatch`] is the machinery, shared by both
//! roles: the sidecar's [`Secrets`] and the judge worker (its endpoint's API key and
//! its Kafka files, wired in `judge::worker`).
//!
//! Owns noticing that a secret file changed, validating the new version, putting
//! it in force, and counting each attempt in
//! `untaken_secret_reloads_total{secret,outcome}` (`ok` or `rejected`). A broken
//! new version (unreadable, empty, an unparsable PEM, a key that is not the
//! certificate's, a Kafka client librdkafka refuses to create) is logged with the
//! file and the reason, counted, and the version in force stays;
//! `untaken_secret_file_rejected{secret}` is 1 until a valid version replaces it.
//!
//! How a change is seen: every `server.secret_poll_interval`, and at once on SIGHUP,
//! the files are read off the async runtime and hashed. Content is polled rather
//! than inodes watched: Kubernetes updates a mounted Secret by writing a new
//! directory and renaming the `..data` symlink, so a file is replaced, never
//! modified, and an inotify watch on it sees one IN_DELETE_SELF and then nothing
//! (kubernetes/kubernetes#111947); the notify crate inherits that. Reading a few
//! small files every poll is cheap and has no such case to get wrong. The files that make
//! one secret (certificate, key, CA) are read twice when they changed; if the two
//! reads differ a swap is under way and they are read again at the next poll, so a
//! certificate is never put in force with its predecessor's key.
//!
//! Must never log or print a secret's content, replace a working secret by a broken
//! one, or make the request path wait: users read the value in force from an
//! `ArcSwap`, and only this module reads the files.

pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, KafkaConfig, Secret};
use crate::sidecar::engine::Engine;
use crate::metrics::{Metrics, SecretLabel, SecretOutcome};
use crate::sink::ConfiguredSink;
pub use tls::LiveTls;

/// A text secret in force (the bearer token, the judge's API key); its users load it
/// at each use, so the next call carries a rotated value.
pub type LiveToken = Arc<ArcSwap<Secret>>;

/// The sidecar's secrets as read at start, and the watch that keeps them current.
pub struct Secrets {
    token: Option<LiveToken>,
    tls: Option<Arc<LiveTls>>,
    watch: SecretWatch,
}

/// What some secret files held at one moment: taken before the value put in force is
/// read, so that a rotation landing in between is applied (again) at the first poll.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Version(Fingerprint);

impl Version {
    /// What `paths` hold now (reads files).
    pub fn of(paths: &[PathBuf]) -> Self {
        Self(seen(paths))
    }
}

/// Groups of secret files, each polled for a new version which is validated and put in
/// force by its own `apply`, every attempt counted in `metrics`.
pub struct SecretWatch {
    groups: Vec<Group>,
    poll: Duration,
    metrics: Arc<Metrics>,
}

impl SecretWatch {
    /// An empty watch polling every `poll`, counting in `metrics`' `secret_reloads` and `secret_rejected`.
    pub fn new(poll: Duration, metrics: Arc<Metrics>) -> Self {
        Self { groups: Vec::new(), poll, metrics }
    }

    /// Watches `paths` (the secret `secret`, its metric label), in force as they were at
    /// `since`. `apply` gets a changed version's contents, in the order of `paths`, none
    /// empty; it validates them and puts them in force, or says what is wrong (never the
    /// content). It runs on the blocking pool.
    pub fn add(
        &mut self,
        secret: &'static str,
        paths: Vec<PathBuf>,
        since: Version,
        apply: impl FnMut(&[Vec<u8>]) -> Result<(), String> + Send + 'static,
    ) {
        let group = Group::new(secret, paths, apply);
        self.groups.push(Group { seen: since.0, ..group });
    }

    /// True when no file is watched.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Polls the files until `stop` (every `poll`, and at once on SIGHUP), putting each
    /// valid new version in force.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is now: the files were just read
        loop {
            let hup_fired = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = hup_fired => {}
                _ = tick.tick() => {}
            }
            let (mut groups, metrics) = (std::mem::take(&mut self.groups), self.metrics.clone());
            self.groups = tokio::task::spawn_blocking(move || {
                for g in &mut groups {
                    g.poll_and_report(&metrics);
                }
                groups
            })
            .await
            .expect("polling the secret files does not panic");
        }
    }
}

/// An `apply` for a one-file text secret: the file's trimmed UTF-8 text goes into `target`.
pub fn store_text(target: LiveToken) -> impl FnMut(&[Vec<u8>]) -> Result<(), String> + Send + 'static {
    move |files| {
        let text = std::str::from_utf8(&files[0]).map_err(|_| "the file is not UTF-8 text".to_string())?;
        target.store(Arc::new(Secret::new(text.trim())));
        Ok(())
    }
}

impl Secrets {
    /// Reads the bearer token and the TLS files (a broken one is a config error naming
    /// its key) and prepares the watch of every secret file `config` names. Reads files.
    pub fn load(config: &Config, engine: Arc<Engine>, sink: Arc<ConfiguredSink>) -> Result<Self, ConfigError> {
        // Each group's files are fingerprinted before the value put in force is read: a
        // rotation landing in between is then applied (again) at the first poll, never missed.
        // (The sink and the engine read Kafka's and the routes' files a moment earlier.)
        let mut watch = SecretWatch::new(config.server.secret_poll_interval, engine.metrics().clone());
        let token_path = config.server.auth_token_file.clone().filter(|_| config.server.auth_token_env.is_none());
        let token_seen = token_path.as_ref().map(|p| Version::of(std::slice::from_ref(p)));
        let token = config.server.auth_token()?.map(|t| Arc::new(ArcSwap::from_pointee(t)));
        if let (Some(token), Some(path), Some(first)) = (&token, token_path, token_seen) {
            watch.add("server.auth_token_file", vec![path], first, store_text(token.clone()));
        }
        let tls = match &config.server.tls {
            None => None,
            Some(t) => {
                let mut paths = vec![t.cert_file.clone(), t.key_file.clone()];
                paths.extend(t.client_ca_file.clone());
                let first = Version::of(&paths);
                let files = read(&paths).map_err(|e| ConfigError::new("server.tls", e))?;
                let built = tls::server_config(&files[0], &files[1], files.get(2).map(Vec::as_slice))
                    .map_err(|e| ConfigError::new(format!("server.tls.{}", e.file), e.message))?;
                let live = Arc::new(LiveTls::new(built));
                let target = live.clone();
                watch.add("server.tls", paths, first, move |files| {
                    let built = tls::server_config(&files[0], &files[1], files.get(2).map(Vec::as_slice)).map_err(|e| e.to_string())?;
                    target.store(built);
                    Ok(())
                });
                Some(live)
            }
        };
        if let ConfiguredSink::Kafka(_) = sink.as_ref() {
            let paths = kafka_files(&config.sink.kafka);
            if !paths.is_empty() {
                let kafka = config.sink.kafka.clone();
                let since = Version::of(&paths);
                watch.add("sink.kafka", paths, since, move |_| match sink.as_ref() {
                    // librdkafka reads these files itself, when a client is created.
                    ConfiguredSink::Kafka(k) => k.rebuild(&kafka).map_err(|e| e.to_string()),
                    ConfiguredSink::File(_) => Ok(()),
                });
            }
        }
        // Routes come and go with config reloads: their files are looked up at each poll.
        let routes = engine.clone();
        let files = move || routes.live().config.routes.values().filter_map(|r| r.api_key_file.clone()).collect();
        watch.groups.push(Group::dynamic("routes.api_key_file", Box::new(files), move |_| {
            engine.reread_route_keys().map_err(|e| e.to_string())
        }));
        Ok(Self { token, tls, watch })
    }

    /// The bearer token callers must present, if one is configured.
    pub fn token(&self) -> Option<LiveToken> {
        self.token.clone()
    }

    /// The TLS configuration of the gRPC port, if TLS is on.
    pub fn tls(&self) -> Option<Arc<LiveTls>> {
        self.tls.clone()
    }

    /// Polls the files until `stop`, putting each valid new version in force.
    pub async fn watch(self, stop: CancellationToken) {
        self.watch.run(stop).await
    }
}

/// The files librdkafka reads secrets from: the SASL password file, the
/// `librdkafka_files`, and the files the `*.location` settings name (certificates and
/// keys librdkafka loads when a client is created).
pub fn kafka_files(kafka: &KafkaConfig) -> Vec<PathBuf> {
    let locations = kafka.librdkafka.iter().filter(|(k, _)| k.ends_with(".location")).map(|(_, v)| PathBuf::from(v));
    kafka
        .sasl_password_file
        .iter()
        .cloned()
        .chain(kafka.librdkafka_files.values().cloned())
        .chain(locations.filter(|p| p.is_file()))
        .collect()
}

type Fingerprint = [u8; 32];
/// Validates a new version's contents and puts it in force; the error names what is wrong, never the content.
type Apply = Box<dyn FnMut(&[Vec<u8>]) -> Result<(), String> + Send>;

/// The files that make one secret, and what to do with a new version of them.
struct Group {
    /// The config key the files come from: the `secret` label of the reload metric.
    secret: &'static str,
    /// The files, in the order `apply` expects them.
    files: Box<dyn Fn() -> Vec<PathBuf> + Send>,
    apply: Apply,
    /// The version last put in force or rejected.
    seen: Fingerprint,
}

/// What one poll of a group did.
#[derive(Debug, PartialEq)]
enum Outcome {
    Unchanged,
    /// The files changed between two reads (a swap under way): read again next time.
    Settling,
    Applied,
    Rejected(String),
}

impl Group {
    fn new(secret: &'static str, paths: Vec<PathBuf>, apply: impl FnMut(&[Vec<u8>]) -> Result<(), String> + Send + 'static) -> Self {
        Self::dynamic(secret, Box::new(move || paths.clone()), apply)
    }

    /// A group whose file list is looked up at each poll. Its current contents count
    /// as seen: they are what the sidecar started with.
    fn dynamic(
        secret: &'static str,
        files: Box<dyn Fn() -> Vec<PathBuf> + Send>,
        apply: impl FnMut(&[Vec<u8>]) -> Result<(), String> + Send + 'static,
    ) -> Self {
        let seen = seen(&files());
        Self { secret, files, apply: Box::new(apply), seen }
    }

    fn poll(&mut self) -> Outcome {
        let paths = (self.files)();
        let first = read(&paths);
        let print = fingerprint(&paths, &first);
        if print == self.seen {
            return Outcome::Unchanged;
        }
        if fingerprint(&paths, &read(&paths)) != print {
            return Outcome::Settling;
        }
        self.seen = print;
        let contents = match first {
            Ok(c) => c,
            Err(e) => return Outcome::Rejected(e),
        };
        if let Some(empty) = paths.iter().zip(&contents).find(|(_, c)| c.trim_ascii().is_empty()) {
            return Outcome::Rejected(format!("{} is empty", empty.0.display()));
        }
        match (self.apply)(&contents) {
            Ok(()) => Outcome::Applied,
            Err(e) => Outcome::Rejected(e),
        }
    }

    fn poll_and_report(&mut self, metrics: &Metrics) {
        let secret = self.secret;
        let outcome = match self.poll() {
            Outcome::Unchanged => return,
            Outcome::Settling => {
                tracing::debug!(secret, "secret files changing; reading them again at the next poll");
                return;
            }
            Outcome::Applied => {
                tracing::info!(secret, "secret reloaded");
                "ok"
            }
            Outcome::Rejected(error) => {
                tracing::error!(secret, error, "new secret rejected; keeping the one in force");
                "rejected"
            }
        };
        metrics.secret_reloads.get_or_create(&SecretOutcome { secret, outcome }).inc();
        metrics.secret_rejected.get_or_create(&SecretLabel { secret }).set(i64::from(outcome == "rejected"));
    }
}

/// The fingerprint of what `paths` hold now.
fn seen(paths: &[PathBuf]) -> Fingerprint {
    fingerprint(paths, &read(paths))
}

/// The contents of `paths`, or the first failure to read one (which names the file).
fn read(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, String> {
    paths.iter().map(|p| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))).collect()
}

/// A digest of what reading `paths` gave, so that a change of any file, of the list,
/// or of a read error is a new version (and an unchanged error is not reported twice).
fn fingerprint(paths: &[PathBuf], read: &Result<Vec<Vec<u8>>, String>) -> Fingerprint {
    let mut h = Sha256::new();
    for p in paths {
        h.update(p.as_os_str().as_encoded_bytes());
        h.update([0]);
    }
    match read {
        Ok(contents) => {
            for c in contents {
                h.update((c.len() as u64).to_le_bytes());
                h.update(c);
            }
        }
        Err(e) => {
            h.update([0xff]);
            h.update(e.as_bytes());
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::SecretVolume;
    use std::sync::Mutex;

    /// The versions a test group put in force, each as its files' contents.
    type Applied = Arc<Mutex<Vec<Vec<Vec<u8>>>>>;

    /// A group over `volume`'s files that records what it was given, and refuses `b"bad"`.
    fn group(volume: &SecretVolume, names: &[&str]) -> (Group, Applied) {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let log = applied.clone();
        let paths = names.iter().map(|n| volume.path(n)).collect();
        let g = Group::new("test", paths, move |files| {
            if files.iter().any(|f| f == b"bad") {
                return Err("refused".into());
            }
            log.lock().unwrap().push(files.to_vec());
            Ok(())
        });
        (g, applied)
    }

    #[test]
    fn a_kubernetes_style_swap_is_applied_once() {
        let dir = tempfile::tempdir().unwrap();
        let volume = SecretVolume::new(dir.path());
        volume.update(&[("cert", b"c1"), ("key", b"k1")]);
        let (mut g, applied) = group(&volume, &["cert", "key"]);
        assert_eq!(g.poll(), Outcome::Unchanged, "what was there at start is in force");
        volume.update(&[("cert", b"c2"), ("key", b"k2")]);
        assert_eq!(g.poll(), Outcome::Applied);
        assert_eq!(g.poll(), Outcome::Unchanged);
        assert_eq!(*applied.lock().unwrap(), vec![vec![b"c2".to_vec(), b"k2".to_vec()]]);
    }

    #[test]
    fn a_broken_version_is_rejected_once_and_a_fixed_one_applied() {
        let dir = tempfile::tempdir().unwrap();
        let volume = SecretVolume::new(dir.path());
        volume.update(&[("token", b"t1")]);
        let (mut g, applied) = group(&volume, &["token"]);
        volume.update(&[("token", b"bad")]);
        assert_eq!(g.poll(), Outcome::Rejected("refused".into()));
        assert_eq!(g.poll(), Outcome::Unchanged, "a rejected version is not reported at every poll");
        volume.update(&[("token", b"  \n")]);
        assert!(matches!(g.poll(), Outcome::Rejected(e) if e.ends_with("token is empty")));
        std::fs::remove_file(volume.path("token")).unwrap();
        assert!(matches!(g.poll(), Outcome::Rejected(e) if e.starts_with("cannot read")));
        volume.update(&[("token", b"t2")]);
        assert_eq!(g.poll(), Outcome::Applied);
        assert_eq!(*applied.lock().unwrap(), vec![vec![b"t2".to_vec()]]);
    }

    #[test]
    fn the_fingerprint_changes_with_any_file_the_list_or_the_error() {
        let (a, b) = (PathBuf::from("a"), PathBuf::from("b"));
        let two = |x: &[u8], y: &[u8]| fingerprint(&[a.clone(), b.clone()], &Ok(vec![x.to_vec(), y.to_vec()]));
        assert_eq!(two(b"1", b"2"), two(b"1", b"2"));
        assert_ne!(two(b"1", b"2"), two(b"1", b"3"));
        assert_ne!(two(b"12", b""), two(b"1", b"2"), "contents are length-delimited");
        let one = || Ok(vec![b"1".to_vec()]);
        assert_ne!(fingerprint(std::slice::from_ref(&a), &one()), fingerprint(std::slice::from_ref(&b), &one()));
        assert_ne!(fingerprint(std::slice::from_ref(&a), &Err("x".into())), fingerprint(&[a], &Err("y".into())));
    }

    #[test]
    fn kafka_files_are_the_secret_files_and_the_located_ones() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client.key");
        std::fs::write(&key, "k").unwrap();
        let mut k = KafkaConfig { sasl_password_file: Some(dir.path().join("pw")), ..Default::default() };
        k.librdkafka_files.insert("ssl.key.password".into(), dir.path().join("keypw"));
        k.librdkafka.insert("ssl.key.location".into(), key.display().to_string());
        k.librdkafka.insert("ssl.ca.location".into(), "probe".into());
        k.librdkafka.insert("security.protocol".into(), "ssl".into());
        assert_eq!(kafka_files(&k), vec![dir.path().join("pw"), dir.path().join("keypw"), key]);
    }
}
