//! Command line.

use std::collections::BTreeMap;
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
    /// WebSocket base URL of the server. Repeat it, or separate URLs with commas, to spread
    /// the connections over several nodes of a cluster: connection i of each kind goes to
    /// URL i mod n.
    #[arg(
        long,
        env = "LOADTEST_URL",
        default_value = "ws://127.0.0.1:6001",
        value_delimiter = ','
    )]
    pub url: Vec<String>,
    /// Base URL of the HTTP API, one node (default: the first --url's host and port over
    /// http).
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
    /// The server's process id: report its CPU and memory (from /proc). Repeat it (or
    /// separate ids with commas), one per cluster node, to report their sum.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
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
    /// Presence connections that join a presence channel, stay a while, leave and join
    /// again, for as long as events are published (each checks it is in the member list).
    #[arg(long, default_value_t = 0)]
    pub presence: usize,
    /// Presence channels those connections are spread over (keep connections per channel
    /// within the app's `max_presence_members`).
    #[arg(long, default_value_t = 10)]
    pub presence_channels: usize,
    /// How long a presence connection stays a member, on average (half to one and a half
    /// times this).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub presence_hold: Duration,
    /// Receive the server's webhooks on this address (the app's webhook URL must point
    /// here) and check at the end that none was lost or doubled: presence joins and leaves
    /// balance, channels occupied are vacated, one `client_event` webhook per client event.
    #[arg(long)]
    pub webhook_listen: Option<SocketAddr>,
    /// How long to wait after every connection closed for the last webhooks (the server
    /// holds `channel_vacated` and `member_removed` for 3 s).
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    pub webhook_settle: Duration,
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

/// One WebSocket URL of the server, resolved.
#[derive(Debug, Clone)]
pub struct WsTarget {
    /// The URL as given.
    pub url: String,
    /// `host:port` as given, for the Host header.
    pub authority: String,
    /// The address connected to.
    pub addr: SocketAddr,
    /// Path prefix of the URL (usually empty).
    pub prefix: String,
}

/// The server (or the nodes of a cluster), resolved from the command line.
#[derive(Debug, Clone)]
pub struct Target {
    /// The WebSocket URLs, in the order given (at least one): connection i of each kind
    /// (subscribers, publishers, connections) goes to `ws[i % ws.len()]`.
    pub ws: Vec<WsTarget>,
    /// Base URL of the HTTP API, as given or derived from the first WebSocket URL.
    pub api_url: String,
    /// `host:port` of the API, for the Host header.
    pub api_authority: String,
    /// HTTP API address.
    pub api_addr: SocketAddr,
    /// Path prefix of the API URL (usually empty), part of what is signed.
    pub api_prefix: String,
    pub app_id: String,
    pub app_key: String,
    pub app_secret: String,
}

impl Target {
    /// The WebSocket URL connection `i` (of its kind) goes to: round robin, in the order
    /// the URLs were given.
    pub fn ws_for(&self, i: usize) -> &WsTarget {
        &self.ws[i % self.ws.len()]
    }

    /// The WebSocket URLs, in order.
    pub fn ws_urls(&self) -> Vec<&str> {
        self.ws.iter().map(|w| w.url.as_str()).collect()
    }

    /// How many of `n` connections (of one kind) go to each WebSocket URL.
    pub fn split(&self, n: usize) -> Vec<usize> {
        round_robin_split(n, self.ws.len())
    }
}

/// How many of `n` connections, assigned round robin (connection i to slot i mod `k`), each
/// of `k` slots gets: the first `n mod k` get one more.
pub fn round_robin_split(n: usize, k: usize) -> Vec<usize> {
    let k = k.max(1);
    (0..k).map(|j| n / k + usize::from(j < n % k)).collect()
}

/// The source address of connection `i` when connections go round robin to `targets` URLs:
/// the addresses are cycled per URL, so that each URL sees every source address in turn
/// (`ips[i % len]` would pair URL j only with the addresses ≡ j modulo their gcd).
pub fn source_for(ips: &[IpAddr], targets: usize, i: usize) -> IpAddr {
    ips[(i / targets.max(1)) % ips.len()]
}

