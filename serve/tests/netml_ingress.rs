//! The NetML ingress end to end on GPU-less workers (each output element the sum of the
//! request's inputs): `gpuslice_netml::client` sends images as UDP packets to a node's
//! `netml_listen`, with packets lost, duplicated and reordered, while the model is reallocated;
//! every image is answered with its own sum or counted lost, and malformed datagrams are counted.

use gpuslice_netml::client::{Check, Schedule, SendOptions, Target};
use gpuslice_serve::grpc::{self, ServeOptions};
use gpuslice_serve::live::LiveConfig;
use gpuslice_serve::proto::controller_client::ControllerClient;
use gpuslice_serve::proto::register_model_request::Profile;
use gpuslice_serve::proto::*;
use std::time::Duration;

fn register(name: &str) -> RegisterModelRequest {
    RegisterModelRequest {
        name: name.into(),
        slo_ms: 30.0,
        priority: 0,
        max_batch: 16,
        profile: Some(Profile::ProfilePath("builtin:h100-cudagraph".into())),
        profile_model: String::new(),
    }
}

/// The value of `series` (a full Prometheus series name with labels) in /metrics at `address`.
async fn metric(address: std::net::SocketAddr, series: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut http = tokio::net::TcpStream::connect(address).await.unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    http.read_to_string(&mut text).await.unwrap();
    let line =
        text.lines().find(|l| l.starts_with(&format!("{series} "))).unwrap_or_else(|| panic!("{series}: {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn image(model: &str) -> Target {
    Target { model: model.into(), input_bytes: 3 * 224 * 224 * 4, slo_ms: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_image_is_answered_with_its_own_output_or_counted_lost() {
    let serving = gpuslice_serve::live_gpu::GpuServing {
        pool_levels: vec![20.0, 40.0, 60.0],
        fake_ms: Some(1.0),
        worker_script: None,
        device: None,
    };
    let running = grpc::start(ServeOptions {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        netml_listen: Some("127.0.0.1:0".parse().unwrap()),
        controller: LiveConfig { control_interval_s: 0.1, ..LiveConfig::default() },
        models: vec![register("resnet50"), register("vgg16")],
        ..ServeOptions::loopback(grpc::ServeBackend::Gpu(serving))
    })
    .await
    .unwrap();
    let (netml, metrics) = (running.netml.unwrap(), running.metrics.unwrap());
    let mut client = ControllerClient::connect(format!("http://{}", running.grpc)).await.unwrap();
    let send = |options: SendOptions| tokio::task::spawn_blocking(move || gpuslice_netml::client::run(&options));
    let base = SendOptions {
        target: netml,
        models: vec![image("resnet50"), image("vgg16")],
        // A rate the debug build's receive path keeps up with on 2 cores (CI).
        schedule: Schedule::Rate { rate: 120.0, seconds: 2.5 },
        threads: 2,
        top_k: 0,
        check: Check::Sum,
        loss: 0.0,
        duplicate: 0.0,
        reorder: false,
        seed: 7,
    };

    // Clean traffic, the whole output back, while resnet50 is pinned to another level and
    // released (two reallocations mid-stream).
    let clean = send(base.clone());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = client.get_allocation(GetAllocationRequest { name: "resnet50".into() }).await.unwrap().into_inner();
    let level = if before.models[0].allocation.unwrap().gpu_pct == 20.0 { 40.0 } else { 20.0 };
    let pin = Allocation { gpu_pct: level, max_batch: 8, min_batch: 8, batch_timeout_ms: 2.0 };
    client
        .override_allocation(OverrideAllocationRequest {
            name: "resnet50".into(),
            allocation: Some(pin),
            release: false,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pinned = client.get_allocation(GetAllocationRequest { name: "resnet50".into() }).await.unwrap().into_inner();
    assert_eq!(pinned.models[0].allocation.unwrap().gpu_pct, level, "reallocated mid-stream");
    client
        .override_allocation(OverrideAllocationRequest { name: "resnet50".into(), allocation: None, release: true })
        .await
        .unwrap();
    let report = clean.await.unwrap().unwrap();
    // Loopback drops nothing while the socket buffer holds what arrives when the receive thread
    // is not scheduled; a small one (an unprivileged process under a low net.core.rmem_max)
    // may drop a packet, and then its image is lost, not answered wrong.
    let deep =
        gpuslice_netml::udp::Receiver::bind("127.0.0.1:0".parse().unwrap(), 1, 1).unwrap().receive_buffer() >= 10 << 20;
    if !deep {
        eprintln!("note: the socket receive buffer is small here; clean traffic may lose an image");
    }
    for m in &report.models {
        assert!(m.sent > 100, "{m:?}");
        assert_eq!((m.answered + m.lost, m.wrong, m.errors), (m.sent, 0, 0), "{m:?} {:?}", report.first_errors);
        assert!(m.lost == 0 || !deep, "{m:?}");
    }
    // Every image's packets were lent to the worker that served it (the GPU-less worker gathers
    // them on the CPU from the shared pool) and came back: a pool that leaked its slots would run
    // low within a few hundred images here, and its receive threads copy images out from then on.
    let answered: u64 = report.models.iter().map(|m| m.answered).sum();
    assert_eq!(metric(metrics, "gpuslice_netml_total{event=\"lent_to_worker\"}").await, answered as f64);
    assert_eq!(metric(metrics, "gpuslice_netml_total{event=\"copied_on_cpu\"}").await, 0.0);

    // Lost, duplicated and reordered packets, top-5 replies: each image is answered with its
    // own sum or lost (the node counts it expired); none answered wrong.
    let faulty = SendOptions { top_k: 5, loss: 0.0005, duplicate: 0.05, reorder: true, seed: 8, ..base.clone() };
    let expired_before = metric(metrics, "gpuslice_netml_total{event=\"expired_image\"}").await;
    let report = send(faulty).await.unwrap().unwrap();
    let lost: u64 = report.models.iter().map(|m| m.lost).sum();
    for m in &report.models {
        assert_eq!((m.answered + m.lost, m.wrong, m.errors), (m.sent, 0, 0), "{m:?} {:?}", report.first_errors);
        assert_eq!(m.top_class, Some(0), "every class scores the sum: the first wins ties");
    }
    assert!(lost > 0 && lost < report.models.iter().map(|m| m.sent).sum::<u64>() / 2, "about 25% lost: {lost}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expired = metric(metrics, "gpuslice_netml_total{event=\"expired_image\"}").await - expired_before;
    assert_eq!(expired, lost as f64, "each lost image expired at the node");
    assert!(metric(metrics, "gpuslice_netml_total{event=\"duplicate\"}").await > 0.0);

    // Unknown models are refused by an error reply, not silence.
    let unknown = SendOptions {
        models: vec![image("nope")],
        schedule: Schedule::Rate { rate: 50.0, seconds: 0.5 },
        ..base.clone()
    };
    let report = send(unknown).await.unwrap().unwrap();
    assert_eq!(report.models[0].errors, report.models[0].sent);
    assert!(report.first_errors[0].contains("no model named \"nope\""), "{:?}", report.first_errors);

    // Garbage and the first release's version-1 packets are counted, and change nothing else.
    let malformed_before = metric(metrics, "gpuslice_netml_total{event=\"malformed\"}").await;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut version_1 = [0u8; 1044];
    version_1[..3].copy_from_slice(&[0x4d, 0x4e, 1]);
    for garbage in [&b"hello"[..], &[0xff; 1112][..], &version_1[..]] {
        socket.send_to(garbage, netml).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(metric(metrics, "gpuslice_netml_total{event=\"malformed\"}").await - malformed_before, 3.0);
    assert!(metric(metrics, "gpuslice_netml_total{event=\"wrong_version\"}").await >= 1.0);
    // NetML requests count in the model's own metrics like gRPC ones.
    assert!(metric(metrics, "gpuslice_completed_total{model=\"resnet50\"}").await > 100.0);
    running.stop().await.unwrap();
}
