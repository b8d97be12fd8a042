//! `gpuslice realloc-gap` (on the GPU machine): what a reallocation costs the service, the two
//! ways the GPU backend can do it without stopping:
//! - standby pool: one worker process per GPU% (MPS active-thread percentage), each with the
//!   model loaded and its graphs captured; a reallocation routes the next batch to the worker at
//!   the new GPU%;
//! - green contexts: one worker process with one green context per SM count (made up front) and
//!   the graphs captured on a stream of each; a reallocation names the other context in the next
//!   batch.
//!
//! Per way, under continuous demand over `switches` reallocations: the gap from the old
//! partition's last completion to the new one's first batch start; the first batch's extra time
//! on the new partition against that partition's steady batch time (a switch that costs the GPU
//! something shows here); the steady batch time per partition (does the partition limit the
//! model?); and the GPU memory the way holds (NVML). Also the cold way: a worker started at the
//! decision, and the time until it serves.

use anyhow::{Result, ensure};
use gpuslice_gpu::mps::MpsDaemon;
use gpuslice_gpu::telemetry::Telemetry;
use gpuslice_gpu::worker::{Worker, WorkerSpec, default_script};
use serde::Serialize;
use std::time::{Duration, Instant};

fn spec(model: &str, batch: u32, env: Vec<(String, String)>, green_sms: Vec<u32>) -> WorkerSpec {
    WorkerSpec {
        io: gpuslice_control::tensors::ModelIo::image_classifier(),
        half: true,
        model: model.into(),
        batches: vec![batch],
        script: default_script(),
        env,
        fake_ms: None,
        input_ipc: None,
        packet_pool: None,
        green_sms,
        quick_start: false,
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One way of reallocating, measured.
#[derive(Debug, Serialize)]
pub struct WayResult {
    pub way: String,
    /// The partitions moved between (GPU% or SM counts), and each one's steady batch time (ms,
    /// round trip, median).
    pub partitions: String,
    pub steady_ms: String,
    pub gap_median_us: f64,
    pub gap_max_us: f64,
    /// First batch on the new partition minus its steady time, median and max (ms).
    pub first_batch_extra_median_ms: f64,
    pub first_batch_extra_max_ms: f64,
    /// Decision to the first batch completed on the new partition (ms): gap plus that batch.
    pub decision_to_served_median_ms: f64,
    pub decision_to_served_max_ms: f64,
    /// GPU memory the way's workers hold (MiB, NVML, over what was used before they started).
    pub gpu_memory_mib: Option<u64>,
    /// Time to start the way's workers, all at once (s).
    pub start_s: f64,
}

/// What one way is measured on: its workers, and the `(worker, partition)` targets moved between.
struct Way<'a> {
    name: &'a str,
    labels: Vec<String>,
    specs: Vec<WorkerSpec>,
    targets: Vec<(usize, usize)>,
}

/// Starts the way's workers (in parallel, as the GPU backend does), then runs batches on its
/// targets in turn, `between` batches each, switching `switches` times.
fn measure(way: Way, telemetry: Option<&Telemetry>, batch: u32, switches: usize, between: usize) -> Result<WayResult> {
    let before = memory_used(telemetry);
    let started = Instant::now();
    let mut workers = crate::lab::colocate::spawn_all(&way.specs)?;
    let start_s = started.elapsed().as_secs_f64();
    let targets = &way.targets;
    // Steady batch time per partition.
    let mut steady = Vec::new();
    for &(w, part) in targets {
        let mut times: Vec<f64> = (0..between.max(20))
            .map(|_| workers[w].run_on(batch, part).map(|t| ms(t.round_trip)))
            .collect::<Result<_, _>>()?;
        times.sort_by(f64::total_cmp);
        steady.push(percentile(&times, 0.5));
    }
    let (mut active, mut last_done) = (0usize, Instant::now());
    let (mut gaps, mut extra, mut served) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..switches {
        for _ in 0..between {
            let (w, part) = targets[active];
            workers[w].run_on(batch, part)?;
            last_done = Instant::now();
        }
        active = (active + 1) % targets.len();
        let (w, part) = targets[active];
        let decided = last_done;
        let started = Instant::now();
        let first = workers[w].run_on(batch, part)?;
        last_done = Instant::now();
        gaps.push((started - decided).as_secs_f64() * 1e6);
        extra.push(ms(first.round_trip) - steady[active]);
        served.push(ms(last_done - decided));
    }
    for v in [&mut gaps, &mut extra, &mut served] {
        v.sort_by(f64::total_cmp);
    }
    let join = |v: Vec<String>| v.join("/");
    Ok(WayResult {
        way: way.name.into(),
        partitions: join(way.labels),
        steady_ms: join(steady.iter().map(|s| format!("{s:.3}")).collect()),
        gap_median_us: percentile(&gaps, 0.5),
        gap_max_us: *gaps.last().expect("switches"),
        first_batch_extra_median_ms: percentile(&extra, 0.5),
        first_batch_extra_max_ms: *extra.last().expect("switches"),
        decision_to_served_median_ms: percentile(&served, 0.5),
        decision_to_served_max_ms: *served.last().expect("switches"),
        gpu_memory_mib: memory_used(telemetry).zip(before).map(|(a, b)| a.saturating_sub(b)),
        start_s,
    })
}

/// GPU memory used now (MiB), where NVML works.
fn memory_used(telemetry: Option<&Telemetry>) -> Option<u64> {
    telemetry.and_then(|t| t.sample(0.0).ok()).map(|s| s.memory_used_mib)
}

pub struct ReallocGapOptions<'a> {
    pub model: &'a str,
    pub pcts: &'a [f64],
    pub green_sms: &'a [u32],
    pub batch: u32,
    pub switches: usize,
    pub batches_between: usize,
    pub out: Option<&'a std::path::Path>,
}

