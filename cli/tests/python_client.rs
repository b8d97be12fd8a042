//! A real external client: Python grpcio (with its reflection and health packages) against the
//! `gpuslice serve` binary. `.ci/run` installs the Python packages; elsewhere the test is skipped,
//! saying why, when they are missing.

mod common;

use std::process::Command;

#[test]
fn python_grpcio_client_with_reflection_and_health() {
    if !common::python_or_skip(
        "grpc, grpc_reflection, grpc_health",
        "grpcio, grpcio-reflection and grpcio-health-checking",
    ) {
        return;
    }
    let (server, address) = common::serve(&[]);
    let client = Command::new(common::python())
        .args([concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/grpc_client.py"), &address])
        .output()
        .unwrap();
    common::stop_and_check(server, &[client]);
}
