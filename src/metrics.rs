//! Prometheus metrics: one process-wide recorder, rendered by `/metrics`.
//!
//! Metrics are recorded where things happen through the `metrics` macros.
//! Every name an operator's dashboard or alert uses is registered at start
//! (at zero), so `/metrics` always lists it: a panel never shows "no data"
//! because nothing has gone wrong yet. The catalogue is in
//! `docs/operations.md`, "Metrics".

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::EventId;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Histogram buckets for latencies, in seconds: 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Counters registered at zero, with the label values they can take.
const COUNTERS: &[(&str, &str, &[&str])] = &[
    ("roomcast_published_total", "via", &["http", "ws"]),
    ("roomcast_publish_repeats_total", "via", &["http", "ws"]),
    ("roomcast_batches_total", "", &[]),
    ("roomcast_outbox_overflows_total", "", &[]),
    ("roomcast_catch_ups_total", "reason", &["lagged", "store_loss"]),
    ("roomcast_gaps_total", "reason", &["not_kept", "beyond_tail", "store_loss"]),
    ("roomcast_closes_total", "code", &["1002", "1007", "1008", "1009", "1012", "1013"]),
    ("roomcast_store_errors_total", "kind", &["unavailable", "out_of_memory", "protocol"]),
    ("roomcast_rate_limited_total", "what", &["publish", "subscribe"]),
    ("roomcast_connections_shed_total", "reason", &["pending_limit", "fd_limit"]),
    ("roomcast_accept_errors_total", "kind", &["fd_limit", "other"]),
    ("roomcast_reactions_total", "", &[]),
    ("roomcast_reactions_dropped_total", "reason", &["rate", "keys", "connection_keys", "bytes", "store"]),
    ("roomcast_reaction_frames_total", "", &[]),
    ("roomcast_notices_dropped_total", "", &[]),
    ("roomcast_ping_floods_total", "", &[]),
    ("roomcast_frame_floods_total", "", &[]),
    ("roomcast_rooms_refused_total", "", &[]),
    ("roomcast_mailbox_overflows_total", "", &[]),
    ("roomcast_store_incarnation_changes_total", "change", &["data_touched", "server_changed"]),
];

/// Histograms registered at start.
const HISTOGRAMS: &[&str] = &["roomcast_delivery_delay_seconds", "roomcast_reader_lag_seconds"];

/// The store operations whose latency is measured (`op` label).
pub const STORE_OPS: &[&str] =
    &["append", "read", "read_back", "state", "rules", "tail", "anchor", "read_many", "ping", "epoch"];

/// Installs the recorder on first call; later calls return the same handle.
/// `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            register();
            Some(handle)
        })
        .clone()
}

fn register() {
    for (name, label, values) in COUNTERS {
        if values.is_empty() {
            metrics::counter!(*name).increment(0);
        }
        for value in *values {
            metrics::counter!(*name, *label => *value).increment(0);
        }
    }
    for name in HISTOGRAMS {
        // Registered with no sample: rendered with zero counts.
        let _ = metrics::histogram!(*name);
    }
    for op in STORE_OPS {
        let _ = metrics::histogram!("roomcast_store_command_seconds", "op" => *op);
    }
    for transport in ["ws", "sse"] {
        metrics::gauge!("roomcast_connections", "transport" => transport).increment(0.0);
    }
}

/// Seconds since the store stamped `id` (its milliseconds are the store's
/// clock at append): how old an event is when it is read or written. A
/// clock behind the store's reads as 0.
pub fn age_seconds(id: EventId) -> f64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    now.saturating_sub(id.ms) as f64 / 1000.0
}
