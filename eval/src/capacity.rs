//! `gpuslice evaluate --capacity`: capacity at the SLO, the measure an operator sizes a node by.
//! Per policy and seed, the highest load scale (a factor on every model's arrivals) at which
//! EVERY model keeps at least `threshold` of its requests within its SLO (dropped requests count
//! as misses). Found by bracketing from x1 (doubling or halving) and then bisection until the
//! bracket is narrower than `precision` of the scale.

use crate::output::write_csv;
use crate::plot::{Chart, Series, line_chart};
use crate::scenario::LoadedScenario;
use crate::simulate::{self, LateProgress, PolicyChoice};
use anyhow::{Result, bail};
use comfy_table::Table;
use gpuslice_simulator::ModelReport;
use serde::Serialize;
use std::path::Path;
use std::sync::Mutex;

/// Policies a capacity is compared against (whichever of them were run).
pub const BASELINES: [&str; 4] = ["temporal", "default-mps", "triton-like", "gslice"];

/// Baselines that serve with fixed batching a user would tune: each is searched at every
/// setting of the grid below (every model the same max batch and batch wait, as one configures
/// a Triton dynamic batcher), and reported at the setting with the highest mean capacity.
/// Triton-like keeps Triton's usual 32 / 1 ms: tuned, it is default MPS at its best setting.
pub const TUNED_BASELINES: [&str; 2] = ["temporal", "default-mps"];
/// The grid every tuned baseline is searched at: defined beside the policies, since model-based
/// weighs the same settings online (its floor).
pub use gpuslice_policies::{TUNING_BATCHES, TUNING_SENT_AT, TUNING_WAITS_MS, tuning_grid};

/// A uniform batching setting of a tuned baseline.
pub use gpuslice_simulator::Batching;

/// How the search runs.
#[derive(Debug, Clone, Copy)]
pub struct SearchOptions {
    /// Share of each model's requests that must finish within its SLO (0.99).
    pub threshold: f64,
    /// The search stops when the bracket is narrower than this fraction of its lower end.
    pub precision: f64,
    /// The scales the search stays within.
    pub min_scale: f64,
    /// ...and the highest.
    pub max_scale: f64,
    /// Run on the simulator shaped like the GPU backend (`PooledSimBuilder::gpu_backend`:
    /// slices on the shipped pool levels, batches padded to its CUDA graphs), to predict a
    /// live node.
    pub like_gpu_backend: bool,
    /// How a node of several GPUs places its models (`cluster::Placement`).
    pub placement: crate::cluster::Placement,
    /// Whether (and how) a node of several GPUs moves models between them as load shifts.
    pub moves: Option<crate::cluster::Moves>,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            threshold: 0.99,
            precision: 0.025,
            min_scale: 1.0 / 64.0,
            max_scale: 64.0,
            like_gpu_backend: false,
            placement: crate::cluster::Placement::default(),
            moves: None,
        }
    }
}

impl SearchOptions {
    /// Why these options cannot run, if they cannot.
    pub fn check(&self) -> Result<()> {
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            bail!("--threshold must be in (0, 1], got {}", self.threshold);
        }
        if !(self.precision >= 0.001 && self.precision <= 0.5) {
            bail!("--precision must be in [0.001, 0.5], got {}", self.precision);
        }
        if let Some(problem) = self.moves.and_then(|m| m.problem()) {
            bail!("--move-every-s / --move-ready-s: {problem}");
        }
        Ok(())
    }
}

/// One run of the search: a policy at one load scale.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The load scale run.
    pub scale: f64,
    /// Whether every model kept the threshold.
    pub served: bool,
    /// What each model saw.
    pub models: Vec<ModelReport>,
}

impl Probe {
    fn new(scale: f64, models: Vec<ModelReport>, threshold: f64) -> Probe {
        let served = models.iter().all(|m| m.summary.slo_attainment >= threshold);
        Probe { scale, served, models }
    }

    /// The lowest SLO attainment of any model.
    pub fn worst_attainment(&self) -> f64 {
        self.models.iter().map(|m| m.summary.slo_attainment).fold(1.0, f64::min)
    }
}

