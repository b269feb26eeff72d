//! Counters, kept per worker (each worker writes only its own, so no cache line is
//! shared on the hot path) and summed when scraped at `/metrics` (Prometheus text format).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// One worker's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerStats {
    /// Open WebSocket connections.
    pub connections: AtomicU64,
    /// WebSocket connections accepted since start.
    pub connections_total: AtomicU64,
    /// Open HTTP connections (before any upgrade).
    pub http_connections: AtomicU64,
    /// HTTP requests served.
    pub http_requests: AtomicU64,
    /// WebSocket messages received from clients.
    pub messages_received: AtomicU64,
    /// Event frames queued to subscribers.
    pub frames_delivered: AtomicU64,
    /// Events accepted by the HTTP API (one per channel).
    pub events_published: AtomicU64,
    /// Connections closed with 4100 because they did not read fast enough.
    pub slow_consumer_disconnects: AtomicU64,
    /// Connections closed for protocol violations (RFC 6455 close codes 1002/1003/1007/1009).
    pub protocol_errors: AtomicU64,
    /// Connections refused with 4100 because the server was at `--max-connections`.
    pub over_capacity_rejections: AtomicU64,
    /// Publishes refused because a worker's inbox stayed full.
    pub inbox_full: AtomicU64,
    /// Client events accepted.
    pub client_events: AtomicU64,
    /// Client events refused for the rate limit (4301).
    pub client_events_rejected: AtomicU64,
}

impl WorkerStats {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n` from a gauge.
    #[inline]
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Renders every worker's counters in the Prometheus text format.
pub fn render(stats: &[std::sync::Arc<WorkerStats>], backend: &str, uptime_secs: u64) -> String {
    type Getter = fn(&WorkerStats) -> &AtomicU64;
    const METRICS: &[(&str, &str, &str, Getter)] = &[
        (
            "ringcast_connections",
            "gauge",
            "Open WebSocket connections.",
            |s| &s.connections,
        ),
        (
            "ringcast_connections_total",
            "counter",
            "WebSocket connections accepted.",
            |s| &s.connections_total,
        ),
        (
            "ringcast_http_connections",
            "gauge",
            "Open HTTP connections not upgraded.",
            |s| &s.http_connections,
        ),
        (
            "ringcast_http_requests_total",
            "counter",
            "HTTP requests served.",
            |s| &s.http_requests,
        ),
        (
            "ringcast_messages_received_total",
            "counter",
            "WebSocket messages received from clients.",
            |s| &s.messages_received,
        ),
        (
            "ringcast_frames_delivered_total",
            "counter",
            "Event frames queued to subscribers.",
            |s| &s.frames_delivered,
        ),
        (
            "ringcast_events_published_total",
            "counter",
            "Events accepted by the HTTP API, per channel.",
            |s| &s.events_published,
        ),
        (
            "ringcast_slow_consumer_disconnects_total",
            "counter",
            "Connections closed with 4100 for not reading fast enough.",
            |s| &s.slow_consumer_disconnects,
        ),
        (
            "ringcast_protocol_errors_total",
            "counter",
            "Connections closed for WebSocket protocol violations.",
            |s| &s.protocol_errors,
        ),
        (
            "ringcast_over_capacity_rejections_total",
            "counter",
            "Connections refused at --max-connections.",
            |s| &s.over_capacity_rejections,
        ),
        (
            "ringcast_inbox_full_total",
            "counter",
            "Publishes refused because a worker inbox stayed full.",
            |s| &s.inbox_full,
        ),
        (
            "ringcast_client_events_total",
            "counter",
            "Client events accepted and relayed.",
            |s| &s.client_events,
        ),
        (
            "ringcast_client_events_rate_limited_total",
            "counter",
            "Client events refused with 4301 (over the per-connection rate).",
            |s| &s.client_events_rejected,
        ),
    ];
    let mut out = String::new();
    let _ = writeln!(out, "# HELP ringcast_info Build and runtime information.");
    let _ = writeln!(out, "# TYPE ringcast_info gauge");
    let _ = writeln!(
        out,
        "ringcast_info{{version=\"{}\",backend=\"{backend}\",workers=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        stats.len()
    );
    let _ = writeln!(out, "# HELP ringcast_uptime_seconds Seconds since start.");
    let _ = writeln!(out, "# TYPE ringcast_uptime_seconds gauge");
    let _ = writeln!(out, "ringcast_uptime_seconds {uptime_secs}");
    for (name, kind, help, get) in METRICS {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (i, s) in stats.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{worker=\"{i}\"}} {}",
                get(s).load(Ordering::Relaxed)
            );
        }
    }
    out
}
