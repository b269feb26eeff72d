//! `ping`: `pusher:ping` → `pusher:pong` round trips at a fixed rate on each connection,
//! measured from the intended send time (a stalled server delays the sends too, and that
//! counts).

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;

use crate::cli::{source_for, PingArgs, Target};
use crate::machine;
use crate::pool;
use crate::progress::{Coordinator, IntervalMeter, Tick};
use crate::pusher::{self, Incoming};
use crate::report::{self, Harness, Server, Summary, Verdict};
use crate::stats::{self, latency_us, now_ns, record, Percentiles};
use crate::wsclient;

struct Plan {
    target: Target,
    n: usize,
    threads: usize,
    rate: f64,
    source_ips: Option<Vec<std::net::IpAddr>>,
    connect_interval_ns: u64,
    setup_start_ns: u64,
    t0_ns: AtomicU64,
    warmup_ns: u64,
    duration_ns: u64,
    ready: AtomicUsize,
    sent: AtomicU64,
    received: AtomicU64,
    stop: AtomicBool,
    errors: Mutex<Vec<String>>,
    ticks: Mutex<mpsc::Sender<Tick>>,
}

struct State {
    hist: Histogram<u64>,
    interval: Histogram<u64>,
    pongs_interval: u64,
    in_window: u64,
    open: u64,
}

