//! Node configuration for `gpuslice serve` (TOML): where to listen, how the controller runs, and
//! models to register at start.

use crate::gpus::GpuSet;
use crate::grpc::{ServeBackend, ServeOptions};
use crate::live::LiveConfig;
use crate::live_gpu::GpuServing;
use crate::netml::NetmlTransfer;
use crate::proto::{RegisterModelRequest, register_model_request::Profile};
use anyhow::{Context, Result};
use gpuslice_eval::calibration::Calibration;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

/// A node's configuration file (`node.toml`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// gRPC address (default 127.0.0.1:50051).
    pub listen: Option<SocketAddr>,
    /// Prometheus text metrics address (default: none).
    pub metrics_listen: Option<SocketAddr>,
    /// NetML ingress UDP address: requests as packets, replies back the same way (default:
    /// none).
    pub netml_listen: Option<SocketAddr>,
    /// How NetML requests reach their batch: "gpu-gather" (default: the worker gathers the
    /// packets onto the GPU from the pool they landed in) or "cpu-copy" (the receive thread
    /// copies them into the request).
    pub netml_transfer: Option<NetmlTransfer>,
    /// What serves the requests: "sim" (default) or "gpu".
    pub backend: Option<BackendKind>,
    /// The controller's settings.
    #[serde(default)]
    pub controller: LiveConfig,
    /// Worker settings of the GPU backend.
    #[serde(default)]
    pub gpu: GpuServing,
    /// Models registered at start.
    #[serde(default)]
    pub models: Vec<NodeModel>,
    /// A model repository (relative to the config file): its models are loaded at start.
    pub model_repository: Option<std::path::PathBuf>,
    /// Folders (relative to the config file) whose regular files RegisterModel's
    /// `profile_path` may name; default: the config file's folder (without a config: none,
    /// only `builtin:` data and inline CSV).
    #[serde(default)]
    pub data_roots: Vec<std::path::PathBuf>,
    /// A file holding the bearer token every call (but health checks) and /metrics must carry
    /// (relative to the config file; at least 16 characters). Without one, anyone who reaches
    /// the address may call.
    pub auth_token_file: Option<std::path::PathBuf>,
    /// Serve gRPC server reflection (default true).
    pub reflection: Option<bool>,
    /// A PEM certificate chain (relative to the config file): gRPC and /metrics are served over
    /// TLS with it and `tls_key`.
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// The GPU's calibration (see `ServeOverrides::calibration`; a path is relative to the
    /// config file).
    pub calibration: Option<String>,
    /// The GPUs the node serves: `[0, 1]` (CUDA / NVML indices) or `"all"` (every GPU NVML
    /// sees), one controller each (`crate::gpus`); default: one controller over the GPUs the
    /// process sees.
    #[serde(default)]
    pub gpus: GpuSet,
}

/// What serves a node's requests (the one place `serve` chooses between the simulator and the
/// GPU: `NodeConfig::into_options` turns it into the `ServeBackend` started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The simulator in wall-clock time.
    #[default]
    Sim,
    /// The GPU backend, with the config's `[gpu]` settings.
    Gpu,
}

/// A backend name that is neither `sim` nor `gpu`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a backend: use sim (the simulator) or gpu")]
pub struct UnknownBackend(String);

impl std::str::FromStr for BackendKind {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<BackendKind, UnknownBackend> {
        match s {
            "sim" => Ok(BackendKind::Sim),
            "gpu" => Ok(BackendKind::Gpu),
            other => Err(UnknownBackend(other.to_string())),
        }
    }
}

/// A model registered at start.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeModel {
    /// Its name.
    pub name: String,
    /// Its latency SLO, ms.
    pub slo_ms: f64,
    /// Higher is kept first when the GPU cannot meet every SLO.
    #[serde(default)]
    pub priority: u32,
    /// Its largest batch.
    pub max_batch: u32,
    /// A profile CSV path (relative to the config file) or builtin:NAME.
    pub profile: String,
    /// The profile's model name, where it differs from `name`.
    pub profile_model: Option<String>,
    /// On a node of several GPUs, the GPUs it runs on (several: replicas; see PlaceModel);
    /// default: the GPU serving the fewest models.
    pub gpus: Option<Vec<u32>>,
}

