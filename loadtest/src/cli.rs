//! Command line.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Load generator for Pusher-protocol servers.
#[derive(Debug, Parser)]
#[command(name = "ringcast-loadtest", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Subscribers over channels, events published at a fixed rate: delivery rate, latency,
    /// loss, duplicates, reordering.
    Fanout(FanoutArgs),
    /// Open many connections, measure handshakes, hold them idle, report server memory.
    Connect(ConnectArgs),
    /// `pusher:ping` round trips at a fixed rate per connection.
    Ping(PingArgs),
    /// A long fan-out with connection churn: loss for connections that stayed, server RSS
    /// over time.
    Soak(SoakArgs),
    /// Compare runs: a table of every figure and a latency plot.
    Compare(CompareArgs),
    /// The harness's own capacity: messages taken in per second from a built-in source
    /// that streams pre-encoded events (no server involved).
    Selftest(SelftestArgs),
}

/// Options every scenario shares.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// WebSocket base URL of the server.
    #[arg(long, env = "LOADTEST_URL", default_value = "ws://127.0.0.1:6001")]
    pub url: String,
    /// Base URL of the HTTP API (default: the --url host and port over http).
    #[arg(long, env = "LOADTEST_API_URL")]
    pub api_url: Option<String>,
    /// App id (for the HTTP API).
    #[arg(long, env = "PUSHER_APP_ID", default_value = "app-id")]
    pub app_id: String,
    /// App key.
    #[arg(long, env = "PUSHER_APP_KEY", default_value = "app-key")]
    pub app_key: String,
    /// App secret (signs API requests and private-channel subscriptions).
    #[arg(
        long,
        env = "PUSHER_APP_SECRET",
        default_value = "app-secret",
        hide_env_values = true
    )]
    pub app_secret: String,
    /// Measured time (after the warm-up), e.g. 30s, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up before measuring (events in it count for loss, not for latency or rates).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Directory for summary.json, latency.hgrm, latency.hlog and latency.svg.
    #[arg(long, default_value = "loadtest-out")]
    pub out: PathBuf,
    /// A label for this run in `compare` (default: the scenario and target).
    #[arg(long)]
    pub label: Option<String>,
    /// Harness threads, each pinned to a CPU with its own runtime.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// CPUs to pin harness threads to, e.g. `1` or `2-3` (default: not pinned).
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<CpuList>,
    /// The server's process id: report its CPU and memory (from /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Source addresses for connections, e.g. `127.0.0.1-127.0.0.8` (default: the kernel's
    /// choice; several are needed beyond ~28,000 connections to one address).
    #[arg(long, value_parser = parse_ip_range)]
    pub source_ips: Option<IpList>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// The signed HTTP API (`events`, or `batch_events` with --batch > 1).
    Http,
    /// Client events on private channels, sent by publisher connections.
    ClientEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    /// Subscribers spread evenly over the channels.
    Uniform,
    /// Zipf-like skew: channel k gets a share proportional to 1/(k+1).
    Zipf,
}

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Channels the subscribers are spread over (one channel each).
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// How subscribers are spread over channels.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Events published per second over all channels (0: as fast as the server accepts).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Bytes of each event's data.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// How events are published.
    #[arg(long, value_enum, default_value_t = Via::Http)]
    pub via: Via,
    /// Events per HTTP request (`batch_events` above 1).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Concurrent publishers (HTTP connections, or client-event connections); each owns a
    /// share of the channels and publishes to them in order.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// HTTP requests each publisher keeps in flight on its connection (HTTP/1.1
    /// pipelining; the server still handles them in order). A failed request then ends the
    /// run's publishing, as later ones already carry the following sequence numbers.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Connections opened per second while setting up.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// How long to wait, after publishing ends, for deliveries still on their way.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub drain: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub fanout: FanoutArgs,
    /// Subscriber disconnects (each followed by a reconnect) per second.
    #[arg(long, default_value_t = 10.0)]
    pub churn: f64,
    /// How often to sample the server's memory.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub sample_every: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Connections opened per second.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Subscribe each connection to one of this many channels (0: stay unsubscribed).
    #[arg(long, default_value_t = 0)]
    pub channels: usize,
    /// How long to hold the connections idle (pings are answered); --duration is ignored.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub hold: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct PingArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Pings per second per connection.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Connections opened per second while setting up.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
}

