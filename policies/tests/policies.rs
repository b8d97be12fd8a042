//! Policies through their public interface, on hand-computed cases.

use gpuslice_policies::{DeviceModel, ModelContext, build};
use gpuslice_simulator::{Allocation, BatchSample, ModelInterval, Summary};
use gpuslice_traces::{LatencyModel, ProfileSet, Source};
use std::sync::Arc;

/// A profile whose latency is exactly `(0.5 + 0.5 b) * 100 / g` ms (p99 = p50), measured at
/// GPU% 25, 50, 100 and batch 1..64: the parametric form fits it exactly.
fn toy_latency() -> Arc<LatencyModel> {
    let mut csv = String::from("engine,model,dtype,gpu_pct,sms,batch,p50_ms,p99_ms,mean_ms,imgs_per_s\n");
    for g in [25.0, 50.0, 100.0] {
        for b in [1u32, 2, 4, 8, 16, 32, 64] {
            let t = (0.5 + 0.5 * b as f64) * 100.0 / g;
            csv += &format!("toy,toy,fp16,{g},132,{b},{t},{t},{t},1\n");
        }
    }
    let set = ProfileSet::parse(&Source { name: "toy.csv".into(), text: csv.into() }).unwrap();
    Arc::new(LatencyModel::fit_all(&set).unwrap().remove("toy").unwrap())
}

fn context(name: &str, latency: Arc<LatencyModel>, slo_ms: f64, priority: u32) -> ModelContext {
    ModelContext {
        name: name.into(),
        slo_ms,
        priority,
        latency,
        configured: Allocation { gpu_pct: 50.0, max_batch: 8, min_batch: 8, batch_timeout_ms: 2.0 },
    }
}

/// One 1-second interval of a model at `allocation` with `arrivals`, p99 `p99_ms`, `completed`.
fn interval(allocation: Allocation, arrivals: u64, completed: u64, p99_ms: f64) -> ModelInterval {
    ModelInterval {
        model: "m".into(),
        start_s: 0.0,
        end_s: 1.0,
        allocation,
        queue_len: 0,
        summary: Summary {
            arrivals,
            completed,
            dropped: 0,
            within_slo: completed,
            slo_attainment: 1.0,
            goodput_rps: completed as f64,
            throughput_rps: completed as f64,
            arrival_rps: arrivals as f64,
            p50_ms: p99_ms / 2.0,
            p95_ms: p99_ms,
            p99_ms,
            mean_ms: p99_ms / 2.0,
            mean_batch: 1.0,
            mean_queue: 0.0,
            max_queue: 0,
            gpu_util: 0.0,
        },
        batches: Vec::new(),
        arrivals_s: Vec::new(),
    }
}

#[test]
fn the_toy_profile_is_fitted_exactly() {
    let latency = toy_latency();
    for (b, g) in [(8, 63.0), (12, 100.0), (4, 70.0)] {
        let exact = (0.5 + 0.5 * b as f64) * 100.0 / g;
        assert!((latency.p50_ms(b, g) - exact).abs() / exact < 1e-3, "b {b} g {g}: {}", latency.p50_ms(b, g));
    }
}

// At 1,000 requests/s (1 per ms), SLO 20 ms, 10% margin (budget 18 ms), utilization <= 0.9,
// p99 = max((b-1)/rate, s) + s with s = (0.5 + 0.5 b) 100/g:
//   b=8: utilization 56.25/g <= 0.9 needs g >= 63; p99 at 63 = max(7, 7.14) + 7.14 = 14.3 ms;
//   b=6 needs 65, b=4 needs 70, b=2 needs 84, b=12 needs 93, b=1 and b>=16 never fit.
// So the smallest slice is 63%. Alone, the model also gets the other 37%; at 100% the feasible
// batch with the lowest utilization is 12 (s = 6.5 ms, utilization 0.54, p99 11 + 6.5 = 17.5).
#[test]
fn model_based_picks_the_smallest_slice_then_the_most_spare_batch() {
    let mut policy =
        build("model-based", &[context("toy", toy_latency(), 20.0, 0)], &DeviceModel::default(), None).unwrap();
    let current = policy.initial()[0];
    let decisions = policy.decide(&[interval(current, 1000, 0, 0.0)]);
    assert_eq!(decisions.len(), 1);
    let a = decisions[0].allocation;
    assert_eq!((a.gpu_pct, a.max_batch), (100.0, 12));
    assert!((a.batch_timeout_ms - 11.0).abs() < 1e-9, "timeout = (b-1)/rate = 11 ms, got {}", a.batch_timeout_ms);
    assert!(decisions[0].reason.contains("needs 63%"), "{}", decisions[0].reason);
}

