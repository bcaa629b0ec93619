//! Test harness: real `redis-server` processes and real `roomcast` nodes on
//! free loopback ports, and a WebSocket client speaking the protocol.
#![allow(dead_code)]

pub mod client;
pub mod in_process;
pub mod topology;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

/// How long `eventually` and the process helpers wait before failing.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A free loopback port (bound then released; fine for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port")
}

/// Polls `check` until it returns `Some`, or panics with `what` after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `redis-server` on a free loopback port, without persistence: a restart
/// comes back empty, like a failover that lost its data.
pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Arguments beyond the defaults (persistence settings, say).
    extra: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// A Redis with extra server arguments, e.g. `["--appendonly", "yes"]`;
    /// its data directory survives [`Redis::restart_from_disk`].
    pub fn start_with(extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let extra = extra.iter().map(|a| a.to_string()).collect();
        let mut redis = Redis { port: free_port(), dir, child: None, extra };
        redis.spawn();
        redis
    }

    /// Kills the server (SIGKILL) and starts it again on the same port from
    /// whatever it had on disk (a snapshot taken with `SAVE`, or its AOF):
    /// acknowledged writes after that are lost, as in a restore.
    pub fn restart_from_disk(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A Redis that is not running yet: its port is reserved, `begin` starts it.
    pub fn later() -> Redis {
        Redis { port: free_port(), dir: tempfile::tempdir().expect("tempdir"), child: None, extra: Vec::new() }
    }

    /// Starts a Redis made with [`Redis::later`].
    pub fn begin(&mut self) {
        self.spawn();
    }

    fn spawn(&mut self) {
        let child = roomcast_bench::spawn::redis_server(self.port, self.dir.path())
            .args(&self.extra)
            .spawn()
            .expect("redis-server must be installed (the README's test command installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server abruptly (SIGKILL): everything it held is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): an outage that keeps the data.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Thaws a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart_empty(&mut self) {
        self.kill();
        for file in ["dump.rdb", "appendonlydir"] {
            let path = self.dir.path().join(file);
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_dir_all(&path);
        }
        self.spawn();
    }

    /// Sends one command (inline protocol); returns the first reply line.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut cmd = format!("*{}\r\n", args.len());
        for a in args {
            cmd.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
        }
        stream.write_all(cmd.as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).ok()?;
        Some(line.trim_end().to_owned())
    }
}

/// One kept connection to a `redis-server`, for commands sent faster than
/// a connection each allows.
pub struct RedisClient {
    stream: std::cell::RefCell<BufReader<TcpStream>>,
}

impl RedisClient {
    pub fn connect(port: u16) -> RedisClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis-server");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        RedisClient { stream: std::cell::RefCell::new(BufReader::new(stream)) }
    }

    /// Sends one command; returns the first line of its reply.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut cmd = format!("*{}\r\n", args.len());
        for a in args {
            cmd.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
        }
        let mut stream = self.stream.borrow_mut();
        stream.get_mut().write_all(cmd.as_bytes()).ok()?;
        let mut line = String::new();
        stream.read_line(&mut line).ok()?;
        Some(line.trim_end().to_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}

/// A running `roomcast serve` process.
pub struct Node {
    pub addr: SocketAddr,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    args: Vec<String>,
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_roomcast"))
}

impl Node {
    /// Starts a node on the embedded store.
    pub fn memory(extra: &[&str]) -> Node {
        Node::start(None, extra)
    }

    /// Starts a node on `redis`.
    pub fn redis(redis: &Redis, extra: &[&str]) -> Node {
        Node::start(Some(&redis.url()), extra)
    }

