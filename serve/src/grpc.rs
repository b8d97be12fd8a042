//! The gRPC control plane (`gpuslice.v1.Controller`), standard health and reflection, and
//! Prometheus text metrics over HTTP, in front of the live controller.

use crate::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::kserve::InferenceService;
use crate::live::{self, Command, LiveConfig, LiveError, LiveHandle, ModelSpec};
use crate::live_gpu::GpuServing;
use crate::netml::{NetmlCounters, NetmlIngress, NetmlTransfer, PacketPools};
use crate::proto::controller_server::{Controller, ControllerServer};
use crate::proto::*;
use crate::repository::Repository;
use anyhow::Context;
use futures_util::future::try_join_all;
use gpuslice_control::{ModelSource, StageSummary};
use gpuslice_eval::calibration::Calibration;
use gpuslice_simulator::{ModelReport, Summary};
use gpuslice_traces::{LatencyModel, Source};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt, wrappers::BroadcastStream};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

impl From<LiveError> for Status {
    fn from(e: LiveError) -> Status {
        match e {
            LiveError::InvalidArgument(m) => Status::invalid_argument(m),
            LiveError::NotFound(m) => Status::not_found(m),
            LiveError::AlreadyExists(m) => Status::already_exists(m),
            LiveError::FailedPrecondition(m) => Status::failed_precondition(m),
            LiveError::Unavailable(m) => Status::unavailable(m),
            LiveError::ResourceExhausted(m) => Status::resource_exhausted(m),
        }
    }
}

fn to_proto(a: gpuslice_simulator::Allocation) -> crate::proto::Allocation {
    crate::proto::Allocation {
        gpu_pct: a.gpu_pct,
        max_batch: a.max_batch,
        min_batch: a.min_batch,
        batch_timeout_ms: a.batch_timeout_ms,
    }
}

fn metrics(model: String, s: &Summary) -> ModelMetrics {
    ModelMetrics {
        model,
        arrivals: s.arrivals,
        completed: s.completed,
        dropped: s.dropped,
        within_slo: s.within_slo,
        slo_attainment: s.slo_attainment,
        goodput_rps: s.goodput_rps,
        throughput_rps: s.throughput_rps,
        p50_ms: s.p50_ms,
        p95_ms: s.p95_ms,
        p99_ms: s.p99_ms,
        mean_ms: s.mean_ms,
        mean_batch: s.mean_batch,
        mean_queue: s.mean_queue,
        max_queue: s.max_queue as u64,
        gpu_util: s.gpu_util,
    }
}

fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.trim().is_empty() { Err(Status::invalid_argument(format!("{field} is required"))) } else { Ok(value) }
}

/// Parses and fits the request's profile (off the async threads: fitting takes milliseconds).
/// Where a registration's `profile_path` may be read from: anywhere for the node config's own
/// models (the operator's file), only under the data roots for a RegisterModel call.
#[derive(Clone, Copy)]
enum ProfileFiles<'a> {
    Operator,
    Confined(&'a [PathBuf]),
}

