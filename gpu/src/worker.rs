//! A model worker process (`gpu/worker/gpuslice_worker.py`): batches go in and come out
//! through a shared-memory file, commands and completions as JSON lines on its stdin/stdout.
//!
//! The shared file has `SLOTS` slots (inputs, then outputs, each), so a worker holds up to that
//! many batches at once: while one runs on the GPU the next one's inputs are written and handed
//! over, and the GPU does not idle through the hand-off. The worker runs them in order on one
//! stream. A thread reads its completions as they come, stamps them, and wakes whoever waits
//! (`on_output`).

use gpuslice_control::input::PacketLayout;
use gpuslice_control::tensors::ModelIo;
use memmap2::MmapMut;
use serde::Deserialize;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Batches a worker holds at once (shared-memory slots): one on the GPU, one being handed over.
pub const SLOTS: usize = 2;

/// The worker script: `$GPUSLICE_WORKER`, else the repository's `gpu/worker/gpuslice_worker.py`
/// below the current folder (a carried binary runs from the repository root), else where it was
/// at build time.
pub fn default_script() -> PathBuf {
    if let Some(path) = std::env::var_os("GPUSLICE_WORKER") {
        return PathBuf::from(path);
    }
    let relative = PathBuf::from("gpu/worker/gpuslice_worker.py");
    if relative.exists() {
        return relative;
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/worker/gpuslice_worker.py"))
}

/// What a worker serves.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The model's program: `torchvision:NAME` (or a bare torchvision name: random weights, for
    /// benchmarks), or the path of a TorchScript (`.pt`) or torch.export (`.pt2`) file.
    pub model: String,
    /// Its input and output tensors (one request is one row of each).
    pub io: ModelIo,
    /// Whether it computes in half precision (the inputs are cast on the GPU, the outputs back).
    pub half: bool,
    /// The batch sizes it keeps a CUDA graph for.
    pub batches: Vec<u32>,
    /// The worker script.
    pub script: PathBuf,
    /// Environment for the worker (e.g. its MPS client variables).
    pub env: Vec<(String, String)>,
    /// Serve without a GPU, sleeping this long per batch (tests).
    pub fake_ms: Option<f64>,
    /// Take batch inputs from this CUDA IPC buffer (hex handle; fp32 images back to back, as the
    /// NetML transfer leaves them) instead of the shared-memory file.
    pub input_ipc: Option<String>,
    /// The node's NetML packet pool, which the worker maps: a batch's rows whose request came
    /// as packets may then hold their packets' slots (see `submit`), gathered by the worker.
    pub packet_pool: Option<PacketLayout>,
    /// Serve on green contexts of these SM counts, one process for all (empty: none; the
    /// worker's share is then its MPS percentage).
    pub green_sms: Vec<u32>,
    /// Start quickly, serving somewhat slower: cuDNN's legacy algorithm choice instead of its
    /// execution plans. On the H200 mobilenet_v3_large's first run of a batch size took
    /// 0.1-0.5 s instead of 1.3-4.3 s, and its graphs ran 2-10% slower
    /// (bench/results/2026-12-02-h200-capture-cost): for a worker that serves only until a
    /// full one takes its place.
    pub quick_start: bool,
}

