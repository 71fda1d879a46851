//! The clock read leases run on: `CLOCK_BOOTTIME`.
//!
//! A lease is a promise about elapsed time. `CLOCK_MONOTONIC` (tokio's `Instant`) stops
//! while the machine or VM is suspended, so a leader suspended for ten seconds would wake
//! believing milliseconds had passed and serve reads from a lease long over.
//! `CLOCK_BOOTTIME` keeps counting through a suspension (see docs/LEASES.md).

use rustix::time::{clock_gettime, ClockId, Timespec};
use seedkv_proto::lease::Clock;

/// Milliseconds of `CLOCK_BOOTTIME` since the clock was made.
pub fn boot_clock() -> Clock {
    let origin_ms = millis(clock_gettime(ClockId::Boottime));
    Clock::new(move || millis(clock_gettime(ClockId::Boottime)).saturating_sub(origin_ms))
}

fn millis(time: Timespec) -> u64 {
    let secs = u64::try_from(time.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(time.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000).saturating_add(nanos / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_clock_moves_forward() {
        let clock = boot_clock();
        let before = clock.now_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let after = clock.now_ms();
        assert!(after >= before + 20, "{before} then {after}");
    }
}
