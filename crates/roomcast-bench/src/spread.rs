//! Subscribers spread over several generator processes.
//!
//! A process here may hold at most 20,000 open files, so 100,000
//! subscribers need several. The coordinating process spawns this binary's
//! hidden `bench-subscribers` command once per share; each, told `connect`,
//! connects and subscribes its share and says `ready` (one share at a time), and when told `drain <expected>`
//! waits for that many deliveries (or 5 s of quiet) and answers one JSON
//! line: its counts and its latency histogram. Latencies are comparable
//! across processes because every one reads the machine's wall clock.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::spec::{LoadSpec, Progress, ReaderKind};
use crate::subscribers::{self, histogram, Shared};

/// How long a share may take to connect and subscribe.
const CONNECT_PATIENCE: Duration = Duration::from_secs(180);
/// A share stops waiting for deliveries after this long without one.
const QUIET: Duration = Duration::from_secs(5);

/// `roomcast bench-subscribers` flags (hidden; the harness spawns it).
#[derive(Clone, Debug, Args)]
pub struct SubscriberArgs {
    /// Node addresses (repeatable), in the coordinator's order.
    #[arg(long = "node", required = true)]
    pub nodes: Vec<SocketAddr>,
    /// Index of this share's first subscriber.
    #[arg(long)]
    pub first: usize,
    /// Subscribers in this share.
    #[arg(long)]
    pub count: usize,
    /// Rooms of the run.
    #[arg(long)]
    pub rooms: usize,
    /// Room name prefix of the run.
    #[arg(long)]
    pub room_prefix: String,
    /// Loopback source addresses to spread over.
    #[arg(long)]
    pub source_ips: u8,
    /// How subscribers read.
    #[arg(long, value_enum, default_value_t = ReaderKind::Fast)]
    pub reader: ReaderKind,
}

/// What one share measured.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ShareReport {
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    gaps: u64,
    /// Latency histogram as (µs, count) pairs.
    latency: Vec<(u64, u64)>,
}

/// Every share's reports together.
pub(crate) struct Reports {
    pub(crate) received: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) gaps: u64,
    pub(crate) latency: Histogram<u64>,
}

impl Default for Reports {
    fn default() -> Self {
        Reports { received: 0, duplicates: 0, out_of_order: 0, gaps: 0, latency: histogram() }
    }
}

/// One spawned share.
struct Share {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    range: std::ops::Range<usize>,
}

/// The spawned shares of one run.
pub(crate) struct Workers {
    shares: Vec<Share>,
    rooms: usize,
}

impl Workers {
    /// Spawns `spec.processes` shares holding all of `spec.subscribers`.
    pub(crate) async fn spawn(spec: &LoadSpec, nodes: &[SocketAddr], storm_count: usize) -> anyhow::Result<Workers> {
        anyhow::ensure!(storm_count == 0, "a resume storm runs in one generator process only");
        let per = spec.subscribers.div_ceil(spec.processes.max(1));
        let mut shares = Vec::new();
        for first in (0..spec.subscribers).step_by(per.max(1)) {
            let count = per.min(spec.subscribers - first);
            let mut command = tokio::process::Command::new(std::env::current_exe()?);
            command.arg("bench-subscribers");
            for node in nodes {
                command.arg("--node").arg(node.to_string());
            }
            command
                .args(["--first", &first.to_string(), "--count", &count.to_string()])
                .args(["--rooms", &spec.rooms.max(1).to_string(), "--room-prefix", &spec.room_prefix])
                .args(["--source-ips", &spec.source_ips.to_string()])
                .args(["--reader", if spec.reader == ReaderKind::Full { "full" } else { "fast" }])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            let mut child = command.spawn().context("spawning a subscriber process")?;
            let stdin = child.stdin.take().context("share stdin")?;
            let stdout = child.stdout.take().context("share stdout")?;
            shares.push(Share { child, stdin, lines: BufReader::new(stdout).lines(), range: first..first + count });
        }
        Ok(Workers { shares, rooms: spec.rooms.max(1) })
    }

