//! Runs a scenario under a policy: the control loop over the simulated backend, one control
//! interval at a time, with a progress bar.

use crate::scenario::LoadedScenario;
use anyhow::{Result, anyhow};
use gpuslice_gpu::serving::{GpuBackend, GpuModelSetup, WorkerStarter, WorkerTemplate};
use gpuslice_control::{Backend, DeviceSample, SimBackend, StageSummary};
use gpuslice_policies::{FixedPolicy, ModelContext, OraclePlan, Policy};
use gpuslice_simulator::{Allocation, ModelInterval, Report, Sharing, Simulator};
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
    pub time_s: f64,
    pub model: String,
    pub gpu_pct: f64,
    pub max_batch: u32,
    pub batch_timeout_ms: f64,
    pub reason: String,
}

/// A finished run.
pub struct SimRun {
    pub policy: String,
    pub report: Report,
    /// Per model and control interval (batch samples left out).
    pub intervals: Vec<ModelInterval>,
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

    pub fn set(&mut self, position: f64) {
        if self.enabled && !self.shown && self.started.elapsed() > Duration::from_secs(1) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
        self.bar.set_position(position as u64);
    }

    pub fn set_message(&self, what: &str) {
        self.bar.set_message(what.to_string());
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

fn policy_for(choice: &PolicyChoice, loaded: &LoadedScenario, contexts: &[ModelContext]) -> Result<Box<dyn Policy>> {
    match choice {
        PolicyChoice::Scenario(sharing) => Ok(Box::new(FixedPolicy::configured("scenario", *sharing, contexts))),
        PolicyChoice::Named(name) => {
            let plan: Option<OraclePlan> =
                if name == "oracle" { Some(crate::oracle::plan(loaded, contexts)?) } else { None };
            gpuslice_policies::build(name, contexts, plan).map_err(|e| anyhow!(e))
        }
    }
}

/// Which backend serves a run.
pub enum BackendChoice {
    /// The discrete-event simulator.
    Simulated,
    /// The GPU, through model workers under MPS.
    Gpu(WorkerTemplate),
}

impl BackendChoice {
    /// The sharing modes the backend can switch between while it serves (see
    /// `Backend::set_sharing`).
    pub fn modes(&self) -> &'static [Sharing] {
        match self {
            BackendChoice::Simulated => &[Sharing::Temporal, Sharing::DefaultMps, Sharing::Spatial],
            BackendChoice::Gpu(_) => &[Sharing::Spatial],
        }
    }
}

/// Runs `loaded` under `choice` to the end of its arrivals (and until every request is served
/// or dropped), on the simulator.
pub fn run(loaded: &LoadedScenario, choice: &PolicyChoice, show_progress: bool) -> Result<SimRun> {
    run_on(loaded, choice, &BackendChoice::Simulated, show_progress)
}

/// Runs `loaded` under `choice` on the chosen backend: the same control loop either way.
pub fn run_on(
    loaded: &LoadedScenario,
    choice: &PolicyChoice,
    on: &BackendChoice,
    show_progress: bool,
) -> Result<SimRun> {
    let (mut config, mut setups, contexts) = loaded.build()?;
    let mut policy = policy_for(choice, loaded, &contexts)?;
    policy.offer_modes(on.modes());
    if let BackendChoice::Gpu(template) = on {
        policy.plan_on_levels(&template.pool_levels);
    }
    config.sharing = policy.sharing();
    for (setup, allocation) in setups.iter_mut().zip(policy.initial()) {
        setup.allocation = allocation;
    }
    let names: Vec<String> = contexts.iter().map(|c| c.name.clone()).collect();
    let mode = config.sharing;
    let interval = loaded.scenario.control_interval_s;
    let mut backend: Box<dyn Backend> = match on {
        BackendChoice::Simulated => Box::new(SimBackend::new(Simulator::new(config, setups)?, interval)),
        BackendChoice::Gpu(template) => {
            // Temporal sharing is the driver time-slicing the workers' contexts (no MPS); default
            // MPS runs every worker at 100%. Neither reallocates, so neither keeps a standby pool.
            let mut template = template.clone();
            if mode != Sharing::Spatial {
                template.pool_levels.clear();
            }
            // GPU-less workers (tests) need no MPS.
            let mps = match template.fake_ms {
                Some(_) => None,
                None if mode == Sharing::Temporal => None,
                None => Some(gpuslice_gpu::mps::MpsDaemon::start_private()?),
            };
            let gpu_setups = setups
                .into_iter()
                .map(|s| GpuModelSetup {
                    name: s.name,
                    slo_ms: s.slo_ms,
                    allocation: s.allocation,
                    arrivals: Some(s.arrivals),
                })
                .collect();
            let drop_after = loaded.scenario.drop_after_ms.map(|ms| Duration::from_secs_f64(ms * 1e-3));
            let starter = WorkerStarter::new(template, mps);
            Box::new(GpuBackend::start(gpu_setups, Duration::from_secs_f64(interval), drop_after, starter, mode)?)
        }
    };
    let what = format!("{} ({}, {mode})", loaded.scenario.name, policy.name());
    let unit = if matches!(on, BackendChoice::Simulated) { "s simulated" } else { "s on the GPU" };
    let mut progress = LateProgress::new(loaded.scenario.duration_s, unit, &what, show_progress);
    let started = Instant::now();
    let mut sharing_now = mode;
    let (mut intervals, mut decisions, mut refused, mut device) = (Vec::new(), Vec::new(), 0, Vec::new());
    while let Some(observed) = backend.next_interval() {
        device.extend(backend.device());
        let now = observed.first().map_or(0.0, |o| o.end_s);
        let mut chosen = policy.decide(&observed);
        // Shrink slices before growing others, so the GPU is never oversubscribed in between.
        let growth = |model: usize, a: &Allocation| a.gpu_pct - observed[model].allocation.gpu_pct;
        chosen.sort_by(|a, b| growth(a.model, &a.allocation).total_cmp(&growth(b.model, &b.allocation)));
        for d in chosen {
            // A refused decision leaves the model as it was; serving goes on.
            if let Err(e) = backend.apply(d.model, d.allocation) {
                tracing::warn!(time_s = now, model = %names[d.model], error = %e, reason = %d.reason, "decision refused");
                refused += 1;
                continue;
            }
            tracing::debug!(time_s = now, model = %names[d.model], gpu_pct = d.allocation.gpu_pct, max_batch = d.allocation.max_batch, reason = %d.reason, "reallocation");
            decisions.push(TimedDecision {
                time_s: now,
                model: names[d.model].clone(),
                gpu_pct: d.allocation.gpu_pct,
                max_batch: d.allocation.max_batch,
                batch_timeout_ms: d.allocation.batch_timeout_ms,
                reason: d.reason,
            });
        }
        let wanted = policy.sharing();
        if wanted != sharing_now {
            match backend.set_sharing(wanted) {
                Ok(()) => {
                    tracing::debug!(time_s = now, from = %sharing_now, to = %wanted, "sharing switched");
                    decisions.push(TimedDecision {
                        time_s: now,
                        model: "(all)".into(),
                        gpu_pct: f64::NAN,
                        max_batch: 0,
                        batch_timeout_ms: f64::NAN,
                        reason: format!("sharing {sharing_now} -> {wanted}"),
                    });
                    sharing_now = wanted;
                }
                Err(e) => {
                    tracing::warn!(time_s = now, to = %wanted, error = %e, "sharing switch refused");
                    refused += 1;
                }
            }
        }
        intervals.extend(observed.into_iter().map(|i| ModelInterval { batches: Vec::new(), ..i }));
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
