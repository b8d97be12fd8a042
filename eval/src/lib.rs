//! Offline evaluation of sharing policies: load a scenario, run it on the calibrated simulator
//! under a policy (`simulate`), compare policies on the same arrivals (`evaluate`), find each
//! policy's capacity at the SLO (`capacity`), plan the oracle from the whole trace (`oracle`),
//! calibrate and validate the simulator against GPU measurements (`calibration`), and show
//! results as tables, CSV and SVG plots (`output`, `plot`). Nothing here links GPU or network
//! code: the GPU backend plugs in through `gpuslice_control::BackendBuilder`.

pub mod bench;
pub mod calibration;
pub mod capacity;
pub mod cluster;
pub mod evaluate;
pub mod oracle;
pub mod output;
pub mod plot;
pub mod scenario;
pub mod simulate;
