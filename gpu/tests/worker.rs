//! The worker protocol against the shipped worker in its GPU-less mode (`--fake-ms`), and MPS
//! detection. The GPU runs of the same worker are in scripts/gpu-test.sh.

use gpuslice_control::ModelSource;
use gpuslice_control::tensors::{DataType, ModelIo, TensorSpec};
use gpuslice_gpu::mps::{MpsDaemon, MpsError};
use gpuslice_gpu::worker::{Worker, WorkerError, WorkerSpec, default_script};

/// A small model: 4 FP32 in, 2 FP32 out per request (the fake worker answers each row's sum).
fn small_io() -> ModelIo {
    let spec = |name: &str, n: i64| TensorSpec { name: name.into(), datatype: DataType::Fp32, dims: vec![n] };
    ModelIo { inputs: vec![spec("x", 4)], outputs: vec![spec("y", 2)] }
}

fn small(name: &str) -> ModelSource {
    ModelSource { program: name.into(), io: small_io(), half: true }
}

/// Rows of `values`, as little-endian FP32 bytes.
fn fp32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn read_fp32(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn fake(model: &str) -> WorkerSpec {
    WorkerSpec {
        model: model.into(),
        io: small_io(),
        half: true,
        batches: vec![1, 2, 4, 8],
        script: default_script(),
        env: Vec::new(),
        fake_ms: Some(2.0),
        input_ipc: None,
        packet_pool: None,
        green_sms: Vec::new(),
        quick_start: false,
    }
}

#[test]
fn batches_go_through_shared_memory_and_come_back_timed() {
    let mut worker = Worker::spawn(&fake("resnet50")).unwrap();
    assert_eq!(worker.batches, vec![1, 2, 4, 8]);
    assert_eq!(worker.row_bytes(), (16, 8));
    worker.input_mut()[..32].copy_from_slice(&fp32(&[1.0, 2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5]));
    let times = worker.run(4).unwrap();
    assert_eq!(read_fp32(&worker.output()[..32]), [10.0, 10.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0], "each row's answer");
    assert_eq!(times.infer_ms, 2.0);
    assert!(times.round_trip.as_secs_f64() * 1e3 >= 2.0);
    for _ in 0..20 {
        worker.run(1).unwrap();
    }
}

/// Rows whose request came as packets are gathered by the worker from the packet pool it maps
/// and answer exactly as the same rows copied in. GPU-less here (the fake worker gathers on the
/// CPU); with GPUSLICE_GPU_TESTS=1 (scripts/gpu-session.sh) a ResNet-18 worker gathers on the GPU.
#[test]
fn rows_gathered_from_the_packet_pool_answer_like_rows_copied_in() {
    use gpuslice_control::input::PacketLayout;
    use gpuslice_netml::packet::{Envelope, HEADER, ModelName, PAYLOAD};
    use gpuslice_netml::pool::{SLOT_BYTES, SharedPools};
    let on_gpu = std::env::var_os("GPUSLICE_GPU_TESTS").is_some();
    let spec = match on_gpu {
        false => fake("resnet50"),
        true => {
            let spec = |name: &str, dims: Vec<i64>| TensorSpec { name: name.into(), datatype: DataType::Fp32, dims };
            let io =
                ModelIo { inputs: vec![spec("input", vec![3, 224, 224])], outputs: vec![spec("output", vec![1000])] };
            WorkerSpec { model: "torchvision:resnet18".into(), io, half: false, fake_ms: None, ..fake("resnet18") }
        }
    };
    // In shared memory, as serve puts it: the CUDA driver page-locks a tmpfs mapping, not one of
    // a file on disk.
    let path = gpuslice_gpu::worker::shared_file_path("test-packet-pools");
    let pools = SharedPools::create(&path, 2, 4096).unwrap();
    let mut pool = pools.pool(1).unwrap();
    let layout = PacketLayout { path, slot_bytes: SLOT_BYTES, header_bytes: HEADER, payload_bytes: PAYLOAD };
    let mut worker = Worker::spawn(&WorkerSpec { packet_pool: Some(layout.clone()), ..spec }).unwrap();
    assert_eq!(worker.packet_pool(), Some(&layout));
    let row = worker.row_bytes().0;
    let image = |k: usize| -> Vec<u8> {
        fp32(&(0..row / 4).map(|i| ((i * 7 + k * 13) % 17) as f32 / 17.0).collect::<Vec<_>>())
    };
    let model = ModelName::new("m").unwrap();
    // Images 0 and 1 copied into rows 0 and 1, and again as packets (in receiver 1's range of
    // the file: slots numbered across it) gathered into rows 2 and 3.
    let slots: Vec<Vec<u32>> = (0..2)
        .map(|k| {
            let staged = gpuslice_netml::gpu::stage_image(&mut pool, &Envelope::request(k, model), &image(k as usize));
            staged.unwrap().slots.iter().map(|&s| pools.global(1, s)).collect()
        })
        .collect();
    assert_eq!(slots[0].len(), layout.packets(row));
    for _ in 0..2 {
        worker
            .submit(4, 0, |input| {
                input[..row].copy_from_slice(&image(0));
                input[row..2 * row].copy_from_slice(&image(1));
                let words: Vec<u8> = slots.iter().flatten().flat_map(|s| s.to_le_bytes()).collect();
                input[2 * row..2 * row + words.len()].copy_from_slice(&words);
                2..4
            })
            .unwrap();
        worker.complete().unwrap();
        let out = read_fp32(&worker.output()[..4 * worker.row_bytes().1]);
        let rows: Vec<&[f32]> = out.chunks(out.len() / 4).collect();
        // Within float noise on the GPU (TF32 convolutions; a row's place in the batch may change
        // a kernel's reduction order), exactly on the CPU. A wrong gather is off by the scale.
        let off = |a: &[f32], b: &[f32]| {
            let scale = a.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
            a.iter().zip(b).map(|(x, y)| (x - y).abs() / scale).fold(0.0f32, f32::max)
        };
        let (off_0, off_1) = (off(rows[0], rows[2]), off(rows[1], rows[3]));
        let between = off(rows[0], rows[1]);
        assert!(off_0 <= 1e-2 && off_1 <= 1e-2, "gathered rows answer as copied: off by {off_0}, {off_1}");
        assert!(between > 10.0 * off_0.max(off_1), "the two images answer apart: {between}");
    }
    let refused = worker.submit(4, 0, |_| 3..5).unwrap_err();
    assert!(matches!(refused, WorkerError::Protocol { .. }), "rows past the batch: {refused}");
}

/// Two batches in flight at once, each in its own shared-memory slot, completed in order; a third
/// waits for a slot, and `run` is refused while batches are in flight.
#[test]
fn a_worker_holds_two_batches_in_their_own_slots() {
    let mut worker = Worker::spawn(&fake("resnet50")).unwrap();
    let first = worker
        .submit(4, 0, |input| {
            input[..16].copy_from_slice(&fp32(&[1.0; 4]));
            0..0
        })
        .unwrap();
    let second = worker
        .submit(8, 0, |input| {
            input[..16].copy_from_slice(&fp32(&[2.0; 4]));
            0..0
        })
        .unwrap();
    assert_ne!(first, second);
    assert_eq!(worker.in_flight(), 2);
    let err = worker.submit(1, 0, |_| 0..0).unwrap_err();
    assert!(matches!(err, WorkerError::Full { .. }), "{err}");
    assert!(worker.run(1).is_err(), "run needs an idle worker");
    let a = worker.complete().unwrap();
    let b = worker.complete().unwrap();
    assert_eq!((a.slot, b.slot), (first, second), "completed in the order handed over");
    assert!(b.done >= a.done && b.times.round_trip.as_secs_f64() * 1e3 >= 4.0, "the second waited for the first");
    assert_eq!(read_fp32(&worker.output_of(first)[..8]), [4.0, 4.0], "each batch in its own slot");
    assert_eq!(read_fp32(&worker.output_of(second)[..8]), [8.0, 8.0]);
    assert_eq!(worker.in_flight(), 0);
    assert!(worker.try_complete().unwrap().is_none(), "nothing in flight");
    worker.run(1).unwrap();
}

#[test]
fn a_batch_without_a_graph_and_a_dead_worker_are_clear_errors() {
    let mut worker = Worker::spawn(&fake("vgg16")).unwrap();
    let err = worker.run(3).unwrap_err();
    assert!(matches!(err, WorkerError::Batch { batch: 3, .. }), "{err}");
    std::process::Command::new("kill").args(["-9", &worker.pid().to_string()]).status().unwrap();
    let err = worker.run(1).unwrap_err();
    assert!(matches!(err, WorkerError::Died { .. }), "{err}");
    assert!(err.to_string().starts_with("worker for vgg16 died"), "{err}");
}

/// A worker with green contexts names the partition each batch runs on; an unknown one is refused
/// before anything is sent.
#[test]
fn batches_name_their_green_context() {
    let mut worker = Worker::spawn(&WorkerSpec { green_sms: vec![40, 80], ..fake("resnet50") }).unwrap();
    assert_eq!(worker.green_sms, vec![40, 80]);
    worker.run_on(4, 1).unwrap();
    worker.run_on(4, 0).unwrap();
    let err = worker.run_on(4, 2).unwrap_err();
    assert!(matches!(err, WorkerError::Context { context: 2, .. }), "{err}");
    worker.run(1).unwrap();
}

#[test]
fn a_worker_that_cannot_start_says_which_model() {
    let spec = WorkerSpec { script: "/nonexistent/worker.py".into(), ..fake("densenet121") };
    let err = Worker::spawn(&spec).err().unwrap();
    assert!(err.to_string().starts_with("worker for densenet121 died"), "{err}");
}

#[test]
fn mps_is_started_or_reported_missing() {
    let dir = std::env::temp_dir().join(format!("gpuslice-mps-test-{}", std::process::id()));
    match MpsDaemon::start(&dir, None) {
        Err(MpsError::NotInstalled) => eprintln!("skipped: MPS is not installed on this machine"),
        Err(e) => panic!("MPS failed to start: {e}"),
        Ok(daemon) => {
            let env = daemon.client_env(35.0);
            assert!(env.iter().any(|(k, v)| k == "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" && v == "35"));
        }
    }
}

/// The GPU backend's serving logic on GPU-less workers: queues, batching, intervals, and a standby
/// reallocation in the middle, with nothing lost.
#[test]
fn the_gpu_backend_serves_and_reallocates_without_losing_requests() {
    use gpuslice_control::Backend;
    use gpuslice_simulator::Allocation;
    let mut backend =
        fake_backend(vec![loaded("a", 40.0, 300.0, 1.5, 1), loaded("b", 40.0, 300.0, 1.5, 2)], Vec::new(), 250);
    let mut intervals = 0;
    while let Some(observed) = backend.next_interval() {
        intervals += 1;
        assert_eq!(observed.len(), 2);
        if intervals == 2 {
            let bigger = Allocation { gpu_pct: 55.0, max_batch: 16, min_batch: 16, batch_timeout_ms: 2.0 };
            backend.apply(0, bigger).unwrap();
            let too_big = Allocation { gpu_pct: 70.0, ..bigger };
            assert!(backend.apply(1, too_big).is_err(), "55 + 70 > 100");
        }
        assert!(
            intervals < 40,
            "the run ends: {:?}",
            observed.iter().map(|o| (o.summary.arrivals, o.summary.completed, o.queue_len)).collect::<Vec<_>>()
        );
    }
    let report = backend.report();
    for m in &report.models {
        let s = &m.summary;
        assert!(s.arrivals > 300, "{}: {} arrivals", m.model, s.arrivals);
        assert_eq!(s.completed, s.arrivals, "{}: every request served", m.model);
        assert!(s.p50_ms >= 2.0, "a batch takes the worker's 2 ms");
    }
    assert_eq!(report.models[0].reallocations, 1);
    assert_eq!(report.models[0].allocation.gpu_pct, 55.0);
}

/// Batches sent at `min_batch` queued take a size the worker has a graph of (as Triton sends its
/// largest preferred size), so the GPU time goes to requests, not padding: the graphs run hold
/// as many rows as the requests served.
#[test]
fn batches_sent_early_are_cut_to_a_graphs_size() {
    use gpuslice_control::Backend;
    use gpuslice_simulator::Allocation;
    // 3 requests a millisecond against 2 ms a batch: 4-12 queued when the worker frees.
    let mut setup = loaded("a", 40.0, 3000.0, 1.0, 6);
    setup.allocation = Allocation { gpu_pct: 40.0, max_batch: 32, min_batch: 4, batch_timeout_ms: 50.0 };
    let mut backend = fake_backend(vec![setup], Vec::new(), 100);
    let (mut graph_rows, mut batches) = (0u64, 0u64);
    while let Some(observed) = backend.next_interval() {
        graph_rows += observed[0].batches.iter().map(|b| u64::from(b.size)).sum::<u64>();
        batches += observed[0].batches.len() as u64;
    }
    let s = &backend.report().models[0].summary;
    assert_eq!(s.completed, s.arrivals, "every request served");
    let requests_per_batch = s.mean_batch;
    let graph_per_batch = graph_rows as f64 / batches as f64;
    assert!(requests_per_batch > 4.5, "batches took more than min_batch: {requests_per_batch}");
    // Only a batch that timed out (none at this rate) or the run's last may be padded.
    assert!(
        graph_per_batch - requests_per_batch < 0.05,
        "graphs of {graph_per_batch} rows a batch for {requests_per_batch} requests"
    );
}

/// With a standby pool, a reallocation switches at once to the worker at the level above the
/// asked GPU% when the GPU has room for it, else to the one below.
#[test]
fn a_standby_pool_switches_levels_at_once() {
    use gpuslice_control::Backend;
    use gpuslice_simulator::Allocation;
    let mut backend = fake_backend(vec![loaded("a", 35.0, 200.0, 1.0, 3)], vec![20.0, 30.0, 60.0], 200);
    let first = backend.next_interval().unwrap();
    assert_eq!(first[0].allocation.gpu_pct, 30.0, "35% is served by the 30% worker");
    backend.apply(0, Allocation { gpu_pct: 70.0, max_batch: 8, min_batch: 8, batch_timeout_ms: 2.0 }).unwrap();
    let second = backend.next_interval().unwrap();
    assert_eq!(second[0].allocation.gpu_pct, 60.0, "no level at or above 70%: the one below");
    assert!(second[0].batches.iter().any(|b| b.gpu_pct == 60.0), "batches already run on the 60% worker");
    backend.apply(0, Allocation { gpu_pct: 25.0, max_batch: 8, min_batch: 8, batch_timeout_ms: 2.0 }).unwrap();
    let third = backend.next_interval().unwrap();
    assert_eq!(third[0].allocation.gpu_pct, 30.0, "25% asked, the GPU has room: the 30% worker");
    while backend.next_interval().is_some() {}
    let report = backend.report();
    assert_eq!(report.models[0].summary.completed, report.models[0].summary.arrivals);
}

/// With a 100% level in the pool, the backend switches between slices and default MPS by
/// moving every model to its whole-GPU worker and back to its slice, without losing a request;
/// a batching change under default MPS applies at once and the slice asked for waits for the
/// switch back.
#[test]
fn a_pool_with_a_whole_gpu_level_switches_between_slices_and_default_mps() {
    use gpuslice_control::Backend;
    use gpuslice_simulator::{Allocation, Sharing};
    let setups = vec![loaded("a", 45.0, 200.0, 1.2, 3), loaded("b", 45.0, 200.0, 1.2, 4)];
    let mut backend = fake_backend(setups, vec![20.0, 30.0, 45.0, 100.0], 200);
    let pct = |i: &[gpuslice_simulator::ModelInterval]| i.iter().map(|m| m.allocation.gpu_pct).collect::<Vec<_>>();
    assert_eq!(pct(&backend.next_interval().unwrap()), vec![45.0, 45.0]);
    backend.set_sharing(Sharing::DefaultMps).unwrap();
    backend.apply(0, Allocation { gpu_pct: 20.0, max_batch: 4, min_batch: 4, batch_timeout_ms: 1.0 }).unwrap();
    let shared = backend.next_interval().unwrap();
    assert_eq!(pct(&shared), vec![100.0, 100.0], "every model on its whole-GPU worker");
    assert_eq!(shared[0].allocation.max_batch, 4, "the batching applies under default MPS");
    assert!(shared.iter().all(|m| m.batches.iter().any(|b| b.gpu_pct == 100.0)), "batches ran at 100%");
    backend.set_sharing(Sharing::Spatial).unwrap();
    let back = backend.next_interval().unwrap();
    assert_eq!(pct(&back), vec![20.0, 45.0], "back to the slice asked for under default MPS, and b's own");
    assert!(backend.set_sharing(Sharing::Temporal).unwrap_err().to_string().contains("temporal"));
    while backend.next_interval().is_some() {}
    let report = backend.report();
    for m in &report.models {
        assert_eq!(m.summary.completed, m.summary.arrivals, "{}: every request answered", m.model);
    }
}

/// Requests submitted one at a time (the gRPC plane's way) are each answered under their ticket;
/// a model added later serves too; a retired one takes no more but serves what it accepted; a
/// worker killed while it holds requests is replaced and they are answered.
#[test]
fn submitted_requests_are_answered_and_a_dead_worker_is_replaced_losing_none() {
    use std::collections::HashSet;
    use std::time::{Duration, Instant};
    let mut backend = fake_backend(Vec::new(), Vec::new(), 100);
    let open = submitted;
    // A unique name, so the test can find this worker's process among others running at once.
    let doomed_name = format!("doomed-{}", std::process::id());
    let kept = backend.add_model(open("kept"), backend.starter().start(&small("kept"), 40.0).unwrap()).unwrap();
    let doomed =
        backend.add_model(open(&doomed_name), backend.starter().start(&small(&doomed_name), 40.0).unwrap()).unwrap();
    assert!(
        backend.add_model(open("third"), backend.starter().start(&small("third"), 40.0).unwrap()).is_err(),
        "40 + 40 + 40 > 100"
    );

    // Request k sends [k, k, k, k]: its answer is 4k in both outputs, whatever batch it rode in.
    let mut tickets: std::collections::HashMap<u64, f32> = (0..20)
        .map(|k| {
            let input = bytes::Bytes::from(fp32(&[k as f32; 4]));
            (backend.submit(kept, Some(input.into())).unwrap(), 4.0 * k as f32)
        })
        .collect();
    let wrong = backend.submit(kept, Some(bytes::Bytes::from(fp32(&[1.0; 3])).into())).unwrap_err().to_string();
    assert!(wrong.contains("16 bytes, 12 given"), "{wrong}");
    let (mut answered, deadline) = (0, Instant::now() + Duration::from_secs(10));
    while !tickets.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        let (done, dropped) = backend.take_answered();
        assert!(dropped.is_empty());
        for a in done {
            let r = a.record;
            let expected = tickets.remove(&r.ticket).unwrap_or_else(|| panic!("ticket {} answered once", r.ticket));
            assert_eq!(read_fp32(&a.computed.output), [expected, expected], "ticket {} got its own answer", r.ticket);
            assert!(r.batch_size >= 1 && r.batch_size <= 4 && r.end_ns >= r.start_ns + 2_000_000);
            answered += 1;
        }
    }
    assert_eq!(answered, 20, "every submitted request answered");

    // Kill the doomed model's worker while it holds requests: they are retried on its
    // replacement and answered; the model keeps taking requests.
    let worker = |name: &str| worker_pids(name).first().copied();
    let mut pending: HashSet<u64> = (0..5).map(|_| backend.submit(doomed, None).unwrap()).collect();
    let pid = worker(&doomed_name).expect("the doomed worker's process");
    signal("-KILL", pid);
    pending.extend((0..5).map(|_| backend.submit(doomed, None).unwrap()));
    let accepted = pending.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pending.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        let (done, dropped) = backend.take_finished();
        assert!(dropped.is_empty(), "requests held by a dead worker are retried, not dropped: {dropped:?}");
        for r in done {
            assert!(pending.remove(&r.ticket));
        }
    }
    assert!(pending.is_empty(), "every request answered after the kill: {pending:?} left");
    assert!(worker(&doomed_name).is_some_and(|p| p != pid), "a replacement worker runs");

    backend.retire_model(kept).unwrap();
    assert!(backend.submit(kept, None).is_err(), "a retired model takes no requests");
    let report = gpuslice_control::Backend::report(&mut backend);
    assert_eq!(report.models[0].summary.completed, 20);
    assert_eq!(report.models[1].summary.completed, accepted);
    assert_eq!(report.models[1].summary.dropped, 0);
}

