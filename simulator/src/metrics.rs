//! Counters kept per model (over the whole run and per control interval) and the summaries
//! computed from them: latency percentiles, SLO attainment, goodput, throughput, drops, queue
//! length and GPU SM-time.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, up to one hour, to 3 significant digits.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Counters of one model over a span of time (the simulator's, and any real backend's, so both
/// report the same `Summary`).
#[derive(Clone)]
pub struct Counters {
    /// Requests that arrived.
    pub arrivals: u64,
    /// Requests completed.
    pub completed: u64,
    /// Requests completed within the SLO.
    pub within_slo: u64,
    /// Requests dropped (waited past the drop deadline).
    pub dropped: u64,
    /// Batches run.
    pub batches: u64,
    /// Sum over time of (GPU% held by running batches) x ns.
    pub sm_pct_ns: f64,
    /// Sum over time of queue length x ns.
    pub queue_area: f64,
    /// Longest queue seen.
    pub max_queue: usize,
    /// Latencies of completed requests, µs.
    pub latency_us: Histogram<u64>,
}

impl Counters {
    /// Nothing counted yet.
    pub fn new() -> Self {
        Counters {
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds"),
            ..Counters::released()
        }
    }

    /// Nothing counted, with a histogram that holds next to no memory until it records (for a
    /// retired model whose figures have been handed over: a full one is hundreds of KB).
    pub fn released() -> Self {
        Counters {
            arrivals: 0,
            completed: 0,
            within_slo: 0,
            dropped: 0,
            batches: 0,
            sm_pct_ns: 0.0,
            queue_area: 0.0,
            max_queue: 0,
            latency_us: Histogram::new(1).expect("valid histogram"),
        }
    }

    /// Zeroes every counter, keeping the histogram's allocation.
    pub fn reset(&mut self) {
        let Counters {
            arrivals,
            completed,
            within_slo,
            dropped,
            batches,
            sm_pct_ns,
            queue_area,
            max_queue,
            latency_us,
        } = self;
        (*arrivals, *completed, *within_slo, *dropped, *batches) = (0, 0, 0, 0, 0);
        (*sm_pct_ns, *queue_area, *max_queue) = (0.0, 0.0, 0);
        latency_us.reset();
    }

    /// Counts one completed request.
    pub fn record_latency(&mut self, latency_ns: u64, within_slo: bool) {
        self.completed += 1;
        self.within_slo += u64::from(within_slo);
        self.latency_us.saturating_record((latency_ns / 1000).max(1));
    }

    /// Adds `other` into `self` (for totals across models).
    pub fn merge(&mut self, other: &Counters) {
        self.arrivals += other.arrivals;
        self.completed += other.completed;
        self.within_slo += other.within_slo;
        self.dropped += other.dropped;
        self.batches += other.batches;
        self.sm_pct_ns += other.sm_pct_ns;
        self.queue_area += other.queue_area;
        self.max_queue = self.max_queue.max(other.max_queue);
        self.latency_us.add(&other.latency_us).expect("same histogram bounds");
    }

    /// Figures over `elapsed_ns`; rates are per second of `rate_span_ns`.
    pub fn summary(&self, elapsed_ns: u64, rate_span_ns: u64) -> Summary {
        let secs = (rate_span_ns as f64 * 1e-9).max(1e-9);
        let pct = |q: f64| {
            if self.completed == 0 { 0.0 } else { self.latency_us.value_at_quantile(q) as f64 / 1000.0 }
        };
        let finished = self.completed + self.dropped;
        Summary {
            arrivals: self.arrivals,
            completed: self.completed,
            dropped: self.dropped,
            within_slo: self.within_slo,
            slo_attainment: slo_attainment(self.within_slo, finished),
            goodput_rps: self.within_slo as f64 / secs,
            throughput_rps: self.completed as f64 / secs,
            arrival_rps: self.arrivals as f64 / secs,
            p50_ms: pct(0.50),
            p95_ms: pct(0.95),
            p99_ms: pct(0.99),
            mean_ms: if self.completed == 0 { 0.0 } else { self.latency_us.mean() / 1000.0 },
            mean_batch: if self.batches == 0 { 0.0 } else { self.completed as f64 / self.batches as f64 },
            mean_queue: self.queue_area / elapsed_ns.max(1) as f64,
            max_queue: self.max_queue,
            gpu_util: self.sm_pct_ns / 100.0 / elapsed_ns.max(1) as f64,
        }
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new()
    }
}

/// Requests within their SLO over those finished (completed or dropped); 1 when none finished.
fn slo_attainment(within_slo: u64, finished: u64) -> f64 {
    if finished == 0 { 1.0 } else { within_slo as f64 / finished as f64 }
}

/// Figures of one model (or all) over a span of time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Requests that arrived.
    pub arrivals: u64,
    /// Requests completed.
    pub completed: u64,
    /// Requests dropped (waited past the drop deadline).
    pub dropped: u64,
    /// Requests completed within the SLO.
    pub within_slo: u64,
    /// Requests completed within the SLO / requests finished (completed or dropped).
    pub slo_attainment: f64,
    /// Requests completed within the SLO per second. Over a whole run, rates are per second of
    /// offered traffic (start to last arrival), the same span for every policy.
    pub goodput_rps: f64,
    /// Requests completed per second.
    pub throughput_rps: f64,
    /// Requests arrived per second.
    pub arrival_rps: f64,
    /// Median latency of completed requests, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Requests per batch.
    pub mean_batch: f64,
    /// Time-weighted mean queue length.
    pub mean_queue: f64,
    /// Longest queue seen.
    pub max_queue: usize,
    /// Fraction of the GPU's SM-time held by this model's running batches.
    pub gpu_util: f64,
}

