//! gpuslice: an SLO-driven controller that shares one GPU among inference models by controlled
//! spatial sharing. This crate holds what the `gpuslice` command does: load scenarios, run them
//! on the calibrated simulator, benchmark it, and show results as tables, CSV and SVG plots.

pub mod bench;
pub mod evaluate;
pub mod oracle;
pub mod output;
pub mod plot;
pub mod scenario;
pub mod simulate;
