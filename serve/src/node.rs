//! Node configuration for `gpuslice serve` (TOML): where to listen, how the controller runs, and
//! models to register at start.

use crate::grpc::{ServeBackend, ServeOptions};
use crate::live::LiveConfig;
use crate::live_gpu::GpuServing;
use crate::proto::{RegisterModelRequest, register_model_request::Profile};
use anyhow::{Context, Result};
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
}

impl NodeConfig {
    /// Reads `path` (the defaults without one); an unknown or malformed key is an error naming it.
    pub fn load(path: Option<&Path>) -> Result<NodeConfig> {
        let Some(path) = path else { return Ok(NodeConfig::default()) };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read node config {}", path.display()))?;
        let mut config: NodeConfig =
            toml::from_str(&text).with_context(|| format!("node config {} is malformed", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.model_repository = config.model_repository.map(|r| base.join(r));
        config.auth_token_file = config.auth_token_file.map(|f| base.join(f));
        config.data_roots = match config.data_roots.is_empty() {
            true => vec![base.to_path_buf()],
            false => config.data_roots.iter().map(|r| base.join(r)).collect(),
        };
        for m in &mut config.models {
            if !m.profile.starts_with(gpuslice_traces::source::BUILTIN_PREFIX) {
                m.profile = base.join(&m.profile).display().to_string();
            }
        }
        Ok(config)
    }

    /// Serve options, with command-line overrides applied.
    pub fn into_options(self, overrides: ServeOverrides) -> Result<ServeOptions> {
        let auth_token =
            overrides.auth_token_file.or(self.auth_token_file).map(|path| read_token(&path)).transpose()?;
        let mut controller = self.controller;
        if let Some(policy) = overrides.policy {
            controller.policy = policy;
        }
        let mut gpu = self.gpu;
        gpu.fake_ms = overrides.fake_ms.or(gpu.fake_ms);
        let backend = match overrides.backend.or(self.backend).unwrap_or_default() {
            BackendKind::Sim => ServeBackend::Simulated,
            BackendKind::Gpu => ServeBackend::Gpu(gpu),
        };
        let data_roots = if overrides.data_roots.is_empty() { self.data_roots } else { overrides.data_roots };
        Ok(ServeOptions {
            auth_token,
            reflection: !overrides.no_reflection && self.reflection.unwrap_or(true),
            data_roots,
            backend,
            listen: overrides
                .listen
                .or(self.listen)
                .unwrap_or_else(|| "127.0.0.1:50051".parse().expect("valid address")),
            metrics_listen: overrides.metrics_listen.or(self.metrics_listen),
            controller,
            repository: overrides.model_repository.or(self.model_repository),
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
    /// Policy to run: static, gslice or model-based [default: the config's, or model-based].
    #[arg(long)]
    pub policy: Option<String>,
    /// With `--backend gpu`: GPU-less workers taking this many ms per batch, no MPS (to try the
    /// GPU backend's serving anywhere).
    #[arg(long)]
    pub fake_ms: Option<f64>,
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
}

/// The shortest bearer token a server takes.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The bearer token in `path` (surrounding whitespace removed).
fn read_token(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read auth token file {}", path.display()))?;
    let token = text.trim().to_string();
    anyhow::ensure!(
        token.chars().count() >= MIN_TOKEN_CHARS && token.chars().all(|c| c.is_ascii_graphic()),
        "auth token file {}: the token must be at least {MIN_TOKEN_CHARS} printable characters without spaces",
        path.display()
    );
    Ok(token)
}
