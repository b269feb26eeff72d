//! The Pusher protocol over real sockets: connecting, liveness, subscribing, and every kind
//! of bad input getting its documented answer — on both IO backends. The scenarios where
//! another node matters also run across a cluster of two nodes over one Redis: the client
//! on node a, the HTTP API called on node b.

mod common;

use std::time::Duration;

use common::raw::RawWs;
use common::redis::{node, Redis};
use common::{close_code, publish, wait_closed, Client, Closed, Server, APP_KEY};
use serde_json::{json, Value};

on_both_backends!(
    connection_established_carries_socket_id_and_activity_timeout,
    socket_ids_are_unique_across_workers,
    unknown_app_key_is_refused_with_4001,
    protocol_version_problems_get_40xx_codes,
    pusher_ping_gets_pusher_pong,
    websocket_ping_gets_pong,
    subscriber_receives_published_events,
    unsubscribe_stops_delivery,
    subscriptions_with_bad_auth_get_subscription_error,
    invalid_channel_names_get_subscription_error,
    malformed_json_gets_pusher_error_and_the_connection_stays_open,
    unknown_events_and_client_events_get_pusher_error,
    binary_frames_close_with_1003,
    oversized_messages_close_with_1009,
    invalid_utf8_closes_with_1007,
    unmasked_frames_close_with_1002,
    client_close_is_echoed,
    a_close_right_after_bad_input_still_gets_the_servers_answer,
    oversized_frame_then_close_completes_the_handshake,
    idle_client_is_pinged_then_closed_with_4201,
    bad_input_on_one_connection_leaves_others_served,
    channel_limit_per_connection_is_enforced,
    connections_beyond_max_connections_get_4100,
    disabled_app_is_refused_with_4003,
    upgrade_requests_that_cannot_be_accepted_get_clear_http_answers,
);

/// Sends a raw request head and returns the response head and body.
async fn raw_http(server: &Server, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut reply = vec![0u8; 4096];
    let n = tokio::time::timeout(common::WAIT, s.read(&mut reply))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&reply[..n]).into_owned()
}

/// Upgrades with another WebSocket version, a missing key, the wrong method, and health
/// checks with the wrong method: an HTTP status and a JSON error each, the server serving on.
async fn upgrade_requests_that_cannot_be_accepted_get_clear_http_answers(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let upgrade = |method: &str, version: &str, key: bool| {
        let key = if key {
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        } else {
            ""
        };
        format!(
            "{method} /app/{APP_KEY}?protocol=7 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: {version}\r\n{key}Content-Length: 0\r\n\r\n"
        )
    };
    let reply = raw_http(&server, &upgrade("GET", "8", true)).await;
    assert!(reply.starts_with("HTTP/1.1 426"), "{reply}");
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{reply}"
    );
    assert!(reply.contains("only 13 is supported"), "{reply}");
    let reply = raw_http(&server, &upgrade("GET", "13", false)).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("Sec-WebSocket-Key"), "{reply}");
    let reply = raw_http(&server, &upgrade("POST", "13", true)).await;
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
    assert!(reply.contains("WebSocket upgrades use GET"), "{reply}");
    let reply = raw_http(
        &server,
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
    assert!(
        reply.contains(r#"{"error":"method not allowed"}"#),
        "{reply}"
    );
    // A proper upgrade still works.
    Client::connect(&server).await;
}

fn data(msg: &Value) -> Value {
    serde_json::from_str(msg["data"].as_str().expect("data is a string")).unwrap()
}

async fn connection_established_carries_socket_id_and_activity_timeout(backend: &'static str) {
    let server = Server::start(backend, &["--activity-timeout", "42"]);
    let mut ws = Client::open(&server.ws_url(APP_KEY)).await;
    use futures_util::StreamExt;
    let msg = ws.next().await.unwrap().unwrap().into_text().unwrap();
    let msg: Value = serde_json::from_str(&msg).unwrap();
    assert_eq!(msg["event"], "pusher:connection_established");
    let d = data(&msg);
    let socket_id = d["socket_id"].as_str().unwrap();
    let (a, b) = socket_id.split_once('.').unwrap();
    assert!(
        !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()),
        "{socket_id}"
    );
    assert!(
        !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()),
        "{socket_id}"
    );
    assert_eq!(d["activity_timeout"], 42);
}

