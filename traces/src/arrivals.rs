//! Arrival processes: streams of request arrival times (seconds from the start, non-decreasing).
//!
//! Synthetic processes are renewal processes run in *operational time*: a piecewise-constant
//! rate schedule maps wall time t to Λ(t) = ∫ rate, and unit-mean renewal intervals in Λ give
//! arrivals. With one constant segment and exponential intervals this is Poisson; with Gamma
//! intervals of coefficient of variation `cv` it is a bursty (cv > 1) or smooth (cv < 1) renewal
//! process; with several segments it follows steps or a diurnal curve.

use rand::SeedableRng;
use rand::distr::Distribution;
use rand::rngs::SmallRng;
use statrs::distribution::{Exp, Gamma};
use std::sync::Arc;

/// A stream of arrival times in seconds, non-decreasing; `None` when it has ended.
pub trait ArrivalProcess: Send {
    /// The next arrival time, seconds from the start.
    fn next_arrival(&mut self) -> Option<f64>;
}

/// Arrival parameters that cannot describe arrivals (a negative rate, steps out of order...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ArrivalError(pub String);

/// A piecewise-constant rate (requests/s): segment i holds from `starts[i]` to `starts[i+1]`,
/// the last one until `end` (or forever).
#[derive(Debug, Clone, PartialEq)]
pub struct RateSchedule {
    starts: Vec<f64>,
    rates: Vec<f64>,
    end: Option<f64>,
}

/// The highest arrival rate a process takes, requests/s per model (a GPU serves tens of
/// thousands of these models' requests a second at best).
pub const MAX_RATE: f64 = 1e6;
/// The largest coefficient of variation of renewal intervals. Recorded serving traces show 1 to
/// 13; far above, the Gamma intervals (shape 1/cv²) underflow to zero, and a process would
/// put all of its arrivals at one instant.
pub const MAX_CV: f64 = 20.0;
/// The most steps a rate schedule holds (a diurnal day in 10 ms steps).
pub const MAX_STEPS: usize = 10_000_000;
/// The most requests one bin of recorded counts (e.g. a minute of a trace) expands to, after
/// its scale: they are drawn at once.
pub const MAX_PER_BIN: f64 = 10_000_000.0;

impl RateSchedule {
    /// Steps `(start_s, rate)`; the first must start at 0, starts must ascend, rates be in
    /// [0, `MAX_RATE`].
    pub fn steps(steps: &[(f64, f64)], end: Option<f64>) -> Result<RateSchedule, ArrivalError> {
        if steps.is_empty() || steps[0].0 != 0.0 {
            return Err(ArrivalError("a rate schedule must start with a step at time 0".into()));
        }
        if let Some((i, (start, _))) = steps.iter().enumerate().find(|(_, (t, _))| !t.is_finite()) {
            return Err(ArrivalError(format!("step {i} starts at {start} s; starts must be finite")));
        }
        for (i, w) in steps.windows(2).enumerate() {
            if w[1].0 <= w[0].0 {
                return Err(ArrivalError(format!(
                    "step {} starts at {} s, not after step {} at {} s",
                    i + 1,
                    w[1].0,
                    i,
                    w[0].0
                )));
            }
        }
        if let Some((i, (_, rate))) = steps.iter().enumerate().find(|(_, (_, r))| !(r.is_finite() && *r >= 0.0)) {
            return Err(ArrivalError(format!("step {i} has rate {rate}; rates must be finite and >= 0")));
        }
        if let Some((i, (_, rate))) = steps.iter().enumerate().find(|(_, (_, r))| *r > MAX_RATE) {
            return Err(ArrivalError(format!("step {i} has rate {rate}/s, above the largest, {MAX_RATE}/s")));
        }
        if steps.len() > MAX_STEPS {
            return Err(ArrivalError(format!("{} steps, more than {MAX_STEPS}", steps.len())));
        }
        Ok(RateSchedule {
            starts: steps.iter().map(|s| s.0).collect(),
            rates: steps.iter().map(|s| s.1).collect(),
            end,
        })
    }

    /// A constant rate.
    pub fn constant(rate: f64, end: Option<f64>) -> Result<RateSchedule, ArrivalError> {
        RateSchedule::steps(&[(0.0, rate)], end)
    }

