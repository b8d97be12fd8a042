//! Scenario files (TOML): the GPU sharing mode, the profile, and per model its SLO, allocation
//! and arrivals. `scenarios/default.toml` is embedded and used when no file is given.

use crate::calibration::{Calibration, Contention};
use anyhow::{Context, Result, bail};
use gpuslice_policies::ModelContext;
use gpuslice_simulator::{Allocation, MAX_LATENCY_MS, ModelSetup, ReallocationCost, ServiceModel, Sharing, SimConfig};
use gpuslice_traces::{ArrivalProcess, ArrivalSpec, LatencyModel, ProfileSet, Source, TraceLibrary};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The scenario used when none is given.
pub const DEFAULT_SCENARIO: &str = include_str!("../../scenarios/default.toml");

fn default_interval() -> f64 {
    1.0
}
/// The profile of scenarios that name neither a profile nor a calibration.
fn default_true() -> bool {
    true
}
fn one_gpu() -> usize {
    1
}
fn default_reallocation() -> ReallocationCost {
    ReallocationCost::Standby { handover_us: 100.0 }
}

/// A scenario file (TOML): the models, their arrivals and SLOs, how the GPU is shared and how the run is controlled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Shown in tables and plots.
    pub name: String,
    /// Seed of every random draw: the same seed gives the same run.
    #[serde(default)]
    pub seed: u64,
    /// Arrivals stop after this many seconds (replayed traces stop at their end anyway).
    pub duration_s: Option<f64>,
    /// Seconds between two decisions of the policy (and the metrics' granularity).
    #[serde(default = "default_interval")]
    pub control_interval_s: f64,
    /// How the GPU is shared (temporal, default-mps or spatial) where the policy does not say.
    pub sharing: Sharing,
    /// A calibration file from `gpuslice calibrate` (path relative to the scenario file, or
    /// `builtin:h100-calibration`): the profile and the co-location parameters below.
    pub calibration: Option<String>,
    /// See `SimConfig::interference` (overrides the calibration's, per-model values included);
    /// without a calibration the default is the first H100 trio's fit.
    pub interference: Option<f64>,
    /// See `SimConfig::mps_launch_contention` (overrides the calibration's).
    pub mps_launch_contention: Option<f64>,
    /// Requests waiting longer than this are dropped (counted as SLO misses).
    pub drop_after_ms: Option<f64>,
    /// Calibration profile: a CSV path (relative to the scenario file) or `builtin:NAME`
    /// (overrides the calibration's; default `builtin:h100-cudagraph`).
    pub profile: Option<String>,
    /// Log-normal service-time spread matching the profile's p99/p50.
    #[serde(default = "default_true")]
    pub service_jitter: bool,
    /// What a reallocation costs (see `ReallocationCost`).
    #[serde(default = "default_reallocation")]
    pub reallocation: ReallocationCost,
    /// Control intervals per window of the `oracle` policy's plan (default 5).
    pub oracle_window_intervals: Option<usize>,
    /// GPUs of the node: each model is placed on one (`cluster::Placement`) and co-runs only
    /// with the models on its GPU, each GPU shared by its own policy instance.
    #[serde(default = "one_gpu")]
    pub gpus: usize,
    /// The models served.
    pub models: Vec<ModelEntry>,
}

/// One model of a scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Its name (a profile model name unless `profile_model` says otherwise).
    pub name: String,
    /// The profile's model name, when it differs from `name`.
    pub profile_model: Option<String>,
    /// Its latency SLO, ms.
    pub slo_ms: f64,
    /// Its GPU% under static slices (the `static` policy's, and adaptive policies' prior).
    pub gpu_pct: f64,
    /// Its largest batch.
    pub max_batch: u32,
    /// Queued requests that send a batch at once (Triton's smallest preferred batch size);
    /// unset: `max_batch` (a batch waits to be full or timed out).
    #[serde(default)]
    pub min_batch: Option<u32>,
    /// How long a batch waits to fill, ms.
    pub batch_timeout_ms: f64,
    /// Higher is more important when the GPU cannot meet every SLO.
    #[serde(default)]
    pub priority: u32,
    /// How its requests arrive.
    pub arrivals: ArrivalSpec,
}

