//! Configuration: the command line and environment ([`cli`]), the `--config` TOML file
//! under them ([`file`]), and the resolved [`Config`] every worker shares. Apps are
//! resolved here too, but live apart from `Config` ([`crate::app::LiveApps`]), since a
//! reload replaces them.

pub mod cli;
pub mod file;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use cli::{Cli, Command, ConfigCommand, CpuList, LogFormat};

use crate::app::{App, Apps, InvalidApps, DEMO_APP_ID, DEMO_APP_KEY, DEMO_APP_SECRET};
use crate::runtime::IoMode;

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
    /// See [`Cli::max_subscriptions_per_second`] (0: none).
    pub max_subscriptions_per_second: u32,
    /// See [`Cli::max_connections`]; resolved against the open files limit.
    pub max_connections: usize,
    /// See [`Cli::timestamp_window`].
    pub timestamp_window: u64,
    /// See [`Cli::max_channels`] (0: none).
    pub max_channels: usize,
    /// See [`Cli::max_connections_per_ip_per_second`] (0: none).
    pub max_connections_per_ip_per_second: u32,
    /// See [`Cli::max_http_connections`]; resolved against the open files limit.
    pub max_http_connections: usize,
    /// See [`Cli::max_connections_per_ip`] (0: none).
    pub max_connections_per_ip: u32,
}

#[cfg(test)]
impl Limits {
    /// The command line's defaults (with room for 1000 connections), for unit tests.
    pub(crate) fn defaults() -> Self {
        Self {
            max_message_size: 64 * 1024,
            max_outbound_buffer: 1 << 20,
            max_event_size: 10 * 1024,
            max_event_channels: 100,
            max_batch_events: 10,
            max_request_body: 256 * 1024,
            max_channels_per_connection: 1000,
            max_subscriptions_per_second: 50,
            max_connections: 1000,
            timestamp_window: 600,
            max_channels: 1_000_000,
            max_connections_per_ip_per_second: 0,
            max_http_connections: 64,
            max_connections_per_ip: 0,
        }
    }
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
    /// Size and count limits.
    pub limits: Limits,
    /// Client silence before a server ping.
    pub activity_timeout: Duration,
    /// Wait for a reply to a server ping.
    pub pong_timeout: Duration,
    /// Longest a client's WebSocket message may take to arrive whole.
    pub message_timeout: Duration,
    /// How long outgoing frames may wait to leave in one write (zero: off).
    pub write_delay: Duration,
    /// Idle HTTP keep-alive connections are closed after this.
    pub http_idle_timeout: Duration,
    /// Drain time on shutdown.
    pub shutdown_timeout: Duration,
    /// Time a new connection has to complete its first request.
    pub handshake_timeout: Duration,
    /// Where the metrics listener binds.
    pub metrics_addr: std::net::SocketAddr,
    /// The live console's token, if set.
    pub console_token: Option<String>,
    /// Whether the live console is off.
    pub no_console: bool,
    /// Path of the echo endpoint, if enabled.
    pub echo_path: Option<String>,
    /// See [`Cli::trusted_proxy`].
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Whether the built-in demo app is in use.
    pub demo_app: bool,
    /// Where the apps come from (what SIGHUP re-reads).
    pub apps_source: AppsSource,
    /// TLS certificate and key files, when TLS is on.
    pub tls: Option<TlsFiles>,
    /// Clustering over Redis, if on.
    pub cluster: Option<Cluster>,
}

/// How this node shares channels with others (`--redis-url`).
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The Redis URL (it may hold a password: never logged); with `redis_cluster`, a
    /// comma-separated list of seed nodes.
    pub redis_url: String,
    /// Whether that is a Redis Cluster.
    pub redis_cluster: bool,
    /// Prefix of every key and pub/sub channel.
    pub prefix: String,
    /// This node's id.
    pub node_id: String,
    /// How long a node's lease lasts without renewal.
    pub node_timeout: Duration,
    /// Whether readiness fails while Redis cannot be reached.
    pub readiness_requires_redis: bool,
}

/// Where the certificate chain and its private key are read from (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
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
    if !host.is_loopback() {
        if let Some(app) = apps.iter().find(|a| a.secret.len() < MIN_PUBLIC_SECRET_LEN) {
            return Err(ConfigError::ShortSecretOnPublicInterface(app.id.clone()));
        }
    }
    Ok(())
}

