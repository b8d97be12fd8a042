//! The co-location file `gpuslice profile` writes and `calibrate` reads: one row per model of a
//! group of models measured running together on the GPU.

use serde::{Deserialize, Serialize};

/// One model of a co-location group. Times are GPU time per batch (CUDA events in the worker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColocationRow {
    /// Every placement of the group, `MODEL:GPU%:BATCH` joined by `+`.
    pub group: String,
    /// The model (torchvision name).
    pub model: String,
    /// Its MPS active-thread percentage.
    pub gpu_pct: f64,
    /// Its batch size.
    pub batch: u32,
    /// Batches timed while the group ran together.
    pub batches: u64,
    /// Median GPU time per batch, together.
    pub p50_ms: f64,
    /// 99th percentile, together.
    pub p99_ms: f64,
    /// Mean, together.
    pub mean_ms: f64,
    /// Images per second, together.
    pub imgs_per_s: f64,
    /// The same worker alone, just before.
    pub solo_p50_ms: f64,
    /// The same worker alone: its 99th percentile.
    pub solo_p99_ms: f64,
}