impl ModelEntry {
    /// Its slice and batching as configured.
    fn allocation(&self) -> Allocation {
        Allocation {
            gpu_pct: self.gpu_pct,
            max_batch: self.max_batch,
            min_batch: self.min_batch.unwrap_or(self.max_batch),
            batch_timeout_ms: self.batch_timeout_ms,
        }
    }
}

/// The most models in a scenario.
pub const MAX_MODELS: usize = 256;
/// The most GPUs a scenario's node has.
pub const MAX_GPUS: usize = 64;
/// The longest `duration_s`: 30 days.
pub const MAX_DURATION_S: f64 = 30.0 * 86_400.0;
/// The shortest `control_interval_s`.
pub const MIN_CONTROL_INTERVAL_S: f64 = 1e-3;
/// The most arrivals a scenario may bring over its duration (rates at their peaks, recorded
/// traces counted): about 20 s of simulation, and, overloaded with nothing dropped, a queue of
/// under a gigabyte.
pub const MAX_EXPECTED_ARRIVALS: f64 = 2e8;

/// A scenario together with the folder its relative paths are taken from, and its calibration
/// resolved.
#[derive(Debug, Clone)]
pub struct LoadedScenario {
    /// The scenario as written.
    pub scenario: Scenario,
    /// The folder its relative paths are taken from.
    pub base_dir: PathBuf,
    /// Where it was loaded from (a path, or `builtin:default`).
    pub origin: String,
    /// The profile (`builtin:NAME` or a path below `profile_base`).
    pub profile: String,
    /// The folder a relative profile path is taken from.
    pub profile_base: PathBuf,
    /// Co-location parameters, per-model interference by profile model name.
    pub contention: Contention,
}

impl LoadedScenario {
    /// Reads `path`, or the embedded default when `None`.
    pub fn load(path: Option<&Path>) -> Result<LoadedScenario> {
        LoadedScenario::load_calibrated(path, None)
    }

    /// Reads `path` (the embedded default when `None`) with `calibration` (`builtin:NAME` or a
    /// path relative to the working directory) in place of the scenario's own, when given: the
    /// same scenario run on another GPU, or predicted for one.
    pub fn load_calibrated(path: Option<&Path>, calibration: Option<&str>) -> Result<LoadedScenario> {
        let (text, origin, base_dir) = match path {
            Some(path) => {
                let source = Source::read_file(path).context("cannot read the scenario")?;
                let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (source.text, source.name, base_dir)
            }
            None => (std::borrow::Cow::Borrowed(DEFAULT_SCENARIO), "builtin:default".to_string(), PathBuf::from(".")),
        };
        let mut scenario: Scenario =
            toml::from_str(&text).with_context(|| format!("scenario {origin} is malformed"))?;
        let mut calibration_base = base_dir.clone();
        if let Some(spec) = calibration {
            // The calibration brings its own profile, which a scenario's `profile` would override.
            scenario.calibration = Some(spec.to_string());
            scenario.profile = None;
            calibration_base = PathBuf::from(".");
        }
        LoadedScenario::resolve(scenario, &origin, base_dir, &calibration_base)
    }

    /// Parses scenario `text`; `origin` names it in errors, relative paths start at `base_dir`.
    pub fn from_text(text: &str, origin: &str, base_dir: PathBuf) -> Result<LoadedScenario> {
        let scenario: Scenario = toml::from_str(text).with_context(|| format!("scenario {origin} is malformed"))?;
        let calibration_base = base_dir.clone();
        LoadedScenario::resolve(scenario, origin, base_dir, &calibration_base)
    }

