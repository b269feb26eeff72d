//! Command line and configuration. Every flag can also be set through a `RINGCAST_*`
//! environment variable.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::app::{App, Apps, AppsError, DEMO_APP_ID, DEMO_APP_KEY, DEMO_APP_SECRET};

/// Which IO backend the workers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// io_uring when this kernel and sandbox allow it, epoll otherwise.
    Auto,
    /// io_uring through compio; refuse to start if it is unavailable.
    Uring,
    /// epoll through a current-thread tokio runtime per worker.
    Epoll,
}

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

    /// Most concurrent WebSocket connections over all workers (0: limited only by the open
    /// files limit); beyond it new connections are closed with 4100.
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Most occupied channels over all apps; a subscription that would open one more is
    /// refused (`pusher:subscription_error`, status 429). 0: no limit.
    #[arg(long, env = "RINGCAST_MAX_CHANNELS", default_value_t = 1_000_000)]
    pub max_channels: usize,

    /// New connections one IP address (IPv6: one /64) may open per second (HTTP 429
    /// beyond); 0: no limit.
    #[arg(
        long,
        env = "RINGCAST_MAX_CONNECTIONS_PER_IP_PER_SECOND",
        default_value_t = 0
    )]
    pub max_connections_per_ip_per_second: u32,

    /// Seconds a new TCP connection has to complete its first HTTP request (and TLS
    /// handshake); slower ones are closed (slowloris protection).
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

fn webhooks(cli: &Cli) -> Vec<crate::app::Webhook> {
    cli.webhook_url
        .iter()
        .map(|url| crate::app::Webhook {
            url: url.clone(),
            events: crate::app::WebhookEvent::all(),
        })
        .collect()
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

fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
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

fn parse_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.contains(['?', '#', ' ']) {
        return Err(format!("{s:?} is not an absolute URL path"));
    }
    Ok(s.to_string())
}

/// Limits on sizes and counts, checked wherever input arrives.
#[derive(Debug, Clone)]
pub struct Limits {
    /// See [`Cli::max_message_size`].
    pub max_message_size: usize,
    /// See [`Cli::max_outbound_buffer`].
    pub max_outbound_buffer: usize,
    /// See [`Cli::max_event_size`].
    pub max_event_size: usize,
    /// See [`Cli::max_event_channels`].
    pub max_event_channels: usize,
    /// See [`Cli::max_batch_events`].
    pub max_batch_events: usize,
    /// See [`Cli::max_request_body`].
    pub max_request_body: usize,
    /// See [`Cli::max_channels_per_connection`].
    pub max_channels_per_connection: usize,
    /// See [`Cli::max_connections`]; resolved against the open files limit.
    pub max_connections: usize,
    /// See [`Cli::timestamp_window`].
    pub timestamp_window: u64,
    /// See [`Cli::max_channels`] (0: none).
    pub max_channels: usize,
    /// See [`Cli::max_connections_per_ip_per_second`] (0: none).
    pub max_connections_per_ip_per_second: u32,
}

/// The resolved configuration every worker shares.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub host: IpAddr,
    /// Listen port (0: pick one).
    pub port: u16,
    /// Number of workers.
    pub workers: usize,
    /// CPU for each worker, by worker index.
    pub cpus: Vec<usize>,
    /// Requested IO backend.
    pub io: IoMode,
    /// Configured apps.
    pub apps: Apps,
    /// Size and count limits.
    pub limits: Limits,
    /// Client silence before a server ping.
    pub activity_timeout: Duration,
    /// Wait for a reply to a server ping.
    pub pong_timeout: Duration,
    /// Idle HTTP keep-alive connections are closed after this.
    pub http_idle_timeout: Duration,
    /// Drain time on shutdown.
    pub shutdown_timeout: Duration,
    /// Time a new connection has to complete its first request.
    pub handshake_timeout: Duration,
    /// Where the metrics listener binds.
    pub metrics_addr: std::net::SocketAddr,
    /// Path of the echo endpoint, if enabled.
    pub echo_path: Option<String>,
    /// Whether the built-in demo app is in use.
    pub demo_app: bool,
    /// Where the apps come from (what SIGHUP re-reads).
    pub apps_source: AppsSource,
    /// TLS certificate and key files, when TLS is on.
    pub tls: Option<crate::tls::TlsFiles>,
}

