//! A node of several GPUs over gRPC: models placed across the GPUs, replicated, and moved between
//! them under load with every request answered. On simulated GPUs, and on the GPU backend with
//! GPU-less workers for two devices (each GPU its own backend, workers and controller).

mod common;

use common::register;
use gpuslice_serve::grpc::{self, Running, ServeBackend, ServeOptions};
use gpuslice_serve::inference::ModelReadyRequest;
use gpuslice_serve::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use gpuslice_serve::live::LiveConfig;
use gpuslice_serve::live_gpu::GpuServing;
use gpuslice_serve::proto::controller_client::ControllerClient;
use gpuslice_serve::proto::*;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

async fn node(backend: ServeBackend, gpus: Vec<u32>) -> (Running, ControllerClient<Channel>) {
    common::serve(ServeOptions {
        controller: LiveConfig { control_interval_s: 0.1, ..LiveConfig::default() },
        gpus,
        ..ServeOptions::loopback(backend)
    })
    .await
}

/// GPU-less workers (1 ms a batch) at two pool levels.
fn fake_gpus() -> ServeBackend {
    ServeBackend::Gpu(GpuServing {
        pool_levels: vec![50.0, 100.0],
        fake_ms: Some(1.0),
        worker_script: None,
        device: None,
    })
}

/// Where each model runs: name -> (GPUs, requests sent to each).
async fn placement(client: &mut ControllerClient<Channel>) -> Vec<(String, Vec<u32>, Vec<u64>)> {
    let models = client.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
    models.into_iter().map(|m| (m.name, m.gpus, m.requests_by_gpu)).collect()
}

