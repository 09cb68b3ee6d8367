//! The shadow pipeline's own thread: one current-thread Tokio runtime on an OS thread
//! named `untaken-shadow`, running the dispatcher, the shadow calls (and so the HTTP
//! connection tasks they spawn), record building, the publisher, its deliveries and
//! the spool replay.
//!
//! Why a thread of its own: a sampled pair goes dispatcher → shadow call → HTTP
//! connection task → record build → publisher → delivery. On the multi-thread runtime
//! each hop could land on the other worker and wake it with a futex; here the hops are
//! wake-ups within one thread. `Mirror`, `Complete` and the servers stay on the
//! multi-thread runtime and only hand work over (a channel send, a spawn on
//! [`ShadowRuntime::handle`]).
//!
//! Owns the runtime and its thread: the runtime lives and is dropped on that thread,
//! never inside async context. Its blocking pool (threads `untaken-shadow-blocking`)
//! takes what must not stall the loop: big records' building and the spool's disk
//! I/O. Never decides what runs on it, and never restarts it: the thread ending before
//! shutdown is watched like any background task (`app` supervises [`ShadowRuntime::exited`]).

use std::future::Future;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The OS thread's name (what `top -H` and `perf` show).
pub(super) const THREAD: &str = "untaken-shadow";
/// How long tasks still on the runtime when it stops (idle HTTP connections) may take
/// to be dropped; every record is delivered or spooled before the stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// The shadow pipeline's runtime, running on its own thread until [`ShadowRuntime::stop`]
/// (or until this is dropped, which stops it without waiting).
pub(super) struct ShadowRuntime {
    handle: Handle,
    stop: CancellationToken,
    /// Cancelled when the thread ends, however it ends (its guard is dropped then).
    exited: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ShadowRuntime {
    /// Builds the runtime and starts its thread.
    pub fn start() -> std::io::Result<Self> {
        Self::start_running(|runtime, stop| runtime.block_on(stop.cancelled()))
    }

    /// [`ShadowRuntime::start`] with the thread's body given: it returns once the
    /// runtime is to stop (tests make it die).
    fn start_running(body: impl FnOnce(&tokio::runtime::Runtime, CancellationToken) + Send + 'static) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("{THREAD}-blocking"))
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, exited) = (CancellationToken::new(), CancellationToken::new());
        let thread = {
            let (stop, exited) = (stop.clone(), exited.clone().drop_guard());
            std::thread::Builder::new().name(THREAD.into()).spawn(move || {
                let _exited = exited;
                body(&runtime, stop);
                runtime.shutdown_timeout(STOP_TIMEOUT);
            })?
        };
        Ok(Self { handle, stop, exited, thread: Some(thread) })
    }

    /// Where the shadow pipeline's tasks are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Resolves once the thread has ended: after [`ShadowRuntime::stop`], or if it died.
    pub fn exited(&self) -> impl Future<Output = ()> + Send + 'static {
        self.exited.clone().cancelled_owned()
    }

    /// Stops the runtime (dropping the tasks still on it) and waits for its thread to end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        self.exited.cancelled().await;
        if let Some(thread) = self.thread.take() {
            // The thread has dropped its runtime already: this join does not block.
            let _ = thread.join();
        }
    }
}

impl Drop for ShadowRuntime {
    /// A sidecar dropped without its drain (a test's runtime shutting down) stops the
    /// thread too; nothing waits for it here, inside async context.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, TaskLabel};
    use crate::supervise::Supervisor;
    use std::sync::Arc;

    #[tokio::test]
    async fn tasks_run_on_the_named_thread_and_stop_ends_it() {
        let shadow = ShadowRuntime::start().unwrap();
        let on = shadow.handle().spawn(async { std::thread::current().name().map(str::to_string) }).await.unwrap();
        assert_eq!(on.as_deref(), Some(THREAD));
        let blocking = shadow.handle().spawn(async {
            tokio::task::spawn_blocking(|| std::thread::current().name().map(str::to_string)).await.unwrap()
        });
        assert_eq!(blocking.await.unwrap().as_deref(), Some("untaken-shadow-blocking"), "blocking work leaves the loop");
        let left = shadow.handle().spawn(std::future::pending::<()>());
        let exited = shadow.exited();
        tokio::time::timeout(Duration::from_secs(5), shadow.stop()).await.expect("stop returns");
        tokio::time::timeout(Duration::from_secs(1), exited).await.expect("exited resolves");
        assert!(left.await.unwrap_err().is_cancelled(), "a task still on the runtime is dropped with it");
    }

    /// The thread dying (here: its body panics) is a background task dying: counted,
    /// logged, and `/ready` (and gRPC health) turn unready, as `app` wires it.
    #[tokio::test]
    async fn the_thread_dying_is_counted_and_marks_the_process_unready() {
        let metrics = Arc::new(Metrics::new());
        let supervisor = Supervisor::new(metrics.clone(), CancellationToken::new());
        let shadow = ShadowRuntime::start_running(|runtime, _stop| {
            runtime.block_on(tokio::time::sleep(Duration::from_millis(50)));
            panic!("the shadow thread broke");
        })
        .unwrap();
        supervisor.spawn("shadow_thread", shadow.exited());
        tokio::time::timeout(Duration::from_secs(5), supervisor.failed()).await.expect("the death is noticed");
        assert!(supervisor.any_failed());
        let failures = metrics.task_failures.get_or_create(&TaskLabel { task: "shadow_thread" }).get();
        assert_eq!(failures, 1);
        let spawned = shadow.handle().spawn(async {});
        assert!(spawned.await.is_err(), "nothing runs on a dead shadow runtime");
        tokio::time::timeout(Duration::from_secs(5), shadow.stop()).await.expect("stopping a dead one returns");
    }

    #[tokio::test]
    async fn dropping_it_ends_the_thread() {
        let shadow = ShadowRuntime::start().unwrap();
        let exited = shadow.exited();
        drop(shadow);
        tokio::time::timeout(Duration::from_secs(5), exited).await.expect("the thread ends");
    }
}
