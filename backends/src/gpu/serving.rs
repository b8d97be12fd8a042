//! The GPU backend: per model a request queue fed in wall-clock time, a dispatcher thread that
//! forms batches and runs them on the model's worker (at its MPS GPU%), and standby
//! reallocation — a worker at the new GPU% is started beside the old one, and the queue moves to
//! it once it is ready, so service never stops. Implements the same `Backend` trait as the
//! simulator.

use super::mps::MpsDaemon;
use super::telemetry::Telemetry;
use super::worker::{INPUT_BYTES_PER_ITEM, StageTimes, Worker, WorkerError, WorkerSpec};
use crate::{Backend, BackendError, DeviceSample, StageSummary};
use gpuslice_simulator::{Allocation, BatchSample, Counters, ModelInterval, ModelReport, Report, Sharing, SimError};
use gpuslice_traces::ArrivalProcess;
use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Batch sizes each worker captures a CUDA graph for; a batch runs on the smallest graph that
/// holds it.
pub const GRAPH_BATCHES: [u32; 9] = [1, 2, 4, 6, 8, 12, 16, 24, 32];

/// One model served on the GPU.
pub struct GpuModelSetup {
    pub name: String,
    pub slo_ms: f64,
    pub allocation: Allocation,
    pub arrivals: Box<dyn ArrivalProcess>,
}

/// How workers are started (the script, the GPU-less mode for tests) and how GPU% changes.
#[derive(Clone)]
pub struct WorkerTemplate {
    pub script: std::path::PathBuf,
    pub fake_ms: Option<f64>,
    /// Standby pool: with levels, every model starts a worker at each GPU% level up front and a
    /// reallocation switches to the one at the level just above the asked GPU% where the GPU has
    /// room for it, else just below (at once);
    /// without, a worker at the new GPU% is started when asked (seconds).
    pub pool_levels: Vec<f64>,
}

impl WorkerTemplate {
    /// The pool level serving `gpu_pct` when at most `room` GPU% is free for it: the lowest
    /// level at or above it if that fits (a slice rounded down would serve less than the policy
    /// planned), else the highest level below it (the lowest level if none is).
    fn level(&self, gpu_pct: f64, room: f64) -> f64 {
        let levels = self.pool_levels.iter().copied();
        let above = levels.clone().filter(|l| *l >= gpu_pct - 1e-9).fold(f64::INFINITY, f64::min);
        if above <= room + 1e-9 {
            return above;
        }
        let below = levels.clone().filter(|l| *l <= gpu_pct + 1e-9).fold(f64::NAN, f64::max);
        if below.is_nan() { levels.fold(f64::INFINITY, f64::min) } else { below }
    }
}

/// What the backend hands a model's dispatcher.
enum Handover {
    /// A standby worker just started at this GPU%: serve with it from now on.
    Started(Box<Worker>, f64),
    /// Serve with the pool's worker at this GPU% level from now on.
    Level(f64),
}

/// What a model's dispatcher and the backend share.
/// Per-request stage times of one model, in microseconds.
struct StageRecorder {
    queue: Histogram<u64>,
    h2d: Histogram<u64>,
    infer: Histogram<u64>,
    d2h: Histogram<u64>,
    total: Histogram<u64>,
}

impl StageRecorder {
    fn new() -> StageRecorder {
        let new = || Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds");
        StageRecorder { queue: new(), h2d: new(), infer: new(), d2h: new(), total: new() }
    }

    /// One batch of requests (their arrival times) that started at `started` and ended at `done`.
    fn record(&mut self, arrivals: &[Instant], started: Instant, done: Instant, times: &StageTimes) {
        let us = |d: Duration| d.as_micros() as u64 + 1;
        let ms_us = |ms: f64| (ms * 1000.0) as u64 + 1;
        let n = arrivals.len() as u64;
        for &arrival in arrivals {
            let _ = self.queue.record(us(started.saturating_duration_since(arrival)));
            let _ = self.total.record(us(done.saturating_duration_since(arrival)));
        }
        let _ = self.h2d.record_n(ms_us(times.h2d_ms), n);
        let _ = self.infer.record_n(ms_us(times.infer_ms), n);
        let _ = self.d2h.record_n(ms_us(times.d2h_ms), n);
    }