/// A model worker failed; every variant names the model.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The worker process could not be started.
    #[error("worker for {model} could not start: {cause}")]
    Spawn {
        /// The model.
        model: String,
        /// Why.
        cause: std::io::Error,
    },
    /// The worker process exited.
    #[error("worker for {model} died ({status}); its last words: {stderr}")]
    Died {
        /// The model.
        model: String,
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// The worker wrote a line that is not its protocol.
    #[error("worker for {model} said something unexpected: {line:?}")]
    Protocol {
        /// The model.
        model: String,
        /// The line.
        line: String,
    },
    /// A batch size the worker has no CUDA graph for.
    #[error("worker for {model} has no CUDA graph for batch {batch}; it has {have:?}")]
    Batch {
        /// The model.
        model: String,
        /// The size asked for.
        batch: u32,
        /// The sizes it has.
        have: Vec<u32>,
    },
    /// A green context the worker does not have.
    #[error("worker for {model} has no green context {context}; it has {have:?} (SM counts)")]
    Context {
        /// The model.
        model: String,
        /// The index asked for.
        context: usize,
        /// The SM counts of those it has.
        have: Vec<u32>,
    },
    /// The worker held a batch far longer than it could take (see `serving::HUNG_AFTER_SLOS`).
    #[error("worker for {model} has not answered a batch in {waited_ms:.0} ms: taken as hung")]
    Hung {
        /// The model.
        model: String,
        /// How long the batch had been held.
        waited_ms: f64,
    },
    /// Every shared-memory slot of the worker holds a batch.
    #[error("worker for {model} already holds {SLOTS} batches; wait for one to complete")]
    Full {
        /// The model.
        model: String,
    },
    /// The shared-memory file failed.
    #[error("shared memory: {0}")]
    Io(#[from] std::io::Error),
}

impl WorkerError {
    /// Whether the worker died of MPS, not of its model: CUDA's MPS errors
    /// (cudaErrorMpsRpcFailure, cudaErrorMpsServerNotReady, ...) all name "MPS".
    pub fn mentions_mps(&self) -> bool {
        matches!(self, WorkerError::Died { stderr, .. } if stderr.contains("MPS"))
    }
}

impl From<WorkerError> for gpuslice_control::BackendError {
    fn from(e: WorkerError) -> Self {
        gpuslice_control::BackendError::Worker(Box::new(e))
    }
}

/// GPU time of one batch's stages (from CUDA events in the worker) and the round trip seen here.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct StageTimes {
    /// Host-to-device copy, ms (CUDA events).
    pub h2d_ms: f64,
    /// Inference, ms.
    pub infer_ms: f64,
    /// Device-to-host copy, ms.
    pub d2h_ms: f64,
    /// From submission to the completion seen by the host.
    #[serde(skip)]
    pub round_trip: Duration,
}

#[derive(Deserialize)]
struct Ready {
    batches: Vec<u32>,
    input_bytes: usize,
    output_bytes: usize,
    engine: String,
    sms: u32,
    #[serde(default)]
    green_sms: Vec<u32>,
    #[serde(default)]
    pinned: bool,
    /// Where it gathers packets from the packet pool ("gpu", or "cpu" without one), if it maps one.
    #[serde(default)]
    packet_gather: Option<String>,
    /// Where its start-up went, seconds by phase (imports, model load, warm-up and capture per
    /// batch size).
    #[serde(default)]
    start_s: std::collections::BTreeMap<String, f64>,
}

#[derive(Deserialize)]
struct Done {
    done: u64,
    #[serde(flatten)]
    times: StageTimes,
}

/// A batch the worker has completed.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// The shared-memory slot it used: its outputs are in `output_of(slot)` until the slot is
    /// used again.
    pub slot: usize,
    /// When it was handed to the worker (before its inputs were written) and when its completion
    /// was read.
    pub submitted: Instant,
    /// When the completion was seen.
    pub done: Instant,
    /// `round_trip` is `done - submitted`: it includes waiting behind a batch ahead of it.
    pub times: StageTimes,
}

/// A batch handed to the worker, not completed yet.
struct Pending {
    seq: u64,
    slot: usize,
    submitted: Instant,
}

/// Called by a worker's reader thread after each line it reads (and when the worker's output ends).
pub type Notify = Box<dyn Fn() + Send>;

