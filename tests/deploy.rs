//! The deployment files under `deploy/`: the install script puts the binary, the systemd
//! unit and an example configuration in place with the right modes and never overwrites an
//! operator's configuration; systemd accepts the unit; the example configuration is valid
//! TOML; the Grafana dashboard queries only metrics ringcast exports, with their labels,
//! so that the dashboard and the server cannot drift apart unnoticed; and the 3-node
//! cluster example of `deploy/cluster/` (Docker Compose, HAProxy, Dockerfile, apps file)
//! agrees with itself and with ringcast's flags, and HAProxy accepts its configuration.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

mod common;

/// Every metric ringcast exports that a dashboard may query, with its labels (beyond the
/// `instance` and `job` labels Prometheus adds). Keep in step with the server's metrics
/// and docs/operations.md.
const METRICS: &[(&str, &[&str])] = &[
    ("ringcast_info", &["version", "backend", "workers"]),
    ("process_resident_memory_bytes", &[]),
    ("ringcast_connections", &["worker"]),
    ("ringcast_connections_opened_total", &["worker"]),
    ("ringcast_connections_closed_total", &["worker", "code"]),
    ("ringcast_connections_rejected_total", &["worker", "reason"]),
    ("ringcast_subscriptions", &["worker", "type"]),
    ("ringcast_channels", &["type"]),
    ("ringcast_messages_received_total", &["worker"]),
    ("ringcast_messages_sent_total", &["worker"]),
    ("ringcast_received_bytes_total", &["worker"]),
    ("ringcast_sent_bytes_total", &["worker"]),
    ("ringcast_events_published_total", &["worker"]),
    (
        "ringcast_http_requests_total",
        &["worker", "endpoint", "status"],
    ),
    ("ringcast_rate_limited_total", &["worker", "limit"]),
    ("ringcast_slow_consumer_disconnects_total", &["worker"]),
    ("ringcast_outbound_queue_bytes", &["worker"]),
    ("ringcast_webhook_requests_total", &["result"]),
    ("ringcast_worker_heartbeat_age_seconds", &["worker"]),
    ("process_open_fds", &[]),
    ("process_max_fds", &[]),
    ("ringcast_io_fallback", &[]),
    ("ringcast_connections_limit", &[]),
    ("ringcast_broker_connected", &[]),
];

/// Histograms, queried as `_bucket` (with `le`), `_sum` and `_count`.
const HISTOGRAMS: &[&str] = &[
    "ringcast_publish_latency_seconds",
    "ringcast_frame_processing_seconds",
];

/// Labels Prometheus attaches to every scraped series.
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// The default `--shutdown-timeout`, in seconds: systemd must wait longer before SIGKILL.
const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 10;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringcast-deploy-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `deploy/install.sh --root ROOT --no-user --no-systemd` with `binary`.
fn install(root: &Path, binary: &Path) -> Output {
    Command::new("sh")
        .arg(repo().join("deploy/install.sh"))
        .arg("--root")
        .arg(root)
        .arg("--binary")
        .arg(binary)
        .args(["--no-user", "--no-systemd"])
        .current_dir(repo())
        .output()
        .expect("cannot run sh")
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "install.sh failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

struct Installed {
    binary: PathBuf,
    unit: PathBuf,
    config: PathBuf,
}

fn installed(root: &Path) -> Installed {
    Installed {
        binary: root.join("usr/local/bin/ringcast"),
        unit: root.join("etc/systemd/system/ringcast.service"),
        config: root.join("etc/ringcast/ringcast.toml"),
    }
}

fn server_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringcast"))
}

#[test]
fn install_puts_binary_unit_and_config_in_place_with_their_modes() {
    let root = TempDir::new("fresh");
    assert_ok(&install(&root.0, server_binary()));
    let files = installed(&root.0);

    assert_eq!(mode(&files.binary), 0o755);
    assert_eq!(
        fs::read(&files.binary).unwrap(),
        fs::read(server_binary()).unwrap(),
        "the installed binary is not the one given"
    );
    assert_eq!(mode(&files.unit), 0o644);
    assert_eq!(
        fs::read_to_string(&files.unit).unwrap(),
        fs::read_to_string(repo().join("deploy/ringcast.service")).unwrap()
    );
    // The configuration holds secrets: not readable by others.
    assert_eq!(mode(&files.config), 0o640);
    let config: toml::Table = fs::read_to_string(&files.config)
        .unwrap()
        .parse()
        .expect("the installed configuration is not valid TOML");
    assert!(
        config.get("app").and_then(|a| a.as_array()).is_some(),
        "the installed configuration has no [[app]] table"
    );
}