    fn summary(&self, model: &str) -> StageSummary {
        let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        StageSummary {
            model: model.to_string(),
            requests: self.total.len(),
            queue_p50_ms: q(&self.queue, 0.5),
            queue_p99_ms: q(&self.queue, 0.99),
            h2d_mean_ms: self.h2d.mean() / 1000.0,
            infer_mean_ms: self.infer.mean() / 1000.0,
            infer_p99_ms: q(&self.infer, 0.99),
            d2h_mean_ms: self.d2h.mean() / 1000.0,
            total_p50_ms: q(&self.total, 0.5),
            total_p99_ms: q(&self.total, 0.99),
        }
    }
}

struct Shared {
    queue: VecDeque<Instant>,
    stages: StageRecorder,
    allocation: Allocation,
    total: Counters,
    interval: Counters,
    samples: Vec<BatchSample>,
    arrivals_done: bool,
    /// A batch is running on the worker.
    in_flight: bool,
    stop: bool,
    /// Set when the worker died; the model serves nothing more.
    failed: Option<String>,
}

struct ModelHandle {
    name: String,
    slo_ms: f64,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    /// Ready standby workers go to the dispatcher through this.
    handover: mpsc::Sender<Handover>,
    /// A standby worker is starting; further GPU% changes wait for it.
    standby_starting: Arc<std::sync::atomic::AtomicBool>,
    reallocations: u64,
}

pub struct GpuBackend {
    models: Vec<ModelHandle>,
    threads: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
    interval: Duration,
    next_boundary: Instant,
    interval_start: Instant,
    drop_after: Option<Duration>,
    template: WorkerTemplate,
    mps: Option<Arc<MpsDaemon>>,
    telemetry: Option<Telemetry>,
    last_sample: Option<DeviceSample>,
    /// How the workers share the GPU (for reports): spatial under MPS slices, default MPS,
    /// or temporal (no MPS, the driver time-slices).
    sharing: Sharing,
}

fn graph_for(n: usize) -> u32 {
    GRAPH_BATCHES.iter().copied().find(|&b| b as usize >= n).unwrap_or(GRAPH_BATCHES[GRAPH_BATCHES.len() - 1])
}

fn spawn_worker(
    template: &WorkerTemplate,
    mps: Option<&MpsDaemon>,
    model: &str,
    gpu_pct: f64,
) -> Result<Worker, WorkerError> {
    Worker::spawn(&WorkerSpec {
        model: model.into(),
        batches: GRAPH_BATCHES.to_vec(),
        script: template.script.clone(),
        env: mps.map(|m| m.client_env(gpu_pct)).unwrap_or_default(),
        fake_ms: template.fake_ms,
        input_ipc: None,
    })
}

