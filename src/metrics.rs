//! What the server counts, and how it is exposed.
//!
//! Counters are kept per worker (each worker writes only its own [`WorkerStats`], so no
//! cache line is shared on the hot path) and read when scraped. Latencies are recorded
//! into worker-local HDR histograms, which the worker merges into its shared ones once a
//! second ([`LatencyRecorder::flush`]); a scrape merges the workers' shared histograms.
//!
//! The exposition ([`Collector`]) is encoded with `prometheus-client` in the Prometheus
//! text format, served on its own port by [`crate::metrics_server`]; every name is listed
//! in docs/metrics.md.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector as PromCollector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::protocol::channel::ChannelKind;
use crate::worker::Shared;

/// Close codes counted by name in `ringcast_connections_closed_total`; anything else is
/// `other`, and a connection that ended without a close frame is `none`.
pub const CLOSE_CODES: [u16; 19] = [
    1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 4001, 4003, 4004, 4006, 4007, 4008, 4009,
    4100, 4200, 4201,
];
const CLOSE_SLOTS: usize = CLOSE_CODES.len() + 2;

/// Why a connection was refused before it could open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// At `--max-connections` (closed with 4100).
    OverCapacity = 0,
    /// At the app's `max_connections` (closed with 4004).
    AppOverQuota,
    /// Over `--max-connections-per-ip-per-second` (HTTP 429).
    IpRate,
    /// The upgrade (or TLS handshake) was not done within `--handshake-timeout`.
    HandshakeTimeout,
}

impl Rejected {
    const ALL: [Self; 4] = [
        Self::OverCapacity,
        Self::AppOverQuota,
        Self::IpRate,
        Self::HandshakeTimeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::OverCapacity => "over_capacity",
            Self::AppOverQuota => "app_over_quota",
            Self::IpRate => "ip_rate",
            Self::HandshakeTimeout => "handshake_timeout",
        }
    }
}

/// Which rate or size limit refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// Client events over the app's `client_event_rate` (4301).
    ClientEvents = 0,
    /// HTTP API requests over the app's `max_api_requests_per_second` (429).
    ApiRequests,
    /// A subscription over `--max-channels-per-connection`.
    ConnectionChannels,
    /// A new channel over `--max-channels` or the app's `max_channels`.
    Channels,
    /// A presence channel at its member limit.
    PresenceMembers,
}

impl Limited {
    const ALL: [Self; 5] = [
        Self::ClientEvents,
        Self::ApiRequests,
        Self::ConnectionChannels,
        Self::Channels,
        Self::PresenceMembers,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::ClientEvents => "client_events",
            Self::ApiRequests => "api_requests",
            Self::ConnectionChannels => "connection_channels",
            Self::Channels => "channels",
            Self::PresenceMembers => "presence_members",
        }
    }
}

/// HTTP endpoints, as labelled in `ringcast_http_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /app/{key}` (WebSocket upgrade).
    Upgrade = 0,
    /// `POST /apps/{id}/events`.
    Events,
    /// `POST /apps/{id}/batch_events`.
    BatchEvents,
    /// `GET /apps/{id}/channels`.
    Channels,
    /// `GET /apps/{id}/channels/{name}`.
    Channel,
    /// `GET /apps/{id}/channels/{name}/users`.
    ChannelUsers,
    /// `POST /apps/{id}/users/{id}/terminate_connections`.
    TerminateConnections,
    /// `/healthz`, `/readyz`.
    Health,
    /// Anything else.
    Other,
}

impl Endpoint {
    const ALL: [Self; 9] = [
        Self::Upgrade,
        Self::Events,
        Self::BatchEvents,
        Self::Channels,
        Self::Channel,
        Self::ChannelUsers,
        Self::TerminateConnections,
        Self::Health,
        Self::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Upgrade => "websocket_upgrade",
            Self::Events => "events",
            Self::BatchEvents => "batch_events",
            Self::Channels => "channels",
            Self::Channel => "channel",
            Self::ChannelUsers => "channel_users",
            Self::TerminateConnections => "terminate_connections",
            Self::Health => "health",
            Self::Other => "other",
        }
    }

    /// The endpoint a request path names.
    pub fn of(path: &str) -> Self {
        if path.starts_with("/app/") {
            return Self::Upgrade;
        }
        if matches!(path, "/healthz" | "/readyz") {
            return Self::Health;
        }
        let segments: Vec<&str> = match path.strip_prefix("/apps/") {
            Some(rest) => rest.split('/').skip(1).collect(),
            None if path.starts_with("/users/") => path.split('/').skip(1).collect(),
            None => return Self::Other,
        };
        match segments.as_slice() {
            ["events"] => Self::Events,
            ["batch_events"] => Self::BatchEvents,
            ["channels"] => Self::Channels,
            ["channels", _] => Self::Channel,
            ["channels", _, "users"] => Self::ChannelUsers,
            ["users", _, "terminate_connections"] => Self::TerminateConnections,
            _ => Self::Other,
        }
    }
}