/// Shortest app secret accepted on a public interface: a short secret can be guessed from
/// signatures offline.
pub const MIN_PUBLIC_SECRET_LEN: usize = 16;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad app configuration.
    #[error(transparent)]
    Apps(#[from] InvalidApps),
    /// The apps file could not be read.
    #[error("cannot read apps file {path}: {source}")]
    AppsFileUnreadable {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The apps file is not valid TOML for the expected shape.
    #[error("invalid apps file {path}: {reason}")]
    AppsFileInvalid {
        /// The file.
        path: String,
        /// Why, from [`file::toml_error`] (never the offending text).
        reason: String,
    },
    /// The demo secret on a non-loopback address.
    #[error(
        "refusing to listen on {0} with the public demo secret \"app-secret\": set real credentials \
         with --app-id/--app-key/--app-secret (or RINGCAST_APP_ID/RINGCAST_APP_KEY/RINGCAST_APP_SECRET), \
         or --apps-file, or listen on 127.0.0.1"
    )]
    DemoSecretOnPublicInterface(IpAddr),
    /// An app's secret is too short for a public interface.
    #[error("app {0:?} has a secret shorter than {MIN_PUBLIC_SECRET_LEN} characters, refused on a public interface: set a long random one (e.g. `openssl rand -hex 32`)")]
    ShortSecretOnPublicInterface(String),
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

/// A resolved configuration and the apps it names.
#[derive(Debug)]
pub struct Resolved {
    /// The configuration.
    pub config: Config,
    /// The apps, as configured at start-up (later reloads replace them in
    /// [`crate::app::LiveApps`]).
    pub apps: Apps,
}

impl Config {
    /// Resolves the command line into a configuration and its apps, applying the security
    /// defaults.
    pub fn from_cli(cli: &Cli) -> Result<Resolved, ConfigError> {
        let (apps, demo_app) = apps(cli)?;
        check_secrets(&apps, cli.host)?;
        let apps = Apps::new(apps)?;
        let apps_source = match (&cli.apps_file, &cli.app_id, &cli.config) {
            (Some(path), _, _) => AppsSource::AppsFile(path.clone()),
            (None, None, Some(path)) if !demo_app => AppsSource::ConfigFile(path.clone()),
            _ => AppsSource::CommandLine,
        };
        let (workers, cpus) = workers_and_cpus(cli)?;

        if !cli.redis_cluster && cli.redis_url.as_deref().is_some_and(|u| u.contains(',')) {
            return Err(ConfigError::Limits(
                "several --redis-url seed nodes are for a Redis Cluster: add --redis-cluster"
                    .into(),
            ));
        }
        if cli.echo_path.is_some() && cli.max_outbound_buffer < cli.max_message_size + 14 {
            return Err(ConfigError::Limits(
                "--max-outbound-buffer must be at least --max-message-size (plus 14 bytes of \
                 framing) when --echo-path is set, or large echoes could never be sent"
                    .into(),
            ));
        }

        let config = Self {
            host: cli.host,
            port: cli.port,
            workers,
            cpus,
            io: cli.io,
            limits: Limits {
                max_message_size: cli.max_message_size as usize,
                max_outbound_buffer: cli.max_outbound_buffer as usize,
                max_event_size: cli.max_event_size,
                max_event_channels: cli.max_event_channels,
                max_batch_events: cli.max_batch_events,
                max_request_body: cli.max_request_body,
                max_channels_per_connection: cli.max_channels_per_connection,
                max_subscriptions_per_second: cli.max_subscriptions_per_second,
                max_connections: max_connections(cli, workers),
                timestamp_window: cli.timestamp_window,
                max_channels: cli.max_channels,
                max_connections_per_ip_per_second: cli.max_connections_per_ip_per_second,
                max_http_connections: max_http_connections(cli),
                max_connections_per_ip: cli.max_connections_per_ip,
            },
            handshake_timeout: Duration::from_secs(cli.handshake_timeout),
            metrics_addr: std::net::SocketAddr::new(cli.metrics_host, cli.metrics_port),
            console_token: cli.console_token.clone(),
            no_console: cli.no_console,
            activity_timeout: Duration::from_secs(cli.activity_timeout),
            pong_timeout: Duration::from_secs(cli.pong_timeout),
            message_timeout: Duration::from_secs(cli.message_timeout),
            write_delay: Duration::from_micros(cli.write_delay_us),
            http_idle_timeout: Duration::from_secs(cli.http_idle_timeout),
            shutdown_timeout: Duration::from_secs(cli.shutdown_timeout),
            echo_path: cli.echo_path.clone(),
            trusted_proxies: cli.trusted_proxy.clone(),
            demo_app,
            apps_source,
            tls: cli
                .tls_cert
                .clone()
                .zip(cli.tls_key.clone())
                .map(|(cert, key)| TlsFiles { cert, key }),
            cluster: cli.redis_url.as_ref().map(|url| Cluster {
                redis_url: url.clone(),
                redis_cluster: cli.redis_cluster,
                prefix: cli.redis_prefix.clone(),
                node_id: cli
                    .node_id
                    .clone()
                    .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>())),
                node_timeout: Duration::from_secs(cli.node_timeout),
                readiness_requires_redis: cli.readiness_requires_redis,
            }),
        };
        Ok(Resolved { config, apps })
    }
}

