//! The `presence` preset: who is in a room, at a show's scale.
//!
//! Two nodes on one Redis, with JWTs and a webhook receiver (a local HTTP
//! server in this process). Two shapes, each on a fresh deployment:
//! - one room, 20,000 viewers with distinct subjects, 100 of them watching
//!   presence; every other viewer leaves after a random stay of 1 to 199 s
//!   (1% a second) and a new subject takes its place;
//! - 1,000 rooms of 20 members each, one of them watching, the same churn.
//!
//! Measured over a quiet stretch (everyone joined, no churn) and a churning
//! one: Redis commands per second, presence frames per watcher per second
//! and the shortest gap between two frames any watcher got, how exact the
//! watchers' member counts are at the end, and webhook events delivered
//! per second with their delay from the change to the receiver.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::hook::serve_http;
use crate::subscribers::{connect, source_ip};
use crate::target::{cpu_seconds, spawn_binary, Spawned};

const SECRET: &str = "presence-bench-secret";
/// Seconds of each measured stretch.
const STRETCH: Duration = Duration::from_secs(15);
/// Mean stay of a churning viewer (1% leave a second).
const MEAN_STAY_SECS: f64 = 100.0;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn token(sub: &str) -> anyhow::Result<String> {
    let claims = json!({"sub": sub, "exp": now_ms() / 1000 + 3600, "rooms": ["*"], "info": {"name": sub}});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}

/// What the webhook receiver saw.
#[derive(Default)]
struct Received {
    events: AtomicU64,
    delays_ms: Mutex<Vec<f64>>,
}

/// What one shape measured.
#[derive(Debug, Serialize)]
pub struct Outcome {
    rooms: usize,
    viewers: usize,
    watchers: usize,
    /// Joins (and as many leaves) during the churning stretch.
    joins_per_sec: f64,
    redis_commands_per_sec_quiet: f64,
    redis_commands_per_sec_churning: f64,
    /// Redis commands above the quiet stretch per join or leave (the
    /// commands scripts run inside Redis included).
    redis_commands_per_change: f64,
    /// Script calls (one round trip each) per second.
    redis_script_calls_per_sec_quiet: f64,
    redis_script_calls_per_sec_churning: f64,
    /// Redis CPU, cores.
    redis_cores_quiet: f64,
    redis_cores_churning: f64,
    /// Presence frames per watcher per second while churning (mean).
    frames_per_watcher_per_sec: f64,
    /// The shortest time between two presence frames to one watcher, as the
    /// generator read them (its scheduling delays included).
    min_gap_between_frames_ms: f64,
    /// Watchers whose member count matched the deployment's at the end.
    watchers_exact_at_end: usize,
    webhook_events_per_sec: f64,
    webhook_delay_ms_p50: f64,
    webhook_delay_ms_p99: f64,
    /// Node CPU (both nodes), cores, while churning.
    node_cores_churning: f64,
}

struct Deployment {
    processes: Vec<Spawned>,
    nodes: Vec<SocketAddr>,
    redis: String,
}

impl Deployment {
    fn start(webhook: &str) -> anyhow::Result<Deployment> {
        let (redis, url) = crate::target::spawn_redis()?;
        let mut processes = vec![redis];
        let mut nodes = Vec::new();
        for i in 0..2 {
            let mut args = crate::target::node_args("127.0.0.1:0", 2);
            args.extend(
                [
                    "--redis",
                    &url,
                    "--node-id",
                    &format!("presence-{i}"),
                    "--jwt-secret",
                    SECRET,
                    "--webhook-url",
                    webhook,
                    "--webhook-secret",
                    "bench",
                    "--new-rooms-per-minute",
                    "100000",
                ]
                .map(String::from),
            );
            let (node, addr) = spawn_binary(&std::env::current_exe()?, "node", &args)?;
            processes.push(node);
            nodes.push(addr);
        }
        Ok(Deployment { processes, nodes, redis: url })
    }

    fn node_cpu(&self) -> f64 {
        self.processes.iter().filter(|p| p.name != "redis-server").map(|p| cpu_seconds(p.pid())).sum()
    }
}

/// What a process's viewers share.
#[derive(Default)]
struct Shared {
    churning: AtomicBool,
    stop: AtomicBool,
    joined: AtomicU64,
    churn_joins: AtomicU64,
    failure: Mutex<Option<String>>,
}

