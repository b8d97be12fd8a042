//! A node of several GPUs: one live controller per GPU (its own backend, MPS daemon and policy
//! instance, slicing that GPU alone) and a router in front that takes the same commands as one
//! controller, so the gRPC services, /metrics and the NetML ingress are the same for a node of
//! one GPU or of eight.
//!
//! - Placement: a model registered goes to the GPU serving the fewest models (then the lowest
//!   index); `Command::Place` (the PlaceModel RPC) puts it on any set of the node's GPUs.
//! - Replicas: a model on several GPUs has each request sent to the replica with the fewest
//!   requests in flight (join-shortest-queue), ties taken in turn; or to each in turn
//!   (`replica_routing = "in-turn"`).
//! - Moving (a new set of GPUs): the model starts on the GPUs it is not on yet, its workers ready
//!   before any request goes there; requests then go to the new set, and each replica left
//!   answers what it accepted before it is retired. No request is lost or refused on the way.
//! - Load shifts: every `rebalance_every_s` the router reads each model's arrival rate since the
//!   last look and predicts each GPU's busy share (`gpuslice_eval::cluster::busy_with_interference`,
//!   the simulator's placement model). Where one GPU passes `cluster::HOT_PCT`, the model whose
//!   move to the least busy GPU lowers the busier of the two the most is moved there, as
//!   PlaceModel does, if that gains at least `cluster::MIN_GAIN_PCT` (`cluster::choose_move`,
//!   the rule a simulated node follows); one move at a time, replicas left where they are.

use crate::live::{
    COMMAND_QUEUE, Command, DECISION_BACKLOG, DecisionEvent, LiveConfig, LiveError, LiveHandle, ModelSpec, ModelView,
    Started, already_registered, controller_gone, not_found, still_starting,
};
use gpuslice_eval::calibration::Contention;
use gpuslice_eval::cluster::{self, Demand, Routing};
use gpuslice_simulator::{Allocation, ModelReport, Summary};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

/// The most GPUs one node serves.
pub const MAX_GPUS: usize = 16;

/// The GPUs a node serves (`gpus` in node.toml, `serve --gpus`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GpuSet {
    /// One controller over the GPUs the process sees (CUDA_VISIBLE_DEVICES as given).
    #[default]
    Visible,
    /// Every GPU NVML enumerates, a controller each.
    All,
    /// These GPUs by CUDA / NVML index, a controller each.
    Listed(Vec<u32>),
}

impl std::str::FromStr for GpuSet {
    type Err = String;
    /// `all`, or indices separated by commas (`0,1`).
    fn from_str(s: &str) -> Result<GpuSet, String> {
        if s == "all" {
            return Ok(GpuSet::All);
        }
        let listed = s
            .split(',')
            .map(|i| {
                i.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("{i:?} is not a GPU index (gpus: \"all\" or indices like 0,1)"))
            })
            .collect::<Result<Vec<u32>, String>>()?;
        GpuSet::listed(listed)
    }
}

impl<'de> serde::Deserialize<'de> for GpuSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<GpuSet, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Given {
            Name(String),
            Indices(Vec<u32>),
        }
        match Given::deserialize(d)? {
            Given::Name(name) => name.parse(),
            Given::Indices(indices) => GpuSet::listed(indices),
        }
        .map_err(serde::de::Error::custom)
    }
}

impl GpuSet {
    /// A list of GPUs, checked: at least one, at most `MAX_GPUS`, none twice.
    fn listed(indices: Vec<u32>) -> Result<GpuSet, String> {
        if indices.is_empty() || indices.len() > MAX_GPUS {
            return Err(format!("gpus: between 1 and {MAX_GPUS} GPUs, got {}", indices.len()));
        }
        if let Some(twice) = indices.iter().enumerate().find(|(i, g)| indices[..*i].contains(g)) {
            return Err(format!("gpus: GPU {} is named twice", twice.1));
        }
        Ok(GpuSet::Listed(indices))
    }

