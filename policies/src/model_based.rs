//! The model-based policy (ours). Per model it keeps
//! - the profile's latency surface p50(b, g) and p99/p50, tabulated once for the batch sizes it
//!   uses and every whole GPU%;
//! - an online fit of how the GPU differs from the profile: a multiplicative correction of
//!   service time, the least-squares fit in log space of observed batch times against the
//!   profile's prediction, with exponential forgetting and a prior at 1 (the profile);
//! - a correction of the end-to-end tail, from the observed p99 against the prediction, learned
//!   in steady intervals only;
//! - an arrival-rate forecast that follows rises at once and falls gradually, and the peak rate
//!   and largest queue of the recent intervals.
//!
//! Each interval it picks, per model, the smallest GPU% for which some batch size has a
//! predicted p99 (see `predict`) under the SLO with a margin; when those add up to more than the
//! GPU, models are served in priority order and the rest degrade. Leftover GPU first lifts each
//! model towards what its recent peak rate and largest burst need, then goes, a point at a time,
//! to the model with the least headroom. On its final slice each model takes the feasible batch
//! with the most spare capacity. Small moves are skipped while the current allocation holds.
//! Where the backend serves a few GPU% levels only (a standby pool), slices are planned on
//! those levels (`plan_on_levels`): a need rounds up to a level, leftover goes a level at a time.
//!
//! It is a hybrid: slices are not work-conserving, and at ordinary load a shared GPU serves
//! bursts better. While the GPU keeps up with the recent peak load (`SHARED_MAX_BUSY`), the
//! policy runs the backend's work-conserving mode (temporal: one batch at a time, oldest first;
//! else default MPS) with SLO-sized dynamic batching (`shared_batching`), and switches to the
//! planned slices beyond that, switching back with hysteresis.

use crate::shares::max_min;
use crate::{Decision, ModelContext, Policy};
use gpuslice_simulator::{Allocation, ModelInterval, Sharing};

/// Batch sizes considered (the real backend keeps one CUDA graph for each).
pub const BATCH_SIZES: [u32; 11] = [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64];
/// Predicted p99 must stay under (1 - MARGIN) x SLO.
pub const MARGIN: f64 = 0.10;
/// Highest planned utilization of a model's slice.
pub const MAX_UTILIZATION: f64 = 0.9;
/// A slice change smaller than this is skipped while the current allocation still meets the SLO.
pub const HYSTERESIS_PCT: f64 = 5.0;
/// Weight of the prior (the profile) in the service-time fit, in batches.
const PRIOR_WEIGHT: f64 = 20.0;
/// Per-interval decay of old observations in the fits.
const FORGETTING: f64 = 0.7;
/// z of the 99th percentile of the standard normal.
const Z99: f64 = 2.326;
/// A backlog is planned to drain within this many seconds (or one interval, if longer).
const DRAIN_S: f64 = 1.0;
/// Intervals over which the peak arrival rate is remembered: leftover GPU first goes to models
/// whose recent peak needs more than their current slice, so a bursty model is not caught small.
const PEAK_WINDOW: usize = 20;

/// What the policy has learned of one model.
struct Learned {
    /// p50 ms and p99/p50 by [batch index][GPU% - 1], from the profile.
    p50: Vec<[f64; 100]>,
    tail: Vec<[f64; 100]>,
    /// Exponentially forgotten sums over batches of w, w ln(r), w ln(r)^2 with
    /// r = observed / profile time.
    sum_w: f64,
    sum_log: f64,
    sum_log2: f64,
    /// Observed p99 over predicted p99 at the allocation in force, smoothed: the model's error
    /// either way (the formation wait it predicts is a worst case, contention adds to service).
    tail_excess: f64,
    rate_ewma: f64,
    /// Arrival rates of the last `PEAK_WINDOW` intervals, per ms (a ring).
    recent_rates: Vec<f64>,
    /// Largest queue length seen in each of the last `PEAK_WINDOW` intervals (a ring).
    recent_bursts: Vec<usize>,
    intervals_seen: usize,
}