/// One viewer slot: joins `stage-<slot % rooms>` with a subject of its own
/// (watching presence when given a `watch`), and while churning leaves
/// after its stay and joins again as a new subject.
async fn viewer(
    slot: usize,
    rooms: usize,
    nodes: Vec<SocketAddr>,
    watch: Option<Arc<Mutex<Watch>>>,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let room = format!("stage-{}", slot % rooms);
    let node = nodes[slot % nodes.len()];
    let mut generation = 0u64;
    // Stays start spread over the whole range, so leaves come at the steady rate at once.
    let mut stay = Duration::from_secs_f64(rand::random_range(0.0..2.0 * MEAN_STAY_SECS));
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let sub = format!("v{slot}-{generation}");
        let presence = if watch.is_some() { "&presence=1" } else { "" };
        let query = format!("?room={room}&token={}{presence}", token(&sub)?);
        let mut ws = match connect(node, source_ip(slot, 8), &query).await {
            Ok(ws) => ws,
            Err(e) => {
                if let Ok(mut first) = shared.failure.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let counter = if generation == 0 { &shared.joined } else { &shared.churn_joins };
        counter.fetch_add(1, Ordering::Relaxed);
        let leave_at = Instant::now() + stay;
        loop {
            if shared.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            if watch.is_none() && shared.churning.load(Ordering::Acquire) && Instant::now() >= leave_at {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(250), ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    if let Some(watch) = &watch {
                        if text.contains("\"presence") {
                            let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                            if let Ok(mut w) = watch.lock() {
                                w.at.push(Instant::now());
                                w.count = frame["count"].as_u64().unwrap_or(w.count);
                            }
                        }
                    }
                }
                Ok(None) | Ok(Some(Err(_))) => return Ok(()),
                _ => {}
            }
        }
        drop(ws);
        generation += 1;
        stay = Duration::from_secs_f64(rand::random_range(1.0..2.0 * MEAN_STAY_SECS - 1.0));
    }
}

/// `roomcast bench-presence-viewers`: one share of the preset's viewers.
#[derive(Clone, Debug, clap::Args)]
pub struct ViewerArgs {
    /// Node addresses (repeatable).
    #[arg(long = "node", required = true)]
    pub nodes: Vec<SocketAddr>,
    /// This process's first slot.
    #[arg(long)]
    pub first: usize,
    /// Slots in this process.
    #[arg(long)]
    pub count: usize,
    /// Rooms the slots are spread over.
    #[arg(long)]
    pub rooms: usize,
}

/// Runs a share of the viewers: prints `joined N` once they all joined,
/// then obeys `churn`, `calm` (answered `churned N`) and `stop` on stdin.
pub fn viewers_main(args: ViewerArgs) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let shared = Arc::new(Shared::default());
        let mut tasks = Vec::new();
        for (k, slot) in (args.first..args.first + args.count).enumerate() {
            tasks.push(tokio::spawn(viewer(slot, args.rooms, args.nodes.clone(), None, shared.clone())));
            if k % 500 == 499 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let started = Instant::now();
        while shared.joined.load(Ordering::Relaxed) < args.count as u64 && started.elapsed() < Duration::from_secs(120)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut stdout = tokio::io::stdout();
        stdout.write_all(format!("joined {}\n", shared.joined.load(Ordering::Relaxed)).as_bytes()).await?;
        stdout.flush().await?;
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let mut before = 0;
        while let Some(line) = lines.next_line().await? {
            match line.as_str() {
                "churn" => {
                    before = shared.churn_joins.load(Ordering::Relaxed);
                    shared.churning.store(true, Ordering::Release);
                }
                "calm" => {
                    shared.churning.store(false, Ordering::Release);
                    let churned = shared.churn_joins.load(Ordering::Relaxed) - before;
                    stdout.write_all(format!("churned {churned}\n").as_bytes()).await?;
                    stdout.flush().await?;
                }
                _ => break,
            }
        }
        shared.stop.store(true, Ordering::Release);
        for task in tasks {
            let _ = task.await;
        }
        anyhow::Ok(())
    })
}

/// The other process's share of the viewers.
struct Half {
    process: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Half {
    async fn say(&mut self, what: &str) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(format!("{what}\n").as_bytes()).await?;
        Ok(self.stdin.flush().await?)
    }
}

