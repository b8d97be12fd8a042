//! The live node: the gRPC control plane (`gpuslice.v1`, with health and reflection) and
//! Prometheus metrics (`grpc`), the live control loop over the simulated or GPU backend (`live`,
//! `live_gpu`), the NetML ingress (`netml`), the node's TOML configuration (`node`), the loopback
//! load test (`loadtest`) and a scenario's arrivals sent to any inference-protocol server
//! (`scenario_load`).

pub mod gpus;
pub mod grpc;
pub mod kserve;
pub mod live;
pub mod live_gpu;
pub mod loadtest;
pub mod netml;
pub mod node;
pub mod repository;
pub mod scenario_load;
pub mod tls;

/// The generated gpuslice.v1 gRPC types and services.
#[allow(missing_docs)]
pub mod proto {
    tonic::include_proto!("gpuslice.v1");
    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gpuslice_v1_descriptor");
}

/// The generated types and service of the standard inference protocol (KServe v2).
#[allow(missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("inference_descriptor");
}