/// One feasible (batch, GPU%) choice and its prediction.
#[derive(Debug, Clone, Copy)]
struct Plan {
    batch_index: usize,
    gpu: usize,
    predicted_p99_ms: f64,
    timeout_ms: f64,
    /// Planned busy fraction of the slice: the lower, the larger the burst it absorbs.
    utilization: f64,
}

/// The model-based policy: see the module.
pub struct ModelBased {
    models: Vec<ModelContext>,
    learned: Vec<Learned>,
    slices: SliceGrid,
    /// The work-conserving mode the backend offers (temporal preferred: one batch at a time,
    /// oldest first, is the best tail at light load), if any.
    shared_mode: Option<Sharing>,
    /// The mode in force.
    mode: Sharing,
}

/// Shared (work-conserving) sharing is kept while the GPU's predicted busy fraction at the
/// recent peak rates (a lower bound: batches at their most efficient size) stays under this.
/// Measured on the shipped scenarios (`evaluate --capacity`): one batch at a time with
/// SLO-sized batching holds more load than slices wherever the GPU can keep up (bursts of one
/// model are absorbed by the whole GPU, not by its slice); slices take over at overload, where
/// they serve by priority and keep the most requests within their SLOs.
pub const SHARED_MAX_BUSY: f64 = 1.0;
/// Coming back to shared sharing from slices needs the busy fraction this much lower, so the
/// mode does not flap at the boundary.
pub const MODE_HYSTERESIS: f64 = 0.85;
/// Under shared sharing a batch waits at most this share of the SLO to fill (Triton-style
/// dynamic batching: a large batch when the load brings one, no long wait when it does not).
pub const SHARED_TIMEOUT_SHARE: f64 = 0.05;
/// ...and the largest batch runs in at most this share of the SLO on the whole GPU (of the
/// tightest SLO of all models under temporal sharing, where every model waits behind it), so a
/// request can wait behind another model's batch and its own.
pub const SHARED_BATCH_SHARE: f64 = 0.3;

/// The GPU% a slice may have, ascending: every whole GPU%, or the backend's levels.
#[derive(Debug, Clone)]
struct SliceGrid(Vec<usize>);

impl SliceGrid {
    fn whole() -> SliceGrid {
        SliceGrid((1..=100).collect())
    }

    /// The smallest slice, every model's floor.
    fn lowest(&self) -> usize {
        self.0[0]
    }

    /// The smallest slice of at least `g`%.
    fn at_or_above(&self, g: usize) -> Option<usize> {
        self.0.get(self.0.partition_point(|&l| l < g)).copied()
    }

    /// The largest slice of at most `g`% (the lowest if none).
    fn at_or_below(&self, g: usize) -> usize {
        match self.0.partition_point(|&l| l <= g) {
            0 => self.lowest(),
            i => self.0[i - 1],
        }
    }

    /// The next slice above `g`%.
    fn above(&self, g: usize) -> Option<usize> {
        self.at_or_above(g + 1)
    }
}

/// The load a model must be planned for in one interval.
#[derive(Debug, Clone, Copy)]
struct Load {
    /// Forecast arrivals per ms.
    rate: f64,
    /// Arrivals per ms plus what it takes to drain the backlog within `DRAIN_S`.
    capacity_rate: f64,
    /// The highest arrival rate of the recent intervals, per ms.
    peak_rate: f64,
    /// The largest queue of the recent intervals: a burst the slice should clear within the SLO.
    peak_burst: usize,
}

impl Load {
    /// The arrivals alone, without the backlog to drain.
    fn steady(self) -> Load {
        Load { capacity_rate: self.rate, ..self }
    }
}

impl ModelBased {
    /// The policy for these models, with the profiles as its prior.
    pub fn new(models: Vec<ModelContext>) -> ModelBased {
        let learned = models
            .iter()
            .map(|m| {
                let table = |f: &dyn Fn(u32, f64) -> f64| -> Vec<[f64; 100]> {
                    BATCH_SIZES.iter().map(|&b| std::array::from_fn(|g| f(b, (g + 1) as f64))).collect()
                };
                Learned {
                    p50: table(&|b, g| m.latency.p50_ms(b, g)),
                    tail: table(&|b, g| m.latency.tail_ratio(b, g)),
                    sum_w: 0.0,
                    sum_log: 0.0,
                    sum_log2: 0.0,
                    tail_excess: 1.0,
                    rate_ewma: 0.0,
                    recent_rates: vec![0.0; PEAK_WINDOW],
                    recent_bursts: vec![0; PEAK_WINDOW],
                    intervals_seen: 0,
                }
            })
            .collect();
        ModelBased { models, learned, slices: SliceGrid::whole(), shared_mode: None, mode: Sharing::Spatial }
    }

