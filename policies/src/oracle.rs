//! The oracle: allocations planned offline with the whole trace known (see `OraclePlan`). It
//! covers every mode model-based can choose: per window, slices planned per model, or the whole
//! GPU shared (temporal or default MPS) at the best of a few uniform batchings, whichever serves
//! more requests within their SLOs; so it stays an upper bound of the hybrid (within what one
//! window's plan from an empty queue can see).

use crate::replay::{DeviceModel, ReplayRun, SHARED_BATCHINGS};
use crate::{Decision, Policy};
use gpuslice_simulator::{Allocation, Batching, ModelInterval, Sharing};
use std::sync::Arc;

/// Allocations per window, computed offline.
#[derive(Debug, Clone)]
pub struct OraclePlan {
    /// What each window runs.
    pub windows: Vec<WindowPlan>,
    /// Control intervals per window.
    pub intervals_per_window: usize,
}

/// One window of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowPlan {
    /// Per model, its slice and batching under spatial sharing.
    pub slices: Vec<Allocation>,
    /// The shared mode and per-model batching, where sharing the whole GPU serves more requests
    /// within their SLOs in this window than the slices.
    pub shared: Option<(Sharing, Vec<Allocation>)>,
}

/// Replays an `OraclePlan`, window by window.
pub struct Oracle {
    plan: OraclePlan,
    interval: usize,
    /// The shared modes the backend offers (none: slices only).
    offered: Vec<Sharing>,
}

impl Oracle {
    /// Replays `plan` from its first window.
    pub fn new(plan: OraclePlan) -> Oracle {
        Oracle { plan, interval: 0, offered: Vec::new() }
    }

    /// Window `w`'s mode and allocations, as far as the backend offers its mode.
    fn window(&self, w: usize) -> Option<(Sharing, &[Allocation])> {
        let plan = self.plan.windows.get(w)?;
        Some(match &plan.shared {
            Some((mode, allocations)) if self.offered.contains(mode) => (*mode, allocations),
            _ => (Sharing::Spatial, &plan.slices),
        })
    }

    fn current_window(&self) -> usize {
        self.interval / self.plan.intervals_per_window
    }
}

impl Policy for Oracle {
    fn name(&self) -> &str {
        "oracle"
    }

    fn sharing(&self) -> Sharing {
        let last = self.plan.windows.len().saturating_sub(1);
        self.window(self.current_window().min(last)).map_or(Sharing::Spatial, |(mode, _)| mode)
    }

    fn offer_modes(&mut self, modes: &[Sharing]) {
        self.offered = modes.to_vec();
    }

    fn switches_modes(&self) -> bool {
        self.offered.len() > 1
    }

    fn initial(&mut self) -> Vec<Allocation> {
        self.window(0).map(|(_, a)| a.to_vec()).unwrap_or_default()
    }

    fn decide(&mut self, observations: &[ModelInterval]) -> Vec<Decision> {
        self.interval += 1;
        if !self.interval.is_multiple_of(self.plan.intervals_per_window) {
            return Vec::new();
        }
        let window = self.current_window();
        let Some((_, next)) = self.window(window) else { return Vec::new() };
        next.iter()
            .zip(observations)
            .enumerate()
            .filter(|(_, (a, obs))| **a != obs.allocation)
            .map(|(model, (a, _))| Decision { model, allocation: *a, reason: format!("planned for window {window}") })
            .collect()
    }
}

/// Inputs of the offline planner.
pub struct PlanInputs<'a> {
    /// The models.
    pub models: &'a [crate::ModelContext],
    /// Every model's arrival times (seconds), ascending: the whole trace, known in advance.
    pub arrivals: Vec<Vec<f64>>,
    /// Seconds per control interval.
    pub control_interval_s: f64,
    /// Control intervals per planned window.
    pub intervals_per_window: usize,
    /// The run's model of the GPU (contention, drops, seed); the planning runs use it.
    pub device: DeviceModel,
}

impl PlanInputs<'_> {
    /// Model `m`'s arrivals in window `w`, in seconds from the window's start.
    fn window_arrivals(&self, m: usize, w: usize, window_s: f64) -> Arc<[f64]> {
        let (start, end) = (w as f64 * window_s, (w + 1) as f64 * window_s);
        self.arrivals[m].iter().filter(|t| **t >= start && **t < end).map(|t| t - start).collect()
    }
}