impl GpuBackend {
    /// Starts every model's worker (in parallel), arrival feeder and dispatcher.
    pub fn start(
        setups: Vec<GpuModelSetup>,
        control_interval: Duration,
        drop_after: Option<Duration>,
        template: WorkerTemplate,
        mps: Option<MpsDaemon>,
        sharing: Sharing,
    ) -> Result<GpuBackend, WorkerError> {
        let mps = mps.map(Arc::new);
        let mut setups = setups;
        if !template.pool_levels.is_empty() {
            for s in &mut setups {
                s.allocation.gpu_pct = template.level(s.allocation.gpu_pct, s.allocation.gpu_pct);
            }
        }
        // Each model's workers: one at its GPU%, or one per pool level; all started in parallel.
        let wanted: Vec<Vec<f64>> = setups
            .iter()
            .map(|s| {
                if template.pool_levels.is_empty() { vec![s.allocation.gpu_pct] } else { template.pool_levels.clone() }
            })
            .collect();
        let workers: Vec<Vec<(Worker, f64)>> = std::thread::scope(|scope| {
            let handles: Vec<Vec<_>> = setups
                .iter()
                .zip(&wanted)
                .map(|(s, levels)| {
                    levels
                        .iter()
                        .map(|&pct| {
                            let (template, mps, name) = (&template, mps.as_deref(), s.name.clone());
                            scope.spawn(move || spawn_worker(template, mps, &name, pct).map(|w| (w, pct)))
                        })
                        .collect()
                })
                .collect();
            handles
                .into_iter()
                .map(|hs| hs.into_iter().map(|h| h.join().expect("worker start")).collect::<Result<Vec<_>, _>>())
                .collect::<Result<_, _>>()
        })?;
        let started = Instant::now();
        let mut backend = GpuBackend {
            models: Vec::new(),
            threads: Vec::new(),
            started,
            interval: control_interval,
            next_boundary: started + control_interval,
            interval_start: started,
            drop_after,
            telemetry: if template.fake_ms.is_some() {
                None
            } else {
                Telemetry::open().map_err(|e| tracing::warn!("{e}")).ok()
            },
            template,
            mps,
            last_sample: None,
            sharing,
        };
        for (setup, pool) in setups.into_iter().zip(workers) {
            backend.add(setup, pool);
        }
        Ok(backend)
    }

    fn add(&mut self, setup: GpuModelSetup, workers: Vec<(Worker, f64)>) {
        let shared = Arc::new((
            Mutex::new(Shared {
                queue: VecDeque::new(),
                stages: StageRecorder::new(),
                allocation: setup.allocation,
                total: Counters::new(),
                interval: Counters::new(),
                samples: Vec::new(),
                arrivals_done: false,
                in_flight: false,
                stop: false,
                failed: None,
            }),
            Condvar::new(),
        ));
        let (handover, standby) = mpsc::channel();
        let slo_ns = (setup.slo_ms * 1e6) as u64;
        let (feeder_shared, started) = (shared.clone(), self.started);
        let mut arrivals = setup.arrivals;
        self.threads.push(std::thread::spawn(move || {
            while let Some(t) = arrivals.next_arrival() {
                let at = started + Duration::from_secs_f64(t);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                let (lock, ready) = &*feeder_shared;
                let mut s = lock.lock().expect("model state");
                if s.stop {
                    return;
                }
                s.queue.push_back(Instant::now());
                s.total.arrivals += 1;
                s.interval.arrivals += 1;
                let len = s.queue.len();
                s.total.max_queue = s.total.max_queue.max(len);
                s.interval.max_queue = s.interval.max_queue.max(len);
                ready.notify_one();
            }
            let (lock, ready) = &*feeder_shared;
            lock.lock().expect("model state").arrivals_done = true;
            ready.notify_one();
        }));
        let (dispatch_shared, drop_after) = (shared.clone(), self.drop_after);
        let mut pool = workers;
        let mut active = pool.iter().position(|(_, pct)| *pct == setup.allocation.gpu_pct).unwrap_or(0);
        self.threads.push(std::thread::spawn(move || {
            let (lock, ready) = &*dispatch_shared;
            loop {
                // A reallocation takes effect between two batches.
                while let Ok(handover) = standby.try_recv() {
                    match handover {
                        Handover::Started(worker, pct) => {
                            pool = vec![(*worker, pct)];
                            active = 0;
                        }
                        Handover::Level(pct) => {
                            active = pool.iter().position(|(_, p)| *p == pct).unwrap_or(active);
                        }
                    }
                }
                let mut s = lock.lock().expect("model state");
                let now = Instant::now();
                if let Some(limit) = drop_after {
                    let expired = s.queue.iter().take_while(|a| now - **a > limit).count();
                    s.queue.drain(..expired);
                    s.total.dropped += expired as u64;
                    s.interval.dropped += expired as u64;
                }
                let Some(&head) = s.queue.front() else {
                    if s.stop || s.arrivals_done {
                        return;
                    }
                    drop(ready.wait_timeout(s, Duration::from_millis(5)).expect("model state"));
                    continue;
                };
                let a = s.allocation;
                let max = (a.max_batch as usize).min(*GRAPH_BATCHES.last().expect("graphs") as usize);
                let deadline = head + Duration::from_secs_f64(a.batch_timeout_ms * 1e-3);
                if s.queue.len() < max && now < deadline && !s.arrivals_done {
                    drop(ready.wait_timeout(s, deadline - now).expect("model state"));
                    continue;
                }
                let n = s.queue.len().min(max);
                let batch: Vec<Instant> = s.queue.drain(..n).collect();
                s.in_flight = true;
                drop(s);
                let (worker, gpu_pct) = &mut pool[active];
                // The requests' inputs go to the worker's shared memory (their payload bytes).
                let graph = graph_for(n);
                // The policy plans on what the slice serves per batch: payload hand-off, copies
                // and the worker's round trip included, not the GPU time alone.
                let started = Instant::now();
                worker.input_mut()[..graph as usize * INPUT_BYTES_PER_ITEM].fill(0);
                let result = worker.run(graph);
                let done = Instant::now();
                let mut s = lock.lock().expect("model state");
                s.in_flight = false;
                match result {
                    Ok(times) => {
                        s.stages.record(&batch, started, done, &times);
                        s.total.batches += 1;
                        s.interval.batches += 1;
                        let busy = (done - started).as_nanos() as f64 * *gpu_pct;
                        s.total.sm_pct_ns += busy;
                        s.interval.sm_pct_ns += busy;
                        let exec_ms = (done - started).as_secs_f64() * 1e3;
                        s.samples.push(BatchSample { size: graph, gpu_pct: *gpu_pct, exec_ms });
                        for arrival in batch {
                            let latency = (done - arrival).as_nanos() as u64;
                            s.total.record_latency(latency, latency <= slo_ns);
                            s.interval.record_latency(latency, latency <= slo_ns);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "worker failed; its requests are dropped");
                        s.total.dropped += batch.len() as u64 + s.queue.len() as u64;
                        s.interval.dropped += batch.len() as u64 + s.queue.len() as u64;
                        s.queue.clear();
                        s.failed = Some(e.to_string());
                        s.stop = true;
                        return;
                    }
                }
            }
        }));
        self.models.push(ModelHandle {
            name: setup.name,
            slo_ms: setup.slo_ms,
            shared,
            handover,
            standby_starting: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            reallocations: 0,
        });
    }

