//! `gpuslice profile` (on the GPU machine): measures each model's batch latency over a grid of
//! GPU% (MPS) and batch sizes through the GPU backend's worker, one worker at a time on a quiet
//! GPU, and writes the calibration schema of shared/calibration
//! (`engine,model,dtype,gpu_pct,sms,batch,p50_ms,p99_ms,mean_ms,imgs_per_s`), which
//! `gpuslice fit` and the simulator read.

use anyhow::{Context, Result};
use gpuslice_backends::gpu::mps::MpsDaemon;
use gpuslice_backends::gpu::worker::{Worker, WorkerSpec, default_script};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
struct Row {
    engine: String,
    model: String,
    dtype: &'static str,
    gpu_pct: f64,
    sms: u32,
    batch: u32,
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    imgs_per_s: f64,
}

pub struct ProfileOptions<'a> {
    pub models: &'a [String],
    pub gpu_pcts: &'a [f64],
    pub batches: &'a [u32],
    pub repeats: usize,
    pub out: &'a Path,
    /// GPU-less workers taking this long per batch (tests).
    pub fake_ms: Option<f64>,
}

pub fn run(o: ProfileOptions) -> Result<()> {
    let mps = match o.fake_ms {
        Some(_) => None,
        None => Some(MpsDaemon::start_private()?),
    };
    let steps = (o.models.len() * o.gpu_pcts.len() * o.batches.len()) as u64;
    let bar = ProgressBar::new(steps).with_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} points, {elapsed}, eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    let mut rows = Vec::new();
    for model in o.models {
        for &pct in o.gpu_pcts {
            bar.set_message(format!("{model} at {pct}%"));
            let spec = WorkerSpec {
                model: model.clone(),
                batches: o.batches.to_vec(),
                script: default_script(),
                env: mps.as_ref().map(|m| m.client_env(pct)).unwrap_or_default(),
                fake_ms: o.fake_ms,
            };
            let mut worker = Worker::spawn(&spec).with_context(|| format!("{model} at {pct}%"))?;
            for &batch in o.batches {
                for _ in 0..5 {
                    worker.run(batch)?;
                }
                let mut times: Vec<f64> =
                    (0..o.repeats).map(|_| worker.run(batch).map(|t| t.infer_ms)).collect::<Result<_, _>>()?;
                times.sort_by(f64::total_cmp);
                let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
                let mean = times.iter().sum::<f64>() / times.len() as f64;
                rows.push(Row {
                    engine: worker.engine.clone(),
                    model: model.clone(),
                    dtype: "fp16",
                    gpu_pct: pct,
                    sms: worker.sms,
                    batch,
                    p50_ms: at(0.5),
                    p99_ms: at(0.99),
                    mean_ms: mean,
                    imgs_per_s: batch as f64 / mean * 1000.0,
                });
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    if let Some(dir) = o.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::output::write_csv(o.out, &rows)?;
    println!("{} points written to {}", rows.len(), o.out.display());
    Ok(())
}