/// A running worker process and its shared-memory slots.
pub struct Worker {
    /// The model (torchvision name).
    pub model: String,
    /// The batch sizes it keeps a CUDA graph for.
    pub batches: Vec<u32>,
    /// What runs the model (e.g. `torch-graph-2.11.0+cu130`) and the device's SM count.
    pub engine: String,
    /// SMs of its slice (its green context, or the MPS share).
    pub sms: u32,
    /// Started with `WorkerSpec::quick_start`.
    pub quick_start: bool,
    /// The SM counts of its green contexts (`run_on`'s `context` indexes these).
    pub green_sms: Vec<u32>,
    /// The packet pool it gathers request rows from (`WorkerSpec::packet_pool`), once it said it
    /// maps it.
    packet_pool: Option<PacketLayout>,
    child: Child,
    stdin: ChildStdin,
    /// Lines from the worker's stdout with the time each was read; disconnected when it ends.
    lines: Receiver<(String, Instant)>,
    notify: Arc<Mutex<Option<Notify>>>,
    stderr_path: PathBuf,
    shm_path: PathBuf,
    shm: MmapMut,
    input_bytes: usize,
    /// Bytes of one slot (its inputs, then its outputs).
    slot_bytes: usize,
    /// Bytes of one request's input row and output row.
    row_in: usize,
    row_out: usize,
    pending: VecDeque<Pending>,
    seq: u64,
}

impl Worker {
    /// Starts the worker and waits until it has captured its graphs.
    pub fn spawn(spec: &WorkerSpec) -> Result<Worker, WorkerError> {
        if let Some(problem) = spec.io.problem() {
            return Err(WorkerError::Protocol { model: spec.model.clone(), line: problem });
        }
        let largest = spec.batches.iter().copied().max().unwrap_or(1) as usize;
        let (row_in, row_out) = (spec.io.input().bytes(), spec.io.output().bytes());
        let slot_bytes = largest * (row_in + row_out);
        let size = SLOTS * slot_bytes;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| {
            for dir in [shm_dir(), std::env::temp_dir()] {
                remove_stale_files(&dir);
            }
        });
        // The file name carries no part of the model's source (a path, or a hostile name).
        let unique = format!("{FILE_PREFIX}{}-{n}", std::process::id());
        let shm_path = shm_dir().join(&unique);
        let stderr_path = std::env::temp_dir().join(format!("{unique}.stderr"));
        // Until the worker owns them (its Drop removes them), a failed start removes them here.
        let mut files = FilesGuard(vec![shm_path.clone(), stderr_path.clone()]);
        // Requests' bytes pass through it: readable and writable by this user only.
        let file = private_file(&shm_path)?;
        file.set_len(size as u64)?;
        // SAFETY: the file is private to this worker pair and not truncated while mapped.
        let shm = unsafe { MmapMut::map_mut(&file)? };
        let batches: Vec<String> = spec.batches.iter().map(|b| b.to_string()).collect();
        let mut command = Command::new("python3");
        command
            .arg(&spec.script)
            .args(["--model", &spec.model, "--batches", &batches.join(","), "--slots", &SLOTS.to_string(), "--shm"])
            .arg(&shm_path)
            .args(["--io", &serde_json::to_string(&spec.io).expect("tensor specs serialize")]);
        // An MPS client sees the devices its daemon was given, renumbered from 0: naming one
        // again (inherited from this process) would fail its start (NVIDIA's MPS guide).
        if spec.env.iter().any(|(k, _)| k == crate::mps::PIPE_DIRECTORY) {
            command.env_remove(crate::mps::VISIBLE_DEVICES);
        }
        command
            .envs(spec.env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(private_file(&stderr_path)?);
        if let Some(ms) = spec.fake_ms {
            command.args(["--fake-ms", &ms.to_string()]);
        }
        if !spec.half {
            command.arg("--fp32");
        }
        if let Some(handle) = &spec.input_ipc {
            command.args(["--input-ipc", handle]);
        }
        if let Some(pool) = &spec.packet_pool {
            let layout = format!("{},{},{}", pool.slot_bytes, pool.header_bytes, pool.payload_bytes);
            command.arg("--packet-pool").arg(&pool.path).args(["--packet-layout", &layout]);
        }
        if !spec.green_sms.is_empty() {
            let counts: Vec<String> = spec.green_sms.iter().map(|n| n.to_string()).collect();
            command.args(["--green-sms", &counts.join(",")]);
        }
        if spec.quick_start {
            command.arg("--quick-start");
        }
        let mut child = command.spawn().map_err(|cause| WorkerError::Spawn { model: spec.model.clone(), cause })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let notify: Arc<Mutex<Option<Notify>>> = Arc::new(Mutex::new(None));
        let lines = read_lines(stdout, notify.clone());
        // The worker's Drop removes them from here on.
        files.0.clear();
        let mut worker = Worker {
            model: spec.model.clone(),
            batches: spec.batches.clone(),
            engine: String::new(),
            sms: 0,
            quick_start: spec.quick_start,
            green_sms: Vec::new(),
            packet_pool: None,
            child,
            stdin,
            lines,
            notify,
            stderr_path,
            shm_path,
            shm,
            input_bytes: 0,
            slot_bytes,
            row_in,
            row_out,
            pending: VecDeque::new(),
            seq: 0,
        };
        let (line, _) = worker.read_line()?;
        let ready: Ready = serde_json::from_str(&line).map_err(|_| worker.protocol(&line))?;
        // The worker lays the slots out by the sizes it reports: they must be the rows' here.
        let largest_ready = ready.batches.iter().copied().max().unwrap_or(0) as usize;
        if ready.input_bytes != largest_ready * row_in
            || ready.output_bytes != largest_ready * row_out
            || SLOTS * (ready.input_bytes + ready.output_bytes) > worker.shm.len()
        {
            return Err(worker.protocol(&line));
        }
        worker.slot_bytes = ready.input_bytes + ready.output_bytes;
        worker.batches = ready.batches;
        worker.input_bytes = ready.input_bytes;
        worker.engine = ready.engine;
        worker.sms = ready.sms;
        if ready.green_sms != spec.green_sms {
            return Err(worker.protocol(&line));
        }
        worker.green_sms = ready.green_sms;
        match (&spec.packet_pool, ready.packet_gather.as_deref()) {
            (Some(pool), Some(place @ ("gpu" | "cpu"))) => {
                tracing::info!(model = %worker.model, pool = %pool.path.display(), gathers_on = place, "worker maps the packet pool");
                worker.packet_pool = Some(pool.clone());
            }
            (None, None) => {}
            _ => return Err(worker.protocol(&line)),
        }
        if !ready.start_s.is_empty() {
            tracing::info!(model = %worker.model, start_s = ?ready.start_s, "worker ready");
        }
        if !ready.pinned && spec.fake_ms.is_none() {
            tracing::warn!(model = %worker.model, "the worker could not page-lock its shared memory: its host copies go through a staging buffer");
        }
        Ok(worker)
    }

