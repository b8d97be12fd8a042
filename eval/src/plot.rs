//! SVG line charts of per-interval series.

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use std::path::Path;

/// A named series of (x, y) points; series sharing a `color` index belong to the same model.
pub struct Series {
    /// The legend's label.
    pub name: String,
    /// The points, in x order.
    pub points: Vec<(f64, f64)>,
    /// Index into the palette.
    pub color: usize,
    /// Drawn dashed (a reference line).
    pub dashed: bool,
}

/// Draws `series` as solid or dashed lines into an SVG file.
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    let finite = || series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
    let x_max = finite().map(|p| p.0).fold(1e-9, f64::max);
    let y_max = finite().map(|p| p.1).fold(1e-9, f64::max) * 1.1;
    let root = SVGBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(|e| err(&e))?;
    for s in series {
        let color = Palette99::pick(s.color).to_rgba();
        let points = s.points.iter().copied();
        let drawn = if s.dashed {
            chart.draw_series(DashedLineSeries::new(points, 6, 4, color.stroke_width(1)))
        } else {
            chart.draw_series(LineSeries::new(points, color.stroke_width(2)))
        };
        let width = if s.dashed { 1 } else { 2 };
        drawn
            .map_err(|e| err(&e))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(width)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
