//! End-to-end tests across the gpuslice crates live in `tests/tests/`; this library is empty.
