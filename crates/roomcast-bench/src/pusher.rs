//! The `pusher` preset: the Pusher protocol beside roomcast's own, in the
//! same run and on the same deployment.
//!
//! Fanout: one Redis and two nodes (one thread each) with a Pusher app; a
//! room (a Pusher channel) with 1,000 subscribers over both nodes, 100
//! publishes a second for 15 s; rounds alternate between native
//! subscribers (`/ws`, `subscribe`) and Pusher subscribers (`/app/{key}`,
//! `pusher:subscribe`), twice each, on the same nodes. Per round: events
//! each subscriber got (all of them, in order), node CPU per delivery, and
//! publish-to-receive p50/p99. Idle: 5,000 connections subscribed to a
//! room on a fresh node, native then Pusher: node RSS per connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::subscribers::{connect, now_micros, source_ip};
use crate::target::{cpu_seconds, rss_bytes, spawn_binary, Spawned};

const KEY: &str = "bench-key";
const SUBSCRIBERS: usize = 1_000;
const RATE: u64 = 100;
const SECONDS: u64 = 15;
const IDLE: usize = 5_000;

/// Which protocol subscribers speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Native,
    Pusher,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Native => "native",
            Proto::Pusher => "pusher",
        }
    }
}

struct Deployment {
    processes: Vec<Spawned>,
    nodes: Vec<SocketAddr>,
}

impl Deployment {
    fn start(nodes: usize) -> anyhow::Result<Deployment> {
        let (redis, url) = crate::target::spawn_redis()?;
        let mut processes = vec![redis];
        let mut addrs = Vec::new();
        for i in 0..nodes {
            let mut args = crate::target::node_args("127.0.0.1:0", nodes);
            args.extend(
                [
                    "--redis",
                    &url,
                    "--node-id",
                    &format!("pusher-bench-{i}"),
                    "--pusher-app-id",
                    "1",
                    "--pusher-key",
                    KEY,
                    "--pusher-secret",
                    "bench-secret-1",
                ]
                .map(String::from),
            );
            let (node, addr) = spawn_binary(&std::env::current_exe()?, "node", &args)?;
            processes.push(node);
            addrs.push(addr);
        }
        Ok(Deployment { processes, nodes: addrs })
    }

    fn nodes_only(&self) -> impl Iterator<Item = &Spawned> {
        self.processes.iter().filter(|p| p.name != "redis-server")
    }

    fn node_cpu(&self) -> f64 {
        self.nodes_only().map(|p| cpu_seconds(p.pid())).sum()
    }

    fn node_rss(&self) -> u64 {
        self.nodes_only().map(|p| rss_bytes(p.pid())).sum()
    }
}

type Socket = crate::subscribers::Socket;

/// Opens subscriber `i` of `room` in `proto`; returns once subscribed.
async fn subscribe(node: SocketAddr, i: usize, room: &str, proto: Proto) -> anyhow::Result<Socket> {
    let (query, want) = match proto {
        Proto::Native => (format!("?room={room}"), "\"subscribed\""),
        Proto::Pusher => (String::new(), "subscription_succeeded"),
    };
    let mut ws = match proto {
        Proto::Native => connect(node, source_ip(i, 8), &query).await?,
        Proto::Pusher => {
            crate::subscribers::connect_path(node, source_ip(i, 8), &format!("/app/{KEY}?protocol=7")).await?
        }
    };
    if proto == Proto::Pusher {
        let frame = json!({"event": "pusher:subscribe", "data": {"channel": room}});
        ws.send(Message::Text(frame.to_string().into())).await?;
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains(want) => return Ok(ws),
            Ok(Some(Ok(_))) => {}
            _ => anyhow::bail!("subscriber {i} ({}) did not subscribe", proto.name()),
        }
    }
}

/// `(s, t)` of the payloads in one message, whichever protocol.
fn payloads(text: &str, proto: Proto, out: &mut Vec<(u64, u64)>) {
    let Ok(frame) = serde_json::from_str::<Value>(text) else { return };
    let mut take = |data: &Value| {
        if let (Some(s), Some(t)) = (data["s"].as_u64(), data["t"].as_u64()) {
            out.push((s, t));
        }
    };
    match proto {
        Proto::Native if frame["type"] == "events" => {
            for e in frame["events"].as_array().into_iter().flatten() {
                take(&e["data"]);
            }
        }
        Proto::Pusher if frame["event"] == "message" => {
            if let Some(Ok(data)) = frame["data"].as_str().map(serde_json::from_str::<Value>) {
                take(&data);
            }
        }
        _ => {}
    }
}