/// A share reserved for a model about to join is left free by the others' reallocations, until the
/// reservation ends.
#[test]
fn a_reserved_share_is_left_free_by_reallocations() {
    use gpuslice_control::Backend;
    use gpuslice_gpu::serving::{GpuBackend, GpuModelSetup, WorkerStarter, WorkerTemplate};
    use gpuslice_simulator::{Allocation, Sharing};
    use std::time::Duration;
    let template = WorkerTemplate {
        script: default_script(),
        fake_ms: Some(2.0),
        pool_levels: vec![20.0, 30.0, 45.0, 60.0],
        packet_pool: None,
        device: None,
    };
    let setup = GpuModelSetup {
        name: "a".into(),
        source: small("a"),
        slo_ms: 50.0,
        allocation: Allocation { gpu_pct: 60.0, max_batch: 8, min_batch: 8, batch_timeout_ms: 2.0 },
        arrivals: None,
    };
    let mut backend = GpuBackend::start(
        vec![setup],
        Duration::from_millis(100),
        None,
        WorkerStarter::new(template, None),
        Sharing::Spatial,
    )
    .unwrap();
    let asked = Allocation { gpu_pct: 33.0, max_batch: 8, min_batch: 8, batch_timeout_ms: 2.0 };
    backend.reserve(60.0);
    backend.apply(0, asked).unwrap();
    assert_eq!(backend.allocation(0).unwrap().gpu_pct, 30.0, "45 would eat into the reserved 60%");
    backend.reserve(0.0);
    backend.apply(0, asked).unwrap();
    assert_eq!(backend.allocation(0).unwrap().gpu_pct, 45.0, "no reservation: the level above");
    backend.retire_model(0).unwrap();
}

