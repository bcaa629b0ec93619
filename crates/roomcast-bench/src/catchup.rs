//! The `catch-up` preset: clients that resume far behind in large events.
//!
//! One node on Redis holds a room of 3,200 events of 16 KB (52 MB). One
//! client resumes from its first event and reads to the end; then 100 do so
//! at once. Each client checks it got every event once, in order; the node's
//! RSS is sampled throughout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::reader::Reader;
use crate::target::{self, TargetSpec};

/// Events in the room.
const EVENTS: usize = 3_200;
/// Bytes of each event's payload.
const EVENT_BYTES: usize = 16_000;
/// Clients of the second part, resuming at once.
const CLIENTS: usize = 100;
/// Publishes in flight at once while the room is filled.
const IN_FLIGHT: usize = 64;
/// How often the node's RSS is sampled.
const RSS_EVERY: Duration = Duration::from_millis(50);

/// What one catching-up client saw.
struct Caught {
    elapsed: Duration,
    events: usize,
    in_order: bool,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, borrow)]
    events: Vec<Id<'a>>,
}

#[derive(Deserialize)]
struct Id<'a> {
    #[serde(borrow)]
    id: &'a str,
}

/// Fills `room` with the preset's events; returns their IDs in order.
async fn fill(node: SocketAddr, room: &str) -> anyhow::Result<Vec<String>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{node}/ws")).await?;
    let data = "c".repeat(EVENT_BYTES - 2);
    let mut ids = vec![String::new(); EVENTS];
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(IN_FLIGHT) {
        for i in chunk {
            let frame = json!({"type": "publish", "room": room, "data": data, "ref": i});
            ws.feed(Message::Text(frame.to_string().into())).await?;
        }
        ws.flush().await?;
        let mut acked = 0;
        while acked < chunk.len() {
            let msg = ws.next().await.context("the node closed while the room was filled")??;
            let Message::Text(text) = msg else { continue };
            let ack: Value = serde_json::from_str(text.as_str())?;
            ensure!(ack["type"] == "ack", "publish refused: {ack}");
            let i = ack["ref"].as_u64().context("ack ref")? as usize;
            ids[i] = ack["id"].as_str().context("ack id")?.to_owned();
            acked += 1;
        }
    }
    Ok(ids)
}

/// Resumes `room` from `from` and reads until `last`.
async fn catch_up(node: SocketAddr, room: &str, from: &str, last: &str, want: usize) -> anyhow::Result<Caught> {
    let started = Instant::now();
    let stream = TcpStream::connect(node).await?;
    let mut reader = Reader::handshake(stream, node, &format!("?room={room}&last_event_id={from}")).await?;
    let (mut events, mut in_order, mut previous) = (0usize, true, String::new());
    loop {
        let payload = reader.next().await?.context("the node closed the catching-up client")?;
        let frame: Frame = serde_json::from_slice(&payload)?;
        ensure!(frame.kind != "gap", "a gap in a room that lost nothing");
        for e in &frame.events {
            in_order &= crate::chaos::id::EventId::parse(e.id) > crate::chaos::id::EventId::parse(&previous);
            previous = e.id.to_owned();
            events += 1;
        }
        if previous == last {
            break;
        }
    }
    Ok(Caught { elapsed: started.elapsed(), events, in_order: in_order && events == want })
}

/// Samples the node's RSS until stopped; returns the peak, in bytes.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let peak = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            peak.fetch_max(target::rss_bytes(pid), Ordering::Relaxed);
            tokio::time::sleep(RSS_EVERY).await;
        }
        peak.load(Ordering::Relaxed)
    })
}

/// Runs the preset; returns whether every client caught up exactly, and the figures.
pub async fn run() -> anyhow::Result<(bool, Value)> {
    let deployment = target::start(&TargetSpec::Redis { nodes: 1 })?;
    let node = *deployment.nodes.first().context("no node")?;
    let pid = deployment.processes.iter().find(|p| p.name != "redis-server").context("no node process")?.pid();
    let ids = fill(node, "catchup").await?;
    let (first, last) = (ids[0].clone(), ids[EVENTS - 1].clone());
    let want = EVENTS - 1;
    let idle_rss = target::rss_bytes(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let peak = sample_rss(pid, stop.clone());
    let one = catch_up(node, "catchup", &first, &last, want).await?;
    stop.store(true, Ordering::Relaxed);
    let one_peak = peak.await?;

    let stop = Arc::new(AtomicBool::new(false));
    let peak = sample_rss(pid, stop.clone());
    let started = Instant::now();
    let clients = (0..CLIENTS).map(|_| {
        let (first, last) = (first.clone(), last.clone());
        tokio::spawn(async move { catch_up(node, "catchup", &first, &last, want).await })
    });
    let mut many = Vec::new();
    for client in clients.collect::<Vec<_>>() {
        many.push(client.await??);
    }
    let all = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let many_peak = peak.await?;

    let mut times: Vec<f64> = many.iter().map(|c| c.elapsed.as_secs_f64()).collect();
    times.sort_by(f64::total_cmp);
    let exact = one.in_order && many.iter().all(|c| c.in_order);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let backlog_mb = (EVENTS * EVENT_BYTES) as f64 / 1e6;
    Ok((
        exact,
        json!({
            "clean": exact,
            "backlog_mb": backlog_mb,
            "events": want,
            "event_bytes": EVENT_BYTES,
            "one_client_s": one.elapsed.as_secs_f64(),
            "one_client_mb_per_s": backlog_mb / one.elapsed.as_secs_f64(),
            "one_client_events": one.events,
            "node_rss_idle_mib": mib(idle_rss),
            "node_rss_peak_one_mib": mib(one_peak),
            "clients": CLIENTS,
            "all_clients_s": all.as_secs_f64(),
            "client_s_p50": times[times.len() / 2],
            "client_s_max": times.last().copied().unwrap_or_default(),
            "node_rss_peak_many_mib": mib(many_peak),
            "node_rss_per_client_mib": (mib(many_peak) - mib(idle_rss)) / CLIENTS as f64,
        }),
    ))
}