    /// Under shared sharing: model `m`'s largest batch (index) and its batch timeout.
    fn shared_batching(&self, m: usize) -> (usize, f64) {
        let l = &self.learned[m];
        let (scale, _) = Self::correction(l);
        let slo = self.models[m].slo_ms;
        // One batch at a time: every other model's requests may wait behind this one.
        let blocks = match self.shared_mode {
            Some(Sharing::Temporal) => self.models.iter().map(|c| c.slo_ms).fold(slo, f64::min),
            _ => slo,
        };
        let fits = |b: usize| l.p50[b][99] * scale * l.tail[b][99] <= SHARED_BATCH_SHARE * blocks;
        let batch = (0..BATCH_SIZES.len()).rev().find(|&b| fits(b)).unwrap_or(0);
        (batch, SHARED_TIMEOUT_SHARE * slo)
    }

    /// The GPU's busy fraction under shared sharing at the given rates (per ms), each model in
    /// its most efficient batch up to its largest: batches grow while others hold the GPU, so
    /// near saturation, where the estimate matters, they are as large as allowed.
    fn shared_busy(&self, rates: impl Iterator<Item = f64>) -> f64 {
        rates
            .enumerate()
            .map(|(m, rate)| {
                let (largest, _) = self.shared_batching(m);
                let (scale, _) = Self::correction(&self.learned[m]);
                let per_item = (0..=largest)
                    .map(|b| self.learned[m].p50[b][99] / BATCH_SIZES[b] as f64)
                    .fold(f64::INFINITY, f64::min);
                rate * per_item * scale
            })
            .sum()
    }

    /// The mode for the next interval: shared while the GPU keeps up with the load at the
    /// recent peak rates (its busy fraction then, returned too), slices beyond or where the
    /// backend offers no shared mode.
    fn choose_mode(&self, loads: &[Load]) -> (Sharing, f64) {
        let Some(shared) = self.shared_mode else { return (Sharing::Spatial, f64::NAN) };
        let busy = self.shared_busy(loads.iter().map(|l| l.peak_rate.max(l.capacity_rate)));
        let limit = if self.mode == shared { SHARED_MAX_BUSY } else { SHARED_MAX_BUSY * MODE_HYSTERESIS };
        (if busy <= limit { shared } else { Sharing::Spatial }, busy)
    }

    /// Median service time correction (profile -> this GPU) and the spread seen around it.
    fn correction(l: &Learned) -> (f64, f64) {
        let n = l.sum_w + PRIOR_WEIGHT;
        let mean = l.sum_log / n;
        let spread = (l.sum_log2 / n - mean * mean).max(0.0).sqrt();
        (mean.exp(), spread)
    }

    /// Predicted p99, batch-formation time and utilization of model `m` at (batch index, GPU%)
    /// in steady state at the forecast rate, or None when the slice would be busier than
    /// `max_utilization` at that rate, or could not drain the backlog within `DRAIN_S`.
    ///
    /// A request either finds the slice idle and waits for its batch to form (up to
    /// `(b-1)/rate`, the timeout), or finds it busy and waits for the running batch, then rides
    /// in the next one, which below full utilization takes everything queued: its p99 is the
    /// longer of the two waits plus the service tail.
    fn predict(
        &self,
        m: usize,
        batch_index: usize,
        gpu: usize,
        load: Load,
        max_utilization: f64,
    ) -> Option<(f64, f64, f64)> {
        self.predict_with_excess(m, batch_index, gpu, load, max_utilization, self.learned[m].tail_excess)
    }

