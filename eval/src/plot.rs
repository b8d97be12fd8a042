//! SVG line charts: per-interval series of a run, and per-load series of a sweep.

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

/// What a chart says around its series.
pub struct Chart<'a> {
    /// The caption.
    pub title: &'a str,
    /// The x axis' description.
    pub x_label: &'a str,
    /// The y axis' description.
    pub y_label: &'a str,
    /// Each point is a run of its own (a load sweep): points are marked, and the x axis spans
    /// the points instead of starting at 0.
    pub marked: bool,
}

/// Width of the legend, right of the plot (so that it never covers a line).
const LEGEND_WIDTH: u32 = 240;
const SIZE: (u32, u32) = (1000 + LEGEND_WIDTH, 520);

/// Draws `series` as solid or dashed lines into an SVG file, the legend beside the plot.
pub fn line_chart(path: &Path, chart: &Chart, series: &[Series]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    let finite = || series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
    let x_max = finite().map(|p| p.0).fold(1e-9, f64::max);
    let x_min = if chart.marked { finite().map(|p| p.0).fold(x_max, f64::min) } else { 0.0 };
    // A sweep's end points sit inside the frame, not on it.
    let pad = if chart.marked { (x_max - x_min).max(x_max * 0.1) * 0.04 } else { 0.0 };
    let y_max = finite().map(|p| p.1).fold(1e-9, f64::max) * 1.1;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (plot, legend) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    let mut drawing = ChartBuilder::on(&plot)
        .caption(chart.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min - pad)..(x_max + pad), 0.0..y_max)
        .map_err(|e| err(&e))?;
    drawing.configure_mesh().x_desc(chart.x_label).y_desc(chart.y_label).draw().map_err(|e| err(&e))?;
    let solid = series.iter().filter(|s| !s.dashed).count() as u32;
    let mut solid_drawn = 0;
    for s in series {
        let color = Palette99::pick(s.color).to_rgba();
        let points = s.points.iter().copied();
        if s.dashed {
            drawing.draw_series(DashedLineSeries::new(points, 6, 4, color.stroke_width(1))).map_err(|e| err(&e))?;
        } else {
            // Each later series a pixel thinner, so that lines on the same values (several
            // models at 100%) all stay visible, the earlier ones as a border around the later.
            let width = 2 + solid - 1 - solid_drawn;
            solid_drawn += 1;
            drawing.draw_series(LineSeries::new(points, color.stroke_width(width))).map_err(|e| err(&e))?;
            if chart.marked {
                let marks = s.points.iter().map(|&p| Circle::new(p, 4, color.filled()));
                drawing.draw_series(marks).map_err(|e| err(&e))?;
            }
        }
    }
    draw_legend(&legend, series, chart.marked).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// One row per series: its line as drawn (dashed ones dashed, marked ones with a mark) and name.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    series: &[Series],
    marked: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (x, top, row) = (8, 48, 22);
    for (i, s) in series.iter().enumerate() {
        let y = top + row * i as i32;
        let color = Palette99::pick(s.color).to_rgba();
        if s.dashed {
            for dash in 0..3 {
                let x0 = x + dash * 10;
                area.draw(&PathElement::new(vec![(x0, y), (x0 + 6, y)], color.stroke_width(1)))?;
            }
        } else {
            area.draw(&PathElement::new(vec![(x, y), (x + 28, y)], color.stroke_width(2)))?;
            if marked {
                area.draw(&Circle::new((x + 14, y), 4, color.filled()))?;
            }
        }
        area.draw(&Text::new(s.name.clone(), (x + 36, y - 7), ("sans-serif", 14)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The x positions of the text elements whose content is `label`.
    fn text_x(svg: &str, label: &str) -> Vec<f64> {
        svg.split("<text")
            .skip(1)
            .filter(|t| t.split_once('>').and_then(|(_, rest)| rest.split('<').next()).map(str::trim) == Some(label))
            .filter_map(|t| t.split("x=\"").nth(1)?.split('"').next()?.parse().ok())
            .collect()
    }

    #[test]
    fn the_legend_stands_beside_the_plot_and_a_sweep_marks_its_points() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.svg");
        let series = [
            Series {
                name: "temporal".into(),
                points: vec![(0.8, 100.0), (1.0, 100.0), (1.2, 97.0)],
                color: 0,
                dashed: false,
            },
            Series {
                name: "model-based".into(),
                points: vec![(0.8, 100.0), (1.0, 100.0), (1.2, 99.5)],
                color: 1,
                dashed: false,
            },
            Series { name: "99% threshold".into(), points: vec![(0.8, 99.0), (1.2, 99.0)], color: 2, dashed: true },
        ];
        let chart = Chart { title: "t", x_label: "load", y_label: "SLO met (%)", marked: true };
        line_chart(&path, &chart, &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let plot_right = (SIZE.0 - LEGEND_WIDTH) as f64;
        for s in &series {
            let xs = text_x(&svg, &s.name);
            assert!(!xs.is_empty() && xs.iter().all(|&x| x >= plot_right), "{}: legend at {xs:?}", s.name);
        }
        assert_eq!(svg.matches("<circle").count(), 6 + 2, "one mark per point and per solid legend entry");
        // The x ticks span the loads (ticks near 0 would be there had the axis started at 0;
        // the y axis' are 0.0, 20.0, ...).
        assert!(
            text_x(&svg, "0.2").is_empty() && text_x(&svg, "0.4").is_empty(),
            "a sweep's axis starts at its first load"
        );
        assert!(!text_x(&svg, "0.8").is_empty() && !text_x(&svg, "1.2").is_empty(), "x ticks at the loads");
        // Lines on the same values: the first drawn wider than the second.
        assert!(svg.contains("stroke-width=\"3\"") && svg.contains("stroke-width=\"2\""));
    }
}