    /// Loads the scenario's calibration (a relative path taken from `calibration_base`) and
    /// applies the scenario's own overrides of it.
    fn resolve(scenario: Scenario, origin: &str, base_dir: PathBuf, calibration_base: &Path) -> Result<LoadedScenario> {
        let (mut profile, mut profile_base, mut contention) = match &scenario.calibration {
            Some(spec) => {
                let c = Calibration::load(spec, calibration_base).with_context(|| format!("scenario {origin}"))?;
                (c.profile, c.profile_base, c.contention)
            }
            None => {
                let c = Calibration::first_h100();
                (c.profile, base_dir.clone(), c.contention)
            }
        };
        if let Some(p) = &scenario.profile {
            (profile, profile_base) = (p.clone(), base_dir.clone());
        }
        if let Some(k) = scenario.interference {
            contention.interference = k;
            contention.interference_by_model.clear();
        }
        if let Some(c) = scenario.mps_launch_contention {
            contention.mps_launch_contention = c;
            contention.mps_launch_contention_by_model.clear();
        }
        let loaded =
            LoadedScenario { scenario, base_dir, origin: origin.to_string(), profile, profile_base, contention };
        loaded.validate()?;
        Ok(loaded)
    }

    /// The scenario scaled to a node of `copies` times its GPUs: `copies` of every model (the
    /// first keeps its name, the others are `NAME.2`, `NAME.3`, ...), each with its own
    /// arrivals (drawn with its own seed; a replayed trace replays the same times).
    pub fn replicated(&self, copies: usize) -> Result<LoadedScenario> {
        let s = &self.scenario;
        if copies == 0 || s.gpus * copies > MAX_GPUS || s.models.len() * copies > MAX_MODELS {
            bail!(
                "scenario {}: {copies} copies of {} models on {} GPU(s) would exceed {MAX_MODELS} models or {MAX_GPUS} GPUs",
                self.origin,
                s.models.len(),
                s.gpus
            );
        }
        let mut out = self.clone();
        out.scenario.gpus = s.gpus * copies;
        out.scenario.models = (1..=copies)
            .flat_map(|k| {
                s.models.iter().map(move |m| ModelEntry {
                    name: if k == 1 { m.name.clone() } else { format!("{}.{k}", m.name) },
                    profile_model: Some(m.profile_model.clone().unwrap_or_else(|| m.name.clone())),
                    ..m.clone()
                })
            })
            .collect();
        if copies > 1 {
            out.scenario.name = format!("{} x{copies} on {} GPUs", s.name, out.scenario.gpus);
        }
        out.validate()?;
        Ok(out)
    }

    /// Serves every model with `batching` (one max batch and batch wait for all, as a user
    /// configures a dynamic batcher), checked like the scenario's own.
    pub fn set_batching(&mut self, batching: crate::capacity::Batching) -> Result<()> {
        for m in &mut self.scenario.models {
            (m.max_batch, m.min_batch, m.batch_timeout_ms) =
                (batching.max_batch, Some(batching.min_batch), batching.batch_timeout_ms);
        }
        self.validate()
    }

    /// Multiplies every model's load by `factor` (see `ArrivalSpec::scaled`); the scenario's
    /// name says so, so tables and plots tell the runs apart.
    pub fn scale_load(&mut self, factor: f64) -> Result<()> {
        if !(factor.is_finite() && factor > 0.0) {
            bail!("scenario {}: load scale must be > 0, got {factor}", self.origin);
        }
        if factor != 1.0 {
            for m in &mut self.scenario.models {
                m.arrivals = m.arrivals.scaled(factor);
            }
            self.scenario.name = format!("{} (load x{factor})", self.scenario.name);
        }
        self.validate()
    }

