//! The GPU backend: per model a request queue fed in wall-clock time, a dispatcher thread that
//! forms batches and runs them on the model's worker (at its MPS GPU%), and standby
//! reallocation — a worker at the new GPU% is started beside the old one, and the queue moves to
//! it once it is ready, so service never stops. Implements the same `Backend` trait as the
//! simulator. Requests come from a model's arrival process (experiments) or one at a time through
//! `submit` (the gRPC plane), each answered through `take_finished`.

use crate::mps::MpsDaemon;
use crate::telemetry::Telemetry;
use crate::worker::{Completion, SLOTS, Worker, WorkerError, WorkerSpec};
use gpuslice_control::input::{PacketLayout, RequestInput};
use gpuslice_control::stages::{DeviceTimes, RequestWaits, StageRecorder};
use gpuslice_control::{Backend, BackendError, DeviceSample, StageSummary};
use gpuslice_control::{Computed, ModelSource};
use gpuslice_simulator::{
    ARRIVAL_TIMES_PER_INTERVAL, Allocation, BATCH_SAMPLES_PER_INTERVAL, BatchSample, Counters, IntervalRing,
    ModelInterval, ModelReport, Report, RequestRecord, Sharing, SimError, Summary, Ticket, batch_cut,
};
use gpuslice_traces::ArrivalProcess;
use std::collections::{HashMap, VecDeque};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Batch sizes each worker captures a CUDA graph for; a batch runs on the smallest graph that
/// holds it.
pub const GRAPH_BATCHES: [u32; 9] = gpuslice_control::GPU_GRAPH_BATCHES;

/// One model served on the GPU.
pub struct GpuModelSetup {
    /// The model's name.
    pub name: String,
    /// What its workers run.
    pub source: ModelSource,
    /// Its latency SLO, ms.
    pub slo_ms: f64,
    /// Its allocation at the start.
    pub allocation: Allocation,
    /// Generated arrivals, or `None`: requests come through `submit` until the model is retired.
    pub arrivals: Option<Box<dyn ArrivalProcess>>,
}

/// How workers are started (the script, the GPU-less mode for tests) and how GPU% changes.
#[derive(Clone)]
pub struct WorkerTemplate {
    /// The worker script.
    pub script: std::path::PathBuf,
    /// GPU-less workers that take this many ms per batch (tests).
    pub fake_ms: Option<f64>,
    /// Standby pool: with levels, every model starts a worker at each GPU% level up front and a
    /// reallocation switches to the one at the level just above the asked GPU% where the GPU has
    /// room for it, else just below (at once);
    /// without, a worker at the new GPU% is started when asked (seconds).
    pub pool_levels: Vec<f64>,
    /// The node's NetML packet pool, which every worker maps to gather requests that came as
    /// packets (None: such requests are copied on the CPU like any other).
    pub packet_pool: Option<PacketLayout>,
    /// The GPU the workers run on, by its CUDA / NVML index (None: the GPUs this process sees):
    /// under MPS the backend's daemon is started for it, else the workers see only it.
    pub device: Option<u32>,
}

impl WorkerTemplate {
    /// Whether the pool has a worker on the whole GPU (what default MPS serves on).
    pub fn has_whole_gpu_level(&self) -> bool {
        self.pool_levels.contains(&100.0)
    }

    /// The pool level serving `gpu_pct` when at most `room` GPU% is free for it (see
    /// `gpuslice_control::pool_level`).
    fn level(&self, gpu_pct: f64, room: f64) -> f64 {
        gpuslice_control::pool_level(&self.pool_levels, gpu_pct, room)
    }
}

/// What the backend hands a model's dispatcher.
enum Handover {
    /// A standby worker just started at this GPU%: serve with it from now on.
    Started(Box<Worker>, f64),
    /// Serve with the pool's worker at this GPU% level from now on.
    Level(f64),
    /// A worker started in place of one that died, or a pool level started behind the first,
    /// at this GPU%: it joins the pool.
    Replacement(Box<Worker>, f64),
    /// The replacement for the worker at this GPU% could not start.
    ReplacementFailed(f64, WorkerError),
}

/// A model whose workers at one pool level fail this many times within `FAILURE_WINDOW` is
/// marked failed (its requests dropped, new ones refused) until it is registered again: it is
/// crashing, not unlucky. (Per level: every worker lost at once, as when the MPS server dies, is
/// one failure of each.)
pub const MAX_WORKER_FAILURES: usize = 3;
/// ...(see `MAX_WORKER_FAILURES`).
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// A worker that has held a batch this many times its model's SLO (and at least `HUNG_MIN`)
/// is taken as hung, and replaced like one that died.
pub const HUNG_AFTER_SLOS: u32 = 20;
/// ...(see `HUNG_AFTER_SLOS`).
pub const HUNG_MIN: Duration = Duration::from_secs(1);
/// The n-th replacement at a level within `FAILURE_WINDOW` starts after (2^n - 1) times this:
/// the first at once, later ones backing off.
const RESTART_BACKOFF: Duration = Duration::from_millis(250);
/// A worker lost to an MPS outage is replaced after this: the dead server's clients must all
/// have exited before the control daemon starts a new one.
const MPS_OUTAGE_RESTART: Duration = Duration::from_millis(500);
/// ...and the n-th of a model's workers lost to one outage n times this later (see `worker_lost`).
const MPS_OUTAGE_STAGGER: Duration = Duration::from_secs(5);

/// A request waiting in a model's queue; submitted ones carry their ticket (generated arrivals 0)
/// and their input row (generated ones are served zeros).
struct Queued {
    arrival: Instant,
    ticket: Ticket,
    input: Option<RequestInput>,
    /// It was in a batch whose worker died: a second loss drops it.
    retried: bool,
}

/// A submitted request served: its record and its output row.
#[derive(Debug, Clone)]
pub struct Answered {
    /// When it arrived, ran and completed.
    pub record: RequestRecord,
    /// What the worker computed for it.
    pub computed: Computed,
}

/// What a model's dispatcher and the backend share.
struct Shared {
    queue: VecDeque<Queued>,
    /// Submitted requests served (times in ns since the backend started) or dropped, not yet taken.
    finished: Vec<Answered>,
    dropped_tickets: Vec<Ticket>,
    stages: StageRecorder,
    allocation: Allocation,
    total: Counters,
    interval: Counters,
    /// This interval's completed batches (the most recent ones).
    samples: IntervalRing<BatchSample>,
    /// This interval's arrival times (the most recent ones).
    interval_arrivals: IntervalRing<Instant>,
    /// No more requests will come (the arrival process ended, or the model was retired).
    arrivals_done: bool,
    /// Batches handed to workers and not completed.
    in_flight: usize,
    stop: bool,
    /// Set when the model's workers failed too often (`MAX_WORKER_FAILURES`); it serves
    /// nothing more.
    failed: Option<String>,
    /// Workers that died or hung and were replaced (or are being).
    worker_failures: u64,
    /// Workers in its pool now: none while every one is being replaced (an outage).
    workers_up: usize,
    /// When a worker last joined its pool (at start, or a replacement).
    joined: Instant,
    /// Why it last lost a worker.
    last_loss: Option<String>,
}

struct ModelHandle {
    name: String,
    /// What its workers run (a standby starts from it).
    source: ModelSource,
    /// Bytes of one request's input row.
    row_in: usize,
    slo_ms: f64,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    /// Ready standby workers go to the dispatcher through this.
    handover: mpsc::Sender<Handover>,
    /// A standby worker is starting; further GPU% changes wait for it.
    standby_starting: Arc<std::sync::atomic::AtomicBool>,
    reallocations: u64,
    /// Retired: takes no requests and holds no GPU share; serves what it had accepted.
    retired: bool,
    /// Once retired and served out: its whole-run figures, its counters given back
    /// (`GpuBackend::release_served_out`).
    released: Option<Summary>,
    /// Its slice under spatial sharing; under default MPS it serves on the whole GPU and keeps
    /// the slice its policy asked for, for a switch back.
    slice_pct: f64,
}

