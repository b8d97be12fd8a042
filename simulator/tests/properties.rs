//! Properties that hold for any scenario: conservation, causality, determinism.

use gpuslice_simulator::{Allocation, ModelSetup, ReallocationCost, ServiceModel, Sharing, SimConfig, Simulator};
use gpuslice_traces::arrivals::{ModulatedRenewal, RateSchedule};
use gpuslice_traces::{LatencyModel, ProfileSet, Source};
use proptest::prelude::*;
use std::sync::{Arc, OnceLock};

const MODELS: [&str; 4] = ["resnet50", "mobilenet_v3_large", "vgg16", "densenet121"];

fn latency_models() -> &'static Vec<Arc<LatencyModel>> {
    static MODELS_FITTED: OnceLock<Vec<Arc<LatencyModel>>> = OnceLock::new();
    MODELS_FITTED.get_or_init(|| {
        let set =
            ProfileSet::parse(&Source::load("builtin:h100-cudagraph", std::path::Path::new(".")).unwrap()).unwrap();
        let mut fitted = LatencyModel::fit_all(&set).unwrap();
        MODELS.iter().map(|m| Arc::new(fitted.remove(*m).unwrap())).collect()
    })
}

#[derive(Debug, Clone)]
struct Case {
    sharing: Sharing,
    interference: f64,
    cold: bool,
    /// Batches run padded to CUDA-graph-like sizes, as the GPU backend's do.
    padded: bool,
    drop_after_ms: Option<f64>,
    seed: u64,
    /// Per model: (arrival rate, cv, gpu%, max batch, timeout ms)
    models: Vec<(f64, f64, f64, u32, f64)>,
    /// (interval index, model, new gpu%, new max batch)
    reallocations: Vec<(usize, usize, f64, u32)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(Sharing::Temporal), Just(Sharing::DefaultMps), Just(Sharing::Spatial)],
        0.0..0.5f64,
        any::<bool>(),
        any::<bool>(),
        prop::option::of(5.0..200.0f64),
        any::<u64>(),
        prop::collection::vec((10.0..3000.0f64, 0.3..4.0f64, 5.0..25.0f64, 1u32..64, 0.0..10.0f64), 1..=4),
        prop::collection::vec((0usize..20, 0usize..4, 5.0..25.0f64, 1u32..64), 0..6),
    )
        .prop_map(|(sharing, interference, cold, padded, drop_after_ms, seed, models, reallocations)| Case {
            sharing,
            interference,
            cold,
            padded,
            drop_after_ms,
            seed,
            models,
            reallocations,
        })
}

/// Runs a case for 2 s of arrivals in 100 ms intervals with its reallocations, then drains.
fn run(case: &Case) -> Simulator {
    let config = SimConfig {
        sharing: case.sharing,
        interference: case.interference,
        interference_by_model: Default::default(),
        mps_launch_contention: case.interference * 6.0,
        mps_launch_contention_by_model: Default::default(),
        mps_share_exponent: 0.5,
        background_pct: 0.0,
        reallocation: if case.cold {
            ReallocationCost::ColdRestart { restart_s: 0.05 }
        } else {
            ReallocationCost::Standby { handover_us: 100.0 }
        },
        drop_after_ms: case.drop_after_ms,
        seed: case.seed,
        record_requests: true,
        served_batches: if case.padded { vec![1, 2, 4, 8, 16, 24, 32] } else { Vec::new() },
        // 0-0.5 ms, exercised under temporal sharing.
        temporal_switch_ms: case.interference,
        hand_off_ms: case.interference,
    };
    let setups = case
        .models
        .iter()
        .enumerate()
        .map(|(i, &(rate, cv, gpu_pct, max_batch, timeout))| ModelSetup {
            name: MODELS[i].into(),
            slo_ms: 50.0,
            service: ServiceModel::Calibrated { latency: latency_models()[i].clone(), jitter: true },
            // Every other model sends its batches half full.
            allocation: Allocation {
                gpu_pct,
                max_batch,
                min_batch: if i % 2 == 0 { max_batch } else { max_batch.div_ceil(2) },
                batch_timeout_ms: timeout,
            },
            arrivals: Box::new(
                ModulatedRenewal::new(RateSchedule::constant(rate, Some(2.0)).unwrap(), cv, case.seed ^ i as u64)
                    .unwrap(),
            ),
        })
        .collect();
    let mut sim = Simulator::new(config, setups).unwrap();
    for interval in 0..20 {
        sim.run_until((interval + 1) * 100_000_000);
        for &(at, model, gpu_pct, max_batch) in &case.reallocations {
            if at == interval as usize && model < case.models.len() {
                let mut allocation = sim.allocation(model).unwrap();
                (allocation.gpu_pct, allocation.max_batch) = (gpu_pct, max_batch);
                allocation.min_batch = allocation.min_batch.min(max_batch);
                sim.set_allocation(model, allocation).unwrap();
            }
        }
        sim.take_interval();
    }
    sim.finish();
    sim
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_arrival_ends_completed_or_dropped(case in case()) {
        let mut sim = run(&case);
        prop_assert!(sim.is_drained());
        let report = sim.report();
        for model in &report.models {
            let s = &model.summary;
            prop_assert!(s.arrivals > 0);
            prop_assert_eq!(s.arrivals, s.completed + s.dropped, "{}", model.model);
        }
        prop_assert_eq!(sim.take_finished().0.len() as u64, report.total.completed);
    }

    #[test]
    fn no_latency_below_its_service_time(case in case()) {
        let mut sim = run(&case);
        for r in sim.take_finished().0 {
            prop_assert!(r.start_ns >= r.arrival_ns);
            prop_assert!(r.end_ns - r.start_ns >= r.solo_ns, "{:?}", r);
            prop_assert!(r.solo_ns > 0);
        }
    }

    #[test]
    fn same_seed_same_result(case in case()) {
        let (mut a, mut b) = (run(&case), run(&case));
        prop_assert_eq!(a.report(), b.report());
        prop_assert_eq!(a.take_finished().0, b.take_finished().0);
    }
}