/// Where the apps were configured.
#[derive(Debug, Clone)]
pub enum AppsSource {
    /// `--app-id`/`--app-key`/`--app-secret`, or the demo app: nothing to reload.
    CommandLine,
    /// `--apps-file`.
    AppsFile(PathBuf),
    /// The `[[app]]` tables of `--config`.
    ConfigFile(PathBuf),
}

/// Refuses secrets nobody should run with: the demo secret off loopback, and the example
/// file's placeholders anywhere.
pub fn check_secrets(apps: &[App], host: IpAddr) -> Result<(), ConfigError> {
    if apps.iter().any(|a| a.secret == DEMO_APP_SECRET) && !host.is_loopback() {
        return Err(ConfigError::DemoSecretOnPublicInterface(host));
    }
    if let Some(app) = apps.iter().find(|a| a.secret.contains("CHANGE-ME")) {
        return Err(ConfigError::PlaceholderSecret(app.id.clone()));
    }
    Ok(())
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad app configuration.
    #[error(transparent)]
    Apps(#[from] AppsError),
    /// The demo secret on a non-loopback address.
    #[error(
        "refusing to listen on {0} with the public demo secret \"app-secret\": set real credentials \
         with --app-id/--app-key/--app-secret (or RINGCAST_APP_ID/RINGCAST_APP_KEY/RINGCAST_APP_SECRET), \
         or --apps-file, or listen on 127.0.0.1"
    )]
    DemoSecretOnPublicInterface(IpAddr),
    /// An app still has the example file's placeholder secret.
    #[error("app {0:?} still has the example's placeholder secret: set a real one (e.g. `openssl rand -hex 32`)")]
    PlaceholderSecret(String),
    /// A command-line error (printed with clap's own formatting).
    #[error("{0}")]
    Cli(clap::Error),
    /// A bad value in the configuration file.
    #[error("{path}: {key}: {reason}")]
    File {
        /// The file.
        path: String,
        /// The key (`-` for the file as a whole).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Bad CPU selection.
    #[error("{0}")]
    Cpus(String),
    /// Limits that contradict each other.
    #[error("{0}")]
    Limits(String),
}