/// HTTP statuses counted by value; anything else is `other`.
const STATUSES: [u16; 12] = [101, 200, 400, 401, 403, 404, 405, 413, 426, 429, 500, 503];
const STATUS_SLOTS: usize = STATUSES.len() + 1;

const KINDS: [ChannelKind; 9] = [
    ChannelKind::Public,
    ChannelKind::Cache,
    ChannelKind::Private,
    ChannelKind::PrivateCache,
    ChannelKind::PrivateEncrypted,
    ChannelKind::PrivateEncryptedCache,
    ChannelKind::Presence,
    ChannelKind::PresenceCache,
    ChannelKind::ServerToUser,
];

fn kind_slot(kind: ChannelKind) -> usize {
    KINDS.iter().position(|&k| k == kind).unwrap_or(0)
}

fn kind_label(kind: ChannelKind) -> &'static str {
    match kind {
        ChannelKind::Public => "public",
        ChannelKind::Cache => "cache",
        ChannelKind::Private => "private",
        ChannelKind::PrivateCache => "private-cache",
        ChannelKind::PrivateEncrypted => "private-encrypted",
        ChannelKind::PrivateEncryptedCache => "private-encrypted-cache",
        ChannelKind::Presence => "presence",
        ChannelKind::PresenceCache => "presence-cache",
        ChannelKind::ServerToUser => "server-to-user",
    }
}

/// One worker's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerStats {
    /// Open WebSocket connections.
    pub connections: AtomicU64,
    /// WebSocket connections accepted since start.
    pub connections_total: AtomicU64,
    closed: [AtomicU64; CLOSE_SLOTS],
    rejected: [AtomicU64; Rejected::ALL.len()],
    /// Open HTTP connections (before any upgrade).
    pub http_connections: AtomicU64,
    http: [[AtomicU64; STATUS_SLOTS]; Endpoint::ALL.len()],
    /// WebSocket messages received from clients.
    pub messages_received: AtomicU64,
    /// Bytes received on WebSocket connections.
    pub bytes_received: AtomicU64,
    /// Frames written to WebSocket connections (events, replies, control frames).
    pub messages_sent: AtomicU64,
    /// Bytes written to WebSocket connections.
    pub bytes_sent: AtomicU64,
    /// Event frames queued to subscribers.
    pub frames_delivered: AtomicU64,
    /// Events accepted by the HTTP API (one per channel).
    pub events_published: AtomicU64,
    /// Connections closed with 4100 because they did not read fast enough.
    pub slow_consumer_disconnects: AtomicU64,
    /// Bytes waiting in this worker's outbound queues (updated every second).
    pub outbound_queue_bytes: AtomicU64,
    /// Publishes refused because a worker's inbox stayed full.
    pub inbox_full: AtomicU64,
    /// Client events accepted.
    pub client_events: AtomicU64,
    limited: [AtomicU64; Limited::ALL.len()],
    subscriptions: [AtomicI64; KINDS.len()],
    /// Channels this worker created (first subscriber anywhere) minus those it vacated:
    /// summed over workers, the occupied channels.
    channels: [AtomicI64; KINDS.len()],
    /// When the worker last ran its once-a-second sweep, in [`now_ns`] units.
    pub heartbeat: AtomicU64,
    /// Publish latency: HTTP publish accepted → frame handed to the kernel, per subscriber.
    pub publish_latency: Mutex<Option<Histogram<u64>>>,
    /// WebSocket frame received → processed.
    pub frame_latency: Mutex<Option<Histogram<u64>>>,
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

    /// Counts a connection's end by its close code (`None`: no close frame).
    pub fn closed(&self, code: Option<u16>) {
        let slot = match code {
            None => CLOSE_CODES.len() + 1,
            Some(c) => CLOSE_CODES
                .iter()
                .position(|&k| k == c)
                .unwrap_or(CLOSE_CODES.len()),
        };
        Self::add(&self.closed[slot], 1);
    }

    /// Counts a refused connection.
    pub fn rejected(&self, why: Rejected) {
        Self::add(&self.rejected[why as usize], 1);
    }

    /// Counts something a limit refused.
    pub fn limited(&self, which: Limited) {
        Self::add(&self.limited[which as usize], 1);
    }

    /// Counts an HTTP response.
    pub fn http(&self, endpoint: Endpoint, status: u16) {
        let slot = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len());
        Self::add(&self.http[endpoint as usize][slot], 1);
    }

    /// A subscription added (`+1`) or removed (`-1`) on this worker.
    pub fn subscription(&self, kind: ChannelKind, delta: i64) {
        self.subscriptions[kind_slot(kind)].fetch_add(delta, Ordering::Relaxed);
    }

    /// A channel occupied (`+1`) or vacated (`-1`) by this worker.
    pub fn channel(&self, kind: ChannelKind, delta: i64) {
        self.channels[kind_slot(kind)].fetch_add(delta, Ordering::Relaxed);
    }

    /// Channels this worker opened minus those it vacated (summed over workers: every
    /// occupied channel).
    pub fn channels_total(&self) -> i64 {
        self.channels
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// The value of a rate-limit counter (for tests and logs).
    pub fn limited_count(&self, which: Limited) -> u64 {
        self.limited[which as usize].load(Ordering::Relaxed)
    }
}

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