    fn protocol(&self, line: &str) -> WorkerError {
        WorkerError::Protocol { model: self.model.clone(), line: line.to_string() }
    }

    /// The next line from the worker and when it was read (waiting for it), or why there is none.
    fn read_line(&mut self) -> Result<(String, Instant), WorkerError> {
        self.lines.recv().map_err(|_| self.died())
    }

    /// Why the worker's output ended: its exit status and the last lines it wrote to stderr.
    fn died(&mut self) -> WorkerError {
        let status = self.child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let tail: String =
            stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ");
        WorkerError::Died { model: self.model.clone(), status, stderr: tail }
    }

    /// Why the worker's process has exited, if it has (whether or not it held a batch): a
    /// supervisor's check.
    pub fn exited(&mut self) -> Option<WorkerError> {
        matches!(self.child.try_wait(), Ok(Some(_))).then(|| self.died())
    }

    /// Calls `notify` after every line the worker writes and when its output ends (to wake a
    /// thread that waits for completions and other things at once).
    pub fn on_output(&self, notify: Notify) {
        *self.notify.lock().expect("notify") = Some(notify);
    }

    /// Slot 0's input area: write a batch's items here before `run`.
    pub fn input_mut(&mut self) -> &mut [u8] {
        &mut self.shm[..self.input_bytes]
    }

