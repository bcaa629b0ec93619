//! `roomcast chaos`: the resume promise under faults, checked end to end.
//!
//! A spawned deployment (a `redis-server` and several nodes, one of them in
//! a network namespace of its own when the machine allows) carries
//! publishers and subscribers while faults strike at random: nodes killed
//! and stopped, Redis restarted empty, its connections killed, room keys and
//! metadata deleted, `FLUSHALL`, eviction under memory pressure, a node cut
//! off from Redis. Subscribers drop and resume across nodes all the while.
//! When the faults stop, every room gets a fence event, every subscriber
//! reads up to it, and each subscriber's record is held against what was
//! acknowledged ([`verify`]). Gaps are allowed, and counted by the fault
//! that preceded them; losses without a gap, duplicates, reordering and
//! reused IDs fail the run.

pub mod clients;
pub mod faults;
pub mod id;
pub mod verify;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use self::clients::{Entry, Ledger, SubLog};
use self::faults::{Cluster, Fault};
use self::id::EventId;
use self::verify::Verdict;

/// A gap is put down to the last fault that began at most this long before it.
const BLAME_WINDOW: Duration = Duration::from_secs(30);
/// The `gaps_by_fault` key of gaps no data-losing fault explains.
pub const UNEXPLAINED: &str = "unexplained";
/// How long subscribers get to reach the fences once the faults stop.
const SETTLE: Duration = Duration::from_secs(60);

/// `roomcast chaos` flags.
#[derive(Clone, Debug, Args)]
pub struct ChaosArgs {
    /// Seconds of faults.
    #[arg(long, default_value_t = 600)]
    pub duration: u64,
    /// Nodes on the one Redis.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Subscribers (each follows one room and resumes across nodes).
    #[arg(long, default_value_t = 24)]
    pub subscribers: usize,
    /// Rooms (one publisher each).
    #[arg(long, default_value_t = 4)]
    pub rooms: usize,
    /// Publishes per second over all rooms.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Mean seconds between two faults.
    #[arg(long, default_value_t = 3.0)]
    pub fault_every: f64,
    /// Seed of every random choice (default: from the clock; the report
    /// names it, so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Do not put a node in a network namespace (no partition faults).
    #[arg(long)]
    pub no_partition: bool,
    /// Run the nodes from this binary instead of this build (e.g. an older
    /// release, to see what the run finds there).
    #[arg(long)]
    pub node_binary: Option<PathBuf>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/chaos.json")]
    pub out: PathBuf,
}

/// One fault as it happened.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    /// Seconds into the run when it began.
    pub at_s: f64,
    /// Which fault.
    pub fault: Fault,
    /// What exactly it did.
    pub detail: String,
    /// Whether applying it failed (the run then proves less than it says).
    pub failed: bool,
}

/// The run's report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The seed that reproduces the choices.
    pub seed: u64,
    /// Seconds of faults.
    pub duration_s: u64,
    /// Nodes, subscribers, rooms, offered rate.
    pub nodes: usize,
    /// Subscribers.
    pub subscribers: usize,
    /// Rooms.
    pub rooms: usize,
    /// Offered publishes per second.
    pub rate: f64,
    /// Whether the partition fault was available.
    pub partitions: bool,
    /// Faults by kind.
    pub fault_counts: BTreeMap<Fault, u64>,
    /// Faults that could not be applied.
    pub fault_failures: u64,
    /// Publishes attempted, acknowledged, and unanswered.
    pub published: u64,
    /// Acknowledged publishes.
    pub acknowledged: u64,
    /// Publishes that got no answer (may or may not be stored).
    pub uncertain: u64,
    /// Connections the subscribers made (first connects and resumes).
    pub subscriber_connections: u64,
    /// The verdict.
    pub verdict: Verdict,
    /// Gaps by the data-losing fault that explains them ([`UNEXPLAINED`]
    /// if none does).
    pub gaps_by_fault: BTreeMap<String, u64>,
    /// Every fault, in order.
    pub faults: Vec<FaultRecord>,
}

