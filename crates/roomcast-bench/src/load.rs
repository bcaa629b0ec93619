//! The load: subscribers spread over nodes and loopback source addresses,
//! open-loop publishers, and the checks on what arrives.
//!
//! Every payload carries its room's sequence number and its *intended* send
//! time (`t`), taken from the schedule rather than the clock when it was
//! sent, so a stalled server cannot hide latency by slowing the publisher.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::decode::{self, decode, Kind};
use super::reader::Reader;
use super::spread;

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Latency histogram shards (subscribers record into `index % SHARDS`).
const SHARDS: usize = 16;
/// One event in this many feeds the per-second latency series.
const SERIES_SAMPLE: u64 = 4;
/// Publisher connections per node.
const PUBLISHERS_PER_NODE: usize = 4;

/// Microseconds of wall-clock time: one clock for every task, and for the
/// generator's subscriber processes too (they share the machine's clock).
pub(crate) fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

#[allow(clippy::expect_used)] // constant bounds that no input reaches
pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 2 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid histogram bounds")
}

/// One load run's shape.
#[derive(Clone, Debug, Serialize)]
pub struct LoadSpec {
    /// Subscriber connections.
    pub subscribers: usize,
    /// Rooms; subscriber `i` joins room `i % rooms`, publishes go round-robin.
    pub rooms: usize,
    /// Offered publishes per second (0: connect only, for idle measurements).
    pub rate: f64,
    /// Payload size in bytes.
    pub size: usize,
    /// Publishing time.
    pub duration: Duration,
    /// Share of subscribers that drop at mid-run and resume with their last ID.
    pub storm: f64,
    /// Loopback source addresses used (127.0.0.2 and up).
    pub source_ips: u8,
    /// Prefix of the room names, unique per run.
    pub room_prefix: String,
    /// Generator processes holding the subscribers: 1 keeps them in this
    /// process; more spawns that many subscriber processes (a process here
    /// may hold at most 20,000 open files).
    pub processes: usize,
    /// How subscribers read.
    pub reader: ReaderKind,
}

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

/// State every task shares.
pub(crate) struct Shared {
    shards: Vec<Mutex<Histogram<u64>>>,
    seconds: Vec<AtomicU64>,
    series: Vec<Mutex<Histogram<u64>>>,
    received: AtomicU64,
    /// When publishing started (µs on the harness clock); 0 before.
    publish_start: AtomicU64,
    storm_at: AtomicU64,
}

impl Shared {
    /// Records one frame's fresh deliveries, all received at `now`, whose
    /// last brought the subscriber's count to `n`. One lock and one shared
    /// counter update per frame, not per event: the generator shares the
    /// cores with what it measures.
    fn record(&self, shard: usize, now: u64, latencies: &[u64], n: u64) {
        if let Ok(mut h) = self.shards[shard % SHARDS].lock() {
            for &latency in latencies {
                let _ = h.record(latency.max(1));
            }
        }
        let count = latencies.len() as u64;
        self.received.fetch_add(count, Ordering::Relaxed);
        let start = self.publish_start.load(Ordering::Relaxed);
        if start > 0 && now >= start {
            let second = ((now - start) / 1_000_000) as usize;
            if let Some(counter) = self.seconds.get(second) {
                counter.fetch_add(count, Ordering::Relaxed);
            }
            let first = n + 1 - count;
            let sampled = latencies.iter().zip(first..).filter(|(_, k)| k % SERIES_SAMPLE == 0);
            let mut sampled = sampled.peekable();
            if sampled.peek().is_some() {
                if let Some(Ok(mut h)) = self.series.get(second).map(|m| m.lock()) {
                    for (&latency, _) in sampled {
                        let _ = h.record(latency.max(1));
                    }
                }
            }
        }
    }
}

/// One subscriber's counts, shared so the harness can read them after
/// aborting the task (a read loop with no timer per message).
pub(crate) struct SubscriberStats {
    received: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    gaps: AtomicU64,
    /// µs from the storm to being live again; `u64::MAX` until then.
    caught_up_after: AtomicU64,
    stormed: bool,
}