async fn spawn_half(nodes: &[SocketAddr], first: usize, count: usize, rooms: usize) -> anyhow::Result<Half> {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt;
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command.arg("bench-presence-viewers");
    for node in nodes {
        command.arg("--node").arg(node.to_string());
    }
    command
        .args(["--first", &first.to_string(), "--count", &count.to_string(), "--rooms", &rooms.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut process = command.spawn().context("spawning the viewer process")?;
    let stdin = process.stdin.take().context("viewer stdin")?;
    let lines = tokio::io::BufReader::new(process.stdout.take().context("viewer stdout")?).lines();
    Ok(Half { process, stdin, lines })
}

/// A watcher's frames: arrival times and the last count.
#[derive(Default)]
struct Watch {
    at: Vec<Instant>,
    count: u64,
}

async fn run_shape(rooms: usize, per_room: usize, watchers_per_room: usize) -> anyhow::Result<Outcome> {
    let received = Arc::new(Received::default());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks", listener.local_addr()?);
    let r = received.clone();
    let server = tokio::spawn(serve_http(
        listener,
        Arc::new(move |body: &[u8]| {
            let batch: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let now = now_ms();
            if let Some(events) = batch["events"].as_array() {
                r.events.fetch_add(events.len() as u64, Ordering::Relaxed);
                if let Ok(mut d) = r.delays_ms.lock() {
                    d.extend(events.iter().filter_map(|e| e["time_ms"].as_u64()).map(|t| now.saturating_sub(t) as f64));
                }
            }
            "{}".into()
        }),
    ));
    let d = Deployment::start(&url).context("starting the deployment")?;
    let viewers = rooms * per_room;
    let shared = Arc::new(Shared::default());
    let watches: Vec<Arc<Mutex<Watch>>> = (0..rooms * watchers_per_room).map(|_| Arc::default()).collect();
    // This process holds the first half (every watcher among them); a
    // child process the rest (one process may open 20,000 files here).
    let half = viewers / 2;
    let mut child = spawn_half(&d.nodes, half, viewers - half, rooms).await?;
    let mut tasks = Vec::new();
    for slot in 0..half {
        let watch = watches.get(slot).cloned();
        tasks.push(tokio::spawn(viewer(slot, rooms, d.nodes.clone(), watch, shared.clone())));
        if slot % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let started = Instant::now();
    while shared.joined.load(Ordering::Relaxed) < half as u64 {
        if started.elapsed() > Duration::from_secs(120) {
            let first = shared.failure.lock().map(|f| f.clone()).unwrap_or_default();
            anyhow::bail!(
                "{} of {half} viewers joined; first failure: {first:?}",
                shared.joined.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let line = child.lines.next_line().await?.context("the viewer process ended before joining")?;
    let other: usize = line.strip_prefix("joined ").context("expected `joined N`")?.parse()?;
    anyhow::ensure!(other == viewers - half, "{other} of {} viewers joined in the other process", viewers - half);
    let (churning, churn_joins) = (&shared.churning, &shared.churn_joins);
    // Settle (reports, snapshots, the join webhooks), then a quiet stretch.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (w0, t0) = (RedisWork::read(&d.redis).await?, Instant::now());
    tokio::time::sleep(STRETCH).await;
    let quiet = RedisWork::read(&d.redis).await?.rate(w0, t0.elapsed().as_secs_f64());
    // The churning stretch.
    for w in &watches {
        if let Ok(mut w) = w.lock() {
            w.at.clear();
        }
    }
    let events_before = received.events.load(Ordering::Relaxed);
    if let Ok(mut delays) = received.delays_ms.lock() {
        delays.clear();
    }
    churning.store(true, Ordering::Release);
    child.say("churn").await?;
    let (w1, t1, cpu1, j1) =
        (RedisWork::read(&d.redis).await?, Instant::now(), d.node_cpu(), churn_joins.load(Ordering::Relaxed));
    tokio::time::sleep(STRETCH).await;
    let seconds = t1.elapsed().as_secs_f64();
    let churning_work = RedisWork::read(&d.redis).await?.rate(w1, seconds);
    let cpu = (d.node_cpu() - cpu1) / seconds;
    churning.store(false, Ordering::Release);
    child.say("calm").await?;
    let line = child.lines.next_line().await?.context("the viewer process ended")?;
    let other: u64 = line.strip_prefix("churned ").context("expected `churned N`")?.parse()?;
    let joins = (churn_joins.load(Ordering::Relaxed) - j1 + other) as f64 / seconds;
    let events = (received.events.load(Ordering::Relaxed) - events_before) as f64 / seconds;
    // Let the last changes land, then compare every watcher's count with the deployment's.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut exact = 0;
    let http = d.nodes[0];
    let mut frames = 0usize;
    let mut min_gap = f64::INFINITY;
    for (i, w) in watches.iter().enumerate() {
        let truth = presence_count(http, &format!("stage-{}", i % rooms)).await?;
        let Ok(w) = w.lock() else { continue };
        if w.count == truth {
            exact += 1;
        }
        frames += w.at.iter().filter(|t| **t < t1 + STRETCH + Duration::from_millis(300)).count();
        for pair in w.at.windows(2) {
            min_gap = min_gap.min((pair[1] - pair[0]).as_secs_f64() * 1e3);
        }
    }
    shared.stop.store(true, Ordering::Release);
    child.say("stop").await?;
    for task in tasks {
        let _ = task.await;
    }
    let _ = child.process.wait().await;
    server.abort();
    let mut delays = received.delays_ms.lock().map(|d| d.clone()).unwrap_or_default();
    delays.sort_by(f64::total_cmp);
    let pick = |p: f64| delays.get(((delays.len().max(1) - 1) as f64 * p) as usize).copied().unwrap_or(f64::NAN);
    Ok(Outcome {
        rooms,
        viewers,
        watchers: watches.len(),
        joins_per_sec: joins,
        redis_commands_per_sec_quiet: quiet.commands,
        redis_commands_per_sec_churning: churning_work.commands,
        redis_commands_per_change: (churning_work.commands - quiet.commands).max(0.0) / (2.0 * joins).max(1.0),
        redis_script_calls_per_sec_quiet: quiet.scripts,
        redis_script_calls_per_sec_churning: churning_work.scripts,
        redis_cores_quiet: quiet.cpu,
        redis_cores_churning: churning_work.cpu,
        frames_per_watcher_per_sec: frames as f64 / watches.len().max(1) as f64 / seconds,
        min_gap_between_frames_ms: min_gap,
        watchers_exact_at_end: exact,
        webhook_events_per_sec: events,
        webhook_delay_ms_p50: pick(0.5),
        webhook_delay_ms_p99: pick(0.99),
        node_cores_churning: cpu,
    })
}

/// What Redis did so far: commands processed (those scripts run
/// included), script calls, and CPU seconds.
#[derive(Clone, Copy, Debug, Default)]
struct RedisWork {
    commands: f64,
    scripts: f64,
    cpu: f64,
}

impl RedisWork {
    async fn read(url: &str) -> anyhow::Result<RedisWork> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(url.trim_start_matches("redis://")).await?;
        stream.write_all(b"INFO stats cpu commandstats\r\n").await?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            let n = stream.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "redis closed");
            reply.extend_from_slice(&buf[..n]);
            // A bulk string: `$<len>\r\n<len bytes>\r\n`.
            let text = String::from_utf8_lossy(&reply);
            if let Some((head, body)) = text.split_once("\r\n") {
                let len: usize = head.trim_start_matches('$').parse()?;
                if body.len() >= len + 2 {
                    break;
                }
            }
        }
        let text = String::from_utf8_lossy(&reply);
        let field = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
        };
        let calls = |cmd: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
                .and_then(|v| v.split(',').next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(RedisWork {
            commands: field("total_commands_processed:"),
            scripts: calls("evalsha") + calls("eval"),
            cpu: field("used_cpu_sys:") + field("used_cpu_user:"),
        })
    }

    /// Per second since `before`, over `seconds`.
    fn rate(self, before: RedisWork, seconds: f64) -> RedisWork {
        RedisWork {
            commands: (self.commands - before.commands) / seconds,
            scripts: (self.scripts - before.scripts) / seconds,
            cpu: (self.cpu - before.cpu) / seconds,
        }
    }
}

/// `GET /rooms/{room}/presence`'s count, as the reference.
async fn presence_count(node: SocketAddr, room: &str) -> anyhow::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(node).await?;
    let request = format!(
        "GET /rooms/{room}/presence HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n",
        token("reader")?
    );
    stream.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    let text = String::from_utf8_lossy(&reply);
    let body = text.split("\r\n\r\n").nth(1).context("no body")?;
    let body: Value = serde_json::from_str(body.trim()).context("presence body")?;
    body["count"].as_u64().context("no count")
}

/// The preset: both shapes.
pub async fn run() -> anyhow::Result<(bool, Value)> {
    let one_room = run_shape(1, 20_000, 100).await?;
    eprintln!("presence, one room: {one_room:?}");
    let many_rooms = run_shape(1_000, 20, 1).await?;
    eprintln!("presence, 1,000 rooms: {many_rooms:?}");
    // The node holds each room's frames a second apart (tests check it on a
    // paused clock); what a watcher observes also carries the generator's
    // own scheduling delays, so the verdict is on the rate.
    let clean = [&one_room, &many_rooms]
        .iter()
        .all(|o| o.frames_per_watcher_per_sec <= 1.0 && o.watchers_exact_at_end == o.watchers);
    Ok((
        clean,
        json!({
            "one_room": one_room,
            "many_rooms": many_rooms,
            "targets": {"presence_frames_per_watcher_per_room_per_sec": 1, "redis_work": "bounded by rooms and cadence, not viewers"},
        }),
    ))
}
