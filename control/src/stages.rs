//! Where a model's requests spend their time, per stage: what the GPU backend measures on every
//! batch, and what the simulated backend reports from its request records, in one form
//! (`StageSummary`), so that the two can be set side by side.

use crate::StageSummary;
use hdrhistogram::Histogram;
use std::time::Duration;

/// One batch's times on the device, ms (zeros where a backend has no such stage).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeviceTimes {
    /// Host-to-device copy of its inputs.
    pub h2d_ms: f64,
    /// Its inference.
    pub infer_ms: f64,
    /// Device-to-host copy of its outputs.
    pub d2h_ms: f64,
}

/// One request's waits from its arrival: until its batch was handed to the worker, until the
/// batch started on it, and until its result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestWaits {
    /// Arrival to hand-off (the batch formed and paced to the worker's batch ahead).
    pub handed: Duration,
    /// Arrival to the batch's start on the worker.
    pub started: Duration,
    /// Arrival to its result.
    pub answered: Duration,
}

/// Per-request stage times of one model, in microseconds.
pub struct StageRecorder {
    handed: Histogram<u64>,
    queue: Histogram<u64>,
    h2d: Histogram<u64>,
    infer: Histogram<u64>,
    d2h: Histogram<u64>,
    total: Histogram<u64>,
    /// Batches, the sum of their graph sizes and of their inference times (ms).
    batches: u64,
    graph_sum: u64,
    infer_sum_ms: f64,
    /// The host's copies per batch, summed: the requests' inputs into the worker's shared
    /// memory, and their output rows out of it (ms).
    copy_in_sum_ms: f64,
    copy_out_sum_ms: f64,
}

impl Default for StageRecorder {
    fn default() -> Self {
        StageRecorder::with(|| Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds"))
    }
}

impl StageRecorder {
    /// Nothing recorded, with histograms that hold next to no memory until they record: for a
    /// retired model that has served out (six full histograms are over a megabyte).
    pub fn released() -> Self {
        StageRecorder::with(|| Histogram::new(1).expect("valid histogram"))
    }

    fn with(new: impl Fn() -> Histogram<u64>) -> Self {
        StageRecorder {
            handed: new(),
            queue: new(),
            h2d: new(),
            infer: new(),
            d2h: new(),
            total: new(),
            batches: 0,
            graph_sum: 0,
            infer_sum_ms: 0.0,
            copy_in_sum_ms: 0.0,
            copy_out_sum_ms: 0.0,
        }
    }
}

impl StageRecorder {
    /// One batch run as `graph` (its size, padding included): each request's waits, the batch's
    /// device times, and the host's copies of its inputs in and outputs out.
    pub fn record(
        &mut self,
        waits: impl ExactSizeIterator<Item = RequestWaits>,
        graph: u32,
        device: DeviceTimes,
        copies: (Duration, Duration),
    ) {
        let us = |d: Duration| d.as_micros() as u64 + 1;
        let ms_us = |ms: f64| (ms * 1000.0) as u64 + 1;
        let n = waits.len() as u64;
        for w in waits {
            let _ = self.handed.record(us(w.handed));
            let _ = self.queue.record(us(w.started));
            let _ = self.total.record(us(w.answered));
        }
        let _ = self.h2d.record_n(ms_us(device.h2d_ms), n);
        let _ = self.infer.record_n(ms_us(device.infer_ms), n);
        let _ = self.d2h.record_n(ms_us(device.d2h_ms), n);
        self.batches += 1;
        self.graph_sum += u64::from(graph);
        self.infer_sum_ms += device.infer_ms;
        self.copy_in_sum_ms += copies.0.as_secs_f64() * 1e3;
        self.copy_out_sum_ms += copies.1.as_secs_f64() * 1e3;
    }

    /// The figures so far, for `model`.
    pub fn summary(&self, model: &str) -> StageSummary {
        let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let per_batch = |sum: f64| sum / self.batches.max(1) as f64;
        StageSummary {
            model: model.to_string(),
            requests: self.total.len(),
            queue_p50_ms: q(&self.queue, 0.5),
            queue_p99_ms: q(&self.queue, 0.99),
            handed_p50_ms: q(&self.handed, 0.5),
            handed_p99_ms: q(&self.handed, 0.99),
            h2d_mean_ms: self.h2d.mean() / 1000.0,
            infer_mean_ms: self.infer.mean() / 1000.0,
            infer_p99_ms: q(&self.infer, 0.99),
            infer_batch_mean_ms: per_batch(self.infer_sum_ms),
            graph_batch_mean: per_batch(self.graph_sum as f64),
            copy_in_batch_mean_ms: per_batch(self.copy_in_sum_ms),
            copy_out_batch_mean_ms: per_batch(self.copy_out_sum_ms),
            d2h_mean_ms: self.d2h.mean() / 1000.0,
            total_p50_ms: q(&self.total, 0.5),
            total_p99_ms: q(&self.total, 0.99),
        }
    }
}
