//! NVML telemetry of the GPU: utilization, memory, SM clock.

use gpuslice_control::DeviceSample;
use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::Clock;

pub struct Telemetry {
    nvml: Nvml,
}

impl Telemetry {
    /// Loads NVML; fails (without panicking) where there is no NVIDIA driver.
    pub fn open() -> Result<Telemetry, String> {
        Nvml::init().map(|nvml| Telemetry { nvml }).map_err(|e| format!("NVML is not available: {e}"))
    }

    /// One reading of GPU 0.
    pub fn sample(&self, time_s: f64) -> Result<DeviceSample, String> {
        let device = self.nvml.device_by_index(0).map_err(|e| e.to_string())?;
        let utilization = device.utilization_rates().map_err(|e| e.to_string())?;
        let memory = device.memory_info().map_err(|e| e.to_string())?;
        Ok(DeviceSample {
            time_s,
            gpu_util_pct: utilization.gpu,
            memory_util_pct: utilization.memory,
            memory_used_mib: memory.used >> 20,
            sm_clock_mhz: device.clock_info(Clock::SM).map_err(|e| e.to_string())?,
        })
    }
}
