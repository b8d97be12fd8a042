//! `gpuslice load-test`: open-loop Infer traffic plus control calls against a server on loopback
//! (started in-process unless `--target` names one), bounded in time; reports per kind the calls
//! sent, answered, failed, and latency percentiles, and whether every accepted request was
//! answered. Failed calls are counted by reason (the gRPC code and message).

use crate::grpc::{self, ServeOptions};
use crate::proto::controller_client::ControllerClient;
use crate::proto::register_model_request::Profile;
use crate::proto::*;
use anyhow::{Context, Result};
use comfy_table::Table;
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Models the load test registers, with SLOs generous enough for the offered load.
const MODELS: [(&str, f64); 3] = [("mobilenet_v3_large", 50.0), ("resnet50", 50.0), ("vgg16", 80.0)];
/// Connections the calls are spread over: one HTTP/2 connection is one task on each side, and
/// image requests at gpu-trio rates (2 GB/s) outrun a few of them.
const CHANNELS: usize = 16;

/// What `gpuslice load-test` sends.
pub struct LoadTestOptions {
    /// A running server, or None to start one on loopback.
    pub target: Option<SocketAddr>,
    /// How long to send.
    pub duration: Duration,
    /// Infer calls per second.
    pub infer_rps: u32,
    /// Control-plane calls (GetAllocation, ListModels) per second.
    pub control_rps: u32,
    /// Send each Infer a full input row (a 3x224x224 FP32 image of pseudo-random values) instead
    /// of an empty payload (zeros on the server): the cost of really moving request bytes.
    pub with_inputs: bool,
    /// Show a progress bar (calls sent, answered, failed) on a terminal.
    pub progress: bool,
}

/// Bytes of one input row of the load test's models (torchvision classifiers).
const IMAGE_BYTES: usize = 3 * 224 * 224 * 4;

/// What one kind of call saw.
#[derive(Debug)]
pub struct CallStats {
    /// Which calls.
    pub kind: &'static str,
    /// Calls sent.
    pub sent: u64,
    /// Calls answered OK.
    pub ok: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Latencies of the answered calls, µs.
    pub latency_us: Histogram<u64>,
    /// Failed calls by reason (`CODE: message`).
    pub failures: std::collections::BTreeMap<String, u64>,
    /// Per second of the test (when the call was sent): calls answered OK, and failed.
    pub by_second: Vec<[u64; 2]>,
}

impl CallStats {
    fn new(kind: &'static str) -> CallStats {
        CallStats {
            kind,
            sent: 0,
            ok: 0,
            failed: 0,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
            failures: Default::default(),
            by_second: Vec::new(),
        }
    }

    /// A call sent at `started`, in second `second` of the test, ended with `outcome`.
    fn record(&mut self, started: Instant, second: usize, outcome: Result<(), tonic::Status>) {
        if self.by_second.len() <= second {
            self.by_second.resize(second + 1, [0, 0]);
        }
        self.by_second[second][usize::from(outcome.is_err())] += 1;
        match outcome {
            Ok(()) => {
                self.ok += 1;
                let _ = self.latency_us.record((started.elapsed().as_micros() as u64).max(1));
            }
            Err(status) => {
                self.failed += 1;
                // Messages carry no per-call detail worth keeping apart; the first line bounds
                // the key.
                let message: String = status.message().lines().next().unwrap_or("").chars().take(120).collect();
                *self.failures.entry(format!("{:?}: {message}", status.code())).or_default() += 1;
            }
        }
    }

    /// 99th-percentile latency, ms.
    pub fn p99_ms(&self) -> f64 {
        self.latency_us.value_at_quantile(0.99) as f64 / 1000.0
    }
}

/// What a load test saw.
pub struct LoadTestReport {
    /// The Infer calls.
    pub infer: CallStats,
    /// The control-plane calls.
    pub control: CallStats,
    /// How long it ran.
    pub elapsed: Duration,
}

impl LoadTestReport {
    /// The report as a table.
    pub fn table(&self) -> Table {
        let mut table = gpuslice_eval::output::table(vec![
            "calls", "sent", "answered", "failed", "rate/s", "p50 ms", "p99 ms", "max ms",
        ]);
        for s in [&self.infer, &self.control] {
            let ms = |q: f64| format!("{:.2}", s.latency_us.value_at_quantile(q) as f64 / 1000.0);
            table.add_row(vec![
                s.kind.to_string(),
                s.sent.to_string(),
                s.ok.to_string(),
                s.failed.to_string(),
                format!("{:.0}", s.sent as f64 / self.elapsed.as_secs_f64()),
                ms(0.5),
                ms(0.99),
                format!("{:.2}", s.latency_us.max() as f64 / 1000.0),
            ]);
        }
        table
    }

