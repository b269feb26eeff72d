//! The live console's HTTP interface (`/console/api/…` on the metrics listener), on both IO
//! backends: what a developer sees of real connections, subscriptions, API publishes, client
//! events, presence members, sign-ins and webhook deliveries; publishing through the
//! console; and who may use it (token, loopback, `Host`, `Origin`). The page itself is
//! driven in a real browser by `tests/console_browser.rs`.

mod common;

use std::time::{Duration, Instant};

use common::hooks::{Answer, Receiver};
use common::{publish, Client, Server, APP_ID, WAIT};
use serde_json::{json, Value};

on_both_backends!(
    the_event_log_shows_what_happens_on_the_app,
    the_console_publishes_through_the_http_api,
    channels_members_and_a_users_connections_are_listed,
    webhook_deliveries_show_failures_and_retries,
    counts_and_rates_are_streamed_each_second,
    with_a_token_every_call_needs_it,
    off_loopback_the_console_needs_a_token,
    without_a_token_only_loopback_hosts_and_same_origin_requests_are_served,
    a_stream_resumes_after_what_the_page_has,
);

/// One Server-Sent Events stream of the console, read as it arrives.
struct Stream {
    resp: reqwest::Response,
    buf: String,
    events: Vec<(String, Value)>,
}

impl Stream {
    async fn open(server: &Server, app: &str) -> Stream {
        let url = server.metrics_url(&format!("/console/api/apps/{app}/stream"));
        let resp = reqwest::get(url).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"],
            "text/event-stream; charset=utf-8"
        );
        let mut s = Stream {
            resp,
            buf: String::new(),
            events: Vec::new(),
        };
        // The first counts mean the stream (and so the log) is on.
        s.next_matching(|e, _| e == "stats").await;
        s
    }

    /// Waits for the next event for which `want(event, data)` holds; returns its data.
    async fn next_matching(&mut self, want: impl Fn(&str, &Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            while let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let mut event = "message".to_string();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = e.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let data: Value = serde_json::from_str(&data).unwrap();
                self.events.push((event.clone(), data.clone()));
                if want(&event, &data) {
                    return data;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(other) => panic!("stream ended: {other:?}; seen {:?}", self.events),
                Err(_) => panic!("not seen in time; seen {:#?}", self.events),
            }
        }
    }

    /// Waits for a log entry of `kind` on `channel` (any channel if `None`).
    async fn log(&mut self, kind: &str, channel: Option<&str>) -> Value {
        self.next_matching(|e, d| {
            e == "log" && d["type"] == kind && channel.is_none_or(|c| d["channel"] == c)
        })
        .await
    }
}