impl SubscriberStats {
    fn new(stormed: bool) -> Self {
        SubscriberStats {
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            caught_up_after: AtomicU64::new(u64::MAX),
            stormed,
        }
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Acquire)
    }

    fn caught_up(&self) -> Option<u64> {
        Some(Self::get(&self.caught_up_after)).filter(|v| *v != u64::MAX)
    }
}

/// Opens a TCP connection from a chosen loopback source address.
pub(crate) async fn tcp(node: SocketAddr, source: Ipv4Addr) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(node).await.with_context(|| format!("connecting to {node}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens a (publisher's) WebSocket from a chosen loopback source address.
async fn connect(node: SocketAddr, source: Ipv4Addr, query: &str) -> anyhow::Result<Socket> {
    let stream = tcp(node, source).await?;
    let url = format!("ws://{node}/ws{query}");
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await?;
    Ok(ws)
}

/// How subscribers read what they receive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ReaderKind {
    /// The harness's own receive-only reader and a direct scan of the
    /// frame shapes it knows (see [`Reader`], [`decode`]): the generator
    /// takes as little of the shared cores as it can.
    #[default]
    Fast,
    /// What an ordinary client does: tungstenite for the WebSocket and a
    /// full JSON parse of every frame into a document.
    Full,
}

/// A subscriber's connection, read either way.
enum Subscription {
    Fast(Reader),
    Full(Box<Socket>),
}

impl Subscription {
    /// The next text or binary message; `None` once the server closed.
    async fn next(&mut self) -> anyhow::Result<Option<bytes::Bytes>> {
        match self {
            Subscription::Fast(reader) => reader.next().await,
            Subscription::Full(ws) => loop {
                match ws.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(None),
                    Some(Ok(Message::Text(text))) => return Ok(Some(bytes::Bytes::from(text))),
                    Some(Ok(Message::Binary(data))) => return Ok(Some(data)),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                }
            },
        }
    }

    /// Decodes a frame the way this subscription reads.
    fn decode(&self, payload: &[u8], out: &mut Vec<decode::Delivered>) -> Kind {
        match self {
            Subscription::Fast(_) => decode(payload, out),
            Subscription::Full(_) => decode::decode_document(payload, out),
        }
    }
}

/// Opens a subscriber's receive-only WebSocket.
async fn subscribe(node: SocketAddr, source: Ipv4Addr, query: &str, kind: ReaderKind) -> anyhow::Result<Subscription> {
    Ok(match kind {
        ReaderKind::Fast => Subscription::Fast(Reader::handshake(tcp(node, source).await?, node, query).await?),
        ReaderKind::Full => Subscription::Full(Box::new(connect(node, source, query).await?)),
    })
}

/// The loopback source address of connection `i` (spread over `count`).
pub(crate) fn source_ip(i: usize, count: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % count.max(1) as usize) as u8)
}

/// Where and how a subscriber connects.
#[derive(Clone, Copy)]
struct Dial {
    node: SocketAddr,
    source: Ipv4Addr,
    reader: ReaderKind,
}

