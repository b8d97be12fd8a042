//! The standard inference protocol with its usual client: tritonclient (Python, unchanged)
//! against `gpuslice serve --backend gpu --fake-ms 5 --model-repository examples/models`, the
//! GPU-less workers answering each row with the sum of its inputs (see
//! `tests/python/tritonclient_check.py`). `.ci/run` installs tritonclient; elsewhere the test is
//! skipped, saying why, when it is missing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn python_has_tritonclient() -> bool {
    Command::new("python3").args(["-c", "import tritonclient.grpc, numpy"]).status().is_ok_and(|s| s.success())
}

#[test]
fn tritonclient_infers_through_gpuslice_and_each_caller_gets_its_own_answer() {
    if !python_has_tritonclient() {
        assert!(std::env::var_os("CI").is_none(), "CI must have tritonclient: .ci/run installs it");
        eprintln!("skipped: python3 with tritonclient[grpc] and numpy is not installed");
        return;
    }
    let repository = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/models");
    let mut server = Command::new(env!("CARGO_BIN_EXE_gpuslice"))
        .args(["--log", "warn", "serve", "--backend", "gpu", "--fake-ms", "5", "--listen", "127.0.0.1:0"])
        .args(["--model-repository", repository])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the server starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let address =
        line.trim().strip_prefix("serving gpuslice.v1 on ").expect("the server prints its address").to_string();
    let check = |model: &str, extra: &[&str]| {
        Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/tritonclient_check.py"))
            .args([&address, model, "--expect", "sums"])
            .args(extra)
            .output()
            .unwrap()
    };
    let results = [check("tiny_mlp", &[]), check("resnet50", &["--skip-unload"])];
    Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    let status = server.wait().unwrap();
    for r in &results {
        assert!(
            r.status.success(),
            "tritonclient check failed:\n{}\n{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
    }
    assert!(status.success(), "server exit after SIGTERM: {status}");
}
