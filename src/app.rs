//! `App`: what every request handler and connection shares.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hub::Hub;
use crate::session::SessionLimits;
use crate::store::Store;

/// Node-wide state, shared by handlers and sessions.
pub struct App {
    /// Validated settings.
    pub config: Config,
    /// Where events live.
    pub store: Arc<dyn Store>,
    /// Local room registry and fanout.
    pub hub: Arc<Hub>,
    /// Limits applied to every connection.
    pub limits: SessionLimits,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Renders `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// Open WebSocket and SSE connections.
    pub connections: Arc<AtomicUsize>,
}

/// A slot among the node's `--max-connections`, released on drop.
pub struct ConnectionSlot(Arc<AtomicUsize>);

impl App {
    /// Takes a connection slot, or `None` when the node is full.
    pub fn connection_slot(&self) -> Option<ConnectionSlot> {
        let max = self.config.max_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| ConnectionSlot(self.connections.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
