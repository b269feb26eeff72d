//! The run's [`Summary`]: its figures, the errors that fail it (loss, duplicates,
//! reordering, failed publishes, connection errors), warnings, the harness's load and the
//! server's CPU and memory. `crate::report` saves and prints it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

use crate::cli::{FanoutArgs, Via};
use crate::machine;
use crate::progress::IntervalPoint;
use crate::report::{self, Harness, Server, Summary};
use crate::stats::Percentiles;

use super::accounting::{rss_growth_kib_per_min, Tally};
use super::phases::Samples;
use super::schedule::Plan;
use super::Soak;

/// What the coordinator measured besides the deliveries.
pub(super) struct Measured {
    pub setup_secs: f64,
    pub samples: Samples,
    /// One point per second.
    pub series: Vec<IntervalPoint>,
    /// CPU utilization of each harness thread over the measured window.
    pub thread_util: Vec<f64>,
}

/// The summary of a fan-out (or, with `soak`, soak) run.
pub(super) fn build(
    args: &FanoutArgs,
    soak: Option<Soak>,
    plan: &Plan,
    tally: &Tally,
    measured: Measured,
) -> Summary {
    let common = &args.common;
    let threads = common.threads;
    let duration = common.duration.as_secs_f64();
    let mut figures = figures(args, soak, plan, tally, measured.setup_secs);
    let latency = Percentiles::of(&tally.hist);
    for (k, v) in [
        ("p50", latency.p50_us),
        ("p90", latency.p90_us),
        ("p99", latency.p99_us),
        ("p99_9", latency.p999_us),
        ("p99_99", latency.p9999_us),
        ("max", latency.max_us),
    ] {
        figures.insert(format!("latency_{k}_ms"), v as f64 / 1000.0);
    }
    let mut errors = errors(plan, tally, soak);
    if let Some(behind) = fell_behind(args, tally, &mut figures) {
        errors.push(behind);
    }
    let mut warnings = Vec::new();
    let thread_util = measured.thread_util;
    let saturated = thread_util.iter().any(|u| *u >= 0.9);
    if saturated {
        warnings.push(format!("harness threads at {thread_util:?} CPU: the harness may be the bottleneck; add --threads"));
    }
    let samples = measured.samples;
    let window_ns = (samples.cpu_end.saturating_sub(samples.cpu_start)).max(1);
    let measured_wall = common.duration.as_nanos() as f64;
    let server = server(args, soak, samples, tally, &mut figures, &mut warnings);
    Summary {
        label: common.label.clone().unwrap_or_else(|| {
            format!(
                "{} {}",
                if soak.is_some() { "soak" } else { "fanout" },
                common.url_list()
            )
        }),
        scenario: if soak.is_some() { "soak" } else { "fanout" }.into(),
        harness_version: env!("CARGO_PKG_VERSION").into(),
        command_line: report::command_line(),
        started_unix: report::unix_now(),
        target: target(args, plan),
        machine: machine::describe(),
        config: serde_json::json!({
            "subscribers": args.subscribers, "channels": args.channels, "distribution": format!("{:?}", args.distribution),
            "rate": args.rate, "payload": args.payload, "via": format!("{:?}", args.via), "batch": args.batch,
            "publishers": args.publishers, "pipeline": args.pipeline, "duration_s": duration, "warmup_s": common.warmup.as_secs_f64(),
            "threads": threads, "cpus": common.cpus.as_ref().map(|c| c.0.clone()), "churn_per_sec": soak.map(|s| s.churn_per_sec),
        }),
        figures,
        distribution: report::distribution(&tally.hist),
        latency,
        intervals: measured.series,
        harness: Harness {
            threads,
            thread_cpu_utilization: thread_util,
            process_cpu_cores: ((window_ns as f64 / measured_wall) * 1000.0).round() / 1000.0,
            saturated,
        },
        server,
        errors,
        warnings,
    }
}

/// The URLs loaded and how the connections were spread over them; the API URL when
/// publishing through it.
fn target(args: &FanoutArgs, plan: &Plan) -> serde_json::Value {
    let via_http = args.via == Via::Http;
    let mut kinds = vec![("subscribers", args.subscribers)];
    if !via_http {
        kinds.push(("publishers", args.publishers));
    }
    report::target_json(&plan.target, via_http, &kinds)
}

/// The deliveries' figures, by name.
fn figures(
    args: &FanoutArgs,
    soak: Option<Soak>,
    plan: &Plan,
    tally: &Tally,
    setup_secs: f64,
) -> BTreeMap<String, f64> {
    let mut figures = BTreeMap::new();
    let duration = args.common.duration.as_secs_f64();
    let events: u64 = tally.published.iter().sum();
    figures.insert("subscribers".into(), args.subscribers as f64);
    figures.insert("channels".into(), args.channels as f64);
    figures.insert("events_published".into(), events as f64);
    figures.insert(
        "publish_errors".into(),
        plan.publish_errors.load(Relaxed) as f64,
    );
    figures.insert("deliveries_expected".into(), tally.expected as f64);
    figures.insert("deliveries_received".into(), tally.unique as f64);
    figures.insert(
        "delivered_per_sec".into(),
        (tally.received_in_window as f64 / duration).round(),
    );
    figures.insert("lost".into(), tally.lost as f64);
    figures.insert("late_at_end".into(), tally.late as f64);
    figures.insert("duplicates".into(), tally.dup as f64);
    figures.insert("out_of_order".into(), tally.ooo as f64);
    figures.insert("subscribers_with_loss".into(), tally.with_loss as f64);
    figures.insert("setup_seconds".into(), (setup_secs * 100.0).round() / 100.0);
    if soak.is_some() {
        figures.insert("subscribers_stayed".into(), tally.stayed as f64);
        figures.insert(
            "subscribers_churned".into(),
            (tally.subscribers as u64 - tally.stayed) as f64,
        );
    }
    figures
}