impl NodeConfig {
    /// Reads `path` (the defaults without one); an unknown or malformed key is an error naming it.
    pub fn load(path: Option<&Path>) -> Result<NodeConfig> {
        let Some(path) = path else { return Ok(NodeConfig::default()) };
        let text = gpuslice_traces::Source::read_file(path).context("cannot read the node config")?.text;
        let mut config: NodeConfig =
            toml::from_str(&text).with_context(|| format!("node config {} is malformed", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.model_repository = config.model_repository.map(|r| base.join(r));
        config.auth_token_file = config.auth_token_file.map(|f| base.join(f));
        config.tls_cert = config.tls_cert.map(|f| base.join(f));
        config.tls_key = config.tls_key.map(|f| base.join(f));
        config.calibration = config.calibration.map(|spec| match spec.as_str() {
            DEVICE_CALIBRATION => spec,
            _ => beside(base, spec),
        });
        config.data_roots = match config.data_roots.is_empty() {
            true => vec![base.to_path_buf()],
            false => config.data_roots.iter().map(|r| base.join(r)).collect(),
        };
        for m in &mut config.models {
            m.profile = beside(base, std::mem::take(&mut m.profile));
        }
        Ok(config)
    }

    /// Serve options, with command-line overrides applied.
    pub fn into_options(self, overrides: ServeOverrides) -> Result<ServeOptions> {
        let auth_token =
            overrides.auth_token_file.or(self.auth_token_file).map(|path| read_token(&path)).transpose()?;
        let tls = match (overrides.tls_cert.or(self.tls_cert), overrides.tls_key.or(self.tls_key)) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsIdentity::load(&cert, &key)?),
            (None, None) => None,
            _ => anyhow::bail!("TLS needs both a certificate and its key (--tls-cert and --tls-key)"),
        };
        let mut controller = self.controller;
        if let Some(policy) = overrides.policy {
            controller.policy = policy;
        }
        let mut gpu = self.gpu;
        gpu.fake_ms = overrides.fake_ms.or(gpu.fake_ms);
        let kind = overrides.backend.or(self.backend).unwrap_or_default();
        let spec = overrides.calibration.or(self.calibration).unwrap_or_else(|| DEVICE_CALIBRATION.into());
        let on_gpus = kind == BackendKind::Gpu && gpu.fake_ms.is_none();
        if on_gpus {
            // One clear error up front, not three from NVML's later readers.
            gpuslice_gpu::telemetry::device_count().context(
                "the GPU backend needs an NVIDIA GPU and its driver, and NVML could not be read; \
                 without a GPU, add --fake-ms MS (GPU-less workers that answer each row with its sum)",
            )?;
        }
        let gpus = overrides.gpus.unwrap_or(self.gpus).resolve(|| {
            anyhow::ensure!(
                on_gpus,
                "gpus = \"all\" counts the GPUs NVML sees: name them for a simulated or GPU-less node"
            );
            Ok(gpuslice_gpu::telemetry::device_count()?)
        })?;
        // The node's GPUs are of one kind: the first names the calibration.
        let serving_gpu = on_gpus.then(|| gpus.first().copied().unwrap_or(0));
        let calibration = load_calibration(&spec, serving_gpu)?;
        controller.contention = calibration.contention.clone();
        let backend = match kind {
            BackendKind::Sim => ServeBackend::Simulated,
            BackendKind::Gpu => ServeBackend::Gpu(gpu),
        };
        let data_roots = if overrides.data_roots.is_empty() { self.data_roots } else { overrides.data_roots };
        Ok(ServeOptions {
            auth_token,
            tls,
            reflection: !overrides.no_reflection && self.reflection.unwrap_or(true),
            calibration,
            data_roots,
            backend,
            gpus,
            listen: overrides
                .listen
                .or(self.listen)
                .unwrap_or_else(|| "127.0.0.1:50051".parse().expect("valid address")),
            metrics_listen: overrides.metrics_listen.or(self.metrics_listen),
            netml_listen: overrides.netml_listen.or(self.netml_listen),
            netml_transfer: overrides.netml_transfer.or(self.netml_transfer).unwrap_or_default(),
            controller,
            repository: overrides.model_repository.or(self.model_repository),
            placements: self.models.iter().filter_map(|m| Some((m.name.clone(), m.gpus.clone()?))).collect(),
            models: self
                .models
                .into_iter()
                .map(|m| RegisterModelRequest {
                    name: m.name,
                    slo_ms: m.slo_ms,
                    priority: m.priority,
                    max_batch: m.max_batch,
                    profile: Some(Profile::ProfilePath(m.profile)),
                    profile_model: m.profile_model.unwrap_or_default(),
                })
                .collect(),
        })
    }
}

/// A data spec the node config gives: `builtin:NAME` as it is, a path taken from the config
/// file's folder `base`.
fn beside(base: &Path, spec: String) -> String {
    match spec.starts_with(gpuslice_traces::source::BUILTIN_PREFIX) {
        true => spec,
        false => base.join(spec).display().to_string(),
    }
}