/// The Python processes whose command line has `name` as an argument (a test's unique model
/// name). Python only: a launcher such as pyenv's shim forks shells that carry the same
/// arguments for a moment, and killing one of those kills no worker.
fn worker_pids(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("python"))
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).split('\0').any(|arg| arg == name))
        })
        .collect()
}

fn signal(signal: &str, pid: u32) {
    assert!(std::process::Command::new("kill").args([signal, &pid.to_string()]).status().unwrap().success());
}

/// Runs model `name` at 300 requests/s for 3 s on GPU-less workers (pool `levels`), doing
/// `fault` to its workers' pids once 0.8 s have passed; returns the report and, per interval
/// after the fault, (seconds since it, batches completed).
fn serve_through_a_fault(
    name: &str,
    levels: Vec<f64>,
    fault: impl Fn(&[u32]),
) -> (gpuslice_simulator::Report, Vec<(f64, u64)>) {
    use gpuslice_control::Backend;
    use std::time::{Duration, Instant};
    let mut backend = fake_backend(vec![loaded(name, 30.0, 300.0, 3.0, 5)], levels, 100);
    let started = Instant::now();
    let (mut faulted, mut after) = (None, Vec::new());
    while let Some(intervals) = backend.next_interval() {
        match faulted {
            None if started.elapsed() > Duration::from_millis(800) => {
                fault(&worker_pids(name));
                faulted = Some(Instant::now());
            }
            Some(at) => after.push((at.elapsed().as_secs_f64(), intervals[0].batches.len() as u64)),
            None => {}
        }
    }
    (backend.report(), after)
}

