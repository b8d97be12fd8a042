//! Feeds the oracle its foreknowledge: every model's whole arrival trace, drawn from the same
//! seeded processes the run will replay.

use crate::scenario::LoadedScenario;
use anyhow::Result;
use gpuslice_policies::{DeviceModel, PlanInputs};
use gpuslice_policies::{ModelContext, OraclePlan};

/// Control intervals per oracle window when the scenario does not say.
const DEFAULT_INTERVALS_PER_WINDOW: usize = 5;

/// The oracle's plan for `loaded`: each model's arrivals drawn from the scenario's seeded processes, planned per window (see `OraclePlan::compute`).
pub fn plan(loaded: &LoadedScenario, contexts: &[ModelContext]) -> Result<OraclePlan> {
    let (config, setups, _) = loaded.build()?;
    let arrivals =
        setups.into_iter().map(|mut setup| std::iter::from_fn(|| setup.arrivals.next_arrival()).collect()).collect();
    let s = &loaded.scenario;
    Ok(OraclePlan::compute(PlanInputs {
        models: contexts,
        arrivals,
        control_interval_s: s.control_interval_s,
        intervals_per_window: s.oracle_window_intervals.unwrap_or(DEFAULT_INTERVALS_PER_WINDOW),
        device: DeviceModel { config, service_jitter: s.service_jitter },
    })?)
}
