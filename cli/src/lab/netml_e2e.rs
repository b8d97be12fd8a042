//! `gpuslice netml-e2e` (on the GPU machine): images sent as UDP packets over loopback, received
//! into the registered packet pool, moved to the GPU by each transfer mode and inferred there by a
//! model worker that reads the batch buffer through CUDA IPC: a request goes from packets to an
//! inference result without its bytes crossing the host again.
//!
//! Two runs per mode:
//! - end to end: a sender keeps `window` images in flight; the receiver forms batches of
//!   `batch` complete images, transfers them and runs the worker. Latency is from the start of
//!   sending an image to its batch's result; images lost (incomplete at the timeout) are counted.
//! - line rate: one image of `line_rate_bytes` sent back to back; latency from its first packet's
//!   arrival until it is on the GPU (arrival of the rest, then the transfer).

use anyhow::{Context, Result, bail};
use gpuslice_gpu::mps::MpsDaemon;
use gpuslice_gpu::worker::{Worker, WorkerSpec, default_script};
use gpuslice_netml::gpu::{GpuTransfer, TransferMode};
use gpuslice_netml::packet::{Envelope, ModelName, PacketHeader};
use gpuslice_netml::reassembly::CompleteImage;
use gpuslice_netml::udp::{Receiver, Sender};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A 224x224x3 fp32 image, as the worker reads it: 588 packets.
const IMAGE_BYTES: usize = 224 * 224 * 3 * 4;
/// The request for image `id` (the lab's receiver reads no model from it).
fn request(id: u64) -> Envelope {
    Envelope::request(id, ModelName::new("netml-e2e").expect("a short name"))
}

/// Incomplete images are dropped this long after their first packet.
const LOSS_TIMEOUT: Duration = Duration::from_millis(200);

pub struct E2eOptions<'a> {
    pub model: &'a str,
    pub batch: u32,
    pub seconds: f64,
    pub window: usize,
    /// Run the worker under MPS at this GPU%; None: no MPS.
    pub gpu_pct: Option<f64>,
    pub line_rate_bytes: usize,
    pub line_rate_repeats: usize,
    pub out: Option<&'a Path>,
}

#[derive(Serialize)]
struct EndToEndRow {
    mode: &'static str,
    model: String,
    batch: u32,
    images: u64,
    lost_images: u64,
    images_per_s: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    transfer_cpu_us_per_batch: f64,
    transfer_ms_mean: f64,
    infer_ms_p50: f64,
}

#[derive(Serialize)]
struct LineRateRow {
    mode: &'static str,
    image_bytes: usize,
    repeats: usize,
    arrival_ms_p50: f64,
    arrival_gbit_per_s: f64,
    transfer_ms_p50: f64,
    first_packet_to_gpu_ms_p50: f64,
    first_packet_to_gpu_ms_max: f64,
    transfer_cpu_us_p50: f64,
}

/// The loopback traffic generator: sends image after image, at most `window` ahead of those the
/// receiver has finished (served or lost), and notes when each started.
struct Traffic {
    stop: Arc<AtomicBool>,
    finished: Arc<AtomicU64>,
    sent_at_ns: Arc<Vec<AtomicU64>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<u64>>>,
}