    /// Writes the Infer calls answered and failed per second to `dir`: `timeline.csv` (second,
    /// answered, failed) and `timeline.svg`. Returns the paths written.
    pub fn write_timeline(&self, dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
        use gpuslice_eval::plot::{Chart, Series, line_chart};
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        #[derive(serde::Serialize)]
        struct Second {
            second: usize,
            answered: u64,
            failed: u64,
        }
        let rows = self.infer.by_second.iter().enumerate();
        let csv = dir.join("timeline.csv");
        gpuslice_eval::output::write_csv(
            &csv,
            rows.clone().map(|(second, &[answered, failed])| Second { second, answered, failed }),
        )?;
        let series = |name: &str, k: usize, color: usize| Series {
            name: name.into(),
            points: rows.clone().map(|(s, counts)| (s as f64, counts[k] as f64)).collect(),
            color,
            dashed: false,
        };
        let svg = dir.join("timeline.svg");
        let chart =
            Chart { title: "Infer calls by the second they were sent", x_label: "s", y_label: "calls", marked: false };
        line_chart(&svg, &chart, &[series("answered", 0, 0), series("failed", 1, 1)])?;
        Ok(vec![csv, svg])
    }

    /// Failed calls by kind and reason, most frequent first (empty when none failed).
    pub fn failure_table(&self) -> Option<Table> {
        let mut rows: Vec<(&str, &String, u64)> = [&self.infer, &self.control]
            .into_iter()
            .flat_map(|s| s.failures.iter().map(move |(reason, n)| (s.kind, reason, *n)))
            .collect();
        if rows.is_empty() {
            return None;
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.2));
        let mut table = gpuslice_eval::output::table(vec!["calls", "failed", "reason"]);
        for (kind, reason, n) in rows {
            table.add_row(vec![kind.to_string(), n.to_string(), reason.clone()]);
        }
        Some(table)
    }
}

/// `CHANNELS` connections to `target` (host:port), for a load's calls to be spread over.
pub(crate) async fn connect(target: &str) -> Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        let channel = Channel::from_shared(format!("http://{target}"))?
            .initial_stream_window_size(crate::grpc::STREAM_WINDOW_BYTES)
            .initial_connection_window_size(crate::grpc::CONNECTION_WINDOW_BYTES)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {target}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Sends `rate` calls per second for `duration`, each through `call`.
async fn open_loop<F, Fut>(
    duration: Duration,
    rate: u32,
    stats: Arc<Mutex<CallStats>>,
    mut call: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let (mut sent, mut handles) = (0u64, Vec::new());
    while start.elapsed() < duration {
        tick.tick().await;
        // Catch up to the rate the elapsed time calls for, so the offered load is exact.
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let fut = call(sent);
            let stats = stats.clone();
            let started = Instant::now();
            let second = (started - start).as_secs() as usize;
            handles.push(tokio::spawn(async move {
                let outcome = fut.await;
                stats.lock().expect("stats lock").record(started, second, outcome);
            }));
            sent += 1;
        }
        stats.lock().expect("stats lock").sent = sent;
    }
    handles
}

