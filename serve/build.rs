//! Generates the gpuslice.v1 gRPC code with protox (no protoc binary) and keeps the descriptor
//! set for server reflection.
use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/gpuslice/v1/gpuslice.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("gpuslice_v1_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
