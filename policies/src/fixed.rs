//! Policies that never change an allocation: `static` (the scenario's GPU% split), `temporal`
//! and `default-mps` (the scenario's batching, with the GPU time-sliced or shared uncontrolled),
//! and `triton-like` (uncontrolled sharing with dynamic batching: large batches and a short
//! maximum queue delay, as Triton's dynamic batcher is usually configured).

use crate::{Decision, ModelContext, Policy};
use gpuslice_simulator::{Allocation, Batching, ModelInterval, Sharing};

/// Triton-like dynamic batching: preferred batch up to this size...
const TRITON_MAX_BATCH: u32 = 32;
/// ...waiting at most this long for it.
const TRITON_MAX_QUEUE_DELAY_MS: f64 = 1.0;

/// A policy that keeps the allocations it starts with, under one sharing mode.
pub struct FixedPolicy {
    name: &'static str,
    sharing: Sharing,
    allocations: Vec<Allocation>,
}

impl FixedPolicy {
    /// The scenario's allocations, under `sharing`.
    pub fn configured(name: &'static str, sharing: Sharing, models: &[ModelContext]) -> FixedPolicy {
        let allocations = models.iter().map(|m| m.configured).collect();
        FixedPolicy { name, sharing, allocations }
    }

    /// Default MPS with Triton's usual dynamic batching: batches up to 32, waiting at most 1 ms.
    pub fn triton_like(models: &[ModelContext]) -> FixedPolicy {
        let allocations =
            models.iter().map(|_| Batching::full(TRITON_MAX_BATCH, TRITON_MAX_QUEUE_DELAY_MS).at(100.0)).collect();
        FixedPolicy { name: "triton-like", sharing: Sharing::DefaultMps, allocations }
    }
}

impl Policy for FixedPolicy {
    fn name(&self) -> &str {
        self.name
    }

    fn sharing(&self) -> Sharing {
        self.sharing
    }

    fn initial(&mut self) -> Vec<Allocation> {
        self.allocations.clone()
    }

    fn decide(&mut self, _observations: &[ModelInterval]) -> Vec<Decision> {
        Vec::new()
    }
}
