//! The backend contract: a `Backend` serves the models, reports what happened in each control
//! interval, and applies allocations. `SimBackend` runs the discrete-event simulator; the GPU
//! backend (crate `gpuslice-gpu`) implements the same trait, so a policy runs unchanged offline
//! and live; a live backend also takes models and single requests while it serves
//! (`LiveBackend`). `control_step` is the step of the control loop both kinds of run take each
//! interval: the policy decides on what was observed, and its changes are applied.

pub mod input;
pub mod stages;
pub mod tensors;

use gpuslice_policies::{Decision, Policy};
use gpuslice_simulator::{
    Allocation, ModelInterval, ModelReport, ModelSetup, Report, RequestRecord, ServiceModel, Sharing, SimConfig,
    SimError, Simulator, Ticket, secs_to_ns,
};
use gpuslice_traces::{ArrivalProcess, LatencyModel};
use input::RequestInput;
use std::sync::Arc;
use std::time::Duration;
use tensors::ModelIo;

/// A backend refused an allocation or failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The simulator refused (an allocation out of range, an unknown model...).
    #[error(transparent)]
    Simulator(#[from] SimError),
    /// A model worker failed (the GPU backend's worker error, kept as the source).
    #[error(transparent)]
    Worker(Box<dyn std::error::Error + Send + Sync>),
    /// The backend cannot do what was asked (a sharing mode it does not switch to...).
    #[error("{0}")]
    Unsupported(String),
}

/// Why `name` cannot name a model, if it cannot: a model name is 1-64 characters of A-Z a-z 0-9
/// `_ - .`, starting with neither a dot nor a dash (it names a folder of a model repository and
/// goes into worker arguments, metric labels and logs), and not `total` (the metrics' name for
/// all models together). The message quotes it with `quoted_name`.
pub fn model_name_problem(name: &str) -> Option<String> {
    if tensors::plain_name(name) && !name.starts_with(['.', '-']) && name != "total" {
        return None;
    }
    Some(format!(
        "model name {} must be 1-64 characters of A-Z a-z 0-9 _ - . starting with neither a dot nor a dash, and not \"total\"",
        quoted_name(name)
    ))
}

/// `name` quoted and escaped for a message or a log, cut after 64 characters (a name that came
/// from a request may be anything, of any length).
pub fn quoted_name(name: &str) -> String {
    let shown: String = name.chars().take(64).collect();
    if shown.len() < name.len() {
        format!("{shown:?} (and {} more bytes)", name.len() - shown.len())
    } else {
        format!("{shown:?}")
    }
}

/// One GPU serving several models, observed and steered once per control interval.
pub trait Backend {
    /// Serves until the end of the next control interval and returns what each model saw in it,
    /// or `None` once the workload has ended and every request is served or dropped.
    fn next_interval(&mut self) -> Option<Vec<ModelInterval>>;

    /// Changes one model's allocation (it takes effect after the backend's reallocation cost).
    fn apply(&mut self, model: usize, allocation: Allocation) -> Result<(), BackendError>;

    /// Whole-run figures so far.
    fn report(&mut self) -> Report;

    /// Switches how the GPU is shared, from the next batch on (the simulator: any mode; the
    /// GPU backend: none yet).
    fn set_sharing(&mut self, sharing: Sharing) -> Result<(), BackendError>;

    /// The device's state at the end of the last interval, where the backend has a device.
    fn device(&mut self) -> Option<DeviceSample> {
        None
    }

    /// Per model, where its requests' time went, where the backend measures the stages.
    fn stage_times(&mut self) -> Vec<StageSummary> {
        Vec::new()
    }

    /// Moves a model's arrivals off this GPU, for another GPU's backend to `take_in`
    /// (`Simulator::hand_over`): it serves out what it has queued here. Backends that cannot
    /// move a model refuse.
    fn hand_over(&mut self, model: usize) -> Result<Box<dyn ArrivalProcess>, BackendError> {
        Err(BackendError::Unsupported(format!("this backend cannot move model {model} to another GPU")))
    }

    /// Serves a model moved here (its arrivals from another backend's `hand_over`); returns
    /// its index.
    fn take_in(&mut self, setup: ModelSetup) -> Result<usize, BackendError> {
        Err(BackendError::Unsupported(format!("this backend cannot take model {} from another GPU", setup.name)))
    }

