//! Models running together on the GPU machine through the GPU backend's workers, closed loop:
//! the common part of `gpu-probe` and the co-location half of `profile`.
//!
//! A placement is written `NAME:GPU%[:BATCH]` (torchvision name, MPS active-thread percentage,
//! batch size); a group of placements run together is written with `+` between them.

use anyhow::{Context, Result, bail};
use gpuslice_gpu::mps::MpsDaemon;
use gpuslice_gpu::worker::{SLOTS, StageTimes, Worker, WorkerSpec, default_script};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

/// One model's place in a co-location run.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub model: String,
    pub gpu_pct: f64,
    pub batch: u32,
}

impl Placement {
    /// `NAME:GPU%[:BATCH]`; the batch defaults to `default_batch`.
    pub fn parse(item: &str, default_batch: u32) -> Result<Placement> {
        let mut parts = item.trim().split(':');
        let model = parts.next().filter(|m| !m.is_empty()).with_context(|| format!("{item:?}: no model name"))?;
        let pct = parts.next().with_context(|| format!("{item:?} is not NAME:GPU%[:BATCH]"))?;
        let gpu_pct: f64 = pct.parse().with_context(|| format!("{item:?}: bad GPU% {pct:?}"))?;
        if !(gpu_pct > 0.0 && gpu_pct <= 100.0) {
            bail!("{item:?}: GPU% must be in (0, 100], got {gpu_pct}");
        }
        let batch = match parts.next() {
            Some(b) => b.parse().with_context(|| format!("{item:?}: bad batch size {b:?}"))?,
            None => default_batch,
        };
        if batch == 0 || parts.next().is_some() {
            bail!("{item:?} is not NAME:GPU%[:BATCH] with a batch of at least 1");
        }
        Ok(Placement { model: model.to_string(), gpu_pct, batch })
    }

    /// The placements of a group: `A:PCT[:B]+B:PCT[:B]...`.
    pub fn parse_group(group: &str, default_batch: u32) -> Result<Vec<Placement>> {
        let group: Vec<Placement> =
            group.split('+').map(|item| Placement::parse(item, default_batch)).collect::<Result<_>>()?;
        let mut names: Vec<&str> = group.iter().map(|p| p.model.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            bail!("a group runs each model once: {names:?}");
        }
        Ok(group)
    }

    pub fn label(&self) -> String {
        format!("{}:{}:{}", self.model, self.gpu_pct, self.batch)
    }
}

/// The label of a group, as it is written back (`A:PCT:B+...`).
pub fn group_label(group: &[Placement]) -> String {
    group.iter().map(Placement::label).collect::<Vec<_>>().join("+")
}

/// The worker of a placement: under `daemon`'s MPS at its GPU%, or without MPS (time-sliced)
/// when `daemon` is None; CUDA graphs for `batches`.
pub fn worker_spec(p: &Placement, batches: Vec<u32>, daemon: Option<&MpsDaemon>, fake_ms: Option<f64>) -> WorkerSpec {
    WorkerSpec {
        io: gpuslice_control::tensors::ModelIo::image_classifier(),
        half: true,
        model: p.model.clone(),
        batches,
        script: default_script(),
        env: daemon.map(|d| d.client_env(p.gpu_pct)).unwrap_or_default(),
        fake_ms,
        input_ipc: None,
        packet_pool: None,
        green_sms: Vec::new(),
        quick_start: false,
    }
}

/// Starts the workers all at once (graph capture takes seconds per model).
pub fn spawn_all(specs: &[WorkerSpec]) -> Result<Vec<Worker>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = specs
            .iter()
            .map(|spec| {
                scope.spawn(move || {
                    Worker::spawn(spec).with_context(|| format!("starting the worker for {}", spec.model))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker start thread")).collect()
    })
}

/// What one worker's closed loop saw: GPU time of each batch (CUDA events in the worker) and
/// the round trip seen from here, in microseconds.
pub struct LoopResult {
    pub gpu_us: Histogram<u64>,
    pub round_trip_us: Histogram<u64>,
    pub batches: u64,
    pub items_per_s: f64,
}

impl LoopResult {
    pub fn gpu_ms(&self, quantile: f64) -> f64 {
        self.gpu_us.value_at_quantile(quantile) as f64 / 1000.0
    }
    pub fn round_trip_ms(&self, quantile: f64) -> f64 {
        self.round_trip_us.value_at_quantile(quantile) as f64 / 1000.0
    }
    pub fn gpu_mean_ms(&self) -> f64 {
        self.gpu_us.mean() / 1000.0
    }
}

/// Runs every worker back to back at its batch size for `duration`, all starting together after
/// `warmup` (not recorded), each holding `in_flight` batches (1 to `SLOTS`: with 2 the next
/// batch is handed over while one runs, as the GPU backend serves; the round trip then includes
/// waiting behind the batch ahead).
pub fn run_together(
    workers: &mut [Worker],
    batches: &[u32],
    in_flight: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Vec<LoopResult>> {
    anyhow::ensure!((1..=SLOTS).contains(&in_flight), "batches in flight must be 1 to {SLOTS}, not {in_flight}");
    let start_line = Instant::now() + Duration::from_millis(100);
    std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .iter_mut()
            .zip(batches)
            .map(|(worker, &batch)| {
                scope.spawn(move || -> Result<LoopResult> {
                    let new = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
                    let (mut gpu_us, mut round_trip_us) = (new(), new());
                    std::thread::sleep(start_line.saturating_duration_since(Instant::now()));
                    let mut next = || -> Result<StageTimes> {
                        while worker.in_flight() < in_flight {
                            worker.submit(batch, 0, |_| 0..0)?;
                        }
                        Ok(worker.complete()?.times)
                    };
                    let warm_until = Instant::now() + warmup;
                    while Instant::now() < warm_until {
                        next()?;
                    }
                    let started = Instant::now();
                    let mut done = 0;
                    while started.elapsed() < duration {
                        let t = next()?;
                        gpu_us.record((t.infer_ms * 1000.0) as u64 + 1)?;
                        round_trip_us.record(t.round_trip.as_micros() as u64 + 1)?;
                        done += 1;
                    }
                    let items_per_s = (done * batch as u64) as f64 / started.elapsed().as_secs_f64();
                    // Batches still in flight complete before the worker serves anything else.
                    while worker.in_flight() > 0 {
                        worker.complete()?;
                    }
                    Ok(LoopResult { gpu_us, round_trip_us, batches: done, items_per_s })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker thread")).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_parse_with_and_without_a_batch() {
        let group = Placement::parse_group("densenet121:25+vgg16:40:16", 8).unwrap();
        assert_eq!(group[0], Placement { model: "densenet121".into(), gpu_pct: 25.0, batch: 8 });
        assert_eq!(group[1], Placement { model: "vgg16".into(), gpu_pct: 40.0, batch: 16 });
        assert_eq!(group_label(&group), "densenet121:25:8+vgg16:40:16");
    }

    #[test]
    fn bad_placements_say_what_is_wrong() {
        for (bad, says) in [
            ("vgg16", "NAME:GPU%"),
            ("vgg16:0", "(0, 100]"),
            ("vgg16:120", "(0, 100]"),
            ("vgg16:x", "bad GPU%"),
            ("vgg16:50:0", "at least 1"),
            ("vgg16:50:8:1", "NAME:GPU%[:BATCH]"),
            (":50", "no model name"),
        ] {
            let err = format!("{:#}", Placement::parse(bad, 8).unwrap_err());
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = format!("{:#}", Placement::parse_group("vgg16:50+vgg16:40", 8).unwrap_err());
        assert!(err.contains("each model once"), "{err}");
    }
}
