//! `gpuslice netml-send`: the NetML load generator's options from the command line, and its
//! report as a table.

use anyhow::Result;
use gpuslice_netml::client::{Check, Schedule, SendOptions, SendReport, Target};

/// Default input: a 3x224x224 FP32 image.
pub const IMAGE_BYTES: usize = 3 * 224 * 224 * 4;

/// `NAME` or `NAME:BYTES` (the input's size; default a 3x224x224 FP32 image).
pub fn parse_target(spec: &str) -> Result<Target, String> {
    let (model, bytes) = match spec.split_once(':') {
        Some((model, bytes)) => (
            model,
            bytes.parse().map_err(|_| format!("--model {spec:?}: the input bytes after ':' must be a whole number"))?,
        ),
        None => (spec, IMAGE_BYTES),
    };
    Ok(Target { model: model.to_string(), input_bytes: bytes, slo_ms: None })
}

/// Runs the sender and prints its table; fails when a reply failed its check.
pub fn run(options: &SendOptions) -> Result<()> {
    let what = match &options.schedule {
        Schedule::Rate { rate, seconds } => format!("~{:.0} requests over {seconds} s", rate * seconds),
        Schedule::Arrivals(times) => {
            format!("{} requests at the scenario's arrivals", times.iter().map(Vec::len).sum::<usize>())
        }
    };
    eprintln!(
        "sending {what} to {} from {} threads{}",
        options.target,
        options.threads,
        if options.check == Check::Sum { " (each reply checked against the sum of its inputs)" } else { "" }
    );
    let report = gpuslice_netml::client::run(options)?;
    println!("{}", table(&report));
    for error in &report.first_errors {
        println!("  {error}");
    }
    let wrong: u64 = report.models.iter().map(|m| m.wrong).sum();
    anyhow::ensure!(wrong == 0, "{wrong} replies failed the check");
    Ok(())
}

fn table(report: &SendReport) -> comfy_table::Table {
    let mut table = gpuslice_eval::output::table([
        "model",
        "sent",
        "answered",
        "wrong",
        "errors",
        "lost",
        "answered/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "SLO met",
        "top class",
    ]);
    for m in &report.models {
        table.add_row(vec![
            m.model.clone(),
            m.sent.to_string(),
            m.answered.to_string(),
            m.wrong.to_string(),
            m.errors.to_string(),
            m.lost.to_string(),
            format!("{:.0}", m.answered as f64 / report.elapsed_s.max(1e-9)),
            format!("{:.2}", m.p50_ms),
            format!("{:.2}", m.p99_ms),
            format!("{:.2}", m.max_ms),
            m.slo_ms.map_or("-".into(), |_| format!("{:.1}%", 100.0 * m.within_slo as f64 / m.sent.max(1) as f64)),
            m.top_class.map_or("-".into(), |c| c.to_string()),
        ]);
    }
    table
}
