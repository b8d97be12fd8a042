//! Driving the simulator from outside: submitted requests, models added and retired while it runs.

use gpuslice_simulator::{Allocation, ModelSetup, ServiceModel, SimConfig, SimError, Simulator};
use gpuslice_traces::arrivals::NoArrivals;

fn setup(name: &str, gpu_pct: f64) -> ModelSetup {
    ModelSetup {
        name: name.into(),
        slo_ms: 10.0,
        service: ServiceModel::Constant { ms: 2.0 },
        allocation: Allocation { gpu_pct, max_batch: 4, min_batch: 4, batch_timeout_ms: 1.0 },
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

#[test]
fn a_served_out_model_gives_its_slot_and_memory_back_and_stays_in_the_total() {
    let mut sim = Simulator::new(SimConfig::default(), vec![setup("a", 50.0)]).unwrap();
    let b = sim.add_model(setup("b", 40.0)).unwrap();
    // A reallocation while b serves: its old worker's batch may still run after the move.
    sim.submit(b).unwrap();
    sim.set_allocation(b, Allocation { gpu_pct: 30.0, max_batch: 4, min_batch: 4, batch_timeout_ms: 1.0 }).unwrap();
    sim.submit(b).unwrap();
    sim.retire_model(b).unwrap();
    // Still serving: its slot is not taken.
    let _ = sim.take_interval();
    assert_ne!(sim.add_model(setup("c", 10.0)).unwrap(), b);
    sim.run_until(gpuslice_simulator::secs_to_ns(1.0));
    let _ = sim.take_interval();
    let (done, _) = sim.take_finished();
    assert_eq!(done.len(), 2, "b's requests were served");
    // Served out and released: the next model takes b's slot, and serves on it as its own.
    let d = sim.add_model(setup("d", 10.0)).unwrap();
    assert_eq!(d, b);
    let ticket = sim.submit(d).unwrap();
    sim.run_until(gpuslice_simulator::secs_to_ns(2.0));
    let (done, _) = sim.take_finished();
    assert_eq!(done.iter().map(|r| r.ticket).collect::<Vec<_>>(), vec![ticket]);
    let report = sim.report();
    let names: Vec<_> = report.models.iter().map(|m| m.model.as_str()).collect();
    assert_eq!(names, ["a", "d", "c"], "retired models leave the per-model figures");
    assert_eq!(report.total.completed, 3, "and stay in the total");
}

/// Model "m", 2 ms a batch of up to 4, Poisson arrivals at 400/s for 4 s (seed `seed`).
fn poisson_model(gpu_pct: f64) -> ModelSetup {
    use gpuslice_traces::arrivals::{ModulatedRenewal, RateSchedule};
    let arrivals = ModulatedRenewal::new(RateSchedule::constant(400.0, Some(4.0)).unwrap(), 1.0, 7).unwrap();
    ModelSetup { name: "m".into(), arrivals: Box::new(arrivals), ..setup("m", gpu_pct) }
}

#[test]
fn a_model_handed_over_to_another_gpu_keeps_every_arrival_and_serves_out_its_queue() {
    // The same model served on one GPU throughout, and moved from A to B at 1.5 s.
    let mut alone = Simulator::new(SimConfig::default(), vec![poisson_model(50.0)]).unwrap();
    alone.finish();
    let whole = alone.report().models[0].summary.clone();
    let mut a = Simulator::new(SimConfig::default(), vec![poisson_model(50.0), setup("a", 50.0)]).unwrap();
    let mut b = Simulator::new(SimConfig::default(), vec![setup("b", 50.0)]).unwrap();
    let at = gpuslice_simulator::secs_to_ns(1.5);
    a.run_until(at);
    b.run_until(at);
    let stream = a.hand_over(0).unwrap();
    assert!(matches!(a.hand_over(0), Err(SimError::Retired(_))), "handed over once");
    assert!(a.held_pct(None) < 50.1, "its slice no longer counts on A: {}", a.held_pct(None));
    let on_b = b.add_model(ModelSetup { arrivals: stream, ..setup("m", 50.0) }).unwrap();
    a.finish();
    b.finish();
    // A serves out what it had queued, then reports the model as departed, once.
    let _ = a.take_interval();
    let departed = a.take_departed();
    assert_eq!(departed.len(), 1);
    assert!(a.take_departed().is_empty());
    assert!(a.report().models.iter().all(|m| m.model != "m"), "no longer one of A's models");
    let (before, after) = (&departed[0].summary, &b.report().models[on_b].summary);
    assert!(before.arrivals > 400 && after.arrivals > 800, "{before:?} {after:?}");
    assert_eq!(before.arrivals + after.arrivals, whole.arrivals, "every arrival, on one GPU or the other");
    for s in [before, after] {
        assert_eq!(s.completed + s.dropped, s.arrivals, "nothing lost: {s:?}");
    }
}
