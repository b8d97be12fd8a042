//! A node of several GPUs in simulation (a scenario's `gpus`): each model is placed on one GPU,
//! co-runs only with the models placed there, and each GPU is shared by its own instance of the
//! policy on its own simulator. The GPUs run in parallel; a model's arrivals are the same
//! whichever GPU it lands on, so placements are compared on the same requests.
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
//! - `replicas`: every model on every GPU, its requests split evenly over its replicas (a
//!   router dealing them round-robin), for a node of N copies of a scenario (`--gpus N`): the
//!   copies' arrivals merged and dealt, so a burst of one copy spreads over the node instead of
//!   landing on one GPU. Round-robin rather than join-shortest-queue: the GPUs are simulated
//!   apart, in parallel, so a split cannot look at the queues.

use crate::scenario::LoadedScenario;
use crate::simulate::{self, PolicyChoice, SimRun};
use anyhow::{Context, Result, bail};
use gpuslice_control::BackendBuilder;
use gpuslice_simulator::{ModelReport, ModelSetup};
use gpuslice_traces::ArrivalProcess;
use gpuslice_traces::arrivals::Dealt;

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
    /// Every model replicated on every GPU, its requests dealt evenly over the replicas.
    Replicas,
}

/// Every placement, by its name on the command line.
pub const PLACEMENTS: [(&str, Placement); 4] = [
    ("ffd", Placement::FirstFitDecreasing),
    ("interference", Placement::InterferenceGreedy),
    ("balanced", Placement::Balanced),
    ("replicas", Placement::Replicas),
];

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
/// (`Placement::Replicas` places by copy, see `replica_ranks`; here it places like `Balanced`).
pub fn place(demands: &[Demand], gpus: usize, placement: Placement) -> Vec<usize> {
    let gpus = gpus.max(1);
    let mut order: Vec<usize> = (0..demands.len()).collect();
    let key = |i: &usize| match placement {
        Placement::FirstFitDecreasing => demands[*i].knee_pct,
        Placement::InterferenceGreedy | Placement::Balanced | Placement::Replicas => demands[*i].busy_pct,
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
            Placement::InterferenceGreedy | Placement::Balanced | Placement::Replicas => {
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
        Placement::Replicas => replica_ranks(loaded)?.into_iter().map(|(_, rank)| rank).collect(),
        _ => place(&demands(loaded)?, loaded.scenario.gpus, placement),
    })
}

/// Gives each replica (see `replica_ranks`) its share of its group's requests: the arrivals of
/// all the group's copies merged, dealt round-robin over the group, each replica's sources
/// drawn afresh (once more per rank, the traces read once) so that replicas do not share a
/// stream.
fn deal_replicas(loaded: &LoadedScenario, setups: &mut [ModelSetup], ranks: &[(usize, usize)]) -> Result<()> {
    let gpus = loaded.scenario.gpus;
    let mut library = loaded.trace_library();
    for rank in 0..gpus {
        let mut fresh: Vec<Option<Box<dyn ArrivalProcess>>> =
            loaded.arrivals(&mut library)?.into_iter().map(Some).collect();
        for (i, &(group, _)) in ranks.iter().enumerate().filter(|(_, (_, r))| *r == rank) {
            let sources = (0..ranks.len())
                .filter(|&j| ranks[j].0 == group)
                .map(|j| fresh[j].take().context("a copy dealt twice"))
                .collect::<Result<Vec<_>>>()?;
            let dealt =
                Dealt::new(sources, rank, gpus).map_err(|e| anyhow::anyhow!("scenario {}: {e}", loaded.origin))?;
            setups[i].arrivals = Box::new(dealt);
        }
    }
    Ok(())
}

/// Which models `placement` puts on each GPU of `loaded`'s node, in words ("GPU 0: a, b; ...").
pub fn describe(loaded: &LoadedScenario, placement: Placement) -> Result<String> {
    let gpu_of = gpus_of(loaded, placement)?;
    let names = |g: usize| -> Vec<&str> {
        loaded.scenario.models.iter().zip(&gpu_of).filter(|(_, on)| **on == g).map(|(m, _)| m.name.as_str()).collect()
    };
    Ok((0..loaded.scenario.gpus).map(|g| format!("GPU {g}: {}", names(g).join(", "))).collect::<Vec<_>>().join("; "))
}

/// A run of a node of several GPUs.
pub struct NodeRun {
    /// The GPU of each model.
    pub gpu_of: Vec<usize>,
    /// Each GPU's run (of its models, in the scenario's order; empty GPUs have none).
    pub runs: Vec<Option<SimRun>>,
    /// Each model's report, in the scenario's order.
    pub models: Vec<ModelReport>,
}

/// Runs `loaded`'s node: its models placed by `placement` on its GPUs, each GPU under its own
/// instance of `choice` on the backend `on` builds.
pub fn run(
    loaded: &LoadedScenario,
    placement: Placement,
    choice: &PolicyChoice,
    on: &(dyn BackendBuilder + Sync),
) -> Result<NodeRun> {
    let gpus = loaded.scenario.gpus;
    if matches!(choice, PolicyChoice::Named(p) if p == "oracle") && gpus > 1 {
        bail!("scenario {}: the oracle plans one GPU; it cannot run a node of {gpus} GPUs", loaded.origin);
    }
    let gpu_of = gpus_of(loaded, placement)?;
    let (config, mut setups, contexts) = loaded.build()?;
    if placement == Placement::Replicas {
        deal_replicas(loaded, &mut setups, &replica_ranks(loaded)?)?;
    }
    let mut parts: Vec<(Vec<usize>, Vec<_>, Vec<_>)> = (0..gpus).map(|_| Default::default()).collect();
    for (i, (setup, context)) in setups.into_iter().zip(contexts).enumerate() {
        let part = &mut parts[gpu_of[i]];
        part.0.push(i);
        part.1.push(setup);
        part.2.push(context);
    }
    let runs: Vec<Result<Option<SimRun>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .enumerate()
            .map(|(g, (models, setups, contexts))| {
                let config = config.clone();
                scope.spawn(move || {
                    if models.is_empty() {
                        return Ok(None);
                    }
                    let run = simulate::run_built(loaded, (config, setups, contexts), choice, on, false)
                        .with_context(|| format!("GPU {g}"))?;
                    Ok(Some(run))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("GPU run")).collect()
    });
    let runs: Vec<Option<SimRun>> = runs.into_iter().collect::<Result<_>>()?;
    let mut models: Vec<Option<ModelReport>> = vec![None; gpu_of.len()];
    for (g, run) in runs.iter().enumerate() {
        let Some(run) = run else { continue };
        let placed = (0..gpu_of.len()).filter(|&i| gpu_of[i] == g);
        for (i, report) in placed.zip(&run.report.models) {
            models[i] = Some(report.clone());
        }
    }
    let models = models.into_iter().collect::<Option<Vec<_>>>().context("a model's GPU run reported no model")?;
    Ok(NodeRun { gpu_of, runs, models })
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
        let on = simulate::simulator(false);
        let arrivals = |placement| -> Vec<u64> {
            let node = run(&loaded, placement, &choice, on.as_ref()).unwrap();
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
