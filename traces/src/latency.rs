//! Per-model latency as a function of batch size and GPU share, calibrated from a profile.
//!
//! Two layers:
//! - a parametric form fitted by Levenberg-Marquardt on relative error,
//!   `t(b, g) = a0 + a1*b + (c0 + c1*b) * (100/g)^p`: a fixed cost and a per-item cost that
//!   do not shrink with more SMs, and a parallel part whose time grows as the slice shrinks
//!   (`p` near 1 means "time inversely proportional to SMs");
//! - a residual correction (measured / fitted, interpolated between measured points, held flat
//!   outside them), so the model reproduces every measured point exactly and falls back on the
//!   parametric shape for GPU% and batch sizes that were not measured.
//!
//! `p` is only identifiable with three or more GPU% levels; models measured at fewer take the
//! median exponent of those that have them (1.0 if none do).

use crate::error::{DataError, Result};
use crate::profile::{ModelProfile, ProfileSet};
use levenberg_marquardt::{LeastSquaresProblem, LevenbergMarquardt};
use nalgebra::{DMatrix, DVector, Dyn, Owned};
use std::collections::BTreeMap;

/// See `LatencyModel::knee_pct`.
pub const KNEE_SLOWDOWN: f64 = 1.1;

/// How well the parametric form matches the measured p50s.
#[derive(Debug, Clone, PartialEq)]
pub struct FitQuality {
    /// Measured points fitted.
    pub points: usize,
    /// Root-mean-square of (fitted - measured) / measured.
    pub rms_rel_error: f64,
    /// Largest |fitted - measured| / measured.
    pub max_rel_error: f64,
    /// The GPU% exponent `p`, and whether it was fitted for this model or pooled from others.
    pub exponent: f64,
    /// Whether `exponent` was fitted for this model (else pooled).
    pub exponent_fitted: bool,
}

/// Fitted parameters of the parametric form.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Parametric {
    /// Fixed cost, ms.
    pub a0: f64,
    /// Per-item cost that does not shrink with more SMs, ms.
    pub a1: f64,
    /// Fixed part that scales with the slice, ms at 100%.
    pub c0: f64,
    /// Per-item part that scales with the slice, ms at 100%.
    pub c1: f64,
    /// Exponent of `100/g`.
    pub p: f64,
}

impl Parametric {
    /// `t(b, g)` in ms.
    pub fn eval_ms(&self, batch: f64, gpu_pct: f64) -> f64 {
        let x = 100.0 / gpu_pct.clamp(1.0, 100.0);
        self.a0 + self.a1 * batch + (self.c0 + self.c1 * batch) * x.powf(self.p)
    }
}

/// Values known at measured (GPU%, batch) points, interpolated linearly in log2(batch) within a
/// GPU% level and linearly in 1/GPU% between levels; held at the nearest edge outside.
#[derive(Debug, Clone)]
struct MeasuredGrid {
    /// (100 / gpu_pct, [(log2 batch, value)]), both ascending.
    levels: Vec<(f64, Vec<(f64, f64)>)>,
}

fn interpolate(points: &[(f64, f64)], at: f64) -> f64 {
    let i = points.partition_point(|(x, _)| *x < at);
    if i == 0 {
        return points[0].1;
    }
    if i == points.len() {
        return points[i - 1].1;
    }
    let ((x0, y0), (x1, y1)) = (points[i - 1], points[i]);
    y0 + (y1 - y0) * (at - x0) / (x1 - x0)
}

impl MeasuredGrid {
    fn new(profile: &ModelProfile, value: impl Fn(&crate::profile::ProfilePoint) -> f64) -> Self {
        let mut levels: Vec<(f64, Vec<(f64, f64)>)> = Vec::new();
        for gpu in profile.gpu_levels() {
            let mut row: Vec<(f64, f64)> = profile
                .points
                .iter()
                .filter(|p| p.gpu_pct == gpu)
                .map(|p| ((p.batch as f64).log2(), value(p)))
                .collect();
            row.sort_by(|a, b| a.0.total_cmp(&b.0));
            levels.push((100.0 / gpu, row));
        }
        levels.sort_by(|a, b| a.0.total_cmp(&b.0));
        MeasuredGrid { levels }
    }

    fn at(&self, batch: f64, gpu_pct: f64) -> f64 {
        let log_b = batch.max(1.0).log2();
        let x = 100.0 / gpu_pct.clamp(1.0, 100.0);
        let per_level: Vec<(f64, f64)> = self.levels.iter().map(|(lx, row)| (*lx, interpolate(row, log_b))).collect();
        interpolate(&per_level, x)
    }
}

/// A model's calibrated latency: `p50_ms(batch, gpu_pct)` and its tail.
#[derive(Debug, Clone)]
pub struct LatencyModel {
    /// The model's name.
    pub model: String,
    /// The fitted form.
    pub parametric: Parametric,
    /// How well it fits.
    pub fit: FitQuality,
    residual: MeasuredGrid,
    tail_ratio: MeasuredGrid,
}

