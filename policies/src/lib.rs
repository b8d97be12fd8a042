//! Allocation policies behind one trait. Each control interval a policy sees, per model, what
//! happened (arrival rate, queue length, completed batches with their size and GPU%, latency
//! percentiles, drops) and returns decisions: a model's GPU%, max batch and batch timeout, each
//! with a short reason.

mod fixed;
mod gslice;
mod model_based;
mod oracle;
mod replay;
mod shares;

pub use fixed::FixedPolicy;
pub use gslice::Gslice;
pub use model_based::{BATCH_SIZES, ModelBased, TRIAL_EVERY};
pub use oracle::{Oracle, OraclePlan, PlanInputs, WindowPlan};
pub use replay::{
    DeviceModel, ReplayRun, SHARED_BATCHINGS, TUNING_BATCHES, TUNING_SENT_AT, TUNING_WAITS_MS, tuning_grid,
};

use gpuslice_simulator::{Allocation, ModelInterval, Sharing};
use gpuslice_traces::LatencyModel;
use std::sync::Arc;

/// What a policy knows of a model before it runs.
#[derive(Debug, Clone)]
pub struct ModelContext {
    /// The model's name.
    pub name: String,
    /// Its latency SLO, ms.
    pub slo_ms: f64,
    /// Higher is more important; kept when the GPU cannot meet every SLO.
    pub priority: u32,
    /// The latency model calibrated from the profile (a policy's prior).
    pub latency: Arc<LatencyModel>,
    /// The allocation the scenario states.
    pub configured: Allocation,
}

/// A change of one model's allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The model's index.
    pub model: usize,
    /// Its new allocation.
    pub allocation: Allocation,
    /// Why, for logs and decisions.csv.
    pub reason: String,
}

/// A policy: chooses how the GPU is shared and, each control interval, each model's allocation.
pub trait Policy: Send {
    /// The policy's name.
    fn name(&self) -> &str;

    /// How the backend is to share the GPU: asked before the first interval and again after
    /// every decision (a policy that switches modes answers with its current one).
    fn sharing(&self) -> Sharing;

    /// Allocations before the first interval, one per model.
    fn initial(&mut self) -> Vec<Allocation>;

    /// Decisions after an interval; `observations[i]` is model i's interval.
    fn decide(&mut self, observations: &[ModelInterval]) -> Vec<Decision>;

    /// The backend serves slices at these GPU% only (a standby pool's levels) and rounds any
    /// other to one of them. A policy that sizes slices plans on them instead, so that it, not
    /// the rounding, decides which model gets less than it asked. Others ignore it, and so
    /// does every policy when there are no levels.
    fn plan_on_levels(&mut self, _levels: &[f64]) {}

    /// The backend serves batches at these sizes only (ascending; the GPU backend: its CUDA
    /// graphs): a batch runs padded to the smallest that holds it, and a larger `max_batch` is
    /// served as the largest. A policy that sizes batches plans with them; the others ignore
    /// it, and so does every policy when there are none.
    fn serve_batches(&mut self, _sizes: &[u32]) {}

    /// The sharing modes the backend can switch between while it serves (the simulator: all
    /// three). A policy that switches modes chooses among these; the others ignore it.
    fn offer_modes(&mut self, _modes: &[Sharing]) {}

    /// Whether it may switch modes during the run, among those offered (the backend then keeps
    /// what a switch needs, e.g. the GPU's standby pool under default MPS).
    fn switches_modes(&self) -> bool {
        false
    }
}

/// Names accepted by `build`.
pub const POLICY_NAMES: [&str; 7] =
    ["static", "temporal", "default-mps", "triton-like", "gslice", "model-based", "oracle"];

/// A policy that cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// No policy has this name.
    #[error("unknown policy {name:?}; known: {}", POLICY_NAMES.join(", "))]
    Unknown {
        /// The name asked for.
        name: String,
    },
    /// The oracle was asked for without its plan.
    #[error("the oracle needs a plan computed from the whole trace")]
    OracleWithoutPlan,
}

/// The policy called `name` for these models; `device` is the model of the GPU that planning
/// policies simulate on. `oracle` needs its plan (see `OraclePlan`).
pub fn build(
    name: &str,
    models: &[ModelContext],
    device: &DeviceModel,
    oracle_plan: Option<OraclePlan>,
) -> Result<Box<dyn Policy>, PolicyError> {
    Ok(match name {
        "static" => Box::new(FixedPolicy::configured("static", Sharing::Spatial, models)),
        "temporal" => Box::new(FixedPolicy::configured("temporal", Sharing::Temporal, models)),
        "default-mps" => Box::new(FixedPolicy::configured("default-mps", Sharing::DefaultMps, models)),
        "triton-like" => Box::new(FixedPolicy::triton_like(models)),
        "gslice" => Box::new(Gslice::new(models.to_vec())),
        "model-based" => Box::new(ModelBased::new(models.to_vec(), device.clone())),
        "oracle" => Box::new(Oracle::new(oracle_plan.ok_or(PolicyError::OracleWithoutPlan)?)),
        other => return Err(PolicyError::Unknown { name: other.to_string() }),
    })
}
