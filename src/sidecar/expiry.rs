//! The expiry sweeper: every 50 ms, publishes the pairs whose other half did not
//! arrive within `pairing.timeout`, with the missing half named.
//!
//! Owns only the sweep's timing. Never decides what a timeout is (the pairing
//! table does) and never builds a record itself (it hands pairs to `Engine::finish` (in `finish`)).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::sidecar::engine::Engine;

impl Engine {
    /// Publishes pairs whose other half did not arrive in time. Runs until cancelled.
    pub async fn run_expiry(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let expired = {
                let mut table = self.table.lock().expect("pairing lock");
                let e = table.expire(Instant::now());
                self.metrics.pending_pairs.set(table.len() as i64);
                e
            };
            for ready in expired {
                self.finish(ready);
            }
        }
    }
}