    fn validate(&self) -> Result<()> {
        let s = &self.scenario;
        let origin = &self.origin;
        if s.models.is_empty() {
            bail!("scenario {origin}: no [[models]]");
        }
        if s.models.len() > MAX_MODELS {
            bail!("scenario {origin}: {} models, more than {MAX_MODELS}", s.models.len());
        }
        if !(1..=MAX_GPUS).contains(&s.gpus) {
            bail!("scenario {origin}: gpus must be in 1..={MAX_GPUS}, got {}", s.gpus);
        }
        if !(s.control_interval_s.is_finite() && (MIN_CONTROL_INTERVAL_S..=3600.0).contains(&s.control_interval_s)) {
            bail!(
                "scenario {origin}: control_interval_s must be in [{MIN_CONTROL_INTERVAL_S}, 3600], got {}",
                s.control_interval_s
            );
        }
        if let Some(d) = s.duration_s.filter(|d| !(d.is_finite() && *d > 0.0 && *d <= MAX_DURATION_S)) {
            bail!("scenario {origin}: duration_s must be in (0, {MAX_DURATION_S}], got {d}");
        }
        if let Some(w) = s.oracle_window_intervals.filter(|w| !(1..=10_000).contains(w)) {
            bail!("scenario {origin}: oracle_window_intervals must be in 1..=10000, got {w}");
        }
        let config = SimConfig {
            drop_after_ms: s.drop_after_ms,
            reallocation: s.reallocation,
            interference: self.contention.interference,
            mps_launch_contention: self.contention.mps_launch_contention,
            mps_share_exponent: self.contention.mps_share_exponent,
            ..SimConfig::default()
        };
        if let Some(problem) = config.problem() {
            bail!("scenario {origin}: {problem}");
        }
        let mut expected = 0.0;
        for (i, m) in s.models.iter().enumerate() {
            let allocation = m.allocation();
            if let Some(problem) = allocation.problem() {
                bail!("scenario {origin}: models[{i}] ({}): {problem}", m.name);
            }
            if !(m.slo_ms.is_finite() && m.slo_ms > 0.0 && m.slo_ms <= MAX_LATENCY_MS) {
                bail!(
                    "scenario {origin}: models[{i}] ({}): slo_ms must be in (0, {MAX_LATENCY_MS}], got {}",
                    m.name,
                    m.slo_ms
                );
            }
            if m.arrivals.peak_rate().is_some() && s.duration_s.is_none() {
                bail!(
                    "scenario {origin}: models[{i}] ({}): rate-driven arrivals never end by themselves: set duration_s",
                    m.name
                );
            }
            expected += m.arrivals.expected_at_rate(s.duration_s).unwrap_or(0.0);
        }
        self.within_work_bound(expected)?;
        let c = &self.contention;
        if !(c.interference.is_finite() && c.interference >= 0.0) {
            bail!("scenario {origin}: interference must be >= 0, got {}", c.interference);
        }
        if !(c.mps_launch_contention.is_finite() && c.mps_launch_contention >= 0.0) {
            bail!("scenario {origin}: mps_launch_contention must be >= 0, got {}", c.mps_launch_contention);
        }
        let mut seen = std::collections::HashSet::new();
        for (i, m) in s.models.iter().enumerate() {
            if let Some(problem) = gpuslice_control::model_name_problem(&m.name) {
                bail!("scenario {origin}: models[{i}]: {problem}");
            }
            if !seen.insert(&m.name) {
                bail!("scenario {origin}: models[{i}]: duplicate model name {:?}", m.name);
            }
        }
        Ok(())
    }

    /// The fitted latency models of the scenario's profile, by profile model name.
    pub fn latency_models(&self) -> Result<BTreeMap<String, LatencyModel>> {
        let source = Source::load(&self.profile, &self.profile_base)?;
        let profiles = ProfileSet::parse(&source)?;
        for (i, m) in self.scenario.models.iter().enumerate() {
            let wanted = m.profile_model.as_deref().unwrap_or(&m.name);
            profiles.model(wanted).with_context(|| format!("scenario {}: models[{i}] ({})", self.origin, m.name))?;
        }
        let fitted = LatencyModel::fit_all(&profiles)?;
        for (i, m) in self.scenario.models.iter().enumerate() {
            let best = fitted[m.profile_model.as_deref().unwrap_or(&m.name)].p99_ms(1, 100.0);
            if m.slo_ms < best {
                bail!(
                    "scenario {}: models[{i}] ({}): slo_ms {} cannot be met: the best achievable p99 is {best:.2} ms (batch 1 on the whole GPU)",
                    self.origin,
                    m.name,
                    m.slo_ms
                );
            }
        }
        Ok(fitted)
    }

    /// The calibration's per-model interference, by the scenario's model names.
    pub fn interference_by_model(&self) -> BTreeMap<String, f64> {
        self.by_scenario_names(&self.contention.interference_by_model)
    }

