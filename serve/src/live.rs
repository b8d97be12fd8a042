//! The live controller: one task owns the backend (the simulator run in wall-clock time, or the
//! GPU) and the policy. gRPC handlers talk to it through commands; every millisecond it advances
//! the backend to the wall clock and answers the requests that completed; every control interval
//! it runs the policy and applies its decisions, which it also broadcasts. A model's start-up
//! (worker processes on a GPU: seconds) runs off this task, so serving never waits for it.

use gpuslice_control::input::RequestInput;
use gpuslice_control::{
    BackendError, Change, Computed, LiveBackend, LiveModel, ModelSource, StageSummary, Steered, StepOutcome,
    apply_shrinking_first, control_step,
};
use gpuslice_eval::calibration::Contention;
use gpuslice_eval::cluster::Routing;
use gpuslice_policies::{Decision, DeviceModel, ModelContext, Policy};
use gpuslice_simulator::{
    Allocation, Batching, ModelReport, ReallocationCost, Sharing, SimConfig, Simulator, Summary, Ticket,
};
use gpuslice_traces::LatencyModel;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Policies that can run live: they partition the GPU (spatial sharing) and need no foreknowledge.
pub const LIVE_POLICIES: [&str; 3] = ["static", "gslice", "model-based"];

/// The most models one node serves at once (each holds worker processes and a share of the GPU;
/// a policy gives each at least 1%).
pub const MAX_MODELS: usize = 64;

/// How the node runs (the `[controller]` part of node.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// The policy steering the models.
    pub policy: String,
    /// Seconds between two decisions.
    pub control_interval_s: f64,
    /// Requests queued longer are dropped and answered with an error (None: never).
    pub drop_after_ms: Option<f64>,
    /// What a reallocation costs (the simulated backend).
    pub reallocation: ReallocationCost,
    /// Overrides the calibration's co-location interference, for every model (see
    /// `SimConfig::interference`).
    pub interference: Option<f64>,
    /// The GPU's co-location model, from the node's calibration (`NodeConfig::into_options`),
    /// which the policy plans with; not read from the `[controller]` table.
    #[serde(skip)]
    pub contention: Contention,
    /// Seed of the simulated backend's random draws.
    pub seed: u64,
    /// Requests accepted and not yet answered, all models together, beyond which Infer is
    /// refused (RESOURCE_EXHAUSTED): what a node holds stays bounded however fast calls come.
    pub max_queued_requests: usize,
    /// Bytes of input those requests may hold, MiB (see `max_queued_requests`).
    pub max_queued_input_mib: f64,
    /// On a node of several GPUs, seconds between two looks at each GPU's load to move a model
    /// off one that is too busy (`crate::gpus`); 0: models move only by PlaceModel.
    pub rebalance_every_s: f64,
    /// On a node of several GPUs, how a model's requests are split over its replicas:
    /// `fewest-in-flight` (join-shortest-queue) or `in-turn` (round-robin, which held 2-10% more
    /// load under model-based in simulation: bench/results/2026-12-03-sim-multi-gpu-moves/).
    pub replica_routing: Routing,
    /// The GPU this controller serves (its CUDA / NVML index), set by the node: on a node of one
    /// GPU, the one placement PlaceModel accepts. Not read from the `[controller]` table.
    #[serde(skip)]
    pub gpu: u32,
}

/// The longest `LiveConfig::rebalance_every_s`: a day, as for a simulated node's moves.
pub const MAX_REBALANCE_EVERY_S: f64 = gpuslice_eval::cluster::MAX_MOVE_PERIOD_S;

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            policy: "model-based".into(),
            control_interval_s: 0.5,
            drop_after_ms: Some(1000.0),
            reallocation: ReallocationCost::Standby { handover_us: 100.0 },
            interference: None,
            contention: Contention::first_h100_trio(),
            seed: 1,
            max_queued_requests: 262_144,
            max_queued_input_mib: 2048.0,
            rebalance_every_s: gpuslice_eval::cluster::MOVE_EVERY_S,
            replica_routing: Routing::default(),
            gpu: 0,
        }
    }
}

impl LiveConfig {
    /// The co-location model in force: the calibration's, with `interference` overriding every
    /// model's where given.
    pub fn contention(&self) -> Contention {
        let mut contention = self.contention.clone();
        if let Some(k) = self.interference {
            contention.interference = k;
            contention.interference_by_model.clear();
        }
        contention
    }
}

/// A failed command, by kind; the gRPC layer maps each to its status code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LiveError {
    /// A malformed request; the message names the field.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No model of that name.
    #[error("not found: {0}")]
    NotFound(String),
    /// A model of that name is registered already.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The request cannot be met as things are (an SLO the profile cannot meet...).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The request was accepted but dropped at its deadline, or the controller is gone.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The node holds as many queued requests (or bytes of their inputs) as it takes.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
}

