//! `serve --backend gpu`: the live controller on the GPU backend. Each registered model gets its
//! worker processes (under a private MPS daemon, one per standby pool level), started off the
//! controller's task; Infer calls are queued on the model's dispatcher and answered from its
//! completions.

use crate::live::{LiveBackend, LiveModel, Served};
use gpuslice_control::{Backend, BackendError};
use gpuslice_gpu::serving::{GpuBackend, GpuModelSetup, ModelSource, ModelWorkers, WorkerStarter, WorkerTemplate};
use gpuslice_simulator::{Allocation, ModelInterval, Report, Sharing, Ticket};
use serde::Deserialize;
use std::sync::Arc;
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
}

impl Default for GpuServing {
    fn default() -> Self {
        GpuServing { pool_levels: vec![10.0, 20.0, 30.0, 45.0, 60.0, 80.0, 100.0], fake_ms: None, worker_script: None }
    }
}

/// Starts the GPU backend with no models (they come through RegisterModel): MPS first, so a
/// machine without it is refused here, with the reason.
pub fn start(serving: &GpuServing, drop_after_ms: Option<f64>) -> anyhow::Result<GpuBackend> {
    let template = WorkerTemplate {
        script: serving.worker_script.clone().unwrap_or_else(gpuslice_gpu::worker::default_script),
        fake_ms: serving.fake_ms,
        pool_levels: serving.pool_levels.clone(),
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

impl LiveBackend for GpuBackend {
    type Prepared = ModelWorkers;

    fn preparer(
        &self,
        model: &ModelSource,
        gpu_pct: f64,
    ) -> Box<dyn FnOnce() -> Result<ModelWorkers, BackendError> + Send> {
        let (starter, model) = (self.starter(), model.clone());
        Box::new(move || Ok(starter.start(&model, gpu_pct)?))
    }

    fn reserve(&mut self, gpu_pct: f64) {
        GpuBackend::reserve(self, gpu_pct)
    }

    fn add_model(&mut self, model: LiveModel, workers: ModelWorkers) -> Result<usize, BackendError> {
        let setup = GpuModelSetup {
            name: model.name,
            source: model.source,
            slo_ms: model.slo_ms,
            allocation: model.allocation,
            arrivals: None,
        };
        Ok(GpuBackend::add_model(self, setup, workers)?)
    }

    fn retire_model(&mut self, model: usize) -> Result<(), BackendError> {
        Ok(GpuBackend::retire_model(self, model)?)
    }

    fn submit(&mut self, model: usize, input: Option<Arc<[u8]>>) -> Result<Ticket, BackendError> {
        Ok(GpuBackend::submit(self, model, input)?)
    }

    /// The GPU serves in real time: nothing to advance, only completions to collect.
    fn advance(&mut self, _now: Duration) -> Served {
        let (done, dropped) = self.take_answered();
        (done.into_iter().map(|a| (a.record, Some(a.computed))).collect(), dropped)
    }

    fn take_interval(&mut self) -> Vec<ModelInterval> {
        GpuBackend::take_interval(self)
    }

    fn allocation(&self, model: usize) -> Result<Allocation, BackendError> {
        Ok(GpuBackend::allocation(self, model)?)
    }

    fn set_allocation(&mut self, model: usize, allocation: Allocation) -> Result<(), BackendError> {
        self.apply(model, allocation)
    }

    fn report(&mut self) -> Report {
        Backend::report(self)
    }

    fn failure(&self, model: usize) -> Option<String> {
        GpuBackend::failure(self, model)
    }

    fn slice_levels(&self) -> Vec<f64> {
        self.pool_levels().to_vec()
    }

    fn max_batch(&self) -> Option<u32> {
        gpuslice_gpu::serving::GRAPH_BATCHES.last().copied()
    }
}
