//! Redis Cluster and Sentinel, with real servers: rooms spread over every
//! master, resume is exact on a cluster, and when a master dies under load
//! and its replica takes over, every subscriber of every room still gets
//! its events in order, none twice, and every acknowledged event either
//! delivered or covered by a `gap`; live delivery comes back by itself.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use roomcast::protocol::RoomName;
use roomcast::store::redis::keys::Keys;
use serde_json::{json, Value};
use support::client::{id_key, Client};
use support::topology::{RedisCluster, RedisSentinel};
use support::{publish, publish_when_ready, Node};

const ROOMS: usize = 12;

fn rooms() -> Vec<String> {
    (0..ROOMS).map(|i| format!("room-{i}")).collect()
}

/// What one subscriber saw of one room, in arrival order.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Event(String, Instant),
    Gap(String),
}

/// A subscriber of every room, reading until each room's `"end"` event.
async fn viewer(url: String, ready: tokio::sync::oneshot::Sender<()>) -> HashMap<String, Vec<Seen>> {
    viewer_from(url, HashMap::new(), ready).await
}

/// A viewer that resumes each room from `positions` (live where none).
async fn viewer_from(
    url: String,
    positions: HashMap<String, String>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> HashMap<String, Vec<Seen>> {
    let mut client = Client::connect(&url).await;
    let mut seen: HashMap<String, Vec<Seen>> = HashMap::new();
    let mut ended: HashSet<String> = HashSet::new();
    for room in rooms() {
        client.subscribe(&room, positions.get(&room).map(String::as_str)).await;
        // A resumed room's events may come before the next room's answer.
        loop {
            let frame = client.next().await.unwrap_or_else(|c| panic!("a viewer's socket closed: {c:?}"));
            if frame["type"] == "subscribed" && frame["room"] == room.as_str() {
                break;
            }
            record(&frame, &mut seen, &mut ended);
        }
    }
    let _ = ready.send(());
    while ended.len() < ROOMS {
        let frame = client.next().await.unwrap_or_else(|c| panic!("a viewer's socket closed: {c:?}"));
        record(&frame, &mut seen, &mut ended);
    }
    seen
}

/// Notes one frame in a viewer's log; a room ends with its `"end"` event.
fn record(frame: &Value, seen: &mut HashMap<String, Vec<Seen>>, ended: &mut HashSet<String>) {
    let room = frame["room"].as_str().unwrap_or("").to_owned();
    match frame["type"].as_str() {
        Some("events") => {
            for e in frame["events"].as_array().unwrap() {
                if e["data"] == json!("end") {
                    ended.insert(room.clone());
                }
                seen.entry(room.clone())
                    .or_default()
                    .push(Seen::Event(e["id"].as_str().unwrap().to_owned(), Instant::now()));
            }
        }
        Some("gap") => seen.entry(room).or_default().push(Seen::Gap(frame["after"].as_str().unwrap().to_owned())),
        _ => {}
    }
}

/// Whether `id` is covered by a gap in `log`: a gap after an ID below it,
/// with the next event delivered after that gap above it (or none).
fn covered(log: &[Seen], id: &str) -> bool {
    let target = id_key(id);
    log.iter().enumerate().any(|(i, item)| {
        let Seen::Gap(after) = item else { return false };
        let next = log[i + 1..].iter().find_map(|s| match s {
            Seen::Event(e, _) => Some(id_key(e)),
            Seen::Gap(_) => None,
        });
        id_key(after) < target && next.is_none_or(|n| n > target)
    })
}

/// Follows every room for a moment, then leaves: the position each room
/// was left at, to resume from later.
async fn leave_after_a_while(url: &str) -> HashMap<String, String> {
    let mut client = Client::connect(url).await;
    let mut positions = HashMap::new();
    for room in rooms() {
        client.subscribe(&room, None).await;
    }
    let until = Instant::now() + Duration::from_millis(400);
    while let Some(Ok(frame)) = client.next_within(until.saturating_duration_since(Instant::now())).await {
        let room = frame["room"].as_str().unwrap_or("").to_owned();
        match frame["type"].as_str() {
            Some("subscribed") => {
                positions.insert(room, frame["last_event_id"].as_str().unwrap().to_owned());
            }
            Some("events") => {
                let last = frame["events"].as_array().unwrap().last().unwrap()["id"].as_str().unwrap().to_owned();
                positions.insert(room, last);
            }
            _ => {}
        }
    }
    assert_eq!(positions.len(), ROOMS, "every room answered");
    positions
}

/// What a failover run saw.
struct Outcome {
    /// Gaps each room got, summed over viewers.
    gaps: HashMap<String, usize>,
    acked: usize,
    /// Acked events that no viewer got, each covered by a gap.
    lost: usize,
    /// Of those, the ones a viewer that was between connections at the
    /// fault would have missed (each covered by a gap it got on resuming).
    lost_between: usize,
    /// From the promotion to the first event each viewer got that was
    /// published after it, worst viewer.
    back_after: Duration,
    /// Every acknowledged publish: room, ID, when it was acknowledged.
    acks: Vec<(String, String, Instant)>,
    /// When the fault struck.
    struck: Instant,
}

/// Publishes to every room over both nodes while `fail` kills a master and
/// waits for its replica's promotion; then checks every viewer's log.
async fn failover_under_load(nodes: &[Node; 2], fail: impl FnOnce()) -> Outcome {
    let mut viewers = Vec::new();
    for i in 0..4 {
        let (ready, subscribed) = tokio::sync::oneshot::channel();
        viewers.push(tokio::spawn(viewer(nodes[i % 2].ws_url(""), ready)));
        subscribed.await.expect("a viewer subscribed to every room");
    }
    // Every viewer subscribed before the load starts: one event each room.
    let warm: Vec<String> = {
        let mut ids = Vec::new();
        for room in rooms() {
            ids.push(publish(&nodes[0], &room, json!("warm")).await);
        }
        ids
    };
    let acked: Arc<Mutex<Vec<(String, String, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            let (acked, stop) = (acked.clone(), stop.clone());
            let urls: Vec<String> = nodes.iter().map(|n| n.http("")).collect();
            tokio::spawn(async move {
                let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
                let mut i = p;
                while !stop.load(Ordering::Relaxed) {
                    let room = format!("room-{}", i % ROOMS);
                    let url = format!("{}/rooms/{room}/events", urls[i % 2]);
                    match http.post(&url).json(&json!(i)).send().await {
                        Ok(r) if r.status() == 201 => {
                            let body: Value = r.json().await.unwrap();
                            acked.lock().unwrap().push((room, body["id"].as_str().unwrap().to_owned(), Instant::now()));
                        }
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                    i += 2;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    // A viewer that is between connections when the fault comes: it left
    // with its positions, and resumes on the other node after the promotion.
    let left_at = leave_after_a_while(&nodes[0].ws_url("")).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = acked.lock().unwrap().len();
    assert!(before > 20, "the load runs before the fault ({before} acked)");
    let struck = Instant::now();
    tokio::task::block_in_place(fail);
    let promoted = Instant::now();
    // Publishing comes back by itself, then runs a while on the new master.
    support::eventually("publishes are acked after the promotion", || {
        let n = acked.lock().unwrap().iter().filter(|(_, _, at)| *at > promoted).count();
        async move { (n > 20).then_some(()) }
    })
    .await;
    let (ready, resumed) = tokio::sync::oneshot::channel();
    let between = tokio::spawn(viewer_from(nodes[1].ws_url(""), left_at.clone(), ready));
    resumed.await.expect("the returning viewer resumed every room");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await.unwrap();
    }
    for room in rooms() {
        publish_when_ready(&nodes[1], &room, json!("end")).await;
    }
    let logs: Vec<HashMap<String, Vec<Seen>>> = {
        let mut logs = Vec::new();
        for v in viewers {
            logs.push(tokio::time::timeout(Duration::from_secs(60), v).await.expect("viewers finish").unwrap());
        }
        logs
    };

    let between = tokio::time::timeout(Duration::from_secs(60), between).await.expect("it finishes").unwrap();

    let acked = acked.lock().unwrap().clone();
    let mut lost_between = 0;
    for room in rooms() {
        let items = between.get(&room).cloned().unwrap_or_default();
        let got: HashSet<String> = items
            .iter()
            .filter_map(|s| match s {
                Seen::Event(id, _) => Some(id.clone()),
                Seen::Gap(_) => None,
            })
            .collect();
        let from = id_key(&left_at[&room]);
        for (_, id, _) in acked.iter().filter(|(r, id, _)| *r == room && id_key(id) > from) {
            if !got.contains(id) {
                assert!(covered(&items, id), "returning viewer, {room}: acked {id} neither delivered nor in a gap");
                lost_between += 1;
            }
        }
    }
    let mut gaps: HashMap<String, usize> = HashMap::new();
    let mut lost = 0;
    let mut back_after = Duration::ZERO;
    for (v, log) in logs.iter().enumerate() {
        for room in rooms() {
            let items = log.get(&room).cloned().unwrap_or_default();
            let ids: Vec<String> = items
                .iter()
                .filter_map(|s| match s {
                    Seen::Event(id, _) => Some(id.clone()),
                    Seen::Gap(_) => None,
                })
                .collect();
            for pair in ids.windows(2) {
                assert!(id_key(&pair[0]) < id_key(&pair[1]), "viewer {v}, {room}: {} then {}", pair[0], pair[1]);
            }
            let got: HashSet<&String> = ids.iter().collect();
            assert_eq!(got.len(), ids.len(), "viewer {v}, {room}: an event twice");
            *gaps.entry(room.clone()).or_default() += items.iter().filter(|s| matches!(s, Seen::Gap(_))).count();
            for (_, id, _) in acked.iter().filter(|(r, _, _)| *r == room) {
                if !got.contains(id) {
                    assert!(
                        covered(&items, id),
                        "viewer {v}, {room}: acked {id} neither delivered nor in a gap: {items:?}"
                    );
                    lost += 1;
                }
            }
        }
        let first_after = acked
            .iter()
            .filter(|(_, _, at)| *at > promoted)
            .filter_map(|(room, id, _)| {
                log.get(room)?.iter().find_map(|s| match s {
                    Seen::Event(e, at) if e == id => Some(*at),
                    _ => None,
                })
            })
            .min()
            .expect("events published after the promotion reach every viewer");
        back_after = back_after.max(first_after.saturating_duration_since(promoted));
    }
    assert!(warm.len() == ROOMS);
    Outcome { gaps, acked: acked.len(), lost, lost_between, back_after, acks: acked, struck }
}

impl Outcome {
    /// The longest time without an acknowledged publish to any of `rooms`
    /// from the fault on: how long publishing to them stalled.
    fn longest_stall(&self, rooms: &[&String]) -> Duration {
        let mut times: Vec<Instant> =
            self.acks.iter().filter(|(r, _, _)| rooms.contains(&r)).map(|(_, _, at)| *at).collect();
        times.push(self.struck);
        times.sort();
        times.windows(2).filter(|w| w[1] > self.struck).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }

    /// Prints what the run saw, and checks live delivery came back.
    fn report(&self, what: &str) {
        eprintln!(
            "{what}: {} acked, {} lost (each covered by a gap; {} of them for the viewer between connections), \
             gaps by room {:?}, live again {:?} after the promotion",
            self.acked, self.lost, self.lost_between, self.gaps, self.back_after
        );
        assert!(self.back_after < Duration::from_secs(10), "live delivery back in {:?}", self.back_after);
    }
}

/// Two nodes on the sentinels' master.
fn sentinel_nodes(sentinel: &RedisSentinel) -> [Node; 2] {
    let args = ["--redis-sentinel", &sentinel.urls(), "--redis-sentinel-master", "mymaster"];
    [Node::with_args(&args), Node::with_args(&args)]
}

fn cluster_node(cluster: &RedisCluster) -> Node {
    Node::with_args(&["--redis-cluster", &RedisCluster::seeds(&cluster.ports)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_dies_under_load_and_only_its_rooms_get_gaps() {
    let mut cluster = RedisCluster::start();
    let nodes = [cluster_node(&cluster), cluster_node(&cluster)];
    let keys = Keys::new("rc");
    let master_of: HashMap<String, u16> = rooms()
        .into_iter()
        .map(|r| (r.clone(), cluster.master_of(&keys.room(&RoomName::parse(&r).unwrap()))))
        .collect();
    let victim = master_of["room-0"];
    assert!(master_of.values().any(|m| *m != victim), "the rooms span more than one master");
    let outcome = failover_under_load(&nodes, || {
        cluster.kill(victim);
        cluster.wait_healthy(&[victim]);
    })
    .await;
    outcome.report("cluster failover");
    for (room, master) in &master_of {
        if *master != victim {
            assert_eq!(outcome.gaps[room], 0, "{room} lives on a master that did not fail: no gap is due");
        }
    }
    // What is true of publishing to the masters that did not fail: it
    // stalls while the client reconnects (docs/operations.md says how
    // long), then goes on by itself.
    let others: Vec<&String> = master_of.iter().filter(|(_, m)| **m != victim).map(|(r, _)| r).collect();
    let stall = outcome.longest_stall(&others);
    eprintln!("cluster failover: publishes to the other masters' rooms stalled at most {stall:?}");
    assert!(stall < Duration::from_secs(10), "publishing to the other masters never came back: {stall:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load_is_delivered_or_a_gap() {
    let mut sentinel = RedisSentinel::start();
    let nodes = sentinel_nodes(&sentinel);
    let (master, replica) = (sentinel.master, sentinel.replica);
    let outcome = failover_under_load(&nodes, || {
        sentinel.kill(master);
        sentinel.wait_master(replica);
    })
    .await;
    outcome.report("sentinel failover (in sync)");
}

#[tokio::test]
async fn rooms_land_on_every_master_and_resume_is_exact_on_another_node() {
    let ports = RedisCluster::shared();
    let seeds = RedisCluster::seeds(ports);
    let a = Node::with_args(&["--redis-cluster", &seeds, "--key-prefix", "spread"]);
    let b = Node::with_args(&["--redis-cluster", &seeds, "--key-prefix", "spread"]);
    for i in 0..60 {
        publish(&a, &format!("spread-{i}"), json!(i)).await;
    }
    let masters: Vec<u16> =
        ports.iter().copied().filter(|p| support::topology::query(*p, &["ROLE"]).is_some()).collect();
    let holding: Vec<u16> = masters
        .iter()
        .copied()
        .filter(|p| {
            support::topology::query(*p, &["INFO", "replication"]).is_some_and(|i| i.contains("role:master"))
                && support::topology::query(*p, &["DBSIZE"])
                    .and_then(|n| n.trim_start_matches(':').parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
        })
        .collect();
    assert_eq!(holding.len(), 3, "60 rooms land on all 3 masters");

    // A viewer on node a drops half-way and resumes on node b.
    let mut first = Client::connect(&a.ws_url("?room=resume")).await;
    first.expect_type("subscribed").await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(publish(if i % 2 == 0 { &a } else { &b }, "resume", json!(i)).await);
    }
    let (seen, _) = first.events("resume", 30).await;
    drop(first);
    for i in 30..50 {
        ids.push(publish(&a, "resume", json!(i)).await);
    }
    let url = b.ws_url(&format!("?room=resume&last_event_id={}", seen[14].0));
    let mut second = Client::connect(&url).await;
    assert_eq!(second.expect_type("subscribed").await["resumed"], true);
    let (missed, gaps) = second.events("resume", 35).await;
    assert!(gaps.is_empty());
    let got: Vec<String> = missed.into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids[15..50].to_vec(), "exactly what was missed, once");
    let live = publish(&a, "resume", json!("live")).await;
    assert_eq!(second.events("resume", 1).await.0[0].0, live);
    second.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_cluster_delivers_live_on_the_doorbell_not_the_mailbox_poll() {
    let ports = RedisCluster::shared();
    let seeds = RedisCluster::seeds(ports);
    let a = Node::with_args(&["--redis-cluster", &seeds, "--key-prefix", "bell"]);
    let b = Node::with_args(&["--redis-cluster", &seeds, "--key-prefix", "bell"]);
    let mut viewer = Client::connect(&a.ws_url("?room=bell")).await;
    viewer.expect_type("subscribed").await;
    let mut delays = Vec::new();
    for i in 0..15 {
        let started = Instant::now();
        let id = publish(&b, "bell", json!(i)).await;
        let (events, _) = viewer.events("bell", 1).await;
        assert_eq!(events[0].0, id);
        delays.push(started.elapsed());
        // Spread over the mailbox poll's second, so a poll-only reader
        // would average half of it.
        tokio::time::sleep(Duration::from_millis(137)).await;
    }
    delays.sort();
    let median = delays[delays.len() / 2];
    eprintln!("cluster publish-to-delivery: median {median:?}, worst {:?}", delays.last().unwrap());
    // Not a speed target: a reader that only polled its mailboxes once a
    // second would show a median near 500 ms.
    assert!(median < Duration::from_millis(300), "doorbells do not ring: median {median:?}");
}

/// The replica's end of the master's replication connection.
fn replication_link_port(master: u16) -> u16 {
    let list = support::topology::query(master, &["CLIENT", "LIST", "TYPE", "replica"]).expect("CLIENT LIST");
    list.split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no replica connected: {list}"))
}

/// An iptables INPUT rule, removed again when dropped.
struct Blocked(Vec<String>);

impl Blocked {
    fn new(spec: &str) -> Blocked {
        let spec: Vec<String> = spec.split_whitespace().map(str::to_owned).collect();
        let status = std::process::Command::new("iptables").args(["-I", "INPUT"]).args(&spec).status();
        assert!(status.is_ok_and(|s| s.success()), "iptables (root, and the README's test command installs it)");
        Blocked(spec)
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables").args(["-D", "INPUT"]).args(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_that_lacks_acked_writes_is_a_gap_for_them() {
    let mut sentinel = RedisSentinel::start();
    let nodes = sentinel_nodes(&sentinel);
    let (master, replica) = (sentinel.master, sentinel.replica);
    let outcome = failover_under_load(&nodes, || {
        // The replication stream stops reaching the replica while the master
        // acks writes, then the master dies: the replica is promoted without them.
        let link = replication_link_port(master);
        let spec = format!("-p tcp -s 127.0.0.1 --sport {master} --dport {link} -j DROP");
        let _blocked = Blocked::new(&spec);
        std::thread::sleep(Duration::from_millis(600));
        sentinel.kill(master);
        sentinel.wait_master(replica);
    })
    .await;
    outcome.report("sentinel failover (replica behind)");
    assert!(outcome.lost > 0, "the promoted replica lacked writes the dead master had acked");
    assert!(outcome.lost_between > 0, "the viewer between connections missed them too, and was told");
}
