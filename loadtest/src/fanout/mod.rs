//! `fanout` and `soak`: subscribers over channels, events published at a fixed rate through
//! the signed HTTP API (or as client events); every delivery's latency, and every
//! subscriber's losses, duplicates and reorderings.
//!
//! Each channel is published to by exactly one publisher, which waits for each reply, so a
//! subscriber must see that channel's sequence numbers in order: anything else is the
//! server's doing. Event data is `"{seq} {intended_ns} {padding}"`, where `intended_ns` is
//! when the constant-rate schedule meant to publish it (see `stats::latency_us`).
//!
//! [`run`] checks the arguments, starts the harness threads ([`subscribers`], which also
//! run the [`publishers`]) on a shared [`schedule::Plan`], waits for set-up and runs the
//! measurement ([`phases`]), then tallies the deliveries ([`accounting`]) into a
//! [`summary`] that `crate::report` saves and prints.

mod accounting;
mod connection;
mod phases;
mod presence;
mod publishers;
mod schedule;
mod subscribers;
mod summary;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::bail;

use crate::cli::{FanoutArgs, Via};
use crate::progress::Coordinator;
use crate::report::{self, Verdict};
use crate::stats::now_ns;
use crate::{pool, webhooks};

use schedule::Plan;
use summary::Measured;

/// Soak options: churn, presence, webhooks and memory sampling.
#[derive(Debug, Clone, Copy)]
pub struct Soak {
    pub churn_per_sec: f64,
    pub sample_every: Duration,
    /// Presence connections joining and leaving, over this many channels, staying this
    /// long on average.
    pub presence: usize,
    pub presence_channels: usize,
    pub presence_hold: Duration,
    /// Where to receive the server's webhooks, and how long to wait for the last ones
    /// after everything disconnected.
    pub webhooks: Option<std::net::SocketAddr>,
    pub webhook_settle: Duration,
}

/// Runs `fanout` (with `soak`: `soak`), then saves and prints the summary.
pub fn run(args: FanoutArgs, soak: Option<Soak>) -> anyhow::Result<Verdict> {
    let common = &args.common;
    let target = common.target()?;
    // Subscribers, and client-event publishers, each spread over the WebSocket URLs.
    let ws_publishers = if args.via == Via::ClientEvent {
        args.publishers
    } else {
        0
    };
    let source_ips = common.source_ips_for(&target, &[args.subscribers, ws_publishers]);
    check(&args)?;
    std::fs::create_dir_all(&common.out)?;
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xffffff);
    let channels = channel_names(&args, &run_id);
    let receiver = match soak.and_then(|s| s.webhooks) {
        Some(addr) => Some(webhooks::Receiver::start(
            addr,
            common.app_key.clone(),
            common.app_secret.clone(),
            format!("lt-{run_id}-"),
        )?),
        None => None,
    };
    let (tick_tx, tick_rx) = mpsc::channel();
    let plan = Arc::new(Plan::new(
        &args, soak, target, source_ips, channels, &run_id, tick_tx,
    ));
    let threads = common.threads;

    let handles = {
        let plan = plan.clone();
        pool::spawn(
            threads,
            common.cpus.as_ref().map(|c| c.0.as_slice()),
            move |i| subscribers::thread_main(plan.clone(), i),
        )
    };

    let warmup_secs = common.warmup.as_secs_f64().ceil() as u64;
    let total_secs = warmup_secs + common.duration.as_secs_f64().ceil() as u64;
    let mut coord = Coordinator::new(
        &common.out,
        threads,
        warmup_secs,
        total_secs,
        common.quiet,
        "msg",
    )?;

    // Set-up: every subscriber (and client-event publisher) connected and subscribed.
    let handles = phases::wait_for_set_up(&plan, &args, &coord, handles)?;
    let setup_secs = (now_ns() - plan.setup_start_ns) as f64 / 1e9;

    // Run: publish from t0; measure from t0 + warm-up for --duration.
    plan.t0_ns.store(now_ns() + 100_000_000, Relaxed);
    let samples = phases::publish_and_measure(
        &plan,
        &common.server_pid,
        soak,
        args.drain,
        &tick_rx,
        &mut coord,
    )?;
    plan.stop.store(true, Relaxed);
    let results = pool::join(handles)?;
    while let Ok(t) = tick_rx.try_recv() {
        coord.on_tick(t)?;
    }
    let (series, thread_util) = coord.finish();

    // Aggregate.
    let tally = accounting::tally(&plan, results, &common.out)?;
    let measured = Measured {
        setup_secs,
        samples,
        series,
        thread_util,
    };
    let mut summary = summary::build(&args, soak, &plan, &tally, measured);
    if let Some(p) = &plan.presence {
        let (joins, leaves) = (p.joins.load(Relaxed), p.leaves.load(Relaxed));
        summary
            .figures
            .insert("presence_joins".into(), joins as f64);
        summary
            .figures
            .insert("presence_leaves".into(), leaves as f64);
    }
    if let (Some(receiver), Some(s)) = (&receiver, soak) {
        // Every connection is closed now: wait out the webhook debounce and delivery.
        std::thread::sleep(s.webhook_settle);
        let client_events = (args.via == Via::ClientEvent).then(|| tally.published.iter().sum());
        let (figures, errors) = receiver.check(client_events);
        summary.figures.extend(figures);
        summary.errors.extend(errors);
    }
    report::write(&common.out, &summary, &tally.hist)
}

/// Refuses arguments that cannot make a run, and more connections than this process may
/// open.
fn check(args: &FanoutArgs) -> anyhow::Result<()> {
    if args.subscribers == 0 || args.channels == 0 || args.threads_ok().is_err() {
        bail!("--subscribers, --channels and --threads must be at least 1");
    }
    if args.channels > args.subscribers {
        bail!(
            "--channels ({}) exceeds --subscribers ({}): some channels would have nobody",
            args.channels,
            args.subscribers
        );
    }
    if args.batch == 0 || args.publishers == 0 {
        bail!("--batch and --publishers must be at least 1");
    }
    if args.publishers > args.channels {
        bail!(
            "--publishers ({}) exceeds --channels ({}): each publisher owns whole channels, so \
             that each channel's events keep their order, and a publisher without one would \
             stay idle while the rate is shared among all; use at most {} publishers, and \
             --pipeline for more requests in flight",
            args.publishers,
            args.channels,
            args.channels
        );
    }
    if args.via == Via::ClientEvent && args.batch > 1 {
        bail!("--batch applies to --via http only");
    }
    if args.via == Via::ClientEvent && args.rate <= 0.0 {
        bail!("--via client-event needs a fixed --rate (servers rate-limit client events)");
    }
    let fd_limit = pool::raise_fd_limit();
    if (args.subscribers + args.publishers + 64) as u64 > fd_limit {
        bail!(
            "{} connections exceed this process's open-files limit ({fd_limit}): run several harness processes (see docs/loadtest.md)",
            args.subscribers + args.publishers
        );
    }
    Ok(())
}

/// This run's channel names, unique to it (private channels for client events).
fn channel_names(args: &FanoutArgs, run_id: &str) -> Vec<String> {
    let prefix = if args.via == Via::ClientEvent {
        "private-"
    } else {
        ""
    };
    (0..args.channels)
        .map(|c| format!("{prefix}lt-{run_id}-{c}"))
        .collect()
}

impl FanoutArgs {
    fn threads_ok(&self) -> Result<(), ()> {
        if self.common.threads == 0 {
            Err(())
        } else {
            Ok(())
        }
    }
}
