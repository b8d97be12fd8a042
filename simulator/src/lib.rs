//! A deterministic (seeded) discrete-event simulator of one GPU serving several inference models:
//! per model a request queue, a batcher (max batch, batch timeout) and execution on the model's
//! slice, with service times from the calibrated latency model; temporal, default-MPS and
//! controlled spatial sharing; reallocations that cost a standby handover or a cold restart;
//! deadline drops; and metrics per model, per control interval and in total.

mod config;
mod engine;
mod metrics;
mod service;

pub use config::{
    Allocation, Batching, H100_INTERFERENCE, H100_MPS_LAUNCH_CONTENTION, H100_MPS_SHARE_EXPONENT, MAX_BATCH,
    MAX_BATCH_TIMEOUT_MS, MAX_LATENCY_MS, MAX_PAUSE_S, MAX_TEMPORAL_SWITCH_MS, ModelSetup, ReallocationCost,
    ServiceModel, Sharing, SimConfig, batch_cut,
};
pub use engine::{
    ARRIVAL_TIMES_PER_INTERVAL, BATCH_SAMPLES_PER_INTERVAL, BatchSample, ModelInterval, ModelReport, Report,
    RequestRecord, SimError, Simulator, Ticket,
};
pub use metrics::{Counters, IntervalRing, Summary};

/// Simulated time, in nanoseconds from the start.
pub type Nanos = u64;

/// Seconds to nanoseconds, rounded; negative or NaN input gives 0.
pub fn secs_to_ns(secs: f64) -> Nanos {
    (secs * 1e9).round().max(0.0) as Nanos
}
