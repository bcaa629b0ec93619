//! The chaos run's clients: publishers that record what the deployment
//! acknowledged, and subscribers that drop and resume across nodes and
//! record exactly what they were handed, in order.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::id::EventId;

/// How long a publish may take before the publisher counts it uncertain.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// A subscriber that hears nothing for this long reconnects.
const SILENCE: Duration = Duration::from_secs(15);
/// One publish in this many carries 8-60 KB of padding.
const LARGE_ONE_IN: u32 = 25;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the deployment acknowledged, and what it may or may not have stored.
#[derive(Default)]
pub struct Ledger {
    /// Per room: every acknowledged event's ID and tag.
    acked: Mutex<HashMap<String, Vec<(EventId, u64)>>>,
    /// Tags of publishes that got no answer (timeout, closed, refused).
    uncertain: Mutex<HashSet<u64>>,
    /// Publishes attempted.
    attempts: Mutex<u64>,
}

impl Ledger {
    fn ack(&self, room: &str, id: EventId, tag: u64) {
        lock(&self.acked).entry(room.to_owned()).or_default().push((id, tag));
    }

    fn unsure(&self, tag: u64) {
        lock(&self.uncertain).insert(tag);
    }

    /// Every room's acknowledged events.
    pub fn acked(&self) -> HashMap<String, Vec<(EventId, u64)>> {
        lock(&self.acked).clone()
    }

    /// Tags that were sent but not acknowledged.
    pub fn uncertain(&self) -> HashSet<u64> {
        lock(&self.uncertain).clone()
    }

    /// Publishes attempted.
    pub fn attempts(&self) -> u64 {
        *lock(&self.attempts)
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(node: SocketAddr, query: &str) -> Option<Socket> {
    let url = format!("ws://{node}/ws{query}");
    match tokio::time::timeout(Duration::from_secs(3), tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((ws, _))) => Some(ws),
        _ => None,
    }
}

/// The next JSON frame within `wait`: `Ok(None)` on silence, `Err` when closed.
async fn next_json(ws: &mut Socket, wait: Duration) -> Result<Option<Value>, ()> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Ok(None),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return Err(()),
            Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str(text.as_str()) {
                Ok(v) => return Ok(Some(v)),
                Err(_) => return Err(()),
            },
            Ok(Some(Ok(_))) => continue,
        }
    }
}

fn parse_id(v: &Value) -> Option<EventId> {
    v.as_str().and_then(EventId::parse)
}

/// Publishes to `room` about `rate` times a second through random nodes
/// until `stop`; returns once the last publish has an answer.
pub async fn publisher(
    index: u64,
    room: String,
    nodes: Vec<SocketAddr>,
    rate: f64,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let every = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut ws: Option<Socket> = None;
    let mut n: u64 = 0;
    let mut next = tokio::time::Instant::now();
    while !stop.is_cancelled() {
        tokio::time::sleep_until(next).await;
        next += every;
        if ws.is_none() {
            ws = connect(nodes[rng.random_range(0..nodes.len())], "").await;
            if ws.is_none() {
                continue;
            }
        }
        n += 1;
        let tag = (index << 32) | n;
        // Events of every size: now and then one of 8-60 KB.
        let pad = if rng.random_ratio(1, LARGE_ONE_IN) { rng.random_range(8_000..60_000) } else { 0 };
        if publish(ws.as_mut(), &room, tag, pad, &ledger).await.is_err() {
            ws = None;
        }
    }
}

/// One publish (its data padded with `pad` bytes) and its answer; `Err`
/// when the connection should be replaced.
async fn publish(ws: Option<&mut Socket>, room: &str, tag: u64, pad: usize, ledger: &Ledger) -> Result<(), ()> {
    let Some(ws) = ws else { return Err(()) };
    *lock(&ledger.attempts) += 1;
    let data = if pad == 0 { json!({"t": tag}) } else { json!({"t": tag, "pad": "p".repeat(pad)}) };
    let frame = json!({"type": "publish", "room": room, "data": data, "ref": tag});
    if ws.send(Message::Text(frame.to_string().into())).await.is_err() {
        ledger.unsure(tag);
        return Err(());
    }
    let deadline = Instant::now() + ACK_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_json(ws, left).await {
            Ok(Some(f)) if f["ref"].as_u64() == Some(tag) => {
                return match (f["type"].as_str(), parse_id(&f["id"])) {
                    (Some("ack"), Some(id)) => {
                        ledger.ack(room, id, tag);
                        Ok(())
                    }
                    _ => {
                        ledger.unsure(tag);
                        Ok(())
                    }
                };
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(()) => {
                ledger.unsure(tag);
                return Err(());
            }
        }
    }
}

