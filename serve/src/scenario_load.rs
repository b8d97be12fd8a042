//! `gpuslice kserve-run`: drives any server of the Open Inference Protocol (KServe v2 over gRPC:
//! Triton, or gpuslice itself) with a scenario's open-loop arrivals, and measures what `gpu-run`
//! measures in process: per model the requests answered, those within the SLO, and latency
//! percentiles, each latency counted from the request's scheduled arrival (a client that falls
//! behind does not hide the server's queue). Each request carries zeros of the model's declared
//! input shape at batch 1 (`gpu-run` feeds zeros too).

use crate::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::inference::model_infer_request::InferInputTensor;
use crate::inference::{ModelInferRequest, ModelMetadataRequest};
use anyhow::{Context, Result};
use gpuslice_traces::arrivals::ArrivalProcess;
use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A call not answered within this long is given up and counted failed: far past any SLO, it
/// bounds what the client holds.
const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

/// One model the run sends to.
pub struct LoadedModel {
    /// Its name on the server.
    pub name: String,
    /// Its latency SLO, ms.
    pub slo_ms: f64,
    /// When its requests arrive (seconds from the start).
    pub arrivals: Box<dyn ArrivalProcess>,
}

/// What one model saw.
#[derive(Debug, serde::Serialize)]
pub struct ModelOutcome {
    /// The model.
    pub model: String,
    /// Its SLO, ms.
    pub slo_ms: f64,
    /// Requests sent.
    pub arrivals: u64,
    /// Answered OK.
    pub answered: u64,
    /// Failed (an error status, or no answer within `GIVE_UP_AFTER`).
    pub failed: u64,
    /// Answered within the SLO.
    pub within_slo: u64,
    /// `within_slo` over `arrivals`.
    pub slo_attainment: f64,
    /// Median latency of the answered, ms.
    pub p50_ms: f64,
    /// 99th-percentile latency of the answered, ms.
    pub p99_ms: f64,
}

/// One model's calls so far.
struct Tally {
    arrivals: u64,
    answered: u64,
    failed: u64,
    within_slo: u64,
    latency_us: Histogram<u64>,
}

/// Zero bytes of one request's inputs: each input at batch 1 (a variable dimension taken as 1).
fn zero_inputs(
    metadata: &crate::inference::ModelMetadataResponse,
) -> Result<(Vec<InferInputTensor>, Vec<prost::bytes::Bytes>)> {
    let mut tensors = Vec::new();
    let mut raw = Vec::new();
    for input in &metadata.inputs {
        let element = match input.datatype.as_str() {
            "BOOL" | "INT8" | "UINT8" => 1,
            "INT16" | "UINT16" | "FP16" | "BF16" => 2,
            "INT32" | "UINT32" | "FP32" => 4,
            "INT64" | "UINT64" | "FP64" => 8,
            other => anyhow::bail!(
                "model {}: input {} has datatype {other}, which zeros cannot fill",
                metadata.name,
                input.name
            ),
        };
        let shape: Vec<i64> = input.shape.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
        let elements: i64 = shape.iter().product();
        anyhow::ensure!(
            (0..=(256 << 20) / element).contains(&elements),
            "model {}: input {} of shape {:?} is too large to send",
            metadata.name,
            input.name,
            input.shape
        );
        raw.push(vec![0u8; elements as usize * element as usize].into());
        tensors.push(InferInputTensor {
            name: input.name.clone(),
            datatype: input.datatype.clone(),
            shape,
            ..Default::default()
        });
    }
    Ok((tensors, raw))
}

/// Sends every model's arrivals to `target` (host:port) and reports per model, in `models`' order.
pub async fn run(target: &str, models: Vec<LoadedModel>) -> Result<Vec<ModelOutcome>> {
    let clients: Vec<_> = crate::loadtest::connect(target)
        .await?
        .into_iter()
        .map(|channel| GrpcInferenceServiceClient::new(channel).max_decoding_message_size(256 << 20))
        .collect();
    let mut requests = Vec::new();
    for m in &models {
        let metadata = clients[0]
            .clone()
            .model_metadata(ModelMetadataRequest { name: m.name.clone(), version: String::new() })
            .await
            .with_context(|| format!("model {} on {target}", m.name))?
            .into_inner();
        let (inputs, raw_input_contents) = zero_inputs(&metadata)?;
        requests.push(ModelInferRequest {
            model_name: m.name.clone(),
            inputs,
            raw_input_contents,
            ..Default::default()
        });
    }
    let start = Instant::now();
    let mut senders = Vec::new();
    let mut tallies = Vec::new();
    for (k, (model, request)) in models.into_iter().zip(requests).enumerate() {
        let tally = Arc::new(Mutex::new(Tally {
            arrivals: 0,
            answered: 0,
            failed: 0,
            within_slo: 0,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
        }));
        tallies.push((model.name.clone(), model.slo_ms, tally.clone()));
        let clients = clients.clone();
        let slo = Duration::from_secs_f64(model.slo_ms * 1e-3);
        let mut arrivals = model.arrivals;
        senders.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            let mut n = 0usize;
            while let Some(t) = arrivals.next_arrival() {
                let due = start + Duration::from_secs_f64(t);
                tokio::time::sleep_until(due.into()).await;
                let mut client = clients[(k + n) % clients.len()].clone();
                n += 1;
                let (request, tally) = (request.clone(), tally.clone());
                tally.lock().expect("tally").arrivals += 1;
                calls.push(tokio::spawn(async move {
                    let answer = tokio::time::timeout(GIVE_UP_AFTER, client.model_infer(request)).await;
                    let latency = due.elapsed();
                    let mut t = tally.lock().expect("tally");
                    match answer {
                        Ok(Ok(_)) => {
                            t.answered += 1;
                            t.within_slo += u64::from(latency <= slo);
                            let us = (latency.as_micros() as u64).clamp(1, 60_000_000);
                            let _ = t.latency_us.record(us);
                        }
                        _ => t.failed += 1,
                    }
                }));
            }
            for call in calls {
                let _ = call.await;
            }
        }));
    }
    for sender in senders {
        sender.await?;
    }
    Ok(tallies
        .into_iter()
        .map(|(model, slo_ms, tally)| {
            let t = tally.lock().expect("tally");
            let h = &t.latency_us;
            let ms = |q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1000.0 };
            ModelOutcome {
                model,
                slo_ms,
                arrivals: t.arrivals,
                answered: t.answered,
                failed: t.failed,
                within_slo: t.within_slo,
                slo_attainment: if t.arrivals == 0 { 1.0 } else { t.within_slo as f64 / t.arrivals as f64 },
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
            }
        })
        .collect())
}

/// The outcomes as a table.
pub fn table(outcomes: &[ModelOutcome]) -> comfy_table::Table {
    let mut table = gpuslice_eval::output::table(vec![
        "model", "SLO ms", "arrivals", "answered", "failed", "p50 ms", "p99 ms", "SLO met",
    ]);
    for o in outcomes {
        table.add_row(vec![
            o.model.clone(),
            format!("{}", o.slo_ms),
            o.arrivals.to_string(),
            o.answered.to_string(),
            o.failed.to_string(),
            format!("{:.2}", o.p50_ms),
            format!("{:.2}", o.p99_ms),
            format!("{:.1}%", 100.0 * o.slo_attainment),
        ]);
    }
    table
}
