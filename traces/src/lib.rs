//! Input data for gpuslice: calibration profiles and the latency model fitted from them, request
//! traces (Azure LLM 2023, Azure Functions 2019) and synthetic arrival processes. Every reader
//! reports malformed input as an error naming the file, line and field; none panics.

pub mod arrivals;
pub mod azure;
pub mod colocation;
pub mod error;
pub mod latency;
pub mod profile;
pub mod source;
pub mod spec;

pub use arrivals::ArrivalProcess;
pub use error::DataError;
pub use latency::LatencyModel;
pub use profile::{ModelProfile, ProfilePoint, ProfileSet};
pub use source::Source;
pub use spec::{ArrivalSpec, TraceLibrary};
