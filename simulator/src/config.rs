//! What a simulation is given: how the GPU is shared, what reallocations cost, and per model its
//! SLO, service-time model, allocation and arrivals.

use gpuslice_traces::{ArrivalProcess, LatencyModel};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// How the models share the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sharing {
    /// Time slicing: one batch on the whole GPU at a time, across all models.
    Temporal,
    /// MPS with every model at 100%: batches run together and contend for SMs.
    DefaultMps,
    /// Controlled MPS / SM partitions: each model runs on its own GPU% (the sum at most 100).
    Spatial,
}

impl std::fmt::Display for Sharing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sharing::Temporal => "temporal",
            Sharing::DefaultMps => "default-mps",
            Sharing::Spatial => "spatial",
        })
    }
}

/// One model's slice and batching.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    /// MPS active-thread percentage (or SM share), in (0, 100].
    pub gpu_pct: f64,
    /// Largest batch the batcher forms.
    pub max_batch: u32,
    /// A batch goes as soon as this many requests are queued (and the model's worker is free),
    /// taking up to `max_batch`; fewer wait for more up to `batch_timeout_ms`. Triton's smallest
    /// preferred batch size; equal to `max_batch`, a batch waits to be full. Where the backend
    /// serves fixed sizes (`SimConfig::served_batches`) such a batch is cut to one (`batch_cut`).
    pub min_batch: u32,
    /// How long the oldest queued request may wait for a fuller batch.
    pub batch_timeout_ms: f64,
}

/// How a model's requests are batched, whatever its slice: a dynamic batcher's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Batching {
    /// Largest batch (`Allocation::max_batch`).
    pub max_batch: u32,
    /// Queued requests that send a batch at once (`Allocation::min_batch`).
    pub min_batch: u32,
    /// How long a batch waits to fill, ms (`Allocation::batch_timeout_ms`).
    pub batch_timeout_ms: f64,
}

impl Batching {
    /// Batches of up to `max_batch` that wait to be full, at most `batch_timeout_ms`.
    pub const fn full(max_batch: u32, batch_timeout_ms: f64) -> Batching {
        Batching { max_batch, min_batch: max_batch, batch_timeout_ms }
    }

    /// This batching with batches cut to `largest`.
    pub fn capped(self, largest: u32) -> Batching {
        let max_batch = self.max_batch.min(largest);
        Batching { max_batch, min_batch: self.min_batch.min(max_batch), ..self }
    }

    /// An allocation of `gpu_pct` with this batching.
    pub fn at(self, gpu_pct: f64) -> Allocation {
        Allocation {
            gpu_pct,
            max_batch: self.max_batch,
            min_batch: self.min_batch,
            batch_timeout_ms: self.batch_timeout_ms,
        }
    }
}

impl std::fmt::Display for Batching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch {}", self.max_batch)?;
        if self.min_batch < self.max_batch {
            write!(f, " (sent at {})", self.min_batch)?;
        }
        write!(f, ", wait {} ms", self.batch_timeout_ms)
    }
}

/// The largest `Allocation::max_batch` (beyond any GPU's memory for these models).
pub const MAX_BATCH: u32 = 1024;
/// The longest `Allocation::batch_timeout_ms`: a minute.
pub const MAX_BATCH_TIMEOUT_MS: f64 = 60_000.0;
/// The longest latency SLO, and `SimConfig::drop_after_ms`: an hour, in ms.
pub const MAX_LATENCY_MS: f64 = 3_600_000.0;
/// The longest `SimConfig::temporal_switch_ms` and `SimConfig::hand_off_ms`: a second.
pub const MAX_TEMPORAL_SWITCH_MS: f64 = 1000.0;
/// The longest reallocation pause (`ReallocationCost`): an hour, in seconds.
pub const MAX_PAUSE_S: f64 = 3_600.0;

impl Allocation {
    /// Its batching.
    pub fn batching(&self) -> Batching {
        Batching { max_batch: self.max_batch, min_batch: self.min_batch, batch_timeout_ms: self.batch_timeout_ms }
    }