#[test]
fn a_second_install_replaces_the_binary_but_keeps_the_operators_config() {
    let root = TempDir::new("again");
    assert_ok(&install(&root.0, server_binary()));
    let files = installed(&root.0);

    let operators = "# the operator's own configuration\nport = 7001\n";
    fs::write(&files.config, operators).unwrap();
    fs::set_permissions(&files.config, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&files.binary, b"an older build").unwrap();

    let out = install(&root.0, server_binary());
    assert_ok(&out);
    assert_eq!(fs::read_to_string(&files.config).unwrap(), operators);
    assert_eq!(
        mode(&files.config),
        0o600,
        "the operator's mode was changed"
    );
    assert_eq!(
        fs::read(&files.binary).unwrap(),
        fs::read(server_binary()).unwrap()
    );
    assert_eq!(mode(&files.binary), 0o755);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kept the existing"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn install_without_the_binary_fails_and_says_how_to_build_it() {
    let root = TempDir::new("nobinary");
    let missing = root.0.join("no-such-build/ringcast");
    let out = install(&root.0, &missing);
    assert!(
        !out.status.success(),
        "install.sh succeeded without a binary"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not found") && stderr.contains(&*missing.to_string_lossy()),
        "unclear message: {stderr}"
    );
    assert!(stderr.contains("cargo build --release"), "{stderr}");
    assert!(
        !root.0.join("usr/local/bin/ringcast").exists(),
        "something was installed"
    );
}

#[test]
fn systemd_accepts_the_unit() {
    let unit = fs::read_to_string(repo().join("deploy/ringcast.service")).unwrap();
    let directives: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(directives
        .contains(&"ExecStart=/usr/local/bin/ringcast --config /etc/ringcast/ringcast.toml"));
    assert!(directives.contains(&"LimitNOFILE=1048576"));
    let stop = directives
        .iter()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("no TimeoutStopSec");
    let stop: u64 = stop.trim_end_matches('s').parse().unwrap();
    assert!(
        stop > DEFAULT_SHUTDOWN_TIMEOUT_SECS,
        "TimeoutStopSec={stop}s would kill ringcast during its drain"
    );
    // A system call filter could deny io_uring_setup/io_uring_enter/io_uring_register.
    assert!(
        !directives
            .iter()
            .any(|l| l.starts_with("SystemCallFilter=")),
        "the unit must not filter system calls"
    );

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        common::deps::unavailable(
            "systemd-analyze (package systemd), so `systemd-analyze verify` could not check \
             deploy/ringcast.service",
        );
        return;
    }
    // verify checks that ExecStart names an executable: point it at an installed copy.
    let root = TempDir::new("systemd");
    assert_ok(&install(&root.0, server_binary()));
    let files = installed(&root.0);
    let dir = root.0.join("verify");
    fs::create_dir_all(&dir).unwrap();
    let unit_copy = dir.join("ringcast.service");
    fs::write(
        &unit_copy,
        unit.replace("/usr/local/bin/ringcast", &files.binary.to_string_lossy()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_copy)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown or malformed settings are only warnings: any line about the unit fails.
    let complaints: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("ringcast.service"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify rejects the unit ({:?}):\n{report}",
        out.status
    );
}

#[test]
fn example_config_is_valid_toml_with_placeholder_secrets() {
    let text = fs::read_to_string(repo().join("deploy/ringcast.toml.example")).unwrap();
    let config: toml::Table = text.parse().expect("not valid TOML");
    let apps = config["app"].as_array().expect("no [[app]] table");
    assert!(!apps.is_empty());
    for app in apps {
        for key in ["key", "secret"] {
            let value = app[key].as_str().unwrap();
            assert!(
                value.starts_with("CHANGE-ME"),
                "app {key} {value:?} is not an obvious placeholder"
            );
        }
    }
    assert_eq!(config["metrics_port"].as_integer(), Some(9601));

    // Top-level keys are the long flags with dashes turned into underscores.
    let help = Command::new(server_binary())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for key in config.keys().filter(|k| *k != "app") {
        let flag = format!("--{}", key.replace('_', "-"));
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "the example sets {key}, but ringcast has no {flag} flag"
        );
    }
}

