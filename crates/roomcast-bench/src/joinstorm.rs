//! The `join-storm` preset: a show's whole audience joins at once.
//!
//! One room holds 10,000 kept events, each the current value of state key
//! `seq`; a publisher adds 20 a second. 20,000 viewers, in two generator
//! processes, join over 5 s across two nodes on one Redis. Each viewer
//! either subscribes with `rewind: 50` and `state: true` (`rewind` mode), or
//! does what an application had to do before those existed (`http` mode):
//! read 50 events over HTTP from a position it knew, then subscribe
//! resuming from the last of them. Every viewer checks its stream: events
//! in order with consecutive sequence numbers, no gap, through to the
//! publisher's last event; in `rewind` mode, the 50 rewound events end
//! where the state frame stands. Reported: join-to-first-event latency,
//! Redis commands during the storm (and per viewer, above the background),
//! node CPU, and the nodes' own count of joins served from memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use clap::{Args, ValueEnum};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::live::redis_commands;
use crate::reader::Reader;
use crate::subscribers::{source_ip, tcp};
use crate::target::{cpu_seconds, Spawned};

/// Viewers joining.
const VIEWERS: usize = 20_000;
/// Generator processes holding them (a process here may open 20,000 files).
const PROCESSES: usize = 2;
/// Events kept in the room before the storm.
const KEPT: usize = 10_000;
/// Publishes per second during the storm.
const RATE: f64 = 20.0;
/// The joins are spread evenly over this long.
const JOIN_WINDOW: Duration = Duration::from_secs(5);
/// Events each viewer rewinds.
const REWIND: u64 = 50;
/// Publishing goes on this long after the last join, so every viewer follows live.
const AFTER_JOINS: Duration = Duration::from_secs(5);
/// Background Redis load is measured over this long before the storm.
const BACKGROUND: Duration = Duration::from_secs(3);
/// Loopback source addresses the viewers come from.
const SOURCES: u8 = 8;
/// How long a viewer process may take to finish after the end is announced.
const FINISH_PATIENCE: Duration = Duration::from_secs(120);
/// The room.
const ROOM: &str = "show";
/// Times the publisher sends one event before giving up.
const PUBLISH_TRIES: usize = 10;

/// How a viewer joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinMode {
    /// `subscribe` with `rewind: 50` and `state: true`.
    Rewind,
    /// `GET /rooms/{room}/events?after=<known position>&limit=50`, then
    /// `subscribe` resuming after the last event it got.
    Http,
}

/// `roomcast bench-joiners` flags (hidden; the preset spawns it).
#[derive(Clone, Debug, Args)]
pub struct JoinerArgs {
    /// Node addresses (repeatable).
    #[arg(long = "node", required = true)]
    pub nodes: Vec<SocketAddr>,
    /// Index of this process's first viewer.
    #[arg(long)]
    pub first: usize,
    /// Viewers in this process.
    #[arg(long)]
    pub count: usize,
    /// Viewers in every process together (joins are spread by index).
    #[arg(long)]
    pub total: usize,
    /// How viewers join.
    #[arg(long, value_enum)]
    pub mode: JoinMode,
    /// When joining starts, in milliseconds since the epoch (every process
    /// reads the same wall clock).
    #[arg(long)]
    pub start_ms: u64,
    /// `http` mode: the position viewers read after, and its sequence number.
    #[arg(long, default_value = "0")]
    pub after: String,
    /// `http` mode: the sequence number of the event at `after`.
    #[arg(long, default_value_t = 0)]
    pub after_seq: u64,
}

/// What one viewer process found.
#[derive(Debug, Default, Serialize, Deserialize)]
struct JoinerReport {
    viewers: usize,
    clean: usize,
    /// The first few problems, for the report.
    problems: Vec<String>,
    /// Join-to-first-event of each viewer, milliseconds.
    join_ms: Vec<f64>,
    /// `rewind` mode: viewers whose rewind ended exactly at the state's position.
    rewind_at_state: usize,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A frame as a viewer reads it: only what it checks, borrowed.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: &'a str,
    #[serde(default, borrow)]
    events: Vec<Ev<'a>>,
    #[serde(default)]
    values: Option<Values>,
}

/// One event: its ID and its sequence number.
#[derive(Deserialize)]
struct Ev<'a> {
    #[serde(borrow)]
    id: &'a str,
    data: Seq,
}