impl Config {
    /// Resolves the command line into a configuration, applying the security defaults.
    pub fn from_cli(cli: &Cli) -> Result<Self, ConfigError> {
        let (apps, demo_app) = match (&cli.apps_file, &cli.app_id) {
            (Some(path), _) => (Apps::from_file(path)?, false),
            (None, None) if cli.file_apps.as_ref().is_some_and(|a| !a.is_empty()) => {
                (cli.file_apps.clone().unwrap_or_default(), false)
            }
            (None, Some(id)) => {
                let mut app = App::new(
                    id,
                    cli.app_key.as_deref().unwrap_or_default(),
                    cli.app_secret.as_deref().unwrap_or_default(),
                );
                app.client_events = cli.client_events;
                app.webhooks = webhooks(cli);
                (vec![app], false)
            }
            (None, None) => {
                let mut app = App::new(DEMO_APP_ID, DEMO_APP_KEY, DEMO_APP_SECRET);
                // The demo app is for trying things out on loopback: everything on.
                app.client_events = true;
                app.webhooks = webhooks(cli);
                (vec![app], true)
            }
        };
        check_secrets(&apps, cli.host)?;
        let apps = Apps::new(apps)?;
        let apps_source = match (&cli.apps_file, &cli.app_id, &cli.config) {
            (Some(path), _, _) => AppsSource::AppsFile(path.clone()),
            (None, None, Some(path)) if !demo_app => AppsSource::ConfigFile(path.clone()),
            _ => AppsSource::CommandLine,
        };

        let allowed = match &cli.cpus {
            Some(list) => list.0.clone(),
            None => crate::runtime::affinity::allowed_cpus(),
        };
        if allowed.is_empty() {
            return Err(ConfigError::Cpus(
                "no CPU available to pin workers to".into(),
            ));
        }
        let workers = if cli.workers == 0 {
            allowed.len()
        } else {
            cli.workers
        };
        if workers > crate::hub::MAX_WORKERS {
            return Err(ConfigError::Cpus(format!(
                "--workers {workers} exceeds the maximum of {}",
                crate::hub::MAX_WORKERS
            )));
        }
        let cpus = (0..workers).map(|i| allowed[i % allowed.len()]).collect();

        if cli.echo_path.is_some() && cli.max_outbound_buffer < cli.max_message_size + 14 {
            return Err(ConfigError::Limits(
                "--max-outbound-buffer must be at least --max-message-size (plus 14 bytes of \
                 framing) when --echo-path is set, or large echoes could never be sent"
                    .into(),
            ));
        }

        let fd_limit = crate::runtime::affinity::open_files_limit();
        // Leave room for listeners, HTTP API connections, log files and the runtime itself.
        let fd_cap = fd_limit.saturating_sub(64 + 4 * workers).max(1);
        let max_connections = match cli.max_connections {
            0 => fd_cap,
            n => n,
        };

        Ok(Self {
            host: cli.host,
            port: cli.port,
            workers,
            cpus,
            io: cli.io,
            apps,
            limits: Limits {
                max_message_size: cli.max_message_size as usize,
                max_outbound_buffer: cli.max_outbound_buffer as usize,
                max_event_size: cli.max_event_size,
                max_event_channels: cli.max_event_channels,
                max_batch_events: cli.max_batch_events,
                max_request_body: cli.max_request_body,
                max_channels_per_connection: cli.max_channels_per_connection,
                max_connections,
                timestamp_window: cli.timestamp_window,
                max_channels: cli.max_channels,
                max_connections_per_ip_per_second: cli.max_connections_per_ip_per_second,
            },
            handshake_timeout: Duration::from_secs(cli.handshake_timeout),
            metrics_addr: std::net::SocketAddr::new(cli.metrics_host, cli.metrics_port),
            activity_timeout: Duration::from_secs(cli.activity_timeout),
            pong_timeout: Duration::from_secs(cli.pong_timeout),
            http_idle_timeout: Duration::from_secs(cli.http_idle_timeout),
            shutdown_timeout: Duration::from_secs(cli.shutdown_timeout),
            echo_path: cli.echo_path.clone(),
            demo_app,
            apps_source,
            tls: cli
                .tls_cert
                .clone()
                .zip(cli.tls_key.clone())
                .map(|(cert, key)| crate::tls::TlsFiles { cert, key }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut full = vec!["ringcast"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).unwrap()
    }

    #[test]
    fn demo_app_is_refused_on_public_interface() {
        let err = Config::from_cli(&cli(&["--host", "0.0.0.0"])).unwrap_err();
        assert!(matches!(err, ConfigError::DemoSecretOnPublicInterface(_)));
        assert!(err.to_string().contains("--app-secret"));
    }

    #[test]
    fn real_credentials_allow_public_interface() {
        let c = Config::from_cli(&cli(&[
            "--host",
            "0.0.0.0",
            "--app-id",
            "1",
            "--app-key",
            "k",
            "--app-secret",
            "a-real-secret",
        ]))
        .unwrap();
        assert!(!c.demo_app);
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0,2-4").unwrap().0, vec![0, 2, 3, 4]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }

    #[test]
    fn workers_are_spread_over_the_cpu_list() {
        let c = Config::from_cli(&cli(&["--workers", "3", "--cpus", "5,7"])).unwrap();
        assert_eq!(c.cpus, vec![5, 7, 5]);
    }

    #[test]
    fn app_flags_must_come_together() {
        assert!(Cli::try_parse_from(["ringcast", "--app-id", "1"]).is_err());
    }

    #[test]
    fn timeouts_are_bounded() {
        for (flag, max) in [("--shutdown-timeout", 3600), ("--http-idle-timeout", 86400)] {
            let ok = max.to_string();
            assert!(
                Cli::try_parse_from(["ringcast", flag, &ok]).is_ok(),
                "{flag}"
            );
            let over = (max + 1).to_string();
            assert!(
                Cli::try_parse_from(["ringcast", flag, &over]).is_err(),
                "{flag}"
            );
            let huge = u64::MAX.to_string();
            assert!(
                Cli::try_parse_from(["ringcast", flag, &huge]).is_err(),
                "{flag}"
            );
        }
        assert!(Cli::try_parse_from(["ringcast", "--shutdown-timeout", "0"]).is_ok());
    }
}
