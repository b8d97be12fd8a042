//! The `gpuslice` command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use gpuslice_serve::node::DEVICE_CALIBRATION;
mod lab;
mod netml_send;

use gpuslice_eval::simulate::PolicyChoice;
use gpuslice_eval::{bench, calibration, capacity, evaluate, output, scenario, simulate};
use gpuslice_simulator::Sharing;
use lab::{gpu_probe, netml_bench, netml_e2e, profile, realloc_gap};
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

/// How `netml-send` checks replies.
#[derive(Clone, Copy, ValueEnum)]
enum CheckArg {
    /// Every output value is the sum of the request's inputs (GPU-less workers).
    Sum,
    /// Nothing checked (real models); the top class is counted.
    None,
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
        /// 100%), spatial (each model at its GPU%). The scenario's allocations stay fixed.
        #[arg(long, value_enum, conflicts_with = "policy")]
        sharing: Option<SharingArg>,
        /// Steer the run with a policy instead of the scenario's fixed allocations: static,
        /// temporal, default-mps, triton-like, gslice, model-based or oracle.
        #[arg(long)]
        policy: Option<String>,
        /// Calibration (`builtin:h200-calibration`, or a file from `calibrate`) in place of
        /// the scenario's: the same scenario on another GPU.
        #[arg(long)]
        calibration: Option<String>,
        /// Override the scenario's random seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Multiply every model's load by this factor (rates and counts; replayed traces play
        /// this much faster).
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        load_scale: f64,
        /// Simulate shaped like the GPU backend: slices on the shipped standby pool's levels,
        /// batches run as its CUDA graphs' sizes (as `evaluate --like-gpu-backend`).
        #[arg(long)]
        like_gpu_backend: bool,
        /// Also where each model's requests spent their time (queue, GPU, arrival to result;
        /// `gpu-run`'s stage table, to set beside its stages.csv), kept from every request's
        /// record: slower, and stages.csv with --out.
        #[arg(long)]
        stages: bool,
        /// Write summary.csv, intervals.csv, latency.svg (p99), gpu.svg (GPU%) and slo.svg (SLO attainment) into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Compare policies on the same arrivals: a table of goodput, SLO attainment, p99 per model,
    /// GPU% used, reallocations and drops, with the spread over seeds.
    Evaluate {
        /// Scenario file (TOML), as for simulate; the embedded default without it.
        /// (`--scenario`/`-s` still work.)
        #[arg(long = "config", short = 'c', visible_alias = "scenario", short_alias = 's')]
        scenario: Option<PathBuf>,
        /// Calibration (`builtin:h200-calibration`, or a file from `calibrate`) in place of
        /// the scenario's: the same scenario on another GPU.
        #[arg(long)]
        calibration: Option<String>,
        /// Comma-separated policies: static, temporal, default-mps, triton-like, gslice,
        /// model-based, oracle.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "temporal,default-mps,triton-like,gslice,model-based,oracle"
        )]
        policies: Vec<String>,
        /// Number of seeds (the scenario's seed, +1, +2, ...).
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Multiply every model's load by this factor (rates and counts; replayed traces play
        /// this much faster).
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        load_scale: f64,
        /// Sweep the load instead: run the comparison at each of these load scales, print
        /// goodput, SLO attainment and goodput against the reference policy per scale, and with
        /// --out write load-sweep.csv, goodput-vs-load.svg and slo-vs-load.svg.
        #[arg(long, allow_negative_numbers = true, value_delimiter = ',', conflicts_with = "load_scale")]
        load_scales: Vec<f64>,
        /// Capacity at the SLO instead: per policy and seed, the highest load scale at which
        /// every model keeps at least --threshold of its requests within its SLO (bracketed
        /// from x1, then bisected to --precision); prints it with the ratio to the best
        /// baseline and each model's figures there, and with --out writes capacity.csv,
        /// probes.csv and capacity-slo-vs-load.svg.
        #[arg(long, conflicts_with_all = ["load_scale", "load_scales"])]
        capacity: bool,
        /// --capacity: the share of each model's requests that must meet its SLO.
        #[arg(long, default_value_t = 0.99, requires = "capacity")]
        threshold: f64,
        /// --capacity: stop when the bracket is narrower than this fraction of the load scale.
        #[arg(long, default_value_t = 0.025, requires = "capacity")]
        precision: f64,
        /// --capacity: run temporal and default-mps with the scenario's batching only, instead
        /// of at their best setting of a grid of max batch (1-64) and batch wait (0.5-8 ms),
        /// waits of 2 ms or more also with batches sent at 8 queued.
        #[arg(long, requires = "capacity")]
        untuned: bool,
        /// Simulate shaped like the GPU backend: slices on the shipped standby pool's levels
        /// (10, 20, 30, 45, 60, 80, 100%), batches up to 32 (its largest CUDA graph): the
        /// prediction to set beside `gpu-run` and `scripts/gpu-capacity.sh`.
        #[arg(long)]
        like_gpu_backend: bool,
        /// --capacity on a node of N times the scenario's GPUs: N copies of every model (the
        /// scenario's traffic N times over, each copy with its own arrivals), placed on the GPUs
        /// by --placement, each GPU under its own instance of the policy.
        #[arg(long, default_value_t = 1, requires = "capacity")]
        gpus: usize,
        /// --capacity on several GPUs: how models are placed: ffd (first-fit decreasing by knee
        /// GPU%), interference (iGniter-style greedy), balanced (ours), replicas (every model on
        /// every GPU, its requests dealt in turn over its replicas), replicas-jsq (each request to
        /// the replica with the fewest in flight, as the live router sends them).
        #[arg(long, default_value = "balanced", requires = "capacity")]
        placement: gpuslice_eval::cluster::Placement,
        /// --capacity on several GPUs: every this many seconds, move a model off a GPU predicted
        /// too busy to the least busy one, as the live router does [default: no moves; the
        /// router's is 5].
        #[arg(long, requires = "capacity")]
        move_every_s: Option<f64>,
        /// With --move-every-s: seconds from a move's decision until the model serves on its new
        /// GPU (its worker's start there; measured on the H200: 10.6-27.2 s).
        #[arg(long, default_value_t = gpuslice_eval::cluster::MOVE_READY_S, requires = "move_every_s")]
        move_ready_s: f64,
        /// --capacity, then every model's SLO attainment and p50 at x0.25, x0.5, ... up to
        /// model-based's capacity, model-based against the best baseline at each load (each
        /// baseline at its reported batching); with --out, attainment-by-load.csv.
        #[arg(long, requires = "capacity")]
        by_load: bool,
        /// Policy the "vs ref" column divides by, one of --policies [default: model-based, where
        /// it runs].
        #[arg(long)]
        reference: Option<String>,
        /// Write evaluate.csv, decisions.csv, slo.svg and gpu.svg into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Run the controller live behind the gRPC control plane (gpuslice.v1, with health and
    /// reflection) until SIGINT or SIGTERM; then stop accepting and answer every accepted request.
    Serve {
        /// Node configuration (TOML): listen addresses, [controller] settings, [[models]] to register.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// What the flags override in the node configuration.
        #[command(flatten)]
        overrides: gpuslice_serve::node::ServeOverrides,
        /// On SIGINT/SIGTERM, the longest shutdown may take: accepted requests are answered (or
        /// dropped at the controller's drop deadline) well inside it; what it cuts short is a
        /// client holding a connection open. A second signal exits at once.
        #[arg(long, default_value_t = 30.0)]
        shutdown_deadline_s: f64,
    },
    /// Load-test the gRPC plane on loopback: open-loop Infer calls plus control calls for a
    /// bounded time, then a table of calls sent, answered, failed and latency percentiles.
    LoadTest {
        /// A running server to test (loopback only); without it, one is started in-process.
        #[arg(long)]
        target: Option<std::net::SocketAddr>,
        /// How long to send, in seconds.
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        /// Infer calls per second, spread over three models.
        #[arg(long, default_value_t = 5000)]
        infer_rps: u32,
        /// Control calls per second (GetAllocation, ListModels, GetMetrics, OverrideAllocation).
        #[arg(long, default_value_t = 1000)]
        control_rps: u32,
        /// Send every Infer a full input row (a 3x224x224 FP32 image, 588 KiB) instead of an
        /// empty payload (the server then serves zeros).
        #[arg(long)]
        with_inputs: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Write the Infer calls answered and failed per second here (timeline.csv, timeline.svg).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// On the GPU machine: CPU time and latency of moving batches of packetized images to the GPU
    /// by per-packet copies, CPU-Copy and the GPU gather kernel (each checked byte for byte first).
    NetmlBench {
        /// Batch sizes, in images of 224x224x3 fp32.
        #[arg(long, value_delimiter = ',', default_value = "1,4,8,16,32")]
        batches: Vec<usize>,
        /// Transfers per mode and batch size.
        #[arg(long, default_value_t = 50)]
        repeats: usize,
        /// Write netml.csv into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// On the GPU machine: models served together by the GPU backend's workers (MPS daemon, one
    /// worker per model at its GPU%, batches through shared memory), closed loop; per model the GPU
    /// time and round trip of its batches and its throughput.
    GpuProbe {
        /// Models, their GPU% and optionally batch size, as NAME:PCT[:BATCH],... (torchvision names).
        #[arg(long, default_value = "densenet121:25,resnext50_32x4d:35,vgg16:40")]
        models: String,
        /// Batch size of the models that name none.
        #[arg(long, default_value_t = 8)]
        batch: u32,
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Batches each worker holds at once: 2 hands the next batch over while one runs (as the
        /// GPU backend serves), 1 waits for each batch before handing over the next.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
        in_flight: u8,
        /// Run without MPS: the driver time-slices the workers (temporal sharing); GPU% ignored.
        #[arg(long, conflicts_with = "green")]
        no_mps: bool,
        /// Partition by green contexts instead of MPS percentages: every worker under MPS at
        /// 100%, on a green context of its GPU% of `--total-sms` (rounded to a multiple of 8).
        #[arg(long)]
        green: bool,
        /// The device's SM count, for `--green` (132 on an H100 SXM).
        #[arg(long, default_value_t = 132)]
        total_sms: u32,
        /// Label of this run in the table and the CSV name.
        #[arg(long, default_value = "run")]
        label: String,
        /// Write gpu-probe-LABEL.csv into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// On the GPU machine: images as UDP packets over loopback into the packet pool, to the GPU
    /// by each transfer mode, inferred by a worker reading the batch buffer through CUDA IPC;
    /// throughput and latency per mode, and the latency of one large image arriving at line rate.
    NetmlE2e {
        /// torchvision model the worker runs.
        #[arg(long, default_value = "resnet50")]
        model: String,
        /// Images per batch.
        #[arg(long, default_value_t = 8)]
        batch: u32,
        /// Seconds of traffic per mode (after 0.3 s of warm-up).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Images the sender keeps in flight.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Run the worker under MPS at this GPU% (default: no MPS).
        #[arg(long)]
        gpu_pct: Option<f64>,
        /// Bytes of the image of the line-rate run.
        #[arg(long, default_value_t = 500 * 1024)]
        line_rate_bytes: usize,
        /// Images of the line-rate run, per mode.
        #[arg(long, default_value_t = 50)]
        line_rate_repeats: usize,
        /// Write netml-e2e.csv and netml-line-rate.csv into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// On the GPU machine: what a reallocation costs the service, both ways the backend can make
    /// one without stopping (a standby pool of MPS workers; green contexts inside one worker):
    /// gap, first-batch cost, decision to served, GPU memory; and a cold restart's time to serve.
    ReallocGap {
        /// torchvision model.
        #[arg(long, default_value = "resnet50")]
        model: String,
        /// GPU% values the standby pool moves between (one MPS worker each).
        #[arg(long, value_delimiter = ',', default_value = "30,60")]
        pcts: Vec<f64>,
        /// SM counts (multiples of 8) the green-context worker moves between; empty skips it.
        #[arg(long, value_delimiter = ',', default_value = "40,80")]
        green_sms: Vec<u32>,
        #[arg(long, default_value_t = 8)]
        batch: u32,
        /// Reallocations to measure, each way.
        #[arg(long, default_value_t = 100)]
        switches: usize,
        /// Batches served between two reallocations.
        #[arg(long, default_value_t = 5)]
        batches_between: usize,
        /// Write realloc-gap.csv into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// On the GPU machine: run a scenario live on the GPU — its arrivals in wall-clock time, one
    /// worker per model under MPS, the policy reallocating with standby workers — and print the
    /// same table as `simulate` (and write the same CSV and plots).
    GpuRun {
        /// Scenario file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Policy: static, gslice, model-based (spatial sharing), temporal (workers without MPS,
        /// time-sliced) or default-mps (every worker at 100%).
        #[arg(long, default_value = "model-based")]
        policy: String,
        /// Write summary.csv, intervals.csv, decisions.csv, latency.svg (p99), gpu.svg (GPU%) and slo.svg (SLO attainment) into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Multiply every model's load by this factor (rates and counts; replayed traces play
        /// this much faster).
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        load_scale: f64,
        /// Workers without a GPU that take this many ms per batch (for trying the run anywhere).
        #[arg(long)]
        fake_ms: Option<f64>,
        /// What the policy predicts latency with: `device` (the embedded calibration of the GPU
        /// NVML reports, e.g. `builtin:h200-calibration` on an H200; the scenario's where none
        /// is embedded), `scenario` (the scenario's own), or a calibration (`builtin:NAME` or a
        /// file from `calibrate`).
        #[arg(long, default_value = DEVICE_CALIBRATION)]
        calibration: String,
        /// Standby pool: GPU% levels each model keeps a worker at, so a reallocation switches at
        /// once. The model-based policy plans its slices on these levels; another policy's slice
        /// takes the level at or above it where the GPU has room, else the one below. A 100%
        /// level lets a policy switch to default MPS (every model on its whole-GPU worker) and
        /// back. Empty: start a worker per change.
        #[arg(long, value_delimiter = ',', default_value = "10,20,30,45,60,80,100")]
        pool_levels: Vec<f64>,
        /// Run each model's program from this model repository (the folder named like the
        /// model; see `serve --model-repository`) instead of the torchvision benchmark of its
        /// name: every scenario model must be in it. The requests still carry no input (zeros).
        #[arg(long)]
        model_repository: Option<PathBuf>,
        /// The GPU to run on, by its CUDA / NVML index (its own MPS daemon, workers and
        /// telemetry); default: the GPUs the process sees, telemetry of GPU 0.
        #[arg(long)]
        gpu_device: Option<u32>,
        /// Serve every model with this max batch instead of the scenario's (with
        /// --batch-wait-ms: a baseline at the batching a user tuned it to, as `evaluate
        /// --capacity` reports it).
        #[arg(long, requires = "batch_wait_ms")]
        max_batch: Option<u32>,
        /// Serve every model with this batch wait (ms) instead of the scenario's (with --max-batch).
        #[arg(long, requires = "max_batch")]
        batch_wait_ms: Option<f64>,
        /// With --max-batch: send a batch as soon as this many requests are queued (Triton's
        /// smallest preferred batch size) instead of waiting for a full one [default: --max-batch].
        #[arg(long, requires = "max_batch")]
        min_batch: Option<u32>,
    },
    /// Send a scenario's arrivals, open loop, to any server of the standard inference protocol
    /// (Triton, or `gpuslice serve`) and print per model the requests answered and within SLO,
    /// and latency percentiles: `gpu-run`'s measure for a server gpuslice does not run in process.
    /// Each request carries zeros of the model's declared input shape; the scenario's model
    /// names are the server's.
    KserveRun {
        /// The server, host:port.
        #[arg(long)]
        target: String,
        /// Scenario file (TOML): its models' names, SLOs and arrivals.
        #[arg(long, short)]
        config: PathBuf,
        /// Multiply every model's load by this factor.
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        load_scale: f64,
        /// Write summary.csv (one row per model) into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Send images as NetML packets to a node's `--netml-listen` address (this machine only),
    /// open loop at a rate from several threads; check every reply and print per model the
    /// requests answered, failed, lost and their latency (first packet sent to reply received).
    NetmlSend {
        /// The node's NetML address (loopback), host:port.
        #[arg(long)]
        target: std::net::SocketAddr,
        /// Models to send to, in turn: NAME or NAME:BYTES (its FP32 input's size; default a
        /// 3x224x224 image, 602112 bytes).
        #[arg(long, value_delimiter = ',', required_unless_present = "config", conflicts_with = "config", value_parser = netml_send::parse_target)]
        model: Vec<gpuslice_netml::client::Target>,
        /// Requests per second, over all models and threads (Poisson arrivals).
        #[arg(long, default_value_t = 100.0, conflicts_with = "config")]
        rate: f64,
        /// How long to send, seconds (at most 3600).
        #[arg(long, default_value_t = 10.0, conflicts_with = "config")]
        seconds: f64,
        /// Send a scenario's arrivals instead (TOML): its models, by name, at their arrival
        /// times; every model's input is `--input-bytes`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// With `--config`: multiply every model's load by this factor.
        #[arg(long, default_value_t = 1.0, requires = "config", allow_negative_numbers = true)]
        load_scale: f64,
        /// With `--config`: each request's input, bytes (FP32 elements).
        #[arg(long, default_value_t = netml_send::IMAGE_BYTES, requires = "config")]
        input_bytes: usize,
        /// Sender threads, each with its own socket (1-64).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// 0: each reply carries the whole output; K: the K best classes (class, score).
        #[arg(long, default_value_t = 0)]
        top_k: u16,
        /// `sum`: every output value (or top-k score) must equal the sum of the request's
        /// inputs (the GPU-less worker's function, `serve --fake-ms`); `none`: real models.
        #[arg(long, value_enum, default_value_t = CheckArg::Sum)]
        check: CheckArg,
        /// Fault injection: the share of packets not sent (their images are then lost).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Fault injection: the share of packets sent twice.
        #[arg(long, default_value_t = 0.0)]
        duplicate: f64,
        /// Fault injection: send each image's packets in a shuffled order.
        #[arg(long)]
        reorder: bool,
        /// Seed of the arrivals, inputs and faults.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// On the GPU machine: measure batch latency over a grid of GPU% (MPS) and batch sizes for
    /// the given models through the GPU backend's worker, into a calibration CSV.
    Profile {
        /// Models: torchvision names, or models of `--model-repository`.
        #[arg(long, value_delimiter = ',', default_value = "resnet50")]
        models: Vec<String>,
        /// A model repository (as `serve` takes): models of `--models` it holds run their own
        /// file, tensors and precision.
        #[arg(long)]
        model_repository: Option<PathBuf>,
        /// MPS GPU% levels.
        #[arg(long, value_delimiter = ',', default_value = "100,80,60,50,40,30,20,10")]
        gpu_pcts: Vec<f64>,
        /// Batch sizes (one CUDA graph each).
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
        batches: Vec<u32>,
        /// Timed replays per point (after 5 warm-up replays).
        #[arg(long, default_value_t = 100)]
        repeats: usize,
        /// Seconds of back-to-back batches on each model's first worker before its first point,
        /// so the first points do not see a GPU coming out of idle.
        #[arg(long, default_value_t = 3.0)]
        warmup_s: f64,
        /// Output CSV of the grid.
        #[arg(long, default_value = "profiles/h100/profile.csv")]
        out: PathBuf,
        /// Co-location groups to measure after the grid, each `MODEL:GPU%[:BATCH]` joined by `+`
        /// (e.g. `densenet121:25+resnext50_32x4d:35+vgg16:40`), groups separated by `,`. All at
        /// 100% is default MPS. `--models ''` skips the grid.
        #[arg(long, value_delimiter = ',')]
        colocate: Vec<String>,
        /// Batch size of co-located placements that name none.
        #[arg(long, default_value_t = 8)]
        colocate_batch: u32,
        /// Seconds each co-location group runs together (each worker also runs half as long alone).
        #[arg(long, default_value_t = 4.0)]
        colocate_seconds: f64,
        /// Output CSV of the co-location groups.
        #[arg(long, default_value = "profiles/h100/colocation.csv")]
        colocation_out: PathBuf,
        /// GPU-less workers taking this many ms per batch (to try the command anywhere).
        #[arg(long)]
        fake_ms: Option<f64>,
    },
    /// Fit the simulator to measurements from `profile`: the latency model of every model (fit
    /// error printed), then the co-location parameters (each model's `interference` on the
    /// controlled groups; the default-MPS share exponent and `mps_launch_contention` on the
    /// default-MPS groups); save a calibration file scenarios load. With the defaults and
    /// `--out profiles/h100/calibration.toml` it reproduces the shipped one.
    Calibrate {
        /// Profile CSV (the grid), or `builtin:NAME` (`builtin:h100-grid` is `profiles/h100/grid.csv`).
        #[arg(long, default_value = "builtin:h100-grid")]
        profile: String,
        /// Co-location CSV from `gpuslice profile --colocate`, or `builtin:h100-colocation`
        /// (`profiles/h100/colocation.csv`).
        #[arg(long, default_value = "builtin:h100-colocation")]
        colocation: String,
        /// Fit only on groups of at most this many models (larger ones are left for `validate`).
        #[arg(long, default_value_t = 2)]
        fit_group_size: usize,
        /// Calibration file to write (TOML); required, so the shipped one is only replaced when
        /// asked for by name.
        #[arg(long)]
        out: PathBuf,
        /// Fit the default-MPS share exponent and launch contention jointly (Nelder-Mead)
        /// instead of one after the other (golden-section searches).
        #[arg(long)]
        joint: bool,
        /// Temporal sharing's wait (ms) when the GPU turns to another model's batch, as measured
        /// live (the driver's time slice between the workers' processes; 0.25 on the H200:
        /// bench/results/2026-12-02-sim-vs-live-h200-all-policies); written as given.
        #[arg(long, default_value_t = 0.0)]
        temporal_switch_ms: f64,
        /// Each request's time outside the GPU's kernels (ms), as measured live: its batch's
        /// host-to-device and host copies and the hand-off to the worker (0.4 on the H200 under
        /// MPS: bench/results/2026-12-03-h200-session21-peer-table); written as given.
        #[arg(long, default_value_t = 0.0)]
        hand_off_ms: f64,
    },
    /// Check the simulator against measurements it was not fitted on: (a) GPU% levels left out
    /// of the latency fit, (b) co-located groups, each run in the simulator closed loop as on the
    /// GPU; prints predicted against measured p50 and p99 with the relative error.
    Validate {
        /// Profile CSV (the grid), or `builtin:NAME`.
        #[arg(long, default_value = "builtin:h100-grid")]
        profile: String,
        /// GPU% levels left out of the fit and predicted.
        #[arg(long, value_delimiter = ',', default_value = "80,50,30")]
        hold_out: Vec<f64>,
        /// Co-location CSV from `gpuslice profile --colocate`, or `builtin:h100-colocation`.
        #[arg(long, default_value = "builtin:h100-colocation")]
        colocation: String,
        /// Calibration whose co-location parameters predict the groups (its profile is used too).
        #[arg(long, default_value = "builtin:h100-calibration")]
        calibration: String,
        /// Write held-out.csv and colocated.csv into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
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

/// SIGINT and SIGTERM, listened for from creation on: a signal that comes before the first
/// `next` is kept for it, not left to its default action (which ends the process at once).
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Starts listening (inside a Tokio runtime).
    fn listen() -> Result<ShutdownSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(ShutdownSignals {
                interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignals {})
    }

    /// The next SIGINT or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // Colour only on a terminal: redirected logs stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Commands that only print (tables from files and simulations) end quietly when their output
/// is closed early (`gpuslice simulate | head`), as Unix tools do, instead of panicking on the
/// broken pipe. The others keep SIGPIPE ignored: they write to worker pipes and sockets, whose
/// failures they handle.
fn end_quietly_on_closed_output(command: &Command) {
    if matches!(
        command,
        Command::Simulate { .. }
            | Command::Evaluate { .. }
            | Command::Calibrate { .. }
            | Command::Validate { .. }
            | Command::Fit { .. }
            | Command::Bench { .. }
    ) {
        use nix::sys::signal::{SigHandler, Signal, signal};
        // SAFETY: restores the default disposition before any thread starts; no handler runs.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    end_quietly_on_closed_output(&cli.command);
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, a cause that repeats the one before it said once
/// (tonic's transport errors wrap their cause under the same words: "tcp connect error: tcp
/// connect error").
fn error_chain(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain().map(ToString::to_string) {
        if parts.last() != Some(&cause) {
            parts.push(cause);
        }
    }
    parts.join(": ")
}

/// The calibration a live run plans with, from `--calibration` (see `GpuRun`): `None` keeps the
/// scenario's. `serving_gpu`: the GPU the run serves on (None: GPU-less workers, which have no
/// device to match).
fn live_calibration(flag: &str, serving_gpu: Option<u32>) -> Result<Option<String>> {
    match flag {
        "scenario" => Ok(None),
        DEVICE_CALIBRATION => {
            let Some(gpu) = serving_gpu else { return Ok(None) };
            let found = gpuslice_gpu::telemetry::calibration_of_this_gpu(gpu, "the scenario's")
                .context("--calibration device: cannot read the GPU's name (name a calibration instead)")?;
            Ok(found.map(str::to_string))
        }
        spec => Ok(Some(spec.to_string())),
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Simulate {
            config,
            sharing,
            policy,
            calibration,
            seed,
            load_scale,
            like_gpu_backend,
            stages,
            out,
            quiet,
        } => {
            output::check_out_dir(out.as_deref())?;
            let mut loaded = scenario::LoadedScenario::load_calibrated(config.as_deref(), calibration.as_deref())?;
            loaded.scale_load(load_scale)?;
            if let Some(seed) = seed {
                loaded.scenario.seed = seed;
            }
            let choice = match policy {
                Some(name) => PolicyChoice::Named(name),
                None => PolicyChoice::Scenario(sharing.map_or(loaded.scenario.sharing, Sharing::from)),
            };
            let (mut config, setups, contexts) = simulate::one_gpu(&loaded)?;
            config.record_requests = stages;
            let on = simulate::simulator(like_gpu_backend);
            let run = simulate::run_built(&loaded, (config, setups, contexts), &choice, on.as_ref(), !quiet)?;
            let steered = match &choice {
                PolicyChoice::Scenario(_) => "the scenario's fixed allocations".to_string(),
                PolicyChoice::Named(_) => format!("policy {}", run.policy),
            };
            println!(
                "{} — {steered}, {} sharing, {:.1} s simulated in {:.2} s, {} reallocations",
                loaded.scenario.name,
                run.report.sharing,
                run.report.elapsed_s,
                run.wall.as_secs_f64(),
                run.decisions.len()
            );
            println!("{}", output::summary_table(&run.report, !run.decisions.is_empty()));
            if stages {
                println!("{}", output::stage_table(&run.stages));
            }
            if let Some(dir) = out {
                let mut files = output::write_run(&dir, &run.report, &run.intervals)?;
                if stages {
                    files.push(dir.join("stages.csv"));
                    output::write_csv(&dir.join("stages.csv"), &run.stages)?;
                }
                tracing::info!(files = ?files, "results written");
            }
            Ok(())
        }
        Command::Evaluate {
            scenario,
            calibration,
            policies,
            seeds,
            load_scale,
            load_scales,
            capacity: capacity_search,
            threshold,
            precision,
            untuned,
            like_gpu_backend,
            gpus,
            placement,
            move_every_s,
            move_ready_s,
            by_load,
            reference,
            out,
            quiet,
        } => {
            output::check_out_dir(out.as_deref())?;
            let mut loaded = scenario::LoadedScenario::load_calibrated(scenario.as_deref(), calibration.as_deref())?;
            anyhow::ensure!((1..=1000).contains(&seeds), "--seeds must be in 1..=1000, got {seeds}");
            let reference_policy = match &reference {
                Some(r) if !policies.contains(r) => {
                    anyhow::bail!("--reference {r:?} is not one of --policies ({})", policies.join(","))
                }
                Some(r) => Some(r.as_str()),
                None => policies.iter().any(|p| p == "model-based").then_some("model-based"),
            };
            let shaped = simulate::simulator(like_gpu_backend);
            let against = |lead: &str| reference_policy.map_or(String::new(), |r| format!("{lead}goodput / {r}'s"));
            if capacity_search {
                let moves =
                    move_every_s.map(|every_s| gpuslice_eval::cluster::Moves { every_s, ready_s: move_ready_s });
                let options = capacity::SearchOptions {
                    threshold,
                    precision,
                    like_gpu_backend,
                    placement,
                    moves,
                    ..Default::default()
                };
                if gpus > 1 {
                    loaded = loaded.replicated(gpus)?;
                }
                if moves.is_some() && loaded.scenario.gpus < 2 {
                    anyhow::bail!("--move-every-s moves models between GPUs: it needs a node of several (--gpus N)");
                }
                if loaded.scenario.gpus > 1 {
                    let at_x1 = gpuslice_eval::cluster::describe(&loaded, placement)?;
                    println!(
                        "{}: {placement} placement at load x1 (it is placed again at each load): {at_x1}",
                        loaded.scenario.name
                    );
                }
                options.check()?;
                if let Some(dir) = &out {
                    std::fs::create_dir_all(dir)?;
                }
                let (results, tuning) = capacity::run(&loaded, &policies, seeds, &options, !untuned, !quiet)?;
                println!(
                    "{} — capacity at the SLO: the highest load scale at which every model keeps {:.3}% of its requests within its SLO, {seeds} seed(s)",
                    loaded.scenario.name,
                    threshold * 100.0
                );
                println!("{}", capacity::table(&results, &policies, threshold));
                if let Some(dir) = &out {
                    capacity::write(dir, &results, &tuning, &policies, threshold)?;
                }
                if by_load {
                    let rows = capacity::by_load(&loaded, &results, seeds, &options, !quiet)?;
                    println!(
                        "{} — SLO met per model and load, model-based against the best baseline (within {} points, p50 within {}x up to x{})",
                        loaded.scenario.name,
                        capacity::BY_LOAD_ATTAINMENT_SLACK,
                        capacity::BY_LOAD_P50_RATIO,
                        capacity::BY_LOAD_P50_UP_TO
                    );
                    println!("{}", capacity::by_load_table(&rows));
                    if let Some(dir) = &out {
                        output::write_csv(&dir.join("attainment-by-load.csv"), rows.iter())?;
                    }
                }
                if let Some(dir) = out {
                    tracing::info!(dir = %dir.display(), "results written");
                }
                return Ok(());
            }
            if !load_scales.is_empty() {
                let points = evaluate::sweep(&loaded, &policies, seeds, &load_scales, shaped.as_ref(), !quiet)?;
                println!(
                    "{} — load sweep, {seeds} seed(s), means; each cell: goodput/s, SLO met{} at the same load",
                    loaded.scenario.name,
                    against(", ")
                );
                println!("{}", evaluate::sweep_table(&points, &policies, reference_policy));
                if let Some(dir) = out {
                    evaluate::write_sweep(&dir, &points, &policies, reference_policy)?;
                    tracing::info!(dir = %dir.display(), "results written");
                }
                return Ok(());
            }
            loaded.scale_load(load_scale)?;
            let results = evaluate::run(&loaded, &policies, seeds, shaped.as_ref(), !quiet)?;
            let over = if seeds > 1 { format!("{seeds} seeds, means ± standard deviation") } else { "1 seed".into() };
            println!("{} — {over}{}", loaded.scenario.name, against("; vs ref = "));
            println!("{}", evaluate::table(&results, &policies, reference_policy));
            if let Some(dir) = out {
                evaluate::write(&dir, &results, &policies)?;
                tracing::info!(dir = %dir.display(), "results written");
            }
            Ok(())
        }
        Command::Serve { config, overrides, shutdown_deadline_s } => {
            anyhow::ensure!(
                shutdown_deadline_s.is_finite() && (0.0..=3600.0).contains(&shutdown_deadline_s),
                "--shutdown-deadline-s must be in [0, 3600], got {shutdown_deadline_s}"
            );
            let options = gpuslice_serve::node::NodeConfig::load(config.as_deref())?.into_options(overrides)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async move {
                // Before the address is printed: whoever reads it may signal at once.
                let mut signals = ShutdownSignals::listen()?;
                let running = gpuslice_serve::grpc::start(options).await?;
                println!(
                    "serving gpuslice.v1 on {}{}",
                    running.grpc,
                    running.metrics.map_or(String::new(), |m| format!(", metrics on http://{m}/metrics"))
                );
                if let Some(netml) = running.netml {
                    println!("NetML on udp://{netml}");
                }
                signals.next().await;
                tracing::info!(
                    deadline_s = shutdown_deadline_s,
                    "shutting down: no new calls; answering accepted requests (a second signal exits at once)"
                );
                // Accepted requests are answered within the drop deadline; what can outlast it
                // is a client holding an idle connection open, which must not keep the node up.
                tokio::select! {
                    stopped = running.stop() => stopped,
                    _ = signals.next() => {
                        tracing::warn!("second signal: exiting now");
                        std::process::exit(130)
                    }
                    _ = tokio::time::sleep(std::time::Duration::from_secs_f64(shutdown_deadline_s)) => {
                        tracing::warn!(deadline_s = shutdown_deadline_s, "connections still open at the shutdown deadline: exiting");
                        Ok(())
                    }
                }
            })
        }
        Command::LoadTest { target, seconds, infer_rps, control_rps, with_inputs, quiet, out } => {
            anyhow::ensure!(seconds > 0.0 && seconds <= 600.0, "--seconds must be in (0, 600]");
            gpuslice_eval::output::check_out_dir(out.as_deref())?;
            let options = gpuslice_serve::loadtest::LoadTestOptions {
                target,
                duration: std::time::Duration::from_secs_f64(seconds),
                infer_rps,
                control_rps,
                with_inputs,
                progress: !quiet,
            };
            let report = tokio::runtime::Runtime::new()?.block_on(gpuslice_serve::loadtest::run(options))?;
            println!("{}", report.table());
            if let Some(failures) = report.failure_table() {
                println!("failed calls by reason:\n{failures}");
            }
            if let Some(dir) = out {
                for path in report.write_timeline(&dir)? {
                    println!("wrote {}", path.display());
                }
            }
            let lost = report.infer.sent - report.infer.ok - report.infer.failed;
            println!(
                "Infer: {} sent, {} answered OK, {} failed, {lost} unanswered",
                report.infer.sent, report.infer.ok, report.infer.failed
            );
            Ok(())
        }
        Command::NetmlBench { batches, repeats, out } => netml_bench::run(&batches, repeats.max(1), out.as_deref()),
        Command::NetmlE2e { model, batch, seconds, window, gpu_pct, line_rate_bytes, line_rate_repeats, out } => {
            netml_e2e::run(&netml_e2e::E2eOptions {
                model: &model,
                batch: batch.max(1),
                seconds,
                window: window.max(batch as usize),
                gpu_pct,
                line_rate_bytes,
                line_rate_repeats: line_rate_repeats.max(1),
                out: out.as_deref(),
            })
        }
        Command::GpuProbe { models, batch, seconds, in_flight, no_mps, green, total_sms, label, out } => {
            use gpu_probe::ProbeSharing;
            let sharing = match (no_mps, green) {
                (true, _) => ProbeSharing::Temporal,
                (false, true) => ProbeSharing::Green { total_sms },
                (false, false) => ProbeSharing::Mps,
            };
            gpu_probe::run(&models, batch, seconds, in_flight.into(), sharing, &label, out.as_deref())
        }
        Command::ReallocGap { model, pcts, green_sms, batch, switches, batches_between, out } => {
            realloc_gap::run(realloc_gap::ReallocGapOptions {
                model: &model,
                pcts: &pcts,
                green_sms: &green_sms,
                batch,
                switches: switches.max(1),
                batches_between: batches_between.max(1),
                out: out.as_deref(),
            })
        }
        Command::GpuRun {
            config,
            policy,
            out,
            load_scale,
            fake_ms,
            calibration,
            pool_levels,
            model_repository,
            gpu_device,
            max_batch,
            batch_wait_ms,
            min_batch,
        } => {
            let calibration = live_calibration(&calibration, fake_ms.is_none().then(|| gpu_device.unwrap_or(0)))?;
            let mut loaded = scenario::LoadedScenario::load_calibrated(Some(&config), calibration.as_deref())?;
            if let (Some(max_batch), Some(batch_timeout_ms)) = (max_batch, batch_wait_ms) {
                let min_batch = min_batch.unwrap_or(max_batch);
                loaded.set_batching(capacity::Batching { max_batch, min_batch, batch_timeout_ms })?;
            }
            loaded.scale_load(load_scale)?;
            let mut sources = std::collections::HashMap::new();
            if let Some(dir) = model_repository {
                let repository = gpuslice_serve::repository::Repository::open(
                    &dir,
                    &gpuslice_eval::calibration::Calibration::first_h100(),
                )?;
                for model in &loaded.scenario.models {
                    let spec = repository.spec(&model.name).map_err(|e| {
                        anyhow::anyhow!("scenario model {:?} in repository {}: {e}", model.name, dir.display())
                    })?;
                    sources.insert(model.name.clone(), spec.source);
                }
            }
            let template = gpuslice_gpu::serving::WorkerTemplate {
                script: gpuslice_gpu::worker::default_script(),
                fake_ms,
                pool_levels,
                packet_pool: None,
                device: gpu_device,
            };
            let on = gpuslice_gpu::builder::GpuBuilder { template, sources };
            let run = simulate::run_on(&loaded, &PolicyChoice::Named(policy), &on, true)?;
            println!(
                "{} — policy {} on the GPU, {:.1} s, {} reallocations",
                loaded.scenario.name,
                run.policy,
                run.report.elapsed_s,
                run.decisions.len()
            );
            println!("{}", output::summary_table(&run.report, !run.decisions.is_empty()));
            println!("{}", output::stage_table(&run.stages));
            if !run.device.is_empty() {
                let n = run.device.len() as f64;
                let mean = |f: fn(&gpuslice_control::DeviceSample) -> f64| run.device.iter().map(f).sum::<f64>() / n;
                println!(
                    "GPU (NVML, per interval): utilization {:.0}%, memory used {:.0} MiB, SM clock {:.0} MHz (means)",
                    mean(|d| d.gpu_util_pct as f64),
                    mean(|d| d.memory_used_mib as f64),
                    mean(|d| d.sm_clock_mhz as f64)
                );
            }
            if let Some(dir) = out {
                output::write_run(&dir, &run.report, &run.intervals)?;
                output::write_csv(&dir.join("decisions.csv"), &run.decisions)?;
                output::write_csv(&dir.join("device.csv"), &run.device)?;
                output::write_csv(&dir.join("stages.csv"), &run.stages)?;
            }
            // Worker failures are replaced (gpu::serving's supervision); a run they cost requests
            // is not a measurement to keep.
            let failed: Vec<String> = run
                .report
                .models
                .iter()
                .filter(|m| m.worker_failures > 0)
                .map(|m| {
                    format!(
                        "{}: {} worker failures, {} requests dropped",
                        m.model, m.worker_failures, m.summary.dropped
                    )
                })
                .collect();
            if !failed.is_empty() {
                println!("worker failures (each worker replaced): {}", failed.join("; "));
                let lost: u64 =
                    run.report.models.iter().filter(|m| m.worker_failures > 0).map(|m| m.summary.dropped).sum();
                anyhow::ensure!(
                    lost == 0,
                    "workers failed during the run and {lost} requests were dropped: {}",
                    failed.join("; ")
                );
            }
            Ok(())
        }
        Command::NetmlSend {
            target,
            model,
            rate,
            seconds,
            config,
            load_scale,
            input_bytes,
            threads,
            top_k,
            check,
            loss,
            duplicate,
            reorder,
            seed,
        } => {
            use gpuslice_netml::client::{Check, Schedule, SendOptions, Target};
            let check = match check {
                CheckArg::Sum => Check::Sum,
                CheckArg::None => Check::None,
            };
            let (models, schedule) = match config {
                None => (model, Schedule::Rate { rate, seconds }),
                Some(config) => {
                    let mut loaded = scenario::LoadedScenario::load(Some(&config))?;
                    loaded.scale_load(load_scale)?;
                    let (_, setups, _) = loaded.build()?;
                    let models = setups
                        .iter()
                        .map(|s| Target { model: s.name.clone(), input_bytes, slo_ms: Some(s.slo_ms) })
                        .collect();
                    let times = setups
                        .into_iter()
                        .map(|mut s| std::iter::from_fn(|| s.arrivals.next_arrival()).collect())
                        .collect();
                    (models, Schedule::Arrivals(times))
                }
            };
            netml_send::run(&SendOptions {
                target,
                models,
                schedule,
                threads,
                top_k,
                check,
                loss,
                duplicate,
                reorder,
                seed,
            })
        }
        Command::KserveRun { target, config, load_scale, out } => {
            output::check_out_dir(out.as_deref())?;
            let mut loaded = scenario::LoadedScenario::load(Some(&config))?;
            loaded.scale_load(load_scale)?;
            let (_, setups, _) = loaded.build()?;
            let models = setups
                .into_iter()
                .map(|s| gpuslice_serve::scenario_load::LoadedModel {
                    name: s.name,
                    slo_ms: s.slo_ms,
                    arrivals: s.arrivals,
                })
                .collect();
            let outcomes =
                tokio::runtime::Runtime::new()?.block_on(gpuslice_serve::scenario_load::run(&target, models))?;
            // The scenario's name already says a load scale other than 1 (`scale_load`).
            println!("{} sent to {target}", loaded.scenario.name);
            println!("{}", gpuslice_serve::scenario_load::table(&outcomes));
            if let Some(dir) = out {
                std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                output::write_csv(&dir.join("summary.csv"), &outcomes)?;
            }
            Ok(())
        }
        Command::Profile {
            models,
            gpu_pcts,
            batches,
            repeats,
            warmup_s,
            out,
            colocate,
            colocate_batch,
            colocate_seconds,
            colocation_out,
            fake_ms,
            model_repository,
        } => {
            let models: Vec<String> = models.into_iter().filter(|m| !m.is_empty()).collect();
            let repository = model_repository
                .map(|dir| {
                    gpuslice_serve::repository::Repository::open(
                        &dir,
                        &gpuslice_eval::calibration::Calibration::first_h100(),
                    )
                })
                .transpose()?;
            profile::run(profile::ProfileOptions {
                models: &models,
                gpu_pcts: &gpu_pcts,
                batches: &batches,
                repeats: repeats.max(1),
                warmup_s: warmup_s.max(0.0),
                out: &out,
                colocate: &colocate,
                colocate_batch,
                colocate_seconds,
                colocation_out: &colocation_out,
                fake_ms,
                repository: repository.as_ref(),
            })
        }
        Command::Calibrate { profile, colocation, fit_group_size, out, joint, temporal_switch_ms, hand_off_ms } => {
            let most = gpuslice_simulator::MAX_TEMPORAL_SWITCH_MS;
            for (flag, ms) in [("--temporal-switch-ms", temporal_switch_ms), ("--hand-off-ms", hand_off_ms)] {
                anyhow::ensure!(
                    ms.is_finite() && (0.0..=most).contains(&ms),
                    "{flag} must be in [0, {most}], got {ms}"
                );
            }
            calibration::calibrate(&calibration::CalibrateOptions {
                profile: &profile,
                colocation: &colocation,
                fit_group_size,
                out: &out,
                joint,
                temporal_switch_ms,
                hand_off_ms,
            })?;
            Ok(())
        }
        Command::Validate { profile, hold_out, colocation, calibration, out } => {
            calibration::validate(&profile, &hold_out, &colocation, &calibration, out.as_deref())
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
