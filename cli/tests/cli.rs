//! The `gpuslice` binary as a user runs it.

use std::process::{Command, Output};

fn gpuslice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpuslice")).args(args).output().expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn simulate_without_arguments_prints_the_default_table() {
    let out = gpuslice(&["--log", "warn", "simulate", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for model in ["densenet121", "resnext50_32x4d", "vgg16", "total"] {
        assert!(text.contains(model), "table lacks {model}:\n{text}");
    }
    assert!(text.contains("p99 ms") && text.contains("SLO met") && text.contains("goodput/s"));
}

/// `simulate --quiet` with `args`, writing its files into `dir`.
fn simulate_into(dir: &std::path::Path, args: &[&str]) -> Output {
    let mut all = vec!["--log", "warn", "simulate", "--quiet", "--out", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    gpuslice(&all)
}

#[test]
fn simulate_writes_csv_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let out = simulate_into(dir.path(), &["--sharing", "temporal"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = std::fs::read_to_string(dir.path().join("summary.csv")).unwrap();
    assert!(summary.starts_with(
        "model,sharing,gpu_pct,max_batch,batch_timeout_ms,slo_ms,reallocations,arrivals,completed,dropped"
    ));
    assert_eq!(summary.lines().count(), 4, "header and three models");
    assert!(summary.lines().skip(1).all(|l| l.contains(",temporal,")));
    let intervals = std::fs::read_to_string(dir.path().join("intervals.csv")).unwrap();
    assert!(intervals.lines().count() > 3 * 50, "one row per model and 0.25 s interval");
    for svg in ["latency.svg", "gpu.svg", "slo.svg"] {
        let text = std::fs::read_to_string(dir.path().join(svg)).unwrap();
        assert!(text.starts_with("<svg") && text.contains("densenet121"), "{svg}");
    }
}

#[test]
fn help_explains_every_flag() {
    let out = gpuslice(&["simulate", "--help"]);
    let text = stdout(&out);
    for flag in ["--config", "--sharing", "--seed", "--out", "--quiet", "--log-format", "--log"] {
        assert!(text.contains(flag), "simulate --help lacks {flag}");
    }
    assert!(text.contains("temporal") && text.contains("default-mps") && text.contains("spatial"));
    for command in ["simulate", "fit", "bench"] {
        assert!(stdout(&gpuslice(&["--help"])).contains(command));
    }
}

#[test]
fn bad_scenarios_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let model = |name: &str, arrivals: &str| {
        format!(
            "name = \"t\"\nsharing = \"spatial\"\nduration_s = 1\n[[models]]\nname = \"{name}\"\nslo_ms = 10\ngpu_pct = 50\nmax_batch = 4\nbatch_timeout_ms = 1\narrivals = {arrivals}\n"
        )
    };
    let cases = [
        (write("unknown.toml", &model("resnet5", "{ kind = \"poisson\", rate = 10 }")), "unknown model \"resnet5\""),
        (write("kind.toml", &model("resnet50", "{ kind = \"poison\", rate = 10 }")), "poison"),
        (
            write("trace.toml", &model("resnet50", "{ kind = \"replay\", trace = \"missing.csv\" }")),
            "missing.csv: cannot read",
        ),
        (write("broken.toml", "name = \"t\"\nsharing = \"sideways\"\nmodels = []\n"), "sideways"),
        (
            write(
                "slo.toml",
                &model("resnet50", "{ kind = \"poisson\", rate = 10 }").replace("slo_ms = 10", "slo_ms = 0.5"),
            ),
            "slo_ms 0.5 cannot be met: the best achievable p99 is 1.18 ms",
        ),
    ];
    for (path, expected) in cases {
        let out = gpuslice(&["--log", "warn", "simulate", "--quiet", "--config", &path]);
        assert!(!out.status.success(), "{path} should fail");
        let message = stderr(&out);
        assert!(message.contains(expected), "{path}: expected {expected:?} in {message}");
        assert!(!message.contains("panicked"), "{message}");
    }
    let bad_profile = write(
        "p.csv",
        "engine,model,dtype,gpu_pct,sms,batch,p50_ms,p99_ms,mean_ms,imgs_per_s\ne,m,fp16,50,66,1,1.0,1.2,1.0,1\ne,m,fp16,150,66,2,1.0,1.2,1.0,1\n",
    );
    let out = gpuslice(&["fit", "--profile", &bad_profile]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("p.csv:3 field `gpu_pct`: GPU% must be in (0, 100], got 150"), "{}", stderr(&out));
}

#[test]
fn fit_reports_every_model_error() {
    let out = gpuslice(&["fit"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for model in [
        "alexnet",
        "densenet121",
        "efficientnet_b0",
        "mobilenet_v3_large",
        "resnet50",
        "resnext50_32x4d",
        "vgg16",
        "vit_b_16",
    ] {
        assert!(text.contains(model));
    }
    assert!(text.contains("RMS rel. error"));
}

#[test]
fn gpu_run_serves_a_scenario_on_workers_and_loses_nothing() {
    // GPU-less workers (--fake-ms) through the whole live path: wall-clock arrivals, batching
    // dispatchers, the model-based policy reallocating with standby workers.
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/gpu-step.toml")).unwrap();
    let short = shipped.replace("duration_s = 60", "duration_s = 3").replace("[30, 600]", "[1.5, 600]");
    let scenario = dir.path().join("short.toml");
    std::fs::write(&scenario, short).unwrap();
    let out = dir.path().join("out");
    let run = gpuslice(&[
        "--log",
        "warn",
        "gpu-run",
        "--config",
        scenario.to_str().unwrap(),
        "--fake-ms",
        "3",
        // Without the default 100% level: slices only (the switch to default MPS is
        // gpu/tests/worker.rs's), so that the policy reallocates on the pool.
        "--pool-levels",
        "10,20,30,45,60,80",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    for line in summary.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let (arrivals, completed, dropped) = (fields[7], fields[8], fields[9]);
        assert!(arrivals.parse::<u64>().unwrap() > 100, "{line}");
        assert_eq!((completed, dropped), (arrivals, "0"), "{line}");
    }
    let decisions = csv_rows(&out.join("decisions.csv"));
    assert!(!decisions.is_empty());
    // The policy plans on the standby pool's levels.
    for d in &decisions {
        let pct: f64 = d["gpu_pct"].parse().unwrap();
        assert!([10.0, 20.0, 30.0, 45.0, 60.0, 80.0].contains(&pct), "{d:?}");
    }
    // Per-stage timing per request: the fake worker's 3 ms is the inference stage, and a
    // request's total is at least its queueing plus that.
    let arrivals: u64 = summary.lines().skip(1).map(|l| l.split(',').nth(7).unwrap().parse::<u64>().unwrap()).sum();
    let stages = csv_rows(&out.join("stages.csv"));
    assert_eq!(stages.len(), summary.lines().count() - 1);
    assert_eq!(stages.iter().map(|s| s["requests"].parse::<u64>().unwrap()).sum::<u64>(), arrivals);
    for s in &stages {
        let field = |k: &str| s[k].parse::<f64>().unwrap();
        assert!((field("infer_mean_ms") - 3.0).abs() < 0.05, "{s:?}");
        assert!((field("infer_batch_mean_ms") - 3.0).abs() < 0.05, "{s:?}");
        // Every batch ran on one of the worker's graphs (1..=32), padded up from its requests.
        let summary = csv_rows(&out.join("summary.csv"));
        let mean_batch: f64 = summary.iter().find(|m| m["model"] == s["model"]).unwrap()["mean_batch"].parse().unwrap();
        let graph = field("graph_batch_mean");
        assert!(graph >= mean_batch - 1e-9 && graph <= 32.0, "graph {graph}, requests per batch {mean_batch}: {s:?}");
        assert!(field("total_p50_ms") >= field("queue_p50_ms") + 3.0 - 0.05, "{s:?}");
        // A batch is handed to its worker before it starts there.
        assert!(field("handed_p50_ms") <= field("queue_p50_ms") + 0.01, "{s:?}");
        assert!(field("handed_p99_ms") <= field("queue_p99_ms") + 0.01, "{s:?}");
    }
}

#[test]
fn profile_writes_the_calibration_schema_that_fit_reads() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("profile.csv");
    let run = gpuslice(&[
        "--log",
        "warn",
        "profile",
        "--models",
        "resnet50,vgg16",
        "--gpu-pcts",
        "100,50,25",
        "--batches",
        "1,4",
        "--repeats",
        "3",
        "--warmup-s",
        "0.05",
        "--fake-ms",
        "1",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("engine,model,dtype,gpu_pct,sms,batch,p50_ms,p99_ms,mean_ms,imgs_per_s\n"));
    assert_eq!(text.lines().count(), 1 + 2 * 3 * 2);
    let fit = gpuslice(&["fit", "--profile", csv.to_str().unwrap()]);
    assert!(fit.status.success(), "{}", stderr(&fit));
    assert!(stdout(&fit).contains("resnet50") && stdout(&fit).contains("vgg16"));
}

#[test]
fn profile_measures_a_repository_model_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("profile.csv");
    let repository = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/models");
    let run = gpuslice(&[
        "--log",
        "warn",
        "profile",
        "--models",
        "tiny_mlp,vgg16",
        "--model-repository",
        repository,
        "--gpu-pcts",
        "100,50",
        "--batches",
        "1,2",
        "--repeats",
        "3",
        "--warmup-s",
        "0",
        "--fake-ms",
        "1",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let rows = csv_rows(&csv);
    let dtype =
        |model: &str| rows.iter().filter(|r| r["model"] == model).map(|r| r["dtype"].clone()).collect::<Vec<_>>();
    // tiny_mlp from the repository computes in fp32 (its config); vgg16, not in it, is torchvision's fp16.
    assert_eq!(dtype("tiny_mlp"), ["fp32"; 4]);
    assert_eq!(dtype("vgg16"), ["fp16"; 4]);
}

/// `simulate --stages` (shaped like the GPU backend) reports where each model's requests spent
/// their time, as `gpu-run` does: every request counted once, the queue within the result, the
/// batches run as the CUDA graphs' sizes.
#[test]
fn simulate_reports_each_models_stage_times_like_gpu_run() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = format!("{}/../scenarios/gpu-trio.toml", env!("CARGO_MANIFEST_DIR"));
    let out = simulate_into(dir.path(), &["--config", &scenario, "--like-gpu-backend", "--stages"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("queue p99 ms"), "the stage table is printed");
    let summary = csv_rows(&dir.path().join("summary.csv"));
    let stages = csv_rows(&dir.path().join("stages.csv"));
    assert_eq!(stages.len(), 3, "one row per model");
    for (model, row) in summary.iter().zip(&stages) {
        assert_eq!(row["model"], model["model"]);
        assert_eq!(row["requests"], model["completed"], "{}: each served request once", row["model"]);
        let f = |k: &str| row[k].parse::<f64>().unwrap();
        assert!(f("queue_p50_ms") < f("total_p50_ms") && f("queue_p99_ms") < f("total_p99_ms"), "{row:?}");
        assert!(f("infer_mean_ms") > 0.0 && f("graph_batch_mean") >= 1.0, "{row:?}");
        // A simulated batch starts as it is handed to its worker.
        assert_eq!((f("handed_p50_ms"), f("handed_p99_ms")), (f("queue_p50_ms"), f("queue_p99_ms")));
        // The model's whole-run p50 is the summary's (the same requests, hand-off included).
        let p50 = model["p50_ms"].parse::<f64>().unwrap();
        assert!((f("total_p50_ms") - p50).abs() <= 0.01 * p50 + 0.01, "{} against {p50}", f("total_p50_ms"));
        assert!(f("graph_batch_mean") <= 32.0, "the largest graph: {row:?}");
    }
}

/// The shipped H100 measurements (profiles/h100).
fn shipped(file: &str) -> String {
    format!("{}/../profiles/h100/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// Reads a CSV written by the binary into rows of named fields.
fn csv_rows(path: &std::path::Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines.map(|l| header.iter().map(|h| h.to_string()).zip(l.split(',').map(str::to_string)).collect()).collect()
}

#[test]
fn calibrate_then_validate_on_the_shipped_h100_measurements() {
    let dir = tempfile::tempdir().unwrap();
    let calibration = dir.path().join("calibration.toml");
    let run = gpuslice(&[
        "--log",
        "warn",
        "calibrate",
        "--profile",
        &shipped("grid.csv"),
        "--colocation",
        &shipped("colocation.csv"),
        "--out",
        calibration.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stdout(&run).contains("RMS rel. error"), "{}", stdout(&run));
    let text = std::fs::read_to_string(&calibration).unwrap();
    let file: toml::Table = toml::from_str(&text).unwrap();
    // The profile path is kept relative to the calibration file when it can be, else absolute.
    assert!(file["profile"].as_str().unwrap().ends_with("grid.csv"), "{text}");
    // What the pairs show: VGG-16's big kernels suffer far less from a neighbour than DenseNet's.
    let k = |model: &str| file["interference_by_model"][model].as_float().unwrap();
    assert!(k("vgg16") < 0.5 * k("densenet121"), "{text}");

    let run = gpuslice(&[
        "--log",
        "warn",
        "validate",
        "--profile",
        &shipped("grid.csv"),
        "--colocation",
        &shipped("colocation.csv"),
        "--calibration",
        calibration.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let held_out = csv_rows(&dir.path().join("held-out.csv"));
    assert_eq!(held_out.len(), 7 * 3 * 7, "7 models x 3 held-out GPU% x 7 batch sizes");
    let mut p50_errors: Vec<f64> = held_out.iter().map(|r| r["p50_error"].parse::<f64>().unwrap().abs()).collect();
    p50_errors.sort_by(f64::total_cmp);
    assert!(p50_errors[p50_errors.len() / 2] < 0.05, "median held-out p50 error {}", p50_errors[p50_errors.len() / 2]);
    // The controlled triples were not fitted on: each model's p50 within 15%.
    let colocated = csv_rows(&dir.path().join("colocated.csv"));
    let unseen_controlled: Vec<_> = colocated
        .iter()
        .filter(|r| r["fitted_on"] == "false" && r["gpu_pct"].parse::<f64>().unwrap() < 100.0)
        .collect();
    assert_eq!(unseen_controlled.len(), 6, "two controlled triples");
    for r in unseen_controlled {
        let error: f64 = r["p50_error"].parse().unwrap();
        assert!(error.abs() < 0.15, "{} in {}: p50 error {error}", r["model"], r["group"]);
    }
}

#[test]
fn profile_measures_colocation_groups_with_their_solo_reference() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("colocation.csv");
    let run = gpuslice(&[
        "--log",
        "warn",
        "profile",
        "--models",
        "",
        "--colocate",
        "resnet50:50+vgg16:50:4,resnet50:100+vgg16:100",
        "--colocate-seconds",
        "0.4",
        "--fake-ms",
        "2",
        "--colocation-out",
        csv.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let rows = csv_rows(&csv);
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[1]["group"], "resnet50:50:8+vgg16:50:4");
    assert_eq!(rows[1]["batch"], "4");
    for r in &rows {
        let (p50, solo): (f64, f64) = (r["p50_ms"].parse().unwrap(), r["solo_p50_ms"].parse().unwrap());
        // The fake worker sleeps 2 ms per batch, together or alone.
        assert!((2.0..3.0).contains(&p50) && (2.0..3.0).contains(&solo), "{r:?}");
        assert!(r["batches"].parse::<u64>().unwrap() > 50, "{r:?}");
    }
    let bad = gpuslice(&["profile", "--models", "", "--colocate", "resnet50:150", "--fake-ms", "1"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("GPU% must be in (0, 100]"), "{}", stderr(&bad));
}

#[test]
fn gpu_run_serves_temporal_and_default_mps_without_slices() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/gpu-trio.toml")).unwrap();
    let scenario = dir.path().join("short.toml");
    std::fs::write(&scenario, shipped.replace("duration_s = 20", "duration_s = 1")).unwrap();
    for policy in ["temporal", "default-mps"] {
        let out = dir.path().join(policy);
        let run = gpuslice(&[
            "--log",
            "warn",
            "gpu-run",
            "--config",
            scenario.to_str().unwrap(),
            "--policy",
            policy,
            "--fake-ms",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(run.status.success(), "{policy}: {}", stderr(&run));
        for row in csv_rows(&out.join("summary.csv")) {
            assert_eq!(row["sharing"], policy, "{row:?}");
            assert_eq!(row["completed"], row["arrivals"], "{policy}: nothing lost: {row:?}");
        }
    }
}

#[test]
fn evaluate_sweeps_the_load_and_refuses_a_bad_scale() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--log", "warn", "evaluate", "--quiet", "--seeds", "1", "--policies", "temporal,model-based"];
    let out = gpuslice(&[&args[..], &["--load-scales", "0.5,2", "--out", dir.path().to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("load x0.5") && text.contains("load x2"), "{text}");
    let rows = csv_rows(&dir.path().join("load-sweep.csv"));
    assert_eq!(rows.len(), 4, "two policies at two loads");
    let arrivals = |policy: &str, scale: f64| -> f64 {
        let row = rows.iter().find(|r| r["policy"] == policy && r["load_scale"].parse::<f64>() == Ok(scale)).unwrap();
        row["arrivals_rps"].parse().unwrap()
    };
    let ratio = arrivals("temporal", 2.0) / arrivals("temporal", 0.5);
    assert!((3.6..4.4).contains(&ratio), "x2 against x0.5 offered {ratio:.2}x the load");
    for svg in ["goodput-vs-load.svg", "slo-vs-load.svg"] {
        let text = std::fs::read_to_string(dir.path().join(svg)).unwrap();
        assert!(text.starts_with("<svg") && text.contains("model-based"), "{svg}");
    }
    let bad = gpuslice(&[&args[..], &["--load-scale", "0"]].concat());
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("load scale must be > 0"), "{}", stderr(&bad));
}

#[test]
fn a_negative_load_scale_is_refused_as_a_value_not_read_as_a_flag() {
    let out = gpuslice(&["simulate", "--policy", "temporal", "--load-scale", "-1", "--quiet"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("load scale must be > 0, got -1"), "{err}");
}

#[test]
fn evaluate_takes_its_scenario_as_config_like_simulate() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/gpu-trio.toml");
    for flag in ["--config", "-c", "--scenario"] {
        let out = gpuslice(&["evaluate", flag, shipped, "--policies", "temporal", "--seeds", "1", "--quiet"]);
        assert!(out.status.success(), "{flag}: {}", stderr(&out));
        assert!(stdout(&out).contains("gpu-trio"), "{flag}");
    }
}

#[test]
fn an_out_folder_that_cannot_be_written_fails_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a folder").unwrap();
    let out_arg = blocker.join("results");
    let out = gpuslice(&["simulate", "--policy", "temporal", "--quiet", "--out", out_arg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--out") && err.contains("cannot create the folder"), "{err}");
    assert!(stdout(&out).is_empty(), "the run went ahead: {}", stdout(&out));
}

#[test]
fn validate_runs_anywhere_and_calibrate_never_overwrites_the_shipped_file_unasked() {
    let elsewhere = tempfile::tempdir().unwrap();
    let validate =
        Command::new(env!("CARGO_BIN_EXE_gpuslice")).arg("validate").current_dir(elsewhere.path()).output().unwrap();
    assert!(validate.status.success(), "{}", stderr(&validate));
    assert!(stdout(&validate).contains("groups not fitted on"));
    let calibrate = gpuslice(&["calibrate"]);
    assert!(!calibrate.status.success());
    assert!(stderr(&calibrate).contains("--out"), "{}", stderr(&calibrate));
}

#[test]
fn serve_on_a_busy_port_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = gpuslice(&["--log", "warn", "serve", "--listen", &address]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(text.contains(&format!("cannot listen for gRPC on {address}")), "{text}");
}

#[test]
fn load_test_against_nothing_names_the_address() {
    // A port just freed: nothing listens there.
    let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let out = gpuslice(&["--log", "warn", "load-test", "--quiet", "--seconds", "1", "--target", &address]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(text.contains(&format!("cannot connect to {address}")), "{text}");
    assert!(!text.contains("tcp connect error: tcp connect error"), "{text}");
}

#[test]
fn validate_prints_its_calibration_in_words() {
    let out = gpuslice(&["--log", "warn", "validate", "--hold-out", "50"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("GPU% 50 left out"), "{text}");
    assert!(text.contains("default MPS: share exponent"), "{text}");
    assert!(!text.contains("Contention {"), "{text}");
}

#[test]
fn the_table_says_what_its_allocations_are() {
    let fixed = stdout(&gpuslice(&["--log", "warn", "simulate", "--quiet", "--sharing", "temporal"]));
    assert!(fixed.contains("the scenario's fixed allocations, temporal sharing"), "{fixed}");
    assert!(fixed.contains("turns") && !fixed.contains("at end"), "temporal sharing has no GPU%:\n{fixed}");
    let steered = stdout(&gpuslice(&["--log", "warn", "simulate", "--quiet", "--policy", "gslice"]));
    assert!(steered.contains("policy gslice") && steered.contains("GPU% at end"), "{steered}");
    for text in [&fixed, &steered] {
        assert!(text.contains("SM-time used") && !text.contains("GPU util"), "{text}");
    }
}

#[test]
fn an_unknown_backend_is_refused_naming_the_choices() {
    let flag = gpuslice(&["serve", "--backend", "cuda"]);
    assert!(!flag.status.success());
    assert!(stderr(&flag).contains("use sim (the simulator) or gpu"), "{}", stderr(&flag));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "backend = \"tpu\"\n").unwrap();
    let file = gpuslice(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!file.status.success());
    let text = stderr(&file);
    assert!(text.contains("node.toml") && text.contains("`sim`") && text.contains("`gpu`"), "{text}");
}

#[test]
fn bad_flags_are_refused_with_the_reason() {
    let cases: [(&[&str], &str); 5] = [
        (&["validate", "--hold-out=-5"], "GPU% must be in (0, 100], got -5"),
        (&["validate", "--hold-out=nan"], "got NaN"),
        (&["validate", "--hold-out", "55"], "no point at GPU% 55"),
        (&["evaluate", "--seeds", "0", "--policies", "temporal"], "--seeds must be in 1..=1000"),
        (&["evaluate", "--policies", "temporal", "--reference", "foo"], "--reference \"foo\" is not one of --policies"),
    ];
    for (args, reason) in cases {
        let out = gpuslice(&[&["--log", "warn"], args].concat());
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(reason), "{args:?}: {}", stderr(&out));
    }
}

/// `gpuslice serve` with `args`, its gRPC address, and an idle TCP connection held to it.
fn serve_held_open(args: &[&str]) -> (std::process::Child, std::net::TcpStream) {
    use std::io::BufRead;
    let mut server = Command::new(env!("CARGO_BIN_EXE_gpuslice"))
        .args(["--log", "warn", "serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let address = line.trim().strip_prefix("serving gpuslice.v1 on ").unwrap().to_string();
    let idle = std::net::TcpStream::connect(address).unwrap();
    (server, idle)
}

/// Waits up to `limit` for `child` to exit.
fn exits_within(child: &mut std::process::Child, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

#[test]
fn an_idle_client_cannot_hold_shutdown_past_its_deadline_and_a_second_signal_exits_at_once() {
    let term = |child: &std::process::Child| {
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    };
    let (mut server, _idle) = serve_held_open(&["--shutdown-deadline-s", "1"]);
    term(&server);
    let status = exits_within(&mut server, std::time::Duration::from_secs(10)).expect("exits after its 1 s deadline");
    assert!(status.success(), "{status}");

    let (mut server, _idle) = serve_held_open(&["--shutdown-deadline-s", "600"]);
    term(&server);
    std::thread::sleep(std::time::Duration::from_millis(300));
    term(&server);
    let status = exits_within(&mut server, std::time::Duration::from_secs(5)).expect("the second signal ends it");
    assert_eq!(status.code(), Some(130));
}

#[test]
fn tls_needs_a_readable_certificate_and_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, "not a certificate").unwrap();
    let serve = |tls: &[&std::path::Path]| {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        for (flag, path) in ["--tls-cert", "--tls-key"].into_iter().zip(tls) {
            args.extend([flag, path.to_str().unwrap()]);
        }
        let out = gpuslice(&args);
        assert!(!out.status.success(), "refused");
        stderr(&out)
    };
    assert!(serve(&[&cert]).contains("both a certificate and its key"));
    assert!(serve(&[&cert, &key]).contains("key.pem"), "a missing key is named");
    std::fs::write(&key, "not a key").unwrap();
    assert!(serve(&[&cert, &key]).contains("cert.pem"), "files that are not PEM are named");
}

#[test]
fn the_gpu_backend_without_a_gpu_says_to_use_fake_ms() {
    let mut server = Command::new(env!("CARGO_BIN_EXE_gpuslice"))
        .args(["--log", "warn", "serve", "--backend", "gpu", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = exits_within(&mut server, std::time::Duration::from_secs(30)) else {
        eprintln!("skipped: this machine has a GPU (serve --backend gpu kept serving)");
        return;
    };
    let mut message = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut message).unwrap();
    assert!(!status.success(), "{message}");
    assert!(message.contains("--fake-ms MS") && message.contains("NVML"), "{message}");
}

/// Scenarios that pass validation at the edges of what it allows run to their end in bounded
/// time (run, not only loaded): each in its own process, killed if it outlives a minute.
#[test]
fn scenarios_at_the_edges_of_validation_run_to_their_duration() {
    let cases = [
        ("a step after the end", "{ kind = \"steps\", steps = [[0, 200], [1e12, 5]] }"),
        ("the largest cv", "{ kind = \"gamma\", rate = 500, cv = 20 }"),
        (
            "a diurnal at the largest cv",
            "{ kind = \"diurnal\", mean_rate = 300, amplitude = 1, period_s = 2, step_s = 0.01, cv = 20 }",
        ),
        (
            "a replayed trace sped up",
            "{ kind = \"replay\", trace = \"builtin:azure-llm-conv\", speedup = 1000, scale = 2 }",
        ),
    ];
    for (what, arrivals) in cases {
        let dir = tempfile::tempdir().unwrap();
        let scenario = dir.path().join("edge.toml");
        std::fs::write(
            &scenario,
            format!(
                "name = \"edge\"\nsharing = \"spatial\"\nduration_s = 2\ndrop_after_ms = 500\n[[models]]\nname = \"resnet50\"\nslo_ms = 30\ngpu_pct = 50\nmax_batch = 8\nbatch_timeout_ms = 2\narrivals = {arrivals}\n"
            ),
        )
        .unwrap();
        let mut run = Command::new(env!("CARGO_BIN_EXE_gpuslice"))
            .args(["--log", "warn", "simulate", "--quiet", "--config", scenario.to_str().unwrap(), "--out"])
            .arg(dir.path().join("out"))
            .spawn()
            .unwrap();
        let status = exits_within(&mut run, std::time::Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{what}: still running after 60 s"));
        assert!(status.success(), "{what}: {status}");
        let intervals = std::fs::read_to_string(dir.path().join("out/intervals.csv")).unwrap();
        let end =
            intervals.lines().skip(1).map(|l| l.split(',').nth(2).unwrap().parse::<f64>().unwrap()).fold(0.0, f64::max);
        assert!(end <= 3.0, "{what}: simulated to {end} s where duration_s is 2 (drops after 0.5 s)");
    }
}