#[test]
fn prometheus_example_scrapes_the_metrics_listener() {
    let text = fs::read_to_string(repo().join("deploy/prometheus/prometheus.yml")).unwrap();
    assert!(text.contains("metrics_path: /metrics"));
    assert!(text.contains("127.0.0.1:9601"));
}

/// What one PromQL expression reads: metric names and label names.
#[derive(Debug, Default, PartialEq)]
struct Usage {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

/// Reads the metric and label names of a PromQL expression: enough PromQL for dashboards
/// (selectors, functions, aggregations with `by`/`without`, binary operators, Grafana
/// `$variables`), not a full parser.
fn promql_usage(expr: &str) -> Usage {
    const LABEL_LIST_KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const OPERATORS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
    let chars: Vec<char> = expr.chars().collect();
    let mut usage = Usage::default();
    let (mut braces, mut in_label_list, mut label_list_next) = (0usize, false, false);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '[' => {
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
                i += 1;
            }
            '{' => {
                braces += 1;
                i += 1;
            }
            '}' => {
                braces = braces.saturating_sub(1);
                i += 1;
            }
            '(' => {
                in_label_list = label_list_next;
                label_list_next = false;
                i += 1;
            }
            ')' => {
                in_label_list = false;
                i += 1;
            }
            c if c == '$' || c.is_ascii_digit() => {
                // A Grafana variable or a number (0.99, 1e3): nothing to report.
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_.".contains(chars[i]))
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i]))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let rest: String = chars[i..].iter().collect();
                let rest = rest.trim_start();
                let next_word = rest
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or_default();
                if braces > 0 || in_label_list {
                    usage.labels.insert(word);
                } else if LABEL_LIST_KEYWORDS.contains(&word.as_str()) {
                    label_list_next = true;
                } else if rest.starts_with('(')
                    || ["by", "without"].contains(&next_word)
                    || OPERATORS.contains(&word.as_str())
                {
                    // A function, an aggregation (`sum by (...)`) or an operator.
                } else {
                    usage.metrics.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    usage
}

#[test]
fn promql_reader_finds_metrics_and_labels() {
    let usage = promql_usage(
        r#"histogram_quantile(0.99, sum by (le) (rate(a_bucket{instance=~"$x", job="j"}[$__rate_interval]))) / on (instance) b"#,
    );
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(usage.metrics, set(&["a_bucket", "b"]));
    assert_eq!(usage.labels, set(&["le", "instance", "job"]));
}

/// The metric a series name belongs to and the labels it carries, if ringcast exports it.
fn known_series(name: &str) -> Option<(&'static str, Vec<&'static str>)> {
    if let Some((metric, labels)) = METRICS.iter().find(|(m, _)| *m == name) {
        return Some((metric, labels.to_vec()));
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        let Some(base) = name.strip_suffix(suffix) else {
            continue;
        };
        if let Some(histogram) = HISTOGRAMS.iter().find(|h| **h == base) {
            let labels = if suffix == "_bucket" {
                vec!["le"]
            } else {
                vec![]
            };
            return Some((histogram, labels));
        }
    }
    None
}