pub fn run(args: PingArgs) -> anyhow::Result<Verdict> {
    let common = &args.common;
    let target = common.target()?;
    let source_ips = common.source_ips_for(&target, &[args.connections]);
    if args.connections == 0 || args.rate <= 0.0 {
        bail!("--connections and --rate must be positive");
    }
    if args.connections as u64 + 64 > pool::raise_fd_limit() {
        bail!(
            "{} connections exceed this process's open-files limit",
            args.connections
        );
    }
    std::fs::create_dir_all(&common.out)?;
    let threads = common.threads.max(1);
    let (tx, rx) = mpsc::channel();
    let plan = Arc::new(Plan {
        target,
        n: args.connections,
        threads,
        rate: args.rate,
        source_ips,
        connect_interval_ns: (1e9 / args.connect_rate.max(1.0)) as u64,
        setup_start_ns: now_ns(),
        t0_ns: AtomicU64::new(0),
        warmup_ns: common.warmup.as_nanos() as u64,
        duration_ns: common.duration.as_nanos() as u64,
        ready: AtomicUsize::new(0),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        errors: Mutex::new(Vec::new()),
        ticks: Mutex::new(tx),
    });
    let handles = {
        let plan = plan.clone();
        pool::spawn(
            threads,
            common.cpus.as_ref().map(|c| c.0.as_slice()),
            move |i| thread_main(plan.clone(), i),
        )
    };
    let warm = common.warmup.as_secs_f64().ceil() as u64;
    let mut coord = Coordinator::new(
        &common.out,
        threads,
        warm,
        warm + common.duration.as_secs_f64().ceil() as u64,
        common.quiet,
        "pongs",
    )?;
    let deadline = Instant::now()
        + Duration::from_secs_f64(args.connections as f64 / args.connect_rate.max(1.0) + 30.0);
    while plan.ready.load(Relaxed) < plan.n {
        if !plan.errors.lock().expect("not poisoned").is_empty() || Instant::now() > deadline {
            plan.stop.store(true, Relaxed);
            let _ = pool::join(handles);
            bail!(
                "set-up failed: {:?}",
                plan.errors.lock().expect("not poisoned")
            );
        }
        coord.say(&format!(
            "connecting {}/{}",
            plan.ready.load(Relaxed),
            plan.n
        ));
        std::thread::sleep(Duration::from_millis(50));
    }
    plan.t0_ns.store(now_ns() + 100_000_000, Relaxed);
    let t0 = plan.t0_ns.load(Relaxed);
    let end = t0 + plan.warmup_ns + plan.duration_ns;
    let pids = &common.server_pid;
    let (mut srv_a, mut srv_b, mut cpu_a, mut cpu_b) = (None, None, 0, 0);
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(t) => coord.on_tick(t)?,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let now = now_ns();
        if srv_a.is_none() && now >= t0 + plan.warmup_ns {
            srv_a = Some(machine::sample_sum(pids));
            cpu_a = pool::process_cpu_ns();
        }
        if srv_b.is_none() && now >= end {
            srv_b = Some(machine::sample_sum(pids));
            cpu_b = pool::process_cpu_ns();
        }
        // Pongs still on their way get two seconds.
        if now >= end + 2_000_000_000
            || (now >= end && plan.received.load(Relaxed) >= plan.sent.load(Relaxed))
        {
            break;
        }
    }
    plan.stop.store(true, Relaxed);
    let results = pool::join(handles)?;
    while let Ok(t) = rx.try_recv() {
        coord.on_tick(t)?;
    }
    let (series, util) = coord.finish();
    let mut hist = stats::histogram();
    let mut in_window = 0;
    for (h, w) in &results {
        hist.add(h)?;
        in_window += w;
    }
    let (sent, received) = (plan.sent.load(Relaxed), plan.received.load(Relaxed));
    let latency = Percentiles::of(&hist);
    let duration = common.duration.as_secs_f64();
    let mut figures = BTreeMap::new();
    figures.insert("connections".into(), plan.n as f64);
    figures.insert("pings_sent".into(), sent as f64);
    figures.insert("pongs_received".into(), received as f64);
    figures.insert("pongs_lost".into(), sent.saturating_sub(received) as f64);
    figures.insert(
        "pongs_per_sec".into(),
        (in_window as f64 / duration).round(),
    );
    for (k, v) in [
        ("p50", latency.p50_us),
        ("p90", latency.p90_us),
        ("p99", latency.p99_us),
        ("p99_9", latency.p999_us),
        ("max", latency.max_us),
    ] {
        figures.insert(format!("rtt_{k}_ms"), v as f64 / 1000.0);
    }
    let mut errors: Vec<String> = plan.errors.lock().expect("not poisoned").clone();
    if received < sent {
        errors.push(format!("{} pings got no pong", sent - received));
    }
    let saturated = util.iter().any(|u| *u >= 0.9);
    let mut warnings = Vec::new();
    if saturated {
        warnings.push(format!(
            "harness threads at {util:?} CPU: round trips include harness queueing"
        ));
    }
    let server = match (pids.first().copied(), srv_a.flatten(), srv_b.flatten()) {
        (Some(pid), Some(a), Some(b)) => {
            let [cpu, user, system] = report::cpu_per_message(&a, &b, in_window);
            Some(Server {
                pid,
                pids: pids.clone(),
                rss_start_kib: a.rss_kib,
                rss_end_kib: b.rss_kib,
                cpu_cores: ((b.cpu_ns - a.cpu_ns) as f64 / (duration * 1e9) * 1000.0).round()
                    / 1000.0,
                cpu_us_per_message: cpu,
                user_us_per_message: user,
                system_us_per_message: system,
                rss_samples: vec![],
            })
        }
        _ => None,
    };
    let summary = Summary {
        label: common
            .label
            .clone()
            .unwrap_or_else(|| format!("ping {}", common.url_list())),
        scenario: "ping".into(),
        harness_version: env!("CARGO_PKG_VERSION").into(),
        command_line: report::command_line(),
        started_unix: report::unix_now(),
        target: report::target_json(&plan.target, false, &[("connections", plan.n)]),
        machine: machine::describe(),
        config: serde_json::json!({"connections": args.connections, "rate_per_connection": args.rate, "duration_s": duration, "warmup_s": common.warmup.as_secs_f64(), "threads": threads}),
        figures,
        distribution: report::distribution(&hist),
        latency,
        intervals: series,
        harness: Harness {
            threads,
            thread_cpu_utilization: util,
            process_cpu_cores: (((cpu_b - cpu_a) as f64 / (duration * 1e9)) * 1000.0).round()
                / 1000.0,
            saturated,
        },
        server,
        errors,
        warnings,
    };
    report::write(&common.out, &summary, &hist)
}

