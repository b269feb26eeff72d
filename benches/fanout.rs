//! Fan-out of one encoded frame to N in-memory subscribers on one worker: the queue push
//! per subscriber and the writer taking its batch — everything but the socket write.

use std::rc::Rc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::hub::{ChannelKey, ChannelRef, LocalChannels};
use ringcast::protocol::{messages, SocketId};
use ringcast::session::conn::{Conn, Protocol};

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_one_frame");
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
                    Protocol::Pusher,
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
                );
                for conn in &conns {
                    conn.take_batch(&mut batch);
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
