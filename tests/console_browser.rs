//! The live console in a real browser: Debian's Chromium driven by Playwright
//! (`tests/browser/console.cjs`), against a server, the official Python server SDK
//! (`tests/clients/backend.py`) and pusher-js (`tests/clients/client.cjs`).
//!
//! Screenshots of the main views are saved to `$RINGCAST_CONSOLE_SCREENSHOTS` (default
//! `target/console-screenshots`); `docs/console/` holds the ones the docs show, made with
//! `RINGCAST_CONSOLE_SCREENSHOTS=docs/console cargo test --test console_browser`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::hooks::{Answer, Receiver};
use common::sdk::{sdk_app_args, Backend, Deps, Js, Proc, APP_ID};
use common::{deps, Server};
use serde_json::{json, Value};

/// One Chromium page steered over stdin.
struct Browser {
    p: Proc,
}

impl Browser {
    fn start(d: &Deps) -> Option<Browser> {
        let chromium = deps::chromium()?;
        let mut cmd = Command::new("node");
        cmd.arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join("browser")
                .join("console.cjs"),
        )
        .env("NODE_PATH", &d.node_path)
        .env("CHROMIUM", chromium);
        Some(Browser {
            p: Proc::spawn("console.cjs (Chromium)".into(), cmd),
        })
    }

    /// Runs one command; its answer must say `ok`.
    fn run(&mut self, cmd: Value) -> Value {
        let v = self.try_run(cmd.clone());
        assert_eq!(v["ok"], true, "{cmd}: {v}");
        v
    }

    fn try_run(&mut self, cmd: Value) -> Value {
        let name = cmd["cmd"].clone();
        self.p.send(&cmd);
        self.p
            .take_within(&format!("answer to {cmd}"), common::WAIT * 3, |v| {
                v["cmd"] == name
            })
    }

    fn open(&mut self, server: &Server, app: &str) -> Value {
        let url = format!("http://127.0.0.1:{}/console", server.metrics_addr().port());
        self.run(json!({"cmd": "open", "url": url, "app": app}))
    }

    fn screenshot(&mut self, name: &str) {
        let dir = std::env::var_os("RINGCAST_CONSOLE_SCREENSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("target")
                    .join("console-screenshots")
            });
        std::fs::create_dir_all(&dir).unwrap();
        let path = std::fs::canonicalize(&dir).unwrap().join(name);
        self.run(json!({"cmd": "screenshot", "path": path, "full_page": true}));
    }

    /// Uncaught errors and `console.error` lines on the page must stay none.
    fn assert_no_page_errors(&mut self) {
        let v = self.run(json!({"cmd": "page_errors"}));
        assert_eq!(v["errors"], json!([]), "the page reported errors");
    }
}

