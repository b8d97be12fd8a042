//! A model repository (`serve --model-repository DIR`): one folder per model, named as the model,
//! holding `config.toml` and, for a model of its own, its program file:
//!
//! ```toml
//! slo_ms = 25
//! priority = 0            # optional
//! max_batch = 32          # optional
//! source = "model.pt"     # a TorchScript (.pt) or torch.export (.pt2) file in this folder,
//!                         # or "torchvision:resnet50" (random weights: benchmarks)
//! profile_model = "resnet50"  # optional: the profiled model its latency starts from (learned
//!                         # online after); without it (and a profile) it is measured on its
//!                         # workers at registration
//! profile = "profile.csv" # optional: its profile (default: the node's calibration's)
//! fp16 = false            # optional: compute in half precision (see below)
//! [[inputs]]
//! name = "input"
//! datatype = "FP32"
//! dims = [3, 224, 224]    # per request, without the batch dimension
//! [[outputs]]
//! name = "output"
//! datatype = "FP32"
//! dims = [1000]
//! ```
//!
//! Models compute in their file's precision unless `fp16 = true`: half precision under an MPS
//! active-thread percentage between the extremes (30-60% measured) computes wrong values on
//! Hopper (driver 580), eager or graphed, with or without cuDNN, where fp32 is exact and green
//! contexts are exact in fp16 (bench/results/2026-12-08-h100-fp16-slices).
//!
//! Names are confined to a fixed charset, and every file a model names (its config, profile and
//! program) to the repository: a regular file whose real path lies under the repository's.

use crate::live::ModelSpec;
use gpuslice_control::ModelSource;
use gpuslice_control::tensors::{ModelIo, TensorSpec, plain_name};
use gpuslice_eval::calibration::Calibration;
use gpuslice_traces::source::MAX_CONFINED_BYTES;
use gpuslice_traces::{LatencyModel, ProfileSet, Source};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The largest `config.toml` read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Largest batch when a model's config does not say.
const DEFAULT_MAX_BATCH: u32 = 32;

/// A model's `config.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelConfig {
    slo_ms: f64,
    #[serde(default)]
    priority: u32,
    max_batch: Option<u32>,
    source: String,
    profile: Option<String>,
    profile_model: Option<String>,
    #[serde(default)]
    fp16: bool,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

/// A model repository on disk.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
    /// Where models without a `profile` of their own take their latency from: the node's
    /// calibration's profile.
    default_profile: Source,
}

impl Repository {
    /// The repository at `root` (a folder); models that name no profile take `calibration`'s.
    pub fn open(root: &Path, calibration: &Calibration) -> anyhow::Result<Repository> {
        anyhow::ensure!(root.is_dir(), "model repository {} is not a folder", root.display());
        Ok(Repository { root: root.to_path_buf(), default_profile: calibration.profile_source()? })
    }