    /// The whole-run figures of models moved off this GPU that have served out their queue
    /// here, since the last call.
    fn take_departed(&mut self) -> Vec<ModelReport> {
        Vec::new()
    }

    /// Serves up to `until_s` seconds into the run, within the control interval, so that a
    /// router in front of several GPUs can send each request as it arrives (`route`).
    /// Backends that serve in real time ignore it.
    fn advance_to(&mut self, _until_s: f64) {}

    /// Takes one request for `model` now, sent by a router in front of several GPUs (a
    /// replica's share of the model's requests). Backends that cannot take one refuse.
    fn route(&mut self, model: usize) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(format!("this backend takes no routed request (model {model})")))
    }

    /// Requests of `model` queued or running: what a router sending each request to the
    /// replica with the fewest in flight reads.
    fn in_flight(&self, _model: usize) -> usize {
        0
    }

    /// Whether a router may still send requests (`route`): while it may, the run does not end
    /// when every request so far is served.
    fn routed_to(&mut self, _open: bool) {}
}

/// A job that readies a model and measures its batch latency (`LiveBackend::measuring_preparer`).
pub type MeasuringJob<P> = Box<dyn FnOnce() -> Result<(P, Vec<gpuslice_traces::ProfilePoint>), BackendError> + Send>;

/// What the live controller serves on. Models are added and retired while it runs, and their
/// requests come one at a time (`submit`); a model keeps its index while it serves (once
/// retired and served out, the simulator gives the index to a model added later).
pub trait LiveBackend: Send + 'static {
    /// A model made ready to serve (on a GPU: its worker processes, started).
    type Prepared: Send + 'static;
    /// A job that readies `model` to start at `gpu_pct`; it may take seconds, so the controller
    /// runs it off its task.
    fn preparer(
        &self,
        model: &ModelSource,
        gpu_pct: f64,
    ) -> Box<dyn FnOnce() -> Result<Self::Prepared, BackendError> + Send>;
    /// A job that readies `model` as `preparer` does and first measures its batch latency on
    /// this backend, for a model no profile knows: the points measured (GPU%, batch, times).
    /// Backends that serve no real model cannot measure one.
    fn measuring_preparer(&self, model: &ModelSource, _gpu_pct: f64) -> MeasuringJob<Self::Prepared> {
        let program = model.program.clone();
        Box::new(move || {
            Err(BackendError::Unsupported(format!(
                "{program} has no profile, and measuring it at registration needs the GPU backend"
            )))
        })
    }
    /// Keeps `gpu_pct` free while other models shrink to make room for a new one (where the
    /// backend rounds shares, so that making room really frees it); 0 ends the reservation.
    fn reserve(&mut self, _gpu_pct: f64) {}
    /// Starts serving `model` with what its preparer readied; returns its index.
    fn add_model(&mut self, model: LiveModel, prepared: Self::Prepared) -> Result<usize, BackendError>;
    /// Takes no more requests; serves those it accepted.
    fn retire_model(&mut self, model: usize) -> Result<(), BackendError>;
    /// Queues one request for `model` with its input row (None: zeros).
    fn submit(&mut self, model: usize, input: Option<RequestInput>) -> Result<Ticket, BackendError>;
    /// Serves up to `now` (since the backend started); returns the submitted requests served
    /// (with their output rows, where the backend computes them) and dropped since the last call.
    fn advance(&mut self, now: Duration) -> Served;
    /// What each model (by index) saw since the last call.
    fn take_interval(&mut self) -> Vec<ModelInterval>;
    /// The allocation of `model` now.
    fn allocation(&self, model: usize) -> Result<Allocation, BackendError>;
    /// Changes the allocation of `model` (after the backend's reallocation cost).
    fn set_allocation(&mut self, model: usize, allocation: Allocation) -> Result<(), BackendError>;
    /// Whole-run figures so far.
    fn report(&mut self) -> Report;
    /// Per model, where its requests' time went, where the backend measures the stages.
    fn stage_times(&mut self) -> Vec<StageSummary> {
        Vec::new()
    }
    /// Switches how the GPU is shared (a backend that offers no modes refuses).
    fn set_sharing(&mut self, sharing: Sharing) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(format!("this backend serves slices only, not {sharing}")))
    }

    /// Why `model` serves nothing any more, if it has failed (its workers failed too often).
    fn failure(&self, _model: usize) -> Option<String> {
        None
    }
    /// Why `model` cannot serve right now while it recovers (its workers are being replaced).
    fn outage(&self, _model: usize) -> Option<String> {
        None
    }
    /// Why the whole node cannot serve right now while it recovers (an MPS outage).
    fn node_outage(&self) -> Option<String> {
        None
    }
    /// The GPU% levels slices are served at, where the backend has such levels (a standby pool).
    fn slice_levels(&self) -> Vec<f64> {
        Vec::new()
    }
    /// The batch sizes the backend serves, if it serves fixed ones (see
    /// `BackendBuilder::served_batches`).
    fn served_batches(&self) -> &[u32] {
        &[]
    }
}