/// A model as registered.
#[derive(Clone)]
pub struct ModelSpec {
    /// The model's name.
    pub name: String,
    /// Its latency SLO, ms.
    pub slo_ms: f64,
    /// Higher is kept first when the GPU cannot meet every SLO.
    pub priority: u32,
    /// Its largest batch.
    pub max_batch: u32,
    /// Its latency profile (a stand-in until measured, where `measure`).
    pub latency: Arc<LatencyModel>,
    /// The profiled model its latency and co-location figures are those of.
    pub profile_model: String,
    /// No profile knows it: its latency is measured on the backend at registration, before it
    /// takes traffic, and learned online from there like any model's.
    pub measure: bool,
    /// What its workers run, and its tensors.
    pub source: ModelSource,
}

/// What a client sees of a model.
#[derive(Debug, Clone)]
pub struct ModelView {
    /// The model's name.
    pub name: String,
    /// Its latency SLO, ms.
    pub slo_ms: f64,
    /// Higher is kept first when the GPU cannot meet every SLO.
    pub priority: u32,
    /// Its allocation now.
    pub allocation: Allocation,
    /// Whether an operator pinned it (the policy leaves it alone).
    pub pinned: bool,
    /// What its workers run, and its tensors.
    pub source: ModelSource,
    /// Why it serves nothing, if it has failed (see `LiveBackend::failure`).
    pub failure: Option<String>,
    /// Why it cannot serve right now, while it recovers (see `LiveBackend::outage`).
    pub outage: Option<String>,
    /// On a node of several GPUs (`crate::gpus`): the GPUs serving it, and the requests sent to
    /// each since it was placed there; empty on a node of one.
    pub gpus: Vec<(u32, u64)>,
}

impl ModelView {
    /// Why it does not serve now: it has failed, or it is recovering.
    pub fn unavailable(&self) -> Option<&str> {
        self.failure.as_deref().or(self.outage.as_deref())
    }
}

/// One reallocation, as broadcast to watchers.
#[derive(Debug, Clone)]
pub struct DecisionEvent {
    /// When, seconds since the controller started.
    pub time_s: f64,
    /// The model.
    pub model: String,
    /// Its allocation now.
    pub allocation: Allocation,
    /// Why.
    pub reason: String,
    /// Who decided: the policy's name, or `override`.
    pub source: String,
    /// On a node of several GPUs, the GPU whose controller decided.
    pub gpu: Option<u32>,
}

/// A completed request's timings and output.
#[derive(Debug, Clone)]
pub struct InferDone {
    /// The request's ticket.
    pub ticket: Ticket,
    /// Time queued (and waiting for its batch to form), ms.
    pub queue_ms: f64,
    /// Its batch's inference, ms.
    pub inference_ms: f64,
    /// Arrival to answer, ms.
    pub total_ms: f64,
    /// Requests in its batch.
    pub batch_size: u32,
    /// Its output row and its batch's copy times, where the backend computes them (the GPU
    /// backend; not the simulator).
    pub computed: Option<Computed>,
}

type Reply<T> = oneshot::Sender<Result<T, LiveError>>;

/// Commands a controller (or a node's router) holds queued before senders wait.
pub(crate) const COMMAND_QUEUE: usize = 65_536;
/// Decisions kept for a watcher that falls behind before it is told it lost some.
pub(crate) const DECISION_BACKLOG: usize = 4096;

/// A request to the controller task, with where to send its answer.
pub enum Command {
    /// Register a model; answers its first allocation.
    Register(ModelSpec, Reply<Allocation>),
    /// Unregister the named model once its accepted requests are answered.
    Unregister(String, Reply<()>),
    /// The models and the policy's name.
    List(Reply<(Vec<ModelView>, String)>),
    /// Switch to the named policy; answers the previous one's name.
    SetPolicy(String, Reply<String>),
    /// Pin (Some) or release (None).
    Override(String, Option<Allocation>, Reply<Allocation>),
    /// Whole-run metrics of the named model, or of all and the total.
    Metrics(Option<String>, Reply<(Vec<ModelReport>, Summary)>),
    /// Per registered model, where its requests' time went (a backend that measures stages).
    Stages(Reply<Vec<StageSummary>>),
    /// One request to the named model, with its input row (None: zeros, for load tests);
    /// answered when it completes.
    Infer(String, Option<RequestInput>, Reply<InferDone>),
    /// What the named model is (for the inference protocol's metadata and checks).
    Describe(String, Reply<ModelView>),
    /// Why the whole node cannot serve now (an MPS outage), if so, and the models.
    Health(Reply<(Option<String>, Vec<ModelView>)>),
    /// Put the named model on these of the node's GPUs (a node of several, `crate::gpus`);
    /// answers the GPUs it is on.
    Place(String, Vec<u32>, Reply<Vec<u32>>),
}