/// GPU% grid of the planner.
const GPU_STEP: usize = 5;
const GPU_LEVELS: usize = 100 / GPU_STEP;
const PLAN_BATCHES: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];

/// For each GPU% level of one window, the best goodput and the allocation giving it.
type WindowRow = [(u64, Allocation); GPU_LEVELS];
/// Per model and window, a `WindowRow`.
type Table = Vec<Vec<WindowRow>>;

impl OraclePlan {
    /// For each window: every model is simulated alone on the window's arrivals at every GPU% of
    /// a 5% grid and every batch size (waiting for it to fill or not), and a knapsack over GPU%
    /// picks the split with the most requests served within their SLOs. Each model is planned as if the rest of the GPU were
    /// busy all the time (worst-case interference), so the plan holds when the models run together.
    pub fn compute(inputs: PlanInputs) -> Result<OraclePlan, gpuslice_simulator::SimError> {
        let window_s = inputs.control_interval_s * inputs.intervals_per_window as f64;
        let end = inputs.arrivals.iter().filter_map(|a| a.last()).fold(0.0_f64, |m, t| m.max(*t));
        let windows = ((end / window_s).floor() as usize + 1).max(1);
        let tables: Vec<Result<Vec<WindowRow>, _>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..inputs.models.len())
                .map(|m| {
                    scope.spawn({
                        let inputs = &inputs;
                        move || model_table(inputs, m, windows, window_s)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("planner thread")).collect()
        });
        let tables: Table = tables.into_iter().collect::<Result<_, _>>()?;
        let windows = (0..windows)
            .map(|w| {
                let (slices, goodput) = split_window(&tables, w);
                let shared = best_shared(&inputs, w, window_s)?.filter(|(served, _, _)| *served > goodput);
                // Shared modes ignore GPU%; keeping the window's slices there means switching
                // to or from slices never asks for more than the whole GPU.
                let shared = shared.map(|(_, mode, allocations)| {
                    let kept = allocations.iter().zip(&slices).map(|(a, s)| Allocation { gpu_pct: s.gpu_pct, ..*a });
                    (mode, kept.collect())
                });
                Ok(WindowPlan { slices, shared })
            })
            .collect::<Result<_, gpuslice_simulator::SimError>>()?;
        Ok(OraclePlan { windows, intervals_per_window: inputs.intervals_per_window })
    }
}

/// The best allocation and goodput of model `m` per window and GPU% level.
fn model_table(
    inputs: &PlanInputs,
    m: usize,
    windows: usize,
    window_s: f64,
) -> Result<Vec<WindowRow>, gpuslice_simulator::SimError> {
    use gpuslice_simulator::{SimConfig, Simulator};
    let model = &inputs.models[m];
    let mut table = Vec::with_capacity(windows);
    for w in 0..windows {
        let times = inputs.window_arrivals(m, w, window_s);
        let rate_per_ms = times.len() as f64 / (window_s * 1e3);
        let mut row: [(u64, Allocation); GPU_LEVELS] =
            std::array::from_fn(|level| (0, Batching::full(1, 0.0).at(((level + 1) * GPU_STEP) as f64)));
        let mut all_served = false;
        let mut previous = row[0].1;
        for (level, slot) in row.iter_mut().enumerate() {
            let gpu_pct = ((level + 1) * GPU_STEP) as f64;
            if all_served || times.is_empty() {
                *slot = (times.len() as u64, Allocation { gpu_pct, ..previous });
                continue;
            }
            // Each batch waiting to fill (up to half the SLO) and taken as requests come: the two
            // ways model-based batches a slice (`SliceGoal`).
            let batchings = PLAN_BATCHES.iter().flat_map(|&max_batch| {
                let formation = if rate_per_ms > 0.0 { (max_batch as f64 - 1.0) / rate_per_ms } else { 0.0 };
                let waits = if max_batch > 1 { vec![formation.min(model.slo_ms / 2.0), 0.0] } else { vec![0.0] };
                waits.into_iter().map(move |batch_timeout_ms| (max_batch, batch_timeout_ms))
            });
            for (max_batch, batch_timeout_ms) in batchings {
                let allocation = Batching::full(max_batch, batch_timeout_ms).at(gpu_pct);
                let config = SimConfig {
                    sharing: Sharing::Spatial,
                    background_pct: 100.0 - gpu_pct,
                    seed: inputs.device.config.seed ^ (w as u64) << 8 ^ m as u64,
                    ..inputs.device.config.clone()
                };
                let setup = inputs.device.setup(model, times.clone(), allocation, 1.0, 0);
                let mut sim = Simulator::new(config, vec![setup])?;
                sim.finish();
                let goodput = sim.report().total.within_slo;
                if goodput > slot.0 {
                    *slot = (goodput, allocation);
                }
            }
            all_served = slot.0 == times.len() as u64;
            previous = slot.1;
        }
        table.push(row);
    }
    Ok(table)
}

