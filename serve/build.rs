//! Generates the gRPC code of gpuslice.v1 and of the standard inference protocol with protox (no
//! protoc binary) and keeps their descriptor sets for server reflection.
use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    for (proto, descriptor) in [
        ("proto/gpuslice/v1/gpuslice.proto", "gpuslice_v1_descriptor.bin"),
        ("proto/inference/grpc_service.proto", "inference_descriptor.bin"),
    ] {
        println!("cargo:rerun-if-changed={proto}");
        let descriptors = protox::compile([proto], ["proto"])?;
        std::fs::write(out.join(descriptor), descriptors.encode_to_vec())?;
        // Tensor bytes as `Bytes`: decoded as a slice of the received buffer, cloned by count.
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .bytes(".inference.ModelInferRequest.raw_input_contents")
            .bytes(".inference.ModelInferResponse.raw_output_contents")
            .compile_fds(descriptors)?;
    }
    Ok(())
}
