//! `App`: what every request handler and connection shares.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::session::Context;
use crate::store::Store;

/// Node-wide state, shared by handlers and sessions.
pub struct App {
    /// Validated settings.
    pub config: Config,
    /// The store engine: event log, loss detection and live log.
    pub store: Arc<dyn Store>,
    /// What every connection's session shares: the hub, the log, the live
    /// audience, the publish path and the per-connection limits.
    pub sessions: Arc<Context>,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Renders `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// Open WebSocket and SSE connections.
    pub connections: Arc<AtomicUsize>,
}

/// The transport a connection uses, for the `roomcast_connections` gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `GET /ws`.
    WebSocket,
    /// `GET /rooms/{room}/sse`.
    Sse,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "ws",
            Transport::Sse => "sse",
        }
    }
}

/// A connection's place on the node: one of the `--max-connections` and
/// one in its transport's gauge, both given back on drop, however the
/// connection ends.
pub struct ConnectionSlot {
    count: Arc<AtomicUsize>,
    transport: Transport,
}

impl App {
    /// Takes a connection slot, or `None` when the node is full.
    pub fn connection_slot(&self, transport: Transport) -> Option<ConnectionSlot> {
        let max = self.config.limits.max_connections;
        self.connections.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        metrics::gauge!("roomcast_connections", "transport" => transport.label()).increment(1.0);
        Some(ConnectionSlot { count: self.connections.clone(), transport })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("roomcast_connections", "transport" => self.transport.label()).decrement(1.0);
    }
}
