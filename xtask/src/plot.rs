//! `target/bench/scaling.svg`: how convergence time and server memory grow with the number of
//! sidecars, from the `cold` SotW runs.

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use std::path::Path;

pub struct Point {
    pub proxies: f64,
    pub p50_s: f64,
    pub p99_s: f64,
    pub steady_mib: f64,
    pub peak_mib: f64,
}

/// Two panels side by side: connect→complete p50/p99 (s), and server steady/peak RSS (MiB),
/// both against the number of sidecars.
pub fn scaling_svg(path: &Path, points: &[Point]) -> Result<()> {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(500);
    let max_x = points.iter().map(|p| p.proxies).fold(1.0, f64::max) * 1.05;
    panel(
        &left,
        "Connect → complete config",
        "seconds",
        max_x,
        &[
            (
                "p50",
                BLUE,
                points.iter().map(|p| (p.proxies, p.p50_s)).collect(),
            ),
            (
                "p99",
                RED,
                points.iter().map(|p| (p.proxies, p.p99_s)).collect(),
            ),
        ],
    )?;
    panel(
        &right,
        "Server memory",
        "RSS (MiB)",
        max_x,
        &[
            (
                "steady (after 10 s idle)",
                GREEN,
                points.iter().map(|p| (p.proxies, p.steady_mib)).collect(),
            ),
            (
                "peak (VmHWM)",
                MAGENTA,
                points.iter().map(|p| (p.proxies, p.peak_mib)).collect(),
            ),
        ],
    )?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    max_x: f64,
    series: &[Series],
) -> Result<()> {
    let max_y = series
        .iter()
        .flat_map(|(_, _, s)| s.iter().map(|(_, y)| *y))
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("simulated sidecars")
        .y_desc(y_label)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (label, color, data) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(data.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_both_panels() {
        let path = std::env::temp_dir().join(format!("xtask-scaling-{}.svg", std::process::id()));
        let points = [1000.0, 10000.0].map(|n| Point {
            proxies: n,
            p50_s: n / 1000.0,
            p99_s: n / 500.0,
            steady_mib: n / 10.0,
            peak_mib: n / 5.0,
        });
        scaling_svg(&path, &points).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("Server memory") && svg.contains("p99"));
    }
}
