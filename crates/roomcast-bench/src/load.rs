//! The load: subscribers spread over nodes and loopback source addresses,
//! open-loop publishers, and the checks on what arrives.
//!
//! Every payload carries its room's sequence number and its *intended* send
//! time (`t`), taken from the schedule rather than the clock when it was
//! sent, so a stalled server cannot hide latency by slowing the publisher.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::decode;
pub use crate::spec::{LoadSpec, Progress, ReaderKind};
use crate::spread;
use crate::subscribers::{connect, histogram, now_micros, source_ip, spawn_subscribers, Shared, SubscriberStats};

/// Publisher connections per node.
const PUBLISHERS_PER_NODE: usize = 4;

/// Per-second figures, for charts.
#[derive(Clone, Debug, Serialize)]
pub struct Second {
    /// Seconds since publishing started.
    pub t: u64,
    /// Deliveries received in that second.
    pub deliveries: u64,
    /// Sampled latency percentiles (ms).
    pub p50_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// Publishes sent.
    pub published: u64,
    /// Publishes acked.
    pub acked: u64,
    /// Publishes refused (error frames).
    pub publish_errors: u64,
    /// Deliveries expected: acked publishes times their room's subscribers.
    pub expected: u64,
    /// Distinct deliveries received.
    pub received: u64,
    /// Expected but never received.
    pub lost: u64,
    /// Received again.
    pub duplicates: u64,
    /// Received ahead of an earlier event of the same room.
    pub out_of_order: u64,
    /// `gap` frames received.
    pub gaps: u64,
    /// Deliveries per second over the publishing window.
    pub delivered_per_sec: f64,
    /// End-to-end latency percentiles (ms).
    pub latency_ms: Percentiles,
    /// Slowest storm subscriber's time to be live again after reconnecting.
    pub storm_caught_up_ms: Option<f64>,
    /// Storm subscribers that did not catch up.
    pub storm_stragglers: usize,
    /// Node RSS added per subscriber connection (spawned targets).
    pub rss_per_connection_bytes: Option<f64>,
    /// Server CPU seconds (nodes + Redis) per million deliveries (spawned targets).
    pub cpu_seconds_per_million: Option<f64>,
    /// Subscribers connected and subscribed per second, from the first
    /// connect to the last `subscribed`.
    pub connects_per_sec: f64,
    /// Per-second series.
    pub series: Vec<Second>,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

impl Outcome {
    /// Loss, duplicates, reordering or gaps make a run fail.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.out_of_order == 0 && self.gaps == 0 && self.publish_errors == 0
    }
}

/// How publish frames look: room name prefix and payload padding.
struct Template {
    prefix: Arc<str>,
    padding: Arc<str>,
}

impl Template {
    fn frame(&self, k: u64, room: usize, seq: u64, t: u64) -> Message {
        let (prefix, padding) = (&self.prefix, &self.padding);
        Message::Text(
            format!(
                r#"{{"type":"publish","room":"{prefix}{room}","data":{{"t":{t},"s":{seq},"p":"{padding}"}},"ref":{k}}}"#
            )
            .into(),
        )
    }
}

struct PublishStats {
    acked: Vec<AtomicU64>,
    errors: AtomicU64,
}

/// One publisher connection: sends what the scheduler hands it, counts acks.
async fn publisher(
    node: SocketAddr,
    source: Ipv4Addr,
    mut work: mpsc::Receiver<(u64, usize, u64, u64)>,
    rooms: usize,
    template: Arc<Template>,
    stats: Arc<PublishStats>,
    keep_open: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let ws = connect(node, source, "").await?;
    let (mut sink, mut source_stream) = ws.split();
    let reader = {
        let stats = stats.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = source_stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(frame) = serde_json::from_str::<decode::Frame>(text.as_str()) else { continue };
                match (frame.kind, frame.reference) {
                    ("ack", Some(k)) => {
                        stats.acked[(k as usize) % rooms].fetch_add(1, Ordering::AcqRel);
                    }
                    ("error", _) => {
                        stats.errors.fetch_add(1, Ordering::AcqRel);
                    }
                    _ => {}
                }
                if !keep_open.load(Ordering::Acquire) {
                    break;
                }
            }
        })
    };
    while let Some((k, room, seq, t)) = work.recv().await {
        sink.feed(template.frame(k, room, seq, t)).await?;
        while let Ok((k, room, seq, t)) = work.try_recv() {
            sink.feed(template.frame(k, room, seq, t)).await?;
        }
        sink.flush().await?;
    }
    // Keep the connection open until the acks are in.
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    Ok(())
}

