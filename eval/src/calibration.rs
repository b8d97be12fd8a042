//! Closing the loop between the GPU and the simulator: `gpuslice calibrate` fits the simulator
//! to what `gpuslice profile` measured, `gpuslice validate` checks its predictions against
//! measurements it was not fitted on.
//!
//! A calibration file (TOML) names the profile the latency models are fitted from and the
//! simulator's co-location parameters (`Contention`): each model's `interference` (controlled
//! MPS: slices slow each other through memory and L2), and for default MPS how SM shares follow
//! the batches' SM-bound fractions (`mps_share_exponent`) and how long latency-bound models wait
//! behind the others' kernels (`mps_launch_contention`). All are fitted by simulating the
//! measured co-location groups closed loop and minimizing the squared log error of each model's
//! p50 batch time.

use anyhow::{Context, Result, bail};
use comfy_table::Table;
use gpuslice_simulator::{Batching, ModelSetup, ServiceModel, Sharing, SimConfig, Simulator, secs_to_ns};
use gpuslice_traces::arrivals::{ModulatedRenewal, RateSchedule};
use gpuslice_traces::colocation::ColocationRow;
use gpuslice_traces::{LatencyModel, ProfileSet, Source};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The simulator's co-location parameters (see `SimConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contention {
    /// For models without their own value.
    pub interference: f64,
    /// By profile model name.
    #[serde(default)]
    pub interference_by_model: BTreeMap<String, f64>,
    /// Default-MPS launch contention: how much a batch slows per co-running batch (see `SimConfig`).
    pub mps_launch_contention: f64,
    /// By profile model name, its own launch contention (see `SimConfig`).
    #[serde(default)]
    pub mps_launch_contention_by_model: BTreeMap<String, f64>,
    /// How a default-MPS batch's share of the SMs falls with the number running (see `SimConfig`).
    pub mps_share_exponent: f64,
    /// Temporal sharing's wait when the GPU turns to another model's batch, ms (see
    /// `SimConfig::temporal_switch_ms`): measured live, not fitted from co-location groups.
    #[serde(default)]
    pub temporal_switch_ms: f64,
    /// Each request's time outside the GPU's kernels (host copies, hand-off to the worker), ms
    /// (see `SimConfig::hand_off_ms`): measured live, not fitted from co-location groups.
    #[serde(default)]
    pub hand_off_ms: f64,
}

impl std::fmt::Display for Contention {
    /// `interference 0.391 (densenet121 0.394, vgg16 0.131), default MPS: share exponent 0.945,
    /// launch contention 0.0004`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interference {:.3}", self.interference)?;
        if !self.interference_by_model.is_empty() {
            let by_model: Vec<String> = self.interference_by_model.iter().map(|(m, k)| format!("{m} {k:.3}")).collect();
            write!(f, " ({})", by_model.join(", "))?;
        }
        write!(
            f,
            ", default MPS: share exponent {:.3}, launch contention {:.4}",
            self.mps_share_exponent, self.mps_launch_contention
        )?;
        if !self.mps_launch_contention_by_model.is_empty() {
            let by_model: Vec<String> =
                self.mps_launch_contention_by_model.iter().map(|(m, c)| format!("{m} {c:.3}")).collect();
            write!(f, " ({})", by_model.join(", "))?;
        }
        if self.temporal_switch_ms > 0.0 {
            write!(f, ", temporal switch {} ms", self.temporal_switch_ms)?;
        }
        if self.hand_off_ms > 0.0 {
            write!(f, ", hand-off {} ms a request", self.hand_off_ms)?;
        }
        Ok(())
    }
}

impl Contention {
    /// The interference of the profiled model `model`: its own where fitted, else the default.
    pub fn interference_of(&self, model: &str) -> f64 {
        self.interference_by_model.get(model).copied().unwrap_or(self.interference)
    }

    /// The parameters fitted to the first H100 trio (bench/results/2026-11-23-h100-colocation.csv),
    /// used by scenarios that name no calibration.
    pub fn first_h100_trio() -> Contention {
        Contention {
            interference: gpuslice_simulator::H100_INTERFERENCE,
            interference_by_model: BTreeMap::new(),
            mps_launch_contention: gpuslice_simulator::H100_MPS_LAUNCH_CONTENTION,
            mps_launch_contention_by_model: BTreeMap::new(),
            mps_share_exponent: gpuslice_simulator::H100_MPS_SHARE_EXPONENT,
            temporal_switch_ms: 0.0,
            hand_off_ms: 0.0,
        }
    }

    /// Nothing shared: models alone.
    fn none() -> Contention {
        Contention {
            interference: 0.0,
            interference_by_model: BTreeMap::new(),
            mps_launch_contention: 0.0,
            mps_launch_contention_by_model: BTreeMap::new(),
            mps_share_exponent: gpuslice_simulator::H100_MPS_SHARE_EXPONENT,
            temporal_switch_ms: 0.0,
            hand_off_ms: 0.0,
        }
    }

