//! The event loop.
//!
//! Events are request arrivals (one pending per model, pulled lazily from its arrival process),
//! batch timeouts, ends of reallocation pauses, and batch completions. Completions are not kept
//! in the heap: at most a few batches run at once, and their finish times move whenever the set
//! of co-running batches changes (contention), so the next one is found by a scan instead.
//!
//! A running batch progresses at `speed / solo_time` per ns, where `solo_time` is its service
//! time alone on its slice and `speed` <= 1 accounts for sharing:
//! - temporal: one batch at a time on the whole GPU, speed 1;
//! - spatial: each model on its own GPU%, slowed only by memory interference,
//!   `speed = 1 / (1 + interference * others_share / 100)`;
//! - default MPS: every model may use all SMs. Co-running batches get SM shares that follow how
//!   SM-bound they are (large kernels keep blocks queued and hold the SMs), capped at their
//!   knees; the SM-bound part of a batch runs as it would on its share, and its launch-bound
//!   part (many small kernels) waits for SM slots behind the others' large kernels, stretched by
//!   `1 + mps_launch_contention * (others' SM-bound fractions)`; memory interference on top.
//!   Latency thus depends on who else runs, and latency-bound models suffer most, as measured
//!   on the H100.

use crate::config::{Allocation, MAX_LATENCY_MS, ModelSetup, ServiceModel, Sharing, SimConfig, batch_cut};
use crate::metrics::{Counters, IntervalRing, Summary};
use crate::service::ServiceSampler;
use crate::{Nanos, secs_to_ns};
use gpuslice_traces::ArrivalProcess;
use gpuslice_traces::arrivals::NoArrivals;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// A simulation input that cannot run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SimError {
    /// A model's setup or allocation is out of range.
    #[error("model {model}: {problem}")]
    InvalidModel {
        /// The model's name.
        model: String,
        /// What is wrong, and the value.
        problem: String,
    },
    /// A setting of the run is out of range.
    #[error("{0}")]
    InvalidConfig(String),
    /// Slices add up to more than the GPU.
    #[error("spatial sharing: GPU% of all models adds up to {total_pct:.1}, more than 100")]
    OverSubscribed {
        /// What they add up to.
        total_pct: f64,
    },
    /// No model has this index.
    #[error("no model with index {0}")]
    UnknownModel(usize),
    /// The model was retired.
    #[error("model {0} is retired and takes no requests")]
    Retired(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EventKind {
    Arrival,
    /// Batch-formation timeout of the given version (older versions are stale).
    Timeout(u64),
    /// End of a reallocation pause of the given version.
    Resume(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    at: Nanos,
    seq: u64,
    model: usize,
    kind: EventKind,
}

/// A request waiting in a model's queue.
#[derive(Debug, Clone, Copy)]
struct Queued {
    arrival: Nanos,
    /// Who to tell when it finishes (`NO_TICKET` for generated arrivals).
    ticket: Ticket,
}

/// Identifies a request submitted from outside (`Simulator::submit`).
pub type Ticket = u64;
const NO_TICKET: Ticket = 0;

struct Batch {
    model: usize,
    /// The model's worker generation when the batch started (a reallocation starts a new one).
    generation: u64,
    requests: Vec<Queued>,
    started: Nanos,
    /// The size it runs as (its requests, padded to a served size).
    size: u32,
    gpu_pct: f64,
    /// Started under default MPS (it contends for SMs) rather than on a slice or alone. Batches
    /// of both kinds run together only after `Simulator::set_sharing`.
    contends: bool,
    solo_ns: f64,
    /// Fraction of the work done at `updated`.
    progress: f64,
    speed: f64,
    /// GPU% this batch holds now (its slice; its max-min share under default MPS).
    share: f64,
    /// Under default MPS: its knee GPU% (what it asks for), its median time on the whole GPU, and
    /// the launch-bound fraction of that time.
    knee_pct: f64,
    full_gpu_ns: f64,
    launch_fraction: f64,
    updated: Nanos,
    finish_at: Nanos,
}

/// Completed batches kept per model and interval: the most recent ones, in a ring, so that long
/// intervals at high load do not hold millions of samples.
pub const BATCH_SAMPLES_PER_INTERVAL: usize = 1024;
/// Arrival times kept per model and interval, the most recent ones (see `ModelInterval::arrivals_s`).
pub const ARRIVAL_TIMES_PER_INTERVAL: usize = 1 << 16;

/// One completed batch, as a policy observes it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BatchSample {
    /// Requests in the batch.
    pub size: u32,
    /// GPU% it ran on.
    pub gpu_pct: f64,
    /// Wall time from start to completion, contention included.
    pub exec_ms: f64,
}

/// One completed request (kept when `SimConfig::record_requests` is set, and always for
/// submitted requests).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RequestRecord {
    /// The ticket `submit` returned, or 0 for generated arrivals.
    pub ticket: Ticket,
    /// The model's index.
    pub model: usize,
    /// When it arrived.
    pub arrival_ns: Nanos,
    /// When its batch started.
    pub start_ns: Nanos,
    /// When its batch finished.
    pub end_ns: Nanos,
    /// Service time the batch would have had alone on its slice.
    pub solo_ns: Nanos,
    /// Requests in its batch.
    pub batch_size: u32,
}