/// Models served on the GPU by worker processes, behind the `Backend` trait: one dispatcher per model forms batches, the standby pool switches slices at once.
pub struct GpuBackend {
    models: Vec<ModelHandle>,
    /// The counters of retired models that have served out (`release_served_out`).
    retired_total: Counters,
    threads: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
    interval: Duration,
    next_boundary: Instant,
    interval_start: Instant,
    drop_after: Option<Duration>,
    starter: WorkerStarter,
    next_ticket: Ticket,
    /// GPU% kept free for a model about to be added (`reserve`).
    reserved_pct: f64,
    telemetry: Option<Telemetry>,
    last_sample: Option<DeviceSample>,
    /// How the workers share the GPU (for reports): spatial under MPS slices, default MPS,
    /// or temporal (no MPS, the driver time-slices).
    sharing: Sharing,
    /// Watches the MPS daemon and its servers, where the workers run under MPS.
    _mps_watch: Option<crate::mps::MpsWatch>,
}

fn graph_for(n: usize) -> u32 {
    GRAPH_BATCHES.iter().copied().find(|&b| b as usize >= n).unwrap_or(GRAPH_BATCHES[GRAPH_BATCHES.len() - 1])
}

/// Starts a model's worker processes (Python start-up and CUDA graph capture: seconds), under
/// the backend's MPS daemon if it has one. Cheap to clone, so it can start workers off the
/// thread that serves.
#[derive(Clone)]
pub struct WorkerStarter {
    template: WorkerTemplate,
    mps: Option<Arc<MpsDaemon>>,
}

/// A model's workers, started and ready to serve (see `GpuBackend::add_model`), and the pool
/// levels still to start once it serves.
pub struct ModelWorkers {
    ready: Vec<(Worker, f64)>,
    to_start: Vec<f64>,
}

impl WorkerStarter {
    /// Starts workers from `template` to serve under `mode`, with a private MPS daemon where
    /// they need one: not for GPU-less workers (tests), nor under temporal sharing (the driver
    /// time-slices the workers' contexts).
    pub fn for_mode(template: WorkerTemplate, mode: Sharing) -> Result<WorkerStarter, crate::mps::MpsError> {
        let mps = match template.fake_ms {
            Some(_) => None,
            None if mode == Sharing::Temporal => None,
            None => Some(MpsDaemon::start_private(template.device)?),
        };
        Ok(WorkerStarter::new(template, mps))
    }

    /// Starts workers from `template`, under `mps` where given.
    pub fn new(template: WorkerTemplate, mps: Option<MpsDaemon>) -> WorkerStarter {
        WorkerStarter { template, mps: mps.map(Arc::new) }
    }

    fn one(&self, model: &ModelSource, gpu_pct: f64) -> Result<Worker, WorkerError> {
        self.spawn(model, gpu_pct, false)
    }

    fn spawn(&self, model: &ModelSource, gpu_pct: f64, quick_start: bool) -> Result<Worker, WorkerError> {
        Worker::spawn(&WorkerSpec {
            model: model.program.clone(),
            io: model.io.clone(),
            half: model.half,
            batches: GRAPH_BATCHES.to_vec(),
            script: self.template.script.clone(),
            env: self.worker_env(gpu_pct),
            fake_ms: self.template.fake_ms,
            input_ipc: None,
            packet_pool: self.template.packet_pool.clone(),
            green_sms: Vec::new(),
            quick_start,
        })
    }

    /// A worker's environment: an MPS client's at `gpu_pct` (its daemon runs on the device), or
    /// the device alone.
    fn worker_env(&self, gpu_pct: f64) -> Vec<(String, String)> {
        match (&self.mps, self.template.device) {
            (Some(mps), _) => mps.client_env(gpu_pct),
            (None, Some(device)) => vec![(crate::mps::VISIBLE_DEVICES.into(), device.to_string())],
            (None, None) => Vec::new(),
        }
    }

    /// The GPU% a model starting at `gpu_pct` gets: its pool level, or as asked without a pool.
    fn starting_pct(&self, gpu_pct: f64) -> f64 {
        if self.template.pool_levels.is_empty() {
            gpu_pct
        } else {
            gpuslice_control::starting_level(&self.template.pool_levels, gpu_pct)
        }
    }

    /// One worker per pool level, or one at `gpu_pct` without a pool; started in parallel, all
    /// ready before the model serves (a run that measures from its first request).
    pub fn start(&self, model: &ModelSource, gpu_pct: f64) -> Result<ModelWorkers, WorkerError> {
        let levels =
            if self.template.pool_levels.is_empty() { vec![gpu_pct] } else { self.template.pool_levels.clone() };
        std::thread::scope(|scope| {
            let handles: Vec<_> =
                levels.iter().map(|&pct| scope.spawn(move || self.one(model, pct).map(|w| (w, pct)))).collect();
            handles.into_iter().map(|h| h.join().expect("worker start")).collect::<Result<Vec<_>, _>>()
        })
        .map(|ready| ModelWorkers { ready, to_start: Vec::new() })
    }

    /// A quick-start worker (`WorkerSpec::quick_start`) at the level a model starting at
    /// `gpu_pct` serves at, alone: the model serves as soon as it is ready, a live node's model
    /// not waiting for workers it does not use yet. Every level's full worker starts behind it
    /// (`to_start`, started by `GpuBackend::add_model`); the one at its level then takes over
    /// and the quick one is retired.
    pub fn start_first(&self, model: &ModelSource, gpu_pct: f64) -> Result<ModelWorkers, WorkerError> {
        let first = self.starting_pct(gpu_pct);
        let worker = self.spawn(model, first, true)?;
        let to_start =
            if self.template.pool_levels.is_empty() { vec![first] } else { self.template.pool_levels.clone() };
        Ok(ModelWorkers { ready: vec![(worker, first)], to_start })
    }
}

/// Batch sizes a model no profile knows is measured at, at registration (`ModelWorkers::measure`).
pub const MEASURED_BATCHES: [u32; 6] = [1, 2, 4, 8, 16, 32];
/// Runs per batch size and level: the first `MEASURE_WARMUP` are not counted.
const MEASURE_RUNS: usize = 15;
/// ...(see `MEASURE_RUNS`).
const MEASURE_WARMUP: usize = 3;

impl ModelWorkers {
    /// Measures each ready worker's batch latency at `MEASURED_BATCHES` (up to the largest graph),
    /// one worker at a time on its own level: the points a latency model is fitted from when no
    /// profile knows the model. Logs each level as it is measured.
    pub fn measure(&mut self, model: &str) -> Result<Vec<gpuslice_traces::ProfilePoint>, WorkerError> {
        let largest = *GRAPH_BATCHES.last().expect("graphs");
        let mut points = Vec::new();
        for (worker, gpu_pct) in &mut self.ready {
            for &batch in MEASURED_BATCHES.iter().filter(|&&b| b <= largest) {
                let mut ms = Vec::with_capacity(MEASURE_RUNS);
                for run in 0..MEASURE_RUNS {
                    let times = worker.run(batch)?;
                    if run >= MEASURE_WARMUP {
                        ms.push(times.infer_ms);
                    }
                }
                ms.sort_by(f64::total_cmp);
                let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
                points.push(gpuslice_traces::ProfilePoint {
                    gpu_pct: *gpu_pct,
                    batch,
                    p50_ms: at(0.5),
                    p99_ms: at(0.99),
                    mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
                });
            }
            let at_one = points.iter().rfind(|p| p.batch == 1).map_or(0.0, |p| p.p50_ms);
            tracing::info!(model, gpu_pct = *gpu_pct, batch1_p50_ms = at_one, "measured one level");
        }
        Ok(points)
    }
}

