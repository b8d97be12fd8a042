//! A real external client: Python grpcio (with its reflection and health packages) against the
//! `gpuslice serve` binary. `.ci/run` installs the Python packages; elsewhere the test is skipped,
//! saying why, when they are missing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn python_has_grpcio() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_reflection, grpc_health"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn python_grpcio_client_with_reflection_and_health() {
    if !python_has_grpcio() {
        assert!(std::env::var_os("CI").is_none(), "CI must have grpcio: .ci/run installs it");
        eprintln!("skipped: python3 with grpcio, grpcio-reflection and grpcio-health-checking is not installed");
        return;
    }
    let mut server = Command::new(env!("CARGO_BIN_EXE_gpuslice"))
        .args(["--log", "warn", "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the server starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let address =
        line.trim().strip_prefix("serving gpuslice.v1 on ").expect("the server prints its address").to_string();
    let client = Command::new("python3")
        .args([concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/grpc_client.py"), &address])
        .output()
        .unwrap();
    // SIGTERM: the server stops accepting and exits cleanly.
    Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    let status = server.wait().unwrap();
    assert!(
        client.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&client.stdout),
        String::from_utf8_lossy(&client.stderr)
    );
    assert!(status.success(), "server exit after SIGTERM: {status}");
}
