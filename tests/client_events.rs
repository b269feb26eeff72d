//! Client events (`client-*`): each rule of who may send what where, over real sockets,
//! on both IO backends.

mod common;

use std::time::Duration;

use common::{demo_app_with, one_per_worker, publish, Client, Server, APP_KEY};
use serde_json::{json, Value};

on_both_backends!(
    client_events_reach_other_subscribers_but_not_the_sender,
    presence_client_events_carry_the_senders_user_id,
    client_events_are_refused_where_they_are_not_allowed,
    client_events_need_the_app_to_enable_them,
    client_events_beyond_the_rate_get_4301,
);

async fn join_private(c: &mut Client, channel: &str) {
    c.send_private_subscribe(channel).await;
    let msg = c.recv().await;
    assert_eq!(
        msg["event"], "pusher_internal:subscription_succeeded",
        "{msg}"
    );
}

async fn expect_refused(c: &mut Client, contains: &str) {
    let msg = c.recv().await;
    assert_eq!(msg["event"], "pusher:error", "{msg}");
    assert!(
        msg["data"]["message"].as_str().unwrap().contains(contains),
        "want {contains:?} in {msg}"
    );
}

/// Publishes a marker through the API and checks it is the next thing `c` receives: so
/// nothing else (an echo of its own client event) was queued before it.
async fn next_is_marker(server: &Server, c: &mut Client, channel: &str) {
    publish(server, &[channel], "marker", "m").await;
    let msg = c.recv().await;
    assert_eq!(
        msg["event"], "marker",
        "expected nothing before the marker: {msg}"
    );
}

async fn client_events_reach_other_subscribers_but_not_the_sender(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let channel = "private-chat";
    // Sender and receivers on different workers.
    let mut clients = one_per_worker(&server, APP_KEY, 2).await;
    let mut third = Client::connect(&server).await;
    for c in clients.iter_mut().chain(std::iter::once(&mut third)) {
        join_private(c, channel).await;
    }
    let body = json!({"text": "hi", "n": [1, 2.5, null]});
    clients[0]
        .send(json!({"event": "client-typing", "channel": channel, "data": body}))
        .await;
    for c in [&mut clients[1], &mut third] {
        let msg = c.recv().await;
        assert_eq!(msg["event"], "client-typing", "{msg}");
        assert_eq!(msg["channel"], channel);
        assert_eq!(msg["data"], body, "data arrives as the sender wrote it");
        assert_eq!(msg.get("user_id"), None, "no user_id on private channels");
    }
    next_is_marker(&server, &mut clients[0], channel).await;
}

async fn presence_client_events_carry_the_senders_user_id(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let channel = "presence-game";
    let mut a = Client::connect(&server).await;
    a.send_presence_subscribe(channel, &json!({"user_id": "alice"}))
        .await;
    assert_eq!(
        a.recv().await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let mut b = Client::connect(&server).await;
    b.send_presence_subscribe(channel, &json!({"user_id": "bob"}))
        .await;
    assert_eq!(
        b.recv().await["event"],
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(a.recv().await["event"], "pusher_internal:member_added");
    // A user_id the sender puts in is replaced by the one it joined with.
    b.send(
        json!({"event": "client-move", "channel": channel, "data": {"x": 1}, "user_id": "alice"}),
    )
    .await;
    let msg = a.recv().await;
    assert_eq!(msg["event"], "client-move", "{msg}");
    assert_eq!(msg["user_id"], "bob");
    assert_eq!(msg["data"], json!({"x": 1}));
    next_is_marker(&server, &mut b, channel).await;
}

async fn client_events_are_refused_where_they_are_not_allowed(backend: &'static str) {
    let server = Server::start(backend, &["--max-event-size", "100"]);
    let mut c = Client::connect(&server).await;
    let mut other = Client::connect(&server).await;
    c.subscribe("public").await;
    other.subscribe("public").await;
    join_private(&mut other, "private-x").await;

    // On a public channel.
    c.send(json!({"event": "client-a", "channel": "public", "data": {}}))
        .await;
    expect_refused(&mut c, "private and presence").await;
    // On a private channel this connection is not subscribed to.
    c.send(json!({"event": "client-a", "channel": "private-x", "data": {}}))
        .await;
    expect_refused(&mut c, "not subscribed").await;
    // Without a channel.
    c.send(json!({"event": "client-a", "data": {}})).await;
    expect_refused(&mut c, "channel").await;
    join_private(&mut c, "private-x").await;
    // Too big, too long a name.
    c.send(json!({"event": "client-a", "channel": "private-x", "data": {"x": "y".repeat(200)}}))
        .await;
    expect_refused(&mut c, "bytes").await;
    c.send(
        json!({"event": format!("client-{}", "n".repeat(200)), "channel": "private-x", "data": {}}),
    )
    .await;
    expect_refused(&mut c, "name").await;
    // None of it reached the other subscriber; the connection is still served.
    next_is_marker(&server, &mut other, "private-x").await;
    c.send(json!({"event": "client-ok", "channel": "private-x", "data": {}}))
        .await;
    assert_eq!(other.recv().await["event"], "client-ok");
}

async fn client_events_need_the_app_to_enable_them(backend: &'static str) {
    let apps = demo_app_with("client_events = false");
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    join_private(&mut a, "private-x").await;
    join_private(&mut b, "private-x").await;
    a.send(json!({"event": "client-a", "channel": "private-x", "data": {}}))
        .await;
    expect_refused(&mut a, "not enabled").await;
    next_is_marker(&server, &mut b, "private-x").await;
}

async fn client_events_beyond_the_rate_get_4301(backend: &'static str) {
    let apps = demo_app_with("client_events = true\nclient_event_rate = 3");
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    join_private(&mut a, "private-x").await;
    join_private(&mut b, "private-x").await;
    // Ten at once: whatever second boundary they straddle, at most six pass.
    for i in 0..10 {
        a.send(json!({"event": "client-n", "channel": "private-x", "data": {"i": i}}))
            .await;
    }
    let mut refused = 0;
    while let Some(msg) = a.try_recv(Duration::from_millis(500)).await {
        assert_eq!(msg["event"], "pusher:error", "{msg}");
        assert_eq!(msg["data"]["code"], 4301, "{msg}");
        refused += 1;
    }
    assert!(refused >= 4, "only {refused} of 10 refused");
    let mut passed = Vec::new();
    while let Some(msg) = b.try_recv(Duration::from_millis(300)).await {
        passed.push(msg["data"]["i"].as_u64().unwrap());
    }
    assert_eq!(passed.len() + refused, 10, "{passed:?}");
    // The connection stays open and, a second later, may send again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.send(json!({"event": "client-n", "channel": "private-x", "data": {"i": 99}}))
        .await;
    let msg: Value = b.recv().await;
    assert_eq!(msg["data"]["i"], 99);
}
