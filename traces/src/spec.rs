//! Arrival processes as written in a scenario file, and the library that builds them,
//! loading (and caching) each trace file once however many models replay it.

use crate::arrivals::{ArrivalProcess, ModulatedRenewal, RateSchedule, Replay, SpreadCounts};
use crate::azure::{FunctionCounts, FunctionSelection, read_timestamps};
use crate::error::{DataError, Result};
use crate::source::Source;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

fn one() -> f64 {
    1.0
}
fn sixty() -> f64 {
    60.0
}

/// One model's arrivals, as a scenario states them (`kind = "..."`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ArrivalSpec {
    /// Poisson arrivals at `rate` requests/s.
    Poisson {
        /// Requests per second.
        rate: f64,
    },
    /// Gamma-renewal arrivals at `rate` requests/s with interval coefficient of variation `cv`.
    Gamma {
        /// Requests per second.
        rate: f64,
        /// Coefficient of variation of the intervals (1: Poisson).
        cv: f64,
    },
    /// Piecewise-constant rate: `steps = [[start_s, rate], ...]`, first at 0; Gamma(cv) intervals.
    Steps {
        /// `[start_s, rate]` pairs, the first at 0, starts ascending.
        steps: Vec<(f64, f64)>,
        /// Coefficient of variation of the intervals (1: Poisson).
        #[serde(default = "one")]
        cv: f64,
    },
    /// `mean_rate * (1 + amplitude * sin(2π (t + phase_s) / period_s))`, stepped every `step_s`.
    Diurnal {
        /// Mean requests per second.
        mean_rate: f64,
        /// Relative swing around the mean, in [0, 1].
        amplitude: f64,
        /// Seconds per cycle.
        period_s: f64,
        /// Shift of the cycle, seconds.
        #[serde(default)]
        phase_s: f64,
        /// The rate is held constant over steps this long, seconds.
        #[serde(default = "sixty")]
        step_s: f64,
        /// Coefficient of variation of the intervals (1: Poisson).
        #[serde(default = "one")]
        cv: f64,
    },
    /// Replays the timestamps of an Azure LLM 2023 trace from `start_s` on, `speedup` times
    /// faster, each recorded arrival `scale` times on average (more load, same timeline).
    Replay {
        /// The trace file (relative to the scenario) or `builtin:NAME`.
        trace: String,
        /// Replay this many times faster.
        #[serde(default = "one")]
        speedup: f64,
        /// Each recorded arrival this many times on average.
        #[serde(default = "one")]
        scale: f64,
        /// Start this many seconds into the trace.
        #[serde(default)]
        start_s: f64,
    },
    /// Azure Functions 2019 per-minute counts of the selected functions, from `start_minute` on,
    /// times `scale`, spread at random inside each minute. `minute_s` below 60 compresses the
    /// day (1 plays each minute's count in one second: the day in 24 minutes).
    PerMinuteCounts {
        /// The trace file (relative to the scenario) or `builtin:NAME`.
        trace: String,
        /// Which functions' counts drive the model.
        functions: FunctionSelection,
        /// Each recorded arrival this many times on average.
        #[serde(default = "one")]
        scale: f64,
        /// Start at this minute of the trace.
        #[serde(default)]
        start_minute: usize,
        /// Seconds each trace minute plays in (60: real time).
        #[serde(default = "sixty")]
        minute_s: f64,
    },
}

/// The largest `speedup` or `scale` of a replayed trace.
pub const MAX_FACTOR: f64 = 1e6;

impl ArrivalSpec {
    /// The highest rate a rate-driven process asks for, requests/s (None for recorded traces,
    /// whose arrivals are counted when they are loaded).
    pub fn peak_rate(&self) -> Option<f64> {
        match self {
            ArrivalSpec::Poisson { rate } | ArrivalSpec::Gamma { rate, .. } => Some(*rate),
            ArrivalSpec::Steps { steps, .. } => Some(steps.iter().map(|s| s.1).fold(0.0, f64::max)),
            ArrivalSpec::Diurnal { mean_rate, amplitude, .. } => Some(mean_rate * (1.0 + amplitude.abs())),
            ArrivalSpec::Replay { .. } | ArrivalSpec::PerMinuteCounts { .. } => None,
        }
    }

    /// How many arrivals a rate-driven process brings before `horizon_s` at its peak rate
    /// (infinite without a horizon: it never ends by itself); None for a recorded trace, whose
    /// arrivals are counted where it is read (`TraceLibrary::expected_arrivals`).
    pub fn expected_at_rate(&self, horizon_s: Option<f64>) -> Option<f64> {
        Some(self.peak_rate()? * horizon_s.unwrap_or(f64::INFINITY))
    }

