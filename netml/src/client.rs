//! The NetML load generator (`gpuslice netml-send`): sends images for one or more models to a
//! node's NetML ingress as packets, open loop (Poisson arrivals at a rate, or each model's
//! arrival times, e.g. a scenario's), from several sender threads, each with its own socket for
//! the replies; checks every reply and measures latency from the first packet sent to the reply
//! reassembled. Loopback only, bounded in time and count.
//!
//! Every request's image is FP32 values in [0, 1). `Check::Sum` checks each reply against the
//! GPU-less worker's documented function (every output element, or top-k score, is the sum of
//! that request's input elements); each thread cycles through `IMAGES_PER_MODEL` images of
//! different sums, so a reply that went to the wrong caller fails the check.

use super::packet::{Envelope, Kind, ModelName, PacketHeader, packetize};
use super::reassembly::CompleteImage;
use super::udp::Receiver;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Distinct images each thread sends per model (cycled).
const IMAGES_PER_MODEL: usize = 8;
/// Replies still missing this long after the last request was sent are counted lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest run.
pub const MAX_SECONDS: f64 = 3600.0;
/// Most requests a run may send.
pub const MAX_REQUESTS: f64 = 10_000_000.0;
/// Most sender threads.
pub const MAX_THREADS: usize = 64;
/// Relative tolerance of the sum check (float32 sums in another order).
const SUM_TOLERANCE: f64 = 1e-3;

/// How replies are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Every output element (or top-k score) must be the sum of the request's inputs.
    Sum,
    /// Nothing checked; the top class of each reply is counted.
    None,
}

/// A model to send to, and its input size in bytes (a multiple of 4: FP32 elements).
#[derive(Debug, Clone)]
pub struct Target {
    /// The model's name at the node.
    pub model: String,
    /// Bytes of one request's input.
    pub input_bytes: usize,
    /// Its latency SLO, ms, where known: replies within it are counted.
    pub slo_ms: Option<f64>,
}

/// When requests go.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Poisson arrivals at `rate` requests per second over all models (sent to in turn), for
    /// `seconds`.
    Rate {
        /// Requests per second.
        rate: f64,
        /// How long.
        seconds: f64,
    },
    /// Each model's arrival times, seconds from the start, in the models' order.
    Arrivals(Vec<Vec<f64>>),
}

/// What to send.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The node's NetML address (loopback).
    pub target: SocketAddr,
    /// The models.
    pub models: Vec<Target>,
    /// When each request goes; the requests are dealt to the threads in turn.
    pub schedule: Schedule,
    /// Sender threads.
    pub threads: usize,
    /// 0: whole outputs back; k: the k best classes.
    pub top_k: u16,
    /// How replies are checked.
    pub check: Check,
    /// Fault injection: the share of packets not sent...
    pub loss: f64,
    /// ...sent twice...
    pub duplicate: f64,
    /// ...and whether each image's packets go in a shuffled order.
    pub reorder: bool,
    /// Seed of the arrivals, images and faults.
    pub seed: u64,
}

/// Why a run cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// An option out of its range.
    #[error("{0}")]
    Invalid(String),
    /// A socket could not be opened or used.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// One model's figures.
#[derive(Debug, Clone, Default)]
pub struct ModelResult {
    /// The model.
    pub model: String,
    /// Requests sent.
    pub sent: u64,
    /// Replies with an output that passed the check.
    pub answered: u64,
    /// Replies with an output that failed the check.
    pub wrong: u64,
    /// Error replies.
    pub errors: u64,
    /// Requests without a reply in time.
    pub lost: u64,
    /// The model's SLO, ms, where known...
    pub slo_ms: Option<f64>,
    /// ...and the replies that passed the check within it.
    pub within_slo: u64,
    /// Latency of the answered, ms: median, 99th percentile, largest.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub max_ms: f64,
    /// The class most replies named first (top-k replies), if any.
    pub top_class: Option<u32>,
}

impl ModelResult {
    /// Adds another thread's counts (not its latencies: those are merged as histograms).
    fn add(&mut self, other: &ModelResult) {
        self.sent += other.sent;
        self.answered += other.answered;
        self.wrong += other.wrong;
        self.errors += other.errors;
        self.lost += other.lost;
        self.within_slo += other.within_slo;
    }
}

/// A run's figures.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// Per model.
    pub models: Vec<ModelResult>,
    /// Seconds from the first request to the last reply (or the reply timeout).
    pub elapsed_s: f64,
    /// The first few error messages and failed checks, as received.
    pub first_errors: Vec<String>,
}