async fn thread_main(plan: Arc<Plan>, me: usize) -> anyhow::Result<(Histogram<u64>, u64)> {
    let state = Rc::new(RefCell::new(State {
        hist: stats::histogram(),
        interval: stats::histogram(),
        pongs_interval: 0,
        in_window: 0,
        open: 0,
    }));
    for i in (me..plan.n).step_by(plan.threads) {
        tokio::task::spawn_local(pinger(plan.clone(), state.clone(), i));
    }
    while plan.t0_ns.load(Relaxed) == 0 {
        if plan.stop.load(Relaxed) {
            return Ok((stats::histogram(), 0));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t0 = plan.t0_ns.load(Relaxed);
    let mut meter = IntervalMeter::new(me, t0);
    for index in 0u64.. {
        let at = t0 + (index + 1) * 1_000_000_000;
        while now_ns() < at {
            if plan.stop.load(Relaxed) {
                let st = state.borrow();
                return Ok((st.hist.clone(), st.in_window));
            }
            tokio::time::sleep(Duration::from_millis(20).min(Duration::from_nanos(at - now_ns())))
                .await;
        }
        let tick = {
            let mut st = state.borrow_mut();
            let hist = std::mem::replace(&mut st.interval, stats::histogram());
            meter.tick(index, hist, std::mem::take(&mut st.pongs_interval), st.open)
        };
        let _ = plan.ticks.lock().expect("not poisoned").send(tick);
    }
    unreachable!("the loop returns")
}

async fn pinger(plan: Arc<Plan>, state: Rc<RefCell<State>>, i: usize) {
    let at = plan.setup_start_ns + i as u64 * plan.connect_interval_ns;
    tokio::time::sleep(Duration::from_nanos(at.saturating_sub(now_ns()))).await;
    let ws = plan.target.ws_for(i);
    let source = plan
        .source_ips
        .as_ref()
        .map(|ips| source_for(ips, plan.target.ws.len(), i));
    let conn = async {
        let stream = wsclient::tcp_connect(ws.addr, source).await?;
        let mut conn = wsclient::handshake(stream, ws, &pusher::ws_path(&plan.target, ws)).await?;
        let mut ok = false;
        while !ok {
            if !conn
                .recv_frames(|op, p| {
                    ok |= op == 1 && matches!(pusher::classify(p), Incoming::Established(_))
                })
                .await?
            {
                anyhow::bail!("closed before connection_established");
            }
        }
        anyhow::Ok(conn)
    };
    let mut conn = match tokio::time::timeout(Duration::from_secs(30), conn).await {
        Ok(Ok(c)) => c,
        other => {
            let why = match other {
                Ok(Err(e)) => format!("{e:#}"),
                _ => "no connection_established within 30 s".into(),
            };
            let mut e = plan.errors.lock().expect("not poisoned");
            if e.len() < 5 {
                e.push(format!("connection {i}: {why}"));
            }
            return;
        }
    };
    state.borrow_mut().open += 1;
    plan.ready.fetch_add(1, Relaxed);
    while plan.t0_ns.load(Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t0 = plan.t0_ns.load(Relaxed);
    let window = (t0 + plan.warmup_ns, t0 + plan.warmup_ns + plan.duration_ns);
    let period = 1e9 / plan.rate;
    // Spread the connections' schedules over one period.
    let phase = (i as f64 / plan.n as f64 * period) as u64;
    let ping = pusher::ping();
    let mut outstanding: VecDeque<u64> = VecDeque::new();
    let mut k = 0u64;
    loop {
        let next = t0 + phase + (k as f64 * period) as u64;
        let sending = next < window.1;
        if !sending && outstanding.is_empty() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_nanos(next.saturating_sub(now_ns()))), if sending => {
                if conn.send(&ping).await.is_err() {
                    break;
                }
                outstanding.push_back(next);
                plan.sent.fetch_add(1, Relaxed);
                k += 1;
            }
            res = conn.recv_frames(|op, p| {
                if op == 1 && pusher::classify(p) == Incoming::Pong {
                    if let Some(intended) = outstanding.pop_front() {
                        let now = now_ns();
                        let lat = latency_us(intended, now);
                        let mut st = state.borrow_mut();
                        record(&mut st.interval, lat);
                        st.pongs_interval += 1;
                        if intended >= window.0 && intended < window.1 {
                            record(&mut st.hist, lat);
                            st.in_window += 1;
                        }
                        plan.received.fetch_add(1, Relaxed);
                    }
                }
            }) => {
                if !matches!(res, Ok(true)) {
                    break;
                }
            }
        }
        if plan.stop.load(Relaxed) {
            return;
        }
    }
    state.borrow_mut().open -= 1;
    if !plan.stop.load(Relaxed) {
        let mut e = plan.errors.lock().expect("not poisoned");
        if e.len() < 5 {
            e.push(format!("connection {i} closed by the server"));
        }
    }
}
