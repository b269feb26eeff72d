//! Private, encrypted, presence and cache channels and subscription counts, over real
//! sockets, on both IO backends; with the HTTP API's view of the same state.

mod common;

use std::time::Duration;

use common::{
    api, channel_auth, demo_app_with, eventually_api, one_per_worker, publish, Client, Server,
    APP_ID, APP_KEY, APP_SECRET,
};
use serde_json::{json, Value};

on_both_backends!(
    private_channels_need_a_valid_signature,
    encrypted_channels_relay_payloads_untouched,
    presence_tabs_on_several_workers_are_one_member,
    presence_limits_are_enforced_with_clear_errors,
    cache_channels_send_the_last_event_or_cache_miss,
    cache_entries_expire_after_the_apps_ttl,
    subscription_count_is_sent_when_enabled,
    api_reports_presence_users_and_counts,
    api_refuses_attributes_that_do_not_apply,
);

fn data(msg: &Value) -> Value {
    match &msg["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap(),
        other => other.clone(),
    }
}

async fn expect_subscription_error(c: &mut Client, channel: &str, status: u64) -> Value {
    let msg = c.recv_event().await;
    assert_eq!(msg["event"], "pusher:subscription_error", "{msg}");
    assert_eq!(msg["channel"], channel, "{msg}");
    assert_eq!(msg["data"]["status"], status, "{msg}");
    msg
}

async fn expect_succeeded(c: &mut Client, channel: &str) -> Value {
    let msg = c.recv_event().await;
    assert_eq!(
        msg["event"], "pusher_internal:subscription_succeeded",
        "{msg}"
    );
    assert_eq!(msg["channel"], channel, "{msg}");
    msg
}

async fn still_open(c: &mut Client) {
    c.send(json!({"event": "pusher:ping"})).await;
    assert_eq!(c.recv_event().await["event"], "pusher:pong");
}

