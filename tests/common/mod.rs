//! Shared test harness: start the real `ringcast` binary on a free port, connect real
//! WebSocket clients (tokio-tungstenite, or a raw socket for malformed frames), sign API
//! requests as Pusher's server SDKs do.

#![allow(dead_code)]

pub mod certs;
pub mod deps;
pub mod hooks;
pub mod raw;
pub mod redis;
pub mod sdk;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;

pub const APP_ID: &str = "app-id";
pub const APP_KEY: &str = "app-key";
pub const APP_SECRET: &str = "app-secret";

/// How long a test waits for anything before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// Runs a test body once per IO backend: `on_both_backends!(name, name2)` expects
/// `async fn name(backend: &'static str)` and generates `name::uring` and `name::epoll`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn uring() {
                    super::$name("uring").await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn epoll() {
                    super::$name("epoll").await
                }
            }
        )*
    };
}

/// Each test on both IO backends, over one Redis server and over a Redis Cluster (sharded
/// pub/sub).
#[macro_export]
macro_rules! on_backends_and_redis {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::Kind;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn uring() {
                    super::$name("uring", Kind::Single).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn epoll() {
                    super::$name("epoll", Kind::Single).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn uring_redis_cluster() {
                    super::$name("uring", Kind::Sharded).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn epoll_redis_cluster() {
                    super::$name("epoll", Kind::Sharded).await
                }
            }
        )*
    };
}

