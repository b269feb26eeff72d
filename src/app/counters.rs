//! What an app is using now over all workers, checked against its limits; kept across
//! reloads.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What an app is using now, over all workers (checked against its limits).
#[derive(Debug, Default)]
pub struct AppCounters {
    /// Open WebSocket connections.
    pub connections: AtomicUsize,
    /// Occupied channels.
    pub channels: AtomicUsize,
    /// API requests in the current second: `second << 32 | count`.
    api_window: AtomicU64,
}

impl AppCounters {
    /// Counts an API request made in `second`; false when it is over `per_second`
    /// (0: unlimited).
    pub fn allow_api_request(&self, second: u64, per_second: u32) -> bool {
        if per_second == 0 {
            return true;
        }
        let mut cur = self.api_window.load(Ordering::Relaxed);
        loop {
            let (sec, count) = (cur >> 32, cur & 0xffff_ffff);
            let next = if sec == second & 0xffff_ffff {
                if count >= u64::from(per_second) {
                    return false;
                }
                cur + 1
            } else {
                ((second & 0xffff_ffff) << 32) | 1
            };
            match self.api_window.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_rate_window_is_per_second() {
        let c = AppCounters::default();
        assert!((0..3).all(|_| c.allow_api_request(100, 3)));
        assert!(!c.allow_api_request(100, 3));
        assert!(c.allow_api_request(101, 3));
        assert!(
            (0..10).all(|_| c.allow_api_request(102, 0)),
            "0 is no limit"
        );
    }
}