    /// True once every model's arrivals have ended and its queue is served.
    fn drained(&self) -> bool {
        self.models.iter().all(|m| {
            let s = m.shared.0.lock().expect("model state");
            (s.arrivals_done && s.queue.is_empty() && !s.in_flight) || s.stop
        })
    }
}

impl Backend for GpuBackend {
    fn next_interval(&mut self) -> Option<Vec<ModelInterval>> {
        if self.drained() {
            return None;
        }
        std::thread::sleep(self.next_boundary.saturating_duration_since(Instant::now()));
        let (start, end) = (self.interval_start, Instant::now());
        self.interval_start = end;
        self.next_boundary += self.interval;
        let span = (end - start).as_nanos() as u64;
        let time_s = (end - self.started).as_secs_f64();
        self.last_sample =
            self.telemetry.as_ref().and_then(|t| t.sample(time_s).map_err(|e| tracing::warn!("NVML: {e}")).ok());
        Some(
            self.models
                .iter()
                .map(|m| {
                    let mut s = m.shared.0.lock().expect("model state");
                    let summary = s.interval.summary(span, span);
                    s.interval.reset();
                    ModelInterval {
                        model: m.name.clone(),
                        start_s: (start - self.started).as_secs_f64(),
                        end_s: (end - self.started).as_secs_f64(),
                        allocation: s.allocation,
                        queue_len: s.queue.len(),
                        summary,
                        batches: std::mem::take(&mut s.samples),
                    }
                })
                .collect(),
        )
    }

