//! NVML telemetry of the GPU: utilization, memory, SM clock.

use gpuslice_control::DeviceSample;
use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::Clock;

/// NVML could not be loaded or read.
#[derive(Debug, thiserror::Error)]
#[error("NVML: {0}")]
pub struct TelemetryError(#[from] nvml_wrapper::error::NvmlError);

/// NVML, opened once, read once per control interval.
pub struct Telemetry {
    nvml: Nvml,
}

/// The embedded calibration (`builtin:NAME`) of the GPU NVML reports, logged with the GPU's
/// name; `None`, with a warning that `fallback` is used instead, where none is embedded.
pub fn calibration_of_this_gpu(fallback: &str) -> Result<Option<&'static str>, TelemetryError> {
    let device = Telemetry::open()?.device_name()?;
    let found = gpuslice_traces::source::device_calibration(&device);
    match found {
        Some(spec) => tracing::info!(%device, calibration = spec, "calibration of this GPU"),
        None => tracing::warn!(%device, "no embedded calibration for this GPU: {fallback} is used"),
    }
    Ok(found)
}

impl Telemetry {
    /// Loads NVML; fails (without panicking) where there is no NVIDIA driver.
    pub fn open() -> Result<Telemetry, TelemetryError> {
        Ok(Telemetry { nvml: Nvml::init()? })
    }

    /// GPU 0's product name (e.g. `NVIDIA H200`).
    pub fn device_name(&self) -> Result<String, TelemetryError> {
        Ok(self.nvml.device_by_index(0)?.name()?)
    }

    /// One reading of GPU 0.
    pub fn sample(&self, time_s: f64) -> Result<DeviceSample, TelemetryError> {
        let device = self.nvml.device_by_index(0)?;
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
