//! What the gRPC tests share: a server on a free loopback port with a client, and a model to
//! register.

use gpuslice_serve::grpc::{self, Running, ServeOptions};
use gpuslice_serve::proto::RegisterModelRequest;
use gpuslice_serve::proto::controller_client::ControllerClient;
use gpuslice_serve::proto::register_model_request::Profile;
use tonic::transport::Channel;

/// Starts a server with `options` and connects a control-plane client to it.
pub async fn serve(options: ServeOptions) -> (Running, ControllerClient<Channel>) {
    let running = grpc::start(options).await.unwrap();
    let client = ControllerClient::connect(format!("http://{}", running.grpc)).await.unwrap();
    (running, client)
}

/// `name` with the H100 CUDA-graph profile's latency (its model of that name), batches up to 16.
pub fn register(name: &str, slo_ms: f64) -> RegisterModelRequest {
    RegisterModelRequest {
        name: name.into(),
        slo_ms,
        priority: 0,
        max_batch: 16,
        profile: Some(Profile::ProfilePath("builtin:h100-cudagraph".into())),
        profile_model: String::new(),
    }
}
