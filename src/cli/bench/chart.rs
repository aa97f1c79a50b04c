//! The PNG chart: the pipeline run's lateness distribution (CDF) on the left, its
//! decisions per second over time on the right.
//!
//! Text needs a TrueType font: the first of a few common system fonts (or `--chart-font`)
//! is loaded at run time; without one the chart is drawn without any text (the JSON
//! carries the numbers).

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::report::Report;

/// Image size in pixels.
const SIZE: (u32, u32) = (1200, 500);
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
/// The family name fonts are registered under.
const FAMILY: &str = "sans-serif";

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

/// Draws the chart at `path`; returns whether it has text.
pub fn draw(path: &Path, font: Option<&str>, report: &Report) -> anyhow::Result<bool> {
    let text = load_font(font);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    lateness_cdf(&left, &report.pipeline.lateness_quantiles_ms, text)?;
    throughput(&right, &report.pipeline.decisions_per_second_series, text)?;
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
        let Ok(bytes) = std::fs::read(path) else {
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