/// The capacity of one policy on one seed.
#[derive(Debug, Clone)]
pub struct Capacity {
    /// The policy.
    pub policy: String,
    /// The seed of its arrivals.
    pub seed: u64,
    /// The batching every model ran with, for a tuned baseline (else the policy's own).
    pub batching: Option<Batching>,
    /// For the oracle, the plan it was reported at where another than its own windowed plan
    /// held more (see `oracle_in_hindsight`): a policy's whole run, or a tuned setting's.
    pub plan: Option<String>,
    /// The highest scale served (0 when not even `min_scale` is).
    pub capacity: f64,
    /// The lowest scale found not served (`None` when `max_scale` is served).
    pub first_missed: Option<f64>,
    /// Every run, in the order made.
    pub probes: Vec<Probe>,
}

impl Capacity {
    /// The run at the capacity.
    pub fn at_capacity(&self) -> Option<&Probe> {
        self.probes.iter().find(|p| p.served && p.scale == self.capacity)
    }
}

/// The search for one policy on one seed; `run_at(scale)` runs the scenario at that load and
/// gives each model's report.
pub fn search(
    policy: &str,
    seed: u64,
    options: &SearchOptions,
    mut run_at: impl FnMut(f64) -> Result<Vec<ModelReport>>,
) -> Result<Capacity> {
    let mut probes: Vec<Probe> = Vec::new();
    let mut probe = |scale: f64, probes: &mut Vec<Probe>| -> Result<bool> {
        let p = Probe::new(scale, run_at(scale)?, options.threshold);
        let served = p.served;
        probes.push(p);
        Ok(served)
    };
    // Bracket: `lo` served (or 0), `hi` missed (or None past max_scale).
    let (mut lo, mut hi) = (0.0, None);
    let mut scale = 1.0f64.clamp(options.min_scale, options.max_scale);
    if probe(scale, &mut probes)? {
        lo = scale;
        while hi.is_none() && scale < options.max_scale {
            scale = (scale * 2.0).min(options.max_scale);
            if probe(scale, &mut probes)? { lo = scale } else { hi = Some(scale) }
        }
    } else {
        hi = Some(scale);
        while lo == 0.0 && scale > options.min_scale {
            scale = (scale / 2.0).max(options.min_scale);
            if probe(scale, &mut probes)? { lo = scale } else { hi = Some(scale) }
        }
    }
    if let Some(mut h) = hi
        && lo > 0.0
    {
        while h - lo > options.precision * lo {
            let mid = (lo + h) / 2.0;
            if probe(mid, &mut probes)? { lo = mid } else { h = mid }
        }
        hi = Some(h);
    }
    Ok(Capacity {
        policy: policy.to_string(),
        seed,
        batching: None,
        plan: None,
        capacity: lo,
        first_missed: hi,
        probes,
    })
}

/// Searches every policy on every seed (`seed`, `seed + 1`, ...) of `loaded`, the runs spread
/// over the machine's cores. With `tune`, each of `TUNED_BASELINES` is searched at every
/// setting of `tuning_grid()` and kept at its best (all settings are returned by `Tuning`).
pub fn run(
    loaded: &LoadedScenario,
    policies: &[String],
    seeds: u64,
    options: &SearchOptions,
    tune: bool,
    show_progress: bool,
) -> Result<(Vec<Capacity>, Vec<Capacity>)> {
    options.check()?;
    let settings = |policy: &str| -> Vec<Option<Batching>> {
        if tune && TUNED_BASELINES.contains(&policy) {
            tuning_grid().into_iter().map(Some).collect()
        } else {
            vec![None]
        }
    };
    let jobs: Vec<(String, Option<Batching>, u64)> = policies
        .iter()
        .flat_map(|p| settings(p).into_iter().map(move |b| (p.clone(), b)))
        .flat_map(|(p, b)| (0..seeds).map(move |k| (p.clone(), b, loaded.scenario.seed + k)))
        .collect();
    let what = format!("capacity of {}", loaded.scenario.name);
    let all = in_parallel(jobs, "searches", &what, show_progress, |(policy, batching, seed)| {
        let found = search(policy, *seed, options, |scale| run_at(loaded, policy, *batching, *seed, scale, options))?;
        Ok(Capacity { batching: *batching, ..found })
    })?;
    let (mut reported, tuned) = keep_best_settings(all);
    oracle_in_hindsight(&mut reported, &tuned);
    Ok((reported, tuned))
}

/// The name of the policy that knows every arrival in advance.
pub const ORACLE: &str = "oracle";