/// Lowest and highest latencies kept (100 ns to 60 s), at 2 significant digits: about
/// 64 KiB per histogram.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(100, 60_000_000_000, 2).expect("valid histogram bounds")
}

/// A worker's local latency histograms: recorded without atomics or locks, merged into
/// [`WorkerStats`] once a second.
pub struct LatencyRecorder {
    publish: RefCell<Histogram<u64>>,
    frame: RefCell<Histogram<u64>>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self {
            publish: RefCell::new(new_histogram()),
            frame: RefCell::new(new_histogram()),
        }
    }
}

impl LatencyRecorder {
    /// Records publish-to-write latencies: `stamps` published at, written at `now`.
    #[inline]
    pub fn publish(&self, now: u64, stamp: u64) {
        self.publish
            .borrow_mut()
            .saturating_record(now.saturating_sub(stamp).max(100));
    }

    /// Records one client frame's processing time.
    #[inline]
    pub fn frame(&self, received: u64, done: u64) {
        self.frame
            .borrow_mut()
            .saturating_record(done.saturating_sub(received).max(100));
    }

    /// Moves what was recorded into the worker's shared histograms.
    pub fn flush(&self, stats: &WorkerStats) {
        for (local, shared) in [
            (&self.publish, &stats.publish_latency),
            (&self.frame, &stats.frame_latency),
        ] {
            let mut local = local.borrow_mut();
            if local.is_empty() {
                continue;
            }
            let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
            let h = shared.get_or_insert_with(new_histogram);
            let _ = h.add(&*local);
            local.reset();
        }
    }
}

/// Both latencies, merged over every worker.
pub fn merged_latency(shared: &Shared) -> (Histogram<u64>, Histogram<u64>) {
    let mut publish = new_histogram();
    let mut frame = new_histogram();
    for s in &shared.stats {
        for (from, into) in [
            (&s.publish_latency, &mut publish),
            (&s.frame_latency, &mut frame),
        ] {
            if let Some(h) = from.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                let _ = into.add(h);
            }
        }
    }
    (publish, frame)
}

/// How long ago a worker last swept, in seconds.
pub fn heartbeat_age(stats: &WorkerStats) -> f64 {
    let beat = stats.heartbeat.load(Ordering::Relaxed);
    now_ns().saturating_sub(beat) as f64 / 1e9
}