// The toy model alone at 1,000/s goes to 100% at batch 12 (predicted p99 17.5 ms, above). An
// observed p99 of 35 ms there is twice the prediction: learned, it leaves batch 12 over budget
// and the policy moves to batch 8. But not from the first interval at the new allocation, whose
// requests queued under the old one: only once the allocation has served a whole interval.
#[test]
fn model_based_learns_the_tail_only_once_an_allocation_has_settled() {
    let mut policy =
        build("model-based", &[context("toy", toy_latency(), 20.0, 0)], &DeviceModel::default(), None).unwrap();
    let start = policy.initial()[0];
    let moved = policy.decide(&[interval(start, 1000, 1000, 35.0)]);
    let planned = moved[0].allocation;
    assert_eq!((planned.gpu_pct, planned.max_batch), (100.0, 12), "{}", moved[0].reason);
    let first = policy.decide(&[interval(planned, 1000, 1000, 35.0)]);
    assert!(first.is_empty(), "the first interval after a move teaches nothing: {first:?}");
    let settled = policy.decide(&[interval(planned, 1000, 1000, 35.0)]);
    assert_eq!(settled.len(), 1, "{settled:?}");
    assert_eq!((settled[0].allocation.gpu_pct, settled[0].allocation.max_batch), (100.0, 8), "{}", settled[0].reason);
}

// Two such models need 63% each: the higher priority one gets its 63% (batch 8, the only batch
// feasible there, timeout 7 ms), the other degrades to the remaining 37% and says so.
#[test]
fn model_based_degrades_by_priority_when_demand_exceeds_the_gpu() {
    let latency = toy_latency();
    let models = [context("low", latency.clone(), 20.0, 0), context("high", latency, 20.0, 5)];
    let mut policy = build("model-based", &models, &DeviceModel::default(), None).unwrap();
    let start = policy.initial();
    let decisions = policy.decide(&[interval(start[0], 1000, 0, 0.0), interval(start[1], 1000, 0, 0.0)]);
    let of = |m: usize| decisions.iter().find(|d| d.model == m).expect("a decision for each model");
    assert_eq!((of(1).allocation.gpu_pct, of(1).allocation.max_batch), (63.0, 8));
    assert!((of(1).allocation.batch_timeout_ms - 7.0).abs() < 1e-9);
    assert_eq!(of(0).allocation.gpu_pct, 37.0);
    assert!(of(0).reason.starts_with("degraded (priority 0)"), "{}", of(0).reason);
}

// Same priority, more demand than GPU. "big" at 1,000/s needs 63% (above): 15.9 requests/s
// per GPU%. "small1" and "small2" at 500/s (0.5 per ms) each need 35%: batch 4 has
// s = 250/g, utilization 31.25/g <= 0.9 from g = 35, p99 = max(6, 7.14) + 7.14 = 14.3 ms; batch
// 6 and 8 need more (44%, never), batch 2 needs 42%. That is 14.3 requests/s per GPU%. Serving
// the two small ones (70%) would keep 1,000 requests/s within SLO; serving big and one small one
// (98%) keeps 1,500/s: big goes first, one small one gets its 35% and the other degrades.
#[test]
fn model_based_keeps_the_models_that_serve_most_requests_per_gpu_pct() {
    let latency = toy_latency();
    let models = [
        context("small1", latency.clone(), 20.0, 0),
        context("big", latency.clone(), 20.0, 0),
        context("small2", latency, 20.0, 0),
    ];
    let mut policy = build("model-based", &models, &DeviceModel::default(), None).unwrap();
    let start = policy.initial();
    let arrivals = [500, 1000, 500];
    let observed: Vec<ModelInterval> = (0..3).map(|m| interval(start[m], arrivals[m], 0, 0.0)).collect();
    let decisions = policy.decide(&observed);
    let of = |m: usize| decisions.iter().find(|d| d.model == m).expect("a decision for each model");
    assert_eq!(of(1).allocation.gpu_pct, 63.0, "{}", of(1).reason);
    let small: Vec<_> = [0, 2].into_iter().map(of).collect();
    let served: Vec<_> = small.iter().filter(|d| !d.reason.starts_with("degraded")).collect();
    assert_eq!(served.len(), 1, "{small:?}");
    assert!(served[0].allocation.gpu_pct >= 35.0 && served[0].reason.contains("needs 35%"), "{}", served[0].reason);
    let total: f64 = decisions.iter().map(|d| d.allocation.gpu_pct).sum();
    assert!(total <= 100.0, "{total}");
}