    /// `mean * (1 + amplitude * sin(2π (t + phase) / period))`, held constant over `step` seconds
    /// (value at each step's midpoint), from 0 to `end`.
    pub fn diurnal(
        mean: f64,
        amplitude: f64,
        period: f64,
        phase: f64,
        step: f64,
        end: f64,
    ) -> Result<RateSchedule, ArrivalError> {
        if !(0.0..=1.0).contains(&amplitude) {
            return Err(ArrivalError(format!("amplitude must be in [0, 1], got {amplitude}")));
        }
        if !(period > 0.0 && step > 0.0 && end > 0.0) {
            return Err(ArrivalError("period, step and duration must be > 0".into()));
        }
        // Checked before the steps are made: a tiny step would ask for terabytes.
        let n = (end / step).ceil();
        if n.is_nan() || n > MAX_STEPS as f64 {
            return Err(ArrivalError(format!(
                "step_s {step} over {end} s makes {n} steps, more than {MAX_STEPS}: use a longer step_s"
            )));
        }
        let n = n as usize;
        let steps: Vec<(f64, f64)> = (0..n)
            .map(|i| {
                let mid = (i as f64 + 0.5) * step;
                (i as f64 * step, mean * (1.0 + amplitude * (std::f64::consts::TAU * (mid + phase) / period).sin()))
            })
            .collect();
        RateSchedule::steps(&steps, Some(end))
    }
}

/// Unit-mean renewal intervals.
#[derive(Debug, Clone, Copy)]
enum Interval {
    Exponential(Exp),
    Gamma(Gamma),
}

/// A renewal process (exponential or Gamma intervals) driven through a rate schedule.
pub struct ModulatedRenewal {
    schedule: RateSchedule,
    interval: Interval,
    rng: SmallRng,
    /// Current segment, the wall time and operational time at its start.
    segment: usize,
    segment_wall: f64,
    segment_op: f64,
    /// Operational time of the last arrival.
    op: f64,
}

impl ModulatedRenewal {
    /// `cv` is the coefficient of variation of the intervals: 1 is Poisson; at most `MAX_CV`.
    pub fn new(schedule: RateSchedule, cv: f64, seed: u64) -> Result<ModulatedRenewal, ArrivalError> {
        if !(cv.is_finite() && cv > 0.0 && cv <= MAX_CV) {
            return Err(ArrivalError(format!("cv must be in (0, {MAX_CV}], got {cv}")));
        }
        let interval = if (cv - 1.0).abs() < 1e-12 {
            Interval::Exponential(Exp::new(1.0).map_err(|e| ArrivalError(e.to_string()))?)
        } else {
            // Gamma with shape k = 1/cv² and rate k has mean 1 and coefficient of variation cv.
            let shape = 1.0 / (cv * cv);
            Interval::Gamma(Gamma::new(shape, shape).map_err(|e| ArrivalError(e.to_string()))?)
        };
        Ok(ModulatedRenewal {
            schedule,
            interval,
            rng: SmallRng::seed_from_u64(seed),
            segment: 0,
            segment_wall: 0.0,
            segment_op: 0.0,
            op: 0.0,
        })
    }
}

impl ArrivalProcess for ModulatedRenewal {
    fn next_arrival(&mut self) -> Option<f64> {
        self.op += match self.interval {
            Interval::Exponential(d) => d.sample(&mut self.rng),
            Interval::Gamma(d) => d.sample(&mut self.rng),
        };
        let s = &self.schedule;
        loop {
            let rate = s.rates[self.segment];
            // A step that starts after the end does not stretch the schedule past it.
            let next_start = match (s.starts.get(self.segment + 1).copied(), s.end) {
                (Some(start), Some(end)) => Some(start.min(end)),
                (start, end) => start.or(end),
            };
            let t = if rate > 0.0 { self.segment_wall + (self.op - self.segment_op) / rate } else { f64::INFINITY };
            match next_start {
                Some(limit) if t >= limit => {
                    if self.segment + 1 >= s.rates.len() || s.end.is_some_and(|end| limit >= end) {
                        return None;
                    }
                    self.segment_op += rate * (limit - self.segment_wall);
                    self.segment_wall = limit;
                    self.segment += 1;
                }
                _ => return t.is_finite().then_some(t),
            }
        }
    }
}