async fn model_spec(r: RegisterModelRequest, files: ProfileFiles<'_>) -> Result<ModelSpec, Status> {
    let name = required(&r.name, "name")?.to_string();
    if let Some(problem) = gpuslice_control::model_name_problem(&name) {
        return Err(Status::invalid_argument(problem));
    }
    if !(r.slo_ms.is_finite() && r.slo_ms > 0.0 && r.slo_ms <= gpuslice_simulator::MAX_LATENCY_MS) {
        return Err(Status::invalid_argument(format!(
            "slo_ms must be in (0, {}], got {}",
            gpuslice_simulator::MAX_LATENCY_MS,
            r.slo_ms
        )));
    }
    // The largest batch any policy plans: a larger cap would be taken as this one, silently.
    let largest = *gpuslice_policies::BATCH_SIZES.last().expect("batch sizes");
    if !(1..=largest).contains(&r.max_batch) {
        return Err(Status::invalid_argument(format!(
            "max_batch must be in 1..={largest} (the largest batch gpuslice plans), got {}",
            r.max_batch
        )));
    }
    let profile =
        r.profile.ok_or_else(|| Status::invalid_argument("profile is required: profile_path or profile_csv"))?;
    let wanted = if r.profile_model.is_empty() { name.clone() } else { r.profile_model.clone() };
    let profile_model_name = wanted.clone();
    let roots: Option<Vec<PathBuf>> = match files {
        ProfileFiles::Operator => None,
        ProfileFiles::Confined(roots) => Some(roots.to_vec()),
    };
    let latency = tokio::task::spawn_blocking(move || -> Result<LatencyModel, String> {
        let source = match profile {
            register_model_request::Profile::ProfilePath(path) => match &roots {
                None => Source::load(&path, std::path::Path::new(".")),
                Some(roots) => Source::load_confined(&path, roots),
            }
            .map_err(|e| format!("profile_path: {e}"))?,
            register_model_request::Profile::ProfileCsv(text) => {
                Source { name: "profile_csv".into(), text: text.into() }
            }
        };
        crate::repository::fit_profile(&source, &wanted)
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(Status::invalid_argument)?;
    // The torchvision model its profile names (random weights: a benchmark); repository models
    // come with their own program and tensors (RepositoryModelLoad).
    let source = ModelSource::torchvision(&profile_model_name);
    Ok(ModelSpec {
        measure: false,
        name,
        slo_ms: r.slo_ms,
        priority: r.priority,
        max_batch: r.max_batch,
        latency: Arc::new(latency),
        profile_model: profile_model_name,
        source,
    })
}

/// Calls one connection may have open at once (an Infer is open until its request is served).
pub const MAX_CALLS_PER_CONNECTION: usize = 4096;

/// The gRPC service.
pub struct Service {
    live: LiveHandle,
    /// Where RegisterModel's `profile_path` may be read from.
    data_roots: Arc<[PathBuf]>,
    /// Turns true when the server shuts down, ending decision streams.
    stopping: tokio::sync::watch::Receiver<bool>,
}

#[tonic::async_trait]
impl Controller for Service {
    async fn register_model(
        &self,
        request: Request<RegisterModelRequest>,
    ) -> Result<Response<RegisterModelResponse>, Status> {
        let spec = model_spec(request.into_inner(), ProfileFiles::Confined(&self.data_roots)).await?;
        let allocation = self.live.ask(|reply| Command::Register(spec, reply)).await?;
        Ok(Response::new(RegisterModelResponse { allocation: Some(to_proto(allocation)) }))
    }

    async fn unregister_model(
        &self,
        request: Request<UnregisterModelRequest>,
    ) -> Result<Response<UnregisterModelResponse>, Status> {
        let name = required(&request.get_ref().name, "name")?.to_string();
        self.live.ask(|reply| Command::Unregister(name, reply)).await?;
        Ok(Response::new(UnregisterModelResponse {}))
    }

    async fn list_models(&self, _: Request<ListModelsRequest>) -> Result<Response<ListModelsResponse>, Status> {
        let (views, policy) = self.views().await?;
        Ok(Response::new(ListModelsResponse { models: views, policy }))
    }

    async fn get_allocation(
        &self,
        request: Request<GetAllocationRequest>,
    ) -> Result<Response<GetAllocationResponse>, Status> {
        let name = request.into_inner().name;
        let (mut models, _) = self.views().await?;
        if !name.is_empty() {
            models.retain(|m| m.name == name);
            if models.is_empty() {
                return Err(Status::not_found(format!("no model named {}", gpuslice_control::quoted_name(&name))));
            }
        }
        Ok(Response::new(GetAllocationResponse { models }))
    }

    async fn set_policy(&self, request: Request<SetPolicyRequest>) -> Result<Response<SetPolicyResponse>, Status> {
        let policy = required(&request.get_ref().policy, "policy")?.to_string();
        let previous = self.live.ask(|reply| Command::SetPolicy(policy, reply)).await?;
        Ok(Response::new(SetPolicyResponse { previous }))
    }

    async fn override_allocation(
        &self,
        request: Request<OverrideAllocationRequest>,
    ) -> Result<Response<OverrideAllocationResponse>, Status> {
        let r = request.into_inner();
        let name = required(&r.name, "name")?.to_string();
        let pin = if r.release {
            None
        } else {
            let a =
                r.allocation.ok_or_else(|| Status::invalid_argument("allocation is required unless release is set"))?;
            // A slice is served in whole GPU% (MPS's active-thread percentage): below 1 it would
            // be served at 1 and reported as asked.
            if !(a.gpu_pct >= 1.0 && a.gpu_pct <= 100.0) {
                return Err(Status::invalid_argument(format!(
                    "allocation.gpu_pct must be in [1, 100], got {}",
                    a.gpu_pct
                )));
            }
            let allocation = gpuslice_simulator::Allocation {
                gpu_pct: a.gpu_pct,
                max_batch: a.max_batch,
                // Unset (0): the batch waits to be full, as before the field existed.
                min_batch: if a.min_batch == 0 { a.max_batch } else { a.min_batch },
                batch_timeout_ms: a.batch_timeout_ms,
            };
            if let Some(problem) = allocation.problem() {
                return Err(Status::invalid_argument(format!("allocation: {problem}")));
            }
            Some(allocation)
        };
        let allocation = self.live.ask(|reply| Command::Override(name, pin, reply)).await?;
        Ok(Response::new(OverrideAllocationResponse { allocation: Some(to_proto(allocation)) }))
    }

    type WatchDecisionsStream = Pin<Box<dyn Stream<Item = Result<Decision, Status>> + Send>>;

    async fn watch_decisions(
        &self,
        _: Request<WatchDecisionsRequest>,
    ) -> Result<Response<Self::WatchDecisionsStream>, Status> {
        let mut stopping = self.stopping.clone();
        let stopped = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        let decisions =
            futures_util::StreamExt::take_until(BroadcastStream::new(self.live.decisions.subscribe()), stopped);
        let stream = decisions.map(|event| match event {
            Ok(d) => Ok(Decision {
                time_s: d.time_s,
                model: d.model,
                allocation: Some(to_proto(d.allocation)),
                reason: d.reason,
                source: d.source,
                gpu: d.gpu,
            }),
            Err(lagged) => Err(Status::data_loss(format!("watcher too slow: {lagged}"))),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_metrics(&self, request: Request<GetMetricsRequest>) -> Result<Response<GetMetricsResponse>, Status> {
        let name = request.into_inner().name;
        let filter = (!name.is_empty()).then_some(name);
        let (models, total) = self.live.ask(|reply| Command::Metrics(filter, reply)).await?;
        Ok(Response::new(GetMetricsResponse {
            models: models.into_iter().map(|m| metrics(m.model, &m.summary)).collect(),
            total: Some(metrics("total".into(), &total)),
        }))
    }

    async fn infer(&self, request: Request<InferRequest>) -> Result<Response<InferResponse>, Status> {
        let request = request.into_inner();
        let model = required(&request.model, "model")?.to_string();
        let input = (!request.payload.is_empty()).then(|| bytes::Bytes::from(request.payload).into());
        let done = self.live.ask(|reply| Command::Infer(model, input, reply)).await?;
        Ok(Response::new(InferResponse {
            request_id: done.ticket,
            timings: Some(StageTimings {
                queue_ms: done.queue_ms,
                host_to_device_ms: done.computed.as_ref().map_or(0.0, |c| c.h2d_ms),
                inference_ms: done.inference_ms,
                device_to_host_ms: done.computed.as_ref().map_or(0.0, |c| c.d2h_ms),
                total_ms: done.total_ms,
            }),
            batch_size: done.batch_size,
            output: done.computed.map(|c| c.output).unwrap_or_default(),
        }))
    }

    async fn place_model(&self, request: Request<PlaceModelRequest>) -> Result<Response<PlaceModelResponse>, Status> {
        let request = request.into_inner();
        let name = required(&request.name, "name")?.to_string();
        let gpus = self.live.ask(|reply| Command::Place(name, request.gpus, reply)).await?;
        Ok(Response::new(PlaceModelResponse { gpus }))
    }
}

impl Service {
    async fn views(&self) -> Result<(Vec<ModelInfo>, String), Status> {
        let (views, policy) = self.live.ask(Command::List).await?;
        let models = views
            .into_iter()
            .map(|v| ModelInfo {
                name: v.name,
                slo_ms: v.slo_ms,
                priority: v.priority,
                allocation: Some(to_proto(v.allocation)),
                pinned: v.pinned,
                failure: v.failure.unwrap_or_default(),
                outage: v.outage.unwrap_or_default(),
                gpus: v.gpus.iter().map(|(gpu, _)| *gpu).collect(),
                requests_by_gpu: v.gpus.iter().map(|(_, sent)| *sent).collect(),
            })
            .collect();
        Ok((models, policy))
    }
}

/// Serves /metrics on `listener` (plain TCP or TLS) until the process ends.
fn serve_metrics<L: axum::serve::Listener>(listener: L, app: axum::Router)
where
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
}

/// How often the health service follows the node's state.
const HEALTH_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Keeps the standard health service in step with the node: each registered model is a service
/// of its own name, NOT_SERVING while it recovers or after it failed; the node as a whole ("")
/// is NOT_SERVING during an MPS outage, when no model can serve. Stops with the controller.
async fn follow_health(live: LiveHandle, mut reporter: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus::{NotServing, Serving};
    let mut last: std::collections::BTreeMap<String, tonic_health::ServingStatus> = Default::default();
    loop {
        tokio::time::sleep(HEALTH_EVERY).await;
        let Ok((outage, views)) = live.ask(Command::Health).await else { return };
        let node = match &outage {
            Some(why) => (String::new(), NotServing, why.as_str()),
            None => (String::new(), Serving, ""),
        };
        let models = views.iter().map(|v| match v.unavailable() {
            Some(why) => (v.name.clone(), NotServing, why),
            None => (v.name.clone(), Serving, ""),
        });
        let now: Vec<_> = std::iter::once(node).chain(models).collect();
        for (name, status, why) in &now {
            if last.get(name) != Some(status) {
                match status {
                    NotServing => tracing::warn!(service = %name, why, "health: NOT_SERVING"),
                    _ if last.contains_key(name) => tracing::info!(service = %name, "health: SERVING again"),
                    _ => {}
                }
                reporter.set_service_status(name, *status).await;
            }
        }
        for gone in last.keys().filter(|k| !now.iter().any(|(n, ..)| n == *k)).cloned().collect::<Vec<_>>() {
            reporter.clear_service_status(&gone).await;
        }
        last = now.into_iter().map(|(name, status, _)| (name, status)).collect();
    }
}

/// Prometheus text exposition of the per-model metrics (and the NetML ingress's, where it runs).
async fn prometheus(live: LiveHandle, netml: Option<&NetmlCounters>) -> Result<String, Status> {
    let (models, total) = live.ask(|reply| Command::Metrics(None, reply)).await?;
    type Series = (&'static str, &'static str, fn(&Summary) -> f64);
    let series: [Series; 8] = [
        ("gpuslice_arrivals_total", "counter", |s| s.arrivals as f64),
        ("gpuslice_completed_total", "counter", |s| s.completed as f64),
        ("gpuslice_dropped_total", "counter", |s| s.dropped as f64),
        ("gpuslice_within_slo_total", "counter", |s| s.within_slo as f64),
        ("gpuslice_latency_p50_ms", "gauge", |s| s.p50_ms),
        ("gpuslice_latency_p99_ms", "gauge", |s| s.p99_ms),
        ("gpuslice_slo_attainment", "gauge", |s| s.slo_attainment),
        ("gpuslice_gpu_util", "gauge", |s| s.gpu_util),
    ];
    let mut text = String::new();
    for (name, kind, value) in series {
        text += &format!("# TYPE {name} {kind}\n");
        for (model, s) in
            models.iter().map(|m| (m.model.as_str(), &m.summary)).chain(std::iter::once(("total", &total)))
        {
            text += &format!("{name}{{model=\"{model}\"}} {}\n", value(s));
        }
    }
    // Per model only: what replaced its workers, and how often it was reallocated.
    type Counter = (&'static str, fn(&ModelReport) -> u64);
    let counters: [Counter; 2] = [
        ("gpuslice_worker_failures_total", |m| m.worker_failures),
        ("gpuslice_reallocations_total", |m| m.reallocations),
    ];
    for (name, value) in counters {
        text += &format!("# TYPE {name} counter\n");
        for m in &models {
            text += &format!("{name}{{model=\"{}\"}} {}\n", m.model, value(m));
        }
    }
    // Where the requests' time went, per model and stage (a backend that measures stages).
    let stages = live.ask(Command::Stages).await?;
    type Stage = (&'static str, fn(&StageSummary) -> f64);
    let stage_series: [Stage; 9] = [
        ("queue_p50", |s| s.queue_p50_ms),
        ("queue_p99", |s| s.queue_p99_ms),
        ("copy_in_per_batch", |s| s.copy_in_batch_mean_ms),
        ("h2d_mean", |s| s.h2d_mean_ms),
        ("inference_per_batch", |s| s.infer_batch_mean_ms),
        ("d2h_mean", |s| s.d2h_mean_ms),
        ("copy_out_per_batch", |s| s.copy_out_batch_mean_ms),
        ("total_p50", |s| s.total_p50_ms),
        ("total_p99", |s| s.total_p99_ms),
    ];
    if !stages.is_empty() {
        text += "# TYPE gpuslice_stage_ms gauge\n";
    }
    for s in &stages {
        for (stage, value) in stage_series {
            text += &format!("gpuslice_stage_ms{{model=\"{}\",stage=\"{stage}\"}} {}\n", s.model, value(s));
        }
    }
    // 0 while a model recovers (its workers are being replaced) or after it failed.
    let (views, _) = live.ask(Command::List).await?;
    text += "# TYPE gpuslice_model_ready gauge\n";
    for v in &views {
        text += &format!("gpuslice_model_ready{{model=\"{}\"}} {}\n", v.name, u8::from(v.unavailable().is_none()));
    }
    if let Some(netml) = netml {
        text += &netml.prometheus();
    }
    Ok(text)
}

/// What serves the requests.
#[derive(Debug, Clone)]
pub enum ServeBackend {
    /// The simulator in wall-clock time (Infer waits for the simulated completion).
    Simulated,
    /// The GPU backend: worker processes under MPS.
    Gpu(crate::live_gpu::GpuServing),
}

/// Where and how `serve` runs.
pub struct ServeOptions {
    /// The gRPC address.
    pub listen: SocketAddr,
    /// The Prometheus metrics address, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// The NetML ingress's UDP address, if any (`crate::netml`).
    pub netml_listen: Option<SocketAddr>,
    /// How NetML requests reach their batch.
    pub netml_transfer: NetmlTransfer,
    /// The controller's settings.
    pub controller: LiveConfig,
    /// What serves the requests.
    pub backend: ServeBackend,
    /// The GPUs served, one controller each (empty: one over the GPUs the process sees; with
    /// the simulated backend, simulated GPUs of these numbers).
    pub gpus: Vec<u32>,
    /// Models registered before the server takes calls.
    pub models: Vec<RegisterModelRequest>,
    /// On a node of several GPUs, the GPUs some of them are then put on (PlaceModel's), by name.
    pub placements: Vec<(String, Vec<u32>)>,
    /// A model repository: every model in it is loaded (registered) before the server takes
    /// calls, and RepositoryModelLoad / Unload manage them after.
    pub repository: Option<std::path::PathBuf>,
    /// Folders whose files RegisterModel's `profile_path` may name (besides `builtin:`).
    pub data_roots: Vec<PathBuf>,
    /// When set, every call but health checks, and /metrics, must carry `authorization: Bearer
    /// TOKEN` (UNAUTHENTICATED, HTTP 401 otherwise).
    pub auth_token: Option<String>,
    /// Serve gRPC server reflection.
    pub reflection: bool,
    /// Serve gRPC and /metrics over TLS with this certificate and key.
    pub tls: Option<crate::tls::TlsIdentity>,
    /// The GPU's calibration: repository models without a profile of their own take its
    /// profile (the controller's `contention` holds its co-location model).
    pub calibration: Calibration,
}

impl ServeOptions {
    /// A server on a free loopback port served by `backend`, with the default controller, no
    /// models, no token and the first H100 calibration: load tests and tests start from it.
    pub fn loopback(backend: ServeBackend) -> ServeOptions {
        ServeOptions {
            listen: "127.0.0.1:0".parse().expect("a loopback address"),
            metrics_listen: None,
            netml_listen: None,
            netml_transfer: NetmlTransfer::default(),
            controller: LiveConfig::default(),
            backend,
            gpus: Vec::new(),
            placements: Vec::new(),
            models: Vec::new(),
            repository: None,
            data_roots: Vec::new(),
            auth_token: None,
            reflection: true,
            tls: None,
            calibration: Calibration::first_h100(),
        }
    }
}

/// Checks a call's `authorization: Bearer TOKEN` where the server has a token.
#[derive(Clone)]
struct BearerToken(Option<Arc<str>>);

impl BearerToken {
    /// Whether `header` (the `authorization` value) carries the token, compared in constant
    /// time.
    fn admits(&self, header: Option<&str>) -> bool {
        let Some(token) = &self.0 else { return true };
        let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else { return false };
        given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
    }

    /// Whether a gRPC call's metadata carries the token.
    fn admits_call(&self, metadata: &tonic::metadata::MetadataMap) -> bool {
        self.admits(metadata.get("authorization").and_then(|v| v.to_str().ok()))
    }
}

/// The standard health service, open without the token for the node as a whole (service "":
/// what load balancers and Kubernetes probe) and behind it for a named service: answered
/// SERVING or NOT_FOUND by name, it would tell anyone which models a node serves.
struct GuardedHealth {
    inner: tonic_health::server::HealthService,
    token: BearerToken,
}

impl GuardedHealth {
    fn admit(&self, request: &Request<HealthCheckRequest>) -> Result<(), Status> {
        match request.get_ref().service.is_empty() || self.token.admits_call(request.metadata()) {
            true => Ok(()),
            false => Err(Status::unauthenticated(
                "a named service's health needs the header authorization: Bearer <token> (the node's, \"\", does not)",
            )),
        }
    }
}

#[tonic::async_trait]
impl Health for GuardedHealth {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.admit(&request)?;
        self.inner.check(request).await
    }

    type WatchStream = tonic_health::server::WatchStream;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        self.admit(&request)?;
        self.inner.watch(request).await
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.admits_call(request.metadata()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("this server needs the header authorization: Bearer <token>"))
        }
    }
}

/// A running server: its bound addresses, and how to stop it.
pub struct Running {
    /// The gRPC address bound.
    pub grpc: SocketAddr,
    /// The metrics address bound, if any.
    pub metrics: Option<SocketAddr>,
    /// The NetML ingress's UDP address bound, if any.
    pub netml: Option<SocketAddr>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops accepting, answers every accepted request, then returns.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        self.done.await?
    }
}

/// HTTP/2 flow-control windows of a stream and of a connection, bytes. At the protocol's default
/// (64 KiB each) a 588 KiB input waits for nine window updates, and a connection carries one
/// such request at a time: the windows, not the GPU, bound the request rate. With these, a
/// connection holds about a hundred image requests in flight.
pub const STREAM_WINDOW_BYTES: u32 = 4 << 20;
/// See `STREAM_WINDOW_BYTES`.
pub const CONNECTION_WINDOW_BYTES: u32 = 64 << 20;
/// Largest HTTP/2 frame a client may send (the protocol's default is 16 KiB: 37 frames for one
/// image request).
const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Binds and starts the gRPC server (and the metrics endpoint).
pub async fn start(options: ServeOptions) -> anyhow::Result<Running> {
    let config = options.controller;
    // NetML's packet pools are a file the GPU backend's workers map: it exists before them.
    let packet_pools = options.netml_listen.map(|_| PacketPools::create().map(Arc::new)).transpose()?;
    let lent_to_workers = packet_pools
        .as_ref()
        .filter(|_| options.netml_transfer == NetmlTransfer::GpuGather)
        .map(|pools| gpuslice_control::input::PacketStore::layout(pools.as_ref()).clone());
    // One controller per GPU; several behind a router (`crate::gpus`).
    let devices: Vec<Option<u32>> = match options.gpus.is_empty() {
        true => vec![None],
        false => options.gpus.iter().map(|&g| Some(g)).collect(),
    };
    let mut controllers = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        // Each simulated GPU draws its own service times.
        let gpu = device.unwrap_or(0);
        let config = LiveConfig { seed: config.seed.wrapping_add(i as u64), gpu, ..config.clone() };
        let started = match &options.backend {
            ServeBackend::Simulated => live::simulated_backend(&config).and_then(|sim| live::start(config, sim)),
            ServeBackend::Gpu(serving) => {
                let serving = GpuServing { device: *device, ..serving.clone() };
                let (drop_after_ms, lent) = (config.drop_after_ms, lent_to_workers.clone());
                let gpu = tokio::task::spawn_blocking(move || crate::live_gpu::start(&serving, drop_after_ms, lent))
                    .await?
                    .with_context(|| device.map(|d| format!("GPU {d}")).unwrap_or_else(|| "the GPU".into()))?;
                live::start(config, gpu)
            }
        };
        let started = started.map_err(|e| anyhow::anyhow!("controller: {e}"))?;
        controllers.push((gpu, started));
    }
    let live::Started { handle: live, stop: stop_controller, task: controller_task } = match controllers.len() {
        1 => controllers.pop().expect("one controller").1,
        _ => crate::gpus::start(controllers, &config),
    };
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", options.listen))?;
    let grpc = listener.local_addr()?;
    let token = BearerToken(options.auth_token.as_deref().map(Arc::from));
    if !options.listen.ip().is_loopback() {
        if token.0.is_none() {
            tracing::warn!(listen = %options.listen, "listening beyond loopback without an auth token: anyone who reaches this address can register models and send requests (--auth-token-file)");
        }
        if options.tls.is_none() {
            tracing::warn!(listen = %options.listen, "listening beyond loopback without TLS: requests, answers and the token cross the network in the clear (--tls-cert, --tls-key)");
        }
    }
    // NetML requests are taken once the models named at start are registered (below); its
    // counters exist from here for /metrics.
    let netml_counters = options.netml_listen.map(|_| Arc::new(NetmlCounters::default()));
    let metrics = match options.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for /metrics on {addr}"))?;
            let bound = listener.local_addr()?;
            let handle = live.clone();
            let token = token.clone();
            let netml = netml_counters.clone();
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move |headers: axum::http::HeaderMap| {
                    let (handle, token, netml) = (handle.clone(), token.clone(), netml.clone());
                    async move {
                        let header = headers.get("authorization").and_then(|v| v.to_str().ok());
                        if !token.admits(header) {
                            return (
                                axum::http::StatusCode::UNAUTHORIZED,
                                "authorization: Bearer <token> needed\n".to_string(),
                            );
                        }
                        let text = prometheus(handle, netml.as_deref())
                            .await
                            .unwrap_or_else(|s| format!("# error: {}\n", s.message()));
                        (axum::http::StatusCode::OK, text)
                    }
                }),
            );
            match &options.tls {
                Some(tls) => serve_metrics(crate::tls::TlsListener::new(listener, tls.server_config()?)?, app),
                None => serve_metrics(listener, app),
            }
            Some(bound)
        }
        None => None,
    };
    let health_reporter = tonic_health::server::HealthReporter::new();
    let health = HealthServer::new(GuardedHealth {
        inner: tonic_health::server::HealthService::from_health_reporter(health_reporter.clone()),
        token: token.clone(),
    });
    health_reporter.set_serving::<ControllerServer<Service>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(crate::inference::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    for model in options.models {
        let name = model.name.clone();
        let spec = model_spec(model, ProfileFiles::Operator)
            .await
            .map_err(|s| anyhow::anyhow!("model {name}: {}", s.message()))?;
        live.ask(|reply| Command::Register(spec, reply)).await.map_err(|e| anyhow::anyhow!("model {name}: {e}"))?;
    }
    for (name, gpus) in options.placements {
        let placed = live.ask(|reply| Command::Place(name.clone(), gpus, reply)).await;
        placed.map_err(|e| anyhow::anyhow!("model {name}: gpus: {e}"))?;
    }
    let repository =
        options.repository.as_deref().map(|root| Repository::open(root, &options.calibration)).transpose()?;
    if let Some(repository) = &repository {
        // Every model starts at once (their workers start in parallel).
        let names = repository.names()?;
        tracing::info!(models = ?names, "loading the model repository");
        let live = &live;
        try_join_all(names.iter().map(|name| async move {
            let spec = repository.spec(name).map_err(|e| anyhow::anyhow!("{e}"))?;
            live.ask(|reply| Command::Register(spec, reply)).await.map_err(|e| anyhow::anyhow!("model {name}: {e}"))
        }))
        .await?;
    }
    health_reporter.set_serving::<GrpcInferenceServiceServer<InferenceService>>().await;
    tokio::spawn(follow_health(live.clone(), health_reporter));
    let netml = options
        .netml_listen
        .zip(netml_counters.zip(packet_pools))
        .map(|(addr, (counters, pools))| {
            let transfer = (pools, options.netml_transfer);
            NetmlIngress::start(addr, live.clone(), tokio::runtime::Handle::current(), counters, transfer)
        })
        .transpose()?;
    let netml_addr = netml.as_ref().map(|n| n.local_addr);
    if let Some(addr) = netml_addr.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(netml = %addr, "NetML listens beyond loopback: it has no authentication or encryption, anyone who reaches this address can send requests to every model");
    }
    let inference = GrpcInferenceServiceServer::new(InferenceService::new(live.clone(), repository))
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20);
    let inference = InterceptedService::new(inference, token.clone());
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    // A RegisterModel may carry its profile inline, as large as a profile file may be.
    let service = ControllerServer::new(Service { live, stopping, data_roots: options.data_roots.into() })
        .max_decoding_message_size(gpuslice_traces::source::MAX_CONFINED_BYTES as usize + (1 << 20));
    let service = InterceptedService::new(service, token.clone());
    // The node's health stays open (load balancers probe it without credentials), a named
    // service's needs the token (`GuardedHealth`); reflection, when served, needs it like the rest.
    let (reflection_v1, reflection_v1alpha) = match options.reflection {
        true => (
            Some(InterceptedService::new(reflection_v1, token.clone())),
            Some(InterceptedService::new(reflection_v1alpha, token.clone())),
        ),
        false => (None, None),
    };
    let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &options.tls {
        builder = builder.tls_config(tls.tonic())?;
    }
    let done = tokio::spawn(async move {
        builder
            // A peer that is gone is noticed (TCP and HTTP/2 keep-alives) and its connection
            // closed; one connection cannot hold more than this many calls open at once.
            .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
            .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .max_frame_size(MAX_FRAME_BYTES)
            .add_service(health)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha)
            .add_service(service)
            .add_service(inference)
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
                let _ = shutdown_rx.await;
                let _ = stopping_tx.send(true);
            })
            .await?;
        // No new NetML requests either (the thread stops within its idle wait).
        if let Some(netml) = netml {
            tokio::task::spawn_blocking(move || netml.stop()).await?;
        }
        // No new calls reach the controller now; it stops once the requests it accepted are
        // answered (calls still in flight wait for theirs).
        let _ = stop_controller.send(());
        controller_task.await?;
        Ok(())
    });
    match metrics {
        Some(metrics) => tracing::info!(%grpc, %metrics, "serving gpuslice.v1 and the inference protocol; /metrics"),
        None => tracing::info!(%grpc, "serving gpuslice.v1 and the inference protocol"),
    }
    if let Some(netml) = netml_addr {
        tracing::info!(%netml, "NetML ingress listening (UDP)");
    }
    Ok(Running { grpc, metrics, netml: netml_addr, shutdown, done })
}