impl Shared {
    /// No request will come and every one it had is answered or dropped.
    fn served_out(&self) -> bool {
        self.arrivals_done && self.queue.is_empty() && self.in_flight == 0
    }

    /// Queues a request, counting it as an arrival.
    fn push(&mut self, request: Queued) {
        self.interval_arrivals.push(request.arrival);
        self.queue.push_back(request);
        self.total.arrivals += 1;
        self.interval.arrivals += 1;
        let len = self.queue.len();
        self.total.max_queue = self.total.max_queue.max(len);
        self.interval.max_queue = self.interval.max_queue.max(len);
    }

    /// Drops requests, telling the submitters of those that were submitted.
    fn drop_requests(&mut self, dropped: impl Iterator<Item = Queued>) {
        let mut n = 0;
        for r in dropped {
            n += 1;
            if r.ticket != 0 {
                self.dropped_tickets.push(r.ticket);
            }
        }
        self.total.dropped += n as u64;
        self.interval.dropped += n as u64;
    }
}

/// The thread that queues a model's generated arrivals at their wall-clock times.
fn feed(
    mut arrivals: Box<dyn ArrivalProcess>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    started: Instant,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (lock, ready) = &*shared;
        while let Some(t) = arrivals.next_arrival() {
            let at = started + Duration::from_secs_f64(t);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let mut s = lock.lock().expect("model state");
            if s.stop {
                return;
            }
            s.push(Queued { arrival: Instant::now(), ticket: 0, input: None, retried: false });
            ready.notify_one();
        }
        lock.lock().expect("model state").arrivals_done = true;
        ready.notify_one();
    })
}

/// A batch handed to a worker and not completed yet.
struct Running {
    requests: Vec<Queued>,
    /// Its worker's index in the dispatcher's pool.
    worker: usize,
    graph: u32,
    submitted: Instant,
    /// How long the host took to write its inputs into the worker's shared memory.
    copy_in: Duration,
}

/// When a worker that runs a batch gets the next one: one hand-off before the running batch is
/// expected to end, so the GPU does not idle through the hand-off (writing the inputs, the
/// command, the worker's launch), while the next batch gathers requests until then. Learned from
/// the worker's completions.
#[derive(Default)]
struct Pace {
    /// Per (worker, graph batch size): how long its last batch held the worker.
    service: HashMap<(usize, u32), Duration>,
    /// Per worker: when its last batch completed.
    last_done: HashMap<usize, Instant>,
    /// A batch handed to an idle worker: its round trip less its GPU stages (moving average).
    hand_off: Option<Duration>,
}

impl Pace {
    /// When a batch began on its worker: at its hand-off, or when the batch ahead completed.
    fn began(&self, worker: usize, submitted: Instant) -> Instant {
        self.last_done.get(&worker).map_or(submitted, |done| submitted.max(*done))
    }

    /// Learns from a completed batch; returns when it began and how long it held the worker.
    fn completed(&mut self, worker: usize, graph: u32, c: &Completion) -> (Instant, Duration) {
        let gpu = Duration::from_secs_f64((c.times.h2d_ms + c.times.infer_ms + c.times.d2h_ms).max(0.0) * 1e-3);
        let queued_behind = self.began(worker, c.submitted);
        // The batch ahead's completion is stamped when it is read, which can be late; the batch
        // itself ran its GPU stages before its own completion, so it began no later than that.
        let began = queued_behind.min(c.done.checked_sub(gpu).unwrap_or(c.submitted)).max(c.submitted);
        let service = c.done - began;
        if queued_behind == c.submitted {
            let overhead = c.times.round_trip.saturating_sub(gpu);
            self.hand_off = Some(self.hand_off.map_or(overhead, |h| h.mul_f64(0.8) + overhead.mul_f64(0.2)));
        }
        self.service.insert((worker, graph), service);
        self.last_done.insert(worker, c.done);
        (began, service)
    }

    /// When `worker`, running a batch of `graph` handed over at `submitted`, may get the next
    /// one; `None` until its time is known (the next batch then waits for the completion).
    fn next_hand_off(&self, worker: usize, graph: u32, submitted: Instant) -> Option<Instant> {
        let expected_end = self.began(worker, submitted) + *self.service.get(&(worker, graph))?;
        Some(expected_end.checked_sub(self.hand_off?).unwrap_or(submitted).max(submitted))
    }
}

/// A model's dispatcher: forms batches from its queue and hands them to its active worker (up
/// to `SLOTS` at once), switching workers between two batches when the backend reallocates.
struct Dispatcher {
    index: usize,
    name: String,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    standby: mpsc::Receiver<Handover>,
    started: Instant,
    drop_after: Option<Duration>,
    slo_ns: u64,
    /// Starts replacements for workers that die, and hands them over.
    restarter: Restarter,
}

/// What a dispatcher needs to replace a worker.
struct Restarter {
    starter: WorkerStarter,
    source: ModelSource,
    handover: mpsc::Sender<Handover>,
}

impl Restarter {
    /// Starts a worker at `gpu_pct` after `delay` (and, during an MPS outage, once the control
    /// daemon answers again), off the serving thread; it comes back as a
    /// `Handover::Replacement` (or `ReplacementFailed`).
    fn replace(&self, gpu_pct: f64, delay: Duration) {
        let (starter, source, handover) = (self.starter.clone(), self.source.clone(), self.handover.clone());
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            if let Some(mps) = starter.mps.as_ref().filter(|m| m.in_outage()) {
                let deadline = Instant::now() + crate::mps::MPS_RECOVERY_LIMIT;
                while !mps.answering() && Instant::now() < deadline {
                    std::thread::sleep(MPS_OUTAGE_RESTART);
                }
            }
            let _ = handover.send(match starter.one(&source, gpu_pct) {
                Ok(worker) => Handover::Replacement(Box::new(worker), gpu_pct),
                Err(e) => Handover::ReplacementFailed(gpu_pct, e),
            });
        });
    }
}

/// A dispatcher's workers and what they hold.
struct Crew {
    /// Its workers and their GPU% (the standby pool, or the one worker without a pool).
    pool: Vec<(Worker, f64)>,
    /// The worker batches go to.
    active: usize,
    running: VecDeque<Running>,
    pace: Pace,
    /// When workers failed recently (within `FAILURE_WINDOW`), and at which level.
    failures: VecDeque<(Instant, f64)>,
    /// When the pool's processes were last checked for an exit (`EXIT_CHECK_EVERY`).
    checked: Instant,
    /// The MPS outage its last workers were lost to (when it began), and how many replacements
    /// it has started for it.
    outage_restarts: (Option<Instant>, u32),
}

impl Crew {
    /// The pool's worker at `pct`, a full one before a quick-start one.
    fn at_level(&self, pct: f64) -> Option<usize> {
        let at = |quick: bool| self.pool.iter().position(|(w, p)| *p == pct && w.quick_start == quick);
        at(false).or_else(|| at(true))
    }

    /// Whether a full (not quick-start) worker serves level `pct`.
    fn has_full_at(&self, pct: f64) -> bool {
        self.pool.iter().any(|(w, p)| *p == pct && !w.quick_start)
    }

    /// A quick-start worker that can go: a full one serves its level, and it holds no batch.
    fn retirable(&self) -> Option<usize> {
        (0..self.pool.len()).find(|&i| {
            let (worker, pct) = &self.pool[i];
            worker.quick_start
                && i != self.active
                && self.has_full_at(*pct)
                && !self.running.iter().any(|r| r.worker == i)
        })
    }

    /// Takes worker `w`, which holds no batch, out of the pool, renumbering the workers after
    /// it; the caller picks another active worker if it was the active one.
    fn remove(&mut self, w: usize) -> (Worker, f64) {
        for r in &mut self.running {
            r.worker -= usize::from(r.worker > w);
        }
        self.active -= usize::from(self.active > w);
        self.pace = Pace::default();
        self.pool.remove(w)
    }
}

