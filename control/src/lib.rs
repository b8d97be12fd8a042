//! The backend contract: a `Backend` serves the models, reports what happened in each control
//! interval, and applies allocations. `SimBackend` runs the discrete-event simulator; the GPU
//! backend (crate `gpuslice-gpu`) implements the same trait, so a policy runs unchanged offline
//! and live.

use gpuslice_simulator::{
    Allocation, ModelInterval, ModelSetup, Report, Sharing, SimConfig, SimError, Simulator, secs_to_ns,
};

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
    /// Host-to-device copy of the batch, mean.
    pub h2d_mean_ms: f64,
    /// Inference on the GPU, mean...
    pub infer_mean_ms: f64,
    /// ...and 99th percentile.
    pub infer_p99_ms: f64,
    /// Device-to-host copy of the results, mean.
    pub d2h_mean_ms: f64,
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

/// The simulator as a backend, advancing simulated time one control interval per call.
pub struct SimBackend {
    sim: Simulator,
    interval_ns: u64,
    until: u64,
}

impl SimBackend {
    /// Serves `sim`'s models, `control_interval_s` of simulated time per interval.
    pub fn new(sim: Simulator, control_interval_s: f64) -> SimBackend {
        SimBackend { sim, interval_ns: secs_to_ns(control_interval_s).max(1), until: 0 }
    }
}

impl Backend for SimBackend {
    fn next_interval(&mut self) -> Option<Vec<ModelInterval>> {
        if self.sim.is_drained() {
            return None;
        }
        self.until += self.interval_ns;
        self.sim.run_until(self.until);
        Some(self.sim.take_interval())
    }

    fn apply(&mut self, model: usize, allocation: Allocation) -> Result<(), BackendError> {
        Ok(self.sim.set_allocation(model, allocation)?)
    }

    fn report(&mut self) -> Report {
        self.sim.report()
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

    /// The largest batch the backend serves, if it has one (the GPU backend: its largest CUDA
    /// graph); a larger `max_batch` is served as this.
    fn max_batch(&self) -> Option<u32> {
        None
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

/// Orders a control interval's allocation changes so that slices shrink before others grow: the
/// GPU is then never oversubscribed in between. `growth` is a change's GPU% minus the model's
/// current GPU%. Offline and live runs apply their decisions in this order.
pub fn order_shrinking_first<T>(changes: &mut [T], growth: impl Fn(&T) -> f64) {
    changes.sort_by(|a, b| growth(a).total_cmp(&growth(b)));
}