/// Every worker of a model killed at once under load (supervision, issue 17): each is replaced,
/// the model serves again within 5 s, and every request is answered: served, or dropped (the
/// submitter told) when the worker it was retried on had died too, at most a batch of them.
#[test]
fn workers_killed_under_load_are_replaced_and_every_request_answered() {
    let name = format!("killed-{}", std::process::id());
    let (report, after) = serve_through_a_fault(&name, vec![30.0, 60.0], |pids| {
        assert_eq!(pids.len(), 2, "one worker per pool level");
        pids.iter().for_each(|pid| signal("-KILL", *pid));
    });
    let m = &report.models[0].summary;
    assert_eq!(m.completed + m.dropped, m.arrivals, "every request answered");
    assert!(m.dropped <= 2 * 8, "only what two dead workers held in turn: {} dropped", m.dropped);
    let back = after.iter().find(|(_, batches)| *batches > 0).map(|(s, _)| *s);
    assert!(back.is_some_and(|s| s < 5.0), "serving again within 5 s: {after:?}");
    assert_eq!(worker_pids(&name).len(), 0, "the replacements exit with the backend");
}

/// A worker that stops answering (SIGSTOP) is taken as hung after `HUNG_AFTER_SLOS` times the
/// SLO, replaced, and the requests it held are answered by the replacement.
#[test]
fn a_worker_that_stops_answering_is_replaced() {
    let name = format!("stopped-{}", std::process::id());
    let (report, after) = serve_through_a_fault(&name, Vec::new(), |pids| signal("-STOP", pids[0]));
    let m = &report.models[0].summary;
    assert_eq!((m.completed, m.dropped), (m.arrivals, 0), "every request answered");
    let back = after.iter().find(|(_, batches)| *batches > 0).map(|(s, _)| *s);
    assert!(back.is_some_and(|s| s < 5.0), "serving again within 5 s: {after:?}");
}