    /// A simulator configuration with these parameters (per-model values keyed as given).
    pub fn config(&self, sharing: Sharing, seed: u64) -> SimConfig {
        SimConfig {
            sharing,
            interference: self.interference,
            interference_by_model: self.interference_by_model.clone(),
            mps_launch_contention: self.mps_launch_contention,
            mps_launch_contention_by_model: self.mps_launch_contention_by_model.clone(),
            mps_share_exponent: self.mps_share_exponent,
            temporal_switch_ms: self.temporal_switch_ms,
            hand_off_ms: self.hand_off_ms,
            seed,
            ..SimConfig::default()
        }
    }
}

/// What `calibrate` saves and scenarios load (`calibration = "..."`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationFile {
    /// Profile CSV (relative to this file) or `builtin:NAME`.
    pub profile: String,
    /// The co-location parameters fitted.
    #[serde(flatten)]
    pub contention: Contention,
    /// The co-location groups the parameters were fitted on.
    #[serde(default)]
    pub fitted_on: Vec<String>,
    /// Per model, how well the latency form fits the profile (informational).
    #[serde(default)]
    pub fit: BTreeMap<String, FitSummary>,
}

/// How well the latency form fits one model's profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitSummary {
    /// Root-mean-square relative error over the profile's points.
    pub rms_rel_error: f64,
    /// Largest relative error.
    pub max_rel_error: f64,
    /// The fitted exponent of the GPU% term.
    pub exponent: f64,
}

/// The profile of runs that name no calibration.
pub const DEFAULT_PROFILE: &str = "builtin:h100-cudagraph";

/// A loaded calibration: where its profile is, and the co-location parameters.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// Where it was loaded from (a path, or `builtin:NAME`).
    pub origin: String,
    /// Its profile: a CSV path relative to `profile_base`, or `builtin:NAME`.
    pub profile: String,
    /// The folder the profile path is taken from.
    pub profile_base: PathBuf,
    /// The co-location parameters.
    pub contention: Contention,
    /// The co-location groups they were fitted on.
    pub fitted_on: Vec<String>,
}

impl Calibration {
    /// What runs without a calibration use: the `h100-cudagraph` profile with the first H100
    /// trio's co-location parameters (usable without a GPU).
    pub fn first_h100() -> Calibration {
        Calibration {
            origin: "builtin:h100-cudagraph with the first H100 trio's co-location".into(),
            profile: DEFAULT_PROFILE.into(),
            profile_base: PathBuf::from("."),
            contention: Contention::first_h100_trio(),
            fitted_on: Vec::new(),
        }
    }

    /// Reads a calibration file (`builtin:NAME` or a path relative to `base_dir`).
    pub fn load(spec: &str, base_dir: &Path) -> Result<Calibration> {
        let source = Source::load(spec, base_dir).context("calibration")?;
        let file: CalibrationFile = source.parse_toml().context("calibration")?;
        let c = &file.contention;
        let values = [
            ("interference", &c.interference),
            ("mps_launch_contention", &c.mps_launch_contention),
            ("mps_share_exponent", &c.mps_share_exponent),
            ("temporal_switch_ms", &c.temporal_switch_ms),
            ("hand_off_ms", &c.hand_off_ms),
        ]
        .into_iter()
        .chain(
            c.interference_by_model
                .iter()
                .chain(&c.mps_launch_contention_by_model)
                .map(|(model, v)| (model.as_str(), v)),
        );
        for (what, value) in values {
            if !(value.is_finite() && *value >= 0.0) {
                bail!("calibration {}: {what} must be >= 0, got {value}", source.name);
            }
        }
        let profile_base = match Path::new(&source.name).parent() {
            Some(dir) if !spec.starts_with(gpuslice_traces::source::BUILTIN_PREFIX) => dir.to_path_buf(),
            _ => base_dir.to_path_buf(),
        };
        Ok(Calibration {
            origin: source.name,
            profile: file.profile,
            profile_base,
            contention: file.contention,
            fitted_on: file.fitted_on,
        })
    }

    /// The calibration's profile, read.
    pub fn profile_source(&self) -> Result<Source> {
        Source::load(&self.profile, &self.profile_base)
            .with_context(|| format!("calibration {}: its profile", self.origin))
    }

    /// The calibration's profile, loaded.
    pub fn profile_set(&self) -> Result<ProfileSet> {
        Ok(ProfileSet::parse(&self.profile_source()?)?)
    }
}