/// Runs a chaos run; `Ok(true)` when the promise held.
pub fn main(args: ChaosArgs) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: ChaosArgs) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let rooms: Vec<String> = (0..args.rooms.max(1)).map(|i| format!("chaos-{i}")).collect();
    let exe = match &args.node_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe()?,
    };
    let mut cluster = Cluster::start(&exe, args.nodes, &rooms, !args.no_partition)?;
    let nodes = cluster.addrs();
    let partitions = cluster.netns.is_some();
    eprintln!(
        "chaos: seed {seed}, {} nodes{}, {} subscribers, {} rooms, {} msg/s, {} s of faults",
        nodes.len(),
        if partitions { " (node 0 in a network namespace)" } else { "" },
        args.subscribers,
        rooms.len(),
        args.rate,
        args.duration
    );

    let ledger = Arc::new(Ledger::default());
    let stop = CancellationToken::new();
    let fences: Arc<Mutex<HashMap<String, EventId>>> = Arc::default();
    let deadline: Arc<Mutex<Option<Instant>>> = Arc::default();
    let subscribers: Vec<_> = (0..args.subscribers.max(1))
        .map(|i| {
            let room = rooms[i % rooms.len()].clone();
            let task = clients::subscriber(
                room,
                nodes.clone(),
                stop.clone(),
                fences.clone(),
                deadline.clone(),
                seed ^ i as u64,
            );
            tokio::spawn(task)
        })
        .collect();
    // Subscribers start from the oldest event: let them connect first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_room = args.rate / rooms.len() as f64;
    let publishers: Vec<_> = rooms
        .iter()
        .enumerate()
        .map(|(i, room)| {
            let task = clients::publisher(
                i as u64 + 1,
                room.to_string(),
                nodes.clone(),
                per_room,
                ledger.clone(),
                stop.clone(),
                seed.wrapping_add(1000 + i as u64),
            );
            tokio::spawn(task)
        })
        .collect();

    // The faults run on a thread of their own: they wait on processes.
    let started = Instant::now();
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    eprintln!(
        "chaos: faults start at {} ms since the epoch (event IDs and node logs are in wall time)",
        wall.as_millis()
    );
    let duration = Duration::from_secs(args.duration);
    let every = args.fault_every.max(0.2);
    let (cluster_back, records) = tokio::task::spawn_blocking(move || {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31));
        let mut records = Vec::new();
        let mut round: Vec<Fault> = Vec::new();
        while started.elapsed() < duration {
            std::thread::sleep(Duration::from_secs_f64(every * rng.random_range(0.5..1.5)));
            if started.elapsed() >= duration {
                break;
            }
            // Shuffled rounds of every fault: each kind comes up often.
            if round.is_empty() {
                round = cluster.faults();
                round.shuffle(&mut rng);
            }
            let Some(fault) = round.pop() else { break };
            let at_s = started.elapsed().as_secs_f64();
            let (detail, failed) = match cluster.apply(fault, &mut rng) {
                Ok(detail) => (detail, false),
                Err(e) => (format!("failed: {e:#}"), true),
            };
            eprintln!("chaos: {at_s:7.1} s  {fault:?} {detail}");
            records.push(FaultRecord { at_s, fault, detail, failed });
        }
        (cluster, records)
    })
    .await?;
    let cluster = cluster_back;

    // Faults over: publishers stop, every room gets a fence, subscribers
    // read up to it.
    stop.cancel();
    for p in publishers {
        let _ = p.await;
    }
    *deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + SETTLE);
    for (i, room) in rooms.iter().enumerate() {
        let tag = (0xfe00u64 + i as u64) << 32;
        match clients::fence(room, &nodes, &ledger, tag).await {
            Some(id) => {
                fences.lock().unwrap_or_else(|p| p.into_inner()).insert(room.to_string(), id);
            }
            None => eprintln!("chaos: could not publish the fence of {room}"),
        }
    }
    let mut logs: Vec<SubLog> = Vec::new();
    for s in subscribers {
        logs.push(s.await?);
    }

    let acked = ledger.acked();
    let uncertain = ledger.uncertain();
    let verdict = verify::check(&logs, &acked, &uncertain, started);
    let report = Report {
        seed,
        duration_s: args.duration,
        nodes: nodes.len(),
        subscribers: logs.len(),
        rooms: rooms.len(),
        rate: args.rate,
        partitions,
        fault_counts: records.iter().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.fault).or_insert(0) += 1;
            m
        }),
        fault_failures: records.iter().filter(|r| r.failed).count() as u64,
        published: ledger.attempts(),
        acknowledged: acked.values().map(|v| v.len() as u64).sum(),
        uncertain: uncertain.len() as u64,
        subscriber_connections: logs.iter().map(|l| l.connections).sum(),
        gaps_by_fault: blame(&logs, &records, started),
        verdict,
        faults: records,
    };
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&report)?)?;
    let v = &report.verdict;
    if !v.clean() {
        for example in &v.examples {
            eprintln!("chaos: {example}");
        }
        for line in v.traces.iter().flatten() {
            eprintln!("chaos: trace: {line}");
        }
        for i in 0..nodes.len() {
            eprintln!("chaos: node {i} log tail:\n{}", cluster.log_tail(i, 20));
        }
        for kept in cluster.keep_logs(&args.out) {
            eprintln!("chaos: node log kept: {}", kept.display());
        }
    }
    println!(
        "chaos: {} s, {} faults, {} acknowledged ({} unanswered), {} delivered over {} connections; \
         silent losses {}, duplicates {}, order violations {}, id reuse {}, stored twice {}, phantoms {}, stuck {}; \
         {} gaps {:?}; report {}",
        report.duration_s,
        report.faults.len(),
        report.acknowledged,
        report.uncertain,
        v.delivered,
        report.subscriber_connections,
        v.silent_losses,
        v.duplicates,
        v.order_violations,
        v.id_reuse,
        v.stored_twice,
        v.phantoms,
        v.stuck,
        v.gaps,
        report.gaps_by_fault,
        args.out.display()
    );
    Ok(v.clean() && report.fault_failures == 0)
}

/// Counts gaps by the fault that explains each: the last fault that can
/// lose data and began at most [`BLAME_WINDOW`] before the gap. A gap with
/// no such fault is `unexplained` (a spurious gap: allowed by the promise,
/// but a sign of a detector too eager).
fn blame(logs: &[SubLog], faults: &[FaultRecord], started: Instant) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for log in logs {
        for entry in &log.entries {
            let Entry::Gap(_, at) = entry else { continue };
            let at_s = at.saturating_duration_since(started).as_secs_f64();
            let culprit = faults
                .iter()
                .rev()
                .filter(|f| f.fault.loses_data())
                .find(|f| f.at_s <= at_s && at_s - f.at_s <= BLAME_WINDOW.as_secs_f64())
                .map(|f| format!("{:?}", f.fault))
                .unwrap_or_else(|| UNEXPLAINED.into());
            *counts.entry(culprit).or_insert(0) += 1;
        }
    }
    counts
}
