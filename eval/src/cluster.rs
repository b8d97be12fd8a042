//! A node of several GPUs in simulation (a scenario's `gpus`): each model is placed on one GPU,
//! co-runs only with the models placed there, and each GPU is shared by its own instance of the
//! policy on its own simulator. The GPUs run in parallel, or one control interval at a time side
//! by side where requests are routed or models move between them; a model's arrivals are the
//! same whichever GPU it lands on, so placements are compared on the same requests.
//!
//! Placements, each from the models' expected demand (its mean arrival rate at its configured
//! batch on the whole GPU, from its latency model) and its calibrated interference:
//! - `ffd`: first-fit decreasing by knee GPU% (gpu-let, GSLICE): models in decreasing knee order,
//!   each on the first GPU whose knees still add up to at most 100%, else the least filled.
//! - `interference`: interference-aware greedy (iGniter): models in decreasing demand, each where
//!   it adds the least predicted busy time, its own and its co-runners' slowdown included.
//! - `balanced` (ours): models in decreasing demand, each where the GPU's predicted busy time
//!   at its peaks ends lowest: the 99th percentile over control intervals of the summed busy
//!   time of its models, interference included. Models whose bursts come together (the same
//!   trace replayed) are kept apart where the mean alone would not tell them apart; ties go to
//!   the GPU with fewer models of a tighter SLO.
//! - `replicas`: every model on every GPU, for a node of N copies of a scenario (`--gpus N`):
//!   the copies' arrivals merged and dealt in turn over the replicas (a router splitting a
//!   model's requests evenly), so a burst of one copy spreads over the node instead of landing
//!   on one GPU.
//! - `replicas-jsq`: the same replicas, each request sent as it arrives to the replica with the
//!   fewest requests in flight, ties in turn (the live router's join-shortest-queue).
//!
//! Moves (`Moves`, `evaluate --move-every-s`): every so often the node reads each model's
//! arrival rate since the last look and, where a GPU is predicted busier than `HOT_PCT`, moves
//! the model whose move lowers the busier of the two GPUs the most (`choose_move`, the rule the
//! live router follows). The model serves where it is while its worker starts on the other GPU
//! (`Moves::ready_s`); then its arrivals go there, what it had queued is served out where it was,
//! and each of the two GPUs' policies is rebuilt for the models it then serves.

use crate::scenario::LoadedScenario;
use crate::simulate::{ControlLoop, PolicyChoice, SimRun};
use anyhow::{Context, Result, bail};
use gpuslice_control::BackendBuilder;
use gpuslice_policies::ModelContext;
use gpuslice_simulator::{ModelReport, ModelSetup, Summary};
use gpuslice_traces::ArrivalProcess;
use gpuslice_traces::arrivals::{Dealt, NoArrivals};
use std::collections::HashMap;

/// How models are placed on a node's GPUs (see the module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// First-fit decreasing by knee GPU%.
    FirstFitDecreasing,
    /// Interference-aware greedy: the least added busy time.
    InterferenceGreedy,
    /// Ours: the lowest resulting busy time.
    #[default]
    Balanced,
    /// Every model replicated on every GPU, its requests dealt in turn over the replicas.
    Replicas,
    /// Every model replicated on every GPU, each request sent to the replica with the fewest in
    /// flight (the live router's rule).
    ReplicasShortestQueue,
}

/// Every placement, by its name on the command line.
pub const PLACEMENTS: [(&str, Placement); 5] = [
    ("ffd", Placement::FirstFitDecreasing),
    ("interference", Placement::InterferenceGreedy),
    ("balanced", Placement::Balanced),
    ("replicas", Placement::Replicas),
    ("replicas-jsq", Placement::ReplicasShortestQueue),
];

/// How a router in front of a model's replicas picks one for each request (the simulated
/// node's replicas placements, the live router's `replica_routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// Each in turn: a model's requests dealt round-robin.
    InTurn,
    /// The one with the fewest requests in flight (queued or running), ties in turn
    /// (join-shortest-queue).
    #[default]
    FewestInFlight,
}

impl Placement {
    /// The router's rule, for the placements that replicate every model.
    fn routing(self) -> Option<Routing> {
        match self {
            Placement::Replicas => Some(Routing::InTurn),
            Placement::ReplicasShortestQueue => Some(Routing::FewestInFlight),
            _ => None,
        }
    }
}

