//! A GPU that differs from the policy's model of it. Live, the H200's default MPS slowed a
//! light model beside heavy batches more than its calibration said; here the simulator stands in
//! for such a GPU: its default-MPS contention is harsher than the one the policy plans with.

use gpuslice_control::{Backend, BackendBuilder, BackendError, SimBuilder};
use gpuslice_eval::scenario::LoadedScenario;
use gpuslice_eval::simulate::{self, PolicyChoice};
use gpuslice_simulator::{ModelSetup, Sharing, SimConfig};
use std::path::Path;

/// The simulator with co-location interference and default MPS's launch contention `factor`
/// times, and its share exponent `sqrt(factor)` times, what the policy plans with.
struct HarsherGpu {
    factor: f64,
}

impl BackendBuilder for HarsherGpu {
    fn modes(&self) -> &'static [Sharing] {
        SimBuilder.modes()
    }

    fn progress_unit(&self) -> &'static str {
        SimBuilder.progress_unit()
    }

    fn build(
        &self,
        mut config: SimConfig,
        setups: Vec<ModelSetup>,
        control_interval_s: f64,
        switching: bool,
    ) -> Result<Box<dyn Backend>, BackendError> {
        config.mps_launch_contention *= self.factor;
        config.interference *= self.factor;
        config.mps_share_exponent *= self.factor.sqrt();
        SimBuilder.build(config, setups, control_interval_s, switching)
    }
}

/// The worst model's share of its requests within SLO.
fn worst_attainment(run: &simulate::SimRun) -> f64 {
    let shares = run.report.models.iter().map(|m| m.summary.within_slo as f64 / m.summary.arrivals.max(1) as f64);
    shares.fold(1.0, f64::min)
}

#[test]
fn model_based_stays_above_default_mps_on_a_gpu_harsher_than_its_model() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let scenario = root.join("scenarios/mixed-slo-trio.toml");
    for scale in [1.5, 1.75] {
        let mut loaded = LoadedScenario::load_calibrated(Some(&scenario), Some("builtin:h200-calibration")).unwrap();
        loaded.scale_load(scale).unwrap();
        let gpu = HarsherGpu { factor: 4.0 };
        let attainment = |policy: &str| {
            worst_attainment(&simulate::run_on(&loaded, &PolicyChoice::Named(policy.into()), &gpu, false).unwrap())
        };
        let (model_based, default_mps) = (attainment("model-based"), attainment("default-mps"));
        // The harsher GPU costs the baseline (99.3% and 0.9% of its worst model's requests in
        // SLO at x1.5 and x1.75; 100% and 95.6% on the GPU as modelled).
        assert!(default_mps < 0.995, "x{scale}: the harsher GPU should cost default MPS, got {default_mps}");
        assert!(
            model_based >= default_mps && model_based >= 0.98,
            "x{scale}: model-based {model_based} against default MPS {default_mps}"
        );
    }
}
