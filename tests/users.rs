//! User authentication: `pusher:signin`, `#server-to-user-` delivery, terminating a user's
//! connections, watchlists and the authorized-connections timeout — over real sockets, on
//! both IO backends.

mod common;

use std::time::Duration;

use common::{
    api, close_code, demo_app_with, hmac_hex, one_per_worker, publish, Client, Server, APP_ID,
    APP_KEY, APP_SECRET,
};
use serde_json::{json, Value};

on_both_backends!(
    signin_succeeds_with_a_valid_signature_only,
    server_to_user_events_reach_every_connection_of_the_user,
    terminate_connections_closes_only_that_users_signed_in_connections,
    watchlist_reports_online_and_offline,
    duplicate_watchlist_entries_count_once,
    unauthorized_connections_are_closed_after_the_apps_timeout,
);

async fn signed_in(c: &mut Client, id: &str) {
    c.send_signin(&json!({"id": id, "user_info": {"name": id}}))
        .await;
    let msg = c.recv().await;
    assert_eq!(msg["event"], "pusher:signin_success", "{msg}");
}

async fn subscribe_to_self(c: &mut Client, id: &str) {
    let channel = format!("#server-to-user-{id}");
    // What pusher-js sends after a sign-in.
    c.send(json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": channel}}))
        .await;
    let msg = c.recv().await;
    assert_eq!(
        msg["event"], "pusher_internal:subscription_succeeded",
        "{msg}"
    );
}

async fn signin_succeeds_with_a_valid_signature_only(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut c = Client::connect(&server).await;
    let user_data = json!({"id": "42", "user_info": {"name": "Ann"}}).to_string();
    for auth in [
        format!(
            "{APP_KEY}:{}",
            hmac_hex("wrong", &format!("{}::user::{user_data}", c.socket_id))
        ),
        format!(
            "{APP_KEY}:{}",
            hmac_hex(APP_SECRET, &format!("1.1::user::{user_data}"))
        ),
        String::new(),
    ] {
        c.send(json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}))
            .await;
        let msg = c.recv().await;
        assert_eq!(msg["event"], "pusher:error", "{msg}");
        assert_eq!(msg["data"]["code"], 4009, "{msg}");
    }
    // Not signed in: its server-to-user channel is closed to it.
    c.send(
        json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": "#server-to-user-42"}}),
    )
    .await;
    let msg = c.recv().await;
    assert_eq!(msg["event"], "pusher:subscription_error", "{msg}");
    assert_eq!(msg["data"]["status"], 403);
    // Bad user data, validly signed.
    for bad in [
        json!({"id": ""}),
        json!({"name": "no id"}),
        json!({"id": 7}),
    ] {
        c.send_signin(&bad).await;
        let msg = c.recv().await;
        assert_eq!(msg["event"], "pusher:error", "{bad}: {msg}");
    }
    c.send_signin(&json!({"id": "42", "user_info": {"name": "Ann"}}))
        .await;
    let msg = c.recv().await;
    assert_eq!(msg["event"], "pusher:signin_success", "{msg}");
    let data: Value = serde_json::from_str(msg["data"].as_str().unwrap()).unwrap();
    let echoed: Value = serde_json::from_str(data["user_data"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["id"], "42");
    subscribe_to_self(&mut c, "42").await;
    // Another user's channel stays closed.
    c.send(
        json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": "#server-to-user-43"}}),
    )
    .await;
    assert_eq!(c.recv().await["data"]["status"], 403);
}

async fn server_to_user_events_reach_every_connection_of_the_user(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut tabs = one_per_worker(&server, APP_KEY, 2).await;
    for t in &mut tabs {
        signed_in(t, "u1").await;
        subscribe_to_self(t, "u1").await;
    }
    let mut someone_else = Client::connect(&server).await;
    signed_in(&mut someone_else, "u2").await;
    subscribe_to_self(&mut someone_else, "u2").await;

    publish(&server, &["#server-to-user-u1"], "notice", "for u1").await;
    for t in &mut tabs {
        let msg = t.recv().await;
        assert_eq!(msg["event"], "notice", "{msg}");
        assert_eq!(msg["data"], "for u1");
    }
    publish(&server, &["#server-to-user-u2"], "notice", "for u2").await;
    assert_eq!(someone_else.recv().await["data"], "for u2");
}