impl std::str::FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Placement, String> {
        PLACEMENTS.iter().find(|(name, _)| *name == s).map(|(_, p)| *p).ok_or_else(|| {
            let names: Vec<&str> = PLACEMENTS.iter().map(|(n, _)| *n).collect();
            format!("unknown placement {s:?}: one of {}", names.join(", "))
        })
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = PLACEMENTS.iter().find(|(_, p)| p == self).map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

/// What a placement knows of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    /// GPU% busy serving its mean arrival rate at its configured batch on the whole GPU.
    pub busy_pct: f64,
    /// Its knee GPU% at its configured batch (where more GPU stops paying).
    pub knee_pct: f64,
    /// Its calibrated interference (see `SimConfig::interference`).
    pub interference: f64,
    /// Its SLO, ms.
    pub slo_ms: f64,
    /// GPU% busy in each control interval of the run (its arrivals in it, as `busy_pct`).
    pub busy_by_interval: Vec<f64>,
}

impl Demand {
    /// A model's demand at `rate` requests a second, served in batches of `max_batch` (no knee,
    /// no series over intervals): what a node weighs a move between GPUs by.
    pub fn at_rate(
        latency: &gpuslice_traces::LatencyModel,
        max_batch: u32,
        rate: f64,
        interference: f64,
        slo_ms: f64,
    ) -> Demand {
        Demand {
            busy_pct: busy_pct(latency, max_batch, rate),
            knee_pct: 0.0,
            interference,
            slo_ms,
            busy_by_interval: Vec::new(),
        }
    }
}

/// Arrivals counted per model to estimate its mean rate, at most (a bound on the time taken).
const MAX_COUNTED_ARRIVALS: u64 = 20_000_000;
/// Control intervals a model's busy time is kept for, at most (later arrivals count in the mean).
const MAX_INTERVALS: usize = 100_000;
/// The percentile of a GPU's busy time over intervals that `balanced` places by.
const PEAK_QUANTILE: f64 = 0.99;

/// Each model's demand in `loaded` (its arrivals drawn once to count them).
pub fn demands(loaded: &LoadedScenario) -> Result<Vec<Demand>> {
    let (config, setups, contexts) = loaded.build()?;
    setups
        .into_iter()
        .zip(contexts)
        .map(|(mut setup, context)| {
            let interval_s = loaded.scenario.control_interval_s;
            let (mut count, mut last, mut by_interval) = (0u64, 0.0f64, Vec::<f64>::new());
            while count < MAX_COUNTED_ARRIVALS
                && let Some(t) = setup.arrivals.next_arrival()
            {
                (count, last) = (count + 1, t);
                let k = (t / interval_s) as usize;
                if k < MAX_INTERVALS {
                    if by_interval.len() <= k {
                        by_interval.resize(k + 1, 0.0);
                    }
                    by_interval[k] += 1.0;
                }
            }
            let span = loaded.scenario.duration_s.unwrap_or(last).min(last.max(f64::MIN_POSITIVE));
            let rate = if count == 0 { 0.0 } else { count as f64 / span.max(1e-3) };
            let batch = context.configured.max_batch.max(1);
            let busy_of = |rate: f64| busy_pct(&context.latency, batch, rate);
            Ok(Demand {
                busy_by_interval: by_interval.iter().map(|&n| busy_of(n / interval_s)).collect(),
                busy_pct: busy_of(rate),
                knee_pct: context.latency.knee_pct(batch),
                interference: config.interference_of(&setup.name),
                slo_ms: context.slo_ms,
            })
        })
        .collect()
}

/// GPU% a model keeps busy serving `rate` requests a second in batches of `max_batch` on the
/// whole GPU (its latency model's median).
pub fn busy_pct(latency: &gpuslice_traces::LatencyModel, max_batch: u32, rate: f64) -> f64 {
    let batch = max_batch.max(1);
    rate * latency.p50_ms(batch, 100.0) / batch as f64 * 1e-3 * 100.0
}

/// Predicted busy GPU% of models `on` one GPU: each slowed by its interference with the
/// others' busy share.
pub fn busy_with_interference(demands: &[Demand], on: &[usize]) -> f64 {
    let total: f64 = on.iter().map(|&i| demands[i].busy_pct).sum();
    on.iter()
        .map(|&i| {
            let d = &demands[i];
            d.busy_pct * (1.0 + d.interference * (total - d.busy_pct) / 100.0)
        })
        .sum()
}

/// A GPU predicted busier than this (GPU% of its time, interference included) sheds a model.
pub const HOT_PCT: f64 = 85.0;

/// A move is made only if the busier of the two GPUs ends at least this much less busy (GPU%):
/// a move costs a worker start on the target, and a smaller gain is within the rates' noise.
pub const MIN_GAIN_PCT: f64 = 10.0;

/// A model to move off a GPU that is too busy (`choose_move`).
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    /// The busy GPU (an index into `on`).
    pub from: usize,
    /// The model, an index into `on[from]`.
    pub model: usize,
    /// The least busy GPU, where it goes.
    pub to: usize,
    /// `from`'s predicted busy GPU% now.
    pub from_busy_pct: f64,
    /// `to`'s.
    pub to_busy_pct: f64,
    /// The busier of the two after the move.
    pub busier_after_pct: f64,
}