pub fn run(o: ReallocGapOptions) -> Result<()> {
    ensure!(o.pcts.len() >= 2, "--pcts needs at least two GPU% values to move between");
    ensure!(
        o.green_sms.is_empty() || o.green_sms.len() >= 2,
        "--green-sms needs at least two SM counts to move between (or none, to skip green contexts)"
    );
    let (model, batch) = (o.model, o.batch);
    let mps = MpsDaemon::start_private(None)?;
    let telemetry = Telemetry::open(0).map_err(|e| tracing::warn!("{e}")).ok();
    // Cold: decision to first batch served on a worker started then.
    let mut cold = Vec::new();
    for &pct in o.pcts {
        let decided = Instant::now();
        let mut worker = Worker::spawn(&spec(model, batch, mps.client_env(pct), Vec::new()))?;
        worker.run(batch)?;
        cold.push((pct, decided.elapsed()));
    }
    let mut ways = vec![Way {
        name: "standby pool (MPS)",
        labels: o.pcts.iter().map(|p| format!("{p}%")).collect(),
        specs: o.pcts.iter().map(|&p| spec(model, batch, mps.client_env(p), Vec::new())).collect(),
        targets: (0..o.pcts.len()).map(|w| (w, 0)).collect(),
    }];
    if !o.green_sms.is_empty() {
        // Under the same MPS daemon at 100%, so the green contexts alone limit the SMs.
        ways.push(Way {
            name: "green contexts",
            labels: o.green_sms.iter().map(|n| format!("{n} SMs")).collect(),
            specs: vec![spec(model, batch, mps.client_env(100.0), o.green_sms.to_vec())],
            targets: (0..o.green_sms.len()).map(|c| (0, c)).collect(),
        });
    }
    let results: Vec<WayResult> = ways
        .into_iter()
        .map(|way| measure(way, telemetry.as_ref(), batch, o.switches, o.batches_between))
        .collect::<Result<_>>()?;
    println!("{model} at batch {batch}, {} reallocations each way, {} batches between", o.switches, o.batches_between);
    for (pct, took) in &cold {
        println!(
            "cold reallocation to {pct}%: decision to first batch served {:.2} s (worker start, model load, graph capture)",
            took.as_secs_f64()
        );
    }
    println!("{}", table(&results));
    if let Some(dir) = o.out {
        std::fs::create_dir_all(dir)?;
        gpuslice_eval::output::write_csv(&dir.join("realloc-gap.csv"), &results)?;
    }
    Ok(())
}

fn table(results: &[WayResult]) -> String {
    let mut t = gpuslice_eval::output::table(vec![
        "way",
        "partitions",
        "steady batch ms",
        "gap median / max us",
        "first batch extra median / max ms",
        "decision to served median / max ms",
        "GPU memory MiB",
        "start s",
    ]);
    for r in results {
        t.add_row(vec![
            r.way.clone(),
            r.partitions.clone(),
            r.steady_ms.clone(),
            format!("{:.1} / {:.1}", r.gap_median_us, r.gap_max_us),
            format!("{:+.3} / {:+.3}", r.first_batch_extra_median_ms, r.first_batch_extra_max_ms),
            format!("{:.3} / {:.3}", r.decision_to_served_median_ms, r.decision_to_served_max_ms),
            r.gpu_memory_mib.map_or("-".into(), |m| m.to_string()),
            format!("{:.1}", r.start_s),
        ]);
    }
    t.to_string()
}