    /// The packet pool it gathers rows from, if any (see `submit`).
    pub fn packet_pool(&self) -> Option<&PacketLayout> {
        self.packet_pool.as_ref()
    }

    /// Bytes of one request's input row and of its output row.
    pub fn row_bytes(&self) -> (usize, usize) {
        (self.row_in, self.row_out)
    }

    /// The outputs of the last batch `run` ran.
    pub fn output(&self) -> &[u8] {
        self.output_of(0)
    }

    /// The outputs of the last batch completed in `slot`.
    pub fn output_of(&self, slot: usize) -> &[u8] {
        let start = slot * self.slot_bytes + self.input_bytes;
        &self.shm[start..(slot + 1) * self.slot_bytes]
    }

    /// Batches handed over and not completed yet.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Runs a batch of `batch` items already in slot 0's input area; returns when it has completed.
    /// Nothing else may be in flight.
    pub fn run(&mut self, batch: u32) -> Result<StageTimes, WorkerError> {
        self.run_on(batch, 0)
    }

    /// `run` on green context `context` (an index into `green_sms`; 0 without them).
    pub fn run_on(&mut self, batch: u32, context: usize) -> Result<StageTimes, WorkerError> {
        if let Some(busy) = self.pending.front() {
            return Err(self.protocol(&format!("run while batch {} is in flight", busy.seq)));
        }
        self.submit(batch, context, |_| 0..0)?;
        Ok(self.complete()?.times)
    }

    /// Hands a batch of `batch` items to the worker without waiting for it: `fill` writes its
    /// inputs into a free slot first, and returns the rows (a range, empty for none) whose
    /// requests' packets the worker gathers from its packet pool: the area of those rows holds,
    /// from the first of them on, each one's packet slots (u32, little-endian, in payload order,
    /// `PacketLayout::packets` each) back to back. Returns the slot. The worker runs its batches in
    /// order; `complete` or `try_complete` give their completions.
    pub fn submit(
        &mut self,
        batch: u32,
        context: usize,
        fill: impl FnOnce(&mut [u8]) -> std::ops::Range<u32>,
    ) -> Result<usize, WorkerError> {
        if !self.batches.contains(&batch) {
            return Err(WorkerError::Batch { model: self.model.clone(), batch, have: self.batches.clone() });
        }
        if context >= self.green_sms.len().max(1) {
            return Err(WorkerError::Context { model: self.model.clone(), context, have: self.green_sms.clone() });
        }
        let slot = (0..SLOTS)
            .find(|s| self.pending.iter().all(|p| p.slot != *s))
            .ok_or_else(|| WorkerError::Full { model: self.model.clone() })?;
        let submitted = Instant::now();
        let start = slot * self.slot_bytes;
        let gathered = fill(&mut self.shm[start..start + self.input_bytes]);
        if !gathered.is_empty() && (self.packet_pool.is_none() || gathered.end > batch) {
            return Err(
                self.protocol(&format!("rows {gathered:?} of a batch of {batch} to gather without a packet pool"))
            );
        }
        self.seq += 1;
        let gather = match gathered.is_empty() {
            true => String::new(),
            false => format!(", \"gather\": [{}, {}]", gathered.start, gathered.end),
        };
        let command =
            format!("{{\"run\": {}, \"batch\": {batch}, \"ctx\": {context}, \"slot\": {slot}{gather}}}\n", self.seq);
        if self.stdin.write_all(command.as_bytes()).and_then(|_| self.stdin.flush()).is_err() {
            return Err(self.read_line().err().unwrap_or_else(|| self.protocol("stdin closed")));
        }
        self.pending.push_back(Pending { seq: self.seq, slot, submitted });
        Ok(slot)
    }

    /// The oldest batch in flight, once completed (waits for it).
    pub fn complete(&mut self) -> Result<Completion, WorkerError> {
        let (line, at) = self.read_line()?;
        self.completed(&line, at)
    }