    pub fn start(redis: Option<&str>, extra: &[&str]) -> Node {
        let mut args: Vec<String> = vec!["serve".into(), "--listen".into(), "127.0.0.1:0".into()];
        if let Some(url) = redis {
            args.extend(["--redis".into(), url.into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Node::spawn(args)
    }

    /// Starts a node with `args` after `serve --listen 127.0.0.1:0`.
    pub fn with_args(args: &[&str]) -> Node {
        Node::start(None, args)
    }

    /// Starts a node on `redis` listening on `port` (to restart it in place).
    pub fn redis_on_port(redis: &Redis, port: u16, extra: &[&str]) -> Node {
        let mut args: Vec<String> =
            vec!["serve".into(), "--listen".into(), format!("127.0.0.1:{port}"), "--redis".into(), redis.url()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Node::spawn(args)
    }

    /// Starts a node whose process may hold at most `nofile` descriptors.
    pub fn start_with_fd_limit(redis: Option<&str>, extra: &[&str], nofile: u32) -> Node {
        let mut args: Vec<String> = vec!["serve".into(), "--listen".into(), "127.0.0.1:0".into()];
        if let Some(url) = redis {
            args.extend(["--redis".into(), url.into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Node::spawn_limited(args, Some(nofile))
    }

    fn spawn(args: Vec<String>) -> Node {
        Node::spawn_limited(args, None)
    }

    fn spawn_limited(args: Vec<String>, nofile: Option<u32>) -> Node {
        let mut command = match nofile {
            None => Command::new(binary()),
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" \"$@\"")).arg(binary());
                sh
            }
        };
        command.args(&args).env("RUST_LOG", "info,roomcast=debug").env_remove("REDIS_URL");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let started = roomcast_bench::spawn::node(command, PATIENCE, move |line| sink.lock().unwrap().push(line));
        let (child, addr) = started.unwrap_or_else(|e| {
            panic!("node did not start ({e}); args {args:?}; logs:\n{}", logs.lock().unwrap().join("\n"))
        });
        Node { addr, child, logs, args }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{}", self.addr, query)
    }

    /// Freezes the node (SIGSTOP): it falls behind, as under a long pause.
    pub fn freeze(&self) {
        let _ = Command::new("kill").args(["-STOP", &self.child.id().to_string()]).status();
    }

    /// Thaws a frozen node (SIGCONT).
    pub fn thaw(&self) {
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "node did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL): a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the binary to completion with `args`; returns (exit code, stderr).
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child =
        Command::new(binary()).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start roomcast");
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut err);
    }
    let status = child.wait().expect("wait");
    (status.code(), err)
}

/// One deployment under test: the embedded store with one node, or one
/// Redis with several nodes. The conformance cases run against both.
pub struct Deployment {
    pub redis: Option<Redis>,
    pub nodes: Vec<Node>,
}

impl Deployment {
    pub fn memory(extra: &[&str]) -> Deployment {
        Deployment { redis: None, nodes: vec![Node::memory(extra)] }
    }

    pub fn redis(nodes: usize, extra: &[&str]) -> Deployment {
        let redis = Redis::start();
        let nodes = (0..nodes).map(|_| Node::redis(&redis, extra)).collect();
        Deployment { redis: Some(redis), nodes }
    }

    /// `nodes` nodes on the test binary's shared Redis Cluster, under a key
    /// prefix of their own.
    pub fn cluster(nodes: usize, extra: &[&str]) -> Deployment {
        static PREFIXES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let ports = topology::RedisCluster::shared();
        let prefix = format!("c{}", PREFIXES.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let seeds = topology::RedisCluster::seeds(ports);
        let mut args = vec!["--redis-cluster", &seeds, "--key-prefix", &prefix];
        args.extend_from_slice(extra);
        let nodes = (0..nodes).map(|_| Node::with_args(&args)).collect();
        Deployment { redis: None, nodes }
    }

    /// Node `i`, wrapping around (a memory deployment has one).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i % self.nodes.len()]
    }

    /// Publishes over HTTP; returns the event ID.
    pub async fn publish(&self, node: usize, room: &str, data: serde_json::Value) -> String {
        publish(self.node(node), room, data).await
    }
}

/// Publishes over HTTP; returns the event ID.
pub async fn publish(node: &Node, room: &str, data: serde_json::Value) -> String {
    let response = reqwest::Client::new()
        .post(node.http(&format!("/rooms/{room}/events")))
        .json(&data)
        .send()
        .await
        .expect("publish request");
    assert_eq!(response.status(), 201, "publish to {room} refused");
    let body: serde_json::Value = response.json().await.expect("publish body");
    body["id"].as_str().expect("id").to_owned()
}

/// Publishes over HTTP, retrying until the node accepts (after an outage);
/// returns the event ID.
pub async fn publish_when_ready(node: &Node, room: &str, data: serde_json::Value) -> String {
    let url = node.http(&format!("/rooms/{room}/events"));
    eventually("a publish to be accepted", || {
        let (url, data) = (url.clone(), data.clone());
        async move {
            let response = reqwest::Client::new().post(&url).json(&data).send().await.ok()?;
            (response.status() == 201).then_some(())?;
            response.json::<serde_json::Value>().await.ok()?["id"].as_str().map(str::to_owned)
        }
    })
    .await
}

/// Waits until the node's `/readyz` answers `status`.
pub async fn wait_ready_status(node: &Node, status: u16) {
    let url = node.http("/readyz");
    eventually(&format!("/readyz to answer {status}"), || {
        let url = url.clone();
        async move { (reqwest::get(&url).await.ok()?.status() == status).then_some(()) }
    })
    .await
}

/// GETs a JSON resource.
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

/// A viewer of `room` that follows it until an event whose data is `"end"`,
/// reconnecting with its last ID (`0` at first) whenever its socket closes.
/// `base(attempt)` names the WebSocket URL of each attempt. Returns the IDs
/// received, the gaps, and how often the viewer was moved.
pub async fn follow_until_end(room: &str, mut base: impl FnMut(usize) -> String) -> (Vec<String>, usize, usize) {
    let (mut ids, mut gaps, mut hops): (Vec<String>, usize, usize) = (Vec::new(), 0, 0);
    for attempt in 0.. {
        let last = ids.last().cloned().unwrap_or_else(|| "0".into());
        let url = format!("{}?room={room}&last_event_id={last}", base(attempt));
        let Ok(mut client) = client::Client::try_connect(&url, &[]).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        loop {
            match client.next().await {
                Ok(frame) if frame["type"] == "events" => {
                    for e in frame["events"].as_array().unwrap() {
                        if e["data"] == serde_json::json!("end") {
                            return (ids, gaps, hops);
                        }
                        ids.push(e["id"].as_str().unwrap().to_owned());
                    }
                }
                Ok(frame) if frame["type"] == "gap" => gaps += 1,
                Ok(_) => {}
                Err(_) => {
                    hops += 1;
                    break;
                }
            }
        }
    }
    unreachable!("the attempts never end")
}

/// Reads an SSE body until `n` events (and any `gap`) arrived.
pub async fn sse_events(response: reqwest::Response, n: usize) -> (Vec<(String, Value)>, Vec<String>) {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let (mut events, mut gaps) = (Vec::new(), Vec::new());
    while events.len() < n {
        let chunk = tokio::time::timeout(PATIENCE, stream.next()).await.expect("SSE stalled");
        buffer.push_str(std::str::from_utf8(&chunk.expect("SSE ended").unwrap()).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut data, mut kind) = (None, None, "message");
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<Value>(v).unwrap());
                } else if line == "event: gap" {
                    kind = "gap";
                }
            }
            match (kind, id, data) {
                ("gap", _, Some(d)) => gaps.push(d["after"].as_str().unwrap().to_owned()),
                ("message", Some(id), Some(d)) => events.push((id, d)),
                _ => {}
            }
        }
    }
    (events, gaps)
}

/// Seconds since the epoch, as token claims count them.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

/// A token with `claims`, signed HS256 with `secret`.
pub fn hs256(secret: &str, claims: Value) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).expect("sign")
}

/// The size of `field` in every entry of the stream `key`, in order.
pub fn stream_field_sizes(port: u16, key: &str, field: &str) -> Vec<usize> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--raw", "XRANGE", key, "-", "+"])
        .output()
        .expect("redis-cli (the README's test command installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines.windows(2).filter(|w| w[0] == field).map(|w| w[1].len()).collect()
}