/// The one move to make now, given the demands of the models on each GPU (`on[g]`, from their
/// arrival rates since the last look), if any: where the busiest GPU is predicted busier than
/// `HOT_PCT`, the model (of those `movable(g, i)` allows) whose move to the least busy GPU
/// leaves the busier of the two least busy, if that gains at least `MIN_GAIN_PCT`.
pub fn choose_move(on: &[Vec<Demand>], movable: &dyn Fn(usize, usize) -> bool) -> Option<Move> {
    let busy = |demands: &[Demand]| busy_with_interference(demands, &(0..demands.len()).collect::<Vec<_>>());
    let load: Vec<f64> = on.iter().map(|d| busy(d)).collect();
    let by_load = |a: &usize, b: &usize| load[*a].total_cmp(&load[*b]);
    let (hot, cool) = ((0..load.len()).max_by(by_load)?, (0..load.len()).min_by(by_load)?);
    if load[hot] <= HOT_PCT || hot == cool {
        return None;
    }
    let after = |m: usize| {
        let mut from = on[hot].clone();
        let moved = from.remove(m);
        let to: Vec<Demand> = on[cool].iter().cloned().chain([moved]).collect();
        busy(&from).max(busy(&to))
    };
    let (model, busier_after_pct) = (0..on[hot].len())
        .filter(|&m| movable(hot, m))
        .map(|m| (m, after(m)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .filter(|(_, worst)| *worst <= load[hot] - MIN_GAIN_PCT)?;
    Some(Move { from: hot, model, to: cool, from_busy_pct: load[hot], to_busy_pct: load[cool], busier_after_pct })
}

/// The `PEAK_QUANTILE` over intervals of the busy GPU% of models `on` one GPU, each slowed by
/// its interference with the others' mean busy share.
fn peak_busy(demands: &[Demand], on: &[usize]) -> f64 {
    let total: f64 = on.iter().map(|&i| demands[i].busy_pct).sum();
    let intervals = on.iter().map(|&i| demands[i].busy_by_interval.len()).max().unwrap_or(0);
    let mut summed = vec![0.0; intervals];
    for &i in on {
        let d = &demands[i];
        let slowed = 1.0 + d.interference * (total - d.busy_pct) / 100.0;
        for (sum, busy) in summed.iter_mut().zip(&d.busy_by_interval) {
            *sum += busy * slowed;
        }
    }
    if summed.is_empty() {
        return busy_with_interference(demands, on);
    }
    summed.sort_by(f64::total_cmp);
    summed[((summed.len() - 1) as f64 * PEAK_QUANTILE).round() as usize]
}

/// The GPU of each model (by index) on `gpus` GPUs, for the placements that place by demand
/// (the replicas' placements place by copy, see `replica_ranks`; here they place like `Balanced`).
pub fn place(demands: &[Demand], gpus: usize, placement: Placement) -> Vec<usize> {
    let gpus = gpus.max(1);
    let mut order: Vec<usize> = (0..demands.len()).collect();
    let key = |i: &usize| match placement {
        Placement::FirstFitDecreasing => demands[*i].knee_pct,
        _ => demands[*i].busy_pct,
    };
    order.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.cmp(b)));
    let mut on: Vec<Vec<usize>> = vec![Vec::new(); gpus];
    let mut gpu_of = vec![0; demands.len()];
    for m in order {
        let g = match placement {
            Placement::FirstFitDecreasing => {
                let knees = |g: usize| on[g].iter().map(|&i| demands[i].knee_pct).sum::<f64>();
                (0..gpus)
                    .find(|&g| knees(g) + demands[m].knee_pct <= 100.0 + 1e-9)
                    .unwrap_or_else(|| (0..gpus).min_by(|&a, &b| knees(a).total_cmp(&knees(b))).expect("a GPU"))
            }
            _ => {
                let with_m = |g: usize| on[g].iter().copied().chain([m]).collect::<Vec<usize>>();
                let cost = |g: usize| match placement {
                    Placement::InterferenceGreedy => {
                        busy_with_interference(demands, &with_m(g)) - busy_with_interference(demands, &on[g])
                    }
                    _ => peak_busy(demands, &with_m(g)),
                };
                // Ties (empty GPUs, or equal loads): the GPU with fewer models of a tighter SLO.
                let tighter = |g: usize| on[g].iter().filter(|&&i| demands[i].slo_ms <= demands[m].slo_ms).count();
                (0..gpus)
                    .min_by(|&a, &b| cost(a).total_cmp(&cost(b)).then(tighter(a).cmp(&tighter(b))).then(a.cmp(&b)))
                    .expect("a GPU")
            }
        };
        on[g].push(m);
        gpu_of[m] = g;
    }
    gpu_of
}

