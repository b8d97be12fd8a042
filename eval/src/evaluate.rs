//! `gpuslice evaluate`: runs several policies on the same arrivals (and several seeds), prints a
//! comparison table with the spread over seeds, and writes CSV and SVG plots.

use crate::output::{interval_attainment, write_csv};
use crate::plot::{Chart, Series, line_chart};
use crate::scenario::LoadedScenario;
use crate::simulate::{self, LateProgress, PolicyChoice, SimRun};
use anyhow::Result;
use comfy_table::Table;
use gpuslice_control::BackendBuilder;
use gpuslice_simulator::{ModelInterval, Sharing};
use serde::Serialize;
use std::path::Path;

/// One policy on one seed.
pub struct PolicyResult {
    /// The policy.
    pub policy: String,
    /// The seed of the arrivals.
    pub seed: u64,
    /// The run.
    pub run: SimRun,
    /// Time-averaged sum of allocated GPU% (100 where the GPU is not partitioned).
    pub gpu_allocated_pct: f64,
}

/// Row of evaluate.csv: one model (or `total`) of one policy on one seed.
#[derive(Serialize)]
struct EvalRow<'a> {
    policy: &'a str,
    seed: u64,
    model: &'a str,
    arrivals: u64,
    goodput_rps: f64,
    slo_attainment: f64,
    p50_ms: f64,
    p99_ms: f64,
    dropped: u64,
    gpu_allocated_pct: f64,
    gpu_util_pct: f64,
    reallocations: u64,
}

/// Row of load-sweep.csv: one policy at one load scale, means over seeds.
#[derive(Serialize)]
struct SweepRow<'a> {
    policy: &'a str,
    load_scale: f64,
    arrivals_rps: f64,
    goodput_rps: f64,
    goodput_sd: f64,
    slo_attainment: f64,
    vs_reference: Option<f64>,
}

/// The policy column in front of a decision row.
#[derive(Serialize)]
struct PolicyTag<'a> {
    policy: &'a str,
}

fn allocated_pct(run: &SimRun, models: usize) -> f64 {
    if run.report.sharing != Sharing::Spatial {
        return 100.0;
    }
    let (mut weighted, mut time) = (0.0, 0.0);
    for chunk in run.intervals.chunks(models) {
        let span = chunk[0].end_s - chunk[0].start_s;
        weighted += span * chunk.iter().map(|i| i.allocation.gpu_pct).sum::<f64>();
        time += span;
    }
    if time > 0.0 { weighted / time } else { 0.0 }
}

/// Runs every policy on every seed (`seed`, `seed + 1`, ...), on the simulator `on` builds.
pub fn run(
    loaded: &LoadedScenario,
    policies: &[String],
    seeds: u64,
    on: &dyn BackendBuilder,
    show_progress: bool,
) -> Result<Vec<PolicyResult>> {
    let models = loaded.scenario.models.len();
    let total = policies.len() as f64 * seeds as f64;
    let mut progress = LateProgress::new(Some(total), "runs", &loaded.scenario.name, show_progress);
    let mut results = Vec::new();
    for policy in policies {
        for k in 0..seeds {
            let mut seeded = loaded.clone();
            seeded.scenario.seed = loaded.scenario.seed + k;
            progress.set_message(&format!("{} seed {}", policy, seeded.scenario.seed));
            let run = simulate::run_on(&seeded, &PolicyChoice::Named(policy.clone()), on, false)?;
            let gpu_allocated_pct = allocated_pct(&run, models);
            results.push(PolicyResult { policy: policy.clone(), seed: seeded.scenario.seed, run, gpu_allocated_pct });
            progress.set(results.len() as f64);
        }
    }
    progress.finish();
    Ok(results)
}

/// Every policy's results at one load scale.
pub struct LoadPoint {
    /// The load scale.
    pub scale: f64,
    /// Each policy's run on each seed at it.
    pub results: Vec<PolicyResult>,
}

/// Runs the comparison at each load scale (see `LoadedScenario::scale_load`).
pub fn sweep(
    loaded: &LoadedScenario,
    policies: &[String],
    seeds: u64,
    scales: &[f64],
    on: &dyn BackendBuilder,
    show_progress: bool,
) -> Result<Vec<LoadPoint>> {
    scales
        .iter()
        .map(|&scale| {
            let mut scaled = loaded.clone();
            scaled.scale_load(scale)?;
            Ok(LoadPoint { scale, results: run(&scaled, policies, seeds, on, show_progress)? })
        })
        .collect()
}

