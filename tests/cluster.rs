//! Several ringcast nodes sharing one Redis behave, for clients and the HTTP API, like one
//! server: each client on a different node, the API called on yet another. Redis and the
//! nodes are started by the tests.

mod common;

use std::time::Duration;

use common::redis::{node, Kind, Redis, TlsRedis};
use common::{api, demo_app_with, eventually_api, publish, Client, Server, APP_ID};
use serde_json::{json, Value};

on_backends_and_redis!(
    events_reach_subscribers_on_every_node_in_publish_order,
    a_node_receives_only_the_channels_it_has_subscribers_of,
    presence_is_one_member_list_across_nodes,
    the_api_answers_for_the_whole_cluster,
    cache_channels_replay_on_any_node,
    client_events_and_users_cross_nodes,
    concurrent_joins_on_different_nodes_are_seen_in_one_order,
    a_subscribe_storm_declares_interest_in_batches,
    subscription_counts_cover_every_node,
);

on_both_backends!(nodes_cluster_over_redis_with_tls_and_a_password);

/// Redis and three nodes, or `None` when Redis is not installed (skipped loudly).
async fn cluster(backend: &'static str, kind: Kind) -> Option<(Redis, Vec<Server>)> {
    let redis = Redis::start_kind(kind)?;
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(node(&redis, backend, id, &[]).await);
    }
    Some((redis, nodes))
}

