//! Fan-out across workers: every subscriber gets every event exactly once and in publish
//! order; a subscriber that stops reading is cut off with 4100 without holding up anyone
//! else — on both IO backends.

mod common;

use std::time::Duration;

use common::raw::RawWs;
use common::{api, Client, Server, APP_ID, APP_KEY};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

on_both_backends!(
    many_subscribers_across_workers_get_every_event_once_in_order,
    slow_consumer_is_closed_with_4100_while_others_keep_receiving,
    a_write_delay_gathers_frames_into_fewer_writes,
);

/// Twenty events published one after another reach a subscriber in twenty writes by
/// default, and in a few with `--write-delay-us 100000` (each frame may wait 100 ms for
/// company) — every event still there, in order.
async fn a_write_delay_gathers_frames_into_fewer_writes(backend: &'static str) {
    let mut writes = Vec::new();
    for delay in ["0", "100000"] {
        let server = Server::start(backend, &["--workers", "1", "--write-delay-us", delay]);
        let mut c = Client::connect(&server).await;
        c.subscribe("news").await;
        let before = server.metric_sum("ringcast_socket_writes_total", &[]).await;
        // One kept-alive HTTP client: each publish takes about a millisecond.
        let http = reqwest::Client::new();
        let path = format!("/apps/{APP_ID}/events");
        for i in 0..20 {
            let body =
                json!({"name": "e", "channels": ["news"], "data": i.to_string()}).to_string();
            let url = common::signed_url(
                &server,
                "POST",
                &path,
                &[],
                body.as_bytes(),
                common::now_secs(),
            );
            let resp = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        for i in 0..20 {
            let m = c.recv().await;
            assert_eq!(
                (&m["event"], &m["data"]),
                (&json!("e"), &json!(i.to_string()))
            );
        }
        writes.push(server.metric_sum("ringcast_socket_writes_total", &[]).await - before);
    }
    assert!(writes[0] >= 15, "without a delay: {writes:?}");
    assert!(writes[1] <= 5, "with a delay: {writes:?}");
}

const SUBSCRIBERS: usize = 200;
const EVENTS: usize = 60;

async fn many_subscribers_across_workers_get_every_event_once_in_order(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut clients = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut c = Client::connect(&server).await;
        c.subscribe("broadcast").await;
        if i % 2 == 0 {
            c.subscribe("evens").await;
        }
        clients.push(c);
    }
    // The kernel spread the connections over both workers.
    assert!(server.metric("ringcast_connections", 0).await > 0);
    assert!(server.metric("ringcast_connections", 1).await > 0);

    let readers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                let expected = if i % 2 == 0 { EVENTS * 2 } else { EVENTS };
                let mut got = Vec::with_capacity(expected);
                while got.len() < expected {
                    let m = c.recv().await;
                    got.push((
                        m["channel"].as_str().unwrap().to_string(),
                        m["data"].as_str().unwrap().to_string(),
                    ));
                }
                // Nothing more arrives: no duplicates.
                assert_eq!(c.try_recv(Duration::from_millis(200)).await, None);
                (i, got)
            })
        })
        .collect();

    // Publish sequentially from two HTTP clients, so requests arrive on different workers.
    for seq in 0..EVENTS {
        let channels: Vec<&str> = vec!["broadcast", "evens"];
        let (status, body) = api(
            &server,
            "POST",
            &format!("/apps/{APP_ID}/events"),
            &[],
            Some(&json!({"name": "tick", "channels": channels, "data": seq.to_string()})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }

    for r in readers {
        let (i, got) = r.await.unwrap();
        let broadcast: Vec<&str> = got
            .iter()
            .filter(|(c, _)| c == "broadcast")
            .map(|(_, d)| d.as_str())
            .collect();
        let want: Vec<String> = (0..EVENTS).map(|s| s.to_string()).collect();
        assert_eq!(
            broadcast, want,
            "subscriber {i}: broadcast out of order or incomplete"
        );
        if i % 2 == 0 {
            let evens: Vec<&str> = got
                .iter()
                .filter(|(c, _)| c == "evens")
                .map(|(_, d)| d.as_str())
                .collect();
            assert_eq!(evens, want, "subscriber {i}: evens");
        }
    }
}

async fn slow_consumer_is_closed_with_4100_while_others_keep_receiving(backend: &'static str) {
    let server = Server::start(backend, &["--max-outbound-buffer", "262144"]);

    // The slow subscriber: a raw socket with a tiny receive buffer that stops reading.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let mut slow = RawWs::handshake(stream, &server, &format!("/app/{APP_KEY}?protocol=7")).await;
    slow.read_frame().await.unwrap();
    slow.send_frame(
        true,
        1,
        br#"{"event":"pusher:subscribe","data":{"channel":"firehose"}}"#,
        true,
    )
    .await;
    let ok = slow.read_frame().await.unwrap();
    assert!(
        ok.text().contains("subscription_succeeded"),
        "{}",
        ok.text()
    );

    let mut fast = Client::connect(&server).await;
    fast.subscribe("firehose").await;
    let counter = tokio::spawn(async move {
        let mut n = 0u64;
        let mut last = -1i64;
        loop {
            match tokio::time::timeout(Duration::from_secs(3), fast.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    let seq: i64 = v["data"].as_str().unwrap()[..8].trim().parse().unwrap();
                    assert_eq!(seq, last + 1, "fast subscriber saw events out of order");
                    last = seq;
                    n += 1;
                }
                Ok(other) => panic!("fast subscriber: {other:?}"),
                Err(_) => return n,
            }
        }
    });

    let payload_pad = "x".repeat(8 * 1024);
    let mut published = 0u64;
    for _ in 0..400 {
        let batch: Vec<Value> = (0..10)
            .map(|i| json!({"name": "blob", "channel": "firehose", "data": format!("{:<8}{payload_pad}", published + i)}))
            .collect();
        let (status, body) = api(
            &server,
            "POST",
            &format!("/apps/{APP_ID}/batch_events"),
            &[],
            Some(&json!({ "batch": batch })),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        published += 10;
        if published % 100 == 0
            && server
                .metric_total("ringcast_slow_consumer_disconnects_total")
                .await
                > 0
        {
            break;
        }
    }
    assert_eq!(
        server
            .metric_total("ringcast_slow_consumer_disconnects_total")
            .await,
        1,
        "the slow subscriber was not cut off"
    );

    // The slow client, reading at last, finds a pusher:error 4100 and the close frame.
    let mut saw_error = false;
    loop {
        let f = slow
            .read_frame()
            .await
            .expect("closed without a close frame");
        if f.opcode == 8 {
            assert_eq!(f.close_code(), Some(4100));
            break;
        }
        if f.text().contains("pusher:error") {
            assert!(f.text().contains("4100"), "{}", f.text());
            saw_error = true;
        }
    }
    assert!(saw_error);
    // The fast subscriber got everything.
    assert_eq!(counter.await.unwrap(), published);
}