/// What `LiveBackend::advance` returns: the submitted requests served, each with its output row
/// and copy times where the backend computes them, and the tickets of those dropped.
pub type Served = (Vec<(RequestRecord, Option<Computed>)>, Vec<Ticket>);

/// A model as the backend serves it.
pub struct LiveModel {
    /// The model's name.
    pub name: String,
    /// Its latency SLO, ms.
    pub slo_ms: f64,
    /// Its latency profile.
    pub latency: Arc<LatencyModel>,
    /// Its allocation now.
    pub allocation: Allocation,
    /// What its workers run.
    pub source: ModelSource,
}

/// The simulator, run in wall-clock time: a model's service is its profile's latency.
impl LiveBackend for Simulator {
    type Prepared = ();
    fn preparer(&self, _: &ModelSource, _: f64) -> Box<dyn FnOnce() -> Result<(), BackendError> + Send> {
        Box::new(|| Ok(()))
    }
    fn add_model(&mut self, model: LiveModel, _: ()) -> Result<usize, BackendError> {
        let setup = ModelSetup {
            name: model.name,
            slo_ms: model.slo_ms,
            service: ServiceModel::Calibrated { latency: model.latency, jitter: true },
            allocation: model.allocation,
            // No generated arrivals: every request comes through Infer.
            arrivals: Box::new(gpuslice_traces::arrivals::NoArrivals),
        };
        Ok(Simulator::add_model(self, setup)?)
    }
    fn retire_model(&mut self, model: usize) -> Result<(), BackendError> {
        Ok(Simulator::retire_model(self, model)?)
    }
    /// The input is not read: the simulator serves by the profile.
    fn submit(&mut self, model: usize, _input: Option<RequestInput>) -> Result<Ticket, BackendError> {
        Ok(Simulator::submit(self, model)?)
    }
    /// The simulator computes no outputs: only when each request would complete.
    fn advance(&mut self, now: Duration) -> Served {
        self.run_until(secs_to_ns(now.as_secs_f64()));
        let (done, dropped) = self.take_finished();
        (done.into_iter().map(|r| (r, None)).collect(), dropped)
    }
    fn take_interval(&mut self) -> Vec<ModelInterval> {
        Simulator::take_interval(self)
    }
    fn allocation(&self, model: usize) -> Result<Allocation, BackendError> {
        Ok(Simulator::allocation(self, model)?)
    }
    fn set_allocation(&mut self, model: usize, allocation: Allocation) -> Result<(), BackendError> {
        Ok(Simulator::set_allocation(self, model, allocation)?)
    }
    fn report(&mut self) -> Report {
        Simulator::report(self)
    }
}

/// A request's output row and its batch's copy times.
#[derive(Debug, Clone)]
pub struct Computed {
    /// Its output row, as the worker wrote it.
    pub output: Vec<u8>,
    /// Its batch's host-to-device copy, ms (CUDA events; 0 from GPU-less workers).
    pub h2d_ms: f64,
    /// Its batch's device-to-host copy, ms.
    pub d2h_ms: f64,
}

/// What a model's workers run.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// The program (see `WorkerSpec::model`).
    pub program: String,
    /// Its tensors.
    pub io: ModelIo,
    /// Whether it computes in half precision.
    pub half: bool,
}

impl ModelSource {
    /// A torchvision classifier with random weights (benchmarks), in half precision.
    pub fn torchvision(name: &str) -> ModelSource {
        ModelSource { program: name.to_string(), io: ModelIo::image_classifier(), half: true }
    }
}