    /// The same arrivals with `factor` times the load, on the same timeline: rates, counts and
    /// a replayed trace's arrivals are multiplied.
    pub fn scaled(&self, factor: f64) -> ArrivalSpec {
        let mut scaled = self.clone();
        match &mut scaled {
            ArrivalSpec::Poisson { rate } | ArrivalSpec::Gamma { rate, .. } => *rate *= factor,
            ArrivalSpec::Steps { steps, .. } => steps.iter_mut().for_each(|(_, rate)| *rate *= factor),
            ArrivalSpec::Diurnal { mean_rate, .. } => *mean_rate *= factor,
            ArrivalSpec::Replay { scale, .. } | ArrivalSpec::PerMinuteCounts { scale, .. } => *scale *= factor,
        }
        scaled
    }
}

/// Builds arrival processes, loading each trace once.
pub struct TraceLibrary {
    base_dir: PathBuf,
    timestamps: HashMap<String, Arc<[f64]>>,
    counts: HashMap<String, Arc<FunctionCounts>>,
}

impl TraceLibrary {
    /// Relative trace paths are taken from `base_dir` (the scenario file's folder).
    pub fn new(base_dir: impl Into<PathBuf>) -> TraceLibrary {
        TraceLibrary { base_dir: base_dir.into(), timestamps: HashMap::new(), counts: HashMap::new() }
    }

    fn timestamps(&mut self, trace: &str) -> Result<Arc<[f64]>> {
        if let Some(t) = self.timestamps.get(trace) {
            return Ok(t.clone());
        }
        let times: Arc<[f64]> = read_timestamps(&Source::load(trace, &self.base_dir)?)?.into();
        self.timestamps.insert(trace.to_string(), times.clone());
        Ok(times)
    }

    /// The per-minute function counts of a trace file, loaded once.
    pub fn function_counts(&mut self, trace: &str) -> Result<Arc<FunctionCounts>> {
        if let Some(c) = self.counts.get(trace) {
            return Ok(c.clone());
        }
        let counts = Arc::new(FunctionCounts::parse(&Source::load(trace, &self.base_dir)?)?);
        self.counts.insert(trace.to_string(), counts.clone());
        Ok(counts)
    }

    /// How many arrivals `spec` brings before `horizon_s` (None: until it ends by itself): a
    /// rate-driven process at its peak rate (infinite without a horizon), a recorded trace
    /// counted, times its scale. What a run will cost, known before it starts.
    pub fn expected_arrivals(&mut self, spec: &ArrivalSpec, horizon_s: Option<f64>) -> Result<f64> {
        let before = |t: f64| horizon_s.is_none_or(|h| t < h);
        Ok(match spec {
            ArrivalSpec::Replay { trace, speedup, scale, start_s } => {
                let times = self.timestamps(trace)?;
                let kept = times.iter().filter(|t| **t >= *start_s && before((*t - start_s) / speedup)).count();
                kept as f64 * scale
            }
            ArrivalSpec::PerMinuteCounts { trace, functions, scale, start_minute, minute_s } => {
                let sums = self.function_counts(trace)?.select(functions, "expected arrivals")?;
                let window = sums.get(*start_minute..).unwrap_or_default();
                let kept: u64 =
                    window.iter().enumerate().filter(|(i, _)| before(*i as f64 * minute_s)).map(|(_, c)| c).sum();
                kept as f64 * scale
            }
            rate_driven => rate_driven.expected_at_rate(horizon_s).unwrap_or(0.0),
        })
    }

