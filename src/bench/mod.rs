//! `roomcast bench`: the bundled load-test harness.
//!
//! It drives a deployment (spawned on loopback, or given by `--url`) with N
//! subscribers over R rooms and open-loop publishers, checks every delivery
//! (loss, duplicates and reordering fail the run), and reports throughput,
//! end-to-end latency (HDR histogram), server CPU per million deliveries and
//! RSS per connection, as JSON and as an SVG chart. Named presets reproduce
//! the figures in `docs/benchmarks.md`.

pub mod load;
pub mod reader;
pub mod reference;
pub mod report;
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
    /// 1 room, 1,000 subscribers over 2 nodes, rate raised until loss or p99 > 250 ms; and the bare reference.
    Saturate,
    /// 10,000 idle subscribed connections on one node: RSS per connection.
    Idle,
    /// 5,000 rooms with 2 subscribers each, 2,000 msg/s over them, 20 s.
    Rooms,
    /// 2,000 subscribers drop at once mid-run and resume with their last IDs, 500 msg/s.
    ResumeStorm,
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
        "{label}: {} subs, {} rooms, {} msg/s -> {:.0} deliveries/s, lost {} dup {} ooo {} gaps {}, p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.1} ms{extra}{}",
        spec.subscribers,
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

/// Offered rates the saturate preset steps through.
const SATURATE_RATES: [f64; 11] = [100.0, 250.0, 500.0, 600.0, 800.0, 1000.0, 1250.0, 1500.0, 2000.0, 2500.0, 3000.0];
/// A saturate step fails above this p99.
const SATURATE_P99_MS: f64 = 250.0;

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
                let redis = bench.run(&TargetSpec::Redis { nodes: 2 }, bench.spec(2000, 1, 100.0, 20, 0.0)).await?;
                let embedded = bench.run(&TargetSpec::Embedded, bench.spec(2000, 1, 100.0, 20, 0.0)).await?;
                let ratio = redis.latency_ms.p99 / embedded.latency_ms.p99.max(0.001);
                let ok = redis.clean() && embedded.clean();
                (ok, json!({ "clean": ok, "p99_redis_ms": redis.latency_ms.p99, "p99_embedded_ms": embedded.latency_ms.p99, "p99_ratio": ratio, "target_ratio": 1.5 }))
            }
            Some(Preset::Saturate) => {
                let mut best = Vec::new();
                let mut cpu_at_500 = None;
                for target in [TargetSpec::Redis { nodes: 2 }, TargetSpec::Reference] {
                    let mut clean_best = 0.0;
                    for rate in SATURATE_RATES {
                        let o = bench.run(&target, bench.spec(1000, 1, rate, 5, 0.0)).await?;
                        if matches!(target, TargetSpec::Redis { .. }) && rate == 500.0 {
                            cpu_at_500 = o.cpu_seconds_per_million;
                        }
                        if !o.clean() || o.latency_ms.p99 > SATURATE_P99_MS {
                            break;
                        }
                        clean_best = rate;
                    }
                    best.push((target.label(), clean_best));
                }
                let (roomcast, reference) = (best[0].1, best[1].1);
                (true, json!({
                    "best_clean_rate": { "roomcast": roomcast, "reference": reference },
                    "share_of_reference": roomcast / reference.max(1.0),
                    "multiple_of_socket_io_40": roomcast / 40.0,
                    "cpu_seconds_per_million_at_500": cpu_at_500,
                }))
            }
            Some(Preset::Idle) => {
                let o = bench.run(&TargetSpec::Redis { nodes: 1 }, bench.spec(10_000, 1, 0.0, 0, 0.0)).await?;
                (true, json!({ "rss_per_connection_bytes": o.rss_per_connection_bytes, "target_bytes": 4096 }))
            }
            Some(Preset::Rooms) => {
                let o = bench.run(&TargetSpec::Redis { nodes: 2 }, bench.spec(10_000, 5000, 2000.0, 20, 0.0)).await?;
                (o.clean(), json!({ "clean": o.clean(), "p99_ms": o.latency_ms.p99, "target_p99_ms": 250 }))
            }
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
        let svg = if preset == Some(Preset::Saturate) {
            let mut groups: Vec<(String, Vec<&Run>)> = Vec::new();
            for run in &report.runs {
                match groups.iter_mut().find(|(t, _)| *t == run.target) {
                    Some((_, runs)) => runs.push(run),
                    None => groups.push((run.target.clone(), vec![run])),
                }
            }
            report::sweep_chart(&groups)
        } else {
            report::time_chart(&report.runs)
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