/// Where one model's requests spent their time, over the whole run: waiting in the queue (and
/// for their batch to form), then their batch's host-to-device copy, inference and
/// device-to-host copy (CUDA events in the worker), and in all from arrival to result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StageSummary {
    /// The model.
    pub model: String,
    /// Requests answered.
    pub requests: u64,
    /// Time in the queue (and waiting for the batch to form): median...
    pub queue_p50_ms: f64,
    /// ...and 99th percentile.
    pub queue_p99_ms: f64,
    /// The part of the queue time until the batch was handed to its worker (formed, then paced
    /// to the worker's batch ahead); the rest it waited on the worker behind that batch. Median...
    pub handed_p50_ms: f64,
    /// ...and 99th percentile.
    pub handed_p99_ms: f64,
    /// Host-to-device copy of the batch, mean.
    pub h2d_mean_ms: f64,
    /// Inference on the GPU, mean over requests (a large batch counts once per request)...
    pub infer_mean_ms: f64,
    /// ...and 99th percentile.
    pub infer_p99_ms: f64,
    /// Inference on the GPU, mean over batches: with `graph_batch_mean`, what to set beside a
    /// profile's latency at that batch size.
    pub infer_batch_mean_ms: f64,
    /// The batch size run (the CUDA graph's: requests padded up to it), mean over batches.
    pub graph_batch_mean: f64,
    /// Device-to-host copy of the results, mean.
    pub d2h_mean_ms: f64,
    /// The host's copy of a batch's request inputs into the worker's shared memory, mean over
    /// batches (zeros written where a request carried none)...
    pub copy_in_batch_mean_ms: f64,
    /// ...and of its output rows out of it, into each request's answer.
    pub copy_out_batch_mean_ms: f64,
    /// Arrival to result: median...
    pub total_p50_ms: f64,
    /// ...and 99th percentile.
    pub total_p99_ms: f64,
}

/// A reading of the GPU (NVML).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DeviceSample {
    /// When it was read, seconds from the start of the run.
    pub time_s: f64,
    /// Percent of the last sample period the GPU ran kernels.
    pub gpu_util_pct: u32,
    /// Percent of the last sample period device memory was read or written.
    pub memory_util_pct: u32,
    /// Device memory in use, MiB.
    pub memory_used_mib: u64,
    /// SM clock, MHz.
    pub sm_clock_mhz: u32,
}

/// The GPU% levels the GPU backend keeps a standby worker at unless configured otherwise.
pub const GPU_POOL_LEVELS: [f64; 7] = [10.0, 20.0, 30.0, 45.0, 60.0, 80.0, 100.0];
/// The batch sizes the GPU backend's workers capture a CUDA graph for: a batch runs on the
/// smallest graph that holds it, padded.
pub const GPU_GRAPH_BATCHES: [u32; 9] = [1, 2, 4, 6, 8, 12, 16, 24, GPU_LARGEST_BATCH];
/// The largest batch the GPU backend serves (its largest CUDA graph). Graphs up to 64 were
/// measured on the H200 (bench/results/2026-12-03-h200-session22-graphs-64): default MPS at
/// 64 / 8 ms held gpu-trio no higher, and model-based's default-MPS trials then chose batches of
/// 64 that cost the mixed trio's 8 ms model its SLO (91.3% at x1.4, held at 32).
pub const GPU_LARGEST_BATCH: u32 = 32;

/// The pool level serving `gpu_pct` when at most `room` GPU% is free for it: the lowest level at
/// or above it if that fits (a slice rounded down would serve less than the policy planned),
/// else the highest level that fits (the lowest level if none does: the caller then refuses the
/// change).
pub fn pool_level(levels: &[f64], gpu_pct: f64, room: f64) -> f64 {
    let fitting = levels.iter().copied().filter(|l| *l <= room + 1e-9);
    let above = fitting.clone().filter(|l| *l >= gpu_pct - 1e-9).fold(f64::INFINITY, f64::min);
    if above.is_finite() {
        return above;
    }
    let highest = fitting.fold(f64::NAN, f64::max);
    if highest.is_nan() { levels.iter().copied().fold(f64::INFINITY, f64::min) } else { highest }
}

/// The pool level a model starts on when a run starts it at `gpu_pct`: the highest level at or
/// below it (the lowest if none), so that starting slices planned to add up to the GPU still
/// fit side by side.
pub fn starting_level(levels: &[f64], gpu_pct: f64) -> f64 {
    pool_level(levels, gpu_pct, gpu_pct)
}

