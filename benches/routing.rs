//! Channel routing with 10⁶ occupied channels: the shared index a publisher consults, and a
//! worker's local subscriber lookup.

use std::rc::Rc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use ringcast::app::{ChannelKey, ChannelRef};
use ringcast::hub::{ChannelIndex, Conn, LocalChannels};
use ringcast::protocol::SocketId;

const CHANNELS: usize = 1_000_000;

fn routing(c: &mut Criterion) {
    let index = ChannelIndex::default();
    let local = LocalChannels::default();
    let names: Vec<String> = (0..CHANNELS).map(|i| format!("private-user-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        index.add(ChannelKey::new(0, name), i % 2);
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
        local.add(&ChannelKey::new(0, name), &conn);
    }
    // Baseline for the same keys and access pattern: a plain std HashMap, read by one thread.
    let baseline: std::collections::HashMap<String, u64> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), i as u64))
        .collect();
    let frame = Bytes::from_static(b"\x81\x02{}");
    let mut i = 0usize;
    let mut next = || {
        i = (i + 7919) % CHANNELS;
        names[i].as_str()
    };
    c.bench_function("index_lookup_hit_1M", |b| {
        b.iter(|| {
            index.get(ChannelRef {
                app: 0,
                name: next(),
            })
        })
    });
    c.bench_function("baseline_std_hashmap_hit_1M", |b| {
        b.iter(|| baseline.get(next()).copied())
    });
    c.bench_function("index_lookup_miss_1M", |b| {
        b.iter(|| {
            index.get(ChannelRef {
                app: 0,
                name: "private-user-nobody",
            })
        })
    });
    c.bench_function("index_subscribe_unsubscribe_1M", |b| {
        b.iter(|| {
            let name = next();
            index.add(ChannelKey::new(0, name), 1);
            index.remove(ChannelKey::new(0, name), 1, false);
        })
    });
    // The HTTP API listing a small app's channels while another app holds the 10^6.
    for i in 0..10 {
        index.add(ChannelKey::new(1, &format!("room-{i}")), 0);
    }
    c.bench_function("index_list_10_channels_of_an_app_beside_1M", |b| {
        b.iter(|| index.channels(1, "").len())
    });
    c.bench_function("local_deliver_1M", |b| {
        b.iter(|| {
            let name = next();
            local.deliver(ChannelRef { app: 0, name }, &frame, None, 0)
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = routing
}
criterion_main!(benches);