/// Per model, its group (the model and its copies `NAME`, `NAME.2`, ... from
/// `LoadedScenario::replicated`) and its rank in the group: under `Placement::Replicas` the GPU
/// it is served on. Every group must have one model per GPU.
pub fn replica_ranks(loaded: &LoadedScenario) -> Result<Vec<(usize, usize)>> {
    let names: Vec<&str> = loaded.scenario.models.iter().map(|m| m.name.as_str()).collect();
    let base_of = |name: &str| -> usize {
        let base = name.rsplit_once('.').filter(|(_, k)| k.parse::<usize>().is_ok()).map(|(base, _)| base);
        let original = base.and_then(|b| names.iter().position(|n| *n == b));
        original.unwrap_or_else(|| names.iter().position(|n| *n == name).expect("a model's own name"))
    };
    let mut members: Vec<usize> = vec![0; names.len()];
    let mut ranks = Vec::with_capacity(names.len());
    for name in &names {
        let group = base_of(name);
        ranks.push((group, members[group]));
        members[group] += 1;
    }
    let gpus = loaded.scenario.gpus;
    if let Some(g) = (0..names.len()).find(|&g| members[g] != 0 && members[g] != gpus) {
        bail!(
            "scenario {}: the replicas placement puts one copy of each model on every GPU, but {} has {} cop{} on {gpus} GPUs (`evaluate --gpus N` makes one per GPU)",
            loaded.origin,
            names[g],
            members[g],
            if members[g] == 1 { "y" } else { "ies" }
        );
    }
    Ok(ranks)
}

/// The GPU of each model of `loaded`'s node under `placement`.
fn gpus_of(loaded: &LoadedScenario, placement: Placement) -> Result<Vec<usize>> {
    Ok(match placement {
        p if p.routing().is_some() => replica_ranks(loaded)?.into_iter().map(|(_, rank)| rank).collect(),
        _ => place(&demands(loaded)?, loaded.scenario.gpus, placement),
    })
}

/// The router in front of a node of replicas (see the module): each model's copies' arrivals
/// merged, each request sent as it arrives to a replica by `routing`.
struct Router {
    groups: Vec<Group>,
    routing: Routing,
}

/// One model's replicas and its merged arrivals.
struct Group {
    /// Each replica: its GPU and its name there.
    replicas: Vec<(usize, String)>,
    arrivals: Dealt,
    /// The next arrival, seconds (None: the group's arrivals have ended).
    next: Option<f64>,
    turn: usize,
}

impl Router {
    /// Takes the arrivals of every replica in `setups` (leaving them none of their own) into
    /// their groups (`replica_ranks`: a replica of rank r serves on GPU r).
    fn new(
        loaded: &LoadedScenario,
        setups: &mut [ModelSetup],
        ranks: &[(usize, usize)],
        routing: Routing,
    ) -> Result<Router> {
        // Per group, each copy: its rank (its GPU), its name, its own arrivals.
        type Copy = (usize, String, Box<dyn ArrivalProcess>);
        let mut members: HashMap<usize, Vec<Copy>> = HashMap::new();
        for (setup, &(group, rank)) in setups.iter_mut().zip(ranks) {
            let arrivals = std::mem::replace(&mut setup.arrivals, Box::new(NoArrivals));
            members.entry(group).or_default().push((rank, setup.name.clone(), arrivals));
        }
        let mut groups: Vec<(usize, Group)> = members
            .into_iter()
            .map(|(key, members)| {
                let (replicas, sources): (Vec<_>, Vec<_>) =
                    members.into_iter().map(|(gpu, name, arrivals)| ((gpu, name), arrivals)).unzip();
                // One replica of one: every merged arrival.
                let mut arrivals =
                    Dealt::new(sources, 0, 1).map_err(|e| anyhow::anyhow!("scenario {}: {e}", loaded.origin))?;
                let next = arrivals.next_arrival();
                Ok((key, Group { replicas, arrivals, next, turn: 0 }))
            })
            .collect::<Result<_>>()?;
        groups.sort_by_key(|(key, _)| *key);
        Ok(Router { groups: groups.into_iter().map(|(_, g)| g).collect(), routing })
    }

    /// Whether any request is still to come.
    fn open(&self) -> bool {
        self.groups.iter().any(|g| g.next.is_some())
    }

