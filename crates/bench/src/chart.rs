//! The PNG chart: the pipeline run's lateness distribution (CDF) and its decisions per
//! second over time on top; below, when those runs were made, the sustained run's
//! lateness per window and the worker's memory while a million closes were scheduled.
//!
//! Text needs a TrueType font: the first of a few common system fonts (or `--chart-font`)
//! is loaded at run time; without one the chart is drawn without any text (the JSON
//! carries the numbers).

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::pending::PendingResult;
use super::report::Report;
use super::sustained::SustainedResult;

/// Size of one panel in pixels (two per row).
const PANEL: (u32, u32) = (600, 450);
/// Fonts tried when none is given.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
];
/// Largest font file read (a CJK font is some 20 MB).
const MAX_FONT_BYTES: u64 = 64 * 1024 * 1024;
/// The family name fonts are registered under.
const FAMILY: &str = "sans-serif";

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

/// Draws the chart at `path`; returns whether it has text.
pub fn draw(path: &Path, font: Option<&str>, report: &Report) -> anyhow::Result<bool> {
    let text = load_font(font);
    let second_row = report.sustained.is_some() || report.pending.is_some();
    let rows = if second_row { 2 } else { 1 };
    let root = BitMapBackend::new(path, (PANEL.0 * 2, PANEL.1 * rows)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let panels = root.split_evenly((rows as usize, 2));
    lateness_cdf(&panels[0], &report.pipeline.lateness_quantiles_ms, text)?;
    throughput(
        &panels[1],
        &report.pipeline.decisions_per_second_series,
        text,
    )?;
    if let Some(s) = &report.sustained {
        sustained_windows(&panels[2], s, text)?;
    }
    if let Some(p) = &report.pending {
        pending_memory(&panels[3], p, text)?;
    }
    root.present().map_err(plot_error)?;
    Ok(text)
}

/// Registers a font for [`FAMILY`]; false when none could be loaded.
fn load_font(choice: Option<&str>) -> bool {
    let candidates: Vec<&str> = match choice {
        Some("none") => return false,
        Some(path) => vec![path],
        None => FONT_CANDIDATES.to_vec(),
    };
    for path in candidates {
        // A path from `--font` is outside input: a FIFO or a huge file is skipped.
        let Ok(bytes) = order_closer_core::files::read_capped(Path::new(path), MAX_FONT_BYTES)
        else {
            continue;
        };
        // Registered fonts live for the whole process; this happens once per run.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        if plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).is_ok() {
            return true;
        }
    }
    false
}

/// Lateness CDF from the quantiles p0..p100.
fn lateness_cdf(area: &Area<'_>, quantiles: &[f64], text: bool) -> anyhow::Result<()> {
    let max_x = quantiles.last().copied().unwrap_or(1.0).max(1.0) * 1.02;
    let mut builder = ChartBuilder::on(area);
    builder.margin(20);
    if text {
        builder
            .caption("pipeline: lateness CDF", (FAMILY, 22))
            .x_label_area_size(45)
            .y_label_area_size(55);
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..max_x, 0f64..1.0)
        .map_err(plot_error)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("ms after the deadline")
            .y_desc("share decided")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .label_style((FAMILY, 14));
    }
    mesh.draw().map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new(
            quantiles
                .iter()
                .enumerate()
                .map(|(k, v)| (*v, k as f64 / 100.0)),
            BLUE.stroke_width(2),
        ))
        .map_err(plot_error)?;
    Ok(())
}

/// Decisions per second, one bar per second since the first decision.
fn throughput(area: &Area<'_>, series: &[u32], text: bool) -> anyhow::Result<()> {
    let seconds = series.len().max(1) as u32;
    let max_y = series.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut builder = ChartBuilder::on(area);
    builder.margin(20);
    if text {
        builder
            .caption("pipeline: decisions per second", (FAMILY, 22))
            .x_label_area_size(45)
            .y_label_area_size(55);
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..f64::from(seconds), 0f64..max_y)
        .map_err(plot_error)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds since the first decision")
            .y_desc("decisions")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FAMILY, 14));
    }
    mesh.draw().map_err(plot_error)?;
    chart
        .draw_series(series.iter().enumerate().map(|(s, n)| {
            let x = s as f64;
            Rectangle::new([(x + 0.05, 0.0), (x + 0.95, f64::from(*n))], GREEN.filled())
        }))
        .map_err(plot_error)?;
    Ok(())
}