/// The oracle knows every arrival, so its plan space holds every other plan of the same run:
/// each tuned baseline's static configuration at every setting searched, and every other
/// policy's whole run of decisions (all deterministic given the arrivals: the oracle could
/// replay any of them). Per seed, the oracle is reported at the best of its own windowed plan
/// (`OraclePlan`: per window, from empty queues) and those, naming the plan that won, so that
/// it bounds every policy run beside it.
fn oracle_in_hindsight(reported: &mut [Capacity], tuned: &[Capacity]) {
    let others: Vec<Capacity> = reported.iter().chain(tuned).filter(|c| c.policy != ORACLE).cloned().collect();
    for oracle in reported.iter_mut().filter(|c| c.policy == ORACLE) {
        let Some(best) =
            others.iter().filter(|c| c.seed == oracle.seed).max_by(|a, b| a.capacity.total_cmp(&b.capacity))
        else {
            continue;
        };
        if best.capacity > oracle.capacity {
            let plan = match best.batching {
                Some(b) => format!("{} at {b}", best.policy),
                None => format!("{}'s run", best.policy),
            };
            *oracle = Capacity { policy: ORACLE.into(), plan: Some(plan), ..best.clone() };
        }
    }
}

/// `loaded` under `policy` at `scale` times its load on seed `seed`, every model at `batching`
/// where given, on the backend `options` names (on each of its GPUs, placed by
/// `options.placement`): each model's report.
fn run_at(
    loaded: &LoadedScenario,
    policy: &str,
    batching: Option<Batching>,
    seed: u64,
    scale: f64,
    options: &SearchOptions,
) -> Result<Vec<ModelReport>> {
    let mut scaled = loaded.clone();
    scaled.scenario.seed = seed;
    if let Some(b) = batching {
        scaled.set_batching(b)?;
    }
    scaled.scale_load(scale)?;
    let choice = PolicyChoice::Named(policy.to_string());
    let on = simulate::simulator(options.like_gpu_backend);
    if scaled.scenario.gpus > 1 {
        return Ok(crate::cluster::run(&scaled, options.placement, &choice, on.as_ref(), options.moves)?.models);
    }
    Ok(simulate::run_on(&scaled, &choice, on.as_ref(), false)?.report.models)
}

/// `f` of every job, in the jobs' order, spread over the machine's cores, with a progress bar
/// counting `unit`.
fn in_parallel<J: Sync, R: Send>(
    jobs: Vec<J>,
    unit: &str,
    what: &str,
    show_progress: bool,
    f: impl Fn(&J) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let progress = Mutex::new(LateProgress::new(Some(jobs.len() as f64), unit, what, show_progress));
    let queue = Mutex::new(jobs.iter().enumerate());
    let results = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let Some((index, job)) = queue.lock().expect("queue").next() else { return };
                    let done = f(job);
                    let mut results = results.lock().expect("results");
                    results.push((index, done));
                    progress.lock().expect("progress").set(results.len() as f64);
                }
            });
        }
    });
    progress.into_inner().expect("progress").finish();
    let mut results = results.into_inner().expect("results");
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Loads of the by-load comparison are multiples of this.
pub const BY_LOAD_STEP: f64 = 0.25;

/// One model at one load under one policy (at its reported batching), over the seeds.
#[derive(Debug, Clone, Serialize)]
pub struct LoadRow {
    /// The load scale.
    pub load_scale: f64,
    /// The policy.
    pub policy: String,
    /// The model.
    pub model: String,
    /// Share of its requests within its SLO, mean over seeds.
    pub slo_attainment: f64,
    /// Median latency, ms, mean over seeds.
    pub p50_ms: f64,
    /// 99th percentile, ms, mean over seeds.
    pub p99_ms: f64,
}