/// What happened to one model during one control interval.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInterval {
    /// The model's name.
    pub model: String,
    /// Start of the interval, seconds into the run.
    pub start_s: f64,
    /// End of the interval.
    pub end_s: f64,
    /// The allocation in force at its end.
    pub allocation: Allocation,
    /// Requests queued at its end.
    pub queue_len: usize,
    /// What the model saw.
    pub summary: Summary,
    /// Every batch completed in it (the most recent `BATCH_SAMPLES_PER_INTERVAL`).
    pub batches: Vec<BatchSample>,
    /// When each request arrived, seconds into the run, ascending (the most recent
    /// `ARRIVAL_TIMES_PER_INTERVAL`; `summary.arrivals` counts them all): what a policy that
    /// replays recent traffic through a model of the GPU needs.
    pub arrivals_s: Vec<f64>,
}

/// Whole-run figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// How the GPU was shared (at the end).
    pub sharing: Sharing,
    /// Simulated (or wall) seconds run.
    pub elapsed_s: f64,
    /// Events processed.
    pub events: u64,
    /// Per model.
    pub models: Vec<ModelReport>,
    /// All models together.
    pub total: Summary,
}

/// One model over a whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelReport {
    /// The model's name.
    pub model: String,
    /// Its latency SLO, ms.
    pub slo_ms: f64,
    /// The allocation in force at its end.
    pub allocation: Allocation,
    /// Allocation changes applied.
    pub reallocations: u64,
    /// Worker processes that died or hung and were replaced (the GPU backend; 0 simulated).
    pub worker_failures: u64,
    /// What the model saw.
    pub summary: Summary,
}

struct ModelState {
    name: String,
    slo_ns: Nanos,
    service: ServiceSampler,
    /// This model's `SimConfig::interference`.
    interference: f64,
    /// This model's `SimConfig::mps_launch_contention`.
    launch_contention: f64,
    allocation: Allocation,
    /// Allocation waiting for the end of a reallocation pause.
    pending: Option<Allocation>,
    worker_busy: bool,
    generation: u64,
    resume_at: Nanos,
    resume_version: u64,
    timeout_at: Option<Nanos>,
    timeout_version: u64,
    queue: VecDeque<Queued>,
    queue_changed_at: Nanos,
    /// Retired models take no new requests and serve out their queue.
    retired: bool,
    /// A retired model whose queue is served out: its figures went into
    /// `Simulator::retired_total`, its memory was given back, and reports leave it out. A
    /// model added later takes its slot when no arrival event of it is left (`arrival_pending`).
    released: bool,
    /// An arrival event of this model is in the event queue.
    arrival_pending: bool,
    /// When that arrival is, seconds (as its process gave it).
    pending_arrival_s: f64,
    /// Handed over to another GPU (`Simulator::hand_over`): its figures go to `departed` once
    /// its queue is served out, not into the run's total alone.
    handed_over: bool,
    arrivals: Box<dyn ArrivalProcess>,
    total: Counters,
    interval: Counters,
    interval_batches: IntervalRing<BatchSample>,
    interval_arrivals: IntervalRing<f64>,
    reallocations: u64,
}

impl ModelState {
    /// Its whole-run figures at `now`, rates over `span`.
    fn whole_run(&self, now: Nanos, span: Nanos) -> ModelReport {
        ModelReport {
            model: self.name.clone(),
            slo_ms: self.slo_ns as f64 * 1e-6,
            allocation: self.pending.unwrap_or(self.allocation),
            reallocations: self.reallocations,
            worker_failures: 0,
            summary: self.total.summary(now, span),
        }
    }

    /// Accounts queue length x time up to `now`; call before the queue changes.
    fn touch_queue(&mut self, now: Nanos) {
        let area = self.queue.len() as f64 * (now - self.queue_changed_at) as f64;
        self.total.queue_area += area;
        self.interval.queue_area += area;
        self.queue_changed_at = now;
    }

