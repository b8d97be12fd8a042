//! The GPU backend as the live controller's (`LiveBackend`): each registered model gets its
//! worker processes (under a private MPS daemon, one per standby pool level), started off the
//! controller's task; requests are queued on the model's dispatcher and answered from its
//! completions.

use crate::serving::{GRAPH_BATCHES, GpuBackend, GpuModelSetup, ModelWorkers};
use gpuslice_control::input::RequestInput;
use gpuslice_control::{Backend, BackendError, LiveBackend, LiveModel, ModelSource, Served};
use gpuslice_simulator::{Allocation, ModelInterval, Report, Ticket};
use std::time::Duration;

impl LiveBackend for GpuBackend {
    type Prepared = ModelWorkers;

    fn preparer(
        &self,
        model: &ModelSource,
        gpu_pct: f64,
    ) -> Box<dyn FnOnce() -> Result<ModelWorkers, BackendError> + Send> {
        let (starter, model) = (self.starter(), model.clone());
        Box::new(move || Ok(starter.start_first(&model, gpu_pct)?))
    }

    /// Every pool level's worker, started together, each measured in turn (seconds: a few
    /// hundred batches); the model then serves on all of them.
    fn measuring_preparer(&self, model: &ModelSource, gpu_pct: f64) -> gpuslice_control::MeasuringJob<ModelWorkers> {
        let (starter, model) = (self.starter(), model.clone());
        Box::new(move || {
            let mut workers = starter.start(&model, gpu_pct)?;
            let points = workers.measure(&model.program)?;
            Ok((workers, points))
        })
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

    fn submit(&mut self, model: usize, input: Option<RequestInput>) -> Result<Ticket, BackendError> {
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

    fn stage_times(&mut self) -> Vec<gpuslice_control::StageSummary> {
        Backend::stage_times(self)
    }

    fn report(&mut self) -> Report {
        Backend::report(self)
    }

    fn failure(&self, model: usize) -> Option<String> {
        GpuBackend::failure(self, model)
    }

    fn outage(&self, model: usize) -> Option<String> {
        GpuBackend::outage(self, model)
    }

    fn node_outage(&self) -> Option<String> {
        GpuBackend::node_outage(self)
    }

    fn slice_levels(&self) -> Vec<f64> {
        self.pool_levels().to_vec()
    }

    fn served_batches(&self) -> &[u32] {
        &GRAPH_BATCHES
    }
}
