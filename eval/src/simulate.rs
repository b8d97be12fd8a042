//! Runs a scenario under a policy: the control loop over the simulated backend, one control
//! interval at a time, with a progress bar.

use crate::scenario::LoadedScenario;
use anyhow::Result;
use gpuslice_control::{
    BackendBuilder, Change, DeviceSample, PooledSimBuilder, SimBuilder, StageSummary, control_step,
};
use gpuslice_policies::{DeviceModel, FixedPolicy, ModelContext, OraclePlan, Policy};
use gpuslice_simulator::{ModelInterval, ModelSetup, Report, Sharing, SimConfig};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Which policy steers a run.
#[derive(Debug, Clone)]
pub enum PolicyChoice {
    /// The scenario's own allocations, never changed, under this sharing mode.
    Scenario(Sharing),
    /// A policy by name (`gpuslice_policies::POLICY_NAMES`).
    Named(String),
}

/// One reallocation the policy made.
#[derive(Debug, Clone, Serialize)]
pub struct TimedDecision {
    /// When, seconds into the run.
    pub time_s: f64,
    /// The model (or `(all)` for a switch of sharing mode).
    pub model: String,
    /// Its new GPU%.
    pub gpu_pct: f64,
    /// Its new largest batch.
    pub max_batch: u32,
    /// Queued requests that send its batch at once.
    pub min_batch: u32,
    /// Its new batch wait, ms.
    pub batch_timeout_ms: f64,
    /// Why, in the policy's words.
    pub reason: String,
}

/// A finished run.
pub struct SimRun {
    /// The policy's name.
    pub policy: String,
    /// Whole-run figures.
    pub report: Report,
    /// Per model and control interval (batch samples left out).
    pub intervals: Vec<ModelInterval>,
    /// Every decision applied.
    pub decisions: Vec<TimedDecision>,
    /// Decisions the backend refused (each logged as a warning).
    pub refused: usize,
    /// The device's readings, one per interval (a real GPU backend only).
    pub device: Vec<DeviceSample>,
    /// Per model, where its requests' time went (a real GPU backend only).
    pub stages: Vec<StageSummary>,
    /// Wall time of the run itself, without loading the scenario.
    pub wall: Duration,
}

/// A progress bar that appears only once a run has lasted a second.
pub struct LateProgress {
    bar: ProgressBar,
    started: Instant,
    shown: bool,
    enabled: bool,
}

impl LateProgress {
    /// `total` in `unit`s (simulated seconds, runs...), if known.
    pub fn new(total: Option<f64>, unit: &str, what: &str, enabled: bool) -> LateProgress {
        let template = match total {
            Some(_) => format!("{{msg}} [{{bar:40}}] {{pos}}/{{len}} {unit}, {{elapsed}} elapsed, eta {{eta}}"),
            None => format!("{{spinner}} {{msg}} {{pos}} {unit}, {{elapsed}}"),
        };
        let bar = ProgressBar::with_draw_target(total.map(|t| t.ceil() as u64), ProgressDrawTarget::hidden())
            .with_style(ProgressStyle::with_template(&template).expect("valid template").progress_chars("=> "));
        bar.set_message(what.to_string());
        LateProgress { bar, started: Instant::now(), shown: false, enabled }
    }

    /// Moves the bar to `position` (showing it once the run has lasted a second).
    pub fn set(&mut self, position: f64) {
        if self.enabled && !self.shown && self.started.elapsed() > Duration::from_secs(1) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
        self.bar.set_position(position as u64);
    }

    /// Says what is running.
    pub fn set_message(&self, what: &str) {
        self.bar.set_message(what.to_string());
    }

