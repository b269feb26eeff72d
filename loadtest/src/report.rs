//! Results: `summary.json` (every figure), `latency.hgrm` (HdrHistogram percentile
//! distribution), `latency.svg`, and the summary printed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::cli::Target;
use crate::machine::Machine;
use crate::numfmt::fmt_num;
use crate::progress::IntervalPoint;
use crate::stats::Percentiles;
use crate::svg;

/// Whether the run found errors (loss, duplicates, reordering, failed publishes…).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Errors,
}

/// The harness's own load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Harness {
    pub threads: usize,
    /// CPU utilization of each harness thread over the measured window (1.0 = one core).
    pub thread_cpu_utilization: Vec<f64>,
    /// Process CPU seconds per wall second over the measured window.
    pub process_cpu_cores: f64,
    /// Whether a harness thread was at ≥ 90% CPU: the harness, not the server, may have
    /// been the limit.
    pub saturated: bool,
}

/// The server process, when `--server-pid` was given; with several (one per cluster node),
/// their sum.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Server {
    /// The first (or only) pid.
    pub pid: u32,
    /// Every pid given; CPU and RSS are their sum.
    #[serde(default)]
    pub pids: Vec<u32>,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    /// Server CPU seconds per wall second over the measured window.
    pub cpu_cores: f64,
    /// Server CPU per received message, in microseconds.
    pub cpu_us_per_message: Option<f64>,
    /// Of that, user-space CPU (the server's own code) and system CPU (the kernel working
    /// for it), in microseconds.
    #[serde(default)]
    pub user_us_per_message: Option<f64>,
    #[serde(default)]
    pub system_us_per_message: Option<f64>,
    /// RSS samples over time (soak), `[seconds, KiB]`.
    pub rss_samples: Vec<[f64; 2]>,
}

/// Server CPU per message between samples `a` and `b` for `n` messages, in microseconds:
/// total, user and system (each rounded to ns; `None` without messages).
pub fn cpu_per_message(
    a: &crate::machine::ProcSample,
    b: &crate::machine::ProcSample,
    n: u64,
) -> [Option<f64>; 3] {
    let per = |ns: u64| (n > 0).then(|| (ns as f64 / n as f64).round() / 1000.0);
    let user = b.user_ns.saturating_sub(a.user_ns);
    let total = b.cpu_ns.saturating_sub(a.cpu_ns);
    [per(total), per(user), per(total.saturating_sub(user))]
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub label: String,
    pub scenario: String,
    pub harness_version: String,
    pub command_line: Vec<String>,
    pub started_unix: u64,
    pub target: serde_json::Value,
    pub machine: Machine,
    pub config: serde_json::Value,
    /// Every figure, by name, for tables and `compare`.
    pub figures: BTreeMap<String, f64>,
    /// Latency percentiles over the measured window.
    pub latency: Percentiles,
    /// The percentile distribution, `[percentile 0–100, milliseconds]`.
    pub distribution: Vec<[f64; 2]>,
    /// One point per second.
    pub intervals: Vec<IntervalPoint>,
    pub harness: Harness,
    pub server: Option<Server>,
    /// Errors: any makes the run fail (exit status 3).
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Summary {
    pub fn verdict(&self) -> Verdict {
        if self.errors.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Errors
        }
    }
}

/// The percentile distribution of `h` (microseconds) as `[percentile, ms]` points, five
/// per halving of the distance to 100% — what HdrHistogram's plotter draws.
pub fn distribution(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    if h.is_empty() {
        return vec![];
    }
    let mut out: Vec<[f64; 2]> = h
        .iter_quantiles(5)
        .map(|v| {
            [
                v.quantile_iterated_to() * 100.0,
                v.value_iterated_to() as f64 / 1000.0,
            ]
        })
        .collect();
    out.dedup_by(|a, b| a[0] == b[0]);
    out
}

/// HdrHistogram's percentile-distribution text (values in milliseconds), as
/// `outputPercentileDistribution` writes it and its plotter reads it.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if h.is_empty() {
        return s;
    }
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = v.value_iterated_to() as f64 / 1000.0;
        if q < 1.0 {
            let _ = writeln!(
                s,
                "{value:12.3} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(s, "{value:12.3} {q:2.12} {total:10}");
        }
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        s,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    );
    s
}

/// Writes summary.json, latency.hgrm and latency.svg into `out`, and prints the summary.
pub fn write(out: &Path, summary: &Summary, hist: &Histogram<u64>) -> anyhow::Result<Verdict> {
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(summary)?,
    )?;
    std::fs::write(out.join("latency.hgrm"), hgrm(hist))?;
    std::fs::write(
        out.join("latency.svg"),
        svg::percentile_plot(&[(summary.label.as_str(), &summary.distribution)]),
    )?;
    print(summary);
    eprintln!("results in {}", out.display());
    Ok(summary.verdict())
}