/// A model whose workers keep dying is marked failed after `MAX_WORKER_FAILURES`: what it holds
/// comes back dropped (never hung), and it refuses new requests with the reason.
#[test]
fn a_model_whose_workers_keep_dying_is_marked_failed() {
    use gpuslice_gpu::serving::MAX_WORKER_FAILURES;
    use std::collections::HashSet;
    use std::time::{Duration, Instant};
    let name = format!("crashing-{}", std::process::id());
    let mut backend = fake_backend(Vec::new(), Vec::new(), 100);
    let model = backend.add_model(submitted(&name), backend.starter().start(&small(&name), 40.0).unwrap()).unwrap();
    let mut tickets = HashSet::new();
    let mut killed = HashSet::new();
    for _ in 0..MAX_WORKER_FAILURES {
        // The next worker (the first, or the replacement of the one killed last).
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            match worker_pids(&name).into_iter().find(|p| !killed.contains(p)) {
                Some(pid) => break pid,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                None => panic!("no replacement worker within 10 s"),
            }
        };
        tickets.extend((0..3).filter_map(|_| backend.submit(model, None).ok()));
        signal("-KILL", pid);
        killed.insert(pid);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match backend.submit(model, None) {
            Err(e) => break e.to_string(),
            Ok(t) if Instant::now() < deadline => {
                tickets.insert(t);
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(_) => panic!(
                "still accepting 10 s after the last kill: {} worker failures counted, workers now {:?}, killed {killed:?}",
                gpuslice_control::Backend::report(&mut backend).models[model].worker_failures,
                worker_pids(&name)
            ),
        }
    };
    assert!(refused.contains("worker failures"), "{refused}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tickets.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        let (done, dropped) = backend.take_finished();
        for t in done.iter().map(|r| r.ticket).chain(dropped) {
            assert!(tickets.remove(&t), "ticket {t} finished once");
        }
    }
    assert!(tickets.is_empty(), "every accepted request answered or dropped: {tickets:?}");
}

