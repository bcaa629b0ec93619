//! The deployment a chaos run breaks: a `redis-server`, nodes of this build
//! (one of them, when the machine allows, in a network namespace of its own
//! so it can be cut off from Redis), and the faults themselves.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, RngCore};
use serde::Serialize;

/// Key prefix of the chaos deployment.
pub const PREFIX: &str = "chaos";
/// How long a process gets to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What a chaos run can do to the deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL a node, then start it again.
    NodeKill,
    /// SIGTERM a node (it closes its sockets with 1012), then start it again.
    NodeTerm,
    /// Kill Redis and start it empty (its files gone: everything is lost).
    RedisRestart,
    /// `SAVE`, a moment of acknowledged writes, then Redis killed and
    /// started from that snapshot: the writes since are lost, the keys look
    /// intact (a restore, or a promoted replica that lagged).
    RedisRestore,
    /// Redis killed under load and started from its AOF (`appendfsync
    /// always`): nothing acknowledged is lost, but appends whose reply the
    /// kill swallowed are sent again by the nodes' Redis client.
    RedisCrash,
    /// A node frozen (SIGSTOP) while one room's stream and floor are
    /// deleted and events go on, then thawed: it finds the room rebuilt.
    FrozenDelete,
    /// `CLIENT KILL TYPE normal`: every node loses its Redis connections.
    ClientKill,
    /// `DEL` one room's stream.
    RoomDelete,
    /// `DEL` metadata: a bucket's epoch token, a floor, a signal or control stream.
    MetadataDelete,
    /// `FLUSHALL`.
    FlushAll,
    /// `maxmemory` below what is used, with `allkeys-lru`, for two seconds.
    Eviction,
    /// The namespaced node cannot reach Redis for a few seconds.
    Partition,
}

impl Fault {
    /// Every fault, in a fixed order.
    pub const ALL: [Fault; 12] = [
        Fault::NodeKill,
        Fault::NodeTerm,
        Fault::RedisRestart,
        Fault::RedisRestore,
        Fault::RedisCrash,
        Fault::FrozenDelete,
        Fault::ClientKill,
        Fault::RoomDelete,
        Fault::MetadataDelete,
        Fault::FlushAll,
        Fault::Eviction,
        Fault::Partition,
    ];

    /// Whether the fault can make the store lose events, so a gap after it
    /// is expected (the others must cost no gap at all). A Redis that
    /// restarted from its AOF lost nothing, but nothing in its data can
    /// prove that: a new server process is a gap to every reader across it.
    pub fn loses_data(self) -> bool {
        matches!(
            self,
            Fault::RedisRestart
                | Fault::RedisRestore
                | Fault::RedisCrash
                | Fault::FrozenDelete
                | Fault::RoomDelete
                | Fault::MetadataDelete
                | Fault::FlushAll
                | Fault::Eviction
        )
    }
}

/// One command to `redis-server` over a fresh connection; returns the reply
/// (a status or error line, an integer, or a bulk string's contents).
pub fn redis_command(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
    }
    stream.write_all(cmd.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end().to_owned();
    if let Some(len) = line.strip_prefix('$') {
        let Ok(len) = len.parse::<usize>() else { return Ok(String::new()) };
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        return Ok(String::from_utf8_lossy(&body).into_owned());
    }
    Ok(line)
}

