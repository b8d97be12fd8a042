//! The standard inference protocol with its usual client: tritonclient (Python, unchanged)
//! against `gpuslice serve --backend gpu --fake-ms 5 --model-repository examples/models`, the
//! GPU-less workers answering each row with the sum of its inputs (see
//! `tests/python/tritonclient_check.py`). `.ci/run` installs tritonclient; elsewhere the test is
//! skipped, saying why, when it is missing.

mod common;

use std::process::Command;

#[test]
fn tritonclient_infers_through_gpuslice_and_each_caller_gets_its_own_answer() {
    let Some((server, address)) = common::serve_examples_for_tritonclient() else { return };
    let check = |model: &str, extra: &[&str]| {
        Command::new(common::python())
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/tritonclient_check.py"))
            .args([&address, model, "--expect", "sums"])
            .args(extra)
            .output()
            .unwrap()
    };
    let results = [check("tiny_mlp", &[]), check("resnet50", &["--skip-unload"])];
    common::stop_and_check(server, &results);
}