    /// The GPUs to start a controller on (empty: one over the GPUs the process sees); `count`
    /// reads how many GPUs NVML sees, for `All`.
    pub fn resolve(&self, count: impl FnOnce() -> anyhow::Result<u32>) -> anyhow::Result<Vec<u32>> {
        Ok(match self {
            GpuSet::Visible => Vec::new(),
            GpuSet::Listed(indices) => indices.clone(),
            GpuSet::All => {
                let n = count()?;
                anyhow::ensure!(n > 0, "gpus = \"all\": NVML sees no GPU");
                (0..n.min(MAX_GPUS as u32)).collect()
            }
        })
    }
}

/// Starts the router over one started controller per GPU (`device`, `Started`): the node's
/// controller, as `live::start` gives one GPU's. `config` gives how often it looks at the GPUs'
/// load (`rebalance_every_s`) and the co-location model it predicts their busy share with.
pub fn start(controllers: Vec<(u32, Started)>, config: &LiveConfig) -> Started {
    let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
    let (decisions, _) = broadcast::channel(DECISION_BACKLOG);
    let mut gpus = Vec::new();
    let mut stops = Vec::new();
    for (device, started) in controllers {
        tokio::spawn(forward_decisions(device, started.handle.decisions.subscribe(), decisions.clone()));
        gpus.push(Gpu { device, handle: started.handle, models: 0 });
        stops.push((started.stop, started.task));
    }
    let (done, done_rx) = mpsc::unbounded_channel();
    // In [0, a day]: each GPU's controller refused any other value (`live::start`).
    let rebalance = (config.rebalance_every_s > 0.0).then(|| Rebalance {
        every: Duration::from_secs_f64(config.rebalance_every_s),
        contention: config.contention(),
        seen: HashMap::new(),
    });
    let router = Router {
        gpus,
        models: BTreeMap::new(),
        busy: HashSet::new(),
        done,
        turn: 0,
        routing: config.replica_routing,
        rebalance,
    };
    let (stop, stop_rx) = oneshot::channel();
    let task = tokio::spawn(router.run(rx, done_rx, stop_rx, stops));
    Started { handle: LiveHandle { commands, decisions }, stop, task }
}