/// The knapsack over GPU% for one window: one level per model (at least 5% each) with the most
/// goodput in total, fewest GPU% among equals; leftover GPU is then spread over the models in turn.
fn split_window(tables: &Table, w: usize) -> (Vec<Allocation>, u64) {
    let n = tables.len();
    if n > GPU_LEVELS {
        // More models than 5% slices: an even split, each at its best batching for 5%.
        let goodput = (0..n).map(|m| tables[m][w][0].0).sum();
        return ((0..n).map(|m| Allocation { gpu_pct: 100.0 / n as f64, ..tables[m][w][0].1 }).collect(), goodput);
    }
    // best[k][c]: (goodput, units used) of models 0..k within c units, and model k-1's units.
    let mut best = vec![vec![Some((0u64, 0usize)); GPU_LEVELS + 1]; n + 1];
    let mut choice = vec![vec![0usize; GPU_LEVELS + 1]; n + 1];
    let better = |a: (u64, usize), b: Option<(u64, usize)>| b.is_none_or(|b| a.0 > b.0 || (a.0 == b.0 && a.1 < b.1));
    for k in 0..n {
        for c in 0..=GPU_LEVELS {
            best[k + 1][c] = None;
            for units in 1..=c {
                let Some((goodput, used)) = best[k][c - units] else { continue };
                let candidate = (goodput + tables[k][w][units - 1].0, used + units);
                if better(candidate, best[k + 1][c]) {
                    best[k + 1][c] = Some(candidate);
                    choice[k + 1][c] = units;
                }
            }
        }
    }
    let mut units = vec![0usize; n];
    let mut c = GPU_LEVELS;
    for k in (0..n).rev() {
        units[k] = choice[k + 1][c];
        c -= units[k];
    }
    let goodput = best[n][GPU_LEVELS].map_or(0, |(g, _)| g);
    let leftover = GPU_LEVELS - units.iter().sum::<usize>();
    for i in 0..leftover {
        units[i % n] += 1;
    }
    let allocations =
        (0..n).map(|m| Allocation { gpu_pct: (units[m] * GPU_STEP) as f64, ..tables[m][w][units[m] - 1].1 }).collect();
    (allocations, goodput)
}

/// The best shared plan of window `w`: every model on the whole GPU together, under temporal
/// sharing and default MPS, at each of `SHARED_BATCHINGS`; the most requests served within
/// their SLOs (and the plan), or None for an empty window.
fn best_shared(
    inputs: &PlanInputs,
    w: usize,
    window_s: f64,
) -> Result<Option<(u64, Sharing, Vec<Allocation>)>, gpuslice_simulator::SimError> {
    let times: Vec<Arc<[f64]>> = (0..inputs.models.len()).map(|m| inputs.window_arrivals(m, w, window_s)).collect();
    if times.iter().all(|t| t.is_empty()) {
        return Ok(None);
    }
    let mut best: Option<(u64, Sharing, Vec<Allocation>)> = None;
    for mode in [Sharing::Temporal, Sharing::DefaultMps] {
        for batching in SHARED_BATCHINGS {
            let allocations = vec![batching.at(100.0); inputs.models.len()];
            let run = ReplayRun {
                models: inputs.models,
                times: &times,
                allocations: &allocations,
                sharing: mode,
                scale: 1.0,
                seed: inputs.device.config.seed ^ (w as u64) << 8,
                judged_from_s: 0.0,
            };
            let served = inputs.device.replay(&run)?.total.within_slo;
            if best.as_ref().is_none_or(|(b, _, _)| served > *b) {
                best = Some((served, mode, allocations));
            }
        }
    }
    Ok(best)
}
