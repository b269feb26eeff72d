//! `fanout` and `soak`: subscribers over channels, events published at a fixed rate through
//! the signed HTTP API (or as client events); every delivery's latency, and every
//! subscriber's losses, duplicates and reorderings.
//!
//! Each channel is published to by exactly one publisher, which waits for each reply, so a
//! subscriber must see that channel's sequence numbers in order: anything else is the
//! server's doing. Event data is `"{seq} {intended_ns} {padding}"`, where `intended_ns` is
//! when the constant-rate schedule meant to publish it (see `stats::latency_us`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;

use crate::cli::{Distribution, FanoutArgs, Target, Via};
use crate::http::ApiClient;
use crate::machine;
use crate::pool;
use crate::progress::{Coordinator, IntervalMeter, Tick};
use crate::pusher::{self, Incoming};
use crate::report::{self, Harness, Server, Summary, Verdict};
use crate::stats::{self, latency_us, now_ns, record, Percentiles, SeqTracker};
use crate::wsclient::{self, WsConn};

/// Soak options: churn and memory sampling.
#[derive(Debug, Clone, Copy)]
pub struct Soak {
    pub churn_per_sec: f64,
    pub sample_every: Duration,
}

/// Most error examples kept per kind.
const MAX_EXAMPLES: usize = 5;

/// State shared by the coordinator and every harness thread.
struct Plan {
    target: Target,
    channels: Vec<String>,
    /// Subscriber → channel.
    sub_channel: Vec<usize>,
    threads: usize,
    source_ips: Option<Vec<IpAddr>>,
    payload: usize,
    rate: f64,
    batch: usize,
    publishers: usize,
    pipeline: usize,
    via: Via,
    connect_interval_ns: u64,
    setup_start_ns: u64,
    /// Publishing starts here (0 until the coordinator sets it).
    t0_ns: AtomicU64,
    warmup_ns: u64,
    duration_ns: u64,
    /// Subscribers subscribed (publishers subscribed too, for client events).
    ready: AtomicUsize,
    stop: AtomicBool,
    /// Distinct deliveries so far (to know when the drain is complete).
    unique_total: AtomicU64,
    /// Publishers that have finished (their last answer counted in `published`).
    publishers_done: AtomicUsize,
    /// Per channel: events published and acknowledged (sequence numbers 0..n).
    published: Vec<AtomicU64>,
    publish_errors: AtomicU64,
    errors: Mutex<BTreeMap<String, (u64, Vec<String>)>>,
    churn_per_thread: f64,
    ticks: Mutex<mpsc::Sender<Tick>>,
}

impl Plan {
    fn t0(&self) -> u64 {
        self.t0_ns.load(Relaxed)
    }
    fn measure_start(&self) -> u64 {
        self.t0() + self.warmup_ns
    }
    fn publish_end(&self) -> u64 {
        self.t0() + self.warmup_ns + self.duration_ns
    }
    fn error(&self, kind: &str, example: String) {
        let mut errors = self.errors.lock().expect("not poisoned");
        let e = errors.entry(kind.to_string()).or_default();
        e.0 += 1;
        if e.1.len() < MAX_EXAMPLES {
            e.1.push(example);
        }
    }
}

struct SubState {
    channel: usize,
    global: usize,
    tracker: SeqTracker,
    churned: bool,
    task: Option<JoinHandle<()>>,
}

struct ThreadState {
    hist: Histogram<u64>,
    interval: Histogram<u64>,
    received_interval: u64,
    received_in_window: u64,
    connections: u64,
    subs: Vec<SubState>,
}

struct ThreadResult {
    hist: Histogram<u64>,
    received_in_window: u64,
    subs: Vec<(usize, usize, SeqTracker, bool)>,
}

