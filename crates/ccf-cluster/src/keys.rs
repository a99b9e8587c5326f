//! The shared per-key counters (team K2 fills this in).
