//! Reports: JSON for machines, SVG line charts for people.

use std::fmt::Write as _;

use serde::Serialize;

use super::load::{LoadSpec, Outcome};

/// One measured run in a report.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// What was driven.
    pub target: String,
    /// The load.
    pub spec: LoadSpec,
    /// What was measured.
    pub outcome: Outcome,
}

/// A preset's or ad-hoc invocation's full report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Preset name, or "custom".
    pub preset: String,
    /// Every run, in order.
    pub runs: Vec<Run>,
    /// The preset's headline figures.
    pub summary: serde_json::Value,
}

/// One line of a chart.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points (x, y).
    pub points: Vec<(f64, f64)>,
}

const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 260.0;
const MARGIN: f64 = 56.0;

/// Draws one chart panel at vertical offset `top`.
fn panel(svg: &mut String, top: f64, title: &str, x_label: &str, y_label: &str, series: &[Series]) {
    let points = series.iter().flat_map(|s| s.points.iter());
    let (x_max, y_max) = points.fold((1e-9f64, 1e-9f64), |(x, y), (px, py)| (x.max(*px), y.max(*py)));
    let (x_max, y_max) = (x_max * 1.02, y_max * 1.1);
    let plot_w = WIDTH - 2.0 * MARGIN;
    let plot_h = HEIGHT - 2.0 * MARGIN;
    let sx = |x: f64| MARGIN + x / x_max * plot_w;
    let sy = |y: f64| top + MARGIN + plot_h - y / y_max * plot_h;
    let _ = write!(svg, r#"<text x="{}" y="{}" font-size="14" font-weight="bold">{title}</text>"#, MARGIN, top + 24.0);
    let _ = write!(
        svg,
        r##"<rect x="{MARGIN}" y="{}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##,
        top + MARGIN
    );
    for i in 0..=4 {
        let y = y_max * i as f64 / 4.0;
        let (right, py, lx, ly, text) = (MARGIN + plot_w, sy(y), MARGIN - 4.0, sy(y) + 3.0, short(y));
        let _ = write!(
            svg,
            r##"<line x1="{MARGIN}" x2="{right}" y1="{py}" y2="{py}" stroke="#eee"/><text x="{lx}" y="{ly}" font-size="10" text-anchor="end">{text}</text>"##
        );
        let x = x_max * i as f64 / 4.0;
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" font-size="10" text-anchor="middle">{}</text>"#,
            sx(x),
            top + MARGIN + plot_h + 14.0,
            short(x)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{x_label}</text><text x="14" y="{}" font-size="11" transform="rotate(-90 14 {})" text-anchor="middle">{y_label}</text>"#,
        MARGIN + plot_w / 2.0,
        top + HEIGHT - 14.0,
        top + MARGIN + plot_h / 2.0,
        top + MARGIN + plot_h / 2.0
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = s.points.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
        let _ = write!(svg, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, path.join(" "));
        for (x, y) in &s.points {
            let _ = write!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#, sx(*x), sy(*y));
        }
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" font-size="11" fill="{color}">{}</text>"#,
            WIDTH - MARGIN - 200.0,
            top + MARGIN + 14.0 + 14.0 * i as f64,
            escape(&s.name)
        );
    }
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// An SVG with one panel per `(title, x label, y label, series)`.
pub fn chart(panels: &[(&str, &str, &str, Vec<Series>)]) -> String {
    let height = HEIGHT * panels.len() as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>"#
    );
    for (i, (title, x, y, series)) in panels.iter().enumerate() {
        panel(&mut svg, HEIGHT * i as f64, title, x, y, series);
    }
    svg.push_str("</svg>\n");
    svg
}

/// Throughput and latency percentiles over time, one line per run.
pub fn time_chart(runs: &[Run]) -> String {
    let line = |f: &dyn Fn(&super::load::Second) -> f64, run: &Run| Series {
        name: run.target.clone(),
        points: run.outcome.series.iter().map(|s| (s.t as f64, f(s))).collect(),
    };
    let deliveries = runs.iter().map(|r| line(&|s| s.deliveries as f64, r)).collect();
    let mut latency = Vec::new();
    for r in runs {
        let mut p50 = line(&|s| s.p50_ms, r);
        p50.name = format!("p50 {}", r.target);
        let mut p99 = line(&|s| s.p99_ms, r);
        p99.name = format!("p99 {}", r.target);
        latency.push(p50);
        latency.push(p99);
    }
    chart(&[
        ("Deliveries per second", "seconds", "deliveries/s", deliveries),
        ("End-to-end latency", "seconds", "ms", latency),
    ])
}

/// Delivered rate and p99 against offered rate, one line per target.
pub fn sweep_chart(targets: &[(String, Vec<&Run>)]) -> String {
    let delivered = targets
        .iter()
        .map(|(name, runs)| Series {
            name: name.clone(),
            points: runs.iter().map(|r| (r.spec.rate, r.outcome.delivered_per_sec)).collect(),
        })
        .collect();
    let p99 = targets
        .iter()
        .map(|(name, runs)| Series {
            name: name.clone(),
            points: runs.iter().map(|r| (r.spec.rate, r.outcome.latency_ms.p99)).collect(),
        })
        .collect();
    chart(&[
        ("Delivered per second vs offered publish rate", "offered msg/s", "deliveries/s", delivered),
        ("p99 latency vs offered publish rate", "offered msg/s", "p99 ms", p99),
    ])
}
