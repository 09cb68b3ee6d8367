//! The real `untaken` binary as a child process, for tests that SIGKILL or
//! SIGTERM it: free loopback ports, spawn with a config file, wait until it is
//! ready, read its /metrics, signal it, wait for its exit with a bound.
//!
//! No sidecar outlives the tests: the child is started through a tiny bash
//! wrapper that forks a watcher and then `exec`s the binary (so the child pid
//! *is* the sidecar's pid and `Child::kill` hits it directly). The watcher
//! checks the test process once a second and SIGKILLs the sidecar when the test
//! process is gone, however it died. `Drop` SIGKILLs it too.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago (bound to port 0 and released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// `127.0.0.1:<port>` where nothing listens: connecting is refused at once.
pub fn dead_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A command for `program` that runs as a child of this test process and is
/// SIGKILLed within about a second once the test process is gone, however it died.
/// The child's pid is the program's (see the module header); add its arguments.
pub fn watched(program: &str) -> Command {
    // $$ is the wrapper's pid, which becomes the program's on exec. The watcher
    // also stops by itself once the program is gone.
    let script = r#"tp=$1; shift
( while kill -0 "$tp" 2>/dev/null && kill -0 $$ 2>/dev/null; do sleep 1; done
  kill -0 "$tp" 2>/dev/null || kill -9 $$ 2>/dev/null ) </dev/null >/dev/null 2>&1 &
exec "$@""#;
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(script).arg("watched-wrapper").arg(std::process::id().to_string()).arg(program);
    cmd
}

/// A running `untaken serve --config FILE`.
pub struct Sidecar {
    child: Option<Child>,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
}

impl Sidecar {
    /// Starts the binary on `config` (which must listen on `grpc` and `admin`);
    /// stdout and stderr are appended to `log`. Does not wait for readiness.
    pub fn spawn(config: &Path, grpc: SocketAddr, admin: SocketAddr, log: &Path) -> Sidecar {
        Self::spawn_command("serve", config, grpc, admin, log)
    }

    /// Starts `untaken judge --config FILE` (the worker's admin port is `admin`; it
    /// has no gRPC port, `grpc` is unused).
    pub fn spawn_judge(config: &Path, admin: SocketAddr, log: &Path) -> Sidecar {
        Self::spawn_command("judge", config, admin, admin, log)
    }

    /// Starts the binary on `config`, whose `server.listen` and `server.admin_listen`
    /// are 127.0.0.1:0, and reads the ports it bound from its `untaken started` log
    /// line (no port probing); panics with the log tail if it exits first or does not
    /// start within `timeout`. Does not wait for readiness.
    pub async fn spawn_on_port_0(config: &Path, log: &Path, timeout: Duration) -> Sidecar {
        let unbound: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let from = fs::metadata(log).map(|m| m.len() as usize).unwrap_or(0);
        let mut sc = Self::spawn_command("serve", config, unbound, unbound, log);
        let deadline = Instant::now() + timeout;
        loop {
            let text = fs::read(log).unwrap_or_default();
            if let Some((grpc, admin)) = started_addrs(&String::from_utf8_lossy(&text[from.min(text.len())..])) {
                (sc.grpc, sc.admin) = (grpc, admin);
                return sc;
            }
            if let Some(status) = sc.try_wait() {
                panic!("sidecar exited before it started ({status}):\n{}", sc.log_tail(60));
            }
            assert!(Instant::now() < deadline, "no `untaken started` line after {timeout:?}:\n{}", sc.log_tail(60));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn spawn_command(subcommand: &str, config: &Path, grpc: SocketAddr, admin: SocketAddr, log: &Path) -> Sidecar {
        let out = fs::OpenOptions::new().create(true).append(true).open(log).expect("open sidecar log");
        let err = out.try_clone().expect("dup sidecar log");
        let mut cmd = watched(env!("CARGO_BIN_EXE_untaken"));
        cmd.arg(subcommand)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env_remove("RUST_LOG");
        // `UNTAKEN_*` variables override the config file (and unknown ones, like the
        // harness's UNTAKEN_TEST_BROKERS, would be rejected as unknown keys).
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("UNTAKEN_") {
                cmd.env_remove(&k);
            }
        }
        let child = cmd.spawn().expect("spawn the untaken binary");
        Sidecar { child: Some(child), grpc, admin, log: log.to_path_buf() }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("sidecar was reaped").id()
    }

    /// Polls `GET /ready` until it answers 200; panics with the log tail if the
    /// process exits or `timeout` passes first.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        loop {
            if let Some(status) = self.try_wait() {
                panic!("sidecar exited before it was ready ({status}):\n{}", self.log_tail(60));
            }
            if let Ok(r) = http.get(format!("http://{}/ready", self.admin)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!("sidecar not ready after {timeout:?}:\n{}", self.log_tail(60));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The admin port's /metrics text; empty if it does not answer.
    pub async fn metrics(&self) -> String {
        super::metrics::scrape(self.admin).await
    }

    /// SIGKILL and reap.
    pub fn sigkill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// Sends SIGTERM (returns at once).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stdin(Stdio::null())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last `lines` lines the sidecar wrote to stdout/stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// The gRPC and admin addresses in the first `untaken started` line of `log` (a text
/// log, ANSI colours or not).
fn started_addrs(log: &str) -> Option<(SocketAddr, SocketAddr)> {
    let line = without_ansi(log.lines().find(|l| l.contains("untaken started"))?);
    let field = |name: &str| {
        line.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.trim_matches('"').parse::<SocketAddr>().ok())
    };
    Some((field("grpc")?, field("admin")?))
}

/// `line` without ANSI colour sequences (`ESC [ ... m`).
fn without_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}