    /// The models it holds (folders with a config.toml and a valid name), sorted.
    pub fn names(&self) -> anyhow::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(&self.root)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| {
                gpuslice_control::model_name_problem(n).is_none() && self.root.join(n).join("config.toml").is_file()
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Model `name` as the controller registers it: its config read and checked, its latency
    /// fitted from its profile. Errors name the file and the problem.
    pub fn spec(&self, name: &str) -> Result<ModelSpec, String> {
        if let Some(problem) = gpuslice_control::model_name_problem(name) {
            return Err(problem);
        }
        let folder = self.root.join(name);
        let path = folder.join("config.toml");
        // Every file of a model is read confined to the repository: a regular file under its
        // folder (a FIFO, a device, or a link out of the repository is refused, naming the file).
        let config_file = Path::new(name).join("config.toml");
        if std::fs::symlink_metadata(&path).is_err() {
            return Err(format!("no model {name:?} in the repository ({} does not exist)", path.display()));
        }
        let text = Source::read_confined(&self.root, &config_file, MAX_CONFIG_BYTES)
            .map_err(|e| format!("model {name:?}: {e}"))?
            .text;
        let config: ModelConfig = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let bad = |what: String| format!("{}: {what}", path.display());
        if !(config.slo_ms.is_finite() && config.slo_ms > 0.0 && config.slo_ms <= gpuslice_simulator::MAX_LATENCY_MS) {
            return Err(bad(format!("slo_ms must be in (0, 3600000], got {}", config.slo_ms)));
        }
        let max_batch = config.max_batch.unwrap_or(DEFAULT_MAX_BATCH);
        if !(1..=64).contains(&max_batch) {
            return Err(bad(format!("max_batch must be 1-64, got {max_batch}")));
        }
        let io = ModelIo { inputs: config.inputs, outputs: config.outputs };
        if let Some(problem) = io.problem() {
            return Err(bad(problem));
        }
        let program = match config.source.strip_prefix("torchvision:") {
            Some(arch) if !arch.is_empty() && arch.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                config.source.clone()
            }
            Some(_) => return Err(bad(format!("source {:?}: torchvision:NAME takes a model name", config.source))),
            None => {
                let file = &config.source;
                let plain = plain_name(file) && !file.starts_with('.');
                if !plain || !(file.ends_with(".pt") || file.ends_with(".pt2")) {
                    return Err(bad(format!(
                        "source {file:?} must be a .pt or .pt2 file in the model's folder, or torchvision:NAME"
                    )));
                }
                let program = folder.join(file);
                let real = gpuslice_traces::source::confined_path(&self.root, &Path::new(name).join(file))
                    .map_err(|problem| bad(format!("source {}: {problem}", program.display())))?;
                if !real.is_file() {
                    return Err(bad(format!("source {} is not a regular file", program.display())));
                }
                real.display().to_string()
            }
        };
        let named = config.profile_model.or_else(|| config.source.strip_prefix("torchvision:").map(str::to_string));
        // Without a profiled model to start from, it is measured at registration; until then
        // (planning its first share) it stands in as the profile's first model.
        let measure = named.is_none() && config.profile.is_none();
        let profile_source = match &config.profile {
            Some(profile) if profile.starts_with(gpuslice_traces::source::BUILTIN_PREFIX) => {
                Source::load(profile, &folder).map_err(|e| bad(format!("profile: {e}")))?
            }
            Some(profile) => Source::read_confined(&self.root, &Path::new(name).join(profile), MAX_CONFINED_BYTES)
                .map_err(|e| bad(format!("profile: {e}")))?,
            None => self.default_profile.clone(),
        };
        let wanted = match named {
            Some(model) => model,
            None if measure => first_model(&profile_source).map_err(bad)?,
            None => return Err(bad("profile_model is required with a profile: which of its models this is".into())),
        };
        let latency = fit_profile(&profile_source, &wanted).map_err(bad)?;
        Ok(ModelSpec {
            measure,
            name: name.to_string(),
            slo_ms: config.slo_ms,
            priority: config.priority,
            max_batch,
            latency: Arc::new(latency),
            profile_model: if measure { name.to_string() } else { wanted },
            source: ModelSource { program, io, half: config.fp16 },
        })
    }
}

/// The first model of the profile `source` (a stand-in until a model is measured).
fn first_model(source: &Source) -> Result<String, String> {
    let set = ProfileSet::parse(source).map_err(|e| format!("profile: {e}"))?;
    set.models.keys().next().cloned().ok_or_else(|| "profile: it has no model".to_string())
}