async fn socket_ids_are_unique_across_workers(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut ids = std::collections::HashSet::new();
    let mut clients = Vec::new();
    for _ in 0..40 {
        let c = Client::connect(&server).await;
        assert!(ids.insert(c.socket_id.clone()), "duplicate {}", c.socket_id);
        clients.push(c);
    }
    // Both workers took connections.
    assert!(server.metric("ringcast_connections", 0).await > 0);
    assert!(server.metric("ringcast_connections", 1).await > 0);
}

async fn unknown_app_key_is_refused_with_4001(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut ws = Client::open(&server.ws_url("no-such-key")).await;
    use futures_util::StreamExt;
    let msg: Value =
        serde_json::from_str(&ws.next().await.unwrap().unwrap().into_text().unwrap()).unwrap();
    assert_eq!(msg["event"], "pusher:error");
    assert_eq!(msg["data"]["code"], 4001);
    assert_eq!(close_code(&wait_closed(&mut ws).await), 4001);
}

async fn protocol_version_problems_get_40xx_codes(backend: &'static str) {
    let server = Server::start(backend, &[]);
    for (query, code) in [
        ("", 4008),
        ("?protocol=abc", 4006),
        ("?protocol=3", 4007),
        ("?protocol=8", 4007),
    ] {
        let url = format!("ws://{}/app/{APP_KEY}{query}", server.addr);
        let mut ws = Client::open(&url).await;
        assert_eq!(close_code(&wait_closed(&mut ws).await), code, "{query}");
    }
    // Versions 5 to 7 are accepted.
    Client::connect_url(&format!("ws://{}/app/{APP_KEY}?protocol=5", server.addr)).await;
}

async fn pusher_ping_gets_pusher_pong(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut c = Client::connect(&server).await;
    c.send(json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(c.recv().await["event"], "pusher:pong");
}

async fn websocket_ping_gets_pong(backend: &'static str) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start(backend, &[]);
    let mut c = Client::connect(&server).await;
    c.ws.send(Message::Ping(b"are you there"[..].into()))
        .await
        .unwrap();
    match c.ws.next().await.unwrap().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
}

on_both_backends!(
    subscriber_receives_events_published_on_another_node,
    unsubscribe_on_one_node_stops_delivery_of_events_published_on_another,
);

/// Redis and two clustered nodes, or `None` when Redis is not installed (skipped loudly).
async fn two_nodes(backend: &'static str) -> Option<(Redis, Server, Server)> {
    let redis = Redis::start()?;
    let a = node(&redis, backend, "a", &[]).await;
    let b = node(&redis, backend, "b", &[]).await;
    Some((redis, a, b))
}

async fn subscriber_receives_published_events(backend: &'static str) {
    let server = Server::start(backend, &[]);
    receives_published_events(&server, &server).await;
}

async fn subscriber_receives_events_published_on_another_node(backend: &'static str) {
    let Some((_redis, a, b)) = two_nodes(backend).await else {
        return;
    };
    receives_published_events(&a, &b).await;
}

/// A subscriber on `client_node` receives, byte for byte, what the API of `api_node` publishes.
async fn receives_published_events(client_node: &Server, api_node: &Server) {
    let mut c = Client::connect(client_node).await;
    c.subscribe("orders").await;
    publish(
        api_node,
        &["orders"],
        "App\\Events\\OrderShipped",
        r#"{"id":7,"note":"é \"quoted\""}"#,
    )
    .await;
    let msg = c.recv().await;
    assert_eq!(msg["event"], "App\\Events\\OrderShipped");
    assert_eq!(msg["channel"], "orders");
    assert_eq!(msg["data"], r#"{"id":7,"note":"é \"quoted\""}"#);
}

async fn unsubscribe_stops_delivery(backend: &'static str) {
    let server = Server::start(backend, &[]);
    unsubscribed_gets_nothing(&server, &server).await;
}

async fn unsubscribe_on_one_node_stops_delivery_of_events_published_on_another(
    backend: &'static str,
) {
    let Some((_redis, a, b)) = two_nodes(backend).await else {
        return;
    };
    unsubscribed_gets_nothing(&a, &b).await;
}

/// A client on `client_node` unsubscribed from a channel receives nothing more of it from
/// the API of `api_node`, and still receives its other channel's events.
async fn unsubscribed_gets_nothing(client_node: &Server, api_node: &Server) {
    let mut c = Client::connect(client_node).await;
    c.subscribe("a").await;
    c.subscribe("b").await;
    c.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "a"}}))
        .await;
    // A ping round trip orders the unsubscribe before the publish.
    c.send(json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(c.recv().await["event"], "pusher:pong");
    publish(api_node, &["a"], "ev", "1").await;
    publish(api_node, &["b"], "ev", "2").await;
    let msg = c.recv().await;
    assert_eq!(msg["channel"], "b", "got {msg}");
    assert_eq!(c.try_recv(Duration::from_millis(200)).await, None);
}

