//! A webhook receiver run by a test: a minimal HTTP/1.1 server that records each request
//! and answers from a script.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::WAIT;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub key: String,
    pub signature: String,
    pub body: String,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    pub fn events(&self) -> Vec<Value> {
        self.json()["events"].as_array().unwrap().clone()
    }
}

/// How the receiver answers.
#[derive(Clone, Copy, PartialEq)]
pub enum Answer {
    Status(u16),
    /// Read the request, never answer.
    Hang,
}

/// A minimal HTTP/1.1 webhook receiver: records each request, answers from a script
/// (then 200 for the rest).
pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(script: Vec<Answer>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/pusher", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.into_iter()));
        let g = got.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let got = g.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut s).await else {
                        return;
                    };
                    let answer = script.lock().unwrap().next().unwrap_or(Answer::Status(200));
                    got.lock().unwrap().push(req);
                    match answer {
                        Answer::Hang => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                        }
                        Answer::Status(code) => {
                            let reply = format!(
                                "HTTP/1.1 {code} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                            );
                            let _ = s.write_all(reply.as_bytes()).await;
                        }
                    }
                });
            }
        });
        Receiver { url, got }
    }

    pub fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have arrived; returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + WAIT;
        loop {
            let all = self.all();
            if all.len() >= n {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} webhook requests arrived: {all:?}",
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the events received include one matching `pred`; returns it.
    pub async fn wait_for_event(&self, pred: impl Fn(&Value) -> bool) -> (Received, Value) {
        let deadline = Instant::now() + WAIT;
        loop {
            for r in self.all() {
                if let Some(e) = r.events().into_iter().find(|e| pred(e)) {
                    return (r, e);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no such webhook event; got {:?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn event_names(&self) -> Vec<String> {
        self.all()
            .iter()
            .flat_map(|r| r.events())
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    }
}

async fn read_request(s: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let len: usize = header("content-length").parse().unwrap();
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(head.starts_with("POST "), "{head}");
    assert_eq!(header("content-type"), "application/json");
    Some(Received {
        at: Instant::now(),
        path: head.split_whitespace().nth(1).unwrap().to_string(),
        key: header("x-pusher-key"),
        signature: header("x-pusher-signature"),
        body: String::from_utf8(buf[head_end..head_end + len].to_vec()).unwrap(),
    })
}
