//! gpuslice: an SLO-driven controller that shares one GPU among inference models by controlled
//! spatial sharing. This crate holds what the `gpuslice` command does: load scenarios, run them
//! on the calibrated simulator, benchmark it, and show results as tables, CSV and SVG plots.

pub mod bench;
pub mod calibration;
pub mod capacity;
pub mod colocate;
pub mod evaluate;
pub mod gpu_probe;
pub mod grpc;
pub mod live;
pub mod live_gpu;
pub mod loadtest;
pub mod netml_bench;
pub mod netml_e2e;
pub mod node;
pub mod oracle;
pub mod output;
pub mod plot;
pub mod profile;
pub mod realloc_gap;
pub mod scenario;
pub mod simulate;

/// The generated gpuslice.v1 gRPC types and services.
pub mod proto {
    tonic::include_proto!("gpuslice.v1");
    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gpuslice_v1_descriptor");
}
