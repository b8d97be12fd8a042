//! NVIDIA MPS: the control daemon with its own pipe and log directories (or one already running
//! there), and the environment that sets each client's active-thread percentage.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    /// Whether this process started the daemon (and so stops it).
    owned: bool,
}

impl MpsDaemon {
    /// Starts the daemon under `base` (pipe/ and log/), or uses one already running there.
    pub fn start(base: &Path) -> Result<MpsDaemon, MpsError> {
        let found = Command::new("sh")
            .args(["-c", "command -v nvidia-cuda-mps-control"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(MpsError::NotInstalled);
        }
        let mut daemon = MpsDaemon { pipe_dir: base.join("pipe"), log_dir: base.join("log"), owned: false };
        std::fs::create_dir_all(&daemon.pipe_dir)?;
        std::fs::create_dir_all(&daemon.log_dir)?;
        let control = daemon.pipe_dir.join("control");
        if control.exists() {
            return Ok(daemon);
        }
        let status = Command::new("nvidia-cuda-mps-control").arg("-d").envs(daemon.env()).status()?;
        if !status.success() {
            return Err(MpsError::Start(format!("nvidia-cuda-mps-control -d exited with {status}")));
        }
        // Started by us: stopped by us, even if its pipe never shows up.
        daemon.owned = true;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !control.exists() {
            if Instant::now() > deadline {
                return Err(MpsError::Start(format!("no control pipe at {} after 10 s", control.display())));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }

    /// Starts a daemon of this process's own, under the temporary folder.
    pub fn start_private() -> Result<MpsDaemon, MpsError> {
        MpsDaemon::start(&std::env::temp_dir().join(format!("gpuslice-mps-{}", std::process::id())))
    }

    /// The variables every client of this daemon needs.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("CUDA_MPS_PIPE_DIRECTORY".into(), self.pipe_dir.display().to_string()),
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

impl Drop for MpsDaemon {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let quit = Command::new("nvidia-cuda-mps-control").envs(self.env()).stdin(Stdio::piped()).spawn().and_then(
            |mut child| {
                use std::io::Write;
                child.stdin.take().expect("piped").write_all(b"quit\n")?;
                child.wait()
            },
        );
        if let Err(e) = quit {
            tracing::warn!(error = %e, "could not stop the MPS control daemon");
        }
    }
}