/// What one fanout round measured.
#[derive(Debug, Clone, serde::Serialize)]
struct Round {
    proto: &'static str,
    published: u64,
    /// Subscribers that got every event once, in order.
    exact: usize,
    deliveries: u64,
    node_cpu_us_per_delivery: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn fanout_round(d: &Deployment, proto: Proto, round: usize) -> anyhow::Result<Round> {
    let room = format!("fan-{round}");
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut ws = subscribe(d.nodes[i % d.nodes.len()], i, &room, proto).await?;
        let (stop, latencies) = (stop.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let (mut seen, mut ordered) = (Vec::new(), true);
            let mut last = 0;
            let mut batch = Vec::new();
            while !stop.load(Ordering::Acquire) {
                match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => {
                        batch.clear();
                        payloads(text.as_str(), proto, &mut batch);
                        let now = now_micros();
                        for (s, t) in &batch {
                            ordered &= *s > last;
                            last = *s;
                            seen.push(*s);
                            if i % 10 == 0 {
                                if let Ok(mut l) = latencies.lock() {
                                    l.push(now.saturating_sub(*t) as f64 / 1e3);
                                }
                            }
                        }
                    }
                    Ok(None) | Ok(Some(Err(_))) => break,
                    _ => {}
                }
            }
            (seen.len() as u64, ordered)
        }));
    }
    // The publisher: roomcast WebSocket publishes, timed by the harness.
    let mut publisher = connect(d.nodes[0], source_ip(SUBSCRIBERS, 8), "").await?;
    let (cpu0, start) = (d.node_cpu(), Instant::now());
    let total = RATE * SECONDS;
    let acked = Arc::new(AtomicU64::new(0));
    for s in 1..=total {
        let due = start + Duration::from_secs_f64((s - 1) as f64 / RATE as f64);
        tokio::time::sleep_until(due.into()).await;
        let frame = json!({"type": "publish", "room": room, "data": {"s": s, "t": now_micros()}, "ref": s});
        publisher.send(Message::Text(frame.to_string().into())).await?;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::ZERO, publisher.next()).await {
            acked.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Let the last events arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = d.node_cpu() - cpu0;
    stop.store(true, Ordering::Release);
    let (mut deliveries, mut exact) = (0, 0);
    for task in tasks {
        let (n, ordered) = task.await?;
        deliveries += n;
        if n == total && ordered {
            exact += 1;
        }
    }
    let mut l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_by(f64::total_cmp);
    let pick = |p: f64| l.get(((l.len().max(1) - 1) as f64 * p) as usize).copied().unwrap_or(f64::NAN);
    Ok(Round {
        proto: proto.name(),
        published: total,
        exact,
        deliveries,
        node_cpu_us_per_delivery: cpu / deliveries.max(1) as f64 * 1e6,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
    })
}

/// RSS per idle subscribed connection on a fresh node.
async fn idle(proto: Proto) -> anyhow::Result<f64> {
    let d = Deployment::start(1)?;
    // A few connections first, so the runtime's fixed costs are in the baseline.
    let mut warm = Vec::new();
    for i in 0..50 {
        warm.push(subscribe(d.nodes[0], i, "idle", proto).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = d.node_rss();
    let mut held = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        held.push(subscribe(d.nodes[0], 50 + i, "idle", proto).await?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = d.node_rss();
    drop(held);
    Ok(after.saturating_sub(before) as f64 / IDLE as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The preset.
pub async fn run() -> anyhow::Result<(bool, Value)> {
    let d = Deployment::start(2).context("starting the deployment")?;
    let mut rounds = Vec::new();
    for (round, proto) in [Proto::Native, Proto::Pusher, Proto::Native, Proto::Pusher].into_iter().enumerate() {
        let r = fanout_round(&d, proto, round).await?;
        eprintln!("pusher preset: {r:?}");
        rounds.push(r);
    }
    let cpu = |p: &str| median(rounds.iter().filter(|r| r.proto == p).map(|r| r.node_cpu_us_per_delivery).collect());
    let (native_cpu, pusher_cpu) = (cpu("native"), cpu("pusher"));
    drop(d);
    let native_idle = idle(Proto::Native).await?;
    let pusher_idle = idle(Proto::Pusher).await?;
    eprintln!("pusher preset: idle bytes per connection, native {native_idle:.0}, pusher {pusher_idle:.0}");
    let clean = rounds.iter().all(|r| r.exact == SUBSCRIBERS);
    Ok((
        clean,
        json!({
            "rounds": rounds,
            "node_cpu_us_per_delivery": {"native": native_cpu, "pusher": pusher_cpu, "ratio": pusher_cpu / native_cpu},
            "idle_rss_bytes_per_connection": {"native": native_idle, "pusher": pusher_idle, "ratio": pusher_idle / native_idle},
            "targets": {"cpu_ratio": 1.2, "memory_ratio": 1.2},
        }),
    ))
}
