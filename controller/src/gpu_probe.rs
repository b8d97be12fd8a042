//! `gpuslice gpu-probe` (on the GPU machine): models run together through the GPU backend's
//! workers — MPS daemon, one worker per model at its GPU%, batches through shared memory —
//! closed loop for a while; per model the GPU time and round trip of its batches, and throughput.

use anyhow::{Context, Result, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use gpuslice_backends::gpu::mps::MpsDaemon;
use gpuslice_backends::gpu::worker::{Worker, WorkerSpec, default_script};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

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

/// What one worker's closed loop saw.
struct Probe {
    model: String,
    gpu: Histogram<u64>,
    round_trip: Histogram<u64>,
    batches: u64,
    elapsed: Duration,
}

/// `name:gpu_pct` pairs.
fn parse_models(spec: &str) -> Result<Vec<(String, f64)>> {
    spec.split(',')
        .map(|item| {
            let (name, pct) = item.split_once(':').with_context(|| format!("--models: {item:?} is not NAME:GPU%"))?;
            let pct: f64 = pct.parse().with_context(|| format!("--models: bad GPU% in {item:?}"))?;
            if !(pct > 0.0 && pct <= 100.0) {
                bail!("--models: GPU% of {name} must be in (0, 100], got {pct}");
            }
            Ok((name.to_string(), pct))
        })
        .collect()
}

pub fn run(models: &str, batch: u32, seconds: f64, mps: bool, label: &str, out: Option<&Path>) -> Result<()> {
    let models = parse_models(models)?;
    let daemon = if mps { Some(MpsDaemon::start_private()?) } else { None };
    // Graph capture takes seconds per model: start the workers in parallel.
    let workers: Vec<Worker> = std::thread::scope(|scope| {
        let handles: Vec<_> = models
            .iter()
            .map(|(name, pct)| {
                let env = daemon.as_ref().map(|d| d.client_env(*pct)).unwrap_or_default();
                let spec = WorkerSpec {
                    model: name.clone(),
                    batches: vec![batch],
                    script: default_script(),
                    env,
                    fake_ms: None,
                };
                scope.spawn(move || Worker::spawn(&spec))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker start thread")).collect::<Result<Vec<_>, _>>()
    })?;
    let duration = Duration::from_secs_f64(seconds);
    let start_line = Instant::now() + Duration::from_millis(200);
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .into_iter()
            .map(|mut worker| {
                scope.spawn(move || -> Result<Probe> {
                    let new = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
                    let (mut gpu, mut round_trip) = (new(), new());
                    std::thread::sleep(start_line.saturating_duration_since(Instant::now()));
                    let started = Instant::now();
                    let mut batches = 0;
                    while started.elapsed() < duration {
                        let t = worker.run(batch)?;
                        gpu.record((t.infer_ms * 1000.0) as u64 + 1)?;
                        round_trip.record(t.round_trip.as_micros() as u64 + 1)?;
                        batches += 1;
                    }
                    Ok(Probe { model: worker.model.clone(), gpu, round_trip, batches, elapsed: started.elapsed() })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker thread")).collect()
    });
    let mut rows = Vec::new();
    for (result, (_, pct)) in results.into_iter().zip(&models) {
        let Probe { model, gpu, round_trip, batches, elapsed } = result?;
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        rows.push(Row {
            mode: label.to_string(),
            model,
            gpu_pct: if mps { *pct } else { 100.0 },
            batch,
            batches,
            gpu_p50_ms: ms(&gpu, 0.5),
            gpu_p99_ms: ms(&gpu, 0.99),
            round_trip_p50_ms: ms(&round_trip, 0.5),
            round_trip_p99_ms: ms(&round_trip, 0.99),
            imgs_per_s: (batches * batch as u64) as f64 / elapsed.as_secs_f64(),
        });
    }
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
