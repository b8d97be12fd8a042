//! `gpuslice realloc-gap` (on the GPU machine): what a reallocation costs the service.
//! Standby: workers for the model already run at each GPU% (model loaded, graphs captured); a
//! reallocation routes the next batch to the standby at the new GPU%, and the gap is the time
//! from the old worker's last completion to the new one's first batch start, measured over
//! `switches` reallocations under continuous demand. Cold: a worker started at the new GPU% when
//! the decision is made; the time until it serves is measured.

use anyhow::{Result, ensure};
use gpuslice_backends::gpu::mps::MpsDaemon;
use gpuslice_backends::gpu::worker::{Worker, WorkerSpec, default_script};
use std::time::{Duration, Instant};

fn spec(model: &str, batch: u32, mps: &MpsDaemon, pct: f64) -> WorkerSpec {
    WorkerSpec {
        model: model.into(),
        batches: vec![batch],
        script: default_script(),
        env: mps.client_env(pct),
        fake_ms: None,
        input_ipc: None,
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub fn run(model: &str, pcts: &[f64], batch: u32, switches: usize, batches_between: usize) -> Result<()> {
    ensure!(pcts.len() >= 2, "--pcts needs at least two GPU% values to move between");
    let mps = MpsDaemon::start_private()?;
    // Cold: decision to first batch served on a worker started then.
    let mut cold = Vec::new();
    for &pct in pcts {
        let decided = Instant::now();
        let mut worker = Worker::spawn(&spec(model, batch, &mps, pct))?;
        worker.run(batch)?;
        cold.push((pct, decided.elapsed()));
    }
    // Standby: one worker per GPU%, all ready; route batches to each in turn.
    let mut workers: Vec<Worker> =
        pcts.iter().map(|&p| Worker::spawn(&spec(model, batch, &mps, p))).collect::<Result<_, _>>()?;
    for w in &mut workers {
        w.run(batch)?;
    }
    let (mut active, mut gaps) = (0usize, Vec::with_capacity(switches));
    let mut last_done = Instant::now();
    for _ in 0..switches {
        for _ in 0..batches_between {
            workers[active].run(batch)?;
            last_done = Instant::now();
        }
        // The reallocation: the queue's next batch goes to the standby at the other GPU%.
        active = (active + 1) % workers.len();
        let started = Instant::now();
        gaps.push(started - last_done);
        workers[active].run(batch)?;
        last_done = Instant::now();
    }
    gaps.sort();
    println!("{model} at batch {batch}, GPU% {pcts:?}");
    for (pct, took) in &cold {
        println!(
            "cold reallocation to {pct}%: decision to first batch served {:.2} s (worker start, model load, graph capture)",
            took.as_secs_f64()
        );
    }
    println!(
        "standby handover over {switches} reallocations: gap median {:.1} us, p99 {:.1} us, max {:.1} us",
        percentile(&gaps, 0.5).as_secs_f64() * 1e6,
        percentile(&gaps, 0.99).as_secs_f64() * 1e6,
        gaps.last().map_or(0.0, |g| g.as_secs_f64() * 1e6)
    );
    Ok(())
}
