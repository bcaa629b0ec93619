//! Reports: JSON for machines, SVG line charts for people.

use plotters::coord::Shift;
use plotters::prelude::*;
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

/// Width of a chart, and height of each of its panels, in pixels.
const WIDTH: u32 = 1000;
const PANEL_HEIGHT: u32 = 300;
/// The column beside each plot that holds its legend.
const LEGEND_WIDTH: u32 = 320;

/// Draws one panel: round ticks with units on both axes, one coloured line
/// per series with its points marked, and the legend beside the plot area
/// (never over the data).
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), String> {
    let points = series.iter().flat_map(|s| s.points.iter());
    let (x_max, y_max) = points.fold((1e-9f64, 1e-9f64), |(x, y), (px, py)| (x.max(*px), y.max(*py)));
    // The legend gets a column of its own on the right.
    let (plot, legend) = area.split_horizontally(WIDTH - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max * 1.02, 0.0..y_max * 1.1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&|v| short(*v))
        .y_label_formatter(&|v| short(*v))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        chart.draw_series(s.points.iter().map(|p| Circle::new(*p, 2, color.filled()))).map_err(|e| e.to_string())?;
        let y = 48 + 18 * i as i32;
        legend.draw(&Rectangle::new([(8, y - 5), (24, y - 3)], color.filled())).map_err(|e| e.to_string())?;
        legend
            .draw(&Text::new(s.name.clone(), (30, y - 10), ("sans-serif", 12).into_font().color(&BLACK)))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A value as a tick label: whole numbers where they are round, k and M
/// for thousands and millions.
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1_000_000.0 {
        format!("{}M", trim(v / 1_000_000.0))
    } else if a >= 1_000.0 {
        format!("{}k", trim(v / 1_000.0))
    } else {
        trim(v)
    }
}

/// At most two decimals, without trailing zeros.
fn trim(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// An SVG with one panel per `(title, x label, y label, series)`.
pub fn chart(panels: &[(&str, &str, &str, Vec<Series>)]) -> String {
    let mut svg = String::new();
    let height = PANEL_HEIGHT * panels.len().max(1) as u32;
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        let drawn = root.fill(&WHITE).map_err(|e| e.to_string()).and_then(|()| {
            for (area, (title, x, y, series)) in root.split_evenly((panels.len().max(1), 1)).iter().zip(panels) {
                panel(area, title, x, y, series)?;
            }
            root.present().map_err(|e| e.to_string())
        });
        if let Err(e) = drawn {
            tracing::warn!(cause = %e, "could not draw the chart");
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_charts_draw() {
        assert_eq!(short(3_172_000.0), "3.17M");
        assert_eq!(short(2_500.0), "2.5k");
        assert_eq!(short(765.0), "765");
        assert_eq!(short(0.5), "0.5");
        assert_eq!(short(20.0), "20");
        let series = vec![
            Series { name: "p99 roomcast".into(), points: vec![(0.0, 10.0), (10.0, 40.0), (20.0, 25.0)] },
            Series { name: "p99 reference".into(), points: vec![(0.0, 5.0), (10.0, 20.0), (20.0, 15.0)] },
        ];
        let svg = chart(&[("Latency", "seconds", "ms", series)]);
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.contains("polyline") && svg.contains("p99 reference") && svg.contains("seconds"));
        if let Ok(path) = std::env::var("ROOMCAST_CHART_SAMPLE") {
            std::fs::write(path, &svg).unwrap();
        }
    }
}