    /// When the oldest queued request has waited the batch timeout (None with an empty queue).
    fn batch_deadline(&self) -> Option<Nanos> {
        let head = self.queue.front()?.arrival;
        Some(head.saturating_add(secs_to_ns(self.allocation.batch_timeout_ms * 1e-3)))
    }
}

/// The stream of a model handed over (`Simulator::hand_over`): the arrival already drawn, then
/// the rest of its process.
struct Resumed {
    drawn: Option<f64>,
    rest: Box<dyn ArrivalProcess>,
}

impl ArrivalProcess for Resumed {
    fn next_arrival(&mut self) -> Option<f64> {
        self.drawn.take().or_else(|| self.rest.next_arrival())
    }
}

/// The simulator of one GPU serving several models.
pub struct Simulator {
    config: SimConfig,
    drop_after_ns: Option<Nanos>,
    now: Nanos,
    seq: u64,
    rng: SmallRng,
    heap: BinaryHeap<Reverse<Event>>,
    models: Vec<ModelState>,
    running: Vec<Batch>,
    next_completion: Nanos,
    spare_vecs: Vec<Vec<Queued>>,
    /// Scratch space of the default-MPS share computation.
    scratch_order: Vec<(f64, usize)>,
    events: u64,
    /// Time of the latest arrival: the span whole-run rates are taken over.
    last_arrival: Nanos,
    interval_start: Nanos,
    requests: Vec<RequestRecord>,
    /// Submitted requests dropped at their deadline, not yet taken.
    dropped_tickets: Vec<Ticket>,
    next_ticket: Ticket,
    /// The whole-run figures of released models (see `ModelState::released`).
    retired_total: Counters,
    /// Temporal sharing: the model whose batch the GPU ran last.
    last_temporal_model: Option<usize>,
    /// Handed-over models served out here, not yet taken (`take_departed`).
    departed: Vec<ModelReport>,
}

impl Simulator {
    /// A simulator of `setups` under `config`, at time 0; refused with the reason when a setup is out of range.
    pub fn new(config: SimConfig, setups: Vec<ModelSetup>) -> Result<Simulator, SimError> {
        if let Some(problem) = config.problem() {
            return Err(SimError::InvalidConfig(problem));
        }
        let models =
            setups.into_iter().map(|setup| Self::model_state(&config, setup)).collect::<Result<Vec<_>, _>>()?;
        let mut sim = Simulator {
            drop_after_ns: config.drop_after_ms.map(|ms| secs_to_ns(ms * 1e-3)),
            rng: SmallRng::seed_from_u64(config.seed),
            config,
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            models,
            running: Vec::new(),
            next_completion: Nanos::MAX,
            spare_vecs: Vec::new(),
            scratch_order: Vec::new(),
            events: 0,
            last_arrival: 0,
            last_temporal_model: None,
            interval_start: 0,
            requests: Vec::new(),
            dropped_tickets: Vec::new(),
            next_ticket: NO_TICKET + 1,
            retired_total: Counters::new(),
            departed: Vec::new(),
        };
        sim.check_capacity()?;
        for m in 0..sim.models.len() {
            sim.schedule_next_arrival(m);
        }
        Ok(sim)
    }

    fn model_state(config: &SimConfig, setup: ModelSetup) -> Result<ModelState, SimError> {
        let invalid = |problem: String| SimError::InvalidModel { model: setup.name.clone(), problem };
        if let Some(problem) = setup.allocation.problem() {
            return Err(invalid(problem));
        }
        if !(setup.slo_ms.is_finite() && setup.slo_ms > 0.0 && setup.slo_ms <= MAX_LATENCY_MS) {
            return Err(invalid(format!("slo_ms must be in (0, {MAX_LATENCY_MS}], got {}", setup.slo_ms)));
        }
        match setup.service {
            ServiceModel::Constant { ms: v } | ServiceModel::Exponential { mean_ms: v }
                if !(v.is_finite() && v > 0.0) =>
            {
                return Err(invalid(format!("service time must be > 0 ms, got {v}")));
            }
            _ => {}
        }
        Ok(ModelState {
            interference: config.interference_of(&setup.name),
            launch_contention: config
                .mps_launch_contention_by_model
                .get(&setup.name)
                .copied()
                .unwrap_or(config.mps_launch_contention),
            name: setup.name,
            slo_ns: secs_to_ns(setup.slo_ms * 1e-3),
            service: ServiceSampler::new(setup.service),
            allocation: setup.allocation,
            pending: None,
            worker_busy: false,
            generation: 0,
            resume_at: 0,
            resume_version: 0,
            timeout_at: None,
            timeout_version: 0,
            queue: VecDeque::new(),
            queue_changed_at: 0,
            retired: false,
            released: false,
            arrival_pending: false,
            pending_arrival_s: 0.0,
            handed_over: false,
            arrivals: setup.arrivals,
            total: Counters::new(),
            interval: Counters::new(),
            interval_batches: IntervalRing::new(BATCH_SAMPLES_PER_INTERVAL),
            interval_arrivals: IntervalRing::new(ARRIVAL_TIMES_PER_INTERVAL),
            reallocations: 0,
        })
    }

