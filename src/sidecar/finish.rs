//! Finishing a pair: redact, build and encode the record off the request path (on
//! the blocking pool when it is big), then hand it to the publisher. A pair the shadow
//! call completes is built in that call's task (`Engine::finish_here`); one completed
//! by `Complete`, the expiry or the drain, in a task of its own spawned on the shadow
//! pipeline's runtime (`Engine::pipeline`), never on the one serving `Complete`.
//!
//! Owns the hand-off channel's size ([`RECORDS_CHANNEL`]) and the count of pairs
//! between the table and the publisher. Never sends to a sink or spools: that is the
//! publisher's. A record lost here is counted in `untaken_pairs_dropped_total`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::metrics::Status;
use crate::proto::v1::PairStatus;
use crate::record::{self, Encoded, Half};
use crate::sidecar::engine::Engine;
use crate::sidecar::pairing::Ready;

/// Encoded records handed to the publisher and not yet taken. Records waiting beyond
/// it wait in their finish task, counted against `pairing.max_pending`.
pub const RECORDS_CHANNEL: usize = 16;

impl Engine {
    /// Builds, encodes and hands a finished pair to the publisher, in a tracked task.
    pub(super) fn finish(self: &Arc<Self>, ready: Ready) {
        self.finishing.fetch_add(1, Ordering::Relaxed);
        let engine = self.clone();
        let build = async move {
            // Build and encode first, then wait for the publisher holding only the encoded
            // record: the halves, the metadata and the config snapshot are freed before the wait.
            // Redaction, building and encoding are CPU work. A big pair goes off the
            // runtime's workers, so it never stalls a `Mirror` queued behind it; a small
            // one is cheaper to build here than to hand to another thread.
            let builder = engine.clone();
            let built = if is_small(&ready) {
                builder.encode_caught(ready)
            } else {
                tokio::task::spawn_blocking(move || builder.encode_caught(ready)).await.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "building a record failed; the pair is lost");
                    engine.metrics.pairs_dropped.get_or_create(&crate::metrics::Reason { reason: "build_failed" }).inc();
                    None
                })
            };
            if let Some(encoded) = built {
                engine.hand_over(encoded).await;
            }
            engine.finishing.fetch_sub(1, Ordering::Relaxed);
        };
        self.finish_tasks.spawn_on(build, &self.pipeline);
    }

    /// [`Engine::finish`] for a caller that is itself a background task (the shadow call,
    /// never a request path): a small pair is built right here and handed over at once
    /// when the publisher has room, which spares a task and a wake-up per pair. Nothing
    /// here awaits, so cancelling the caller cannot cut it short.
    pub(super) fn finish_here(self: &Arc<Self>, ready: Ready) {
        if !is_small(&ready) {
            return self.finish(ready);
        }
        self.finishing.fetch_add(1, Ordering::Relaxed);
        if let Some(encoded) = self.encode_caught(ready) {
            match self.records.try_send(encoded) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(encoded)) => {
                    // The publisher is busy: wait for it in a tracked task, as `finish` does.
                    self.finishing.fetch_add(1, Ordering::Relaxed);
                    let engine = self.clone();
                    let hand_over = async move {
                        engine.hand_over(encoded).await;
                        engine.finishing.fetch_sub(1, Ordering::Relaxed);
                    };
                    self.finish_tasks.spawn_on(hand_over, &self.pipeline);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.publisher_closed(),
            }
        }
        self.finishing.fetch_sub(1, Ordering::Relaxed);
    }

    /// [`Engine::encode`], with a panic counted as a lost pair instead of unwinding.
    fn encode_caught(&self, ready: Ready) -> Option<Encoded> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.encode(ready))) {
            Ok(encoded) => Some(encoded),
            Err(_) => {
                tracing::error!("building a record panicked; the pair is lost");
                self.metrics.pairs_dropped.get_or_create(&crate::metrics::Reason { reason: "build_failed" }).inc();
                None
            }
        }
    }

    /// Waits for the publisher to take a record.
    async fn hand_over(&self, encoded: Encoded) {
        // The publisher only stops after every finish task is done, so this cannot fail
        // while a record is in hand; if it ever did, count it rather than lose it silently.
        if self.records.send(encoded).await.is_err() {
            self.publisher_closed();
        }
    }

    fn publisher_closed(&self) {
        self.metrics.pairs_dropped.get_or_create(&crate::metrics::Reason { reason: "publisher_closed" }).inc();
    }

    /// Redacts, builds and encodes a finished pair (CPU only).
    fn encode(&self, ready: Ready) -> Encoded {
        let live = self.live.load();
        let redactor = &live.redactor;
        let mut meta = ready.meta;
        meta.request_body = redactor.apply(&meta.request_body);
        let redact = |h: Option<Half>| {
            h.map(|mut h| {
                h.body = redactor.apply(&h.body);
                h
            })
        };
        let (primary, counterfactual) = (redact(ready.primary), redact(ready.counterfactual));
        let rec = record::build(&meta, primary.as_ref(), counterfactual.as_ref(), &ready.reason, SystemTime::now());
        let status = match rec.status() {
            PairStatus::Complete => "complete",
            PairStatus::PrimaryMissing => "primary_missing",
            PairStatus::CounterfactualMissing => "counterfactual_missing",
            PairStatus::Unspecified => "unspecified",
        };
        self.metrics.pairs_built.get_or_create(&Status { status }).inc();
        record::encode(rec, self.encoding)
    }
}

/// Whether a pair's bodies are small enough to build on the shadow pipeline's thread
/// ([`crate::INLINE_CPU_BYTES`]); a bigger one is built on the blocking pool.
fn is_small(ready: &Ready) -> bool {
    let bytes = ready.meta.request_body.len()
        + [&ready.primary, &ready.counterfactual].iter().filter_map(|h| h.as_ref()).map(|h| h.body.len()).sum::<usize>();
    bytes <= crate::INLINE_CPU_BYTES
}