/// Runs the load test (starting a loopback server where no target is given).
pub async fn run(options: LoadTestOptions) -> Result<LoadTestReport> {
    let server = match options.target {
        Some(_) => None,
        None => Some(grpc::start(ServeOptions::loopback(grpc::ServeBackend::Simulated)).await?),
    };
    let address = options.target.or(server.as_ref().map(|s| s.grpc)).expect("a target");
    anyhow::ensure!(address.ip().is_loopback(), "load tests only target loopback addresses, not {address}");
    let clients: Vec<_> = connect(&address.to_string()).await?.into_iter().map(ControllerClient::new).collect();
    // Registered together, as an orchestrator placing several models would: their workers start
    // in parallel, and each call answers once its model serves.
    let registrations = MODELS.map(|(name, slo_ms)| {
        let mut client = clients[0].clone();
        async move {
            let request = RegisterModelRequest {
                name: name.into(),
                slo_ms,
                priority: 0,
                max_batch: 32,
                profile: Some(Profile::ProfilePath("builtin:h100-cudagraph".into())),
                profile_model: String::new(),
            };
            let asked = Instant::now();
            match client.register_model(request).await {
                Ok(_) => tracing::info!(model = name, in_s = asked.elapsed().as_secs_f64(), "registered; serving"),
                Err(e) if e.code() == tonic::Code::AlreadyExists => {}
                Err(e) => return Err(e).context(format!("register {name}")),
            }
            Ok(())
        }
    });
    futures_util::future::try_join_all(registrations).await?;
    let infer = Arc::new(Mutex::new(CallStats::new("Infer")));
    let control = Arc::new(Mutex::new(CallStats::new("control")));
    let started = Instant::now();
    let infer_clients = clients.clone();
    // One image for every call: values in [0, 1), as a preprocessed image's.
    let image: Arc<Vec<u8>> = Arc::new(if options.with_inputs {
        (0..IMAGE_BYTES / 4).flat_map(|k| ((k * 7919 % 1000) as f32 / 1000.0).to_le_bytes()).collect()
    } else {
        Vec::new()
    });
    let infer_load = open_loop(options.duration, options.infer_rps, infer.clone(), move |i| {
        let mut client = infer_clients[i as usize % CHANNELS].clone();
        let model = MODELS[i as usize % MODELS.len()].0.to_string();
        let payload = image.as_ref().clone();
        async move { client.infer(InferRequest { model, payload }).await.map(drop) }
    });
    let control_clients = clients.clone();
    let control_load = open_loop(options.duration, options.control_rps, control.clone(), move |i| {
        let mut client = control_clients[i as usize % CHANNELS].clone();
        let model = MODELS[i as usize % MODELS.len()].0.to_string();
        async move {
            match i % 4 {
                0 => client.get_allocation(GetAllocationRequest { name: model }).await.map(drop),
                1 => client.list_models(ListModelsRequest {}).await.map(drop),
                2 => client.get_metrics(GetMetricsRequest { name: model }).await.map(drop),
                _ => {
                    let release = OverrideAllocationRequest { name: model, allocation: None, release: true };
                    client.override_allocation(release).await.map(drop)
                }
            }
        }
    });
    let progress = options.progress.then(|| show_progress(options.duration, infer.clone(), control.clone()));
    let (infer_calls, control_calls) = tokio::join!(infer_load, control_load);
    for handle in infer_calls.into_iter().chain(control_calls) {
        handle.await?;
    }
    let elapsed = started.elapsed();
    if let Some(progress) = progress {
        progress.abort();
    }
    if let Some(server) = server {
        server.stop().await?;
    }
    let take = |s: Arc<Mutex<CallStats>>| Arc::try_unwrap(s).expect("all calls done").into_inner().expect("stats lock");
    Ok(LoadTestReport { infer: take(infer), control: take(control), elapsed })
}

/// A progress bar over the test's duration with the calls sent, answered and failed so far,
/// redrawn four times a second until aborted (drawn only on a terminal).
fn show_progress(
    duration: Duration,
    infer: Arc<Mutex<CallStats>>,
    control: Arc<Mutex<CallStats>>,
) -> tokio::task::JoinHandle<()> {
    let bar = indicatif::ProgressBar::new(duration.as_secs().max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template("load test [{bar:30}] {pos}/{len} s  {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    tokio::spawn(async move {
        let _clear = scopeguard(bar.clone());
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            bar.set_position(started.elapsed().as_secs().min(bar.length().unwrap_or(0)));
            let line = |s: &Arc<Mutex<CallStats>>| {
                let s = s.lock().expect("stats lock");
                format!("{}: {} sent, {} answered, {} failed", s.kind, s.sent, s.ok, s.failed)
            };
            bar.set_message(format!("{}; {}", line(&infer), line(&control)));
        }
    })
}

/// Clears the progress bar when the task ends (aborted with the test).
fn scopeguard(bar: indicatif::ProgressBar) -> impl Drop {
    struct Clear(indicatif::ProgressBar);
    impl Drop for Clear {
        fn drop(&mut self) {
            self.0.finish_and_clear();
        }
    }
    Clear(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_reason() {
        let mut stats = CallStats::new("Infer");
        stats.record(Instant::now(), 0, Ok(()));
        for _ in 0..2 {
            stats.record(Instant::now(), 2, Err(tonic::Status::unavailable("dropped: queued past the deadline")));
        }
        stats.record(Instant::now(), 0, Err(tonic::Status::not_found("no model named \"x\"\nsecond line")));
        assert_eq!((stats.ok, stats.failed), (1, 3));
        assert_eq!(stats.by_second, [[1, 1], [0, 0], [0, 2]], "answered and failed by the second sent");
        assert_eq!(stats.failures["Unavailable: dropped: queued past the deadline"], 2);
        assert_eq!(stats.failures["NotFound: no model named \"x\""], 1);
        let report =
            LoadTestReport { infer: stats, control: CallStats::new("control"), elapsed: Duration::from_secs(1) };
        let table = report.failure_table().expect("failures").to_string();
        assert!(table.find("Unavailable") < table.find("NotFound"), "most frequent first:\n{table}");
    }
}
