//! The latency histogram of a report, as SVG.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

/// Draws the distribution of successful requests' virtual latency into an SVG file.
pub fn latency_histogram(report: &Report, path: &Path) -> Result<(), String> {
    let data: Vec<f64> = report
        .latencies_ns
        .iter()
        .map(|&n| n as f64 / 1e6)
        .collect();
    let max = data.iter().copied().fold(0.0f64, f64::max).max(1.0);
    let bins = 50usize;
    let width = max / bins as f64;
    let mut counts = vec![0u32; bins];
    for &x in &data {
        let i = ((x / width) as usize).min(bins - 1);
        if let Some(c) = counts.get_mut(i) {
            *c += 1;
        }
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let title = format!(
        "conclave sim: {}-of-{}, {} ok / {} failed, p50 {:.1} ms, p99 {:.1} ms",
        report.threshold,
        report.participants,
        report.ok,
        report.failed_total(),
        report.latency_ms.p50,
        report.latency_ms.p99
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max, 0u32..top + top / 10 + 1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("signing latency (virtual ms)")
        .y_desc("requests")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &c)| {
            let x0 = i as f64 * width;
            Rectangle::new([(x0, 0), (x0 + width, c)], BLUE.mix(0.6).filled())
        }))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