#[derive(Debug, Clone, Args)]
pub struct SelftestArgs {
    #[command(flatten)]
    pub common: Common,
    /// Receiving connections.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Bytes of each event's data.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// CPU to pin the built-in source to (default: not pinned).
    #[arg(long)]
    pub source_cpu: Option<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// summary.json files (or the directories holding them).
    #[arg(required = true, num_args = 2..)]
    pub runs: Vec<PathBuf>,
    /// Where to write compare.svg (default: the current directory).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

/// Parses `500ms`, `10s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s, m or h")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A list of CPU ids.
#[derive(Debug, Clone)]
pub struct CpuList(pub Vec<usize>);

/// A list of source addresses.
#[derive(Debug, Clone)]
pub struct IpList(pub Vec<IpAddr>);

fn parse_cpus(s: &str) -> Result<CpuList, String> {
    parse_cpu_vec(s).map(CpuList)
}

fn parse_cpu_vec(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let bad = || format!("invalid CPU list {s:?}");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}

fn parse_ip_range(s: &str) -> Result<IpList, String> {
    parse_ip_vec(s).map(IpList)
}

fn parse_ip_vec(s: &str) -> Result<Vec<IpAddr>, String> {
    let bad = || format!("invalid address range {s:?}: expected e.g. 127.0.0.1-127.0.0.8");
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) =
        (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    let (a, b) = (u32::from(a), u32::from(b));
    if a > b || b - a > 4096 {
        return Err(bad());
    }
    Ok((a..=b)
        .map(|n| IpAddr::from(std::net::Ipv4Addr::from(n)))
        .collect())
}

/// The server, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Target {
    /// Host name as given (for the Host header).
    pub host: String,
    /// WebSocket address.
    pub ws_addr: SocketAddr,
    /// HTTP API address.
    pub api_addr: SocketAddr,
    /// Path prefix of the WebSocket URL (usually empty).
    pub ws_prefix: String,
    /// Path prefix of the API URL (usually empty), part of what is signed.
    pub api_prefix: String,
    pub app_id: String,
    pub app_key: String,
    pub app_secret: String,
}

fn split_url(url: &str, schemes: &[(&str, u16)]) -> anyhow::Result<(String, u16, String)> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("{url:?} is not a URL"))?;
    let default_port = schemes
        .iter()
        .find(|(s, _)| *s == scheme)
        .map(|(_, p)| *p)
        .ok_or_else(|| anyhow!("unsupported scheme in {url:?} (TLS is not supported: test behind the TLS proxy's plain port)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
            h.trim_matches(['[', ']']).to_string(),
            p.parse().context("invalid port")?,
        ),
        _ => (authority.to_string(), default_port),
    };
    Ok((host, port, path.to_string()))
}

/// Connections per source address before the harness spreads over more of them: the
/// kernel's search for a free ephemeral port slows down sharply as one address's range
/// (~28,000 ports towards one server port) fills.
pub const CONNECTIONS_PER_SOURCE: usize = 10_000;

impl Common {
    /// Source addresses for `n` connections: the given ones, or — towards an IPv4 loopback
    /// server and beyond [`CONNECTIONS_PER_SOURCE`] — 127.0.0.1, 127.0.0.2, … as needed.
    pub fn source_ips_for(&self, target: &Target, n: usize) -> Option<Vec<IpAddr>> {
        if let Some(list) = &self.source_ips {
            return Some(list.0.clone());
        }
        if n <= CONNECTIONS_PER_SOURCE
            || !target.ws_addr.ip().is_loopback()
            || !target.ws_addr.is_ipv4()
        {
            return None;
        }
        let k = n.div_ceil(CONNECTIONS_PER_SOURCE).min(254) as u8;
        Some((1..=k).map(|i| IpAddr::from([127, 0, 0, i])).collect())
    }

    /// Resolves the URLs.
    pub fn target(&self) -> anyhow::Result<Target> {
        let (host, port, ws_prefix) = split_url(&self.url, &[("ws", 80)])?;
        let api = match &self.api_url {
            Some(u) => split_url(u, &[("http", 80)])?,
            None => (host.clone(), port, String::new()),
        };
        let resolve = |h: &str, p: u16| -> anyhow::Result<SocketAddr> {
            (h, p)
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve {h}"))?
                .next()
                .ok_or_else(|| anyhow!("{h} has no address"))
        };
        let ws_addr = resolve(&host, port)?;
        let api_addr = resolve(&api.0, api.1)?;
        for addr in [ws_addr, api_addr] {
            if !addr.ip().is_loopback() {
                bail!(
                    "{addr} is not a loopback address: this harness only loads 127.0.0.0/8 and ::1"
                );
            }
        }
        Ok(Target {
            host,
            ws_addr,
            api_addr,
            ws_prefix,
            api_prefix: api.2,
            app_id: self.app_id.clone(),
            app_key: self.app_key.clone(),
            app_secret: self.app_secret.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("ws://127.0.0.1:6001", &[("ws", 80)]).unwrap(),
            ("127.0.0.1".into(), 6001, String::new())
        );
        assert_eq!(
            split_url("ws://localhost/pusher/", &[("ws", 80)]).unwrap(),
            ("localhost".into(), 80, "/pusher".into())
        );
        assert_eq!(
            split_url("ws://[::1]:9", &[("ws", 80)]).unwrap(),
            ("::1".into(), 9, String::new())
        );
        assert!(split_url("wss://x", &[("ws", 80)]).is_err());
    }

    #[test]
    fn ip_ranges() {
        assert_eq!(parse_ip_vec("127.0.0.1-127.0.0.3").unwrap().len(), 3);
        assert_eq!(parse_ip_vec("127.0.0.9").unwrap().len(), 1);
        assert!(parse_ip_vec("127.0.0.9-127.0.0.1").is_err());
    }

    #[test]
    fn command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "ringcast-loadtest",
            "fanout",
            "--cpus",
            "1-2",
            "--source-ips",
            "127.0.0.1-127.0.0.2",
            "--rate",
            "0",
        ])
        .unwrap();
        let Command::Fanout(f) = cli.command else {
            panic!()
        };
        assert_eq!(f.common.cpus.unwrap().0, vec![1, 2]);
        assert_eq!(f.common.source_ips.unwrap().0.len(), 2);
    }
}