/// Spreads `n` subscribers over `c` channels.
fn assign(n: usize, c: usize, dist: Distribution) -> Vec<usize> {
    match dist {
        Distribution::Uniform => (0..n).map(|i| i % c).collect(),
        Distribution::Zipf => {
            let weights: Vec<f64> = (0..c).map(|k| 1.0 / (k as f64 + 1.0)).collect();
            let total: f64 = weights.iter().sum();
            // Largest remainder, at least one subscriber per channel while there are enough.
            let mut counts: Vec<usize> = weights
                .iter()
                .map(|w| (w / total * n as f64).floor() as usize)
                .collect();
            let mut left = n - counts.iter().sum::<usize>();
            let mut k = 0;
            while left > 0 {
                counts[k % c] += 1;
                left -= 1;
                k += 1;
            }
            counts
                .iter()
                .enumerate()
                .flat_map(|(ch, &m)| std::iter::repeat_n(ch, m))
                .collect()
        }
    }
}

pub fn run(args: FanoutArgs, soak: Option<Soak>) -> anyhow::Result<Verdict> {
    let common = &args.common;
    let target = common.target()?;
    let source_ips = common.source_ips_for(&target, args.subscribers + args.publishers);
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
    std::fs::create_dir_all(&common.out)?;
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xffffff);
    let prefix = if args.via == Via::ClientEvent {
        "private-"
    } else {
        ""
    };
    let channels: Vec<String> = (0..args.channels)
        .map(|c| format!("{prefix}lt-{run_id}-{c}"))
        .collect();
    let (tick_tx, tick_rx) = mpsc::channel();
    let threads = common.threads;
    let plan = Arc::new(Plan {
        target,
        sub_channel: assign(args.subscribers, args.channels, args.distribution),
        channels,
        threads,
        source_ips,
        payload: args.payload.max(24),
        rate: args.rate,
        batch: args.batch,
        publishers: args.publishers,
        pipeline: args.pipeline.max(1),
        via: args.via,
        connect_interval_ns: (1e9 / args.connect_rate.max(1.0)) as u64,
        setup_start_ns: now_ns(),
        t0_ns: AtomicU64::new(0),
        warmup_ns: common.warmup.as_nanos() as u64,
        duration_ns: common.duration.as_nanos() as u64,
        ready: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        unique_total: AtomicU64::new(0),
        publishers_done: AtomicUsize::new(0),
        published: (0..args.channels).map(|_| AtomicU64::new(0)).collect(),
        publish_errors: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        churn_per_thread: soak.map_or(0.0, |s| s.churn_per_sec / threads as f64),
        ticks: Mutex::new(tick_tx),
    });

    let handles = {
        let plan = plan.clone();
        pool::spawn(
            threads,
            common.cpus.as_ref().map(|c| c.0.as_slice()),
            move |i| thread_main(plan.clone(), i),
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
    let needed = args.subscribers
        + if args.via == Via::ClientEvent {
            args.publishers
        } else {
            0
        };
    let setup_deadline =
        Instant::now() + Duration::from_secs_f64(needed as f64 / args.connect_rate.max(1.0) + 30.0);
    loop {
        let ready = plan.ready.load(Relaxed);
        if ready >= needed {
            break;
        }
        if !plan.errors.lock().expect("not poisoned").is_empty() || Instant::now() > setup_deadline
        {
            plan.stop.store(true, Relaxed);
            let _ = pool::join(handles);
            let errors = plan.errors.lock().expect("not poisoned").clone();
            bail!("set-up failed ({ready} of {needed} connections subscribed): {errors:?}");
        }
        coord.say(&format!("connecting {ready}/{needed}"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let setup_secs = (now_ns() - plan.setup_start_ns) as f64 / 1e9;

    // Run: publish from t0; measure from t0 + warm-up for --duration.
    plan.t0_ns.store(now_ns() + 100_000_000, Relaxed);
    let pid = common.server_pid;
    let (mut srv_start, mut srv_end) = (None, None);
    let (mut cpu_start, mut cpu_end) = (0u64, 0u64);
    let mut rss_samples = Vec::new();
    let mut next_sample = plan.t0();
    let sample_every = soak.map(|s| s.sample_every.as_nanos() as u64);
    let drain_until = plan.publish_end() + args.drain.as_nanos() as u64;
    loop {
        match tick_rx.recv_timeout(Duration::from_millis(20)) {
            Ok(t) => coord.on_tick(t)?,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let now = now_ns();
        if srv_start.is_none() && now >= plan.measure_start() {
            srv_start = Some(pid.and_then(machine::sample));
            cpu_start = pool::process_cpu_ns();
        }
        if srv_end.is_none() && now >= plan.publish_end() {
            srv_end = Some(pid.and_then(machine::sample));
            cpu_end = pool::process_cpu_ns();
        }
        if let (Some(every), Some(pid)) = (sample_every, pid) {
            if now >= next_sample {
                if let Some(s) = machine::sample(pid) {
                    rss_samples.push([
                        (now.saturating_sub(plan.t0())) as f64 / 1e9,
                        s.rss_kib as f64,
                    ]);
                }
                next_sample += every;
            }
        }
        if now >= plan.publish_end() {
            // Only once every publisher has counted its last answer is `expected` final:
            // before that, deliveries of the last request may outrun its acknowledgement.
            let final_counts = plan.publishers_done.load(Relaxed) >= plan.publishers;
            let expected = expected_deliveries(&plan);
            let done =
                soak.is_none() && final_counts && plan.unique_total.load(Relaxed) >= expected;
            if done || now >= drain_until || plan.stop.load(Relaxed) {
                break;
            }
            coord.say(&format!(
                "draining: {}/{} delivered",
                plan.unique_total.load(Relaxed),
                expected
            ));
        }
    }
    plan.stop.store(true, Relaxed);
    let results = pool::join(handles)?;
    while let Ok(t) = tick_rx.try_recv() {
        coord.on_tick(t)?;
    }
    let (series, thread_util) = coord.finish();

    // Aggregate.
    let mut hist = stats::histogram();
    let mut received_in_window = 0;
    let mut subs = Vec::new();
    for r in results {
        hist.add(&r.hist)?;
        received_in_window += r.received_in_window;
        subs.extend(r.subs);
    }
    subs.sort_by_key(|s| s.0);
    let published: Vec<u64> = plan.published.iter().map(|p| p.load(Relaxed)).collect();
    let mut figures = BTreeMap::new();
    let (mut lost, mut dup, mut ooo, mut with_loss, mut unique, mut expected, mut stayed) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut csv = String::from(
        "subscriber,channel,churned,published,received,lost,duplicates,out_of_order\n",
    );
    for (global, ch, tracker, churned) in &subs {
        let p = published[*ch];
        let l = tracker.lost(p);
        csv.push_str(&format!(
            "{global},{},{churned},{p},{},{l},{},{}\n",
            plan.channels[*ch], tracker.unique, tracker.duplicates, tracker.out_of_order
        ));
        dup += tracker.duplicates;
        ooo += tracker.out_of_order;
        unique += tracker.received_below(p);
        expected += p;
        if !churned {
            stayed += 1;
            lost += l;
            with_loss += u64::from(l > 0);
        }
    }
    std::fs::write(common.out.join("subscribers.csv"), csv)?;
    let duration = common.duration.as_secs_f64();
    let events: u64 = published.iter().sum();
    figures.insert("subscribers".into(), args.subscribers as f64);
    figures.insert("channels".into(), args.channels as f64);
    figures.insert("events_published".into(), events as f64);
    figures.insert(
        "publish_errors".into(),
        plan.publish_errors.load(Relaxed) as f64,
    );
    figures.insert("deliveries_expected".into(), expected as f64);
    figures.insert("deliveries_received".into(), unique as f64);
    figures.insert(
        "delivered_per_sec".into(),
        (received_in_window as f64 / duration).round(),
    );
    figures.insert("lost".into(), lost as f64);
    figures.insert("duplicates".into(), dup as f64);
    figures.insert("out_of_order".into(), ooo as f64);
    figures.insert("subscribers_with_loss".into(), with_loss as f64);
    figures.insert("setup_seconds".into(), (setup_secs * 100.0).round() / 100.0);
    if soak.is_some() {
        figures.insert("subscribers_stayed".into(), stayed as f64);
        figures.insert(
            "subscribers_churned".into(),
            (subs.len() as u64 - stayed) as f64,
        );
    }
    let latency = Percentiles::of(&hist);
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
    if dup > 0 {
        errors.push(format!("{dup} duplicate deliveries"));
    }
    if ooo > 0 {
        errors.push(format!("{ooo} deliveries out of order"));
    }
    for (kind, (n, examples)) in plan.errors.lock().expect("not poisoned").iter() {
        errors.push(format!("{n} × {kind}: {}", examples.join(" | ")));
    }
    let mut warnings = Vec::new();
    let saturated = thread_util.iter().any(|u| *u >= 0.9);
    if saturated {
        warnings.push(format!("harness threads at {thread_util:?} CPU: the harness may be the bottleneck; add --threads"));
    }
    let window_ns = (cpu_end.saturating_sub(cpu_start)).max(1);
    let measured_wall = common.duration.as_nanos() as f64;
    let server = match (pid, srv_start.flatten(), srv_end.flatten()) {
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
            Some(Server {
                pid,
                rss_start_kib: a.rss_kib,
                rss_end_kib: b.rss_kib,
                cpu_cores: (cores * 1000.0).round() / 1000.0,
                cpu_us_per_message: (received_in_window > 0).then(|| {
                    ((b.cpu_ns - a.cpu_ns) as f64 / 1000.0 / received_in_window as f64 * 1000.0)
                        .round()
                        / 1000.0
                }),
                rss_samples,
            })
        }
        (Some(pid), _, _) => {
            warnings.push(format!("could not read /proc/{pid}: no server figures"));
            None
        }
        _ => None,
    };
    let summary = Summary {
        label: common.label.clone().unwrap_or_else(|| {
            format!(
                "{} {}",
                if soak.is_some() { "soak" } else { "fanout" },
                common.url
            )
        }),
        scenario: if soak.is_some() { "soak" } else { "fanout" }.into(),
        harness_version: env!("CARGO_PKG_VERSION").into(),
        command_line: report::command_line(),
        started_unix: report::unix_now(),
        target: serde_json::json!({"url": common.url, "api_url": common.api_url, "app_id": common.app_id}),
        machine: machine::describe(),
        config: serde_json::json!({
            "subscribers": args.subscribers, "channels": args.channels, "distribution": format!("{:?}", args.distribution),
            "rate": args.rate, "payload": args.payload, "via": format!("{:?}", args.via), "batch": args.batch,
            "publishers": args.publishers, "pipeline": args.pipeline, "duration_s": duration, "warmup_s": common.warmup.as_secs_f64(),
            "threads": threads, "cpus": common.cpus.as_ref().map(|c| c.0.clone()), "churn_per_sec": soak.map(|s| s.churn_per_sec),
        }),
        figures,
        distribution: report::distribution(&hist),
        latency,
        intervals: series,
        harness: Harness {
            threads,
            thread_cpu_utilization: thread_util,
            process_cpu_cores: ((window_ns as f64 / measured_wall) * 1000.0).round() / 1000.0,
            saturated,
        },
        server,
        errors,
        warnings,
    };
    report::write(&common.out, &summary, &hist)
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

fn expected_deliveries(plan: &Plan) -> u64 {
    plan.sub_channel
        .iter()
        .map(|&c| plan.published[c].load(Relaxed))
        .sum()
}

/// Least-squares slope of RSS over time, KiB per minute.
fn rss_growth_kib_per_min(samples: &[[f64; 2]]) -> Option<f64> {
    if samples.len() < 3 {
        return None;
    }
    let n = samples.len() as f64;
    let (mx, my) = (
        samples.iter().map(|s| s[0]).sum::<f64>() / n,
        samples.iter().map(|s| s[1]).sum::<f64>() / n,
    );
    let (num, den) = samples.iter().fold((0.0, 0.0), |(a, b), s| {
        (a + (s[0] - mx) * (s[1] - my), b + (s[0] - mx).powi(2))
    });
    (den > 0.0).then(|| num / den * 60.0)
}

async fn thread_main(plan: Arc<Plan>, me: usize) -> anyhow::Result<ThreadResult> {
    let mine: Vec<usize> = (me..plan.sub_channel.len()).step_by(plan.threads).collect();
    let state = Rc::new(RefCell::new(ThreadState {
        hist: stats::histogram(),
        interval: stats::histogram(),
        received_interval: 0,
        received_in_window: 0,
        connections: 0,
        subs: mine
            .iter()
            .map(|&g| SubState {
                channel: plan.sub_channel[g],
                global: g,
                tracker: SeqTracker::default(),
                churned: false,
                task: None,
            })
            .collect(),
    }));
    for slot in 0..mine.len() {
        let task = tokio::task::spawn_local(subscriber(plan.clone(), state.clone(), slot, true));
        state.borrow_mut().subs[slot].task = Some(task);
    }
    for k in (me..plan.publishers).step_by(plan.threads) {
        match plan.via {
            Via::Http => tokio::task::spawn_local(http_publisher(plan.clone(), k)),
            Via::ClientEvent => tokio::task::spawn_local(client_event_publisher(plan.clone(), k)),
        };
    }
    tokio::task::spawn_local(ticker(plan.clone(), state.clone(), me));
    if plan.churn_per_thread > 0.0 {
        tokio::task::spawn_local(churn(plan.clone(), state.clone()));
    }
    while !plan.stop.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut st = state.borrow_mut();
    for s in &mut st.subs {
        if let Some(t) = s.task.take() {
            t.abort();
        }
    }
    let hist = std::mem::replace(&mut st.hist, stats::histogram());
    Ok(ThreadResult {
        hist,
        received_in_window: st.received_in_window,
        subs: st
            .subs
            .iter()
            .map(|s| (s.global, s.channel, s.tracker.clone(), s.churned))
            .collect(),
    })
}

/// Sends this thread's interval data to the coordinator once a second from t0.
async fn ticker(plan: Arc<Plan>, state: Rc<RefCell<ThreadState>>, me: usize) {
    while plan.t0() == 0 {
        if plan.stop.load(Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut meter = IntervalMeter::new(me, plan.t0());
    for index in 0u64.. {
        let at = plan.t0() + (index + 1) * 1_000_000_000;
        tokio::time::sleep(Duration::from_nanos(at.saturating_sub(now_ns()))).await;
        if plan.stop.load(Relaxed) {
            return;
        }
        let tick = {
            let mut st = state.borrow_mut();
            let hist = std::mem::replace(&mut st.interval, stats::histogram());
            meter.tick(
                index,
                hist,
                std::mem::take(&mut st.received_interval),
                st.connections,
            )
        };
        if plan.ticks.lock().expect("not poisoned").send(tick).is_err() {
            return;
        }
    }
}

/// Disconnects and reconnects random subscribers of this thread (soak).
async fn churn(plan: Arc<Plan>, state: Rc<RefCell<ThreadState>>) {
    let every = Duration::from_secs_f64(1.0 / plan.churn_per_thread);
    while plan.t0() == 0 || now_ns() < plan.t0() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while now_ns() < plan.publish_end() && !plan.stop.load(Relaxed) {
        tokio::time::sleep(every).await;
        let slot = {
            let mut st = state.borrow_mut();
            if st.subs.is_empty() {
                return;
            }
            let slot = rand::random_range(0..st.subs.len());
            let s = &mut st.subs[slot];
            if let Some(t) = s.task.take() {
                t.abort();
            }
            s.churned = true;
            st.connections = st.connections.saturating_sub(1);
            slot
        };
        let task = tokio::task::spawn_local(subscriber(plan.clone(), state.clone(), slot, false));
        state.borrow_mut().subs[slot].task = Some(task);
    }
}

/// Reads until `want` matches a message; fails on errors or after 10 s.
async fn wait_for<T>(
    conn: &mut WsConn,
    mut want: impl FnMut(Incoming<'_>) -> Option<anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut found = None;
        let open = tokio::time::timeout_at(
            deadline,
            conn.recv_frames(|op, p| {
                if op == 1 && found.is_none() {
                    found = want(pusher::classify(p));
                }
            }),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 10 s"))??;
        if let Some(r) = found {
            return r;
        }
        if !open {
            bail!("connection closed");
        }
    }
}

/// Connects, waits for the socket id, subscribes to `channels`.
async fn connect_subscribed(
    plan: &Plan,
    global: usize,
    channels: &[&str],
) -> anyhow::Result<(WsConn, String)> {
    let source = plan.source_ips.as_ref().map(|ips| ips[global % ips.len()]);
    let stream = wsclient::tcp_connect(plan.target.ws_addr, source).await?;
    let mut conn =
        wsclient::handshake(stream, &plan.target, &pusher::ws_path(&plan.target)).await?;
    let socket_id = wait_for(&mut conn, |m| match m {
        Incoming::Established(id) => Some(Ok(id)),
        Incoming::Error(e) => Some(Err(anyhow::anyhow!("{}", String::from_utf8_lossy(e)))),
        _ => None,
    })
    .await?;
    for ch in channels {
        conn.send(&pusher::subscribe(&plan.target, &socket_id, ch))
            .await?;
        wait_for(&mut conn, |m| match m {
            Incoming::Subscribed => Some(Ok(())),
            Incoming::Error(e) => Some(Err(anyhow::anyhow!(
                "subscribing to {ch}: {}",
                String::from_utf8_lossy(e)
            ))),
            _ => None,
        })
        .await?;
    }
    Ok((conn, socket_id))
}

async fn subscriber(plan: Arc<Plan>, state: Rc<RefCell<ThreadState>>, slot: usize, first: bool) {
    let (global, channel) = {
        let st = state.borrow();
        (st.subs[slot].global, st.subs[slot].channel)
    };
    if first {
        let at = plan.setup_start_ns + global as u64 * plan.connect_interval_ns;
        tokio::time::sleep(Duration::from_nanos(at.saturating_sub(now_ns()))).await;
    }
    let mut conn = match connect_subscribed(&plan, global, &[&plan.channels[channel]]).await {
        Ok((c, _)) => c,
        Err(e) => {
            plan.error(
                "subscriber could not connect and subscribe",
                format!("subscriber {global}: {e:#}"),
            );
            return;
        }
    };
    state.borrow_mut().connections += 1;
    if first {
        plan.ready.fetch_add(1, Relaxed);
    }
    loop {
        let mut reply: Option<Vec<u8>> = None;
        let mut closed = false;
        let mut now = 0;
        let mut new_unique = 0u64;
        let res = conn
            .recv_frames(|op, payload| match op {
                0x1 => match pusher::classify(payload) {
                    Incoming::Event(data) => {
                        let Some((seq, intended)) = pusher::parse_event_data(data) else {
                            return;
                        };
                        if now == 0 {
                            now = now_ns();
                        }
                        let mut st = state.borrow_mut();
                        let st = &mut *st;
                        let sub = &mut st.subs[slot];
                        new_unique += u64::from(sub.tracker.record(seq));
                        st.received_interval += 1;
                        let lat = latency_us(intended, now);
                        record(&mut st.interval, lat);
                        let t0 = plan.t0();
                        if intended >= t0 + plan.warmup_ns
                            && intended < t0 + plan.warmup_ns + plan.duration_ns
                        {
                            record(&mut st.hist, lat);
                            st.received_in_window += 1;
                        }
                    }
                    Incoming::Ping => reply = Some(pusher::pong()),
                    Incoming::Error(e) => plan.error(
                        "server sent an error",
                        String::from_utf8_lossy(e).into_owned(),
                    ),
                    _ => {}
                },
                0x8 => closed = true,
                0x9 => reply = Some(wsclient::frame(0xA, payload)),
                _ => {}
            })
            .await;
        if new_unique > 0 {
            plan.unique_total.fetch_add(new_unique, Relaxed);
        }
        if let Some(r) = reply {
            let _ = conn.send(&r).await;
        }
        let ended = match res {
            Ok(open) => !open || closed,
            Err(_) => true,
        };
        if ended {
            state.borrow_mut().connections -= 1;
            if !plan.stop.load(Relaxed) {
                plan.error(
                    "subscriber disconnected by the server",
                    format!("subscriber {global}: {res:?}"),
                );
            }
            return;
        }
    }
}

/// The channels publisher `k` owns.
fn owned(plan: &Plan, k: usize) -> Vec<usize> {
    (k..plan.channels.len()).step_by(plan.publishers).collect()
}

/// Waits until `at_ns` on the harness clock.
async fn sleep_until_ns(at_ns: u64) {
    let now = now_ns();
    if at_ns > now {
        tokio::time::sleep(Duration::from_nanos(at_ns - now)).await;
    }
}

/// The schedule of one publisher: when its i-th send should happen (None: the run is over).
fn slot(plan: &Plan, i: u64, events_per_send: usize) -> Option<u64> {
    let end = plan.publish_end();
    if plan.rate <= 0.0 {
        let now = now_ns();
        return (now < end).then_some(now);
    }
    let per_publisher = plan.rate / plan.publishers as f64;
    let at = plan.t0() + (i as f64 * events_per_send as f64 / per_publisher * 1e9) as u64;
    (at < end).then_some(at)
}

/// Counts a publisher as finished when it returns, whichever way.
struct Finished<'a>(&'a AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Relaxed);
    }
}

async fn http_publisher(plan: Arc<Plan>, k: usize) {
    let _finished = Finished(&plan.publishers_done);
    let own = owned(&plan, k);
    if own.is_empty() {
        return;
    }
    while plan.t0() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut client = ApiClient::new(&plan.target);
    let mut next_seq = vec![0u64; plan.channels.len()];
    let mut rr = 0usize;
    // Requests sent and not answered yet: each one's (channel, sequence number before it).
    let mut inflight: std::collections::VecDeque<Vec<(usize, u64)>> =
        std::collections::VecDeque::new();
    let mut i = 0u64;
    let mut done = false;
    loop {
        while !done && inflight.len() < plan.pipeline && !plan.stop.load(Relaxed) {
            let Some(intended) = slot(&plan, i, plan.batch) else {
                done = true;
                break;
            };
            if intended > now_ns() && !inflight.is_empty() {
                break; // collect answers while waiting for the schedule
            }
            sleep_until_ns(intended).await;
            i += 1;
            let before: Vec<(usize, u64)> = (0..plan.batch.min(own.len()))
                .map(|e| own[(rr + e) % own.len()])
                .map(|c| (c, next_seq[c]))
                .collect();
            let mut events = Vec::with_capacity(plan.batch);
            for _ in 0..plan.batch {
                let c = own[rr % own.len()];
                rr += 1;
                let seq = next_seq[c];
                next_seq[c] += 1;
                events.push(serde_json::json!({"name": pusher::EVENT, "channel": plan.channels[c], "data": pusher::event_data(seq, intended, plan.payload)}));
            }
            let (path, body) = if plan.batch == 1 {
                ("/events", serde_json::to_vec(&events[0]).expect("json"))
            } else {
                (
                    "/batch_events",
                    serde_json::to_vec(&serde_json::json!({ "batch": events })).expect("json"),
                )
            };
            if plan.pipeline == 1 {
                // One at a time: a failed request is simply sent again with the same numbers.
                match client.post(path, &body).await {
                    Ok(r) if r.status == 200 => {
                        for &(c, _) in &before {
                            plan.published[c].store(next_seq[c], Relaxed);
                        }
                    }
                    other => {
                        for &(c, seq) in &before {
                            next_seq[c] = seq;
                        }
                        rr -= plan.batch;
                        if publish_failed(&plan, other) {
                            return;
                        }
                    }
                }
            } else {
                if let Err(e) = client.send_post(path, &body).await {
                    publish_failed(&plan, Err(e));
                    plan.error(
                        "pipelined publishing stopped",
                        "a request could not be sent".into(),
                    );
                    return;
                }
                inflight.push_back(before.iter().map(|&(c, _)| (c, 0)).collect());
                // Record what this request publishes once it is answered.
                let last = inflight.back_mut().expect("just pushed");
                for entry in last.iter_mut() {
                    entry.1 = next_seq[entry.0];
                }
            }
        }
        if inflight.is_empty() {
            if done || plan.stop.load(Relaxed) {
                return;
            }
            continue;
        }
        let answer = client.recv().await;
        let published = inflight.pop_front().expect("not empty");
        match answer {
            Ok(r) if r.status == 200 => {
                for (c, upto) in published {
                    plan.published[c].store(upto, Relaxed);
                }
            }
            other => {
                publish_failed(&plan, other);
                plan.error(
                    "pipelined publishing stopped",
                    "later requests already used the next sequence numbers".into(),
                );
                return;
            }
        }
    }
}

/// Counts and records a failed publish; returns whether publishing should stop (nothing has
/// ever succeeded: wrong credentials or URL).
fn publish_failed(plan: &Plan, res: std::io::Result<crate::http::Response>) -> bool {
    plan.publish_errors.fetch_add(1, Relaxed);
    let why = match res {
        Ok(r) => format!("HTTP {}: {}", r.status, String::from_utf8_lossy(&r.body)),
        Err(e) => e.to_string(),
    };
    plan.error("publish failed", why);
    if plan.publish_errors.load(Relaxed) >= 20
        && plan.published.iter().all(|p| p.load(Relaxed) == 0)
    {
        plan.stop.store(true, Relaxed);
        return true;
    }
    false
}

async fn client_event_publisher(plan: Arc<Plan>, k: usize) {
    let _finished = Finished(&plan.publishers_done);
    let own = owned(&plan, k);
    let names: Vec<&str> = own.iter().map(|&c| plan.channels[c].as_str()).collect();
    let global = plan.sub_channel.len() + k;
    let mut conn = match connect_subscribed(&plan, global, &names).await {
        Ok((c, _)) => c,
        Err(e) => {
            plan.error(
                "publisher could not connect and subscribe",
                format!("publisher {k}: {e:#}"),
            );
            return;
        }
    };
    plan.ready.fetch_add(1, Relaxed);
    if own.is_empty() {
        return;
    }
    while plan.t0() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut next_seq = vec![0u64; plan.channels.len()];
    for i in 0u64.. {
        if plan.stop.load(Relaxed) {
            return;
        }
        let Some(intended) = slot(&plan, i, 1) else {
            return;
        };
        sleep_until_ns(intended).await;
        let c = own[i as usize % own.len()];
        let frame = pusher::client_event(
            &plan.channels[c],
            &pusher::event_data(next_seq[c], intended, plan.payload),
        );
        if let Err(e) = conn.send(&frame).await {
            plan.publish_errors.fetch_add(1, Relaxed);
            plan.error("publish failed", format!("client event connection: {e}"));
            return;
        }
        next_seq[c] += 1;
        plan.published[c].store(next_seq[c], Relaxed);
        // Errors (e.g. rate limits) arrive as messages: read what is there without waiting.
        let mut err = None;
        let _ = tokio::time::timeout(
            Duration::ZERO,
            conn.recv_frames(|op, p| {
                if op == 1 {
                    if let Incoming::Error(e) = pusher::classify(p) {
                        err = Some(String::from_utf8_lossy(e).into_owned());
                    }
                }
            }),
        )
        .await;
        if let Some(e) = err {
            plan.error("server refused a client event", e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_cover_every_channel() {
        let u = assign(10, 3, Distribution::Uniform);
        assert_eq!(u, vec![0, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
        let z = assign(100, 10, Distribution::Zipf);
        assert_eq!(z.len(), 100);
        let first = z.iter().filter(|&&c| c == 0).count();
        let last = z.iter().filter(|&&c| c == 9).count();
        assert!(first > 3 * last, "{first} vs {last}");
        assert!((0..10).all(|c| z.contains(&c)));
    }

    #[test]
    fn rss_slope() {
        let flat: Vec<[f64; 2]> = (0..10).map(|i| [i as f64 * 10.0, 5000.0]).collect();
        assert_eq!(rss_growth_kib_per_min(&flat), Some(0.0));
        let growing: Vec<[f64; 2]> = (0..10)
            .map(|i| [i as f64 * 60.0, 5000.0 + i as f64 * 100.0])
            .collect();
        assert!((rss_growth_kib_per_min(&growing).unwrap() - 100.0).abs() < 1e-9);
    }
}
