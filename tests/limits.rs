//! Every limit answers with its documented code and is counted in the metrics — on both
//! IO backends.

mod common;

use std::time::{Duration, Instant};

use common::{
    api, close_code, demo_app_with, send_raw, wait_closed, Client, Server, APP_ID, APP_KEY, WAIT,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

on_both_backends!(
    app_connection_quota_closes_with_4004,
    channel_limits_refuse_new_channels_only,
    api_request_rate_gets_429,
    silent_and_slow_clients_are_cut_off_at_the_handshake_timeout,
    connections_per_ip_per_second_get_429,
);

async fn app_connection_quota_closes_with_4004(backend: &'static str) {
    let apps = demo_app_with("max_connections = 2");
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    let a = Client::connect(&server).await;
    let _b = Client::connect(&server).await;
    let mut ws = Client::open(&server.ws_url(APP_KEY)).await;
    assert_eq!(close_code(&wait_closed(&mut ws).await), 4004);
    assert_eq!(
        server
            .metric_sum(
                "ringcast_connections_rejected_total",
                &[("reason", "app_over_quota")]
            )
            .await,
        1
    );
    // A slot freed is a slot to take.
    drop(a);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut ws = Client::open(&server.ws_url(APP_KEY)).await;
        use futures_util::StreamExt;
        let first = ws.next().await.unwrap().unwrap().into_text().unwrap();
        if first.contains("connection_established") {
            break;
        }
        assert!(Instant::now() < deadline, "{first}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn channel_limits_refuse_new_channels_only(backend: &'static str) {
    let apps = demo_app_with("max_channels = 2");
    let server = Server::start(
        backend,
        &["--apps-file", apps.to_str().unwrap(), "--max-channels", "3"],
    );
    let mut c = Client::connect(&server).await;
    c.subscribe("one").await;
    c.subscribe("two").await;
    // The app's limit: a third channel is refused…
    c.send(json!({"event": "pusher:subscribe", "data": {"channel": "three"}}))
        .await;
    let msg = c.recv().await;
    assert_eq!(msg["event"], "pusher:subscription_error", "{msg}");
    assert_eq!(msg["data"]["status"], 429, "{msg}");
    assert!(
        msg["data"]["error"]
            .as_str()
            .unwrap()
            .contains("2 channels"),
        "{msg}"
    );
    // …but joining an occupied one is not.
    let mut d = Client::connect(&server).await;
    d.subscribe("one").await;
    // Leaving frees room.
    c.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "two"}}))
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        c.send(json!({"event": "pusher:subscribe", "data": {"channel": "three"}}))
            .await;
        let msg = c.recv().await;
        if msg["event"] == "pusher_internal:subscription_succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{msg}");
    }
    assert!(
        server
            .metric_sum("ringcast_rate_limited_total", &[("limit", "channels")])
            .await
            >= 1
    );
}

async fn api_request_rate_gets_429(backend: &'static str) {
    let apps = demo_app_with("max_api_requests_per_second = 3");
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    let mut refused = 0;
    for _ in 0..10 {
        let (status, body) = api(
            &server,
            "GET",
            &format!("/apps/{APP_ID}/channels"),
            &[],
            None,
        )
        .await;
        match status {
            200 => {}
            429 => {
                assert!(
                    body["error"].as_str().unwrap().contains("3 API requests"),
                    "{body}"
                );
                refused += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    // Whatever second boundary the ten straddle, at most six pass.
    assert!(refused >= 4, "only {refused} refused");
    assert_eq!(
        server
            .metric_sum("ringcast_rate_limited_total", &[("limit", "api_requests")])
            .await,
        refused
    );
    assert_eq!(
        server
            .metric_sum("ringcast_http_requests_total", &[("status", "429")])
            .await,
        refused
    );
}

async fn silent_and_slow_clients_are_cut_off_at_the_handshake_timeout(backend: &'static str) {
    let server = Server::start(backend, &["--handshake-timeout", "1"]);
    // One says nothing; one sends half a request and stops.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for s in [&mut silent, &mut slow] {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("the server kept a silent connection open")
            .unwrap_or(0);
        // Closed (perhaps after a 408 from the HTTP layer), never upgraded.
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(!text.contains("101"), "{text}");
    }
    assert!(
        server
            .metric_sum(
                "ringcast_connections_rejected_total",
                &[("reason", "handshake_timeout")]
            )
            .await
            >= 1
    );
    // Prompt clients are unaffected.
    let mut c = Client::connect(&server).await;
    c.subscribe("fine").await;
}

async fn connections_per_ip_per_second_get_429(backend: &'static str) {
    let server = Server::start(backend, &["--max-connections-per-ip-per-second", "3"]);
    let mut refused = 0;
    let mut open = Vec::new();
    for _ in 0..10 {
        match tokio_tungstenite::connect_async(server.ws_url(APP_KEY)).await {
            Ok((ws, _)) => open.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 429);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused >= 4, "only {refused} refused");
    assert_eq!(
        server
            .metric_sum(
                "ringcast_connections_rejected_total",
                &[("reason", "ip_rate")]
            )
            .await,
        refused
    );
    // The API is not counted against it.
    let (status, _) = send_raw("GET", &server.http("/healthz"), vec![]).await;
    assert_eq!(status, 200);
}