impl Traffic {
    fn start(sender: Sender, image: Vec<u8>, window: usize, clock: Instant, first_id: u64) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicU64::new(first_id));
        let sent_at_ns: Arc<Vec<AtomicU64>> = Arc::new((0..window * 4).map(|_| AtomicU64::new(0)).collect());
        let (stop2, finished2, sent2) = (stop.clone(), finished.clone(), sent_at_ns.clone());
        let thread = std::thread::spawn(move || -> std::io::Result<u64> {
            let mut id = first_id;
            while !stop2.load(Ordering::Relaxed) {
                if id - finished2.load(Ordering::Acquire) >= window as u64 {
                    std::hint::spin_loop();
                    continue;
                }
                sent2[id as usize % sent2.len()].store(clock.elapsed().as_nanos() as u64, Ordering::Release);
                sender.send(&request(id), &image, |_| true)?;
                id += 1;
            }
            Ok(id)
        });
        Traffic { stop, finished, sent_at_ns, thread: Some(thread) }
    }

    fn sent_at_ns(&self, id: u64) -> u64 {
        self.sent_at_ns[id as usize % self.sent_at_ns.len()].load(Ordering::Acquire)
    }

    fn finish(&self, images: u64) {
        self.finished.fetch_add(images, Ordering::AcqRel);
    }

    /// Stops sending; returns the next image id.
    fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("running");
        Ok(thread.join().map_err(|_| anyhow::anyhow!("sender thread panicked"))??)
    }
}

/// Receives until `complete` holds `n` images or `deadline`; counts images lost meanwhile.
fn receive(
    receiver: &mut Receiver,
    clock: Instant,
    n: usize,
    deadline: Instant,
    complete: &mut Vec<CompleteImage>,
) -> Result<u64> {
    let lost_before = receiver.reassembly().expired_images;
    while complete.len() < n && Instant::now() < deadline {
        receiver.poll(clock.elapsed().as_nanos() as u64, complete)?;
    }
    Ok(receiver.reassembly().expired_images - lost_before)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")
}

fn end_to_end(
    receiver: &mut Receiver,
    gpu: &mut GpuTransfer,
    worker: &mut Worker,
    mode: TransferMode,
    o: &E2eOptions,
    first_id: u64,
) -> Result<(EndToEndRow, u64)> {
    let clock = Instant::now();
    let image: Vec<u8> = (0..IMAGE_BYTES).map(|i| (i % 251) as u8).collect();
    let sender = Sender::new(receiver.local_addr()?)?;
    let traffic = Traffic::start(sender, image, o.window, clock, first_id);
    let (mut latency_us, mut infer_us) = (histogram(), histogram());
    let (mut images, mut lost, mut transfer_cpu, mut transfer_time) = (0u64, 0u64, Duration::ZERO, Duration::ZERO);
    let mut batches = 0u32;
    let mut complete = Vec::new();
    let warmup = Instant::now() + Duration::from_millis(300);
    let deadline = warmup + Duration::from_secs_f64(o.seconds);
    let mut started = None;
    while Instant::now() < deadline {
        let newly_lost = receive(receiver, clock, o.batch as usize, deadline, &mut complete)?;
        traffic.finish(newly_lost);
        if complete.len() < o.batch as usize {
            continue;
        }
        let batch: Vec<CompleteImage> = complete.drain(..o.batch as usize).collect();
        let cost = gpu.transfer(&receiver.pool, &batch, mode)?;
        let times = worker.run(o.batch)?;
        let done_ns = clock.elapsed().as_nanos() as u64;
        let measuring = Instant::now() >= warmup;
        if measuring {
            started.get_or_insert_with(Instant::now);
            for image in &batch {
                latency_us
                    .record((done_ns.saturating_sub(traffic.sent_at_ns(image.envelope.image_id)) / 1000).max(1))?;
            }
            infer_us.record((times.infer_ms * 1000.0) as u64 + 1)?;
            images += batch.len() as u64;
            lost += newly_lost;
            transfer_cpu += cost.cpu;
            transfer_time += cost.latency;
            batches += 1;
        }
        let served = batch.len() as u64;
        batch.into_iter().for_each(|image| receiver.release(image));
        traffic.finish(served);
    }
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    let next_id = traffic.stop()?;
    // Drain what is still on its way, so the next run starts clean.
    let drain_until = Instant::now() + LOSS_TIMEOUT * 2;
    while Instant::now() < drain_until {
        receiver.poll(clock.elapsed().as_nanos() as u64, &mut complete)?;
        complete.drain(..).for_each(|image| receiver.release(image));
    }
    if batches == 0 {
        bail!("{}: no batch completed in {} s (lost {lost} images)", mode.name(), o.seconds);
    }
    let row = EndToEndRow {
        mode: mode.name(),
        model: o.model.to_string(),
        batch: o.batch,
        images,
        lost_images: lost,
        images_per_s: images as f64 / elapsed.as_secs_f64(),
        latency_p50_ms: latency_us.value_at_quantile(0.5) as f64 / 1000.0,
        latency_p99_ms: latency_us.value_at_quantile(0.99) as f64 / 1000.0,
        transfer_cpu_us_per_batch: transfer_cpu.as_secs_f64() * 1e6 / batches as f64,
        transfer_ms_mean: transfer_time.as_secs_f64() * 1e3 / batches as f64,
        infer_ms_p50: infer_us.value_at_quantile(0.5) as f64 / 1000.0,
    };
    Ok((row, next_id))
}

