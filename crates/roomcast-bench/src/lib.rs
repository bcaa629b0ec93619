//! `roomcast bench`: the bundled load-test harness.
//!
//! It drives a deployment (spawned on loopback, or given by `--url`) with N
//! subscribers over R rooms and open-loop publishers, checks every delivery
//! (loss, duplicates and reordering fail the run), and reports throughput,
//! end-to-end latency (HDR histogram), server CPU per million deliveries and
//! RSS per connection, as JSON and as an SVG chart. Named presets reproduce
//! the figures in `docs/benchmarks.md`.

mod bench;
pub mod catchup;
pub mod chaos;
pub mod decode;
pub mod hook;
pub mod joinstorm;
pub mod live;
pub mod load;
pub mod presence;
mod presets;
pub mod pusher;
pub mod reader;
pub mod reference;
pub mod report;
pub mod spawn;
pub mod spec;
pub mod spread;
pub mod subscribers;
pub mod target;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use self::bench::Bench;
use self::presets::Verdict;
use self::report::{Report, Run};

/// The named presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// 1 room, 2,000 subscribers over 2 nodes, 100 msg/s, 20 s; and the same on the embedded store.
    Fanout,
    /// 1 room, 1,000 subscribers over 2 nodes, rate raised until loss or p99 > 250 ms; and the bare
    /// reference; with the fast subscriber reader, then with the full one.
    Saturate,
    /// 10,000 idle subscribed connections on one node: RSS per connection (median of three fresh nodes).
    Idle,
    /// 5,000 rooms with 2 subscribers each, 2,000 msg/s over them, 20 s.
    Rooms,
    /// 2,000 subscribers drop at once mid-run and resume with their last IDs, 500 msg/s.
    ResumeStorm,
    /// 1 room, 19,000 subscribers on one node on Redis, 1 then 5 msg/s, 10 s each,
    /// and the bare reference at the same size; then 100,000 over six nodes
    /// on one Redis, the generator split over six processes.
    Broadcast,
    /// 10,000 viewers of one room on 2 nodes, each reacting once a second, 20 s.
    Reactions,
    /// 10,000 rooms with an audience watcher each on 2 nodes; idle, then
    /// 500 viewers joining and leaving at random, 20 s.
    Audience,
    /// The rooms workload (smaller: 4,000 subscribers, 2,000 rooms, 1,000
    /// msg/s, 20 s) on a spawned 3-master Redis Cluster beside single Redis,
    /// twice each; then 10,000 watched rooms idle and churning on each.
    Cluster,
    /// One node on Redis, a room of 3,200 events of 16 KB (52 MB): one client
    /// resumes from its start and reads to the end, then 100 at once.
    CatchUp,
    /// One room of 10,000 events at 20 msg/s; 20,000 viewers join within
    /// 5 s over 2 nodes with rewind 50 and the state; then the same done
    /// the earlier way (history over HTTP, then a resume).
    JoinStorm,
    /// Publishing through a local publish hook that approves everything,
    /// at rising rates, beside the same load without the hook (one node).
    Hook,
    /// One room of 20,000 viewers (100 watching presence) and 1,000 rooms
    /// of 20, over 2 nodes, 1% leaving and joining a second, with webhooks.
    Presence,
    /// 1,000 subscribers of one room over 2 nodes, native and Pusher in
    /// alternating rounds; then idle connections of each on a fresh node.
    Pusher,
    /// A few seconds at small scale, with a storm (the test suite runs it).
    Smoke,
}