/// The handle gRPC handlers use.
#[derive(Clone)]
pub struct LiveHandle {
    /// Where commands go.
    pub commands: mpsc::Sender<Command>,
    /// Every reallocation, for WatchDecisions.
    pub decisions: broadcast::Sender<DecisionEvent>,
}

impl LiveHandle {
    /// Sends a command and waits for its reply.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, LiveError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| controller_gone())?;
        rx.await.map_err(|_| controller_gone())?
    }
}

/// The simulator the live controller serves on when no GPU is used.
pub fn simulated_backend(config: &LiveConfig) -> Result<Simulator, LiveError> {
    // The simulated GPU applies one interference to every model: its models are named as
    // served, and the calibration's per-model values are by profiled model.
    let contention = config.contention();
    let sim_config = SimConfig {
        reallocation: config.reallocation,
        drop_after_ms: config.drop_after_ms,
        interference_by_model: Default::default(),
        mps_launch_contention_by_model: Default::default(),
        ..contention.config(Sharing::Spatial, config.seed)
    };
    Simulator::new(sim_config, Vec::new()).map_err(|e| LiveError::InvalidArgument(e.to_string()))
}

struct Entry {
    context: ModelContext,
    source: ModelSource,
    index: usize,
    pinned: Option<Allocation>,
}

/// A model whose start-up job finished (or failed), back on the controller's task.
struct Prepared<P> {
    spec: ModelSpec,
    /// What the backend readied, and the latency points it measured (for a `measure` spec).
    result: Result<(P, Option<Vec<gpuslice_traces::ProfilePoint>>), BackendError>,
    reply: Reply<Allocation>,
    /// When the registration began.
    asked: Instant,
}

struct Live<B: LiveBackend> {
    backend: B,
    started: Instant,
    interval: Duration,
    next_control: Duration,
    entries: Vec<Entry>,
    policy_name: String,
    policy: Box<dyn Policy>,
    /// What the policy knows of the GPU; its per-model interference by served name (see
    /// `ModelSpec::profile_model`).
    device: DeviceModel,
    /// The calibration's co-location model, per-model values by profiled model.
    contention: Contention,
    /// How the GPU is shared now (slices until a policy switches).
    sharing: Sharing,
    /// Requests accepted and not yet answered, with the bytes of their input.
    waiting: HashMap<Ticket, (Reply<InferDone>, usize)>,
    /// The bytes `waiting` holds, and the bounds on it (see `LiveConfig::max_queued_requests`).
    queued_bytes: usize,
    max_queued_requests: usize,
    max_queued_bytes: usize,
    decisions: broadcast::Sender<DecisionEvent>,
    /// Models starting up, by name.
    starting: std::collections::HashSet<String>,
    prepared: mpsc::UnboundedSender<Prepared<B::Prepared>>,
    /// The GPU it serves (`LiveConfig::gpu`).
    gpu: u32,
}

/// The registered models as the control step steers them: the policy's index is the entry's,
/// the backend's is the entry's `index`.
struct Registered<'a, B: LiveBackend> {
    backend: &'a mut B,
    entries: &'a [Entry],
}

impl<B: LiveBackend> Steered for Registered<'_, B> {
    fn apply(&mut self, model: usize, allocation: Allocation) -> Result<(), BackendError> {
        self.backend.set_allocation(self.entries[model].index, allocation)
    }
    fn set_sharing(&mut self, sharing: Sharing) -> Result<(), BackendError> {
        self.backend.set_sharing(sharing)
    }
}