impl Summary {
    /// The figures of `parts` served side by side over the same span (a model's replicas on a
    /// node's GPUs, or the GPUs' totals): counts, rates, queues and GPU-time add up; the mean
    /// latency and batch are weighted by completed requests; percentiles are the worst part's
    /// (an upper bound: the parts' latency histograms are not at hand).
    pub fn combined(parts: &[Summary]) -> Summary {
        let sum = |f: fn(&Summary) -> f64| parts.iter().map(f).sum::<f64>();
        let worst = |f: fn(&Summary) -> f64| parts.iter().map(f).fold(0.0, f64::max);
        let completed: u64 = parts.iter().map(|p| p.completed).sum();
        let by_completed = |f: fn(&Summary) -> f64| match completed {
            0 => 0.0,
            n => parts.iter().map(|p| f(p) * p.completed as f64).sum::<f64>() / n as f64,
        };
        let (dropped, within_slo) =
            (parts.iter().map(|p| p.dropped).sum::<u64>(), parts.iter().map(|p| p.within_slo).sum());
        let finished = completed + dropped;
        Summary {
            arrivals: parts.iter().map(|p| p.arrivals).sum(),
            completed,
            dropped,
            within_slo,
            slo_attainment: slo_attainment(within_slo, finished),
            goodput_rps: sum(|p| p.goodput_rps),
            throughput_rps: sum(|p| p.throughput_rps),
            arrival_rps: sum(|p| p.arrival_rps),
            p50_ms: worst(|p| p.p50_ms),
            p95_ms: worst(|p| p.p95_ms),
            p99_ms: worst(|p| p.p99_ms),
            mean_ms: by_completed(|p| p.mean_ms),
            // Batches add up: requests over batches is the completed-weighted harmonic mean.
            mean_batch: match parts
                .iter()
                .map(|p| if p.mean_batch > 0.0 { p.completed as f64 / p.mean_batch } else { 0.0 })
                .sum::<f64>()
            {
                batches if batches > 0.0 => completed as f64 / batches,
                _ => 0.0,
            },
            mean_queue: sum(|p| p.mean_queue),
            max_queue: parts.iter().map(|p| p.max_queue).sum(),
            gpu_util: sum(|p| p.gpu_util),
        }
    }
}

/// The most recent `capacity` items of one control interval, oldest first when taken: per-interval
/// observations (batch samples, arrival times) stay bounded however long the interval and high
/// the load.
#[derive(Debug, Clone)]
pub struct IntervalRing<T> {
    items: Vec<T>,
    /// Items pushed since the last `take` (the write position, modulo the capacity).
    seen: usize,
    capacity: usize,
}

impl<T> IntervalRing<T> {
    /// An empty ring keeping at most `capacity` (at least 1) items.
    pub fn new(capacity: usize) -> IntervalRing<T> {
        IntervalRing { items: Vec::new(), seen: 0, capacity: capacity.max(1) }
    }

    /// Adds an item, overwriting the oldest when full.
    pub fn push(&mut self, item: T) {
        let slot = self.seen % self.capacity;
        self.seen += 1;
        match self.items.get_mut(slot) {
            Some(old) => *old = item,
            None => self.items.push(item),
        }
    }

    /// The items kept, oldest first, and starts a new interval.
    pub fn take(&mut self) -> Vec<T> {
        let mut items = std::mem::take(&mut self.items);
        if self.seen > self.capacity {
            items.rotate_left(self.seen % self.capacity);
        }
        self.seen = 0;
        items
    }
}

#[cfg(test)]
mod tests {
    use super::{IntervalRing, Summary};

    #[test]
    fn summaries_side_by_side_add_up_and_keep_the_worst_tail() {
        let part = |completed: u64, within_slo: u64, p99_ms: f64, mean_ms: f64, mean_batch: f64| Summary {
            arrivals: completed,
            completed,
            dropped: 0,
            within_slo,
            slo_attainment: within_slo as f64 / completed as f64,
            goodput_rps: within_slo as f64,
            throughput_rps: completed as f64,
            arrival_rps: completed as f64,
            p50_ms: p99_ms / 2.0,
            p95_ms: p99_ms * 0.9,
            p99_ms,
            mean_ms,
            mean_batch,
            mean_queue: 1.0,
            max_queue: 3,
            gpu_util: 0.25,
        };
        // 300 requests in batches of 3 (100 batches) and 100 in batches of 1 (100 batches).
        let both = Summary::combined(&[part(300, 297, 10.0, 4.0, 3.0), part(100, 100, 6.0, 8.0, 1.0)]);
        assert_eq!((both.arrivals, both.completed, both.within_slo), (400, 400, 397));
        assert!((both.slo_attainment - 397.0 / 400.0).abs() < 1e-12);
        assert_eq!((both.p99_ms, both.p50_ms), (10.0, 5.0));
        assert!((both.mean_ms - 5.0).abs() < 1e-12 && (both.mean_batch - 2.0).abs() < 1e-12, "{both:?}");
        assert_eq!((both.goodput_rps, both.max_queue, both.gpu_util), (397.0, 6, 0.5));
        assert_eq!(Summary::combined(&[]).slo_attainment, 1.0);
    }

    #[test]
    fn an_interval_ring_keeps_the_most_recent_items_oldest_first() {
        let mut ring = IntervalRing::new(3);
        (1..=2).for_each(|i| ring.push(i));
        assert_eq!(ring.take(), [1, 2]);
        (1..=7).for_each(|i| ring.push(i));
        assert_eq!(ring.take(), [5, 6, 7]);
        assert!(ring.take().is_empty());
    }
}
