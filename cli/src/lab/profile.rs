//! `gpuslice profile` (on the GPU machine): measures each model's batch latency over a grid of
//! GPU% (MPS) and batch sizes through the GPU backend's worker, and models running together.
//!
//! The grid is measured one worker at a time on a quiet GPU and written in the calibration
//! schema of shared/calibration (`engine,model,dtype,gpu_pct,sms,batch,p50_ms,p99_ms,mean_ms,
//! imgs_per_s`), which `gpuslice fit`, `calibrate` and the simulator read. A model's workers for
//! every GPU% are started together (their start-up is mostly Python and graph capture) and then
//! measured in turn; the file is rewritten after each model, so a cut-off run keeps what it had.
//!
//! Co-location groups (`A:PCT[:B]+B:PCT[:B]`) go to a second file, one row per model of a group
//! (see `ColocationRow`): each model's GPU time while the group runs closed loop together, and the
//! same worker's GPU time alone just before, so the inflation is measured on one process.

use crate::lab::colocate::{LoopResult, Placement, group_label, run_together, spawn_all, worker_spec};
use anyhow::{Context, Result};
use gpuslice_gpu::mps::MpsDaemon;
use gpuslice_gpu::worker::Worker;
use gpuslice_traces::colocation::ColocationRow;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

#[derive(Serialize)]
struct Row {
    engine: String,
    model: String,
    dtype: &'static str,
    gpu_pct: f64,
    sms: u32,
    batch: u32,
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    imgs_per_s: f64,
}

pub struct ProfileOptions<'a> {
    pub models: &'a [String],
    pub gpu_pcts: &'a [f64],
    pub batches: &'a [u32],
    pub repeats: usize,
    /// Seconds of back-to-back batches before a model's first point, so the first points do not
    /// see a GPU coming out of idle. (It did not remove the first-level slowdown of the old
    /// sequential grid; measuring the levels in turns did.)
    pub warmup_s: f64,
    pub out: &'a Path,
    /// Co-location groups, and how long each runs together.
    pub colocate: &'a [String],
    pub colocate_batch: u32,
    pub colocate_seconds: f64,
    pub colocation_out: &'a Path,
    /// GPU-less workers taking this long per batch (tests).
    pub fake_ms: Option<f64>,
    /// Where `models` are looked up (their files, tensors and precision) before torchvision.
    pub repository: Option<&'a gpuslice_serve::repository::Repository>,
}

fn progress(len: u64, what: &str) -> ProgressBar {
    ProgressBar::new(len).with_style(
        ProgressStyle::with_template(&format!("{{msg}} [{{bar:40}}] {{pos}}/{{len}} {what}, {{elapsed}}, eta {{eta}}"))
            .expect("template")
            .progress_chars("=> "),
    )
}

pub fn run(o: ProfileOptions) -> Result<()> {
    let groups: Vec<Vec<Placement>> = o
        .colocate
        .iter()
        .map(|g| Placement::parse_group(g, o.colocate_batch).with_context(|| format!("--colocate {g:?}")))
        .collect::<Result<_>>()?;
    let mps = match o.fake_ms {
        Some(_) => None,
        None => Some(MpsDaemon::start_private(None)?),
    };
    if !o.models.is_empty() {
        profile_grid(&o, mps.as_ref())?;
    }
    if !groups.is_empty() {
        profile_groups(&o, &groups, mps.as_ref())?;
    }
    Ok(())
}

fn write_rows<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    gpuslice_eval::output::write_csv(path, rows)
}

/// Turns each GPU% level's replays are split into (per batch size).
const GRID_TURNS: usize = 10;

