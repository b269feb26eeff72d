//! Webhooks against a real HTTP receiver run by the test: signatures, every event type,
//! filters, the 3 s debounce, batching, retries after failures, and a receiver that
//! hangs — on both IO backends.

mod common;

use std::time::{Duration, Instant};

use common::hooks::{Answer, Receiver};
use common::{
    apps_file, demo_app_with, hmac_hex, publish, Client, Server, APP_ID, APP_KEY, APP_SECRET, WAIT,
};
use serde_json::{json, Value};

on_both_backends!(
    requests_are_signed_and_carry_occupied_then_vacated,
    a_channel_back_within_three_seconds_sends_nothing,
    presence_client_event_and_cache_webhooks_respect_filters,
    batching_gathers_events_into_one_request,
    failed_deliveries_are_retried_until_accepted,
    a_hanging_receiver_does_not_stall_the_server,
    a_reload_while_events_are_batched_drops_them_cleanly,
    held_webhooks_go_out_before_the_server_exits,
);

fn unsubscribe(channel: &str) -> Value {
    json!({"event": "pusher:unsubscribe", "data": {"channel": channel}})
}

async fn requests_are_signed_and_carry_occupied_then_vacated(backend: &'static str) {
    let rx = Receiver::start(vec![]).await;
    let server = Server::start(backend, &["--webhook-url", &rx.url]);
    let mut c = Client::connect(&server).await;
    let before = common::now_secs() * 1000;
    c.subscribe("room").await;
    let got = rx.wait_for(1).await;
    let r = &got[0];
    assert_eq!(r.path, "/hooks/pusher");
    assert_eq!(r.key, APP_KEY);
    assert_eq!(r.signature, hmac_hex(APP_SECRET, &r.body));
    let body = r.json();
    assert!(body["time_ms"].as_u64().unwrap() >= before, "{body}");
    assert_eq!(
        body["events"],
        json!([{"name": "channel_occupied", "channel": "room"}])
    );

    c.send(unsubscribe("room")).await;
    let left = Instant::now();
    let got = rx.wait_for(2).await;
    assert_eq!(
        got[1].events(),
        vec![json!({"name": "channel_vacated", "channel": "room"})]
    );
    assert_eq!(got[1].signature, hmac_hex(APP_SECRET, &got[1].body));
    // Held back for the debounce (3 s), not sent at once.
    assert!(
        got[1].at.duration_since(left) >= Duration::from_secs(2),
        "{:?}",
        got[1].at.duration_since(left)
    );
}

async fn a_channel_back_within_three_seconds_sends_nothing(backend: &'static str) {
    let rx = Receiver::start(vec![]).await;
    let server = Server::start(backend, &["--webhook-url", &rx.url]);
    let mut c = Client::connect(&server).await;
    c.subscribe("reload").await;
    rx.wait_for(1).await;
    // A page reload: gone, back at once.
    c.send(unsubscribe("reload")).await;
    c.subscribe("reload").await;
    // Past the debounce, still only the first occupied.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(rx.event_names(), vec!["channel_occupied"]);
    // Leaving for good is reported.
    c.send(unsubscribe("reload")).await;
    rx.wait_for(2).await;
    assert_eq!(
        rx.event_names(),
        vec!["channel_occupied", "channel_vacated"]
    );
}

