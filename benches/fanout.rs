//! Fan-out of one encoded frame to N in-memory subscribers on one worker: the queue push
//! per subscriber and the writer taking its batch — everything but the socket write.
//!
//! `fanout_one_frame` publishes unmeasured frames; `fanout_one_frame_measured` the same
//! with the publish latency recorded as the server does (one clock read per write, one
//! histogram record per subscriber), so the cost of recording is the difference.
//! `fanout_one_frame_console_closed` adds what a worker does for the live console after
//! each delivery (`count_delivered`) with no console open — the fan-out as the server runs
//! it — and `fanout_one_frame_console_open` the same while a console watches the app.

use std::rc::Rc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;

use ringcast::app::console::count_delivered;
use ringcast::app::{App, Apps, ChannelKey, ChannelRef, LiveApps};
use ringcast::clock::now_ns;
use ringcast::hub::{Conn, LocalChannels};
use ringcast::metrics::LatencyRecorder;
use ringcast::protocol::{messages, SocketId};

fn fanout(c: &mut Criterion) {
    let apps: LiveApps = Arc::new(arc_swap::ArcSwap::from_pointee(
        Apps::new(vec![App::new("1", "k", "s")]).unwrap(),
    ));
    run(c, "fanout_one_frame", Mode::Plain, &apps);
    run(c, "fanout_one_frame_measured", Mode::Measured, &apps);
    run(c, "fanout_one_frame_console_closed", Mode::Console, &apps);
    let _watch = apps.load().get(0).console.watch();
    run(c, "fanout_one_frame_console_open", Mode::Console, &apps);
    let recorder = LatencyRecorder::default();
    c.bench_function("latency_clock_read", |b| b.iter(now_ns));
    c.bench_function("latency_record", |b| {
        b.iter(|| recorder.publish(std::hint::black_box(1_000_000), 1_000))
    });
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Measured,
    Console,
}

fn run(c: &mut Criterion, group: &str, mode: Mode, apps: &LiveApps) {
    let measured = mode == Mode::Measured;
    let recorder = LatencyRecorder::default();
    let mut g = c.benchmark_group(group);
    for n in [1usize, 100, 1_000, 10_000] {
        let channels = LocalChannels::default();
        let key = ChannelKey::new(0, "broadcast");
        let conns: Vec<Rc<Conn>> = (0..n)
            .map(|i| {
                let conn = Rc::new(Conn::new(
                    i,
                    SocketId {
                        random: 1,
                        seq: i as u64,
                    },
                    Some(0),
                    true,
                    1 << 20,
                ));
                channels.add(&key, &conn);
                conn
            })
            .collect();
        let frame: Bytes = messages::event_frame("update", Some("broadcast"), &"x".repeat(100));
        let mut batch = Vec::with_capacity(16);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let d = channels.deliver(
                    ChannelRef {
                        app: 0,
                        name: "broadcast",
                    },
                    &frame,
                    None,
                    if measured { now_ns() } else { 0 },
                );
                if mode == Mode::Console {
                    count_delivered(apps, 0, d.queued);
                }
                for conn in &conns {
                    let mut now = 0;
                    conn.take_batch(&mut batch, |stamp| {
                        if now == 0 {
                            now = now_ns();
                        }
                        recorder.publish(now, stamp);
                    });
                    batch.clear();
                }
                d
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
