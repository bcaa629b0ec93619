//! Audience reports: this node's subscriber counts, kept fresh in the store.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::hub::Hub;
use crate::store::Store;

/// How often counts are reported. Reports live for [`PRESENCE_TTL`], so a
/// crashed node's viewers leave the audience within that time.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);
/// How long a report counts without a refresh.
pub const PRESENCE_TTL: Duration = Duration::from_secs(6);

/// Reports counts every [`REPORT_EVERY`] until shutdown, then withdraws them.
pub fn spawn(hub: Arc<Hub>, store: Arc<dyn Store>, node: String, shutdown: CancellationToken, tracker: &TaskTracker) {
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let report = hub.audience_report();
                    if let Err(e) = store.report_audience(&node, &report).await {
                        warn!(cause = %e, "could not report audience");
                    }
                }
            }
        }
        let zeros: Vec<_> = hub.audience_report().into_iter().map(|(room, _)| (room, 0)).collect();
        let _ = tokio::time::timeout(Duration::from_secs(1), store.report_audience(&node, &zeros)).await;
    });
}
