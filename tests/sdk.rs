//! Real third-party clients against ringcast: the official Python server SDK
//! (pusher-http-python) publishes, queries, authorizes and validates webhooks; pusher-js 8
//! (its Node build) subscribes, joins presence channels, sends client events and signs
//! in — on both IO backends, against one server and against a cluster of three nodes over
//! one Redis, where the clients connect to nodes a and b and the SDK calls the HTTP API on
//! node c (the same assertions hold: a cluster looks like one server).
//!
//! The steered clients are `tests/clients/client.cjs` (one pusher-js instance, commands on
//! stdin) and `tests/clients/backend.py` (an app backend on the Python SDK: auth endpoints,
//! webhook receiver, SDK calls on stdin); both print one JSON line per thing they see.

mod common;

use std::process::Command;
use std::time::Duration;

use common::redis::{node, Redis};
use common::sdk::{sdk_app_args, Backend, Deps, Js, Proc, APP_ID, APP_KEY, APP_SECRET};
use common::{Server, WAIT};
use serde_json::{json, Value};

/// Each scenario on both IO backends, against one server (`name::uring`, `name::epoll`) and
/// against three clustered nodes (`name::uring_cluster`, `name::epoll_cluster`).
macro_rules! on_backends_one_server_and_cluster {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::Topology::{Cluster, Single};
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn uring() {
                    super::$name("uring", Single).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn epoll() {
                    super::$name("epoll", Single).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn uring_cluster() {
                    super::$name("uring", Cluster).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn epoll_cluster() {
                    super::$name("epoll", Cluster).await
                }
            }
        )*
    };
}

on_backends_one_server_and_cluster!(
    python_sdk_events_reach_pusher_js,
    pusher_js_private_channels_authorized_by_python_sdk,
    pusher_js_presence_members_and_client_events,
    pusher_js_signin_send_to_user_and_terminate,
    python_sdk_http_api_and_validated_webhooks,
);

/// What the clients connect to.
#[derive(Debug, Clone, Copy)]
enum Topology {
    /// One server.
    Single,
    /// Nodes a, b and c clustered over one Redis.
    Cluster,
}

/// The servers under test: pusher-js clients connect to `a()` and `b()`, the Python SDK
/// calls the HTTP API on `c()`. One server is all three; a cluster has three nodes.
struct Nodes {
    servers: Vec<Server>,
    /// Stopped after the nodes (fields drop in order).
    _redis: Option<Redis>,
}

impl Nodes {
    /// Starts the servers, each with the SDK app and `extra` flags; `None` (skipped loudly)
    /// when a cluster is asked for and Redis is not installed.
    async fn start(backend: &'static str, topology: Topology, extra: &[&str]) -> Option<Nodes> {
        let args = sdk_app_args(extra);
        Some(match topology {
            Topology::Single => Nodes {
                servers: vec![Server::start(backend, &args)],
                _redis: None,
            },
            Topology::Cluster => {
                let redis = Redis::start()?;
                let mut servers = Vec::new();
                for id in ["a", "b", "c"] {
                    servers.push(node(&redis, backend, id, &args).await);
                }
                Nodes {
                    servers,
                    _redis: Some(redis),
                }
            }
        })
    }

    fn at(&self, i: usize) -> &Server {
        &self.servers[i % self.servers.len()]
    }

    fn a(&self) -> &Server {
        self.at(0)
    }

    fn b(&self) -> &Server {
        self.at(1)
    }

    fn c(&self) -> &Server {
        self.at(2)
    }
}