/// Sustained run: p50 and p99 lateness of each window.
fn sustained_windows(area: &Area<'_>, s: &SustainedResult, text: bool) -> anyhow::Result<()> {
    let end = s
        .windows
        .last()
        .map_or(1.0, |w| w.start_seconds + 10.0)
        .max(1.0);
    let max_y = s
        .windows
        .iter()
        .map(|w| w.lateness_ms.p99)
        .fold(1.0, f64::max)
        * 1.1;
    let mut builder = ChartBuilder::on(area);
    builder.margin(20);
    if text {
        builder
            .caption(
                format!("sustained {:.0}/s: lateness per 10 s", s.achieved_rate),
                (FAMILY, 22),
            )
            .x_label_area_size(45)
            .y_label_area_size(55);
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..end, 0f64..max_y)
        .map_err(plot_error)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds into the run (by deadline)")
            .y_desc("ms after the deadline")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FAMILY, 14));
    }
    mesh.draw().map_err(plot_error)?;
    for (color, pick) in [
        (
            BLUE,
            (|w: &super::sustained::Window| w.lateness_ms.p50) as fn(&_) -> f64,
        ),
        (RED, |w: &super::sustained::Window| w.lateness_ms.p99),
    ] {
        let series = chart
            .draw_series(LineSeries::new(
                s.windows.iter().map(|w| (w.start_seconds + 5.0, pick(w))),
                color.stroke_width(2),
            ))
            .map_err(plot_error)?;
        if text {
            let name = if color == BLUE { "p50" } else { "p99" };
            series
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    if text {
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
    }
    Ok(())
}

/// Pending run: worker RSS over time (left axis) while the outbox empties into the tiers
/// (closes scheduled so far, right axis).
fn pending_memory(area: &Area<'_>, p: &PendingResult, text: bool) -> anyhow::Result<()> {
    let end = p.samples.last().map_or(1.0, |s| s.seconds).max(1.0);
    let max_rss = p
        .samples
        .iter()
        .map(|s| s.worker_rss_mib)
        .fold(p.worker_rss_start_mib, f64::max)
        .max(1.0);
    let total = p.orders.max(1) as f64;
    let mut builder = ChartBuilder::on(area);
    builder.margin(20);
    if text {
        builder
            .caption(
                format!("{} closes scheduled: worker memory", p.orders),
                (FAMILY, 22),
            )
            .x_label_area_size(45)
            .y_label_area_size(55)
            .right_y_label_area_size(60);
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..end, 0f64..max_rss * 1.5)
        .map_err(plot_error)?
        .set_secondary_coord(0f64..end, 0f64..total * 1.05);
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds")
            .y_desc("worker RSS MiB")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FAMILY, 14));
    }
    mesh.draw().map_err(plot_error)?;
    if text {
        chart
            .configure_secondary_axes()
            .y_desc("closes scheduled")
            .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
            .label_style((FAMILY, 14))
            .draw()
            .map_err(plot_error)?;
    }
    let rss = chart
        .draw_series(LineSeries::new(
            p.samples.iter().map(|s| (s.seconds, s.worker_rss_mib)),
            RED.stroke_width(2),
        ))
        .map_err(plot_error)?;
    if text {
        rss.label("worker RSS (left)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    let scheduled = chart
        .draw_secondary_series(LineSeries::new(
            p.samples
                .iter()
                .map(|s| (s.seconds, (s.written as i64 - s.outbox).max(0) as f64)),
            GREEN.stroke_width(2),
        ))
        .map_err(plot_error)?;
    if text {
        scheduled
            .label("closes scheduled (right)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FAMILY, 14))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
    }
    Ok(())
}