fn profile_grid(o: &ProfileOptions, mps: Option<&MpsDaemon>) -> Result<()> {
    let bar = progress((o.models.len() * o.gpu_pcts.len() * o.batches.len()) as u64, "points");
    let mut rows = Vec::new();
    for model in o.models {
        bar.set_message(format!("{model}: starting {} workers", o.gpu_pcts.len()));
        // A repository model runs its own file, tensors and precision; others are torchvision's.
        let source = match o.repository.filter(|r| r.names().is_ok_and(|n| n.contains(model))) {
            Some(repository) => Some(repository.spec(model).map_err(|e| anyhow::anyhow!(e))?.source),
            None => None,
        };
        let specs: Vec<_> = o
            .gpu_pcts
            .iter()
            .map(|&gpu_pct| {
                let placement = Placement { model: model.clone(), gpu_pct, batch: 1 };
                let mut spec = worker_spec(&placement, o.batches.to_vec(), mps, o.fake_ms);
                if let Some(source) = &source {
                    (spec.model, spec.io, spec.half) = (source.program.clone(), source.io.clone(), source.half);
                }
                spec
            })
            .collect();
        let dtype = if source.as_ref().is_none_or(|s| s.half) { "fp16" } else { "fp32" };
        let mut workers = spawn_all(&specs)?;
        if let (Some(first), Some(&largest)) = (workers.first_mut(), o.batches.iter().max()) {
            bar.set_message(format!("{model}: warming the GPU up for {} s", o.warmup_s));
            let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(o.warmup_s);
            while std::time::Instant::now() < until {
                first.run(largest)?;
            }
        }
        // Every GPU% is measured in turns, all its workers alive throughout: measured one level
        // after the other, the first level ran ~10% slower at small batches than the same level
        // measured later, which made the grid non-monotone in GPU%.
        let mut model_rows = Vec::new();
        for &batch in o.batches {
            bar.set_message(format!("{model} at batch {batch}"));
            let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(o.repeats); workers.len()];
            for worker in &mut workers {
                for _ in 0..5 {
                    worker.run(batch)?;
                }
            }
            let per_turn = o.repeats.div_ceil(GRID_TURNS);
            for turn in 0..GRID_TURNS {
                for i in 0..workers.len() {
                    // Each turn starts at the next level, so none is always measured first.
                    let w = (i + turn) % workers.len();
                    for _ in 0..per_turn.min(o.repeats - times[w].len()) {
                        times[w].push(workers[w].run(batch)?.infer_ms);
                    }
                }
            }
            for ((worker, &pct), mut times) in workers.iter().zip(o.gpu_pcts).zip(times) {
                times.sort_by(f64::total_cmp);
                let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
                let mean = times.iter().sum::<f64>() / times.len() as f64;
                model_rows.push(Row {
                    engine: worker.engine.clone(),
                    model: model.clone(),
                    dtype,
                    gpu_pct: pct,
                    sms: worker.sms,
                    batch,
                    p50_ms: at(0.5),
                    p99_ms: at(0.99),
                    mean_ms: mean,
                    imgs_per_s: batch as f64 / mean * 1000.0,
                });
                bar.inc(1);
            }
        }
        // Written level by level, in the order asked.
        model_rows.sort_by_key(|r| (o.gpu_pcts.iter().position(|&p| p == r.gpu_pct), r.batch));
        rows.extend(model_rows);
        write_rows(o.out, &rows)?;
    }
    bar.finish_and_clear();
    println!("{} points written to {}", rows.len(), o.out.display());
    Ok(())
}

fn profile_groups(o: &ProfileOptions, groups: &[Vec<Placement>], mps: Option<&MpsDaemon>) -> Result<()> {
    // One worker per distinct placement, shared by the groups that use it.
    let mut placements: Vec<Placement> = groups.iter().flatten().cloned().collect();
    placements.sort_by_key(Placement::label);
    placements.dedup();
    let bar = progress((placements.len() + groups.len()) as u64, "runs");
    bar.set_message(format!("starting {} workers", placements.len()));
    let specs: Vec<_> = placements.iter().map(|p| worker_spec(p, vec![p.batch], mps, o.fake_ms)).collect();
    let mut workers: BTreeMap<String, Worker> =
        placements.iter().map(Placement::label).zip(spawn_all(&specs)?).collect();
    let seconds = Duration::from_secs_f64(o.colocate_seconds);
    let warmup = Duration::from_millis(300);
    let mut solo: BTreeMap<String, LoopResult> = BTreeMap::new();
    for p in &placements {
        bar.set_message(format!("{} alone", p.label()));
        let worker = workers.get_mut(&p.label()).expect("spawned");
        let alone = run_together(std::slice::from_mut(worker), &[p.batch], 1, warmup, seconds / 2)?;
        solo.insert(p.label(), alone.into_iter().next().expect("one result"));
        bar.inc(1);
    }
    let mut rows = Vec::new();
    for group in groups {
        let label = group_label(group);
        bar.set_message(label.clone());
        let mut together: Vec<Worker> = group.iter().map(|p| workers.remove(&p.label()).expect("spawned")).collect();
        let batches: Vec<u32> = group.iter().map(|p| p.batch).collect();
        let results = run_together(&mut together, &batches, 1, warmup, seconds);
        for (p, worker) in group.iter().zip(together) {
            workers.insert(p.label(), worker);
        }
        for (p, r) in group.iter().zip(results.with_context(|| format!("co-location group {label}"))?) {
            let alone = &solo[&p.label()];
            rows.push(ColocationRow {
                group: label.clone(),
                model: p.model.clone(),
                gpu_pct: p.gpu_pct,
                batch: p.batch,
                batches: r.batches,
                p50_ms: r.gpu_ms(0.5),
                p99_ms: r.gpu_ms(0.99),
                mean_ms: r.gpu_mean_ms(),
                imgs_per_s: r.items_per_s,
                solo_p50_ms: alone.gpu_ms(0.5),
                solo_p99_ms: alone.gpu_ms(0.99),
            });
        }
        write_rows(o.colocation_out, &rows)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("{} co-located rows written to {}", rows.len(), o.colocation_out.display());
    Ok(())
}