#[test]
fn a_different_seed_gives_a_different_run() {
    let case = Case {
        sharing: Sharing::Spatial,
        interference: 0.1,
        cold: false,
        padded: false,
        drop_after_ms: None,
        seed: 1,
        models: vec![(500.0, 1.0, 40.0, 8, 2.0), (800.0, 2.0, 40.0, 16, 2.0)],
        reallocations: vec![],
    };
    let other = Case { seed: 2, ..case.clone() };
    assert_ne!(run(&case).report(), run(&other).report());
}

/// Model "m": 1 ms per batch of up to 4, SLO 10 ms, Poisson arrivals at `rate` for 1 s.
fn constant_model(gpu_pct: f64, batch_timeout_ms: f64, rate: f64) -> ModelSetup {
    ModelSetup {
        name: "m".into(),
        slo_ms: 10.0,
        service: ServiceModel::Constant { ms: 1.0 },
        allocation: Allocation { gpu_pct, max_batch: 4, min_batch: 4, batch_timeout_ms },
        arrivals: Box::new(ModulatedRenewal::new(RateSchedule::constant(rate, Some(1.0)).unwrap(), 1.0, 0).unwrap()),
    }
}

#[test]
fn spatial_oversubscription_and_bad_allocations_are_refused() {
    let setup = |gpu_pct: f64| constant_model(gpu_pct, 1.0, 1.0);
    let err = Simulator::new(SimConfig::default(), vec![setup(60.0), setup(50.0)]).err().unwrap();
    assert_eq!(err.to_string(), "spatial sharing: GPU% of all models adds up to 110.0, more than 100");
    let err = Simulator::new(SimConfig::default(), vec![setup(0.0)]).err().unwrap();
    assert_eq!(err.to_string(), "model m: gpu_pct must be in (0, 100], got 0");
    let mut sim = Simulator::new(SimConfig::default(), vec![setup(60.0), setup(40.0)]).unwrap();
    let bigger = Allocation { gpu_pct: 70.0, max_batch: 4, min_batch: 4, batch_timeout_ms: 1.0 };
    assert!(sim.set_allocation(0, bigger).is_err());
    assert_eq!(sim.allocation(0).unwrap().gpu_pct, 60.0, "a refused change leaves the allocation as it was");
    assert!(sim.set_allocation(5, bigger).is_err());
}