fn infer(
    client: &ControllerClient<Channel>,
    model: &str,
) -> tokio::task::JoinHandle<Result<InferResponse, tonic::Status>> {
    let (mut c, model) = (client.clone(), model.to_string());
    tokio::spawn(async move { c.infer(InferRequest { model, payload: Vec::new() }).await.map(|r| r.into_inner()) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_spread_over_the_gpus_and_bad_placements_are_refused() {
    let (running, mut client) = node(ServeBackend::Simulated, vec![0, 1]).await;
    let mut watch = client.watch_decisions(WatchDecisionsRequest {}).await.unwrap().into_inner();
    client.register_model(register("resnet50", 20.0)).await.unwrap();
    client.register_model(register("vgg16", 30.0)).await.unwrap();
    // Each to the GPU serving fewer models.
    let on = placement(&mut client).await;
    assert_eq!(on, vec![("resnet50".into(), vec![0], vec![0]), ("vgg16".into(), vec![1], vec![0])]);
    // Decisions name the GPU whose controller made them.
    let first = watch.message().await.unwrap().unwrap();
    assert!(first.gpu.is_some() && first.source == "register", "{first:?}");
    assert_eq!(client.register_model(register("vgg16", 30.0)).await.unwrap_err().code(), Code::AlreadyExists);

    for (name, gpus, code, says) in [
        ("vgg16", vec![7], Code::InvalidArgument, "no GPU 7"),
        ("vgg16", vec![], Code::InvalidArgument, "at least one"),
        ("nope", vec![0], Code::NotFound, "nope"),
    ] {
        let status = client.place_model(PlaceModelRequest { name: name.into(), gpus }).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(says), "{status:?}");
    }

    // Both serve; metrics come from the GPU each is on.
    let calls: Vec<_> = (0..40).map(|i| infer(&client, if i % 2 == 0 { "resnet50" } else { "vgg16" })).collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let metrics = client.get_metrics(GetMetricsRequest { name: String::new() }).await.unwrap().into_inner();
    let completed: Vec<u64> = metrics.models.iter().map(|m| m.completed).collect();
    assert_eq!(completed, vec![20, 20]);
    // The inference protocol reaches each model on its GPU too.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.grpc)).unwrap().connect().await;
    let mut kserve = GrpcInferenceServiceClient::new(channel.unwrap());
    for (name, ready) in [("resnet50", true), ("vgg16", true), ("nope", false)] {
        let answer = kserve.model_ready(ModelReadyRequest { name: name.into(), version: String::new() }).await;
        assert_eq!(answer.unwrap().into_inner().ready, ready, "{name}");
    }
    assert_eq!(metrics.total.unwrap().completed, 40);
    client.unregister_model(UnregisterModelRequest { name: "vgg16".into() }).await.unwrap();
    assert_eq!(placement(&mut client).await.len(), 1);
    // GPU 1 serves nothing now: the next model goes there.
    client.register_model(register("densenet121", 30.0)).await.unwrap();
    assert!(placement(&mut client).await.contains(&("densenet121".into(), vec![1], vec![0])));
    running.stop().await.unwrap();
}

/// On two devices of GPU-less workers: a model replicated on both has its requests split
/// between them, then moved to one GPU while requests keep coming; every request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_replicated_then_moved_under_load_loses_no_request() {
    let (running, mut client) = node(fake_gpus(), vec![0, 1]).await;
    client.register_model(register("resnet50", 50.0)).await.unwrap();
    let placed = client.place_model(PlaceModelRequest { name: "resnet50".into(), gpus: vec![0, 1] }).await;
    assert_eq!(placed.unwrap().into_inner().gpus, vec![0, 1]);

    // Replicas: the requests go to both.
    let calls: Vec<_> = (0..200).map(|_| infer(&client, "resnet50")).collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let (_, gpus, sent) = placement(&mut client).await.remove(0);
    assert_eq!(gpus, vec![0, 1]);
    assert_eq!(sent.iter().sum::<u64>(), 200, "{sent:?}");
    assert!(sent.iter().all(|&n| n >= 20), "both replicas serve: {sent:?}");

    // A request every half millisecond while the model moves to GPU 1 alone.
    let load = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut calls = Vec::new();
            for _ in 0..1600 {
                calls.push(infer(&client, "resnet50"));
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            calls
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let moved = client.place_model(PlaceModelRequest { name: "resnet50".into(), gpus: vec![1] }).await.unwrap();
    assert_eq!(moved.into_inner().gpus, vec![1]);
    let (_, gpus, _) = placement(&mut client).await.remove(0);
    assert_eq!(gpus, vec![1]);
    let calls = load.await.unwrap();
    let sent = calls.len();
    for call in calls {
        let done = call.await.unwrap();
        assert!(done.is_ok(), "a request during the move: {done:?}");
    }
    // The node's totals keep what the retired replica served.
    let total =
        client.get_metrics(GetMetricsRequest { name: String::new() }).await.unwrap().into_inner().total.unwrap();
    assert_eq!((total.completed, total.dropped), (200 + sent as u64, 0));
    running.stop().await.unwrap();
}

/// `replica_routing = "in-turn"`: a replicated model's requests alternate between its replicas
/// whatever each has in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_routed_in_turn_take_every_other_request() {
    let controller: LiveConfig = toml::from_str("control_interval_s = 0.1\nreplica_routing = \"in-turn\"").unwrap();
    let (running, mut client) =
        common::serve(ServeOptions { controller, gpus: vec![0, 1], ..ServeOptions::loopback(ServeBackend::Simulated) })
            .await;
    client.register_model(register("resnet50", 50.0)).await.unwrap();
    client.place_model(PlaceModelRequest { name: "resnet50".into(), gpus: vec![0, 1] }).await.unwrap();
    let calls: Vec<_> = (0..200).map(|_| infer(&client, "resnet50")).collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let (_, _, sent) = placement(&mut client).await.remove(0);
    assert_eq!(sent, vec![100, 100]);
    running.stop().await.unwrap();
    let refused = toml::from_str::<LiveConfig>("replica_routing = \"fastest\"").unwrap_err().to_string();
    assert!(refused.contains("replica_routing") && refused.contains("in-turn"), "{refused}");
}

/// Two busy models on one GPU and an idle one on the other: the router moves a busy one over
/// while requests keep coming, and every request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_gpu_sheds_a_model_to_the_idle_one() {
    let running = grpc::start(ServeOptions {
        controller: LiveConfig { control_interval_s: 0.1, rebalance_every_s: 0.4, ..LiveConfig::default() },
        gpus: vec![0, 1],
        ..ServeOptions::loopback(ServeBackend::Simulated)
    })
    .await
    .unwrap();
    let mut client = ControllerClient::connect(format!("http://{}", running.grpc)).await.unwrap();
    // DenseNet-121 one request a batch: about 2.2 ms of the whole GPU each on the H100 profile,
    // so 230 requests a second keep half of it busy.
    let densenet = |name: &str| RegisterModelRequest {
        max_batch: 1,
        profile_model: "densenet121".into(),
        ..register(name, 100.0)
    };
    client.register_model(densenet("a")).await.unwrap();
    client.register_model(register("resnet50", 20.0)).await.unwrap();
    client.register_model(densenet("b")).await.unwrap();
    let gpus_of = |on: &[(String, Vec<u32>, Vec<u64>)], name: &str| on.iter().find(|m| m.0 == name).unwrap().1.clone();
    let on = placement(&mut client).await;
    assert_eq!((gpus_of(&on, "a"), gpus_of(&on, "b"), gpus_of(&on, "resnet50")), (vec![0], vec![0], vec![1]));

    let mut calls = Vec::new();
    let mut moved = None;
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(6) && moved.is_none() {
        for _ in 0..10 {
            calls.push(infer(&client, "a"));
            calls.push(infer(&client, "b"));
            tokio::time::sleep(Duration::from_micros(4300)).await;
        }
        let on = placement(&mut client).await;
        if gpus_of(&on, "a") != gpus_of(&on, "b") {
            moved = Some(on);
        }
    }
    let on = moved.expect("one of the busy models moved to the idle GPU within 6 s");
    assert!(gpus_of(&on, "a") == vec![1] || gpus_of(&on, "b") == vec![1], "{on:?}");
    assert_eq!(gpus_of(&on, "resnet50"), vec![1], "the idle model stays");
    for call in calls {
        let done = call.await.unwrap();
        assert!(done.is_ok(), "a request around the move: {done:?}");
    }
    running.stop().await.unwrap();
}

