//! NetML as an ingress of `serve` (`--netml-listen`): requests arrive as UDP packets (the wire
//! format of `gpuslice_netml::packet`), land in a receive thread's packet pool (several threads
//! share the port; each sender's packets reach one of them), are reassembled, and every
//! complete image becomes a request to its model through the same controller as a gRPC call
//! (dispatcher, batching, policy, metrics); its answer goes back by UDP to the address it came
//! from, as a reply message with the same id: the output row, its top-k classes, or an error.
//!
//! How an image reaches its model's batch (`NetmlTransfer`): by default its packets stay in the
//! pool, which every worker of the GPU backend maps (the receive threads' pools are ranges of
//! one shared file, `SharedPools`), and the worker that serves the batch gathers the payloads
//! onto the GPU from where they landed: the host copies nothing but the packets' slot numbers.
//! The packets go back to the pool when the request is answered. With CPU-Copy, or while a
//! receive thread's pool runs low (requests waiting in a queue hold their packets), the receive
//! thread gathers the payloads into the request's input row instead, as for a gRPC request.

use crate::live::{Command, InferDone, LiveError, LiveHandle};
use bytes::Bytes;
use gpuslice_control::input::{PacketLayout, PacketRow, PacketStore, RequestInput};
use gpuslice_control::tensors::DataType;
use gpuslice_netml::packet::{Envelope, HEADER, Kind, PAYLOAD};
use gpuslice_netml::pool::{SLOT_BYTES, SharedPools};
use gpuslice_netml::reassembly::{CompleteImage, ReassemblyStats};
use gpuslice_netml::udp::{ReceiveStats, Receiver, send_message};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Receive threads, each with its socket on the one port (SO_REUSEPORT), its pool and its
/// reassembly: one thread takes about 0.65 M packets (1,100 images of 224x224x3 FP32) a
/// second on the H200 machine's loopback, and loses images beyond.
const RECEIVE_THREADS: usize = 4;
/// Packet buffers in each thread's pool (2 KiB each: 64 MiB): about 55 images of 588 packets
/// being reassembled at once. A complete image's packets go back at once (they are gathered);
/// when the pool runs low, the oldest incomplete image is dropped to make room. At gpu-trio's
/// load (3,600 images/s) a pool of half this size was exhausted 0.8 M times in 20 s and lost a
/// third of the images, before that eviction existed.
const POOL_SLOTS: usize = 1 << 15;
/// An image not complete this long after its first packet is dropped (counted as expired).
const IMAGE_TIMEOUT: Duration = Duration::from_millis(200);
/// How long the receive thread sleeps in `poll` when nothing arrives (also how soon it stops).
const IDLE_WAIT: Duration = Duration::from_millis(2);
/// A socket receive buffer below this (bytes) holds under 10 ms of 1 GB/s of images: warned of.
const SMALL_RECEIVE_BUFFER: usize = 10 << 20;
/// Bytes of input that NetML requests handed over and not yet answered may hold.
const MAX_IN_FLIGHT_BYTES: u64 = 2 << 30;
/// Most classes a reply's top-k may name.
pub const MAX_TOP_K: u16 = 1000;
/// Below this share of its pool free, a receive thread copies images out (CPU-Copy) instead of
/// lending their packets to a worker: queued requests would otherwise hold the pool and stop the
/// receive.
const LOW_POOL_SHARE: f64 = 0.25;

/// How a complete image reaches the batch of its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NetmlTransfer {
    /// The worker gathers the payloads from the packet pool onto the GPU (on the CPU where it
    /// has no GPU).
    #[default]
    GpuGather,
    /// The receive thread gathers the payloads into the request's input row.
    CpuCopy,
}

/// The receive threads' packet pools (one file the workers map) as the backend sees them.
pub struct PacketPools {
    pools: SharedPools,
    layout: PacketLayout,
}

impl PacketPools {
    /// Creates the pools' file, in shared memory, for `RECEIVE_THREADS` receivers.
    pub fn create() -> anyhow::Result<PacketPools> {
        let path = gpuslice_gpu::worker::shared_file_path("netml-pools");
        let pools = SharedPools::create(&path, RECEIVE_THREADS, POOL_SLOTS)
            .map_err(|e| anyhow::anyhow!("cannot create the NetML packet pools {}: {e}", path.display()))?;
        let layout = PacketLayout { path, slot_bytes: SLOT_BYTES, header_bytes: HEADER, payload_bytes: PAYLOAD };
        Ok(PacketPools { pools, layout })
    }
}

impl PacketStore for PacketPools {
    fn layout(&self) -> &PacketLayout {
        &self.layout
    }

    fn gather(&self, slots: &[u32], out: &mut [u8]) {
        self.pools.gather(slots, out);
    }