/// `roomcast bench` flags.
#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// A named preset (sets the load and the targets).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Spawn the target on loopback: a redis-server and `--nodes` nodes of
    /// this build (the default when no `--url` is given), cleaned up after.
    #[arg(long, conflicts_with = "url")]
    pub spawn: bool,
    /// Drive an existing deployment instead of spawning one (repeatable: host:port).
    #[arg(long)]
    pub url: Vec<String>,
    /// Nodes to spawn on a spawned redis-server.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Spawn one node on the embedded store instead (no Redis).
    #[arg(long)]
    pub embedded: bool,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Offered publishes per second (0: connect only).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Share of subscribers that drop mid-run and resume with their last ID (0-1).
    #[arg(long, default_value_t = 0.0)]
    pub storm: f64,
    /// Generator processes holding the subscribers (one process here holds
    /// at most 20,000 open files: use 6 for 100,000).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// How subscribers read: `fast` (the harness's own reader and frame
    /// scan) or `full` (tungstenite and a full JSON parse, like an ordinary
    /// client). Reports say which.
    #[arg(long, value_enum, default_value_t = load::ReaderKind::Fast)]
    pub reader: load::ReaderKind,
    /// Loopback source addresses to spread connections over (127.0.0.2 and up).
    #[arg(long, default_value_t = 8)]
    pub source_ips: u8,
    /// `join-storm`: also run the earlier way against nodes of this binary
    /// (an older build), beside this build.
    #[arg(long)]
    pub node_binary: Option<PathBuf>,
    /// Where to write the JSON report (default: target/bench/<preset>.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where to write the SVG chart (default: beside the JSON report).
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

/// The bare reference server's flags (hidden; the harness spawns it).
#[derive(Clone, Debug, Args)]
pub struct ReferenceArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// Runs the harness; returns whether every run that had to be clean was.
pub fn main(args: BenchArgs) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let bar = ProgressBar::new(1);
        bar.set_style(
            ProgressStyle::with_template("{prefix:.bold} {wide_bar} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut bench = Bench { args: args.clone(), bar, runs: Vec::new() };
        let preset = args.preset;
        let verdict = match preset {
            None => presets::custom(&mut bench).await?,
            Some(Preset::Smoke) => presets::smoke(&mut bench).await?,
            Some(Preset::Fanout) => presets::fanout(&mut bench).await?,
            Some(Preset::Saturate) => presets::saturate(&mut bench).await?,
            Some(Preset::Broadcast) => presets::broadcast(&mut bench).await?,
            Some(Preset::Reactions) => presets::reactions().await?,
            Some(Preset::Audience) => presets::audience().await?,
            Some(Preset::Idle) => presets::idle(&mut bench).await?,
            Some(Preset::Rooms) => presets::rooms(&mut bench).await?,
            Some(Preset::Cluster) => presets::cluster(&mut bench).await?,
            Some(Preset::CatchUp) => presets::catch_up().await?,
            Some(Preset::Hook) => presets::hook().await?,
            Some(Preset::Presence) => presets::presence().await?,
            Some(Preset::Pusher) => presets::pusher().await?,
            Some(Preset::JoinStorm) => presets::join_storm(args.node_binary.clone()).await?,
            Some(Preset::ResumeStorm) => presets::resume_storm(&mut bench).await?,
        };
        let Verdict { clean, summary, charted } = verdict;
        bench.bar.finish_and_clear();
        let name = preset
            .and_then(|p| p.to_possible_value())
            .map(|v| v.get_name().to_owned())
            .unwrap_or_else(|| "custom".to_owned());
        let report = Report { preset: name.clone(), runs: bench.runs.clone(), summary };
        let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("target/bench/{name}.json")));
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
        let svg_path = args.svg.clone().unwrap_or_else(|| out.with_extension("svg"));
        let shown: Vec<Run> = match &charted {
            Some(indices) => indices.iter().filter_map(|&i| report.runs.get(i).cloned()).collect(),
            None => report.runs.clone(),
        };
        let svg = if preset == Some(Preset::Saturate) {
            let mut groups: Vec<(String, Vec<&Run>)> = Vec::new();
            for run in &shown {
                match groups.iter_mut().find(|(t, _)| *t == run.target) {
                    Some((_, runs)) => runs.push(run),
                    None => groups.push((run.target.clone(), vec![run])),
                }
            }
            report::sweep_chart(&groups)
        } else {
            report::time_chart(&shown)
        };
        std::fs::write(&svg_path, svg)?;
        println!("{}", serde_json::to_string_pretty(&report.summary)?);
        println!("report: {}  chart: {}", out.display(), svg_path.display());
        Ok(clean)
    })
}

/// Runs the bare reference server (for `saturate`).
pub fn reference_main(args: ReferenceArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(reference::serve(args.listen))
}