    /// Why this allocation cannot be applied, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if !(self.gpu_pct > 0.0 && self.gpu_pct <= 100.0) {
            return Some(format!("gpu_pct must be in (0, 100], got {}", self.gpu_pct));
        }
        if !(1..=MAX_BATCH).contains(&self.max_batch) {
            return Some(format!("max_batch must be in 1..={MAX_BATCH}, got {}", self.max_batch));
        }
        if !(1..=self.max_batch).contains(&self.min_batch) {
            return Some(format!("min_batch must be in 1..={} (max_batch), got {}", self.max_batch, self.min_batch));
        }
        if !(self.batch_timeout_ms.is_finite() && (0.0..=MAX_BATCH_TIMEOUT_MS).contains(&self.batch_timeout_ms)) {
            return Some(format!(
                "batch_timeout_ms must be in [0, {MAX_BATCH_TIMEOUT_MS}], got {}",
                self.batch_timeout_ms
            ));
        }
        None
    }
}

/// What it costs a model to change its allocation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ReallocationCost {
    /// A standby worker already holds the new slice; only the queue handover pauses dispatch.
    /// The old worker finishes its in-flight batch meanwhile.
    Standby {
        /// The handover pause, µs.
        handover_us: f64,
    },
    /// The worker is restarted with the new slice; the model dispatches nothing for `restart_s`.
    ColdRestart {
        /// The restart, seconds.
        restart_s: f64,
    },
}

impl ReallocationCost {
    /// Why this cost cannot be simulated, if it cannot.
    pub fn problem(&self) -> Option<String> {
        let (name, seconds) = match *self {
            ReallocationCost::Standby { handover_us } => ("handover_us", handover_us * 1e-6),
            ReallocationCost::ColdRestart { restart_s } => ("restart_s", restart_s),
        };
        (!(seconds.is_finite() && (0.0..=MAX_PAUSE_S).contains(&seconds)))
            .then(|| format!("reallocation {name} must be between 0 and {MAX_PAUSE_S} s, got {seconds} s"))
    }

    /// How long the model dispatches nothing while it moves.
    pub fn pause_ns(&self) -> u64 {
        match self {
            ReallocationCost::Standby { handover_us } => crate::secs_to_ns(handover_us * 1e-6),
            ReallocationCost::ColdRestart { restart_s } => crate::secs_to_ns(*restart_s),
        }
    }
}

/// How long a batch takes when it runs alone on its slice.
#[derive(Debug, Clone)]
pub enum ServiceModel {
    /// From a calibration profile; with `jitter`, a log-normal spread whose p99/p50 matches the profile.
    Calibrated {
        /// The fitted latency surface.
        latency: Arc<LatencyModel>,
        /// Whether service times spread around the median.
        jitter: bool,
    },
    /// A fixed time, whatever the batch and slice (for M/D/1 checks).
    Constant {
        /// The time, ms.
        ms: f64,
    },
    /// Exponentially distributed with this mean (for M/M/1 checks).
    Exponential {
        /// The mean, ms.
        mean_ms: f64,
    },
}

