//! What the tests that drive the `gpuslice serve` binary from Python share.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The Python that runs the tests' clients: `$GPUSLICE_TEST_PYTHON`, else the virtual
/// environment `scripts/python-env.sh` makes in the target folder (its pinned packages), else
/// the system's `python3`.
pub fn python() -> PathBuf {
    if let Some(chosen) = std::env::var_os("GPUSLICE_TEST_PYTHON") {
        return chosen.into();
    }
    // CARGO_TARGET_TMPDIR is TARGET/tmp, wherever the target folder is.
    let made = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../python-env/bin/python3");
    if made.is_file() { made } else { "python3".into() }
}

/// Whether `python()` can import every module of `imports` (a comma-separated list): in CI it
/// must (`.ci/run` makes the environment); elsewhere a test without them is skipped, saying
/// which (`packages`, as pip names them) and how to get them.
pub fn python_or_skip(imports: &str, packages: &str) -> bool {
    let python = python();
    if Command::new(&python).args(["-c", &format!("import {imports}")]).status().is_ok_and(|s| s.success()) {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "CI must have {packages} for {}: .ci/run makes them", python.display());
    eprintln!(
        "skipped: {} lacks {packages}; scripts/python-env.sh installs them (pinned) into target/python-env",
        python.display()
    );
    false
}

/// A `gpuslice serve` process: killed if the test ends without `stop_and_check` (a failed
/// assertion), so that no server outlives its test.
pub struct Server(Option<Child>, Option<String>);

impl Server {
    /// Its process id.
    #[allow(dead_code)] // Each test crate compiles this module; not every one asks.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Its Prometheus text (`GET /metrics`), where it was started with `--metrics-listen`.
    #[allow(dead_code)] // Each test crate compiles this module; not every one asks.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let address = self.1.as_deref().expect("started with --metrics-listen");
        let mut http = std::net::TcpStream::connect(address).unwrap();
        http.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        http.read_to_string(&mut text).unwrap();
        text
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `gpuslice serve` with `args` on a free loopback port; returns it and its address.
pub fn serve(args: &[&str]) -> (Server, String) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_gpuslice"))
        .args(["--log", "warn", "serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the server starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    // "serving gpuslice.v1 on ADDRESS[, metrics on http://METRICS/metrics]"
    let rest = line.trim().strip_prefix("serving gpuslice.v1 on ").expect("the server prints its address");
    let (address, metrics) = match rest.split_once(", metrics on http://") {
        Some((address, metrics)) => (address, metrics.strip_suffix("/metrics").map(str::to_string)),
        None => (rest, None),
    };
    (Server(Some(server), metrics), address.to_string())
}

/// With tritonclient (`python_or_skip`), `gpuslice serve` on GPU-less workers (5 ms a batch,
/// each output element the sum of its row's inputs) serving the example model repository; None
/// where the test is skipped.
#[allow(dead_code)] // Each test crate compiles this module; not every one asks.
pub fn serve_examples_for_tritonclient() -> Option<(Server, String)> {
    if !python_or_skip("tritonclient.grpc, numpy", "tritonclient[grpc] and numpy") {
        return None;
    }
    let repository = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/models");
    Some(serve(&[
        "--backend",
        "gpu",
        "--fake-ms",
        "5",
        "--model-repository",
        repository,
        "--metrics-listen",
        "127.0.0.1:0",
    ]))
}

/// Stops `server` with SIGTERM, then checks that every client run succeeded and the server
/// exited cleanly.
pub fn stop_and_check(mut server: Server, clients: &[Output]) {
    let mut child = server.0.take().expect("a running server");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    for client in clients {
        assert!(
            client.status.success(),
            "python client failed:\n{}\n{}",
            String::from_utf8_lossy(&client.stdout),
            String::from_utf8_lossy(&client.stderr)
        );
    }
    assert!(status.success(), "server exit after SIGTERM: {status}");
}