/// Publishes one fence event to `room` and retries until it is acknowledged.
pub async fn fence(room: &str, nodes: &[SocketAddr], ledger: &Ledger, tag: u64) -> Option<EventId> {
    for attempt in 0..60 {
        if let Some(mut ws) = connect(nodes[attempt % nodes.len()], "").await {
            let tag = tag + attempt as u64;
            if publish(Some(&mut ws), room, tag, 0, ledger).await.is_ok() {
                if let Some(id) = lock(&ledger.acked).get(room).and_then(|a| a.iter().find(|(_, t)| *t == tag)) {
                    return Some(id.0);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// What a subscriber was handed, in order.
#[derive(Clone, Debug)]
pub enum Entry {
    /// An event: its ID and the tag in its data.
    Event(EventId, Option<u64>),
    /// A `gap` frame: its `after`, and when it arrived.
    Gap(EventId, Instant),
    /// A (re)connection: the node's index, the `subscribed` answer's
    /// `last_event_id` and `resumed`, and when. Only for the trace of a
    /// broken promise; the verdict ignores it.
    Joined(usize, String, Instant),
}

/// One subscriber's record.
#[derive(Debug, Default)]
pub struct SubLog {
    /// The room followed.
    pub room: String,
    /// Everything handed over, across every connection.
    pub entries: Vec<Entry>,
    /// Connections made (the first and every resume).
    pub connections: u64,
    /// Whether it reached the room's fence before the deadline.
    pub finished: bool,
}

impl SubLog {
    fn last_event(&self) -> Option<EventId> {
        self.entries.iter().rev().find_map(|e| match e {
            Entry::Event(id, _) => Some(*id),
            Entry::Gap(..) | Entry::Joined(..) => None,
        })
    }
}

/// Follows `room` from its oldest event through random nodes, dropping the
/// connection every few seconds and resuming from the last delivered ID,
/// until `stop` and then until the room's fence (from `fences`) arrives or
/// `deadline` passes.
pub async fn subscriber(
    room: String,
    nodes: Vec<SocketAddr>,
    stop: CancellationToken,
    fences: Arc<Mutex<HashMap<String, EventId>>>,
    deadline: Arc<Mutex<Option<Instant>>>,
    seed: u64,
) -> SubLog {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = SubLog { room: room.clone(), ..SubLog::default() };
    loop {
        let fence = lock(&fences).get(&room).copied();
        if let (Some(fence), Some(last)) = (fence, log.last_event()) {
            if last >= fence {
                log.finished = true;
                return log;
            }
        }
        if lock(&deadline).is_some_and(|d| Instant::now() > d) {
            return log;
        }
        let node = rng.random_range(0..nodes.len());
        let Some(mut ws) = connect(nodes[node], "").await else {
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..500))).await;
            continue;
        };
        log.connections += 1;
        let from = log.last_event().map(|id| id.to_string()).unwrap_or_else(|| "0".into());
        let subscribe = json!({"type": "subscribe", "room": room, "last_event_id": from});
        if ws.send(Message::Text(subscribe.to_string().into())).await.is_err() {
            continue;
        }
        // Until stopped, each connection lives a few seconds; then it stays.
        let drop_at = Instant::now() + Duration::from_millis(rng.random_range(1000..6000));
        let mut heard = Instant::now();
        loop {
            if heard.elapsed() > SILENCE {
                break;
            }
            if !stop.is_cancelled() && Instant::now() > drop_at {
                let _ = ws.close(None).await;
                // Away a while before resuming: faults also strike
                // subscribers that are between connections.
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..2000))).await;
                break;
            }
            let fence = lock(&fences).get(&room).copied();
            if fence.is_some_and(|f| log.last_event().is_some_and(|l| l >= f)) {
                break;
            }
            if lock(&deadline).is_some_and(|d| Instant::now() > d) {
                break;
            }
            let frame = match next_json(&mut ws, Duration::from_millis(250)).await {
                Err(()) => break,
                Ok(None) => continue,
                Ok(Some(frame)) => frame,
            };
            heard = Instant::now();
            match frame["type"].as_str() {
                Some("events") => {
                    for e in frame["events"].as_array().into_iter().flatten() {
                        if let Some(id) = parse_id(&e["id"]) {
                            log.entries.push(Entry::Event(id, e["data"]["t"].as_u64()));
                        }
                    }
                }
                Some("subscribed") => {
                    let answer =
                        format!("{}{}", frame["last_event_id"], if frame["resumed"] == true { " resumed" } else { "" });
                    log.entries.push(Entry::Joined(node, answer, Instant::now()));
                }
                Some("gap") => {
                    if let Some(after) = parse_id(&frame["after"]) {
                        log.entries.push(Entry::Gap(after, Instant::now()));
                    }
                }
                // A refused subscribe (store down): try again elsewhere.
                Some("error") => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                _ => {}
            }
        }
    }
}
