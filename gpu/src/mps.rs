//! NVIDIA MPS: the control daemon with its own pipe and log directories (or one already running
//! there), the environment that sets each client's active-thread percentage, and a watch on the
//! daemon and its servers: when the server dies every client's context is lost
//! (cudaErrorMpsRpcFailure), which is an outage of the node, not a crash of its models.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the watch asks the control daemon for its servers.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// How long the control daemon has to answer before it is taken as gone.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// Worker losses within this long of an MPS outage's start are the outage's, not their models'
/// (see `MpsDaemon::outage`); past it, MPS is taken as not coming back and losses count again.
pub const MPS_RECOVERY_LIMIT: Duration = Duration::from_secs(60);

/// The variable naming the GPUs a CUDA process sees (by index or UUID).
pub const VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";
/// The variable naming an MPS daemon's pipe directory: a process with it is that daemon's client.
pub const PIPE_DIRECTORY: &str = "CUDA_MPS_PIPE_DIRECTORY";

/// Why MPS could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MpsError {
    /// `nvidia-cuda-mps-control` is not on PATH.
    #[error("MPS is not available: nvidia-cuda-mps-control was not found on PATH")]
    NotInstalled,
    /// The daemon did not start (its log says why).
    #[error("MPS control daemon did not start: {0}")]
    Start(String),
    /// Its pipe or log directory failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A private MPS control daemon (own pipe and log directories), stopped on drop.
pub struct MpsDaemon {
    pipe_dir: PathBuf,
    log_dir: PathBuf,
    /// The GPU it serves (CUDA_VISIBLE_DEVICES of the daemon; its clients see it as device 0),
    /// or every GPU the process sees.
    device: Option<u32>,
    /// Whether this process started the daemon (and so stops it).
    owned: AtomicBool,
    /// The outage under way, if any: when it began and why.
    outage: Mutex<Option<(Instant, String)>>,
    /// Whether the control daemon answered the watch's last question (see `watch`).
    answering: AtomicBool,
}

