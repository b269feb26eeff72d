//! Time as ringcast reads it: nanosecond timestamps for latencies, coarse ticks for
//! timeouts, and Unix time for signatures and webhooks.
//!
//! Rules that depend on time ([`crate::pusher`]) never read a clock: they take `now` as an
//! argument, and the worker reads it here.

use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the process started (at least 1): timestamps comparable across
/// threads. Read from the TSC through `quanta` where it is invariant (a few ns; the
/// system clock costs about 30 ns in a VM, which per subscriber would show in fan-out),
/// from the monotonic clock otherwise.
#[inline]
pub fn now_ns() -> u64 {
    static CLOCK: LazyLock<(quanta::Clock, u64)> = LazyLock::new(|| {
        let clock = quanta::Clock::new();
        let start = clock.raw();
        (clock, start)
    });
    let (clock, start) = &*CLOCK;
    clock.delta_as_nanos(*start, clock.raw()).max(1)
}

/// A coarse timestamp: tenths of a second since the process started. Four bytes instead of
/// an `Instant`'s sixteen, on every connection; timeouts are counted in seconds anyway.
pub type Tick = u32;

/// Ticks per second.
pub const TICKS_PER_SEC: u32 = 10;

/// The current tick.
pub fn tick_now() -> Tick {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    (EPOCH.elapsed().as_millis() / (1000 / TICKS_PER_SEC as u128)) as Tick
}

/// `d` in ticks (rounded up, at least one).
pub fn ticks(d: Duration) -> Tick {
    (d.as_millis().div_ceil(1000 / TICKS_PER_SEC as u128)).clamp(1, Tick::MAX as u128) as Tick
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_whole_ticks() {
        assert_eq!(ticks(Duration::ZERO), 1);
        assert_eq!(ticks(Duration::from_millis(100)), 1);
        assert_eq!(ticks(Duration::from_millis(101)), 2);
        assert_eq!(ticks(Duration::from_secs(5)), 5 * TICKS_PER_SEC);
        assert_eq!(ticks(Duration::MAX), Tick::MAX);
    }
}