impl SendOptions {
    fn check(&self) -> Result<(), SendError> {
        let bad = |m: String| Err(SendError::Invalid(m));
        if !self.target.ip().is_loopback() {
            return bad(format!(
                "--target {} is not a loopback address: netml-send only sends on this machine",
                self.target
            ));
        }
        match &self.schedule {
            Schedule::Rate { rate, seconds } => {
                if !(*seconds > 0.0 && *seconds <= MAX_SECONDS) {
                    return bad(format!("--seconds must be in (0, {MAX_SECONDS}], got {seconds}"));
                }
                if !(*rate > 0.0 && rate * seconds <= MAX_REQUESTS) {
                    return bad(format!(
                        "--rate must be above 0 and send at most {MAX_REQUESTS} requests in all, got {rate} for {seconds} s"
                    ));
                }
            }
            Schedule::Arrivals(times) => {
                if times.len() != self.models.len() {
                    return bad(format!("{} arrival lists for {} models", times.len(), self.models.len()));
                }
                if times.iter().map(Vec::len).sum::<usize>() as f64 > MAX_REQUESTS {
                    return bad(format!("more than {MAX_REQUESTS} requests in all"));
                }
                if let Some(t) = times.iter().flatten().find(|t| !(0.0..=MAX_SECONDS).contains(*t)) {
                    return bad(format!("arrival at {t} s: arrivals must lie in [0, {MAX_SECONDS}] s"));
                }
            }
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return bad(format!("--threads must be in 1..={MAX_THREADS}, got {}", self.threads));
        }
        for p in [self.loss, self.duplicate] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("--loss and --duplicate are shares in [0, 1), got {p}"));
            }
        }
        if self.models.is_empty() {
            return bad("name at least one --model".into());
        }
        for t in &self.models {
            if ModelName::new(&t.model).is_none() {
                return bad(format!("model name {:?} must be 1-64 bytes", t.model));
            }
            if t.input_bytes == 0
                || !t.input_bytes.is_multiple_of(4)
                || t.input_bytes > super::packet::MAX_IMAGE as usize
            {
                return bad(format!(
                    "model {}: input of {} bytes must be FP32 elements (a multiple of 4), 1 to {} bytes",
                    t.model,
                    t.input_bytes,
                    super::packet::MAX_IMAGE
                ));
            }
        }
        Ok(())
    }
}

/// A xorshift generator: arrivals, images and faults, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Uniform in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// An image ready to send: its packets (the id patched in per request) and its input sum.
struct Prepared {
    datagrams: Vec<Vec<u8>>,
    sum: f64,
}

/// What a thread has sent and not heard back about.
struct Pending {
    model: usize,
    sent: Instant,
    sum: f64,
}

/// One thread's figures, merged into the report.
struct Tally {
    models: Vec<ModelResult>,
    latency_us: Vec<Histogram<u64>>,
    top_classes: Vec<HashMap<u32, u64>>,
    first_errors: Vec<String>,
}

/// Every request of the run as (seconds from the start, model), in time order.
fn plan(options: &SendOptions) -> Vec<(f64, usize)> {
    let mut plan: Vec<(f64, usize)> = match &options.schedule {
        Schedule::Rate { rate, seconds } => {
            let mut rng = Rng::new(options.seed);
            let mut t = 0.0;
            std::iter::from_fn(|| {
                t += -rng.next().max(1e-12).ln() / rate;
                (t < *seconds).then_some(t)
            })
            .enumerate()
            .map(|(k, t)| (t, k % options.models.len()))
            .collect()
        }
        Schedule::Arrivals(times) => {
            times.iter().enumerate().flat_map(|(m, ts)| ts.iter().map(move |&t| (t, m))).collect()
        }
    };
    plan.sort_by(|a, b| a.0.total_cmp(&b.0));
    plan
}