    /// A calibration's per-model values (by profiled model) by the scenario's model names.
    fn by_scenario_names(&self, by_profile: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
        self.scenario
            .models
            .iter()
            .filter_map(|m| {
                let k = by_profile.get(m.profile_model.as_deref().unwrap_or(&m.name))?;
                Some((m.name.clone(), *k))
            })
            .collect()
    }

    /// Where the scenario's traces are read from (and kept, once read).
    pub fn trace_library(&self) -> TraceLibrary {
        TraceLibrary::new(&self.base_dir)
    }

    /// Refuses a run of `expected` arrivals in all above `MAX_EXPECTED_ARRIVALS`, with the figure
    /// (what a run costs: the simulator does about 10 M events a second).
    fn within_work_bound(&self, expected: f64) -> Result<()> {
        if expected > MAX_EXPECTED_ARRIVALS {
            bail!(
                "scenario {}: its arrivals over duration_s come to up to {expected:.3e}, more than {MAX_EXPECTED_ARRIVALS:.0e}: lower the rates, scales, speedups or the duration",
                self.origin
            );
        }
        Ok(())
    }

    /// Every model's arrivals, drawn as `build` draws them, from traces in `library`: a
    /// replicated node draws them once more per replica without reading its traces again.
    pub fn arrivals(&self, library: &mut TraceLibrary) -> Result<Vec<Box<dyn ArrivalProcess>>> {
        let s = &self.scenario;
        // Recorded traces are counted here, where they are read (rates alone were checked at load).
        let mut expected = 0.0;
        for m in &s.models {
            expected += library.expected_arrivals(&m.arrivals, s.duration_s)?;
        }
        self.within_work_bound(expected)?;
        (s.models.iter().enumerate())
            .map(|(i, m)| {
                let what = format!("scenario {}: models[{i}] ({}).arrivals", self.origin, m.name);
                let seed = s.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64 + 1);
                Ok(library.build(&m.arrivals, seed, s.duration_s, &what)?)
            })
            .collect()
    }

    /// The simulator's inputs (with the scenario's sharing and allocations) and what a policy
    /// knows of each model.
    pub fn build(&self) -> Result<(SimConfig, Vec<ModelSetup>, Vec<ModelContext>)> {
        let s = &self.scenario;
        let latency = self.latency_models()?;
        let config = SimConfig {
            reallocation: s.reallocation,
            drop_after_ms: s.drop_after_ms,
            interference_by_model: self.interference_by_model(),
            mps_launch_contention_by_model: self.by_scenario_names(&self.contention.mps_launch_contention_by_model),
            ..self.contention.config(s.sharing, s.seed)
        };
        let arrivals = self.arrivals(&mut self.trace_library())?;
        let (mut setups, mut contexts) = (Vec::with_capacity(s.models.len()), Vec::with_capacity(s.models.len()));
        for (m, arrivals) in s.models.iter().zip(arrivals) {
            let model_latency = Arc::new(latency[m.profile_model.as_deref().unwrap_or(&m.name)].clone());
            let allocation = m.allocation();
            setups.push(ModelSetup {
                name: m.name.clone(),
                slo_ms: m.slo_ms,
                service: ServiceModel::Calibrated { latency: model_latency.clone(), jitter: s.service_jitter },
                allocation,
                arrivals,
            });
            contexts.push(ModelContext {
                name: m.name.clone(),
                slo_ms: m.slo_ms,
                priority: m.priority,
                latency: model_latency,
                configured: allocation,
            });
        }
        Ok((config, setups, contexts))
    }
}