/// SLO attainment and latency per model at every multiple of `BY_LOAD_STEP` up to model-based's
/// capacity (or the highest found without it), for model-based and each baseline at the
/// batching it was reported with: does the policy hold up at every load, not only at its edge?
pub fn by_load(
    loaded: &LoadedScenario,
    reported: &[Capacity],
    seeds: u64,
    options: &SearchOptions,
    show_progress: bool,
) -> Result<Vec<LoadRow>> {
    let policies: Vec<(String, Option<Batching>)> = ["model-based"]
        .iter()
        .chain(BASELINES.iter())
        .filter_map(|p| reported.iter().find(|c| c.policy == *p).map(|c| (c.policy.clone(), c.batching)))
        .collect();
    let top = policy_capacity(reported, "model-based")
        .map(|(c, _)| c)
        .unwrap_or_else(|| reported.iter().map(|c| c.capacity).fold(0.0, f64::max));
    let loads: Vec<f64> = (1..).map(|k| k as f64 * BY_LOAD_STEP).take_while(|l| *l <= top + 1e-9).collect();
    let jobs: Vec<(f64, &str, Option<Batching>)> =
        loads.iter().flat_map(|&l| policies.iter().map(move |(p, b)| (l, p.as_str(), *b))).collect();
    let what = format!("attainment by load on {}", loaded.scenario.name);
    in_parallel(jobs, "loads", &what, show_progress, |(scale, policy, batching)| {
        let reports = (0..seeds)
            .map(|k| run_at(loaded, policy, *batching, loaded.scenario.seed + k, *scale, options))
            .collect::<Result<Vec<_>>>()?;
        let mean =
            |m: usize, f: &dyn Fn(&ModelReport) -> f64| reports.iter().map(|r| f(&r[m])).sum::<f64>() / seeds as f64;
        Ok((0..reports[0].len())
            .map(|m| LoadRow {
                load_scale: *scale,
                policy: policy.to_string(),
                model: reports[0][m].model.clone(),
                slo_attainment: mean(m, &|r| r.summary.slo_attainment),
                p50_ms: mean(m, &|r| r.summary.p50_ms),
                p99_ms: mean(m, &|r| r.summary.p99_ms),
            })
            .collect::<Vec<_>>())
    })
    .map(|rows| rows.into_iter().flatten().collect())
}

/// How far model-based's attainment may fall below the best baseline's at any load (points).
pub const BY_LOAD_ATTAINMENT_SLACK: f64 = 0.5;
/// ...and its median latency rise above the lowest baseline median, up to `BY_LOAD_P50_UP_TO`.
pub const BY_LOAD_P50_RATIO: f64 = 1.25;
/// The loads (scale) up to which the median is compared.
pub const BY_LOAD_P50_UP_TO: f64 = 0.5;

/// Per load and model: model-based's attainment and median against the best baseline's (the
/// highest attainment, the lowest median), and whether it holds within
/// `BY_LOAD_ATTAINMENT_SLACK` points and (up to `BY_LOAD_P50_UP_TO`) `BY_LOAD_P50_RATIO`.
pub fn by_load_table(rows: &[LoadRow]) -> Table {
    let mut table = crate::output::table(
        ["load", "model", "model-based SLO met", "best baseline", "points", "p50 ms (best baseline)", "holds"]
            .map(String::from)
            .to_vec(),
    );
    for ours in rows.iter().filter(|r| r.policy == "model-based") {
        let others = || {
            rows.iter()
                .filter(|r| r.policy != "model-based" && r.load_scale == ours.load_scale && r.model == ours.model)
        };
        let Some(best) = others().max_by(|a, b| a.slo_attainment.total_cmp(&b.slo_attainment)) else { continue };
        let fastest = others().map(|r| r.p50_ms).fold(f64::INFINITY, f64::min);
        let points = (ours.slo_attainment - best.slo_attainment) * 100.0;
        let p50_ok = ours.load_scale > BY_LOAD_P50_UP_TO + 1e-9 || ours.p50_ms <= BY_LOAD_P50_RATIO * fastest;
        let holds = points >= -BY_LOAD_ATTAINMENT_SLACK && p50_ok;
        table.add_row(vec![
            format!("x{:.2}", ours.load_scale),
            ours.model.clone(),
            format!("{:.2}%", ours.slo_attainment * 100.0),
            format!("{:.2}% ({})", best.slo_attainment * 100.0, best.policy),
            format!("{points:+.2}"),
            format!("{:.1} ({fastest:.1})", ours.p50_ms),
            if holds { "yes".into() } else { "NO".into() },
        ]);
    }
    table
}

