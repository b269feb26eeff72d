//! Verifying a signed HTTP API request (query parsing, body MD5, HMAC-SHA256 compared in
//! constant time), with the official example from Pusher's documentation.

use criterion::{criterion_group, criterion_main, Criterion};
use ringcast::protocol::signature as auth;

fn signature(c: &mut Criterion) {
    let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    let query = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
    c.bench_function("verify_events_request", |b| {
        b.iter(|| {
            let params = auth::parse_query(Some(query)).unwrap();
            let req = auth::Signed {
                method: "POST",
                path: "/apps/3/events",
                params: &params,
                body,
            };
            auth::verify(
                &req,
                "278d425bdf160c739803",
                "7ad3773142a6692b25b8",
                1353088179,
                600,
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, signature);
criterion_main!(benches);