async fn subscriptions_with_bad_auth_get_subscription_error(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut c = Client::connect(&server).await;
    for channel in [
        "private-a",
        "presence-b",
        "private-encrypted-c",
        "#server-to-user-1",
    ] {
        c.send(json!({"event": "pusher:subscribe", "data": {"auth": "x:y", "channel": channel}}))
            .await;
        let msg = c.recv().await;
        assert_eq!(msg["event"], "pusher:subscription_error", "{msg}");
        assert_eq!(msg["channel"], channel);
        assert!(msg["data"]["status"].is_u64());
    }
    // A prefix counts only at the start of the name.
    c.subscribe("foo-private-bar").await;
    // The connection stays open.
    c.send(json!({"event": "pusher:ping"})).await;
    assert_eq!(c.recv().await["event"], "pusher:pong");
}

async fn invalid_channel_names_get_subscription_error(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut c = Client::connect(&server).await;
    let long = "a".repeat(165);
    for channel in ["", "has space", "#hash", long.as_str(), "ünïcode"] {
        c.send(json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": channel}}))
            .await;
        let msg = c.recv().await;
        assert_eq!(
            msg["event"], "pusher:subscription_error",
            "{channel:?}: {msg}"
        );
        assert_eq!(msg["data"]["status"], 400);
    }
    c.subscribe(&"a".repeat(164)).await;
}

async fn malformed_json_gets_pusher_error_and_the_connection_stays_open(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut c = Client::connect(&server).await;
    for bad in [
        "not json",
        "[1,2,3]",
        r#"{"data":{}}"#,
        r#"{"event":"pusher:subscribe"}"#,
        r#"{"event":"pusher:subscribe","data":{"channel":5}}"#,
    ] {
        c.send_text(bad).await;
        let msg = c.recv().await;
        assert_eq!(msg["event"], "pusher:error", "{bad}: {msg}");
        assert!(msg["data"]["code"].is_null());
        assert!(msg["data"]["message"].as_str().unwrap().len() > 5);
    }
    c.subscribe("still-works").await;
}

async fn unknown_events_and_client_events_get_pusher_error(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut c = Client::connect(&server).await;
    c.send(json!({"event": "something-else", "data": {}})).await;
    let msg = c.recv().await;
    assert_eq!(msg["event"], "pusher:error");
    assert!(msg["data"]["message"]
        .as_str()
        .unwrap()
        .contains("something-else"));
    c.subscribe("public").await;
    c.send(json!({"event": "client-typing", "channel": "public", "data": {}}))
        .await;
    let msg = c.recv().await;
    assert_eq!(msg["event"], "pusher:error");
    assert!(msg["data"]["message"]
        .as_str()
        .unwrap()
        .contains("private and presence"));
}

async fn binary_frames_close_with_1003(backend: &'static str) {
    use futures_util::SinkExt;
    let server = Server::start(backend, &[]);
    let mut c = Client::connect(&server).await;
    c.ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        vec![1, 2, 3].into(),
    ))
    .await
    .unwrap();
    let msg = c.recv().await;
    assert_eq!(msg["event"], "pusher:error");
    assert_eq!(close_code(&c.closed().await), 1003);
}

