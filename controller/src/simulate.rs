//! Runs a scenario on the simulator, one control interval at a time, with a progress bar.

use crate::scenario::LoadedScenario;
use anyhow::Result;
use gpuslice_simulator::{ModelInterval, Report, Sharing, Simulator, secs_to_ns};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::{Duration, Instant};

/// A finished simulation.
pub struct SimRun {
    pub report: Report,
    /// Per model and control interval (batch samples left out).
    pub intervals: Vec<ModelInterval>,
    /// Wall time of the simulation itself, without loading the scenario.
    pub wall: Duration,
}

/// A progress bar over simulated time that appears only once a run has lasted a second.
pub struct LateProgress {
    bar: ProgressBar,
    started: Instant,
    shown: bool,
    enabled: bool,
}

impl LateProgress {
    pub fn new(total_s: Option<f64>, what: &str, enabled: bool) -> LateProgress {
        let bar = match total_s {
            Some(total) => ProgressBar::with_draw_target(Some(total.ceil() as u64), ProgressDrawTarget::hidden())
                .with_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:40}] {pos}/{len} s simulated, {elapsed} elapsed, eta {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                ),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden()).with_style(
                ProgressStyle::with_template("{spinner} {msg} {pos} s simulated, {elapsed}").expect("valid template"),
            ),
        };
        bar.set_message(what.to_string());
        LateProgress { bar, started: Instant::now(), shown: false, enabled }
    }

    pub fn set(&mut self, simulated_s: f64) {
        if self.enabled && !self.shown && self.started.elapsed() > Duration::from_secs(1) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
        self.bar.set_position(simulated_s as u64);
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

/// Runs `loaded` to the end of its arrivals (and until every request is served or dropped).
pub fn run(loaded: &LoadedScenario, sharing: Option<Sharing>, show_progress: bool) -> Result<SimRun> {
    let (config, setups) = loaded.build(sharing)?;
    let mode = config.sharing;
    let mut sim = Simulator::new(config, setups)?;
    let interval = secs_to_ns(loaded.scenario.control_interval_s).max(1);
    let mut progress =
        LateProgress::new(loaded.scenario.duration_s, &format!("{} ({mode})", loaded.scenario.name), show_progress);
    let started = Instant::now();
    let mut intervals = Vec::new();
    let mut t = 0;
    while !sim.is_drained() {
        t += interval;
        sim.run_until(t);
        intervals.extend(sim.take_interval().into_iter().map(|i| ModelInterval { batches: Vec::new(), ..i }));
        progress.set(t as f64 * 1e-9);
    }
    progress.finish();
    let wall = started.elapsed();
    let report = sim.report();
    tracing::info!(
        scenario = %loaded.scenario.name,
        sharing = %mode,
        simulated_s = report.elapsed_s,
        events = report.events,
        wall_s = wall.as_secs_f64(),
        "simulation finished"
    );
    Ok(SimRun { report, intervals, wall })
}
