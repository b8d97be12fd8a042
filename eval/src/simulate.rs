//! Runs a scenario under a policy: the control loop over the simulated backend, one control
//! interval at a time, with a progress bar.

use crate::scenario::LoadedScenario;
use anyhow::{Context, Result};
use gpuslice_control::{
    Backend, BackendBuilder, BackendError, Change, DeviceSample, PooledSimBuilder, SimBuilder, StageSummary, Steered,
    StepOutcome, apply_shrinking_first, control_step, follow_sharing,
};
use gpuslice_policies::{Decision, DeviceModel, FixedPolicy, ModelContext, OraclePlan, Policy};
use gpuslice_simulator::{
    Allocation, ModelInterval, ModelReport, ModelSetup, Report, ServiceModel, Sharing, SimConfig, SimError,
};
use gpuslice_traces::ArrivalProcess;
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

/// The policy `choice` names for `contexts`, told what the backend `on` offers.
fn built_policy(
    choice: &PolicyChoice,
    loaded: &LoadedScenario,
    contexts: &[ModelContext],
    device: &DeviceModel,
    on: &dyn BackendBuilder,
) -> Result<Box<dyn Policy>> {
    let mut policy: Box<dyn Policy> = match choice {
        PolicyChoice::Scenario(sharing) => Box::new(FixedPolicy::configured("scenario", *sharing, contexts)),
        PolicyChoice::Named(name) => {
            let plan: Option<OraclePlan> =
                if name == "oracle" { Some(crate::oracle::plan(loaded, contexts)?) } else { None };
            gpuslice_policies::build(name, contexts, device, plan)?
        }
    };
    policy.offer_modes(on.modes());
    policy.plan_on_levels(on.slice_levels());
    policy.serve_batches(on.served_batches());
    Ok(policy)
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
    run_built(loaded, one_gpu(loaded)?, choice, on, show_progress)
}

/// `loaded` built for a run on one GPU (`LoadedScenario::build`); a node of several GPUs is
/// refused, since `evaluate --capacity` places its models.
pub fn one_gpu(loaded: &LoadedScenario) -> Result<(SimConfig, Vec<ModelSetup>, Vec<ModelContext>)> {
    if loaded.scenario.gpus > 1 {
        anyhow::bail!(
            "scenario {} is a node of {} GPUs: `evaluate --capacity` runs it (its models placed on the GPUs); this runs one GPU",
            loaded.origin,
            loaded.scenario.gpus
        );
    }
    loaded.build()
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
    let mut run = ControlLoop::start(loaded, built, choice, on, show_progress)?;
    while run.step()? {}
    Ok(run.finish().0)
}

/// A model one GPU's policy steers.
struct Member {
    context: ModelContext,
    /// How long its batches take (what the backend needs to take it in again elsewhere).
    service: ServiceModel,
    /// Its index in the backend.
    index: usize,
    /// Its arrivals in the last interval.
    arrivals: u64,
    /// Its GPU% at the end of the last interval.
    gpu_pct: f64,
}

/// A model moving between GPUs (`ControlLoop::hand_over`, `ControlLoop::take_in`).
pub struct Moving {
    context: ModelContext,
    service: ServiceModel,
    arrivals: Box<dyn ArrivalProcess>,
}

/// One GPU's control loop: its policy steering its backend once per control interval. A run
/// of one GPU is one loop stepped to its end (`run_built`); a node steps one loop per GPU side
/// by side and moves models between them (`cluster::run`). A loop whose models change rebuilds
/// its policy for the models it now serves, as the live controller does.
pub struct ControlLoop<'a> {
    loaded: &'a LoadedScenario,
    choice: &'a PolicyChoice,
    on: &'a dyn BackendBuilder,
    device_model: DeviceModel,
    policy: Box<dyn Policy>,
    backend: Box<dyn Backend>,
    members: Vec<Member>,
    sharing_now: Sharing,
    now_s: f64,
    finished: bool,
    intervals: Vec<ModelInterval>,
    decisions: Vec<TimedDecision>,
    refused: usize,
    device: Vec<DeviceSample>,
    departed: Vec<ModelReport>,
    progress: LateProgress,
    started: Instant,
}

