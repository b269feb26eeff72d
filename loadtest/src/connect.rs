//! `connect`: open N connections at a given rate, measure each handshake (TCP connect to
//! `pusher:connection_established`), hold them idle with pings answered, and report the
//! server's memory per connection.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;

use crate::cli::{source_for, ConnectArgs, Target};
use crate::machine::{self, Sockstat};
use crate::pool;
use crate::progress::{Coordinator, IntervalMeter, Tick};
use crate::pusher::{self, Incoming};
use crate::report::{self, Harness, Server, Summary, Verdict};
use crate::stats::{self, now_ns, record, Percentiles};
use crate::wsclient;

struct Plan {
    target: Target,
    n: usize,
    threads: usize,
    channels: usize,
    source_ips: Option<Vec<std::net::IpAddr>>,
    interval_ns: u64,
    start_ns: u64,
    opened: AtomicUsize,
    failed: AtomicUsize,
    dropped: AtomicUsize,
    pings_answered: AtomicU64,
    stop: AtomicBool,
    errors: Mutex<Vec<String>>,
    ticks: Mutex<mpsc::Sender<Tick>>,
}

struct State {
    interval: Histogram<u64>,
    all: Histogram<u64>,
    opened_interval: u64,
    open: u64,
}

pub fn run(args: ConnectArgs) -> anyhow::Result<Verdict> {
    let common = &args.common;
    let target = common.target()?;
    let source_ips = common.source_ips_for(&target, &[args.connections]);
    let limit = pool::raise_fd_limit();
    if args.connections as u64 + 64 > limit {
        bail!(
            "{} connections exceed this process's open-files limit ({limit}); run several harness processes, \
             each with its share (see docs/loadtest.md)",
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
        channels: args.channels,
        source_ips,
        interval_ns: (1e9 / args.connect_rate.max(1.0)) as u64,
        start_ns: now_ns() + 50_000_000,
        opened: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        dropped: AtomicUsize::new(0),
        pings_answered: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        errors: Mutex::new(Vec::new()),
        ticks: Mutex::new(tx),
    });
    let pids = &common.server_pid;
    let before = machine::sample_sum(pids);
    let sock_before = machine::sockstat();
    let cpu_before = pool::process_cpu_ns();

    let handles = {
        let plan = plan.clone();
        pool::spawn(
            threads,
            common.cpus.as_ref().map(|c| c.0.as_slice()),
            move |i| thread_main(plan.clone(), i),
        )
    };
    let open_secs_budget = args.connections as f64 / args.connect_rate.max(1.0);
    let total_secs = (open_secs_budget + args.hold.as_secs_f64()).ceil() as u64;
    let mut coord = Coordinator::new(
        &common.out,
        threads,
        0,
        total_secs,
        common.quiet,
        "handshakes",
    )?;
    let open_deadline = Instant::now() + Duration::from_secs_f64(open_secs_budget + 30.0);
    let mut opened_at = None;
    let mut hold_until = None;
    let (mut after_open, mut sock_after_open) = (None, None);
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(t) => coord.on_tick(t)?,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let done = plan.opened.load(Relaxed) + plan.failed.load(Relaxed);
        if opened_at.is_none() && (done >= plan.n || Instant::now() > open_deadline) {
            let at = Instant::now();
            opened_at = Some((at, (now_ns() - plan.start_ns) as f64 / 1e9));
            hold_until = Some(at + args.hold);
            // Let the server settle (lazy allocations, the last handshakes) before sampling.
            std::thread::sleep(Duration::from_millis(500));
            after_open = machine::sample_sum(pids);
            sock_after_open = machine::sockstat();
        }
        if hold_until.is_some_and(|h| Instant::now() >= h) {
            break;
        }
    }
    let after_hold = machine::sample_sum(pids);
    let sock_after_hold = machine::sockstat();
    let cpu_after = pool::process_cpu_ns();
    plan.stop.store(true, Relaxed);
    let hists = pool::join(handles)?;
    while let Ok(t) = rx.try_recv() {
        coord.on_tick(t)?;
    }
    let (series, util) = coord.finish();
    let mut hist = stats::histogram();
    for h in &hists {
        hist.add(h)?;
    }

    let opened = plan.opened.load(Relaxed) as u64;
    let failed = plan.failed.load(Relaxed) as u64;
    let dropped = plan.dropped.load(Relaxed) as u64;
    let open_secs = opened_at.map_or(0.0, |(_, s)| s);
    let mut figures = BTreeMap::new();
    figures.insert("connections_requested".into(), plan.n as f64);
    figures.insert("connections_opened".into(), opened as f64);
    figures.insert("connect_failures".into(), failed as f64);
    figures.insert("dropped_during_hold".into(), dropped as f64);
    figures.insert(
        "pings_answered".into(),
        plan.pings_answered.load(Relaxed) as f64,
    );
    figures.insert("open_seconds".into(), (open_secs * 100.0).round() / 100.0);
    figures.insert("hold_seconds".into(), args.hold.as_secs_f64());
    let latency = Percentiles::of(&hist);
    for (k, v) in [
        ("p50", latency.p50_us),
        ("p99", latency.p99_us),
        ("p99_9", latency.p999_us),
        ("max", latency.max_us),
    ] {
        figures.insert(format!("handshake_{k}_ms"), v as f64 / 1000.0);
    }
    let per_conn = |a: u64, b: u64| {
        if opened > 0 {
            (b as f64 - a as f64) / opened as f64
        } else {
            0.0
        }
    };
    if let (
        Some(Sockstat {
            tcp_mem_bytes: m0,
            tcp_inuse: i0,
        }),
        Some(s1),
    ) = (sock_before, sock_after_hold)
    {
        figures.insert(
            "kernel_tcp_mem_bytes_per_connection".into(),
            per_conn(m0, s1.tcp_mem_bytes).round(),
        );
        figures.insert(
            "kernel_tcp_sockets_added".into(),
            s1.tcp_inuse as f64 - i0 as f64,
        );
    }
    if let Some(s) = sock_after_open {
        figures.insert(
            "kernel_tcp_mem_bytes_after_open".into(),
            s.tcp_mem_bytes as f64,
        );
    }
    let mut warnings = Vec::new();
    let server = match (pids.first().copied(), before, after_open, after_hold) {
        (Some(pid), Some(b), Some(o), Some(h)) => {
            figures.insert(
                "server_rss_per_connection_bytes".into(),
                (per_conn(b.rss_kib, h.rss_kib) * 1024.0).round(),
            );
            figures.insert(
                "server_rss_per_connection_after_open_bytes".into(),
                (per_conn(b.rss_kib, o.rss_kib) * 1024.0).round(),
            );
            Some(Server {
                pid,
                pids: pids.clone(),
                rss_start_kib: b.rss_kib,
                rss_end_kib: h.rss_kib,
                cpu_cores: ((h.cpu_ns - b.cpu_ns) as f64
                    / (open_secs + args.hold.as_secs_f64()).max(0.001)
                    / 1e9
                    * 1000.0)
                    .round()
                    / 1000.0,
                cpu_us_per_message: None,
                user_us_per_message: None,
                system_us_per_message: None,
                rss_samples: vec![
                    [0.0, b.rss_kib as f64],
                    [open_secs, o.rss_kib as f64],
                    [open_secs + args.hold.as_secs_f64(), h.rss_kib as f64],
                ],
            })
        }
        (Some(_), ..) => {
            warnings.push(format!(
                "could not read /proc of server pid {pids:?}: no server memory figures"
            ));
            None
        }
        _ => None,
    };
    let mut errors = Vec::new();
    // The schedule opens connection i at i / --connect-rate; a run that took longer than
    // that by more than 5% (and the last handshake's 100 ms) did not apply the load asked.
    let scheduled = (plan.n.saturating_sub(1)) as f64 / args.connect_rate.max(1.0);
    if opened > 0 {
        figures.insert(
            "connect_rate_achieved".into(),
            (opened as f64 / open_secs.max(1e-3)).round(),
        );
    }
    if opened_at.is_some() && open_secs > scheduled / 0.95 + 0.1 {
        errors.push(format!(
            "the harness fell behind --connect-rate {}: {opened} connections took {open_secs:.2} s \
             where the schedule allowed {scheduled:.2} s; add --threads (or lower the rate)",
            args.connect_rate
        ));
    }
    if let (Some(b), Some(o)) = (&before, &after_open) {
        let [cpu, user, system] = report::cpu_per_message(b, o, opened);
        for (name, v) in [
            ("server_cpu_us_per_connection", cpu),
            ("server_user_us_per_connection", user),
            ("server_system_us_per_connection", system),
        ] {
            if let Some(v) = v {
                figures.insert(name.into(), v);
            }
        }
    }
    if failed > 0 {
        errors.push(format!(
            "{failed} connections failed: {}",
            plan.errors.lock().expect("not poisoned").join(" | ")
        ));
    }
    if dropped > 0 {
        errors.push(format!(
            "{dropped} connections were closed by the server while idle"
        ));
    }
    let saturated = util.iter().any(|u| *u >= 0.9);
    if saturated {
        warnings.push(format!(
            "harness threads at {util:?} CPU: handshake times include harness queueing"
        ));
    }
    let wall = (open_secs + args.hold.as_secs_f64()).max(0.001);
    let summary = Summary {
        label: common
            .label
            .clone()
            .unwrap_or_else(|| format!("connect {}", common.url_list())),
        scenario: "connect".into(),
        harness_version: env!("CARGO_PKG_VERSION").into(),
        command_line: report::command_line(),
        started_unix: report::unix_now(),
        target: report::target_json(&plan.target, false, &[("connections", plan.n)]),
        machine: machine::describe(),
        config: serde_json::json!({"connections": args.connections, "connect_rate": args.connect_rate, "channels": args.channels, "hold_s": args.hold.as_secs_f64(), "threads": threads, "source_ips": plan.source_ips.as_ref().map(|v| v.len())}),
        figures,
        distribution: report::distribution(&hist),
        latency,
        intervals: series,
        harness: Harness {
            threads,
            thread_cpu_utilization: util,
            process_cpu_cores: (((cpu_after - cpu_before) as f64 / 1e9 / wall) * 1000.0).round()
                / 1000.0,
            saturated,
        },
        server,
        errors,
        warnings,
    };
    report::write(&common.out, &summary, &hist)
}