/// Mean and standard deviation over seeds of one policy's total `f`.
fn policy_stat(results: &[PolicyResult], policy: &str, f: impl Fn(&PolicyResult) -> f64) -> (f64, f64) {
    mean_sd(&results.iter().filter(|r| r.policy == policy).map(f).collect::<Vec<_>>())
}

/// The load sweep: a row per policy, per load scale its goodput, SLO attainment and goodput
/// against the reference policy's at the same load.
pub fn sweep_table(points: &[LoadPoint], policies: &[String], reference: Option<&str>) -> Table {
    let mut header = vec!["policy".to_string()];
    header.extend(points.iter().map(|p| format!("load x{}", p.scale)));
    let mut table = crate::output::table(header);
    for policy in policies {
        let mut row = vec![policy.clone()];
        for point in points {
            let goodput = mean_goodput(&point.results, policy);
            let attainment = mean_attainment_pct(&point.results, policy);
            let versus = reference
                .map(|r| mean_goodput(&point.results, r))
                .filter(|g| *g > 0.0)
                .map_or(String::new(), |g| format!(", {:.2}x", goodput / g));
            row.push(format!("{goodput:.0}, {attainment:.1}%{versus}"));
        }
        table.add_row(row);
    }
    table
}

/// Writes load-sweep.csv, goodput-vs-load.svg and slo-vs-load.svg into `dir`.
pub fn write_sweep(dir: &Path, points: &[LoadPoint], policies: &[String], reference: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let rows = points.iter().flat_map(|point| {
        let reference_goodput = reference.map(|r| mean_goodput(&point.results, r));
        policies.iter().map(move |policy| {
            let (goodput, goodput_sd) = policy_stat(&point.results, policy, |r| r.run.report.total.goodput_rps);
            SweepRow {
                policy,
                load_scale: point.scale,
                arrivals_rps: policy_stat(&point.results, policy, |r| r.run.report.total.arrival_rps).0,
                goodput_rps: goodput,
                goodput_sd,
                slo_attainment: policy_stat(&point.results, policy, |r| r.run.report.total.slo_attainment).0,
                vs_reference: reference_goodput.filter(|g| *g > 0.0).map(|g| goodput / g),
            }
        })
    });
    write_csv(&dir.join("load-sweep.csv"), rows)?;
    let series = |value: &dyn Fn(&[PolicyResult], &str) -> f64| -> Vec<Series> {
        policies
            .iter()
            .enumerate()
            .map(|(color, policy)| Series {
                name: policy.clone(),
                points: points.iter().map(|p| (p.scale, value(&p.results, policy))).collect(),
                color,
                dashed: false,
            })
            .collect()
    };
    let chart = |title, y_label| Chart { title, x_label: "load scale (x the scenario's)", y_label, marked: true };
    line_chart(
        &dir.join("goodput-vs-load.svg"),
        &chart("Goodput against offered load", "goodput (requests within SLO / s)"),
        &series(&mean_goodput),
    )?;
    line_chart(
        &dir.join("slo-vs-load.svg"),
        &chart("SLO attainment against offered load", "SLO met (%)"),
        &series(&mean_attainment_pct),
    )?;
    Ok(())
}

/// Mean and (population) standard deviation.
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Mean goodput of a policy over its seeds.
pub fn mean_goodput(results: &[PolicyResult], policy: &str) -> f64 {
    policy_stat(results, policy, |r| r.run.report.total.goodput_rps).0
}

/// Mean SLO attainment (%) of a policy over its seeds.
fn mean_attainment_pct(results: &[PolicyResult], policy: &str) -> f64 {
    policy_stat(results, policy, |r| r.run.report.total.slo_attainment * 100.0).0
}

