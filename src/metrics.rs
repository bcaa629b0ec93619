//! Prometheus metrics: one process-wide recorder, rendered by `/metrics`.
//!
//! Counters and gauges are recorded where things happen through the
//! `metrics` macros (`roomcast_connections`, `roomcast_published_total`,
//! `roomcast_batches_total`, `roomcast_outbox_overflows_total`,
//! `roomcast_catch_ups_total`, `roomcast_gaps_total`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder on first call; later calls return the same handle.
/// `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|_| handle)
        })
        .clone()
}