#[derive(Deserialize)]
struct Seq {
    seq: u64,
}

/// A state frame's values: key `seq` holds the newest event's number.
#[derive(Deserialize)]
struct Values {
    seq: Option<SeqValue>,
}

#[derive(Deserialize)]
struct SeqValue {
    data: Seq,
}

/// One viewer's stream, checked as it arrives.
struct Stream {
    next: Option<u64>,
    events: u64,
}

impl Stream {
    fn new(first: Option<u64>) -> Self {
        Stream { next: first, events: 0 }
    }

    /// Takes one event with sequence number `seq`: the next one, or an error.
    fn take(&mut self, seq: u64) -> anyhow::Result<()> {
        if let Some(expected) = self.next.filter(|n| *n != seq) {
            bail!("expected event {expected}, got {seq}");
        }
        self.next = Some(seq + 1);
        self.events += 1;
        Ok(())
    }

    fn last(&self) -> Option<u64> {
        self.next.map(|n| n.saturating_sub(1))
    }
}

/// What one viewer found.
struct Viewed {
    join: Duration,
    problem: Option<String>,
    rewind_at_state: bool,
}

/// One HTTP GET over a fresh connection; the body of a 200.
async fn http_get(node: SocketAddr, source: std::net::Ipv4Addr, path: &str) -> anyhow::Result<Vec<u8>> {
    let mut stream = tcp(node, source).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {node}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").context("no end of headers")?;
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    ensure!(head.starts_with("http/1.1 200"), "GET {path}: {}", head.lines().next().unwrap_or(""));
    ensure!(!head.contains("transfer-encoding: chunked"), "a chunked answer");
    Ok(response[split + 4..].to_vec())
}

/// Joins as viewer `i` and follows the room until event `end` (once known).
async fn view(args: &JoinerArgs, i: usize, mut end: watch::Receiver<Option<u64>>, joined: &AtomicUsize) -> Viewed {
    let node = args.nodes[i % args.nodes.len()];
    let source = source_ip(i, SOURCES);
    let started = Instant::now();
    let mut viewed = Viewed { join: Duration::ZERO, problem: None, rewind_at_state: false };
    let outcome: anyhow::Result<()> = async {
        let (query, mut stream) = match args.mode {
            JoinMode::Rewind => (format!("?room={ROOM}&rewind={REWIND}&state=1"), Stream::new(None)),
            JoinMode::Http => {
                let body = http_get(node, source, &format!("/rooms/{ROOM}/events?after={}&limit={REWIND}", args.after))
                    .await?;
                let page: Frame = serde_json::from_slice(&body).context("a history page")?;
                let mut stream = Stream::new(Some(args.after_seq + 1));
                for e in &page.events {
                    stream.take(e.data.seq)?;
                }
                ensure!(stream.events == REWIND, "a page of {} events", stream.events);
                viewed.join = started.elapsed();
                joined.fetch_add(1, Ordering::Relaxed);
                let last = page.events.last().context("a last event")?.id;
                (format!("?room={ROOM}&last_event_id={last}"), stream)
            }
        };
        let mut ws = Reader::handshake(tcp(node, source).await?, node, &query).await?;
        let mut state_seq = None;
        let mut rewound = 0u64;
        loop {
            if end.borrow().is_some_and(|end| stream.last() == Some(end)) {
                break;
            }
            let payload = tokio::select! {
                payload = ws.next() => payload?.context("the node closed")?,
                changed = end.changed() => {
                    changed?;
                    continue;
                }
            };
            let frame: Frame = serde_json::from_slice(&payload)?;
            match frame.kind {
                "state" => state_seq = frame.values.and_then(|v| v.seq).map(|v| v.data.seq),
                "gap" => bail!("a gap in a room that lost nothing"),
                "events" => {
                    for e in &frame.events {
                        if stream.events == 0 && args.mode == JoinMode::Rewind {
                            viewed.join = started.elapsed();
                            joined.fetch_add(1, Ordering::Relaxed);
                        }
                        stream.take(e.data.seq)?;
                        if state_seq.is_some_and(|s| e.data.seq <= s) {
                            rewound += 1;
                        }
                    }
                }
                "error" => bail!("refused: {}", String::from_utf8_lossy(&payload)),
                _ => {}
            }
        }
        if args.mode == JoinMode::Rewind {
            ensure!(state_seq.is_some(), "no state frame");
            // The rewind is the last 50 at joining: it ends at the state's
            // position, or within the events published while joining.
            ensure!(
                (REWIND.saturating_sub(20)..=REWIND).contains(&rewound),
                "{rewound} events up to the state's position"
            );
            viewed.rewind_at_state = rewound == REWIND;
        }
        Ok(())
    }
    .await;
    viewed.problem = outcome.err().map(|e| format!("viewer {i}: {e:#}"));
    viewed
}