/// Sends every request of the schedule, waits for the replies, and reports.
pub fn run(options: &SendOptions) -> Result<SendReport, SendError> {
    options.check()?;
    let plan = plan(options);
    let started = Instant::now();
    let tallies: Vec<Result<Tally, SendError>> = std::thread::scope(|scope| {
        let plan = &plan;
        let handles: Vec<_> = (0..options.threads)
            .map(|t| {
                let mine = plan.iter().skip(t).step_by(options.threads).copied();
                scope.spawn(move || send_thread(options, t, started, mine))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a sender thread panicked")).collect()
    });
    let mut report = SendReport {
        models: options
            .models
            .iter()
            .map(|t| ModelResult { model: t.model.clone(), slo_ms: t.slo_ms, ..Default::default() })
            .collect(),
        elapsed_s: started.elapsed().as_secs_f64(),
        first_errors: Vec::new(),
    };
    let mut latency: Vec<Histogram<u64>> = options.models.iter().map(|_| histogram()).collect();
    let mut classes: Vec<HashMap<u32, u64>> = vec![HashMap::new(); options.models.len()];
    for tally in tallies {
        let tally = tally?;
        for (m, r) in tally.models.iter().enumerate() {
            report.models[m].add(r);
            latency[m].add(&tally.latency_us[m]).expect("same bounds");
            for (class, n) in &tally.top_classes[m] {
                *classes[m].entry(*class).or_default() += n;
            }
        }
        report.first_errors.extend(tally.first_errors);
    }
    report.first_errors.truncate(8);
    for (m, r) in report.models.iter_mut().enumerate() {
        let h = &latency[m];
        if !h.is_empty() {
            (r.p50_ms, r.p99_ms, r.max_ms) =
                (h.value_at_quantile(0.5) as f64 / 1e3, h.value_at_quantile(0.99) as f64 / 1e3, h.max() as f64 / 1e3);
        }
        r.top_class = classes[m].iter().max_by_key(|(c, n)| (**n, std::cmp::Reverse(**c))).map(|(c, _)| *c);
    }
    Ok(report)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds")
}

/// One sender thread: its requests (`plan`: seconds from `started`, model), its own socket for
/// the replies.
fn send_thread(
    o: &SendOptions,
    thread: usize,
    started: Instant,
    plan: impl Iterator<Item = (f64, usize)>,
) -> Result<Tally, SendError> {
    let mut rng = Rng::new(o.seed ^ (thread as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut receiver = Receiver::bind(SocketAddr::new(o.target.ip(), 0), 8192, REPLY_TIMEOUT.as_nanos() as u64)?;
    let mut images: Vec<Vec<Prepared>> = o
        .models
        .iter()
        .map(|t| {
            let model = ModelName::new(&t.model).expect("checked");
            let envelope = Envelope { kind: Kind::Request, image_id: 0, top_k: o.top_k, model };
            (0..IMAGES_PER_MODEL)
                .map(|_| {
                    let values: Vec<f32> = (0..t.input_bytes / 4).map(|_| rng.next() as f32).collect();
                    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    Prepared {
                        datagrams: packetize(&envelope, &bytes),
                        sum: values.iter().map(|&v| f64::from(v)).sum(),
                    }
                })
                .collect()
        })
        .collect();
    let n = o.models.len();
    let mut tally = Tally {
        models: o.models.iter().map(|t| ModelResult { model: t.model.clone(), ..Default::default() }).collect(),
        latency_us: (0..n).map(|_| histogram()).collect(),
        top_classes: vec![HashMap::new(); n],
        first_errors: Vec::new(),
    };
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let (mut count, mut complete) = (0u64, Vec::new());
    let mut sent_to = vec![0usize; n];
    let mut order: Vec<usize> = Vec::new();
    // Checks and frees the replies that have arrived.
    let mut take_replies = |receiver: &mut Receiver, pending: &mut HashMap<u64, Pending>, tally: &mut Tally| {
        receiver.poll(started.elapsed().as_nanos() as u64, &mut complete)?;
        for reply in complete.drain(..) {
            take_reply(receiver, reply, pending, tally, o);
        }
        Ok::<(), SendError>(())
    };
    for (at, model) in plan {
        let next = started + Duration::from_secs_f64(at);
        // Replies, until the next request is due.
        loop {
            take_replies(&mut receiver, &mut pending, &mut tally)?;
            let now = Instant::now();
            if now >= next {
                break;
            }
            receiver.wait((next - now).min(Duration::from_millis(1)))?;
        }
        let id = (thread as u64) << 48 | count;
        let prepared = &mut images[model][sent_to[model] % IMAGES_PER_MODEL];
        sent_to[model] += 1;
        for datagram in &mut prepared.datagrams {
            PacketHeader::set_image_id(datagram, id);
        }
        order.clear();
        for i in 0..prepared.datagrams.len() {
            if rng.next() >= o.loss {
                order.push(i);
                if rng.next() < o.duplicate {
                    order.push(i);
                }
            }
        }
        if o.reorder {
            for i in (1..order.len()).rev() {
                order.swap(i, (rng.next() * (i + 1) as f64) as usize);
            }
        }
        pending.insert(id, Pending { model, sent: Instant::now(), sum: prepared.sum });
        tally.models[model].sent += 1;
        receiver.send_datagrams_to(o.target, order.iter().map(|&i| &prepared.datagrams[i]))?;
        count += 1;
    }
    // The last replies.
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while !pending.is_empty() && Instant::now() < deadline {
        take_replies(&mut receiver, &mut pending, &mut tally)?;
        receiver.wait(Duration::from_millis(1))?;
    }
    for p in pending.values() {
        tally.models[p.model].lost += 1;
    }
    Ok(tally)
}

/// Checks one reply against its request, and frees its packets.
fn take_reply(
    receiver: &mut Receiver,
    reply: CompleteImage,
    pending: &mut HashMap<u64, Pending>,
    tally: &mut Tally,
    o: &SendOptions,
) {
    let mut payload = Vec::new();
    receiver.gather_cpu(&reply, &mut payload);
    let envelope = reply.envelope;
    let latency = Instant::now();
    receiver.release(reply);
    // A reply to nothing of ours (a late duplicate) is ignored.
    let Some(request) = pending.remove(&envelope.image_id) else { return };
    let m = request.model;
    let note = |tally: &mut Tally, message: String| {
        if tally.first_errors.len() < 8 {
            tally.first_errors.push(format!("{}: {message}", o.models[m].model));
        }
    };
    match envelope.kind {
        Kind::Error => {
            tally.models[m].errors += 1;
            note(tally, String::from_utf8_lossy(&payload).into_owned());
        }
        Kind::Request => {
            tally.models[m].errors += 1;
            note(tally, "a request came back as the reply".into());
        }
        Kind::Reply => {
            let floats: Vec<f32> = match o.top_k {
                0 => payload.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect(),
                // (class u32, score f32) pairs: the scores.
                _ => {
                    payload.chunks_exact(8).map(|p| f32::from_le_bytes(p[4..8].try_into().expect("4 bytes"))).collect()
                }
            };
            if o.top_k > 0
                && let Some(first) = payload.get(..4)
            {
                *tally.top_classes[m].entry(u32::from_le_bytes(first.try_into().expect("4 bytes"))).or_default() += 1;
            }
            let tolerance = SUM_TOLERANCE * request.sum.abs().max(1.0);
            let wrong = o.check == Check::Sum
                && (floats.is_empty() || floats.iter().any(|&v| (f64::from(v) - request.sum).abs() > tolerance));
            if wrong {
                tally.models[m].wrong += 1;
                note(
                    tally,
                    format!(
                        "reply {} failed the sum check: {:?} where every value should be {:.3}",
                        envelope.image_id,
                        &floats[..floats.len().min(3)],
                        request.sum
                    ),
                );
            } else {
                tally.models[m].answered += 1;
                let took = latency.saturating_duration_since(request.sent);
                if o.models[m].slo_ms.is_some_and(|slo| took.as_secs_f64() * 1e3 <= slo) {
                    tally.models[m].within_slo += 1;
                }
                let us = took.as_micros() as u64;
                let _ = tally.latency_us[m].record(us.max(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(schedule: Schedule) -> SendOptions {
        SendOptions {
            target: "127.0.0.1:9".parse().unwrap(),
            models: ["a", "b"].map(|m| Target { model: m.into(), input_bytes: 16, slo_ms: None }).to_vec(),
            schedule,
            threads: 2,
            top_k: 0,
            check: Check::Sum,
            loss: 0.0,
            duplicate: 0.0,
            reorder: false,
            seed: 3,
        }
    }

    #[test]
    fn a_rate_plans_poisson_arrivals_dealt_to_the_models_in_turn() {
        let plan = plan(&options(Schedule::Rate { rate: 1000.0, seconds: 10.0 }));
        assert!((9_700..10_300).contains(&plan.len()), "{}", plan.len());
        assert!(plan.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 != w[1].1));
        assert!(plan.last().unwrap().0 < 10.0);
    }

    #[test]
    fn arrivals_are_merged_in_time_order_and_bad_ones_refused() {
        let plan = plan(&options(Schedule::Arrivals(vec![vec![0.5, 0.1], vec![0.3]])));
        assert_eq!(plan, vec![(0.1, 0), (0.3, 1), (0.5, 0)]);
        for bad in [vec![vec![0.1]], vec![vec![-1.0], vec![]], vec![vec![f64::NAN], vec![]]] {
            assert!(matches!(options(Schedule::Arrivals(bad)).check(), Err(SendError::Invalid(_))));
        }
        let far = options(Schedule::Rate { rate: 1e9, seconds: 10.0 }).check();
        assert!(matches!(far, Err(SendError::Invalid(m)) if m.contains("10000000")), "bounded in count");
        let elsewhere =
            SendOptions { target: "10.0.0.1:9".parse().unwrap(), ..options(Schedule::Arrivals(vec![vec![], vec![]])) };
        assert!(matches!(elsewhere.check(), Err(SendError::Invalid(m)) if m.contains("loopback")));
    }
}
