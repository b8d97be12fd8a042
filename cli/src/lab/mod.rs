//! Commands for the GPU machine: measuring profiles and co-location (`profile`, `colocate`),
//! probing MPS (`gpu_probe`), the reallocation gap (`realloc_gap`) and the NetML path
//! (`netml_bench`, `netml_e2e`).

pub mod colocate;
pub mod gpu_probe;
pub mod netml_bench;
pub mod netml_e2e;
pub mod profile;
pub mod realloc_gap;
