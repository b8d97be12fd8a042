//! One policy decision for 16 models (the 8 profiled models, twice).

use criterion::{Criterion, criterion_group, criterion_main};
use gpuslice_policies::{ModelContext, build};
use gpuslice_simulator::{Allocation, BatchSample, ModelInterval, Summary};
use gpuslice_traces::{LatencyModel, ProfileSet, Source};
use std::hint::black_box;
use std::sync::Arc;

fn observations(models: &[ModelContext], initial: &[Allocation]) -> Vec<ModelInterval> {
    models
        .iter()
        .zip(initial)
        .enumerate()
        .map(|(i, (m, a))| {
            let rate = 100.0 + 40.0 * i as f64;
            ModelInterval {
                model: m.name.clone(),
                start_s: 0.0,
                end_s: 1.0,
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
            configured: Allocation { gpu_pct: 6.0, max_batch: 8, batch_timeout_ms: 2.0 },
        })
        .collect();
    assert_eq!(models.len(), 16);
    let mut group = c.benchmark_group("decision_16_models");
    for name in ["model-based", "gslice"] {
        let mut policy = build(name, &models, None).unwrap();
        let obs = observations(&models, &policy.initial());
        group.bench_function(name, |b| b.iter(|| black_box(policy.decide(black_box(&obs)))));
    }
    group.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