/// The process's resident set size in bytes, from `/proc/self/statm`.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// A `.hgrm` percentile distribution (HdrHistogram's text layout), values in milliseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut total = 0;
        for v in h.iter_quantiles(2) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let inverse = if q < 1.0 {
                format!("{:>14.2}", 1.0 / (1.0 - q))
            } else {
                format!("{:>14}", "")
            };
            let _ = writeln!(
                out,
                "{:>12.3} {:>14.12} {:>10} {inverse}",
                v.value_iterated_to() as f64 / 1e6,
                q,
                total,
            );
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1e6,
        h.stdev() / 1e6
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1e6,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}

/// Bucket bounds of the latency histograms, in seconds.
const LATENCY_BUCKETS: [f64; 18] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug)]
struct LatencyHistogram(Histogram<u64>);

impl EncodeMetric for LatencyHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        // Per-bucket counts; the encoder accumulates them.
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
        let mut counted = 0;
        for le in LATENCY_BUCKETS {
            let cumulative = if h.is_empty() {
                0
            } else {
                h.count_between(0, (le * 1e9) as u64).min(h.len())
            };
            buckets.push((le, cumulative.saturating_sub(counted)));
            counted = counted.max(cumulative);
        }
        buckets.push((f64::INFINITY, h.len().saturating_sub(counted)));
        let sum = h.mean() * h.len() as f64 / 1e9;
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            sum,
            h.len(),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The exposition: everything in [`Shared`], read at scrape time.
#[derive(Debug)]
pub struct Collector {
    shared: Arc<SharedRef>,
}

/// [`Shared`] behind a `Debug` the collector trait wants.
struct SharedRef(Arc<Shared>);

impl std::fmt::Debug for SharedRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

type Labels = Vec<(&'static str, String)>;

fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, m) in rows {
        let e = metric.encode_family(&labels)?;
        m.encode(e)?;
    }
    Ok(())
}

fn worker_label(i: usize) -> (&'static str, String) {
    ("worker", i.to_string())
}