/// One GPU's controller, with decisions tagged by the GPU.
async fn forward_decisions(
    device: u32,
    mut from: broadcast::Receiver<DecisionEvent>,
    to: broadcast::Sender<DecisionEvent>,
) {
    loop {
        match from.recv().await {
            Ok(event) => {
                let _ = to.send(DecisionEvent { gpu: Some(device), ..event });
            }
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

struct Gpu {
    device: u32,
    handle: LiveHandle,
    /// Models placed (or being placed) on it.
    models: usize,
}

/// A model and where it runs.
struct Placed {
    spec: ModelSpec,
    replicas: Vec<Replica>,
}

struct Replica {
    /// Index into `Router::gpus`.
    gpu: usize,
    in_flight: Arc<AtomicUsize>,
    routed: Arc<AtomicU64>,
}

impl Replica {
    fn on(gpu: usize) -> Replica {
        Replica { gpu, in_flight: Arc::default(), routed: Arc::default() }
    }
}

/// What a job run off the router's task reports back.
enum Done {
    /// A model registered (or not) on `gpu`.
    Registered { spec: ModelSpec, gpu: usize, result: Result<Allocation, LiveError>, reply: Reply<Allocation> },
    /// A model started on `added` (or not); on success requests move to them, then it retires
    /// from `removed`.
    Started {
        name: String,
        added: Vec<usize>,
        removed: Vec<usize>,
        result: Result<(), LiveError>,
        reply: Reply<Vec<u32>>,
    },
    /// A model left GPUs (`freed`); its name is free for other changes again.
    Retired { name: String, freed: Vec<usize> },
    /// Each GPU's models and the requests that arrived for each so far, read at `at`.
    Load { at: Instant, arrivals: Vec<Vec<(String, u64)>> },
}

/// What the router keeps to find a GPU that is too busy.
struct Rebalance {
    every: Duration,
    contention: Contention,
    /// Per (model, GPU index): its arrivals when last read, and when.
    seen: HashMap<(String, usize), (u64, Instant)>,
}

type Reply<T> = oneshot::Sender<Result<T, LiveError>>;

struct Router {
    gpus: Vec<Gpu>,
    models: BTreeMap<String, Placed>,
    /// Models being registered, moved or unregistered: another such change waits.
    busy: HashSet<String>,
    done: mpsc::UnboundedSender<Done>,
    /// Replicas taken in turn (all, or those tied for the fewest in flight).
    turn: usize,
    /// How a model's requests are split over its replicas.
    routing: Routing,
    /// Moving models off busy GPUs, unless turned off.
    rebalance: Option<Rebalance>,
}

impl Router {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut done_rx: mpsc::UnboundedReceiver<Done>,
        mut stop_rx: oneshot::Receiver<()>,
        controllers: Vec<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    ) {
        let mut stopping = false;
        let every = self.rebalance.as_ref().map_or(Duration::from_secs(3600), |r| r.every);
        let mut look = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = &mut stop_rx, if !stopping => {
                    stopping = true;
                    rx.close();
                }
                command = rx.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => break,
                },
                Some(done) = done_rx.recv() => self.finish(done),
                _ = look.tick(), if self.rebalance.is_some() && !stopping => self.read_load(),
            }
        }
        // Every command taken has reached its GPU's controller: each stops once it has answered
        // the requests it accepted.
        for (stop, task) in controllers {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Infer(name, input, reply) => {
                let Some(placed) = self.models.get(&name) else {
                    let _ = reply.send(Err(self.absent(&name)));
                    return;
                };
                let replica = pick(&placed.replicas, &mut self.turn, self.routing);
                replica.in_flight.fetch_add(1, Ordering::Relaxed);
                replica.routed.fetch_add(1, Ordering::Relaxed);
                let in_flight = replica.in_flight.clone();
                // Sent here, in order, so that a stop finds it queued at its controller.
                let (tx, rx) = oneshot::channel();
                let gpu = &self.gpus[replica.gpu].handle;
                if gpu.commands.send(Command::Infer(name, input, tx)).await.is_err() {
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    let _ = reply.send(Err(controller_gone()));
                    return;
                }
                tokio::spawn(async move {
                    let answer = rx.await.unwrap_or_else(|_| Err(controller_gone()));
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    let _ = reply.send(answer);
                });
            }
            Command::Register(spec, reply) => self.register(spec, reply),
            Command::Place(name, devices, reply) => self.place(name, devices, reply),
            Command::Unregister(name, reply) => self.unregister(name, reply),
            Command::Describe(name, reply) => match self.models.get(&name) {
                Some(placed) => {
                    let gpu = self.gpus[placed.replicas[0].gpu].handle.clone();
                    let on = self.placement(&name);
                    tokio::spawn(async move {
                        let view = gpu.ask(|tx| Command::Describe(name, tx)).await;
                        let _ = reply.send(view.map(|v| ModelView { gpus: on, ..v }));
                    });
                }
                None => {
                    let _ = reply.send(Err(self.absent(&name)));
                }
            },
            Command::List(reply) => {
                let (handles, placement) = (self.handles(), self.placements());
                tokio::spawn(async move {
                    let lists = ask_all(&handles, Command::List).await;
                    let _ = reply.send(lists.map(|lists| {
                        let policy = lists.first().map(|(_, p)| p.clone()).unwrap_or_default();
                        (merge_views(lists.into_iter().map(|(v, _)| v).collect(), &placement), policy)
                    }));
                });
            }
            Command::Health(reply) => {
                let (handles, placement, devices) = (self.handles(), self.placements(), self.devices());
                tokio::spawn(async move {
                    let states = ask_all(&handles, Command::Health).await;
                    let _ = reply.send(states.map(|states| {
                        let outage = states
                            .iter()
                            .zip(&devices)
                            .find_map(|((outage, _), d)| outage.as_ref().map(|why| format!("GPU {d}: {why}")));
                        (outage, merge_views(states.into_iter().map(|(_, v)| v).collect(), &placement))
                    }));
                });
            }
            Command::SetPolicy(policy, reply) => {
                let handles = self.handles();
                tokio::spawn(async move {
                    let previous = ask_all(&handles, |tx| Command::SetPolicy(policy.clone(), tx)).await;
                    let _ = reply.send(previous.map(|p| p.into_iter().next().unwrap_or_default()));
                });
            }
            Command::Override(name, pin, reply) => match self.models.get(&name) {
                Some(placed) => {
                    let handles = self.handles_on(placed.replicas.iter().map(|r| r.gpu));
                    tokio::spawn(async move {
                        let pinned = ask_all(&handles, |tx| Command::Override(name.clone(), pin, tx)).await;
                        let _ = reply.send(pinned.map(|a| a[0]));
                    });
                }
                None => {
                    let _ = reply.send(Err(self.absent(&name)));
                }
            },
            Command::Metrics(filter, reply) => {
                if let Some(name) = filter.as_ref().filter(|n| !self.models.contains_key(*n)) {
                    let _ = reply.send(Err(self.absent(name)));
                    return;
                }
                // A GPU the model is not on has nothing to say of it.
                let handles: Vec<LiveHandle> = match &filter {
                    Some(name) => self.handles_on(self.models[name].replicas.iter().map(|r| r.gpu)),
                    None => self.handles(),
                };
                tokio::spawn(async move {
                    let reports = ask_all(&handles, |tx| Command::Metrics(filter.clone(), tx)).await;
                    let _ = reply.send(reports.map(merge_metrics));
                });
            }
            Command::Stages(reply) => {
                let handles = self.handles();
                tokio::spawn(async move {
                    let stages = ask_all(&handles, Command::Stages).await;
                    let _ = reply.send(stages.map(|s| s.into_iter().flatten().collect()));
                });
            }
        }
    }

    /// Why a model that is not serving cannot be reached: starting, or unknown.
    fn absent(&self, name: &str) -> LiveError {
        match self.busy.contains(name) {
            true => still_starting(name),
            false => not_found(name),
        }
    }

    fn register(&mut self, spec: ModelSpec, reply: Reply<Allocation>) {
        if self.models.contains_key(&spec.name) || self.busy.contains(&spec.name) {
            let _ = reply.send(Err(already_registered(&spec.name)));
            return;
        }
        // The GPU serving the fewest models, then the lowest index.
        let gpu = (0..self.gpus.len()).min_by_key(|&g| self.gpus[g].models).expect("a node has a GPU");
        self.gpus[gpu].models += 1;
        self.busy.insert(spec.name.clone());
        let (handle, done) = (self.gpus[gpu].handle.clone(), self.done.clone());
        tokio::spawn(async move {
            let result = handle.ask(|tx| Command::Register(spec.clone(), tx)).await;
            let _ = done.send(Done::Registered { spec, gpu, result, reply });
        });
    }

    fn place(&mut self, name: String, devices: Vec<u32>, reply: Reply<Vec<u32>>) {
        let target = match self.targets(&name, &devices) {
            Ok(target) => target,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let placed = &self.models[&name];
        let current: Vec<usize> = placed.replicas.iter().map(|r| r.gpu).collect();
        let added: Vec<usize> = target.iter().copied().filter(|g| !current.contains(g)).collect();
        let removed: Vec<usize> = current.iter().copied().filter(|g| !target.contains(g)).collect();
        for &g in &added {
            self.gpus[g].models += 1;
        }
        self.busy.insert(name.clone());
        let (spec, done) = (placed.spec.clone(), self.done.clone());
        let handles = self.handles_on(added.iter().copied());
        tokio::spawn(async move {
            let started =
                futures_util::future::join_all(handles.iter().map(|h| h.ask(|tx| Command::Register(spec.clone(), tx))))
                    .await;
            let result = match started.iter().find_map(|r| r.as_ref().err()) {
                None => Ok(()),
                Some(e) => {
                    // Where it did start, it goes again: the placement is all or nothing.
                    let started_on = handles.iter().zip(&started).filter(|(_, r)| r.is_ok());
                    for (h, _) in started_on {
                        let _ = h.ask(|tx| Command::Unregister(spec.name.clone(), tx)).await;
                    }
                    Err(e.clone())
                }
            };
            let _ = done.send(Done::Started { name: spec.name.clone(), added, removed, result, reply });
        });
    }

    /// The GPUs (indices into `gpus`) `devices` names for `name`, checked.
    fn targets(&self, name: &str, devices: &[u32]) -> Result<Vec<usize>, LiveError> {
        if !self.models.contains_key(name) {
            return Err(self.absent(name));
        }
        if self.busy.contains(name) {
            return Err(LiveError::FailedPrecondition(format!("model {name:?} is being placed or unregistered")));
        }
        if devices.is_empty() {
            return Err(LiveError::InvalidArgument("gpus: name at least one of the node's GPUs".into()));
        }
        let mut target = Vec::new();
        for d in devices {
            let g = self.gpus.iter().position(|g| g.device == *d).ok_or_else(|| {
                LiveError::InvalidArgument(format!("gpus: this node has no GPU {d}; it serves {:?}", self.devices()))
            })?;
            if !target.contains(&g) {
                target.push(g);
            }
        }
        Ok(target)
    }

    fn unregister(&mut self, name: String, reply: Reply<()>) {
        if self.busy.contains(&name) && self.models.contains_key(&name) {
            let _ = reply.send(Err(LiveError::FailedPrecondition(format!(
                "model {name:?} is being placed; unregister it once that is done"
            ))));
            return;
        }
        let Some(placed) = self.models.remove(&name) else {
            let _ = reply.send(Err(self.absent(&name)));
            return;
        };
        // No request goes to it from now on; each replica answers those it accepted.
        self.busy.insert(name.clone());
        let freed: Vec<usize> = placed.replicas.iter().map(|r| r.gpu).collect();
        let handles = self.handles_on(freed.iter().copied());
        let done = self.done.clone();
        tokio::spawn(async move {
            let result = ask_all(&handles, |tx| Command::Unregister(name.clone(), tx)).await;
            let _ = reply.send(result.map(|_| ()));
            let _ = done.send(Done::Retired { name, freed });
        });
    }

    fn finish(&mut self, done: Done) {
        match done {
            Done::Registered { spec, gpu, result, reply } => {
                self.busy.remove(&spec.name);
                match &result {
                    Ok(_) => {
                        tracing::info!(model = %spec.name, gpu = self.gpus[gpu].device, "model placed");
                        self.models.insert(spec.name.clone(), Placed { spec, replicas: vec![Replica::on(gpu)] });
                    }
                    Err(_) => self.gpus[gpu].models -= 1,
                }
                let _ = reply.send(result);
            }
            Done::Started { name, added, removed, result, reply } => {
                if let Err(e) = result {
                    for g in added {
                        self.gpus[g].models -= 1;
                    }
                    self.busy.remove(&name);
                    let _ = reply.send(Err(e));
                    return;
                }
                let placed = self.models.get_mut(&name).expect("a model being placed stays registered");
                placed.replicas.retain(|r| !removed.contains(&r.gpu));
                placed.replicas.extend(added.iter().map(|&g| Replica::on(g)));
                let on = placed.replicas.iter().map(|r| self.gpus[r.gpu].device).collect::<Vec<_>>();
                tracing::info!(model = %name, gpus = ?on, "model placed");
                let handles = self.handles_on(removed.iter().copied());
                let done = self.done.clone();
                tokio::spawn(async move {
                    // Each replica left answers what it accepted, then stops.
                    let retired = ask_all(&handles, |tx| Command::Unregister(name.clone(), tx)).await;
                    let _ = reply.send(retired.map(|_| on));
                    let _ = done.send(Done::Retired { name, freed: removed });
                });
            }
            Done::Retired { name, freed } => {
                for g in freed {
                    self.gpus[g].models -= 1;
                }
                self.busy.remove(&name);
            }
            Done::Load { at, arrivals } => self.rebalance(at, arrivals),
        }
    }

    /// Reads every GPU's arrivals per model off the router's task (`Done::Load`).
    fn read_load(&self) {
        let (handles, done) = (self.handles(), self.done.clone());
        tokio::spawn(async move {
            let Ok(reports) = ask_all(&handles, |tx| Command::Metrics(None, tx)).await else { return };
            let arrivals = reports
                .into_iter()
                .map(|(models, _)| models.into_iter().map(|m| (m.model, m.summary.arrivals)).collect())
                .collect();
            let _ = done.send(Done::Load { at: Instant::now(), arrivals });
        });
    }

    /// Moves one model off a GPU that is too busy, if one is and a move helps enough (see the
    /// module).
    fn rebalance(&mut self, at: Instant, arrivals: Vec<Vec<(String, u64)>>) {
        let Some(rebalance) = self.rebalance.as_mut() else { return };
        // Each placed model's rate on each GPU since the last look; none the first time.
        let mut rates: Vec<(String, usize, f64)> = Vec::new();
        // Only the models read now are kept: what was unregistered or moved is forgotten.
        let mut seen = HashMap::new();
        for (g, models) in arrivals.into_iter().enumerate() {
            for (name, count) in models {
                let previous = rebalance.seen.get(&(name.clone(), g)).copied();
                if let Some((before, then)) = previous.filter(|(before, _)| *before <= count) {
                    let seconds = at.duration_since(then).as_secs_f64().max(1e-3);
                    rates.push((name.clone(), g, (count - before) as f64 / seconds));
                }
                seen.insert((name, g), (count, at));
            }
        }
        rebalance.seen = seen;
        if !self.busy.is_empty() {
            return; // One change at a time: the rates of a model being moved are not settled.
        }
        let demand = |name: &str, rate: f64| -> Option<Demand> {
            let spec = &self.models.get(name)?.spec;
            let contention = &self.rebalance.as_ref()?.contention;
            let interference = contention.interference_of(&spec.profile_model);
            Some(Demand::at_rate(&spec.latency, spec.max_batch, rate, interference, spec.slo_ms))
        };
        let movable = |name: &str| self.models.get(name).is_some_and(|p| p.replicas.len() == 1);
        let (mut names, mut on): (Vec<Vec<String>>, Vec<Vec<Demand>>) =
            (vec![Vec::new(); self.gpus.len()], vec![Vec::new(); self.gpus.len()]);
        for (name, g, rate) in rates {
            if let Some(d) = demand(&name, rate) {
                on[g].push(d);
                names[g].push(name);
            }
        }
        let Some(chosen) = cluster::choose_move(&on, &|g, m| movable(&names[g][m])) else { return };
        let name = names[chosen.from][chosen.model].clone();
        let (from, to) = (self.gpus[chosen.from].device, self.gpus[chosen.to].device);
        tracing::info!(
            model = %name, from, to,
            from_busy_pct = chosen.from_busy_pct, to_busy_pct = chosen.to_busy_pct,
            busier_after_pct = chosen.busier_after_pct,
            "a GPU is too busy: moving a model off it"
        );
        let (reply, answer) = oneshot::channel();
        self.place(name.clone(), vec![to], reply);
        tokio::spawn(async move {
            if let Ok(Err(e)) = answer.await {
                tracing::warn!(model = %name, from, to, error = %e, "the move off a busy GPU failed; it stays");
            }
        });
    }

    /// Every GPU's controller.
    fn handles(&self) -> Vec<LiveHandle> {
        self.handles_on(0..self.gpus.len())
    }

    /// The controllers of these GPUs (indices into `gpus`).
    fn handles_on(&self, gpus: impl IntoIterator<Item = usize>) -> Vec<LiveHandle> {
        gpus.into_iter().map(|g| self.gpus[g].handle.clone()).collect()
    }

    fn devices(&self) -> Vec<u32> {
        self.gpus.iter().map(|g| g.device).collect()
    }

    /// Where `name` runs: each GPU, with the requests sent to it.
    fn placement(&self, name: &str) -> Vec<(u32, u64)> {
        self.models[name].replicas.iter().map(|r| (self.gpus[r.gpu].device, r.routed.load(Ordering::Relaxed))).collect()
    }

    fn placements(&self) -> BTreeMap<String, Vec<(u32, u64)>> {
        self.models.keys().map(|name| (name.clone(), self.placement(name))).collect()
    }
}