    /// Sends every request arriving up to `until_s`, in time order, the GPUs served up to the
    /// request's arrival before it is sent (and its replicas' requests in flight read).
    fn send_until(&mut self, until_s: f64, loops: &mut [Option<ControlLoop>]) -> Result<()> {
        loop {
            let earliest = self
                .groups
                .iter_mut()
                .filter_map(|g| g.next.filter(|t| *t <= until_s).map(|t| (t, g)))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            let Some((t, group)) = earliest else { return Ok(()) };
            let n = group.replicas.len();
            group.turn = (group.turn + 1) % n;
            let chosen = match self.routing {
                Routing::InTurn => group.turn,
                Routing::FewestInFlight => {
                    let mut in_flight = Vec::with_capacity(n);
                    for (gpu, name) in &group.replicas {
                        let replica = loops[*gpu].as_mut().context("a replica's GPU")?;
                        replica.advance_to(t);
                        in_flight.push(replica.in_flight(name));
                    }
                    (0..n).map(|k| (group.turn + k) % n).min_by_key(|&r| in_flight[r]).context("a replica")?
                }
            };
            let (gpu, name) = &group.replicas[chosen];
            loops[*gpu].as_mut().context("a replica's GPU")?.advance_to(t);
            loops[*gpu].as_mut().context("a replica's GPU")?.route(name)?;
            group.next = group.arrivals.next_arrival();
        }
    }
}

/// Which models `placement` puts on each GPU of `loaded`'s node, in words ("GPU 0: a, b; ...").
pub fn describe(loaded: &LoadedScenario, placement: Placement) -> Result<String> {
    let gpu_of = gpus_of(loaded, placement)?;
    let names = |g: usize| -> Vec<&str> {
        loaded.scenario.models.iter().zip(&gpu_of).filter(|(_, on)| **on == g).map(|(m, _)| m.name.as_str()).collect()
    };
    Ok((0..loaded.scenario.gpus).map(|g| format!("GPU {g}: {}", names(g).join(", "))).collect::<Vec<_>>().join("; "))
}

/// How a node moves models between its GPUs as load shifts (see the module).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moves {
    /// How often the node looks at its GPUs' load, seconds (the live router's
    /// `rebalance_every_s`).
    pub every_s: f64,
    /// From a move's decision until the model serves on its new GPU: its worker's start there,
    /// seconds.
    pub ready_s: f64,
}

/// How often a node looks at its GPUs' load by default: the live router's `rebalance_every_s`
/// (a simulated node moves models only when asked, `evaluate --move-every-s`).
pub const MOVE_EVERY_S: f64 = 5.0;

/// The longest period between two looks at the load, and the longest worker start: a day.
pub const MAX_MOVE_PERIOD_S: f64 = 86_400.0;

/// `Moves::ready_s` by default: a GPU worker's start to its first slice on the H200, 10.6 s
/// (vgg16) and 11.5 s (resnet50) to 27.2 s (mobilenet_v3_large, whose CUDA graphs take longest)
/// (bench/results/2026-12-02-h200-worker-start-fast/).
pub const MOVE_READY_S: f64 = 12.0;

impl Moves {
    /// Why these moves cannot run, if they cannot.
    pub fn problem(&self) -> Option<String> {
        let valid = |s: f64| s.is_finite() && (0.0..=MAX_MOVE_PERIOD_S).contains(&s);
        (!(valid(self.every_s) && self.every_s > 0.0 && valid(self.ready_s))).then(|| {
            format!(
                "moves: every_s must be in (0, {MAX_MOVE_PERIOD_S}] and ready_s in [0, {MAX_MOVE_PERIOD_S}] seconds, got {} and {}",
                self.every_s, self.ready_s
            )
        })
    }
}

/// A model moved between GPUs during a node's run.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeMove {
    /// When it was decided, seconds into the run.
    pub decided_s: f64,
    /// When its arrivals went to the new GPU.
    pub moved_s: f64,
    /// The model.
    pub model: String,
    /// From this GPU...
    pub from: usize,
    /// ...to this one.
    pub to: usize,
}

/// A run of a node of several GPUs.
pub struct NodeRun {
    /// The GPU of each model at the start.
    pub gpu_of: Vec<usize>,
    /// Each GPU's run (of the models it served at the end; empty GPUs have none).
    pub runs: Vec<Option<SimRun>>,
    /// Each model's report, in the scenario's order (a model that moved: its figures on every
    /// GPU it served on, combined by `Summary::combined`).
    pub models: Vec<ModelReport>,
    /// The models moved, in order.
    pub moves: Vec<NodeMove>,
}

