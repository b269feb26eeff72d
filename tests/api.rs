//! The signed HTTP API over real sockets, on both IO backends: publishing, signatures,
//! limits, channel queries, health.

mod common;

use std::time::Duration;

use common::{
    api, eventually_api, now_secs, send_raw, signed_url, signed_url_with, Client, Server, APP_ID,
};
use serde_json::json;

on_both_backends!(
    events_reach_every_named_channel,
    batch_events_are_delivered_in_order,
    socket_id_excludes_the_publishers_connection,
    bad_signatures_are_refused_with_401,
    timestamps_outside_the_window_are_refused,
    limits_get_400_and_413,
    malformed_bodies_get_400,
    unknown_apps_and_methods_get_404_and_405,
    channel_queries_report_occupancy_and_counts,
    events_reply_with_requested_info,
    health_readiness_and_metrics,
    disabled_app_api_gets_403,
    a_slow_request_is_judged_by_the_apps_when_its_body_arrives,
    event_data_given_as_json_is_relayed_as_its_text,
    less_common_bad_requests_get_clear_answers,
);

fn events_path() -> String {
    format!("/apps/{APP_ID}/events")
}

/// The SDKs send `data` as a string; given as any other JSON value, subscribers receive
/// its compact JSON text.
async fn event_data_given_as_json_is_relayed_as_its_text(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut c = Client::connect(&server).await;
    c.subscribe("news").await;
    for (data, text) in [
        (
            json!({"id": 42, "tags": ["a"]}),
            r#"{"id":42,"tags":["a"]}"#,
        ),
        (json!([1, "two"]), r#"[1,"two"]"#),
        (json!(42), "42"),
        (json!(-7), "-7"),
        (json!(1.5), "1.5"),
        (json!(true), "true"),
        (json!(null), "null"),
    ] {
        let (status, reply) = api(
            &server,
            "POST",
            &events_path(),
            &[],
            Some(&json!({"name": "e", "channels": ["news"], "data": data})),
        )
        .await;
        assert_eq!(status, 200, "{data}: {reply}");
        let got = c.recv().await;
        assert_eq!(got["data"], text, "{data}");
    }
}

/// Malformed path segments, an empty user id, an unknown `auth_key`, a chunked body over
/// the limit, and wrong methods or paths on the metrics listener: each a status and a JSON
/// error, and the server serves on.
async fn less_common_bad_requests_get_clear_answers(backend: &'static str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(backend, &["--max-request-body", "1024"]);
    let path = format!("/apps/{APP_ID}/channels/bad%zz");
    let (status, reply) = api(&server, "GET", &path, &[], None).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply["error"]
        .as_str()
        .unwrap()
        .contains("percent-encoding"));
    let path = format!("/apps/{APP_ID}/channels/caf%C3%A9");
    let (status, reply) = api(&server, "GET", &path, &[], None).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply["error"]
        .as_str()
        .unwrap()
        .contains("invalid channel \"café\""));
    let path = format!("/apps/{APP_ID}/channels/my%2Dchannel");
    let (status, reply) = api(&server, "GET", &path, &[], None).await;
    assert_eq!(
        (status, &reply["occupied"]),
        (200, &json!(false)),
        "{reply}"
    );

    let path = format!("/apps/{APP_ID}/users//terminate_connections");
    let (status, reply) = api(&server, "POST", &path, &[], Some(&json!({}))).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("missing user id"));

    // Chunked, so no Content-Length to refuse it up front: cut at the limit while read.
    let body = json!({"name": "e", "channels": ["news"], "data": "x".repeat(2000)}).to_string();
    let url = signed_url(
        &server,
        "POST",
        &events_path(),
        &[],
        body.as_bytes(),
        now_secs(),
    );
    let target = url.strip_prefix(&server.http("")).unwrap();
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    s.write_all(b"\r\n0\r\n\r\n").await.unwrap();
    let mut reply = vec![0u8; 4096];
    let n = tokio::time::timeout(common::WAIT, s.read(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("exceeds 1024 bytes"), "{reply}");

    let (status, reply) = send_raw("POST", &server.metrics_url("/metrics"), vec![]).await;
    assert_eq!(status, 405, "{reply}");
    let (status, reply) = send_raw("GET", &server.metrics_url("/nope"), vec![]).await;
    assert_eq!(status, 404, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("/metrics"));
    let (status, _) = api(
        &server,
        "GET",
        &format!("/apps/{APP_ID}/channels"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200);
}

async fn events_reach_every_named_channel(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.subscribe("alpha").await;
    b.subscribe("beta").await;
    let (status, body) = api(
        &server,
        "POST",
        &events_path(),
        &[],
        Some(&json!({"name": "greet", "channels": ["alpha", "beta", "nobody-here"], "data": "hi"})),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    let (ma, mb) = (a.recv().await, b.recv().await);
    assert_eq!(
        (ma["channel"].as_str(), ma["data"].as_str()),
        (Some("alpha"), Some("hi"))
    );
    assert_eq!(
        (mb["channel"].as_str(), mb["data"].as_str()),
        (Some("beta"), Some("hi"))
    );
    // `channel` (singular) works too, and non-string data is passed on as JSON text.
    let (status, _) = api(
        &server,
        "POST",
        &events_path(),
        &[],
        Some(&json!({"name": "obj", "channel": "alpha", "data": {"x": [1, 2]}})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(a.recv().await["data"], r#"{"x":[1,2]}"#);
}

async fn batch_events_are_delivered_in_order(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut c = Client::connect(&server).await;
    c.subscribe("feed").await;
    let batch: Vec<_> = (0..10)
        .map(|i| json!({"name": "item", "channel": "feed", "data": i.to_string()}))
        .collect();
    let (status, body) = api(
        &server,
        "POST",
        &format!("/apps/{APP_ID}/batch_events"),
        &[],
        Some(&json!({ "batch": batch })),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    for i in 0..10 {
        assert_eq!(c.recv().await["data"], i.to_string());
    }
}

async fn socket_id_excludes_the_publishers_connection(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut me = Client::connect(&server).await;
    let mut other = Client::connect(&server).await;
    me.subscribe("room").await;
    other.subscribe("room").await;
    let (status, _) = api(
        &server,
        "POST",
        &events_path(),
        &[],
        Some(&json!({"name": "said", "channel": "room", "data": "x", "socket_id": me.socket_id})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(other.recv().await["event"], "said");
    assert_eq!(me.try_recv(Duration::from_millis(300)).await, None);
    let (status, body) = api(
        &server,
        "POST",
        &events_path(),
        &[],
        Some(&json!({"name": "said", "channel": "room", "data": "x", "socket_id": "not-a-socket-id"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

async fn bad_signatures_are_refused_with_401(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let body = json!({"name": "e", "channel": "c", "data": "d"})
        .to_string()
        .into_bytes();
    let path = events_path();
    // Wrong secret.
    let url = signed_url_with(
        &server,
        "app-key",
        "wrong",
        "POST",
        &path,
        &[],
        &body,
        now_secs(),
    );
    let (status, reply) = send_raw("POST", &url, body.clone()).await;
    assert_eq!(status, 401);
    assert!(
        reply["error"].as_str().unwrap().contains("signature"),
        "{reply}"
    );
    // Wrong key.
    let url = signed_url_with(
        &server,
        "other-key",
        "app-secret",
        "POST",
        &path,
        &[],
        &body,
        now_secs(),
    );
    assert_eq!(send_raw("POST", &url, body.clone()).await.0, 401);
    // Body changed after signing.
    let url = signed_url(&server, "POST", &path, &[], &body, now_secs());
    let tampered = json!({"name": "e", "channel": "c", "data": "evil"})
        .to_string()
        .into_bytes();
    let (status, reply) = send_raw("POST", &url, tampered).await;
    assert_eq!(status, 401);
    assert!(reply["error"].as_str().unwrap().contains("body_md5"));
    // No signature at all.
    let (status, reply) = send_raw("POST", &server.http(&path), body.clone()).await;
    assert_eq!(status, 401);
    assert!(reply["error"].as_str().unwrap().contains("auth_key"));
    // An extra parameter added after signing.
    let url = signed_url(&server, "POST", &path, &[], &body, now_secs()) + "&extra=1";
    assert_eq!(send_raw("POST", &url, body.clone()).await.0, 401);
    // And the correctly signed request passes.
    let url = signed_url(&server, "POST", &path, &[], &body, now_secs());
    assert_eq!(send_raw("POST", &url, body).await.0, 200);
}

async fn timestamps_outside_the_window_are_refused(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let body = json!({"name": "e", "channel": "c", "data": "d"})
        .to_string()
        .into_bytes();
    for (skew, ok) in [(-590i64, true), (590, true), (-700, false), (700, false)] {
        let ts = (now_secs() as i64 + skew) as u64;
        let url = signed_url(&server, "POST", &events_path(), &[], &body, ts);
        let (status, reply) = send_raw("POST", &url, body.clone()).await;
        assert_eq!(status == 200, ok, "skew {skew}: {status} {reply}");
        if !ok {
            assert_eq!(status, 401);
            assert!(reply["error"].as_str().unwrap().contains("auth_timestamp"));
        }
    }
}

async fn limits_get_400_and_413(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let post = |body: serde_json::Value, path: String| {
        let server = &server;
        async move { api(server, "POST", &path, &[], Some(&body)).await }
    };
    // 10 KB of data is fine, one byte more is 413.
    let ok = "x".repeat(10 * 1024);
    assert_eq!(
        post(
            json!({"name": "e", "channel": "c", "data": ok}),
            events_path()
        )
        .await
        .0,
        200
    );
    let big = "x".repeat(10 * 1024 + 1);
    let (status, reply) = post(
        json!({"name": "e", "channel": "c", "data": big}),
        events_path(),
    )
    .await;
    assert_eq!(status, 413, "{reply}");
    // 100 channels fine, 101 refused.
    let chans: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    assert_eq!(
        post(
            json!({"name": "e", "channels": &chans[..100], "data": "d"}),
            events_path()
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(
            json!({"name": "e", "channels": chans, "data": "d"}),
            events_path()
        )
        .await
        .0,
        400
    );
    assert_eq!(
        post(
            json!({"name": "e", "channels": [], "data": "d"}),
            events_path()
        )
        .await
        .0,
        400
    );
    // 10 batch events fine, 11 refused.
    let batch = |n: usize| json!({"batch": (0..n).map(|_| json!({"name": "e", "channel": "c", "data": "d"})).collect::<Vec<_>>()});
    let batch_path = format!("/apps/{APP_ID}/batch_events");
    assert_eq!(post(batch(10), batch_path.clone()).await.0, 200);
    let (status, reply) = post(batch(11), batch_path.clone()).await;
    assert_eq!(status, 400, "{reply}");
    // One oversized event in a batch refuses the whole batch.
    let mixed = json!({"batch": [{"name": "e", "channel": "c", "data": "d"}, {"name": "e", "channel": "c", "data": "x".repeat(10241)}]});
    let (status, reply) = post(mixed, batch_path).await;
    assert_eq!(status, 413);
    assert!(
        reply["error"].as_str().unwrap().starts_with("batch[1]"),
        "{reply}"
    );
    // Encrypted channels cannot share an event with other channels.
    let (status, _) = post(
        json!({"name": "e", "channels": ["private-encrypted-a", "b"], "data": "d"}),
        events_path(),
    )
    .await;
    assert_eq!(status, 400);
}

async fn malformed_bodies_get_400(backend: &'static str) {
    let server = Server::start(backend, &["--max-request-body", "4096"]);
    for (body, what) in [
        (json!({"channel": "c", "data": "d"}), "name"),
        (json!({"name": "e", "channel": "c"}), "data"),
        (json!({"name": "e", "data": "d"}), "channels"),
        (
            json!({"name": "e", "channel": "c", "channels": ["c"], "data": "d"}),
            "either",
        ),
        (
            json!({"name": "e", "channel": "bad channel", "data": "d"}),
            "invalid channel",
        ),
        (
            json!({"name": "", "channel": "c", "data": "d"}),
            "event name",
        ),
        (
            json!({"name": "e", "channel": "c", "data": "d", "info": "bogus"}),
            "info",
        ),
    ] {
        let (status, reply) = api(&server, "POST", &events_path(), &[], Some(&body)).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains(what),
            "{what}: {reply}"
        );
    }
    // Not JSON at all.
    let raw = b"{not json".to_vec();
    let url = signed_url(&server, "POST", &events_path(), &[], &raw, now_secs());
    let (status, reply) = send_raw("POST", &url, raw).await;
    assert_eq!(status, 400);
    assert!(reply["error"].as_str().unwrap().contains("JSON"));
    // Over --max-request-body: 413 before the signature is even checked.
    let huge = vec![b' '; 5000];
    let (status, _) = send_raw("POST", &server.http(&events_path()), huge).await;
    assert_eq!(status, 413);
    // Laravel names events after PHP classes: backslashes are fine.
    let (status, _) = api(
        &server,
        "POST",
        &events_path(),
        &[],
        Some(&json!({"name": "App\\Events\\OrderShipped", "channel": "c", "data": "{}"})),
    )
    .await;
    assert_eq!(status, 200);
}

async fn unknown_apps_and_methods_get_404_and_405(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let (status, reply) = api(&server, "POST", "/apps/nope/events", &[], Some(&json!({}))).await;
    assert_eq!(status, 404, "{reply}");
    let (status, _) = api(&server, "GET", &events_path(), &[], None).await;
    assert_eq!(status, 405);
    let (status, _) = api(
        &server,
        "GET",
        &format!("/apps/{APP_ID}/whatever"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, reply) = send_raw("GET", &server.http("/no/such/path"), vec![]).await;
    assert_eq!(status, 404);
    assert!(reply["error"].is_string());
    // /app/{key} without an upgrade is a clear 400.
    let (status, reply) = send_raw("GET", &server.http("/app/app-key?protocol=7"), vec![]).await;
    assert_eq!(status, 400);
    assert!(reply["error"].as_str().unwrap().contains("upgrade"));
}

async fn channel_queries_report_occupancy_and_counts(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect(&server).await;
        c.subscribe("room-1").await;
        clients.push(c);
    }
    clients[0].subscribe("room-2").await;
    clients[1].subscribe("lobby").await;
    let list = format!("/apps/{APP_ID}/channels");
    let (status, body) = api(&server, "GET", &list, &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"channels": {"lobby": {}, "room-1": {}, "room-2": {}}})
    );
    let (_, body) = api(
        &server,
        "GET",
        &list,
        &[
            ("filter_by_prefix", "room-"),
            ("info", "subscription_count"),
        ],
        None,
    )
    .await;
    assert_eq!(
        body,
        json!({"channels": {"room-1": {"subscription_count": 5}, "room-2": {"subscription_count": 1}}})
    );
    // user_count needs a presence- prefix filter.
    let (status, _) = api(&server, "GET", &list, &[("info", "user_count")], None).await;
    assert_eq!(status, 400);
    let (status, body) = api(
        &server,
        "GET",
        &list,
        &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        None,
    )
    .await;
    assert_eq!((status, body), (200, json!({"channels": {}})));

    let one = format!("/apps/{APP_ID}/channels/room-1");
    let (_, body) = api(
        &server,
        "GET",
        &one,
        &[("info", "subscription_count")],
        None,
    )
    .await;
    assert_eq!(body, json!({"occupied": true, "subscription_count": 5}));
    let (_, body) = api(
        &server,
        "GET",
        &format!("/apps/{APP_ID}/channels/empty"),
        &[],
        None,
    )
    .await;
    assert_eq!(body, json!({"occupied": false}));
    let (status, _) = api(&server, "GET", &one, &[("info", "user_count")], None).await;
    assert_eq!(status, 400);
    let (status, _) = api(&server, "GET", &format!("{one}/users"), &[], None).await;
    assert_eq!(status, 400);

    // Leaving updates the counts; the last to leave vacates the channel.
    drop(clients.drain(2..).collect::<Vec<_>>());
    let counted = json!({"occupied": true, "subscription_count": 2});
    eventually_api(&server, &one, &[("info", "subscription_count")], counted).await;
    drop(clients);
    eventually_api(&server, &list, &[], json!({"channels": {}})).await;
}

async fn events_reply_with_requested_info(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.subscribe("x").await;
    b.subscribe("x").await;
    let (status, body) = api(
        &server,
        "POST",
        &events_path(),
        &[],
        Some(&json!({"name": "e", "channels": ["x", "y"], "data": "d", "info": "subscription_count"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"channels": {"x": {"subscription_count": 2}, "y": {"subscription_count": 0}}})
    );
    let (_, body) = api(
        &server,
        "POST",
        &format!("/apps/{APP_ID}/batch_events"),
        &[],
        Some(&json!({"batch": [
            {"name": "e", "channel": "x", "data": "d", "info": "subscription_count"},
            {"name": "e", "channel": "x", "data": "d"}
        ]})),
    )
    .await;
    assert_eq!(body, json!({"batch": [{"subscription_count": 2}, {}]}));
}

async fn health_readiness_and_metrics(backend: &'static str) {
    let server = Server::start(backend, &[]);
    // The metrics listener has the details; the public port only the status.
    let (status, body) = send_raw("GET", &server.http("/healthz"), vec![]).await;
    assert_eq!((status, body), (200, json!({"status": "ready"})));
    let (_, body) = send_raw("GET", &server.http("/"), vec![]).await;
    assert_eq!(
        body,
        json!({"name": "ringcast", "protocol": 7}),
        "no version or backend"
    );
    let (_, body) = send_raw("GET", &server.metrics_url("/"), vec![]).await;
    assert!(
        body["version"].is_string() && body["backend"].is_string(),
        "{body}"
    );
    for url in [server.metrics_url("/healthz")] {
        let (status, body) = send_raw("GET", &url, vec![]).await;
        assert_eq!(status, 200, "{url}: {body}");
        assert_eq!(body["workers"].as_array().unwrap().len(), 2, "{body}");
        assert!(
            body["workers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["alive"] == true),
            "{body}"
        );
    }
    for url in [server.http("/readyz"), server.metrics_url("/readyz")] {
        let (status, body) = send_raw("GET", &url, vec![]).await;
        assert_eq!(
            (status, &body["status"]),
            (200, &json!("ready")),
            "{url}: {body}"
        );
    }
    let _c = Client::connect(&server).await;
    let total = server.metric("ringcast_connections", 0).await
        + server.metric("ringcast_connections", 1).await;
    assert_eq!(total, 1);
    let text = server.metrics_text().await;
    let backend_name = if backend == "uring" {
        "io_uring"
    } else {
        "epoll"
    };
    assert!(
        text.contains(&format!("backend=\"{backend_name}\"")),
        "{text}"
    );
    // Metrics are not on the public port.
    let (status, body) = send_raw("GET", &server.http("/metrics"), vec![]).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--metrics-port"));
}

async fn disabled_app_api_gets_403(backend: &'static str) {
    let dir = std::env::temp_dir().join(format!("ringcast-api-{}-{backend}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let apps = dir.join("apps.toml");
    std::fs::write(
        &apps,
        "[[app]]\nid = \"9\"\nkey = \"k9\"\nsecret = \"s9\"\nenabled = false\n",
    )
    .unwrap();
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    let body = json!({"name": "e", "channel": "c", "data": "d"})
        .to_string()
        .into_bytes();
    let url = signed_url_with(
        &server,
        "k9",
        "s9",
        "POST",
        "/apps/9/events",
        &[],
        &body,
        now_secs(),
    );
    let (status, reply) = send_raw("POST", &url, body).await;
    assert_eq!(status, 403, "{reply}");
}

async fn a_slow_request_is_judged_by_the_apps_when_its_body_arrives(backend: &'static str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let apps = common::apps_file("[[app]]\nid = \"9\"\nkey = \"k9\"\nsecret = \"s9\"\n");
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    let body = json!({"name": "e", "channel": "c", "data": "d"})
        .to_string()
        .into_bytes();
    let url = signed_url_with(
        &server,
        "k9",
        "s9",
        "POST",
        "/apps/9/events",
        &[],
        &body,
        now_secs(),
    );
    let target = url.strip_prefix(&server.http("")).unwrap();
    // Headers and half the body, signed with the secret of now…
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST {target} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        server.addr,
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..body.len() / 2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // …then the app is disabled by a reload before the rest arrives.
    std::fs::write(
        &apps,
        "[[app]]\nid = \"9\"\nkey = \"k9\"\nsecret = \"s9\"\nenabled = false\n",
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("apps reloaded").await;
    s.write_all(&body[body.len() / 2..]).await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(common::WAIT, s.read_to_string(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
}