    /// `predict` with a given tail excess (1: the model's own prediction, uncorrected).
    fn predict_with_excess(
        &self,
        m: usize,
        batch_index: usize,
        gpu: usize,
        load: Load,
        max_utilization: f64,
        tail_excess: f64,
    ) -> Option<(f64, f64, f64)> {
        let l = &self.learned[m];
        let (scale, spread) = Self::correction(l);
        let service = l.p50[batch_index][gpu - 1] * scale;
        let tail = l.tail[batch_index][gpu - 1].max((Z99 * spread).exp()) * tail_excess;
        let batch = BATCH_SIZES[batch_index] as f64;
        let utilization = load.rate * service / batch;
        if utilization >= max_utilization || load.capacity_rate * service / batch >= 1.0 {
            return None;
        }
        let formation = if load.rate > 0.0 { (batch - 1.0) / load.rate } else { 0.0 };
        let busy_wait = if utilization > 0.01 { service } else { 0.0 };
        Some((formation.max(busy_wait) + service * tail, formation, utilization))
    }

    /// The plan at (batch index, GPU%) if it meets the SLO with the margin.
    fn plan(&self, m: usize, batch_index: usize, gpu: usize, load: Load) -> Option<Plan> {
        let (predicted_p99_ms, timeout_ms, utilization) = self.predict(m, batch_index, gpu, load, MAX_UTILIZATION)?;
        let budget = self.models[m].slo_ms * (1.0 - MARGIN);
        (predicted_p99_ms <= budget).then_some(Plan { batch_index, gpu, predicted_p99_ms, timeout_ms, utilization })
    }

    /// The best plan at exactly `gpu`%: of those meeting the SLO, the one with the most spare
    /// capacity (lowest utilization), so a rise in load between two decisions is absorbed. One
    /// that also drains the backlog in time if there is one, else one for the arrivals alone.
    fn best_at(&self, m: usize, gpu: usize, load: Load) -> Option<Plan> {
        let best = |load: Load| {
            (0..BATCH_SIZES.len())
                .filter_map(|b| self.plan(m, b, gpu, load))
                .min_by(|a, b| a.utilization.total_cmp(&b.utilization))
        };
        best(load).or_else(|| best(load.steady()))
    }

