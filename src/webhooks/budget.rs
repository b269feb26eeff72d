//! The sender's memory budget, and how drops are reported.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::MAX_BYTES;

/// Bytes the sender holds, against [`MAX_BYTES`].
#[derive(Debug, Default)]
pub(super) struct Budget(AtomicUsize);

impl Budget {
    pub(super) fn take(&self, n: usize) -> bool {
        let before = self.0.fetch_add(n, Ordering::Relaxed);
        if before + n > MAX_BYTES {
            self.0.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(super) fn give(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Logs a dropped event at most every 10 s, with how many were dropped since.
pub(super) fn warn_dropped(why: &'static str) {
    static DROPPED: AtomicU64 = AtomicU64::new(0);
    static LAST: AtomicU64 = AtomicU64::new(0);
    let n = DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
    let now = crate::clock::now_ns() / 1_000_000_000;
    let last = LAST.load(Ordering::Relaxed);
    if (last == 0 || now >= last + 10)
        && LAST
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        DROPPED.store(0, Ordering::Relaxed);
        tracing::warn!(dropped = n, "webhook events dropped: {why}");
    }
}
