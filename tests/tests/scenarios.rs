//! Shipped scenarios run end to end, and the default one shows what the profiles imply.

use gpuslice::scenario::LoadedScenario;
use gpuslice::simulate::{self, PolicyChoice};
use gpuslice_simulator::Sharing;
use std::path::Path;

fn scenarios_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios"))
}

#[test]
fn controlled_spatial_sharing_beats_temporal_on_the_default_scenario() {
    let loaded = LoadedScenario::load(None).unwrap();
    let spatial = simulate::run(&loaded, &PolicyChoice::Scenario(Sharing::Spatial), false).unwrap().report;
    let temporal = simulate::run(&loaded, &PolicyChoice::Scenario(Sharing::Temporal), false).unwrap().report;
    assert_eq!(spatial.total.arrivals, temporal.total.arrivals, "same arrivals for both");
    for (s, t) in spatial.models.iter().zip(&temporal.models) {
        assert!(
            s.summary.p99_ms < t.summary.p99_ms,
            "{}: spatial p99 {} vs temporal {}",
            s.model,
            s.summary.p99_ms,
            t.summary.p99_ms
        );
    }
    assert!(spatial.total.p99_ms < 0.8 * temporal.total.p99_ms);
    // The same work on less SM-time: slices below the knee waste less of the GPU.
    assert!(spatial.total.gpu_util < temporal.total.gpu_util);
}

#[test]
fn every_shipped_scenario_runs_and_conserves_requests() {
    let mut count = 0;
    for entry in std::fs::read_dir(scenarios_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        count += 1;
        let loaded = LoadedScenario::load(Some(&path)).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let run = simulate::run(&loaded, &PolicyChoice::Scenario(loaded.scenario.sharing), false).unwrap();
        let total = &run.report.total;
        assert!(total.arrivals > 0, "{}", path.display());
        assert_eq!(total.arrivals, total.completed + total.dropped, "{}", path.display());
    }
    assert!(count >= 3);
}

#[test]
fn the_embedded_default_is_the_shipped_file() {
    let shipped = std::fs::read_to_string(scenarios_dir().join("default.toml")).unwrap();
    assert_eq!(shipped, gpuslice::scenario::DEFAULT_SCENARIO);
}