/// The rate the publishers achieved (a figure), and an error when it is below 95% of
/// `--rate`: latency is still measured from the intended send times (so the delay shows),
/// but the load asked for was not applied, and a run that fell behind is not a pass.
fn fell_behind(
    args: &FanoutArgs,
    tally: &Tally,
    figures: &mut BTreeMap<String, f64>,
) -> Option<String> {
    let secs = args.common.warmup.as_secs_f64() + args.common.duration.as_secs_f64();
    let published: u64 = tally.published.iter().sum();
    let achieved = published as f64 / secs.max(1e-9);
    figures.insert("publish_rate_achieved".into(), achieved.round());
    if args.rate <= 0.0 || achieved >= 0.95 * args.rate {
        return None;
    }
    let hint = match args.via {
        Via::Http => "add --publishers (up to --channels) or --pipeline",
        Via::ClientEvent => {
            "add --publishers (up to --channels), or raise the app's client_event_rate"
        }
    };
    Some(format!(
        "publishers fell behind: {published} events in {secs:.1} s is {achieved:.0}/s, below 95% of --rate {}; {hint}",
        args.rate
    ))
}

/// What fails the run: loss, duplicates, reordering, and every kind of error the threads
/// recorded.
fn errors(plan: &Plan, tally: &Tally, soak: Option<Soak>) -> Vec<String> {
    let (lost, dup, ooo, with_loss) = (tally.lost, tally.dup, tally.ooo, tally.with_loss);
    let mut errors = Vec::new();
    let what = if soak.is_some() {
        " (of subscribers that stayed connected)"
    } else {
        ""
    };
    if lost > 0 {
        errors.push(format!(
            "{lost} messages lost{what}, by {with_loss} subscribers (see subscribers.csv)"
        ));
    }
    if tally.late > 0 {
        errors.push(format!(
            "{} events{what} had not arrived when the drain ended, after the last that did: the server was behind its load (lengthen --drain to tell late from lost, or lower --rate)",
            tally.late
        ));
    }
    if dup > 0 {
        errors.push(format!("{dup} duplicate deliveries"));
    }
    if ooo > 0 {
        errors.push(format!("{ooo} deliveries out of order"));
    }
    for (kind, (n, examples)) in plan.errors.lock().expect("not poisoned").iter() {
        errors.push(format!("{n} × {kind}: {}", examples.join(" | ")));
    }
    errors
}

/// The server's CPU and memory over the measured window, when `--server-pid` was given —
/// summed over the pids when several were (and its RSS slope as a figure, a warning when a
/// soak saw it grow).
fn server(
    args: &FanoutArgs,
    soak: Option<Soak>,
    samples: Samples,
    tally: &Tally,
    figures: &mut BTreeMap<String, f64>,
    warnings: &mut Vec<String>,
) -> Option<Server> {
    let pids = &args.common.server_pid;
    let received_in_window = tally.received_in_window;
    let measured_wall = args.common.duration.as_nanos() as f64;
    let rss_samples = samples.rss;
    match (
        pids.first().copied(),
        samples.server_start.flatten(),
        samples.server_end.flatten(),
    ) {
        (Some(pid), Some(a), Some(b)) => {
            let cores = (b.cpu_ns - a.cpu_ns) as f64 / measured_wall;
            if let Some(growth) = rss_growth_kib_per_min(&rss_samples) {
                figures.insert(
                    "server_rss_growth_kib_per_min".into(),
                    (growth * 10.0).round() / 10.0,
                );
                if soak.is_some() && growth > 100.0 {
                    warnings.push(format!("server RSS grew {growth:.0} KiB/min over the run"));
                }
            }
            let [cpu, user, system] = report::cpu_per_message(&a, &b, received_in_window);
            for (name, v) in [
                ("server_cpu_us_per_delivery", cpu),
                ("server_user_us_per_delivery", user),
                ("server_system_us_per_delivery", system),
            ] {
                if let Some(v) = v {
                    figures.insert(name.into(), v);
                }
            }
            Some(Server {
                pid,
                pids: pids.clone(),
                rss_start_kib: a.rss_kib,
                rss_end_kib: b.rss_kib,
                cpu_cores: (cores * 1000.0).round() / 1000.0,
                cpu_us_per_message: cpu,
                user_us_per_message: user,
                system_us_per_message: system,
                rss_samples,
            })
        }
        (Some(_), _, _) => {
            warnings.push(format!(
                "could not read /proc of server pid {pids:?}: no server figures"
            ));
            None
        }
        _ => None,
    }
}