    /// Clears the bar.
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

fn policy_for(
    choice: &PolicyChoice,
    loaded: &LoadedScenario,
    contexts: &[ModelContext],
    device: &DeviceModel,
) -> Result<Box<dyn Policy>> {
    match choice {
        PolicyChoice::Scenario(sharing) => Ok(Box::new(FixedPolicy::configured("scenario", *sharing, contexts))),
        PolicyChoice::Named(name) => {
            let plan: Option<OraclePlan> =
                if name == "oracle" { Some(crate::oracle::plan(loaded, contexts)?) } else { None };
            Ok(gpuslice_policies::build(name, contexts, device, plan)?)
        }
    }
}

/// Runs `loaded` under `choice` to the end of its arrivals (and until every request is served
/// or dropped), on the simulator.
pub fn run(loaded: &LoadedScenario, choice: &PolicyChoice, show_progress: bool) -> Result<SimRun> {
    run_on(loaded, choice, &SimBuilder, show_progress)
}

/// The simulator as the backend of a run: as it is, or shaped like the GPU backend with the
/// shipped defaults (`PooledSimBuilder::gpu_backend`), what `--like-gpu-backend` asks for.
pub fn simulator(like_gpu_backend: bool) -> Box<dyn BackendBuilder + Sync> {
    match like_gpu_backend {
        true => Box::new(PooledSimBuilder::gpu_backend()),
        false => Box::new(SimBuilder),
    }
}

/// Runs `loaded` under `choice` on the backend `on` builds: the same control loop either way.
pub fn run_on(
    loaded: &LoadedScenario,
    choice: &PolicyChoice,
    on: &dyn BackendBuilder,
    show_progress: bool,
) -> Result<SimRun> {
    if loaded.scenario.gpus > 1 {
        anyhow::bail!(
            "scenario {} is a node of {} GPUs: `evaluate --capacity` runs it (its models placed on the GPUs); this runs one GPU",
            loaded.origin,
            loaded.scenario.gpus
        );
    }
    let (config, setups, contexts) = loaded.build()?;
    run_built(loaded, (config, setups, contexts), choice, on, show_progress)
}

/// Runs models already built from `loaded` (`LoadedScenario::build`, or a part of it: one GPU's
/// models of a node) under `choice` on the backend `on` builds.
pub fn run_built(
    loaded: &LoadedScenario,
    built: (SimConfig, Vec<ModelSetup>, Vec<ModelContext>),
    choice: &PolicyChoice,
    on: &dyn BackendBuilder,
    show_progress: bool,
) -> Result<SimRun> {
    let (mut config, mut setups, contexts) = built;
    let device = DeviceModel { config: config.clone(), service_jitter: loaded.scenario.service_jitter };
    let mut policy = policy_for(choice, loaded, &contexts, &device)?;
    policy.offer_modes(on.modes());
    policy.plan_on_levels(on.slice_levels());
    policy.serve_batches(on.served_batches());
    for (setup, allocation) in setups.iter_mut().zip(policy.initial()) {
        setup.allocation = allocation;
    }
    // After `initial`: it may choose the mode to start in.
    config.sharing = policy.sharing();
    let names: Vec<String> = contexts.iter().map(|c| c.name.clone()).collect();
    let mode = config.sharing;
    let mut backend = on.build(config, setups, loaded.scenario.control_interval_s, policy.switches_modes())?;
    let what = format!("{} ({}, {mode})", loaded.scenario.name, policy.name());
    let mut progress = LateProgress::new(loaded.scenario.duration_s, on.progress_unit(), &what, show_progress);
    let started = Instant::now();
    let mut sharing_now = mode;
    let (mut intervals, mut decisions, mut refused, mut device) = (Vec::new(), Vec::new(), 0, Vec::new());
    while let Some(observed) = backend.next_interval() {
        device.extend(backend.device());
        let now = observed.first().map_or(0.0, |o| o.end_s);
        let step = control_step(policy.as_mut(), &observed, &|_| false, &mut sharing_now, &mut backend);
        for (change, e) in &step.refused {
            tracing::warn!(time_s = now, change = %describe(change, &names), error = %e, "decision refused");
        }
        refused += step.refused.len();
        for change in step.applied {
            tracing::debug!(time_s = now, change = %describe(&change, &names), "applied");
            decisions.push(match change {
                Change::Allocation { model, allocation, reason } => TimedDecision {
                    time_s: now,
                    model: names[model].clone(),
                    gpu_pct: allocation.gpu_pct,
                    max_batch: allocation.max_batch,
                    min_batch: allocation.min_batch,
                    batch_timeout_ms: allocation.batch_timeout_ms,
                    reason,
                },
                Change::Sharing { from, to } => TimedDecision {
                    time_s: now,
                    model: "(all)".into(),
                    gpu_pct: f64::NAN,
                    max_batch: 0,
                    min_batch: 0,
                    batch_timeout_ms: f64::NAN,
                    reason: format!("sharing {from} -> {to}"),
                },
            });
        }
        intervals.extend(observed.into_iter().map(|i| ModelInterval {
            batches: Vec::new(),
            arrivals_s: Vec::new(),
            ..i
        }));
        progress.set(now);
    }
    progress.finish();
    let wall = started.elapsed();
    let report = backend.report();
    let stages = backend.stage_times();
    tracing::debug!(
        scenario = %loaded.scenario.name,
        policy = policy.name(),
        sharing = %mode,
        simulated_s = report.elapsed_s,
        events = report.events,
        reallocations = decisions.len(),
        refused,
        wall_s = wall.as_secs_f64(),
        "run finished"
    );
    Ok(SimRun { policy: policy.name().to_string(), report, intervals, decisions, refused, device, stages, wall })
}

/// A change in words, for logs.
fn describe(change: &Change, names: &[String]) -> String {
    match change {
        Change::Allocation { model, allocation, reason } => {
            format!("{}: GPU% {}, {} ({reason})", names[*model], allocation.gpu_pct, allocation.batching())
        }
        Change::Sharing { from, to } => format!("sharing {from} -> {to}"),
    }
}