/// The simulator as a backend, advancing simulated time one control interval per call.
pub struct SimBackend {
    sim: Simulator,
    interval_ns: u64,
    until: u64,
    /// Slices are served at these GPU% levels only, as the GPU backend's standby pool does
    /// (none: any GPU%).
    pool_levels: Vec<f64>,
    /// Batches stop at this size, as the GPU backend's largest CUDA graph does.
    max_batch: Option<u32>,
    /// A router may still send requests (`Backend::routed_to`).
    routed_to: bool,
    /// Each model's stage times (by index) and name, kept where the simulator records every
    /// request (`SimConfig::record_requests`): what `Backend::stage_times` reports live.
    stages: Vec<(String, stages::StageRecorder)>,
}

impl SimBackend {
    /// Serves `sim`'s models, `control_interval_s` of simulated time per interval.
    pub fn new(sim: Simulator, control_interval_s: f64) -> SimBackend {
        let interval_ns = secs_to_ns(control_interval_s).max(1);
        SimBackend {
            sim,
            interval_ns,
            until: 0,
            pool_levels: Vec::new(),
            max_batch: None,
            routed_to: false,
            stages: Vec::new(),
        }
    }

    /// Adds the requests served since the last call to their models' stage times: a batch's
    /// requests are recorded one after another, with its start and end.
    fn record_stages(&mut self, records: &[RequestRecord], intervals: &[ModelInterval]) {
        let hand_off = Duration::from_secs_f64(self.sim.config().hand_off_ms * 1e-3);
        for batch in records.chunk_by(|a, b| (a.model, a.start_ns, a.end_ns) == (b.model, b.start_ns, b.end_ns)) {
            let first = batch[0];
            while self.stages.len() <= first.model {
                let name = intervals.get(self.stages.len()).map_or_else(String::new, |i| i.model.clone());
                self.stages.push((name, stages::StageRecorder::default()));
            }
            let ns = |ns: u64| Duration::from_nanos(ns);
            // A simulated batch starts as it is handed to its worker.
            let waits = batch.iter().map(|r| stages::RequestWaits {
                handed: ns(r.start_ns - r.arrival_ns),
                started: ns(r.start_ns - r.arrival_ns),
                answered: ns(r.end_ns - r.arrival_ns) + hand_off,
            });
            let graph = self.sim.config().served_size(first.batch_size);
            let device =
                stages::DeviceTimes { infer_ms: (first.end_ns - first.start_ns) as f64 * 1e-6, ..Default::default() };
            self.stages[first.model].1.record(waits, graph, device, (Duration::ZERO, Duration::ZERO));
        }
    }

    /// An allocation as served: its batches cut to `max_batch`, its slice on a pool level that
    /// fits beside the others' (`Backend::apply`).
    fn as_served(&self, model: Option<usize>, allocation: Allocation) -> Allocation {
        let allocation = self.max_batch.map_or(allocation, |b| allocation.batching().capped(b).at(allocation.gpu_pct));
        if self.pool_levels.is_empty() || self.sim.sharing() != Sharing::Spatial {
            return allocation;
        }
        let held_by_others = self.sim.held_pct(model);
        Allocation { gpu_pct: pool_level(&self.pool_levels, allocation.gpu_pct, 100.0 - held_by_others), ..allocation }
    }
}

impl Backend for SimBackend {
    fn next_interval(&mut self) -> Option<Vec<ModelInterval>> {
        if self.sim.is_drained() && !self.routed_to {
            return None;
        }
        self.until += self.interval_ns;
        self.sim.run_until(self.until);
        // Routed requests are counted in the model's figures; their records serve the stage
        // times only, where every request is recorded.
        let (records, _) = self.sim.take_finished();
        let intervals = self.sim.take_interval();
        if self.sim.config().record_requests {
            self.record_stages(&records, &intervals);
        }
        Some(intervals)
    }

    fn apply(&mut self, model: usize, allocation: Allocation) -> Result<(), BackendError> {
        let allocation = self.as_served(Some(model), allocation);
        Ok(self.sim.set_allocation(model, allocation)?)
    }

    fn hand_over(&mut self, model: usize) -> Result<Box<dyn ArrivalProcess>, BackendError> {
        Ok(self.sim.hand_over(model)?)
    }

    fn take_in(&mut self, mut setup: ModelSetup) -> Result<usize, BackendError> {
        setup.allocation = self.as_served(None, setup.allocation);
        Ok(self.sim.add_model(setup)?)
    }