#[test]
fn dashboard_queries_only_metrics_ringcast_exports() {
    let text = fs::read_to_string(repo().join("deploy/grafana/ringcast.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("not valid JSON");

    // Importable with a data source picked at import time.
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dash["__inputs"][0]["pluginId"], "prometheus");
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dash["id"].is_null(), "an exported dashboard has no id");

    // (where, expression) for every query: panel targets, then template variables.
    let mut queries: Vec<(String, String)> = Vec::new();
    let mut panels: Vec<&serde_json::Value> = dash["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        let title = panel["title"].as_str().unwrap_or_default();
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if panel["type"] != "row" {
            assert!(!targets.is_empty(), "panel {title:?} has no query");
            assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        }
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            queries.push((title.to_string(), t["expr"].as_str().unwrap().to_string()));
        }
    }
    for var in dash["templating"]["list"].as_array().unwrap() {
        let query = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .unwrap();
        // label_values(metric, label): the label is read from that metric.
        let expr = match query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
        {
            Some((metric, label)) => format!("{metric}{{{}=~\".*\"}}", label.trim()),
            None => query.to_string(),
        };
        queries.push((format!("variable {}", var["name"]), expr));
    }

    let mut used = BTreeSet::new();
    for (place, expr) in &queries {
        let usage = promql_usage(expr);
        assert!(!usage.metrics.is_empty(), "{place}: no metric in {expr}");
        let mut allowed: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
        for metric in &usage.metrics {
            let (exported, labels) = known_series(metric).unwrap_or_else(|| {
                panic!("{place}: {metric} is not a metric ringcast exports (in {expr})")
            });
            allowed.extend(labels);
            used.insert(exported);
        }
        for label in &usage.labels {
            assert!(
                allowed.contains(label.as_str()),
                "{place}: label {label} is not on {:?} (in {expr})",
                usage.metrics
            );
        }
    }
    // And the dashboard shows every metric: one it leaves out is one nobody watches.
    for name in METRICS
        .iter()
        .map(|(m, _)| *m)
        .chain(HISTOGRAMS.iter().copied())
    {
        assert!(used.contains(name), "no panel shows {name}");
    }
}

/// A ringcast process, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The label names of one sample line (`name{a="x",b="y"} 1`).
fn sample_labels(line: &str) -> Vec<String> {
    let Some(start) = line.find('{') else {
        return Vec::new();
    };
    let mut labels = Vec::new();
    let mut rest = &line[start + 1..];
    while let Some(eq) = rest.find("=\"") {
        labels.push(rest[..eq].trim_start_matches(',').trim().to_string());
        // Skip the quoted value, honouring escapes.
        let value = &rest[eq + 2..];
        let mut end = 0;
        let bytes = value.as_bytes();
        while end < bytes.len() && bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        rest = &value[(end + 1).min(value.len())..];
    }
    labels
}

#[test]
fn the_server_exports_every_metric_the_dashboard_uses() {
    let mut child = Command::new(server_binary())
        .args(["--port", "0", "--metrics-port", "0", "--workers", "1"])
        .args(["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _server = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let metrics_addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("ringcast logged no metrics endpoint within 10 s");
        let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if log["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("metrics endpoint"))
        {
            break log["addr"].as_str().unwrap().to_string();
        }
    };

    let mut http = std::net::TcpStream::connect(&metrics_addr).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: ringcast\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // The broker's metrics exist only in a cluster (tests/cluster.rs reads them there).
    for (name, _) in METRICS
        .iter()
        .filter(|(m, _)| !m.starts_with("ringcast_broker_"))
    {
        assert!(
            response.contains(&format!("# TYPE {name} ")),
            "/metrics has no {name}:\n{response}"
        );
    }
    for name in HISTOGRAMS {
        assert!(
            response.contains(&format!("# TYPE {name} histogram")),
            "/metrics has no histogram {name}:\n{response}"
        );
    }
    // Every sample of those metrics carries only the labels the dashboard may group by.
    for line in response.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let Some((_, allowed)) = known_series(name) else {
            continue;
        };
        for label in sample_labels(line) {
            assert!(
                allowed.contains(&label.as_str()),
                "{name} has label {label}, which the list in this test lacks: {line}"
            );
        }
    }
}

// --- The cluster example (deploy/cluster/) ---------------------------------------------
// Docker is not needed: the compose file, the HAProxy configuration, the Dockerfile and
// the apps file are checked against each other and against ringcast itself.

/// The 3-node cluster example: Docker Compose, HAProxy, the Dockerfile and the apps file.
fn cluster() -> PathBuf {
    repo().join("deploy/cluster")
}

/// `ringcast --help`: the flags a compose file may pass.
fn server_help() -> String {
    let help = Command::new(server_binary())
        .arg("--help")
        .output()
        .unwrap();
    String::from_utf8(help.stdout).unwrap()
}

/// Whether `--help` lists `flag` (`--node-id`) as a flag of its own, not a prefix of one.
fn help_lists(help: &str, flag: &str) -> bool {
    help.lines().any(|l| {
        let l = l.trim_start();
        l == flag || l.starts_with(&format!("{flag} ")) || l.starts_with(&format!("{flag},"))
    })
}

/// A duration as Docker Compose (`1m30s`) and HAProxy (`1h`, `500ms`) write them: numbers
/// each followed by a unit, `h`, `m`, `s`, `ms`, `us` or `d`.
fn parse_duration(text: &str) -> Duration {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    assert!(!rest.is_empty(), "empty duration");
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("not a duration: {text:?}"));
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        total += match &rest[..unit] {
            "d" => Duration::from_secs(number * 86400),
            "h" => Duration::from_secs(number * 3600),
            "m" => Duration::from_secs(number * 60),
            "s" => Duration::from_secs(number),
            "ms" => Duration::from_millis(number),
            "us" => Duration::from_micros(number),
            other => panic!("unit {other:?} in duration {text:?} (write one, e.g. 15s)"),
        };
        rest = &rest[unit..];
    }
    total
}