async fn presence_client_event_and_cache_webhooks_respect_filters(backend: &'static str) {
    let all = Receiver::start(vec![]).await;
    let members_only = Receiver::start(vec![]).await;
    let apps = demo_app_with(&format!(
        "client_events = true\nsubscription_count = true\n\n[[app.webhook]]\nurl = \"{}\"\n\n[[app.webhook]]\nurl = \"{}\"\nevents = [\"member_added\", \"member_removed\"]\n",
        all.url, members_only.url
    ));
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    let mut a = Client::connect(&server).await;
    a.send_presence_subscribe("presence-team", &json!({"user_id": "ann"}))
        .await;
    a.recv().await;
    let mut b = Client::connect(&server).await;
    b.send_presence_subscribe("presence-team", &json!({"user_id": "bob"}))
        .await;
    b.recv().await;
    let (_, e) = all
        .wait_for_event(|e| e["name"] == "member_added" && e["user_id"] == "bob")
        .await;
    assert_eq!(e["channel"], "presence-team");
    assert_eq!(a.recv().await["event"], "pusher_internal:member_added");

    b.send(json!({"event": "client-wave", "channel": "presence-team", "data": {"hand": "left"}}))
        .await;
    assert_eq!(a.recv().await["event"], "client-wave");
    let (_, e) = all.wait_for_event(|e| e["name"] == "client_event").await;
    assert_eq!(
        e,
        json!({
            "name": "client_event",
            "channel": "presence-team",
            "event": "client-wave",
            "data": r#"{"hand":"left"}"#,
            "socket_id": b.socket_id,
            "user_id": "bob",
        })
    );

    a.subscribe("cache-prices").await;
    let (_, e) = all.wait_for_event(|e| e["name"] == "cache_miss").await;
    assert_eq!(e, json!({"name": "cache_miss", "channel": "cache-prices"}));

    let mut c = Client::connect(&server).await;
    let mut d = Client::connect(&server).await;
    c.subscribe("counted").await;
    d.subscribe("counted").await;
    let (_, e) = all
        .wait_for_event(|e| e["name"] == "subscription_count" && e["subscription_count"] == 2)
        .await;
    assert_eq!(e["channel"], "counted");

    drop(b);
    let (_, e) = all.wait_for_event(|e| e["name"] == "member_removed").await;
    assert_eq!(
        e,
        json!({"name": "member_removed", "channel": "presence-team", "user_id": "bob"})
    );
    // The filtered URL got exactly the member events, each once.
    members_only.wait_for(3).await;
    let mut names = members_only.event_names();
    names.sort();
    assert_eq!(
        names,
        vec!["member_added", "member_added", "member_removed"]
    );
    for r in members_only.all() {
        assert_eq!(r.signature, hmac_hex(APP_SECRET, &r.body));
    }
}