async fn private_channels_need_a_valid_signature(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut c = Client::connect(&server).await;
    let other = Client::connect(&server).await;
    for channel in ["private-orders", "private-encrypted-orders"] {
        let bad = [
            // No auth at all.
            json!({"channel": channel}),
            // The signature of another socket.
            json!({"channel": channel, "auth": channel_auth(APP_KEY, APP_SECRET, &other.socket_id, channel, None)}),
            // Another channel's signature.
            json!({"channel": channel, "auth": channel_auth(APP_KEY, APP_SECRET, &c.socket_id, "private-other", None)}),
            // The wrong secret.
            json!({"channel": channel, "auth": channel_auth(APP_KEY, "not-the-secret", &c.socket_id, channel, None)}),
            // The wrong key.
            json!({"channel": channel, "auth": channel_auth("other-key", APP_SECRET, &c.socket_id, channel, None)}),
            // Not hex.
            json!({"channel": channel, "auth": format!("{APP_KEY}:zz")}),
        ];
        for data in bad {
            c.send(json!({"event": "pusher:subscribe", "data": data}))
                .await;
            let msg = expect_subscription_error(&mut c, channel, 401).await;
            assert_eq!(msg["data"]["type"], "AuthError", "{msg}");
        }
        still_open(&mut c).await;
        c.send_private_subscribe(channel).await;
        expect_succeeded(&mut c, channel).await;
    }
    // Subscribed, it receives events.
    publish(&server, &["private-orders"], "shipped", r#"{"id":1}"#).await;
    let msg = c.recv_event().await;
    assert_eq!(msg["event"], "shipped");
    assert_eq!(msg["channel"], "private-orders");
    assert_eq!(msg["data"], r#"{"id":1}"#);
    // A prefix counts only at the start: this one is public.
    c.subscribe("public-private-x").await;
}

async fn encrypted_channels_relay_payloads_untouched(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut c = Client::connect(&server).await;
    let channel = "private-encrypted-vault";
    c.send_private_subscribe(channel).await;
    expect_succeeded(&mut c, channel).await;
    // What the server SDKs send for an encrypted channel: nonce and ciphertext, opaque here.
    let payload = r#"{"nonce":"4F2Q5m2bW0nG0jHc6v7B2x1M3k9P0a8S","ciphertext":"t2Yb+u/9xQ=="}"#;
    publish(&server, &[channel], "secret", payload).await;
    let msg = c.recv_event().await;
    assert_eq!(msg["event"], "secret");
    assert_eq!(msg["data"], payload);
    // A publish to several channels including an encrypted one is refused.
    let (status, body) = api(
        &server,
        "POST",
        &format!("/apps/{APP_ID}/events"),
        &[],
        Some(&json!({"name": "e", "channels": ["public", channel], "data": "x"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("encrypted"),
        "{body}"
    );
    // Client events are refused on encrypted channels (the server cannot check them).
    c.send(json!({"event": "client-x", "channel": channel, "data": {}}))
        .await;
    let msg = c.recv_event().await;
    assert_eq!(msg["event"], "pusher:error", "{msg}");
    assert!(
        msg["data"]["message"]
            .as_str()
            .unwrap()
            .contains("encrypted"),
        "{msg}"
    );
}

async fn presence_tabs_on_several_workers_are_one_member(backend: &'static str) {
    let server = Server::start(backend, &["--workers", "2"]);
    let channel = "presence-room";
    let mut watcher = Client::connect(&server).await;
    watcher
        .send_presence_subscribe(channel, &json!({"user_id": "w"}))
        .await;
    let first = expect_succeeded(&mut watcher, channel).await;
    assert_eq!(
        data(&first),
        json!({"presence": {"ids": ["w"], "hash": {"w": null}, "count": 1}})
    );

    // Two tabs of user 7, one on each worker.
    let mut tabs = one_per_worker(&server, APP_KEY, 2).await;
    let info = json!({"name": "Ann"});
    tabs[0]
        .send_presence_subscribe(channel, &json!({"user_id": 7, "user_info": info}))
        .await;
    let ok = expect_succeeded(&mut tabs[0], channel).await;
    let d = data(&ok);
    assert_eq!(d["presence"]["count"], 2, "{d}");
    assert_eq!(d["presence"]["hash"]["7"], info);
    let added = watcher.recv_event().await;
    assert_eq!(added["event"], "pusher_internal:member_added", "{added}");
    assert_eq!(data(&added), json!({"user_id": "7", "user_info": info}));

    tabs[1]
        .send_presence_subscribe(channel, &json!({"user_id": 7, "user_info": info}))
        .await;
    let ok = expect_succeeded(&mut tabs[1], channel).await;
    assert_eq!(data(&ok)["presence"]["count"], 2, "one member, two tabs");
    // The first tab hears nothing about its own user's second tab.
    assert_eq!(tabs[0].try_recv(Duration::from_millis(300)).await, None);
    eventually_api(
        &server,
        &format!("/apps/{APP_ID}/channels/{channel}/users"),
        &[],
        json!({"users": [{"id": "w"}, {"id": "7"}]}),
    )
    .await;

    // Closing one tab leaves the member in place; closing the last removes it.
    drop(tabs.remove(0));
    eventually_api(
        &server,
        &format!("/apps/{APP_ID}/channels/{channel}"),
        &[("info", "subscription_count,user_count")],
        json!({"occupied": true, "subscription_count": 2, "user_count": 2}),
    )
    .await;
    tabs[0]
        .send(json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}))
        .await;
    let removed = watcher.recv_event().await;
    assert_eq!(
        removed["event"], "pusher_internal:member_removed",
        "the watcher got {removed} before member_removed (a member_added or member_removed for a second tab?)"
    );
    assert_eq!(data(&removed), json!({"user_id": "7"}));
    assert_eq!(
        watcher.try_recv(Duration::from_millis(300)).await,
        None,
        "one member_removed only"
    );
}

async fn presence_limits_are_enforced_with_clear_errors(backend: &'static str) {
    let apps = demo_app_with("max_presence_members = 2\nmax_presence_user_info = 64");
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    let channel = "presence-small";
    let mut members = Vec::new();
    for id in ["a", "b"] {
        let mut c = Client::connect(&server).await;
        c.send_presence_subscribe(channel, &json!({"user_id": id}))
            .await;
        expect_succeeded(&mut c, channel).await;
        members.push(c);
    }
    let mut c = Client::connect(&server).await;
    // A third user: the channel is full.
    c.send_presence_subscribe(channel, &json!({"user_id": "c"}))
        .await;
    let msg = expect_subscription_error(&mut c, channel, 403).await;
    assert!(
        msg["data"]["error"].as_str().unwrap().contains("maximum"),
        "{msg}"
    );
    // Another tab of a member still gets in.
    c.send_presence_subscribe(channel, &json!({"user_id": "a"}))
        .await;
    expect_succeeded(&mut c, channel).await;

    let mut c = Client::connect(&server).await;
    let other = "presence-other";
    let too_long = "x".repeat(129);
    let big_info = json!({"bio": "y".repeat(80)});
    for (channel_data, why) in [
        (json!({"user_id": too_long}), "128"),
        (json!({"user_id": ""}), "user_id"),
        (json!({"user_info": {}}), "user_id"),
        (json!({"user_id": "d", "user_info": big_info}), "user_info"),
    ] {
        c.send_presence_subscribe(other, &channel_data).await;
        let msg = expect_subscription_error(&mut c, other, 400).await;
        assert!(
            msg["data"]["error"].as_str().unwrap().contains(why),
            "{channel_data}: {msg}"
        );
    }
    // Signed, but not JSON.
    let auth = channel_auth(APP_KEY, APP_SECRET, &c.socket_id, other, Some("not json"));
    c.send(json!({"event": "pusher:subscribe", "data": {"channel": other, "auth": auth, "channel_data": "not json"}}))
        .await;
    expect_subscription_error(&mut c, other, 400).await;
    // channel_data changed after signing.
    let auth = channel_auth(
        APP_KEY,
        APP_SECRET,
        &c.socket_id,
        other,
        Some(r#"{"user_id":"e"}"#),
    );
    c.send(json!({"event": "pusher:subscribe", "data": {"channel": other, "auth": auth, "channel_data": r#"{"user_id":"admin"}"#}}))
        .await;
    expect_subscription_error(&mut c, other, 401).await;
    still_open(&mut c).await;
    // Nothing was added to the channel by the failures.
    eventually_api(
        &server,
        &format!("/apps/{APP_ID}/channels/{other}"),
        &[("info", "user_count")],
        json!({"occupied": false, "user_count": 0}),
    )
    .await;
}

async fn cache_channels_send_the_last_event_or_cache_miss(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut first = Client::connect(&server).await;
    first.subscribe("cache-scores").await;
    let miss = first.recv_event().await;
    assert_eq!(
        miss,
        json!({"event": "pusher:cache_miss", "channel": "cache-scores"})
    );
    publish(&server, &["cache-scores"], "score", "1-0").await;
    publish(&server, &["cache-scores"], "score", "2-0").await;
    for want in ["1-0", "2-0"] {
        assert_eq!(first.recv_event().await["data"], want);
    }
    // A later subscriber gets the last event right after subscription_succeeded, on
    // whichever worker it lands.
    for mut c in one_per_worker(&server, APP_KEY, 2).await {
        c.subscribe("cache-scores").await;
        let cached = c.recv_event().await;
        assert_eq!(
            cached,
            json!({"event": "score", "channel": "cache-scores", "data": "2-0"})
        );
    }
    let (status, body) = api(
        &server,
        "GET",
        &format!("/apps/{APP_ID}/channels/cache-scores"),
        &[("info", "cache")],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cache"]["data"], "2-0");
    let ttl = body["cache"]["ttl"].as_u64().unwrap();
    assert!(ttl > 1700 && ttl <= 1800, "{body}");
    // Private and presence cache channels too.
    let mut c = Client::connect(&server).await;
    c.send_private_subscribe("private-cache-x").await;
    expect_succeeded(&mut c, "private-cache-x").await;
    assert_eq!(c.recv_event().await["event"], "pusher:cache_miss");
    c.send_presence_subscribe("presence-cache-y", &json!({"user_id": "1"}))
        .await;
    expect_succeeded(&mut c, "presence-cache-y").await;
    assert_eq!(c.recv_event().await["event"], "pusher:cache_miss");
}

async fn cache_entries_expire_after_the_apps_ttl(backend: &'static str) {
    let apps = demo_app_with("cache_ttl = 1");
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    publish(&server, &["cache-short"], "e", "x").await;
    let mut c = Client::connect(&server).await;
    c.subscribe("cache-short").await;
    assert_eq!(c.recv_event().await["data"], "x");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut c = Client::connect(&server).await;
    c.subscribe("cache-short").await;
    assert_eq!(c.recv_event().await["event"], "pusher:cache_miss");
    let (_, body) = api(
        &server,
        "GET",
        &format!("/apps/{APP_ID}/channels/cache-short"),
        &[("info", "cache")],
        None,
    )
    .await;
    assert_eq!(body["cache"], Value::Null, "{body}");
}

async fn subscription_count_is_sent_when_enabled(backend: &'static str) {
    // Off by default.
    let server = Server::start(backend, &[]);
    let mut a = Client::connect(&server).await;
    a.subscribe("counted").await;
    let mut b = Client::connect(&server).await;
    b.subscribe("counted").await;
    publish(&server, &["counted"], "marker", "m").await;
    assert_eq!(
        a.recv().await["event"],
        "marker",
        "no count without the flag"
    );
    drop((a, b, server));

    let apps = demo_app_with("subscription_count = true");
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    let count = |msg: &Value| {
        assert_eq!(msg["event"], "pusher_internal:subscription_count", "{msg}");
        assert_eq!(msg["channel"], "counted");
        data(msg)["subscription_count"].as_u64().unwrap()
    };
    let mut clients = one_per_worker(&server, APP_KEY, 2).await;
    clients[0].subscribe("counted").await;
    assert_eq!(count(&clients[0].recv().await), 1);
    clients[1].subscribe("counted").await;
    assert_eq!(count(&clients[0].recv().await), 2);
    assert_eq!(count(&clients[1].recv().await), 2);
    clients[1]
        .send(json!({"event": "pusher:unsubscribe", "data": {"channel": "counted"}}))
        .await;
    assert_eq!(count(&clients[0].recv().await), 1);
}

async fn api_reports_presence_users_and_counts(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut clients = Vec::new();
    for (channel, user) in [
        ("presence-a", "1"),
        ("presence-a", "2"),
        ("presence-a", "2"),
        ("presence-b", "3"),
    ] {
        let mut c = Client::connect(&server).await;
        c.send_presence_subscribe(channel, &json!({"user_id": user}))
            .await;
        expect_succeeded(&mut c, channel).await;
        clients.push(c);
    }
    let mut c = Client::connect(&server).await;
    c.subscribe("public-a").await;
    clients.push(c);

    eventually_api(
        &server,
        &format!("/apps/{APP_ID}/channels"),
        &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        json!({"channels": {"presence-a": {"user_count": 2}, "presence-b": {"user_count": 1}}}),
    )
    .await;
    eventually_api(
        &server,
        &format!("/apps/{APP_ID}/channels/presence-a"),
        &[("info", "user_count,subscription_count")],
        json!({"occupied": true, "user_count": 2, "subscription_count": 3}),
    )
    .await;
    eventually_api(
        &server,
        &format!("/apps/{APP_ID}/channels/presence-a/users"),
        &[],
        json!({"users": [{"id": "1"}, {"id": "2"}]}),
    )
    .await;
    // The events reply carries the counts asked for.
    let (status, body) = api(
        &server,
        "POST",
        &format!("/apps/{APP_ID}/events"),
        &[],
        Some(&json!({"name": "e", "channels": ["presence-a", "public-a"], "data": "x", "info": "user_count,subscription_count"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"channels": {
            "presence-a": {"user_count": 2, "subscription_count": 3},
            "public-a": {"subscription_count": 1},
        }})
    );
    let (status, body) = api(
        &server,
        "POST",
        &format!("/apps/{APP_ID}/batch_events"),
        &[],
        Some(&json!({"batch": [
            {"name": "e", "channel": "presence-b", "data": "x", "info": "user_count"},
            {"name": "e", "channel": "public-a", "data": "x"},
        ]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"batch": [{"user_count": 1}, {}]}));
}

async fn api_refuses_attributes_that_do_not_apply(backend: &'static str) {
    let server = Server::start(backend, &[]);
    for (path, info) in [
        ("/channels/public-a", "user_count"),
        ("/channels/presence-a", "cache"),
        ("/channels/public-a", "members"),
        ("/channels", "user_count"),
    ] {
        let (status, body) = api(
            &server,
            "GET",
            &format!("/apps/{APP_ID}{path}"),
            &[("info", info)],
            None,
        )
        .await;
        assert_eq!(status, 400, "{path}?info={info}: {body}");
        assert!(body["error"].as_str().unwrap().len() > 10, "{body}");
    }
    let (status, body) = api(
        &server,
        "GET",
        &format!("/apps/{APP_ID}/channels/private-a/users"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // A presence channel nobody is in has no users.
    let (status, body) = api(
        &server,
        "GET",
        &format!("/apps/{APP_ID}/channels/presence-empty/users"),
        &[],
        None,
    )
    .await;
    assert_eq!((status, body), (200, json!({"users": []})));
}
