//! Backends that the controller drives (filled in by the backend work; see the issues).