/// `host:port` for a Host header (IPv6 literals in brackets).
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
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
    /// The `--url` list as one string (for default labels).
    pub fn url_list(&self) -> String {
        self.url.join(",")
    }

    /// Source addresses for connections spread round robin over the WebSocket URLs, in
    /// `groups` (each a kind of connection numbered from 0, e.g. subscribers and
    /// publishers): the given ones, or — towards IPv4 loopback servers, when more than
    /// [`CONNECTIONS_PER_SOURCE`] connections go to one server address (URLs that resolve
    /// to the same address add up) — 127.0.0.1, 127.0.0.2, … as needed.
    pub fn source_ips_for(&self, target: &Target, groups: &[usize]) -> Option<Vec<IpAddr>> {
        if let Some(list) = &self.source_ips {
            return Some(list.0.clone());
        }
        if target
            .ws
            .iter()
            .any(|w| !w.addr.ip().is_loopback() || !w.addr.is_ipv4())
        {
            return None;
        }
        let mut per_addr: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for &n in groups {
            for (w, k) in target.ws.iter().zip(target.split(n)) {
                *per_addr.entry(w.addr).or_default() += k;
            }
        }
        let most = per_addr.values().copied().max().unwrap_or(0);
        if most <= CONNECTIONS_PER_SOURCE {
            return None;
        }
        let k = most.div_ceil(CONNECTIONS_PER_SOURCE).min(254) as u8;
        Some((1..=k).map(|i| IpAddr::from([127, 0, 0, i])).collect())
    }

    /// Resolves the URLs; every one must be a loopback address.
    pub fn target(&self) -> anyhow::Result<Target> {
        let urls: Vec<&str> = self
            .url
            .iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            bail!("--url is empty");
        }
        let resolve = |h: &str, p: u16| -> anyhow::Result<SocketAddr> {
            let addr = (h, p)
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve {h}"))?
                .next()
                .ok_or_else(|| anyhow!("{h} has no address"))?;
            if !addr.ip().is_loopback() {
                bail!(
                    "{addr} is not a loopback address: this harness only loads 127.0.0.0/8 and ::1"
                );
            }
            Ok(addr)
        };
        let mut ws = Vec::with_capacity(urls.len());
        for url in &urls {
            let (host, port, prefix) = split_url(url, &[("ws", 80)])?;
            ws.push(WsTarget {
                url: url.to_string(),
                authority: authority(&host, port),
                addr: resolve(&host, port).with_context(|| format!("--url {url}"))?,
                prefix,
            });
        }
        let (api_url, (api_host, api_port, api_prefix)) = match &self.api_url {
            Some(u) => (u.clone(), split_url(u, &[("http", 80)])?),
            None => {
                let (host, port, _) = split_url(urls[0], &[("ws", 80)])?;
                let url = format!("http://{}", authority(&host, port));
                (url, (host, port, String::new()))
            }
        };
        let api_addr =
            resolve(&api_host, api_port).with_context(|| format!("--api-url {api_url}"))?;
        Ok(Target {
            ws,
            api_url,
            api_authority: authority(&api_host, api_port),
            api_addr,
            api_prefix,
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

    /// The common options of `fanout` with `args`.
    fn common(args: &[&str]) -> Common {
        let cli = Cli::try_parse_from(["ringcast-loadtest", "fanout"].iter().chain(args))
            .unwrap_or_else(|e| panic!("{e}"));
        let Command::Fanout(f) = cli.command else {
            panic!()
        };
        f.common
    }

    #[test]
    fn urls_repeat_and_split_on_commas() {
        let a = "ws://127.0.0.1:6001";
        let b = "ws://127.0.0.1:6002";
        let c = "ws://localhost:6003/pusher";
        // Repeated.
        assert_eq!(common(&["--url", a, "--url", b]).url, [a, b]);
        // Comma-separated.
        assert_eq!(common(&["--url", &format!("{a},{b}")]).url, [a, b]);
        // Both.
        let mixed = common(&["--url", a, "--url", &format!("{b},{c}")]);
        assert_eq!(mixed.url, [a, b, c]);
        let t = mixed.target().unwrap();
        assert_eq!(t.ws_urls(), [a, b, c]);
        assert_eq!(t.ws[1].addr, "127.0.0.1:6002".parse().unwrap());
        assert_eq!(t.ws[1].authority, "127.0.0.1:6002");
        assert_eq!(t.ws[2].authority, "localhost:6003");
        assert_eq!(t.ws[2].prefix, "/pusher");
        assert!(t.ws[2].addr.ip().is_loopback());
        // The API defaults to the first URL's host and port.
        assert_eq!(t.api_url, "http://127.0.0.1:6001");
        assert_eq!(t.api_addr, "127.0.0.1:6001".parse().unwrap());
        assert_eq!(t.api_authority, "127.0.0.1:6001");
        // Or is one other node; spaces and empty pieces are ignored.
        let t = common(&[
            "--url",
            &format!("{a}, {b},"),
            "--api-url",
            "http://127.0.0.1:6003/api",
        ])
        .target()
        .unwrap();
        assert_eq!(t.ws_urls(), [a, b]);
        assert_eq!(t.api_url, "http://127.0.0.1:6003/api");
        assert_eq!(t.api_addr.port(), 6003);
        assert_eq!(t.api_prefix, "/api");
        assert_eq!(
            common(&["--url", "ws://[::1]:9"]).target().unwrap().ws[0].authority,
            "[::1]:9"
        );
        assert_eq!(
            common(&["--server-pid", "10", "--server-pid", "11,12"]).server_pid,
            [10, 11, 12]
        );
    }

    #[test]
    fn every_url_must_be_loopback() {
        for args in [
            &[
                "--url",
                "ws://127.0.0.1:6001",
                "--url",
                "ws://192.0.2.1:6002",
            ][..],
            &["--url", "ws://127.0.0.1:6001,ws://192.0.2.1:6002"],
            &["--url", "ws://192.0.2.1:6002,ws://127.0.0.1:6001"],
            &[
                "--url",
                "ws://127.0.0.1:6001",
                "--api-url",
                "http://192.0.2.1:6003",
            ],
        ] {
            let err = format!("{:#}", common(args).target().unwrap_err());
            assert!(
                err.contains("192.0.2.1") && err.contains("not a loopback address"),
                "{err}"
            );
        }
        assert!(common(&["--url", ","]).target().is_err());
        assert!(common(&["--url", "ws://127.0.0.1:1,wss://127.0.0.1:2"])
            .target()
            .is_err());
    }

    #[test]
    fn connections_go_round_robin_over_the_urls() {
        assert_eq!(round_robin_split(1000, 2), [500, 500]);
        assert_eq!(round_robin_split(5, 2), [3, 2]);
        assert_eq!(round_robin_split(1, 3), [1, 0, 0]);
        assert_eq!(round_robin_split(7, 1), [7]);
        let t = common(&[
            "--url",
            "ws://127.0.0.1:6001,ws://127.0.0.1:6002,ws://127.0.0.1:6003",
        ])
        .target()
        .unwrap();
        let ports: Vec<u16> = (0..7).map(|i| t.ws_for(i).addr.port()).collect();
        assert_eq!(ports, [6001, 6002, 6003, 6001, 6002, 6003, 6001]);
        assert_eq!(t.split(1000), [334, 333, 333]);
        // Each URL sees every source address in turn.
        let ips: Vec<IpAddr> = (1..=2).map(|i| IpAddr::from([127, 0, 0, i])).collect();
        let t = common(&["--url", "ws://127.0.0.1:6001,ws://127.0.0.1:6002"])
            .target()
            .unwrap();
        for url in 0..2 {
            let seen: std::collections::BTreeSet<IpAddr> = (0..100)
                .filter(|i| i % 2 == url)
                .map(|i| source_for(&ips, t.ws.len(), i))
                .collect();
            assert_eq!(seen.len(), 2, "URL {url}");
        }
    }

    #[test]
    fn source_addresses_count_connections_per_server_address() {
        let two = common(&["--url", "ws://127.0.0.1:6001,ws://127.0.0.1:6002"]);
        let t = two.target().unwrap();
        // 16,000 over two addresses: 8,000 each, one source address is enough.
        assert_eq!(two.source_ips_for(&t, &[16_000]), None);
        // 30,000 (+ 2 publishers): 15,001 each.
        assert_eq!(two.source_ips_for(&t, &[30_000, 2]).unwrap().len(), 2);
        // Two URLs of one address add up.
        let same = common(&["--url", "ws://127.0.0.1:6001,ws://localhost:6001"]);
        let t = same.target().unwrap();
        if t.ws[1].addr == t.ws[0].addr {
            assert_eq!(same.source_ips_for(&t, &[16_000]).unwrap().len(), 2);
        }
        let one = common(&["--url", "ws://127.0.0.1:6001"]);
        let t = one.target().unwrap();
        assert_eq!(one.source_ips_for(&t, &[10_000]), None);
        assert_eq!(one.source_ips_for(&t, &[25_000]).unwrap().len(), 3);
    }
}
