//! Supervision end to end (issue 17): `gpuslice serve --backend gpu --fake-ms 5` with the example
//! repository, tritonclient calling tiny_mlp 100 times a second while the test kills every one of
//! its worker processes (the standby pool's too). Every call must be answered, correctly when OK;
//! the model serves again within 5 s; ModelReady, /metrics and the health service show the
//! outage while it lasts. `.ci/run` installs tritonclient; elsewhere the test is skipped, saying
//! why, when it is missing.

mod common;

use std::process::Command;
use std::time::Duration;

/// The processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

#[test]
fn killing_every_worker_of_a_model_under_load_loses_no_call() {
    let Some((server, address)) = common::serve_examples_for_tritonclient() else { return };
    let load = Command::new(common::python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/fault_load.py"))
        .args([&address, "tiny_mlp", "6"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // This server's tiny_mlp workers: the model file's path is on their command line.
    let workers: Vec<u32> = processes_with("tiny_mlp/model.pt")
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|s| s.lines().any(|l| l == format!("PPid:\t{}", server.id())))
        })
        .collect();
    assert!(!workers.is_empty(), "tiny_mlp's workers run under the server");
    for pid in &workers {
        Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    }
    // /metrics shows the outage while it lasts, and its end.
    let ready = |metrics: String| {
        metrics.lines().find_map(|l| l.strip_prefix("gpuslice_model_ready{model=\"tiny_mlp\"} ").map(str::to_string))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline && seen.last().is_none_or(|r: &String| r != "1" || seen.len() < 2) {
        let now = ready(server.metrics()).expect("a readiness gauge for tiny_mlp");
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        seen.contains(&"0".to_string()) && seen.last().map(String::as_str) == Some("1"),
        "ready 0 then 1: {seen:?}"
    );
    let load = load.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&load.stdout).to_string();
    assert!(load.status.success(), "{report}\n{}", String::from_utf8_lossy(&load.stderr));
    let counts: serde_json::Value = serde_json::from_str(report.trim()).unwrap_or_else(|e| panic!("{e}: {report}"));
    let n = |k: &str| counts[k].as_u64().unwrap();
    assert_eq!(counts["other"].as_array().map(Vec::len), Some(0), "only OK or UNAVAILABLE: {report}");
    assert_eq!(n("wrong"), 0, "every OK answer is the row's sum: {report}");
    assert_eq!(n("ok") + n("unavailable"), n("calls"), "{report}");
    assert!(n("calls") > 400, "the load ran: {report}");
    // Killed at 2 s: the model serves again within 5 s, so no call fails in the last two seconds.
    let failed = counts["failed_by_second"].as_object().unwrap();
    assert!(!failed.contains_key("4") && !failed.contains_key("5"), "serving again within 2-3 s of the kill: {report}");
    assert!(n("unavailable") * 100 <= n("calls"), "under 1% of calls failed: {report}");
    // ModelReady said not ready during the outage (seconds on the load's clock, which starts
    // after its imports: the kill comes in its first two), and ready again after it.
    let not_ready: Vec<u64> =
        counts["not_ready_seconds"].as_array().unwrap().iter().filter_map(|s| s.as_u64()).collect();
    assert!(!not_ready.is_empty(), "ModelReady showed the outage: {report}");
    assert!(not_ready.iter().all(|s| *s <= 3) && counts["ready_at_end"] == true, "ready again: {report}");
    eprintln!("{report} ({} workers killed)", workers.len());
    // Operators see the failures: a counter per model.
    let metrics = server.metrics();
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gpuslice_worker_failures_total{model=\"tiny_mlp\"} "))
        .unwrap_or_else(|| panic!("no worker failure counter for tiny_mlp:\n{metrics}"));
    assert!(failures.parse::<u64>().unwrap() >= 1, "{metrics}");
    common::stop_and_check(server, &[]);
}
