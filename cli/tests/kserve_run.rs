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

/// A repository model no profile knows (tiny_mlp's file, its config without `profile_model`) is
/// measured on its workers at registration, then serves under the model-based policy.
#[test]
fn a_model_without_a_profile_is_measured_at_registration_and_serves() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/models/tiny_mlp");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("repository").join("mine");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(format!("{examples}/model.pt"), model.join("model.pt")).unwrap();
    let config = std::fs::read_to_string(format!("{examples}/config.toml")).unwrap();
    let config: String = config.lines().filter(|l| !l.starts_with("profile_model")).map(|l| format!("{l}\n")).collect();
    std::fs::write(model.join("config.toml"), config).unwrap();
    let log = dir.path().join("serve.log");
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_gpuslice"))
        .args(["--log", "info", "serve", "--listen", "127.0.0.1:0", "--backend", "gpu", "--fake-ms", "2"])
        .arg("--model-repository")
        .arg(dir.path().join("repository"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.take().unwrap()), &mut line).unwrap();
    let address = line.trim().strip_prefix("serving gpuslice.v1 on ").expect("serving, once the repository loaded");
    let text = std::fs::read_to_string(&log).unwrap();
    let measured = text.lines().find(|l| l.contains("measured at registration")).unwrap_or_else(|| panic!("{text}"));
    // Every default pool level (10..100%) at 6 batch sizes.
    assert!(measured.contains("model=mine") && measured.contains("points=42"), "{measured}");
    assert!(text.lines().any(|l| l.contains("model registered") && l.contains("measured=true")), "{text}");
    let scenario = dir.path().join("mine.toml");
    std::fs::write(
        &scenario,
        "name = \"mine\"\nseed = 1\nduration_s = 1\ncontrol_interval_s = 0.25\nsharing = \"spatial\"\n\n\
         [[models]]\nname = \"mine\"\nprofile_model = \"mobilenet_v3_large\"\nslo_ms = 500\ngpu_pct = 50\n\
         max_batch = 8\nbatch_timeout_ms = 2\narrivals = { kind = \"poisson\", rate = 100 }\n",
    )
    .unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_gpuslice"))
        .args(["--log", "warn", "kserve-run", "--target", address, "--config"])
        .arg(&scenario)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(run.status.success(), "{table}{}", String::from_utf8_lossy(&run.stderr));
    let row = table.lines().find(|l| l.starts_with("│ mine")).unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row.trim_matches('│').split('┆').map(str::trim).collect();
    // model, SLO, arrivals, answered, failed, ...
    assert!(cells[2].parse::<u64>().unwrap() > 50 && cells[2] == cells[3] && cells[4] == "0", "{table}");
    let _ = server.kill();
    let _ = server.wait();
}
