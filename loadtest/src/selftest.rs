//! `selftest`: how many messages the harness itself can take in, with no server in the way.
//!
//! A built-in source (one thread, pinned to `--source-cpu`) accepts the harness's WebSocket
//! connections and streams pre-encoded harness events to them in 64 KiB writes, as fast as
//! the sockets take them. The harness threads receive them on exactly the path `fanout`
//! uses (frame parsing, event recognition, sequence accounting, two histogram records per
//! message). The figure that matters is messages per harness-core-second: if a run's
//! harness was not the bottleneck, that is what to expect of it against a server.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use base64::Engine;
use hdrhistogram::Histogram;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cli::{SelftestArgs, Target, WsTarget};
use crate::pool;
use crate::progress::{Coordinator, IntervalMeter, Tick};
use crate::pusher::{self, Incoming};
use crate::report::{self, Harness, Summary, Verdict};
use crate::stats::{self, latency_us, now_ns, record, Percentiles, SeqTracker};
use crate::wsclient;

/// Digits reserved for each number in the event data.
const DIGITS: usize = 20;
/// Bytes written to a socket at once.
const CHUNK: usize = 64 * 1024;

struct Shared {
    stop: AtomicBool,
    t0: AtomicU64,
    warmup_ns: u64,
    duration_ns: u64,
    ticks: Mutex<mpsc::Sender<Tick>>,
    errors: Mutex<Vec<String>>,
}

struct State {
    hist: Histogram<u64>,
    interval: Histogram<u64>,
    received_interval: u64,
    in_window: u64,
    trackers: Vec<SeqTracker>,
    open: u64,
}

pub fn run(args: SelftestArgs) -> anyhow::Result<Verdict> {
    let common = &args.common;
    if args.subscribers == 0 {
        bail!("--subscribers must be at least 1");
    }
    std::fs::create_dir_all(&common.out)?;
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let mut target = common.target()?;
    // The built-in source only: one WebSocket URL, whatever --url says.
    let prefix = target.ws[0].prefix.clone();
    target.ws = vec![WsTarget {
        url: format!("ws://{addr}"),
        authority: addr.to_string(),
        addr,
        prefix,
    }];
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        t0: AtomicU64::new(0),
        warmup_ns: common.warmup.as_nanos() as u64,
        duration_ns: common.duration.as_nanos() as u64,
        ticks: Mutex::new(tx),
        errors: Mutex::new(Vec::new()),
    });
    let source = {
        let shared = shared.clone();
        let payload = args.payload;
        let cpu = args.source_cpu;
        std::thread::Builder::new()
            .name("selftest-source".into())
            .spawn(move || -> anyhow::Result<()> {
                if let Some(cpu) = cpu {
                    pool::pin(cpu)?;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, source_main(std_listener, shared, payload))
            })?
    };
    let threads = common.threads.max(1);
    let handles = {
        let (shared, target, n) = (shared.clone(), target.clone(), args.subscribers);
        pool::spawn(
            threads,
            common.cpus.as_ref().map(|c| c.0.as_slice()),
            move |i| receiver_thread(shared.clone(), target.clone(), n, threads, i),
        )
    };
    let warm = common.warmup.as_secs_f64().ceil() as u64;
    let total = warm + common.duration.as_secs_f64().ceil() as u64;
    let mut coord = Coordinator::new(&common.out, threads, warm, total, common.quiet, "msg")?;
    // The source starts streaming as each connection subscribes; t0 is set by the first.
    let end = loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(t) => coord.on_tick(t)?,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break 0,
        }
        let t0 = shared.t0.load(Relaxed);
        if t0 > 0 && now_ns() >= t0 + shared.warmup_ns + shared.duration_ns {
            break now_ns();
        }
        if !shared.errors.lock().expect("not poisoned").is_empty() {
            break now_ns();
        }
    };
    let _ = end;
    shared.stop.store(true, Relaxed);
    let results = pool::join(handles)?;
    let _ = source.join();
    while let Ok(t) = rx.try_recv() {
        coord.on_tick(t)?;
    }
    let (series, util) = coord.finish();
    let mut hist = stats::histogram();
    let (mut in_window, mut dup, mut ooo, mut received, mut cpu_ns) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for r in &results {
        hist.add(&r.hist)?;
        in_window += r.in_window;
        dup += r.duplicates;
        ooo += r.out_of_order;
        received += r.received;
        cpu_ns += r.cpu_ns;
    }
    let duration = common.duration.as_secs_f64();
    let rate = in_window as f64 / duration;
    // Capacity: everything the receiving threads took in, per second of their CPU time
    // (a thread that was never idle makes this its throughput).
    let per_core_second = if cpu_ns > 0 {
        received as f64 / (cpu_ns as f64 / 1e9)
    } else {
        0.0
    };
    let cores: f64 = util.iter().sum();
    let mut figures = BTreeMap::new();
    figures.insert("subscribers".into(), args.subscribers as f64);
    figures.insert("received_per_sec".into(), rate.round());
    figures.insert(
        "harness_cores_used".into(),
        (cores * 1000.0).round() / 1000.0,
    );
    figures.insert(
        "messages_per_harness_core_second".into(),
        per_core_second.round(),
    );
    figures.insert("duplicates".into(), dup as f64);
    figures.insert("out_of_order".into(), ooo as f64);
    let mut errors: Vec<String> = shared.errors.lock().expect("not poisoned").clone();
    if dup > 0 || ooo > 0 {
        errors.push(format!(
            "{dup} duplicates, {ooo} out of order: the harness's accounting is broken"
        ));
    }
    let latency = Percentiles::of(&hist);
    let summary = Summary {
        label: common.label.clone().unwrap_or_else(|| "selftest".into()),
        scenario: "selftest".into(),
        harness_version: env!("CARGO_PKG_VERSION").into(),
        command_line: report::command_line(),
        started_unix: report::unix_now(),
        target: serde_json::json!({"url": format!("ws://{addr}"), "source": "built-in"}),
        machine: crate::machine::describe(),
        config: serde_json::json!({"subscribers": args.subscribers, "payload": args.payload, "threads": threads, "cpus": common.cpus.as_ref().map(|c| c.0.clone()), "source_cpu": args.source_cpu, "duration_s": duration}),
        figures,
        distribution: report::distribution(&hist),
        latency,
        intervals: series,
        harness: Harness {
            threads,
            saturated: util.iter().any(|u| *u >= 0.9),
            process_cpu_cores: (cores * 1000.0).round() / 1000.0,
            thread_cpu_utilization: util,
        },
        server: None,
        errors,
        warnings: vec![],
    };
    report::write(&common.out, &summary, &hist)
}