/// Runs one load against `nodes`; `measure` samples (cpu seconds, node rss).
pub async fn run(
    spec: &LoadSpec,
    nodes: &[SocketAddr],
    measure: &(dyn Fn() -> (f64, u64) + Send + Sync),
    measured: bool,
    progress: Progress,
) -> anyhow::Result<Outcome> {
    let seconds = spec.duration.as_secs() as usize + 60;
    let shared = Shared::new(seconds);
    let rooms = spec.rooms.max(1);
    let (_, rss_before) = measure();

    // Connect and subscribe everyone.
    let connect_started = Instant::now();
    let subscribed = Arc::new(AtomicUsize::new(0));
    let storm_count = (spec.storm * spec.subscribers as f64).round() as usize;
    let per_room: Vec<u64> = (0..rooms).map(|r| ((spec.subscribers + rooms - 1 - r) / rooms) as u64).collect();
    let workers = if spec.processes > 1 { Some(spread::Workers::spawn(spec, nodes, storm_count).await?) } else { None };
    let local = if workers.is_some() { 0..0 } else { 0..spec.subscribers };
    let local_count = local.len();
    let (mut subscribers, cells) = spawn_subscribers(spec, nodes, local, storm_count, &shared, &subscribed).await;
    let connect_deadline = Instant::now() + Duration::from_secs(120);
    while subscribed.load(Ordering::Acquire) < local_count {
        anyhow::ensure!(
            Instant::now() < connect_deadline,
            "only {} subscribers got in",
            subscribed.load(Ordering::Acquire)
        );
        if subscribers.iter().any(|s| s.is_finished()) {
            // A subscriber failed to connect: surface its error.
            for s in subscribers.iter_mut().filter(|s| s.is_finished()) {
                s.await.context("subscriber task")??;
            }
        }
        progress("connecting", subscribed.load(Ordering::Acquire) as u64, spec.subscribers as u64, 0.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut workers = workers;
    if let Some(workers) = workers.as_mut() {
        workers.ready(&progress).await?;
    }
    let connects_per_sec = spec.subscribers as f64 / connect_started.elapsed().as_secs_f64().max(0.001);
    // Let the nodes settle (audience reports, feed watches) before measuring.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, rss_after) = measure();
    let rss_per_connection_bytes = (measured && spec.subscribers > 0)
        .then(|| rss_after.saturating_sub(rss_before) as f64 / spec.subscribers as f64);

    // Publish, open loop.
    let template = Arc::new(Template {
        prefix: Arc::from(spec.room_prefix.as_str()),
        padding: Arc::from("x".repeat(spec.size.saturating_sub(40).max(1))),
    });
    let publish_stats =
        Arc::new(PublishStats { acked: (0..rooms).map(|_| AtomicU64::new(0)).collect(), errors: AtomicU64::new(0) });
    let keep_open = Arc::new(AtomicBool::new(true));
    let mut lanes = Vec::new();
    let mut publishers = Vec::new();
    if spec.rate > 0.0 {
        for (i, node) in nodes.iter().cycle().take(nodes.len() * PUBLISHERS_PER_NODE).enumerate() {
            let (tx, rx) = mpsc::channel(1 << 16);
            lanes.push(tx);
            publishers.push(tokio::spawn(publisher(
                *node,
                source_ip(i, spec.source_ips),
                rx,
                rooms,
                template.clone(),
                publish_stats.clone(),
                keep_open.clone(),
            )));
        }
    }
    let total = (spec.rate * spec.duration.as_secs_f64()).round() as u64;
    let (cpu_start, _) = measure();
    let start = now_micros();
    shared.publish_start.store(start, Ordering::Release);
    if storm_count > 0 {
        shared.storm_at.store(start + spec.duration.as_micros() as u64 / 2, Ordering::Release);
    }
    let mut room_seq = vec![0u64; rooms];
    let mut sent = 0u64;
    let interval = 1_000_000.0 / spec.rate.max(f64::MIN_POSITIVE);
    let mut last_report = Instant::now();
    while sent < total {
        let due = (((now_micros() - start) as f64 / interval) as u64 + 1).min(total);
        while sent < due {
            let room = (sent as usize) % rooms;
            let intended = start + (sent as f64 * interval) as u64;
            let lane = &lanes[(sent as usize) % lanes.len()];
            lane.send((sent, room, room_seq[room], intended)).await.map_err(|_| anyhow::anyhow!("a publisher died"))?;
            room_seq[room] += 1;
            sent += 1;
        }
        if last_report.elapsed() > Duration::from_millis(250) {
            let elapsed = (now_micros() - start) as f64 / 1e6;
            progress("publishing", sent, total, shared.received.load(Ordering::Relaxed) as f64 / elapsed.max(0.001));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(lanes);

    // Drain: wait for acks, then for deliveries to stop arriving.
    let acked_total = |s: &PublishStats| s.acked.iter().map(|a| a.load(Ordering::Acquire)).sum::<u64>();
    let ack_deadline = Instant::now() + Duration::from_secs(15);
    while acked_total(&publish_stats) + publish_stats.errors.load(Ordering::Acquire) < total
        && Instant::now() < ack_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected: u64 = publish_stats.acked.iter().zip(&per_room).map(|(a, n)| a.load(Ordering::Acquire) * n).sum();
    let local_expected: u64 = if workers.is_some() { 0 } else { expected };
    let mut last_seen = (shared.received.load(Ordering::Acquire), Instant::now());
    let mut remote = spread::Reports::default();
    if let Some(workers) = workers.take() {
        let acked: Vec<u64> = publish_stats.acked.iter().map(|a| a.load(Ordering::Acquire)).collect();
        progress("draining", 0, expected, 0.0);
        remote = workers.drain(&acked).await?;
    }
    loop {
        let received = shared.received.load(Ordering::Acquire);
        if received >= local_expected {
            break;
        }
        if received != last_seen.0 {
            last_seen = (received, Instant::now());
        } else if last_seen.1.elapsed() > Duration::from_secs(5) {
            break;
        }
        progress("draining", received, expected, 0.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let end = now_micros();
    let (cpu_end, _) = measure();
    keep_open.store(false, Ordering::Release);

    for s in &subscribers {
        s.abort();
    }
    let outcome_stats = cells;
    for p in publishers {
        let _ = tokio::time::timeout(Duration::from_secs(1), p).await;
    }
    let get = SubscriberStats::get;
    let received: u64 = outcome_stats.iter().map(|s| get(&s.received)).sum::<u64>() + remote.received;
    let mut latency = remote.latency;
    let _ = latency.add(shared.latency());
    let ms = |v: u64| v as f64 / 1000.0;
    let window = ((end - start) as f64 / 1e6).max(0.001);
    let stormed: Vec<&Arc<SubscriberStats>> = outcome_stats.iter().filter(|s| s.stormed).collect();
    let series = shared
        .seconds
        .iter()
        .zip(&shared.series)
        .enumerate()
        .take_while(|(t, _)| (*t as f64) < window.ceil())
        .map(|(t, (count, h))| {
            let h = h.lock().map(|h| h.clone()).unwrap_or_else(|_| histogram());
            Second {
                t: t as u64,
                deliveries: count.load(Ordering::Relaxed),
                p50_ms: ms(h.value_at_quantile(0.5)),
                p99_ms: ms(h.value_at_quantile(0.99)),
            }
        })
        .collect();
    Ok(Outcome {
        published: sent,
        acked: acked_total(&publish_stats),
        publish_errors: publish_stats.errors.load(Ordering::Acquire),
        expected,
        received,
        lost: expected.saturating_sub(received),
        duplicates: outcome_stats.iter().map(|s| get(&s.duplicates)).sum::<u64>() + remote.duplicates,
        out_of_order: outcome_stats.iter().map(|s| get(&s.out_of_order)).sum::<u64>() + remote.out_of_order,
        gaps: outcome_stats.iter().map(|s| get(&s.gaps)).sum::<u64>() + remote.gaps,
        delivered_per_sec: received as f64 / window,
        latency_ms: Percentiles {
            p50: ms(latency.value_at_quantile(0.5)),
            p99: ms(latency.value_at_quantile(0.99)),
            p999: ms(latency.value_at_quantile(0.999)),
            max: ms(latency.max()),
        },
        storm_caught_up_ms: (!stormed.is_empty())
            .then(|| stormed.iter().filter_map(|s| s.caught_up()).max().map(ms).unwrap_or(f64::NAN)),
        storm_stragglers: stormed.iter().filter(|s| s.caught_up().is_none()).count(),
        rss_per_connection_bytes,
        cpu_seconds_per_million: (measured && received > 0).then(|| (cpu_end - cpu_start) / (received as f64 / 1e6)),
        connects_per_sec,
        series,
    })
}