/// `KEYS pattern` (a chaos deployment holds a few dozen keys).
pub fn redis_keys(port: u16, pattern: &str) -> anyhow::Result<Vec<String>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("*2\r\n$4\r\nKEYS\r\n${}\r\n{pattern}\r\n", pattern.len()).as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let count: usize = line.trim_end().strip_prefix('*').and_then(|n| n.parse().ok()).context("KEYS reply")?;
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        line.clear();
        reader.read_line(&mut line)?;
        let len: usize = line.trim_end().strip_prefix('$').and_then(|n| n.parse().ok()).context("KEYS entry")?;
        let mut key = vec![0u8; len + 2];
        reader.read_exact(&mut key)?;
        key.truncate(len);
        keys.push(String::from_utf8_lossy(&key).into_owned());
    }
    Ok(keys)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().with_context(|| format!("{cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// A network namespace joined to the host by a veth pair. Only the chaos
/// run's own node lives in it, and only the run's Redis answers on the
/// host side: no traffic leaves this machine.
pub struct Netns {
    name: String,
    host_if: String,
    /// The host side's address (where Redis listens for the namespace).
    pub host_ip: String,
    /// The namespace side's address (where its node listens).
    pub ns_ip: String,
}

impl Netns {
    /// Creates the namespace, or says why it cannot (not root, no `ip`).
    pub fn create() -> anyhow::Result<Netns> {
        let id = std::process::id();
        let name = format!("roomcast-chaos-{id}");
        let host_if = format!("rc{}h", id % 100_000);
        let ns_if = format!("rc{}n", id % 100_000);
        let net = 1 + (id % 250);
        let (host_ip, ns_ip) = (format!("10.213.{net}.1"), format!("10.213.{net}.2"));
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Netns { name, host_if, host_ip, ns_ip };
        netns.configure(&ns_if).inspect_err(|_| drop_netns(&netns))?;
        Ok(netns)
    }

    fn configure(&self, ns_if: &str) -> anyhow::Result<()> {
        let ns = self.name.as_str();
        run(Command::new("ip").args(["link", "add", &self.host_if, "type", "veth", "peer", "name", ns_if]))?;
        run(Command::new("ip").args(["link", "set", ns_if, "netns", ns]))?;
        run(Command::new("ip").args(["addr", "add", &format!("{}/30", self.host_ip), "dev", &self.host_if]))?;
        run(Command::new("ip").args(["link", "set", &self.host_if, "up"]))?;
        let exec = |args: &[&str]| {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).args(args);
            run(&mut c)
        };
        exec(&["ip", "addr", "add", &format!("{}/30", self.ns_ip), "dev", ns_if])?;
        exec(&["ip", "link", "set", ns_if, "up"])?;
        exec(&["ip", "link", "set", "lo", "up"])?;
        // Partitions are iptables rules inside the namespace.
        exec(&["iptables", "-L", "-n"]).context("iptables is needed for partitions")?;
        Ok(())
    }

    /// Drops (`cut`) or lets through again the namespace's traffic with
    /// Redis on `port`, both ways; its clients' traffic is untouched.
    pub fn partition(&self, port: u16, cut: bool) -> anyhow::Result<()> {
        let op = if cut { "-I" } else { "-D" };
        let port = port.to_string();
        for (chain, peer, side) in [("OUTPUT", "-d", "--dport"), ("INPUT", "-s", "--sport")] {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &self.name, "iptables", op, chain, peer, &self.host_ip])
                .args(["-p", "tcp", side, &port, "-j", "DROP"]);
            run(&mut c)?;
        }
        Ok(())
    }
}

fn drop_netns(netns: &Netns) {
    let _ = Command::new("ip").args(["link", "del", &netns.host_if]).stderr(Stdio::null()).status();
    let _ = Command::new("ip").args(["netns", "del", &netns.name]).stderr(Stdio::null()).status();
}

impl Drop for Netns {
    fn drop(&mut self) {
        drop_netns(self);
    }
}

fn kill(child: &mut Option<Child>, signal: &str) {
    if let Some(c) = child {
        let _ = Command::new("kill").args([signal, &c.id().to_string()]).status();
    }
}

fn reap(child: &mut Option<Child>, within: Duration) {
    let Some(mut c) = child.take() else { return };
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// What a restarted Redis comes back with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Persistence {
    /// Nothing.
    Empty,
    /// Its last `SAVE`.
    Snapshot,
    /// Its AOF: everything it acknowledged.
    Aof,
}

