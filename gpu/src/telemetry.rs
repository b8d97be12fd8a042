//! NVML telemetry of one GPU: utilization, memory, SM clock.

use gpuslice_control::DeviceSample;
use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::Clock;

/// NVML could not be loaded or read, or has no such GPU.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// NVML failed.
    #[error("NVML: {0}")]
    Nvml(#[from] nvml_wrapper::error::NvmlError),
    /// The GPU asked for is not among those NVML sees.
    #[error("GPU {asked} was asked for; NVML sees {count} GPU(s), indices 0 to {}", count.saturating_sub(1))]
    NoSuchDevice {
        /// The index asked for.
        asked: u32,
        /// How many GPUs NVML sees.
        count: u32,
    },
}

/// NVML, opened once for one GPU, read once per control interval.
pub struct Telemetry {
    nvml: Nvml,
    device: u32,
}

/// The embedded calibration (`builtin:NAME`) of the GPU NVML reports, logged with the GPU's
/// name; `None`, with a warning that `fallback` is used instead, where none is embedded.
pub fn calibration_of_this_gpu(gpu: u32, fallback: &str) -> Result<Option<&'static str>, TelemetryError> {
    let device = Telemetry::open(gpu)?.device_name()?;
    let found = gpuslice_traces::source::device_calibration(&device);
    match found {
        Some(spec) => tracing::info!(%device, calibration = spec, "calibration of this GPU"),
        None => tracing::warn!(%device, "no embedded calibration for this GPU: {fallback} is used"),
    }
    Ok(found)
}

/// How many GPUs NVML sees; fails (without panicking) where there is no NVIDIA driver.
pub fn device_count() -> Result<u32, TelemetryError> {
    Ok(Nvml::init()?.device_count()?)
}

impl Telemetry {
    /// Loads NVML for GPU `device` (its NVML index); fails (without panicking) where there is
    /// no NVIDIA driver or no such GPU.
    pub fn open(device: u32) -> Result<Telemetry, TelemetryError> {
        let nvml = Nvml::init()?;
        let count = nvml.device_count()?;
        if device >= count {
            return Err(TelemetryError::NoSuchDevice { asked: device, count });
        }
        Ok(Telemetry { nvml, device })
    }

    /// The GPU's product name (e.g. `NVIDIA H200`).
    pub fn device_name(&self) -> Result<String, TelemetryError> {
        Ok(self.nvml.device_by_index(self.device)?.name()?)
    }

    /// One reading of the GPU.
    pub fn sample(&self, time_s: f64) -> Result<DeviceSample, TelemetryError> {
        let device = self.nvml.device_by_index(self.device)?;
        let utilization = device.utilization_rates()?;
        let memory = device.memory_info()?;
        Ok(DeviceSample {
            time_s,
            gpu_util_pct: utilization.gpu,
            memory_util_pct: utilization.memory,
            memory_used_mib: memory.used >> 20,
            sm_clock_mhz: device.clock_info(Clock::SM)?,
        })
    }
}