async fn terminate_connections_closes_only_that_users_signed_in_connections(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut tabs = one_per_worker(&server, APP_KEY, 2).await;
    for t in &mut tabs {
        signed_in(t, "bad-actor").await;
    }
    let mut other_user = Client::connect(&server).await;
    signed_in(&mut other_user, "fine").await;
    let mut anonymous = Client::connect(&server).await;

    let (status, body) = api(
        &server,
        "POST",
        &format!("/apps/{APP_ID}/users/bad-actor/terminate_connections"),
        &[],
        Some(&json!({})),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    for t in &mut tabs {
        assert_eq!(close_code(&t.closed().await), 4009);
    }
    for c in [&mut other_user, &mut anonymous] {
        c.send(json!({"event": "pusher:ping"})).await;
        assert_eq!(c.recv().await["event"], "pusher:pong");
    }
    // Unknown users are fine; unsigned requests are not.
    let (status, _) = api(
        &server,
        "POST",
        &format!("/apps/{APP_ID}/users/nobody/terminate_connections"),
        &[],
        Some(&json!({})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = common::send_raw(
        "POST",
        &server.http(&format!("/apps/{APP_ID}/users/fine/terminate_connections")),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
}

async fn watchlist_reports_online_and_offline(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let mut friend = Client::connect(&server).await;
    signed_in(&mut friend, "friend").await;

    let mut watcher = Client::connect(&server).await;
    watcher
        .send_signin(&json!({"id": "me", "watchlist": ["friend", "later"]}))
        .await;
    let watch_event = |msg: &Value| -> (String, Vec<String>) {
        assert_eq!(msg["event"], "pusher_internal:watchlist_events", "{msg}");
        let d: Value = serde_json::from_str(msg["data"].as_str().unwrap()).unwrap();
        let e = &d["events"][0];
        let mut ids: Vec<String> = e["user_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        ids.sort();
        (e["name"].as_str().unwrap().to_string(), ids)
    };
    // Sign-in success, and who is online already (in either order).
    let mut got = vec![watcher.recv().await, watcher.recv().await];
    got.sort_by_key(|m| m["event"].to_string());
    assert_eq!(got[0]["event"], "pusher:signin_success", "{got:?}");
    assert_eq!(
        watch_event(&got[1]),
        ("online".to_string(), vec!["friend".to_string()])
    );

    // "later" comes online on whichever worker, twice (two tabs): one online event.
    let mut later = one_per_worker(&server, APP_KEY, 2).await;
    for t in &mut later {
        signed_in(t, "later").await;
    }
    assert_eq!(
        watch_event(&watcher.recv().await),
        ("online".to_string(), vec!["later".to_string()])
    );
    drop(later.pop());
    drop(friend);
    assert_eq!(
        watch_event(&watcher.recv().await),
        ("offline".to_string(), vec!["friend".to_string()]),
        "one tab of 'later' is still online"
    );
    drop(later.pop());
    assert_eq!(
        watch_event(&watcher.recv().await),
        ("offline".to_string(), vec!["later".to_string()])
    );

    // More than 100 watched ids: refused with 4302, the sign-in itself stands.
    let mut greedy = Client::connect(&server).await;
    let list: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    greedy
        .send_signin(&json!({"id": "greedy", "watchlist": list}))
        .await;
    let mut events = vec![greedy.recv().await, greedy.recv().await];
    events.sort_by_key(|m| m["event"].to_string());
    assert_eq!(events[0]["event"], "pusher:error", "{events:?}");
    assert_eq!(events[0]["data"]["code"], 4302, "{events:?}");
    assert_eq!(events[1]["event"], "pusher:signin_success", "{events:?}");
}

async fn duplicate_watchlist_entries_count_once(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let user_ids = |msg: &Value| -> (String, Value) {
        assert_eq!(msg["event"], "pusher_internal:watchlist_events", "{msg}");
        let d: Value = serde_json::from_str(msg["data"].as_str().unwrap()).unwrap();
        assert_eq!(d["events"].as_array().unwrap().len(), 1, "{msg}");
        let e = &d["events"][0];
        (
            e["name"].as_str().unwrap().to_string(),
            e["user_ids"].clone(),
        )
    };
    let mut watcher = Client::connect(&server).await;
    watcher
        .send_signin(&json!({"id": "me", "watchlist": ["a", "a", "a"]}))
        .await;
    assert_eq!(watcher.recv().await["event"], "pusher:signin_success");

    let mut a = Client::connect(&server).await;
    signed_in(&mut a, "a").await;
    assert_eq!(
        user_ids(&watcher.recv().await),
        ("online".to_string(), json!(["a"]))
    );
    let extra = watcher.try_recv(Duration::from_millis(500)).await;
    assert!(extra.is_none(), "one frame per transition: {extra:?}");

    // Who is online already, listed once.
    let mut late = Client::connect(&server).await;
    late.send_signin(&json!({"id": "late", "watchlist": ["a", "b", "a"]}))
        .await;
    let mut got = vec![late.recv().await, late.recv().await];
    got.sort_by_key(|m| m["event"].to_string());
    assert_eq!(got[0]["event"], "pusher:signin_success", "{got:?}");
    assert_eq!(user_ids(&got[1]), ("online".to_string(), json!(["a"])));
    let extra = late.try_recv(Duration::from_millis(300)).await;
    assert!(extra.is_none(), "{extra:?}");

    drop(a);
    for c in [&mut watcher, &mut late] {
        assert_eq!(
            user_ids(&c.recv().await),
            ("offline".to_string(), json!(["a"]))
        );
        let extra = c.try_recv(Duration::from_millis(300)).await;
        assert!(extra.is_none(), "{extra:?}");
    }
}

async fn unauthorized_connections_are_closed_after_the_apps_timeout(backend: &'static str) {
    let apps = demo_app_with("authorized_connections_timeout = 2");
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    let mut anonymous = Client::connect(&server).await;
    let mut public_only = Client::connect(&server).await;
    public_only.subscribe("news").await;
    let mut signed = Client::connect(&server).await;
    signed_in(&mut signed, "7").await;
    let mut private = Client::connect(&server).await;
    private.send_private_subscribe("private-x").await;
    assert_eq!(
        private.recv().await["event"],
        "pusher_internal:subscription_succeeded"
    );

    for c in [&mut anonymous, &mut public_only] {
        assert_eq!(close_code(&c.closed().await), 4009);
    }
    // Well past the timeout, the authorized ones are still served.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for c in [&mut signed, &mut private] {
        c.send(json!({"event": "pusher:ping"})).await;
        assert_eq!(c.recv().await["event"], "pusher:pong");
    }
}