/// Which worker a dispatcher lost (`Dispatcher::worker_lost`).
enum Lost {
    /// The pool's worker at this index.
    Pool(usize),
    /// The replacement being started at this GPU%.
    Start(f64),
}

/// How often a dispatcher checks that its workers' processes are alive: an idle standby that
/// died is replaced before the policy moves onto it.
const EXIT_CHECK_EVERY: Duration = Duration::from_millis(50);

impl Dispatcher {
    /// Wakes this dispatcher when `worker` writes a completion.
    fn wake_on_completion(&self, worker: &Worker) {
        let shared = self.shared.clone();
        worker.on_output(Box::new(move || {
            let (lock, ready) = &*shared;
            // Taking the lock orders this after the dispatcher's check for completions.
            let _held = lock.lock();
            ready.notify_all();
        }));
    }

    fn serve(self, pool: Vec<(Worker, f64)>, active: usize) {
        let (lock, ready) = &*self.shared;
        for (worker, _) in &pool {
            self.wake_on_completion(worker);
        }
        let mut crew = Crew {
            pool,
            active,
            running: VecDeque::new(),
            pace: Pace::default(),
            failures: VecDeque::new(),
            checked: Instant::now(),
            outage_restarts: (None, 0),
        };
        // A standby worker that takes over once the old ones have completed what they hold.
        let mut switching: Option<(Box<Worker>, f64)> = None;
        let hung_after = Duration::from_nanos(self.slo_ns * HUNG_AFTER_SLOS as u64).max(HUNG_MIN);
        loop {
            // A reallocation takes effect between two batches.
            while let Ok(handover) = self.standby.try_recv() {
                match handover {
                    Handover::Started(worker, pct) => {
                        self.wake_on_completion(&worker);
                        switching = Some((worker, pct));
                    }
                    Handover::Level(pct) => {
                        crew.active = crew.at_level(pct).unwrap_or(crew.active);
                    }
                    Handover::Replacement(worker, pct) => {
                        if crew.has_full_at(pct) {
                            // A full worker serves this level already (a lost quick-start
                            // worker's restart and its planned replacement both came): surplus.
                            tracing::info!(model = %self.name, gpu_pct = pct, "surplus pool worker stopped");
                            std::thread::spawn(move || drop(worker));
                            continue;
                        }
                        tracing::info!(model = %self.name, gpu_pct = pct, "pool worker ready");
                        self.wake_on_completion(&worker);
                        crew.pool.push((*worker, pct));
                        let mut s = lock.lock().expect("model state");
                        (s.workers_up, s.joined) = (crew.pool.len(), Instant::now());
                        let replaces_quick =
                            crew.pool.get(crew.active).is_some_and(|(w, p)| w.quick_start && *p == pct);
                        if crew.pool.len() == 1 || pct == s.allocation.gpu_pct || replaces_quick {
                            crew.active = crew.pool.len() - 1;
                        }
                    }
                    Handover::ReplacementFailed(pct, e) => {
                        if !self.worker_lost(&mut lock.lock().expect("model state"), &mut crew, Lost::Start(pct), e) {
                            return;
                        }
                    }
                }
            }
            let mut s = lock.lock().expect("model state");
            // Checked under the lock: a completion written after this check wakes the wait below.
            if let Err((w, e)) = self.collect(&mut s, &mut crew) {
                if !self.worker_lost(&mut s, &mut crew, Lost::Pool(w), e) {
                    return;
                }
                continue;
            }
            let now = Instant::now();
            if now - crew.checked > EXIT_CHECK_EVERY {
                crew.checked = now;
                let exited: Vec<(usize, WorkerError)> = crew
                    .pool
                    .iter_mut()
                    .enumerate()
                    .filter_map(|(w, (worker, _))| Some((w, worker.exited()?)))
                    .collect();
                if !exited.is_empty() {
                    // Every worker that exited at once (all of them when the MPS server dies);
                    // the highest index first, so that the others' indices hold.
                    for (w, e) in exited.into_iter().rev() {
                        if !self.worker_lost(&mut s, &mut crew, Lost::Pool(w), e) {
                            return;
                        }
                    }
                    continue;
                }
            }
            if let Some(r) = crew.running.iter().find(|r| now - r.submitted > hung_after) {
                let (w, waited_ms) = (r.worker, (now - r.submitted).as_secs_f64() * 1e3);
                let e = WorkerError::Hung { model: self.name.clone(), waited_ms };
                if !self.worker_lost(&mut s, &mut crew, Lost::Pool(w), e) {
                    return;
                }
                continue;
            }
            if let Some(quick) = crew.retirable() {
                let (worker, pct) = crew.remove(quick);
                s.workers_up = crew.pool.len();
                drop(s);
                tracing::info!(model = %self.name, gpu_pct = pct, "quick-start worker retired: a full one serves its level");
                std::thread::spawn(move || drop(worker));
                continue;
            }
            if crew.running.is_empty()
                && let Some((worker, pct)) = switching.take()
            {
                (s.workers_up, s.joined) = (1, Instant::now());
                drop(s);
                let old = std::mem::replace(&mut crew.pool, vec![(*worker, pct)]);
                // Old workers take a moment to exit: not on the serving thread.
                std::thread::spawn(move || drop(old));
                (crew.active, crew.pace) = (0, Pace::default());
                continue;
            }
            if let Some(limit) = self.drop_after {
                let expired = s.queue.iter().take_while(|r| now - r.arrival > limit).count();
                let dropped: Vec<Queued> = s.queue.drain(..expired).collect();
                s.drop_requests(dropped.into_iter());
            }
            let Some(head) = s.queue.front().map(|r| r.arrival) else {
                if (s.stop || s.arrivals_done) && crew.running.is_empty() {
                    return;
                }
                drop(ready.wait_timeout(s, Duration::from_millis(5)).expect("model state"));
                continue;
            };
            let a = s.allocation;
            let max = (a.max_batch as usize).min(*GRAPH_BATCHES.last().expect("graphs") as usize);
            let full = s.queue.len() >= max;
            // A batch is formed when it holds `min_batch` or when its first request has waited the
            // batch timeout, and goes when its worker is ready for it (none while every worker is
            // being replaced).
            let enough = s.queue.len() >= (a.min_batch as usize).min(max);
            let deadline = head + Duration::from_secs_f64(a.batch_timeout_ms * 1e-3);
            let formed_at = if enough || s.arrivals_done { now } else { deadline };
            let active = crew.active;
            let held = crew.running.iter().filter(|r| r.worker == active).count();
            let worker_ready_at = match crew.running.iter().rfind(|r| r.worker == active) {
                _ if switching.is_some() || held >= SLOTS || crew.pool.is_empty() => None,
                None => Some(now),
                Some(_) if full => Some(now),
                Some(r) => crew.pace.next_hand_off(active, r.graph, r.submitted),
            };
            match worker_ready_at.map(|at| at.max(formed_at)) {
                Some(at) if at <= now => {}
                wait => {
                    // Until then, a completion or an arrival: whichever comes first.
                    let timeout = wait.map_or(Duration::from_millis(5), |at| at - now);
                    drop(ready.wait_timeout(s, timeout).expect("model state"));
                    continue;
                }
            }
            let mut n = s.queue.len().min(max);
            // Sent because `min_batch` are queued, before the oldest's timeout: a batch takes a
            // size its worker has a graph of, as the simulator's batches do (`batch_cut`).
            if now < deadline {
                n = batch_cut(&GRAPH_BATCHES, n as u32, a.min_batch) as usize;
            }
            let mut requests: Vec<Queued> = s.queue.drain(..n).collect();
            s.in_flight += 1;
            drop(s);
            let graph = graph_for(n);
            let submitted = Instant::now();
            let worker = &mut crew.pool[active].0;
            let row = worker.row_bytes().0;
            // Requests that came as packets in the pool this worker maps go last: their packets'
            // slots are written where their rows are, and the worker gathers the payloads (on the
            // GPU) from where they landed. Every other request's input goes into its row of the
            // worker's shared memory, as it came (the one copy on the host, or a CPU gather);
            // rows without one, and the graph's padding, are zeros.
            let gathered_by_worker = |q: &Queued| match (&q.input, worker.packet_pool()) {
                (Some(RequestInput::Packets(p)), Some(pool)) => p.store().layout() == pool && pool.gathers(row),
                _ => false,
            };
            requests.sort_by_key(|q| gathered_by_worker(q));
            let first_gathered = requests.iter().position(gathered_by_worker).unwrap_or(requests.len());
            let mut copy_in = Duration::ZERO;
            let handed = worker.submit(graph, 0, |slot| {
                let began = Instant::now();
                let (copied, gathered) = slot[..graph as usize * row].split_at_mut(first_gathered * row);
                for (i, rows) in copied.chunks_exact_mut(row).enumerate() {
                    match &requests[i].input {
                        Some(input) => input.copy_to(rows),
                        None => rows.fill(0),
                    }
                }
                let packets = requests[first_gathered..].iter().filter_map(|q| match &q.input {
                    Some(RequestInput::Packets(p)) => Some(p.slots()),
                    _ => None,
                });
                let slots = packets.flatten().flat_map(|s| s.to_le_bytes());
                let padding = gathered.len() - (n - first_gathered) * row;
                let (descriptors, padding_rows) = gathered.split_at_mut(gathered.len() - padding);
                descriptors.iter_mut().zip(slots).for_each(|(byte, s)| *byte = s);
                padding_rows.fill(0);
                copy_in = began.elapsed();
                first_gathered as u32..n as u32
            });
            crew.running.push_back(Running { requests, worker: active, graph, submitted, copy_in });
            if let Err(e) = handed
                && !self.worker_lost(&mut lock.lock().expect("model state"), &mut crew, Lost::Pool(active), e)
            {
                return;
            }
        }
    }