async fn thread_main(plan: Arc<Plan>, me: usize) -> anyhow::Result<Histogram<u64>> {
    let state = Rc::new(RefCell::new(State {
        interval: stats::histogram(),
        all: stats::histogram(),
        opened_interval: 0,
        open: 0,
    }));
    for i in (me..plan.n).step_by(plan.threads) {
        tokio::task::spawn_local(connection(plan.clone(), state.clone(), i));
    }
    let mut meter = IntervalMeter::new(me, plan.start_ns);
    for index in 0u64.. {
        let at = plan.start_ns + (index + 1) * 1_000_000_000;
        while now_ns() < at {
            if plan.stop.load(Relaxed) {
                let st = state.borrow();
                return Ok(st.all.clone());
            }
            tokio::time::sleep(Duration::from_millis(20).min(Duration::from_nanos(at - now_ns())))
                .await;
        }
        let tick = {
            let mut st = state.borrow_mut();
            let hist = std::mem::replace(&mut st.interval, stats::histogram());
            meter.tick(
                index,
                hist,
                std::mem::take(&mut st.opened_interval),
                st.open,
            )
        };
        let _ = plan.ticks.lock().expect("not poisoned").send(tick);
    }
    unreachable!("the loop returns")
}

async fn connection(plan: Arc<Plan>, state: Rc<RefCell<State>>, i: usize) {
    let start = plan.start_ns + i as u64 * plan.interval_ns;
    tokio::time::sleep(Duration::from_nanos(start.saturating_sub(now_ns()))).await;
    let t = now_ns();
    let ws = plan.target.ws_for(i);
    let source = plan
        .source_ips
        .as_ref()
        .map(|ips| source_for(ips, plan.target.ws.len(), i));
    let established = async {
        let stream = wsclient::tcp_connect(ws.addr, source).await?;
        let mut conn = wsclient::handshake(stream, ws, &pusher::ws_path(&plan.target, ws)).await?;
        let mut socket_id = None;
        while socket_id.is_none() {
            let mut found = None;
            if !conn
                .recv_frames(|op, p| {
                    if op == 1 {
                        if let Incoming::Established(id) = pusher::classify(p) {
                            found = Some(id);
                        }
                    }
                })
                .await?
            {
                anyhow::bail!("closed before connection_established");
            }
            socket_id = found;
        }
        anyhow::Ok((conn, socket_id.expect("set")))
    };
    let (mut conn, socket_id) =
        match tokio::time::timeout(Duration::from_secs(30), established).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return fail(&plan, format!("{e:#}")),
            Err(_) => return fail(&plan, "no connection_established within 30 s".into()),
        };
    let took = now_ns() - t;
    {
        let mut st = state.borrow_mut();
        record(&mut st.interval, took / 1000);
        record(&mut st.all, took / 1000);
        st.opened_interval += 1;
        st.open += 1;
    }
    plan.opened.fetch_add(1, Relaxed);
    if plan.channels > 0 {
        let channel = format!("idle-{}", i % plan.channels);
        if conn
            .send(&pusher::subscribe(&plan.target, &socket_id, &channel))
            .await
            .is_err()
        {
            return fail(&plan, "subscribe failed".into());
        }
    }
    // Hold: answer pings, notice drops.
    loop {
        let mut reply = None;
        let mut closed = false;
        let res = conn
            .recv_frames(|op, p| match op {
                1 if pusher::classify(p) == Incoming::Ping => reply = Some(pusher::pong()),
                8 => closed = true,
                9 => reply = Some(wsclient::frame(0xA, p)),
                _ => {}
            })
            .await;
        if let Some(r) = reply {
            plan.pings_answered.fetch_add(1, Relaxed);
            let _ = conn.send(&r).await;
        }
        if closed || !matches!(res, Ok(true)) {
            if !plan.stop.load(Relaxed) {
                plan.dropped.fetch_add(1, Relaxed);
            }
            state.borrow_mut().open -= 1;
            return;
        }
    }
}

fn fail(plan: &Plan, why: String) {
    plan.failed.fetch_add(1, Relaxed);
    let mut e = plan.errors.lock().expect("not poisoned");
    if e.len() < 5 {
        e.push(why);
    }
}