/// The running controller task and how to stop it.
pub struct Started {
    /// How handlers reach it.
    pub handle: LiveHandle,
    /// Send (or drop) to stop: commands already queued are handled, new ones refused, and the
    /// task ends once every accepted request has been answered.
    pub stop: oneshot::Sender<()>,
    /// The task, to await its end.
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the controller task on `backend`.
pub fn start<B: LiveBackend>(config: LiveConfig, backend: B) -> Result<Started, LiveError> {
    if !LIVE_POLICIES.contains(&config.policy.as_str()) {
        return Err(LiveError::InvalidArgument(format!(
            "policy {:?} cannot run live; use one of {}",
            config.policy,
            LIVE_POLICIES.join(", ")
        )));
    }
    if !(config.control_interval_s.is_finite() && config.control_interval_s > 0.0) {
        return Err(LiveError::InvalidArgument(format!(
            "control_interval_s must be > 0, got {}",
            config.control_interval_s
        )));
    }
    // 0 turns rebalancing off; a negative, NaN or absurd period is a mistake to name, not a
    // silent off (or a panic converting it to a Duration).
    if !(0.0..=MAX_REBALANCE_EVERY_S).contains(&config.rebalance_every_s) {
        return Err(LiveError::InvalidArgument(format!(
            "rebalance_every_s must be in [0, {MAX_REBALANCE_EVERY_S}] (0: off), got {}",
            config.rebalance_every_s
        )));
    }
    if config.max_queued_requests == 0
        || !(config.max_queued_input_mib.is_finite() && config.max_queued_input_mib >= 1.0)
    {
        return Err(LiveError::InvalidArgument(format!(
            "max_queued_requests must be >= 1 and max_queued_input_mib >= 1, got {} and {}",
            config.max_queued_requests, config.max_queued_input_mib
        )));
    }
    let contention = config.contention();
    let device = DeviceModel { config: contention.config(Sharing::Spatial, config.seed), service_jitter: true };
    let policy = gpuslice_policies::build(&config.policy, &[], &device, None)
        .map_err(|e| LiveError::InvalidArgument(e.to_string()))?;
    let (commands, mut rx) = mpsc::channel(COMMAND_QUEUE);
    let (decisions, _) = broadcast::channel(DECISION_BACKLOG);
    let (prepared, mut prepared_rx) = mpsc::unbounded_channel();
    let interval = Duration::from_secs_f64(config.control_interval_s);
    let mut live = Live {
        backend,
        started: Instant::now(),
        interval,
        next_control: interval,
        entries: Vec::new(),
        policy_name: config.policy,
        policy,
        device,
        contention,
        sharing: Sharing::Spatial,
        waiting: HashMap::new(),
        queued_bytes: 0,
        max_queued_requests: config.max_queued_requests,
        max_queued_bytes: (config.max_queued_input_mib * 1_048_576.0) as usize,
        decisions: decisions.clone(),
        starting: Default::default(),
        prepared,
        gpu: config.gpu,
    };
    let (stop, mut stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let (mut open, mut stopping) = (true, false);
        while open || !live.waiting.is_empty() {
            tokio::select! {
                _ = &mut stop_rx, if !stopping => {
                    stopping = true;
                    rx.close();
                }
                command = rx.recv(), if open => match command {
                    Some(command) => { live.advance(); live.handle(command); }
                    None => open = false,
                },
                Some(ready) = prepared_rx.recv() => { live.advance(); live.finish_register(ready); }
                _ = tick.tick() => live.advance(),
            }
        }
        tracing::info!("controller stopped: every accepted request answered");
        // Dropping a GPU backend waits for its workers to exit: off the async threads.
        let _ = tokio::task::spawn_blocking(move || drop(live)).await;
    });
    Ok(Started { handle: LiveHandle { commands, decisions }, stop, task })
}

/// What the policy knows of a model being registered (its allocation comes from the policy).
/// The latency model fitted from what the backend measured of `spec` at registration, once its
/// SLO is checked against it.
fn measured_latency(spec: &ModelSpec, points: Vec<gpuslice_traces::ProfilePoint>) -> Result<LatencyModel, LiveError> {
    let profile = gpuslice_traces::ModelProfile {
        model: spec.name.clone(),
        engine: "registration".into(),
        dtype: if spec.source.half { "fp16" } else { "fp32" }.into(),
        points,
    };
    // Fewer than three GPU% levels (no standby pool) cannot fit how it scales with GPU%: it is
    // taken as proportional, as the profiles' median model scales.
    let latency = LatencyModel::fit(&profile, 1.0)
        .map_err(|e| LiveError::FailedPrecondition(format!("model {:?}: its measured latency: {e}", spec.name)))?;
    let best = latency.p99_ms(1, 100.0);
    if spec.slo_ms < best {
        return Err(LiveError::FailedPrecondition(format!(
            "model {:?}: slo_ms {} cannot be met: measured at registration, its best p99 is {best:.3} ms (batch 1 on the whole GPU)",
            spec.name, spec.slo_ms
        )));
    }
    tracing::info!(
        model = %spec.name,
        points = profile.points.len(),
        batch1_p50_ms = latency.p50_ms(1, 100.0),
        fit_rms_rel_error = latency.fit.rms_rel_error,
        "measured at registration"
    );
    Ok(latency)
}

fn context_of(spec: &ModelSpec) -> ModelContext {
    ModelContext {
        name: spec.name.clone(),
        slo_ms: spec.slo_ms,
        priority: spec.priority,
        latency: spec.latency.clone(),
        configured: Batching::full(spec.max_batch, 1.0).at(1.0),
    }
}

pub(crate) fn already_registered(name: &str) -> LiveError {
    LiveError::AlreadyExists(format!("model {name:?} is already registered"))
}

/// The answer to a command the controller will not handle: it has stopped.
pub(crate) fn controller_gone() -> LiveError {
    LiveError::Unavailable("the controller has stopped".into())
}

pub(crate) fn still_starting(name: &str) -> LiveError {
    LiveError::Unavailable(format!("model {name:?} is still starting"))
}

pub(crate) fn not_found(name: &str) -> LiveError {
    LiveError::NotFound(format!("no model named {}", gpuslice_control::quoted_name(name)))
}

