//! Simulator speed: events per second at high load, for each sharing mode.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gpuslice_simulator::{Allocation, ModelSetup, ServiceModel, Sharing, SimConfig, Simulator};
use gpuslice_traces::arrivals::{ModulatedRenewal, RateSchedule};
use gpuslice_traces::{LatencyModel, ProfileSet, Source};
use std::sync::Arc;

const MODELS: [(&str, f64); 4] =
    [("resnet50", 2000.0), ("mobilenet_v3_large", 2000.0), ("vgg16", 1000.0), ("efficientnet_b0", 1500.0)];
const SECONDS: f64 = 20.0;

fn simulator(sharing: Sharing, fitted: &std::collections::BTreeMap<String, LatencyModel>) -> Simulator {
    let config = SimConfig { sharing, interference: 0.05, drop_after_ms: Some(200.0), seed: 1, ..SimConfig::default() };
    let setups = MODELS
        .iter()
        .enumerate()
        .map(|(i, (name, rate))| ModelSetup {
            name: name.to_string(),
            slo_ms: 20.0,
            service: ServiceModel::Calibrated { latency: Arc::new(fitted[*name].clone()), jitter: true },
            allocation: Allocation { gpu_pct: 25.0, max_batch: 8, min_batch: 8, batch_timeout_ms: 1.0 },
            arrivals: Box::new(
                ModulatedRenewal::new(RateSchedule::constant(*rate, Some(SECONDS)).unwrap(), 1.0, i as u64).unwrap(),
            ),
        })
        .collect();
    Simulator::new(config, setups).unwrap()
}

fn events_per_second(c: &mut Criterion) {
    let set = ProfileSet::parse(&Source::load("builtin:h100-cudagraph", std::path::Path::new(".")).unwrap()).unwrap();
    let fitted = LatencyModel::fit_all(&set).unwrap();
    let mut group = c.benchmark_group("simulate_20s_4_models");
    group.sample_size(10);
    for sharing in [Sharing::Spatial, Sharing::Temporal, Sharing::DefaultMps] {
        let mut probe = simulator(sharing, &fitted);
        probe.finish();
        group.throughput(Throughput::Elements(probe.events()));
        group.bench_function(sharing.to_string(), |b| {
            b.iter(|| {
                let mut sim = simulator(sharing, &fitted);
                sim.finish();
                sim.events()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, events_per_second);
criterion_main!(benches);
