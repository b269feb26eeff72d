//! The official SDK and client steered by the integration tests: an app backend on the
//! Python server SDK (`tests/clients/backend.py`: auth endpoints, webhook receiver, SDK calls
//! on stdin) and pusher-js instances (`tests/clients/client.cjs`), each a child process
//! printing one JSON line per thing it sees.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{deps, Server, WAIT};

// pusher-http-python only accepts numeric app ids, so the demo app (`app-id`) cannot be used.
pub const APP_ID: &str = "4242";
pub const APP_KEY: &str = "sdk-key";
pub const APP_SECRET: &str = "sdk-secret-7f3a";

/// The command line for the SDK app: numeric id (pusher-http-python insists), client events.
pub fn sdk_app_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--app-id",
        APP_ID,
        "--app-key",
        APP_KEY,
        "--app-secret",
        APP_SECRET,
        "--client-events",
    ];
    args.extend_from_slice(extra);
    args
}

/// Where the third-party clients live; `None` (after saying why) when they cannot run.
pub struct Deps {
    pub node_path: PathBuf,
    pub python_path: Option<PathBuf>,
    pub clients: PathBuf,
}

impl Deps {
    pub fn find() -> Option<Deps> {
        let node_path = deps::node_modules()?;
        let python_path = deps::python(&["pusher"], &["pusher==3.3.4"])?;
        Some(Deps {
            node_path,
            python_path,
            clients: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join("clients"),
        })
    }
}

/// A child process printing one JSON object a line and taking commands on stdin; killed
/// when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub lines: Receiver<Value>,
    /// Lines read and not yet taken, in order.
    pub pending: VecDeque<Value>,
    /// Every line read, for checks and failure messages.
    pub seen: Vec<Value>,
}