/// The replica a request goes to by `routing`: the next in turn, or the one with the fewest
/// requests in flight (among equals, the next in turn).
fn pick<'a>(replicas: &'a [Replica], turn: &mut usize, routing: Routing) -> &'a Replica {
    *turn = turn.wrapping_add(1);
    if routing == Routing::InTurn {
        return &replicas[*turn % replicas.len()];
    }
    let fewest = replicas.iter().map(|r| r.in_flight.load(Ordering::Relaxed)).min().expect("a replica");
    let tied: Vec<&Replica> = replicas.iter().filter(|r| r.in_flight.load(Ordering::Relaxed) == fewest).collect();
    tied[*turn % tied.len()]
}

/// Asks every controller in `handles` at once (`make` builds each one's command); the first
/// error, if any.
async fn ask_all<T, F: Fn(Reply<T>) -> Command>(handles: &[LiveHandle], make: F) -> Result<Vec<T>, LiveError> {
    let make = &make;
    futures_util::future::join_all(handles.iter().map(|h| h.ask(make))).await.into_iter().collect()
}

/// One view per placed model (the first GPU's that knows it), with where it runs.
fn merge_views(per_gpu: Vec<Vec<ModelView>>, placement: &BTreeMap<String, Vec<(u32, u64)>>) -> Vec<ModelView> {
    let mut first: BTreeMap<String, ModelView> = BTreeMap::new();
    for view in per_gpu.into_iter().flatten() {
        first.entry(view.name.clone()).or_insert(view);
    }
    first.into_values().filter_map(|v| placement.get(&v.name).map(|on| ModelView { gpus: on.clone(), ..v })).collect()
}

/// Each model's reports from its replicas as one, and the GPUs' totals as one.
fn merge_metrics(per_gpu: Vec<(Vec<ModelReport>, Summary)>) -> (Vec<ModelReport>, Summary) {
    let totals: Vec<Summary> = per_gpu.iter().map(|(_, t)| t.clone()).collect();
    let mut by_model: BTreeMap<String, Vec<ModelReport>> = BTreeMap::new();
    for report in per_gpu.into_iter().flat_map(|(m, _)| m) {
        by_model.entry(report.model.clone()).or_default().push(report);
    }
    let models = by_model
        .into_values()
        .map(|replicas| {
            let summaries: Vec<Summary> = replicas.iter().map(|r| r.summary.clone()).collect();
            ModelReport {
                reallocations: replicas.iter().map(|r| r.reallocations).sum(),
                worker_failures: replicas.iter().map(|r| r.worker_failures).sum(),
                summary: Summary::combined(&summaries),
                ..replicas[0].clone()
            }
        })
        .collect();
    (models, Summary::combined(&totals))
}