    /// The smallest GPU% at which some batch size meets the SLO (binary search per batch size:
    /// more SMs never make the profile slower).
    fn smallest_slice(&self, m: usize, load: Load) -> Option<usize> {
        (0..BATCH_SIZES.len())
            .filter_map(|b| {
                self.plan(m, b, 100, load)?;
                let (mut lo, mut hi) = (1, 100);
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if self.plan(m, b, mid, load).is_some() { hi = mid } else { lo = mid + 1 }
                }
                Some(lo)
            })
            .min()
    }

    /// The smallest GPU% at which a burst of `burst` queued requests is served within the SLO
    /// budget, in batches of the best size.
    fn burst_slice(&self, m: usize, burst: usize) -> usize {
        if burst == 0 {
            return 1;
        }
        let l = &self.learned[m];
        let (scale, _) = Self::correction(l);
        let budget = self.models[m].slo_ms * (1.0 - MARGIN);
        let clears = |g: usize| {
            (0..BATCH_SIZES.len()).any(|b| {
                let rounds = burst.div_ceil(BATCH_SIZES[b] as usize) as f64;
                rounds * l.p50[b][g - 1] * scale * l.tail[b][g - 1] <= budget
            })
        };
        (1..=100).find(|&g| clears(g)).unwrap_or(100)
    }

    /// The GPU% model `m` wants at its recent peak rate (with its backlog drained) and for its
    /// largest recent burst.
    fn peak_slice(&self, m: usize, load: Load) -> usize {
        let peak = Load { rate: load.peak_rate, capacity_rate: load.peak_rate.max(load.capacity_rate), ..load };
        self.smallest_slice(m, peak).unwrap_or(100).max(self.burst_slice(m, load.peak_burst))
    }

    /// Learns from one interval: service-time fit, tail excess, and rate forecast.
    fn observe(&mut self, m: usize, obs: &ModelInterval) -> Load {
        let interval_ms = ((obs.end_s - obs.start_s) * 1e3).max(1e-3);
        let l = &mut self.learned[m];
        l.sum_w *= FORGETTING;
        l.sum_log *= FORGETTING;
        l.sum_log2 *= FORGETTING;
        // Under default MPS batch times carry the others' contention, which is not the slices'
        // to learn; under temporal sharing a batch runs alone on the whole GPU, as profiled.
        let samples = if self.mode == Sharing::DefaultMps { &[][..] } else { &obs.batches[..] };
        for sample in samples {
            let Some(b) = BATCH_SIZES.iter().position(|&b| b >= sample.size) else { continue };
            let g = (sample.gpu_pct.round() as usize).clamp(1, 100);
            let r = (sample.exec_ms / l.p50[b][g - 1]).ln();
            if r.is_finite() {
                l.sum_w += 1.0;
                l.sum_log += r;
                l.sum_log2 += r * r;
            }
        }
        let rate = obs.summary.arrivals as f64 / interval_ms;
        l.rate_ewma = if l.rate_ewma == 0.0 { rate } else { 0.5 * l.rate_ewma + 0.5 * rate };
        l.recent_rates[l.intervals_seen % PEAK_WINDOW] = rate;
        l.recent_bursts[l.intervals_seen % PEAK_WINDOW] = obs.summary.max_queue;
        l.intervals_seen += 1;
        let load = Load {
            rate: rate.max(l.rate_ewma),
            capacity_rate: rate.max(l.rate_ewma) + obs.queue_len as f64 / (DRAIN_S * 1e3).max(interval_ms),
            peak_rate: l.recent_rates.iter().fold(rate, |a, b| a.max(*b)),
            peak_burst: l.recent_bursts.iter().copied().max().unwrap_or(0),
        };
        // How far the end-to-end tail ran over what the model predicts for the allocation in
        // force, learned only from steady intervals: a backlog or drops mean the load outran the
        // slice, which the rate forecast answers, not the latency model.
        let steady = self.mode == Sharing::Spatial
            && obs.summary.dropped == 0
            && obs.queue_len <= 2 * obs.allocation.max_batch as usize;
        let previous = self.learned[m].tail_excess;
        if steady && obs.summary.completed > 0 {
            let a = obs.allocation;
            let b = BATCH_SIZES.iter().position(|&b| b >= a.max_batch).unwrap_or(BATCH_SIZES.len() - 1);
            let gpu = (a.gpu_pct.round() as usize).clamp(1, 100);
            // Against the model's own prediction, without the correction being learned.
            let excess = match self.predict_with_excess(m, b, gpu, load, MAX_UTILIZATION, 1.0) {
                Some((predicted, _, _)) => (obs.summary.p99_ms / predicted).clamp(0.5, 3.0),
                None => previous,
            };
            self.learned[m].tail_excess = 0.5 * previous + 0.5 * excess;
        } else {
            self.learned[m].tail_excess = 1.0 + (previous - 1.0) * FORGETTING;
        }
        load
    }
}

impl Policy for ModelBased {
    fn name(&self) -> &str {
        "model-based"
    }

    fn sharing(&self) -> Sharing {
        self.mode
    }

    fn offer_modes(&mut self, modes: &[Sharing]) {
        self.shared_mode = [Sharing::Temporal, Sharing::DefaultMps].into_iter().find(|m| modes.contains(m));
    }

    /// Before any traffic is seen: slices, each model at its knee (max-min shares), configured
    /// batching. Slices isolate the models until the first interval shows the load: a shared
    /// start under a load the shared GPU cannot serve leaves a backlog that costs more than 1%
    /// of the run's requests (mixed-slo-trio x1.25: mobilenet 99.0% against 99.8%; capacity
    /// x1.27 against x1.89 with a slice start).
    fn initial(&mut self) -> Vec<Allocation> {
        crate::gslice::knee_allocations(&self.models)
    }

    fn plan_on_levels(&mut self, levels: &[f64]) {
        // The policy plans in whole GPU%: a fractional level is asked for as the whole number
        // below it, which the backend serves at that level (the one at or above what is asked).
        let mut whole: Vec<usize> =
            levels.iter().filter(|l| **l >= 1.0 && **l <= 100.0).map(|l| l.floor() as usize).collect();
        whole.sort_unstable();
        whole.dedup();
        if !whole.is_empty() {
            self.slices = SliceGrid(whole);
        }
    }