/// A running server process.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub backend: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts the server with `--io backend`, two workers, on a free port.
    pub fn start(backend: &'static str, args: &[&str]) -> Server {
        Self::try_start(backend, args).unwrap_or_else(|log| {
            panic!("ringcast did not start on {backend}:\n{}", log.join("\n"))
        })
    }

    /// Starts the server, or returns its log if it exits before listening.
    pub fn try_start(backend: &'static str, args: &[&str]) -> Result<Server, Vec<String>> {
        Self::spawn(Self::command(backend, args), backend)
    }

    /// The command [`Server::try_start`] runs, for a test that adds to it (environment).
    pub fn command(backend: &'static str, args: &[&str]) -> Command {
        // reqwest is built without a default TLS crypto provider; tests use ring's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast"));
        cmd.args([
            "--port",
            "0",
            "--io",
            backend,
            "--log-level",
            "ringcast=debug",
        ]);
        if !args.contains(&"--workers") {
            cmd.args(["--workers", "2"]);
        }
        if !args.contains(&"--metrics-port") {
            cmd.args(["--metrics-port", "0"]);
        }
        cmd.args(args);
        cmd
    }

    /// Spawns a prepared command and waits for its "listening" line.
    pub fn spawn(mut cmd: Command, backend: &'static str) -> Result<Server, Vec<String>> {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ringcast");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains(" listening ") {
                        if let Some(addr) = line
                            .split_whitespace()
                            .find_map(|w| w.strip_prefix("addr="))
                        {
                            let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                        }
                    }
                    if std::env::var_os("RINGCAST_TEST_LOG").is_some() {
                        eprintln!("[server] {line}");
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        match rx.recv_timeout(WAIT) {
            Ok(addr) => Ok(Server {
                child,
                addr,
                backend,
                log,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(50));
                let lines = log.lock().unwrap().clone();
                Err(lines)
            }
        }
    }

    pub fn ws_url(&self, key: &str) -> String {
        format!(
            "ws://{}/app/{key}?protocol=7&client=js&version=8.4.0&flash=false",
            self.addr
        )
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self.log().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}:\n{}",
                self.log().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The metrics listener's address, from the start-up log.
    pub fn metrics_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self.log.lock().unwrap().iter().find_map(|l| {
                if !l.contains("metrics endpoint") {
                    return None;
                }
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .map(|a| a.parse::<SocketAddr>().unwrap())
            });
            if let Some(a) = found {
                return a;
            }
            assert!(Instant::now() < deadline, "no metrics endpoint in the log");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A URL on the metrics listener.
    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.metrics_addr())
    }

    /// The whole `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let resp = reqwest::get(self.metrics_url("/metrics")).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    }

    /// Every sample of `/metrics`: `name{labels}` → value.
    pub async fn metric_samples(&self) -> std::collections::HashMap<String, f64> {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.parse::<f64>().unwrap())
            })
            .collect()
    }

    /// The sum of every sample of `name` in `/metrics` whose labels include `labels`.
    pub async fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        sample_sum(&self.metric_samples().await, name, labels) as u64
    }

    /// A Prometheus metric, per worker, from `/metrics`.
    pub async fn metrics(&self, name: &str) -> Vec<u64> {
        let text = self.metrics_text().await;
        let prefix = format!("{name}{{worker=");
        text.lines()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .collect()
    }

    /// The value of an unlabelled sample of `/metrics`; panics if there is none.
    pub async fn metric_value(&self, name: &str) -> u64 {
        let samples = self.metric_samples().await;
        match samples.get(name) {
            Some(v) => *v as u64,
            None => panic!("no sample {name} in /metrics"),
        }
    }

    /// The sum of a Prometheus metric over all workers.
    pub async fn metric_total(&self, name: &str) -> u64 {
        self.metrics(name).await.iter().sum()
    }

    /// The value of a Prometheus metric for one worker.
    pub async fn metric(&self, name: &str, worker: usize) -> u64 {
        self.metrics(name).await[worker]
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Measuring coverage (`just coverage`): an instrumented server writes its counts
        // when it exits normally, so it is asked to stop (SIGTERM) rather than killed.
        if std::env::var_os("RINGCAST_COVERAGE").is_some() {
            if let Ok(None) = self.child.try_wait() {
                self.signal(libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(15);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = self.child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A Pusher client over tokio-tungstenite.
pub struct Client {
    pub ws: Ws,
    pub socket_id: String,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq)]
pub enum Closed {
    Code(u16, String),
    NoCloseFrame,
}

impl Client {
    /// Connects to the demo app and reads `pusher:connection_established`.
    pub async fn connect(server: &Server) -> Client {
        Self::connect_url(&server.ws_url(APP_KEY)).await
    }

    pub async fn connect_url(url: &str) -> Client {
        let mut ws = Self::open(url).await;
        let msg = Self::next_json(&mut ws).await;
        assert_eq!(msg["event"], "pusher:connection_established", "{msg}");
        let data: Value = serde_json::from_str(msg["data"].as_str().unwrap()).unwrap();
        let socket_id = data["socket_id"].as_str().unwrap().to_string();
        Client { ws, socket_id }
    }

    /// Opens a WebSocket without reading anything.
    pub async fn open(url: &str) -> Ws {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        ws
    }

    async fn next_json(ws: &mut Ws) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("no message in time")
                .expect("connection ended")
                .expect("websocket error");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// The next JSON message.
    pub async fn recv(&mut self) -> Value {
        Self::next_json(&mut self.ws).await
    }

    /// The next message, or `None` if nothing arrives within `wait`.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        match tokio::time::timeout(wait, self.ws.next()).await {
            Err(_) => None,
            Ok(Some(Ok(Message::Text(t)))) => Some(serde_json::from_str(&t).unwrap()),
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws
            .send(Message::Text(t.to_string().into()))
            .await
            .unwrap();
    }

    /// Subscribes and waits for `subscription_succeeded`.
    pub async fn subscribe(&mut self, channel: &str) {
        self.send(json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": channel}}))
            .await;
        let msg = self.recv().await;
        assert_eq!(
            msg["event"], "pusher_internal:subscription_succeeded",
            "{msg}"
        );
        assert_eq!(msg["channel"], channel);
    }

    /// Reads until the connection closes, returning the close code (skipping messages).
    pub async fn closed(&mut self) -> Closed {
        wait_closed(&mut self.ws).await
    }
}

/// Reads a WebSocket until it closes, completing the closing handshake as a browser does
/// (the client's answer goes out, then the server ends the TCP connection).
pub async fn wait_closed(ws: &mut Ws) -> Closed {
    let deadline = Instant::now() + WAIT;
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next())
            .await
            .expect("connection not closed in time")
        {
            Some(Ok(Message::Close(Some(f)))) => {
                break Closed::Code(u16::from(f.code), f.reason.to_string())
            }
            Some(Ok(Message::Close(None))) => break Closed::Code(1005, String::new()),
            None | Some(Err(_)) => return Closed::NoCloseFrame,
            Some(Ok(_)) => {}
        }
    };
    // Polling on flushes tungstenite's queued close answer and waits for the end.
    let left = deadline.saturating_duration_since(Instant::now());
    let _ = tokio::time::timeout(left, async { while ws.next().await.is_some() {} }).await;
    closed
}

pub fn close_code(c: &Closed) -> u16 {
    match c {
        Closed::Code(c, _) => *c,
        Closed::NoCloseFrame => panic!("no close frame"),
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs a request as the Pusher server SDKs do and returns the full URL.
pub fn signed_url(
    server: &Server,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    timestamp: u64,
) -> String {
    signed_url_with(
        server, APP_KEY, APP_SECRET, method, path, extra, body, timestamp,
    )
}

#[allow(clippy::too_many_arguments)]
pub fn signed_url_with(
    server: &Server,
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    timestamp: u64,
) -> String {
    let mut params: Vec<(String, String)> = vec![
        ("auth_key".into(), key.into()),
        ("auth_timestamp".into(), timestamp.to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".into(), hex::encode(Md5::digest(body))));
    }
    for (k, v) in extra {
        params.push((k.to_string(), v.to_string()));
    }
    params.sort();
    let query = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{method}\n{path}\n{query}").as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    let encoded = params
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&");
    server.http(&format!("{path}?{encoded}&auth_signature={sig}"))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A signed API call; returns the status and the JSON body.
pub async fn api(
    server: &Server,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Value) {
    let body_bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let url = signed_url(server, method, path, extra, &body_bytes, now_secs());
    send_raw(method, &url, body_bytes).await
}

/// Sends a request as it is; returns the status and the JSON body.
pub async fn send_raw(method: &str, url: &str, body: Vec<u8>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let req = match method {
        "POST" => client
            .post(url)
            .header("content-type", "application/json")
            .body(body),
        "GET" => client.get(url),
        other => client.request(other.parse().unwrap(), url).body(body),
    };
    let resp = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("API timed out")
        .expect("API request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let json =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("reply is not JSON: {text:?}"));
    (status, json)
}

/// Repeats a signed GET until its JSON body equals `want` (state that settles
/// asynchronously, such as counts after clients leave).
pub async fn eventually_api(server: &Server, path: &str, extra: &[(&str, &str)], want: Value) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = api(server, "GET", path, extra, None).await;
        if body == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: still {body}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes one event through the signed API and asserts it was accepted.
pub async fn publish(server: &Server, channels: &[&str], name: &str, data: &str) {
    let (status, body) = api(
        server,
        "POST",
        &format!("/apps/{APP_ID}/events"),
        &[],
        Some(&json!({"name": name, "channels": channels, "data": data})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// `HMAC-SHA256(secret, text)` as lowercase hex.
pub fn hmac_hex(secret: &str, text: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(text.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The `auth` value an app's auth endpoint returns for a private channel
/// (`channel_data: None`) or a presence channel (`Some(channel_data)`).
pub fn channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    let text = match channel_data {
        Some(d) => format!("{socket_id}:{channel}:{d}"),
        None => format!("{socket_id}:{channel}"),
    };
    format!("{key}:{}", hmac_hex(secret, &text))
}

/// An apps file with the demo app's credentials and `settings` (more keys of its
/// `[[app]]` table, then any further tables).
pub fn demo_app_with(settings: &str) -> std::path::PathBuf {
    apps_file(&format!(
        "[[app]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\n{settings}\n"
    ))
}

/// Writes an apps file into a fresh temporary directory and returns its path.
pub fn apps_file(toml: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ringcast-apps-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("apps.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

impl Client {
    /// The worker this connection lives on (socket ids' sequence part is unique per worker
    /// residue class: `seq % workers`).
    pub fn worker(&self, workers: u64) -> u64 {
        self.socket_id
            .split_once('.')
            .unwrap()
            .1
            .parse::<u64>()
            .unwrap()
            % workers
    }

    /// Sends a subscribe for a private channel of the demo app, signed as an auth endpoint
    /// would, without waiting for the answer.
    pub async fn send_private_subscribe(&mut self, channel: &str) {
        let auth = channel_auth(APP_KEY, APP_SECRET, &self.socket_id, channel, None);
        self.send(json!({"event": "pusher:subscribe", "data": {"auth": auth, "channel": channel}}))
            .await;
    }

    /// Sends a subscribe for a presence channel of the demo app, signed as an auth endpoint
    /// would, without waiting for the answer.
    pub async fn send_presence_subscribe(&mut self, channel: &str, channel_data: &Value) {
        let data = channel_data.to_string();
        let auth = channel_auth(APP_KEY, APP_SECRET, &self.socket_id, channel, Some(&data));
        self.send(json!({"event": "pusher:subscribe", "data": {"auth": auth, "channel": channel, "channel_data": data}}))
            .await;
    }

    /// The next message that is not a `pusher_internal:subscription_count`.
    pub async fn recv_event(&mut self) -> Value {
        loop {
            let m = self.recv().await;
            if m["event"] != "pusher_internal:subscription_count" {
                return m;
            }
        }
    }

    /// Signs in as the demo app's auth endpoint would, without waiting for the answer.
    pub async fn send_signin(&mut self, user_data: &Value) {
        let data = user_data.to_string();
        let auth = format!(
            "{APP_KEY}:{}",
            hmac_hex(APP_SECRET, &format!("{}::user::{data}", self.socket_id))
        );
        self.send(json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": data}}))
            .await;
    }
}

/// Connects clients until one lands on each of `workers` workers; returns one per worker.
pub async fn one_per_worker(server: &Server, key: &str, workers: u64) -> Vec<Client> {
    let mut found: Vec<Option<Client>> = (0..workers).map(|_| None).collect();
    for _ in 0..200 {
        let c = Client::connect_url(&server.ws_url(key)).await;
        let w = c.worker(workers) as usize;
        if found[w].is_none() {
            found[w] = Some(c);
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("connections did not spread over {workers} workers");
}

/// The sum of every sample of `name` whose labels include all of `labels`.
pub fn sample_sum(
    samples: &std::collections::HashMap<String, f64>,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| {
            let (n, rest) = k.split_once('{').unwrap_or((k, ""));
            n == name
                && labels
                    .iter()
                    .all(|(l, v)| rest.contains(&format!("{l}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}
