//! `roomcast bench`: the bundled load-test harness.
//!
//! It drives a deployment (spawned on loopback, or given by `--url`) with N
//! subscribers over R rooms and open-loop publishers, checks every delivery
//! (loss, duplicates and reordering fail the run), and reports throughput,
//! end-to-end latency (HDR histogram), server CPU per million deliveries and
//! RSS per connection, as JSON and as an SVG chart. Named presets reproduce
//! the figures in `docs/benchmarks.md`.

pub mod catchup;
pub mod chaos;
pub mod decode;
pub mod live;
pub mod load;
pub mod reader;
pub mod reference;
pub mod report;
pub mod spread;
pub mod target;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use self::load::{LoadSpec, Outcome};
use self::report::{Report, Run};
use self::target::TargetSpec;

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

struct Bench {
    args: BenchArgs,
    bar: ProgressBar,
    runs: Vec<Run>,
}

impl Bench {
    fn spec(&self, subscribers: usize, rooms: usize, rate: f64, duration: u64, storm: f64) -> LoadSpec {
        LoadSpec {
            subscribers,
            rooms,
            rate,
            size: self.args.size,
            duration: Duration::from_secs(duration),
            storm,
            source_ips: self.args.source_ips,
            room_prefix: format!("bench-{}-{}-", std::process::id(), self.runs.len()),
            processes: self.args.processes,
            reader: self.args.reader,
        }
    }

    fn target(&self) -> anyhow::Result<TargetSpec> {
        if !self.args.url.is_empty() {
            let mut addrs = Vec::new();
            for url in &self.args.url {
                let hostport = url.trim_start_matches("http://").trim_start_matches("ws://").trim_end_matches('/');
                let hostport = hostport.split('/').next().unwrap_or(hostport);
                addrs.push(
                    hostport.to_socket_addrs().with_context(|| format!("--url {url}"))?.next().context("no address")?,
                );
            }
            return Ok(TargetSpec::Urls(addrs));
        }
        Ok(if self.args.embedded { TargetSpec::Embedded } else { TargetSpec::Redis { nodes: self.args.nodes.max(1) } })
    }

    /// Spawns (or reaches) `target`, runs `spec` against it, records the run.
    async fn run(&mut self, target: &TargetSpec, spec: LoadSpec) -> anyhow::Result<Outcome> {
        let deployment = target::start(target)?;
        let measured = deployment.measured();
        let measure = || (deployment.cpu_seconds(), deployment.node_rss());
        let bar = self.bar.clone();
        let label = target.label();
        bar.set_prefix(label.clone());
        let progress: load::Progress = Arc::new(move |phase: &str, done: u64, total: u64, rate: f64| {
            bar.set_length(total.max(1));
            bar.set_position(done);
            bar.set_message(if rate > 0.0 { format!("{phase} ({rate:.0} deliveries/s)") } else { phase.to_owned() });
        });
        let outcome = load::run(&spec, &deployment.nodes, &measure, measured, progress).await?;
        let line = summary_line(&label, &spec, &outcome);
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
        self.runs.push(Run { target: label, spec, outcome: outcome.clone() });
        Ok(outcome)
    }
}

fn summary_line(label: &str, spec: &LoadSpec, o: &Outcome) -> String {
    let extra = [
        o.cpu_seconds_per_million.map(|c| format!(" cpu {c:.2} s/M")),
        o.rss_per_connection_bytes.map(|r| format!(" rss/conn {:.1} KiB", r / 1024.0)),
        o.storm_caught_up_ms.map(|t| format!(" storm caught up in {t:.0} ms ({} stragglers)", o.storm_stragglers)),
    ]
    .into_iter()
    .flatten()
    .collect::<String>();
    format!(
        "{label}: {} subs ({} reader{}), {} rooms, {} msg/s -> {:.0} deliveries/s, lost {} dup {} ooo {} gaps {}, p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.1} ms{extra}{}",
        spec.subscribers,
        if spec.reader == load::ReaderKind::Full { "full" } else { "fast" },
        if spec.processes > 1 { format!(", {} generator processes", spec.processes) } else { String::new() },
        spec.rooms,
        spec.rate,
        o.delivered_per_sec,
        o.lost,
        o.duplicates,
        o.out_of_order,
        o.gaps,
        o.latency_ms.p50,
        o.latency_ms.p99,
        o.latency_ms.p999,
        o.latency_ms.max,
        if o.clean() { "" } else { "  [NOT CLEAN]" }
    )
}

