//! Finishing a pair: redact, build and encode the record off the request path (on
//! the blocking pool when it is big), then hand it to the publisher.
//!
//! Owns the hand-off channel's size ([`RECORDS_CHANNEL`]) and the count of pairs
//! between the table and the publisher. Never sends to a sink or spools: that is the
//! publisher's. A record lost here is counted in `untaken_pairs_dropped_total`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

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
        self.finish_tasks.spawn(async move {
            // Build and encode first, then wait for the publisher holding only the encoded
            // record: the halves, the metadata and the config snapshot are freed before the wait.
            // Redaction, building and encoding are CPU work. A big pair goes off the
            // runtime's workers, so it never stalls a `Mirror` queued behind it; a small
            // one is cheaper to build here than to hand to another thread.
            let bytes = ready.meta.request_body.len()
                + [&ready.primary, &ready.counterfactual].iter().filter_map(|h| h.as_ref()).map(|h| h.body.len()).sum::<usize>();
            let builder = engine.clone();
            let built = if bytes <= crate::INLINE_CPU_BYTES {
                Ok(builder.encode(ready))
            } else {
                tokio::task::spawn_blocking(move || builder.encode(ready)).await
            };
            let encoded = match built {
                Ok(encoded) => encoded,
                Err(e) => {
                    tracing::error!(error = %e, "building a record panicked; the pair is lost");
                    engine.metrics.pairs_dropped.get_or_create(&crate::metrics::Reason { reason: "build_failed" }).inc();
                    engine.finishing.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            };
            // The publisher only stops after every finish task is done, so this cannot fail
            // while a record is in hand; if it ever did, count it rather than lose it silently.
            if engine.records.send(encoded).await.is_err() {
                engine.metrics.pairs_dropped.get_or_create(&crate::metrics::Reason { reason: "publisher_closed" }).inc();
            }
            engine.finishing.fetch_sub(1, Ordering::Relaxed);
        });
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
