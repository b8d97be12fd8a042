//! `gpuslice netml-bench` (on the GPU machine): the cost of moving batches of packetized images
//! to the GPU by each transfer mode — CPU time per batch and per image, and latency until the
//! completion event — after checking that each mode delivers the images intact.

use anyhow::{Context, Result, ensure};
use gpuslice_netml::gpu::{GpuTransfer, TransferMode, stage_image};
use gpuslice_netml::packet::{Envelope, ModelName};
use gpuslice_netml::pool::PacketPool;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// A 224x224x3 fp32 image: 588 packets.
const IMAGE_BYTES: usize = 224 * 224 * 3 * 4;

#[derive(Serialize)]
struct Row {
    mode: &'static str,
    batch: usize,
    repeats: usize,
    cpu_us_per_batch: f64,
    cpu_us_per_image: f64,
    latency_ms_p50: f64,
    latency_ms_max: f64,
    gb_per_s: f64,
}

pub fn run(batches: &[usize], repeats: usize, out: Option<&Path>) -> Result<()> {
    let largest = batches.iter().copied().max().unwrap_or(1);
    let packets_per_image = IMAGE_BYTES.div_ceil(1024);
    let mut pool = PacketPool::new(largest * packets_per_image).context("packet pool")?;
    let originals: Vec<Vec<u8>> =
        (0..largest).map(|k| (0..IMAGE_BYTES).map(|i| (i.wrapping_mul(31) + k * 7) as u8).collect()).collect();
    let images: Vec<_> = originals
        .iter()
        .enumerate()
        .map(|(k, bytes)| {
            stage_image(
                &mut pool,
                &Envelope::request(k as u64, ModelName::new("netml-bench").expect("a short name")),
                bytes,
            )
            .context("pool too small")
        })
        .collect::<Result<_>>()?;
    let mut gpu =
        GpuTransfer::new(&pool, largest * IMAGE_BYTES, largest * packets_per_image).context("GPU transfer")?;
    let expected: Vec<u8> = originals.concat();
    for mode in TransferMode::ALL {
        gpu.transfer(&pool, &images, mode)?;
        ensure!(
            gpu.read_back(expected.len())? == expected,
            "{}: the batch on the GPU differs from the images sent",
            mode.name()
        );
    }
    let mut rows = Vec::new();
    for &batch in batches {
        for mode in TransferMode::ALL {
            let mut costs: Vec<_> =
                (0..repeats).map(|_| gpu.transfer(&pool, &images[..batch], mode)).collect::<Result<_, _>>()?;
            costs.sort_by_key(|c| c.latency);
            let cpu: Duration = costs.iter().map(|c| c.cpu).sum::<Duration>() / repeats as u32;
            let p50 = costs[costs.len() / 2].latency;
            rows.push(Row {
                mode: mode.name(),
                batch,
                repeats,
                cpu_us_per_batch: cpu.as_secs_f64() * 1e6,
                cpu_us_per_image: cpu.as_secs_f64() * 1e6 / batch as f64,
                latency_ms_p50: p50.as_secs_f64() * 1e3,
                latency_ms_max: costs.last().map_or(0.0, |c| c.latency.as_secs_f64() * 1e3),
                gb_per_s: (batch * IMAGE_BYTES) as f64 / p50.as_secs_f64() / 1e9,
            });
        }
    }
    let mut table = gpuslice_eval::output::table(vec![
        "mode",
        "batch",
        "CPU us/batch",
        "CPU us/image",
        "latency p50 ms",
        "latency max ms",
        "GB/s",
    ]);
    for r in &rows {
        table.add_row(vec![
            r.mode.to_string(),
            r.batch.to_string(),
            format!("{:.1}", r.cpu_us_per_batch),
            format!("{:.1}", r.cpu_us_per_image),
            format!("{:.3}", r.latency_ms_p50),
            format!("{:.3}", r.latency_ms_max),
            format!("{:.1}", r.gb_per_s),
        ]);
    }
    println!(
        "{} images of {IMAGE_BYTES} bytes ({packets_per_image} packets), pool on {}, all modes verified byte for byte",
        largest,
        if pool.hugepages() { "2 MiB hugepages" } else { "ordinary pages" }
    );
    println!("{table}");
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)?;
        gpuslice_eval::output::write_csv(&dir.join("netml.csv"), &rows)?;
    }
    Ok(())
}
