//! One policy decision for 16 models (the 8 profiled models, twice), and one cycle of
//! model-based's mode trials (a trial and the decisions up to the next).

use criterion::{Criterion, criterion_group, criterion_main};
use gpuslice_policies::{DeviceModel, ModelContext, TRIAL_EVERY, build};
use gpuslice_simulator::{Allocation, BatchSample, ModelInterval, Sharing, Summary};
use gpuslice_traces::{LatencyModel, ProfileSet, Source};
use std::hint::black_box;
use std::sync::Arc;

/// Interval `k` (1 s each) of 16 models at 100-700 requests/s, arrivals evenly spread.
fn observations(models: &[ModelContext], initial: &[Allocation], k: usize) -> Vec<ModelInterval> {
    models
        .iter()
        .zip(initial)
        .enumerate()
        .map(|(i, (m, a))| {
            let rate = 100.0 + 40.0 * i as f64;
            ModelInterval {
                model: m.name.clone(),
                start_s: k as f64,
                end_s: k as f64 + 1.0,
                allocation: *a,
                queue_len: i % 3,
                summary: Summary {
                    arrivals: rate as u64,
                    completed: rate as u64,
                    dropped: 0,
                    within_slo: rate as u64,
                    slo_attainment: 1.0,
                    goodput_rps: rate,
                    throughput_rps: rate,
                    arrival_rps: rate,
                    p50_ms: 5.0,
                    p95_ms: 8.0,
                    p99_ms: 9.0,
                    mean_ms: 5.0,
                    mean_batch: 4.0,
                    mean_queue: 1.0,
                    max_queue: 6,
                    gpu_util: a.gpu_pct / 200.0,
                },
                batches: (0..64).map(|k| BatchSample { size: 1 + k % 8, gpu_pct: a.gpu_pct, exec_ms: 3.0 }).collect(),
                arrivals_s: (0..rate as usize).map(|j| k as f64 + j as f64 / rate).collect(),
            }
        })
        .collect()
}

fn decision(c: &mut Criterion) {
    let set = ProfileSet::parse(&Source::load("builtin:h100-cudagraph", std::path::Path::new(".")).unwrap()).unwrap();
    let fitted = LatencyModel::fit_all(&set).unwrap();
    let models: Vec<ModelContext> = fitted
        .iter()
        .chain(fitted.iter())
        .enumerate()
        .map(|(i, (name, latency))| ModelContext {
            name: format!("{name}-{i}"),
            slo_ms: 30.0,
            priority: (i % 3) as u32,
            latency: Arc::new(latency.clone()),
            configured: Allocation { gpu_pct: 6.0, max_batch: 8, min_batch: 8, batch_timeout_ms: 2.0 },
        })
        .collect();
    assert_eq!(models.len(), 16);
    let mut group = c.benchmark_group("decision_16_models");
    let device = DeviceModel::h100();
    for name in ["model-based", "gslice"] {
        // Slices only (no shared mode offered: no trials), as on a live node.
        let mut policy = build(name, &models, &device, None).unwrap();
        let obs = observations(&models, &policy.initial(), 0);
        group.bench_function(name, |b| b.iter(|| black_box(policy.decide(black_box(&obs)))));
    }
    group.finish();

    let mut group = c.benchmark_group("mode_trial_16_models");
    group.sample_size(10);
    let mut policy = build("model-based", &models, &device, None).unwrap();
    policy.offer_modes(&[Sharing::Temporal, Sharing::DefaultMps, Sharing::Spatial]);
    let initial = policy.initial();
    let intervals: Vec<_> = (0..TRIAL_EVERY).map(|k| observations(&models, &initial, k)).collect();
    group.bench_function("model-based, one trial cycle", |b| {
        b.iter(|| {
            for obs in &intervals {
                black_box(policy.decide(black_box(obs)));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
