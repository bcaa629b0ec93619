//! Real Redis Cluster and Sentinel deployments on loopback, for tests:
//! a 3-master cluster with a replica each, and one master with a replica
//! watched by three sentinels.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{free_port, PATIENCE};

/// A free port the cluster bus (port + 10,000) can use too.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55_535 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Starts `command` (a `redis-server`); it dies with the thread that started it.
fn spawn_server(mut command: Command) -> Child {
    // SAFETY: prctl is async-signal-safe and touches only this child.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command.spawn().expect("redis-server must be installed (the README's test command installs it)")
}

/// Starts a data server on `port` without persistence, storing in `dir`,
/// with `extra` flags.
fn spawn_data_server(port: u16, dir: &std::path::Path, extra: &[&str]) -> Child {
    let mut command = roomcast_bench::spawn::redis_server(port, dir);
    command.args(extra);
    spawn_server(command)
}

/// Sends one command and reads its whole reply (a bulk string in full).
pub fn query(port: u16, args: &[&str]) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
    }
    stream.write_all(cmd.as_bytes()).ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let line = line.trim_end().to_owned();
    let Some(len) = line.strip_prefix('$') else { return Some(line) };
    let len: usize = len.parse().ok()?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8(body).ok()
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE * 2;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn info_has(port: u16, section: &str, needle: &str) -> bool {
    query(port, &["INFO", section]).is_some_and(|info| info.contains(needle))
}

/// A 3-master Redis Cluster with one replica per master.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts six servers, makes them a cluster, and waits until it serves
    /// every slot and every replica is in sync.
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<u16> = (0..6).map(|_| cluster_port()).collect();
        let children = ports
            .iter()
            .map(|port| {
                let config = format!("nodes-{port}.conf");
                let cluster =
                    ["--cluster-enabled", "yes", "--cluster-config-file", &config, "--cluster-node-timeout", "1000"];
                Some(spawn_data_server(*port, dir.path(), &cluster))
            })
            .collect();
        for port in &ports {
            wait_until("a cluster node answers", || query(*port, &["PING"]).as_deref() == Some("+PONG"));
        }
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.extend(["--cluster-replicas".into(), "1".into(), "--cluster-yes".into()]);
        let status = Command::new("redis-cli").args(&create).stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(status.is_ok_and(|s| s.success()), "redis-cli --cluster create failed");
        let cluster = RedisCluster { ports, children, _dir: dir };
        cluster.wait_healthy(&[]);
        cluster
    }

    /// One cluster for the whole test binary (conformance runs use a key
    /// prefix each). Its servers live as long as the test process.
    pub fn shared() -> &'static [u16] {
        static PORTS: OnceLock<Vec<u16>> = OnceLock::new();
        PORTS.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            // The servers die with the thread that started them: one that never ends.
            std::thread::spawn(move || {
                let cluster = RedisCluster::start();
                let _ = tx.send(cluster.ports.clone());
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("the shared cluster started")
        })
    }

    /// Seed URLs for `--redis-cluster` (two of the six).
    pub fn seeds(ports: &[u16]) -> String {
        ports.iter().take(2).map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// Waits until every live node says the cluster is ok and every live
    /// replica is in sync with its master.
    pub fn wait_healthy(&self, dead: &[u16]) {
        for port in self.ports.iter().filter(|p| !dead.contains(p)) {
            wait_until("cluster_state:ok", || info_has_cluster_ok(*port));
        }
        for port in self.ports.iter().filter(|p| !dead.contains(p)) {
            wait_until("replicas in sync", || {
                !info_has(*port, "replication", "role:slave") || info_has(*port, "replication", "master_link_status:up")
            });
        }
    }

    /// Ports of the nodes that are masters now.
    pub fn masters(&self) -> Vec<u16> {
        self.ports
            .iter()
            .copied()
            .filter(|p| self.children[self.index(*p)].is_some() && info_has(*p, "replication", "role:master"))
            .collect()
    }

    /// The master serving `key`'s slot now.
    pub fn master_of(&self, key: &str) -> u16 {
        let port = self.masters()[0];
        let slot: u16 = query(port, &["CLUSTER", "KEYSLOT", key])
            .and_then(|r| r.trim_start_matches(':').parse().ok())
            .expect("CLUSTER KEYSLOT");
        let nodes = query(port, &["CLUSTER", "NODES"]).expect("CLUSTER NODES");
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
            });
            if owns {
                let addr = fields[1].split('@').next().unwrap_or("");
                return addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("node port");
            }
        }
        panic!("no master owns slot {slot}")
    }

    /// Kills the server on `port` (SIGKILL): it never comes back.
    pub fn kill(&mut self, port: u16) {
        let index = self.index(port);
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn index(&self, port: u16) -> usize {
        self.ports.iter().position(|p| *p == port).expect("a port of this cluster")
    }
}

fn info_has_cluster_ok(port: u16) -> bool {
    query(port, &["CLUSTER", "INFO"]).is_some_and(|info| info.contains("cluster_state:ok"))
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One master, one replica, and three sentinels watching them as `mymaster`.
pub struct RedisSentinel {
    pub master: u16,
    pub replica: u16,
    pub sentinels: Vec<u16>,
    children: Vec<(u16, Option<Child>)>,
    _dir: tempfile::TempDir,
}

impl RedisSentinel {
    pub fn start() -> RedisSentinel {
        let dir = tempfile::tempdir().expect("tempdir");
        let (master, replica) = (free_port(), free_port());
        let mut children = vec![(master, Some(spawn_data_server(master, dir.path(), &[])))];
        wait_until("the master answers", || query(master, &["PING"]).as_deref() == Some("+PONG"));
        let master_port = master.to_string();
        let follow = ["--replicaof", "127.0.0.1", &master_port];
        children.push((replica, Some(spawn_data_server(replica, dir.path(), &follow))));
        wait_until("the replica syncs", || info_has(replica, "replication", "master_link_status:up"));
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n\
                     sentinel parallel-syncs mymaster 1\n"
                ),
            )
            .expect("sentinel config");
            let mut sentinel = Command::new("redis-server");
            sentinel.arg(&conf).arg("--sentinel").stdout(Stdio::null()).stderr(Stdio::null());
            children.push((port, Some(spawn_server(sentinel))));
            sentinels.push(port);
        }
        for port in &sentinels {
            wait_until("every sentinel sees the replica and the others", || {
                query(*port, &["INFO", "sentinel"]).is_some_and(|i| i.contains("slaves=1,sentinels=3"))
            });
        }
        RedisSentinel { master, replica, sentinels, children, _dir: dir }
    }

    /// URLs for `--redis-sentinel`.
    pub fn urls(&self) -> String {
        self.sentinels.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// Kills the server on `port` (SIGKILL): it never comes back.
    pub fn kill(&mut self, port: u16) {
        for (p, child) in &mut self.children {
            if *p == port {
                if let Some(mut child) = child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to the server on `port`.
    pub fn signal(&self, port: u16, signal: &str) {
        for (p, child) in &self.children {
            if let (true, Some(child)) = (*p == port, child) {
                let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
            }
        }
    }

    /// Waits until the sentinels name `port` as the master.
    pub fn wait_master(&self, port: u16) {
        wait_until("the sentinels promote the replica", || {
            self.sentinels.iter().all(|s| {
                query(*s, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"]).is_some()
                    && info_has(*s, "sentinel", &format!("address=127.0.0.1:{port}"))
            })
        });
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
