//! The simulator against queueing theory: one model, batch size 1, Poisson arrivals.
//! M/M/1: Wq = rho / (mu - lambda); M/D/1: Wq = rho / (2 mu (1 - rho)).

use gpuslice_simulator::{Allocation, ModelSetup, ServiceModel, SimConfig, Simulator};
use gpuslice_traces::arrivals::{ModulatedRenewal, RateSchedule};

const SERVICE_MS: f64 = 1.0;

/// Mean time from arrival to service start, in ms, over `arrivals` requests at load `rho`.
fn mean_wait_ms(service: ServiceModel, rho: f64, arrivals: usize) -> f64 {
    let rate = rho / (SERVICE_MS * 1e-3);
    let horizon = arrivals as f64 / rate;
    let process = ModulatedRenewal::new(RateSchedule::constant(rate, Some(horizon)).unwrap(), 1.0, 42).unwrap();
    let config = SimConfig { record_requests: true, seed: 7, ..SimConfig::default() };
    let model = ModelSetup {
        name: "queue".into(),
        slo_ms: 1e6,
        service,
        allocation: Allocation { gpu_pct: 100.0, max_batch: 1, min_batch: 1, batch_timeout_ms: 0.0 },
        arrivals: Box::new(process),
    };
    let mut sim = Simulator::new(config, vec![model]).unwrap();
    sim.finish();
    let records = sim.take_finished().0;
    assert!(records.len() as f64 > arrivals as f64 * 0.99, "only {} requests", records.len());
    records.iter().map(|r| (r.start_ns - r.arrival_ns) as f64).sum::<f64>() / records.len() as f64 * 1e-6
}

fn check(service: ServiceModel, rho: f64, expected_ms: f64, arrivals: usize) {
    let got = mean_wait_ms(service, rho, arrivals);
    let error = (got - expected_ms).abs() / expected_ms;
    assert!(
        error < 0.02,
        "rho {rho}: mean wait {got:.4} ms, closed form {expected_ms:.4} ms, error {:.2}%",
        error * 100.0
    );
}

#[test]
fn mm1_mean_wait_matches_closed_form() {
    for (rho, arrivals) in [(0.5, 1_500_000), (0.8, 4_000_000)] {
        let mu = 1.0 / SERVICE_MS;
        check(ServiceModel::Exponential { mean_ms: SERVICE_MS }, rho, rho / (mu - rho * mu), arrivals);
    }
}

#[test]
fn md1_mean_wait_matches_closed_form() {
    for (rho, arrivals) in [(0.5, 1_000_000), (0.8, 2_000_000)] {
        let mu = 1.0 / SERVICE_MS;
        check(ServiceModel::Constant { ms: SERVICE_MS }, rho, rho / (2.0 * mu * (1.0 - rho)), arrivals);
    }
}

/// Mean wait (ms) and mean batch size of a model fed one request a millisecond, served in
/// 0.5 ms a batch, batching up to 32 with a 100 ms wait, sent at `min_batch` queued.
fn batching_at(min_batch: u32) -> (f64, f64) {
    // 2048 requests: 64 full batches, none left to time out.
    let times: std::sync::Arc<[f64]> = (1..=2048).map(|k| k as f64 * 1e-3).collect();
    let process = gpuslice_traces::arrivals::Replay::new(times, 1.0, 1.0, None, 1);
    let config = SimConfig { record_requests: true, ..SimConfig::default() };
    let model = ModelSetup {
        name: "batched".into(),
        slo_ms: 1e6,
        service: ServiceModel::Constant { ms: 0.5 },
        allocation: Allocation { gpu_pct: 100.0, max_batch: 32, min_batch, batch_timeout_ms: 100.0 },
        arrivals: Box::new(process),
    };
    let mut sim = Simulator::new(config, vec![model]).unwrap();
    sim.finish();
    let records = sim.take_finished().0;
    assert_eq!(records.len(), 2048);
    let n = records.len() as f64;
    let wait_ms = records.iter().map(|r| (r.start_ns - r.arrival_ns) as f64).sum::<f64>() / n * 1e-6;
    (wait_ms, records.iter().map(|r| r.batch_size as f64).sum::<f64>() / n)
}

#[test]
fn a_batch_goes_once_min_batch_requests_are_queued() {
    // Sent at 4: each batch leaves with the 4th request (waits 3, 2, 1, 0 ms); sent at 32
    // (waiting to be full), each leaves with the 32nd (15.5 ms on average).
    let (early_wait_ms, early_batch) = batching_at(4);
    let (full_wait_ms, full_batch) = batching_at(32);
    assert!((early_wait_ms - 1.5).abs() < 0.1, "sent at 4: mean wait {early_wait_ms} ms");
    assert!((early_batch - 4.0).abs() < 0.1, "sent at 4: mean batch {early_batch}");
    assert!((full_wait_ms - 15.5).abs() < 0.5, "full: mean wait {full_wait_ms} ms");
    assert!((full_batch - 32.0).abs() < 0.5, "full: mean batch {full_batch}");
}

/// Batch sizes of a model fed one request a millisecond, served in 10 ms a batch (slower than
/// the arrivals at a batch of 8), batching up to 32 with a 100 ms wait, sent at 8 queued, on a
/// worker that runs the sizes in `served` (the rest padded up).
fn batch_sizes_served_as(served: &[u32]) -> Vec<u32> {
    let times: std::sync::Arc<[f64]> = (1..=1000).map(|k| k as f64 * 1e-3).collect();
    let process = gpuslice_traces::arrivals::Replay::new(times, 1.0, 1.0, None, 1);
    let config = SimConfig { record_requests: true, served_batches: served.to_vec(), ..SimConfig::default() };
    let model = ModelSetup {
        name: "batched".into(),
        slo_ms: 1e6,
        service: ServiceModel::Constant { ms: 10.0 },
        allocation: Allocation { gpu_pct: 100.0, max_batch: 32, min_batch: 8, batch_timeout_ms: 100.0 },
        arrivals: Box::new(process),
    };
    let mut sim = Simulator::new(config, vec![model]).unwrap();
    sim.finish();
    let records = sim.take_finished().0;
    assert_eq!(records.len(), 1000, "every request served once");
    records.iter().map(|r| r.batch_size).collect()
}

#[test]
fn a_batch_sent_at_min_batch_takes_a_size_its_worker_runs_unpadded() {
    let graphs = [1, 2, 4, 6, 8, 12, 16, 24, 32];
    // Without served sizes (nothing is padded) each batch takes the 10 queued when the one
    // before it ends, which a worker with these graphs would pad to 12.
    let any = batch_sizes_served_as(&[]);
    assert!(any.iter().filter(|&&b| b == 10).count() > 900, "sizes {any:?}");
    // With them, batches of 8 and 12 take turns (the two left over from a cut go with the next),
    // and only the last, timed out with what was left, is smaller than 8.
    let cut = batch_sizes_served_as(&graphs);
    assert!(cut.iter().all(|b| graphs.contains(b)), "sizes {cut:?}");
    assert!(cut.iter().filter(|&&b| b < 8).count() < 8, "sizes {cut:?}");
}