/// pusher-js (listen.cjs, on node a) receives what the SDK's trigger.py publishes through
/// node c, except the event that excludes its socket; the SDK's queries through c count it.
async fn python_sdk_events_reach_pusher_js(backend: &'static str, topology: Topology) {
    let Some(d) = Deps::find() else { return };
    let Some(nodes) = Nodes::start(backend, topology, &[]).await else {
        return;
    };
    let (node_path, python_path, clients) = (&d.node_path, &d.python_path, &d.clients);
    let server = nodes.a();
    let host = server.addr.ip().to_string();
    let port = server.addr.port().to_string();

    let mut cmd = Command::new("node");
    cmd.arg(clients.join("listen.cjs"))
        .args([host.as_str(), port.as_str(), APP_KEY, "6", "sdk-a", "sdk-b"])
        .env("NODE_PATH", node_path);
    let mut listener = Proc::spawn("pusher-js (listen.cjs)".into(), cmd);
    // Every line, in the order printed.
    let mut next = || listener.take("a line", |_| true);

    let mut socket_id = None;
    let mut subscribed = 0;
    while socket_id.is_none() || subscribed < 2 {
        let v = next();
        match v["type"].as_str() {
            Some("connected") => socket_id = Some(v["socket_id"].as_str().unwrap().to_string()),
            Some("subscribed") => subscribed += 1,
            _ => panic!("pusher-js: {v}"),
        }
    }

    let api_host = nodes.c().addr.ip().to_string();
    let api_port = nodes.c().addr.port().to_string();
    let mut python = Command::new("python3");
    python.arg(clients.join("trigger.py")).args([
        api_host.as_str(),
        api_port.as_str(),
        APP_ID,
        APP_KEY,
        APP_SECRET,
        socket_id.as_deref().unwrap(),
    ]);
    if let Some(p) = python_path {
        python.env("PYTHONPATH", p);
    }
    let out = python.output().expect("run python");
    assert!(
        out.status.success(),
        "trigger.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let queries: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        queries["channels"],
        json!({"channels": {"sdk-a": {"subscription_count": 1}, "sdk-b": {"subscription_count": 1}}})
    );
    assert_eq!(
        queries["channel"],
        json!({"occupied": true, "subscription_count": 1})
    );
    assert_eq!(queries["wrong_secret"], "refused");

    let mut events: Vec<(String, String, Value)> = Vec::new();
    while events.len() < 6 {
        let v = next();
        assert_eq!(v["type"], "event", "{v}");
        events.push((
            v["channel"].as_str().unwrap().into(),
            v["event"].as_str().unwrap().into(),
            v["data"].clone(),
        ));
    }
    assert_eq!(next()["type"], "done");
    let on = |ch: &str| -> Vec<(String, Value)> {
        events
            .iter()
            .filter(|e| e.0 == ch)
            .map(|e| (e.1.clone(), e.2.clone()))
            .collect()
    };
    assert_eq!(
        on("sdk-a"),
        vec![
            ("single".into(), json!({"message": "hello from python"})),
            ("multi".into(), json!({"n": 2})),
            ("last".into(), json!("plain string")),
        ],
        "the excluded event must not arrive"
    );
    assert_eq!(
        on("sdk-b"),
        vec![
            ("multi".into(), json!({"n": 2})),
            ("batched".into(), json!({"i": 0})),
            ("batched".into(), json!({"i": 1})),
        ]
    );
    // Closing its stdin disconnects pusher-js.
    listener.close_stdin();
    assert!(listener.wait_exit().success());
}

