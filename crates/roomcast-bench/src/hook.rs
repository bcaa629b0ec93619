//! The `hook` preset: the publish path through a publish hook.
//!
//! One node on one Redis; WebSocket publishers send open-loop at rising
//! rates, first to a node without a hook, then to a node whose
//! `--publish-hook` is a local server (in this process) that approves
//! every publish as sent. For each step: acks per second, publish-to-ack
//! p50/p99, errors, node CPU per publish, and the hook's requests per
//! publish (one round trip each is the target).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::subscribers::{connect, source_ip};
use crate::target::{cpu_seconds, spawn_binary, Spawned};

/// Offered publishes per second, step by step.
const RATES: [f64; 7] = [500.0, 1000.0, 2000.0, 4000.0, 6000.0, 9000.0, 12000.0];
/// Seconds each step publishes.
const STEP: Duration = Duration::from_secs(6);
/// Publisher connections.
const PUBLISHERS: usize = 16;
/// A step is sustained while every publish is acked and p99 stays under this.
const SUSTAINED_P99_MS: f64 = 250.0;
/// How long a step waits for its last acks.
const DRAIN: Duration = Duration::from_secs(5);

/// What a backend stood up by a preset answers to a request's body.
pub(crate) type Answer = Arc<dyn Fn(&[u8]) -> String + Send + Sync>;

/// A minimal HTTP/1.1 server for the backends the presets stand up (the
/// publish hook, the webhook receiver): each request's body goes to
/// `answer`, whose JSON is the 200 response.
pub(crate) async fn serve_http(listener: TcpListener, answer: Answer) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else { continue };
        let answer = answer.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            loop {
                // One request: its head, then its body (Content-Length).
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    let mut chunk = [0u8; 4096];
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    let mut chunk = [0u8; 4096];
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let reply = answer(&buf[head_end..head_end + length]);
                buf.drain(..head_end + length);
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                    reply.len()
                );
                if socket.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The approving hook: answers every request with its own data, and counts.
async fn serve_hook(listener: TcpListener, requests: Arc<AtomicU64>) {
    serve_http(
        listener,
        Arc::new(move |body: &[u8]| {
            requests.fetch_add(1, Ordering::Relaxed);
            let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            json!({ "data": body["data"] }).to_string()
        }),
    )
    .await
}

/// A node (and its Redis) for one half of the preset.
struct Deployment {
    processes: Vec<Spawned>,
    node: SocketAddr,
}

impl Deployment {
    fn start(hook: Option<&str>) -> anyhow::Result<Deployment> {
        let (redis, url) = crate::target::spawn_redis()?;
        let mut args = crate::target::node_args("127.0.0.1:0", 1);
        args.extend(["--redis".into(), url, "--node-id".into(), "hook-bench".into()]);
        if let Some(hook) = hook {
            args.extend(["--publish-hook".into(), hook.to_owned(), "--webhook-secret".into(), "bench-secret".into()]);
        }
        let (node, addr) = spawn_binary(&std::env::current_exe()?, "node", &args)?;
        Ok(Deployment { processes: vec![redis, node], node: addr })
    }

    fn node_cpu(&self) -> f64 {
        self.processes.iter().filter(|p| p.name != "redis-server").map(|p| cpu_seconds(p.pid())).sum()
    }
}

/// What one step measured.
struct Step {
    offered: f64,
    /// Publishes sent.
    sent: u64,
    acked: u64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_per_publish_us: f64,
    hook_requests_per_publish: Option<f64>,
}

impl Step {
    fn sustained(&self) -> bool {
        self.errors == 0 && self.acked >= self.sent && self.p99_ms < SUSTAINED_P99_MS
    }

    fn json(&self) -> Value {
        json!({
            "offered_per_second": self.offered,
            "acked": self.acked,
            "errors": self.errors,
            "publish_to_ack_ms": {"p50": self.p50_ms, "p99": self.p99_ms},
            "node_cpu_us_per_publish": self.cpu_per_publish_us,
            "hook_requests_per_publish": self.hook_requests_per_publish,
            "sustained": self.sustained(),
        })
    }
}