#[test]
fn values_at_their_limits_run_and_beyond_them_are_refused() {
    use gpuslice_simulator::{MAX_BATCH_TIMEOUT_MS, MAX_PAUSE_S, ReallocationCost};
    let setup = |batch_timeout_ms: f64| constant_model(50.0, batch_timeout_ms, 100.0);
    // At the limits the time arithmetic cannot overflow: the longest batch wait and the longest
    // reallocation pause finish.
    let config =
        SimConfig { reallocation: ReallocationCost::ColdRestart { restart_s: MAX_PAUSE_S }, ..SimConfig::default() };
    let mut sim = Simulator::new(config, vec![setup(MAX_BATCH_TIMEOUT_MS)]).unwrap();
    sim.run_until(gpuslice_simulator::secs_to_ns(0.5));
    let longer = Allocation { gpu_pct: 40.0, max_batch: 4, min_batch: 4, batch_timeout_ms: MAX_BATCH_TIMEOUT_MS };
    sim.set_allocation(0, longer).unwrap();
    sim.run_until(u64::MAX);
    let report = sim.report();
    assert_eq!(report.total.arrivals, report.total.completed + report.total.dropped, "every arrival accounted for");
    // Beyond them: refused, naming the field (over gRPC, OverrideAllocation comes here).
    let wait = Allocation { gpu_pct: 40.0, max_batch: 4, min_batch: 4, batch_timeout_ms: 1e300 };
    let err = sim.set_allocation(0, wait).unwrap_err().to_string();
    assert!(err.contains("batch_timeout_ms"), "{err}");
    let config = SimConfig { reallocation: ReallocationCost::ColdRestart { restart_s: 2e10 }, ..SimConfig::default() };
    let err = Simulator::new(config, vec![setup(1.0)]).err().unwrap().to_string();
    assert!(err.contains("restart_s"), "{err}");
    let config = SimConfig { drop_after_ms: Some(-1.0), ..SimConfig::default() };
    let err = Simulator::new(config, vec![setup(1.0)]).err().unwrap().to_string();
    assert!(err.contains("drop_after_ms"), "{err}");
}

#[test]
fn under_temporal_sharing_turning_to_another_model_costs_the_switch() {
    // Two models, one request each at t = 0 and t = 0.1 ms, 1 ms a batch: the second model's
    // batch starts when the first ends and, with a 0.25 ms switch, ends 0.25 ms later.
    let end_of_second = |switch_ms: f64| {
        let model = |name: &str, at: f64| ModelSetup {
            name: name.into(),
            slo_ms: 10.0,
            service: ServiceModel::Constant { ms: 1.0 },
            allocation: Allocation { gpu_pct: 100.0, max_batch: 1, min_batch: 1, batch_timeout_ms: 0.0 },
            arrivals: Box::new(gpuslice_traces::arrivals::Replay::new(vec![at].into(), 1.0, 1.0, None, 0)),
        };
        let config = SimConfig {
            sharing: Sharing::Temporal,
            temporal_switch_ms: switch_ms,
            record_requests: true,
            ..SimConfig::default()
        };
        let mut sim = Simulator::new(config, vec![model("a", 0.0), model("b", 1e-4)]).unwrap();
        sim.finish();
        let records = sim.take_finished().0;
        records.iter().find(|r| r.model == 1).unwrap().end_ns as f64 * 1e-6
    };
    assert!((end_of_second(0.0) - 2.0).abs() < 1e-6, "{}", end_of_second(0.0));
    assert!((end_of_second(0.25) - 2.25).abs() < 1e-6, "{}", end_of_second(0.25));
    let bad = SimConfig { temporal_switch_ms: f64::NAN, ..SimConfig::default() };
    assert!(bad.problem().unwrap().contains("temporal_switch_ms"));
}

#[test]
fn a_hand_off_adds_to_each_latency_without_holding_the_gpu() {
    // One model, requests at t = 0 and t = 0.1 ms, 1 ms a batch of one: the GPU runs them back to
    // back whatever the hand-off; each request's latency gains it.
    let run = |hand_off_ms: f64| {
        let setup = ModelSetup {
            name: "a".into(),
            slo_ms: 2.0,
            service: ServiceModel::Constant { ms: 1.0 },
            allocation: Allocation { gpu_pct: 100.0, max_batch: 1, min_batch: 1, batch_timeout_ms: 0.0 },
            arrivals: Box::new(gpuslice_traces::arrivals::Replay::new(vec![0.0, 1e-4].into(), 1.0, 1.0, None, 0)),
        };
        let config = SimConfig { hand_off_ms, record_requests: true, ..SimConfig::default() };
        let mut sim = Simulator::new(config, vec![setup]).unwrap();
        sim.finish();
        let ends: Vec<u64> = sim.take_finished().0.iter().map(|r| r.end_ns).collect();
        (ends, sim.report().total)
    };
    let (ends, plain) = run(0.0);
    let (ends_with, handed) = run(0.5);
    assert_eq!(ends, ends_with, "the GPU is not held for the hand-off");
    assert!((handed.mean_ms - plain.mean_ms - 0.5).abs() < 0.01, "{} {}", handed.mean_ms, plain.mean_ms);
    // The second request: 1.9 ms plain, 2.4 ms handed off, past its 2 ms SLO.
    assert_eq!((plain.within_slo, handed.within_slo), (2, 1));
    let bad = SimConfig { hand_off_ms: -1.0, ..SimConfig::default() };
    assert!(bad.problem().unwrap().contains("hand_off_ms"));
}