fn print(s: &Summary) {
    let mut t = String::new();
    let _ = writeln!(t, "\n{} — {}", s.scenario, s.label);
    let target = describe_target(&s.target);
    if !target.is_empty() {
        let _ = writeln!(t, "  target: {target}");
    }
    for (k, v) in &s.figures {
        let _ = writeln!(t, "  {k:<34} {}", fmt_num(*v));
    }
    if s.latency.count > 0 {
        let l = &s.latency;
        let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
        let _ = writeln!(
            t,
            "  latency ms: p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  ({} samples)",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.p9999_us),
            ms(l.max_us),
            l.count
        );
    }
    let h = &s.harness;
    let _ = writeln!(
        t,
        "  harness: {} threads, CPU per thread {:?}, process {:.2} cores",
        h.threads, h.thread_cpu_utilization, h.process_cpu_cores
    );
    if let Some(srv) = &s.server {
        let pids = if srv.pids.len() > 1 {
            let list: Vec<String> = srv.pids.iter().map(u32::to_string).collect();
            format!("server pids {} (summed)", list.join(", "))
        } else {
            format!("server pid {}", srv.pid)
        };
        let _ = writeln!(
            t,
            "  {pids}: {:.2} cores, RSS {} → {} KiB{}",
            srv.cpu_cores,
            srv.rss_start_kib,
            srv.rss_end_kib,
            match (
                srv.cpu_us_per_message,
                srv.user_us_per_message,
                srv.system_us_per_message
            ) {
                (Some(c), Some(u), Some(s)) =>
                    format!(", {c:.3} µs CPU per message ({u:.3} user, {s:.3} system)"),
                (Some(c), _, _) => format!(", {c:.3} µs CPU per message"),
                _ => String::new(),
            }
        );
    }
    for w in &s.warnings {
        let _ = writeln!(t, "  WARNING: {w}");
    }
    for e in &s.errors {
        let _ = writeln!(t, "  ERROR: {e}");
    }
    let _ = writeln!(
        t,
        "  verdict: {}",
        if s.errors.is_empty() {
            "PASS"
        } else {
            "ERRORS"
        }
    );
    eprint!("{t}");
}

/// What a run loaded, for `Summary::target`: the WebSocket URLs (`targets`; `url` is the
/// same list comma-separated), the API URL when the run publishes through it, the app, and
/// for each kind of connection (`name`, count) how many went to each URL
/// (`{name}_per_target`, in the order of `targets`).
pub fn target_json(target: &Target, api: bool, kinds: &[(&str, usize)]) -> serde_json::Value {
    let urls = target.ws_urls();
    let mut t = serde_json::json!({
        "url": urls.join(","),
        "targets": urls,
        "app_id": target.app_id,
    });
    if api {
        t["api_url"] = target.api_url.clone().into();
    }
    for (name, n) in kinds {
        t[format!("{name}_per_target")] = target.split(*n).into();
    }
    t
}

/// The targets of a summary in one line: its WebSocket URLs (with the connections of each
/// kind per URL when there are several) and the API URL.
pub fn describe_target(t: &serde_json::Value) -> String {
    let urls: Vec<&str> = match t["targets"].as_array() {
        Some(a) => a.iter().filter_map(|u| u.as_str()).collect(),
        None => t["url"].as_str().into_iter().collect(),
    };
    let mut s = urls.join(", ");
    if urls.len() > 1 {
        if let Some(obj) = t.as_object() {
            for (k, v) in obj {
                if let (Some(kind), Some(split)) = (k.strip_suffix("_per_target"), v.as_array()) {
                    let split: Vec<String> = split.iter().map(|n| n.to_string()).collect();
                    let _ = write!(s, "; {kind} per URL {}", split.join(" + "));
                }
            }
        }
    }
    if let Some(api) = t["api_url"].as_str() {
        let _ = write!(s, "; API {api}");
    }
    s
}

/// The command line that started this run.
pub fn command_line() -> Vec<String> {
    std::env::args().collect()
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{histogram, record};

    #[test]
    fn hgrm_matches_hdrhistograms_layout() {
        let mut h = histogram();
        for v in 1..=10_000u64 {
            record(&mut h, v);
        }
        let text = hgrm(&h);
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            .collect();
        assert!(rows.len() > 20);
        // Value, percentile, total count (cumulative), 1/(1-p).
        let first: Vec<&str> = rows[0].split_whitespace().collect();
        assert_eq!(first.len(), 4);
        let last: Vec<&str> = rows.last().unwrap().split_whitespace().collect();
        assert_eq!(last[1].parse::<f64>().unwrap(), 1.0);
        assert_eq!(last[2], "10000");
        assert!(text.contains("#[Max     ="));
        let d = distribution(&h);
        assert!(d
            .windows(2)
            .all(|w| w[0][0] < w[1][0] && w[0][1] <= w[1][1]));
    }

    #[test]
    fn summaries_name_every_target() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "ringcast-loadtest",
            "fanout",
            "--url",
            "ws://127.0.0.1:6001",
            "--url",
            "ws://127.0.0.1:6002",
            "--api-url",
            "http://127.0.0.1:6003",
        ])
        .unwrap();
        let crate::cli::Command::Fanout(f) = cli.command else {
            panic!()
        };
        let target = f.common.target().unwrap();
        let t = target_json(&target, true, &[("subscribers", 1001)]);
        assert_eq!(
            t["targets"],
            serde_json::json!(["ws://127.0.0.1:6001", "ws://127.0.0.1:6002"])
        );
        assert_eq!(t["url"], "ws://127.0.0.1:6001,ws://127.0.0.1:6002");
        assert_eq!(t["api_url"], "http://127.0.0.1:6003");
        assert_eq!(t["subscribers_per_target"], serde_json::json!([501, 500]));
        assert_eq!(
            describe_target(&t),
            "ws://127.0.0.1:6001, ws://127.0.0.1:6002; subscribers per URL 501 + 500; API http://127.0.0.1:6003"
        );
        // Summaries from before the list name one URL.
        assert_eq!(
            describe_target(&serde_json::json!({"url": "ws://127.0.0.1:6001"})),
            "ws://127.0.0.1:6001"
        );
        assert!(target_json(&target, false, &[]).get("api_url").is_none());
    }
}
