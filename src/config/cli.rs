//! The command line: every flag, with its `RINGCAST_*` environment variable and its
//! default. [`super::file`] applies a `--config` file under it; [`super::Config::from_cli`]
//! resolves it.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::app::App;
use crate::runtime::IoMode;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// ringcast: a thread-per-core io_uring WebSocket server speaking the Pusher Channels protocol.
///
/// With no flags it serves 127.0.0.1:6001 with a demo app (id `app-id`, key `app-key`,
/// secret `app-secret`).
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(name = "ringcast", version, about, long_about)]
pub struct Cli {
    /// TOML configuration file: every flag as a key (dashes become underscores) plus
    /// `[[app]]` tables; the command line and RINGCAST_* variables override it (see
    /// docs/configuration.md).
    #[arg(long, env = "RINGCAST_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Apps from the `--config` file.
    #[arg(skip)]
    #[serde(skip)]
    pub file_apps: Option<Vec<App>>,

    /// A subcommand instead of serving.
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<Command>,

    /// Address to listen on (WebSocket and HTTP API share it).
    #[arg(long, env = "RINGCAST_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on; 0 picks a free port (printed at start-up).
    #[arg(long, env = "RINGCAST_PORT", default_value_t = 6001)]
    pub port: u16,

    /// Address of the metrics listener (`/metrics`, `/metrics/latency.hgrm`, `/healthz`,
    /// `/readyz`); keep it private.
    #[arg(long, env = "RINGCAST_METRICS_HOST", default_value = "127.0.0.1")]
    pub metrics_host: IpAddr,

    /// Port of the metrics listener; 0 picks a free port (printed at start-up).
    #[arg(long, env = "RINGCAST_METRICS_PORT", default_value_t = 9601)]
    pub metrics_port: u16,

    /// Token the live console (`/console` on the metrics listener) asks for, compared in
    /// constant time; at least 16 characters. Without one the console is served only when
    /// the metrics listener is on a loopback address (see docs/console.md).
    #[arg(long, env = "RINGCAST_CONSOLE_TOKEN", hide_env_values = true, value_parser = parse_console_token)]
    pub console_token: Option<String>,

    /// Turn the live console off (the metrics listener then serves no `/console`).
    #[arg(long, env = "RINGCAST_NO_CONSOLE")]
    pub no_console: bool,

    /// Worker threads, one pinned per CPU; 0 means one per available CPU.
    #[arg(long, env = "RINGCAST_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// CPUs to pin workers to, e.g. `0,2-3`; default: every CPU this process may run on.
    #[arg(long, env = "RINGCAST_CPUS", value_parser = parse_cpu_list)]
    pub cpus: Option<CpuList>,

    /// IO backend: `auto` probes io_uring once and falls back to epoll, saying why.
    #[arg(long = "io", env = "RINGCAST_IO", value_enum, default_value_t = IoMode::Auto)]
    pub io: IoMode,

    /// App id of the single app configured on the command line.
    #[arg(long, env = "RINGCAST_APP_ID", requires_all = ["app_key", "app_secret"])]
    pub app_id: Option<String>,

    /// App key of the single app configured on the command line.
    #[arg(long, env = "RINGCAST_APP_KEY", requires_all = ["app_id", "app_secret"])]
    pub app_key: Option<String>,

    /// App secret of the single app configured on the command line.
    #[arg(long, env = "RINGCAST_APP_SECRET", requires_all = ["app_id", "app_key"], hide_env_values = true)]
    pub app_secret: Option<String>,

    /// TOML file with one `[[app]]` table per app (credentials, features, webhooks; see
    /// docs/configuration.md).
    #[arg(long, env = "RINGCAST_APPS_FILE", conflicts_with_all = ["app_id", "client_events", "webhook_url"])]
    pub apps_file: Option<PathBuf>,

    /// Allow client events (`client-*` on private and presence channels) for the app given
    /// on the command line (the demo app always allows them).
    #[arg(long, env = "RINGCAST_CLIENT_EVENTS")]
    pub client_events: bool,

    /// Webhook URL (http://) for the app given on the command line, receiving every event
    /// type; repeat for several.
    #[arg(long, env = "RINGCAST_WEBHOOK_URL", value_delimiter = ',')]
    pub webhook_url: Vec<String>,

    /// Seconds of client silence before the server pings it (sent to clients as
    /// `activity_timeout`).
    #[arg(long, env = "RINGCAST_ACTIVITY_TIMEOUT", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub activity_timeout: u64,

    /// Seconds to wait for any reply to a server ping before closing with 4201.
    #[arg(long, env = "RINGCAST_PONG_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub pong_timeout: u64,

    /// Seconds a client's WebSocket message may take to arrive whole, from its first byte;
    /// slower ones close the connection with 1008 (only complete messages count as
    /// activity).
    #[arg(long, env = "RINGCAST_MESSAGE_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub message_timeout: u64,

