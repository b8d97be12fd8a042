//! `gpuslice kserve-run` against `gpuslice serve` itself (GPU-less workers serving the example
//! repository's tiny_mlp): a scenario's arrivals go out through the standard inference protocol
//! and every one is counted, answered and timed.

mod common;

#[test]
fn a_scenario_sent_through_the_inference_protocol_is_answered_and_counted() {
    let repository = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/models");
    let (server, address) = common::serve(&["--backend", "gpu", "--fake-ms", "2", "--model-repository", repository]);
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("tiny.toml");
    std::fs::write(
        &scenario,
        r#"name = "tiny_mlp, 50 requests a second"
seed = 1
duration_s = 2
control_interval_s = 0.25
sharing = "spatial"

[[models]]
name = "tiny_mlp"
profile_model = "mobilenet_v3_large"
slo_ms = 500
gpu_pct = 50
max_batch = 8
batch_timeout_ms = 2
arrivals = { kind = "poisson", rate = 50 }
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_gpuslice"))
        .args(["--log", "warn", "kserve-run", "--target", &address, "--load-scale", "2", "--out"])
        .arg(&out)
        .arg("--config")
        .arg(&scenario)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let row: Vec<&str> = summary.lines().nth(1).expect("a row for tiny_mlp").split(',').collect();
    // model, slo_ms, arrivals, answered, failed, within_slo, ...
    let count = |i: usize| row[i].parse::<u64>().unwrap();
    assert_eq!(row[0], "tiny_mlp");
    // x2 of 50/s for 2 s: about 200 (Poisson).
    assert!((120..=280).contains(&count(2)), "{summary}");
    assert_eq!((count(3), count(4)), (count(2), 0), "every request answered: {summary}");
    assert!(count(5) > 0, "{summary}");
    common::stop_and_check(server, &[]);
}