    fn take_departed(&mut self) -> Vec<ModelReport> {
        self.sim.take_departed()
    }

    fn advance_to(&mut self, until_s: f64) {
        self.sim.run_until(secs_to_ns(until_s).min(self.until + self.interval_ns));
    }

    fn route(&mut self, model: usize) -> Result<(), BackendError> {
        self.sim.submit(model)?;
        Ok(())
    }

    fn in_flight(&self, model: usize) -> usize {
        self.sim.in_flight(model)
    }

    fn routed_to(&mut self, open: bool) {
        self.routed_to = open;
    }

    fn report(&mut self) -> Report {
        self.sim.report()
    }

    fn stage_times(&mut self) -> Vec<StageSummary> {
        self.stages.iter().map(|(name, stages)| stages.summary(name)).collect()
    }

    fn set_sharing(&mut self, sharing: Sharing) -> Result<(), BackendError> {
        Ok(self.sim.set_sharing(sharing)?)
    }
}

/// What a run needs of a backend before it starts: the one place a backend kind is described
/// (the simulator, or the GPU with its workers), so the control loop is written once.
pub trait BackendBuilder {
    /// The sharing modes the backend can switch between while it serves (see
    /// `Backend::set_sharing`).
    fn modes(&self) -> &'static [Sharing];

    /// The GPU% levels the backend serves slices at (a standby pool), if it has such levels.
    fn slice_levels(&self) -> &[f64] {
        &[]
    }

    /// The batch sizes the backend serves, ascending, if it serves fixed ones (the GPU backend:
    /// its CUDA graphs): a batch runs padded to the smallest that holds it, and a larger
    /// `max_batch` is served as the largest. Empty: any batch as formed.
    fn served_batches(&self) -> &[u32] {
        &[]
    }

    /// What the run's progress counts in (seconds simulated, seconds on the GPU).
    fn progress_unit(&self) -> &'static str;

    /// Starts the backend on these models, in `config.sharing`, stepping `control_interval_s`
    /// at a time; requests older than `config.drop_after_ms` are dropped. `switching`: whether
    /// the policy may switch modes (`Backend::set_sharing`) during the run.
    fn build(
        &self,
        config: SimConfig,
        setups: Vec<ModelSetup>,
        control_interval_s: f64,
        switching: bool,
    ) -> Result<Box<dyn Backend>, BackendError>;
}

/// The discrete-event simulator as the backend of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimBuilder;

impl BackendBuilder for SimBuilder {
    fn modes(&self) -> &'static [Sharing] {
        &[Sharing::Temporal, Sharing::DefaultMps, Sharing::Spatial]
    }

    fn progress_unit(&self) -> &'static str {
        "s simulated"
    }

    fn build(
        &self,
        config: SimConfig,
        setups: Vec<ModelSetup>,
        control_interval_s: f64,
        _switching: bool,
    ) -> Result<Box<dyn Backend>, BackendError> {
        Ok(Box::new(SimBackend::new(Simulator::new(config, setups)?, control_interval_s)))
    }
}

/// The simulator shaped like the GPU backend: slices on a standby pool's levels (any GPU%
/// without levels), batches padded to its CUDA graphs' sizes and cut at the largest. What the
/// simulator predicts for a live node (`evaluate --like-gpu-backend`).
#[derive(Debug, Clone)]
pub struct PooledSimBuilder {
    /// The pool's GPU% levels.
    pub pool_levels: Vec<f64>,
    /// The batch sizes served, ascending (one CUDA graph each): a batch runs padded to the
    /// smallest that holds it, and none is larger than the last.
    pub batches: Vec<u32>,
}

impl PooledSimBuilder {
    /// Shaped like a GPU backend with the shipped defaults.
    pub fn gpu_backend() -> PooledSimBuilder {
        PooledSimBuilder { pool_levels: GPU_POOL_LEVELS.to_vec(), batches: GPU_GRAPH_BATCHES.to_vec() }
    }

    fn largest_batch(&self) -> u32 {
        self.batches.last().copied().unwrap_or(u32::MAX)
    }
}