/// An event the Python SDK publishes shows in the log; a pusher-js user joining a presence
/// channel shows in its members (with `user_info`) and the log, then leaves both; the
/// publish form reaches pusher-js; a webhook the receiver answers with 500 shows as retrying
/// with that status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_sdk_events_presence_members_and_failed_webhooks() {
    let Some(d) = Deps::find() else { return };
    let Some(mut browser) = Browser::start(&d) else {
        return;
    };
    let failing = Receiver::start(vec![Answer::Status(500); 20]).await;
    let server = Server::start("uring", &sdk_app_args(&["--webhook-url", &failing.url]));
    let mut backend = Backend::start(&d);
    backend.target(&server);

    let opened = browser.open(&server, APP_ID);
    assert_eq!(opened["view"], "console", "{opened}");

    // The official Python SDK publishes; the log shows the event with its data.
    backend.call(
        "trigger",
        json!(["orders", "order-shipped", {"id": 7, "to": "Ann"}]),
    );
    let seen = browser.run(json!({"cmd": "wait_log", "type": "api_message",
        "channel": "orders", "event": "order-shipped", "timeout_ms": 10_000}));
    assert_eq!(seen["found"], true, "{seen}");
    let data: Value = serde_json::from_str(seen["detail"].as_str().unwrap()).unwrap();
    assert_eq!(data, json!({"id": 7, "to": "Ann"}));

    // A pusher-js user joins a presence channel: listed with user_info, logged.
    let mut alice = Js::start(&d, &server, &backend, "alice", "Alice");
    alice.subscribe("presence-room", &[]);
    let member = browser.run(json!({"cmd": "wait_member", "channel": "presence-room",
        "user_id": "alice", "present": true, "timeout_ms": 10_000}));
    assert!(
        member["members_text"].as_str().unwrap().contains("Alice"),
        "user_info shown: {member}"
    );
    let joined = browser.run(json!({"cmd": "wait_log", "type": "member_added",
        "channel": "presence-room", "timeout_ms": 10_000}));
    assert_eq!(joined["found"], true, "{joined}");
    browser.run(json!({"cmd": "count", "name": "connections", "equals": "1", "timeout_ms": 5_000}));
    browser.run(json!({"cmd": "count", "name": "presence", "equals": "1", "timeout_ms": 5_000}));

    // The publish form goes through the HTTP API to pusher-js.
    let published = browser.run(json!({"cmd": "publish", "channel": "presence-room",
        "event": "from-console", "data": "{\"hello\":\"world\"}"}));
    assert!(
        published["result"].as_str().unwrap().starts_with("200"),
        "{published}"
    );
    let got = alice.next_event("presence-room");
    assert_eq!(got["event"], "from-console", "{got}");

    // channel_occupied went to a receiver answering 500: shown with its status.
    let hook = browser.run(json!({"cmd": "wait_webhook", "state": "retrying",
        "http_status": 500, "timeout_ms": 15_000}));
    assert!(
        hook["row_text"]
            .as_str()
            .unwrap()
            .contains("channel_occupied"),
        "{hook}"
    );
    browser.screenshot("overview.png");

    // Leaving: gone from the members, logged.
    alice.disconnect();
    let gone = browser.run(json!({"cmd": "wait_member", "channel": "presence-room",
        "user_id": "alice", "present": false, "timeout_ms": 10_000}));
    assert_eq!(gone["ok"], true, "{gone}");
    let left = browser.run(json!({"cmd": "wait_log", "type": "member_removed",
        "channel": "presence-room", "timeout_ms": 10_000}));
    assert_eq!(left["found"], true, "{left}");
    browser.screenshot("log.png");
    browser.assert_no_page_errors();
    browser.run(json!({"cmd": "close"}));
}

/// On a metrics listener off loopback the console asks for its token (a wrong one is
/// refused, the right one opens it); without a token there it is off and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_console_asks_for_its_token() {
    let Some(d) = Deps::find() else { return };
    let Some(mut browser) = Browser::start(&d) else {
        return;
    };
    let token = "browser-test-token-0123456789";
    let server = Server::start(
        "uring",
        &["--metrics-host", "0.0.0.0", "--console-token", token],
    );
    let opened = browser.open(&server, "app-id");
    assert_eq!(opened["view"], "login", "{opened}");
    browser.screenshot("login.png");
    let wrong = browser.run(json!({"cmd": "login", "token": "not-the-token-at-all"}));
    assert_eq!(wrong["view"], "login", "{wrong}");
    assert!(
        wrong["error_text"]
            .as_str()
            .unwrap()
            .contains("wrong token"),
        "{wrong}"
    );
    let right = browser.run(json!({"cmd": "login", "token": token}));
    assert_eq!(right["view"], "console", "{right}");
    let sent = browser.run(json!({"cmd": "publish", "channel": "c", "event": "e", "data": "1"}));
    assert!(
        sent["result"].as_str().unwrap().starts_with("200"),
        "{sent}"
    );
    drop(server);

    let server = Server::start("uring", &["--metrics-host", "0.0.0.0"]);
    let opened = browser.open(&server, "app-id");
    assert_eq!(opened["view"], "error", "{opened}");
    assert!(
        opened["error_text"]
            .as_str()
            .unwrap()
            .contains("--console-token"),
        "{opened}"
    );
    browser.assert_no_page_errors();
    browser.run(json!({"cmd": "close"}));
}