async fn get(server: &Server, path: &str) -> (u16, Value) {
    let resp = reqwest::get(server.metrics_url(path)).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(server.metrics_url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Connections, subscriptions and their errors, API publishes, client events, presence
/// joins and leaves, sign-ins and closes each appear in the log, in order, with their
/// details.
async fn the_event_log_shows_what_happens_on_the_app(backend: &'static str) {
    let apps = common::demo_app_with("client_events = true");
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    let mut log = Stream::open(&server, APP_ID).await;

    let mut c = Client::connect(&server).await;
    let opened = log.log("connection_opened", None).await;
    assert_eq!(opened["socket_id"], c.socket_id.as_str());

    c.subscribe("news").await;
    let sub = log.log("subscribed", Some("news")).await;
    assert_eq!(sub["socket_id"], c.socket_id.as_str());

    // A private channel without a valid signature is refused: the error is logged.
    c.send(json!({"event": "pusher:subscribe", "data": {"channel": "private-x", "auth": "app-key:bad"}}))
        .await;
    let refused = log.log("subscription_error", Some("private-x")).await;
    assert_eq!(refused["socket_id"], c.socket_id.as_str());
    assert!(
        refused["detail"].as_str().unwrap().contains("AuthError"),
        "{refused}"
    );

    publish(&server, &["news"], "headline", r#"{"title":"hi"}"#).await;
    let published = log.log("api_message", Some("news")).await;
    assert_eq!(published["event"], "headline");
    assert_eq!(published["detail"], r#"{"title":"hi"}"#);

    c.send_private_subscribe("private-chat").await;
    log.log("subscribed", Some("private-chat")).await;
    c.send(json!({"event": "client-typing", "channel": "private-chat", "data": {"who": "ann"}}))
        .await;
    let client = log.log("client_event", Some("private-chat")).await;
    assert_eq!(client["event"], "client-typing");
    assert_eq!(client["socket_id"], c.socket_id.as_str());
    assert_eq!(client["detail"], r#"{"who":"ann"}"#);

    c.send_presence_subscribe(
        "presence-room",
        &json!({"user_id": "7", "user_info": {"name": "Ann"}}),
    )
    .await;
    let added = log.log("member_added", Some("presence-room")).await;
    assert_eq!(added["detail"], "7");
    c.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-room"}}))
        .await;
    log.log("unsubscribed", Some("presence-room")).await;
    let removed = log.log("member_removed", Some("presence-room")).await;
    assert_eq!(removed["detail"], "7");

    c.send_signin(&json!({"id": "ann"})).await;
    let signed = log.log("signed_in", None).await;
    assert_eq!(signed["detail"], "ann");

    let socket = c.socket_id.clone();
    drop(c);
    let closed = log.log("connection_closed", None).await;
    assert_eq!(closed["socket_id"], socket.as_str());
    assert!(
        closed["detail"].as_str().unwrap().starts_with("code ")
            || closed["detail"] == "lost: no close frame",
        "{closed}"
    );

    // Entries are numbered in order.
    let seqs: Vec<u64> = log
        .events
        .iter()
        .filter(|(e, _)| e == "log")
        .map(|(_, d)| d["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

/// The publish form's request is signed and sent to the node's HTTP API: a subscriber gets
/// the event, the log shows it as an API message, and the API's refusals come back as they
/// are.
async fn the_console_publishes_through_the_http_api(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut c = Client::connect(&server).await;
    c.subscribe("orders").await;
    let mut log = Stream::open(&server, APP_ID).await;

    let (status, body) = post(
        &server,
        "/console/api/apps/app-id/events",
        json!({"channel": "orders", "name": "created", "data": "{\"id\":1}"}),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    let got = c.recv_event().await;
    assert_eq!(
        got,
        json!({"event": "created", "channel": "orders", "data": "{\"id\":1}"})
    );
    log.log("api_message", Some("orders")).await;
    let api_requests = server
        .metric_sum(
            "ringcast_http_requests_total",
            &[("endpoint", "events"), ("status", "200")],
        )
        .await;
    assert!(api_requests >= 1, "counted as an HTTP API request");

    // The API's own refusal, as it is.
    let (status, body) = post(
        &server,
        "/console/api/apps/app-id/events",
        json!({"channel": "no spaces", "name": "e", "data": "x"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("invalid channel"));
    // The console's own checks.
    let (status, body) = post(
        &server,
        "/console/api/apps/app-id/events",
        json!({"name": "e"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = post(&server, "/console/api/apps/nope/events", json!({})).await;
    assert_eq!(status, 404);
    let resp = reqwest::Client::new()
        .post(server.metrics_url("/console/api/apps/app-id/events"))
        .header("content-type", "text/plain")
        .body("channel=orders")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415, "a cross-site form post is not JSON");
    assert!(c.try_recv(Duration::from_millis(300)).await.is_none());
}

/// Channels with their kinds and counts (by prefix), a presence channel's members with
/// their `user_info`, and the connections a user signed in on.
async fn channels_members_and_a_users_connections_are_listed(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.subscribe("news").await;
    b.subscribe("news").await;
    a.send_private_subscribe("private-a").await;
    a.recv_event().await;
    b.send_presence_subscribe(
        "presence-room",
        &json!({"user_id": "7", "user_info": {"name": "Ann"}}),
    )
    .await;
    b.recv_event().await;
    a.send_signin(&json!({"id": "ann"})).await;
    b.send_signin(&json!({"id": "ann"})).await;
    a.recv_event().await;
    b.recv_event().await;

    let (status, body) = get(&server, "/console/api/apps/app-id/channels").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"channels": [
            {"name": "news", "kind": "public", "subscription_count": 2},
            {"name": "presence-room", "kind": "presence", "subscription_count": 1, "user_count": 1},
            {"name": "private-a", "kind": "private", "subscription_count": 1},
        ], "truncated": false})
    );
    let (_, body) = get(&server, "/console/api/apps/app-id/channels?prefix=pr").await;
    let names: Vec<&str> = body["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["presence-room", "private-a"]);

    let (status, body) = get(
        &server,
        "/console/api/apps/app-id/channels/presence-room/members",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"channel": "presence-room", "members": [{"user_id": "7", "user_info": {"name": "Ann"}}]})
    );
    let (status, _) = get(&server, "/console/api/apps/app-id/channels/news/members").await;
    assert_eq!(status, 400, "not a presence channel");

    let (status, body) = get(&server, "/console/api/apps/app-id/users/ann/connections").await;
    assert_eq!(status, 200);
    let mut sockets: Vec<&str> = body["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["socket_id"].as_str().unwrap())
        .collect();
    sockets.sort();
    let mut want = vec![a.socket_id.as_str(), b.socket_id.as_str()];
    want.sort();
    assert_eq!(sockets, want);
    drop(a);
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = get(&server, "/console/api/apps/app-id/users/ann/connections").await;
        if body["connections"] == json!([{"socket_id": b.socket_id}]) {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body) = get(&server, "/console/api/apps/app-id/users/nobody/connections").await;
    assert_eq!(body, json!({"user_id": "nobody", "connections": []}));
    let (status, _) = get(&server, "/console/api/apps/nope/channels").await;
    assert_eq!(status, 404);
}

/// A webhook the receiver answers with 500 shows as retrying with that status and its next
/// attempt, then as delivered; the log says both.
async fn webhook_deliveries_show_failures_and_retries(backend: &'static str) {
    let rx = Receiver::start(vec![Answer::Status(500)]).await;
    let server = Server::start(backend, &["--webhook-url", &rx.url]);
    let mut log = Stream::open(&server, APP_ID).await;
    let mut c = Client::connect(&server).await;
    c.subscribe("room").await;

    let failed = log.log("webhook_retrying", None).await;
    let detail = failed["detail"].as_str().unwrap();
    assert!(
        detail.contains("channel_occupied") && detail.contains("HTTP 500"),
        "{detail}"
    );
    let (_, body) = get(&server, "/console/api/apps/app-id/webhooks").await;
    let d = &body["deliveries"][0];
    assert_eq!(d["state"], "retrying", "{body}");
    assert_eq!(d["http_status"], 500);
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["events"], json!(["channel_occupied"]));
    assert_eq!(d["url"], rx.url.as_str());
    assert!(d["next_retry_at"].as_u64().unwrap() > d["at"].as_u64().unwrap());

    log.log("webhook_sent", None).await;
    let (_, body) = get(&server, "/console/api/apps/app-id/webhooks").await;
    let d = &body["deliveries"][0];
    assert_eq!(d["state"], "delivered", "{body}");
    assert_eq!(
        (d["http_status"].clone(), d["attempts"].clone()),
        (json!(200), json!(2))
    );
    assert_eq!(d["next_retry_at"], Value::Null);
    assert_eq!(rx.wait_for(2).await.len(), 2);
}

/// Each second the stream carries the app's connections, channels by kind and messages in
/// and out per second.
async fn counts_and_rates_are_streamed_each_second(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&server).await;
        c.subscribe("ticker").await;
        subs.push(c);
    }
    subs[0].send_private_subscribe("private-p").await;
    subs[0].recv_event().await;
    let mut log = Stream::open(&server, APP_ID).await;
    // Publish for 2.5 s (the stream's events wait in the response meanwhile).
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        publish(&server, &["ticker"], "t", "1").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A whole second of publishing.
    let stats = log
        .next_matching(|e, d| {
            e == "stats" && d["messages_in_per_second"].as_f64().unwrap_or(0.0) >= 10.0
        })
        .await;
    assert_eq!(stats["connections"], 3, "{stats}");
    assert_eq!(
        stats["channels"],
        json!({"public": 1, "private": 1, "encrypted": 0, "presence": 0, "cache": 0})
    );
    let rate_in = stats["messages_in_per_second"].as_f64().unwrap();
    let rate_out = stats["messages_out_per_second"].as_f64().unwrap();
    // Every event published reaches the three subscribers.
    assert!(rate_in > 0.0, "{stats}");
    assert!(
        (rate_out / rate_in - 3.0).abs() < 1.0,
        "three deliveries per event: {stats}"
    );
}

const TOKEN: &str = "console-token-0123456789";

async fn status_with(server: &Server, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(server.metrics_url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// With `--console-token`, the API answers 401 (asking to log in) without it; the bearer
/// token or the cookie that logging in sets opens it; a wrong token does not; logging out
/// closes it again. The page itself (no data) is served to anyone.
async fn with_a_token_every_call_needs_it(backend: &'static str) {
    let server = Server::start(backend, &["--console-token", TOKEN]);
    let (status, body) = status_with(&server, "/console/api/apps", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body["login"], true, "{body}");
    let bearer = format!("Bearer {TOKEN}");
    let (status, body) =
        status_with(&server, "/console/api/apps", &[("authorization", &bearer)]).await;
    assert_eq!(status, 200);
    assert_eq!(body["apps"][0]["id"], APP_ID);
    let wrong = format!("Bearer {TOKEN}x");
    assert_eq!(
        status_with(&server, "/console/api/apps", &[("authorization", &wrong)])
            .await
            .0,
        401
    );

    let (status, _) = post(&server, "/console/api/login", json!({"token": "nope"})).await;
    assert_eq!(status, 401);
    let resp = reqwest::Client::new()
        .post(server.metrics_url("/console/api/login"))
        .json(&json!({ "token": TOKEN }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains(TOKEN),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let (status, body) = status_with(&server, "/console/api/session", &[("cookie", &cookie)]).await;
    assert_eq!(status, 200);
    assert_eq!(body["auth"], "token");
    let (status, _) = status_with(
        &server,
        "/console/api/session",
        &[("cookie", "ringcast_console=00")],
    )
    .await;
    assert_eq!(status, 401, "a made-up cookie");

    let page = reqwest::get(server.metrics_url("/console")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"));

    let resp = reqwest::Client::new()
        .post(server.metrics_url("/console/api/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
}

/// On a metrics listener bound off loopback, the console without a token is off and says
/// why (the metrics stay served); with a token it asks for it. A token under 16 characters
/// is refused at start-up.
async fn off_loopback_the_console_needs_a_token(backend: &'static str) {
    let server = Server::start(backend, &["--metrics-host", "0.0.0.0"]);
    server.wait_for_log("console disabled").await;
    let (status, body) = status_with(&server, "/console/api/session", &[]).await;
    assert_eq!(status, 403);
    assert!(
        body["error"].as_str().unwrap().contains("--console-token"),
        "{body}"
    );
    assert_eq!(
        reqwest::get(server.metrics_url("/metrics"))
            .await
            .unwrap()
            .status(),
        200
    );
    drop(server);

    let server = Server::start(
        backend,
        &["--metrics-host", "0.0.0.0", "--console-token", TOKEN],
    );
    assert_eq!(
        status_with(&server, "/console/api/session", &[]).await.0,
        401
    );
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(
        status_with(
            &server,
            "/console/api/session",
            &[("authorization", &bearer)]
        )
        .await
        .0,
        200
    );
    drop(server);

    let err = Server::try_start(backend, &["--console-token", "short"])
        .err()
        .expect("a short token is refused");
    assert!(
        err.iter().any(|l| l.contains("at least 16 characters")),
        "{err:?}"
    );

    let server = Server::start(backend, &["--no-console"]);
    assert_eq!(
        status_with(&server, "/console/api/session", &[]).await.0,
        404
    );
    assert_eq!(
        reqwest::get(server.metrics_url("/console"))
            .await
            .unwrap()
            .status(),
        404
    );
}

/// Without a token, a request naming another host (a DNS-rebinding page) or coming from
/// another origin is refused.
async fn without_a_token_only_loopback_hosts_and_same_origin_requests_are_served(
    backend: &'static str,
) {
    let server = Server::start(backend, &[]);
    let port = server.metrics_addr().port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, _) = status_with(&server, "/console/api/apps", &[("host", &host)]).await;
        assert_eq!(status, 200, "{host}");
    }
    let (status, body) = status_with(
        &server,
        "/console/api/apps",
        &[("host", &format!("attacker.example:{port}"))],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let origin = format!("http://127.0.0.1:{port}");
    let host = format!("127.0.0.1:{port}");
    assert_eq!(
        status_with(
            &server,
            "/console/api/apps",
            &[("host", &host), ("origin", &origin)]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        status_with(
            &server,
            "/console/api/apps",
            &[("host", &host), ("origin", "http://attacker.example")]
        )
        .await
        .0,
        403
    );
    // A browser saying the request comes from another site, or another port of this one.
    for site in ["cross-site", "same-site"] {
        let (status, _) =
            status_with(&server, "/console/api/apps", &[("sec-fetch-site", site)]).await;
        assert_eq!(status, 403, "{site}");
    }
    let (status, _) = status_with(
        &server,
        "/console/api/apps",
        &[("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(status, 200);
    // Through a local reverse proxy anyone looks local: refused without a token.
    for header in ["x-forwarded-for", "forwarded", "x-real-ip", "via"] {
        let (status, body) =
            status_with(&server, "/console/api/apps", &[(header, "1.2.3.4")]).await;
        assert_eq!(status, 403, "{header}: {body}");
        assert!(body["error"].as_str().unwrap().contains("proxy"), "{body}");
    }
}

/// A browser resuming with an entry number this log never reached (the server restarted)
/// is told to start over, then gets the log from its start; `?after=` resumes a stream
/// after an entry it has.
async fn a_stream_resumes_after_what_the_page_has(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut first = Stream::open(&server, APP_ID).await;
    publish(&server, &["a"], "one", "1").await;
    let one = first.log("api_message", Some("a")).await;
    publish(&server, &["a"], "two", "2").await;
    first.log("api_message", Some("a")).await;

    let url = server.metrics_url("/console/api/apps/app-id/stream");
    let resp = reqwest::Client::new()
        .get(&url)
        .header("last-event-id", "99999")
        .send()
        .await
        .unwrap();
    let mut restarted = Stream {
        resp,
        buf: String::new(),
        events: Vec::new(),
    };
    restarted.next_matching(|e, _| e == "reset").await;
    restarted.log("log_started", None).await;

    let after = one["seq"].as_u64().unwrap();
    let resp = reqwest::get(format!("{url}?after={after}")).await.unwrap();
    let mut resumed = Stream {
        resp,
        buf: String::new(),
        events: Vec::new(),
    };
    let next = resumed.log("api_message", Some("a")).await;
    assert_eq!(next["event"], "two", "resumes after entry {after}");
}
