//! The one /metrics scraper and the readiness waits every integration test uses:
//! poll `/ready` or a metric until it says what the test waits for, never a fixed
//! sleep, so a loaded machine only makes a test slower, not flaky.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The admin port's /metrics text; empty if it does not answer (the process is
/// starting, draining or gone).
pub async fn scrape(admin: SocketAddr) -> String {
    match reqwest::get(format!("http://{admin}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of one metric series line (exact name and labels), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Sum of every series of `name` (all label sets).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls /metrics every 50 ms until `pred` holds and returns that scrape; panics with
/// `what` and the pair, spool and shedding lines of the last scrape after `timeout`.
pub async fn wait_metrics(admin: SocketAddr, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let m = scrape(admin).await;
        if pred(&m) {
            return m;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last /metrics:\n{}", interesting(&m));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The /metrics lines about pairs, grading, the spool and shedding (for failure messages).
pub fn interesting(m: &str) -> String {
    m.lines()
        .filter(|l| !l.starts_with('#') && (l.contains("pairs_") || l.contains("judge_") || l.contains("spool") || l.contains("mirror_requests") || l.contains("kafka_delivery_errors")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `GET /ready` answers with `status` (200 ready, 503 draining).
pub async fn ready_status(admin: SocketAddr) -> Option<u16> {
    reqwest::get(format!("http://{admin}/ready")).await.ok().map(|r| r.status().as_u16())
}

/// Polls `GET /ready` every 20 ms until it answers `status`; panics after `timeout`.
pub async fn wait_ready_status(admin: SocketAddr, status: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = ready_status(admin).await;
        if got == Some(status) {
            return;
        }
        assert!(Instant::now() < deadline, "GET /ready on {admin} did not answer {status} within {timeout:?} (last: {got:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
