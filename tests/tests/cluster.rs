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
    let (mut arrivals_by_placement, mut replicas, mut shortest_queue) = (Vec::new(), None, None);
    for (name, placement) in PLACEMENTS {
        let run = cluster::run(&node, placement, &choice, on.as_ref(), None).unwrap();
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
        match placement {
            cluster::Placement::Replicas => replicas = Some(arrivals),
            cluster::Placement::ReplicasShortestQueue => shortest_queue = Some(arrivals),
            _ => arrivals_by_placement.push(arrivals),
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
        // ...or each to the replica with the fewest in flight: every one once, each replica some.
        let jsq = shortest_queue.as_ref().expect("the replicas-jsq placement ran");
        assert_eq!(total(pinned), total(jsq), "model {model}: {jsq:?}");
        assert!(copies.iter().all(|&i| jsq[i] * 8 > total(jsq)), "model {model}: {jsq:?}");
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
        None,
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

/// Two GPUs, four resnet50s listed so that first-fit decreasing puts the two busy early (a, c)
/// on GPU 0 and the two busy late (b, d) on GPU 1.
fn shifting() -> LoadedScenario {
    let model = |name: &str, rates: (u32, u32)| {
        format!(
            "[[models]]\nname = \"{name}\"\nprofile_model = \"resnet50\"\nslo_ms = 20\ngpu_pct = 25\nmax_batch = 8\n\
             batch_timeout_ms = 2\narrivals = {{ kind = \"steps\", steps = [[0, {}], [6, {}]] }}\n",
            rates.0, rates.1
        )
    };
    let (early, late) = ((3000, 300), (300, 3000));
    let text = format!(
        "name = \"shifting\"\nduration_s = 12\ncontrol_interval_s = 0.5\nsharing = \"spatial\"\ngpus = 2\n\
         drop_after_ms = 250\n{}{}{}{}",
        model("a", early),
        model("b", late),
        model("c", early),
        model("d", late)
    );
    LoadedScenario::from_text(&text, "shifting.toml", ".".into()).unwrap()
}

#[test]
fn a_model_moves_off_a_busy_gpu_once_its_worker_is_ready_and_loses_nothing() {
    let node = shifting();
    let (choice, on) = (PolicyChoice::Named("model-based".into()), simulate::simulator(false));
    let ffd = cluster::Placement::FirstFitDecreasing;
    let pinned = cluster::run(&node, ffd, &choice, on.as_ref(), None).unwrap();
    assert_eq!(pinned.gpu_of, [0, 1, 0, 1], "a and c together, b and d together");
    assert!(pinned.moves.is_empty());
    let moves = cluster::Moves { every_s: 1.0, ready_s: 0.5 };
    let moving = cluster::run(&node, ffd, &choice, on.as_ref(), Some(moves)).unwrap();
    let first = moving.moves.first().expect("GPU 0 is too busy from the start: a model moves off it");
    assert!(["a", "c"].contains(&first.model.as_str()) && (first.from, first.to) == (0, 1), "{first:?}");
    assert!(first.decided_s >= 1.0 && first.moved_s >= first.decided_s + 0.5, "{first:?}");
    for (still, moved) in pinned.models.iter().zip(&moving.models) {
        // The same arrivals either way, on one GPU or split over two, and none lost.
        assert_eq!(still.summary.arrivals, moved.summary.arrivals, "{}", moved.model);
        let s = &moved.summary;
        assert_eq!(s.completed + s.dropped, s.arrivals, "{}: {s:?}", moved.model);
    }
    // A model that moved is served on its new GPU at the end.
    let last = moving.moves.last().unwrap();
    let at_end = moving.runs[last.to].as_ref().unwrap();
    assert!(at_end.report.models.iter().any(|m| m.model == last.model), "{last:?}");
    let refused = moving.runs.iter().flatten().map(|r| r.refused).sum::<usize>();
    assert_eq!(refused, 0, "every reallocation around the moves was accepted");
}

#[test]
fn moves_need_a_positive_period_and_a_bounded_start() {
    let node = shifting();
    let (choice, on) = (PolicyChoice::Named("static".into()), simulate::simulator(false));
    for bad in [cluster::Moves { every_s: 0.0, ready_s: 1.0 }, cluster::Moves { every_s: 1.0, ready_s: f64::NAN }] {
        let e = cluster::run(&node, cluster::Placement::Balanced, &choice, on.as_ref(), Some(bad)).err().unwrap();
        assert!(e.to_string().contains("shifting.toml") && e.to_string().contains("every_s"), "{e}");
    }
}