/// The apps the command line names (an apps file, a `--config` file's tables, one app in
/// flags, or the demo app), and whether it is the demo app.
fn apps(cli: &Cli) -> Result<(Vec<App>, bool), ConfigError> {
    Ok(match (&cli.apps_file, &cli.app_id) {
        (Some(path), _) => (file::apps_file(path)?, false),
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
    })
}

/// How many workers, and the CPU each is pinned to (`--workers` spread over `--cpus`, or
/// over every CPU this process may run on).
fn workers_and_cpus(cli: &Cli) -> Result<(usize, Vec<usize>), ConfigError> {
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
    if workers > crate::runtime::MAX_WORKERS {
        return Err(ConfigError::Cpus(format!(
            "--workers {workers} exceeds the maximum of {}",
            crate::runtime::MAX_WORKERS
        )));
    }
    Ok((
        workers,
        (0..workers).map(|i| allowed[i % allowed.len()]).collect(),
    ))
}

/// `--max-http-connections`, or (0) an eighth of the open files limit, from 64 to 4096.
fn max_http_connections(cli: &Cli) -> usize {
    match cli.max_http_connections {
        0 => (crate::runtime::affinity::open_files_limit() / 8).clamp(64, 4096),
        n => n,
    }
}

/// `--max-connections`, or (0) the open files limit less the HTTP connections' share and
/// room for listeners, the metrics listener, webhooks, Redis, log files and the runtime:
/// WebSocket clients taking every connection they may leave the HTTP API and metrics
/// reachable.
fn max_connections(cli: &Cli, workers: usize) -> usize {
    match cli.max_connections {
        0 => crate::runtime::affinity::open_files_limit()
            .saturating_sub(64 + 4 * workers + max_http_connections(cli))
            .max(1),
        n => n,
    }
}

fn webhooks(cli: &Cli) -> Vec<crate::app::Webhook> {
    cli.webhook_url
        .iter()
        .map(|url| crate::app::Webhook {
            url: url.clone(),
            events: crate::protocol::webhook::Kind::all(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
            "a-real-secret-of-some-length",
        ]))
        .unwrap()
        .config;
        assert!(!c.demo_app);
    }

    #[test]
    fn short_secrets_are_refused_on_a_public_interface_only() {
        let args = |host: &'static str| {
            cli(&[
                "--host",
                host,
                "--app-id",
                "1",
                "--app-key",
                "k",
                "--app-secret",
                "short-secret",
            ])
        };
        let err = Config::from_cli(&args("0.0.0.0")).unwrap_err();
        assert!(
            matches!(err, ConfigError::ShortSecretOnPublicInterface(_)),
            "{err}"
        );
        assert!(err.to_string().contains("openssl rand"));
        assert!(Config::from_cli(&args("127.0.0.1")).is_ok());
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(cli::parse_cpu_list("0,2-4").unwrap().0, vec![0, 2, 3, 4]);
        assert!(cli::parse_cpu_list("3-1").is_err());
        assert!(cli::parse_cpu_list("x").is_err());
    }

    #[test]
    fn workers_are_spread_over_the_cpu_list() {
        let c = Config::from_cli(&cli(&["--workers", "3", "--cpus", "5,7"]))
            .unwrap()
            .config;
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
