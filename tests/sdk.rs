//! Real third-party clients against ringcast: the official Python server SDK
//! (pusher-http-python) publishes and queries; pusher-js 8 (its Node build) subscribes and
//! receives — on both IO backends.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{deps, Server, WAIT};

// pusher-http-python only accepts numeric app ids, so the demo app (`app-id`) cannot be used.
const APP_ID: &str = "4242";
const APP_KEY: &str = "sdk-key";
const APP_SECRET: &str = "sdk-secret-7f3a";
use serde_json::{json, Value};

on_both_backends!(python_sdk_events_reach_pusher_js);

async fn python_sdk_events_reach_pusher_js(backend: &'static str) {
    let Some(node_path) = deps::node_modules() else {
        return;
    };
    let Some(python_path) = deps::python(&["pusher"], &["pusher==3.3.4"]) else {
        return;
    };
    let clients = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("clients");
    let server = Server::start(
        backend,
        &[
            "--app-id",
            APP_ID,
            "--app-key",
            APP_KEY,
            "--app-secret",
            APP_SECRET,
        ],
    );
    let host = server.addr.ip().to_string();
    let port = server.addr.port().to_string();

    let mut node = KillOnDrop(
        Command::new("node")
            .arg(clients.join("listen.cjs"))
            .args([host.as_str(), port.as_str(), APP_KEY, "6", "sdk-a", "sdk-b"])
            .env("NODE_PATH", &node_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node"),
    );
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let stdout = node.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| json!({"type": "noise", "line": line}));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let next = || {
        rx.recv_timeout(WAIT)
            .expect("pusher-js printed nothing in time")
    };

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

    let mut python = Command::new("python3");
    python.arg(clients.join("trigger.py")).args([
        host.as_str(),
        port.as_str(),
        APP_ID,
        APP_KEY,
        APP_SECRET,
        socket_id.as_deref().unwrap(),
    ]);
    if let Some(p) = &python_path {
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
    drop(node.0.stdin.take());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = node.0.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pusher-js did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child process if the test ends early.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