    /// Records every batch that has completed, oldest first per worker; a worker that fails is
    /// named with its error.
    fn collect(&self, s: &mut Shared, crew: &mut Crew) -> Result<(), (usize, WorkerError)> {
        let mut workers: Vec<usize> = crew.running.iter().map(|r| r.worker).collect();
        workers.sort_unstable();
        workers.dedup();
        for w in workers {
            let (worker, gpu_pct) = &mut crew.pool[w];
            while let Some(completion) = worker.try_complete().map_err(|e| (w, e))? {
                let i = crew.running.iter().position(|r| r.worker == w).expect("a batch of this worker runs");
                let batch = crew.running.remove(i).expect("index");
                let rows = worker.output_of(completion.slot).chunks_exact(worker.row_bytes().1);
                self.record(s, batch, &completion, rows, *gpu_pct, &mut crew.pace);
            }
        }
        Ok(())
    }

    /// A worker died, hung or could not be replaced (`lost`, why: `e`). It leaves the pool; the
    /// requests of its batches go back to the head of the queue, once (lost a second time, they
    /// are dropped and their submitters told); a replacement starts at its level, backing off;
    /// the model serves on another pool worker meanwhile. Returns false when workers at that level have failed
    /// `MAX_WORKER_FAILURES` times within `FAILURE_WINDOW`: the model is then marked failed.
    fn worker_lost(&self, s: &mut Shared, crew: &mut Crew, lost: Lost, e: WorkerError) -> bool {
        let (w, pct) = match lost {
            Lost::Pool(w) => (Some(w), crew.pool[w].1),
            Lost::Start(pct) => (None, pct),
        };
        // A worker that died of MPS, or during an MPS outage, is the node's loss, not a crash of
        // its model: it is replaced once MPS serves again, and does not count towards failing it.
        let mps = self.restarter.starter.mps.as_ref();
        if e.mentions_mps() {
            mps.inspect(|m| m.note_outage(&format!("a worker of {} said: {e}", self.name)));
        }
        let outage = mps.is_some_and(|m| m.in_outage());
        let now = Instant::now();
        crew.failures.retain(|(t, _)| now - *t < FAILURE_WINDOW);
        if !outage {
            crew.failures.push_back((now, pct));
        }
        let at_level = crew.failures.iter().filter(|(_, p)| *p == pct).count();
        s.worker_failures += 1;
        if let Some(w) = w {
            let (held, others): (Vec<Running>, Vec<Running>) = crew.running.drain(..).partition(|r| r.worker == w);
            crew.running = others.into();
            s.in_flight -= held.len();
            let (retry, lost): (Vec<Queued>, Vec<Queued>) =
                held.into_iter().flat_map(|r| r.requests).partition(|r| !r.retried);
            s.drop_requests(lost.into_iter());
            for mut r in retry.into_iter().rev() {
                r.retried = true;
                s.queue.push_front(r);
            }
            let was_active = crew.active == w;
            let (dead, _) = crew.remove(w);
            // A hung worker does not exit when asked; dropping it waits, then kills it.
            std::thread::spawn(move || drop(dead));
            if was_active {
                crew.active = nearest_level(&crew.pool, pct);
            }
            s.workers_up = crew.pool.len();
            s.last_loss = Some(e.to_string());
        }
        if outage {
            // One worker per model first, the pool's other levels behind it: a dozen workers
            // starting at once (imports, graph capture) each take several times longer.
            let began = mps.and_then(|m| m.outage()).map(|(began, _)| began);
            if crew.outage_restarts.0 != began {
                crew.outage_restarts = (began, 0);
            }
            let delay = MPS_OUTAGE_RESTART + MPS_OUTAGE_STAGGER * crew.outage_restarts.1;
            crew.outage_restarts.1 += 1;
            tracing::warn!(model = %self.name, gpu_pct = pct, error = %e, in_s = delay.as_secs_f64(), "worker lost to an MPS outage; it restarts when MPS serves again");
            self.restarter.replace(pct, delay);
            return true;
        }
        if at_level >= MAX_WORKER_FAILURES {
            let why =
                format!("{at_level} worker failures at {pct}% within {} s, the last: {e}", FAILURE_WINDOW.as_secs());
            self.fail(s, why, std::mem::take(&mut crew.running));
            return false;
        }
        let delay = RESTART_BACKOFF * ((1u32 << (at_level - 1)) - 1);
        tracing::warn!(model = %self.name, gpu_pct = pct, error = %e, in_s = delay.as_secs_f64(), "worker lost; its requests are retried and a replacement starts");
        self.restarter.replace(pct, delay);
        true
    }