    /// A process for `spec`, seeded with `seed`, ending at `horizon_s` if given.
    /// `what` names the spec in errors (e.g. `models[2].arrivals`).
    pub fn build(
        &mut self,
        spec: &ArrivalSpec,
        seed: u64,
        horizon_s: Option<f64>,
        what: &str,
    ) -> Result<Box<dyn ArrivalProcess>> {
        let bad = |problem: String| DataError::malformed(what, None, None, problem);
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 { Ok(()) } else { Err(bad(format!("{name} must be > 0, got {v}"))) }
        };
        let at_most = |name: &str, v: f64, max: f64| {
            if v <= max { Ok(()) } else { Err(bad(format!("{name} must be at most {max}, got {v}"))) }
        };
        Ok(match spec {
            ArrivalSpec::Poisson { rate } => {
                positive("rate", *rate)?;
                Box::new(
                    ModulatedRenewal::new(RateSchedule::constant(*rate, horizon_s).map_err(|e| bad(e.0))?, 1.0, seed)
                        .map_err(|e| bad(e.0))?,
                )
            }
            ArrivalSpec::Gamma { rate, cv } => {
                positive("rate", *rate)?;
                Box::new(
                    ModulatedRenewal::new(RateSchedule::constant(*rate, horizon_s).map_err(|e| bad(e.0))?, *cv, seed)
                        .map_err(|e| bad(e.0))?,
                )
            }
            ArrivalSpec::Steps { steps, cv } => Box::new(
                ModulatedRenewal::new(RateSchedule::steps(steps, horizon_s).map_err(|e| bad(e.0))?, *cv, seed)
                    .map_err(|e| bad(e.0))?,
            ),
            ArrivalSpec::Diurnal { mean_rate, amplitude, period_s, phase_s, step_s, cv } => {
                let end = horizon_s.ok_or_else(|| bad("a diurnal process needs the scenario's duration_s".into()))?;
                positive("mean_rate", *mean_rate)?;
                let schedule = RateSchedule::diurnal(*mean_rate, *amplitude, *period_s, *phase_s, *step_s, end)
                    .map_err(|e| bad(e.0))?;
                Box::new(ModulatedRenewal::new(schedule, *cv, seed).map_err(|e| bad(e.0))?)
            }
            ArrivalSpec::Replay { trace, speedup, scale, start_s } => {
                positive("speedup", *speedup)?;
                positive("scale", *scale)?;
                at_most("speedup", *speedup, MAX_FACTOR)?;
                at_most("scale", *scale, MAX_FACTOR)?;
                if !(start_s.is_finite() && *start_s >= 0.0) {
                    return Err(bad(format!("start_s must be >= 0, got {start_s}")));
                }
                let all = self.timestamps(trace)?;
                let times: Arc<[f64]> = if *start_s > 0.0 {
                    all.iter().filter(|t| **t >= *start_s).map(|t| t - start_s).collect()
                } else {
                    all
                };
                Box::new(Replay::new(times, *speedup, *scale, horizon_s, seed))
            }
            ArrivalSpec::PerMinuteCounts { trace, functions, scale, start_minute, minute_s } => {
                positive("scale", *scale)?;
                positive("minute_s", *minute_s)?;
                at_most("scale", *scale, MAX_FACTOR)?;
                let counts = self.function_counts(trace)?;
                let sums = counts.select(functions, what)?;
                let window: Arc<[u64]> = sums.get(*start_minute..).unwrap_or_default().into();
                if let Some((minute, count)) =
                    window.iter().enumerate().find(|(_, c)| **c as f64 * scale > crate::arrivals::MAX_PER_BIN)
                {
                    return Err(bad(format!(
                        "minute {} of {trace} holds {count} calls, times scale {scale} more than the {} a minute can hold",
                        start_minute + minute,
                        crate::arrivals::MAX_PER_BIN
                    )));
                }
                Box::new(SpreadCounts::new(window, *minute_s, *scale, horizon_s, seed))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_from_toml_and_build() {
        #[derive(Deserialize)]
        struct Doc {
            a: Vec<ArrivalSpec>,
        }
        let doc: Doc = toml::from_str(
            r#"
            a = [
              { kind = "poisson", rate = 10.0 },
              { kind = "gamma", rate = 10.0, cv = 2.0 },
              { kind = "steps", steps = [[0, 5.0], [10, 20.0]] },
              { kind = "diurnal", mean_rate = 10.0, amplitude = 0.5, period_s = 60.0 },
              { kind = "replay", trace = "builtin:azure-llm-conv", speedup = 2.0, start_s = 60.0 },
              { kind = "per-minute-counts", trace = "builtin:azure-functions-2019", functions = "all", scale = 0.01 },
              { kind = "per-minute-counts", trace = "builtin:azure-functions-2019", functions = { every = 8, offset = 1 } },
              { kind = "per-minute-counts", trace = "builtin:azure-functions-2019", functions = [0, 3] },
            ]"#,
        )
        .unwrap();
        let mut library = TraceLibrary::new(".");
        for (i, spec) in doc.a.iter().enumerate() {
            let mut process = library.build(spec, i as u64, Some(120.0), "test").unwrap();
            let times: Vec<f64> = std::iter::from_fn(|| process.next_arrival()).collect();
            assert!(!times.is_empty(), "{spec:?} gave no arrivals");
            assert!(times.iter().all(|t| *t >= 0.0 && *t < 120.0), "{spec:?}");
        }
        assert_eq!(library.counts.len(), 1, "the functions trace is parsed once");
        for (i, spec) in doc.a.iter().enumerate() {
            let mut count = |spec: &ArrivalSpec| {
                let mut process = library.build(spec, i as u64, Some(120.0), "test").unwrap();
                std::iter::from_fn(|| process.next_arrival()).count() as f64
            };
            let ratio = count(&spec.scaled(2.0)) / count(spec);
            assert!((1.7..2.3).contains(&ratio), "{spec:?} scaled by 2 gave {ratio:.2}x the arrivals");
        }
    }

    #[test]
    fn unknown_kinds_and_fields_are_refused() {
        assert!(
            toml::from_str::<ArrivalSpec>("kind = \"poison\"\nrate = 1.0").unwrap_err().to_string().contains("poison")
        );
        assert!(toml::from_str::<ArrivalSpec>("kind = \"poisson\"\nrat = 1.0").is_err());
        let mut library = TraceLibrary::new(".");
        let err = library.build(&ArrivalSpec::Poisson { rate: -1.0 }, 0, None, "models[0].arrivals").err().unwrap();
        assert_eq!(err.to_string(), "models[0].arrivals: rate must be > 0, got -1");
        let missing = ArrivalSpec::Replay { trace: "no/such.csv".into(), speedup: 1.0, scale: 1.0, start_s: 0.0 };
        assert!(library.build(&missing, 0, None, "x").err().unwrap().to_string().contains("no/such.csv"));
    }
}