async fn oversized_messages_close_with_1009(backend: &'static str) {
    let server = Server::start(backend, &["--max-message-size", "1024"]);
    let mut c = Client::connect(&server).await;
    c.send_text(&format!(
        r#"{{"event":"pusher:ping","data":"{}"}}"#,
        "x".repeat(1100)
    ))
    .await;
    let msg = c.recv().await;
    assert_eq!(msg["event"], "pusher:error");
    assert!(msg["data"]["message"].as_str().unwrap().contains("1024"));
    assert_eq!(close_code(&c.closed().await), 1009);
}

async fn invalid_utf8_closes_with_1007(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut ws = RawWs::connect(&server, &format!("/app/{APP_KEY}?protocol=7")).await;
    ws.read_frame().await.unwrap(); // connection_established
    ws.send_frame(true, 1, &[b'{', 0xff, 0xfe, b'}'], true)
        .await;
    assert_eq!(ws.read_close().await, 1007);
}

async fn unmasked_frames_close_with_1002(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut ws = RawWs::connect(&server, &format!("/app/{APP_KEY}?protocol=7")).await;
    ws.read_frame().await.unwrap();
    ws.send_frame(true, 1, br#"{"event":"pusher:ping"}"#, false)
        .await;
    assert_eq!(ws.read_close().await, 1002);
    // Reserved bits on a fresh connection, too.
    let mut ws = RawWs::connect(&server, &format!("/app/{APP_KEY}?protocol=7")).await;
    ws.read_frame().await.unwrap();
    ws.send_frame(true, 0x40 | 1, b"{}", true).await;
    assert_eq!(ws.read_close().await, 1002);
}

async fn client_close_is_echoed(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut ws = RawWs::connect(&server, &format!("/app/{APP_KEY}?protocol=7")).await;
    ws.read_frame().await.unwrap();
    let mut payload = 4321u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    ws.send_frame(true, 8, &payload, true).await;
    assert_eq!(ws.read_close().await, 4321);
    // The server then closes the TCP connection.
    ws.expect_eof().await;
}

async fn idle_client_is_pinged_then_closed_with_4201(backend: &'static str) {
    let server = Server::start(backend, &["--activity-timeout", "1", "--pong-timeout", "1"]);
    let mut c = Client::connect(&server).await;
    let msg = c.recv().await;
    assert_eq!(msg["event"], "pusher:ping");
    // Not answering: 4201 follows.
    let closed = c.closed().await;
    assert_eq!(close_code(&closed), 4201, "{closed:?}");

    // A client that answers stays connected.
    let mut c = Client::connect(&server).await;
    for _ in 0..2 {
        let msg = c.recv().await;
        assert_eq!(msg["event"], "pusher:ping");
        c.send(json!({"event": "pusher:pong", "data": {}})).await;
    }
}

async fn bad_input_on_one_connection_leaves_others_served(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut good = Client::connect(&server).await;
    good.subscribe("news").await;
    for i in 0..5 {
        let mut bad = RawWs::connect(&server, &format!("/app/{APP_KEY}?protocol=7")).await;
        bad.read_frame().await.unwrap();
        match i {
            0 => bad.send_bytes(&[0xff; 64]).await,
            1 => bad.send_frame(true, 1, &[0xc3], true).await,
            2 => bad.send_frame(true, 0, b"x", true).await,
            3 => bad.send_frame(true, 9, &[0; 126], true).await,
            _ => bad.send_frame(false, 1, b"{", true).await,
        }
        drop(bad);
        publish(&server, &["news"], "ev", &i.to_string()).await;
        assert_eq!(good.recv().await["data"], i.to_string());
    }
}

async fn channel_limit_per_connection_is_enforced(backend: &'static str) {
    let server = Server::start(backend, &["--max-channels-per-connection", "3"]);
    let mut c = Client::connect(&server).await;
    for ch in ["a", "b", "c"] {
        c.subscribe(ch).await;
    }
    c.subscribe("a").await; // already subscribed: fine
    c.send(json!({"event": "pusher:subscribe", "data": {"channel": "d"}}))
        .await;
    let msg = c.recv().await;
    assert_eq!(msg["event"], "pusher:subscription_error");
    assert_eq!(msg["data"]["status"], 429);
    c.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "a"}}))
        .await;
    c.subscribe("d").await;
}

