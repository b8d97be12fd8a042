//! The control plane's request validation against hostile fields (a proptest fuzz over one
//! server): RegisterModel, OverrideAllocation and Infer with names, numbers and profiles at and
//! beyond their limits are refused with INVALID_ARGUMENT / NOT_FOUND / FAILED_PRECONDITION or
//! served, never a panic, a hang or an internal error; the server still answers afterwards.
//! `PROPTEST_CASES=10000` runs a longer campaign.

use gpuslice_serve::grpc::{self, ServeOptions};
use gpuslice_serve::proto::controller_client::ControllerClient;
use gpuslice_serve::proto::register_model_request::Profile;
use gpuslice_serve::proto::*;
use proptest::prelude::*;
use tonic::Code;

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => 0.001f64..1000.0,
        1 => prop::sample::select(vec![0.0, -1.0, 1e-300, 1e300, f64::NAN, f64::INFINITY, -f64::INFINITY, 4294967296.0]),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[a-z][a-z0-9_]{0,8}",
        1 => prop::sample::select(vec!["", "total", "a/b", "-h", "x\"} 1\n#", "resnet50", "\u{1b}[31m"]).prop_map(str::to_string),
        1 => ".{0,80}",
    ]
}

fn profile() -> impl Strategy<Value = Option<Profile>> {
    prop_oneof![
        2 => Just(Some(Profile::ProfilePath("builtin:h100-cudagraph".into()))),
        1 => prop::sample::select(vec!["/dev/zero", "/etc/passwd", "../../x.csv", "builtin:nothere", ""])
            .prop_map(|p| Some(Profile::ProfilePath(p.into()))),
        1 => ".{0,200}".prop_map(|csv| Some(Profile::ProfileCsv(csv))),
        1 => Just(None),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    slo_ms: f64,
    max_batch: u32,
    profile: Option<Profile>,
    profile_model: String,
    pin: (f64, u32, u32, f64),
    payload: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (
        name(),
        number(),
        any::<u32>(),
        profile(),
        prop::sample::select(vec!["", "resnet50", "resnet50", "nothere"]),
        (number(), any::<u32>(), any::<u32>(), number()),
        // Mostly none (the server serves zeros), else a row of the wrong size.
        prop_oneof![3 => Just(0usize), 1 => 1usize..4096],
    )
        .prop_map(|(name, slo_ms, max_batch, profile, model, pin, payload)| Case {
            name,
            slo_ms,
            max_batch: max_batch % 80,
            profile,
            profile_model: model.to_string(),
            pin,
            payload,
        })
}

#[test]
fn hostile_requests_are_refused_or_served_never_an_internal_error() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (running, client) = runtime.block_on(async {
        let running = grpc::start(ServeOptions::loopback(grpc::ServeBackend::Simulated)).await.unwrap();
        let client = ControllerClient::connect(format!("http://{}", running.grpc)).await.unwrap();
        (running, client)
    });
    let expected = [Code::Ok, Code::InvalidArgument, Code::NotFound, Code::FailedPrecondition, Code::AlreadyExists];
    // How many cases registered and were served: the fuzz reaches past validation too.
    let served = std::sync::atomic::AtomicUsize::new(0);
    proptest!(ProptestConfig::default(), |(c in case())| {
        let mut client = client.clone();
        let shown = format!("{c:?}");
        let codes = runtime.block_on(async move {
            let limit = std::time::Duration::from_secs(20);
            let register = RegisterModelRequest {
                name: c.name.clone(),
                slo_ms: c.slo_ms,
                priority: 0,
                max_batch: c.max_batch,
                profile: c.profile.clone(),
                profile_model: c.profile_model.clone(),
            };
            let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
            let registered = code(tokio::time::timeout(limit, client.register_model(register)).await.expect("register answers").map(drop));
            let (gpu_pct, max_batch, min_batch, batch_timeout_ms) = c.pin;
            let pin = OverrideAllocationRequest {
                name: c.name.clone(),
                allocation: Some(Allocation { gpu_pct, max_batch, min_batch, batch_timeout_ms }),
                release: false,
            };
            let pinned = code(tokio::time::timeout(limit, client.override_allocation(pin)).await.expect("override answers").map(drop));
            let infer = InferRequest { model: c.name.clone(), payload: vec![0; c.payload] };
            let answer = tokio::time::timeout(limit, client.infer(infer)).await.expect("infer answers");
            let inferred = code(answer.map(drop));
            let _ = client.unregister_model(UnregisterModelRequest { name: c.name.clone() }).await;
            [registered, pinned, inferred]
        });
        if codes[0] == Code::Ok && codes[2] == Code::Ok {
            served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        for code in codes {
            prop_assert!(expected.contains(&code), "{code:?} for {shown}");
        }
    });
    assert!(served.into_inner() > 0, "no case registered and was served");
    // Still serving.
    let mut client = client;
    runtime.block_on(client.list_models(ListModelsRequest {})).unwrap();
    runtime.block_on(running.stop()).unwrap();
}