/// Model `name` on GPU-less workers at `gpu_pct`% (batches of 8, 2 ms), fed `rate` requests/s
/// for `seconds`.
fn loaded(name: &str, gpu_pct: f64, rate: f64, seconds: f64, seed: u64) -> gpuslice_gpu::serving::GpuModelSetup {
    use gpuslice_traces::arrivals::{ModulatedRenewal, RateSchedule};
    gpuslice_gpu::serving::GpuModelSetup {
        name: name.into(),
        source: small(name),
        slo_ms: 50.0,
        allocation: gpuslice_simulator::Allocation { gpu_pct, max_batch: 8, min_batch: 8, batch_timeout_ms: 2.0 },
        arrivals: Some(Box::new(
            ModulatedRenewal::new(RateSchedule::constant(rate, Some(seconds)).unwrap(), 1.0, seed).unwrap(),
        )),
    }
}

/// The GPU backend on GPU-less workers (2 ms a batch) with this standby pool, sliced.
/// Model `name` on GPU-less workers, fed by `submit`, at 40% with batches of up to 4.
fn submitted(name: &str) -> gpuslice_gpu::serving::GpuModelSetup {
    gpuslice_gpu::serving::GpuModelSetup {
        name: name.into(),
        source: small(name),
        slo_ms: 50.0,
        allocation: gpuslice_simulator::Allocation { gpu_pct: 40.0, max_batch: 4, min_batch: 4, batch_timeout_ms: 1.0 },
        arrivals: None,
    }
}