/// Writes `n` right-aligned in `DIGITS` bytes.
fn put_digits(buf: &mut [u8], mut n: u64) {
    for b in buf.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// One server frame of a harness event with room for the numbers; returns the frame and
/// the offsets of the two numbers.
fn template(payload: usize) -> (Vec<u8>, usize, usize) {
    let pad = payload.saturating_sub(2 * DIGITS + 2).max(1);
    let data = format!(
        "{} {} {}",
        "0".repeat(DIGITS),
        "0".repeat(DIGITS),
        "x".repeat(pad)
    );
    let json = format!(r#"{{"event":"loadtest","channel":"selftest","data":"{data}"}}"#);
    let mut frame = vec![0x81];
    match json.len() {
        n @ 0..=125 => frame.push(n as u8),
        n => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    let seq_at = frame.len() + json.find("\"data\":\"").expect("present") + 8;
    frame.extend_from_slice(json.as_bytes());
    (frame, seq_at, seq_at + DIGITS + 1)
}

async fn source_main(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    payload: usize,
) -> anyhow::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                stream.set_nodelay(true)?;
                tokio::task::spawn_local(serve(stream, shared.clone(), payload));
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                if shared.stop.load(Relaxed) {
                    return Ok(());
                }
            }
        }
    }
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>, payload: usize) {
    let res: io::Result<()> = async {
        // The opening handshake, then connection_established.
        let mut head = Vec::new();
        while memchr::memmem::find(&head, b"\r\n\r\n").is_none() {
            let mut tmp = [0u8; 1024];
            let n = stream.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            head.extend_from_slice(&tmp[..n]);
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let key = text
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key")).map(|(_, v)| v.trim().to_string()))
            .unwrap_or_default();
        let mut sha = Sha1::new();
        sha.update(key.as_bytes());
        sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
        stream
            .write_all(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").as_bytes())
            .await?;
        let established = br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.1\",\"activity_timeout\":120}"}"#;
        let mut f = vec![0x81, established.len() as u8];
        f.extend_from_slice(established);
        stream.write_all(&f).await?;
        // Whatever the client sends (its subscribe) is answered once, then ignored.
        let mut tmp = [0u8; 1024];
        let _ = stream.read(&mut tmp).await?;
        let ok = br#"{"event":"pusher_internal:subscription_succeeded","channel":"selftest","data":"{}"}"#;
        let mut f = vec![0x81, ok.len() as u8];
        f.extend_from_slice(ok);
        stream.write_all(&f).await?;
        let _ = shared.t0.compare_exchange(0, now_ns(), Relaxed, Relaxed);
        let (frame, seq_at, ts_at) = template(payload);
        let per_chunk = (CHUNK / frame.len()).max(1);
        let mut chunk: Vec<u8> = frame.repeat(per_chunk);
        let mut seq = 0u64;
        while !shared.stop.load(Relaxed) {
            let now = now_ns();
            for i in 0..per_chunk {
                let base = i * frame.len();
                put_digits(&mut chunk[base + seq_at..base + seq_at + DIGITS], seq);
                put_digits(&mut chunk[base + ts_at..base + ts_at + DIGITS], now);
                seq += 1;
            }
            stream.write_all(&chunk).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = res {
        if !shared.stop.load(Relaxed) {
            shared
                .errors
                .lock()
                .expect("not poisoned")
                .push(format!("source: {e}"));
        }
    }
}

async fn receiver_thread(
    shared: Arc<Shared>,
    target: Target,
    n: usize,
    threads: usize,
    me: usize,
) -> anyhow::Result<ThreadResult> {
    let mine: Vec<usize> = (me..n).step_by(threads).collect();
    let state = Rc::new(RefCell::new(State {
        hist: stats::histogram(),
        interval: stats::histogram(),
        received_interval: 0,
        in_window: 0,
        trackers: vec![SeqTracker::default(); mine.len()],
        open: 0,
    }));
    for slot in 0..mine.len() {
        let (shared, target, state) = (shared.clone(), target.clone(), state.clone());
        tokio::task::spawn_local(async move {
            if let Err(e) = receive(&shared, &target, &state, slot).await {
                if !shared.stop.load(Relaxed) {
                    shared
                        .errors
                        .lock()
                        .expect("not poisoned")
                        .push(format!("receiver: {e:#}"));
                }
            }
        });
    }
    while shared.t0.load(Relaxed) == 0 {
        if shared.stop.load(Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t0 = shared.t0.load(Relaxed);
    let mut meter = IntervalMeter::new(me, t0);
    for index in 0u64.. {
        let at = t0 + (index + 1) * 1_000_000_000;
        while now_ns() < at && !shared.stop.load(Relaxed) {
            tokio::time::sleep(
                Duration::from_millis(10).min(Duration::from_nanos(at.saturating_sub(now_ns()))),
            )
            .await;
        }
        // On stop, the last (partial) interval is still reported, so that short runs count
        // their CPU time too.
        let stopping = shared.stop.load(Relaxed);
        let tick = {
            let mut st = state.borrow_mut();
            let hist = std::mem::replace(&mut st.interval, stats::histogram());
            meter.tick(
                index,
                hist,
                std::mem::take(&mut st.received_interval),
                st.open,
            )
        };
        let _ = shared.ticks.lock().expect("not poisoned").send(tick);
        if stopping {
            break;
        }
    }
    let st = state.borrow();
    Ok(ThreadResult {
        hist: st.hist.clone(),
        in_window: st.in_window,
        duplicates: st.trackers.iter().map(|t| t.duplicates).sum(),
        out_of_order: st.trackers.iter().map(|t| t.out_of_order).sum(),
        received: st.trackers.iter().map(|t| t.unique).sum(),
        cpu_ns: pool::thread_cpu_ns(),
    })
}

struct ThreadResult {
    hist: Histogram<u64>,
    in_window: u64,
    duplicates: u64,
    out_of_order: u64,
    /// Everything received, warm-up included.
    received: u64,
    /// The thread's CPU time over its whole life.
    cpu_ns: u64,
}

/// The receive path of `fanout`'s subscribers.
async fn receive(
    shared: &Shared,
    target: &Target,
    state: &RefCell<State>,
    slot: usize,
) -> anyhow::Result<()> {
    let ws = target.ws_for(slot);
    let stream = wsclient::tcp_connect(ws.addr, None).await?;
    let mut conn = wsclient::handshake(stream, ws, &pusher::ws_path(target, ws)).await?;
    conn.send(&pusher::subscribe(target, "1.1", "selftest"))
        .await?;
    state.borrow_mut().open += 1;
    loop {
        let mut now = 0;
        let open = conn
            .recv_frames(|op, p| {
                if op != 1 {
                    return;
                }
                if let Incoming::Event(data) = pusher::classify(p) {
                    let Some((seq, stamped)) = pusher::parse_event_data(data) else {
                        return;
                    };
                    if now == 0 {
                        now = now_ns();
                    }
                    let mut st = state.borrow_mut();
                    let st = &mut *st;
                    let _ = st.trackers[slot].record(seq);
                    st.received_interval += 1;
                    let lat = latency_us(stamped, now);
                    record(&mut st.interval, lat);
                    let t0 = shared.t0.load(Relaxed);
                    if stamped >= t0 + shared.warmup_ns
                        && stamped < t0 + shared.warmup_ns + shared.duration_ns
                    {
                        record(&mut st.hist, lat);
                        st.in_window += 1;
                    }
                }
            })
            .await?;
        if !open {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_frames_parse_as_harness_events() {
        let (mut frame, seq_at, ts_at) = template(100);
        put_digits(&mut frame[seq_at..seq_at + DIGITS], 42);
        put_digits(&mut frame[ts_at..ts_at + DIGITS], 123_456_789);
        let mut got = None;
        wsclient::parse_frames(&frame, |_, p| {
            if let Incoming::Event(d) = pusher::classify(p) {
                got = pusher::parse_event_data(d);
            }
        })
        .unwrap();
        assert_eq!(got, Some((42, 123_456_789)));
    }
}
