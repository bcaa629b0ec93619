//! What the harness drives: processes it spawns on loopback (a
//! `redis-server` and nodes of this same build, or the bare reference
//! server), or an existing deployment given by URL.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A process the harness started; killed on drop.
pub struct Spawned {
    child: Child,
    /// What it is, for reports.
    pub name: String,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Spawned {
    /// Process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    // The kernel's USER_HZ is 100 on every mainstream Linux configuration.
    100.0
}

/// Resident memory of a process in bytes, from /proc.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts a `redis-server` without persistence on `port`, storing in
/// `dir`, with `extra` flags.
fn start_server(port: u16, dir: &std::path::Path, extra: &[&str]) -> anyhow::Result<Spawned> {
    let child = crate::spawn::redis_server(port, dir)
        .args(extra)
        .spawn()
        .context("starting redis-server (is it installed?)")?;
    Ok(Spawned { child, name: "redis-server".into() })
}

/// Starts a `redis-server` without persistence on a free loopback port.
pub fn spawn_redis() -> anyhow::Result<(Spawned, String)> {
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("roomcast-bench-{port}"));
    std::fs::create_dir_all(&dir)?;
    let spawned = start_server(port, &dir, &[])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((spawned, format!("redis://127.0.0.1:{port}")))
}

/// A free port whose cluster bus port (port + 10,000) is free too.
fn cluster_port() -> anyhow::Result<u16> {
    for _ in 0..1000 {
        let port = free_port()?;
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port for a cluster node")
}

/// Starts a 3-master Redis Cluster with a replica each (no persistence);
/// returns the servers and the masters' URLs.
pub fn spawn_cluster() -> anyhow::Result<(Vec<Spawned>, Vec<String>)> {
    let ports: Vec<u16> = (0..6).map(|_| cluster_port()).collect::<anyhow::Result<_>>()?;
    let dir = std::env::temp_dir().join(format!("roomcast-bench-cluster-{}", ports[0]));
    std::fs::create_dir_all(&dir)?;
    let mut servers = Vec::new();
    for port in &ports {
        let config = format!("nodes-{port}.conf");
        let cluster = ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"];
        servers.push(start_server(*port, &dir, &[&cluster[..], &["--cluster-config-file", &config]].concat())?);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in &ports {
        while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
            if Instant::now() > deadline {
                bail!("a cluster node did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let status = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("redis-cli --cluster create")?;
    anyhow::ensure!(status.success(), "redis-cli --cluster create failed");
    // redis-cli makes the first three the masters; wait until all agree.
    let deadline = Instant::now() + Duration::from_secs(30);
    for port in &ports {
        while !redis_reply(*port, "CLUSTER INFO").is_some_and(|r| r.contains("cluster_state:ok")) {
            if Instant::now() > deadline {
                bail!("the cluster did not become ok");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok((servers, ports[..3].iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()))
}

/// One inline command's reply, read for a moment.
fn redis_reply(port: u16, command: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Starts this binary with `args`, waiting for its "listening addr=" line.
pub fn spawn_self(name: &str, args: &[String]) -> anyhow::Result<(Spawned, SocketAddr)> {
    spawn_binary(&std::env::current_exe()?, name, args)
}

/// Starts a node from `binary` (another build, for a comparison) with `args`.
pub fn spawn_binary(binary: &std::path::Path, name: &str, args: &[String]) -> anyhow::Result<(Spawned, SocketAddr)> {
    let mut command = Command::new(binary);
    command.args(args).env("RUST_LOG", "warn,roomcast=info");
    let (child, addr) = crate::spawn::node(command, Duration::from_secs(20), |_| {})?;
    Ok((Spawned { child, name: name.to_owned() }, addr))
}

/// The deployment under load.
pub struct Target {
    /// Node addresses (host:port).
    pub nodes: Vec<SocketAddr>,
    /// Processes the harness owns (measured for CPU and RSS).
    pub processes: Vec<Spawned>,
    /// The spawned Redis (every master of a spawned cluster), if any.
    pub redis: Vec<String>,
}

/// How to get a target.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// Spawn `nodes` roomcast nodes on one spawned Redis.
    Redis {
        /// How many nodes.
        nodes: usize,
    },
    /// Spawn `nodes` roomcast nodes on a spawned 3-master Redis Cluster.
    Cluster {
        /// How many nodes.
        nodes: usize,
    },
    /// Spawn one roomcast node on the embedded store.
    Embedded,
    /// Spawn the bare broadcast reference server (no Redis, no roomcast).
    Reference,
    /// Drive an existing deployment.
    Urls(Vec<SocketAddr>),
}

impl TargetSpec {
    /// Short name for reports.
    pub fn label(&self) -> String {
        match self {
            TargetSpec::Redis { nodes } => format!("roomcast, {nodes} nodes on Redis"),
            TargetSpec::Cluster { nodes } => format!("roomcast, {nodes} nodes on a 3-master Redis Cluster"),
            TargetSpec::Embedded => "roomcast, 1 node on the embedded store".into(),
            TargetSpec::Reference => "bare tokio-tungstenite broadcast (reference)".into(),
            TargetSpec::Urls(urls) => format!("{} given node(s)", urls.len()),
        }
    }
}

/// Flags every spawned node gets, so the harness measures fanout rather
/// than the per-connection safety limits. Nodes sharing the machine split
/// its cores, as an operator running several nodes on one host would
/// (`--threads`): measured on the fanout preset, two 2-thread nodes on two
/// cores had p99 230-255 ms and 6.5 CPU-s per million, two 1-thread nodes
/// 133 ms and 5.4.
pub(crate) fn node_args(listen: &str, nodes: usize) -> Vec<String> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = (cores / nodes.max(1)).max(1).to_string();
    [
        "serve",
        "--listen",
        listen,
        "--publish-rate",
        "1000000",
        "--publish-burst",
        "1000000",
        "--max-connections",
        "1000000",
        // The generator connects thousands at once: a connect wave must not
        // meet the bound on connections without a request (4,096 by
        // default; measured: a 19,000-subscriber wave hit it and was shed).
        "--max-pending-connections",
        "65536",
        "--history",
        "100000",
        "--threads",
        &threads,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Starts `count` nodes on the store named by `flag value`.
fn spawn_nodes(
    count: usize,
    flag: &str,
    value: &str,
    processes: &mut Vec<Spawned>,
    nodes: &mut Vec<SocketAddr>,
) -> anyhow::Result<()> {
    for i in 0..count {
        let mut args = node_args("127.0.0.1:0", count);
        args.extend([flag.into(), value.into(), "--node-id".into(), format!("bench-{i}")]);
        let (node, addr) = spawn_self(&format!("node-{i}"), &args)?;
        processes.push(node);
        nodes.push(addr);
    }
    Ok(())
}

/// Starts (or connects to) the target.
pub fn start(spec: &TargetSpec) -> anyhow::Result<Target> {
    let mut processes = Vec::new();
    let mut nodes = Vec::new();
    let mut redis_urls = Vec::new();
    match spec {
        TargetSpec::Redis { nodes: count } => {
            let (redis, url) = spawn_redis()?;
            processes.push(redis);
            spawn_nodes(*count, "--redis", &url, &mut processes, &mut nodes)?;
            redis_urls.push(url);
        }
        TargetSpec::Cluster { nodes: count } => {
            let (servers, masters) = spawn_cluster()?;
            processes.extend(servers);
            spawn_nodes(*count, "--redis-cluster", &masters.join(","), &mut processes, &mut nodes)?;
            redis_urls = masters;
        }
        TargetSpec::Embedded => {
            let (node, addr) = spawn_self("node-0", &node_args("127.0.0.1:0", 1))?;
            processes.push(node);
            nodes.push(addr);
        }
        TargetSpec::Reference => {
            let args = vec!["reference-server".to_string(), "--listen".into(), "127.0.0.1:0".into()];
            let (server, addr) = spawn_self("reference", &args)?;
            processes.push(server);
            nodes.push(addr);
        }
        TargetSpec::Urls(urls) => nodes.extend(urls),
    }
    Ok(Target { nodes, processes, redis: redis_urls })
}

impl Target {
    /// CPU seconds used so far by every spawned process together.
    pub fn cpu_seconds(&self) -> f64 {
        self.processes.iter().map(|p| cpu_seconds(p.pid())).sum()
    }

    /// RSS of the spawned roomcast nodes (not Redis), in bytes.
    pub fn node_rss(&self) -> u64 {
        self.processes.iter().filter(|p| p.name != "redis-server").map(|p| rss_bytes(p.pid())).sum()
    }

    /// Whether processes are measured (spawned targets only).
    pub fn measured(&self) -> bool {
        !self.processes.is_empty()
    }
}