impl PromCollector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shared = &self.shared.0;
        let stats = &shared.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        family(
            &mut encoder,
            "ringcast_info",
            "Build and runtime information (always 1).",
            MetricType::Gauge,
            [(
                vec![
                    ("version", env!("CARGO_PKG_VERSION").to_string()),
                    ("backend", shared.backend.to_string()),
                    ("workers", stats.len().to_string()),
                ],
                ConstGauge::new(1i64),
            )],
        )?;
        family(
            &mut encoder,
            "ringcast_uptime_seconds",
            "Seconds since the server started.",
            MetricType::Gauge,
            [(
                vec![],
                ConstGauge::new(shared.started.elapsed().as_secs_f64()),
            )],
        )?;
        if let Some(rss) = resident_memory_bytes() {
            family(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                MetricType::Gauge,
                [(vec![], ConstGauge::new(rss as i64))],
            )?;
        }

        type Getter = fn(&WorkerStats) -> &AtomicU64;
        let per_worker: [(&str, &str, bool, Getter); 13] = [
            (
                "ringcast_connections",
                "Open WebSocket connections.",
                false,
                |s| &s.connections,
            ),
            (
                "ringcast_connections_opened_total",
                "WebSocket connections accepted.",
                true,
                |s| &s.connections_total,
            ),
            (
                "ringcast_http_connections",
                "Open HTTP connections not upgraded.",
                false,
                |s| &s.http_connections,
            ),
            (
                "ringcast_messages_received_total",
                "WebSocket messages received from clients.",
                true,
                |s| &s.messages_received,
            ),
            (
                "ringcast_received_bytes_total",
                "Bytes received on WebSocket connections.",
                true,
                |s| &s.bytes_received,
            ),
            (
                "ringcast_messages_sent_total",
                "WebSocket frames written to clients.",
                true,
                |s| &s.messages_sent,
            ),
            (
                "ringcast_sent_bytes_total",
                "Bytes written to WebSocket connections.",
                true,
                |s| &s.bytes_sent,
            ),
            (
                "ringcast_frames_delivered_total",
                "Event frames queued to subscribers.",
                true,
                |s| &s.frames_delivered,
            ),
            (
                "ringcast_events_published_total",
                "Events published, per channel.",
                true,
                |s| &s.events_published,
            ),
            (
                "ringcast_slow_consumer_disconnects_total",
                "Connections closed with 4100 for not reading fast enough.",
                true,
                |s| &s.slow_consumer_disconnects,
            ),
            (
                "ringcast_outbound_queue_bytes",
                "Bytes waiting in outbound queues (sampled every second).",
                false,
                |s| &s.outbound_queue_bytes,
            ),
            (
                "ringcast_inbox_full_total",
                "Publishes refused because a worker inbox stayed full.",
                true,
                |s| &s.inbox_full,
            ),
            (
                "ringcast_client_events_total",
                "Client events accepted and relayed.",
                true,
                |s| &s.client_events,
            ),
        ];
        for (name, help, counter, get) in per_worker {
            if counter {
                family(
                    &mut encoder,
                    name.trim_end_matches("_total"),
                    help,
                    MetricType::Counter,
                    stats
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (vec![worker_label(i)], ConstCounter::new(load(get(s))))),
                )?;
            } else {
                family(
                    &mut encoder,
                    name,
                    help,
                    MetricType::Gauge,
                    stats.iter().enumerate().map(|(i, s)| {
                        (vec![worker_label(i)], ConstGauge::new(load(get(s)) as i64))
                    }),
                )?;
            }
        }

        let mut closed = Vec::new();
        for (i, s) in stats.iter().enumerate() {
            for (slot, c) in s.closed.iter().enumerate() {
                let code = match slot {
                    n if n < CLOSE_CODES.len() => CLOSE_CODES[n].to_string(),
                    n if n == CLOSE_CODES.len() => "other".to_string(),
                    _ => "none".to_string(),
                };
                closed.push((
                    vec![worker_label(i), ("code", code)],
                    ConstCounter::new(load(c)),
                ));
            }
        }
        family(
            &mut encoder,
            "ringcast_connections_closed",
            "WebSocket connections ended, by the close code sent or answered (none: no closing handshake).",
            MetricType::Counter,
            closed,
        )?;

        let mut rejected = Vec::new();
        for (i, s) in stats.iter().enumerate() {
            for r in Rejected::ALL {
                rejected.push((
                    vec![worker_label(i), ("reason", r.label().to_string())],
                    ConstCounter::new(load(&s.rejected[r as usize])),
                ));
            }
        }
        family(
            &mut encoder,
            "ringcast_connections_rejected",
            "Connections refused before opening, by reason.",
            MetricType::Counter,
            rejected,
        )?;

        let mut limited = Vec::new();
        for (i, s) in stats.iter().enumerate() {
            for l in Limited::ALL {
                limited.push((
                    vec![worker_label(i), ("limit", l.label().to_string())],
                    ConstCounter::new(load(&s.limited[l as usize])),
                ));
            }
        }
        family(
            &mut encoder,
            "ringcast_rate_limited",
            "Requests, events and subscriptions refused by a limit, by limit.",
            MetricType::Counter,
            limited,
        )?;

        let mut http = Vec::new();
        for (i, s) in stats.iter().enumerate() {
            for e in Endpoint::ALL {
                for (slot, c) in s.http[e as usize].iter().enumerate() {
                    let v = load(c);
                    if v == 0 {
                        continue;
                    }
                    let status = STATUSES
                        .get(slot)
                        .map_or_else(|| "other".to_string(), u16::to_string);
                    http.push((
                        vec![
                            worker_label(i),
                            ("endpoint", e.label().to_string()),
                            ("status", status),
                        ],
                        ConstCounter::new(v),
                    ));
                }
            }
        }
        family(
            &mut encoder,
            "ringcast_http_requests",
            "HTTP requests answered, by endpoint and status.",
            MetricType::Counter,
            http,
        )?;

        let mut subs = Vec::new();
        for (i, s) in stats.iter().enumerate() {
            for k in KINDS {
                subs.push((
                    vec![worker_label(i), ("type", kind_label(k).to_string())],
                    ConstGauge::new(s.subscriptions[kind_slot(k)].load(Ordering::Relaxed)),
                ));
            }
        }
        family(
            &mut encoder,
            "ringcast_subscriptions",
            "Channel subscriptions, by channel type.",
            MetricType::Gauge,
            subs,
        )?;
        family(
            &mut encoder,
            "ringcast_channels",
            "Occupied channels (over all workers), by channel type.",
            MetricType::Gauge,
            KINDS.map(|k| {
                let n: i64 = stats
                    .iter()
                    .map(|s| s.channels[kind_slot(k)].load(Ordering::Relaxed))
                    .sum();
                (
                    vec![("type", kind_label(k).to_string())],
                    ConstGauge::new(n),
                )
            }),
        )?;
        family(
            &mut encoder,
            "ringcast_worker_heartbeat_age_seconds",
            "Seconds since each worker last ran its once-a-second sweep (a stuck worker grows this).",
            MetricType::Gauge,
            stats
                .iter()
                .enumerate()
                .map(|(i, s)| (vec![worker_label(i)], ConstGauge::new(heartbeat_age(s)))),
        )?;

        let hooks = shared.webhooks.as_ref().map(|w| w.stats.snapshot());
        let h = hooks.unwrap_or_default();
        family(
            &mut encoder,
            "ringcast_webhook_requests",
            "Webhook requests: delivered (2xx), failed (attempts that will be retried), dropped (after 5 minutes of retries), overload (dropped because the queue was full).",
            MetricType::Counter,
            [
                ("delivered", h.delivered),
                ("failed", h.failed_attempts),
                ("dropped", h.dropped_after_retries),
                ("overload", h.dropped_overload),
            ]
            .map(|(r, v)| (vec![("result", r.to_string())], ConstCounter::new(v))),
        )?;
        family(
            &mut encoder,
            "ringcast_webhook_events_cancelled",
            "channel_vacated/member_removed webhooks cancelled because the channel or member came back within 3 s.",
            MetricType::Counter,
            [(vec![], ConstCounter::new(h.cancelled))],
        )?;

        let (publish, frame) = merged_latency(shared);
        family(
            &mut encoder,
            "ringcast_publish_latency_seconds",
            "HTTP publish accepted to event frame handed to the kernel, per subscriber.",
            MetricType::Histogram,
            [(Labels::new(), LatencyHistogram(publish))],
        )?;
        family(
            &mut encoder,
            "ringcast_frame_processing_seconds",
            "WebSocket frame received to processed.",
            MetricType::Histogram,
            [(Labels::new(), LatencyHistogram(frame))],
        )?;
        Ok(())
    }
}