/// One node process, restartable on the same address.
struct NodeProc {
    addr: SocketAddr,
    args: Vec<String>,
    netns: Option<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    fn start(&mut self, exe: &Path) -> anyhow::Result<()> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = cmd
            .args(&self.args)
            .env("RUST_LOG", std::env::var("CHAOS_NODE_LOG").unwrap_or_else(|_| "warn,roomcast=info".into()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting a node")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                bail!("node {} did not start (log: {})", self.addr, self.log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// The deployment under chaos.
pub struct Cluster {
    exe: PathBuf,
    dir: PathBuf,
    /// Redis's port (loopback, and the namespace's host side).
    pub redis_port: u16,
    redis: Option<Child>,
    nodes: Vec<NodeProc>,
    /// The namespace holding node 0, when the machine allows one.
    pub netns: Option<Netns>,
    rooms: Vec<String>,
}

impl Cluster {
    /// Starts Redis and `nodes` nodes; `isolate` puts node 0 in a network
    /// namespace (if that fails, the run goes on without partitions).
    pub fn start(exe: &Path, nodes: usize, rooms: &[String], isolate: bool) -> anyhow::Result<Cluster> {
        let netns = if isolate {
            match Netns::create() {
                Ok(ns) => Some(ns),
                Err(e) => {
                    eprintln!("chaos: no network namespace ({e:#}); running without partitions");
                    None
                }
            }
        } else {
            None
        };
        let mut cluster = Cluster {
            exe: exe.to_path_buf(),
            dir: {
                let dir = std::env::temp_dir().join(format!("roomcast-chaos-{}", std::process::id()));
                std::fs::create_dir_all(&dir)?;
                dir
            },
            redis_port: free_port()?,
            redis: None,
            nodes: Vec::new(),
            netns,
            rooms: rooms.to_vec(),
        };
        cluster.start_redis(Persistence::Aof)?;
        for i in 0..nodes.max(1) {
            let isolated = i == 0 && cluster.netns.is_some();
            let (ip, redis_host) = match (&cluster.netns, isolated) {
                (Some(ns), true) => (ns.ns_ip.clone(), ns.host_ip.clone()),
                _ => ("127.0.0.1".to_owned(), "127.0.0.1".to_owned()),
            };
            let addr: SocketAddr = format!("{ip}:{}", free_port()?).parse()?;
            let args: Vec<String> = [
                "serve",
                "--listen",
                &addr.to_string(),
                "--redis",
                &format!("redis://{redis_host}:{}", cluster.redis_port),
                "--key-prefix",
                PREFIX,
                "--node-id",
                &format!("chaos-{i}"),
                "--history",
                "100000",
                "--publish-rate",
                "1000000",
                "--publish-burst",
                "1000000",
                "--redis-timeout-ms",
                "1000",
                "--shutdown-grace",
                "2",
                "--threads",
                "1",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let netns = if isolated { cluster.netns.as_ref().map(|n| n.name.clone()) } else { None };
            let log = cluster.dir.as_path().join(format!("node-{i}.log"));
            let mut node = NodeProc { addr, args, netns, log, child: None };
            node.start(&cluster.exe)?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    /// Starts Redis on its port, from its AOF, from its last snapshot, or
    /// empty; it always runs on with an AOF written `appendfsync always`.
    fn start_redis(&mut self, from: Persistence) -> anyhow::Result<()> {
        let mut bind = vec!["127.0.0.1".to_owned()];
        bind.extend(self.netns.as_ref().map(|n| n.host_ip.clone()));
        let aof = self.dir.join("appendonlydir");
        if matches!(from, Persistence::Empty | Persistence::Snapshot) {
            let _ = std::fs::remove_dir_all(&aof);
        }
        if from == Persistence::Empty {
            let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        }
        // Redis 7 with an AOF enabled ignores a snapshot: a restore starts
        // without one and turns it on once loaded.
        let appendonly = if from == Persistence::Snapshot { "no" } else { "yes" };
        let child = crate::spawn::redis_server(self.redis_port, &self.dir)
            .arg("--bind")
            .args(&bind)
            .args(["--appendonly", appendonly, "--appendfsync", "always", "--protected-mode", "no"])
            .spawn()
            .context("starting redis-server (is it installed?)")?;
        self.redis = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while redis_command(self.redis_port, &["PING"]).map(|r| r != "+PONG").unwrap_or(true) {
            if Instant::now() > deadline {
                bail!("redis-server did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if from == Persistence::Snapshot {
            self.redis(&["CONFIG", "SET", "appendonly", "yes"])?;
        }
        Ok(())
    }

    /// Kills Redis (SIGKILL) and starts it again after `pause`.
    fn restart_redis(&mut self, pause: Duration, from: Persistence) -> anyhow::Result<()> {
        kill(&mut self.redis, "-KILL");
        reap(&mut self.redis, Duration::from_secs(5));
        std::thread::sleep(pause);
        self.start_redis(from)
    }

    /// Where clients reach the nodes.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// The faults this deployment can suffer.
    pub fn faults(&self) -> Vec<Fault> {
        Fault::ALL.into_iter().filter(|f| *f != Fault::Partition || self.netns.is_some()).collect()
    }

    fn redis(&self, args: &[&str]) -> anyhow::Result<String> {
        let reply = redis_command(self.redis_port, args)?;
        if reply.starts_with('-') {
            bail!("redis {args:?}: {reply}");
        }
        Ok(reply)
    }

    /// Applies `fault`, waiting out its duration and repairing what it
    /// broke (restarting processes, lifting limits). Returns what it did.
    pub fn apply(&mut self, fault: Fault, rng: &mut impl RngCore) -> anyhow::Result<String> {
        let room = self.rooms.choose(rng).cloned().context("no rooms")?;
        Ok(match fault {
            Fault::NodeKill | Fault::NodeTerm => {
                let i = rng.random_range(0..self.nodes.len());
                let node = &mut self.nodes[i];
                if fault == Fault::NodeKill {
                    kill(&mut node.child, "-KILL");
                    reap(&mut node.child, Duration::from_secs(5));
                } else {
                    kill(&mut node.child, "-TERM");
                    reap(&mut node.child, Duration::from_secs(8));
                }
                std::thread::sleep(Duration::from_millis(rng.random_range(200..1500)));
                node.start(&self.exe)?;
                format!("node {i}")
            }
            Fault::RedisRestart => {
                self.restart_redis(Duration::from_millis(rng.random_range(100..1000)), Persistence::Empty)?;
                "empty".to_owned()
            }
            Fault::RedisRestore => {
                self.redis(&["SAVE"])?;
                let lost = Duration::from_millis(rng.random_range(200..1500));
                std::thread::sleep(lost);
                self.restart_redis(Duration::from_millis(rng.random_range(100..500)), Persistence::Snapshot)?;
                format!("from a snapshot {} ms old", lost.as_millis())
            }
            Fault::RedisCrash => {
                self.restart_redis(Duration::from_millis(rng.random_range(50..500)), Persistence::Aof)?;
                "from its AOF".to_owned()
            }
            Fault::FrozenDelete => {
                let i = rng.random_range(0..self.nodes.len());
                kill(&mut self.nodes[i].child, "-STOP");
                // The node thaws whatever the deletion met.
                let deleted = self.delete_keys(&room, &["r", "f"]);
                let frozen = Duration::from_millis(rng.random_range(300..2000));
                std::thread::sleep(frozen);
                kill(&mut self.nodes[i].child, "-CONT");
                format!("node {i} frozen {} ms; room {room}: {}", frozen.as_millis(), deleted?.join(" "))
            }
            Fault::ClientKill => format!("{} connections", self.redis(&["CLIENT", "KILL", "TYPE", "normal"])?),
            Fault::RoomDelete => {
                let keys = self.delete_keys(&room, &["r"])?;
                if keys.is_empty() {
                    return Ok(format!("room {room} (no stream yet)"));
                }
                format!("room {room}: {}", keys.join(" "))
            }
            Fault::MetadataDelete => {
                let node = rng.random_range(0..self.nodes.len());
                let mut choices = vec![format!("{PREFIX}:ctl:chaos-{node}"), format!("{PREFIX}:sig")];
                choices.extend(self.keys_of(&room, "f")?);
                choices.extend(self.keys_of(&room, "a")?);
                // The room's bucket's signal stream and epoch: its hash tag is the room's.
                let tags: Vec<String> =
                    self.keys_of(&room, "r")?.iter().filter_map(|k| k.split(':').nth(1).map(str::to_owned)).collect();
                choices.extend(tags.iter().map(|tag| format!("{PREFIX}:{tag}:sig")));
                choices.extend(tags.iter().map(|tag| format!("{PREFIX}:{tag}:epoch")));
                choices.shuffle(rng);
                choices.truncate(rng.random_range(1..=choices.len()));
                let mut del = vec!["DEL"];
                del.extend(choices.iter().map(String::as_str));
                self.redis(&del)?;
                choices.join(" ")
            }
            Fault::FlushAll => {
                self.redis(&["FLUSHALL"])?;
                String::new()
            }
            Fault::Eviction => {
                let info = self.redis(&["INFO", "memory"])?;
                let used: u64 = info
                    .lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(4 << 20);
                let limit = (used * 7 / 10).max(1 << 20).to_string();
                self.redis(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"])?;
                self.redis(&["CONFIG", "SET", "maxmemory", &limit])?;
                std::thread::sleep(Duration::from_secs(2));
                let evicted = self.redis(&["INFO", "stats"])?;
                let evicted = evicted.lines().find_map(|l| l.strip_prefix("evicted_keys:")).unwrap_or("?").trim();
                self.redis(&["CONFIG", "SET", "maxmemory", "0"])?;
                self.redis(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])?;
                format!("maxmemory {limit} of {used} used; evicted_keys {evicted}")
            }
            Fault::Partition => {
                let ns = self.netns.as_ref().context("no namespace")?;
                let hold = Duration::from_millis(rng.random_range(1500..5000));
                ns.partition(self.redis_port, true)?;
                std::thread::sleep(hold);
                ns.partition(self.redis_port, false)?;
                format!("node 0 cut off for {} ms", hold.as_millis())
            }
        })
    }

    /// Deletes the room's keys of the given kinds; returns their names.
    fn delete_keys(&self, room: &str, kinds: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut keys = Vec::new();
        for kind in kinds {
            keys.extend(self.keys_of(room, kind)?);
        }
        if !keys.is_empty() {
            let mut del = vec!["DEL"];
            del.extend(keys.iter().map(String::as_str));
            self.redis(&del)?;
        }
        Ok(keys)
    }

    /// The room's keys of one kind (`r` stream, `f` floor, `a` audience),
    /// found by name as an operator would, whatever bucket holds them.
    fn keys_of(&self, room: &str, kind: &str) -> anyhow::Result<Vec<String>> {
        redis_keys(self.redis_port, &format!("{PREFIX}:*:{kind}:{room}"))
    }

    /// Copies every node's whole log to `<stem>.node-<i>.log` beside `out`.
    pub fn keep_logs(&self, out: &Path) -> Vec<PathBuf> {
        let mut kept = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let to = out.with_extension(format!("node-{i}.log"));
            if std::fs::copy(&node.log, &to).is_ok() {
                kept.push(to);
            }
        }
        kept
    }

    /// Node `i`'s log so far (for a failed run's report).
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = self.nodes.get(i).and_then(|n| std::fs::read_to_string(&n.log).ok()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(c) = &mut node.child {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(c) = &mut self.redis {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