    /// Microseconds a connection's outgoing frames may wait to leave in one write (0: off,
    /// each is written as soon as the connection's task runs). Trades latency for fewer
    /// writes on busy channels; epoll's timers round it up to whole milliseconds.
    #[arg(long, env = "RINGCAST_WRITE_DELAY_US", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub write_delay_us: u64,

    /// Largest WebSocket message a client may send, in bytes (after reassembly); larger
    /// ones close the connection with 1009.
    #[arg(long, env = "RINGCAST_MAX_MESSAGE_SIZE", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(125..=(1 << 30)))]
    pub max_message_size: u64,

    /// Bytes that may wait in one connection's outbound queue; a subscriber that falls
    /// further behind is closed with 4100.
    #[arg(long, env = "RINGCAST_MAX_OUTBOUND_BUFFER", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(4096..=(1 << 32)))]
    pub max_outbound_buffer: u64,

    /// Largest `data` of one published event, in bytes (413 above).
    #[arg(long, env = "RINGCAST_MAX_EVENT_SIZE", default_value_t = 10 * 1024)]
    pub max_event_size: usize,

    /// Most channels one published event may name (400 above).
    #[arg(long, env = "RINGCAST_MAX_EVENT_CHANNELS", default_value_t = 100)]
    pub max_event_channels: usize,

    /// Most events one `batch_events` request may carry (400 above).
    #[arg(long, env = "RINGCAST_MAX_BATCH_EVENTS", default_value_t = 10)]
    pub max_batch_events: usize,

    /// Largest HTTP request body, in bytes (413 above).
    #[arg(long, env = "RINGCAST_MAX_REQUEST_BODY", default_value_t = 256 * 1024)]
    pub max_request_body: usize,

    /// Most channels one connection may be subscribed to at once.
    #[arg(
        long,
        env = "RINGCAST_MAX_CHANNELS_PER_CONNECTION",
        default_value_t = 1000
    )]
    pub max_channels_per_connection: usize,

    /// Subscriptions one connection may make per second on average: at first up to
    /// `--max-channels-per-connection` at once (a reconnect subscribing to everything
    /// again), then this many per second (0: no limit). Beyond it a subscription gets
    /// `pusher:subscription_error` with status 429.
    #[arg(
        long,
        env = "RINGCAST_MAX_SUBSCRIPTIONS_PER_SECOND",
        default_value_t = 50
    )]
    pub max_subscriptions_per_second: u32,

    /// Most concurrent WebSocket connections over all workers (0: limited only by the open
    /// files limit); beyond it new connections are closed with 4100.
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Most occupied channels over all apps; a subscription that would open one more is
    /// refused (`pusher:subscription_error`, status 429). 0: no limit.
    #[arg(long, env = "RINGCAST_MAX_CHANNELS", default_value_t = 1_000_000)]
    pub max_channels: usize,

    /// Most connections not upgraded to WebSocket (HTTP API calls, health checks, upgrades
    /// and TLS handshakes in progress, idle keep-alive connections) over all workers; at it
    /// the quietest one not serving a request is closed to make room, and with none a new
    /// connection is closed at once. 0: an eighth of the open files limit, from 64 to 4096.
    #[arg(long, env = "RINGCAST_MAX_HTTP_CONNECTIONS", default_value_t = 0)]
    pub max_http_connections: usize,

    /// Most connections (HTTP and WebSocket) one IP address (IPv6: one /64) may have open
    /// at once; more are closed at accept. 0: no limit (the default: clients behind one NAT
    /// or proxy share an address).
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: u32,

    /// New connections one IP address (IPv6: one /64) may open per second (HTTP 429
    /// beyond); 0: no limit.
    #[arg(
        long,
        env = "RINGCAST_MAX_CONNECTIONS_PER_IP_PER_SECOND",
        default_value_t = 0
    )]
    pub max_connections_per_ip_per_second: u32,

    /// Seconds a new TCP connection has to complete its first HTTP request (and TLS
    /// handshake), and a kept-alive one each later request's head from its first byte;
    /// slower ones are closed (slowloris protection).
    #[arg(long, env = "RINGCAST_HANDSHAKE_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub handshake_timeout: u64,

    /// Seconds an API request's `auth_timestamp` may differ from the server clock.
    #[arg(long, env = "RINGCAST_TIMESTAMP_WINDOW", default_value_t = 600)]
    pub timestamp_window: u64,

    /// Seconds an idle HTTP keep-alive connection stays open.
    #[arg(long, env = "RINGCAST_HTTP_IDLE_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub http_idle_timeout: u64,

    /// Seconds to drain queued writes on SIGTERM/SIGINT before closing what is left.
    #[arg(long, env = "RINGCAST_SHUTDOWN_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(..=3600))]
    pub shutdown_timeout: u64,

    /// Addresses or networks (CIDR) of reverse proxies in front of ringcast, comma-separated
    /// or repeated. Their connections are not held to `--max-connections-per-ip`, and a
    /// WebSocket upgrade through them is counted against
    /// `--max-connections-per-ip-per-second` as the client address in `X-Forwarded-For`
    /// (the last one not itself a trusted proxy). Other peers' `X-Forwarded-For` is ignored.
    #[arg(long, env = "RINGCAST_TRUSTED_PROXY", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxy: Vec<ipnet::IpNet>,

    /// Serve a plain RFC 6455 echo endpoint at this path (for conformance testing).
    #[arg(long, env = "RINGCAST_ECHO_PATH", value_parser = parse_path)]
    pub echo_path: Option<String>,

    /// TLS certificate chain (PEM, leaf first): the port then serves wss:// and https://
    /// only. Requires --tls-key too (both are re-read on SIGHUP).
    #[arg(long, env = "RINGCAST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key of the TLS certificate (PEM: PKCS#8, PKCS#1 or SEC1). Requires --tls-cert
    /// too.
    #[arg(long, env = "RINGCAST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Redis (or Valkey) shared by the nodes of a cluster: `redis://[user:password@]host:port[/db]`,
    /// or `rediss://…` for TLS. Without it the server runs alone and needs no Redis (see
    /// docs/cluster.md).
    #[arg(long, env = "RINGCAST_REDIS_URL", value_parser = parse_redis_url, hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and pub/sub channel, so several deployments can share one
    /// Redis.
    #[arg(long, env = "RINGCAST_REDIS_PREFIX", default_value = "ringcast", value_parser = parse_redis_prefix)]
    pub redis_prefix: String,

    /// This node's id in the cluster (default: a random one, logged at start). A node
    /// restarted with the same id clears what its previous run held at once, instead of
    /// after --node-timeout.
    #[arg(long, env = "RINGCAST_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,

    /// Seconds after which a node that stopped renewing its lease in Redis (crashed, cut
    /// off) counts as dead: another node removes its connections' subscriptions, presence
    /// members and sign-ins, and sends the webhooks. Every node of a cluster should use
    /// the same value.
    #[arg(long, env = "RINGCAST_NODE_TIMEOUT", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=3600), requires = "redis_url")]
    pub node_timeout: u64,

    /// The Redis of --redis-url is a Redis Cluster (Redis 7 or later): keys are spread over
    /// its shards by channel, and events travel by sharded pub/sub (`SSUBSCRIBE`/
    /// `SPUBLISH`), each channel only through the shard that owns it. --redis-url may then
    /// list several seed nodes, comma-separated.
    #[arg(long, env = "RINGCAST_REDIS_CLUSTER", requires = "redis_url")]
    pub redis_cluster: bool,

    /// Report not ready (`/readyz` 503) while Redis cannot be reached. Off by default: one
    /// node's trouble reaching Redis should not take every node out of the load balancer.
    #[arg(
        long,
        env = "RINGCAST_READINESS_REQUIRES_REDIS",
        requires = "redis_url"
    )]
    pub readiness_requires_redis: bool,

    /// Log format.
    #[arg(long, env = "RINGCAST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log level or filter directives (e.g. `info`, `ringcast=debug`).
    #[arg(long, env = "RINGCAST_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Configuration file tools.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `ringcast config …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file and print the effective configuration (secrets
    /// masked); exits 2 if it is invalid.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print a commented example configuration file.
    Example,
}