impl<B: LiveBackend> Live<B> {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn entry(&self, name: &str) -> Result<usize, LiveError> {
        self.entries.iter().position(|e| e.context.name == name).ok_or_else(|| not_found(name))
    }

    /// Takes `ticket` off the waiting requests (its reply, to answer it).
    fn answered(&mut self, ticket: Ticket) -> Option<Reply<InferDone>> {
        let (reply, bytes) = self.waiting.remove(&ticket)?;
        self.queued_bytes -= bytes;
        Some(reply)
    }

    /// Why a request of `bytes` of input cannot be queued now, if it cannot.
    fn queue_full(&self, bytes: usize) -> Option<LiveError> {
        let mib = |b: usize| b as f64 / 1_048_576.0;
        if self.waiting.len() >= self.max_queued_requests {
            Some(LiveError::ResourceExhausted(format!(
                "{} requests are queued, the node's limit (max_queued_requests)",
                self.waiting.len()
            )))
        } else if self.queued_bytes + bytes > self.max_queued_bytes {
            Some(LiveError::ResourceExhausted(format!(
                "{:.0} MiB of inputs are queued; this one's {:.1} MiB would pass the node's {:.0} MiB \
                 (max_queued_input_mib)",
                mib(self.queued_bytes),
                mib(bytes),
                mib(self.max_queued_bytes)
            )))
        } else {
            None
        }
    }

    /// Runs the backend up to the wall clock, answers completed requests, and runs the policy
    /// at each control interval.
    fn advance(&mut self) {
        let now = self.now();
        let (done, dropped) = self.backend.advance(now);
        for (r, output) in done {
            if let Some(reply) = self.answered(r.ticket) {
                let ms = |ns: u64| ns as f64 * 1e-6;
                let _ = reply.send(Ok(InferDone {
                    ticket: r.ticket,
                    queue_ms: ms(r.start_ns - r.arrival_ns),
                    inference_ms: ms(r.end_ns - r.start_ns),
                    total_ms: ms(r.end_ns - r.arrival_ns),
                    batch_size: r.batch_size,
                    computed: output,
                }));
            }
        }
        for ticket in dropped {
            if let Some(reply) = self.answered(ticket) {
                let _ = reply.send(Err(LiveError::Unavailable("dropped: queued past the deadline".into())));
            }
        }
        if now >= self.next_control {
            self.next_control = now + self.interval;
            self.control();
        }
    }

    /// One control interval: observe, then the control step offline runs take too.
    fn control(&mut self) {
        let all = self.backend.take_interval();
        if self.entries.is_empty() {
            return;
        }
        let observed: Vec<_> = self.entries.iter().map(|e| all[e.index].clone()).collect();
        let entries = &self.entries;
        let held = |e: usize| entries[e].pinned.is_some();
        let mut target = Registered { backend: &mut self.backend, entries };
        let outcome = control_step(self.policy.as_mut(), &observed, &held, &mut self.sharing, &mut target);
        let source = self.policy_name.clone();
        self.publish(outcome, &source);
    }

    /// Applies allocations (by entry), slices that shrink first, and publishes what was done.
    fn apply(&mut self, targets: Vec<(usize, Allocation, String)>, source: &str) {
        let decisions =
            targets.into_iter().map(|(model, allocation, reason)| Decision { model, allocation, reason }).collect();
        let (backend, entries) = (&self.backend, &self.entries);
        let now: Vec<f64> =
            entries.iter().map(|e| backend.allocation(e.index).map(|a| a.gpu_pct).unwrap_or(0.0)).collect();
        let mut target = Registered { backend: &mut self.backend, entries: &self.entries };
        let outcome = apply_shrinking_first(decisions, &|e| now[e], &mut target);
        self.publish(outcome, source);
    }

    /// Broadcasts each applied allocation (WatchDecisions) and logs what was refused.
    fn publish(&mut self, outcome: StepOutcome, source: &str) {
        let time_s = self.now().as_secs_f64();
        let name = |e: usize| self.entries[e].context.name.clone();
        for (change, err) in outcome.refused {
            match change {
                Change::Allocation { model, reason, .. } => {
                    tracing::warn!(model = %name(model), error = %err, %reason, "decision refused")
                }
                Change::Sharing { to, .. } => tracing::warn!(to = %to, error = %err, "sharing switch refused"),
            }
        }
        for change in outcome.applied {
            match change {
                Change::Allocation { model, allocation, reason } => {
                    tracing::debug!(model = %name(model), gpu_pct = allocation.gpu_pct, max_batch = allocation.max_batch, %reason, "reallocation");
                    let event = DecisionEvent {
                        time_s,
                        model: name(model),
                        allocation,
                        reason,
                        source: source.into(),
                        gpu: None,
                    };
                    let _ = self.decisions.send(event);
                }
                Change::Sharing { from, to } => tracing::info!(%from, %to, "sharing switched"),
            }
        }
    }