async fn subscriber(
    index: usize,
    dial: Dial,
    room: String,
    shared: Arc<Shared>,
    subscribed: Arc<AtomicUsize>,
    stats: Arc<SubscriberStats>,
) -> anyhow::Result<()> {
    let Dial { node, source, reader } = dial;
    let storm = stats.stormed;
    let mut ws = subscribe(node, source, &format!("?room={room}"), reader).await?;
    let mut seen = SeqSet::default();
    let mut last: (u64, u64) = (0, 0);
    // The last event received (not a duplicate): the resume token.
    let mut last_id: Option<(u64, u64)> = None;
    let mut events = Vec::new();
    let mut latencies = Vec::new();
    let mut counted = false;
    let mut reconnected_at: Option<u64> = None;
    loop {
        if storm && reconnected_at.is_none() {
            let at = shared.storm_at.load(Ordering::Acquire);
            if at > 0 && now_micros() >= at {
                // Drop the connection, as a network blip would.
                drop(ws);
                let query = match last_id {
                    Some((ms, seq)) => format!("?room={room}&last_event_id={ms}-{seq}"),
                    None => format!("?room={room}&last_event_id=0"),
                };
                ws = subscribe(node, source, &query, reader).await?;
                reconnected_at = Some(now_micros());
            }
        }
        let Ok(Some(payload)) = ws.next().await else { break };
        match ws.decode(&payload, &mut events) {
            Kind::Subscribed if !counted => {
                counted = true;
                subscribed.fetch_add(1, Ordering::AcqRel);
            }
            Kind::Gap => {
                stats.gaps.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Events => {
                let now = now_micros();
                latencies.clear();
                for event in &events {
                    // Order is the store's ID order, which several
                    // publisher connections may interleave: check IDs for
                    // order, sequence numbers only for loss and duplicates.
                    if event.id <= last {
                        stats.out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                    last = last.max(event.id);
                    if !seen.insert(event.s) {
                        stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    latencies.push(now.saturating_sub(event.t));
                    last_id = Some(event.id);
                    if let (Some(at), None) = (reconnected_at, stats.caught_up()) {
                        // Live again: receiving what was published after the reconnect.
                        if event.t >= at {
                            let storm_at = shared.storm_at.load(Ordering::Acquire);
                            stats.caught_up_after.store(now - storm_at, Ordering::Release);
                        }
                    }
                }
                if !latencies.is_empty() {
                    let count = latencies.len() as u64;
                    let n = stats.received.fetch_add(count, Ordering::Relaxed) + count;
                    shared.record(index, now, &latencies, n);
                }
            }
            _ => {}
        }
    }
    Ok(())
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

/// Sequence numbers received, as a growable bitset.
#[derive(Default)]
struct SeqSet(Vec<u64>);

impl SeqSet {
    /// Adds `s`; false if it was already there.
    fn insert(&mut self, s: u64) -> bool {
        let (word, bit) = ((s / 64) as usize, s % 64);
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let fresh = self.0[word] & (1 << bit) == 0;
        self.0[word] |= 1 << bit;
        fresh
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

/// Starts the subscribers with indices in `range` (subscriber `i` joins
/// room `i % rooms` on node `i % nodes`; the first `storm_count` storm).
pub(crate) async fn spawn_subscribers(
    spec: &LoadSpec,
    nodes: &[SocketAddr],
    range: std::ops::Range<usize>,
    storm_count: usize,
    shared: &Arc<Shared>,
    subscribed: &Arc<AtomicUsize>,
) -> (Vec<tokio::task::JoinHandle<anyhow::Result<()>>>, Vec<Arc<SubscriberStats>>) {
    let rooms = spec.rooms.max(1);
    let mut subscribers = Vec::with_capacity(range.len());
    let mut cells = Vec::with_capacity(range.len());
    for (n, i) in range.enumerate() {
        let cell = Arc::new(SubscriberStats::new(i < storm_count));
        cells.push(cell.clone());
        subscribers.push(tokio::spawn(subscriber(
            i,
            Dial { node: nodes[i % nodes.len()], source: source_ip(i, spec.source_ips), reader: spec.reader },
            format!("{}{}", spec.room_prefix, i % rooms),
            shared.clone(),
            subscribed.clone(),
            cell,
        )));
        if n % 500 == 499 {
            // Let the accept queues drain.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    (subscribers, cells)
}

impl Shared {
    /// Fresh state for a run of `seconds` at most.
    pub(crate) fn new(seconds: usize) -> Arc<Shared> {
        Arc::new(Shared {
            shards: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
            seconds: (0..seconds).map(|_| AtomicU64::new(0)).collect(),
            series: (0..seconds).map(|_| Mutex::new(histogram())).collect(),
            received: AtomicU64::new(0),
            publish_start: AtomicU64::new(0),
            storm_at: AtomicU64::new(0),
        })
    }

    /// Every shard's latencies together.
    pub(crate) fn latency(&self) -> Histogram<u64> {
        let mut latency = histogram();
        for shard in &self.shards {
            if let Ok(h) = shard.lock() {
                let _ = latency.add(&*h);
            }
        }
        latency
    }

    /// Deliveries recorded so far.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }
}

impl SubscriberStats {
    /// (received, duplicates, out of order, gaps).
    pub(crate) fn counts(&self) -> (u64, u64, u64, u64) {
        let get = SubscriberStats::get;
        (get(&self.received), get(&self.duplicates), get(&self.out_of_order), get(&self.gaps))
    }
}

/// Progress callback: (phase, done, total, delivered per second).
pub type Progress = Arc<dyn Fn(&str, u64, u64, f64) + Send + Sync>;

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
