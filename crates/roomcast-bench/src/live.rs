//! The live-audience presets: reactions from every viewer of one room, and
//! audience counts kept fresh over many rooms while viewers come and go.
//! Both speak only the public protocol (`react`, `reactions`, `audience`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::subscribers::{source_ip, tcp};
use crate::target::Target;

/// What the reactions preset measured.
#[derive(Clone, Debug, Serialize)]
pub struct ReactionsOutcome {
    /// Viewers, each reacting once a second.
    pub viewers: usize,
    /// Seconds of reacting.
    pub seconds: f64,
    /// Reactions sent, all viewers together.
    pub sent: u64,
    /// Reactions sent per second.
    pub reactions_per_sec: f64,
    /// `reactions` frames each viewer received per second (mean).
    pub frames_per_viewer_per_sec: f64,
    /// The largest difference, over viewers, between the reactions sent
    /// and the sum of the counts that viewer received.
    pub max_count_error: u64,
    /// Viewers whose sum was not exact.
    pub viewers_off: usize,
    /// Server CPU seconds (nodes and Redis) per thousand reactions.
    pub cpu_seconds_per_thousand: f64,
}

/// What the audience preset measured.
#[derive(Clone, Debug, Serialize)]
pub struct AudienceOutcome {
    /// Rooms, each with one watcher that asked for the audience.
    pub rooms: usize,
    /// Viewers joining and leaving rooms at random meanwhile.
    pub churners: usize,
    /// Joins (and as many leaves) over the run.
    pub joins: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// Redis commands per second (all clients), from `INFO stats`.
    pub redis_commands_per_sec: f64,
    /// Server CPU (nodes and Redis), seconds per second.
    pub cpu_cores: f64,
    /// Audience frames the watchers received per second, all together.
    pub audience_frames_per_sec: f64,
    /// Redis commands per second while nothing changed (same rooms, no churn).
    pub idle_redis_commands_per_sec: f64,
}

/// A JSON WebSocket to a node, from a chosen source address.
type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(node: SocketAddr, index: usize, query: &str) -> anyhow::Result<Socket> {
    let stream = tcp(node, source_ip(index, 8)).await?;
    let url = format!("ws://{node}/ws{query}");
    let (ws, _) = tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await?;
    Ok(ws)
}

/// Reads frames until one of `kind` arrives.
async fn until_frame(ws: &mut Socket, kind: &str) -> anyhow::Result<Value> {
    loop {
        let msg = ws.next().await.context("closed")??;
        if let Message::Text(text) = msg {
            let frame: Value = serde_json::from_str(&text)?;
            if frame["type"] == kind {
                return Ok(frame);
            }
        }
    }
}

/// `viewers` viewers of one room over the target's nodes, each reacting
/// once a second (at a random phase) for `seconds`.
pub async fn reactions(target: &Target, viewers: usize, seconds: u64) -> anyhow::Result<ReactionsOutcome> {
    let room = format!("react-{}", std::process::id());
    let reacting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(viewers);
    let mut ready = Vec::with_capacity(viewers);
    for i in 0..viewers {
        let node = target.nodes[i % target.nodes.len()];
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        ready.push(rx);
        let (room, reacting, stop, sent) = (room.clone(), reacting.clone(), stop.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut ws = open(node, i, &format!("?room={room}")).await?;
            until_frame(&mut ws, "subscribed").await?;
            let _ = tx.send(());
            let key = ["👏", "🔥", "😂", "❤️"][i % 4];
            let react = serde_json::json!({"type": "react", "room": room, "key": key}).to_string();
            let phase = Duration::from_millis((i as u64 * 7919) % 1000);
            let mut next = tokio::time::Instant::now() + phase;
            let (mut sum, mut frames) = (0u64, 0u64);
            let mut quiet_since: Option<Instant> = None;
            loop {
                if stop.load(Ordering::Acquire) {
                    // Drain: the last windows are still on their way.
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(2) {
                        break;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {
                        next += Duration::from_secs(1);
                        if reacting.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
                            ws.send(Message::Text(react.clone().into())).await?;
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    msg = ws.next() => {
                        let Some(msg) = msg else { break };
                        if let Message::Text(text) = msg? {
                            let frame: Value = serde_json::from_str(&text)?;
                            if frame["type"] == "reactions" {
                                frames += 1;
                                sum += frame["counts"].as_object().map_or(0, |c| c.values().filter_map(Value::as_u64).sum());
                            }
                        }
                    }
                }
            }
            anyhow::Ok((sum, frames))
        }));
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for rx in ready {
        rx.await.context("a viewer failed to subscribe")?;
    }
    let cpu_start = target.cpu_seconds();
    let started = Instant::now();
    reacting.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Release);
    let elapsed = started.elapsed().as_secs_f64();
    let mut results = Vec::with_capacity(viewers);
    for task in tasks {
        results.push(task.await.context("viewer task")??);
    }
    let cpu = target.cpu_seconds() - cpu_start;
    let sent = sent.load(Ordering::Acquire);
    let errors: Vec<u64> = results.iter().map(|(sum, _)| sum.abs_diff(sent)).collect();
    let frames: u64 = results.iter().map(|(_, f)| *f).sum();
    Ok(ReactionsOutcome {
        viewers,
        seconds: elapsed,
        sent,
        reactions_per_sec: sent as f64 / elapsed,
        frames_per_viewer_per_sec: frames as f64 / viewers.max(1) as f64 / elapsed,
        max_count_error: errors.iter().copied().max().unwrap_or(0),
        viewers_off: errors.iter().filter(|e| **e > 0).count(),
        cpu_seconds_per_thousand: cpu / (sent.max(1) as f64 / 1000.0),
    })
}