/// Reads a co-location CSV written by `gpuslice profile --colocate`.
pub fn read_colocation(spec: &str) -> Result<Vec<ColocationRow>> {
    let source = gpuslice_traces::Source::load(spec, Path::new("."))?;
    let name = &source.name;
    let mut reader = csv::Reader::from_reader(source.text.as_bytes());
    let mut rows = Vec::new();
    for (i, row) in reader.deserialize().enumerate() {
        let line = i + 2;
        let row: ColocationRow = row.with_context(|| format!("{name}: line {line} is malformed"))?;
        if !(row.gpu_pct > 0.0 && row.gpu_pct <= 100.0) {
            bail!("{name}: line {line}: gpu_pct must be in (0, 100], got {}", row.gpu_pct);
        }
        if !(1..=gpuslice_simulator::MAX_BATCH).contains(&row.batch) {
            bail!("{name}: line {line}: batch must be in 1..={}, got {}", gpuslice_simulator::MAX_BATCH, row.batch);
        }
        let times = [("p50_ms", row.p50_ms), ("p99_ms", row.p99_ms), ("solo_p50_ms", row.solo_p50_ms)];
        for (what, ms) in times {
            if let Some(problem) = gpuslice_traces::source::batch_ms_problem(ms) {
                bail!("{name}: line {line}: {what} {problem}");
            }
        }
        rows.push(row);
    }
    for group in groups(&rows) {
        if let Some(problem) = group.placement_problem() {
            bail!("{name}: group {}: {problem}", group.label);
        }
    }
    Ok(rows)
}

/// A measured co-location group: its placements (by row) and how the GPU was shared.
#[derive(Debug, Clone)]
pub struct Group {
    /// The group's label: its placements joined by `+`.
    pub label: String,
    /// One row per model of the group.
    pub rows: Vec<ColocationRow>,
}

impl Group {
    /// Why the group's rows are not one per placement its label names (`MODEL:GPU%:BATCH`
    /// joined by `+`), if they are not: a duplicated or foreign row would move the fit.
    fn placement_problem(&self) -> Option<String> {
        let mut named: Vec<(String, f64, u32)> = Vec::new();
        for placement in self.label.split('+') {
            let parts: Vec<&str> = placement.split(':').collect();
            let parsed = match parts[..] {
                [model, pct, batch] => pct.parse().ok().zip(batch.parse().ok()).map(|(p, b)| (model.to_string(), p, b)),
                _ => None,
            };
            match parsed {
                Some(p) => named.push(p),
                None => return Some(format!("{placement:?} is not MODEL:GPU%:BATCH")),
            }
        }
        for row in &self.rows {
            let found = named.iter().position(|(m, p, b)| *m == row.model && *p == row.gpu_pct && *b == row.batch);
            match found {
                Some(k) => drop(named.swap_remove(k)),
                None => {
                    return Some(format!(
                        "a row for {}:{}:{} that the group does not name, or names fewer times",
                        row.model, row.gpu_pct, row.batch
                    ));
                }
            }
        }
        let missing: Vec<String> = named.iter().map(|(m, p, b)| format!("{m}:{p}:{b}")).collect();
        (!missing.is_empty()).then(|| format!("no row for {}", missing.join(", ")))
    }

    /// Every model at 100%: default MPS; otherwise each model is held to its slice.
    pub fn sharing(&self) -> Sharing {
        if self.rows.iter().all(|r| r.gpu_pct >= 100.0) { Sharing::DefaultMps } else { Sharing::Spatial }
    }
}

/// The groups of a co-location file, by label.
pub fn groups(rows: &[ColocationRow]) -> Vec<Group> {
    let mut by_label: BTreeMap<&str, Vec<ColocationRow>> = BTreeMap::new();
    for r in rows {
        by_label.entry(&r.group).or_default().push(r.clone());
    }
    by_label.into_iter().map(|(label, rows)| Group { label: label.to_string(), rows }).collect()
}

/// Simulated seconds of a closed-loop run, and the start-up left out of it.
const CLOSED_LOOP_S: f64 = 2.0;
const WARMUP_S: f64 = 0.3;