#[test]
fn durations_are_read_as_compose_and_haproxy_write_them() {
    assert_eq!(parse_duration("15s"), Duration::from_secs(15));
    assert_eq!(parse_duration("1m30s"), Duration::from_secs(90));
    assert_eq!(parse_duration("1h"), Duration::from_secs(3600));
    assert_eq!(parse_duration("1500ms"), Duration::from_millis(1500));
}

/// The `haproxy` executable (Debian package `haproxy`; `.ci/run` installs it): on PATH, or
/// in /usr/sbin, which is not on every user's PATH.
fn haproxy() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("haproxy"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from("/usr/sbin/haproxy")).filter(|p| p.is_file()))
}

/// The lines of haproxy.cfg without comments and surrounding blanks.
fn haproxy_directives(config: &str) -> Vec<&str> {
    config
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn haproxy_accepts_the_cluster_example() {
    let config = cluster().join("haproxy.cfg");
    let text = fs::read_to_string(&config).unwrap();
    let directives = haproxy_directives(&text);
    // Once upgraded, a WebSocket is closed after `timeout tunnel` of silence: it must
    // outlast ringcast's activity_timeout (120 s) + pong_timeout (30 s).
    let tunnel = directives
        .iter()
        .find_map(|l| l.strip_prefix("timeout tunnel "))
        .expect("no `timeout tunnel`: WebSockets would be cut after `timeout client`");
    assert!(
        parse_duration(tunnel) > Duration::from_secs(150),
        "{tunnel}"
    );
    assert!(directives
        .iter()
        .any(|l| l.starts_with("timeout http-request ")));
    // ringcast drains by itself (4200, then pusher-js reconnects): HAProxy must not cut
    // a node's connections when its /readyz turns 503.
    assert!(
        !directives.iter().any(|l| l.contains("shutdown-sessions")),
        "haproxy.cfg cuts sessions on mark-down"
    );

    let Some(haproxy) = haproxy() else {
        common::deps::unavailable(
            "haproxy (apt-get install haproxy), so `haproxy -c` could not check \
             deploy/cluster/haproxy.cfg",
        );
        return;
    };
    let out = Command::new(&haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&config)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} -c rejects deploy/cluster/haproxy.cfg ({:?}):\n{report}",
        haproxy.display(),
        out.status
    );
    // Outside Docker the nodes' names do not resolve (init-addr ... none lets HAProxy start
    // anyway): that is the only warning allowed.
    for line in report
        .lines()
        .filter(|l| l.contains("[WARNING]") || l.contains("[ALERT]"))
    {
        assert!(
            line.contains("could not resolve address 'ringcast-"),
            "haproxy warns about deploy/cluster/haproxy.cfg: {line}\n{report}"
        );
    }
}