fn fake_backend(
    setups: Vec<gpuslice_gpu::serving::GpuModelSetup>,
    pool_levels: Vec<f64>,
    interval_ms: u64,
) -> gpuslice_gpu::serving::GpuBackend {
    use gpuslice_gpu::serving::{GpuBackend, WorkerStarter, WorkerTemplate};
    let template =
        WorkerTemplate { script: default_script(), fake_ms: Some(2.0), pool_levels, packet_pool: None, device: None };
    let interval = std::time::Duration::from_millis(interval_ms);
    GpuBackend::start(setups, interval, None, WorkerStarter::new(template, None), gpuslice_simulator::Sharing::Spatial)
        .unwrap()
}

#[test]
fn a_workers_shared_files_are_private_to_this_user() {
    use std::os::unix::fs::PermissionsExt;
    let _worker = Worker::spawn(&fake("resnet50")).unwrap();
    let ours = format!("gpuslice-{}-", std::process::id());
    let dirs = [std::path::PathBuf::from("/dev/shm"), std::env::temp_dir()];
    let files: Vec<_> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&ours))
        .collect();
    assert!(files.len() >= 2, "the shared-memory file and the stderr file");
    for file in files {
        let mode = file.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.path().display());
    }
}

#[test]
fn files_left_by_a_gone_process_are_removed_and_a_running_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    // Above Linux's largest pid (2^22): no such process.
    let gone = dir.path().join("gpuslice-4194305-0");
    let running = dir.path().join(format!("gpuslice-{}-999999", std::process::id()));
    let other = dir.path().join("someone-else-1");
    for path in [&gone, &running, &other] {
        std::fs::write(path, b"x").unwrap();
    }
    assert_eq!(gpuslice_gpu::worker::remove_stale_files(dir.path()), 1);
    assert!(!gone.exists() && running.exists() && other.exists());
}

