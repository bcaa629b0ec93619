//! The generator's subscribers: connecting (from spread loopback sources),
//! reading (the fast reader or a full client), checking every delivery, and
//! what they record for the run. Used in this process by [`crate::load`],
//! and in subscriber processes by [`crate::spread`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::decode::{self, decode, Kind};
use crate::reader::Reader;
use crate::spec::{LoadSpec, ReaderKind};

/// Latency histogram shards (subscribers record into `index % SHARDS`).
const SHARDS: usize = 16;

/// One event in this many feeds the per-second latency series.
const SERIES_SAMPLE: u64 = 4;

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

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

/// State every task shares.
pub(crate) struct Shared {
    pub(crate) shards: Vec<Mutex<Histogram<u64>>>,
    pub(crate) seconds: Vec<AtomicU64>,
    pub(crate) series: Vec<Mutex<Histogram<u64>>>,
    pub(crate) received: AtomicU64,
    /// When publishing started (µs on the harness clock); 0 before.
    pub(crate) publish_start: AtomicU64,
    pub(crate) storm_at: AtomicU64,
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

/// One subscriber's counts, shared so the harness can read them after
/// aborting the task (a read loop with no timer per message).
pub(crate) struct SubscriberStats {
    pub(crate) received: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) out_of_order: AtomicU64,
    pub(crate) gaps: AtomicU64,
    /// µs from the storm to being live again; `u64::MAX` until then.
    pub(crate) caught_up_after: AtomicU64,
    pub(crate) stormed: bool,
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

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Acquire)
    }

    pub(crate) fn caught_up(&self) -> Option<u64> {
        Some(Self::get(&self.caught_up_after)).filter(|v| *v != u64::MAX)
    }
}

impl SubscriberStats {
    /// (received, duplicates, out of order, gaps).
    pub(crate) fn counts(&self) -> (u64, u64, u64, u64) {
        let get = SubscriberStats::get;
        (get(&self.received), get(&self.duplicates), get(&self.out_of_order), get(&self.gaps))
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
pub(crate) async fn connect(node: SocketAddr, source: Ipv4Addr, query: &str) -> anyhow::Result<Socket> {
    connect_path(node, source, &format!("/ws{query}")).await
}

/// Opens a WebSocket to `path` (with its query) from a chosen source address.
pub(crate) async fn connect_path(node: SocketAddr, source: Ipv4Addr, path: &str) -> anyhow::Result<Socket> {
    let stream = tcp(node, source).await?;
    let url = format!("ws://{node}{path}");
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await?;
    Ok(ws)
}

/// The loopback source address of connection `i` (spread over `count`).
pub(crate) fn source_ip(i: usize, count: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % count.max(1) as usize) as u8)
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

/// Where and how a subscriber connects.
#[derive(Clone, Copy)]
struct Dial {
    node: SocketAddr,
    source: Ipv4Addr,
    reader: ReaderKind,
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