#[test]
fn the_cluster_example_compose_file_is_consistent() {
    let text = fs::read_to_string(cluster().join("compose.yaml")).unwrap();
    let mut compose: serde_norway::Value = serde_norway::from_str(&text).expect("not valid YAML");
    // Docker Compose merges `<<: *anchor` keys; so must the test.
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().expect("no services");
    let service_names: BTreeSet<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    let help = server_help();
    let haproxy_cfg = fs::read_to_string(cluster().join("haproxy.cfg")).unwrap();
    // `server NAME ADDRESS ...` lines of the backend.
    let servers: Vec<(&str, &str)> = haproxy_directives(&haproxy_cfg)
        .into_iter()
        .filter_map(|l| {
            let mut words = l.strip_prefix("server ")?.split_whitespace();
            Some((words.next()?, words.next()?))
        })
        .collect();

    let nodes: Vec<(&str, &serde_norway::Value)> = services
        .iter()
        .filter_map(|(name, service)| Some((name.as_str()?, service)))
        .filter(|(name, _)| name.starts_with("ringcast-"))
        .collect();
    assert_eq!(nodes.len(), 3, "the example has 3 ringcast nodes");

    let (mut ids, mut redis_urls) = (BTreeSet::new(), BTreeSet::new());
    for (name, service) in &nodes {
        let args: Vec<&str> = service["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name}: `command` is not a list"))
            .iter()
            .map(|a| a.as_str().expect("a command argument is not a string"))
            .collect();
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            assert!(
                help_lists(&help, flag),
                "{name} runs ringcast with {flag}, which `ringcast --help` does not list"
            );
        }
        let value = |flag: &str| -> &str {
            let at = args
                .iter()
                .position(|a| *a == flag)
                .unwrap_or_else(|| panic!("{name} has no {flag}"));
            args.get(at + 1)
                .unwrap_or_else(|| panic!("{name}: {flag} has no value"))
        };
        // The node id is the service name: logs, Redis and HAProxy's stats agree.
        let id = value("--node-id");
        assert_eq!(id, *name, "{name} runs with --node-id {id}");
        ids.insert(id);
        redis_urls.insert(value("--redis-url"));
        // Reachable by HAProxy on the compose network: the WebSocket listener and /readyz.
        assert_eq!(value("--host"), "0.0.0.0", "{name}");
        assert_eq!(value("--metrics-host"), "0.0.0.0", "{name}");

        // The apps file (secrets) is mounted read-only where --apps-file looks.
        let apps_file = value("--apps-file");
        let mounts = service["volumes"].as_sequence().expect("no volumes");
        let mount = mounts
            .iter()
            .find(|m| m["target"].as_str() == Some(apps_file))
            .unwrap_or_else(|| panic!("{name}: nothing is mounted at {apps_file}"));
        assert_eq!(
            mount["read_only"].as_bool(),
            Some(true),
            "{name}: {mount:?}"
        );
        assert_eq!(mount["source"].as_str(), Some("./apps.toml"), "{name}");

        // Docker's SIGKILL must not cut ringcast's drain short.
        let grace = service["stop_grace_period"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no stop_grace_period (Docker's is 10 s)"));
        assert!(
            parse_duration(grace) > Duration::from_secs(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
            "{name}: stop_grace_period {grace} would kill ringcast during its drain"
        );

        let build = &service["build"];
        let dockerfile = build["dockerfile"].as_str().expect("no build.dockerfile");
        let context = cluster().join(build["context"].as_str().expect("no build.context"));
        assert!(
            context.join(dockerfile).is_file(),
            "{name}: no {dockerfile}"
        );

        // HAProxy balances over every node, on ringcast's default port.
        assert!(
            servers.contains(&(*name, &*format!("{name}:6001"))),
            "haproxy.cfg has no `server {name} {name}:6001` line: {servers:?}"
        );
    }
    assert_eq!(
        ids.len(),
        3,
        "the nodes' --node-id are not distinct: {ids:?}"
    );
    assert_eq!(
        redis_urls.len(),
        1,
        "the nodes use different Redis: {redis_urls:?}"
    );
    let redis_url = redis_urls.pop_first().unwrap();
    let redis_host = redis_url
        .strip_prefix("redis://")
        .and_then(|rest| rest.split([':', '/']).next())
        .unwrap_or_else(|| panic!("unexpected --redis-url {redis_url}"));
    assert!(
        service_names.contains(redis_host),
        "--redis-url {redis_url} names no service of the compose file"
    );
    // And HAProxy sends clients to nothing else.
    assert_eq!(
        servers.len(),
        nodes.len(),
        "haproxy.cfg servers: {servers:?}"
    );

    // Clients reach the cluster through HAProxy only.
    let ports: Vec<&str> = services["haproxy"]["ports"]
        .as_sequence()
        .expect("haproxy publishes no port")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(ports.contains(&"6001:6001"), "{ports:?}");
    for (name, service) in &nodes {
        assert!(
            service.get("ports").is_none(),
            "{name} is published past HAProxy"
        );
    }
}

#[test]
fn the_cluster_apps_example_is_refused_until_its_secret_is_changed() {
    let example = cluster().join("apps.toml.example");
    let text = fs::read_to_string(&example).unwrap();
    let apps: toml::Table = text.parse().expect("not valid TOML");
    assert_eq!(
        apps.keys().collect::<Vec<_>>(),
        ["app"],
        "an apps file holds only [[app]]"
    );

    // As the nodes run it, on a public address: no default secret.
    let out = Command::new(server_binary())
        .arg("--apps-file")
        .arg(&example)
        .args(["--host", "0.0.0.0", "--port", "0", "--metrics-port", "0"])
        .args(["--workers", "1"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("placeholder"), "{stderr}");

    // With the placeholders replaced it is an apps file ringcast starts with.
    let dir = TempDir::new("cluster-apps");
    let apps_file = dir.0.join("apps.toml");
    fs::write(&apps_file, text.replace("CHANGE-ME", "replaced")).unwrap();
    let mut child = Command::new(server_binary())
        .arg("--apps-file")
        .arg(&apps_file)
        .args(["--port", "0", "--metrics-port", "0", "--workers", "1"])
        .args(["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _server = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| {
                panic!("ringcast did not start with the edited example ({e}):\n{log:#?}")
            });
        if line.contains("metrics endpoint") {
            break;
        }
        log.push(line);
    }
}

#[test]
fn the_cluster_dockerfile_copies_everything_the_build_reads() {
    let dockerfile = fs::read_to_string(cluster().join("Dockerfile")).unwrap();
    // One entry per instruction: continuation lines joined, comments left out.
    let instructions = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let lines: Vec<&str> = instructions.lines().collect();
    // Sources of the build stage's COPY lines (all words but the destination).
    let copied: Vec<PathBuf> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let words: Vec<&str> = l
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            words[..words.len() - 1]
                .iter()
                .map(|w| PathBuf::from(w.trim_end_matches('/')))
                .collect::<Vec<_>>()
        })
        .collect();
    let is_copied = |p: &Path| copied.iter().any(|c| p.starts_with(c));

    let manifest: toml::Table = fs::read_to_string(repo().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let mut needed: Vec<PathBuf> = ["Cargo.toml", "Cargo.lock", "src"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if repo().join("build.rs").exists() {
        needed.push("build.rs".into());
    }
    // Workspace members: cargo loads their manifests and finds their targets.
    for member in manifest["workspace"]["members"].as_array().unwrap() {
        let member = member.as_str().unwrap();
        if member != "." {
            needed.push(Path::new(member).join("Cargo.toml"));
            needed.push(Path::new(member).join("src"));
        }
    }
    // Declared benches must exist for the manifest to load.
    for bench in manifest
        .get("bench")
        .and_then(|b| b.as_array())
        .into_iter()
        .flatten()
    {
        needed.push(format!("benches/{}.rs", bench["name"].as_str().unwrap()).into());
    }
    // Files outside src/ that the server compiles in (include_str!, include_bytes!).
    let mut dirs = vec![repo().join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let Ok(source) = fs::read_to_string(&path) else {
                continue;
            };
            for macro_ in ["include_str!(\"", "include_bytes!(\""] {
                for (at, _) in source.match_indices(macro_) {
                    let rest = &source[at + macro_.len()..];
                    let included = &rest[..rest.find('"').unwrap()];
                    // Resolve `..` against the including file's directory.
                    let mut resolved = PathBuf::new();
                    for part in path.parent().unwrap().join(included).components() {
                        match part {
                            std::path::Component::ParentDir => {
                                resolved.pop();
                            }
                            other => resolved.push(other),
                        }
                    }
                    needed.push(resolved.strip_prefix(repo()).unwrap().to_path_buf());
                }
            }
        }
    }
    for path in &needed {
        assert!(
            is_copied(path),
            "deploy/cluster/Dockerfile does not COPY {}, which `cargo build` reads",
            path.display()
        );
    }

    // The image compose.yaml runs: the binary where the flags expect it, not as root.
    assert!(lines.iter().any(|l| l.starts_with("FROM rust:1-bookworm ")));
    assert!(lines.contains(&"FROM debian:bookworm-slim"));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("RUN ") && l.contains("cargo build --release --locked")));
    assert!(lines.contains(&"ENTRYPOINT [\"/usr/local/bin/ringcast\"]"));
    assert!(lines.contains(&"EXPOSE 6001 9601"));
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the image runs as root");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "USER {user}"
    );
}