    fn release(&self, slots: &[u32]) {
        self.pools.release(slots);
    }
}

/// What the ingress has seen, for /metrics. Counters only grow.
#[derive(Default)]
pub struct NetmlCounters {
    /// Datagrams received.
    pub datagrams: AtomicU64,
    /// Datagrams that were not a well-formed packet of this wire version...
    pub malformed: AtomicU64,
    /// ...of which another version's.
    pub wrong_version: AtomicU64,
    /// Duplicate packets dropped.
    pub duplicates: AtomicU64,
    /// Packets whose header disagreed with their image's first packet.
    pub conflicts: AtomicU64,
    /// Images dropped incomplete: a packet lost, or later than the image timeout.
    pub expired_images: AtomicU64,
    /// Receive calls that found the packet pool full.
    pub pool_exhausted: AtomicU64,
    /// Complete images that were not requests (a reply or error sent to the node).
    pub not_requests: AtomicU64,
    /// Complete requests handed to the controller.
    pub requests: AtomicU64,
    /// Requests whose packets were lent to the worker that served them (the GPU gather)...
    pub lent: AtomicU64,
    /// ...and those copied out by the receive thread (CPU-Copy).
    pub copied: AtomicU64,
    /// Requests answered with their output.
    pub answered: AtomicU64,
    /// Requests answered with an error (unknown model, wrong size, dropped...).
    pub refused: AtomicU64,
    /// Replies that could not be sent.
    pub reply_failed: AtomicU64,
    /// Sums over requests, ns: first to last packet, the hand-over (a CPU gather, or lending the
    /// packets), and sending the reply.
    pub arrival_ns: AtomicU64,
    /// See `arrival_ns`.
    pub gather_ns: AtomicU64,
    /// See `arrival_ns`.
    pub reply_ns: AtomicU64,
    /// Input bytes of requests handed over and not yet answered (a gauge, not in /metrics).
    in_flight_bytes: AtomicU64,
}

impl NetmlCounters {
    /// The counters as Prometheus text.
    pub fn prometheus(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let events = [
            ("datagrams", &self.datagrams),
            ("malformed", &self.malformed),
            ("wrong_version", &self.wrong_version),
            ("duplicate", &self.duplicates),
            ("conflict", &self.conflicts),
            ("expired_image", &self.expired_images),
            ("pool_exhausted", &self.pool_exhausted),
            ("not_request", &self.not_requests),
            ("request", &self.requests),
            ("lent_to_worker", &self.lent),
            ("copied_on_cpu", &self.copied),
            ("answered", &self.answered),
            ("refused", &self.refused),
            ("reply_failed", &self.reply_failed),
        ];
        let mut text = String::from("# TYPE gpuslice_netml_total counter\n");
        for (event, counter) in events {
            text += &format!("gpuslice_netml_total{{event=\"{event}\"}} {}\n", get(counter));
        }
        let requests = get(&self.requests).max(1) as f64;
        text += "# TYPE gpuslice_netml_stage_ms gauge\n";
        for (stage, sum) in [("arrival", &self.arrival_ns), ("gather", &self.gather_ns), ("reply", &self.reply_ns)] {
            text += &format!("gpuslice_netml_stage_ms{{stage=\"{stage}\"}} {}\n", get(sum) as f64 / requests / 1e6);
        }
        text
    }
}

/// The running ingress.
pub struct NetmlIngress {
    /// The UDP address bound.
    pub local_addr: SocketAddr,
    /// What it has seen.
    pub counters: Arc<NetmlCounters>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl NetmlIngress {
    /// Binds `listen` with `RECEIVE_THREADS` receivers, each receiving into its pool of
    /// `pools`, and starts receiving: each complete request goes to `live` on `runtime`, moved
    /// into its batch as `transfer` says; what they see is counted in `counters`.
    pub fn start(
        listen: SocketAddr,
        live: LiveHandle,
        runtime: tokio::runtime::Handle,
        counters: Arc<NetmlCounters>,
        (pools, transfer): (Arc<PacketPools>, NetmlTransfer),
    ) -> anyhow::Result<NetmlIngress> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut ingress = NetmlIngress { local_addr: listen, counters, stop, threads: Vec::new() };
        for k in 0..RECEIVE_THREADS {
            // The first binds `listen` (port 0: any), the others the port it got.
            let address = ingress.local_addr;
            let lending = Lending { pools: pools.clone(), receiver: k, lend: transfer == NetmlTransfer::GpuGather };
            let bound = ingress.spawn_receiver(address, lending, live.clone(), runtime.clone())?;
            if k == 0 {
                ingress.local_addr = bound;
            }
        }
        Ok(ingress)
    }