/// Runs one viewer process (the `bench-joiners` command): joins its share
/// at their times, says `joined` once each has its first event, and on
/// `end <seq>` follows to that event and answers one JSON line.
pub fn joiners_main(args: JoinerArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let args = Arc::new(args);
        let (end_tx, end_rx) = watch::channel(None);
        let joined = Arc::new(AtomicUsize::new(0));
        let start = args.start_ms;
        let mut tasks = Vec::with_capacity(args.count);
        for k in 0..args.count {
            let i = args.first + k;
            let at = start + (JOIN_WINDOW.as_millis() as u64 * i as u64) / args.total.max(1) as u64;
            let (args, end, joined) = (args.clone(), end_rx.clone(), joined.clone());
            tasks.push(tokio::spawn(async move {
                let wait = at.saturating_sub(now_ms());
                tokio::time::sleep(Duration::from_millis(wait)).await;
                view(&args, i, end, &joined).await
            }));
        }
        let mut stdout = tokio::io::stdout();
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        // `joined` (or as many as did) once the window and a margin passed.
        let deadline = Instant::now() + Duration::from_millis(start.saturating_sub(now_ms())) + JOIN_WINDOW * 6;
        while joined.load(Ordering::Relaxed) < args.count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stdout.write_all(format!("joined {}\n", joined.load(Ordering::Relaxed)).as_bytes()).await?;
        stdout.flush().await?;
        let line = lines.next_line().await?.context("no end line")?;
        let end: u64 = line.strip_prefix("end ").context("expected `end <seq>`")?.parse()?;
        let _ = end_tx.send(Some(end));
        let mut report = JoinerReport { viewers: args.count, ..Default::default() };
        for task in tasks {
            let viewed = match tokio::time::timeout(FINISH_PATIENCE, task).await {
                Ok(Ok(viewed)) => viewed,
                _ => Viewed { join: Duration::ZERO, problem: Some("did not finish".into()), rewind_at_state: false },
            };
            match viewed.problem {
                None => {
                    report.clean += 1;
                    report.join_ms.push(viewed.join.as_secs_f64() * 1e3);
                    report.rewind_at_state += usize::from(viewed.rewind_at_state);
                }
                Some(problem) if report.problems.len() < 5 => report.problems.push(problem),
                Some(_) => {}
            }
        }
        stdout.write_all(format!("{}\n", serde_json::to_string(&report)?).as_bytes()).await?;
        stdout.flush().await?;
        Ok(())
    })
}

/// A deployment of this preset: one Redis and two nodes of `binary`.
struct Deployment {
    processes: Vec<Spawned>,
    nodes: Vec<SocketAddr>,
    redis: String,
}

impl Deployment {
    fn start(binary: &Path) -> anyhow::Result<Deployment> {
        let (redis, url) = crate::target::spawn_redis()?;
        let mut processes = vec![redis];
        let mut nodes = Vec::new();
        for i in 0..2 {
            let mut args = crate::target::node_args("127.0.0.1:0", 2);
            args.extend(["--redis".into(), url.clone(), "--node-id".into(), format!("join-{i}")]);
            let (node, addr) = crate::target::spawn_binary(binary, &format!("node-{i}"), &args)?;
            processes.push(node);
            nodes.push(addr);
        }
        Ok(Deployment { processes, nodes, redis: url })
    }

    fn node_cpu(&self) -> f64 {
        self.processes.iter().filter(|p| p.name != "redis-server").map(|p| cpu_seconds(p.pid())).sum()
    }
}