/// Two models on Poisson arrivals, for tests.
#[cfg(test)]
pub(crate) const TWO_MODELS: &str = r#"
name = "two"
sharing = "spatial"
duration_s = 10
calibration = "builtin:h100-calibration"
[[models]]
name = "front"
profile_model = "vgg16"
slo_ms = 30
gpu_pct = 50
max_batch = 8
batch_timeout_ms = 2
arrivals = { kind = "poisson", rate = 100 }
[[models]]
name = "densenet121"
slo_ms = 30
gpu_pct = 50
max_batch = 8
batch_timeout_ms = 2
arrivals = { kind = "poisson", rate = 100 }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calibration_named_at_load_replaces_the_scenarios() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("two.toml");
        std::fs::write(&path, TWO_MODELS).unwrap();
        let own = LoadedScenario::load_calibrated(Some(&path), None).unwrap();
        let h200 = LoadedScenario::load_calibrated(Some(&path), Some("builtin:h200-calibration")).unwrap();
        assert_eq!(own.profile, "builtin:h100-grid");
        assert_eq!(h200.profile, "builtin:h200-grid");
        assert_ne!(own.contention.interference_by_model, h200.contention.interference_by_model);
        let err = LoadedScenario::load_calibrated(Some(&path), Some("no/such.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("no/such.toml"), "{err:#}");
    }

    #[test]
    fn a_calibration_brings_its_profile_and_per_model_interference() {
        let loaded = LoadedScenario::from_text(TWO_MODELS, "two", ".".into()).unwrap();
        assert_eq!(loaded.profile, "builtin:h100-grid");
        let (config, _, _) = loaded.build().unwrap();
        // Keyed by the scenario's names, looked up by profile model.
        let by_model = &config.interference_by_model;
        assert_eq!(by_model["front"], loaded.contention.interference_by_model["vgg16"]);
        assert!(by_model["front"] < by_model["densenet121"]);
        let launch = &config.mps_launch_contention_by_model;
        assert_eq!(launch["front"], loaded.contention.mps_launch_contention_by_model["vgg16"]);
        assert!(!launch.contains_key("vgg16"), "{launch:?}");
    }

    #[test]
    fn a_scenario_value_overrides_the_calibration() {
        let text = TWO_MODELS.replace("sharing = \"spatial\"", "sharing = \"spatial\"\ninterference = 0.3");
        let loaded = LoadedScenario::from_text(&text, "two", ".".into()).unwrap();
        let (config, _, _) = loaded.build().unwrap();
        assert_eq!(config.interference, 0.3);
        assert!(config.interference_by_model.is_empty());
        let text = TWO_MODELS.replace("sharing = \"spatial\"", "sharing = \"spatial\"\nmps_launch_contention = 0.5");
        let (config, _, _) = LoadedScenario::from_text(&text, "two", ".".into()).unwrap().build().unwrap();
        assert_eq!(config.mps_launch_contention, 0.5);
        assert!(config.mps_launch_contention_by_model.is_empty());
    }

    #[test]
    fn load_scale_multiplies_every_model_s_rate() {
        let mut loaded = LoadedScenario::from_text(TWO_MODELS, "two", ".".into()).unwrap();
        loaded.scale_load(1.5).unwrap();
        assert!(loaded.scenario.models.iter().all(|m| m.arrivals == ArrivalSpec::Poisson { rate: 150.0 }));
        assert!(loaded.scenario.name.ends_with("(load x1.5)"), "{}", loaded.scenario.name);
        let err = loaded.scale_load(0.0).unwrap_err().to_string();
        assert!(err.contains("load scale must be > 0"), "{err}");
    }

    #[test]
    fn a_missing_calibration_is_named() {
        let text = TWO_MODELS.replace("builtin:h100-calibration", "no/such/calibration.toml");
        let err = format!("{:#}", LoadedScenario::from_text(&text, "two", ".".into()).unwrap_err());
        assert!(err.contains("no/such/calibration.toml"), "{err}");
    }

    /// A one-model scenario with `top` added at the top level, `model` to the model and the
    /// given `arrivals` (the base leaves out what the cases set: TOML refuses a key twice).
    fn hostile(top: &str, model: &str, arrivals: &str) -> String {
        format!(
            "name = \"h\"\nsharing = \"spatial\"\nduration_s = 10\n{top}\n[[models]]\nname = \"resnet50\"\nslo_ms = 30\ngpu_pct = 50\n{model}\narrivals = {arrivals}\n"
        )
    }

    #[test]
    fn absurd_numbers_are_refused_naming_the_field_before_anything_runs() {
        let base_model = "max_batch = 8\nbatch_timeout_ms = 2";
        let poisson = "{ kind = \"poisson\", rate = 100 }";
        let cases: Vec<(String, &str)> = vec![
            (hostile("", base_model, "{ kind = \"poisson\", rate = 1e12 }"), "rate"),
            (
                hostile(
                    "",
                    base_model,
                    "{ kind = \"diurnal\", mean_rate = 10, amplitude = 0.5, period_s = 60, step_s = 1e-12 }",
                ),
                "step_s",
            ),
            (
                hostile("", base_model, "{ kind = \"replay\", trace = \"builtin:azure-llm-code\", start_s = nan }"),
                "start_s",
            ),
            (
                hostile("", base_model, "{ kind = \"replay\", trace = \"builtin:azure-llm-code\", scale = 1e300 }"),
                "scale",
            ),
            (hostile("", base_model, poisson).replace("duration_s = 10", "duration_s = 1e12"), "duration_s"),
            (hostile("control_interval_s = 1e-9", base_model, poisson), "control_interval_s"),
            (hostile("drop_after_ms = -1", base_model, poisson), "drop_after_ms"),
            (hostile("oracle_window_intervals = 0", base_model, poisson), "oracle_window_intervals"),
            (hostile("gpus = 0", base_model, poisson), "gpus"),
            (hostile("gpus = 100000", base_model, poisson), "gpus"),
            (hostile("reallocation = { kind = \"cold-restart\", restart_s = 1e9 }", base_model, poisson), "restart_s"),
            (hostile("", "max_batch = 8\nbatch_timeout_ms = 4294967296", poisson), "batch_timeout_ms"),
            (hostile("", "max_batch = 100000\nbatch_timeout_ms = 2", poisson), "max_batch"),
            (hostile("", base_model, poisson).replace("slo_ms = 30", "slo_ms = -20"), "slo_ms must be in"),
            (hostile("", base_model, "{ kind = \"steps\", steps = [[0, 10], [nan, 20]] }"), "finite"),
            (hostile("", base_model, "{ kind = \"steps\", steps = [[0, 10], [inf, 20]] }"), "finite"),
            (hostile("", base_model, "{ kind = \"gamma\", rate = 10, cv = 4294967296 }"), "cv must be in"),
            (
                hostile(
                    "",
                    base_model,
                    "{ kind = \"diurnal\", mean_rate = 10, amplitude = 0.5, period_s = 60, cv = 1e10 }",
                ),
                "cv",
            ),
            (hostile("", base_model, poisson).replace("duration_s = 10", ""), "set duration_s"),
            (
                hostile("", base_model, "{ kind = \"poisson\", rate = 1e6 }")
                    .replace("duration_s = 10", "duration_s = 2000"),
                "more than 2e8",
            ),
            (
                hostile(
                    "",
                    base_model,
                    "{ kind = \"replay\", trace = \"builtin:azure-llm-conv\", speedup = 1e6, scale = 1e6 }",
                ),
                "more than 2e8",
            ),
        ];
        for (text, field) in cases {
            let err = LoadedScenario::from_text(&text, "hostile.toml", ".".into()).and_then(|l| l.build().map(drop));
            let message = format!("{:#}", err.expect_err(&text));
            assert!(message.contains(field) && message.contains("hostile.toml"), "{field}: {message}");
        }
    }

    #[test]
    fn a_replicated_scenario_has_every_model_once_per_copy_on_as_many_times_the_gpus() {
        let loaded = LoadedScenario::from_text(TWO_MODELS, "two", ".".into()).unwrap();
        let node = loaded.replicated(3).unwrap();
        assert_eq!(node.scenario.gpus, 3);
        let names: Vec<&str> = node.scenario.models.iter().map(|m| m.name.as_str()).collect();
        let first = &loaded.scenario.models[0].name;
        assert_eq!(names.len(), 6);
        assert_eq!((names[0], names[2].to_string()), (first.as_str(), format!("{first}.2")));
        // Each copy is profiled as its original.
        assert!(node.scenario.models.iter().all(|m| m.profile_model.is_some()));
        node.build().unwrap();
        let too_many = loaded.replicated(MAX_GPUS + 1).err().unwrap().to_string();
        assert!(too_many.contains("would exceed"), "{too_many}");
    }
}