/// The calibration spec that stands for the GPU the node runs on.
pub const DEVICE_CALIBRATION: &str = "device";

/// The calibration `spec` names (`device`: the embedded one of the GPU NVML reports, when
/// serving on one, `serving_gpu`; otherwise, or where none is embedded, the first H100
/// calibration).
fn load_calibration(spec: &str, serving_gpu: Option<u32>) -> Result<Calibration> {
    if spec != DEVICE_CALIBRATION {
        let calibration = Calibration::load(spec, Path::new("."))?;
        tracing::info!(calibration = %calibration.origin, "calibration");
        return Ok(calibration);
    }
    let Some(gpu) = serving_gpu else {
        return Ok(Calibration::first_h100());
    };
    let found = gpuslice_gpu::telemetry::calibration_of_this_gpu(gpu, "the first H100's")
        .context("calibration \"device\": cannot read the GPU's name (name a calibration instead)")?;
    match found {
        Some(spec) => Calibration::load(spec, Path::new(".")),
        None => Ok(Calibration::first_h100()),
    }
}

/// What `serve`'s flags override in the node config.
#[derive(Debug, Default, clap::Args)]
pub struct ServeOverrides {
    /// The backend that serves requests: `sim` runs the simulator in wall-clock time (Infer
    /// waits for the simulated completion); `gpu` serves on the GPU, each registered model on
    /// worker processes under a private MPS daemon (see the config's [gpu]) [default: the
    /// config's, or sim].
    #[arg(long)]
    pub backend: Option<BackendKind>,
    /// gRPC address; loopback unless told otherwise [default: 127.0.0.1:50051, or the config's].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address of the Prometheus text metrics endpoint (/metrics) [default: the config's, or none].
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// UDP address of the NetML ingress: images for any registered model arrive as packets (the
    /// wire format of `gpuslice netml-send`), are served like gRPC requests, and each is answered
    /// by UDP to its sender [default: the config's, or none].
    #[arg(long)]
    pub netml_listen: Option<SocketAddr>,
    /// How NetML requests reach their batch: the worker gathers their packets onto the GPU from
    /// the pool they landed in, or the receive thread copies them out [default: the config's, or
    /// gpu-gather].
    #[arg(long, value_enum)]
    pub netml_transfer: Option<NetmlTransfer>,
    /// Policy to run: static, gslice or model-based [default: the config's, or model-based].
    #[arg(long)]
    pub policy: Option<String>,
    /// With `--backend gpu`: GPU-less workers taking this many ms per batch, no MPS (to try the
    /// GPU backend's serving anywhere).
    #[arg(long)]
    pub fake_ms: Option<f64>,
    /// The GPUs to serve, one controller each: `all` (every GPU NVML sees) or indices like
    /// `0,1`; models are placed on them and PlaceModel moves or replicates them [default: the
    /// config's, or one controller over the GPUs the process sees].
    #[arg(long)]
    pub gpus: Option<GpuSet>,
    /// Model repository folder: one folder per model with its config.toml (tensors, SLO,
    /// source) and program file; every model in it is loaded at start, and the inference
    /// protocol's RepositoryModelLoad / Unload manage them [default: the config's, or none].
    #[arg(long)]
    pub model_repository: Option<std::path::PathBuf>,
    /// A folder whose regular files RegisterModel's `profile_path` may name (repeat for
    /// several); other paths are refused as "not allowed" [default: the config's `data_roots`,
    /// else its folder; without a config, none: only `builtin:` and inline CSV].
    #[arg(long = "data-root")]
    pub data_roots: Vec<std::path::PathBuf>,
    /// A file holding a bearer token (16+ printable characters): every call but health checks,
    /// and /metrics, must then carry `authorization: Bearer TOKEN` [default: the config's
    /// auth_token_file, else none].
    #[arg(long)]
    pub auth_token_file: Option<std::path::PathBuf>,
    /// Do not serve gRPC server reflection.
    #[arg(long)]
    pub no_reflection: bool,
    /// A PEM certificate chain: gRPC and /metrics are then served over TLS (with --tls-key)
    /// [default: the config's tls_cert, else plain text].
    #[arg(long)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert [default: the config's tls_key].
    #[arg(long)]
    pub tls_key: Option<std::path::PathBuf>,
    /// What the policy plans with: `device` (the embedded calibration of the GPU NVML reports,
    /// e.g. `builtin:h200-calibration` on an H200; the first H100 calibration on the simulator,
    /// with GPU-less workers or on a GPU without one), or a calibration (`builtin:NAME` or a file
    /// from `calibrate`): its co-location model, and the profile of repository models that name
    /// none [default: the config's, or device].
    #[arg(long)]
    pub calibration: Option<String>,
}