    /// A completed batch: stage times, the sample the policy learns from (how long the batch held
    /// the worker: the slice's whole per-batch cycle, not the GPU time alone) and each request.
    /// `output_rows` are the batch's output rows, the requests' first.
    fn record<'a>(
        &self,
        s: &mut Shared,
        batch: Running,
        c: &Completion,
        mut output_rows: impl Iterator<Item = &'a [u8]>,
        gpu_pct: f64,
        pace: &mut Pace,
    ) {
        let since_start = |t: Instant| t.saturating_duration_since(self.started).as_nanos() as u64;
        let (began, service) = pace.completed(batch.worker, batch.graph, c);
        s.in_flight -= 1;
        let arrivals: Vec<Instant> = batch.requests.iter().map(|r| r.arrival).collect();
        s.total.batches += 1;
        s.interval.batches += 1;
        let busy = service.as_nanos() as f64 * gpu_pct;
        s.total.sm_pct_ns += busy;
        s.interval.sm_pct_ns += busy;
        s.samples.push(BatchSample { size: batch.graph, gpu_pct, exec_ms: service.as_secs_f64() * 1e3 });
        let size = batch.requests.len() as u32;
        let (graph, copy_in) = (batch.graph, batch.copy_in);
        let copying_out = Instant::now();
        for r in batch.requests {
            // Row i is request i's, whether or not it waits for an answer.
            let output = output_rows.next();
            let latency = (c.done - r.arrival).as_nanos() as u64;
            s.total.record_latency(latency, latency <= self.slo_ns);
            s.interval.record_latency(latency, latency <= self.slo_ns);
            if r.ticket != 0 {
                let record = RequestRecord {
                    ticket: r.ticket,
                    model: self.index,
                    arrival_ns: since_start(r.arrival),
                    start_ns: since_start(began),
                    end_ns: since_start(c.done),
                    solo_ns: service.as_nanos() as u64,
                    batch_size: size,
                };
                let output = output.map(<[u8]>::to_vec).unwrap_or_default();
                let (h2d_ms, d2h_ms) = (c.times.h2d_ms, c.times.d2h_ms);
                s.finished.push(Answered { record, computed: Computed { output, h2d_ms, d2h_ms } });
            }
        }
        let waits = arrivals.iter().map(|&a| RequestWaits {
            handed: c.submitted.saturating_duration_since(a),
            started: began.saturating_duration_since(a),
            answered: c.done.saturating_duration_since(a),
        });
        let device = DeviceTimes { h2d_ms: c.times.h2d_ms, infer_ms: c.times.infer_ms, d2h_ms: c.times.d2h_ms };
        s.stages.record(waits, graph, device, (copy_in, copying_out.elapsed()));
    }

    /// Nothing accepted is lost silently: the batches in flight and the queue are dropped and
    /// their submitters told; the model takes no more requests.
    fn fail(&self, s: &mut Shared, why: String, running: VecDeque<Running>) {
        tracing::error!(model = %self.name, error = %why, "model failed; its requests are dropped");
        let queued: Vec<Queued> = s.queue.drain(..).collect();
        s.drop_requests(running.into_iter().flat_map(|r| r.requests).chain(queued));
        s.in_flight = 0;
        s.failed = Some(why);
        s.stop = true;
    }
}

/// The pool worker to serve on while the one at `pct`% is replaced: the highest level at or below
/// it (the model keeps within its share), else the lowest above; 0 in an empty pool.
fn nearest_level(pool: &[(Worker, f64)], pct: f64) -> usize {
    let below = pool.iter().enumerate().filter(|(_, (_, p))| *p <= pct).max_by(|a, b| a.1.1.total_cmp(&b.1.1));
    let above = || pool.iter().enumerate().min_by(|a, b| a.1.1.total_cmp(&b.1.1));
    below.or_else(above).map_or(0, |(i, _)| i)
}

