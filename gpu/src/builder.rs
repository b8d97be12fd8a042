//! The GPU as the backend of a scenario run (`gpuslice gpu-run`): builds a `GpuBackend` from the
//! run's models, with its own MPS daemon where the sharing mode needs one.

use crate::serving::{GRAPH_BATCHES, GpuBackend, GpuModelSetup, WorkerStarter, WorkerTemplate};
use gpuslice_control::ModelSource;
use gpuslice_control::{Backend, BackendBuilder, BackendError};
use gpuslice_simulator::{ModelSetup, Sharing, SimConfig};
use std::collections::HashMap;
use std::time::Duration;

/// Builds the GPU backend: each model's workers from `template`.
pub struct GpuBuilder {
    /// How workers start, and the standby pool's GPU% levels.
    pub template: WorkerTemplate,
    /// What a model runs, by its name, where it is not the torchvision benchmark of that name
    /// (a model repository's files).
    pub sources: HashMap<String, ModelSource>,
}

impl BackendBuilder for GpuBuilder {
    /// Slices, and default MPS where the pool has a whole-GPU level to switch to.
    fn modes(&self) -> &'static [Sharing] {
        if self.template.has_whole_gpu_level() { &[Sharing::Spatial, Sharing::DefaultMps] } else { &[Sharing::Spatial] }
    }

    fn slice_levels(&self) -> &[f64] {
        &self.template.pool_levels
    }

    fn served_batches(&self) -> &[u32] {
        &GRAPH_BATCHES
    }

    fn progress_unit(&self) -> &'static str {
        "s on the GPU"
    }

    fn build(
        &self,
        config: SimConfig,
        setups: Vec<ModelSetup>,
        control_interval_s: f64,
        switching: bool,
    ) -> Result<Box<dyn Backend>, BackendError> {
        let mode = config.sharing;
        // Temporal sharing is the driver time-slicing the workers' contexts (no MPS): it does not
        // reallocate, so it keeps no standby pool. Default MPS runs every model on its 100%
        // worker and keeps the pool only for a policy that may switch back to slices.
        let mut template = self.template.clone();
        if mode == Sharing::Temporal || (mode == Sharing::DefaultMps && !(switching && template.has_whole_gpu_level()))
        {
            template.pool_levels.clear();
        }
        let gpu_setups = setups
            .into_iter()
            .map(|s| GpuModelSetup {
                source: self.sources.get(&s.name).cloned().unwrap_or_else(|| ModelSource::torchvision(&s.name)),
                name: s.name,
                slo_ms: s.slo_ms,
                allocation: s.allocation,
                arrivals: Some(s.arrivals),
            })
            .collect();
        let drop_after = config.drop_after_ms.map(|ms| Duration::from_secs_f64(ms * 1e-3));
        let starter = WorkerStarter::for_mode(template, mode).map_err(|e| BackendError::Worker(Box::new(e)))?;
        let interval = Duration::from_secs_f64(control_interval_s);
        Ok(Box::new(GpuBackend::start(gpu_setups, interval, drop_after, starter, mode)?))
    }
}