/// The latency model of `model` fitted from the profile `source`.
pub fn fit_profile(source: &Source, model: &str) -> Result<LatencyModel, String> {
    let set = ProfileSet::parse(source).map_err(|e| format!("profile: {e}"))?;
    let profile = set.model(model).map_err(|e| format!("profile_model: {e}"))?;
    let all = LatencyModel::fit_all(&set).map_err(|e| format!("profile: {e}"))?;
    Ok(all.get(&profile.model).cloned().expect("fit_all fits every model"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
slo_ms = 25
source = "torchvision:resnet50"
[[inputs]]
name = "input"
datatype = "FP32"
dims = [3, 224, 224]
[[outputs]]
name = "output"
datatype = "FP32"
dims = [1000]
"#;

    fn repository(models: &[(&str, &str)]) -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        for (name, config) in models {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("config.toml"), config).unwrap();
        }
        let repository = Repository::open(dir.path(), &Calibration::first_h100()).unwrap();
        (dir, repository)
    }

    #[test]
    fn a_torchvision_model_gets_its_profile_and_tensors() {
        let (_dir, repository) = repository(&[("classifier", CONFIG)]);
        assert_eq!(repository.names().unwrap(), ["classifier"]);
        let spec = repository.spec("classifier").unwrap();
        assert_eq!((spec.max_batch, spec.source.io.input().bytes()), (32, 3 * 224 * 224 * 4));
        assert!(spec.latency.p50_ms(1, 100.0) > 0.0);
    }

    #[test]
    fn a_model_no_profile_knows_is_measured_at_registration() {
        let (dir, repository) = repository(&[("mine", &CONFIG.replace("torchvision:resnet50", "model.pt"))]);
        std::fs::write(dir.path().join("mine").join("model.pt"), b"program").unwrap();
        let spec = repository.spec("mine").unwrap();
        assert!(spec.measure && spec.profile_model == "mine", "measured, with no stand-in's co-location figures");
        let named = "profile_model = \"resnet50\"\n".to_string() + &CONFIG.replace("torchvision:resnet50", "model.pt");
        std::fs::write(dir.path().join("mine").join("config.toml"), named).unwrap();
        assert!(!repository.spec("mine").unwrap().measure, "a named profile model is not measured");
    }

    #[test]
    fn hostile_names_missing_files_and_bad_tensors_are_refused_with_the_file() {
        let missing_file = CONFIG.replace("torchvision:resnet50", "model.pt");
        let escaping = CONFIG.replace("torchvision:resnet50", "../../etc/passwd.pt");
        let bad_dims = CONFIG.replace("dims = [1000]", "dims = [0]");
        let (_dir, repository) = repository(&[("a", &missing_file), ("b", &escaping), ("c", &bad_dims)]);
        assert!(repository.spec("a").err().unwrap().contains("does not exist"));
        assert!(repository.spec("b").err().unwrap().contains("in the model's folder"));
        let err = repository.spec("c").err().unwrap();
        assert!(err.contains("c/config.toml") && err.contains("at least 1"), "{err}");
        assert!(repository.spec("../a").err().unwrap().contains("model name"));
        assert!(repository.spec("nothere").err().unwrap().contains("no model \"nothere\""));
    }

    /// Files that would hang, flood or leak a load: each refused at once, naming the file.
    #[test]
    fn fifos_devices_big_files_and_links_out_of_the_repository_are_refused() {
        let with = |key: &str, value: &str| CONFIG.replace("slo_ms = 25", &format!("slo_ms = 25\n{key} = {value:?}"));
        let file_model = CONFIG.replace("torchvision:resnet50", "model.pt");
        let (dir, repository) = repository(&[
            ("fifo", ""),
            ("zero", ""),
            ("passwd", &with("profile", "/etc/passwd")),
            ("up", &with("profile", "../../outside.csv")),
            ("big", &with("profile", "big.csv")),
            ("program", &file_model),
        ]);
        let root = dir.path();
        std::fs::remove_file(root.join("fifo/config.toml")).unwrap();
        nix::unistd::mkfifo(&root.join("fifo/config.toml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::remove_file(root.join("zero/config.toml")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("zero/config.toml")).unwrap();
        std::fs::write(root.join("big/big.csv"), vec![b'#'; (MAX_CONFINED_BYTES + 1) as usize]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("program/model.pt")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("linked")).unwrap();
        std::fs::write(outside.path().join("linked/config.toml"), CONFIG).unwrap();
        std::os::unix::fs::symlink(outside.path().join("linked"), root.join("linked")).unwrap();
        let cases = [
            ("fifo", "not a regular file"),
            ("zero", "outside"),
            ("passwd", "outside"),
            ("up", "does not exist"),
            ("big", "larger than"),
            ("program", "outside"),
            ("linked", "outside"),
        ];
        for (name, problem) in cases {
            let began = std::time::Instant::now();
            let err = repository.spec(name).err().unwrap_or_else(|| panic!("{name} was loaded"));
            assert!(err.contains(problem) && err.contains(name), "{name}: {err}");
            assert!(began.elapsed() < std::time::Duration::from_secs(5), "{name} took {:?}", began.elapsed());
        }
        // A FIFO inside the repository named as a profile is refused the same way.
        std::fs::write(root.join("passwd/config.toml"), with("profile", "pipe.csv")).unwrap();
        nix::unistd::mkfifo(&root.join("passwd/pipe.csv"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = repository.spec("passwd").err().unwrap();
        assert!(err.contains("pipe.csv") && err.contains("not a regular file"), "{err}");
    }
}