    /// A new GPU% starts a standby worker beside the old one (in the background; the old one
    /// serves until the standby is ready); batch size and timeout change at once.
    fn apply(&mut self, model: usize, allocation: Allocation) -> Result<(), BackendError> {
        let name = self.models.get(model).ok_or(SimError::UnknownModel(model))?.name.clone();
        let mut allocation = allocation;
        if !self.template.pool_levels.is_empty() {
            let others: f64 = self
                .models
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != model)
                .map(|(_, m)| m.shared.0.lock().expect("model state").allocation.gpu_pct)
                .sum();
            allocation.gpu_pct = self.template.level(allocation.gpu_pct, 100.0 - others);
        }
        if let Some(problem) = allocation.problem() {
            return Err(SimError::InvalidModel { model: name, problem }.into());
        }
        let total: f64 = self
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if i == model { allocation.gpu_pct } else { m.shared.0.lock().expect("model state").allocation.gpu_pct }
            })
            .sum();
        if total > 100.0 + 1e-9 {
            return Err(SimError::OverSubscribed { total_pct: total }.into());
        }
        use std::sync::atomic::Ordering;
        let handle = &mut self.models[model];
        let previous = handle.shared.0.lock().expect("model state").allocation;
        let new_slice = previous.gpu_pct != allocation.gpu_pct;
        if !self.template.pool_levels.is_empty() {
            handle.shared.0.lock().expect("model state").allocation = allocation;
            if new_slice {
                handle.reallocations += 1;
                let _ = handle.handover.send(Handover::Level(allocation.gpu_pct));
            }
            return Ok(());
        }
        // One standby at a time per model: a slice change asked for while one starts keeps the
        // current slice (the policy asks again next interval); batching changes apply at once.
        if new_slice && handle.standby_starting.swap(true, Ordering::SeqCst) {
            handle.shared.0.lock().expect("model state").allocation =
                Allocation { gpu_pct: previous.gpu_pct, ..allocation };
            return Ok(());
        }
        handle.shared.0.lock().expect("model state").allocation = allocation;
        if new_slice {
            handle.reallocations += 1;
            let (template, mps, handover) = (self.template.clone(), self.mps.clone(), handle.handover.clone());
            let starting = handle.standby_starting.clone();
            std::thread::spawn(move || {
                match spawn_worker(&template, mps.as_deref(), &name, allocation.gpu_pct) {
                    Ok(worker) => {
                        let _ = handover.send(Handover::Started(Box::new(worker), allocation.gpu_pct));
                    }
                    Err(e) => {
                        tracing::error!(model = %name, error = %e, "standby worker failed to start; the old one keeps serving")
                    }
                }
                starting.store(false, Ordering::SeqCst);
            });
        }
        Ok(())
    }

    fn device(&mut self) -> Option<DeviceSample> {
        self.last_sample
    }

    fn stage_times(&mut self) -> Vec<StageSummary> {
        self.models.iter().map(|m| m.shared.0.lock().expect("model state").stages.summary(&m.name)).collect()
    }

    fn report(&mut self) -> Report {
        let end = Instant::now();
        let span = (end - self.started).as_nanos() as u64;
        let mut total = Counters::new();
        let models = self
            .models
            .iter()
            .map(|m| {
                let s = m.shared.0.lock().expect("model state");
                total.merge(&s.total);
                ModelReport {
                    model: m.name.clone(),
                    slo_ms: m.slo_ms,
                    allocation: s.allocation,
                    reallocations: m.reallocations,
                    summary: s.total.summary(span, span),
                }
            })
            .collect();
        Report {
            sharing: self.sharing,
            elapsed_s: span as f64 * 1e-9,
            events: 0,
            models,
            total: total.summary(span, span),
        }
    }
}

impl Drop for GpuBackend {
    fn drop(&mut self) {
        for m in &self.models {
            let (lock, ready) = &*m.shared;
            lock.lock().expect("model state").stop = true;
            ready.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