impl<'a> ControlLoop<'a> {
    /// Builds the policy and the backend for `built` and applies the policy's first allocations.
    pub fn start(
        loaded: &'a LoadedScenario,
        built: (SimConfig, Vec<ModelSetup>, Vec<ModelContext>),
        choice: &'a PolicyChoice,
        on: &'a dyn BackendBuilder,
        show_progress: bool,
    ) -> Result<ControlLoop<'a>> {
        let (mut config, mut setups, contexts) = built;
        let device_model = DeviceModel { config: config.clone(), service_jitter: loaded.scenario.service_jitter };
        let mut policy = built_policy(choice, loaded, &contexts, &device_model, on)?;
        for (setup, allocation) in setups.iter_mut().zip(policy.initial()) {
            setup.allocation = allocation;
        }
        // After `initial`: it may choose the mode to start in.
        config.sharing = policy.sharing();
        let mode = config.sharing;
        let members = setups
            .iter()
            .zip(contexts)
            .enumerate()
            .map(|(index, (setup, context))| Member {
                context,
                service: setup.service.clone(),
                index,
                arrivals: 0,
                gpu_pct: setup.allocation.gpu_pct,
            })
            .collect();
        let backend = on.build(config, setups, loaded.scenario.control_interval_s, policy.switches_modes())?;
        let what = format!("{} ({}, {mode})", loaded.scenario.name, policy.name());
        Ok(ControlLoop {
            progress: LateProgress::new(loaded.scenario.duration_s, on.progress_unit(), &what, show_progress),
            loaded,
            choice,
            on,
            device_model,
            policy,
            backend,
            members,
            sharing_now: mode,
            now_s: 0.0,
            finished: false,
            intervals: Vec::new(),
            decisions: Vec::new(),
            refused: 0,
            device: Vec::new(),
            departed: Vec::new(),
            started: Instant::now(),
        })
    }

    /// Serves one control interval and lets the policy decide; false once the run has ended
    /// (every arrival served or dropped).
    pub fn step(&mut self) -> Result<bool> {
        if self.finished {
            return Ok(false);
        }
        let Some(observed) = self.backend.next_interval() else {
            self.finished = true;
            return Ok(false);
        };
        self.device.extend(self.backend.device());
        self.departed.extend(self.backend.take_departed());
        // The backend reports every model it was given (moved-off ones too); the policy steers
        // its members, in its order.
        let mut by_index: Vec<Option<ModelInterval>> = observed.into_iter().map(Some).collect();
        let observed = self
            .members
            .iter()
            .map(|m| by_index.get_mut(m.index).and_then(Option::take))
            .collect::<Option<Vec<ModelInterval>>>()
            .context("the backend reported no interval for a model it serves")?;
        self.now_s = observed.first().map_or(self.now_s, |o| o.end_s);
        for (member, o) in self.members.iter_mut().zip(&observed) {
            (member.arrivals, member.gpu_pct) = (o.summary.arrivals, o.allocation.gpu_pct);
        }
        let mut steered = Steering { backend: &mut self.backend, members: &self.members };
        let step = control_step(self.policy.as_mut(), &observed, &|_| false, &mut self.sharing_now, &mut steered);
        self.record(step);
        self.intervals.extend(observed.into_iter().map(|i| ModelInterval {
            batches: Vec::new(),
            arrivals_s: Vec::new(),
            ..i
        }));
        self.progress.set(self.now_s);
        Ok(true)
    }

    /// Seconds into the run at the end of the last interval served.
    pub fn now_s(&self) -> f64 {
        self.now_s
    }

    /// Whether the run has ended.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The position of model `name` among the models served here, if it is one.
    fn member(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.context.name == name)
    }

    /// Whether model `name` is served here (takes its requests here).
    pub fn serves(&self, name: &str) -> bool {
        self.member(name).is_some()
    }

    /// Each model served here and its arrivals in the last interval.
    pub fn arrivals(&self) -> impl Iterator<Item = (&str, u64)> {
        self.members.iter().map(|m| (m.context.name.as_str(), m.arrivals))
    }

    /// Serves up to `until_s` seconds into the run, within the control interval
    /// (`Backend::advance_to`): a node's router sends a request at its arrival.
    pub fn advance_to(&mut self, until_s: f64) {
        self.backend.advance_to(until_s);
    }

    /// Takes one request for model `name` now, sent by the node's router.
    pub fn route(&mut self, name: &str) -> Result<()> {
        let at = self.member(name).context("a model served here")?;
        Ok(self.backend.route(self.members[at].index)?)
    }

    /// Requests of model `name` queued or running here (0 if it is not served here).
    pub fn in_flight(&self, name: &str) -> usize {
        self.member(name).map_or(0, |at| self.backend.in_flight(self.members[at].index))
    }

    /// Whether the node's router may still send requests here (`Backend::routed_to`).
    pub fn routed_to(&mut self, open: bool) {
        self.backend.routed_to(open);
    }

    /// Takes model `name` off this GPU (it serves out its queue here) for another loop's
    /// `take_in`; the policy is rebuilt for the models left.
    pub fn hand_over(&mut self, name: &str) -> Result<Moving> {
        let at = self.member(name).context("a model served here")?;
        let arrivals = self.backend.hand_over(self.members[at].index)?;
        let Member { context, service, .. } = self.members.remove(at);
        self.rebuild_policy(None, &format!("{name} moved to another GPU"))?;
        Ok(Moving { context, service, arrivals })
    }

    /// Serves a model moved here, at the slice the policy rebuilt for the models now here gives
    /// it, once the others have theirs (so the GPU is never oversubscribed).
    pub fn take_in(&mut self, moving: Moving) -> Result<()> {
        let name = moving.context.name.clone();
        self.rebuild_policy(Some(moving), &format!("{name} moved here from another GPU"))
    }

    /// Rebuilds the policy for the models served now and `joining`, applies its first
    /// allocations to those here, then takes `joining` in at its own.
    fn rebuild_policy(&mut self, joining: Option<Moving>, reason: &str) -> Result<()> {
        let mut contexts: Vec<ModelContext> = self.members.iter().map(|m| m.context.clone()).collect();
        contexts.extend(joining.as_ref().map(|j| j.context.clone()));
        self.policy = built_policy(self.choice, self.loaded, &contexts, &self.device_model, self.on)?;
        let mut initial = self.policy.initial();
        let joining = match joining {
            Some(j) => Some((j, initial.pop().context("the policy's allocation of the model moved in")?)),
            None => None,
        };
        let decisions = initial.into_iter().enumerate().map(|(model, allocation)| Decision {
            model,
            allocation,
            reason: reason.into(),
        });
        let now: Vec<f64> = self.members.iter().map(|m| m.gpu_pct).collect();
        let mut steered = Steering { backend: &mut self.backend, members: &self.members };
        let mut outcome = apply_shrinking_first(decisions.collect(), &|m| now[m], &mut steered);
        if let Some((Moving { context, service, arrivals }, allocation)) = joining {
            let name = context.name.clone();
            let setup = ModelSetup {
                name: name.clone(),
                slo_ms: context.slo_ms,
                service: service.clone(),
                allocation,
                arrivals,
            };
            let index = self.backend.take_in(setup).with_context(|| format!("taking {name} in"))?;
            self.members.push(Member { context, service, index, arrivals: 0, gpu_pct: allocation.gpu_pct });
            let model = self.members.len() - 1;
            outcome.applied.push(Change::Allocation { model, allocation, reason: reason.into() });
        }
        let mut steered = Steering { backend: &mut self.backend, members: &self.members };
        follow_sharing(self.policy.sharing(), &mut self.sharing_now, &mut steered, &mut outcome);
        self.record(outcome);
        Ok(())
    }

    /// Logs and keeps what a step applied and what the backend refused.
    fn record(&mut self, step: StepOutcome) {
        let (now, name) = (self.now_s, |model: usize| self.members[model].context.name.clone());
        for (change, e) in &step.refused {
            tracing::warn!(time_s = now, change = %describe(change, &name), error = %e, "decision refused");
        }
        self.refused += step.refused.len();
        for change in step.applied {
            tracing::debug!(time_s = now, change = %describe(&change, &name), "applied");
            self.decisions.push(match change {
                Change::Allocation { model, allocation, reason } => TimedDecision {
                    time_s: now,
                    model: name(model),
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
    }

    /// The run so far as a finished one, and the whole-run figures of the models moved off
    /// this GPU.
    pub fn finish(mut self) -> (SimRun, Vec<ModelReport>) {
        self.progress.finish();
        let wall = self.started.elapsed();
        let report = self.backend.report();
        self.departed.extend(self.backend.take_departed());
        let stages = self.backend.stage_times();
        tracing::debug!(
            scenario = %self.loaded.scenario.name,
            policy = self.policy.name(),
            sharing = %report.sharing,
            simulated_s = report.elapsed_s,
            events = report.events,
            reallocations = self.decisions.len(),
            refused = self.refused,
            wall_s = wall.as_secs_f64(),
            "run finished"
        );
        let run = SimRun {
            policy: self.policy.name().to_string(),
            report,
            intervals: self.intervals,
            decisions: self.decisions,
            refused: self.refused,
            device: self.device,
            stages,
            wall,
        };
        (run, self.departed)
    }
}

/// A loop's backend steered by its policy's model indices.
struct Steering<'b> {
    backend: &'b mut Box<dyn Backend>,
    members: &'b [Member],
}

impl Steered for Steering<'_> {
    fn apply(&mut self, model: usize, allocation: Allocation) -> Result<(), BackendError> {
        let index = self.members.get(model).map(|m| m.index).ok_or(SimError::UnknownModel(model))?;
        self.backend.apply(index, allocation)
    }

    fn set_sharing(&mut self, sharing: Sharing) -> Result<(), BackendError> {
        self.backend.set_sharing(sharing)
    }
}

/// A change in words, for logs.
fn describe(change: &Change, name: &dyn Fn(usize) -> String) -> String {
    match change {
        Change::Allocation { model, allocation, reason } => {
            format!("{}: GPU% {}, {} ({reason})", name(*model), allocation.gpu_pct, allocation.batching())
        }
        Change::Sharing { from, to } => format!("sharing {from} -> {to}"),
    }
}