    /// Policy `name` for `contexts`, planning on the backend's slice levels.
    fn build_policy(&self, name: &str, contexts: &[ModelContext]) -> Result<Box<dyn Policy>, LiveError> {
        let mut policy = gpuslice_policies::build(name, contexts, &self.device, None)
            .map_err(|e| LiveError::InvalidArgument(e.to_string()))?;
        policy.plan_on_levels(&self.backend.slice_levels());
        policy.serve_batches(self.backend.served_batches());
        Ok(policy)
    }

    /// Builds `name` for the current models.
    fn rebuild_policy(&mut self, name: &str) -> Result<(), LiveError> {
        let contexts: Vec<ModelContext> = self.entries.iter().map(|e| e.context.clone()).collect();
        self.policy = self.build_policy(name, &contexts)?;
        self.policy_name = name.to_string();
        Ok(())
    }

    /// The policy's starting allocations for the unpinned models, applied now.
    fn apply_initial(&mut self, reason: &str) {
        let initial = self.policy.initial();
        let targets = initial
            .into_iter()
            .enumerate()
            .filter(|(e, _)| self.entries[*e].pinned.is_none())
            .map(|(e, a)| (e, a, reason.to_string()))
            .collect();
        self.apply(targets, "register");
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Register(spec, reply) => self.begin_register(spec, reply),
            Command::Unregister(name, reply) => {
                let _ = reply.send(self.unregister(&name));
            }
            Command::List(reply) => {
                let _ = reply.send(Ok((self.views(), self.policy_name.clone())));
            }
            Command::SetPolicy(name, reply) => {
                let _ = reply.send(self.set_policy(&name));
            }
            Command::Override(name, allocation, reply) => {
                let _ = reply.send(self.pin(&name, allocation));
            }
            Command::Metrics(name, reply) => {
                let _ = reply.send(self.metrics(name.as_deref()));
            }
            Command::Stages(reply) => {
                // By index, as the metrics: a name registered again is one series.
                let stages = self.backend.stage_times().into_iter().enumerate();
                let registered = |(index, _): &(usize, StageSummary)| self.entries.iter().any(|e| e.index == *index);
                let _ = reply.send(Ok(stages.filter(registered).map(|(_, s)| s).collect()));
            }
            Command::Describe(name, reply) => {
                let view = self.entry(&name).map(|e| self.view(e));
                let _ = reply.send(view);
            }
            Command::Health(reply) => {
                let _ = reply.send(Ok((self.backend.node_outage(), self.views())));
            }
            // A node of one GPU has nowhere else to put a model: its own GPU is the one placement.
            Command::Place(name, devices, reply) => {
                let gpu = self.gpu;
                let placed = self.entry(&name).and_then(|_| {
                    if !devices.is_empty() && devices.iter().all(|&d| d == gpu) {
                        return Ok(vec![gpu]);
                    }
                    Err(LiveError::FailedPrecondition(format!(
                        "this node serves GPU {gpu} alone: placing a model elsewhere needs a node of several (`gpus` \
                         in node.toml, serve --gpus)"
                    )))
                });
                let _ = reply.send(placed);
            }
            Command::Infer(name, input, reply) => match self.entry(&name) {
                Ok(e) if input.as_ref().is_some_and(|i| i.len() != self.entries[e].source.io.input().bytes()) => {
                    let (expected, given) = (self.entries[e].source.io.input().bytes(), input.map_or(0, |i| i.len()));
                    let _ = reply.send(Err(LiveError::InvalidArgument(format!(
                        "model {name:?} takes {expected} bytes of input per request, {given} given"
                    ))));
                }
                Ok(e) => {
                    let bytes = input.as_ref().map_or(0, |i| i.len());
                    if let Some(full) = self.queue_full(bytes) {
                        let _ = reply.send(Err(full));
                        return;
                    }
                    match self.backend.submit(self.entries[e].index, input) {
                        Ok(ticket) => {
                            self.waiting.insert(ticket, (reply, bytes));
                            self.queued_bytes += bytes;
                        }
                        Err(err) => {
                            let _ = reply.send(Err(LiveError::FailedPrecondition(err.to_string())));
                        }
                    }
                }
                Err(_) if self.starting.contains(&name) => {
                    let _ = reply.send(Err(still_starting(&name)));
                }
                Err(err) => {
                    let _ = reply.send(Err(err));
                }
            },
        }
    }

    /// A new model is refused if its name is taken or its SLO cannot be met at all.
    fn check_new(&self, spec: &ModelSpec) -> Result<(), LiveError> {
        // Every registration passes here: RegisterModel, the node config's models, the repository.
        if let Some(problem) = gpuslice_control::model_name_problem(&spec.name) {
            return Err(LiveError::InvalidArgument(problem));
        }
        if self.entries.len() + self.starting.len() >= MAX_MODELS {
            return Err(LiveError::FailedPrecondition(format!(
                "{MAX_MODELS} models are registered or starting, the most one node serves: unregister one first"
            )));
        }
        if self.entries.iter().any(|e| e.context.name == spec.name) || self.starting.contains(&spec.name) {
            return Err(already_registered(&spec.name));
        }
        // A model measured at registration is checked once measured (`finish_register`).
        let best = spec.latency.p99_ms(1, 100.0);
        if !spec.measure && spec.slo_ms < best {
            return Err(LiveError::FailedPrecondition(format!(
                "slo_ms {} cannot be met: the best achievable p99 is {best:.3} ms (batch 1 on the whole GPU)",
                spec.slo_ms
            )));
        }
        Ok(())
    }

    /// The policy for the current models plus `context`, and its starting allocations (the new
    /// model's last).
    fn plan_with(&self, context: &ModelContext) -> Result<(Box<dyn Policy>, Vec<Allocation>), LiveError> {
        let mut contexts: Vec<ModelContext> = self.entries.iter().map(|e| e.context.clone()).collect();
        contexts.push(context.clone());
        let mut next = self.build_policy(&self.policy_name, &contexts)?;
        let initial = next.initial();
        Ok((next, initial))
    }

    /// Gives the policy's GPU model `spec`'s co-location interference and default-MPS launch
    /// contention, where the calibration measured its profiled model (the calibration's default
    /// otherwise).
    fn learn_contention(&mut self, spec: &ModelSpec) {
        let config = &mut self.device.config;
        let pairs = [
            (&mut config.interference_by_model, &self.contention.interference_by_model),
            (&mut config.mps_launch_contention_by_model, &self.contention.mps_launch_contention_by_model),
        ];
        for (by_name, by_profile) in pairs {
            match by_profile.get(&spec.profile_model) {
                Some(&k) => by_name.insert(spec.name.clone(), k),
                None => by_name.remove(&spec.name),
            };
        }
    }

    /// Checks a registration and starts the model's start-up job off the controller's task;
    /// `finish_register` completes it.
    fn begin_register(&mut self, spec: ModelSpec, reply: Reply<Allocation>) {
        // Learned only once the checks pass: a refused duplicate must not change the
        // registered model's figures.
        let planned = self.check_new(&spec).and_then(|()| {
            self.learn_contention(&spec);
            self.plan_with(&context_of(&spec))
        });
        let gpu_pct = match planned {
            Ok((_, initial)) => initial[self.entries.len()].gpu_pct,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.starting.insert(spec.name.clone());
        tracing::info!(model = %spec.name, gpu_pct, measure = spec.measure, "model starting");
        let job: Box<dyn FnOnce() -> _ + Send> = if spec.measure {
            let measuring = self.backend.measuring_preparer(&spec.source, gpu_pct);
            Box::new(move || measuring().map(|(prepared, points)| (prepared, Some(points))))
        } else {
            let preparing = self.backend.preparer(&spec.source, gpu_pct);
            Box::new(move || preparing().map(|prepared| (prepared, None)))
        };
        let done = self.prepared.clone();
        let asked = Instant::now();
        tokio::task::spawn_blocking(move || {
            let result = job();
            let _ = done.send(Prepared { spec, result, reply, asked });
        });
    }

    fn finish_register(&mut self, ready: Prepared<B::Prepared>) {
        let Prepared { mut spec, result, reply, asked } = ready;
        self.starting.remove(&spec.name);
        let (name, measured) = (spec.name.clone(), spec.measure);
        let registered = match result {
            Ok((prepared, points)) => match points.map(|p| measured_latency(&spec, p)).transpose() {
                Ok(latency) => {
                    if let Some(latency) = latency {
                        spec.latency = Arc::new(latency);
                    }
                    self.register(spec, prepared)
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(LiveError::FailedPrecondition(format!("model {name:?} could not start: {e}"))),
        };
        if registered.is_ok() {
            tracing::info!(model = %name, in_s = asked.elapsed().as_secs_f64(), measured, "model registered");
        }
        let _ = reply.send(registered);
    }

    /// Adds a started model: the new set's starting shares are applied to the existing models
    /// first (making room), then the model joins at what is left of its own.
    fn register(&mut self, spec: ModelSpec, prepared: B::Prepared) -> Result<Allocation, LiveError> {
        let context = context_of(&spec);
        let (mut next, initial) = self.plan_with(&context)?;
        let existing: Vec<_> = initial[..self.entries.len()]
            .iter()
            .enumerate()
            .filter(|(e, _)| self.entries[*e].pinned.is_none())
            .map(|(e, a)| (e, *a, format!("making room for {}", spec.name)))
            .collect();
        let mut allocation = initial[self.entries.len()];
        // The new model's share is kept free while the others shrink (only then, so a failed
        // registration leaves no reservation behind).
        self.backend.reserve(allocation.gpu_pct);
        self.apply(existing, "register");
        self.backend.reserve(0.0);
        let free = 100.0
            - self.entries.iter().map(|e| self.backend.allocation(e.index).map_or(0.0, |a| a.gpu_pct)).sum::<f64>();
        allocation.gpu_pct = allocation.gpu_pct.min(free.floor());
        if allocation.gpu_pct < 1.0 {
            return Err(LiveError::FailedPrecondition(format!(
                "no GPU left for {}: pinned models hold {:.0}%",
                spec.name,
                100.0 - free
            )));
        }
        let model = LiveModel {
            name: spec.name.clone(),
            slo_ms: spec.slo_ms,
            latency: spec.latency.clone(),
            allocation,
            source: spec.source.clone(),
        };
        let index =
            self.backend.add_model(model, prepared).map_err(|e| LiveError::FailedPrecondition(e.to_string()))?;
        // The backend may serve a nearby share (a GPU's standby pool level).
        let allocation = self.backend.allocation(index).unwrap_or(allocation);
        let configured = ModelContext { configured: allocation, ..context };
        self.entries.push(Entry { context: configured, source: spec.source.clone(), index, pinned: None });
        std::mem::swap(&mut self.policy, &mut next);
        let _ = self.decisions.send(DecisionEvent {
            time_s: self.now().as_secs_f64(),
            model: spec.name.clone(),
            allocation,
            reason: format!(
                "registered: starts at its knee share, {}% at batch {}",
                allocation.gpu_pct, allocation.max_batch
            ),
            source: "register".into(),
            gpu: None,
        });
        tracing::info!(model = %spec.name, gpu_pct = allocation.gpu_pct, "model registered");
        Ok(allocation)
    }

    fn unregister(&mut self, name: &str) -> Result<(), LiveError> {
        let e = self.entry(name)?;
        let entry = self.entries.remove(e);
        self.backend.retire_model(entry.index).map_err(|err| LiveError::InvalidArgument(err.to_string()))?;
        let policy = self.policy_name.clone();
        self.rebuild_policy(&policy)?;
        tracing::info!(model = %name, "model unregistered; its accepted requests are still served");
        Ok(())
    }

    fn set_policy(&mut self, name: &str) -> Result<String, LiveError> {
        if !LIVE_POLICIES.contains(&name) {
            return Err(LiveError::InvalidArgument(format!(
                "policy: {name:?} cannot run live; use one of {}",
                LIVE_POLICIES.join(", ")
            )));
        }
        let previous = self.policy_name.clone();
        self.rebuild_policy(name)?;
        self.apply_initial(&format!("policy {previous} -> {name}"));
        Ok(previous)
    }

    fn pin(&mut self, name: &str, allocation: Option<Allocation>) -> Result<Allocation, LiveError> {
        let e = self.entry(name)?;
        let Some(allocation) = allocation else {
            self.entries[e].pinned = None;
            return self.backend.allocation(self.entries[e].index).map_err(|err| LiveError::NotFound(err.to_string()));
        };
        if let Some(problem) = allocation.problem() {
            return Err(LiveError::InvalidArgument(format!("allocation: {problem}")));
        }
        self.backend
            .set_allocation(self.entries[e].index, allocation)
            .map_err(|err| LiveError::FailedPrecondition(err.to_string()))?;
        self.entries[e].pinned = Some(allocation);
        let _ = self.decisions.send(DecisionEvent {
            time_s: self.now().as_secs_f64(),
            model: name.to_string(),
            allocation,
            reason: "pinned by OverrideAllocation".into(),
            source: "override".into(),
            gpu: None,
        });
        Ok(allocation)
    }

    fn views(&self) -> Vec<ModelView> {
        (0..self.entries.len()).map(|e| self.view(e)).collect()
    }

    /// What a client sees of entry `e`.
    fn view(&self, e: usize) -> ModelView {
        let e = &self.entries[e];
        ModelView {
            name: e.context.name.clone(),
            slo_ms: e.context.slo_ms,
            priority: e.context.priority,
            allocation: self.backend.allocation(e.index).unwrap_or(e.context.configured),
            pinned: e.pinned.is_some(),
            source: e.source.clone(),
            failure: self.backend.failure(e.index),
            outage: self.backend.outage(e.index),
            gpus: Vec::new(),
        }
    }

    fn metrics(&mut self, name: Option<&str>) -> Result<(Vec<ModelReport>, Summary), LiveError> {
        if let Some(name) = name {
            self.entry(name)?;
        }
        let report = self.backend.report();
        let models = report
            .models
            .into_iter()
            .enumerate()
            // Unregistered models count in the total only: no stale series in /metrics, and a
            // name registered again is one series (the backend keeps one report per index).
            .filter(|(index, _)| self.entries.iter().any(|e| e.index == *index))
            .map(|(_, m)| m)
            .filter(|m| name.is_none_or(|n| n == m.model))
            .collect();
        Ok((models, report.total))
    }
}