/// Subscribers of the broadcast preset: what one node holds under this
/// machine's 20,000-descriptor limit, with room for the rest.
const BROADCAST_SIZE: usize = 19_000;
/// Subscribers of the broadcast preset's second part, over several nodes.
const BROADCAST_HUGE: usize = 100_000;
/// Loopback source addresses of the broadcast preset's second part.
const BROADCAST_HUGE_SOURCES: u8 = 64;
/// Nodes (and generator processes) of the broadcast preset's second part.
const BROADCAST_HUGE_NODES: usize = 6;
/// Publishes per second the broadcast preset offers.
const BROADCAST_RATES: [f64; 2] = [1.0, 5.0];

/// Offered rates the saturate preset steps through.
const SATURATE_RATES: [f64; 14] =
    [100.0, 250.0, 500.0, 600.0, 800.0, 1000.0, 1250.0, 1500.0, 2000.0, 2500.0, 3000.0, 3500.0, 4000.0, 5000.0];
/// A saturate step fails above this p99.
const SATURATE_P99_MS: f64 = 250.0;
/// Fresh nodes the idle preset measures; its figure is their median.
const IDLE_RUNS: usize = 3;
/// Single/cluster pairs the cluster preset runs; its verdict is the median pair's.
const CLUSTER_PAIRS: usize = 2;
/// Redis/embedded pairs the fanout preset runs; its verdict is the median pair's.
const FANOUT_PAIRS: usize = 3;