/// Replays recorded arrival times (already relative to the trace start and sorted).
pub struct Replay {
    times: Arc<[f64]>,
    next: usize,
    speedup: f64,
    scale: f64,
    end: Option<f64>,
    rng: SmallRng,
    /// Copies of the current recorded arrival still to hand out.
    copies_left: usize,
}

impl Replay {
    /// `speedup` > 1 compresses time (a 1 h trace at speedup 10 plays in 6 min at 10x the rate);
    /// `scale` multiplies the load on the trace's own timeline: each recorded arrival comes
    /// `scale` times on average (fractions rounded at random), so bursts grow with it.
    pub fn new(times: Arc<[f64]>, speedup: f64, scale: f64, end: Option<f64>, seed: u64) -> Replay {
        Replay { times, next: 0, speedup, scale, end, rng: SmallRng::seed_from_u64(seed), copies_left: 0 }
    }
}

impl ArrivalProcess for Replay {
    fn next_arrival(&mut self) -> Option<f64> {
        while self.copies_left == 0 {
            self.times.get(self.next)?;
            self.next += 1;
            self.copies_left = round_at_random(self.scale, &mut self.rng);
        }
        self.copies_left -= 1;
        let t = self.times[self.next - 1] / self.speedup;
        match self.end {
            Some(end) if t >= end => None,
            _ => Some(t),
        }
    }
}

/// A stream without arrivals: a model whose requests come from elsewhere (submitted one by one,
/// routed to it by a node, or moved to another GPU).
pub struct NoArrivals;

impl ArrivalProcess for NoArrivals {
    fn next_arrival(&mut self) -> Option<f64> {
        None
    }
}

/// One replica's share of several streams merged: the merged arrivals in time order are dealt
/// round-robin to `of` replicas and this one takes those at `share`, `share + of`, ... (what a
/// router that splits a model's requests evenly over identical replicas sends each).
pub struct Dealt {
    sources: Vec<Box<dyn ArrivalProcess>>,
    /// Each source's next arrival, not yet merged (None: the source has ended).
    heads: Vec<Option<f64>>,
    share: usize,
    of: usize,
    /// Merged arrivals handed out so far, to any replica.
    dealt: usize,
}

impl Dealt {
    /// The replica `share` (0-based) of `of`, over the merged `sources`.
    pub fn new(mut sources: Vec<Box<dyn ArrivalProcess>>, share: usize, of: usize) -> Result<Dealt, ArrivalError> {
        if of == 0 || share >= of {
            return Err(ArrivalError(format!("replica {share} of {of}: there is no such replica")));
        }
        let heads = sources.iter_mut().map(|s| s.next_arrival()).collect();
        Ok(Dealt { sources, heads, share, of, dealt: 0 })
    }

    /// The earliest arrival of all sources, merged (ties to the first source).
    fn next_merged(&mut self) -> Option<f64> {
        let (i, t) =
            self.heads.iter().enumerate().filter_map(|(i, h)| h.map(|t| (i, t))).min_by(|a, b| a.1.total_cmp(&b.1))?;
        self.heads[i] = self.sources[i].next_arrival();
        Some(t)
    }
}

impl ArrivalProcess for Dealt {
    fn next_arrival(&mut self) -> Option<f64> {
        loop {
            let t = self.next_merged()?;
            let mine = self.dealt % self.of == self.share;
            self.dealt += 1;
            if mine {
                return Some(t);
            }
        }
    }
}

/// `x` rounded down or up at random so that the mean is `x`.
fn round_at_random(x: f64, rng: &mut SmallRng) -> usize {
    let up = rand::RngExt::random::<f64>(rng) < x - x.floor();
    x.floor() as usize + usize::from(up)
}

/// Spreads per-bin counts (e.g. invocations per minute) uniformly at random inside each bin.
pub struct SpreadCounts {
    counts: Arc<[u64]>,
    bin_s: f64,
    scale: f64,
    end: Option<f64>,
    rng: SmallRng,
    bin: usize,
    pending: Vec<f64>,
}

