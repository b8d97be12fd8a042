//! The real GPU backend: NVIDIA MPS control, model worker processes, and `GpuBackend`, which
//! serves models on them behind the `Backend` trait.

pub mod builder;
pub mod live;
pub mod mps;
pub mod serving;
pub mod telemetry;
pub mod worker;