/// Runs `loaded`'s node: its models placed by `placement` on its GPUs, each GPU under its own
/// instance of `choice` on the backend `on` builds, the GPUs stepped side by side; with
/// `moves`, models move off GPUs that become too busy.
pub fn run(
    loaded: &LoadedScenario,
    placement: Placement,
    choice: &PolicyChoice,
    on: &(dyn BackendBuilder + Sync),
    moves: Option<Moves>,
) -> Result<NodeRun> {
    let gpus = loaded.scenario.gpus;
    if matches!(choice, PolicyChoice::Named(p) if p == "oracle") && gpus > 1 {
        bail!("scenario {}: the oracle plans one GPU; it cannot run a node of {gpus} GPUs", loaded.origin);
    }
    if let Some(problem) = moves.and_then(|m| m.problem()) {
        bail!("scenario {}: {problem}", loaded.origin);
    }
    if moves.is_some() && placement.routing().is_some() {
        bail!(
            "scenario {}: replicas are on every GPU already; moves are for placements that pin a model to one",
            loaded.origin
        );
    }
    let gpu_of = gpus_of(loaded, placement)?;
    let (config, mut setups, contexts) = loaded.build()?;
    let router = match placement.routing() {
        Some(routing) => Some(Router::new(loaded, &mut setups, &replica_ranks(loaded)?, routing)?),
        None => None,
    };
    let weights =
        MoveWeights(contexts.iter().map(|c| (c.name.clone(), (c.clone(), config.interference_of(&c.name)))).collect());
    let mut parts: Vec<(Vec<_>, Vec<_>)> = (0..gpus).map(|_| Default::default()).collect();
    for (i, (setup, context)) in setups.into_iter().zip(contexts).enumerate() {
        parts[gpu_of[i]].0.push(setup);
        parts[gpu_of[i]].1.push(context);
    }
    let parts: Vec<Option<Built>> = parts
        .into_iter()
        .map(|(setups, contexts)| (!setups.is_empty()).then(|| (config.clone(), setups, contexts)))
        .collect();
    let (finished, moved) = match (moves, router) {
        (None, None) => (run_apart(loaded, parts, choice, on)?, Vec::new()),
        (moves, router) => run_side_by_side(loaded, parts, choice, on, moves, router, &weights)?,
    };
    let mut reports: HashMap<String, Vec<ModelReport>> = HashMap::new();
    let runs: Vec<Option<SimRun>> = finished
        .into_iter()
        .map(|gpu| {
            gpu.map(|(run, departed)| {
                for report in run.report.models.iter().cloned().chain(departed) {
                    reports.entry(report.model.clone()).or_default().push(report);
                }
                run
            })
        })
        .collect();
    let models = loaded
        .scenario
        .models
        .iter()
        .map(|m| {
            let parts =
                reports.remove(&m.name).with_context(|| format!("model {} has no report from any GPU", m.name))?;
            Ok(combined(parts))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(NodeRun { gpu_of, runs, models, moves: moved })
}

/// One GPU's part of a node, built (`LoadedScenario::build`'s parts of its models).
type Built = (gpuslice_simulator::SimConfig, Vec<ModelSetup>, Vec<ModelContext>);

/// A GPU's finished run and the figures of the models that moved off it.
type Finished = Option<(SimRun, Vec<ModelReport>)>;

/// What a move weighs of each model, by name: its context (latency, configured batch, SLO) and
/// its interference.
struct MoveWeights(HashMap<String, (ModelContext, f64)>);

impl MoveWeights {
    /// Model `name`'s demand at `rate` requests a second.
    fn at(&self, name: &str, rate: f64) -> Option<Demand> {
        let (c, interference) = self.0.get(name)?;
        Some(Demand::at_rate(&c.latency, c.configured.max_batch, rate, *interference, c.slo_ms))
    }
}

/// GPU `g`'s control loop over its part of the node (none for a GPU without models).
fn start_gpu<'a>(
    g: usize,
    built: Option<Built>,
    loaded: &'a LoadedScenario,
    choice: &'a PolicyChoice,
    on: &'a (dyn BackendBuilder + Sync),
) -> Result<Option<ControlLoop<'a>>> {
    let Some(built) = built else { return Ok(None) };
    Ok(Some(ControlLoop::start(loaded, built, choice, on, false).with_context(|| format!("GPU {g}"))?))
}

/// Each GPU run to its end on its own thread: nothing moves between them.
fn run_apart(
    loaded: &LoadedScenario,
    parts: Vec<Option<Built>>,
    choice: &PolicyChoice,
    on: &(dyn BackendBuilder + Sync),
) -> Result<Vec<Finished>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .enumerate()
            .map(|(g, built)| {
                scope.spawn(move || -> Result<Finished> {
                    let Some(mut gpu) = start_gpu(g, built, loaded, choice, on)? else { return Ok(None) };
                    while gpu.step().with_context(|| format!("GPU {g}"))? {}
                    Ok(Some(gpu.finish()))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("a GPU's run panicked"))?).collect()
    })
}

