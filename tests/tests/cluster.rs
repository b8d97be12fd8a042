//! A node of several GPUs in simulation: models placed on GPUs, each GPU its own simulator and
//! policy, nothing lost, and capacity that grows with the GPUs.

use gpuslice_eval::capacity::{self, SearchOptions};
use gpuslice_eval::cluster::{self, PLACEMENTS};
use gpuslice_eval::scenario::LoadedScenario;
use gpuslice_eval::simulate::{self, PolicyChoice};
use std::path::Path;

fn shipped(name: &str) -> LoadedScenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(name);
    LoadedScenario::load(Some(&path)).unwrap()
}

#[test]
fn every_placement_runs_each_model_on_its_gpu_with_the_same_requests_and_loses_nothing() {
    let node = shipped("gpu-trio.toml").replicated(4).unwrap();
    assert_eq!((node.scenario.gpus, node.scenario.models.len()), (4, 12));
    let choice = PolicyChoice::Named("model-based".into());
    let on = simulate::simulator(false);
    let (mut arrivals_by_placement, mut replicas) = (Vec::new(), None);
    for (name, placement) in PLACEMENTS {
        let run = cluster::run(&node, placement, &choice, on.as_ref()).unwrap();
        assert_eq!(run.models.len(), 12, "{name}");
        for (i, m) in run.models.iter().enumerate() {
            assert_eq!(m.model, node.scenario.models[i].name, "{name}: reports in the scenario's order");
            let s = &m.summary;
            assert!(s.arrivals > 1000, "{name}: {} {s:?}", m.model);
            assert_eq!(s.completed + s.dropped, s.arrivals, "{name}: {} lost requests", m.model);
        }
        // Each GPU ran exactly the models placed on it.
        for (g, gpu_run) in run.runs.iter().enumerate() {
            let placed: Vec<&str> =
                (0..12).filter(|&i| run.gpu_of[i] == g).map(|i| run.models[i].model.as_str()).collect();
            let ran: Vec<&str> =
                gpu_run.as_ref().map_or(Vec::new(), |r| r.report.models.iter().map(|m| m.model.as_str()).collect());
            assert_eq!(placed, ran, "{name}: GPU {g}");
        }
        let arrivals: Vec<u64> = run.models.iter().map(|m| m.summary.arrivals).collect();
        if placement == cluster::Placement::Replicas {
            replicas = Some(arrivals);
        } else {
            arrivals_by_placement.push(arrivals);
        }
    }
    // Pinned placements run every copy on its own arrivals...
    assert!(arrivals_by_placement.windows(2).all(|w| w[0] == w[1]), "{arrivals_by_placement:?}");
    // ...replicas deal each model's copies' requests evenly over its replicas, all of them once.
    let (pinned, replicas) = (&arrivals_by_placement[0], replicas.expect("the replicas placement ran"));
    for model in 0..3 {
        let copies: Vec<usize> = (0..4).map(|k| model + 3 * k).collect();
        let total = |a: &[u64]| copies.iter().map(|&i| a[i]).sum::<u64>();
        assert_eq!(total(pinned), total(&replicas), "model {model}: {pinned:?} {replicas:?}");
        let (least, most) =
            copies.iter().fold((u64::MAX, 0), |(lo, hi), &i| (lo.min(replicas[i]), hi.max(replicas[i])));
        assert!(most - least <= 1, "model {model}: {replicas:?}");
    }
}

#[test]
fn one_gpus_run_refuses_a_node_of_several() {
    let node = shipped("gpu-trio.toml").replicated(2).unwrap();
    let e = simulate::run(&node, &PolicyChoice::Named("temporal".into()), false).err().unwrap().to_string();
    assert!(e.contains("node of 2 GPUs") && e.contains("evaluate --capacity"), "{e}");
    let e = cluster::run(
        &node,
        cluster::Placement::Balanced,
        &PolicyChoice::Named("oracle".into()),
        simulate::simulator(false).as_ref(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("oracle"), "{e}");
}

#[test]
fn capacity_on_n_gpus_is_at_least_nine_tenths_of_n_times_one_gpus() {
    // In load-scale units: N copies of the scenario on N GPUs hold at least 0.9 of the scale one
    // GPU holds, i.e. 0.9 N times its traffic.
    let one = shipped("gpu-trio.toml");
    let options = SearchOptions { precision: 0.05, ..SearchOptions::default() };
    let policies = ["default-mps".to_string()];
    let capacity_of = |loaded: &LoadedScenario| {
        let (found, _) = capacity::run(loaded, &policies, 1, &options, false, false).unwrap();
        found[0].capacity
    };
    let single = capacity_of(&one);
    assert!(single > 0.5, "{single}");
    for n in [2, 4, 8] {
        let node = one.replicated(n).unwrap();
        let c = capacity_of(&node);
        assert!(c >= 0.9 * single, "{n} GPUs: x{c} against one GPU's x{single}");
    }
}
