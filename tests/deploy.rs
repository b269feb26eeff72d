//! The deployment files under `deploy/`: the install script puts the binary, the systemd
//! unit and an example configuration in place with the right modes and never overwrites an
//! operator's configuration; systemd accepts the unit; the example configuration is valid
//! TOML; and the Grafana dashboard queries only metrics ringcast exports, with their labels,
//! so that the dashboard and the server cannot drift apart unnoticed.

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

    for (name, _) in METRICS {
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