    /// Adds a model while running; returns its index. Its allocation must fit the GPU.
    pub fn add_model(&mut self, setup: ModelSetup) -> Result<usize, SimError> {
        let mut state = Self::model_state(&self.config, setup)?;
        state.queue_changed_at = self.now;
        // A released model's slot is taken again (a node that registers and unregisters models
        // for weeks keeps its table the size of what it serves): nothing refers to the slot any
        // more, and the new model's versions start past the old one's, so that no stale
        // timeout or resume event of the old model is taken for its own.
        let reusable = self.models.iter().position(|m| m.released && !m.arrival_pending);
        let m = match reusable {
            Some(m) => {
                let old = &self.models[m];
                state.generation = old.generation + 1;
                state.resume_version = old.resume_version + 1;
                state.timeout_version = old.timeout_version + 1;
                let old = std::mem::replace(&mut self.models[m], state);
                if let Err(e) = self.check_capacity() {
                    self.models[m] = old;
                    return Err(e);
                }
                m
            }
            None => {
                self.models.push(state);
                if let Err(e) = self.check_capacity() {
                    self.models.pop();
                    return Err(e);
                }
                self.models.len() - 1
            }
        };
        self.schedule_next_arrival(m);
        Ok(m)
    }

    /// Stops a model taking requests; what it has queued or running is still served. Its slice
    /// no longer counts against the GPU.
    pub fn retire_model(&mut self, model: usize) -> Result<(), SimError> {
        let state = self.models.get_mut(model).ok_or(SimError::UnknownModel(model))?;
        state.retired = true;
        Ok(())
    }

    /// Moves a model's arrivals off this GPU to another's simulator (`add_model` there with
    /// the stream returned, which starts at its next arrival): here it takes no more requests,
    /// serves out what it has queued (as a replica being retired does on the GPU backend), and
    /// its whole-run figures then come out of `take_departed`. Its slice no longer counts
    /// against this GPU.
    pub fn hand_over(&mut self, model: usize) -> Result<Box<dyn ArrivalProcess>, SimError> {
        let state = self.models.get_mut(model).ok_or(SimError::UnknownModel(model))?;
        if state.retired {
            return Err(SimError::Retired(state.name.clone()));
        }
        state.retired = true;
        state.handed_over = true;
        let rest = std::mem::replace(&mut state.arrivals, Box::new(NoArrivals));
        // The arrival already drawn goes with the stream: its event here finds the model retired.
        let drawn = state.arrival_pending.then_some(state.pending_arrival_s);
        Ok(Box::new(Resumed { drawn, rest }))
    }

    /// Requests of `model` queued or in a running batch (0 for an unknown model).
    pub fn in_flight(&self, model: usize) -> usize {
        let queued = self.models.get(model).map_or(0, |m| m.queue.len());
        queued + self.running.iter().filter(|b| b.model == model).map(|b| b.requests.len()).sum::<usize>()
    }

    /// The whole-run figures of models handed over (`hand_over`) that have served out their
    /// queue here, since the last call.
    pub fn take_departed(&mut self) -> Vec<ModelReport> {
        std::mem::take(&mut self.departed)
    }