    fn decide(&mut self, observations: &[ModelInterval]) -> Vec<Decision> {
        let n = self.models.len();
        let loads: Vec<Load> = observations.iter().enumerate().map(|(m, obs)| self.observe(m, obs)).collect();
        // What the arrivals alone need: a backlog is drained from leftover GPU only, since under
        // overload a drain requirement would make a model degrade and its backlog never clear.
        let slices = &self.slices;
        let needed: Vec<Option<usize>> =
            (0..n).map(|m| self.smallest_slice(m, loads[m].steady()).and_then(|g| slices.at_or_above(g))).collect();

        let sliced_pct: usize = needed.iter().map(|g| g.unwrap_or(100)).sum();
        let (mode, busy) = self.choose_mode(&loads);
        if mode != Sharing::Spatial {
            // Shared: batching for the whole GPU, no slices planned; the slices stay as they
            // are, ready for a switch back (they add up to at most 100).
            let previous = std::mem::replace(&mut self.mode, mode);
            return (0..n)
                .filter_map(|m| {
                    let current = observations[m].allocation;
                    let (b, timeout_ms) = self.shared_batching(m);
                    let allocation = Allocation { max_batch: BATCH_SIZES[b], batch_timeout_ms: timeout_ms, ..current };
                    (allocation != current || previous != mode).then(|| Decision {
                        model: m,
                        allocation,
                        reason: format!(
                            "{mode}: GPU busy {:.0}% at the recent peak rates (slices would need {sliced_pct}%): batch up to {}, wait at most {timeout_ms:.1} ms",
                            busy * 100.0,
                            BATCH_SIZES[b]
                        ),
                    })
                })
                .collect();
        }

        // Every model keeps the smallest slice so it still serves; then the slices in priority
        // order, and within a priority the models that serve the most requests per GPU% first
        // (when the GPU cannot serve everyone, that keeps the most requests within their SLO);
        // whoever does not fit degrades.
        let per_pct = |m: usize| needed[m].map_or(0.0, |g| loads[m].rate / g as f64);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| {
            let (pa, pb) = (self.models[a].priority, self.models[b].priority);
            pb.cmp(&pa).then(per_pct(b).total_cmp(&per_pct(a)))
        });
        let floor = slices.lowest();
        let mut gpu = vec![floor; n];
        let mut remaining = 100usize.saturating_sub(n * floor);
        let mut degraded = Vec::new();
        for &m in &order {
            match needed[m] {
                Some(g) if g - floor <= remaining => {
                    gpu[m] = g;
                    remaining -= g - floor;
                }
                _ => degraded.push(m),
            }
        }
        if !degraded.is_empty() {
            let demands: Vec<f64> = degraded.iter().map(|&m| (needed[m].unwrap_or(100) - floor) as f64).collect();
            for (&m, share) in degraded.iter().zip(max_min(&demands, remaining as f64)) {
                gpu[m] = slices.at_or_below(floor + share.floor() as usize);
            }
            remaining = 100usize.saturating_sub(gpu.iter().sum());
        }

        // Leftover first lifts models towards what their recent peak rate (with their backlog
        // drained) and their largest burst need.
        for &m in order.iter().filter(|m| !degraded.contains(m)) {
            let wanted = self.peak_slice(m, loads[m]);
            let lifted = slices.at_or_above(wanted).unwrap_or(100).min(slices.at_or_below(gpu[m] + remaining));
            if lifted > gpu[m] {
                remaining -= lifted - gpu[m];
                gpu[m] = lifted;
            }
        }

        // The rest, a slice step at a time, to the model with the least headroom.
        let headroom = |this: &Self, m: usize, g: usize| {
            this.best_at(m, g, loads[m])
                .map_or(f64::INFINITY, |p| (1.0 - p.predicted_p99_ms / this.models[m].slo_ms).min(1.0 - p.utilization))
        };
        let mut room: Vec<f64> =
            (0..n).map(|m| if degraded.contains(&m) { f64::INFINITY } else { headroom(self, m, gpu[m]) }).collect();
        let step =
            |gpu: &[usize], m: usize, remaining: usize| slices.above(gpu[m]).filter(|&g| g - gpu[m] <= remaining);
        while let Some(m) = (0..n)
            .filter(|&m| room[m].is_finite() && step(&gpu, m, remaining).is_some())
            .min_by(|a, b| room[*a].total_cmp(&room[*b]))
        {
            let next = step(&gpu, m, remaining).expect("filtered");
            remaining -= next - gpu[m];
            gpu[m] = next;
            room[m] = headroom(self, m, gpu[m]);
        }