// The same two models on a backend that serves 20, 30, 45, 60 and 70% only: the high-priority
// model's 63% rounds up to 70%, the other degrades to the level that the remaining 30% holds;
// alone, a model's slice grows a level at a time up to the top level (not to 100%).
#[test]
fn model_based_plans_on_the_backends_slice_levels() {
    let latency = toy_latency();
    let levels = [20.0, 30.0, 45.0, 60.0, 70.0];
    let models = [context("low", latency.clone(), 20.0, 0), context("high", latency.clone(), 20.0, 5)];
    let mut policy = build("model-based", &models, &DeviceModel::default(), None).unwrap();
    policy.plan_on_levels(&levels);
    let start = policy.initial();
    let decisions = policy.decide(&[interval(start[0], 1000, 0, 0.0), interval(start[1], 1000, 0, 0.0)]);
    let of = |m: usize| decisions.iter().find(|d| d.model == m).expect("a decision for each model");
    assert_eq!(of(1).allocation.gpu_pct, 70.0, "{}", of(1).reason);
    assert!(of(1).reason.contains("needs 70%"), "{}", of(1).reason);
    assert_eq!(of(0).allocation.gpu_pct, 30.0, "{}", of(0).reason);
    assert!(of(0).reason.starts_with("degraded"), "{}", of(0).reason);

    let mut alone = build("model-based", &[context("toy", latency, 20.0, 0)], &DeviceModel::default(), None).unwrap();
    alone.plan_on_levels(&levels);
    let current = alone.initial()[0];
    let decisions = alone.decide(&[interval(current, 1000, 0, 0.0)]);
    assert_eq!(decisions[0].allocation.gpu_pct, 70.0, "{}", decisions[0].reason);
}

#[test]
fn gslice_starts_at_the_knees_and_shares_max_min() {
    let source = Source::load("builtin:h100-cudagraph", std::path::Path::new(".")).unwrap();
    let mut fitted = LatencyModel::fit_all(&ProfileSet::parse(&source).unwrap()).unwrap();
    let names = ["resnet50", "vgg16", "densenet121", "mobilenet_v3_large", "efficientnet_b0"];
    let models: Vec<ModelContext> =
        names.iter().map(|n| context(n, Arc::new(fitted.remove(*n).unwrap()), 30.0, 0)).collect();
    let knees: Vec<f64> = models.iter().map(|m| m.latency.knee_pct(8)).collect();
    let initial = build("gslice", &models, &DeviceModel::default(), None).unwrap().initial();
    let total: f64 = initial.iter().map(|a| a.gpu_pct).sum();
    let knee_total: f64 = knees.iter().sum();
    if knee_total <= 100.0 {
        // Unallocated GPU is split evenly, in whole GPU%.
        let extra = (100.0 - knee_total) / knees.len() as f64;
        for (a, knee) in initial.iter().zip(&knees) {
            assert_eq!(a.gpu_pct, (knee + extra).floor(), "{initial:?} from knees {knees:?}");
        }
    } else {
        assert!((total - 100.0).abs() < 1e-9, "knees {knees:?} add up to more than 100: shares {initial:?}");
        // A model whose knee is below the even split keeps it.
        for (a, knee) in initial.iter().zip(&knees) {
            assert!(a.gpu_pct <= *knee + 1e-9);
        }
    }
}

// The batch rule takes the time batches run, not the end-to-end p99: with a 100 ms backlog p99
// but batches of 8 running in 4 ms (t = 0.5 ms per item, 16 ms of headroom under a 20 ms SLO),
// the batch grows by 16/0.5 = 32 to 40, where a p99-based rule would shrink it to 1.
#[test]
fn gslice_sizes_the_batch_from_the_time_batches_run() {
    let mut policy = build("gslice", &[context("toy", toy_latency(), 20.0, 0)], &DeviceModel::default(), None).unwrap();
    let current = Allocation { gpu_pct: 40.0, max_batch: 8, min_batch: 8, batch_timeout_ms: 2.0 };
    let mut observed = interval(current, 1000, 1000, 100.0);
    observed.batches = vec![BatchSample { size: 8, gpu_pct: 40.0, exec_ms: 4.0 }; 10];
    let decisions = policy.decide(&[observed]);
    assert_eq!(decisions[0].allocation.max_batch, 40, "{}", decisions[0].reason);
    // Without batches run in the interval, the batch stays.
    let decisions = policy.decide(&[interval(current, 1000, 1000, 100.0)]);
    assert!(decisions.iter().all(|d| d.allocation.max_batch == 8), "{decisions:?}");
}

#[test]
fn unknown_policies_are_named_in_the_error() {
    let err = build("gslise", &[], &DeviceModel::default(), None).err().unwrap().to_string();
    assert!(err.contains("gslise") && err.contains("model-based"), "{err}");
    assert!(build("oracle", &[], &DeviceModel::default(), None).err().unwrap().to_string().contains("plan"));
}