impl LatencyModel {
    /// Median batch latency in ms at `batch` items on `gpu_pct`% of the GPU.
    pub fn p50_ms(&self, batch: u32, gpu_pct: f64) -> f64 {
        let b = batch as f64;
        self.parametric.eval_ms(b, gpu_pct) * self.residual.at(b, gpu_pct)
    }

    /// p99 / p50 of the batch latency at this point (>= 1).
    pub fn tail_ratio(&self, batch: u32, gpu_pct: f64) -> f64 {
        self.tail_ratio.at(batch as f64, gpu_pct).max(1.0)
    }

    /// 99th-percentile batch latency in ms (the median times the tail ratio).
    pub fn p99_ms(&self, batch: u32, gpu_pct: f64) -> f64 {
        self.p50_ms(batch, gpu_pct) * self.tail_ratio(batch, gpu_pct)
    }

    /// The knee GPU% of a batch size: the smallest GPU% (in steps of 5) at which the batch runs
    /// within `KNEE_SLOWDOWN` of its time on the whole GPU. Past it, more SMs buy little.
    pub fn knee_pct(&self, batch: u32) -> f64 {
        let full = self.p50_ms(batch, 100.0);
        (1..=20).map(|step| step as f64 * 5.0).find(|g| self.p50_ms(batch, *g) <= KNEE_SLOWDOWN * full).unwrap_or(100.0)
    }

    /// The share of the batch's time on the whole GPU that does not shrink with more SMs (the
    /// fitted fixed and per-item terms): kernel launches and small, latency-bound kernels.
    pub fn launch_bound_fraction(&self, batch: u32) -> f64 {
        let b = batch as f64;
        ((self.parametric.a0 + self.parametric.a1 * b) / self.parametric.eval_ms(b, 100.0)).clamp(0.0, 1.0)
    }

    /// Fits one model; `shared_exponent` is used when the profile has fewer than 3 GPU% levels.
    pub fn fit(profile: &ModelProfile, shared_exponent: f64) -> Result<LatencyModel> {
        let fit_exponent = profile.gpu_levels().len() >= 3;
        let problem = FitProblem::new(profile, (!fit_exponent).then_some(shared_exponent));
        let (problem, report) = LevenbergMarquardt::new().minimize(problem);
        let parametric = problem.parametric();
        let valid =
            [parametric.a0, parametric.a1, parametric.c0, parametric.c1, parametric.p].iter().all(|v| v.is_finite());
        if !report.termination.was_successful() && !valid {
            return Err(DataError::malformed(
                &profile.model,
                None,
                None,
                format!("latency fit did not converge: {:?}", report.termination),
            ));
        }
        let rel_errors: Vec<f64> = profile
            .points
            .iter()
            .map(|pt| (parametric.eval_ms(pt.batch as f64, pt.gpu_pct) - pt.p50_ms) / pt.p50_ms)
            .collect();
        let n = rel_errors.len() as f64;
        let fit = FitQuality {
            points: rel_errors.len(),
            rms_rel_error: (rel_errors.iter().map(|e| e * e).sum::<f64>() / n).sqrt(),
            max_rel_error: rel_errors.iter().fold(0.0_f64, |m, e| m.max(e.abs())),
            exponent: parametric.p,
            exponent_fitted: fit_exponent,
        };
        Ok(LatencyModel {
            model: profile.model.clone(),
            parametric,
            fit,
            residual: MeasuredGrid::new(profile, |pt| pt.p50_ms / parametric.eval_ms(pt.batch as f64, pt.gpu_pct)),
            tail_ratio: MeasuredGrid::new(profile, |pt| pt.p99_ms / pt.p50_ms),
        })
    }

    /// Fits every model of a profile set; exponents are pooled for models measured at < 3 GPU% levels.
    pub fn fit_all(set: &ProfileSet) -> Result<BTreeMap<String, LatencyModel>> {
        let mut fitted = BTreeMap::new();
        let mut exponents = Vec::new();
        for profile in set.models.values().filter(|p| p.gpu_levels().len() >= 3) {
            let model = LatencyModel::fit(profile, 1.0)?;
            exponents.push(model.parametric.p);
            fitted.insert(profile.model.clone(), model);
        }
        exponents.sort_by(f64::total_cmp);
        let shared = if exponents.is_empty() { 1.0 } else { exponents[exponents.len() / 2] };
        for profile in set.models.values().filter(|p| p.gpu_levels().len() < 3) {
            fitted.insert(profile.model.clone(), LatencyModel::fit(profile, shared)?);
        }
        Ok(fitted)
    }
}

/// Relative-error least squares over the profile's p50s. Non-negative coefficients are
/// parametrized as squares; the exponent is free unless fixed.
struct FitProblem {
    /// (batch, 100/gpu_pct, measured p50)
    points: Vec<(f64, f64, f64)>,
    theta: DVector<f64>,
    fixed_exponent: Option<f64>,
}