impl GpuBackend {
    /// Starts every model's workers (all in parallel), arrival feeder and dispatcher. With no
    /// setups, models come later through `add_model`.
    pub fn start(
        setups: Vec<GpuModelSetup>,
        control_interval: Duration,
        drop_after: Option<Duration>,
        starter: WorkerStarter,
        sharing: Sharing,
    ) -> Result<GpuBackend, BackendError> {
        let mut setups = setups;
        if sharing == Sharing::Spatial {
            for s in &mut setups {
                s.allocation.gpu_pct = starter.starting_pct(s.allocation.gpu_pct);
            }
        }
        let workers: Vec<ModelWorkers> = std::thread::scope(|scope| {
            let handles: Vec<_> = setups
                .iter()
                .map(|s| {
                    // Under default MPS every model serves on the whole GPU (see `add_model`).
                    let pct = if sharing == Sharing::DefaultMps { 100.0 } else { s.allocation.gpu_pct };
                    let (starter, source) = (&starter, &s.source);
                    scope.spawn(move || starter.start(source, pct))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("worker start")).collect::<Result<_, _>>()
        })?;
        let started = Instant::now();
        let mut backend = GpuBackend {
            models: Vec::new(),
            retired_total: Counters::new(),
            threads: Vec::new(),
            started,
            interval: control_interval,
            next_boundary: started + control_interval,
            interval_start: started,
            drop_after,
            telemetry: if starter.template.fake_ms.is_some() {
                None
            } else {
                Telemetry::open(starter.template.device.unwrap_or(0)).map_err(|e| tracing::warn!("{e}")).ok()
            },
            _mps_watch: starter.mps.as_ref().map(|m| m.watch()),
            starter,
            next_ticket: 1,
            reserved_pct: 0.0,
            last_sample: None,
            sharing,
        };
        for (setup, pool) in setups.into_iter().zip(workers) {
            backend.add_model(setup, pool)?;
        }
        Ok(backend)
    }

    /// Why `model` serves nothing any more, if its workers failed too often
    /// (`MAX_WORKER_FAILURES`); None for a serving or unknown model.
    pub fn failure(&self, model: usize) -> Option<String> {
        self.models.get(model)?.shared.0.lock().expect("model state").failed.clone()
    }

    /// Why `model` cannot serve right now while it recovers: every worker of its pool is being
    /// replaced. None for a serving, failed or unknown model.
    pub fn outage(&self, model: usize) -> Option<String> {
        let s = self.models.get(model)?.shared.0.lock().expect("model state");
        if s.failed.is_some() || s.workers_up > 0 {
            return None;
        }
        let why = s.last_loss.as_deref().unwrap_or("its workers are starting");
        Some(format!("its workers are being replaced ({why})"))
    }

    /// Why the whole node cannot serve right now: an MPS outage, until every model that serves
    /// has a worker again that joined after the outage began (every MPS client dies with its
    /// server), or `MPS_RECOVERY_LIMIT` has passed (then each model's own state tells).
    pub fn node_outage(&self) -> Option<String> {
        let mps = self.starter.mps.as_ref()?;
        let (began, why) = mps.outage()?;
        let back = self.models.iter().filter(|m| !m.retired).all(|m| {
            let s = m.shared.0.lock().expect("model state");
            s.failed.is_some() || (s.workers_up > 0 && s.joined > began)
        }) || began.elapsed() > crate::mps::MPS_RECOVERY_LIMIT;
        if back {
            mps.end_outage(began);
            return None;
        }
        Some(format!("recovering from an MPS outage ({why}), {:.1} s so far", began.elapsed().as_secs_f64()))
    }

    /// The GPU% levels of the standby pool (empty without one): the only slices it serves.
    pub fn pool_levels(&self) -> &[f64] {
        &self.starter.template.pool_levels
    }

    /// What starts workers for models added later (`add_model`), to run off the serving thread.
    pub fn starter(&self) -> WorkerStarter {
        self.starter.clone()
    }

    /// Serves a model on workers from `starter().start(...)`; returns its index. Refused if the
    /// GPU has no room for its share.
    pub fn add_model(&mut self, setup: GpuModelSetup, workers: ModelWorkers) -> Result<usize, SimError> {
        let mut setup = setup;
        let held = self.held_pct(None);
        let slice_pct = setup.allocation.gpu_pct;
        if self.sharing == Sharing::DefaultMps {
            setup.allocation.gpu_pct = 100.0;
        } else if !self.starter.template.pool_levels.is_empty() {
            setup.allocation.gpu_pct = self.starter.template.level(setup.allocation.gpu_pct, 100.0 - held);
        }
        if let Some(problem) = setup.allocation.problem() {
            return Err(SimError::InvalidModel { model: setup.name, problem });
        }
        let total = held + setup.allocation.gpu_pct;
        if self.sharing == Sharing::Spatial && total > 100.0 + 1e-9 {
            return Err(SimError::OverSubscribed { total_pct: total });
        }
        let shared = Arc::new((
            Mutex::new(Shared {
                queue: VecDeque::new(),
                finished: Vec::new(),
                dropped_tickets: Vec::new(),
                stages: StageRecorder::default(),
                allocation: setup.allocation,
                total: Counters::new(),
                interval: Counters::new(),
                samples: IntervalRing::new(BATCH_SAMPLES_PER_INTERVAL),
                interval_arrivals: IntervalRing::new(ARRIVAL_TIMES_PER_INTERVAL),
                arrivals_done: false,
                in_flight: 0,
                stop: false,
                failed: None,
                worker_failures: 0,
                workers_up: workers.ready.len(),
                joined: Instant::now(),
                last_loss: None,
            }),
            Condvar::new(),
        ));
        let index = self.models.len();
        let (handover, standby) = mpsc::channel();
        if let Some(arrivals) = setup.arrivals {
            self.threads.push(feed(arrivals, shared.clone(), self.started));
        }
        let dispatcher = Dispatcher {
            index,
            name: setup.name.clone(),
            shared: shared.clone(),
            standby,
            started: self.started,
            drop_after: self.drop_after,
            slo_ns: (setup.slo_ms * 1e6) as u64,
            restarter: Restarter {
                starter: self.starter.clone(),
                source: setup.source.clone(),
                handover: handover.clone(),
            },
        };
        // The pool's other levels join as they come up, as replacements do.
        for &pct in &workers.to_start {
            dispatcher.restarter.replace(pct, Duration::ZERO);
        }
        let pool = workers.ready;
        let row_in = pool.first().map_or(0, |(w, _)| w.row_bytes().0);
        let active = pool.iter().position(|(_, pct)| *pct == setup.allocation.gpu_pct).unwrap_or(0);
        self.threads.push(std::thread::spawn(move || dispatcher.serve(pool, active)));
        self.models.push(ModelHandle {
            name: setup.name,
            source: setup.source,
            row_in,
            slo_ms: setup.slo_ms,
            shared,
            handover,
            standby_starting: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            reallocations: 0,
            retired: false,
            released: None,
            slice_pct,
        });
        Ok(index)
    }

    /// Stops taking requests for a model and frees its GPU share; what it accepted is still
    /// served (then its workers exit).
    pub fn retire_model(&mut self, model: usize) -> Result<(), SimError> {
        let handle = self.models.get_mut(model).ok_or(SimError::UnknownModel(model))?;
        handle.retired = true;
        let (lock, ready) = &*handle.shared;
        lock.lock().expect("model state").arrivals_done = true;
        ready.notify_all();
        Ok(())
    }

    /// Queues one request for a model (an open one: added without arrivals, not retired), with
    /// its input row (None: zeros); its result comes out of `take_answered` (or `take_finished`)
    /// under the returned ticket.
    pub fn submit(&mut self, model: usize, input: Option<RequestInput>) -> Result<Ticket, SimError> {
        let handle = self.models.get(model).ok_or(SimError::UnknownModel(model))?;
        if let Some(input) = &input
            && input.len() != handle.row_in
        {
            return Err(SimError::InvalidModel {
                model: handle.name.clone(),
                problem: format!("a request's input is {} bytes, {} given", handle.row_in, input.len()),
            });
        }
        let (lock, ready) = &*handle.shared;
        let mut s = lock.lock().expect("model state");
        if handle.retired {
            return Err(SimError::Retired(handle.name.clone()));
        }
        if let Some(cause) = &s.failed {
            return Err(SimError::InvalidModel {
                model: handle.name.clone(),
                problem: format!("it has failed: {cause}"),
            });
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        s.push(Queued { arrival: Instant::now(), ticket, input, retried: false });
        ready.notify_one();
        Ok(ticket)
    }

    /// Submitted requests served (with their outputs) and dropped since the last call.
    pub fn take_answered(&mut self) -> (Vec<Answered>, Vec<Ticket>) {
        let (mut done, mut dropped) = (Vec::new(), Vec::new());
        for m in &self.models {
            let mut s = m.shared.0.lock().expect("model state");
            done.append(&mut s.finished);
            dropped.append(&mut s.dropped_tickets);
        }
        (done, dropped)
    }

    /// Submitted requests served and dropped since the last call (`take_answered` without the
    /// outputs).
    pub fn take_finished(&mut self) -> (Vec<RequestRecord>, Vec<Ticket>) {
        let (done, dropped) = self.take_answered();
        (done.into_iter().map(|a| a.record).collect(), dropped)
    }

    /// A model's allocation now.
    pub fn allocation(&self, model: usize) -> Result<Allocation, SimError> {
        let handle = self.models.get(model).ok_or(SimError::UnknownModel(model))?;
        Ok(handle.shared.0.lock().expect("model state").allocation)
    }

    /// Keeps `gpu_pct` free for a model about to be added: reallocations round to pool levels
    /// that leave it free, until `reserve(0.0)`.
    pub fn reserve(&mut self, gpu_pct: f64) {
        self.reserved_pct = gpu_pct.max(0.0);
    }

    /// GPU% held by the models in service, leaving one out.
    fn held_pct(&self, except: Option<usize>) -> f64 {
        self.models
            .iter()
            .enumerate()
            .filter(|(i, m)| Some(*i) != except && !m.retired)
            .map(|(_, m)| m.shared.0.lock().expect("model state").allocation.gpu_pct)
            .sum()
    }

    /// What each model saw since the last call (one entry per model index, retired ones too).
    pub fn take_interval(&mut self) -> Vec<ModelInterval> {
        let (start, end) = (self.interval_start, Instant::now());
        self.interval_start = end;
        let span = (end - start).as_nanos() as u64;
        self.release_served_out();
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
                    batches: s.samples.take(),
                    arrivals_s: s
                        .interval_arrivals
                        .take()
                        .into_iter()
                        .map(|t| t.saturating_duration_since(self.started).as_secs_f64())
                        .collect(),
                }
            })
            .collect()
    }

    /// A retired model that has served what it accepted hands its counters to `retired_total`
    /// and gives back their memory (eight histograms, about 1.4 MB), keeping its whole-run
    /// summary: a node that registers and unregisters models for weeks stays flat. Its index
    /// stays, as every index does.
    fn release_served_out(&mut self) {
        let span = (Instant::now() - self.started).as_nanos() as u64;
        for handle in self.models.iter_mut().filter(|m| m.retired && m.released.is_none()) {
            let mut s = handle.shared.0.lock().expect("model state");
            if !s.served_out() {
                continue;
            }
            self.retired_total.merge(&s.total);
            handle.released = Some(s.total.summary(span, span));
            (s.total, s.interval, s.stages) = (Counters::released(), Counters::released(), StageRecorder::released());
        }
    }

    /// True once every model's arrivals have ended and its queue is served.
    fn drained(&self) -> bool {
        self.models.iter().all(|m| {
            let s = m.shared.0.lock().expect("model state");
            s.served_out() || s.stop
        })
    }
}

impl Backend for GpuBackend {
    fn next_interval(&mut self) -> Option<Vec<ModelInterval>> {
        if self.drained() {
            return None;
        }
        std::thread::sleep(self.next_boundary.saturating_duration_since(Instant::now()));
        self.next_boundary += self.interval;
        let time_s = self.started.elapsed().as_secs_f64();
        self.last_sample =
            self.telemetry.as_ref().and_then(|t| t.sample(time_s).map_err(|e| tracing::warn!("{e}")).ok());
        Some(self.take_interval())
    }

