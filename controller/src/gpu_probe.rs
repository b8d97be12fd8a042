//! `gpuslice gpu-probe` (on the GPU machine): models run together through the GPU backend's
//! workers — MPS daemon, one worker per model at its GPU%, batches through shared memory —
//! closed loop for a while; per model the GPU time and round trip of its batches, and throughput.

use crate::colocate::{Placement, run_together, spawn_workers};
use anyhow::Result;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use gpuslice_backends::gpu::mps::MpsDaemon;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

#[derive(Serialize)]
struct Row {
    mode: String,
    model: String,
    gpu_pct: f64,
    batch: u32,
    batches: u64,
    gpu_p50_ms: f64,
    gpu_p99_ms: f64,
    round_trip_p50_ms: f64,
    round_trip_p99_ms: f64,
    imgs_per_s: f64,
}

/// `models` is `NAME:GPU%[:BATCH]` items separated by commas; `batch` is the batch of items
/// that name none.
pub fn run(models: &str, batch: u32, seconds: f64, mps: bool, label: &str, out: Option<&Path>) -> Result<()> {
    let placements: Vec<Placement> =
        models.split(',').map(|item| Placement::parse(item, batch)).collect::<Result<_>>()?;
    let daemon = if mps { Some(MpsDaemon::start_private()?) } else { None };
    let mut workers = spawn_workers(&placements, daemon.as_ref(), None)?;
    let batches: Vec<u32> = placements.iter().map(|p| p.batch).collect();
    let results = run_together(&mut workers, &batches, Duration::from_millis(500), Duration::from_secs_f64(seconds))?;
    let rows: Vec<Row> = placements
        .iter()
        .zip(&results)
        .map(|(p, r)| Row {
            mode: label.to_string(),
            model: p.model.clone(),
            gpu_pct: if mps { p.gpu_pct } else { 100.0 },
            batch: p.batch,
            batches: r.batches,
            gpu_p50_ms: r.gpu_ms(0.5),
            gpu_p99_ms: r.gpu_ms(0.99),
            round_trip_p50_ms: r.round_trip_ms(0.5),
            round_trip_p99_ms: r.round_trip_ms(0.99),
            imgs_per_s: r.items_per_s,
        })
        .collect();
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "mode",
        "model",
        "GPU%",
        "batch",
        "batches",
        "GPU p50 ms",
        "GPU p99 ms",
        "round trip p50",
        "round trip p99",
        "img/s",
    ]);
    for r in &rows {
        table.add_row(vec![
            r.mode.clone(),
            r.model.clone(),
            format!("{:.0}", r.gpu_pct),
            r.batch.to_string(),
            r.batches.to_string(),
            format!("{:.3}", r.gpu_p50_ms),
            format!("{:.3}", r.gpu_p99_ms),
            format!("{:.3}", r.round_trip_p50_ms),
            format!("{:.3}", r.round_trip_p99_ms),
            format!("{:.0}", r.imgs_per_s),
        ]);
    }
    println!("{table}");
    println!("aggregate: {:.0} img/s", rows.iter().map(|r| r.imgs_per_s).sum::<f64>());
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)?;
        crate::output::write_csv(&dir.join(format!("gpu-probe-{label}.csv")), &rows)?;
    }
    Ok(())
}