/// The shortest bearer token a server takes.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The bearer token in `path` (surrounding whitespace removed).
fn read_token(path: &Path) -> Result<String> {
    let source = gpuslice_traces::Source::read_file(path).context("cannot read the auth token file")?;
    let token = source.text.trim().to_string();
    anyhow::ensure!(
        token.chars().count() >= MIN_TOKEN_CHARS && token.chars().all(|c| c.is_ascii_graphic()),
        "auth token file {}: the token must be at least {MIN_TOKEN_CHARS} printable characters without spaces",
        path.display()
    );
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `serve`'s flags as a user gives them.
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        overrides: ServeOverrides,
    }

    fn options(toml: &str, flags: &[&str]) -> Result<ServeOptions> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, toml).unwrap();
        let overrides = Flags::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))?.overrides;
        NodeConfig::load(Some(&path))?.into_options(overrides)
    }

    #[test]
    fn a_node_takes_its_gpus_from_the_config_or_the_flag_and_refuses_bad_ones() {
        assert_eq!(options("", &[]).unwrap().gpus, Vec::<u32>::new());
        assert_eq!(options("gpus = [1, 0]\n", &[]).unwrap().gpus, [1, 0]);
        assert_eq!(options("gpus = [1, 0]\n", &["--gpus", "2,3"]).unwrap().gpus, [2, 3]);
        let model = "[[models]]\nname = \"a\"\nslo_ms = 10\nmax_batch = 4\nprofile = \"builtin:h100-cudagraph\"\n";
        let placed = options(&format!("gpus = [0, 1]\n{model}gpus = [1]\n"), &[]).unwrap();
        assert_eq!(placed.placements, [("a".to_string(), vec![1])]);
        assert!(options(&format!("gpus = [0, 1]\n{model}"), &[]).unwrap().placements.is_empty());
        for (toml, flags, says) in [
            ("gpus = [0, 0]\n", &[][..], "GPU 0 is named twice"),
            ("gpus = []\n", &[], "between 1 and 16"),
            ("gpus = \"some\"\n", &[], "\"some\" is not a GPU index"),
            ("", &["--gpus", "0,x"], "\"x\" is not a GPU index"),
            ("gpus = \"all\"\n", &[], "name them for a simulated or GPU-less node"),
            // One GPU of several is `gpus = [N]` now.
            ("[gpu]\ndevice = 1\n", &[], "unknown field `device`"),
        ] {
            let Err(e) = options(toml, flags) else { panic!("{toml} {flags:?} must be refused") };
            let e = format!("{e:#}");
            assert!(e.contains(says), "{toml} {flags:?}: {e}");
        }
    }

    #[test]
    fn the_policy_plans_with_the_calibration_the_node_names() {
        let h200 = Calibration::load("builtin:h200-calibration", Path::new(".")).unwrap();
        let named = options("calibration = \"builtin:h200-calibration\"\n", &[]).unwrap();
        assert_eq!(named.controller.contention, h200.contention);
        assert_eq!(named.calibration.profile, "builtin:h200-grid");
        // The flag wins over the file; `device` off a GPU is the first H100 calibration.
        let flagged = options("calibration = \"builtin:h200-calibration\"\n", &["--calibration", "device"]).unwrap();
        assert_eq!(flagged.controller.contention, Calibration::first_h100().contention);
        let simulated = options("", &[]).unwrap();
        assert_eq!(simulated.controller.contention, Calibration::first_h100().contention);
        // [controller] interference overrides every model's.
        let overridden =
            options("calibration = \"builtin:h200-calibration\"\n[controller]\ninterference = 0.2\n", &[]).unwrap();
        let contention = overridden.controller.contention();
        assert_eq!(contention.interference, 0.2);
        assert!(contention.interference_by_model.is_empty());
        assert_eq!(contention.mps_share_exponent, h200.contention.mps_share_exponent);
    }

    #[test]
    fn a_calibration_that_cannot_be_read_is_named() {
        let error = options("calibration = \"missing.toml\"\n", &[]).err().expect("refused");
        assert!(format!("{error:#}").contains("missing.toml"), "{error:#}");
        let error = options("", &["--calibration", "builtin:nonesuch"]).err().expect("refused");
        assert!(format!("{error:#}").contains("nonesuch"), "{error:#}");
    }
}