/// Publishes one event with sequence number `seq` as state key `seq`;
/// returns its ID. A publish the store did not confirm in time (a node
/// swamped by the storm) is sent again with the same idempotency key, so it
/// is stored once.
async fn publish(ws: &mut crate::subscribers::Socket, seq: u64, text: &str) -> anyhow::Result<String> {
    let frame = json!({
        "type": "publish", "room": ROOM, "key": "seq", "ref": seq,
        "idempotency_key": format!("seq-{seq}"), "data": {"seq": seq, "text": text},
    });
    for _ in 0..PUBLISH_TRIES {
        ws.send(Message::Text(frame.to_string().into())).await?;
        loop {
            let Message::Text(reply) = ws.next().await.context("the publisher's node closed")?? else { continue };
            let ack: Value = serde_json::from_str(reply.as_str())?;
            if ack["type"] == "ack" && ack["ref"] == seq {
                return Ok(ack["id"].as_str().context("ack id")?.to_owned());
            }
            if ack["type"] == "error" && ack["code"] == "store_unavailable" {
                break;
            }
            ensure!(ack["type"] != "error", "publish refused: {ack}");
        }
    }
    bail!("publish {seq} was not confirmed in {PUBLISH_TRIES} tries")
}

/// Fills the room with the kept events, 64 publishes in flight; returns their IDs.
async fn fill(node: SocketAddr) -> anyhow::Result<Vec<String>> {
    let mut ws = crate::subscribers::connect(node, source_ip(0, 1), "").await?;
    let text = "a chat line of about eighty bytes, like the ones a live show's audience sends";
    let mut ids = vec![String::new(); KEPT];
    for chunk in (0..KEPT as u64).collect::<Vec<_>>().chunks(64) {
        for seq in chunk {
            let frame =
                json!({"type": "publish", "room": ROOM, "key": "seq", "ref": seq, "data": {"seq": seq, "text": text}});
            ws.feed(Message::Text(frame.to_string().into())).await?;
        }
        ws.flush().await?;
        let mut acked = 0;
        while acked < chunk.len() {
            let Message::Text(reply) = ws.next().await.context("the node closed while filling")?? else { continue };
            let ack: Value = serde_json::from_str(reply.as_str())?;
            ensure!(ack["type"] == "ack", "publish refused: {ack}");
            ids[ack["ref"].as_u64().context("ack ref")? as usize] = ack["id"].as_str().context("ack id")?.to_owned();
            acked += 1;
        }
    }
    Ok(ids)
}