async fn batching_gathers_events_into_one_request(backend: &'static str) {
    let rx = Receiver::start(vec![]).await;
    let apps = demo_app_with(&format!(
        "webhook_batching = true\n\n[[app.webhook]]\nurl = \"{}\"\nevents = [\"channel_occupied\"]\n",
        rx.url
    ));
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    let mut c = Client::connect(&server).await;
    for i in 0..5 {
        c.subscribe(&format!("batch-{i}")).await;
    }
    let deadline = Instant::now() + WAIT;
    while rx.event_names().len() < 5 {
        assert!(Instant::now() < deadline, "{:?}", rx.all());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requests = rx.all();
    assert!(
        requests.len() <= 2,
        "five events in {} requests",
        requests.len()
    );
    assert!(requests[0].events().len() >= 2, "{requests:?}");
    for r in &requests {
        assert_eq!(r.signature, hmac_hex(APP_SECRET, &r.body));
    }
}

async fn failed_deliveries_are_retried_until_accepted(backend: &'static str) {
    let rx = Receiver::start(vec![Answer::Status(500), Answer::Status(503)]).await;
    let server = Server::start(backend, &["--webhook-url", &rx.url]);
    let mut c = Client::connect(&server).await;
    c.subscribe("flaky").await;
    let got = rx.wait_for(3).await;
    // The same signed request each time, with growing pauses (1 s, then 2 s).
    assert!(got.iter().all(|r| r.body == got[0].body));
    assert_eq!(
        got[0].events(),
        vec![json!({"name": "channel_occupied", "channel": "flaky"})]
    );
    assert!(got[2].at.duration_since(got[1].at) > got[1].at.duration_since(got[0].at));
    let requests = |result: &'static str| {
        let server = &server;
        async move {
            server
                .metric_sum("ringcast_webhook_requests_total", &[("result", result)])
                .await
        }
    };
    let deadline = Instant::now() + WAIT;
    while requests("delivered").await != 1 {
        assert!(Instant::now() < deadline, "{}", server.metrics_text().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(requests("failed").await, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.all().len(), 3, "nothing sent again once accepted");
}

async fn a_hanging_receiver_does_not_stall_the_server(backend: &'static str) {
    let hanging = Receiver::start(vec![Answer::Hang; 1000]).await;
    let healthy = Receiver::start(vec![]).await;
    // And a URL nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", l.local_addr().unwrap())
    };
    // Two apps: one whose receivers hang or refuse, one with a healthy receiver.
    let apps = apps_file(&format!(
        "[[app]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\n\n\
         [[app.webhook]]\nurl = \"{}\"\n\n[[app.webhook]]\nurl = \"{closed}\"\n\n\
         [[app]]\nid = \"2\"\nkey = \"other-key\"\nsecret = \"other-secret\"\n\n\
         [[app.webhook]]\nurl = \"{}\"\nevents = [\"channel_occupied\"]\n",
        hanging.url, healthy.url
    ));
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    let mut clients = Vec::new();
    for i in 0..50 {
        let mut c = Client::connect(&server).await;
        c.subscribe(&format!("busy-{i}")).await;
        clients.push(c);
    }
    // More hanging requests than any shared pool of connections would hold…
    let mut many = Client::connect(&server).await;
    for i in 0..80 {
        many.subscribe(&format!("hang-{i}")).await;
    }
    // …are held against the hanging URL's own limit…
    hanging.wait_for(8).await;
    // …and the other app's webhooks are not held up behind them.
    let mut other = Client::connect_url(&server.ws_url("other-key")).await;
    other.subscribe("elsewhere").await;
    let (r, _) = healthy
        .wait_for_event(|e| e["channel"] == "elsewhere")
        .await;
    assert_eq!(r.key, "other-key");
    assert_eq!(r.signature, hmac_hex("other-secret", &r.body));
    // Everything else keeps working while requests hang.
    for (i, c) in clients.iter_mut().enumerate() {
        publish(&server, &[&format!("busy-{i}")], "e", "x").await;
        assert_eq!(c.recv().await["event"], "e");
    }
    let mut c = Client::connect(&server).await;
    c.send(json!({"event": "pusher:ping"})).await;
    assert_eq!(c.recv().await["event"], "pusher:pong");
}

async fn a_reload_while_events_are_batched_drops_them_cleanly(backend: &'static str) {
    let first = Receiver::start(vec![]).await;
    let second = Receiver::start(vec![]).await;
    let with_two = format!(
        "[[app]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\nwebhook_batching = true\n\n\
         [[app.webhook]]\nurl = \"{}\"\n\n[[app.webhook]]\nurl = \"{}\"\n",
        first.url, second.url
    );
    let apps = apps_file(&with_two);
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    let mut c = Client::connect(&server).await;
    c.subscribe("before").await;
    // Within the batch window, drop the second URL.
    let with_one = format!(
        "[[app]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\nwebhook_batching = true\n\n\
         [[app.webhook]]\nurl = \"{}\"\n",
        first.url
    );
    std::fs::write(&apps, with_one).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("apps reloaded").await;
    first.wait_for_event(|e| e["channel"] == "before").await;
    // Webhooks keep flowing after the reload, to the URL that is still configured.
    c.subscribe("after").await;
    first.wait_for_event(|e| e["channel"] == "after").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        second.event_names().is_empty(),
        "the removed URL got {:?}",
        second.all()
    );
    assert!(
        !server.log().iter().any(|l| l.contains("panic")),
        "{:?}",
        server.log()
    );
}

async fn held_webhooks_go_out_before_the_server_exits(backend: &'static str) {
    let rx = Receiver::start(vec![]).await;
    let mut server = Server::start(backend, &["--webhook-url", &rx.url]);
    let mut c = Client::connect(&server).await;
    c.subscribe("room").await;
    let mut member = Client::connect(&server).await;
    member
        .send_presence_subscribe("presence-room", &json!({"user_id": "ann"}))
        .await;
    assert_eq!(
        member.recv().await["event"],
        "pusher_internal:subscription_succeeded"
    );
    rx.wait_for(3).await;
    // SIGTERM closes the last subscribers: `channel_vacated` and `member_removed` are held
    // for their debounce, and the server sends them before exiting.
    server.signal(libc::SIGTERM);
    assert_eq!(common::close_code(&c.closed().await), 4200);
    assert_eq!(common::close_code(&member.closed().await), 4200);
    assert!(server.wait_exit(WAIT).success());
    let mut names = rx.event_names();
    names.sort();
    assert_eq!(
        names,
        [
            "channel_occupied",
            "channel_occupied",
            "channel_vacated",
            "channel_vacated",
            "member_added",
            "member_removed"
        ]
    );
}
