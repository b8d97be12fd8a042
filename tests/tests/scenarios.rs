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
    assert!(spatial.total.p99_ms < 0.9 * temporal.total.p99_ms);
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

#[test]
fn model_based_recovers_from_the_4x_step_within_five_intervals() {
    let loaded = LoadedScenario::load(Some(&scenarios_dir().join("step-4x.toml"))).unwrap();
    let run = simulate::run(&loaded, &PolicyChoice::Named("model-based".into()), false).unwrap();
    assert_eq!(run.refused, 0);
    let slo = loaded.scenario.models[0].slo_ms;
    let resnet: Vec<_> = run.intervals.iter().filter(|i| i.model == "resnet50").collect();
    let step = resnet.iter().position(|i| i.end_s > 15.0).unwrap();
    let within = |i: &&&gpuslice_simulator::ModelInterval| i.summary.p99_ms <= slo && i.summary.dropped == 0;
    let back = resnet[step..].iter().position(|i| within(&i)).expect("back within the SLO");
    assert!(back <= 5, "back within the SLO after {back} intervals");
    // ...and stays there.
    let after: Vec<_> = resnet[step + back..].iter().filter(|i| i.end_s <= 40.0).collect();
    let violations = after.iter().filter(|i| !within(i)).count();
    assert!(violations * 20 <= after.len(), "{violations} of {} intervals over the SLO after recovery", after.len());
}

#[test]
fn model_based_beats_gslice_and_temporal_on_the_step() {
    let loaded = LoadedScenario::load(Some(&scenarios_dir().join("step-4x.toml"))).unwrap();
    let goodput = |policy: &str| {
        simulate::run(&loaded, &PolicyChoice::Named(policy.into()), false).unwrap().report.total.goodput_rps
    };
    let ours = goodput("model-based");
    assert!(ours >= 1.2 * goodput("gslice"));
    assert!(ours >= 2.0 * goodput("temporal"));
    assert!(ours >= 0.95 * goodput("oracle"));
}
