//! One harness session: its flags, its progress bar, and every run it made
//! (for the report and the chart).

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::ProgressBar;

use crate::load::{self, Outcome};
use crate::report::Run;
use crate::spec::{LoadSpec, Progress, ReaderKind, Shape};
use crate::target::{self, TargetSpec};
use crate::BenchArgs;

/// The harness's state across the runs of one preset.
pub(crate) struct Bench {
    pub(crate) args: BenchArgs,
    pub(crate) bar: ProgressBar,
    pub(crate) runs: Vec<Run>,
}

impl Bench {
    /// The load of `shape`, with the session's payload size, sources,
    /// generator processes and reader, and a room prefix of its own.
    pub(crate) fn spec(&self, shape: Shape) -> LoadSpec {
        LoadSpec {
            subscribers: shape.subscribers,
            rooms: shape.rooms,
            rate: shape.rate,
            size: self.args.size,
            duration: Duration::from_secs(shape.seconds),
            storm: shape.storm,
            source_ips: self.args.source_ips,
            room_prefix: format!("bench-{}-{}-", std::process::id(), self.runs.len()),
            processes: self.args.processes,
            reader: self.args.reader,
        }
    }

    /// The deployment the flags name: given URLs, or spawned nodes.
    pub(crate) fn target(&self) -> anyhow::Result<TargetSpec> {
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
    pub(crate) async fn run(&mut self, target: &TargetSpec, spec: LoadSpec) -> anyhow::Result<Outcome> {
        let deployment = target::start(target)?;
        let measured = deployment.measured();
        let measure = || (deployment.cpu_seconds(), deployment.node_rss());
        let bar = self.bar.clone();
        let label = target.label();
        bar.set_prefix(label.clone());
        let progress: Progress = Arc::new(move |phase: &str, done: u64, total: u64, rate: f64| {
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
        if spec.reader == ReaderKind::Full { "full" } else { "fast" },
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

/// The median item by `key` (the lower middle for an even count); `None` when empty.
pub(crate) fn median_by<T>(mut items: Vec<T>, key: impl Fn(&T) -> f64) -> Option<T> {
    items.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let middle = items.len().checked_sub(1)? / 2;
    Some(items.swap_remove(middle))
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
