//! The `gpuslice` command line.

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use gpuslice::{bench, output, scenario, simulate};
use gpuslice_simulator::Sharing;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "gpuslice",
    version,
    about = "SLO-driven GPU sharing for inference models: simulate, benchmark, calibrate"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Log filter (tracing env-filter syntax, e.g. `info`, `gpuslice=debug`); RUST_LOG works too.
    #[arg(long, default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum SharingArg {
    Temporal,
    DefaultMps,
    Spatial,
}

impl From<SharingArg> for Sharing {
    fn from(s: SharingArg) -> Sharing {
        match s {
            SharingArg::Temporal => Sharing::Temporal,
            SharingArg::DefaultMps => Sharing::DefaultMps,
            SharingArg::Spatial => Sharing::Spatial,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario on the simulated GPU and print a per-model table.
    Simulate {
        /// Scenario file (TOML). Without it, the embedded default scenario runs
        /// (three models from the H100 CUDA-graph profile on real Azure traces).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override the scenario's sharing mode: temporal (time slicing), default-mps (all at
        /// 100%), spatial (each model at its GPU%).
        #[arg(long, value_enum)]
        sharing: Option<SharingArg>,
        /// Override the scenario's random seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Write summary.csv, intervals.csv, latency.svg and gpu.svg into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Fit the latency model to a calibration profile and print each model's fit error.
    Fit {
        /// Profile CSV, or `builtin:h100-cudagraph` / `builtin:h100-eager`.
        #[arg(long, default_value = "builtin:h100-cudagraph")]
        profile: String,
    },
    /// Benchmark the simulator: events per second, and the whole Azure Functions 2019 day
    /// (11.6 M invocations of 1,000 functions mapped onto 8 models).
    Bench {
        /// Only the events-per-second run (skips the Azure Functions day).
        #[arg(long)]
        quick: bool,
        /// Write bench.csv into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Simulate { config, sharing, seed, out, quiet } => {
            let mut loaded = scenario::LoadedScenario::load(config.as_deref())?;
            if let Some(seed) = seed {
                loaded.scenario.seed = seed;
            }
            let run = simulate::run(&loaded, sharing.map(Sharing::from), !quiet)?;
            println!(
                "{} — {} sharing, {:.1} s simulated in {:.2} s",
                loaded.scenario.name,
                run.report.sharing,
                run.report.elapsed_s,
                run.wall.as_secs_f64()
            );
            println!("{}", output::summary_table(&run.report));
            if let Some(dir) = out {
                let files = output::write_run(&dir, &run.report, &run.intervals)?;
                tracing::info!(files = ?files, "results written");
            }
            Ok(())
        }
        Command::Fit { profile } => {
            let source = gpuslice_traces::Source::load(&profile, std::path::Path::new("."))?;
            let set = gpuslice_traces::ProfileSet::parse(&source)?;
            println!("{}", output::fit_table(&set, &gpuslice_traces::LatencyModel::fit_all(&set)?));
            Ok(())
        }
        Command::Bench { quick, out } => bench::run(quick, out.as_deref()),
    }
}
