//! serde_json against simd-json, by document size, for the two JSON paths: client control
//! messages (tiny) and API request bodies (up to ~100 KB). The crossover sets
//! `ringcast::api::json::SIMD_JSON_BATCH_MAX`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde::Deserialize;

#[derive(Deserialize)]
#[allow(dead_code)]
struct Event {
    name: String,
    data: String,
    channels: Vec<String>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct BatchEvent {
    name: String,
    data: String,
    channel: String,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Batch {
    batch: Vec<BatchEvent>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    data: serde_json::Value,
}

fn event_body(data_len: usize) -> Vec<u8> {
    // Pusher data is JSON in a string: lots of escaped quotes, as SDKs send it.
    let inner =
        serde_json::json!({"id": 42, "text": "y".repeat(data_len), "tags": ["a", "b"]}).to_string();
    serde_json::to_vec(&serde_json::json!({"name": "App\\Events\\Update", "channels": ["orders-42", "orders-43"], "data": inner})).unwrap()
}

fn api_bodies(c: &mut Criterion) {
    let mut g = c.benchmark_group("api_body");
    for data_len in [16usize, 256, 1024, 2048, 4096, 10 * 1024, 64 * 1024] {
        let body = event_body(data_len);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("serde_json", body.len()),
            &body,
            |b, body| b.iter(|| serde_json::from_slice::<Event>(body).unwrap()),
        );
        g.bench_with_input(
            BenchmarkId::new("simd_json", body.len()),
            &body,
            |b, body| {
                // simd-json parses in place, so it needs a private copy; the copy is made
                // outside the measurement to give simd-json its best case.
                b.iter_batched_ref(
                    || body.clone(),
                    |copy| simd_json::serde::from_slice::<Event>(copy).unwrap(),
                    criterion::BatchSize::SmallInput,
                )
            },
        );
    }
    g.finish();
}

fn batch_bodies(c: &mut Criterion) {
    let mut g = c.benchmark_group("api_batch_body");
    for data_len in [64usize, 1024, 8 * 1024] {
        let inner = serde_json::json!({"id": 42, "text": "y".repeat(data_len), "tags": ["a", "b"]})
            .to_string();
        let batch: Vec<_> = (0..10)
            .map(|i| serde_json::json!({"name": "App\\Events\\Update", "channel": format!("private-user-{i}"), "data": inner}))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "batch": batch })).unwrap();
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("serde_json", body.len()),
            &body,
            |b, body| b.iter(|| serde_json::from_slice::<Batch>(body).unwrap()),
        );
        g.bench_with_input(
            BenchmarkId::new("simd_json", body.len()),
            &body,
            |b, body| {
                b.iter_batched_ref(
                    || body.clone(),
                    |copy| simd_json::serde::from_slice::<Batch>(copy).unwrap(),
                    criterion::BatchSize::SmallInput,
                )
            },
        );
    }
    g.finish();
}

fn client_messages(c: &mut Criterion) {
    let mut g = c.benchmark_group("client_message");
    let msgs = [
        ("ping", r#"{"event":"pusher:ping","data":{}}"#.to_string()),
        (
            "subscribe",
            r#"{"event":"pusher:subscribe","data":{"auth":"","channel":"orders-42"}}"#.to_string(),
        ),
        (
            "client_event_1k",
            format!(
                r#"{{"event":"client-typing","channel":"private-chat","data":{{"text":"{}"}}}}"#,
                "z".repeat(1024)
            ),
        ),
    ];
    for (name, msg) in msgs {
        g.bench_with_input(BenchmarkId::new("ringcast_parse", name), &msg, |b, msg| {
            b.iter(|| ringcast::protocol::client::parse(msg).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("simd_json", name), &msg, |b, msg| {
            b.iter(|| {
                let mut copy = msg.as_bytes().to_vec();
                simd_json::serde::from_slice::<Envelope<'_>>(&mut copy)
                    .map(|e| e.event.len())
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, api_bodies, batch_bodies, client_messages);
criterion_main!(benches);
