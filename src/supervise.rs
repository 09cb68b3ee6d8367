//! Background tasks that cannot die silently.
//!
//! Every long-lived task the sidecar spawns (shadow dispatcher, pairing expiry,
//! publisher, spool replay, config reload, the gRPC and admin servers, and the
//! watch on the shadow pipeline's thread) runs through [`Supervisor::spawn`] (or
//! [`Supervisor::spawn_on`] that thread's runtime). A task that panics, or that returns before
//! shutdown began, is logged with its name, counted in
//! `untaken_background_task_failures_total{task}`, and turns `/ready` to 503 for
//! the rest of the process's life (and, through [`Supervisor::failed`], the gRPC
//! health of `untaken.v1.Mirror` to NOT_SERVING, which is what the deployed
//! readiness probe asks): a sidecar whose spool replay died keeps accepting pairs
//! it can no longer deliver, and an operator must see that.
//!
//! This module only watches; it never restarts a task (the state a task held
//! when it died is unknown) and never decides what a task does.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, TaskLabel};

/// Spawns and watches the sidecar's background tasks.
#[derive(Clone)]
pub struct Supervisor {
    metrics: Arc<Metrics>,
    /// Cancelled when shutdown begins: from then on a task that returns is done, not dead.
    shutdown: CancellationToken,
    /// Set once any task died; `/ready` answers 503 while it is set.
    failed: Arc<AtomicBool>,
    /// Wakes [`Supervisor::failed`].
    died: Arc<watch::Sender<bool>>,
}

impl Supervisor {
    pub fn new(metrics: Arc<Metrics>, shutdown: CancellationToken) -> Self {
        Self { metrics, shutdown, failed: Arc::new(AtomicBool::new(false)), died: Arc::new(watch::channel(false).0) }
    }

    /// Resolves once a background task has died.
    pub async fn failed(&self) {
        let mut rx = self.died.subscribe();
        let _ = rx.wait_for(|died| *died).await;
    }

    /// True once a background task panicked or ended before shutdown.
    pub fn any_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Spawns `task` on the current runtime under `name`. Aborting the returned handle
    /// cancels the task itself (it is not a failure).
    pub fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<()>
    where
        F: Future + Send + 'static,
    {
        self.spawn_on(name, &tokio::runtime::Handle::current(), task)
    }

    /// [`Supervisor::spawn`] on the runtime behind `runtime` (the shadow pipeline's own).
    pub fn spawn_on<F>(&self, name: &'static str, runtime: &tokio::runtime::Handle, task: F) -> JoinHandle<()>
    where
        F: Future + Send + 'static,
    {
        let me = self.clone();
        runtime.spawn(async move {
            match AssertUnwindSafe(task).catch_unwind().await {
                Ok(_) if me.shutdown.is_cancelled() => {}
                Ok(_) => me.died(name, "ended before shutdown"),
                Err(panic) => me.died(name, &panic_message(panic.as_ref())),
            }
        })
    }

    fn died(&self, task: &'static str, why: &str) {
        self.failed.store(true, Ordering::Relaxed);
        self.died.send_replace(true);
        self.metrics.task_failures.get_or_create(&TaskLabel { task }).inc();
        tracing::error!(task, why, "background task died; /ready now answers 503");
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn failures(m: &Metrics, task: &'static str) -> u64 {
        m.task_failures.get_or_create(&TaskLabel { task }).get()
    }

    #[tokio::test]
    async fn a_panicking_task_is_counted_and_marks_the_process_unready() {
        let metrics = Arc::new(Metrics::new());
        let s = Supervisor::new(metrics.clone(), CancellationToken::new());
        s.spawn("spool", async { std::future::pending::<()>().await }).abort();
        assert!(!s.any_failed(), "an aborted task did not die");
        s.spawn("spool", async {
            // What `tokio::time::interval(Duration::ZERO)` did to the spool task.
            let _ = tokio::time::interval(Duration::ZERO);
        })
        .await
        .unwrap();
        assert!(s.any_failed());
        tokio::time::timeout(Duration::from_secs(1), s.failed()).await.expect("failed() resolves");
        assert_eq!(failures(&metrics, "spool"), 1);
        assert!(metrics.render().contains(r#"untaken_background_task_failures_total{task="spool"} 1"#));
    }

    #[tokio::test]
    async fn a_task_that_returns_early_is_a_failure_but_not_after_shutdown() {
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let s = Supervisor::new(metrics.clone(), shutdown.clone());
        s.spawn("expiry", async {}).await.unwrap();
        assert!(s.any_failed());
        assert_eq!(failures(&metrics, "expiry"), 1);

        let s = Supervisor::new(metrics.clone(), shutdown.clone());
        shutdown.cancel();
        s.spawn("publisher", async {}).await.unwrap();
        assert!(!s.any_failed(), "returning once shutdown began is the normal end");
        assert_eq!(failures(&metrics, "publisher"), 0);
    }
}