impl MpsDaemon {
    /// Starts the daemon under `base` (pipe/ and log/) for GPU `device` (None: the GPUs this
    /// process sees), or uses one already running there.
    pub fn start(base: &Path, device: Option<u32>) -> Result<MpsDaemon, MpsError> {
        let found = Command::new("sh")
            .args(["-c", "command -v nvidia-cuda-mps-control"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(MpsError::NotInstalled);
        }
        let daemon = MpsDaemon {
            pipe_dir: base.join("pipe"),
            log_dir: base.join("log"),
            device,
            owned: AtomicBool::new(false),
            outage: Mutex::new(None),
            answering: AtomicBool::new(true),
        };
        std::fs::create_dir_all(&daemon.pipe_dir)?;
        std::fs::create_dir_all(&daemon.log_dir)?;
        if daemon.pipe_dir.join("control").exists() {
            return Ok(daemon);
        }
        daemon.launch()?;
        Ok(daemon)
    }

    /// Runs `nvidia-cuda-mps-control -d` here and waits for its control pipe.
    fn launch(&self) -> Result<(), MpsError> {
        let control = self.pipe_dir.join("control");
        let mut command = Command::new("nvidia-cuda-mps-control");
        command.arg("-d").envs(self.env());
        // The daemon alone is given the device: its servers remap it, and a client that names
        // it again fails (NVIDIA's MPS guide, CUDA_VISIBLE_DEVICES).
        if let Some(device) = self.device {
            command.env(VISIBLE_DEVICES, device.to_string());
        }
        let status = command.status()?;
        if !status.success() {
            return Err(MpsError::Start(format!("nvidia-cuda-mps-control -d exited with {status}")));
        }
        // Started by us: stopped by us, even if its pipe never shows up.
        self.owned.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !control.exists() {
            if Instant::now() > deadline {
                return Err(MpsError::Start(format!("no control pipe at {} after 10 s", control.display())));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The PIDs of the MPS servers the control daemon runs, or None when it does not answer
    /// within `ANSWER_WITHIN` (it died, or hangs).
    fn servers(&self) -> Option<Vec<u32>> {
        let mut child = Command::new("nvidia-cuda-mps-control")
            .envs(self.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let asked = child.stdin.take().expect("piped").write_all(b"get_server_list\n");
        let deadline = Instant::now() + ANSWER_WITHIN;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => break None,
            }
        };
        if asked.is_err() || !status.is_some_and(|s| s.success()) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        let mut out = String::new();
        child.stdout.take().expect("piped").read_to_string(&mut out).ok()?;
        Some(out.split_whitespace().filter_map(|pid| pid.parse().ok()).collect())
    }

    /// Starts the control daemon again after it stopped answering: the stale pipe files go first
    /// (a client would wait on them).
    fn relaunch(&self) -> Result<(), MpsError> {
        for entry in std::fs::read_dir(&self.pipe_dir)? {
            let _ = std::fs::remove_file(entry?.path());
        }
        self.launch()
    }

    /// The outage under way: when it began and why (see `note_outage`).
    pub fn outage(&self) -> Option<(Instant, String)> {
        self.outage.lock().expect("MPS outage").clone()
    }

    /// Records that MPS failed (`why`), unless an outage is already under way.
    pub fn note_outage(&self, why: &str) {
        let mut outage = self.outage.lock().expect("MPS outage");
        if outage.is_none() {
            tracing::error!(why, "MPS outage: every worker on its server is lost; they restart on a new one");
            *outage = Some((Instant::now(), why.to_string()));
        }
    }

    /// Ends the outage begun at `began` (every model serves again); a later one stays.
    pub fn end_outage(&self, began: Instant) {
        let mut outage = self.outage.lock().expect("MPS outage");
        if outage.as_ref().is_some_and(|(since, _)| *since == began) {
            tracing::info!(after_s = began.elapsed().as_secs_f64(), "MPS outage over: every model serves again");
            *outage = None;
        }
    }

    /// Whether the control daemon answered the watch when it last asked (true until a watch
    /// asks): a replacement waits for it rather than asking the daemon itself.
    pub fn answering(&self) -> bool {
        self.answering.load(Ordering::SeqCst)
    }

    /// Whether a worker lost now belongs to an MPS outage (one began within `MPS_RECOVERY_LIMIT`).
    pub fn in_outage(&self) -> bool {
        self.outage().is_some_and(|(since, _)| since.elapsed() < MPS_RECOVERY_LIMIT)
    }

    /// Watches the daemon every `WATCH_EVERY` until the returned handle is dropped: a server that
    /// exits is an outage (`note_outage`); a daemon that stops answering is an outage too, and is
    /// started again.
    pub fn watch(self: &Arc<Self>) -> MpsWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let (daemon, stopping) = (self.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut known: Vec<u32> = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                let servers = daemon.servers();
                daemon.answering.store(servers.is_some(), Ordering::SeqCst);
                match servers {
                    Some(servers) => {
                        if let Some(gone) = known.iter().find(|pid| !servers.contains(pid)) {
                            daemon.note_outage(&format!("MPS server {gone} exited"));
                        }
                        known = servers;
                    }
                    None => {
                        daemon.note_outage("the MPS control daemon stopped answering");
                        known.clear();
                        match daemon.relaunch() {
                            Ok(()) => tracing::warn!("MPS control daemon started again"),
                            Err(e) => tracing::error!(error = %e, "could not start the MPS control daemon again"),
                        }
                    }
                }
                std::thread::sleep(WATCH_EVERY);
            }
        });
        MpsWatch { stop, thread: Some(thread) }
    }

    /// Starts a daemon of this process's own for GPU `device` (None: the GPUs this process
    /// sees), under the temporary folder: one per GPU, each with its own pipe directory.
    pub fn start_private(device: Option<u32>) -> Result<MpsDaemon, MpsError> {
        let gpu = device.map(|d| format!("-gpu{d}")).unwrap_or_default();
        MpsDaemon::start(&std::env::temp_dir().join(format!("gpuslice-mps-{}{gpu}", std::process::id())), device)
    }

    /// The variables every client of this daemon needs.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (PIPE_DIRECTORY.into(), self.pipe_dir.display().to_string()),
            ("CUDA_MPS_LOG_DIRECTORY".into(), self.log_dir.display().to_string()),
        ]
    }

    /// A client's variables at `gpu_pct`% of the SMs.
    pub fn client_env(&self, gpu_pct: f64) -> Vec<(String, String)> {
        let mut env = self.env();
        env.push(("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(), format!("{}", gpu_pct.clamp(1.0, 100.0))));
        env
    }
}

/// A running `MpsDaemon::watch`; stops it on drop.
pub struct MpsWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for MpsWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MpsDaemon {
    fn drop(&mut self) {
        if !self.owned.load(Ordering::SeqCst) {
            return;
        }
        let quit = Command::new("nvidia-cuda-mps-control").envs(self.env()).stdin(Stdio::piped()).spawn().and_then(
            |mut child| {
                child.stdin.take().expect("piped").write_all(b"quit\n")?;
                child.wait()
            },
        );
        if let Err(e) = quit {
            tracing::warn!(error = %e, "could not stop the MPS control daemon");
        }
    }
}
