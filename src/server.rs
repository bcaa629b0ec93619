//! The accept loop: TCP connections into HTTP/1.1 (and WebSocket upgrades),
//! defended against clients that connect and never finish a request.
//!
//! - Every connection must send complete request headers within the header
//!   timeout, on arrival and between keep-alive requests; a slowloris
//!   trickle or a silent socket is closed when it runs out.
//! - Connections that have not yet sent a request are *pending*. Their
//!   number is bounded: past the bound, the oldest pending connection is
//!   shed to admit the new one, so one client opening sockets cannot crowd
//!   out everybody else.
//! - When the process runs out of descriptors (`EMFILE`), accepting backs
//!   off and sheds pending connections, oldest first, so a legitimate client
//!   still gets in; the shortage is logged once when it starts, then once
//!   a minute at most, never per attempt.
//!
//! HTTP/2 is not served: WebSocket and SSE need HTTP/1.1, and sniffing the
//! protocol would wait on silent sockets before any timeout applies.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::backoff::Backoff;

/// Pending connections shed at once when descriptors run out: enough to
/// let a burst of legitimate connections in, few enough to spare the rest.
const SHED_ON_EXHAUSTION: usize = 64;
/// Shortest time between two warnings about running out of descriptors.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Largest request head accepted (hyper's own default is 400 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Limits of the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct AcceptLimits {
    /// Time a connection has to send complete request headers, on arrival
    /// and between keep-alive requests.
    pub header_timeout: Duration,
    /// Most connections that have not sent a request yet.
    pub max_pending: usize,
    /// Time in-flight HTTP requests get to finish at shutdown.
    pub grace: Duration,
}

/// Connections waiting for their first request, oldest first.
#[derive(Default)]
struct Pending {
    next: AtomicU64,
    waiting: Mutex<BTreeMap<u64, CancellationToken>>,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, CancellationToken>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection, shedding the oldest if the bound is reached.
    fn add(&self, max: usize) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut waiting = self.lock();
        while waiting.len() >= max.max(1) {
            let Some((_, oldest)) = waiting.pop_first() else { break };
            oldest.cancel();
            metrics::counter!("roomcast_connections_shed_total", "reason" => "pending_limit").increment(1);
        }
        waiting.insert(id, token.clone());
        metrics::gauge!("roomcast_pending_connections").set(waiting.len() as f64);
        (id, token)
    }

    /// The connection sent a request (or ended): it is no longer pending.
    fn remove(&self, id: u64) {
        let mut waiting = self.lock();
        if waiting.remove(&id).is_some() {
            metrics::gauge!("roomcast_pending_connections").set(waiting.len() as f64);
        }
    }

    /// Closes up to `n` of the oldest pending connections; returns how many.
    fn shed_oldest(&self, n: usize) -> usize {
        let mut waiting = self.lock();
        let mut shed = 0;
        while shed < n {
            let Some((_, oldest)) = waiting.pop_first() else { break };
            oldest.cancel();
            shed += 1;
        }
        metrics::gauge!("roomcast_pending_connections").set(waiting.len() as f64);
        metrics::counter!("roomcast_connections_shed_total", "reason" => "fd_limit").increment(shed as u64);
        shed
    }
}

/// Whether an accept error means the process or system is out of descriptors.
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == 24 || code == 23) // EMFILE, ENFILE
}

/// Serves `router` on `listener` until `shutdown` is cancelled. Connection
/// tasks are spawned on `tracker`, so the caller can wait for them.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: AcceptLimits,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let pending = Arc::new(Pending::default());
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(500));
    // Descriptor shortages are logged at most once per [`WARN_EVERY`], with
    // the count of failed accepts since the last warning.
    let mut warned_at: Option<Instant> = None;
    let mut failures: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => {
                backoff.reset();
                tcp
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if out_of_descriptors(&e) {
                    metrics::counter!("roomcast_accept_errors_total", "kind" => "fd_limit").increment(1);
                    let shed = pending.shed_oldest(SHED_ON_EXHAUSTION);
                    failures += 1;
                    if warned_at.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                        warn!(cause = %e, shed, failed_accepts = failures, "out of file descriptors: shedding connections that sent no request; raise the limit (ulimit -n) or lower --max-connections");
                        warned_at = Some(Instant::now());
                        failures = 0;
                    }
                } else {
                    metrics::counter!("roomcast_accept_errors_total", "kind" => "other").increment(1);
                    debug!(cause = %e, "accept failed");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        let (id, shed) = pending.add(limits.max_pending);
        let connection = serve_connection(tcp, router.clone(), pending.clone(), id, shed, limits, shutdown.clone());
        tracker.spawn(connection);
    }
    debug!("accept loop stopped");
}

/// Serves one connection until it ends, is shed, or the node shuts down.
async fn serve_connection(
    tcp: TcpStream,
    router: Router,
    pending: Arc<Pending>,
    id: u64,
    shed: CancellationToken,
    limits: AcceptLimits,
    shutdown: CancellationToken,
) {
    // Live events are small writes that must leave at once: no Nagle delay
    // (it held frames back for the client's delayed ACK, tens of ms).
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(cause = %e, "could not set TCP_NODELAY");
    }
    let requests = pending.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        requests.remove(id);
        router.clone().oneshot(request)
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        outcome = connection.as_mut() => {
            if let Err(e) = outcome {
                debug!(cause = %e, "connection ended with an error");
            }
        }
        _ = shed.cancelled() => debug!("shed a connection that sent no request"),
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.grace, connection).await;
        }
    }
    pending.remove(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_pending_connections_are_shed_first() {
        let pending = Pending::default();
        let tokens: Vec<CancellationToken> = (0..3).map(|_| pending.add(3).1).collect();
        assert!(tokens.iter().all(|t| !t.is_cancelled()));
        let (_, fourth) = pending.add(3);
        assert!(tokens[0].is_cancelled(), "past the bound, the oldest goes");
        assert!(!tokens[1].is_cancelled() && !fourth.is_cancelled());
        pending.remove(1);
        assert_eq!(pending.shed_oldest(5), 2);
        assert!(tokens[2].is_cancelled() && fourth.is_cancelled());
        assert!(!tokens[1].is_cancelled(), "a connection that sent a request is never shed");
    }

    #[test]
    fn descriptor_exhaustion_is_recognised() {
        assert!(out_of_descriptors(&io::Error::from_raw_os_error(24)));
        assert!(out_of_descriptors(&io::Error::from_raw_os_error(23)));
        assert!(!out_of_descriptors(&io::Error::from_raw_os_error(104)));
    }
}
