//! `gpuslice gpu-probe` (on the GPU machine): models run together through the GPU backend's
//! workers — MPS daemon, one worker per model at its GPU%, batches through shared memory —
//! closed loop for a while; per model the GPU time and round trip of its batches, and throughput.

use crate::lab::colocate::{Placement, run_together, spawn_all, worker_spec};
use anyhow::Result;
use gpuslice_gpu::mps::MpsDaemon;
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

/// The SM count of a green context standing for `gpu_pct` of `total_sms`: a multiple of 8 (what
/// the H100 partitions in), at least 8.
pub fn green_sms_for(gpu_pct: f64, total_sms: u32) -> u32 {
    let eighths = (gpu_pct / 100.0 * total_sms as f64 / 8.0).round().max(1.0) as u32;
    (eighths * 8).min(total_sms / 8 * 8)
}

/// How the probed workers share the GPU.
#[derive(Debug, Clone, Copy)]
pub enum ProbeSharing {
    /// Under MPS, each at its GPU% (all at 100: default MPS).
    Mps,
    /// Without MPS: the driver time-slices the workers.
    Temporal,
    /// Under MPS at 100%, each worker on a green context of its GPU%'s share of this many SMs.
    Green { total_sms: u32 },
}

/// `models` is `NAME:GPU%[:BATCH]` items separated by commas; `batch` is the batch of items
/// that name none.
pub fn run(
    models: &str,
    batch: u32,
    seconds: f64,
    in_flight: usize,
    sharing: ProbeSharing,
    label: &str,
    out: Option<&Path>,
) -> Result<()> {
    let placements: Vec<Placement> =
        models.split(',').map(|item| Placement::parse(item, batch)).collect::<Result<_>>()?;
    let mps = !matches!(sharing, ProbeSharing::Temporal);
    let daemon = if mps { Some(MpsDaemon::start_private(None)?) } else { None };
    let specs: Vec<_> = placements
        .iter()
        .map(|p| {
            let mut spec = worker_spec(p, vec![p.batch], daemon.as_ref(), None);
            if let (ProbeSharing::Green { total_sms }, Some(d)) = (sharing, &daemon) {
                spec.env = d.client_env(100.0);
                spec.green_sms = vec![green_sms_for(p.gpu_pct, total_sms)];
            }
            spec
        })
        .collect();
    let mut workers = spawn_all(&specs)?;
    let batches: Vec<u32> = placements.iter().map(|p| p.batch).collect();
    let results =
        run_together(&mut workers, &batches, in_flight, Duration::from_millis(500), Duration::from_secs_f64(seconds))?;
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
    let mut table = gpuslice_eval::output::table(vec![
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
        gpuslice_eval::output::write_csv(&dir.join(format!("gpu-probe-{label}.csv")), &rows)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::green_sms_for;

    #[test]
    fn green_partitions_are_multiples_of_8_within_the_device() {
        assert_eq!(green_sms_for(25.0, 132), 32, "33 SMs round to 32");
        assert_eq!(green_sms_for(35.0, 132), 48, "46.2 SMs round to 48");
        assert_eq!(green_sms_for(1.0, 132), 8, "never below 8");
        assert_eq!(green_sms_for(100.0, 132), 128, "never above the device's whole eighths");
    }
}