    /// Has each share connect and subscribe in turn, and waits until all
    /// have: one connect wave at a time, the way a single generator's would
    /// come (measured: six shares connecting at once had nodes close
    /// connections mid-upgrade on two cores).
    pub(crate) async fn ready(&mut self, progress: &Progress) -> anyhow::Result<()> {
        let total: usize = self.shares.iter().map(|s| s.range.len()).sum();
        let mut done = 0;
        for share in &mut self.shares {
            share.stdin.write_all(b"connect\n").await?;
            share.stdin.flush().await?;
            let line = tokio::time::timeout(CONNECT_PATIENCE, share.lines.next_line())
                .await
                .context("a subscriber process did not get its share in")??
                .context("a subscriber process ended before it was ready")?;
            if line != "ready" {
                bail!("a subscriber process said {line:?}");
            }
            done += share.range.len();
            progress("connecting", done as u64, total as u64, 0.0);
        }
        Ok(())
    }

    /// Tells every share how many deliveries to expect (from the acked
    /// publishes per room) and gathers what they received.
    pub(crate) async fn drain(mut self, acked: &[u64]) -> anyhow::Result<Reports> {
        for share in &mut self.shares {
            let expected: u64 = share.range.clone().map(|i| acked.get(i % self.rooms).copied().unwrap_or(0)).sum();
            share.stdin.write_all(format!("drain {expected}\n").as_bytes()).await?;
            share.stdin.flush().await?;
        }
        let mut reports = Reports::default();
        for share in &mut self.shares {
            let line = share.lines.next_line().await?.context("a subscriber process ended without a report")?;
            let report: ShareReport = serde_json::from_str(&line).context("a subscriber process's report")?;
            reports.received += report.received;
            reports.duplicates += report.duplicates;
            reports.out_of_order += report.out_of_order;
            reports.gaps += report.gaps;
            for (value, count) in report.latency {
                let _ = reports.latency.record_n(value.max(1), count);
            }
            let _ = share.child.wait().await;
        }
        Ok(reports)
    }
}

/// Runs one share (the `bench-subscribers` command).
pub fn subscribers_main(args: SubscriberArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(share(args))
}

async fn share(args: SubscriberArgs) -> anyhow::Result<()> {
    let spec = LoadSpec {
        subscribers: args.first + args.count,
        rooms: args.rooms,
        rate: 0.0,
        size: 0,
        duration: Duration::ZERO,
        storm: 0.0,
        source_ips: args.source_ips,
        room_prefix: args.room_prefix.clone(),
        processes: 1,
        reader: args.reader,
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let go = lines.next_line().await?.context("the coordinator went away")?;
    anyhow::ensure!(go == "connect", "expected connect, got {go:?}");
    let shared = Shared::new(1);
    let subscribed = Arc::new(AtomicUsize::new(0));
    let range = args.first..args.first + args.count;
    let (mut tasks, cells) = subscribers::spawn_subscribers(&spec, &args.nodes, range, 0, &shared, &subscribed).await;
    let deadline = Instant::now() + CONNECT_PATIENCE;
    while subscribed.load(std::sync::atomic::Ordering::Acquire) < args.count {
        anyhow::ensure!(Instant::now() < deadline, "only {subscribed:?} of this share's subscribers got in");
        for task in tasks.iter_mut().filter(|t| t.is_finished()) {
            task.await.context("subscriber task")??;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await?;
    stdout.flush().await?;

    let line = lines.next_line().await?.context("the coordinator went away")?;
    let expected: u64 = line.strip_prefix("drain ").and_then(|n| n.trim().parse().ok()).context("expected drain N")?;
    let mut last = (shared.received(), Instant::now());
    while shared.received() < expected {
        let now = shared.received();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > QUIET {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for task in &tasks {
        task.abort();
    }
    let mut report = ShareReport::default();
    for cell in &cells {
        let (received, duplicates, out_of_order, gaps) = cell.counts();
        report.received += received;
        report.duplicates += duplicates;
        report.out_of_order += out_of_order;
        report.gaps += gaps;
    }
    report.latency = shared.latency().iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect();
    stdout.write_all(format!("{}\n", serde_json::to_string(&report)?).as_bytes()).await?;
    stdout.flush().await?;
    Ok(())
}