    /// A new GPU% starts a standby worker beside the old one (in the background; the old one
    /// serves until the standby is ready); batch size and timeout change at once.
    fn apply(&mut self, model: usize, allocation: Allocation) -> Result<(), BackendError> {
        let handle = self.models.get(model).ok_or(SimError::UnknownModel(model))?;
        let (name, source) = (handle.name.clone(), handle.source.clone());
        if handle.retired {
            return Err(SimError::Retired(name).into());
        }
        let mut allocation = allocation;
        if self.sharing == Sharing::DefaultMps {
            // On the whole GPU: the batching applies now, the slice at a switch back.
            let handle = &mut self.models[model];
            handle.slice_pct = allocation.gpu_pct;
            handle.shared.0.lock().expect("model state").allocation = Allocation { gpu_pct: 100.0, ..allocation };
            return Ok(());
        }
        let held_by_others = self.held_pct(Some(model));
        let pool = &self.starter.template.pool_levels;
        if !pool.is_empty() {
            let room = 100.0 - held_by_others - self.reserved_pct;
            allocation.gpu_pct = self.starter.template.level(allocation.gpu_pct, room);
        }
        if let Some(problem) = allocation.problem() {
            return Err(SimError::InvalidModel { model: name, problem }.into());
        }
        let total = held_by_others + allocation.gpu_pct;
        if total > 100.0 + 1e-9 {
            return Err(SimError::OverSubscribed { total_pct: total }.into());
        }
        use std::sync::atomic::Ordering;
        let handle = &mut self.models[model];
        let previous = handle.shared.0.lock().expect("model state").allocation;
        let new_slice = previous.gpu_pct != allocation.gpu_pct;
        if !pool.is_empty() {
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
            let (starter, handover) = (self.starter.clone(), handle.handover.clone());
            let starting = handle.standby_starting.clone();
            std::thread::spawn(move || {
                match starter.one(&source, allocation.gpu_pct) {
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
        total.merge(&self.retired_total);
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
                    worker_failures: s.worker_failures,
                    summary: m.released.clone().unwrap_or_else(|| s.total.summary(span, span)),
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

    /// Switches between slices and default MPS by moving every model to another worker of its
    /// standby pool: to its whole-GPU one, or back to the level of its slice (in model order,
    /// each within what the others left). Needs a pool with a 100% level; temporal sharing
    /// (no MPS) is not switched to.
    fn set_sharing(&mut self, sharing: Sharing) -> Result<(), BackendError> {
        if sharing == self.sharing {
            return Ok(());
        }
        let template = &self.starter.template;
        let switchable = [Sharing::Spatial, Sharing::DefaultMps];
        if !(switchable.contains(&sharing) && switchable.contains(&self.sharing) && template.has_whole_gpu_level()) {
            return Err(BackendError::Unsupported(format!(
                "the GPU backend serves {} and cannot switch to {sharing}: it switches only between spatial and default-mps, with a 100% pool level (levels: {:?})",
                self.sharing, template.pool_levels
            )));
        }
        let mut held = self.reserved_pct;
        for handle in self.models.iter_mut().filter(|m| !m.retired) {
            let mut state = handle.shared.0.lock().expect("model state");
            let pct = if sharing == Sharing::DefaultMps {
                handle.slice_pct = state.allocation.gpu_pct;
                100.0
            } else {
                template.level(handle.slice_pct, 100.0 - held)
            };
            held += pct;
            if pct != state.allocation.gpu_pct {
                state.allocation.gpu_pct = pct;
                handle.reallocations += 1;
                let _ = handle.handover.send(Handover::Level(pct));
            }
        }
        self.sharing = sharing;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::{Completion, Pace, WorkerTemplate};
    use crate::worker::StageTimes;
    use std::time::{Duration, Instant};

    fn completion(submitted: Instant, done: Instant, gpu_ms: f64) -> Completion {
        let times = StageTimes { h2d_ms: 0.0, infer_ms: gpu_ms, d2h_ms: 0.0, round_trip: done - submitted };
        Completion { slot: 0, submitted, done, times }
    }

    /// The next batch goes one hand-off (round trip less GPU time, seen on an idle worker) before
    /// the running batch is expected to end (when it began plus its size's last time).
    #[test]
    fn the_next_batch_goes_one_hand_off_before_the_running_one_ends() {
        let ms = |n: f64| Duration::from_secs_f64(n * 1e-3);
        let t0 = Instant::now();
        let mut pace = Pace::default();
        assert_eq!(pace.next_hand_off(0, 8, t0), None, "nothing known: wait for the completion");
        // Alone on the worker: 3 ms round trip, 2.5 ms of it on the GPU.
        let (began, service) = pace.completed(0, 8, &completion(t0, t0 + ms(3.0), 2.5));
        assert_eq!((began, service), (t0, ms(3.0)));
        // Handed over after that: it ends 3 ms later, the next goes 0.5 ms before.
        let t1 = t0 + ms(4.0);
        assert_eq!(pace.next_hand_off(0, 8, t1), Some(t1 + ms(2.5)));
        assert_eq!(pace.next_hand_off(0, 16, t1), None, "batch 16's time is not known");
        assert_eq!(pace.next_hand_off(1, 8, t1), None, "nor this batch's on another worker");
        // Handed over while the first still ran: it began when the first completed.
        let early = t0 + ms(1.0);
        assert_eq!(pace.next_hand_off(0, 8, early), Some(t0 + ms(5.5)));
        let (began, service) = pace.completed(0, 8, &completion(early, t0 + ms(5.8), 2.5));
        assert_eq!((began, service), (t0 + ms(3.0), ms(2.8)), "it held the worker from the first one's end");
        assert_eq!(pace.hand_off, Some(ms(0.5)), "a batch that waited behind another says nothing of the hand-off");
        // The batch ahead's completion was read late, at 5.8 ms: this one, handed over at 4.0 and
        // done at 7.0 after 2.5 ms on the GPU, began at 4.5 at the latest (not 5.8: 1.2 ms).
        let (began, service) = pace.completed(0, 8, &completion(t0 + ms(4.0), t0 + ms(7.0), 2.5));
        assert_eq!((began, service), (t0 + ms(4.5), ms(2.5)), "at least its GPU time");
        // A second batch alone: the hand-off is a moving average (0.8 * 0.5 + 0.2 * 1.0 ms).
        let t2 = t0 + ms(10.0);
        pace.completed(0, 8, &completion(t2, t2 + ms(3.5), 2.5));
        assert_eq!(pace.hand_off.map(|h| (h.as_secs_f64() * 1e6).round()), Some(600.0));
    }

    /// A GPU-less worker of a backend given GPU 1 sees that GPU alone (without MPS the device
    /// is the worker's own CUDA_VISIBLE_DEVICES; under MPS it is the daemon's).
    #[test]
    fn a_worker_for_a_device_sees_that_device_alone() {
        use gpuslice_control::ModelSource;
        use gpuslice_control::tensors::{DataType, ModelIo, TensorSpec};
        let spec = |name: &str, n: i64| TensorSpec { name: name.into(), datatype: DataType::Fp32, dims: vec![n] };
        let source = ModelSource {
            program: "m".into(),
            io: ModelIo { inputs: vec![spec("x", 4)], outputs: vec![spec("y", 2)] },
            half: true,
        };
        let template = WorkerTemplate {
            script: crate::worker::default_script(),
            fake_ms: Some(1.0),
            pool_levels: Vec::new(),
            packet_pool: None,
            device: Some(1),
        };
        let worker = super::WorkerStarter::new(template, None).one(&source, 50.0).expect("a GPU-less worker starts");
        let environ = std::fs::read(format!("/proc/{}/environ", worker.pid())).expect("the worker's environment");
        let visible: Vec<&[u8]> =
            environ.split(|b| *b == 0).filter(|kv| kv.starts_with(b"CUDA_VISIBLE_DEVICES=")).collect();
        assert_eq!(visible, [&b"CUDA_VISIBLE_DEVICES=1"[..]]);
    }

    #[test]
    fn pool_levels_round_up_where_there_is_room_else_to_what_fits() {
        let t = WorkerTemplate {
            script: "w.py".into(),
            fake_ms: None,
            pool_levels: vec![20.0, 30.0, 45.0, 60.0],
            packet_pool: None,
            device: None,
        };
        assert_eq!(t.level(33.0, 100.0), 45.0, "the level above, room permitting");
        assert_eq!(t.level(33.0, 40.0), 30.0, "45 does not fit: the level below");
        assert_eq!(t.level(50.0, 25.0), 20.0, "neither 60 nor 45 fit: the highest level that does");
        assert_eq!(t.level(70.0, 100.0), 60.0, "above the top level: the top level");
        assert_eq!(t.level(10.0, 100.0), 20.0, "below the lowest: the lowest");
        assert_eq!(t.level(50.0, 10.0), 20.0, "nothing fits: the lowest (the caller refuses)");
    }
}