/// A list of CPU ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl serde::Serialize for CpuList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text: Vec<String> = self.0.iter().map(usize::to_string).collect();
        s.serialize_str(&text.join(","))
    }
}

pub(super) fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("invalid CPU list {s:?}: expected e.g. 0,2-3");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b - a > 4096 {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cpus.is_empty() {
        return Err("empty CPU list".into());
    }
    Ok(CpuList(cpus))
}

fn parse_console_token(s: &str) -> Result<String, String> {
    if s.chars().count() < 16 {
        return Err("the console token must be at least 16 characters".into());
    }
    if s.chars().any(char::is_control) {
        return Err("the console token cannot hold control characters".into());
    }
    Ok(s.to_string())
}

fn parse_redis_url(s: &str) -> Result<String, String> {
    for url in s.split(',') {
        let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
        if !scheme_ok || redis::Client::open(url).is_err() {
            return Err(
                "expected redis://[user:password@]host:port[/db] or rediss://… (with \
                 --redis-cluster, a comma-separated list of seed nodes)"
                    .into(),
            );
        }
    }
    Ok(s.to_string())
}

fn parse_redis_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'{' | b'}'));
    match ok {
        true => Ok(s.to_string()),
        false => Err("1 to 64 printable characters, without spaces or braces".into()),
    }
}

fn parse_node_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    match ok {
        true => Ok(s.to_string()),
        false => Err("1 to 64 characters of A-Z a-z 0-9 - _ .".into()),
    }
}

fn parse_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.contains(['?', '#', ' ']) {
        return Err(format!("{s:?} is not an absolute URL path"));
    }
    Ok(s.to_string())
}

/// An address (`10.0.0.5`, a /32 or /128) or a network (`10.0.0.0/8`).
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is neither an IP address nor a CIDR network"))
}
