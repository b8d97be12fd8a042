//! What a run shows a person: a per-model table on the terminal, and under `--out` CSV files and
//! SVG plots of latency and GPU share over time.

use crate::plot::{Chart, Series, line_chart};
use anyhow::{Context, Result};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use gpuslice_simulator::{ModelInterval, Report, Sharing, Summary};
use serde::Serialize;
use std::path::Path;

/// An empty terminal table in the house style, with `header`.
pub fn table<T: Into<comfy_table::Cell>>(header: impl IntoIterator<Item = T>) -> Table {
    let mut table = Table::new();
    // On a terminal, cells wrap to fit its width; redirected, rows stay whole.
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_header(header);
    table
}

/// The per-model table of a finished run, with a total row. A run whose policy made decisions
/// (`adaptive`) shows the allocations as they were at its end, and says so; under temporal
/// sharing a model has the whole GPU in turns, and under default MPS all of it, whatever GPU% it
/// was configured with.
pub fn summary_table(report: &Report, adaptive: bool) -> Table {
    let (gpu_header, batch_header) = if adaptive { ("GPU% at end", "batch at end") } else { ("GPU%", "batch") };
    let mut table = table(vec![
        "model",
        gpu_header,
        batch_header,
        "SLO ms",
        "arrivals",
        "done",
        "dropped",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "SLO met",
        "goodput/s",
        "thru/s",
        "avg batch",
        "avg queue",
        "SM-time used",
    ]);
    let row = |name: &str, gpu: String, batch: String, slo: String, s: &Summary| {
        vec![
            name.to_string(),
            gpu,
            batch,
            slo,
            s.arrivals.to_string(),
            s.completed.to_string(),
            s.dropped.to_string(),
            format!("{:.2}", s.p50_ms),
            format!("{:.2}", s.p95_ms),
            format!("{:.2}", s.p99_ms),
            format!("{:.1}%", s.slo_attainment * 100.0),
            format!("{:.0}", s.goodput_rps),
            format!("{:.0}", s.throughput_rps),
            format!("{:.1}", s.mean_batch),
            format!("{:.1}", s.mean_queue),
            format!("{:.1}%", s.gpu_util * 100.0),
        ]
    };
    for m in &report.models {
        let a = &m.allocation;
        let gpu = match report.sharing {
            Sharing::Temporal => "turns".to_string(),
            Sharing::DefaultMps => "100".to_string(),
            Sharing::Spatial => format!("{:.0}", a.gpu_pct),
        };
        table.add_row(row(&m.model, gpu, a.max_batch.to_string(), format!("{:.0}", m.slo_ms), &m.summary));
    }
    table.add_row(row("total", "".into(), "".into(), "".into(), &report.total));
    table
}

#[derive(Serialize)]
struct SummaryRow<'a> {
    model: &'a str,
    sharing: String,
    gpu_pct: f64,
    max_batch: u32,
    batch_timeout_ms: f64,
    slo_ms: f64,
    reallocations: u64,
}

#[derive(Serialize)]
struct IntervalRow<'a> {
    model: &'a str,
    start_s: f64,
    end_s: f64,
    gpu_pct: f64,
    max_batch: u32,
    min_batch: u32,
    batch_timeout_ms: f64,
    queue_len: usize,
}