/// `SimConfig::interference` fitted to the co-location run measured on the H100
/// (bench/results/2026-11-23-h100-colocation.csv).
pub const H100_INTERFERENCE: f64 = 0.5;
/// `SimConfig::mps_launch_contention` fitted to the same run.
pub const H100_MPS_LAUNCH_CONTENTION: f64 = 2.0;
/// `SimConfig::mps_share_exponent`: 0.5 with `mps_launch_contention` 2 fits that run best
/// among the values tried.
pub const H100_MPS_SHARE_EXPONENT: f64 = 0.5;

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How the GPU is shared.
    pub sharing: Sharing,
    /// Slowdown from memory-bandwidth and L2 contention: a running batch is slowed by
    /// `1 + interference * (sum of the other running batches' GPU shares) / 100`.
    pub interference: f64,
    /// Per model (by `ModelSetup::name`), its own `interference` where it was measured: models
    /// differ (on the H100 a memory-bound CNN slows about three times more than VGG-16).
    pub interference_by_model: BTreeMap<String, f64>,
    /// Default MPS only: the launch-bound part of a batch (its many small kernels) waits for SM
    /// slots held by co-running batches' large kernels, and takes `1 + this * (sum of the other
    /// running batches' SM-bound fractions)` times as long.
    pub mps_launch_contention: f64,
    /// Per model (by `ModelSetup::name`), its own `mps_launch_contention` where it was measured:
    /// on the H200 a light model (mobilenet_v3_large) waited far longer behind two heavy
    /// models' kernels than the heavy ones did behind each other
    /// (bench/results/2026-12-02-h200-colocation-served).
    pub mps_launch_contention_by_model: BTreeMap<String, f64>,
    /// Default MPS only: how strongly SM shares follow the running batches' SM-bound fractions
    /// (0: an even split, 1: proportional, more: the largest kernels take nearly all).
    pub mps_share_exponent: f64,
    /// GPU% held by work outside this simulation, counted as a co-runner in the interference
    /// (the oracle's planner simulates one model at a time this way).
    pub background_pct: f64,
    /// What a reallocation costs.
    pub reallocation: ReallocationCost,
    /// Requests still queued this long after arrival are dropped (None: never).
    pub drop_after_ms: Option<f64>,
    /// Seed of every random draw.
    pub seed: u64,
    /// Keep one record per completed request (for tests and per-request CSV output).
    pub record_requests: bool,
    /// The batch sizes the backend runs, ascending (a GPU worker's CUDA graphs): a batch of n
    /// requests takes the time of the smallest size that holds it, padded; one above the largest
    /// runs as formed. Empty: every batch as formed.
    pub served_batches: Vec<u32>,
    /// Temporal sharing only: a batch of another model than the one the GPU ran last first
    /// waits this long (ms): the driver's time slice and context switch between the workers'
    /// processes, which a single queue does not have.
    pub temporal_switch_ms: f64,
    /// Time each request spends outside the GPU's kernels on its way, ms, added to its latency:
    /// on the GPU backend its batch's host-to-device copy, host copies and the hand-off between
    /// the server and the worker process (the calibration's grid times the kernels alone). The
    /// GPU is not held for it: the backend overlaps it with other batches.
    pub hand_off_ms: f64,
}

impl SimConfig {
    /// The interference of the model named `name`: its own where measured, else the default.
    pub fn interference_of(&self, name: &str) -> f64 {
        self.interference_by_model.get(name).copied().unwrap_or(self.interference)
    }

    /// Why this run cannot be simulated, if it cannot (a value out of its documented range).
    pub fn problem(&self) -> Option<String> {
        let contention = [
            ("interference", self.interference),
            ("mps_launch_contention", self.mps_launch_contention),
            ("mps_share_exponent", self.mps_share_exponent),
        ];
        let by_model = self
            .interference_by_model
            .iter()
            .chain(&self.mps_launch_contention_by_model)
            .map(|(m, k)| (m.as_str(), *k));
        for (name, value) in contention.into_iter().chain(by_model) {
            if !(value.is_finite() && (0.0..=100.0).contains(&value)) {
                return Some(format!("{name} must be in [0, 100], got {value}"));
            }
        }
        if !(self.background_pct.is_finite() && (0.0..=100.0).contains(&self.background_pct)) {
            return Some(format!("background_pct must be in [0, 100], got {}", self.background_pct));
        }
        if let Some(ms) = self.drop_after_ms.filter(|ms| !(ms.is_finite() && *ms > 0.0 && *ms <= MAX_LATENCY_MS)) {
            return Some(format!("drop_after_ms must be in (0, {MAX_LATENCY_MS}], got {ms}"));
        }
        if !(self.temporal_switch_ms.is_finite() && (0.0..=MAX_TEMPORAL_SWITCH_MS).contains(&self.temporal_switch_ms)) {
            return Some(format!(
                "temporal_switch_ms must be in [0, {MAX_TEMPORAL_SWITCH_MS}], got {}",
                self.temporal_switch_ms
            ));
        }
        if !(self.hand_off_ms.is_finite() && (0.0..=MAX_TEMPORAL_SWITCH_MS).contains(&self.hand_off_ms)) {
            return Some(format!("hand_off_ms must be in [0, {MAX_TEMPORAL_SWITCH_MS}], got {}", self.hand_off_ms));
        }
        if self.served_batches.first() == Some(&0) || !self.served_batches.is_sorted() {
            return Some(format!(
                "served_batches must be ascending sizes of at least 1, got {:?}",
                self.served_batches
            ));
        }
        self.reallocation.problem()
    }