/// The GPUs stepped one control interval at a time side by side: the router's requests sent
/// as they arrive, models moving off a GPU that is too busy (see the module). Replicas stay
/// where they are.
fn run_side_by_side(
    loaded: &LoadedScenario,
    parts: Vec<Option<Built>>,
    choice: &PolicyChoice,
    on: &(dyn BackendBuilder + Sync),
    moves: Option<Moves>,
    mut router: Option<Router>,
    weights: &MoveWeights,
) -> Result<(Vec<Finished>, Vec<NodeMove>)> {
    let gpus = parts.len();
    let mut loops: Vec<Option<ControlLoop>> = parts
        .into_iter()
        .enumerate()
        .map(|(g, built)| start_gpu(g, built, loaded, choice, on))
        .collect::<Result<_>>()?;
    // Arrivals per (model, GPU) since the node last looked, and a move under way.
    let (mut seen, mut looked_s) = (HashMap::<(String, usize), u64>::new(), 0.0);
    let (mut under_way, mut moved): (Option<NodeMove>, Vec<NodeMove>) = (None, Vec::new());
    let mut now = 0.0;
    for gpu in loops.iter_mut().flatten() {
        gpu.routed_to(router.as_ref().is_some_and(Router::open));
    }
    loop {
        if let Some(r) = router.as_mut() {
            r.send_until(now + loaded.scenario.control_interval_s, &mut loops)?;
            if !r.open() {
                loops.iter_mut().flatten().for_each(|gpu| gpu.routed_to(false));
            }
        }
        let mut stepped = false;
        for (g, gpu) in loops.iter_mut().enumerate() {
            let Some(gpu) = gpu else { continue };
            if gpu.step().with_context(|| format!("GPU {g}"))? {
                stepped = true;
                for (name, n) in gpu.arrivals() {
                    *seen.entry((name.to_string(), g)).or_default() += n;
                }
            }
        }
        if !stepped {
            break;
        }
        now = loops.iter().flatten().map(ControlLoop::now_s).fold(0.0, f64::max);
        let Some(moves) = moves else { continue };
        let serving: Vec<bool> = loops.iter().map(|l| l.as_ref().is_some_and(|l| !l.finished())).collect();
        // A move under way goes through once its worker is ready on the new GPU (`moved_s`).
        if let Some(mut m) = under_way.take() {
            if now < m.moved_s {
                under_way = Some(m);
            } else if serving[m.from] && serving[m.to] {
                let moving = loops[m.from].as_mut().context("a GPU")?.hand_over(&m.model)?;
                loops[m.to].as_mut().context("a GPU")?.take_in(moving)?;
                m.moved_s = now;
                tracing::debug!(model = %m.model, from = m.from, to = m.to, decided_s = m.decided_s, moved_s = now, "moved between GPUs");
                moved.push(m);
            }
        }
        if under_way.is_some() || now - looked_s < moves.every_s {
            continue;
        }
        // Each GPU's models and their demand at the rates since the last look.
        let span = (now - looked_s).max(1e-3);
        let (mut names, mut on): (Vec<Vec<String>>, Vec<Vec<Demand>>) =
            (vec![Vec::new(); gpus], vec![Vec::new(); gpus]);
        for ((name, g), n) in seen.drain() {
            let still_here = loops[g].as_ref().is_some_and(|l| l.serves(&name));
            if let (true, Some(demand)) = (still_here, weights.at(&name, n as f64 / span)) {
                on[g].push(demand);
                names[g].push(name);
            }
        }
        looked_s = now;
        // Only GPUs still serving take part.
        let movable = |g: usize, _: usize| serving[g];
        if let Some(m) = choose_move(&on, &movable).filter(|m| serving[m.to]) {
            let name = names[m.from][m.model].clone();
            tracing::debug!(model = %name, from = m.from, to = m.to, from_busy_pct = m.from_busy_pct, to_busy_pct = m.to_busy_pct, "a GPU is too busy: moving a model off it");
            under_way =
                Some(NodeMove { decided_s: now, moved_s: now + moves.ready_s, model: name, from: m.from, to: m.to });
        }
    }
    Ok((loops.into_iter().map(|gpu| gpu.map(ControlLoop::finish)).collect(), moved))
}