async fn events_reach_subscribers_on_every_node_in_publish_order(
    backend: &'static str,
    kind: Kind,
) {
    let Some((_redis, nodes)) = cluster(backend, kind).await else {
        return;
    };
    let mut on_a = Client::connect(&nodes[0]).await;
    let mut on_b = Client::connect(&nodes[1]).await;
    on_a.subscribe("news").await;
    on_b.subscribe("news").await;
    for i in 0..50 {
        publish(&nodes[2], &["news"], "tick", &i.to_string()).await;
    }
    for c in [&mut on_a, &mut on_b] {
        for i in 0..50 {
            let m = c.recv().await;
            assert_eq!(
                (m["event"].as_str(), m["data"].as_str()),
                (Some("tick"), Some(&*i.to_string())),
                "{m}"
            );
        }
    }
    // The publisher's own socket is left out, whichever node it is on.
    let (status, _) = api(
        &nodes[2],
        "POST",
        &format!("/apps/{APP_ID}/events"),
        &[],
        Some(&json!({"name": "mine", "channel": "news", "data": "x", "socket_id": on_a.socket_id})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(on_b.recv().await["event"], "mine");
    assert_eq!(on_a.try_recv(Duration::from_millis(300)).await, None);
}

async fn a_node_receives_only_the_channels_it_has_subscribers_of(
    backend: &'static str,
    kind: Kind,
) {
    let Some((redis, nodes)) = cluster(backend, kind).await else {
        return;
    };
    let mut on_a = Client::connect(&nodes[0]).await;
    on_a.subscribe("only-a").await;
    let numsub = |redis: &Redis| redis.subscribers(&format!("ringcast:{{{APP_ID}/only-a}}:ev"));
    assert_eq!(numsub(&redis), 1, "only node a listens to the channel");
    let publish_cmd = redis.publish_command();
    let before = redis.calls(publish_cmd);
    for _ in 0..10 {
        publish(&nodes[1], &["only-a"], "e", "{}").await;
    }
    for _ in 0..10 {
        assert_eq!(on_a.recv().await["event"], "e");
    }
    assert_eq!(
        redis.calls(publish_cmd) - before,
        10,
        "one PUBLISH per event, whatever the number of nodes"
    );
    for n in &nodes[1..] {
        assert_eq!(
            n.metric_value("ringcast_broker_events_received_total")
                .await,
            0
        );
    }
    drop(on_a);
    let deadline = std::time::Instant::now() + common::WAIT;
    while numsub(&redis) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "interest not withdrawn"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn presence_is_one_member_list_across_nodes(backend: &'static str, kind: Kind) {
    let Some((_redis, nodes)) = cluster(backend, kind).await else {
        return;
    };
    let channel = "presence-room";
    let mut observer = Client::connect(&nodes[2]).await;
    observer
        .send_presence_subscribe(channel, &json!({"user_id": "obs"}))
        .await;
    assert_eq!(
        observer.recv().await["event"],
        "pusher_internal:subscription_succeeded"
    );

    let mut ann_a = Client::connect(&nodes[0]).await;
    ann_a
        .send_presence_subscribe(channel, &json!({"user_id": "ann"}))
        .await;
    let first = ann_a.recv().await;
    assert_eq!(first["event"], "pusher_internal:subscription_succeeded");
    let added = observer.recv().await;
    assert_eq!(added["event"], "pusher_internal:member_added", "{added}");

    // Ann's second tab, on another node, is the same member: nobody is told.
    let mut ann_b = Client::connect(&nodes[1]).await;
    ann_b
        .send_presence_subscribe(channel, &json!({"user_id": "ann"}))
        .await;
    let again = ann_b.recv().await;
    let data: Value = serde_json::from_str(again["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["presence"]["count"], 2, "{data}");
    assert_eq!(observer.try_recv(Duration::from_millis(300)).await, None);
    eventually_api(
        &nodes[1],
        &format!("/apps/{APP_ID}/channels/{channel}/users"),
        &[],
        json!({"users": [{"id": "obs"}, {"id": "ann"}]}),
    )
    .await;

    // Leaving one node keeps the member; leaving the last removes it, once.
    drop(ann_a);
    assert_eq!(observer.try_recv(Duration::from_millis(500)).await, None);
    drop(ann_b);
    let removed = observer.recv().await;
    assert_eq!(
        removed["event"], "pusher_internal:member_removed",
        "{removed}"
    );
    let data: Value = serde_json::from_str(removed["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["user_id"], "ann");
    assert_eq!(observer.try_recv(Duration::from_millis(300)).await, None);
}

async fn the_api_answers_for_the_whole_cluster(backend: &'static str, kind: Kind) {
    let Some((_redis, nodes)) = cluster(backend, kind).await else {
        return;
    };
    let mut clients = Vec::new();
    for n in &nodes[..2] {
        for _ in 0..2 {
            let mut c = Client::connect(n).await;
            c.subscribe("shared").await;
            clients.push(c);
        }
    }
    for n in &nodes {
        eventually_api(
            n,
            &format!("/apps/{APP_ID}/channels/shared"),
            &[("info", "subscription_count")],
            json!({"occupied": true, "subscription_count": 4}),
        )
        .await;
        eventually_api(
            n,
            &format!("/apps/{APP_ID}/channels"),
            &[("info", "subscription_count")],
            json!({"channels": {"shared": {"subscription_count": 4}}}),
        )
        .await;
    }
    clients.clear();
    eventually_api(
        &nodes[2],
        &format!("/apps/{APP_ID}/channels"),
        &[],
        json!({"channels": {}}),
    )
    .await;
}

async fn cache_channels_replay_on_any_node(backend: &'static str, kind: Kind) {
    let Some((_redis, nodes)) = cluster(backend, kind).await else {
        return;
    };
    let mut first = Client::connect(&nodes[0]).await;
    first.subscribe("cache-quote").await;
    assert_eq!(first.recv().await["event"], "pusher:cache_miss");
    publish(&nodes[1], &["cache-quote"], "price", "42").await;
    assert_eq!(first.recv().await["event"], "price");
    let mut late = Client::connect(&nodes[2]).await;
    late.subscribe("cache-quote").await;
    let replayed = late.recv().await;
    assert_eq!(
        (replayed["event"].as_str(), replayed["data"].as_str()),
        (Some("price"), Some("42"))
    );
}

async fn client_events_and_users_cross_nodes(backend: &'static str, kind: Kind) {
    let Some((_redis, nodes)) = cluster(backend, kind).await else {
        return;
    };
    // A client event sent on one node reaches a subscriber on another.
    let mut sender = Client::connect(&nodes[0]).await;
    let mut receiver = Client::connect(&nodes[1]).await;
    for c in [&mut sender, &mut receiver] {
        c.send_private_subscribe("private-chat").await;
        assert_eq!(
            c.recv().await["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    sender
        .send(json!({"event": "client-typing", "channel": "private-chat", "data": {"n": 1}}))
        .await;
    let m = receiver.recv().await;
    assert_eq!(
        (m["event"].as_str(), &m["data"]),
        (Some("client-typing"), &json!({"n": 1}))
    );

    // A watcher on one node hears a user come online on another, and the user's
    // connections anywhere are terminated from any node.
    let mut watcher = Client::connect(&nodes[2]).await;
    watcher
        .send_signin(&json!({"id": "wat", "watchlist": ["ann"]}))
        .await;
    assert_eq!(watcher.recv().await["event"], "pusher:signin_success");
    let mut ann = Client::connect(&nodes[0]).await;
    ann.send_signin(&json!({"id": "ann"})).await;
    assert_eq!(ann.recv().await["event"], "pusher:signin_success");
    let online = watcher.recv().await;
    assert_eq!(
        online["event"], "pusher_internal:watchlist_events",
        "{online}"
    );
    let (status, _) = api(
        &nodes[1],
        "POST",
        &format!("/apps/{APP_ID}/users/ann/terminate_connections"),
        &[],
        Some(&json!({})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(common::close_code(&ann.closed().await), 4009);
}

/// Member events about `channel` a client receives until it has been quiet for a while:
/// `(event, user)` in arrival order.
async fn member_events(c: &mut Client, quiet: Duration) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    while let Some(m) = c.try_recv(quiet).await {
        let event = m["event"].as_str().unwrap_or_default();
        if let Some(kind) = event.strip_prefix("pusher_internal:member_") {
            let data: Value = serde_json::from_str(m["data"].as_str().unwrap()).unwrap();
            seen.push((
                kind.to_string(),
                data["user_id"].as_str().unwrap().to_string(),
            ));
        }
    }
    seen
}

async fn concurrent_joins_on_different_nodes_are_seen_in_one_order(
    backend: &'static str,
    kind: Kind,
) {
    let Some((_redis, nodes)) = cluster(backend, kind).await else {
        return;
    };
    let channel = "presence-crowd";
    let mut observers = Vec::new();
    for (i, n) in [&nodes[0], &nodes[2]].into_iter().enumerate() {
        let mut o = Client::connect(n).await;
        o.send_presence_subscribe(channel, &json!({"user_id": format!("observer-{i}")}))
            .await;
        assert_eq!(
            o.recv().await["event"],
            "pusher_internal:subscription_succeeded"
        );
        observers.push(o);
    }
    let _ = member_events(&mut observers[0], Duration::from_millis(300)).await;
    // Twenty users join, leave and join again at once, each time through node a or b;
    // users 0-4 also have a second tab open on the other node throughout.
    let urls: Vec<String> = nodes[..2]
        .iter()
        .map(|n| n.ws_url(common::APP_KEY))
        .collect();
    let mut tasks = Vec::new();
    for u in 0..20usize {
        let urls = urls.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("user-{u}");
            let join = |url: String| {
                let user = user.clone();
                async move {
                    let mut c = Client::connect_url(&url).await;
                    c.send_presence_subscribe(channel, &json!({ "user_id": user }))
                        .await;
                    loop {
                        let m = c.recv().await;
                        if m["event"] == "pusher_internal:subscription_succeeded" {
                            break;
                        }
                    }
                    c
                }
            };
            let tab = match u < 5 {
                true => Some(join(urls[(u + 1) % 2].clone()).await),
                false => None,
            };
            let first = join(urls[u % 2].clone()).await;
            drop(first);
            let again = join(urls[(u + 1) % 2].clone()).await;
            (again, tab)
        }));
    }
    let mut kept = Vec::new();
    for t in tasks {
        kept.push(t.await.unwrap());
    }
    let quiet = Duration::from_millis(1500);
    let seen_a = member_events(&mut observers[0], quiet).await;
    let seen_c = member_events(&mut observers[1], quiet).await;
    // Every observer, on every node, hears the same decisions in the same order (the
    // other observer's own join aside: observer 1 joined after observer 0).
    let without_observers = |v: &[(String, String)]| -> Vec<(String, String)> {
        v.iter()
            .filter(|(_, u)| !u.starts_with("observer"))
            .cloned()
            .collect()
    };
    assert_eq!(without_observers(&seen_a), without_observers(&seen_c));
    // For each user the events alternate, starting with added, and end with the user in.
    for u in 0..20 {
        let user = format!("user-{u}");
        let kinds: Vec<&str> = seen_a
            .iter()
            .filter(|(_, who)| *who == user)
            .map(|(k, _)| k.as_str())
            .collect();
        assert!(!kinds.is_empty(), "{user}: nothing seen");
        for (i, k) in kinds.iter().enumerate() {
            let want = if i % 2 == 0 { "added" } else { "removed" };
            assert_eq!(*k, want, "{user}: {kinds:?}");
        }
        assert_eq!(kinds.len() % 2, 1, "{user} ends as a member: {kinds:?}");
        if u < 5 {
            assert_eq!(kinds, ["added"], "{user} had a tab open throughout");
        }
    }
    let (status, body) = api(
        &nodes[2],
        "GET",
        &format!("/apps/{APP_ID}/channels/{channel}/users"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["users"].as_array().unwrap().len(), 22, "{body}");
    drop(kept);
}

async fn a_subscribe_storm_declares_interest_in_batches(backend: &'static str, kind: Kind) {
    let Some((redis, nodes)) = cluster(backend, kind).await else {
        return;
    };
    let subscribe = match kind {
        Kind::Single => "subscribe",
        Kind::Sharded => "ssubscribe",
    };
    let before = redis.calls(subscribe);
    // 50 connections ask for 20 channels each, all at once, without waiting for answers.
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(Client::connect(&nodes[0]).await);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        for j in 0..20 {
            let channel = format!("storm-{}", i * 20 + j);
            c.send(json!({"event": "pusher:subscribe", "data": {"channel": channel}}))
                .await;
        }
    }
    for c in &mut clients {
        for _ in 0..20 {
            assert_eq!(
                c.recv().await["event"],
                "pusher_internal:subscription_succeeded"
            );
        }
    }
    let calls = redis.calls(subscribe) - before;
    let declared = nodes[0]
        .metric_value("ringcast_broker_interest_changes_total")
        .await;
    assert!(declared >= 1000, "{declared} channels declared");
    match kind {
        // One SUBSCRIBE carries up to 512 channels.
        Kind::Single => assert!(calls < 100, "{calls} SUBSCRIBE commands for 1000 channels"),
        // At most one SSUBSCRIBE per slot the channels fall in (a sharded subscription
        // cannot span slots), sent together.
        Kind::Sharded => {
            let slots: std::collections::HashSet<_> = (0..1000)
                .map(|i| {
                    let key = format!("ringcast:{{{APP_ID}/storm-{i}}}:ev");
                    redis::cluster_routing::Slot::for_key(key)
                })
                .collect();
            assert!(
                calls <= slots.len() as u64,
                "{calls} SSUBSCRIBE commands for {} slots",
                slots.len()
            );
        }
    }
    // Every channel is live: an event through another node reaches its subscriber.
    publish(&nodes[1], &["storm-999"], "e", "{}").await;
    assert_eq!(clients[49].recv().await["event"], "e");
}

/// `rediss://` with a password: nodes that trust the server's certificate (`SSL_CERT_FILE`)
/// cluster over it; a node given the wrong password keeps serving alone, says why in a
/// warning that does not show the password, and reports the broker down in `/readyz`.
async fn nodes_cluster_over_redis_with_tls_and_a_password(backend: &'static str) {
    let Some(redis) = TlsRedis::start() else {
        return;
    };
    let start = |id: &'static str, password: &str| {
        let url = redis.url(password);
        let mut cmd = Server::command(
            backend,
            &["--redis-url", &url, "--node-id", id, "--node-timeout", "3"],
        );
        cmd.env("SSL_CERT_FILE", &redis.ca);
        Server::spawn(cmd, backend).unwrap_or_else(|log| panic!("{}", log.join("\n")))
    };
    let a = start("a", redis.password);
    let b = start("b", redis.password);
    for n in [&a, &b] {
        n.wait_for_log("clustering on").await;
    }
    let mut on_a = Client::connect(&a).await;
    on_a.subscribe("secure").await;
    publish(&b, &["secure"], "over-tls", "1").await;
    let m = on_a.recv().await;
    assert_eq!(
        (m["event"].as_str(), m["data"].as_str()),
        (Some("over-tls"), Some("1")),
        "{m}"
    );

    let wrong = start("c", "not-the-password");
    let warning = wrong.wait_for_log("cannot reach Redis").await;
    assert!(warning.contains("WARN"), "{warning}");
    let ready: Value = reqwest::get(wrong.metrics_url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["broker"],
        json!({"kind": "redis", "connected": false}),
        "{ready}"
    );
    for n in [&a, &b, &wrong] {
        for line in n.log() {
            assert!(!line.contains(redis.password), "password logged: {line}");
        }
    }
}

/// `pusher_internal:subscription_count` counts every node's subscribers, and each
/// subscriber, whichever node it is on, is told of a change made on another.
async fn subscription_counts_cover_every_node(backend: &'static str, kind: Kind) {
    let Some(redis) = Redis::start_kind(kind) else {
        return;
    };
    let apps = demo_app_with("subscription_count = true");
    let apps = ["--apps-file", apps.to_str().unwrap()];
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(node(&redis, backend, id, &apps).await);
    }
    async fn count(c: &mut Client) -> u64 {
        let msg = c.recv().await;
        assert_eq!(msg["event"], "pusher_internal:subscription_count", "{msg}");
        assert_eq!(msg["channel"], "counted", "{msg}");
        let data: Value = serde_json::from_str(msg["data"].as_str().unwrap()).unwrap();
        data["subscription_count"].as_u64().unwrap()
    }
    let mut clients = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut c = Client::connect(n).await;
        c.subscribe("counted").await;
        clients.push(c);
        // Everyone subscribed so far, on every node, hears the new total.
        for c in &mut clients {
            assert_eq!(count(c).await, i as u64 + 1);
        }
    }
    clients[1]
        .send(json!({"event": "pusher:unsubscribe", "data": {"channel": "counted"}}))
        .await;
    assert_eq!(count(&mut clients[0]).await, 2);
    assert_eq!(count(&mut clients[2]).await, 2);
    drop(clients.remove(2));
    assert_eq!(count(&mut clients[0]).await, 1);
    assert_eq!(clients[1].try_recv(Duration::from_millis(300)).await, None);
}
