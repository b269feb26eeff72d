//! A webhook receiver for soaks: accepts the server's webhook POSTs on a local address,
//! checks each signature (`X-Pusher-Key`, `X-Pusher-Signature`: hex HMAC-SHA256 of the
//! body with the app secret) and tallies the events of this run's channels, so the run can
//! tell at the end whether any was lost or sent twice:
//!
//! * every presence member that joined has left again: `member_added` and `member_removed`
//!   balance for each (channel, user);
//! * every channel occupied has been vacated: `channel_occupied` and `channel_vacated`
//!   balance for each channel;
//! * one `client_event` webhook for each client event published.
//!
//! Requests may arrive out of order (the server sends up to 8 at once per URL), so only
//! these balances, taken once everything has disconnected and the debounce is over, are
//! checked, never the order.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::pusher::hmac_hex;

/// Largest request head or body accepted (the server's bodies are far smaller).
const MAX_REQUEST: usize = 4 << 20;

/// What the receiver has counted so far.
#[derive(Debug, Default)]
pub struct Tally {
    pub requests: u64,
    pub bad_signatures: u64,
    pub malformed: u64,
    /// Events of this run's channels, by name.
    pub events: BTreeMap<String, u64>,
    /// Events of other channels (other runs, other apps) — ignored.
    pub foreign: u64,
    /// Per (channel, user): `member_added` minus `member_removed`.
    members: HashMap<(String, String), i64>,
    /// Per channel: `channel_occupied` minus `channel_vacated`.
    occupancy: HashMap<String, i64>,
    /// `client_event` webhooks per channel.
    client_events: HashMap<String, u64>,
}

/// The receiver, running on a thread of its own until the process exits.
pub struct Receiver {
    tally: Arc<Mutex<Tally>>,
}

impl Receiver {
    /// Listens on `addr` for webhooks signed with `key`/`secret`, counting the events of
    /// channels whose name contains `run`.
    pub fn start(
        addr: SocketAddr,
        key: String,
        secret: String,
        run: String,
    ) -> anyhow::Result<Self> {
        let std_listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("webhook receiver cannot listen on {addr}"))?;
        std_listener.set_nonblocking(true)?;
        let tally = Arc::new(Mutex::new(Tally::default()));
        let shared = Arc::new((key, secret, run, tally.clone()));
        std::thread::Builder::new()
            .name("webhooks".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let shared = shared.clone();
                        tokio::task::spawn_local(async move {
                            let (key, secret, run, tally) = &*shared;
                            let _ = serve(stream, key, secret, run, tally).await;
                        });
                    }
                });
            })?;
        Ok(Self { tally })
    }

    /// Figures and errors, once everything has disconnected and held webhooks are out:
    /// unbalanced members and channels, bad signatures, and (when `client_events` is given)
    /// a `client_event` count different from the events published.
    pub fn check(&self, client_events: Option<u64>) -> (BTreeMap<String, f64>, Vec<String>) {
        let t = self.tally.lock().expect("not poisoned");
        let mut figures = BTreeMap::new();
        let mut errors = Vec::new();
        figures.insert("webhook_requests".into(), t.requests as f64);
        for (name, n) in &t.events {
            figures.insert(format!("webhook_{name}"), *n as f64);
        }
        let members_open: Vec<_> = t.members.iter().filter(|(_, n)| **n != 0).collect();
        let channels_open: Vec<_> = t.occupancy.iter().filter(|(_, n)| **n != 0).collect();
        figures.insert(
            "webhook_members_unbalanced".into(),
            members_open.len() as f64,
        );
        figures.insert(
            "webhook_channels_unbalanced".into(),
            channels_open.len() as f64,
        );
        if t.bad_signatures > 0 || t.malformed > 0 {
            errors.push(format!(
                "webhooks: {} with a bad signature, {} malformed",
                t.bad_signatures, t.malformed
            ));
        }
        if !members_open.is_empty() {
            let examples: Vec<String> = members_open
                .iter()
                .take(5)
                .map(|((c, u), n)| format!("{c}/{u}: {n:+}"))
                .collect();
            errors.push(format!(
                "webhooks: member_added and member_removed differ for {} (channel, user) pairs: {}",
                members_open.len(),
                examples.join(", ")
            ));
        }
        if !channels_open.is_empty() {
            let examples: Vec<String> = channels_open
                .iter()
                .take(5)
                .map(|(c, n)| format!("{c}: {n:+}"))
                .collect();
            errors.push(format!(
                "webhooks: channel_occupied and channel_vacated differ for {} channels: {}",
                channels_open.len(),
                examples.join(", ")
            ));
        }
        if let Some(published) = client_events {
            let got: u64 = t.client_events.values().sum();
            figures.insert("client_events_published".into(), published as f64);
            if got != published {
                errors.push(format!(
                    "webhooks: {got} client_event webhooks for {published} client events published"
                ));
            }
        }
        (figures, errors)
    }
}

