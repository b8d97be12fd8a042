//! `gpuslice bench`: simulator speed on a synthetic high-load scenario (events per second) and on
//! the whole Azure Functions 2019 day mapped onto 8 models.

use crate::scenario::LoadedScenario;
use crate::simulate;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

const EVENTS_SCENARIO: &str = include_str!("../../scenarios/bench-events.toml");
const AZURE_DAY_SCENARIO: &str = include_str!("../../scenarios/azure-functions-day.toml");

#[derive(Serialize)]
struct BenchRow {
    scenario: String,
    simulated_s: f64,
    arrivals: u64,
    events: u64,
    load_s: f64,
    simulate_s: f64,
    events_per_s: f64,
    arrivals_per_s: f64,
}

fn bench_one(text: &str, origin: &str) -> Result<BenchRow> {
    let started = Instant::now();
    let loaded = LoadedScenario::from_text(text, origin, PathBuf::from("."))?;
    // Parsing traces and fitting the profile, timed apart: the run below builds again, outside its timer.
    loaded.build()?;
    let load_s = started.elapsed().as_secs_f64();
    let run = simulate::run(&loaded, &simulate::PolicyChoice::Scenario(loaded.scenario.sharing), true)?;
    let simulate_s = run.wall.as_secs_f64();
    Ok(BenchRow {
        scenario: loaded.scenario.name.clone(),
        simulated_s: run.report.elapsed_s,
        arrivals: run.report.total.arrivals,
        events: run.report.events,
        load_s,
        simulate_s,
        events_per_s: run.report.events as f64 / simulate_s,
        arrivals_per_s: run.report.total.arrivals as f64 / simulate_s,
    })
}

/// Runs the simulator benchmark (`gpuslice bench`): events and arrivals per second on the shipped benchmark scenarios (`quick`: fewer), printed as a table and, with `out`, written as CSV.
pub fn run(quick: bool, out: Option<&Path>) -> Result<()> {
    let mut rows = vec![bench_one(EVENTS_SCENARIO, "builtin:bench-events")?];
    if !quick {
        rows.push(bench_one(AZURE_DAY_SCENARIO, "builtin:azure-functions-day")?);
    }
    let mut table = crate::output::table(vec![
        "scenario",
        "simulated s",
        "arrivals",
        "events",
        "load s",
        "simulate s",
        "events/s",
        "arrivals/s",
    ]);
    for r in &rows {
        table.add_row(vec![
            r.scenario.clone(),
            format!("{:.0}", r.simulated_s),
            r.arrivals.to_string(),
            r.events.to_string(),
            format!("{:.2}", r.load_s),
            format!("{:.2}", r.simulate_s),
            format!("{:.2} M", r.events_per_s / 1e6),
            format!("{:.2} M", r.arrivals_per_s / 1e6),
        ]);
    }
    println!("{table}");
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        crate::output::write_csv(&dir.join("bench.csv"), &rows)?;
    }
    Ok(())
}