/// Writes rows of (description, summary) pairs: the csv crate writes a tuple of structs as one
/// row with both structs' headers, where `#[serde(flatten)]` is not supported.
pub fn write_csv<T: Serialize>(path: &Path, rows: impl IntoIterator<Item = T>) -> Result<()> {
    let mut writer = csv::Writer::from_path(path).with_context(|| format!("cannot create {}", path.display()))?;
    for row in rows {
        writer.serialize(row).with_context(|| format!("cannot write {}", path.display()))?;
    }
    writer.flush().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Per model, where its requests' time went on the GPU backend.
pub fn stage_table(stages: &[gpuslice_control::StageSummary]) -> Table {
    let mut table = table(vec![
        "model",
        "requests",
        "queue p50 ms",
        "queue p99 ms",
        "of it to hand-off p50 / p99 ms",
        "H2D ms (mean)",
        "inference ms (mean)",
        "inference p99 ms",
        "graph batch (mean)",
        "inference ms per batch",
        "D2H ms (mean)",
        "host copy in ms per batch",
        "host copy out ms per batch",
        "total p50 ms",
        "total p99 ms",
    ]);
    for s in stages {
        table.add_row(vec![
            s.model.clone(),
            s.requests.to_string(),
            format!("{:.2}", s.queue_p50_ms),
            format!("{:.2}", s.queue_p99_ms),
            format!("{:.2} / {:.2}", s.handed_p50_ms, s.handed_p99_ms),
            format!("{:.3}", s.h2d_mean_ms),
            format!("{:.3}", s.infer_mean_ms),
            format!("{:.3}", s.infer_p99_ms),
            format!("{:.1}", s.graph_batch_mean),
            format!("{:.3}", s.infer_batch_mean_ms),
            format!("{:.3}", s.d2h_mean_ms),
            format!("{:.3}", s.copy_in_batch_mean_ms),
            format!("{:.3}", s.copy_out_batch_mean_ms),
            format!("{:.2}", s.total_p50_ms),
            format!("{:.2}", s.total_p99_ms),
        ]);
    }
    table
}

/// SLO attainment (%) of the requests finished in these intervals (of one model or several);
/// `None` if none finished.
pub fn interval_attainment(chunk: &[ModelInterval]) -> Option<f64> {
    let finished: u64 = chunk.iter().map(|i| i.summary.completed + i.summary.dropped).sum();
    let met: u64 = chunk.iter().map(|i| i.summary.within_slo).sum();
    (finished > 0).then(|| met as f64 / finished as f64 * 100.0)
}

/// Writes `summary.csv`, `intervals.csv`, `latency.svg`, `gpu.svg` and `slo.svg` into `dir`.
pub fn write_run(dir: &Path, report: &Report, intervals: &[ModelInterval]) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let summary_rows = report.models.iter().map(|m| {
        (
            SummaryRow {
                model: &m.model,
                sharing: report.sharing.to_string(),
                gpu_pct: m.allocation.gpu_pct,
                max_batch: m.allocation.max_batch,
                batch_timeout_ms: m.allocation.batch_timeout_ms,
                slo_ms: m.slo_ms,
                reallocations: m.reallocations,
            },
            &m.summary,
        )
    });
    let files = ["summary.csv", "intervals.csv", "latency.svg", "gpu.svg", "slo.svg"].map(|f| dir.join(f));
    write_csv(&files[0], summary_rows)?;
    write_csv(
        &files[1],
        intervals.iter().map(|i| {
            (
                IntervalRow {
                    model: &i.model,
                    start_s: i.start_s,
                    end_s: i.end_s,
                    gpu_pct: i.allocation.gpu_pct,
                    max_batch: i.allocation.max_batch,
                    min_batch: i.allocation.min_batch,
                    batch_timeout_ms: i.allocation.batch_timeout_ms,
                    queue_len: i.queue_len,
                },
                &i.summary,
            )
        }),
    )?;
    let x_end = intervals.iter().map(|i| i.end_s).fold(0.0, f64::max);
    let series = |suffix: &str, dashed: bool, value: &dyn Fn(&ModelInterval) -> Option<f64>| -> Vec<Series> {
        report
            .models
            .iter()
            .enumerate()
            .map(|(color, m)| Series {
                name: format!("{}{suffix}", m.model),
                points: intervals
                    .iter()
                    .filter(|i| i.model == m.model)
                    .filter_map(|i| value(i).map(|v| (i.end_s, v)))
                    .collect(),
                color,
                dashed,
            })
            .collect()
    };
    let mut latency = series("", false, &|i| (i.summary.completed > 0).then_some(i.summary.p99_ms));
    latency.extend(report.models.iter().enumerate().map(|(color, m)| Series {
        name: format!("{} SLO", m.model),
        points: vec![(0.0, m.slo_ms), (x_end, m.slo_ms)],
        color,
        dashed: true,
    }));
    let title = format!("p99 latency per control interval ({})", report.sharing);
    let chart = |title, y_label| Chart { title, x_label: "time (s)", y_label, marked: false };
    line_chart(&files[2], &chart(&title, "p99 latency (ms)"), &latency)?;
    let mut gpu = series(" allocated", false, &|i| Some(i.allocation.gpu_pct));
    gpu.extend(series(" used", true, &|i| Some(i.summary.gpu_util * 100.0)));
    let title = format!("GPU% allocated and SM-time used ({})", report.sharing);
    line_chart(&files[3], &chart(&title, "GPU %"), &gpu)?;
    let slo = series("", false, &|i| interval_attainment(std::slice::from_ref(i)));
    let title = format!("SLO attainment per control interval ({})", report.sharing);
    line_chart(&files[4], &chart(&title, "requests within SLO (%)"), &slo)?;
    Ok(files.to_vec())
}

/// Per model: how well the parametric latency form fits the profile's p50s.
pub fn fit_table(
    set: &gpuslice_traces::ProfileSet,
    fitted: &std::collections::BTreeMap<String, gpuslice_traces::LatencyModel>,
) -> Table {
    let mut table =
        table(vec!["model", "points", "GPU% levels", "exponent p", "p from", "RMS rel. error", "max rel. error"]);
    for (name, model) in fitted {
        let levels: Vec<String> = set.models[name].gpu_levels().iter().map(|g| format!("{g:.0}")).collect();
        table.add_row(vec![
            name.clone(),
            model.fit.points.to_string(),
            levels.join(","),
            format!("{:.3}", model.fit.exponent),
            if model.fit.exponent_fitted { "fitted" } else { "pooled" }.to_string(),
            format!("{:.2}%", model.fit.rms_rel_error * 100.0),
            format!("{:.2}%", model.fit.max_rel_error * 100.0),
        ]);
    }
    table
}

/// Creates `dir` (where given) and checks that files can be written there, so a run that would
/// fail to save its results fails before it starts, naming the folder.
pub fn check_out_dir(dir: Option<&Path>) -> Result<()> {
    let Some(dir) = dir else { return Ok(()) };
    std::fs::create_dir_all(dir).with_context(|| format!("--out {}: cannot create the folder", dir.display()))?;
    let probe = dir.join(".gpuslice-write-check");
    std::fs::write(&probe, b"").with_context(|| format!("--out {}: cannot write there", dir.display()))?;
    std::fs::remove_file(&probe)
        .with_context(|| format!("--out {}: cannot clean up {}", dir.display(), probe.display()))
}

/// A mean with its spread over runs: `value ± spread`, or the value alone from a single run
/// (whose spread says nothing).
pub fn with_spread(value: String, spread: String, runs: usize) -> String {
    if runs > 1 { format!("{value} ± {spread}") } else { value }
}
