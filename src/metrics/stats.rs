//! Counters: one block per worker, written only by that worker (no cache line is shared on
//! the hot path), read when scraped; and the webhook sender's counters.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use super::latency::SharedLatency;
use crate::protocol::channel::ChannelKind;

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
    /// Over `--max-connections-per-ip` (closed at accept).
    IpConnections,
    /// At `--max-http-connections` with no idle HTTP connection to close instead (closed
    /// at accept).
    HttpOverCapacity,
}

impl Rejected {
    pub(super) const ALL: [Self; 6] = [
        Self::OverCapacity,
        Self::AppOverQuota,
        Self::IpRate,
        Self::HandshakeTimeout,
        Self::IpConnections,
        Self::HttpOverCapacity,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::OverCapacity => "over_capacity",
            Self::AppOverQuota => "app_over_quota",
            Self::IpRate => "ip_rate",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::IpConnections => "ip_connections",
            Self::HttpOverCapacity => "http_over_capacity",
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
    /// A subscription over `--max-subscriptions-per-second`.
    Subscriptions,
}

impl Limited {
    pub(super) const ALL: [Self; 6] = [
        Self::ClientEvents,
        Self::ApiRequests,
        Self::ConnectionChannels,
        Self::Channels,
        Self::PresenceMembers,
        Self::Subscriptions,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::ClientEvents => "client_events",
            Self::ApiRequests => "api_requests",
            Self::ConnectionChannels => "connection_channels",
            Self::Channels => "channels",
            Self::PresenceMembers => "presence_members",
            Self::Subscriptions => "subscriptions",
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
    pub(super) const ALL: [Self; 9] = [
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

    pub(super) fn label(self) -> &'static str {
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
pub(super) const STATUSES: [u16; 12] = [101, 200, 400, 401, 403, 404, 405, 413, 426, 429, 500, 503];
const STATUS_SLOTS: usize = STATUSES.len() + 1;

pub(super) const KINDS: [ChannelKind; 9] = [
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

pub(super) fn kind_slot(kind: ChannelKind) -> usize {
    KINDS.iter().position(|&k| k == kind).unwrap_or(0)
}

pub(super) fn kind_label(kind: ChannelKind) -> &'static str {
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
    pub(super) closed: [AtomicU64; CLOSE_SLOTS],
    pub(super) rejected: [AtomicU64; Rejected::ALL.len()],
    /// Open HTTP connections (before any upgrade).
    pub http_connections: AtomicU64,
    pub(super) http: [[AtomicU64; STATUS_SLOTS]; Endpoint::ALL.len()],
    /// WebSocket messages received from clients.
    pub messages_received: AtomicU64,
    /// Bytes received on WebSocket connections.
    pub bytes_received: AtomicU64,
    /// Frames written to WebSocket connections (events, replies, control frames).
    pub messages_sent: AtomicU64,
    /// Bytes written to WebSocket connections.
    pub bytes_sent: AtomicU64,
    /// Writes issued to WebSocket connections (each carries one or more frames).
    pub socket_writes: AtomicU64,
    /// Event frames queued to subscribers.
    pub frames_delivered: AtomicU64,
    /// Events accepted by the HTTP API (one per channel).
    pub events_published: AtomicU64,
    /// Connections closed with 4100 because they did not read fast enough.
    pub slow_consumer_disconnects: AtomicU64,
    /// Bytes waiting in this worker's outbound queues (updated every second).
    pub outbound_queue_bytes: AtomicU64,
    /// Bytes of receive buffers this worker's sessions hold for messages still arriving.
    pub inbound_buffer_bytes: AtomicU64,
    /// Publishes refused because a worker's inbox stayed full.
    pub inbox_full: AtomicU64,
    /// Client events accepted.
    pub client_events: AtomicU64,
    pub(super) limited: [AtomicU64; Limited::ALL.len()],
    pub(super) subscriptions: [AtomicI64; KINDS.len()],
    /// Channels this worker created (first subscriber anywhere) minus those it vacated:
    /// summed over workers, the occupied channels.
    pub(super) channels: [AtomicI64; KINDS.len()],
    /// When the worker last ran its once-a-second sweep, in [`now_ns`] units.
    pub heartbeat: AtomicU64,
    /// Latencies recorded on this worker, merged in once a second.
    pub latency: SharedLatency,
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
}

/// The cluster broker's state and counters (`--redis-url`).
#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Whether Redis answers.
    pub connected: std::sync::atomic::AtomicBool,
    /// Requests sent to Redis.
    pub commands: AtomicU64,
    /// Events published to Redis.
    pub published: AtomicU64,
    /// Events received from other nodes.
    pub received: AtomicU64,
    /// Pub/sub channels subscribed to and unsubscribed from.
    pub interest_changes: AtomicU64,
    /// Requests answered from this node's own view because Redis could not be reached.
    pub fallbacks: AtomicU64,
    /// Times the node registered its state again after reaching Redis anew.
    pub resyncs: AtomicU64,
    /// Dead nodes' sessions this node cleared.
    pub reaped: AtomicU64,
    /// Events from other nodes not delivered because a worker's inbox was full (the worker
    /// could not keep up with the channel's event rate).
    pub dropped: AtomicU64,
    /// Times this node found its own lease expired (cut off from Redis for longer than
    /// `--node-timeout`) and registered under a new session.
    pub leases_lost: AtomicU64,
    /// Round trips to Redis (publishes and heartbeats), in nanoseconds. Written by the
    /// broker thread only; read by scrapes.
    pub round_trip: std::sync::Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl BrokerStats {
    /// Records one round trip to Redis that began at `started`.
    pub fn round_trip(&self, started: std::time::Instant) {
        let ns = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        let mut h = self.round_trip.lock().unwrap_or_else(|e| e.into_inner());
        h.get_or_insert_with(super::latency::new_histogram)
            .saturating_record(ns.max(100));
    }
}

/// The webhook sender's counters.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Requests answered 2xx.
    pub delivered: AtomicU64,
    /// Attempts that failed (and were retried or dropped).
    pub failed_attempts: AtomicU64,
    /// Requests given up after retrying for 5 minutes.
    pub dropped_after_retries: AtomicU64,
    /// Events dropped because a queue or the memory budget was full.
    pub dropped_overload: AtomicU64,
    /// `channel_vacated`/`member_removed` cancelled by a quick return.
    pub cancelled: AtomicU64,
    /// Requests in flight or waiting to retry.
    pub outstanding: AtomicUsize,
}

/// The webhook counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct WebhookCounts {
    /// Requests answered with 2xx.
    pub delivered: u64,
    /// Attempts that failed (and will be retried, or were the last).
    pub failed_attempts: u64,
    /// Requests given up after retrying for 5 minutes.
    pub dropped_after_retries: u64,
    /// Events dropped because the budget, the queue or a URL's share was full.
    pub dropped_overload: u64,
    /// `channel_vacated`/`member_removed` cancelled by a quick return.
    pub cancelled: u64,
}

impl WebhookStats {
    /// The counters now.
    pub fn snapshot(&self) -> WebhookCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WebhookCounts {
            delivered: l(&self.delivered),
            failed_attempts: l(&self.failed_attempts),
            dropped_after_retries: l(&self.dropped_after_retries),
            dropped_overload: l(&self.dropped_overload),
            cancelled: l(&self.cancelled),
        }
    }
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
}
