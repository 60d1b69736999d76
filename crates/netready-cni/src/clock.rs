//! Timestamps that stay comparable across a netready restart: the monotonic clock (immune to
//! wall-clock steps, the same for every process since boot) plus the wall clock for records.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One instant, on both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    /// `CLOCK_MONOTONIC` in nanoseconds: durations are differences of these.
    pub mono_ns: u64,
    /// Wall clock, nanoseconds since the Unix epoch: for RFC 3339 stamps in records.
    pub wall_ns: u64,
}

impl Stamp {
    /// Now.
    pub fn now() -> Self {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Stamp {
            mono_ns: mono,
            wall_ns: wall,
        }
    }

    /// Time from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(&self, earlier: &Stamp) -> Duration {
        Duration::from_nanos(self.mono_ns.saturating_sub(earlier.mono_ns))
    }

    /// Seconds from `earlier` to `self`, as metrics report durations.
    pub fn secs_since(&self, earlier: &Stamp) -> f64 {
        self.since(earlier).as_secs_f64()
    }
}
