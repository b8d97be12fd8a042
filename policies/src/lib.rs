//! Allocation policies (filled in by the policy work; see the issues).