/// The median item by `key` (the lower middle for an even count); `None` when empty.
fn median_by<T>(mut items: Vec<T>, key: impl Fn(&T) -> f64) -> Option<T> {
    items.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let middle = items.len().checked_sub(1)? / 2;
    Some(items.swap_remove(middle))
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
        // The runs the chart shows, when not all of them (repeated presets chart their median runs).
        let mut charted: Option<Vec<usize>> = None;
        let (clean, summary) = match preset {
            None => {
                let target = bench.target()?;
                let spec = bench.spec(args.subscribers, args.rooms, args.rate, args.duration, args.storm);
                let o = bench.run(&target, spec).await?;
                (o.clean(), json!({ "clean": o.clean() }))
            }
            Some(Preset::Smoke) => {
                let target = bench.target()?;
                let spec = bench.spec(40, 2, 50.0, 2, 0.5);
                let o = bench.run(&target, spec).await?;
                (o.clean() && o.storm_stragglers == 0, json!({ "clean": o.clean(), "storm_stragglers": o.storm_stragglers }))
            }
            Some(Preset::Fanout) => {
                // Three pairs, each target right after the other; the verdict
                // is the median pair's ratio (single runs on shared cores swing).
                let mut pairs = Vec::new();
                for _ in 0..FANOUT_PAIRS {
                    let redis = bench.run(&TargetSpec::Redis { nodes: 2 }, bench.spec(2000, 1, 100.0, 20, 0.0)).await?;
                    let embedded = bench.run(&TargetSpec::Embedded, bench.spec(2000, 1, 100.0, 20, 0.0)).await?;
                    let ratio = redis.latency_ms.p99 / embedded.latency_ms.p99.max(0.001);
                    pairs.push((ratio, redis, embedded, bench.runs.len() - 2));
                }
                let ok = pairs.iter().all(|(_, r, e, _)| r.clean() && e.clean());
                let ratios: Vec<f64> = pairs.iter().map(|p| p.0).collect();
                let (ratio, redis, embedded, first) = median_by(pairs, |p| p.0).context("no fanout pairs ran")?;
                charted = Some(vec![first, first + 1]);
                (ok, json!({
                    "clean": ok,
                    "p99_redis_ms": redis.latency_ms.p99,
                    "p99_embedded_ms": embedded.latency_ms.p99,
                    "p99_ratio": ratio,
                    "p99_ratios_of_every_pair": ratios,
                    "target_ratio": 1.5,
                }))
            }
            Some(Preset::Saturate) => {
                let mut readers = Vec::new();
                let mut steps = Vec::new();
                let mut median_runs = Vec::new();
                for reader in [load::ReaderKind::Fast, load::ReaderKind::Full] {
                    let mut best = Vec::new();
                    let mut cpu_at_500 = None;
                    for target in [TargetSpec::Redis { nodes: 2 }, TargetSpec::Reference] {
                        let mut clean_best = 0.0;
                        for rate in SATURATE_RATES {
                            // Two runs per step and a third when they disagree:
                            // the step's verdict is the majority, its figures the
                            // median run's. Applied alike to both targets.
                            let mut tries: Vec<(usize, bool, Outcome)> = Vec::new();
                            while tries.len() < 2 || (tries.len() == 2 && tries[0].1 != tries[1].1) {
                                let mut spec = bench.spec(1000, 1, rate, 5, 0.0);
                                spec.reader = reader;
                                let o = bench.run(&target, spec).await?;
                                let pass = o.clean() && o.latency_ms.p99 <= SATURATE_P99_MS;
                                tries.push((bench.runs.len() - 1, pass, o));
                            }
                            let passes = tries.iter().filter(|t| t.1).count();
                            let pass = passes * 2 > tries.len();
                            let p99s: Vec<f64> = tries.iter().map(|t| t.2.latency_ms.p99).collect();
                            let cpus: Vec<Option<f64>> = tries.iter().map(|t| t.2.cpu_seconds_per_million).collect();
                            let (index, _, median) =
                                median_by(tries, |t| t.2.latency_ms.p99).context("no runs at this step")?;
                            if reader == load::ReaderKind::Fast {
                                median_runs.push(index);
                            }
                            steps.push(json!({
                                "reader": reader,
                                "target": target.label(),
                                "rate": rate,
                                "p99_ms_of_each_run": p99s,
                                "cpu_seconds_per_million_of_each_run": cpus,
                                "passed": pass,
                            }));
                            if matches!(target, TargetSpec::Redis { .. }) && rate == 500.0 {
                                cpu_at_500 = median.cpu_seconds_per_million;
                            }
                            if !pass {
                                break;
                            }
                            clean_best = rate;
                        }
                        best.push(clean_best);
                    }
                    let (roomcast, reference) = (best[0], best[1]);
                    readers.push(json!({
                        "reader": reader,
                        "best_clean_rate": { "roomcast": roomcast, "reference": reference },
                        "share_of_reference": roomcast / reference.max(1.0),
                        "cpu_seconds_per_million_at_500": cpu_at_500,
                    }));
                }
                charted = Some(median_runs);
                (true, json!({
                    "readers": readers,
                    "target_share_of_reference": 0.9,
                    "steps": steps,
                }))
            }
            Some(Preset::Broadcast) => {
                let mut rows = Vec::new();
                let mut ok = true;
                for rate in BROADCAST_RATES {
                    let roomcast =
                        bench.run(&TargetSpec::Redis { nodes: 1 }, bench.spec(BROADCAST_SIZE, 1, rate, 10, 0.0)).await?;
                    let reference = bench.run(&TargetSpec::Reference, bench.spec(BROADCAST_SIZE, 1, rate, 10, 0.0)).await?;
                    ok &= roomcast.clean() && reference.clean();
                    rows.push(json!({
                        "rate": rate,
                        "clean": roomcast.clean(),
                        "p99_ms": { "roomcast": roomcast.latency_ms.p99, "reference": reference.latency_ms.p99 },
                        "p99_ratio": roomcast.latency_ms.p99 / reference.latency_ms.p99.max(0.001),
                        "reach_everyone_ms": { "roomcast": roomcast.latency_ms.max, "reference": reference.latency_ms.max },
                        "connects_per_sec": { "roomcast": roomcast.connects_per_sec, "reference": reference.connects_per_sec },
                        "rss_per_connection_bytes": roomcast.rss_per_connection_bytes,
                        "cpu_seconds_per_million": { "roomcast": roomcast.cpu_seconds_per_million, "reference": reference.cpu_seconds_per_million },
                    }));
                }
                let mut big = Vec::new();
                for rate in BROADCAST_RATES {
                    let mut spec = bench.spec(BROADCAST_HUGE, 1, rate, 10, 0.0);
                    spec.processes = BROADCAST_HUGE_NODES;
                    // Measured: over 8 loopback addresses, 100,000 connections
                    // ran out of bindable source ports (a bound socket's port
                    // is chosen before its destination is known) and upgrades
                    // failed past about 50,000; over 64 they all got in.
                    spec.source_ips = BROADCAST_HUGE_SOURCES;
                    let o = bench.run(&TargetSpec::Redis { nodes: BROADCAST_HUGE_NODES }, spec).await?;
                    ok &= o.clean();
                    big.push(json!({
                        "rate": rate,
                        "clean": o.clean(),
                        "p50_ms": o.latency_ms.p50,
                        "p99_ms": o.latency_ms.p99,
                        "reach_everyone_ms": o.latency_ms.max,
                        "connects_per_sec": o.connects_per_sec,
                        "rss_per_connection_bytes": o.rss_per_connection_bytes,
                        "cpu_seconds_per_million": o.cpu_seconds_per_million,
                    }));
                }
                (ok, json!({
                    "clean": ok,
                    "subscribers": BROADCAST_SIZE,
                    "target_p99_ratio": 1.3,
                    "rates": rows,
                    "huge": { "subscribers": BROADCAST_HUGE, "nodes": BROADCAST_HUGE_NODES, "generator_processes": BROADCAST_HUGE_NODES, "rates": big },
                }))
            }
            Some(Preset::Reactions) => {
                let target = target::start(&TargetSpec::Redis { nodes: 2 })?;
                let o = live::reactions(&target, 10_000, 20).await?;
                eprintln!("reactions: {o:?}");
                let ok = o.max_count_error == 0 && o.frames_per_viewer_per_sec <= 4.5;
                (ok, json!({ "outcome": o, "target_frames_per_viewer_per_sec": 4, "target_count_error": 0 }))
            }
            Some(Preset::Audience) => {
                let target = target::start(&TargetSpec::Redis { nodes: 2 })?;
                anyhow::ensure!(!target.redis.is_empty(), "the audience preset needs a spawned Redis");
                let o = live::audience(&target, &target.redis, 10_000, 500, 20).await?;
                eprintln!("audience: {o:?}");
                (true, json!({ "outcome": o }))
            }
            Some(Preset::Idle) => {
                // One connect wave's figure moves by a fifth from run to run
                // (what the allocator keeps of the handshakes): the median of
                // IDLE_RUNS fresh nodes.
                let mut runs = Vec::new();
                for _ in 0..IDLE_RUNS {
                    let o = bench.run(&TargetSpec::Redis { nodes: 1 }, bench.spec(10_000, 1, 0.0, 0, 0.0)).await?;
                    runs.push((bench.runs.len() - 1, o.rss_per_connection_bytes.unwrap_or(f64::NAN)));
                }
                let each: Vec<f64> = runs.iter().map(|r| r.1).collect();
                let (index, median) = median_by(runs, |r| r.1).context("no idle runs")?;
                charted = Some(vec![index]);
                (true, json!({ "rss_per_connection_bytes": median, "rss_per_connection_bytes_of_each_run": each, "target_bytes": 4096 }))
            }
            Some(Preset::Rooms) => {
                let o = bench.run(&TargetSpec::Redis { nodes: 2 }, bench.spec(10_000, 5000, 2000.0, 20, 0.0)).await?;
                (o.clean(), json!({ "clean": o.clean(), "p99_ms": o.latency_ms.p99, "target_p99_ms": 250 }))
            }
            Some(Preset::Cluster) => {
                let mut pairs = Vec::new();
                for _ in 0..CLUSTER_PAIRS {
                    let single =
                        bench.run(&TargetSpec::Redis { nodes: 2 }, bench.spec(4000, 2000, 1000.0, 20, 0.0)).await?;
                    let cluster =
                        bench.run(&TargetSpec::Cluster { nodes: 2 }, bench.spec(4000, 2000, 1000.0, 20, 0.0)).await?;
                    let ratio = cluster.latency_ms.p99 / single.latency_ms.p99.max(0.001);
                    pairs.push((ratio, single, cluster, bench.runs.len() - 2));
                }
                let ok = pairs.iter().all(|(_, s, c, _)| s.clean() && c.clean());
                let ratios: Vec<f64> = pairs.iter().map(|p| p.0).collect();
                let (ratio, single, cluster, first) = median_by(pairs, |p| p.0).context("no cluster pairs ran")?;
                charted = Some(vec![first, first + 1]);
                let mut idle = serde_json::Map::new();
                for (name, spec) in [("single", TargetSpec::Redis { nodes: 2 }), ("cluster", TargetSpec::Cluster { nodes: 2 })] {
                    let target = target::start(&spec)?;
                    let o = live::audience(&target, &target.redis, 10_000, 500, 20).await?;
                    eprintln!("audience on {name}: {o:?}");
                    idle.insert(name.into(), json!(o));
                }
                (ok && ratio <= 1.5, json!({
                    "clean": ok,
                    "p99_single_ms": single.latency_ms.p99,
                    "p99_cluster_ms": cluster.latency_ms.p99,
                    "p99_ratio": ratio,
                    "p99_ratios": ratios,
                    "target_p99_ratio": 1.5,
                    "cpu_single_s_per_million": single.cpu_seconds_per_million,
                    "cpu_cluster_s_per_million": cluster.cpu_seconds_per_million,
                    "watched_rooms": idle,
                }))
            }
            Some(Preset::CatchUp) => catchup::run().await?,
            Some(Preset::ResumeStorm) => {
                let o = bench.run(&TargetSpec::Redis { nodes: 2 }, bench.spec(2000, 1, 500.0, 20, 1.0)).await?;
                (o.clean() && o.storm_stragglers == 0, json!({ "clean": o.clean(), "caught_up_ms": o.storm_caught_up_ms, "stragglers": o.storm_stragglers, "target_ms": 3000 }))
            }
        };
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

#[cfg(test)]
mod tests {
    use super::median_by;

    #[test]
    fn median_by_takes_the_middle_by_key_and_the_lower_middle_of_an_even_count() {
        assert_eq!(median_by(vec![(0, 3.0), (1, 1.0), (2, 2.0)], |x| x.1), Some((2, 2.0)));
        assert_eq!(median_by(vec![(0, 9.0), (1, 1.0)], |x| x.1), Some((1, 1.0)));
        assert_eq!(median_by(Vec::<(u8, f64)>::new(), |x| x.1), None);
    }
}
