//! WebSocket frame encoding (server→client, as fanned out) and decoding (client→server,
//! masked) by payload size.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::protocol::messages;
use ringcast::ws::Decoder;

const SIZES: [usize; 5] = [32, 128, 1024, 10 * 1024, 64 * 1024];

fn masked_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![0x81];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_event_frame");
    for size in SIZES {
        let data = format!("{{\"body\":\"{}\"}}", "x".repeat(size.saturating_sub(11)));
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, data| {
            b.iter(|| messages::event_frame("App\\Events\\Update", Some("orders-42"), data))
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_client_frame");
    for size in SIZES {
        let frame = masked_frame(&vec![b'a'; size]);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &frame, |b, frame| {
            let mut decoder = Decoder::new(1 << 20);
            b.iter(|| {
                let mut buf = BytesMut::from(&frame[..]);
                decoder.decode(&mut buf).unwrap().unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