impl FitProblem {
    fn new(profile: &ModelProfile, fixed_exponent: Option<f64>) -> Self {
        let points: Vec<(f64, f64, f64)> =
            profile.points.iter().map(|p| (p.batch as f64, 100.0 / p.gpu_pct, p.p50_ms)).collect();
        // Start from an even split of the smallest latency into fixed and parallel parts, and of
        // the per-item slope at the largest GPU% likewise.
        let top = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let mut at_top: Vec<_> = points.iter().filter(|p| p.1 == top).collect();
        at_top.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (first, last) = (at_top[0], at_top[at_top.len() - 1]);
        let slope = if last.0 > first.0 { ((last.2 - first.2) / (last.0 - first.0)).max(1e-6) } else { first.2 * 0.05 };
        let half_fixed = (first.2 / 2.0).sqrt();
        let half_slope = (slope / 2.0).sqrt();
        let mut theta = vec![half_fixed, half_slope, half_fixed, half_slope];
        if fixed_exponent.is_none() {
            theta.push(1.0);
        }
        FitProblem { points, theta: DVector::from_vec(theta), fixed_exponent }
    }

    fn parametric(&self) -> Parametric {
        let t = &self.theta;
        Parametric {
            a0: t[0] * t[0],
            a1: t[1] * t[1],
            c0: t[2] * t[2],
            c1: t[3] * t[3],
            p: self.fixed_exponent.unwrap_or_else(|| t[4]),
        }
    }
}

impl LeastSquaresProblem<f64, Dyn, Dyn> for FitProblem {
    type ResidualStorage = Owned<f64, Dyn>;
    type JacobianStorage = Owned<f64, Dyn, Dyn>;
    type ParameterStorage = Owned<f64, Dyn>;

    fn set_params(&mut self, theta: &DVector<f64>) {
        self.theta.copy_from(theta);
    }

    fn params(&self) -> DVector<f64> {
        self.theta.clone()
    }

    fn residuals(&self) -> Option<DVector<f64>> {
        let f = self.parametric();
        Some(DVector::from_iterator(
            self.points.len(),
            self.points.iter().map(|&(b, x, y)| (f.eval_ms(b, 100.0 / x) - y) / y),
        ))
    }

    fn jacobian(&self) -> Option<DMatrix<f64>> {
        let f = self.parametric();
        let t = &self.theta;
        let mut jac = DMatrix::zeros(self.points.len(), t.len());
        for (row, &(b, x, y)) in self.points.iter().enumerate() {
            let xp = x.powf(f.p);
            jac[(row, 0)] = 2.0 * t[0] / y;
            jac[(row, 1)] = 2.0 * t[1] * b / y;
            jac[(row, 2)] = 2.0 * t[2] * xp / y;
            jac[(row, 3)] = 2.0 * t[3] * b * xp / y;
            if self.fixed_exponent.is_none() {
                jac[(row, 4)] = (f.c0 + f.c1 * b) * xp * x.ln() / y;
            }
        }
        Some(jac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Source;

    fn h100() -> BTreeMap<String, LatencyModel> {
        let source = Source::load("builtin:h100-cudagraph", std::path::Path::new(".")).unwrap();
        LatencyModel::fit_all(&ProfileSet::parse(&source).unwrap()).unwrap()
    }

    #[test]
    fn jacobian_matches_numeric_derivative() {
        let source = Source::load("builtin:h100-cudagraph", std::path::Path::new(".")).unwrap();
        let set = ProfileSet::parse(&source).unwrap();
        let mut problem = FitProblem::new(set.model("resnet50").unwrap(), None);
        let numeric = levenberg_marquardt::differentiate_numerically(&mut problem).unwrap();
        let analytic = problem.jacobian().unwrap();
        assert!((numeric - analytic).abs().max() < 1e-5);
    }

    #[test]
    fn reproduces_measured_points_and_fits_within_bounds() {
        let source = Source::load("builtin:h100-cudagraph", std::path::Path::new(".")).unwrap();
        let set = ProfileSet::parse(&source).unwrap();
        let models = h100();
        for profile in set.models.values() {
            let model = &models[&profile.model];
            assert!(model.fit.rms_rel_error < 0.25, "{}: rms {}", profile.model, model.fit.rms_rel_error);
            for pt in &profile.points {
                let got = model.p50_ms(pt.batch, pt.gpu_pct);
                assert!((got - pt.p50_ms).abs() / pt.p50_ms < 1e-9, "{} {:?} -> {got}", profile.model, pt);
                assert!((model.p99_ms(pt.batch, pt.gpu_pct) - pt.p99_ms).abs() / pt.p99_ms < 1e-9);
            }
        }
    }

    #[test]
    fn latency_grows_with_batch_and_shrinks_with_gpu_share() {
        let models = h100();
        let m = &models["resnet50"];
        assert!(m.p50_ms(64, 30.0) > m.p50_ms(8, 30.0));
        assert!(m.p50_ms(8, 30.0) > m.p50_ms(8, 60.0));
        // Between measured levels and batch sizes it stays between its neighbours.
        let mid = m.p50_ms(12, 35.0);
        assert!(mid > m.p50_ms(8, 50.0) && mid < m.p50_ms(16, 20.0));
    }
}