/// A model the node config places on both GPUs starts as two replicas; a placement on a GPU the
/// node does not have stops the start, naming the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_config_places_its_models() {
    let options = |gpus: Vec<u32>| ServeOptions {
        gpus: vec![0, 1],
        models: vec![register("resnet50", 20.0)],
        placements: vec![("resnet50".into(), gpus)],
        ..ServeOptions::loopback(ServeBackend::Simulated)
    };
    let (running, mut client) = common::serve(options(vec![1, 0])).await;
    assert_eq!(placement(&mut client).await, vec![("resnet50".into(), vec![0, 1], vec![0, 0])]);
    running.stop().await.unwrap();
    let refused = grpc::start(options(vec![2])).await.err().expect("no GPU 2");
    assert!(
        format!("{refused:#}").contains("model resnet50: gpus: invalid argument: gpus: this node has no GPU 2"),
        "{refused:#}"
    );
    // On a node of one GPU, that GPU is the one placement there is, in the config and by RPC.
    let one = |gpus: Vec<u32>| ServeOptions { gpus: vec![0], ..options(gpus) };
    let (running, mut client) = common::serve(one(vec![0])).await;
    let placed = client.place_model(PlaceModelRequest { name: "resnet50".into(), gpus: vec![0] }).await;
    assert_eq!(placed.unwrap().into_inner().gpus, [0]);
    let elsewhere = client.place_model(PlaceModelRequest { name: "resnet50".into(), gpus: vec![1] }).await;
    let status = elsewhere.unwrap_err();
    assert!(status.code() == Code::FailedPrecondition && status.message().contains("serves GPU 0 alone"), "{status:?}");
    let unknown = client.place_model(PlaceModelRequest { name: "nope".into(), gpus: vec![0] }).await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
    running.stop().await.unwrap();
    let refused = grpc::start(one(vec![0, 1])).await.err().expect("one GPU");
    assert!(format!("{refused:#}").contains("this node serves GPU 0 alone"), "{refused:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_period_that_is_not_one_is_refused_by_name() {
    for every_s in [-1.0, f64::NAN, 1e300] {
        let options = ServeOptions {
            controller: LiveConfig { rebalance_every_s: every_s, ..LiveConfig::default() },
            gpus: vec![0, 1],
            ..ServeOptions::loopback(ServeBackend::Simulated)
        };
        let Err(e) = grpc::start(options).await else { panic!("rebalance_every_s = {every_s} must be refused") };
        assert!(format!("{e:#}").contains("rebalance_every_s"), "{every_s}: {e:#}");
    }
}
