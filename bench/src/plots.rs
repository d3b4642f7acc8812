//! SVG plots of the results (plotters, no font or image libraries).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::{
    flows::Direction,
    relays::Relay,
    report::{LatencyRow, ThroughputRow},
};

const SIZE: (u32, u32) = (900, 480);

fn colour(relay: Relay) -> RGBColor {
    match relay {
        Relay::XdpOffload => RGBColor(0x1f, 0x77, 0xb4),
        Relay::TcOffload => RGBColor(0x94, 0x67, 0xbd),
        Relay::Userspace => RGBColor(0xff, 0x7f, 0x0e),
        Relay::Coturn => RGBColor(0xd6, 0x27, 0x28),
        Relay::NodeTurnx => RGBColor(0x17, 0xbe, 0xcf),
        Relay::NodeCoturn => RGBColor(0xe3, 0x77, 0xc2),
        Relay::KernelForwarding => RGBColor(0x2c, 0xa0, 0x2c),
        Relay::XdpRedirect => RGBColor(0x7f, 0x7f, 0x7f),
        Relay::XdpForward => RGBColor(0xbc, 0xbd, 0x22),
    }
}

fn plot_error(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a plot: {err}")
}

/// One relay's measurements as a line with a dot at each point, in the
/// relay's colour and under its name in the legend.
fn draw_points<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    relay: Relay,
    mut points: Vec<(f64, f64)>,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let style = colour(relay);
    chart
        .draw_series(LineSeries::new(points.clone(), style.stroke_width(2)))
        .map_err(plot_error)?
        .label(relay.label())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    chart
        .draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, style.filled())),
        )
        .map_err(plot_error)?;
    Ok(())
}

/// Packets per CPU-second against payload size, one panel per direction.
pub fn throughput(path: &Path, rows: &[ThroughputRow]) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let panels = root.split_evenly((1, 2));
    // Log scale: coturn and the XDP path differ by more than an order of
    // magnitude.
    let per_cpu = rows.iter().map(|r| r.pps_per_cpu().median / 1e6);
    let top = per_cpu.clone().fold(0.1, f64::max) * 2.0;
    let bottom = per_cpu.fold(top, |low, v| if v > 0.0 { low.min(v) } else { low }) / 2.0;
    let max_size = rows.iter().map(|r| r.size).max().unwrap_or(1) as f64 * 1.05;
    for (panel, direction) in panels.iter().zip([Direction::ToPod, Direction::ToClient]) {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("relayed Mpps per CPU-second, {}", direction.label()),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..max_size, (bottom..top).log_scale())
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("payload bytes")
            .y_desc("Mpps per CPU-s")
            .draw()
            .map_err(plot_error)?;
        for relay in Relay::ALL {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.relay == relay && r.direction == direction && r.bindings == 1)
                .map(|r| (r.size as f64, (r.pps_per_cpu().median / 1e6).max(bottom)))
                .collect();
            draw_points(&mut chart, relay, points)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)
}

/// Distribution of idle round-trip times: percentile against microseconds.
pub fn latency(path: &Path, rows: &[LatencyRow]) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let right = rows
        .iter()
        .map(|r| crate::report::percentile(&r.idle, 99.9).median)
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("round-trip time, idle (cumulative)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..right, 0f64..100f64)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("µs")
        .y_desc("% of round trips")
        .draw()
        .map_err(plot_error)?;
    for row in rows {
        // Every run's round trips together.
        let mut samples: Vec<f64> = row
            .idle
            .iter()
            .flat_map(|r| r.micros.iter().copied())
            .collect();
        samples.sort_by(f64::total_cmp);
        let step = (samples.len() / 500).max(1);
        let points: Vec<(f64, f64)> = samples
            .iter()
            .enumerate()
            .step_by(step)
            .map(|(i, &v)| (v.min(right), 100.0 * (i + 1) as f64 / samples.len() as f64))
            .collect();
        let style = colour(row.relay);
        chart
            .draw_series(LineSeries::new(points, style.stroke_width(2)))
            .map_err(plot_error)?
            .label(row.relay.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)
}

/// Relay-core nanoseconds per packet against bindings (log scale).
pub fn bindings(path: &Path, rows: &[ThroughputRow]) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let selected: Vec<&ThroughputRow> = rows
        .iter()
        .filter(|r| r.direction == Direction::ToPod && r.size == 64)
        .collect();
    let most = selected
        .iter()
        .map(|r| r.bindings)
        .max()
        .unwrap_or(1)
        .max(10) as f64
        * 2.0;
    let top = selected
        .iter()
        .map(|r| r.ns_per_packet().median)
        .fold(1.0, f64::max)
        * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "relay-core time per relayed packet (64 B, client→pod)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((0.5f64..most).log_scale(), (10f64..top).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("channel bindings")
        .y_desc("ns per packet")
        .draw()
        .map_err(plot_error)?;
    for relay in Relay::ALL {
        let points: Vec<(f64, f64)> = selected
            .iter()
            .filter(|r| r.relay == relay)
            .map(|r| (r.bindings as f64, r.ns_per_packet().median.max(10.0)))
            .collect();
        draw_points(&mut chart, relay, points)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)
}