/// Serves one keep-alive connection: each request is checked, counted and answered 200.
async fn serve(
    mut stream: TcpStream,
    key: &str,
    secret: &str,
    run: &str,
    tally: &Mutex<Tally>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 16384];
    loop {
        // Head.
        let head_end = loop {
            if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_REQUEST {
                return Ok(());
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if len > MAX_REQUEST {
            return Ok(());
        }
        while buf.len() < head_end + len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = &buf[head_end..head_end + len];
        let signed = header("x-pusher-key").as_deref() == Some(key)
            && header("x-pusher-signature").as_deref()
                == Some(hmac_hex(secret, &String::from_utf8_lossy(body)).as_str());
        record(&mut tally.lock().expect("not poisoned"), signed, body, run);
        buf.drain(..head_end + len);
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await?;
    }
}

/// Counts one request's events.
fn record(t: &mut Tally, signed: bool, body: &[u8], run: &str) {
    t.requests += 1;
    if !signed {
        t.bad_signatures += 1;
        return;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        t.malformed += 1;
        return;
    };
    let Some(events) = v["events"].as_array() else {
        t.malformed += 1;
        return;
    };
    for e in events {
        let (Some(name), Some(channel)) = (e["name"].as_str(), e["channel"].as_str()) else {
            t.malformed += 1;
            continue;
        };
        if !channel.contains(run) {
            t.foreign += 1;
            continue;
        }
        *t.events.entry(name.to_string()).or_default() += 1;
        let user = || e["user_id"].as_str().unwrap_or_default().to_string();
        match name {
            "member_added" => *t.members.entry((channel.into(), user())).or_default() += 1,
            "member_removed" => *t.members.entry((channel.into(), user())).or_default() -= 1,
            "channel_occupied" => *t.occupancy.entry(channel.into()).or_default() += 1,
            "channel_vacated" => *t.occupancy.entry(channel.into()).or_default() -= 1,
            "client_event" => *t.client_events.entry(channel.into()).or_default() += 1,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(events: serde_json::Value) -> Vec<u8> {
        serde_json::json!({"time_ms": 1, "events": events})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn balances_members_and_channels_of_this_run_only() {
        let mut t = Tally::default();
        let joined = body(serde_json::json!([
            {"name": "channel_occupied", "channel": "presence-lt-abc-1"},
            {"name": "member_added", "channel": "presence-lt-abc-1", "user_id": "u1"},
            {"name": "member_added", "channel": "presence-other", "user_id": "u1"},
        ]));
        record(&mut t, true, &joined, "lt-abc-");
        assert_eq!(t.foreign, 1);
        let receiver = Receiver {
            tally: Arc::new(Mutex::new(t)),
        };
        let (figures, errors) = receiver.check(Some(0));
        assert_eq!(figures["webhook_members_unbalanced"], 1.0);
        assert_eq!(errors.len(), 2, "{errors:?}");
        let left = body(serde_json::json!([
            {"name": "member_removed", "channel": "presence-lt-abc-1", "user_id": "u1"},
            {"name": "channel_vacated", "channel": "presence-lt-abc-1"},
        ]));
        record(&mut receiver.tally.lock().unwrap(), true, &left, "lt-abc-");
        assert!(receiver.check(Some(0)).1.is_empty());
        record(&mut receiver.tally.lock().unwrap(), false, &left, "lt-abc-");
        assert_eq!(
            receiver.check(None).1.len(),
            1,
            "a bad signature fails the run"
        );
    }
}