/// Splits the searches into those to report (each tuned baseline at its setting with the
/// highest mean capacity over the seeds, the first such on a tie) and every tuned search.
fn keep_best_settings(all: Vec<Capacity>) -> (Vec<Capacity>, Vec<Capacity>) {
    let mean = |policy: &str, batching: Batching| {
        let values: Vec<f64> =
            all.iter().filter(|c| c.policy == policy && c.batching == Some(batching)).map(|c| c.capacity).collect();
        values.iter().sum::<f64>() / values.len() as f64
    };
    let mut best: Vec<(String, Batching)> = Vec::new();
    for c in &all {
        let Some(b) = c.batching else { continue };
        match best.iter_mut().find(|(p, _)| *p == c.policy) {
            Some((p, kept)) => {
                if mean(p, b) > mean(p, *kept) {
                    *kept = b;
                }
            }
            None => best.push((c.policy.clone(), b)),
        }
    }
    let (tuned, untuned): (Vec<Capacity>, Vec<Capacity>) = all.into_iter().partition(|c| c.batching.is_some());
    let mut reported = untuned;
    reported
        .extend(tuned.iter().filter(|c| best.iter().any(|(p, b)| *p == c.policy && c.batching == Some(*b))).cloned());
    (reported, tuned)
}

/// Mean and standard deviation of one policy's capacities over its seeds.
pub fn policy_capacity(results: &[Capacity], policy: &str) -> Option<(f64, f64)> {
    let values: Vec<f64> = results.iter().filter(|r| r.policy == policy).map(|r| r.capacity).collect();
    (!values.is_empty()).then(|| crate::evaluate::mean_sd(&values))
}

/// The best baseline run (by mean capacity) and its mean capacity.
pub fn best_baseline(results: &[Capacity]) -> Option<(&'static str, f64)> {
    BASELINES
        .iter()
        .filter_map(|b| policy_capacity(results, b).map(|(c, _)| (*b, c)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// The capacity table: per policy its capacity (mean ± standard deviation over seeds), the
/// ratio to the best baseline, and per model its attainment, p50 and p99 at that capacity (the
/// first seed's run).
pub fn table(results: &[Capacity], policies: &[String], threshold: f64) -> Table {
    let models: Vec<String> = results
        .iter()
        .find_map(|r| r.probes.first())
        .map(|p| p.models.iter().map(|m| m.model.clone()).collect())
        .unwrap_or_default();
    let seeds = results.iter().filter(|r| Some(&r.policy) == policies.first()).count();
    let best = best_baseline(results);
    let mut header = vec![
        "policy".to_string(),
        format!("capacity at {:.3}% SLO", threshold * 100.0),
        best.map_or("vs best baseline".into(), |(b, _)| format!("vs best baseline ({b})")),
        "batching".to_string(),
    ];
    header.extend(models.iter().map(|m| format!("{m}: SLO met, p50/p99 ms")));
    let mut table = crate::output::table(header);
    for policy in policies {
        let Some((mean, sd)) = policy_capacity(results, policy) else { continue };
        let spread = crate::output::with_spread(format!("x{mean:.3}"), format!("{sd:.3}"), seeds);
        let ratio = best.filter(|(_, c)| *c > 0.0).map_or("-".into(), |(_, c)| format!("{:.2}x", mean / c));
        let search = results.iter().find(|r| &r.policy == policy);
        let batching = match search {
            Some(Capacity { plan: Some(plan), .. }) => format!("in hindsight: {plan}"),
            _ => search.and_then(|r| r.batching).map_or("its own".into(), |b| format!("tuned: {b}")),
        };
        let mut row = vec![policy.clone(), spread, ratio, batching];
        let first = search.and_then(Capacity::at_capacity);
        for i in 0..models.len() {
            row.push(first.and_then(|p| p.models.get(i)).map_or("-".into(), |m| {
                let s = &m.summary;
                format!("{:.2}%, {:.1}/{:.1}", s.slo_attainment * 100.0, s.p50_ms, s.p99_ms)
            }));
        }
        table.add_row(row);
    }
    table
}

/// Row of capacity.csv and tuning.csv.
#[derive(Serialize)]
struct CapacityRow<'a> {
    policy: &'a str,
    seed: u64,
    /// Empty where the policy chose its own batching.
    max_batch: Option<u32>,
    min_batch: Option<u32>,
    batch_timeout_ms: Option<f64>,
    /// The oracle's winning plan, where not its own (see `oracle_in_hindsight`).
    plan: Option<&'a str>,
    capacity: f64,
    first_missed: Option<f64>,
    vs_best_baseline: Option<f64>,
    runs: usize,
}

fn capacity_rows(searches: &[Capacity], best_baseline: Option<f64>) -> impl Iterator<Item = CapacityRow<'_>> {
    searches.iter().map(move |r| CapacityRow {
        policy: &r.policy,
        seed: r.seed,
        max_batch: r.batching.map(|b| b.max_batch),
        min_batch: r.batching.map(|b| b.min_batch),
        batch_timeout_ms: r.batching.map(|b| b.batch_timeout_ms),
        plan: r.plan.as_deref(),
        capacity: r.capacity,
        first_missed: r.first_missed,
        vs_best_baseline: best_baseline.map(|b| r.capacity / b),
        runs: r.probes.len(),
    })
}

/// Row of probes.csv: one model in one run of the search.
#[derive(Serialize)]
struct ProbeRow<'a> {
    policy: &'a str,
    seed: u64,
    load_scale: f64,
    served: bool,
    model: &'a str,
    arrivals: u64,
    slo_attainment: f64,
    p50_ms: f64,
    p99_ms: f64,
    dropped: u64,
}