/// Predicted batch times (p50, p99 in ms) of models running closed loop together: each always
/// has a full batch waiting, as in `gpuslice profile`.
pub fn simulate_closed_loop(
    placements: &[(Arc<LatencyModel>, f64, u32)],
    sharing: Sharing,
    contention: &Contention,
    seed: u64,
) -> Result<Vec<(f64, f64)>> {
    let config = SimConfig { drop_after_ms: Some(1000.0), ..contention.config(sharing, seed) };
    let setups = placements
        .iter()
        .enumerate()
        .map(|(i, (latency, gpu_pct, batch))| {
            // Three times what the slice serves alone: the queue never runs dry.
            let rate = 3.0 * *batch as f64 * 1000.0 / latency.p50_ms(*batch, *gpu_pct);
            let schedule = RateSchedule::constant(rate, Some(CLOSED_LOOP_S))?;
            let arrivals = ModulatedRenewal::new(schedule, 1.0, seed + i as u64)?;
            Ok(ModelSetup {
                name: latency.model.clone(),
                slo_ms: gpuslice_simulator::MAX_LATENCY_MS,
                service: ServiceModel::Calibrated { latency: latency.clone(), jitter: true },
                allocation: Batching::full(*batch, 0.0).at(*gpu_pct),
                arrivals: Box::new(arrivals),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut sim = Simulator::new(config, setups)?;
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); placements.len()];
    let step = 0.02;
    let mut t = step;
    while t <= CLOSED_LOOP_S + 1e-9 {
        sim.run_until(secs_to_ns(t));
        for (i, interval) in sim.take_interval().into_iter().enumerate() {
            if t > WARMUP_S {
                samples[i].extend(interval.batches.iter().map(|b| b.exec_ms));
            }
        }
        t += step;
    }
    samples
        .into_iter()
        .zip(placements)
        .map(|(mut times, (latency, ..))| {
            if times.is_empty() {
                bail!("{}: no batch completed in the simulated run", latency.model);
            }
            times.sort_by(f64::total_cmp);
            let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
            Ok((at(0.5), at(0.99)))
        })
        .collect()
}

/// The latency models of a group's placements, or which model the profile lacks.
fn placements(
    group: &Group,
    latency: &BTreeMap<String, Arc<LatencyModel>>,
) -> Result<Vec<(Arc<LatencyModel>, f64, u32)>> {
    group
        .rows
        .iter()
        .map(|r| {
            let model = latency
                .get(&r.model)
                .with_context(|| format!("group {}: the profile has no model {:?}", group.label, r.model))?;
            Ok((model.clone(), r.gpu_pct, r.batch))
        })
        .collect()
}

/// Predicted against measured p50 of every model of `groups`.
pub struct GroupPrediction {
    /// The group's label.
    pub group: String,
    /// The model.
    pub model: String,
    /// Its GPU% in the group.
    pub gpu_pct: f64,
    /// Its batch size.
    pub batch: u32,
    /// Measured median GPU time per batch, ms.
    pub measured_p50_ms: f64,
    /// The simulator's median, ms.
    pub predicted_p50_ms: f64,
    /// Measured 99th percentile, ms.
    pub measured_p99_ms: f64,
    /// The simulator's 99th percentile, ms.
    pub predicted_p99_ms: f64,
}

impl GroupPrediction {
    /// Relative error of the predicted median (positive: predicted slower).
    pub fn p50_error(&self) -> f64 {
        self.predicted_p50_ms / self.measured_p50_ms - 1.0
    }
}

/// Runs every group closed loop in the simulator with these latency models and contention, and returns each model's prediction beside the measurement.
pub fn predict_groups(
    groups: &[Group],
    latency: &BTreeMap<String, Arc<LatencyModel>>,
    contention: &Contention,
) -> Result<Vec<GroupPrediction>> {
    let mut out = Vec::new();
    for group in groups {
        let predicted = simulate_closed_loop(&placements(group, latency)?, group.sharing(), contention, 1)?;
        for (r, (p50, p99)) in group.rows.iter().zip(predicted) {
            out.push(GroupPrediction {
                group: group.label.clone(),
                model: r.model.clone(),
                gpu_pct: r.gpu_pct,
                batch: r.batch,
                measured_p50_ms: r.p50_ms,
                predicted_p50_ms: p50,
                measured_p99_ms: r.p99_ms,
                predicted_p99_ms: p99,
            });
        }
    }
    Ok(out)
}

/// Sum of squared log errors of the predicted p50s (of `only` this model's rows, when given).
fn loss(
    groups: &[Group],
    latency: &BTreeMap<String, Arc<LatencyModel>>,
    contention: &Contention,
    only: Option<&str>,
) -> Result<f64> {
    Ok(predict_groups(groups, latency, contention)?
        .iter()
        .filter(|p| only.is_none_or(|m| m == p.model))
        .map(|p| (p.predicted_p50_ms / p.measured_p50_ms).ln().powi(2))
        .sum())
}

/// The value in [lo, hi] minimizing `f`: a coarse scan, then golden-section search around the best.
fn minimize_1d(lo: f64, hi: f64, mut f: impl FnMut(f64) -> Result<f64>) -> Result<f64> {
    const SCAN: usize = 24;
    let step = (hi - lo) / SCAN as f64;
    let mut best = (lo, f64::INFINITY);
    for i in 0..=SCAN {
        let x = lo + step * i as f64;
        let v = f(x)?;
        if v < best.1 {
            best = (x, v);
        }
    }
    let (mut a, mut b) = ((best.0 - step).max(lo), (best.0 + step).min(hi));
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..20 {
        let (x1, x2) = (b - ratio * (b - a), a + ratio * (b - a));
        if f(x1)? < f(x2)? {
            b = x2;
        } else {
            a = x1;
        }
    }
    Ok((a + b) / 2.0)
}

/// The point of the box `lo`..`hi` minimizing `f`, by argmin's Nelder-Mead from `start` (simplex
/// steps of a tenth of the box; `f` is evaluated at points clamped to the box), to `max_iters`
/// iterations or a simplex whose values spread less than 1e-9.
fn minimize_nelder_mead<const N: usize>(
    start: [f64; N],
    lo: [f64; N],
    hi: [f64; N],
    max_iters: u64,
    f: impl Fn([f64; N]) -> Result<f64>,
) -> Result<[f64; N]> {
    struct Boxed<F, const N: usize> {
        f: F,
        lo: [f64; N],
        hi: [f64; N],
    }
    impl<F, const N: usize> Boxed<F, N> {
        fn clamp(&self, p: &[f64]) -> [f64; N] {
            std::array::from_fn(|i| p[i].clamp(self.lo[i], self.hi[i]))
        }
    }
    impl<F: Fn([f64; N]) -> Result<f64>, const N: usize> argmin::core::CostFunction for Boxed<F, N> {
        type Param = Vec<f64>;
        type Output = f64;
        fn cost(&self, p: &Vec<f64>) -> Result<f64, argmin::core::Error> {
            (self.f)(self.clamp(p))
        }
    }
    let mut simplex = vec![start.to_vec()];
    for i in 0..N {
        let mut x = start;
        let step = (hi[i] - lo[i]) / 10.0;
        x[i] = if x[i] + step <= hi[i] { x[i] + step } else { x[i] - step };
        simplex.push(x.to_vec());
    }
    let problem = Boxed { f, lo, hi };
    let solver = argmin::solver::neldermead::NelderMead::new(simplex).with_sd_tolerance(1e-9)?;
    let result = argmin::core::Executor::new(problem, solver).configure(|state| state.max_iters(max_iters)).run()?;
    let best = result.state().best_param.as_ref().context("Nelder-Mead returned no point")?;
    Ok(result.problem().problem.as_ref().context("Nelder-Mead kept no problem")?.clamp(best))
}

/// Fits, one model at a time, the per-model value `values` picks out of `contention` (in
/// [0, `most`]) to the p50s of that model in the `groups` it ran in.
fn fit_per_model(
    groups: &[Group],
    latency: &BTreeMap<String, Arc<LatencyModel>>,
    contention: &mut Contention,
    most: f64,
    values: impl Fn(&mut Contention) -> &mut BTreeMap<String, f64>,
) -> Result<()> {
    let mut models: Vec<&str> = groups.iter().flat_map(|g| g.rows.iter().map(|r| r.model.as_str())).collect();
    models.sort_unstable();
    models.dedup();
    for model in models {
        let its: Vec<Group> = groups.iter().filter(|g| g.rows.iter().any(|r| r.model == model)).cloned().collect();
        let value = minimize_1d(0.0, most, |v| {
            let mut trial = contention.clone();
            values(&mut trial).insert(model.to_string(), v);
            loss(&its, latency, &trial, Some(model))
        })?;
        values(contention).insert(model.to_string(), value);
    }
    Ok(())
}

/// What `gpuslice calibrate` fits from.
pub struct CalibrateOptions<'a> {
    /// The profile (a path, or `builtin:NAME`).
    pub profile: &'a str,
    /// The co-location file (`gpuslice profile --colocate`).
    pub colocation: &'a str,
    /// Only groups of at most this many models are fitted on (the larger ones are left to `validate`).
    pub fit_group_size: usize,
    /// Where the fitted calibration TOML goes.
    pub out: &'a Path,
    /// Fit the default-MPS share exponent and launch contention together (Nelder-Mead from the
    /// shipped H100 values) instead of one after the other.
    pub joint: bool,
    /// `Contention::temporal_switch_ms`, as measured live (kept in the file as given).
    pub temporal_switch_ms: f64,
    /// `Contention::hand_off_ms`, as measured live (kept in the file as given).
    pub hand_off_ms: f64,
}

/// Fits the latency models, then each model's `interference` on the controlled groups and the
/// default-MPS share exponent and launch contention on the default-MPS groups; prints the fit
/// and saves the file.
pub fn calibrate(o: &CalibrateOptions) -> Result<CalibrationFile> {
    let set = ProfileSet::parse(&Source::load(o.profile, Path::new("."))?)?;
    let fitted = LatencyModel::fit_all(&set)?;
    println!("{}", crate::output::fit_table(&set, &fitted));
    let latency: BTreeMap<String, Arc<LatencyModel>> =
        fitted.iter().map(|(k, v)| (k.clone(), Arc::new(v.clone()))).collect();
    let fit_groups: Vec<Group> =
        groups(&read_colocation(o.colocation)?).into_iter().filter(|g| g.rows.len() <= o.fit_group_size).collect();
    let (controlled, default_mps): (Vec<Group>, Vec<Group>) =
        fit_groups.iter().cloned().partition(|g| g.sharing() == Sharing::Spatial);
    if controlled.is_empty() || default_mps.is_empty() {
        bail!(
            "{}: fitting needs controlled and default-MPS groups of at most {} models; found {} and {}",
            o.colocation,
            o.fit_group_size,
            controlled.len(),
            default_mps.len()
        );
    }
    // In a closed loop every co-runner always runs, so each model's slowdown under controlled
    // sharing depends on its own interference only: one 1-D fit per model measured co-located.
    let mut contention = Contention::none();
    fit_per_model(&controlled, &latency, &mut contention, 3.0, |c| &mut c.interference_by_model)?;
    let mut ks: Vec<f64> = contention.interference_by_model.values().copied().collect();
    ks.sort_by(f64::total_cmp);
    contention.interference = ks[ks.len() / 2];
    // Default MPS: first how the SMs are shared (the exponent, without launch contention), then
    // the launch contention on top. (Fitting both jointly took minutes and found no contention
    // on the H100 pairs.)
    let at = |exponent: f64, c: f64| Contention {
        mps_launch_contention: c,
        mps_share_exponent: exponent,
        ..contention.clone()
    };
    let started = std::time::Instant::now();
    let (exponent, launch) = if o.joint {
        let start = [gpuslice_simulator::H100_MPS_SHARE_EXPONENT, gpuslice_simulator::H100_MPS_LAUNCH_CONTENTION];
        let [e, c] = minimize_nelder_mead(start, [0.25, 0.0], [4.0, 8.0], 200, |[e, c]| {
            loss(&default_mps, &latency, &at(e, c), None)
        })?;
        (e, c)
    } else {
        let exponent = minimize_1d(0.25, 4.0, |e| loss(&default_mps, &latency, &at(e, 0.0), None))?;
        (exponent, minimize_1d(0.0, 8.0, |c| loss(&default_mps, &latency, &at(exponent, c), None))?)
    };
    contention =
        Contention { temporal_switch_ms: o.temporal_switch_ms, hand_off_ms: o.hand_off_ms, ..at(exponent, launch) };
    // Then each model's own launch contention, on the default-MPS groups it ran in: a light
    // model waits behind heavy kernels far more than heavy models behind each other. Two
    // rounds, as each model's fit moves the others' co-runners.
    for _ in 0..2 {
        fit_per_model(&default_mps, &latency, &mut contention, 8.0, |c| &mut c.mps_launch_contention_by_model)?;
    }
    tracing::info!(
        joint = o.joint,
        seconds = started.elapsed().as_secs_f64(),
        loss = loss(&default_mps, &latency, &contention, None)?,
        "default-MPS terms fitted (loss: sum of squared log errors of p50 over the default-MPS groups)"
    );
    println!(
        "{contention} (interference from {} controlled groups, the default-MPS terms from {} groups)",
        controlled.len(),
        default_mps.len()
    );
    let predictions = predict_groups(&fit_groups, &latency, &contention)?;
    println!("{}", group_table(&predictions, &[]));
    let profile = match o.profile.strip_prefix(gpuslice_traces::source::BUILTIN_PREFIX) {
        Some(_) => o.profile.to_string(),
        None => relative_to(Path::new(o.profile), o.out.parent().unwrap_or(Path::new("."))),
    };
    let file = CalibrationFile {
        profile,
        contention,
        fitted_on: fit_groups.iter().map(|g| g.label.clone()).collect(),
        fit: fitted
            .iter()
            .map(|(name, m)| {
                let summary = FitSummary {
                    rms_rel_error: m.fit.rms_rel_error,
                    max_rel_error: m.fit.max_rel_error,
                    exponent: m.parametric.p,
                };
                (name.clone(), summary)
            })
            .collect(),
    };
    if let Some(dir) = o.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut flags = String::new();
    if o.joint {
        flags += " --joint";
    }
    if o.temporal_switch_ms > 0.0 {
        flags += &format!(" --temporal-switch-ms {}", o.temporal_switch_ms);
    }
    if o.hand_off_ms > 0.0 {
        flags += &format!(" --hand-off-ms {}", o.hand_off_ms);
    }
    let text = format!(
        "# Written by `gpuslice calibrate --profile {} --colocation {} --fit-group-size {}{}`.\n{}",
        o.profile,
        o.colocation,
        o.fit_group_size,
        flags,
        toml::to_string(&file)?
    );
    std::fs::write(o.out, text).with_context(|| format!("cannot write {}", o.out.display()))?;
    println!("calibration written to {}", o.out.display());
    Ok(file)
}

/// `path` as seen from `dir` when it lies below it, else made absolute.
fn relative_to(path: &Path, dir: &Path) -> String {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (path, dir) = (absolute(path), absolute(dir));
    path.strip_prefix(&dir).unwrap_or(&path).display().to_string()
}

fn percent(x: f64) -> String {
    format!("{:+.1}%", x * 100.0)
}

/// Predicted against measured per co-located model; groups in `fitted_on` are marked.
pub fn group_table(predictions: &[GroupPrediction], fitted_on: &[String]) -> Table {
    let mut table = crate::output::table(vec![
        "group",
        "model",
        "GPU%",
        "batch",
        "measured p50",
        "predicted p50",
        "error",
        "measured p99",
        "predicted p99",
        "error",
    ]);
    for p in predictions {
        let fitted = if fitted_on.contains(&p.group) { " (fitted on)" } else { "" };
        table.add_row(vec![
            format!("{}{fitted}", p.group),
            p.model.clone(),
            format!("{:.0}", p.gpu_pct),
            p.batch.to_string(),
            format!("{:.3}", p.measured_p50_ms),
            format!("{:.3}", p.predicted_p50_ms),
            percent(p.p50_error()),
            format!("{:.3}", p.measured_p99_ms),
            format!("{:.3}", p.predicted_p99_ms),
            percent(p.predicted_p99_ms / p.measured_p99_ms - 1.0),
        ]);
    }
    table
}

/// One profile point left out of the fit, predicted by the simulator.
#[derive(Debug, Clone, Serialize)]
pub struct HeldOutPoint {
    /// The model.
    pub model: String,
    /// GPU% of the point.
    pub gpu_pct: f64,
    /// Batch size of the point.
    pub batch: u32,
    /// Measured median, ms.
    pub measured_p50_ms: f64,
    /// Predicted median, ms.
    pub predicted_p50_ms: f64,
    /// Relative error of the median.
    pub p50_error: f64,
    /// Measured 99th percentile, ms.
    pub measured_p99_ms: f64,
    /// Predicted 99th percentile, ms.
    pub predicted_p99_ms: f64,
    /// Relative error of the 99th percentile.
    pub p99_error: f64,
}

/// Refits every model without the `held_out` GPU% levels and simulates each held-out point
/// (the model alone, closed loop at that GPU% and batch).
pub fn validate_held_out(set: &ProfileSet, held_out: &[f64]) -> Result<Vec<HeldOutPoint>> {
    if let Some(bad) = held_out.iter().find(|h| !(h.is_finite() && **h > 0.0 && **h <= 100.0)) {
        bail!("--hold-out: GPU% must be in (0, 100], got {bad}");
    }
    let is_held_out = |g: f64| held_out.iter().any(|h| (h - g).abs() < 1e-9);
    if let Some(level) =
        held_out.iter().find(|&&h| !set.models.values().any(|p| p.points.iter().any(|q| (q.gpu_pct - h).abs() < 1e-9)))
    {
        bail!("--hold-out: the profile has no point at GPU% {level}");
    }
    let mut training = set.clone();
    for profile in training.models.values_mut() {
        profile.points.retain(|p| !is_held_out(p.gpu_pct));
        if profile.points.is_empty() {
            bail!("{}: nothing left to fit once GPU% {held_out:?} are held out", profile.model);
        }
    }
    let fitted = LatencyModel::fit_all(&training)?;
    let mut out = Vec::new();
    for (name, profile) in &set.models {
        let latency = Arc::new(fitted[name].clone());
        for point in profile.points.iter().filter(|p| is_held_out(p.gpu_pct)) {
            let placement = [(latency.clone(), point.gpu_pct, point.batch)];
            let (p50, p99) = simulate_closed_loop(&placement, Sharing::Spatial, &Contention::none(), 1)?[0];
            out.push(HeldOutPoint {
                model: name.clone(),
                gpu_pct: point.gpu_pct,
                batch: point.batch,
                measured_p50_ms: point.p50_ms,
                predicted_p50_ms: p50,
                p50_error: p50 / point.p50_ms - 1.0,
                measured_p99_ms: point.p99_ms,
                predicted_p99_ms: p99,
                p99_error: p99 / point.p99_ms - 1.0,
            });
        }
    }
    Ok(out)
}

/// Per model: held-out points, and the largest p50 and p99 errors.
pub fn held_out_table(points: &[HeldOutPoint]) -> Table {
    let mut table = crate::output::table(vec![
        "model",
        "points",
        "median |p50 error|",
        "max |p50 error|",
        "median |p99 error|",
        "max |p99 error|",
        "worst p50 at (GPU%, batch)",
    ]);
    let mut by_model: BTreeMap<&str, Vec<&HeldOutPoint>> = BTreeMap::new();
    for p in points {
        by_model.entry(&p.model).or_default().push(p);
    }
    for (model, pts) in by_model {
        let stats = |err: fn(&HeldOutPoint) -> f64| {
            let mut e: Vec<f64> = pts.iter().map(|p| err(p).abs()).collect();
            e.sort_by(f64::total_cmp);
            (e[e.len() / 2], e[e.len() - 1])
        };
        let (p50_median, p50_max) = stats(|p| p.p50_error);
        let (p99_median, p99_max) = stats(|p| p.p99_error);
        let worst = pts.iter().max_by(|a, b| a.p50_error.abs().total_cmp(&b.p50_error.abs())).expect("points");
        table.add_row(vec![
            model.to_string(),
            pts.len().to_string(),
            format!("{:.1}%", p50_median * 100.0),
            format!("{:.1}%", p50_max * 100.0),
            format!("{:.1}%", p99_median * 100.0),
            format!("{:.1}%", p99_max * 100.0),
            format!("({:.0}, {}): {}", worst.gpu_pct, worst.batch, percent(worst.p50_error)),
        ]);
    }
    table
}

/// `gpuslice validate`: held-out GPU% of `profile`, then the co-located groups predicted with
/// `calibration`'s parameters (and the latency models of its profile).
pub fn validate(
    profile: &str,
    hold_out: &[f64],
    colocation: &str,
    calibration: &str,
    out: Option<&Path>,
) -> Result<()> {
    let set = ProfileSet::parse(&Source::load(profile, Path::new("."))?)?;
    let held_out = validate_held_out(&set, hold_out)?;
    let levels: Vec<String> = hold_out.iter().map(f64::to_string).collect();
    println!("(a) GPU% {} left out of the fit, each point simulated alone, closed loop:", levels.join(", "));
    println!("{}", held_out_table(&held_out));
    let calibration = Calibration::load(calibration, Path::new("."))?;
    let latency: BTreeMap<String, Arc<LatencyModel>> =
        LatencyModel::fit_all(&calibration.profile_set()?)?.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
    let fitted_on = &calibration.fitted_on;
    let groups = groups(&read_colocation(colocation)?);
    let predictions = predict_groups(&groups, &latency, &calibration.contention)?;
    println!("(b) co-located groups, closed loop ({} from {}):", calibration.contention, calibration.origin);
    println!("{}", group_table(&predictions, fitted_on));
    let unseen: Vec<&GroupPrediction> = predictions.iter().filter(|p| !fitted_on.contains(&p.group)).collect();
    if let Some(worst) = unseen.iter().max_by(|a, b| a.p50_error().abs().total_cmp(&b.p50_error().abs())) {
        println!(
            "groups not fitted on: {} models, largest |p50 error| {} ({} in {})",
            unseen.len(),
            percent(worst.p50_error()),
            worst.model,
            worst.group
        );
    }
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)?;
        crate::output::write_csv(&dir.join("held-out.csv"), &held_out)?;
        let rows = predictions.iter().map(|p| ColocatedRow {
            group: &p.group,
            fitted_on: fitted_on.contains(&p.group),
            model: &p.model,
            gpu_pct: p.gpu_pct,
            batch: p.batch,
            measured_p50_ms: p.measured_p50_ms,
            predicted_p50_ms: p.predicted_p50_ms,
            p50_error: p.p50_error(),
            measured_p99_ms: p.measured_p99_ms,
            predicted_p99_ms: p.predicted_p99_ms,
        });
        crate::output::write_csv(&dir.join("colocated.csv"), rows)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct ColocatedRow<'a> {
    group: &'a str,
    fitted_on: bool,
    model: &'a str,
    gpu_pct: f64,
    batch: u32,
    measured_p50_ms: f64,
    predicted_p50_ms: f64,
    p50_error: f64,
    measured_p99_ms: f64,
    predicted_p99_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colocation_rows_must_be_one_per_placement_of_their_group() {
        let shipped = Source::load("builtin:h200-colocation", Path::new(".")).unwrap().text.to_string();
        let second = shipped.lines().nth(1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let read = |text: String| {
            let path = dir.path().join("colocation.csv");
            std::fs::write(&path, text).unwrap();
            read_colocation(path.to_str().unwrap()).map_err(|e| e.to_string())
        };
        assert!(read(shipped.clone()).is_ok());
        let duplicated = read(format!("{shipped}{second}\n")).unwrap_err();
        assert!(duplicated.contains("densenet121:50:8 that the group does not name"), "{duplicated}");
        let foreign = read(shipped.replacen("+vgg16:50:8,densenet121,", "+vgg16:50:8,resnet50,", 1)).unwrap_err();
        assert!(foreign.contains("resnet50:50:8"), "{foreign}");
        let missing = read(shipped.replacen(&format!("{second}\n"), "", 1)).unwrap_err();
        assert!(missing.contains("no row for densenet121:50:8"), "{missing}");
        let tiny = read(shipped.replacen(",4.599,", ",1e-300,", 1)).unwrap_err();
        assert!(tiny.contains("line 2: p50_ms must be a batch time") && tiny.ends_with("got 1e-300"), "{tiny}");
    }

    #[test]
    fn nelder_mead_finds_the_bottom_of_a_tilted_valley_and_stays_in_its_box() {
        let valley = |[x, y]: [f64; 2]| Ok((x - 1.2).powi(2) + 10.0 * (y - 0.3 - 0.5 * x).powi(2));
        let [x, y] = minimize_nelder_mead([0.0, 0.0], [-5.0, -5.0], [5.0, 5.0], 500, valley).unwrap();
        assert!((x - 1.2).abs() < 1e-3 && (y - 0.9).abs() < 1e-3, "{x} {y}");
        // The minimum outside the box: its nearest corner.
        let [x, y] = minimize_nelder_mead([0.5, 0.5], [0.0, 0.0], [1.0, 1.0], 500, |[x, y]| Ok(-x - y)).unwrap();
        assert!(x > 0.999 && y > 0.999 && x <= 1.0 && y <= 1.0, "{x} {y}");
    }

    #[test]
    fn minimize_1d_finds_the_bottom_of_a_bowl() {
        let x = minimize_1d(0.0, 3.0, |x| Ok((x - 1.234).powi(2))).unwrap();
        assert!((x - 1.234).abs() < 1e-3, "{x}");
        let edge = minimize_1d(0.0, 3.0, Ok).unwrap();
        assert!(edge < 1e-3, "{edge}");
    }

    #[test]
    fn relative_paths_are_kept_below_the_calibration_folder() {
        assert_eq!(relative_to(Path::new("profiles/h100/grid.csv"), Path::new("profiles/h100")), "grid.csv");
        assert!(relative_to(Path::new("/elsewhere/grid.csv"), Path::new("profiles")).starts_with('/'));
    }
}