/// The nodes' count of joins served from memory and from the store.
async fn served_from_memory(nodes: &[SocketAddr]) -> Value {
    let mut counts = serde_json::Map::new();
    for node in nodes {
        let Ok(body) = http_get(*node, source_ip(0, 1), "/metrics").await else { continue };
        for line in String::from_utf8_lossy(&body).lines().filter(|l| l.starts_with("roomcast_recent_total{")) {
            let Some((labels, value)) = line.rsplit_once(' ') else { continue };
            let total = counts.get(labels).and_then(Value::as_f64).unwrap_or(0.0) + value.parse::<f64>().unwrap_or(0.0);
            counts.insert(labels.to_owned(), json!(total));
        }
    }
    Value::Object(counts)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One storm against nodes of `binary`, viewers joining by `mode`.
pub async fn storm(binary: &Path, mode: JoinMode) -> anyhow::Result<(bool, Value)> {
    let deployment = Deployment::start(binary)?;
    let nodes = deployment.nodes.clone();
    let ids = fill(nodes[0]).await?;
    let redis = [deployment.redis.clone()];

    // The publisher runs from here to the end, at RATE.
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let publisher_node = nodes[1];
    let publisher = tokio::spawn(async move {
        let mut ws = crate::subscribers::connect(publisher_node, source_ip(0, 1), "").await?;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE));
        let mut seq = KEPT as u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop_rx.changed() => break,
            }
            publish(&mut ws, seq, "live").await?;
            seq += 1;
        }
        anyhow::Ok(seq - 1)
    });

    let background_commands = redis_commands(&redis).await?;
    tokio::time::sleep(BACKGROUND).await;
    let background_rate = (redis_commands(&redis).await? - background_commands) as f64 / BACKGROUND.as_secs_f64();

    // The storm.
    let start_ms = now_ms() + 1_000;
    let per = VIEWERS.div_ceil(PROCESSES);
    let mut children = Vec::new();
    for first in (0..VIEWERS).step_by(per) {
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command.arg("bench-joiners");
        for node in &nodes {
            command.arg("--node").arg(node.to_string());
        }
        command
            .args(["--first", &first.to_string(), "--count", &per.min(VIEWERS - first).to_string()])
            .args(["--total", &VIEWERS.to_string(), "--start-ms", &start_ms.to_string()])
            .args(["--mode", if mode == JoinMode::Rewind { "rewind" } else { "http" }])
            .args(["--after", &ids[KEPT - 1 - REWIND as usize], "--after-seq", &(KEPT as u64 - 1 - REWIND).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().context("spawning a viewer process")?;
        let stdin = child.stdin.take().context("viewer stdin")?;
        let lines = BufReader::new(child.stdout.take().context("viewer stdout")?).lines();
        children.push((child, stdin, lines));
    }
    tokio::time::sleep(Duration::from_millis(start_ms.saturating_sub(now_ms()))).await;
    let storm_started = Instant::now();
    let (commands_before, cpu_before) = (redis_commands(&redis).await?, deployment.node_cpu());
    let mut joined = 0usize;
    for (_, _, lines) in &mut children {
        let line = lines.next_line().await?.context("a viewer process ended before joining")?;
        joined += line.strip_prefix("joined ").context("expected `joined N`")?.parse::<usize>()?;
    }
    let storm_seconds = storm_started.elapsed().as_secs_f64();
    let (commands_after, cpu_after) = (redis_commands(&redis).await?, deployment.node_cpu());

    tokio::time::sleep(AFTER_JOINS).await;
    let _ = stop_tx.send(true);
    let end = publisher.await??;
    let mut reports = Vec::new();
    for (mut child, mut stdin, mut lines) in children {
        stdin.write_all(format!("end {end}\n").as_bytes()).await?;
        stdin.flush().await?;
        let line = tokio::time::timeout(FINISH_PATIENCE * 2, lines.next_line())
            .await
            .context("a viewer process did not report")??
            .context("a viewer process ended without a report")?;
        reports.push(serde_json::from_str::<JoinerReport>(&line)?);
        let _ = child.wait().await;
    }
    let memory = served_from_memory(&nodes).await;
    drop(deployment);

    let clean: usize = reports.iter().map(|r| r.clean).sum();
    let at_state: usize = reports.iter().map(|r| r.rewind_at_state).sum();
    let problems: Vec<&String> = reports.iter().flat_map(|r| &r.problems).take(5).collect();
    let mut join_ms: Vec<f64> = reports.iter().flat_map(|r| r.join_ms.iter().copied()).collect();
    join_ms.sort_by(f64::total_cmp);
    let commands = (commands_after - commands_before) as f64;
    let above_background = (commands - background_rate * storm_seconds).max(0.0);
    let summary = json!({
        "mode": mode,
        "viewers": VIEWERS,
        "joined": joined,
        "clean_viewers": clean,
        "problems": problems,
        "join_to_first_event_ms": {"p50": percentile(&join_ms, 0.5), "p99": percentile(&join_ms, 0.99), "max": join_ms.last()},
        "storm_seconds": storm_seconds,
        "redis_commands_per_second": {
            "background": background_rate,
            "during_storm": commands / storm_seconds,
            "per_joining_viewer_above_background": above_background / VIEWERS as f64,
        },
        "node_cpu_seconds_during_storm": cpu_after - cpu_before,
        "rewind_ended_at_the_state": (mode == JoinMode::Rewind).then_some(at_state),
        "served_from_memory": memory,
        "final_seq": end,
    });
    Ok((clean == VIEWERS, summary))
}

/// The preset: the storm with rewind and state, beside the same storm done
/// the earlier way (on this build, and on `baseline` when given).
pub async fn run(baseline: Option<PathBuf>) -> anyhow::Result<(bool, Value)> {
    let exe = std::env::current_exe()?;
    let mut runs = vec![("rewind", exe.clone(), JoinMode::Rewind), ("http_then_resume", exe, JoinMode::Http)];
    if let Some(binary) = baseline {
        runs.push(("http_then_resume_on_baseline", binary, JoinMode::Http));
    }
    let mut summary = json!({});
    let mut clean = true;
    for (name, binary, mode) in runs {
        // A run that breaks down is a finding, not the end of the preset.
        let (ok, figures) = match storm(&binary, mode).await {
            Ok(outcome) => outcome,
            Err(e) => (false, json!({ "mode": mode, "error": format!("{e:#}") })),
        };
        clean &= ok;
        summary[name] = figures;
    }
    summary["targets"] = json!({"every_viewer_clean": true, "join_p99_ms": 2000, "redis_commands": "a few per room and node per second, not per viewer"});
    Ok((clean, summary))
}