        let mut chosen: Vec<(Allocation, String)> = (0..n)
            .map(|m| {
                let load = loads[m];
                let rate = load.rate * 1e3;
                match self.best_at(m, gpu[m], load) {
                    Some(plan) => (
                        Allocation {
                            gpu_pct: plan.gpu as f64,
                            max_batch: BATCH_SIZES[plan.batch_index],
                            batch_timeout_ms: plan.timeout_ms,
                        },
                        format!(
                            "rate {rate:.0}/s, queue {}: needs {}% for SLO {:.0} ms with {:.0}% margin, holds {}% at batch {} (predicted p99 {:.1} ms)",
                            observations[m].queue_len,
                            needed[m].unwrap_or(100),
                            self.models[m].slo_ms,
                            MARGIN * 100.0,
                            plan.gpu,
                            BATCH_SIZES[plan.batch_index],
                            plan.predicted_p99_ms
                        ),
                    ),
                    None => {
                        // Degraded: the batch closest to the SLO that the slice can serve without
                        // overload, else the largest.
                        let b = (0..BATCH_SIZES.len())
                            .filter_map(|b| self.predict(m, b, gpu[m], load, 1.0).map(|(p99, _, _)| (b, p99)))
                            .min_by(|x, y| x.1.total_cmp(&y.1))
                            .map_or(BATCH_SIZES.len() - 1, |(b, _)| b);
                        let formation = if load.rate > 0.0 { (BATCH_SIZES[b] as f64 - 1.0) / load.rate } else { 0.0 };
                        (
                            Allocation { gpu_pct: gpu[m] as f64, max_batch: BATCH_SIZES[b], batch_timeout_ms: formation },
                            format!(
                                "degraded (priority {}): rate {rate:.0}/s needs {} for SLO {:.0} ms, {}% left after higher-priority models",
                                self.models[m].priority,
                                needed[m].map_or("more than the GPU".to_string(), |g| format!("{g}%")),
                                self.models[m].slo_ms,
                                gpu[m]
                            ),
                        )
                    }
                }
            })
            .collect();

        let switching = self.mode != Sharing::Spatial;
        self.mode = Sharing::Spatial;

        // Hysteresis: keep an allocation that still meets the SLO when the new slice is close.
        let kept: Vec<bool> = (0..n)
            .map(|m| {
                let current = observations[m].allocation;
                let b = BATCH_SIZES.iter().position(|&b| b == current.max_batch);
                let g = (current.gpu_pct.round() as usize).clamp(1, 100);
                !switching
                    && (current.gpu_pct - chosen[m].0.gpu_pct).abs() < HYSTERESIS_PCT
                    && b.is_some_and(|b| self.plan(m, b, g, loads[m]).is_some())
            })
            .collect();
        let total: f64 =
            (0..n).map(|m| if kept[m] { observations[m].allocation.gpu_pct } else { chosen[m].0.gpu_pct }).sum();
        if total <= 100.0 + 1e-9 {
            for m in (0..n).filter(|&m| kept[m]) {
                chosen[m].0 = observations[m].allocation;
            }
        }

        chosen
            .into_iter()
            .enumerate()
            .filter(|(m, (a, _))| {
                let current = observations[*m].allocation;
                let timeout_moved = (a.batch_timeout_ms - current.batch_timeout_ms).abs()
                    > 0.2 * current.batch_timeout_ms.max(a.batch_timeout_ms).max(0.1);
                a.gpu_pct != current.gpu_pct || a.max_batch != current.max_batch || timeout_moved
            })
            .map(|(model, (allocation, reason))| Decision { model, allocation, reason })
            .collect()
    }
}