/// One step: `rate` publishes a second for [`STEP`] over [`PUBLISHERS`]
/// connections, each publish timed from its intended send to its ack.
async fn step(d: &Deployment, rate: f64, hook_requests: Option<&AtomicU64>) -> anyhow::Result<Step> {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu_before = d.node_cpu();
    let hook_before = hook_requests.map(|h| h.load(Ordering::Relaxed));
    let per_connection = rate / PUBLISHERS as f64;
    let total = (per_connection * STEP.as_secs_f64()) as u64;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let ws = connect(d.node, source_ip(p, 8), "").await?;
        let (mut sink, mut stream) = ws.split();
        let (latencies, errors) = (latencies.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
            let reader = {
                let sent = sent.clone();
                tokio::spawn(async move {
                    let mut acked = 0u64;
                    while acked < total {
                        let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(STEP + DRAIN, stream.next()).await
                        else {
                            break;
                        };
                        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                        let Some(reference) = frame["ref"].as_u64() else { continue };
                        let Some(at) = sent.lock().map_or(None, |mut s| s.remove(&reference)) else { continue };
                        if frame["type"] == "ack" {
                            if let Ok(mut l) = latencies.lock() {
                                l.push(at.elapsed().as_secs_f64() * 1e3);
                            }
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        acked += 1;
                    }
                })
            };
            let started = Instant::now();
            for i in 0..total {
                let due = started + Duration::from_secs_f64(i as f64 / per_connection);
                tokio::time::sleep_until(due.into()).await;
                if let Ok(mut s) = sent.lock() {
                    s.insert(i, due);
                }
                let frame = json!({"type": "publish", "room": format!("hooked-{p}"), "data": {"n": i, "text": "a chat line"}, "ref": i});
                if sink.send(Message::Text(frame.to_string().into())).await.is_err() {
                    break;
                }
            }
            let _ = reader.await;
        }));
    }
    for task in tasks {
        task.await?;
    }
    let cpu = d.node_cpu() - cpu_before;
    let mut latencies = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    latencies.sort_by(f64::total_cmp);
    let pick = |p: f64| latencies.get(((latencies.len().max(1) - 1) as f64 * p) as usize).copied().unwrap_or(f64::NAN);
    let acked = latencies.len() as u64;
    let hook = hook_requests.zip(hook_before).map(|(h, before)| (h.load(Ordering::Relaxed) - before) as f64);
    Ok(Step {
        offered: rate,
        sent: total * PUBLISHERS as u64,
        acked,
        errors: errors.load(Ordering::Relaxed),
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        cpu_per_publish_us: cpu / acked.max(1) as f64 * 1e6,
        hook_requests_per_publish: hook.map(|h| h / acked.max(1) as f64),
    })
}

/// The preset: every step without the hook, then with it.
pub async fn run() -> anyhow::Result<(bool, Value)> {
    let requests = Arc::new(AtomicU64::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let hook_url = format!("http://{}/hook", listener.local_addr()?);
    let server = tokio::spawn(serve_hook(listener, requests.clone()));
    let mut summary = json!({});
    let mut best = json!({});
    let mut cpu: Vec<HashMap<u64, f64>> = Vec::new();
    for (name, hook) in [("without_hook", None), ("with_hook", Some(hook_url.as_str()))] {
        let mut per_rate = HashMap::new();
        let deployment = Deployment::start(hook).context("starting the node")?;
        let mut steps = Vec::new();
        let mut sustained = 0.0;
        for rate in RATES {
            let s = step(&deployment, rate, hook.map(|_| requests.as_ref())).await?;
            eprintln!(
                "{name}: {rate} msg/s -> {} acked, {} errors, p50 {:.1} p99 {:.1} ms, {:.0} µs node CPU per publish, hook requests per publish {:?}",
                s.acked, s.errors, s.p50_ms, s.p99_ms, s.cpu_per_publish_us, s.hook_requests_per_publish
            );
            if s.sustained() {
                sustained = rate;
                per_rate.insert(rate as u64, s.cpu_per_publish_us);
            }
            let stop = !s.sustained();
            steps.push(s.json());
            if stop {
                break;
            }
        }
        best[name] = json!(sustained);
        summary[name] = json!(steps);
        cpu.push(per_rate);
    }
    let mut ratios = serde_json::Map::new();
    if let [without, with] = &cpu[..] {
        for (rate, us) in with {
            if let Some(base) = without.get(rate) {
                ratios.insert(rate.to_string(), json!(us / base));
            }
        }
    }
    summary["node_cpu_per_publish_with_over_without"] = Value::Object(ratios);
    server.abort();
    summary["sustained_publishes_per_second"] = best;
    summary["targets"] = json!({"hook_round_trips_per_publish": 1, "node_cpu_per_publish_ratio": 1.5});
    Ok((true, summary))
}