/// The comparison table: one row per policy, means over seeds (± standard deviation).
pub fn table(results: &[PolicyResult], policies: &[String], reference: Option<&str>) -> Table {
    use crate::output::with_spread;
    let models: Vec<String> =
        results.first().map(|r| r.run.report.models.iter().map(|m| m.model.clone()).collect()).unwrap_or_default();
    let mut header: Vec<String> =
        ["policy", "goodput/s", "vs ref", "SLO met", "drops", "GPU% alloc", "SM-time used", "reallocs"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    header.extend(models.iter().map(|m| format!("p99 {m}")));
    let mut table = crate::output::table(header);
    let reference_goodput = reference.map(|r| mean_goodput(results, r));
    for policy in policies {
        let runs: Vec<&PolicyResult> = results.iter().filter(|r| &r.policy == policy).collect();
        let stat = |f: &dyn Fn(&PolicyResult) -> f64| mean_sd(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
        let (goodput, goodput_sd) = stat(&|r| r.run.report.total.goodput_rps);
        let (attainment, attainment_sd) = stat(&|r| r.run.report.total.slo_attainment * 100.0);
        let mut row = vec![
            policy.clone(),
            with_spread(format!("{goodput:.0}"), format!("{goodput_sd:.0}"), runs.len()),
            reference_goodput.map_or("".into(), |g| if g > 0.0 { format!("{:.2}x", goodput / g) } else { "-".into() }),
            with_spread(format!("{attainment:.1}%"), format!("{attainment_sd:.1}"), runs.len()),
            format!("{:.0}", stat(&|r| r.run.report.total.dropped as f64).0),
            format!("{:.0}", stat(&|r| r.gpu_allocated_pct).0),
            format!("{:.0}%", stat(&|r| r.run.report.total.gpu_util * 100.0).0),
            format!("{:.0}", stat(&|r| r.run.decisions.len() as f64).0),
        ];
        for (i, _) in models.iter().enumerate() {
            let (p99, sd) = stat(&|r| r.run.report.models[i].summary.p99_ms);
            row.push(with_spread(format!("{p99:.1}"), format!("{sd:.1}"), runs.len()));
        }
        table.add_row(row);
    }
    table
}

/// Writes evaluate.csv, decisions.csv, slo.svg and gpu.svg into `dir`.
pub fn write(dir: &Path, results: &[PolicyResult], policies: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let rows = results.iter().flat_map(|r| {
        let report = &r.run.report;
        let per_model = report.models.iter().map(move |m| (m.model.as_str(), &m.summary, m.reallocations));
        let total = std::iter::once(("total", &report.total, report.models.iter().map(|m| m.reallocations).sum()));
        per_model.chain(total).map(move |(model, s, reallocations)| EvalRow {
            policy: &r.policy,
            seed: r.seed,
            model,
            arrivals: s.arrivals,
            goodput_rps: s.goodput_rps,
            slo_attainment: s.slo_attainment,
            p50_ms: s.p50_ms,
            p99_ms: s.p99_ms,
            dropped: s.dropped,
            gpu_allocated_pct: r.gpu_allocated_pct,
            gpu_util_pct: s.gpu_util * 100.0,
            reallocations,
        })
    });
    write_csv(&dir.join("evaluate.csv"), rows)?;
    let first_seed: Vec<&PolicyResult> =
        policies.iter().filter_map(|p| results.iter().find(|r| &r.policy == p)).collect();
    write_csv(
        &dir.join("decisions.csv"),
        first_seed.iter().flat_map(|r| r.run.decisions.iter().map(move |d| (PolicyTag { policy: &r.policy }, d))),
    )?;
    let series = |value: &dyn Fn(&PolicyResult, &[ModelInterval]) -> Option<f64>| -> Vec<Series> {
        first_seed
            .iter()
            .enumerate()
            .map(|(color, r)| {
                let models = r.run.report.models.len();
                Series {
                    name: r.policy.clone(),
                    points: r
                        .run
                        .intervals
                        .chunks(models)
                        .filter_map(|c| value(r, c).map(|v| (c[0].end_s, v)))
                        .collect(),
                    color,
                    dashed: false,
                }
            })
            .collect()
    };
    let chart = |title, y_label| Chart { title, x_label: "time (s)", y_label, marked: false };
    line_chart(
        &dir.join("slo.svg"),
        &chart("SLO attainment per control interval (all models)", "SLO met (%)"),
        &series(&|_, c| interval_attainment(c)),
    )?;
    let allocated = |r: &PolicyResult, c: &[ModelInterval]| {
        Some(if r.run.report.sharing == Sharing::Spatial {
            c.iter().map(|i| i.allocation.gpu_pct).sum()
        } else {
            100.0
        })
    };
    line_chart(
        &dir.join("gpu.svg"),
        &chart("GPU% allocated per control interval (all models)", "GPU %"),
        &series(&allocated),
    )?;
    Ok(())
}
