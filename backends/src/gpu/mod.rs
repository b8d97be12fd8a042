//! The real GPU backend's parts: NVIDIA MPS control and model worker processes.

pub mod mps;
pub mod worker;