async fn connections_beyond_max_connections_get_4100(backend: &'static str) {
    let server = Server::start(backend, &["--max-connections", "2"]);
    let _a = Client::connect(&server).await;
    let _b = Client::connect(&server).await;
    let mut ws = Client::open(&server.ws_url(APP_KEY)).await;
    let closed = wait_closed(&mut ws).await;
    assert_eq!(close_code(&closed), 4100, "{closed:?}");
    drop(_a);
    // A slot frees up once a connection leaves.
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let mut ws = Client::open(&server.ws_url(APP_KEY)).await;
        use futures_util::StreamExt;
        let first: Value =
            serde_json::from_str(&ws.next().await.unwrap().unwrap().into_text().unwrap()).unwrap();
        if first["event"] == "pusher:connection_established" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no slot freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(closed, Closed::Code(..)));
}

async fn disabled_app_is_refused_with_4003(backend: &'static str) {
    let dir = tempdir();
    let apps = dir.join("apps.toml");
    std::fs::write(
        &apps,
        "[[app]]\nid = \"1\"\nkey = \"on\"\nsecret = \"s1\"\n\n[[app]]\nid = \"2\"\nkey = \"off\"\nsecret = \"s2\"\nenabled = false\n",
    )
    .unwrap();
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    Client::connect_url(&server.ws_url("on")).await;
    let mut ws = Client::open(&server.ws_url("off")).await;
    assert_eq!(close_code(&wait_closed(&mut ws).await), 4003);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ringcast-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn a_close_right_after_bad_input_still_gets_the_servers_answer(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut ws = RawWs::connect(&server, &format!("/app/{APP_KEY}?protocol=7")).await;
    ws.read_frame().await.unwrap();
    // A binary frame and a close in one write: the server's 1003 answer must not be lost
    // because the client's close arrived with it.
    let mut bytes = raw_frame(2, b"\x01\x02");
    bytes.extend(raw_frame(8, &1000u16.to_be_bytes()));
    ws.send_bytes(&bytes).await;
    let err = ws.read_frame().await.expect("pusher:error");
    assert!(err.text().contains("pusher:error"), "{}", err.text());
    assert_eq!(ws.read_close().await, 1003);
    ws.expect_eof().await;
}

async fn oversized_frame_then_close_completes_the_handshake(backend: &'static str) {
    let server = Server::start(backend, &["--max-message-size", "1024"]);
    let mut ws = RawWs::connect(&server, &format!("/app/{APP_KEY}?protocol=7")).await;
    ws.read_frame().await.unwrap();
    let mut bytes = raw_frame(1, &vec![b'x'; 5000]);
    bytes.extend(raw_frame(8, &1009u16.to_be_bytes()));
    ws.send_bytes(&bytes).await;
    assert_eq!(ws.read_close().await, 1009);
    ws.expect_eof().await;
    // The server skipped the rest of the oversized frame and found the client's close:
    // a completed closing handshake, not a connection dropped after the grace period.
    let line = server.wait_for_log("connection closed").await;
    assert!(line.contains("reason=Closed"), "{line}");
}

/// A masked client frame.
fn raw_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [9u8, 8, 7, 6];
    let mut out = vec![0x80 | opcode];
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