impl BackendBuilder for PooledSimBuilder {
    fn modes(&self) -> &'static [Sharing] {
        SimBuilder.modes()
    }

    fn slice_levels(&self) -> &[f64] {
        &self.pool_levels
    }

    fn served_batches(&self) -> &[u32] {
        &self.batches
    }

    fn progress_unit(&self) -> &'static str {
        SimBuilder.progress_unit()
    }

    /// Models start on pool levels as the GPU backend starts them (`starting_level`, then the
    /// level that fits beside the models before); batches above the largest served are cut to it.
    fn build(
        &self,
        config: SimConfig,
        mut setups: Vec<ModelSetup>,
        control_interval_s: f64,
        _switching: bool,
    ) -> Result<Box<dyn Backend>, BackendError> {
        let config = SimConfig { served_batches: self.batches.clone(), ..config };
        let mut held = 0.0;
        for setup in &mut setups {
            let a = &mut setup.allocation;
            *a = a.batching().capped(self.largest_batch()).at(a.gpu_pct);
            if config.sharing == Sharing::Spatial && !self.pool_levels.is_empty() {
                a.gpu_pct = pool_level(&self.pool_levels, starting_level(&self.pool_levels, a.gpu_pct), 100.0 - held);
                held += a.gpu_pct;
            }
        }
        let mut backend = SimBackend::new(Simulator::new(config, setups)?, control_interval_s);
        (backend.pool_levels, backend.max_batch) = (self.pool_levels.clone(), self.batches.last().copied());
        Ok(Box::new(backend))
    }
}

/// What a control step changes, by the policy's model index: an offline backend directly, the
/// live controller through its registered models.
pub trait Steered {
    /// Changes model `model`'s allocation.
    fn apply(&mut self, model: usize, allocation: Allocation) -> Result<(), BackendError>;
    /// Switches how the GPU is shared.
    fn set_sharing(&mut self, sharing: Sharing) -> Result<(), BackendError>;
}

impl Steered for Box<dyn Backend> {
    fn apply(&mut self, model: usize, allocation: Allocation) -> Result<(), BackendError> {
        self.as_mut().apply(model, allocation)
    }
    fn set_sharing(&mut self, sharing: Sharing) -> Result<(), BackendError> {
        self.as_mut().set_sharing(sharing)
    }
}

/// A change a control step made or tried.
#[derive(Debug)]
pub enum Change {
    /// A model's new allocation, and the policy's reason.
    Allocation {
        /// The model (the policy's index).
        model: usize,
        /// Its new allocation.
        allocation: Allocation,
        /// Why, in the policy's words.
        reason: String,
    },
    /// A new sharing mode for every model.
    Sharing {
        /// The mode before.
        from: Sharing,
        /// The mode after.
        to: Sharing,
    },
}

/// What a control step did: the changes applied, and those the backend refused (each leaves
/// things as they were; serving goes on).
#[derive(Debug, Default)]
pub struct StepOutcome {
    /// Applied, in order.
    pub applied: Vec<Change>,
    /// Refused, with why.
    pub refused: Vec<(Change, BackendError)>,
}

/// One step of the control loop, the same offline and live: `policy` decides on the interval
/// just `observed`; its allocation changes (but those of `held` models, e.g. pinned by an
/// operator) are applied (`apply_shrinking_first`); then, if the policy wants another sharing
/// mode than `sharing`, the switch (`sharing` follows it when applied).
pub fn control_step(
    policy: &mut dyn Policy,
    observed: &[ModelInterval],
    held: &dyn Fn(usize) -> bool,
    sharing: &mut Sharing,
    target: &mut dyn Steered,
) -> StepOutcome {
    let decisions: Vec<Decision> = policy.decide(observed).into_iter().filter(|d| !held(d.model)).collect();
    let now = |m: usize| observed.get(m).map_or(0.0, |o| o.allocation.gpu_pct);
    let mut outcome = apply_shrinking_first(decisions, &now, target);
    follow_sharing(policy.sharing(), sharing, target, &mut outcome);
    outcome
}

/// Switches `target` from `sharing` to the mode a policy `wanted`, if they differ, and records
/// the switch in `outcome` (applied, or refused with why).
pub fn follow_sharing(wanted: Sharing, sharing: &mut Sharing, target: &mut dyn Steered, outcome: &mut StepOutcome) {
    if wanted == *sharing {
        return;
    }
    let change = Change::Sharing { from: *sharing, to: wanted };
    match target.set_sharing(wanted) {
        Ok(()) => {
            *sharing = wanted;
            outcome.applied.push(change);
        }
        Err(e) => outcome.refused.push((change, e)),
    }
}

