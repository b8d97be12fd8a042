//! Driving the simulator from outside: submitted requests, models added and retired while it runs.

use gpuslice_simulator::{Allocation, ModelSetup, ServiceModel, SimConfig, SimError, Simulator};
use gpuslice_traces::ArrivalProcess;

/// No generated arrivals: every request is submitted.
struct NoArrivals;
impl ArrivalProcess for NoArrivals {
    fn next_arrival(&mut self) -> Option<f64> {
        None
    }
}

fn setup(name: &str, gpu_pct: f64) -> ModelSetup {
    ModelSetup {
        name: name.into(),
        slo_ms: 10.0,
        service: ServiceModel::Constant { ms: 2.0 },
        allocation: Allocation { gpu_pct, max_batch: 4, batch_timeout_ms: 1.0 },
        arrivals: Box::new(NoArrivals),
    }
}

#[test]
fn submitted_requests_come_back_with_their_tickets_and_timings() {
    let mut sim = Simulator::new(SimConfig::default(), vec![setup("a", 50.0)]).unwrap();
    let tickets: Vec<_> = (0..6).map(|_| sim.submit(0).unwrap()).collect();
    sim.run_until(100_000_000);
    let (done, dropped) = sim.take_finished();
    assert!(dropped.is_empty());
    let mut got: Vec<_> = done.iter().map(|r| r.ticket).collect();
    got.sort();
    assert_eq!(got, tickets);
    // Four go at once (a full batch), the other two after the 1 ms timeout once the GPU is free.
    let first: Vec<_> = done.iter().filter(|r| r.start_ns == 0).collect();
    assert_eq!(first.len(), 4);
    assert!(done.iter().all(|r| r.end_ns - r.start_ns == 2_000_000));
    assert!(sim.take_finished().0.is_empty(), "taken once");
}

#[test]
fn models_come_and_go_without_losing_accepted_requests() {
    let mut sim = Simulator::new(SimConfig::default(), vec![setup("a", 60.0)]).unwrap();
    assert!(matches!(sim.add_model(setup("b", 50.0)), Err(SimError::OverSubscribed { .. })));
    let b = sim.add_model(setup("b", 40.0)).unwrap();
    let accepted: Vec<_> = (0..3).map(|_| sim.submit(b).unwrap()).collect();
    sim.retire_model(b).unwrap();
    assert!(matches!(sim.submit(b), Err(SimError::Retired(_))));
    // Its slice is free again for a newcomer, and what it had accepted is still served.
    sim.add_model(setup("c", 40.0)).unwrap();
    sim.finish();
    let (done, dropped) = sim.take_finished();
    assert!(dropped.is_empty());
    assert_eq!(done.iter().map(|r| r.ticket).collect::<Vec<_>>(), accepted);
}

#[test]
fn a_request_past_its_deadline_is_reported_dropped() {
    let config = SimConfig { drop_after_ms: Some(3.0), ..SimConfig::default() };
    let mut sim = Simulator::new(config, vec![setup("a", 50.0)]).unwrap();
    let tickets: Vec<_> = (0..12).map(|_| sim.submit(0).unwrap()).collect();
    sim.finish();
    let (done, dropped) = sim.take_finished();
    assert_eq!(done.len() + dropped.len(), tickets.len());
    assert!(!dropped.is_empty());
}