impl Proc {
    pub fn spawn(name: String, mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({"type": "noise", "line": line}));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Proc {
            name,
            stdin: child.stdin.take(),
            child,
            lines,
            pending: VecDeque::new(),
            seen: Vec::new(),
        }
    }

    pub fn send(&mut self, cmd: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        writeln!(stdin, "{cmd}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: sending {cmd}: {e}", self.name));
    }

    /// The first line not taken yet that `pred` accepts, waiting at most [`WAIT`].
    pub fn take(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.take_within(what, WAIT, pred)
    }

    pub fn take_within(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).unwrap();
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                    self.pending.push_back(v);
                }
                Err(e) => panic!(
                    "{}: no {what} within {within:?} ({e}); everything it printed:\n{}",
                    self.name,
                    self.seen
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
    }

    /// Reads whatever has been printed so far, without waiting.
    pub fn drain(&mut self) {
        while let Ok(v) = self.lines.try_recv() {
            self.seen.push(v.clone());
            self.pending.push_back(v);
        }
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An app backend on the Python SDK (tests/clients/backend.py): auth endpoints, webhook
/// receiver, and SDK calls on demand.
pub struct Backend {
    pub p: Proc,
    pub port: u16,
    pub next_id: u64,
}

impl Backend {
    pub fn start(d: &Deps) -> Backend {
        let mut cmd = Command::new("python3");
        cmd.arg(d.clients.join("backend.py"))
            .args([APP_ID, APP_KEY, APP_SECRET]);
        if let Some(p) = &d.python_path {
            cmd.env("PYTHONPATH", p);
        }
        let mut p = Proc::spawn("backend.py".into(), cmd);
        let port = p.take("listening line", |v| v["type"] == "listening")["port"]
            .as_u64()
            .unwrap() as u16;
        Backend {
            p,
            port,
            next_id: 0,
        }
    }

    /// Points the SDK at the server under test.
    pub fn target(&mut self, server: &Server) {
        let host = server.addr.ip().to_string();
        self.rpc(json!({"op": "target", "host": host, "port": server.addr.port()}))
            .unwrap();
    }

    /// Runs one command; `Err("ErrorClass: message")` when the SDK raised.
    pub fn rpc(&mut self, mut cmd: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        cmd["id"] = id.into();
        self.p.send(&cmd);
        let r = self.p.take(&format!("result of {cmd}"), |v| {
            v["type"] == "result" && v["id"] == id
        });
        if r["ok"] == true {
            Ok(r["result"].clone())
        } else {
            Err(format!(
                "{}: {}",
                r["error"].as_str().unwrap_or("?"),
                r["message"].as_str().unwrap_or("?")
            ))
        }
    }

    /// Calls a method of the SDK's `pusher.Pusher` with positional `args`.
    pub fn try_call(&mut self, method: &str, args: Value) -> Result<Value, String> {
        self.rpc(json!({"op": "call", "method": method, "args": args}))
    }

    pub fn call(&mut self, method: &str, args: Value) -> Value {
        self.try_call(method, args.clone())
            .unwrap_or_else(|e| panic!("SDK {method}({args}): {e}"))
    }

    /// A request the SDK has no method for, signed and sent by the SDK's `Request`.
    pub fn request(&mut self, method: &str, path: &str, params: Value) -> Value {
        self.rpc(json!({"op": "request", "method": method, "path": path, "params": params}))
            .unwrap_or_else(|e| panic!("SDK request {method} {path}: {e}"))
    }

    /// Repeats an SDK call until it returns `want` (state that settles asynchronously).
    pub fn eventually(&mut self, method: &str, args: Value, want: Value) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.call(method, args.clone());
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "SDK {method}({args}): still {got}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Collects the events of validated webhook requests into `events` until `done`
    /// accepts them; any request the SDK's `validate_webhook` rejects fails the test.
    pub fn webhooks_until(
        &mut self,
        events: &mut Vec<Value>,
        within: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !done(events) {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .p
                .take_within(&format!("further webhooks (have {events:?})"), left, |v| {
                    v["type"] == "webhook" || v["type"] == "webhook_rejected"
                });
            assert_eq!(v["type"], "webhook", "validate_webhook refused: {v}");
            events.extend(v["events"].as_array().unwrap().iter().cloned());
        }
    }
}

/// One pusher-js instance (tests/clients/client.cjs) acting for one user of the backend.
pub struct Js {
    pub p: Proc,
    pub user: String,
    pub name: String,
}

impl Js {
    pub fn start(d: &Deps, server: &Server, backend: &Backend, user: &str, name: &str) -> Js {
        let mut cmd = Command::new("node");
        cmd.arg(d.clients.join("client.cjs"))
            .args([
                server.addr.ip().to_string(),
                server.addr.port().to_string(),
                APP_KEY.to_string(),
                format!("http://127.0.0.1:{}", backend.port),
                user.to_string(),
                name.to_string(),
            ])
            .env("NODE_PATH", &d.node_path);
        let mut p = Proc::spawn(format!("pusher-js ({user})"), cmd);
        p.take("connection", |v| v["type"] == "connected");
        Js {
            p,
            user: user.into(),
            name: name.into(),
        }
    }

    /// Subscribes and returns pusher-js's `subscribed` line (with `members` on presence).
    pub fn subscribe(&mut self, channel: &str, bind: &[&str]) -> Value {
        let v = self.subscribe_answer(channel, bind);
        assert_eq!(v["type"], "subscribed", "{}: {v}", self.p.name);
        v
    }

    /// Subscribes to a channel the server must refuse; returns the error pusher-js reports.
    pub fn subscription_error(&mut self, channel: &str) -> Value {
        let v = self.subscribe_answer(channel, &[]);
        assert_eq!(v["type"], "subscription_error", "{}: {v}", self.p.name);
        v
    }

    pub fn subscribe_answer(&mut self, channel: &str, bind: &[&str]) -> Value {
        self.p
            .send(&json!({"op": "subscribe", "channel": channel, "bind": bind}));
        self.p
            .take(&format!("answer to subscribing {channel}"), |v| {
                v["channel"] == channel
                    && (v["type"] == "subscribed" || v["type"] == "subscription_error")
            })
    }

    /// The next event or member change pusher-js reports on `channel`.
    pub fn next_on(&mut self, channel: &str) -> Value {
        self.p.take(&format!("event on {channel}"), |v| {
            v["channel"] == channel
                && matches!(
                    v["type"].as_str(),
                    Some("event" | "member_added" | "member_removed")
                )
        })
    }

    /// The next event (not member change) pusher-js reports on `channel`.
    pub fn next_event(&mut self, channel: &str) -> Value {
        self.p.take(&format!("event on {channel}"), |v| {
            v["channel"] == channel && v["type"] == "event"
        })
    }

    /// Sends a client event; pusher-js must accept it.
    pub fn trigger(&mut self, channel: &str, event: &str, data: Value) {
        self.p
            .send(&json!({"op": "trigger", "channel": channel, "event": event, "data": data}));
        let v = self.p.take("trigger answer", |v| v["type"] == "triggered");
        assert_eq!(v["ok"], true, "pusher-js refused to send {event}: {v}");
    }

    /// The presence members pusher-js holds for `channel`.
    pub fn members(&mut self, channel: &str) -> Value {
        self.p.send(&json!({"op": "members", "channel": channel}));
        self.p.take("members", |v| {
            v["type"] == "members" && v["channel"] == channel
        })["members"]
            .clone()
    }

    /// `pusher.signin()`; waits until pusher-js has subscribed its user channel.
    pub fn signin(&mut self) {
        self.p.send(&json!({"op": "signin"}));
        let v = self.p.take("signin_success", |v| {
            v["type"] == "signin_success" || v["type"] == "signin_error"
        });
        assert_eq!(
            v,
            json!({"type": "signin_success",
                   "user_data": {"id": self.user, "user_info": {"name": self.name}}})
        );
        let channel = format!("#server-to-user-{}", self.user);
        self.p.take("user channel subscription", |v| {
            v["type"] == "user_channel_subscribed" && v["channel"] == channel
        });
    }

    /// The next event the user (not a channel) received.
    pub fn next_user_event(&mut self) -> Value {
        self.p.take("user event", |v| v["type"] == "user_event")
    }

    /// `pusher.disconnect()`, waiting until pusher-js is disconnected.
    pub fn disconnect(&mut self) {
        self.p.send(&json!({"op": "disconnect"}));
        self.p.take("disconnect", |v| {
            v["type"] == "state" && v["current"] == "disconnected"
        });
    }
}
