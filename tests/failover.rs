//! A cluster when things go wrong: a node killed with SIGKILL, Redis frozen (SIGSTOP) past
//! the node timeout and back, a node restarted with the same id. Redis, the nodes and a
//! webhook receiver are started by the tests.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::hooks::Receiver;
use common::redis::{node, Kind, Redis};
use common::{api, eventually_api, publish, signed_url, Client, Server, APP_ID, WAIT};
use serde_json::{json, Value};

on_backends_and_redis!(
    a_killed_nodes_members_are_removed_and_announced_once,
    a_member_moving_to_another_node_within_the_debounce_sends_no_webhooks,
);

on_both_backends!(
    clients_stay_through_a_redis_outage_and_the_cluster_heals,
    a_node_restarted_with_its_id_clears_its_previous_run_at_once,
    a_rolling_restart_loses_no_events_and_flaps_no_member,
);

/// Joins `channel` as `user` and reads the subscription's answer.
async fn join(c: &mut Client, channel: &str, user: &str) -> Value {
    c.send_presence_subscribe(channel, &json!({ "user_id": user }))
        .await;
    loop {
        let ok = c.recv().await;
        // A member event decided while the join was on its way may come first; the member
        // list in the answer is the one after it.
        if ok["event"]
            .as_str()
            .unwrap_or_default()
            .starts_with("pusher_internal:member_")
        {
            continue;
        }
        assert_eq!(
            ok["event"], "pusher_internal:subscription_succeeded",
            "{ok}"
        );
        return ok;
    }
}

/// Waits for a member event about `user` (skipping anything else).
async fn member_event(c: &mut Client, user: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = c
            .try_recv(left)
            .await
            .unwrap_or_else(|| panic!("no member event about {user}"));
        let event = m["event"].as_str().unwrap_or_default();
        if event.starts_with("pusher_internal:member_") {
            let data: Value = serde_json::from_str(m["data"].as_str().unwrap()).unwrap();
            if data["user_id"] == user {
                return event.to_string();
            }
        }
    }
}

fn users(ids: &[&str]) -> Value {
    json!({ "users": ids.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>() })
}

async fn a_killed_nodes_members_are_removed_and_announced_once(backend: &'static str, kind: Kind) {
    let Some(redis) = Redis::start_kind(kind) else {
        return;
    };
    let rx = Receiver::start(vec![]).await;
    let args = ["--node-timeout", "3", "--webhook-url", &rx.url];
    let a = node(&redis, backend, "a", &args).await;
    let b = node(&redis, backend, "b", &args).await;
    let c = node(&redis, backend, "c", &args).await;

    let mut observer = Client::connect(&b).await;
    join(&mut observer, "presence-room", "obs").await;
    let mut ann = Client::connect(&a).await;
    join(&mut ann, "presence-room", "ann").await;
    ann.subscribe("only-on-a").await;
    assert_eq!(
        member_event(&mut observer, "ann").await,
        "pusher_internal:member_added"
    );
    rx.wait_for_event(|e| e["name"] == "channel_occupied" && e["channel"] == "only-on-a")
        .await;

    a.signal(libc::SIGKILL);
    // Node b or c finds a's lease expired and clears what it held: the observer hears
    // that ann left, and the API of any node agrees.
    assert_eq!(
        member_event(&mut observer, "ann").await,
        "pusher_internal:member_removed"
    );
    eventually_api(
        &c,
        &format!("/apps/{APP_ID}/channels/presence-room/users"),
        &[],
        users(&["obs"]),
    )
    .await;
    eventually_api(
        &b,
        &format!("/apps/{APP_ID}/channels"),
        &[],
        json!({ "channels": { "presence-room": {} } }),
    )
    .await;

    // The webhooks go out once, from whichever node cleared it (after the 3 s debounce).
    rx.wait_for_event(|e| e["name"] == "member_removed" && e["user_id"] == "ann")
        .await;
    rx.wait_for_event(|e| e["name"] == "channel_vacated" && e["channel"] == "only-on-a")
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let names = rx.event_names();
    let count = |n: &str| names.iter().filter(|x| *x == n).count();
    assert_eq!(count("member_removed"), 1, "{names:?}");
    assert_eq!(count("channel_vacated"), 1, "{names:?}");
    let reaped = b.metric_value("ringcast_broker_nodes_reaped_total").await
        + c.metric_value("ringcast_broker_nodes_reaped_total").await;
    assert_eq!(reaped, 1, "one node cleared the dead one");
    assert_eq!(observer.try_recv(Duration::from_millis(200)).await, None);
}

