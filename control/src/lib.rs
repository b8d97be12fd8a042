//! The backend contract: a `Backend` serves the models, reports what happened in each control
//! interval, and applies allocations. `SimBackend` runs the discrete-event simulator; the GPU
//! backend (crate `gpuslice-gpu`) implements the same trait, so a policy runs unchanged offline
//! and live.

use gpuslice_simulator::{Allocation, ModelInterval, Report, Sharing, SimError, Simulator, secs_to_ns};

/// A backend refused an allocation or failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Simulator(#[from] SimError),
    /// A model worker failed (the GPU backend's worker error, kept as the source).
    #[error(transparent)]
    Worker(Box<dyn std::error::Error + Send + Sync>),
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
    pub model: String,
    pub requests: u64,
    pub queue_p50_ms: f64,
    pub queue_p99_ms: f64,
    pub h2d_mean_ms: f64,
    pub infer_mean_ms: f64,
    pub infer_p99_ms: f64,
    pub d2h_mean_ms: f64,
    pub total_p50_ms: f64,
    pub total_p99_ms: f64,
}

/// A reading of the GPU (NVML).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DeviceSample {
    pub time_s: f64,
    /// Percent of the last sample period the GPU ran kernels.
    pub gpu_util_pct: u32,
    pub memory_util_pct: u32,
    pub memory_used_mib: u64,
    pub sm_clock_mhz: u32,
}

/// The simulator as a backend, advancing simulated time one control interval per call.
pub struct SimBackend {
    sim: Simulator,
    interval_ns: u64,
    until: u64,
}

impl SimBackend {
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
