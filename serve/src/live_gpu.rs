//! `serve --backend gpu`: the `[gpu]` settings and the GPU backend started with them, for the
//! live controller (the backend's live side is `gpuslice_gpu::live`).

use gpuslice_control::input::PacketLayout;
use gpuslice_gpu::serving::{GpuBackend, WorkerStarter, WorkerTemplate};
use gpuslice_simulator::Sharing;
use serde::Deserialize;
use std::time::Duration;

/// How `serve --backend gpu` runs its workers (the `[gpu]` part of node.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuServing {
    /// GPU% levels every model keeps a worker at, so a reallocation switches at once.
    pub pool_levels: Vec<f64>,
    /// Workers without a GPU that take this many ms per batch (to try the server anywhere);
    /// they run without MPS.
    pub fake_ms: Option<f64>,
    /// The worker script [default: `gpu/worker/gpuslice_worker.py`, or `$GPUSLICE_WORKER`].
    pub worker_script: Option<std::path::PathBuf>,
    /// The GPU this backend serves, by its CUDA / NVML index: its MPS daemon, workers and
    /// telemetry (None: the GPUs the process sees, telemetry of GPU 0). Set from the node's
    /// `gpus` (one backend each), not read from `[gpu]`.
    #[serde(skip)]
    pub device: Option<u32>,
}

impl Default for GpuServing {
    fn default() -> Self {
        GpuServing {
            pool_levels: gpuslice_control::GPU_POOL_LEVELS.to_vec(),
            fake_ms: None,
            worker_script: None,
            device: None,
        }
    }
}

/// Starts the GPU backend with no models (they come through RegisterModel): MPS first, so a
/// machine without it is refused here, with the reason.
/// With `packet_pool`, every worker maps the NetML packet pool and gathers the requests that came
/// as packets itself.
pub fn start(
    serving: &GpuServing,
    drop_after_ms: Option<f64>,
    packet_pool: Option<PacketLayout>,
) -> anyhow::Result<GpuBackend> {
    let template = WorkerTemplate {
        script: serving.worker_script.clone().unwrap_or_else(gpuslice_gpu::worker::default_script),
        fake_ms: serving.fake_ms,
        pool_levels: serving.pool_levels.clone(),
        packet_pool,
        device: serving.device,
    };
    anyhow::ensure!(
        template.script.exists(),
        "the worker script {} does not exist (set [gpu] worker_script or $GPUSLICE_WORKER)",
        template.script.display()
    );
    // The dispatchers drop queued requests at this age; the controller's own interval paces
    // observation, so the backend's is unused here.
    let drop_after = drop_after_ms.map(|ms| Duration::from_secs_f64(ms * 1e-3));
    Ok(GpuBackend::start(
        Vec::new(),
        Duration::from_secs(1),
        drop_after,
        WorkerStarter::for_mode(template, Sharing::Spatial)?,
        Sharing::Spatial,
    )?)
}