/// Renders every metric in the Prometheus text format.
pub fn render(shared: &Arc<Shared>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collector {
        shared: Arc::new(SharedRef(shared.clone())),
    }));
    let mut out = String::new();
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_recognised_from_paths() {
        assert_eq!(Endpoint::of("/app/key"), Endpoint::Upgrade);
        assert_eq!(Endpoint::of("/apps/1/events"), Endpoint::Events);
        assert_eq!(Endpoint::of("/apps/1/batch_events"), Endpoint::BatchEvents);
        assert_eq!(Endpoint::of("/apps/1/channels"), Endpoint::Channels);
        assert_eq!(Endpoint::of("/apps/1/channels/a"), Endpoint::Channel);
        assert_eq!(
            Endpoint::of("/apps/1/channels/a/users"),
            Endpoint::ChannelUsers
        );
        assert_eq!(
            Endpoint::of("/apps/1/users/u/terminate_connections"),
            Endpoint::TerminateConnections
        );
        assert_eq!(Endpoint::of("/readyz"), Endpoint::Health);
        assert_eq!(Endpoint::of("/apps/1/nope"), Endpoint::Other);
        assert_eq!(Endpoint::of("/x"), Endpoint::Other);
    }

    #[test]
    fn hgrm_lists_percentiles_in_milliseconds() {
        let mut h = new_histogram();
        for ms in 1..=100u64 {
            h.record(ms * 1_000_000).unwrap();
        }
        let text = hgrm(&h);
        assert!(
            text.starts_with("       Value     Percentile TotalCount"),
            "{text}"
        );
        let last = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.trim().is_empty())
            .unwrap();
        let cols: Vec<&str> = last.split_whitespace().collect();
        let max: f64 = cols[0].parse().unwrap();
        assert!((99.0..=101.0).contains(&max), "{last}");
        assert_eq!(cols[1].parse::<f64>().unwrap(), 1.0);
        assert_eq!(cols[2], "100");
        assert!(text.contains("Total count    =          100"), "{text}");
    }
}