    /// Starts a receive thread on `address` with its pool (`lending`); returns the address it
    /// bound.
    fn spawn_receiver(
        &mut self,
        address: SocketAddr,
        lending: Lending,
        live: LiveHandle,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<SocketAddr> {
        let k = lending.receiver;
        let (stopping, counters) = (self.stop.clone(), self.counters.clone());
        // The receiver is bound on its thread (its recvmmsg headers stay there); the thread
        // answers with the address bound, or why it could not bind.
        let (bound_tx, bound) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name(format!("netml-receive-{k}")).spawn(move || {
            let setup = lending
                .pools
                .pools
                .pool(k)
                .and_then(|pool| Receiver::bind_shared_into(address, pool, IMAGE_TIMEOUT.as_nanos() as u64))
                .and_then(|r| Ok((r.local_addr()?, r.try_clone_socket()?, r)));
            match setup {
                Ok((addr, replies, receiver)) => {
                    if k == 0 {
                        warn_of_small_buffers(&receiver);
                    }
                    let _ = bound_tx.send(Ok(addr));
                    let replies = Arc::new(replies);
                    let published = (ReceiveStats::default(), ReassemblyStats::default());
                    Receiving { receiver, lending, live, runtime, replies, counters, published }.run(&stopping);
                }
                Err(e) => {
                    let _ = bound_tx.send(Err(e));
                }
            }
        })?;
        self.threads.push(thread);
        bound
            .recv()
            .map_err(|_| anyhow::anyhow!("NetML receive thread {k} ended before binding {address}"))?
            .map_err(|e| anyhow::anyhow!("cannot listen for NetML on {address}: {e}"))
    }

    /// Stops taking packets (requests already handed over are still answered).
    pub fn stop(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for NetmlIngress {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Says where the receive path will lose images: a pool off hugepages is slower to register,
/// a small socket buffer drops packets whenever a receive thread is not scheduled.
fn warn_of_small_buffers(receiver: &Receiver) {
    if !receiver.pool.hugepages() {
        tracing::info!("NetML packet pools on ordinary pages (no 2 MiB hugepages reserved)");
    }
    let buffer = receiver.receive_buffer();
    if buffer < SMALL_RECEIVE_BUFFER {
        tracing::warn!(
            bytes = buffer,
            "NetML socket receive buffer is small: images are lost whenever a receive thread falls behind (raise net.core.rmem_max, or run as root)"
        );
    }
}

/// A receive thread's pool among the shared ones, and whether it lends complete images' packets
/// to the workers.
struct Lending {
    pools: Arc<PacketPools>,
    receiver: usize,
    lend: bool,
}

/// The receive thread's state.
struct Receiving {
    receiver: Receiver,
    lending: Lending,
    live: LiveHandle,
    runtime: tokio::runtime::Handle,
    replies: Arc<UdpSocket>,
    counters: Arc<NetmlCounters>,
    /// The receiver's counters as last added to the shared ones.
    published: (ReceiveStats, ReassemblyStats),
}

impl Receiving {
    fn run(mut self, stop: &AtomicBool) {
        let clock = Instant::now();
        let mut complete = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match self.receiver.poll(clock.elapsed().as_nanos() as u64, &mut complete) {
                Ok(0) if complete.is_empty() => {
                    let _ = self.receiver.wait(IDLE_WAIT);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "NetML receive failed");
                    std::thread::sleep(IDLE_WAIT);
                }
            }
            for image in complete.drain(..) {
                self.hand_over(image);
            }
            self.publish();
        }
    }

    /// Hands a complete request to the controller, its packets lent to the worker or gathered
    /// into its input row (`NetmlTransfer`); a task answers the sender when it completes.
    fn hand_over(&mut self, image: CompleteImage) {
        let c = &self.counters;
        if image.envelope.kind != Kind::Request {
            c.not_requests.fetch_add(1, Ordering::Relaxed);
            self.receiver.release(image);
            return;
        }
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.arrival_ns.fetch_add(image.last_seen_ns.saturating_sub(image.first_seen_ns), Ordering::Relaxed);
        let (envelope, to) = (image.envelope, image.source);
        let pool = &self.receiver.pool;
        let pool_low = (pool.free_slots() as f64) < LOW_POOL_SHARE * pool.capacity() as f64;
        let gathering = Instant::now();
        let input = if self.lending.lend && !pool_low {
            c.lent.fetch_add(1, Ordering::Relaxed);
            let Lending { pools, receiver, .. } = &self.lending;
            let slots = image.slots.iter().map(|&s| pools.pools.global(*receiver, s)).collect();
            RequestInput::Packets(PacketRow::new(pools.clone(), slots, image.total_len as usize))
        } else {
            c.copied.fetch_add(1, Ordering::Relaxed);
            let mut input = Vec::new();
            self.receiver.gather_cpu(&image, &mut input);
            self.receiver.release(image);
            RequestInput::Bytes(Bytes::from(input))
        };
        c.gather_ns.fetch_add(gathering.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let (live, replies, counters) = (self.live.clone(), self.replies.clone(), self.counters.clone());
        // Inputs waiting for the controller are bounded here (the controller bounds what it
        // queues): past the bound a request is refused at once rather than held.
        let bytes = input.len() as u64;
        let admitted = c.in_flight_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes <= MAX_IN_FLIGHT_BYTES;
        self.runtime.spawn(async move {
            let reply = match admitted {
                true => answer(&live, &envelope, input).await,
                false => Err(format!(
                    "resource exhausted: NetML requests holding more than {} MiB of input are waiting",
                    MAX_IN_FLIGHT_BYTES >> 20
                )),
            };
            counters.in_flight_bytes.fetch_sub(bytes, Ordering::Relaxed);
            let sending = Instant::now();
            let (kind, payload) = match reply {
                Ok(payload) => (Kind::Reply, payload),
                Err(why) => (Kind::Error, why.into_bytes()),
            };
            let counted = if kind == Kind::Reply { &counters.answered } else { &counters.refused };
            counted.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = send_message(&replies, to, &Envelope { kind, ..envelope }, &payload) {
                counters.reply_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%to, error = %e, "NetML reply not sent");
            }
            counters.reply_ns.fetch_add(sending.elapsed().as_nanos() as u64, Ordering::Relaxed);
        });
    }

    /// Adds what the receiver counted since the last call to the shared counters.
    fn publish(&mut self) {
        let (r, s, c) = (self.receiver.stats, self.receiver.reassembly(), &self.counters);
        let (pr, ps) = self.published;
        for (shared, now, before) in [
            (&c.datagrams, r.datagrams, pr.datagrams),
            (&c.malformed, r.malformed, pr.malformed),
            (&c.wrong_version, r.wrong_version, pr.wrong_version),
            (&c.pool_exhausted, r.pool_exhausted, pr.pool_exhausted),
            (&c.duplicates, s.duplicates, ps.duplicates),
            (&c.conflicts, s.conflicts, ps.conflicts),
            (&c.expired_images, s.expired_images, ps.expired_images),
        ] {
            shared.fetch_add(now - before, Ordering::Relaxed);
        }
        self.published = (r, s);
    }
}

/// The reply's payload for a request, or why there is none.
async fn answer(live: &LiveHandle, envelope: &Envelope, input: RequestInput) -> Result<Vec<u8>, String> {
    let model = envelope.model.as_str().to_string();
    let k = envelope.top_k;
    if k > MAX_TOP_K {
        return Err(format!("top-k {k} is above the {MAX_TOP_K} a reply may name"));
    }
    let output_type = match k {
        0 => None,
        _ => {
            let name = model.clone();
            let view = live.ask(|reply| Command::Describe(name, reply)).await.map_err(|e| e.to_string())?;
            Some(view.source.io.output().datatype)
        }
    };
    let done: InferDone = live
        .ask(|reply| Command::Infer(model.clone(), Some(input), reply))
        .await
        .map_err(|e: LiveError| e.to_string())?;
    let output = done
        .computed
        .map(|c| c.output)
        .ok_or("this node's backend computes no outputs (the simulator); serve with --backend gpu")?;
    match output_type {
        None => Ok(output),
        Some(DataType::Fp32) => Ok(top_k(&output, k as usize)),
        Some(other) => Err(format!("top-k needs an FP32 output; model {model}'s is {}", other.name())),
    }
}

/// The `k` largest of FP32 `scores` as (class u32, score f32) pairs, little-endian, best first
/// (ties: the lower class first).
pub fn top_k(scores: &[u8], k: usize) -> Vec<u8> {
    let mut ranked: Vec<(u32, f32)> = scores
        .chunks_exact(4)
        .enumerate()
        .map(|(i, b)| (i as u32, f32::from_le_bytes(b.try_into().expect("4 bytes"))))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.into_iter().take(k).flat_map(|(class, score)| [class.to_le_bytes(), score.to_le_bytes()]).flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_names_the_best_classes_first() {
        let scores: Vec<u8> = [0.5f32, 3.0, -1.0, 3.0, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let pairs: Vec<(u32, f32)> = top_k(&scores, 3)
            .chunks_exact(8)
            .map(|p| (u32::from_le_bytes(p[..4].try_into().unwrap()), f32::from_le_bytes(p[4..].try_into().unwrap())))
            .collect();
        assert_eq!(pairs, vec![(1, 3.0), (3, 3.0), (4, 2.0)]);
        assert_eq!(top_k(&scores, 10).len(), 5 * 8, "k above the classes: every class");
    }
}