/// Commands Redis processed so far (`INFO stats`), summed over `servers`.
pub(crate) async fn redis_commands(servers: &[String]) -> anyhow::Result<u64> {
    let mut total = 0;
    for server in servers {
        total += server_commands(server).await?;
    }
    Ok(total)
}

async fn server_commands(redis: &str) -> anyhow::Result<u64> {
    let addr = redis.trim_start_matches("redis://");
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"INFO stats\r\n").await?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    while !String::from_utf8_lossy(&reply).contains("total_commands_processed:") || !reply.ends_with(b"\r\n") {
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "redis closed");
        reply.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&reply);
    let line = text.lines().find_map(|l| l.strip_prefix("total_commands_processed:")).context("no command count")?;
    Ok(line.trim().parse()?)
}

/// `rooms` rooms with one audience watcher each over the target's nodes;
/// `churners` viewers then join a random room and leave it 1-5 s later,
/// over and over, for `seconds`. Measured first idle, then churning.
pub async fn audience(
    target: &Target,
    redis: &[String],
    rooms: usize,
    churners: usize,
    seconds: u64,
) -> anyhow::Result<AudienceOutcome> {
    let prefix = format!("aud-{}-", std::process::id());
    let frames = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::with_capacity(rooms);
    let mut ready = Vec::with_capacity(rooms);
    for i in 0..rooms {
        let node = target.nodes[i % target.nodes.len()];
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        ready.push(rx);
        let (query, frames, stop) = (format!("?room={prefix}{i}&audience=1"), frames.clone(), stop.clone());
        watchers.push(tokio::spawn(async move {
            let mut ws = open(node, i, &query).await?;
            until_frame(&mut ws, "subscribed").await?;
            let _ = tx.send(());
            while !stop.load(Ordering::Acquire) {
                match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) if text.contains("\"audience\"") => {
                        frames.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) | Ok(Some(Err(_))) => break,
                    _ => {}
                }
            }
            anyhow::Ok(())
        }));
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for rx in ready {
        rx.await.context("a watcher failed to subscribe")?;
    }
    // Settle (first counts pushed), then measure a quiet stretch.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let quiet = Instant::now();
    let quiet_commands = redis_commands(redis).await?;
    tokio::time::sleep(Duration::from_secs(seconds / 2)).await;
    let idle_redis_commands_per_sec =
        (redis_commands(redis).await? - quiet_commands) as f64 / quiet.elapsed().as_secs_f64();

    let joins = Arc::new(AtomicU64::new(0));
    let churning = Arc::new(AtomicBool::new(true));
    let mut churn = Vec::with_capacity(churners);
    let (cpu_start, commands_start, frames_start, started) =
        (target.cpu_seconds(), redis_commands(redis).await?, frames.load(Ordering::Acquire), Instant::now());
    for c in 0..churners {
        let node = target.nodes[c % target.nodes.len()];
        let (prefix, joins, churning) = (prefix.clone(), joins.clone(), churning.clone());
        churn.push(tokio::spawn(async move {
            let mut ws = open(node, rooms + c, "").await?;
            let mut turn = c as u64;
            while churning.load(Ordering::Acquire) {
                turn = turn.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let room = format!("{prefix}{}", (turn >> 33) as usize % rooms.max(1));
                let stay = Duration::from_millis(1000 + (turn >> 20) % 4000);
                ws.send(Message::Text(serde_json::json!({"type": "subscribe", "room": room}).to_string().into()))
                    .await?;
                until_frame(&mut ws, "subscribed").await?;
                joins.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(stay).await;
                ws.send(Message::Text(serde_json::json!({"type": "unsubscribe", "room": room}).to_string().into()))
                    .await?;
                until_frame(&mut ws, "unsubscribed").await?;
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu, commands, received) = (
        target.cpu_seconds() - cpu_start,
        redis_commands(redis).await? - commands_start,
        frames.load(Ordering::Acquire) - frames_start,
    );
    churning.store(false, Ordering::Release);
    for task in churn {
        task.await.context("churn task")??;
    }
    stop.store(true, Ordering::Release);
    for task in watchers {
        task.await.context("watcher task")??;
    }
    Ok(AudienceOutcome {
        rooms,
        churners,
        joins: joins.load(Ordering::Acquire),
        seconds: elapsed,
        redis_commands_per_sec: commands as f64 / elapsed,
        cpu_cores: cpu / elapsed,
        audience_frames_per_sec: received as f64 / elapsed,
        idle_redis_commands_per_sec,
    })
}