/// One model's reports from the GPUs it served on as one (the last one's allocation).
fn combined(mut parts: Vec<ModelReport>) -> ModelReport {
    if parts.len() == 1 {
        return parts.remove(0);
    }
    let summaries: Vec<Summary> = parts.iter().map(|p| p.summary.clone()).collect();
    let last = parts.last().expect("parts");
    ModelReport {
        model: last.model.clone(),
        slo_ms: last.slo_ms,
        allocation: last.allocation,
        reallocations: parts.iter().map(|p| p.reallocations).sum(),
        worker_failures: parts.iter().map(|p| p.worker_failures).sum(),
        summary: Summary::combined(&summaries),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::TWO_MODELS;

    #[test]
    fn replicas_serve_every_request_of_the_copies_once_one_copy_a_gpu() {
        let mut loaded = LoadedScenario::from_text(TWO_MODELS, "two.toml", ".".into()).unwrap().replicated(2).unwrap();
        loaded.scenario.duration_s = Some(5.0);
        // front, densenet121, front.2, densenet121.2: each model's copies form a group.
        assert_eq!(replica_ranks(&loaded).unwrap(), vec![(0, 0), (1, 0), (0, 1), (1, 1)]);
        let choice = PolicyChoice::Named("static".to_string());
        let on = crate::simulate::simulator(false);
        let arrivals = |placement| -> Vec<u64> {
            let node = run(&loaded, placement, &choice, on.as_ref(), None).unwrap();
            node.models.iter().map(|m| m.summary.arrivals).collect()
        };
        let (pinned, replicas) = (arrivals(Placement::Balanced), arrivals(Placement::Replicas));
        // The same requests, dealt: each group's total is its copies' total, split evenly.
        for group in [(0, 2), (1, 3)] {
            assert_eq!(
                pinned[group.0] + pinned[group.1],
                replicas[group.0] + replicas[group.1],
                "{pinned:?} {replicas:?}"
            );
            assert!(replicas[group.0].abs_diff(replicas[group.1]) <= 1, "{replicas:?}");
        }
        assert!(pinned[0] != pinned[2], "copies draw their own arrivals: {pinned:?}");
    }

    #[test]
    fn replicas_need_one_copy_of_each_model_per_gpu() {
        let mut loaded = LoadedScenario::from_text(TWO_MODELS, "two.toml", ".".into()).unwrap();
        loaded.scenario.gpus = 2;
        let message = replica_ranks(&loaded).unwrap_err().to_string();
        assert!(message.contains("front has 1 copy on 2 GPUs") && message.contains("two.toml"), "{message}");
    }

    fn demand(busy_pct: f64, knee_pct: f64, slo_ms: f64) -> Demand {
        Demand { busy_pct, knee_pct, interference: 0.4, slo_ms, busy_by_interval: vec![busy_pct; 10] }
    }

    #[test]
    fn balanced_keeps_models_whose_bursts_coincide_apart() {
        // a and b burst in the same intervals (mean 18.5, peak 95); c is steady at 40. By the
        // mean, a and b would share a GPU beside c's; by the peaks, each goes its own way.
        let series = |by_interval: Vec<f64>| {
            let mean = by_interval.iter().sum::<f64>() / by_interval.len() as f64;
            Demand { busy_pct: mean, knee_pct: 30.0, interference: 0.0, slo_ms: 10.0, busy_by_interval: by_interval }
        };
        let burst = || series([vec![95.0; 1], vec![10.0; 9]].concat());
        let d = [burst(), burst(), series(vec![40.0; 10])];
        let by_mean: Vec<usize> = {
            let flat: Vec<Demand> = d.iter().map(|x| Demand { busy_by_interval: Vec::new(), ..x.clone() }).collect();
            place(&flat, 2, Placement::Balanced)
        };
        assert_eq!(by_mean[0], by_mean[1], "without intervals, the mean puts them together: {by_mean:?}");
        let placed = place(&d, 2, Placement::Balanced);
        assert_ne!(placed[0], placed[1], "{placed:?}");
    }

    #[test]
    fn first_fit_packs_by_knee_where_balanced_spreads_the_load() {
        // Two heavy models with small knees and two light ones with large knees.
        let d = [demand(60.0, 30.0, 20.0), demand(60.0, 30.0, 20.0), demand(5.0, 60.0, 10.0), demand(5.0, 60.0, 10.0)];
        let ffd = place(&d, 2, Placement::FirstFitDecreasing);
        // Knees 60, 60, 30, 30: each light model fills a GPU, then one heavy beside each.
        assert_eq!(ffd, [0, 1, 0, 1]);
        let balanced = place(&d, 2, Placement::Balanced);
        assert_ne!(balanced[0], balanced[1], "the two heavy models apart: {balanced:?}");
        let greedy = place(&d, 2, Placement::InterferenceGreedy);
        assert_ne!(greedy[0], greedy[1], "{greedy:?}");
        // Every model placed on one of the GPUs, and one GPU is all of them.
        assert_eq!(place(&d, 1, Placement::Balanced), [0, 0, 0, 0]);
    }

    #[test]
    fn first_fit_overflows_onto_the_least_filled_gpu() {
        let d = [demand(1.0, 70.0, 10.0), demand(1.0, 70.0, 10.0), demand(1.0, 70.0, 10.0)];
        assert_eq!(place(&d, 2, Placement::FirstFitDecreasing), [0, 1, 0]);
    }

    #[test]
    fn placements_parse_and_print_by_name() {
        for (name, p) in PLACEMENTS {
            assert_eq!(name.parse::<Placement>().unwrap(), p);
            assert_eq!(p.to_string(), name);
        }
        assert!("nearest".parse::<Placement>().unwrap_err().contains("ffd, interference, balanced"));
    }
}