    /// Enqueues a request for `model` now; its record comes out of `take_finished` with the
    /// returned ticket once it completes (or its ticket in the dropped list).
    pub fn submit(&mut self, model: usize) -> Result<Ticket, SimError> {
        let state = self.models.get(model).ok_or(SimError::UnknownModel(model))?;
        if state.retired {
            return Err(SimError::Retired(state.name.clone()));
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.enqueue(model, ticket);
        self.dispatch_after(model);
        Ok(ticket)
    }

    /// Requests finished since the last call: the completed ones recorded (every submitted one,
    /// and all when `record_requests`), and the tickets of submitted ones dropped.
    pub fn take_finished(&mut self) -> (Vec<RequestRecord>, Vec<Ticket>) {
        (std::mem::take(&mut self.requests), std::mem::take(&mut self.dropped_tickets))
    }

    /// The configuration it runs under.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Simulated time now, in ns.
    pub fn now(&self) -> Nanos {
        self.now
    }

    /// Events handled so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// How the GPU is shared now.
    pub fn sharing(&self) -> Sharing {
        self.config.sharing
    }

    /// Models added so far (retired ones included: indices stay).
    pub fn model_count(&self) -> usize {
        self.models.len()
    }

    /// The allocation a model is heading to (its pending one during a reallocation pause).
    pub fn allocation(&self, model: usize) -> Result<Allocation, SimError> {
        let m = self.models.get(model).ok_or(SimError::UnknownModel(model))?;
        Ok(m.pending.unwrap_or(m.allocation))
    }

    /// Handles every event up to and including `until`, then sets the clock to `until`.
    pub fn run_until(&mut self, until: Nanos) {
        loop {
            let heap_next = self.heap.peek().map_or(Nanos::MAX, |Reverse(e)| e.at);
            let next = heap_next.min(self.next_completion);
            if next == Nanos::MAX || next > until {
                break;
            }
            self.now = next;
            self.events += 1;
            if self.next_completion <= heap_next {
                self.complete_next_batch();
            } else if let Some(Reverse(event)) = self.heap.pop() {
                self.handle(event);
            }
        }
        if until != Nanos::MAX {
            self.now = self.now.max(until);
        }
    }

    /// Runs until every arrival has been served or dropped.
    pub fn finish(&mut self) {
        self.run_until(Nanos::MAX);
    }

    /// True when no arrivals, queued requests or running batches remain.
    pub fn is_drained(&self) -> bool {
        self.heap.is_empty() && self.running.is_empty() && self.models.iter().all(|m| m.queue.is_empty())
    }

    /// Switches how the GPU is shared, from the next batch on; running batches finish as they
    /// started (a batch on a slice keeps its SMs, a default-MPS batch contends for the rest).
    /// Spatial sharing needs the allocations to fit the GPU.
    pub fn set_sharing(&mut self, sharing: Sharing) -> Result<(), SimError> {
        if sharing == self.config.sharing {
            return Ok(());
        }
        let previous = self.config.sharing;
        self.config.sharing = sharing;
        if let Err(e) = self.check_capacity() {
            self.config.sharing = previous;
            return Err(e);
        }
        self.advance_running();
        self.reschedule_running();
        for m in 0..self.models.len() {
            self.dispatch_after(m);
        }
        Ok(())
    }

    /// Changes a model's allocation. A new GPU% or batch size takes effect after the configured
    /// reallocation pause; a new batch timeout or `min_batch` at once.
    pub fn set_allocation(&mut self, model: usize, allocation: Allocation) -> Result<(), SimError> {
        let state = self.models.get(model).ok_or(SimError::UnknownModel(model))?;
        if let Some(problem) = allocation.problem() {
            return Err(SimError::InvalidModel { model: state.name.clone(), problem });
        }
        let target = state.pending.unwrap_or(state.allocation);
        if target == allocation {
            return Ok(());
        }
        let previous = (state.allocation, state.pending);
        let state = &mut self.models[model];
        if target.gpu_pct == allocation.gpu_pct && target.max_batch == allocation.max_batch {
            let batching = state.pending.as_mut().unwrap_or(&mut state.allocation);
            (batching.batch_timeout_ms, batching.min_batch) = (allocation.batch_timeout_ms, allocation.min_batch);
            state.timeout_at = None;
            state.timeout_version += 1;
        } else {
            state.pending = Some(allocation);
            if let Err(e) = self.check_capacity() {
                let state = &mut self.models[model];
                (state.allocation, state.pending) = previous;
                return Err(e);
            }
            let state = &mut self.models[model];
            state.reallocations += 1;
            state.generation += 1;
            state.worker_busy = false;
            state.resume_at = self.now.saturating_add(self.config.reallocation.pause_ns());
            state.resume_version += 1;
            state.timeout_at = None;
            let (at, version) = (state.resume_at, state.resume_version);
            self.push(at, model, EventKind::Resume(version));
        }
        self.dispatch_after(model);
        Ok(())
    }

    /// Per-model figures since the previous call (or the start), then starts a new interval.
    pub fn take_interval(&mut self) -> Vec<ModelInterval> {
        self.advance_running();
        let (start, now) = (self.interval_start, self.now);
        self.interval_start = now;
        let intervals = self
            .models
            .iter_mut()
            .map(|m| {
                m.touch_queue(now);
                let summary = m.interval.summary(now - start, now - start);
                m.interval.reset();
                ModelInterval {
                    model: m.name.clone(),
                    start_s: start as f64 * 1e-9,
                    end_s: now as f64 * 1e-9,
                    allocation: m.pending.unwrap_or(m.allocation),
                    queue_len: m.queue.len(),
                    summary,
                    batches: m.interval_batches.take(),
                    arrivals_s: m.interval_arrivals.take(),
                }
            })
            .collect();
        // A retired model that has served its queue hands its figures to the run's and gives
        // its memory back: a node that registers and unregisters models for weeks stays flat.
        // (A batch of an earlier worker generation may still run after a reallocation.)
        let running: Vec<usize> = self.running.iter().map(|b| b.model).collect();
        let served_out = |(i, m): &(usize, &mut ModelState)| {
            m.retired && !m.released && m.queue.is_empty() && !m.worker_busy && !running.contains(i)
        };
        let span = self.rate_span();
        for (_, m) in self.models.iter_mut().enumerate().filter(served_out) {
            if m.handed_over {
                self.departed.push(m.whole_run(now, span));
            }
            self.retired_total.merge(&m.total);
            m.total = Counters::released();
            m.interval = Counters::released();
            m.queue = VecDeque::new();
            // Its latency model and cached tables: kilobytes per model.
            m.service = ServiceSampler::new(ServiceModel::Constant { ms: 1.0 });
            m.released = true;
        }
        intervals
    }

    /// Whole-run figures up to now: per model in service (retired ones are left out), and in
    /// all, retired models included.
    pub fn report(&mut self) -> Report {
        self.advance_running();
        let now = self.now;
        let span = self.rate_span();
        let mut total = Counters::new();
        total.merge(&self.retired_total);
        let models = self
            .models
            .iter_mut()
            .filter(|m| !m.released)
            .filter_map(|m| {
                m.touch_queue(now);
                total.merge(&m.total);
                // Retired models count in the total, not as models of the run.
                (!m.retired).then(|| m.whole_run(now, span))
            })
            .collect();
        Report {
            sharing: self.config.sharing,
            elapsed_s: now as f64 * 1e-9,
            events: self.events,
            models,
            total: total.summary(now, span),
        }
    }

    /// The span whole-run rates are taken over: to the latest arrival (now, before any).
    fn rate_span(&self) -> Nanos {
        if self.last_arrival > 0 { self.last_arrival } else { self.now }
    }

    /// GPU% held by the models that take requests, `except` one (the slices they are heading
    /// to during a reallocation pause).
    pub fn held_pct(&self, except: Option<usize>) -> f64 {
        let counted = |(i, m): &(usize, &ModelState)| !m.retired && Some(*i) != except;
        self.models.iter().enumerate().filter(counted).map(|(_, m)| m.pending.unwrap_or(m.allocation).gpu_pct).sum()
    }

    fn check_capacity(&self) -> Result<(), SimError> {
        if self.config.sharing != Sharing::Spatial {
            return Ok(());
        }
        let total_pct = self.held_pct(None);
        if total_pct > 100.0 + 1e-9 { Err(SimError::OverSubscribed { total_pct }) } else { Ok(()) }
    }

    fn push(&mut self, at: Nanos, model: usize, kind: EventKind) {
        self.seq += 1;
        self.heap.push(Reverse(Event { at, seq: self.seq, model, kind }));
    }

    fn enqueue(&mut self, model: usize, ticket: Ticket) {
        let state = &mut self.models[model];
        state.touch_queue(self.now);
        state.queue.push_back(Queued { arrival: self.now, ticket });
        self.last_arrival = self.now;
        state.total.arrivals += 1;
        state.interval.arrivals += 1;
        state.interval_arrivals.push(self.now as f64 * 1e-9);
        let len = state.queue.len();
        state.total.max_queue = state.total.max_queue.max(len);
        state.interval.max_queue = state.interval.max_queue.max(len);
    }

    fn schedule_next_arrival(&mut self, model: usize) {
        if let Some(t) = self.models[model].arrivals.next_arrival() {
            let at = secs_to_ns(t).max(self.now);
            self.push(at, model, EventKind::Arrival);
            self.models[model].arrival_pending = true;
            self.models[model].pending_arrival_s = t;
        }
    }

    fn handle(&mut self, event: Event) {
        let m = event.model;
        match event.kind {
            EventKind::Arrival => {
                self.models[m].arrival_pending = false;
                if self.models[m].retired {
                    return;
                }
                self.enqueue(m, NO_TICKET);
                self.schedule_next_arrival(m);
            }
            EventKind::Timeout(version) => {
                if version != self.models[m].timeout_version {
                    return;
                }
                self.models[m].timeout_at = None;
            }
            EventKind::Resume(version) => {
                let state = &mut self.models[m];
                if version != state.resume_version {
                    return;
                }
                if let Some(allocation) = state.pending.take() {
                    state.allocation = allocation;
                }
            }
        }
        self.dispatch_after(m);
    }

    /// Starts whatever batches can start now that `model`'s state changed.
    fn dispatch_after(&mut self, model: usize) {
        if self.config.sharing == Sharing::Temporal {
            self.dispatch_temporal();
        } else if !self.models[model].worker_busy && self.ready(model) {
            self.start_batch(model);
        }
    }

    /// Temporal sharing: when the GPU is free, the ready model with the oldest request goes next.
    fn dispatch_temporal(&mut self) {
        if !self.running.is_empty() {
            return;
        }
        let mut best: Option<(Nanos, usize)> = None;
        for m in 0..self.models.len() {
            if self.ready(m) {
                let head = self.models[m].queue[0].arrival;
                if best.is_none_or(|(t, _)| head < t) {
                    best = Some((head, m));
                }
            }
        }
        if let Some((_, m)) = best {
            self.start_batch(m);
        }
    }

    /// Whether the model can start a batch now: drops expired requests, and when the queue holds
    /// fewer than `min_batch` and has not timed out, arms the batch timeout.
    fn ready(&mut self, model: usize) -> bool {
        let now = self.now;
        let state = &mut self.models[model];
        if now < state.resume_at {
            return false;
        }
        if let Some(limit) = self.drop_after_ns {
            let expired = state.queue.iter().take_while(|q| now - q.arrival > limit).count();
            if expired > 0 {
                state.touch_queue(now);
                let dropped = state.queue.drain(..expired).map(|q| q.ticket).filter(|t| *t != NO_TICKET);
                self.dropped_tickets.extend(dropped);
                state.total.dropped += expired as u64;
                state.interval.dropped += expired as u64;
            }
        }
        let Some(deadline) = state.batch_deadline() else {
            return false;
        };
        // `Allocation::problem` holds min_batch to at most max_batch.
        if state.queue.len() >= state.allocation.min_batch as usize || now >= deadline {
            return true;
        }
        if state.timeout_at != Some(deadline) {
            state.timeout_at = Some(deadline);
            state.timeout_version += 1;
            let version = state.timeout_version;
            self.push(deadline, model, EventKind::Timeout(version));
        }
        false
    }

    fn start_batch(&mut self, model: usize) {
        self.advance_running();
        let now = self.now;
        let mut requests = self.spare_vecs.pop().unwrap_or_default();
        let state = &mut self.models[model];
        state.touch_queue(now);
        let mut size = state.queue.len().min(state.allocation.max_batch as usize);
        // Before the oldest request's timeout the batch goes because `min_batch` are queued: it
        // takes a size the worker runs without padding (`batch_cut`).
        if state.batch_deadline().is_some_and(|deadline| now < deadline) {
            size = batch_cut(&self.config.served_batches, size as u32, state.allocation.min_batch) as usize;
        }
        requests.extend(state.queue.drain(..size));
        state.worker_busy = true;
        state.timeout_at = None;
        state.total.batches += 1;
        state.interval.batches += 1;
        let gpu_pct = match self.config.sharing {
            Sharing::Spatial => state.allocation.gpu_pct,
            Sharing::Temporal | Sharing::DefaultMps => 100.0,
        };
        let served = self.config.served_size(size as u32);
        let mut solo_ns = state.service.sample_ns(served, gpu_pct, &mut self.rng).max(1.0);
        if self.config.sharing == Sharing::Temporal {
            if self.last_temporal_model.is_some_and(|last| last != model) {
                solo_ns += self.config.temporal_switch_ms * 1e6;
            }
            self.last_temporal_model = Some(model);
        }
        let default_mps = self.config.sharing == Sharing::DefaultMps;
        let (knee_pct, launch_fraction) =
            if default_mps { state.service.knee_and_launch_fraction(served) } else { (100.0, 0.0) };
        self.running.push(Batch {
            model,
            generation: state.generation,
            requests,
            started: now,
            size: served,
            gpu_pct,
            contends: default_mps,
            solo_ns,
            progress: 0.0,
            speed: 1.0,
            share: gpu_pct,
            knee_pct,
            full_gpu_ns: if default_mps { state.service.median_ns(served, 100.0) } else { solo_ns },
            launch_fraction,
            updated: now,
            finish_at: now,
        });
        self.reschedule_running();
    }

    /// Brings every running batch's progress and SM-time accounting up to now.
    fn advance_running(&mut self) {
        let now = self.now;
        for batch in &mut self.running {
            let dt = (now - batch.updated) as f64;
            batch.progress += dt * batch.speed / batch.solo_ns;
            batch.updated = now;
            let state = &mut self.models[batch.model];
            state.total.sm_pct_ns += batch.share * dt;
            state.interval.sm_pct_ns += batch.share * dt;
        }
    }

    /// Recomputes every running batch's speed and finish time after the running set changed.
    /// Progress must be current (`advance_running`).
    fn reschedule_running(&mut self) {
        if self.running.iter().any(|b| b.contends) {
            self.share_sms_by_pressure();
        }
        let total_share: f64 = self.running.iter().map(|b| b.share).sum::<f64>() + self.config.background_pct;
        let total_sm_bound: f64 = self.running.iter().map(|b| 1.0 - b.launch_fraction).sum();
        let now = self.now;
        self.next_completion = Nanos::MAX;
        for batch in &mut self.running {
            // Time relative to running alone: on a default-MPS share, the SM-bound part stretches
            // as the share shrinks and the launch-bound part waits behind the others' kernels.
            let stretch = if batch.contends {
                // Shares are looked up at 0.5% resolution so the per-slice cache stays small.
                let share = (batch.share * 2.0).round().max(1.0) / 2.0;
                let on_share = self.models[batch.model].service.median_ns(batch.size, share) / batch.full_gpu_ns;
                let others_sm_bound = total_sm_bound - (1.0 - batch.launch_fraction);
                on_share + batch.launch_fraction * self.models[batch.model].launch_contention * others_sm_bound
            } else {
                1.0
            };
            let interference = self.models[batch.model].interference;
            batch.speed = 1.0 / (stretch * (1.0 + interference * (total_share - batch.share) / 100.0));
            let remaining = ((1.0 - batch.progress).max(0.0) * batch.solo_ns / batch.speed).ceil();
            batch.finish_at = now.saturating_add(remaining as Nanos);
            self.next_completion = self.next_completion.min(batch.finish_at);
        }
    }

    /// Default MPS: the SMs go to the running batches in proportion to their SM-bound fractions
    /// raised to `SimConfig::mps_share_exponent` (a kernel holds SMs in proportion to the blocks it keeps
    /// queued, so large kernels take most of them), none beyond its knee, the excess shared out
    /// again the same way.
    /// Batches on a slice (after a switch of sharing mode) keep their slice; the others share
    /// what is left.
    fn share_sms_by_pressure(&mut self) {
        let order = &mut self.scratch_order;
        order.clear();
        order.extend(self.running.iter().enumerate().filter(|(_, b)| b.contends).map(|(i, b)| (b.knee_pct, i)));
        let exponent = self.config.mps_share_exponent;
        let weight = |b: &Batch| (1.0 - b.launch_fraction).max(1e-3).powf(exponent);
        let sliced: f64 = self.running.iter().filter(|b| !b.contends).map(|b| b.share).sum();
        let mut remaining = (100.0 - sliced).max(1.0);
        // Fix, one at a time, the batches whose proportional share would pass their knee.
        loop {
            let total_weight: f64 = order.iter().map(|&(_, i)| weight(&self.running[i])).sum();
            let capped =
                order.iter().position(|&(knee, i)| remaining * weight(&self.running[i]) / total_weight >= knee);
            match capped {
                Some(k) => {
                    let (knee, i) = order.swap_remove(k);
                    self.running[i].share = knee;
                    remaining -= knee;
                }
                None => {
                    for &(_, i) in order.iter() {
                        self.running[i].share = remaining * weight(&self.running[i]) / total_weight;
                    }
                    return;
                }
            }
        }
    }

    fn complete_next_batch(&mut self) {
        let now = self.now;
        self.advance_running();
        let Some(i) = self.running.iter().position(|b| b.finish_at == now) else {
            return;
        };
        let mut batch = self.running.swap_remove(i);
        let state = &mut self.models[batch.model];
        if batch.generation == state.generation {
            state.worker_busy = false;
        }
        let hand_off = (self.config.hand_off_ms * 1e6) as Nanos;
        for &Queued { arrival, ticket } in &batch.requests {
            let latency = now - arrival + hand_off;
            let within = latency <= state.slo_ns;
            state.total.record_latency(latency, within);
            state.interval.record_latency(latency, within);
            if self.config.record_requests || ticket != NO_TICKET {
                self.requests.push(RequestRecord {
                    ticket,
                    model: batch.model,
                    arrival_ns: arrival,
                    start_ns: batch.started,
                    end_ns: now,
                    solo_ns: batch.solo_ns.floor() as Nanos,
                    batch_size: batch.requests.len() as u32,
                });
            }
        }
        let sample =
            BatchSample { size: batch.size, gpu_pct: batch.gpu_pct, exec_ms: (now - batch.started) as f64 * 1e-6 };
        state.interval_batches.push(sample);
        batch.requests.clear();
        self.spare_vecs.push(batch.requests);
        self.reschedule_running();
        if self.config.sharing == Sharing::Temporal {
            self.dispatch_temporal();
        } else {
            self.dispatch_after(batch.model);
        }
    }
}