/// Writes capacity.csv, tuning.csv (every tuned baseline's search at every setting), probes.csv
/// (every run of every reported search, per model) and capacity-slo-vs-load.svg (the worst
/// model's SLO attainment against load, per policy, first seed) into `dir`.
pub fn write(dir: &Path, results: &[Capacity], tuning: &[Capacity], policies: &[String], threshold: f64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let best = best_baseline(results).map(|(_, c)| c).filter(|c| *c > 0.0);
    write_csv(&dir.join("capacity.csv"), capacity_rows(results, best))?;
    write_csv(&dir.join("tuning.csv"), capacity_rows(tuning, best))?;
    write_csv(
        &dir.join("probes.csv"),
        results.iter().flat_map(|r| {
            r.probes.iter().flat_map(move |p| {
                p.models.iter().map(move |m| ProbeRow {
                    policy: &r.policy,
                    seed: r.seed,
                    load_scale: p.scale,
                    served: p.served,
                    model: &m.model,
                    arrivals: m.summary.arrivals,
                    slo_attainment: m.summary.slo_attainment,
                    p50_ms: m.summary.p50_ms,
                    p99_ms: m.summary.p99_ms,
                    dropped: m.summary.dropped,
                })
            })
        }),
    )?;
    let mut series: Vec<Series> = policies
        .iter()
        .enumerate()
        .filter_map(|(color, policy)| {
            let first = results.iter().find(|r| &r.policy == policy)?;
            let mut points: Vec<(f64, f64)> =
                first.probes.iter().map(|p| (p.scale, p.worst_attainment() * 100.0)).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Some(Series { name: policy.clone(), points, color, dashed: false })
        })
        .collect();
    let scales = || series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x_min, x_max) = (scales().fold(f64::INFINITY, f64::min), scales().fold(0.0, f64::max));
    series.push(Series {
        name: format!("{:.0}% threshold", threshold * 100.0),
        points: vec![(x_min.min(x_max), threshold * 100.0), (x_max, threshold * 100.0)],
        color: policies.len(),
        dashed: true,
    });
    let chart = Chart {
        title: "Worst model's SLO attainment against load (the capacity search's runs)",
        x_label: "load scale (x the scenario's)",
        y_label: "SLO met by the worst model (%)",
        marked: true,
    };
    line_chart(&dir.join("capacity-slo-vs-load.svg"), &chart, &series)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_simulator::{Allocation, Summary};

    fn report(attainment: f64) -> Vec<ModelReport> {
        let summary = Summary {
            arrivals: 100,
            completed: 100,
            dropped: 0,
            within_slo: (attainment * 100.0) as u64,
            slo_attainment: attainment,
            goodput_rps: 0.0,
            throughput_rps: 0.0,
            arrival_rps: 0.0,
            p50_ms: 1.0,
            p95_ms: 1.0,
            p99_ms: 1.0,
            mean_ms: 1.0,
            mean_batch: 1.0,
            mean_queue: 0.0,
            max_queue: 0,
            gpu_util: 0.0,
        };
        let model = ModelReport {
            model: "m".into(),
            slo_ms: 10.0,
            allocation: Allocation { gpu_pct: 100.0, max_batch: 1, min_batch: 1, batch_timeout_ms: 0.0 },
            reallocations: 0,
            worker_failures: 0,
            summary: summary.clone(),
        };
        vec![model]
    }

    /// A step at `edge`: served below, missed above.
    fn step(edge: f64) -> impl FnMut(f64) -> Result<Vec<ModelReport>> {
        move |scale| Ok(report(if scale <= edge { 1.0 } else { 0.5 }))
    }

    #[test]
    fn finds_a_step_above_one_to_the_precision() {
        let found = search("p", 1, &SearchOptions::default(), step(3.3)).unwrap();
        assert!(found.capacity <= 3.3 && found.capacity >= 3.3 / 1.025, "{}", found.capacity);
        let missed = found.first_missed.unwrap();
        assert!(missed > 3.3 && missed - found.capacity <= 0.025 * found.capacity);
    }

    #[test]
    fn finds_a_step_below_one() {
        let found = search("p", 1, &SearchOptions::default(), step(0.37)).unwrap();
        assert!(found.capacity <= 0.37 && found.capacity >= 0.37 / 1.025, "{}", found.capacity);
        assert!(found.at_capacity().is_some_and(|p| p.served));
    }

    #[test]
    fn nothing_served_is_zero_and_everything_served_is_the_cap() {
        let options = SearchOptions::default();
        let none = search("p", 1, &options, |_| Ok(report(0.0))).unwrap();
        assert_eq!((none.capacity, none.first_missed), (0.0, Some(options.min_scale)));
        let all = search("p", 1, &options, |_| Ok(report(1.0))).unwrap();
        assert_eq!((all.capacity, all.first_missed), (options.max_scale, None));
    }

    /// A finished search of `policy` on `seed` at `batching`, without its runs.
    fn found(policy: &str, seed: u64, batching: Option<Batching>, capacity: f64) -> Capacity {
        Capacity { policy: policy.into(), seed, batching, plan: None, capacity, first_missed: None, probes: Vec::new() }
    }

    #[test]
    fn a_tuned_baseline_is_reported_at_its_best_mean_setting() {
        let (small, large) = (Batching::full(4, 1.0), Batching::full(32, 1.0));
        // The small batch wins one seed, the large batch the mean.
        let all = vec![
            found("temporal", 1, Some(small), 1.0),
            found("temporal", 2, Some(small), 0.5),
            found("temporal", 1, Some(large), 0.9),
            found("temporal", 2, Some(large), 0.9),
            found("model-based", 1, None, 1.1),
        ];
        let (reported, tuning) = keep_best_settings(all);
        assert_eq!(tuning.len(), 4);
        let kept: Vec<(&str, Option<Batching>)> = reported.iter().map(|c| (c.policy.as_str(), c.batching)).collect();
        assert_eq!(kept, [("model-based", None), ("temporal", Some(large)), ("temporal", Some(large))]);
    }

    #[test]
    fn the_oracle_is_reported_at_the_best_plan_of_its_seed_its_own_where_it_wins() {
        let (small, large) = (Batching::full(4, 1.0), Batching::full(32, 1.0));
        let mut reported = vec![
            found(ORACLE, 1, None, 1.0),
            found(ORACLE, 2, None, 1.0),
            found("model-based", 1, None, 0.9),
            found("model-based", 2, None, 1.05),
            found("temporal", 1, Some(large), 0.8),
            found("temporal", 2, Some(large), 0.8),
        ];
        // A setting not reported (not the best mean) still holds seed 1 best.
        let tuned = vec![found("temporal", 1, Some(small), 1.2), found("temporal", 2, Some(small), 0.1)];
        oracle_in_hindsight(&mut reported, &tuned);
        assert_eq!((reported[0].capacity, reported[0].plan.as_deref()), (1.2, Some("temporal at batch 4, wait 1 ms")));
        assert_eq!((reported[1].capacity, reported[1].plan.as_deref()), (1.05, Some("model-based's run")));
        assert_eq!((reported[0].policy.as_str(), reported[0].batching), (ORACLE, Some(small)));
        let mut alone = vec![found(ORACLE, 1, None, 1.0), found("model-based", 1, None, 0.9)];
        oracle_in_hindsight(&mut alone, &[]);
        assert_eq!((alone[0].capacity, alone[0].plan.as_deref()), (1.0, None));
    }

    #[test]
    fn the_threshold_is_inclusive() {
        let options = SearchOptions { threshold: 0.99, ..SearchOptions::default() };
        assert!(Probe::new(1.0, report(0.99), options.threshold).served);
        assert!(!Probe::new(1.0, report(0.989), options.threshold).served);
    }
}
