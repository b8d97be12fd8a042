//! Replaying arrivals through the simulator, the model of the GPU that planning policies share:
//! the oracle replays the future of the trace, model-based the recent past (its mode trials).

use crate::ModelContext;
use gpuslice_simulator::{
    Allocation, Batching, ModelSetup, Report, ServiceModel, Sharing, SimConfig, SimError, Simulator,
};
use gpuslice_traces::arrivals::Replay;
use std::sync::Arc;

/// What a policy that plans by simulation knows of the GPU: the simulator settings of the run
/// (co-location interference, default-MPS contention, reallocation cost, drops) and whether
/// service times spread.
#[derive(Debug, Clone, Default)]
pub struct DeviceModel {
    /// The simulator's settings; `sharing` and `seed` are set per replay.
    pub config: SimConfig,
    /// Whether service times spread around the profile's median (see `ServiceModel`).
    pub service_jitter: bool,
}

/// Uniform batchings the shared modes are planned and tried with: those the tuned baselines chose
/// on the shipped scenarios, small batches for tight SLOs, no wait at all (a batch takes what is
/// queued when the GPU frees: the lowest latency at light load), and batches sent at 8 queued as
/// Triton's preferred batch size: its best setting on the H200's gpu-trio (up to 32, else after
/// 8 ms: bench/results/2026-12-03-h200-session22-graphs-64) and tuned default MPS's best on the
/// mixed trio in the simulator (up to 64, else after 4 ms).
pub const SHARED_BATCHINGS: [Batching; 9] = [
    Batching::full(8, 1.0),
    Batching::full(16, 1.0),
    Batching::full(32, 1.0),
    Batching::full(64, 1.0),
    Batching::full(32, 8.0),
    Batching::full(64, 2.0),
    Batching::full(64, 0.0),
    Batching { max_batch: 32, min_batch: 8, batch_timeout_ms: 8.0 },
    Batching { max_batch: 64, min_batch: 8, batch_timeout_ms: 4.0 },
];

/// The max batch sizes of the static grid: what `evaluate --capacity` tunes the temporal and
/// default-MPS baselines over, and what model-based weighs online (its floor)...
pub const TUNING_BATCHES: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];
/// ...and batch waits (ms).
pub const TUNING_WAITS_MS: [f64; 5] = [0.5, 1.0, 2.0, 4.0, 8.0];
/// Batches that wait 2 ms or more are also tried sent at this many queued (`Batching::min_batch`,
/// Triton's smallest preferred batch size), where the max batch is larger: what a Triton user
/// sets beside the queue delay (on the H200's gpu-trio, 32 / 8 ms sent at 8 held x1.15 live where
/// waiting to be full held x1.1: bench/results/2026-12-03-h200-session22-graphs-64).
pub const TUNING_SENT_AT: u32 = 8;

/// Every setting of the static grid: each max batch at each wait, and the larger batches that
/// wait 2 ms or more also sent at `TUNING_SENT_AT` queued.
pub fn tuning_grid() -> Vec<Batching> {
    let full = TUNING_BATCHES.iter().flat_map(|&max_batch| {
        TUNING_WAITS_MS.iter().map(move |&batch_timeout_ms| Batching::full(max_batch, batch_timeout_ms))
    });
    let sent_early = full
        .clone()
        .filter(|b| b.max_batch > TUNING_SENT_AT && b.batch_timeout_ms >= 2.0)
        .map(|b| Batching { min_batch: TUNING_SENT_AT, ..b });
    full.chain(sent_early).collect()
}

/// One replay: every model's arrival times (seconds from the replay's start, ascending), each
/// played `scale` times over (see `Replay::new`), at its allocation, under `sharing`.
pub struct ReplayRun<'a> {
    /// The models.
    pub models: &'a [ModelContext],
    /// Per model, its arrivals.
    pub times: &'a [Arc<[f64]>],
    /// Per model, its allocation.
    pub allocations: &'a [Allocation],
    /// How the GPU is shared.
    pub sharing: Sharing,
    /// Load multiplier.
    pub scale: f64,
    /// Seed of the replay's random draws.
    pub seed: u64,
    /// Requests that arrive before this (seconds into the replay) load the GPU but are not
    /// counted in the report's arrivals and within-SLO counts (0: all are).
    pub judged_from_s: f64,
}

impl DeviceModel {
    /// The H100's co-location model (`H100_INTERFERENCE`, `H100_MPS_LAUNCH_CONTENTION`), with
    /// spread service times: for a live node without a calibration of its own.
    pub fn h100() -> DeviceModel {
        let config = SimConfig {
            interference: gpuslice_simulator::H100_INTERFERENCE,
            mps_launch_contention: gpuslice_simulator::H100_MPS_LAUNCH_CONTENTION,
            ..SimConfig::default()
        };
        DeviceModel { config, service_jitter: true }
    }

    /// Model `m` replaying `times` at `allocation`, `scale` times over.
    pub(crate) fn setup(
        &self,
        model: &ModelContext,
        times: Arc<[f64]>,
        allocation: Allocation,
        scale: f64,
        seed: u64,
    ) -> ModelSetup {
        ModelSetup {
            name: model.name.clone(),
            slo_ms: model.slo_ms,
            service: ServiceModel::Calibrated { latency: model.latency.clone(), jitter: self.service_jitter },
            allocation,
            arrivals: Box::new(Replay::new(times, 1.0, scale, None, seed)),
        }
    }

    /// Runs `run` to the end (every request served or dropped) and reports it.
    pub fn replay(&self, run: &ReplayRun) -> Result<Report, SimError> {
        let setups = (0..run.models.len())
            .map(|m| {
                let seed = run.seed.wrapping_add(m as u64);
                self.setup(&run.models[m], run.times[m].clone(), run.allocations[m], run.scale, seed)
            })
            .collect();
        let config = SimConfig { sharing: run.sharing, seed: run.seed, record_requests: false, ..self.config.clone() };
        let mut sim = Simulator::new(config, setups)?;
        let unjudged = (run.judged_from_s > 0.0).then(|| {
            sim.run_until(gpuslice_simulator::secs_to_ns(run.judged_from_s));
            sim.report()
        });
        sim.finish();
        let mut report = sim.report();
        for (model, early) in report.models.iter_mut().zip(unjudged.iter().flat_map(|r| &r.models)) {
            model.summary.arrivals -= early.summary.arrivals;
            model.summary.within_slo -= early.summary.within_slo;
        }
        Ok(report)
    }
}