    /// The batch size a batch of `requests` runs as (see `served_batches`).
    pub fn served_size(&self, requests: u32) -> u32 {
        self.served_batches.iter().copied().find(|&b| b >= requests).unwrap_or(requests)
    }
}

/// How many of `queued` requests a batch sent before its timeout takes: the largest of `served`
/// (the sizes a worker runs without padding) that is at least `min_batch` and at most `queued`,
/// so that no GPU time goes to padding and the rest go with the next batch, as Triton's dynamic
/// batcher sends its largest preferred size. `queued` itself where no such size exists (no
/// served sizes, or a batch that waits to be full).
pub fn batch_cut(served: &[u32], queued: u32, min_batch: u32) -> u32 {
    served.iter().copied().rev().find(|&b| b <= queued && b >= min_batch).unwrap_or(queued)
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            sharing: Sharing::Spatial,
            interference: 0.0,
            interference_by_model: BTreeMap::new(),
            mps_launch_contention: 0.0,
            mps_launch_contention_by_model: BTreeMap::new(),
            mps_share_exponent: H100_MPS_SHARE_EXPONENT,
            background_pct: 0.0,
            reallocation: ReallocationCost::Standby { handover_us: 100.0 },
            drop_after_ms: None,
            seed: 0,
            record_requests: false,
            served_batches: Vec::new(),
            temporal_switch_ms: 0.0,
            hand_off_ms: 0.0,
        }
    }
}

/// One served model.
pub struct ModelSetup {
    /// The model's name.
    pub name: String,
    /// Its latency SLO, ms.
    pub slo_ms: f64,
    /// How long its batches take.
    pub service: ServiceModel,
    /// Its allocation at the start.
    pub allocation: Allocation,
    /// Its requests' arrivals.
    pub arrivals: Box<dyn ArrivalProcess>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_runs_as_the_smallest_served_size_that_holds_it() {
        let config = SimConfig { served_batches: vec![1, 2, 4, 8], ..SimConfig::default() };
        assert_eq!([1, 3, 4, 5, 8, 9].map(|n| config.served_size(n)), [1, 4, 4, 8, 8, 9]);
        assert_eq!(SimConfig::default().served_size(5), 5, "none: as formed");
        let unsorted = SimConfig { served_batches: vec![4, 2], ..SimConfig::default() };
        assert!(unsorted.problem().unwrap().contains("served_batches"));
        let zero = SimConfig { served_batches: vec![0, 2], ..SimConfig::default() };
        assert!(zero.problem().is_some());
    }

    #[test]
    fn a_batch_sent_early_is_cut_to_a_served_size_no_smaller_than_min_batch() {
        let graphs = [1, 2, 4, 6, 8, 12, 16, 24, 32];
        assert_eq!([8, 10, 20, 31, 32].map(|n| batch_cut(&graphs, n, 8)), [8, 8, 16, 24, 32]);
        // A batch that waits to be full (min = max = 22) is never cut below it.
        assert_eq!(batch_cut(&graphs, 22, 22), 22);
        assert_eq!(batch_cut(&[], 10, 8), 10, "no served sizes: as queued");
    }
}