fn line_rate(
    receiver: &mut Receiver,
    gpu: &mut GpuTransfer,
    mode: TransferMode,
    o: &E2eOptions,
    first_id: u64,
) -> Result<(LineRateRow, u64)> {
    let clock = Instant::now();
    let image: Arc<Vec<u8>> = Arc::new((0..o.line_rate_bytes).map(|i| (i % 241) as u8).collect());
    let sender = Arc::new(Sender::new(receiver.local_addr()?)?);
    let (mut arrival_us, mut transfer_us, mut total_us, mut cpu_us) =
        (histogram(), histogram(), histogram(), histogram());
    let mut complete = Vec::new();
    for id in first_id..first_id + o.line_rate_repeats as u64 {
        let (sender, image) = (sender.clone(), image.clone());
        // Back to back from another thread while this one receives.
        let sending = std::thread::spawn(move || sender.send(&request(id), &image, |_| true));
        let lost = receive(receiver, clock, 1, Instant::now() + LOSS_TIMEOUT * 2, &mut complete)?;
        sending.join().map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
        let Some(arrived) = complete.pop() else {
            bail!("{}: a {}-byte image did not arrive whole (lost {lost})", mode.name(), o.line_rate_bytes);
        };
        let arrived_ns = clock.elapsed().as_nanos() as u64;
        let cost = gpu.transfer(&receiver.pool, std::slice::from_ref(&arrived), mode)?;
        let on_gpu_ns = clock.elapsed().as_nanos() as u64;
        arrival_us.record((arrived_ns - arrived.first_seen_ns) / 1000 + 1)?;
        transfer_us.record(cost.latency.as_micros() as u64 + 1)?;
        total_us.record((on_gpu_ns - arrived.first_seen_ns) / 1000 + 1)?;
        cpu_us.record(cost.cpu.as_micros() as u64 + 1)?;
        receiver.release(arrived);
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let row = LineRateRow {
        mode: mode.name(),
        image_bytes: o.line_rate_bytes,
        repeats: o.line_rate_repeats,
        arrival_ms_p50: ms(&arrival_us, 0.5),
        arrival_gbit_per_s: o.line_rate_bytes as f64 * 8.0 / (ms(&arrival_us, 0.5) * 1e-3) / 1e9,
        transfer_ms_p50: ms(&transfer_us, 0.5),
        first_packet_to_gpu_ms_p50: ms(&total_us, 0.5),
        first_packet_to_gpu_ms_max: ms(&total_us, 1.0),
        transfer_cpu_us_p50: cpu_us.value_at_quantile(0.5) as f64,
    };
    Ok((row, first_id + o.line_rate_repeats as u64))
}

pub fn run(o: &E2eOptions) -> Result<()> {
    let packets_per_image = PacketHeader::packet_count(IMAGE_BYTES as u32) as usize;
    // Room for every image in flight twice over, and the receive batch.
    let slots = (o.window * 2 + o.batch as usize) * packets_per_image + 1024;
    let mut receiver =
        Receiver::bind("127.0.0.1:0".parse()?, slots, LOSS_TIMEOUT.as_nanos() as u64).context("UDP receiver")?;
    let capacity = o.batch as usize * IMAGE_BYTES.max(o.line_rate_bytes);
    let max_packets = o.batch as usize * packets_per_image.max(o.line_rate_bytes.div_ceil(1024));
    let mut gpu = GpuTransfer::new(&receiver.pool, capacity, max_packets).context("GPU transfer")?;
    let mps = o.gpu_pct.map(|_| MpsDaemon::start_private(None)).transpose()?;
    let spec = WorkerSpec {
        io: gpuslice_control::tensors::ModelIo::image_classifier(),
        half: true,
        model: o.model.to_string(),
        batches: vec![o.batch],
        script: default_script(),
        env: mps.as_ref().zip(o.gpu_pct).map(|(m, pct)| m.client_env(pct)).unwrap_or_default(),
        fake_ms: None,
        input_ipc: Some(gpu.ipc_handle_hex()?),
        packet_pool: None,
        green_sms: Vec::new(),
        quick_start: false,
    };
    let mut worker = Worker::spawn(&spec).context("worker reading the batch buffer through CUDA IPC")?;
    let (mut end_to_end_rows, mut line_rate_rows) = (Vec::new(), Vec::new());
    let mut next_id = 0;
    for mode in TransferMode::ALL {
        let (row, id) = end_to_end(&mut receiver, &mut gpu, &mut worker, mode, o, next_id)?;
        end_to_end_rows.push(row);
        let (row, id) = line_rate(&mut receiver, &mut gpu, mode, o, id)?;
        line_rate_rows.push(row);
        next_id = id;
    }
    let mut table = gpuslice_eval::output::table(vec![
        "mode",
        "images",
        "lost",
        "img/s",
        "latency p50 ms",
        "latency p99 ms",
        "transfer CPU us/batch",
        "transfer ms",
        "inference p50 ms",
    ]);
    for r in &end_to_end_rows {
        table.add_row(vec![
            r.mode.to_string(),
            r.images.to_string(),
            r.lost_images.to_string(),
            format!("{:.0}", r.images_per_s),
            format!("{:.2}", r.latency_p50_ms),
            format!("{:.2}", r.latency_p99_ms),
            format!("{:.1}", r.transfer_cpu_us_per_batch),
            format!("{:.3}", r.transfer_ms_mean),
            format!("{:.3}", r.infer_ms_p50),
        ]);
    }
    println!(
        "end to end: {} at batch {}, {} images in flight, UDP over loopback, worker reads the batch through CUDA IPC",
        o.model, o.batch, o.window
    );
    println!("{table}");
    let mut table = gpuslice_eval::output::table(vec![
        "mode",
        "arrival ms (p50)",
        "arrival Gbit/s",
        "transfer ms (p50)",
        "first packet to GPU ms (p50)",
        "(max)",
        "transfer CPU us",
    ]);
    for r in &line_rate_rows {
        table.add_row(vec![
            r.mode.to_string(),
            format!("{:.3}", r.arrival_ms_p50),
            format!("{:.1}", r.arrival_gbit_per_s),
            format!("{:.3}", r.transfer_ms_p50),
            format!("{:.3}", r.first_packet_to_gpu_ms_p50),
            format!("{:.3}", r.first_packet_to_gpu_ms_max),
            format!("{:.1}", r.transfer_cpu_us_p50),
        ]);
    }
    println!(
        "line rate: one {}-byte image sent back to back, {} times per mode",
        o.line_rate_bytes, o.line_rate_repeats
    );
    println!("{table}");
    if let Some(dir) = o.out {
        std::fs::create_dir_all(dir)?;
        gpuslice_eval::output::write_csv(&dir.join("netml-e2e.csv"), &end_to_end_rows)?;
        gpuslice_eval::output::write_csv(&dir.join("netml-line-rate.csv"), &line_rate_rows)?;
    }
    Ok(())
}