#[test]
fn a_model_serves_on_a_quick_first_worker_while_the_pool_starts_behind_it() {
    use gpuslice_control::LiveBackend;
    use gpuslice_simulator::Allocation;
    use std::collections::HashSet;
    use std::time::{Duration, Instant};
    let name = format!("first-level-{}", std::process::id());
    let quick = |name: &str| {
        worker_pids(name)
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).split('\0').any(|arg| arg == "--quick-start"))
            })
            .count()
    };
    let mut backend = fake_backend(Vec::new(), vec![20.0, 40.0, 60.0], 100);
    let workers = backend.starter().start_first(&small(&name), 40.0).unwrap();
    assert_eq!((worker_pids(&name).len(), quick(&name)), (1, 1), "one quick-start worker before the model serves");
    let model = backend.add_model(submitted(&name), workers).unwrap();
    // Requests keep coming while every level's full worker comes up behind it and the one at
    // its level takes over from the quick one, which is then retired.
    let mut tickets: HashSet<u64> = HashSet::new();
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker_pids(&name).len() != 3 || quick(&name) != 0 {
        assert!(
            Instant::now() < deadline,
            "pool not settled within 30 s: {} workers, {} quick",
            worker_pids(&name).len(),
            quick(&name)
        );
        tickets.extend((0..3).map(|_| backend.submit(model, None).unwrap()));
        std::thread::sleep(Duration::from_millis(10));
        let (done, dropped) = backend.take_answered();
        assert!(dropped.is_empty(), "dropped {dropped:?}");
        for a in done {
            assert!(tickets.remove(&a.record.ticket), "ticket {} answered once", a.record.ticket);
            answered += 1;
        }
    }
    assert!(answered > 0, "nothing served before the pool was up");
    // A move to another level is served too.
    backend
        .set_allocation(model, Allocation { gpu_pct: 60.0, max_batch: 4, min_batch: 4, batch_timeout_ms: 1.0 })
        .unwrap();
    tickets.extend((0..30).map(|_| backend.submit(model, None).unwrap()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tickets.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        let (done, dropped) = backend.take_answered();
        assert!(dropped.is_empty(), "dropped {dropped:?}");
        for a in done {
            assert!(tickets.remove(&a.record.ticket), "ticket {} answered once", a.record.ticket);
        }
    }
    assert!(tickets.is_empty(), "{} requests unanswered", tickets.len());
    assert_eq!((worker_pids(&name).len(), quick(&name)), (3, 0), "no worker lost on the way");
}

/// Models added and retired for many cycles (as a node whose models come and go) leave nothing
/// behind: their worker processes exit and their shared-memory and stderr files go.
#[test]
fn models_added_and_retired_for_many_cycles_leave_no_process_or_file() {
    use std::time::{Duration, Instant};
    let ours = format!("gpuslice-{}-", std::process::id());
    let our_files = || {
        [std::path::PathBuf::from("/dev/shm"), std::env::temp_dir()]
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&ours))
            .count()
    };
    let mut backend = fake_backend(Vec::new(), vec![40.0], 100);
    let before = our_files();
    let names: Vec<String> = (0..30).map(|i| format!("churn-{}-{i}", std::process::id())).collect();
    for name in &names {
        let workers = backend.starter().start_first(&small(name), 40.0).unwrap();
        let model = backend.add_model(submitted(name), workers).unwrap();
        let mut waiting: std::collections::HashSet<u64> =
            (0..5).map(|_| backend.submit(model, None).unwrap()).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !waiting.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            for a in backend.take_answered().0 {
                waiting.remove(&a.record.ticket);
            }
        }
        assert!(waiting.is_empty(), "{name}: {} requests unanswered", waiting.len());
        backend.retire_model(model).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while names.iter().any(|n| !worker_pids(n).is_empty()) || our_files() > before {
        assert!(
            Instant::now() < deadline,
            "left behind: {} files, workers of {:?}",
            our_files() - before,
            names.iter().filter(|n| !worker_pids(n).is_empty()).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