/// pusher-js authorizes private channels through the backend's endpoint (the Python SDK's
/// `authenticate`), receives what the SDK triggers (also end-to-end encrypted), sees the
/// server refuse a forged signature, and exchanges client events that are never echoed to
/// their sender. Alice is on node a, Bob on node b, the SDK calls node c.
async fn pusher_js_private_channels_authorized_by_python_sdk(
    backend: &'static str,
    topology: Topology,
) {
    let Some(d) = Deps::find() else { return };
    let mut app = Backend::start(&d);
    let Some(nodes) = Nodes::start(backend, topology, &[]).await else {
        return;
    };
    app.target(nodes.c());
    let mut alice = Js::start(&d, nodes.a(), &app, "alice", "Alice");
    let mut bob = Js::start(&d, nodes.b(), &app, "bob", "Bob");

    alice.subscribe("private-orders", &[]);
    assert_eq!(
        app.call(
            "trigger",
            json!(["private-orders", "order-created", {"id": 7}])
        ),
        json!({})
    );
    assert_eq!(
        alice.next_on("private-orders"),
        json!({"type": "event", "channel": "private-orders", "event": "order-created",
               "data": {"id": 7}, "user_id": null})
    );

    // The backend signs private-forged-* with a wrong secret: the server refuses it and
    // pusher-js reports the refusal as the protocol describes.
    let refused = alice.subscription_error("private-forged-orders");
    assert_eq!(refused["error"]["type"], "AuthError", "{refused}");
    assert_eq!(refused["error"]["status"], 401, "{refused}");
    assert!(
        refused["error"]["error"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{refused}"
    );
    assert_eq!(
        app.call(
            "channel_info",
            json!(["private-forged-orders", ["subscription_count"]])
        ),
        json!({"occupied": false, "subscription_count": 0})
    );

    // End-to-end encrypted: the SDK encrypts with the channel's key, the server relays the
    // ciphertext untouched, pusher-js decrypts with the shared secret the backend gave it.
    alice.subscribe("private-encrypted-vault", &[]);
    app.call(
        "trigger",
        json!(["private-encrypted-vault", "sealed", {"pin": "1234"}]),
    );
    assert_eq!(
        alice.next_on("private-encrypted-vault"),
        json!({"type": "event", "channel": "private-encrypted-vault", "event": "sealed",
               "data": {"pin": "1234"}, "user_id": null})
    );

    // Client events on a private channel: delivered to the other member, without user_id,
    // never back to the sender (the answer arrives first although it was sent later).
    let binds = ["client-ping", "client-pong"];
    alice.subscribe("private-chat", &binds);
    bob.subscribe("private-chat", &binds);
    alice.trigger("private-chat", "client-ping", json!({"n": 1}));
    assert_eq!(
        bob.next_on("private-chat"),
        json!({"type": "event", "channel": "private-chat", "event": "client-ping",
               "data": {"n": 1}, "user_id": null})
    );
    bob.trigger("private-chat", "client-pong", json!({"n": 2}));
    assert_eq!(
        alice.next_on("private-chat"),
        json!({"type": "event", "channel": "private-chat", "event": "client-pong",
               "data": {"n": 2}, "user_id": null}),
        "alice must not receive her own client event"
    );
    // The SDK-triggered event still reaches both, after the client events.
    app.call("trigger", json!(["private-chat", "server-note", "done"]));
    for js in [&mut alice, &mut bob] {
        assert_eq!(js.next_on("private-chat")["event"], "server-note");
    }
}

/// Two pusher-js clients in a presence channel see each other with the user info the
/// backend signed, exchange client events stamped with the sender's user id, and a second
/// connection of one user is the same member. Alice is on node a, Bob on node b and his
/// second connection on node a, the SDK calls node c.
async fn pusher_js_presence_members_and_client_events(backend: &'static str, topology: Topology) {
    let Some(d) = Deps::find() else { return };
    let mut app = Backend::start(&d);
    let Some(nodes) = Nodes::start(backend, topology, &[]).await else {
        return;
    };
    app.target(nodes.c());
    let mut alice = Js::start(&d, nodes.a(), &app, "alice", "Alice");
    let mut bob = Js::start(&d, nodes.b(), &app, "bob", "Bob");
    let room = "presence-room";
    let binds = ["client-typing", "client-reply"];
    let alice_m = json!({"id": "alice", "info": {"name": "Alice"}});
    let bob_m = json!({"id": "bob", "info": {"name": "Bob"}});

    let sub = alice.subscribe(room, &binds);
    assert_eq!(
        sub["members"],
        json!({"count": 1, "me": alice_m, "list": [alice_m]})
    );
    let sub = bob.subscribe(room, &binds);
    assert_eq!(
        sub["members"],
        json!({"count": 2, "me": bob_m, "list": [alice_m, bob_m]})
    );
    assert_eq!(
        alice.next_on(room),
        json!({"type": "member_added", "channel": room, "member": bob_m, "count": 2})
    );

    bob.trigger(room, "client-typing", json!({"text": "hi"}));
    assert_eq!(
        alice.next_on(room),
        json!({"type": "event", "channel": room, "event": "client-typing",
               "data": {"text": "hi"}, "user_id": "bob"})
    );
    alice.trigger(room, "client-reply", json!({"text": "hello bob"}));
    assert_eq!(
        bob.next_on(room),
        json!({"type": "event", "channel": room, "event": "client-reply",
               "data": {"text": "hello bob"}, "user_id": "alice"}),
        "bob must not receive his own client event"
    );

    // A second connection of bob's: still two members; when the first one leaves, bob
    // stays a member. Alice sees neither (the SDK's marker is the next thing she gets).
    let mut bob2 = Js::start(&d, nodes.a(), &app, "bob", "Bob");
    let sub = bob2.subscribe(room, &binds);
    assert_eq!(
        sub["members"],
        json!({"count": 2, "me": bob_m, "list": [alice_m, bob_m]})
    );
    bob.disconnect();
    app.eventually(
        "channel_info",
        json!([room, ["user_count", "subscription_count"]]),
        json!({"occupied": true, "user_count": 2, "subscription_count": 2}),
    );
    app.call("trigger", json!([room, "marker", {}]));
    assert_eq!(
        alice.next_on(room),
        json!({"type": "event", "channel": room, "event": "marker", "data": {}, "user_id": null}),
        "one user's second connection is no new member, and its first leaving removes nobody"
    );
    assert_eq!(
        alice.members(room),
        json!({"count": 2, "me": alice_m, "list": [alice_m, bob_m]})
    );
    assert_eq!(
        sorted_users(app.call("users_info", json!([room]))),
        json!({"users": [{"id": "alice"}, {"id": "bob"}]})
    );

    bob2.disconnect();
    assert_eq!(
        alice.next_on(room),
        json!({"type": "member_removed", "channel": room, "member": bob_m, "count": 1})
    );
    assert_eq!(
        app.call("users_info", json!([room])),
        json!({"users": [{"id": "alice"}]})
    );
}

/// `pusher.signin()` through the backend's user-auth endpoint (the SDK's
/// `authenticate_user`); the SDK's `send_to_user` reaches every connection of that user and
/// nobody else; terminating the user's connections disconnects exactly those. Carol has a
/// connection on node a and one on node b, Dave is on node a, the SDK calls node c.
async fn pusher_js_signin_send_to_user_and_terminate(backend: &'static str, topology: Topology) {
    let Some(d) = Deps::find() else { return };
    let mut app = Backend::start(&d);
    let Some(nodes) = Nodes::start(backend, topology, &[]).await else {
        return;
    };
    app.target(nodes.c());
    let mut carol1 = Js::start(&d, nodes.a(), &app, "carol", "Carol");
    let mut carol2 = Js::start(&d, nodes.b(), &app, "carol", "Carol");
    let mut dave = Js::start(&d, nodes.a(), &app, "dave", "Dave");
    for js in [&mut carol1, &mut carol2, &mut dave] {
        js.signin();
    }

    assert_eq!(
        app.call(
            "send_to_user",
            json!(["carol", "notice", {"text": "for carol"}])
        ),
        json!({})
    );
    for js in [&mut carol1, &mut carol2] {
        assert_eq!(
            js.next_user_event(),
            json!({"type": "user_event", "event": "notice", "data": {"text": "for carol"}})
        );
    }
    app.call(
        "send_to_user",
        json!(["dave", "notice", {"text": "for dave"}]),
    );
    assert_eq!(
        dave.next_user_event(),
        json!({"type": "user_event", "event": "notice", "data": {"text": "for dave"}}),
        "carol's event must not reach dave"
    );

    terminate_user(&mut app, "carol");
    for js in [&mut carol1, &mut carol2] {
        let err = js.p.take("a 4009 error", |v| {
            v["type"] == "error" && v["error"]["type"] == "PusherError"
        });
        assert_eq!(err["error"]["data"]["code"], 4009, "{err}");
        js.p.take("the disconnect", |v| {
            v["type"] == "state" && v["current"] == "disconnected"
        });
    }

    // Dave is still connected and signed in.
    app.call(
        "send_to_user",
        json!(["dave", "notice", {"text": "still here"}]),
    );
    assert_eq!(
        dave.next_user_event()["data"],
        json!({"text": "still here"})
    );
    dave.p.drain();
    let changes: Vec<&Value> = dave
        .p
        .seen
        .iter()
        .filter(|v| v["type"] == "state")
        .collect();
    assert_eq!(
        changes,
        vec![&json!({"type": "state", "previous": "connecting", "current": "connected"})],
        "dave's connection must not have been touched"
    );
}

/// Terminates a user's connections with the Python SDK. (pusher-http-python 3.3 posts to
/// `/users/{id}/terminate_connections`, without the documented `/apps/{app_id}` prefix;
/// the server accepts both.)
fn terminate_user(app: &mut Backend, user: &str) {
    let reply = app
        .try_call("terminate_user_connections", json!([user]))
        .unwrap_or_else(|e| panic!("terminate_user_connections({user:?}) refused: {e}"));
    assert_eq!(reply, json!({}));
}

/// The Python SDK's HTTP API calls against channels pusher-js clients occupy, and webhooks
/// the SDK's `validate_webhook` accepts: `channel_occupied`, `member_added`, then (after
/// the server's delay) `member_removed` and `channel_vacated`. Erin has a connection on
/// node a and one on node b, Frank is on node b, the SDK calls node c; in a cluster every
/// node has the webhook URL and each webhook comes from the node that decided it, once.
async fn python_sdk_http_api_and_validated_webhooks(backend: &'static str, topology: Topology) {
    let Some(d) = Deps::find() else { return };
    let mut app = Backend::start(&d);
    let hook = format!("http://127.0.0.1:{}/webhook", app.port);
    let Some(nodes) = Nodes::start(backend, topology, &["--webhook-url", &hook]).await else {
        return;
    };
    app.target(nodes.c());
    let lobby = "presence-lobby";
    let mut erin1 = Js::start(&d, nodes.a(), &app, "erin", "Erin");
    let mut erin2 = Js::start(&d, nodes.b(), &app, "erin", "Erin");
    let mut frank = Js::start(&d, nodes.b(), &app, "frank", "Frank");
    for js in [&mut erin1, &mut erin2, &mut frank] {
        js.subscribe(lobby, &[]);
    }
    frank.subscribe("news", &[]);

    let mut hooks = Vec::new();
    app.webhooks_until(&mut hooks, WAIT, |h| {
        has_hook(h, "channel_occupied", lobby, None)
            && has_hook(h, "channel_occupied", "news", None)
            && has_hook(h, "member_added", lobby, Some("erin"))
            && has_hook(h, "member_added", lobby, Some("frank"))
    });

    // trigger() of SDK 3.3.4 takes no `info`, so this request is built and signed by the
    // SDK's Request class.
    assert_eq!(
        app.request(
            "POST",
            &format!("/apps/{APP_ID}/events"),
            json!({"name": "score", "channels": [lobby, "news"], "data": "{\"home\":1}",
                   "info": "user_count,subscription_count"})
        ),
        json!({"channels": {lobby: {"user_count": 2, "subscription_count": 3},
                            "news": {"subscription_count": 1}}})
    );
    for (js, channel) in [(&mut erin1, lobby), (&mut frank, "news")] {
        assert_eq!(
            js.next_event(channel),
            json!({"type": "event", "channel": channel, "event": "score",
                   "data": {"home": 1}, "user_id": null})
        );
    }
    // trigger_batch passes each event's `info` through.
    assert_eq!(
        app.call(
            "trigger_batch",
            json!([[
                {"channel": lobby, "name": "b1", "data": {"i": 1}, "info": "user_count,subscription_count"},
                {"channel": "news", "name": "b2", "data": {"i": 2}, "info": "subscription_count"},
                {"channel": "news", "name": "b3", "data": {"i": 3}}
            ]])
        ),
        json!({"batch": [{"user_count": 2, "subscription_count": 3}, {"subscription_count": 1}, {}]})
    );
    assert_eq!(erin2.next_event(lobby)["event"], "score");
    assert_eq!(erin2.next_event(lobby)["data"], json!({"i": 1}));
    assert_eq!(frank.next_event("news")["data"], json!({"i": 2}));
    assert_eq!(frank.next_event("news")["data"], json!({"i": 3}));

    assert_eq!(
        app.call("channels_info", json!(["presence-", ["user_count"]])),
        json!({"channels": {lobby: {"user_count": 2}}})
    );
    assert_eq!(
        app.call("channels_info", json!([null, ["subscription_count"]])),
        json!({"channels": {"news": {"subscription_count": 1}, lobby: {"subscription_count": 3}}})
    );
    assert_eq!(
        app.call(
            "channel_info",
            json!([lobby, ["user_count", "subscription_count"]])
        ),
        json!({"occupied": true, "user_count": 2, "subscription_count": 3})
    );
    assert_eq!(
        sorted_users(app.call("users_info", json!([lobby]))),
        json!({"users": [{"id": "erin"}, {"id": "frank"}]})
    );
    // The SDK maps the server's 400 to its PusherBadRequest.
    let err = app
        .try_call("channel_info", json!(["news", ["user_count"]]))
        .expect_err("user_count of a public channel");
    assert!(err.starts_with("PusherBadRequest"), "{err}");

    // Everybody leaves.
    for js in [&mut erin1, &mut erin2, &mut frank] {
        js.p.close_stdin();
        assert!(js.p.wait_exit().success());
    }
    app.webhooks_until(&mut hooks, Duration::from_secs(8), |h| {
        has_hook(h, "channel_vacated", lobby, None)
            && has_hook(h, "channel_vacated", "news", None)
            && has_hook(h, "member_removed", lobby, Some("erin"))
            && has_hook(h, "member_removed", lobby, Some("frank"))
    });
    let count = |name: &str, user: Option<&str>| {
        hooks
            .iter()
            .filter(|e| is_hook(e, name, lobby, user))
            .count()
    };
    assert_eq!(count("channel_occupied", None), 1, "{hooks:#?}");
    assert_eq!(
        count("member_added", Some("erin")),
        1,
        "two connections, one member: {hooks:#?}"
    );
    assert_eq!(count("member_removed", Some("erin")), 1, "{hooks:#?}");
    assert_eq!(
        app.call("channels_info", json!([])),
        json!({"channels": {}})
    );
}

fn is_hook(e: &Value, name: &str, channel: &str, user: Option<&str>) -> bool {
    e["name"] == name && e["channel"] == channel && user.is_none_or(|u| e["user_id"] == u)
}

fn has_hook(events: &[Value], name: &str, channel: &str, user: Option<&str>) -> bool {
    events.iter().any(|e| is_hook(e, name, channel, user))
}

/// `{"users": [...]}` sorted by id (the API does not promise an order).
fn sorted_users(mut v: Value) -> Value {
    if let Some(users) = v["users"].as_array_mut() {
        users.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    }
    v
}