impl SpreadCounts {
    /// `scale` multiplies every count (fractions rounded up or down at random, keeping the mean).
    pub fn new(counts: Arc<[u64]>, bin_s: f64, scale: f64, end: Option<f64>, seed: u64) -> SpreadCounts {
        SpreadCounts { counts, bin_s, scale, end, rng: SmallRng::seed_from_u64(seed), bin: 0, pending: Vec::new() }
    }

    /// Fills `pending` with the next bin's times, sorted descending (so `pop` yields ascending).
    /// Sorted uniforms come from normalized cumulative exponential spacings, in O(n) without a sort.
    fn fill_next_bin(&mut self) -> bool {
        while self.pending.is_empty() {
            let Some(&count) = self.counts.get(self.bin) else {
                return false;
            };
            let start = self.bin as f64 * self.bin_s;
            self.bin += 1;
            let n = round_at_random(count as f64 * self.scale, &mut self.rng);
            if n == 0 {
                continue;
            }
            let exp = Exp::new(1.0).expect("rate 1 is valid");
            let mut sum = 0.0;
            for _ in 0..n {
                sum += exp.sample(&mut self.rng);
                self.pending.push(sum);
            }
            let total = sum + exp.sample(&mut self.rng);
            for v in self.pending.iter_mut() {
                *v = start + self.bin_s * *v / total;
            }
            self.pending.reverse();
        }
        true
    }
}