    /// The oldest batch in flight if it has completed; `None` if it has not, or nothing is in flight.
    pub fn try_complete(&mut self) -> Result<Option<Completion>, WorkerError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        match self.lines.try_recv() {
            Ok((line, at)) => self.completed(&line, at).map(Some),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(self.died()),
        }
    }

    fn completed(&mut self, line: &str, at: Instant) -> Result<Completion, WorkerError> {
        let done: Done = serde_json::from_str(line).map_err(|_| self.protocol(line))?;
        let Some(pending) = self.pending.pop_front().filter(|p| p.seq == done.done) else {
            return Err(self.protocol(line));
        };
        let times = StageTimes { round_trip: at - pending.submitted, ..done.times };
        Ok(Completion { slot: pending.slot, submitted: pending.submitted, done: at, times })
    }

    /// The worker's process id (to watch or kill it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Reads the worker's stdout on a thread of its own: each line goes out with the time it was
/// read (so a completion is timed when it arrives, however late it is looked at), then `notify`.
fn read_lines(
    mut stdout: BufReader<std::process::ChildStdout>,
    notify: Arc<Mutex<Option<Notify>>>,
) -> Receiver<(String, Instant)> {
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        let wake = || {
            if let Some(notify) = notify.lock().expect("notify").as_ref() {
                notify();
            }
        };
        loop {
            let mut line = String::new();
            match stdout.read_line(&mut line) {
                Ok(n) if n > 0 => {
                    if sender.send((line, Instant::now())).is_err() {
                        return;
                    }
                    wake();
                }
                _ => break,
            }
        }
        drop(sender);
        wake();
    });
    lines
}

/// Names of the files a worker pair shares: `gpuslice-PID-N` in /dev/shm and
/// `gpuslice-PID-N.stderr` in the temporary folder, PID the gpuslice process's.
const FILE_PREFIX: &str = "gpuslice-";

/// A path for a shared-memory file of this process named `tag` (e.g. the NetML packet pools):
/// in the folder and with the name pattern of the workers' files, so that what a killed process
/// left is removed like theirs (`remove_stale_files`).
pub fn shared_file_path(tag: &str) -> PathBuf {
    shm_dir().join(format!("{FILE_PREFIX}{}-{tag}", std::process::id()))
}

/// Where the shared-memory files go: /dev/shm where there is one.
fn shm_dir() -> PathBuf {
    if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() }
}

/// A new file that only this user may read or write (0600).
fn private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(path)
}

/// Removes the files a gone process's workers left in `dir` (a gpuslice killed before it could
/// remove them: SIGKILL, a crash); those of running processes stay. Returns how many it removed.
pub fn remove_stale_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(FILE_PREFIX)).and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        let gone = pid.parse::<u32>().is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
        if gone && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(dir = %dir.display(), removed, "removed files left by a gpuslice that is gone");
    }
    removed
}

/// Removes its files when dropped: a worker start that fails leaves nothing behind.
struct FilesGuard(Vec<PathBuf>);

impl Drop for FilesGuard {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stdin.write_all(b"{\"quit\": true}\n");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.shm_path);
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

#[cfg(test)]
mod tests {
    use super::WorkerError;

    #[test]
    fn a_worker_that_died_of_mps_is_told_from_one_that_crashed() {
        let died = |stderr: &str| WorkerError::Died {
            model: "m".into(),
            status: "exit status: 1".into(),
            stderr: stderr.into(),
        };
        // What PyTorch prints for cudaErrorMpsRpcFailure.
        let mps = died(
            "RuntimeError: CUDA error: The remote procedural call between the MPS server and the MPS client failed.",
        );
        assert!(mps.mentions_mps());
        assert!(!died("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB").mentions_mps());
        assert!(!WorkerError::Hung { model: "m".into(), waited_ms: 2000.0 }.mentions_mps());
    }
}
