//! What the server counts, and how it is exposed.
//!
//! * [`stats`] — counters: one block per worker ([`WorkerStats`], written only by its
//!   worker, so no cache line is shared on the hot path) and the webhook sender's.
//! * [`latency`] — HDR latency histograms, recorded worker-locally and merged once a second.
//! * [`exposition`] — the Prometheus text format, rendered from [`Telemetry`] at scrape time
//!   (every name is listed in docs/metrics.md).
//! * [`health`] — `/healthz` and `/readyz`.
//! * [`listener`] — the metrics listener's own thread.

pub mod exposition;
pub mod health;
pub mod latency;
pub mod listener;
pub mod stats;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

pub use latency::LatencyRecorder;
pub use stats::{
    BrokerStats, Endpoint, Limited, Rejected, WebhookCounts, WebhookStats, WorkerStats,
};

use crate::clock::now_ns;
use crate::runtime::Backend;

/// Everything the metrics and health endpoints read, shared with the threads that count.
#[derive(Debug)]
pub struct Telemetry {
    /// Each worker's counters, by worker index.
    pub workers: Vec<Arc<WorkerStats>>,
    /// The webhook sender's counters.
    pub webhooks: Arc<WebhookStats>,
    /// The IO backend in use.
    pub backend: Backend,
    /// When the server started.
    pub started: Instant,
    /// Cancelled when the server starts shutting down (readiness turns 503).
    pub draining: CancellationToken,
    /// The cluster broker's state, when clustering over Redis.
    pub broker: Option<Arc<BrokerStats>>,
    /// Whether readiness fails while the broker cannot reach Redis.
    pub readiness_requires_broker: bool,
    /// Whether io_uring was wanted (`--io auto`) but unavailable, so the server runs on
    /// epoll.
    pub io_fallback: bool,
    /// The concurrent WebSocket connections the server admits (`--max-connections`,
    /// resolved); 0 when unknown.
    pub connections_limit: usize,
}

impl Telemetry {
    /// Counters for `workers` workers, all zero.
    pub fn new(workers: usize, backend: Backend, draining: CancellationToken) -> Self {
        Self {
            workers: (0..workers)
                .map(|_| Arc::new(WorkerStats::default()))
                .collect(),
            webhooks: Arc::default(),
            backend,
            started: Instant::now(),
            draining,
            broker: None,
            readiness_requires_broker: false,
            io_fallback: false,
            connections_limit: 0,
        }
    }

    /// The same, reporting a cluster broker's state.
    pub fn with_broker(
        mut self,
        broker: Arc<BrokerStats>,
        readiness_requires_broker: bool,
    ) -> Self {
        self.broker = Some(broker);
        self.readiness_requires_broker = readiness_requires_broker;
        self
    }
}

/// How long ago a worker last swept, in seconds.
pub fn heartbeat_age(stats: &WorkerStats) -> f64 {
    let beat = stats.heartbeat.load(Ordering::Relaxed);
    now_ns().saturating_sub(beat) as f64 / 1e9
}

/// The process's open file descriptors (entries of `/proc/self/fd`) and its limit on them
/// (the soft `RLIMIT_NOFILE`).
pub fn open_fds() -> Option<(u64, u64)> {
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some((open, crate::runtime::affinity::open_files_limit() as u64))
}

/// The process's resident set size in bytes, from `/proc/self/statm`.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