impl ArrivalProcess for SpreadCounts {
    fn next_arrival(&mut self) -> Option<f64> {
        if !self.fill_next_bin() {
            return None;
        }
        let t = self.pending.pop()?;
        match self.end {
            Some(end) if t >= end => None,
            _ => Some(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(mut p: impl ArrivalProcess, limit: usize) -> Vec<f64> {
        std::iter::from_fn(|| p.next_arrival()).take(limit).collect()
    }

    fn mean_and_cv(times: &[f64]) -> (f64, f64) {
        let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn a_step_after_the_end_does_not_stretch_the_schedule_and_unbounded_numbers_are_refused() {
        let late = RateSchedule::steps(&[(0.0, 100.0), (1e12, 5.0)], Some(2.0)).unwrap();
        let times = collect(ModulatedRenewal::new(late, 1.0, 3).unwrap(), 10_000);
        assert!(
            times.len() < 300 && times.iter().all(|t| *t < 2.0),
            "{} arrivals, last {:?}",
            times.len(),
            times.last()
        );
        for start in [f64::NAN, f64::INFINITY] {
            let err = RateSchedule::steps(&[(0.0, 1.0), (start, 1.0)], Some(2.0)).unwrap_err();
            assert!(err.0.contains("finite"), "{err}");
        }
        for cv in [MAX_CV * 1.01, 1e10, 4_294_967_296.0, f64::NAN] {
            let err = ModulatedRenewal::new(RateSchedule::constant(1.0, None).unwrap(), cv, 0).err().unwrap();
            assert!(err.0.contains("cv must be in"), "{err}");
        }
        // At the largest cv the intervals keep their mean: the arrivals do not pile up at one instant.
        let bursty = ModulatedRenewal::new(RateSchedule::constant(100.0, Some(100.0)).unwrap(), MAX_CV, 5).unwrap();
        let n = collect(bursty, 1_000_000).len();
        assert!((1_000..100_000).contains(&n), "{n} arrivals where 10,000 were asked for");
    }

    #[test]
    fn poisson_and_gamma_have_the_asked_rate_and_cv() {
        for cv in [1.0, 0.5, 3.0] {
            let p = ModulatedRenewal::new(RateSchedule::constant(200.0, None).unwrap(), cv, 7).unwrap();
            let (mean, got_cv) = mean_and_cv(&collect(p, 400_000));
            assert!((mean * 200.0 - 1.0).abs() < 0.02, "cv {cv}: mean gap {mean}");
            assert!((got_cv - cv).abs() / cv < 0.03, "cv {cv}: got {got_cv}");
        }
    }

    #[test]
    fn steps_follow_their_rates_and_stop_at_the_end() {
        let schedule =
            RateSchedule::steps(&[(0.0, 100.0), (10.0, 400.0), (20.0, 0.0), (25.0, 50.0)], Some(35.0)).unwrap();
        let times = collect(ModulatedRenewal::new(schedule, 1.0, 3).unwrap(), usize::MAX);
        let count = |a: f64, b: f64| times.iter().filter(|t| **t >= a && **t < b).count() as f64;
        assert!((count(0.0, 10.0) - 1000.0).abs() < 120.0);
        assert!((count(10.0, 20.0) - 4000.0).abs() < 250.0);
        assert_eq!(count(20.0, 25.0), 0.0);
        assert!((count(25.0, 35.0) - 500.0).abs() < 90.0);
        assert!(times.iter().all(|t| *t < 35.0));
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn bad_schedules_are_refused_with_a_reason() {
        assert!(RateSchedule::steps(&[(1.0, 5.0)], None).unwrap_err().0.contains("time 0"));
        assert!(RateSchedule::steps(&[(0.0, 5.0), (0.0, 6.0)], None).unwrap_err().0.contains("not after"));
        assert!(RateSchedule::steps(&[(0.0, -1.0)], None).unwrap_err().0.contains("rate"));
        assert!(RateSchedule::diurnal(10.0, 2.0, 60.0, 0.0, 1.0, 60.0).is_err());
    }

    #[test]
    fn spread_counts_keep_each_bin_count_in_order() {
        let counts: Arc<[u64]> = vec![5, 0, 1000, 3].into();
        let times = collect(SpreadCounts::new(counts, 60.0, 1.0, None, 11), usize::MAX);
        assert_eq!(times.len(), 1008);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(times.iter().filter(|t| **t >= 120.0 && **t < 180.0).count(), 1000);
        assert!(times.iter().all(|t| !(60.0..120.0).contains(t)));
    }

    #[test]
    fn replay_speedup_compresses_time() {
        let times: Arc<[f64]> = vec![0.0, 10.0, 20.0, 40.0].into();
        assert_eq!(collect(Replay::new(times.clone(), 10.0, 1.0, None, 0), 10), vec![0.0, 1.0, 2.0, 4.0]);
        assert_eq!(collect(Replay::new(times, 1.0, 1.0, Some(25.0), 0), 10), vec![0.0, 10.0, 20.0]);
    }

    #[test]
    fn replay_scale_repeats_arrivals_on_the_trace_timeline() {
        let times: Arc<[f64]> = vec![0.0, 10.0, 20.0, 40.0].into();
        assert_eq!(
            collect(Replay::new(times.clone(), 1.0, 2.0, None, 0), 10),
            vec![0.0, 0.0, 10.0, 10.0, 20.0, 20.0, 40.0, 40.0]
        );
        let many: Arc<[f64]> = (0..10_000).map(f64::from).collect();
        let half = collect(Replay::new(many, 1.0, 0.5, None, 7), 20_000);
        assert!((4_700..5_300).contains(&half.len()), "{}", half.len());
        assert!(half.windows(2).all(|w| w[0] <= w[1]));
    }
    #[test]
    fn dealt_replicas_split_the_merged_stream_evenly_and_lose_nothing() {
        let stream = |times: &[f64]| -> Box<dyn ArrivalProcess> {
            Box::new(Replay::new(times.to_vec().into(), 1.0, 1.0, None, 1))
        };
        let a = [0.1, 0.4, 0.5, 0.9];
        let b = [0.2, 0.3, 0.8];
        let drain = |mut d: Dealt| std::iter::from_fn(move || d.next_arrival()).collect::<Vec<f64>>();
        let first = drain(Dealt::new(vec![stream(&a), stream(&b)], 0, 2).unwrap());
        let second = drain(Dealt::new(vec![stream(&a), stream(&b)], 1, 2).unwrap());
        // Merged: 0.1 0.2 0.3 0.4 0.5 0.8 0.9, dealt alternately.
        assert_eq!(first, vec![0.1, 0.3, 0.5, 0.9]);
        assert_eq!(second, vec![0.2, 0.4, 0.8]);
        assert!(Dealt::new(vec![stream(&a)], 2, 2).is_err());
        assert!(Dealt::new(vec![stream(&a)], 0, 0).is_err());
    }
}