/// Applies `decisions` with the slices that shrink (against each model's GPU% `now`) before
/// those that grow, so that the GPU is never oversubscribed in between.
pub fn apply_shrinking_first(
    mut decisions: Vec<Decision>,
    now: &dyn Fn(usize) -> f64,
    target: &mut dyn Steered,
) -> StepOutcome {
    decisions.sort_by(|a, b| (a.allocation.gpu_pct - now(a.model)).total_cmp(&(b.allocation.gpu_pct - now(b.model))));
    let mut outcome = StepOutcome::default();
    for Decision { model, allocation, reason } in decisions {
        let change = Change::Allocation { model, allocation, reason };
        match target.apply(model, allocation) {
            Ok(()) => outcome.applied.push(change),
            Err(e) => outcome.refused.push((change, e)),
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_simulator::Counters;

    /// Decides the same allocations every interval, in the given order, and wants `sharing`.
    struct Scripted {
        decisions: Vec<(usize, f64)>,
        sharing: Sharing,
    }

    impl Policy for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        fn sharing(&self) -> Sharing {
            self.sharing
        }
        fn initial(&mut self) -> Vec<Allocation> {
            Vec::new()
        }
        fn decide(&mut self, _: &[ModelInterval]) -> Vec<Decision> {
            let at = |gpu_pct| Allocation { gpu_pct, max_batch: 8, min_batch: 8, batch_timeout_ms: 1.0 };
            self.decisions
                .iter()
                .map(|&(model, pct)| Decision { model, allocation: at(pct), reason: "r".into() })
                .collect()
        }
    }

    /// Records what it is asked, refusing one model's changes and every sharing switch.
    #[derive(Default)]
    struct Recorder {
        applied: Vec<(usize, f64)>,
        refuse_model: Option<usize>,
    }

    impl Steered for Recorder {
        fn apply(&mut self, model: usize, allocation: Allocation) -> Result<(), BackendError> {
            if self.refuse_model == Some(model) {
                return Err(BackendError::Unsupported("no".into()));
            }
            self.applied.push((model, allocation.gpu_pct));
            Ok(())
        }
        fn set_sharing(&mut self, _: Sharing) -> Result<(), BackendError> {
            Err(BackendError::Unsupported("slices only".into()))
        }
    }

    fn observed(gpu: &[f64]) -> Vec<ModelInterval> {
        gpu.iter()
            .enumerate()
            .map(|(m, &gpu_pct)| ModelInterval {
                model: format!("m{m}"),
                start_s: 0.0,
                end_s: 1.0,
                allocation: Allocation { gpu_pct, max_batch: 8, min_batch: 8, batch_timeout_ms: 1.0 },
                queue_len: 0,
                summary: Counters::new().summary(1, 1),
                batches: Vec::new(),
                arrivals_s: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn slices_shrink_before_others_grow_and_held_models_stay() {
        // m0 grows 20 -> 50, m1 shrinks 60 -> 30, m2 shrinks 20 -> 10 but is held.
        let mut policy = Scripted { decisions: vec![(0, 50.0), (1, 30.0), (2, 10.0)], sharing: Sharing::Spatial };
        let mut target = Recorder::default();
        let mut sharing = Sharing::Spatial;
        let outcome = control_step(&mut policy, &observed(&[20.0, 60.0, 20.0]), &|m| m == 2, &mut sharing, &mut target);
        assert_eq!(target.applied, vec![(1, 30.0), (0, 50.0)]);
        assert_eq!(outcome.applied.len(), 2);
        assert!(outcome.refused.is_empty());
    }

    #[test]
    fn a_refused_change_is_reported_and_the_others_still_apply() {
        let mut policy = Scripted { decisions: vec![(0, 50.0), (1, 30.0)], sharing: Sharing::DefaultMps };
        let mut target = Recorder { refuse_model: Some(1), ..Recorder::default() };
        let mut sharing = Sharing::Spatial;
        let outcome = control_step(&mut policy, &observed(&[20.0, 60.0]), &|_| false, &mut sharing, &mut target);
        assert_eq!(target.applied, vec![(0, 50.0)]);
        assert_eq!(outcome.refused.len(), 2, "model 1's change and the sharing switch");
        assert!(matches!(outcome.refused[1].0, Change::Sharing { from: Sharing::Spatial, to: Sharing::DefaultMps }));
        assert_eq!(sharing, Sharing::Spatial, "a refused switch leaves the mode as it was");
    }
}
