//! Service-time sampling with a per-slice cache: latency-model lookups interpolate over the
//! profile, too slow to repeat for every batch, so each (GPU%, batch) point is computed once.

use crate::config::ServiceModel;
use rand::distr::Distribution;
use rand::rngs::SmallRng;
use statrs::distribution::{Exp, Normal};

/// z of the 99th percentile of the standard normal.
const Z99: f64 = 2.326_347_874;
/// Slices remembered per model (allocations in use plus default-MPS shares 100/n).
const CACHED_SLICES: usize = 32;

/// (median service ns, log-normal sigma), by batch size, for one GPU%.
struct SliceTable {
    gpu_pct: f64,
    by_batch: Vec<Option<(f64, f64)>>,
}

pub(crate) struct ServiceSampler {
    model: ServiceModel,
    tables: Vec<SliceTable>,
    /// Knee GPU% and launch-bound fraction by batch size, computed on first use.
    knees: Vec<Option<(f64, f64)>>,
    normal: Normal,
}

impl ServiceSampler {
    pub fn new(model: ServiceModel) -> Self {
        ServiceSampler { model, tables: Vec::new(), knees: Vec::new(), normal: Normal::standard() }
    }

    /// Median service time and its log-normal spread at this point.
    fn point(&mut self, batch: u32, gpu_pct: f64) -> (f64, f64) {
        let table = match self.tables.iter().position(|t| t.gpu_pct == gpu_pct) {
            Some(i) => i,
            None => {
                if self.tables.len() == CACHED_SLICES {
                    self.tables.remove(0);
                }
                self.tables.push(SliceTable { gpu_pct, by_batch: Vec::new() });
                self.tables.len() - 1
            }
        };
        let by_batch = &mut self.tables[table].by_batch;
        let b = batch as usize;
        if by_batch.len() <= b {
            by_batch.resize(b + 1, None);
        }
        *by_batch[b].get_or_insert_with(|| match &self.model {
            ServiceModel::Calibrated { latency, jitter } => {
                let sigma = if *jitter { latency.tail_ratio(batch, gpu_pct).ln() / Z99 } else { 0.0 };
                (latency.p50_ms(batch, gpu_pct) * 1e6, sigma)
            }
            ServiceModel::Constant { ms } => (ms * 1e6, 0.0),
            ServiceModel::Exponential { mean_ms } => (mean_ms * 1e6 * std::f64::consts::LN_2, 0.0),
        })
    }

    /// Median service time in ns of a batch running alone on `gpu_pct`%.
    pub fn median_ns(&mut self, batch: u32, gpu_pct: f64) -> f64 {
        self.point(batch, gpu_pct).0
    }

    /// The batch size's knee GPU% (`LatencyModel::knee_pct`) and the fraction of its time that is
    /// launch-bound (`LatencyModel::launch_bound_fraction`). Service times that do not depend on
    /// the slice count as wholly launch-bound with a knee of 5%.
    pub fn knee_and_launch_fraction(&mut self, batch: u32) -> (f64, f64) {
        let b = batch as usize;
        if self.knees.len() <= b {
            self.knees.resize(b + 1, None);
        }
        *self.knees[b].get_or_insert_with(|| match &self.model {
            ServiceModel::Calibrated { latency, .. } => (latency.knee_pct(batch), latency.launch_bound_fraction(batch)),
            ServiceModel::Constant { .. } | ServiceModel::Exponential { .. } => (5.0, 1.0),
        })
    }

    /// One service time in ns of a batch running alone on `gpu_pct`%.
    pub fn sample_ns(&mut self, batch: u32, gpu_pct: f64, rng: &mut SmallRng) -> f64 {
        if let ServiceModel::Exponential { mean_ms } = self.model {
            return Exp::new(1.0 / (mean_ms * 1e6)).expect("mean_ms validated > 0").sample(rng);
        }
        let (median, sigma) = self.point(batch, gpu_pct);
        if sigma > 0.0 { median * (sigma * self.normal.sample(rng)).exp() } else { median }
    }
}