async fn clients_stay_through_a_redis_outage_and_the_cluster_heals(backend: &'static str) {
    let Some(redis) = Redis::start() else {
        return;
    };
    let args = ["--node-timeout", "3"];
    let a = node(&redis, backend, "a", &args).await;
    let b = node(&redis, backend, "b", &args).await;
    let mut on_a = Client::connect(&a).await;
    let mut on_b = Client::connect(&b).await;
    on_a.subscribe("news").await;
    on_b.subscribe("news").await;
    join(&mut on_a, "presence-room", "ann").await;
    join(&mut on_b, "presence-room", "obs").await;
    assert_eq!(
        member_event(&mut on_a, "obs").await,
        "pusher_internal:member_added"
    );

    redis.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    // An HTTP publish gets 503 with a JSON reason and Retry-After: at first after Redis
    // fails to answer in time (this node's subscribers may have had it), then, once node a
    // knows Redis is out of reach, at once and with nothing delivered anywhere.
    let deadline = Instant::now() + WAIT;
    let path = format!("/apps/{APP_ID}/events");
    let refused = "refused-up-front";
    loop {
        let body = json!({"name": "e", "channel": "news", "data": "during"}).to_string();
        let url = signed_url(&a, "POST", &path, &[], body.as_bytes(), common::now_secs());
        let resp = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .timeout(WAIT)
            .send()
            .await
            .unwrap();
        if resp.status() == 503 {
            assert_eq!(resp.headers()["retry-after"], "1");
            let reason: Value = resp.json().await.unwrap();
            let reason = reason["error"].as_str().unwrap().to_string();
            assert!(reason.contains("Redis"), "{reason}");
            if reason.contains("cannot be reached") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "publishes still accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = json!({"name": "e", "channel": "news", "data": refused});
    let (status, _) = api(&a, "POST", &path, &[], Some(&body)).await;
    assert_eq!(status, 503);
    // What RingcastBrokerUnreachable (deploy/prometheus/alerts.yml) watches.
    assert_eq!(a.metric_value("ringcast_broker_connected").await, 0);
    // Past the node timeout: every lease has expired by the time Redis is back.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(stopped.elapsed())).await;
    redis.signal(libc::SIGCONT);

    // Both clients are still connected; publishing through either node reaches both again.
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    'healed: loop {
        n += 1;
        let (status, _) = api(
            &a,
            "POST",
            &format!("/apps/{APP_ID}/events"),
            &[],
            Some(&json!({"name": "after", "channel": "news", "data": n.to_string()})),
        )
        .await;
        if status == 200 {
            for _ in 0..20 {
                match on_b.try_recv(Duration::from_millis(100)).await {
                    Some(m) if m["event"] == "after" => break 'healed,
                    _ => {}
                }
            }
        }
        assert!(Instant::now() < deadline, "the cluster did not heal");
    }
    publish(&b, &["news"], "back", "x").await;
    assert_eq!(a.metric_value("ringcast_broker_connected").await, 1);
    for c in [&mut on_a, &mut on_b] {
        let deadline = Instant::now() + WAIT;
        loop {
            let m = c.recv().await;
            assert_ne!(
                m["data"], refused,
                "a publish refused up front was delivered"
            );
            if m["event"] == "back" {
                break;
            }
            assert!(Instant::now() < deadline);
        }
    }
    // One member list again, each member once, whatever was cleared meanwhile.
    eventually_api(
        &a,
        &format!("/apps/{APP_ID}/channels/presence-room/users"),
        &[],
        users(&["ann", "obs"]),
    )
    .await;
    eventually_api(
        &b,
        &format!("/apps/{APP_ID}/channels/news"),
        &[("info", "subscription_count")],
        json!({"occupied": true, "subscription_count": 2}),
    )
    .await;
    assert!(a.metric_value("ringcast_broker_resyncs_total").await >= 2);
    assert!(a.metric_value("ringcast_broker_leases_lost_total").await >= 1);
    assert!(a.log().iter().any(|l| l.contains("Redis unreachable")));
}

async fn a_node_restarted_with_its_id_clears_its_previous_run_at_once(backend: &'static str) {
    let Some(redis) = Redis::start() else {
        return;
    };
    // A node timeout far beyond the test: only the restart can clear the old run.
    let args = ["--node-timeout", "600"];
    let a = node(&redis, backend, "a", &args).await;
    let b = node(&redis, backend, "b", &args).await;
    let mut observer = Client::connect(&b).await;
    join(&mut observer, "presence-room", "obs").await;
    let mut ann = Client::connect(&a).await;
    join(&mut ann, "presence-room", "ann").await;
    assert_eq!(
        member_event(&mut observer, "ann").await,
        "pusher_internal:member_added"
    );

    a.signal(libc::SIGKILL);
    drop(ann);
    let a: Server = node(&redis, backend, "a", &args).await;
    assert_eq!(
        member_event(&mut observer, "ann").await,
        "pusher_internal:member_removed"
    );
    let path = format!("/apps/{APP_ID}/channels/presence-room/users");
    eventually_api(&b, &path, &[], users(&["obs"])).await;

    // Ann comes back on the restarted node: one member, announced once.
    let mut ann = Client::connect(&a).await;
    let ok = join(&mut ann, "presence-room", "ann").await;
    let data: Value = serde_json::from_str(ok["data"].as_str().unwrap()).unwrap();
    let ids: BTreeSet<&str> = data["presence"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from(["ann", "obs"]));
    assert_eq!(
        member_event(&mut observer, "ann").await,
        "pusher_internal:member_added"
    );
    eventually_api(&b, &path, &[], users(&["obs", "ann"])).await;
    assert_eq!(observer.try_recv(Duration::from_millis(300)).await, None);
}

async fn a_member_moving_to_another_node_within_the_debounce_sends_no_webhooks(
    backend: &'static str,
    kind: Kind,
) {
    let Some(redis) = Redis::start_kind(kind) else {
        return;
    };
    let rx = Receiver::start(vec![]).await;
    let args = ["--webhook-url", &rx.url];
    let a = node(&redis, backend, "a", &args).await;
    let b = node(&redis, backend, "b", &args).await;
    let mut ann = Client::connect(&a).await;
    join(&mut ann, "presence-room", "ann").await;
    ann.subscribe("solo").await;
    rx.wait_for_event(|e| e["name"] == "member_added").await;
    rx.wait_for_event(|e| e["name"] == "channel_occupied" && e["channel"] == "solo")
        .await;

    // Ann's page moves to node b (a reload, a rolling deploy): her connection on a closes
    // and one on b opens within the 3 s debounce.
    drop(ann);
    eventually_api(
        &b,
        &format!("/apps/{APP_ID}/channels"),
        &[],
        json!({ "channels": {} }),
    )
    .await;
    let mut ann = Client::connect(&b).await;
    join(&mut ann, "presence-room", "ann").await;
    ann.subscribe("solo").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let names = rx.event_names();
    let count = |n: &str| names.iter().filter(|x| *x == n).count();
    assert_eq!(count("member_added"), 1, "{names:?}");
    assert_eq!(count("member_removed"), 0, "{names:?}");
    assert_eq!(
        count("channel_occupied"),
        2,
        "presence-room and solo, once: {names:?}"
    );
    assert_eq!(count("channel_vacated"), 0, "{names:?}");

    // Leaving for good still tells the app, once.
    drop(ann);
    rx.wait_for_event(|e| e["name"] == "member_removed").await;
    rx.wait_for_event(|e| e["name"] == "channel_vacated" && e["channel"] == "solo")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let names = rx.event_names();
    let count = |n: &str| names.iter().filter(|x| *x == n).count();
    assert_eq!(count("member_removed"), 1, "{names:?}");
    assert_eq!(count("channel_vacated"), 2, "{names:?}");
}

async fn a_rolling_restart_loses_no_events_and_flaps_no_member(backend: &'static str) {
    let Some(redis) = Redis::start() else {
        return;
    };
    let rx = Receiver::start(vec![]).await;
    let args = ["--webhook-url", &rx.url, "--shutdown-timeout", "2"];
    let mut a = node(&redis, backend, "a", &args).await;
    let b = node(&redis, backend, "b", &args).await;
    let c = node(&redis, backend, "c", &args).await;
    let mut stay_b = Client::connect(&b).await;
    let mut stay_c = Client::connect(&c).await;
    stay_b.subscribe("feed").await;
    stay_c.subscribe("feed").await;
    let mut moving = Client::connect(&a).await;
    join(&mut moving, "presence-room", "ann").await;
    moving.subscribe("feed").await;
    // Bob, also on node a, does not come back.
    let mut leaving = Client::connect(&a).await;
    join(&mut leaving, "presence-room", "bob").await;
    rx.wait_for_event(|e| e["name"] == "member_added" && e["user_id"] == "ann")
        .await;
    rx.wait_for_event(|e| e["name"] == "member_added" && e["user_id"] == "bob")
        .await;

    // Events flow through node c while node a is stopped.
    let total = 200;
    let path = format!("/apps/{APP_ID}/events");
    let requests: Vec<(String, String)> = (0..total)
        .map(|i| {
            let body = json!({"name": "seq", "channel": "feed", "data": i.to_string()});
            let body = body.to_string();
            let url = signed_url(&c, "POST", &path, &[], body.as_bytes(), common::now_secs());
            (url, body)
        })
        .collect();
    let pump = tokio::spawn(async move {
        for (url, body) in requests {
            let (status, reply) = common::send_raw("POST", &url, body.into_bytes()).await;
            assert_eq!(status, 200, "{reply}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.signal(libc::SIGTERM);
    // The client on a is told to reconnect (4200) and does, to node b.
    assert_eq!(common::close_code(&moving.closed().await), 4200);
    let mut moved = Client::connect(&b).await;
    join(&mut moved, "presence-room", "ann").await;
    drop(leaving);
    assert!(a.wait_exit(WAIT).success());
    // Node a sent what it held before exiting: Bob's leave, at the end of its debounce.
    rx.wait_for_event(|e| e["name"] == "member_removed" && e["user_id"] == "bob")
        .await;
    assert!(
        a.log().iter().any(|l| l.contains("left the cluster")),
        "{:?}",
        a.log()
    );
    pump.await.unwrap();

    for client in [&mut stay_b, &mut stay_c] {
        for i in 0..total {
            let m = client.recv_event().await;
            assert_eq!(
                (m["event"].as_str(), m["data"].as_str()),
                (Some("seq"), Some(&*i.to_string()))
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let names = rx.event_names();
    let count = |n: &str| names.iter().filter(|x| *x == n).count();
    assert_eq!(
        count("member_added"),
        2,
        "Ann and Bob, once each: {names:?}"
    );
    assert_eq!(count("member_removed"), 1, "only Bob: {names:?}");
}
