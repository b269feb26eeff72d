//! Webhooks: telling an app's backend what happened on its channels.
//!
//! Workers hand events to [`Webhooks::send`], which never blocks: a bounded queue feeds one
//! dedicated sender thread (a current-thread tokio runtime with hyper's HTTP/1 client), so
//! a slow or hanging receiver can never stall a worker's event loop. On that thread:
//!
//! * `channel_vacated` and `member_removed` wait [`DEBOUNCE`]; a `channel_occupied` (or
//!   `member_added` of the same user) arriving meanwhile cancels both, so a page reload
//!   sends nothing.
//! * Each event goes to every URL of its app whose filter takes it: one request per event,
//!   or, with the app's `webhook_batching`, up to [`BATCH_MAX`] events gathered for at most
//!   [`BATCH_WINDOW`] (never mixing apps or URLs).
//! * A request is `{"time_ms":…,"events":[…]}`, signed with `X-Pusher-Key` and
//!   `X-Pusher-Signature` (hex HMAC-SHA256 of the body with the app secret). A non-2xx
//!   answer, a connection failure or no answer within [`ATTEMPT_TIMEOUT`] is retried with
//!   exponential backoff (1 s doubling, at most 60 s apart) for [`RETRY_FOR`]; then the
//!   request is dropped with a warning and counted.
//! * Memory is bounded: [`QUEUE`] events waiting for the thread, [`MAX_OUTSTANDING`]
//!   requests in flight or waiting to retry. Beyond either, events are dropped, logged and
//!   counted — never queued without limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use serde_json::{Map, Value};

use crate::app::{AppIdx, Apps, WebhookEvent};

/// The apps as last (re)loaded.
pub type SharedApps = Arc<arc_swap::ArcSwap<Apps>>;

/// How long `channel_vacated` and `member_removed` wait for the channel or member to
/// come back.
pub const DEBOUNCE: Duration = Duration::from_secs(3);
/// How long a failing request is retried.
pub const RETRY_FOR: Duration = Duration::from_secs(5 * 60);
/// Longest wait for one attempt's answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a batch is held open.
pub const BATCH_WINDOW: Duration = Duration::from_secs(1);
/// Most events in one batched request.
pub const BATCH_MAX: usize = 100;
/// Events waiting for the sender thread.
pub const QUEUE: usize = 65_536;
/// Requests in flight or waiting to retry.
pub const MAX_OUTSTANDING: usize = 10_000;
/// Requests in flight at once.
const MAX_IN_FLIGHT: usize = 64;
/// First retry delay.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One thing that happened, for the app's webhooks.
#[derive(Debug, Clone)]
pub struct Job {
    /// The app.
    pub app: AppIdx,
    /// What happened.
    pub event: WebhookEvent,
    /// The channel.
    pub channel: Arc<str>,
    /// The user, for member events and presence client events.
    pub user_id: Option<Arc<str>>,
    /// More fields of the event object (`event`, `data`, `socket_id`,
    /// `subscription_count`).
    pub fields: Map<String, Value>,
    /// When it happened, in Unix milliseconds.
    pub time_ms: u64,
}

impl Job {
    /// A job for `event` on `channel`, happening now.
    pub fn new(app: AppIdx, event: WebhookEvent, channel: &str) -> Self {
        Self {
            app,
            event,
            channel: Arc::from(channel),
            user_id: None,
            fields: Map::new(),
            time_ms: unix_ms(),
        }
    }

    fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("name".into(), self.event.name().into());
        o.insert("channel".into(), (*self.channel).into());
        if let Some(u) = &self.user_id {
            o.insert("user_id".into(), (**u).into());
        }
        for (k, v) in &self.fields {
            o.insert(k.clone(), v.clone());
        }
        Value::Object(o)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Webhook counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Requests answered 2xx.
    pub delivered: AtomicU64,
    /// Attempts that failed (and were retried or dropped).
    pub failed_attempts: AtomicU64,
    /// Requests given up after [`RETRY_FOR`].
    pub dropped_after_retries: AtomicU64,
    /// Events dropped because a queue was full.
    pub dropped_overload: AtomicU64,
    /// Events cancelled by the debounce.
    pub cancelled: AtomicU64,
    outstanding: AtomicUsize,
}

/// The webhook counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct WebhookCounts {
    /// Requests answered with 2xx.
    pub delivered: u64,
    /// Attempts that failed (and will be retried, or were the last).
    pub failed_attempts: u64,
    /// Requests given up after [`RETRY_FOR`].
    pub dropped_after_retries: u64,
    /// Events dropped because the queue or the outstanding requests were full.
    pub dropped_overload: u64,
    /// `channel_vacated`/`member_removed` cancelled by a quick return.
    pub cancelled: u64,
}

impl WebhookStats {
    /// The counters now.
    pub fn snapshot(&self) -> WebhookCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WebhookCounts {
            delivered: l(&self.delivered),
            failed_attempts: l(&self.failed_attempts),
            dropped_after_retries: l(&self.dropped_after_retries),
            dropped_overload: l(&self.dropped_overload),
            cancelled: l(&self.cancelled),
        }
    }
}

/// The workers' handle on the sender thread.
pub struct Webhooks {
    tx: tokio::sync::mpsc::Sender<Job>,
    /// Counters.
    pub stats: Arc<WebhookStats>,
}

impl Webhooks {
    /// Starts the sender thread, if any app has a webhook.
    pub fn start(apps: SharedApps) -> std::io::Result<Option<Self>> {
        // Started even when no app has a webhook yet: a reload may add one.
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let stats = Arc::new(WebhookStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("ringcast-webhooks".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                rt.block_on(run(apps, rx, thread_stats));
            })?;
        Ok(Some(Self { tx, stats }))
    }

    /// Hands `job` to the sender thread; never blocks. A full queue drops it, loudly.
    pub fn send(&self, job: Job) {
        if let Err(e) = self.tx.try_send(job) {
            self.stats.dropped_overload.fetch_add(1, Ordering::Relaxed);
            let job = match e {
                tokio::sync::mpsc::error::TrySendError::Full(j)
                | tokio::sync::mpsc::error::TrySendError::Closed(j) => j,
            };
            tracing::warn!(
                event = job.event.name(),
                channel = &*job.channel,
                "webhook queue full: event dropped"
            );
        }
    }
}

/// Debounce key: the channel, and the user for member events.
type PendingKey = (AppIdx, Arc<str>, Option<Arc<str>>);

struct Batch {
    events: Vec<Value>,
    time_ms: u64,
    opened: Instant,
}

async fn run(apps: SharedApps, mut rx: tokio::sync::mpsc::Receiver<Job>, stats: Arc<WebhookStats>) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut pending: HashMap<PendingKey, (Job, Instant)> = HashMap::new();
    let mut batches: HashMap<(AppIdx, usize), Batch> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sender = Sender {
        apps: apps.clone(),
        stats: stats.clone(),
        in_flight,
    };
    loop {
        tokio::select! {
            job = rx.recv() => {
                let Some(job) = job else { break };
                match job.event {
                    WebhookEvent::ChannelVacated | WebhookEvent::MemberRemoved => {
                        let key = (job.app, job.channel.clone(), job.user_id.clone());
                        if pending.len() >= QUEUE && !pending.contains_key(&key) {
                            // Bounded: past this, send without waiting.
                            sender.route(job, &mut batches);
                        } else {
                            pending.insert(key, (job, Instant::now() + DEBOUNCE));
                        }
                    }
                    WebhookEvent::ChannelOccupied | WebhookEvent::MemberAdded => {
                        let key = (job.app, job.channel.clone(), job.user_id.clone());
                        if pending.remove(&key).is_some() {
                            // Back within the debounce: neither the leave nor the return
                            // is reported.
                            stats.cancelled.fetch_add(1, Ordering::Relaxed);
                        } else {
                            sender.route(job, &mut batches);
                        }
                    }
                    _ => sender.route(job, &mut batches),
                }
            }
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let due: Vec<PendingKey> = pending
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            if let Some((job, _)) = pending.remove(&k) {
                sender.route(job, &mut batches);
            }
        }
        let full: Vec<(AppIdx, usize)> = batches
            .iter()
            .filter(|(_, b)| b.events.len() >= BATCH_MAX || now >= b.opened + BATCH_WINDOW)
            .map(|(k, _)| *k)
            .collect();
        for k in full {
            if let Some(b) = batches.remove(&k) {
                sender.dispatch(k.0, k.1, b.time_ms, b.events);
            }
        }
    }
}

struct Sender {
    apps: SharedApps,
    stats: Arc<WebhookStats>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl Sender {
    /// Sends `job` to each of its app's URLs that wants it, now or in a batch.
    fn route(&self, job: Job, batches: &mut HashMap<(AppIdx, usize), Batch>) {
        let apps = self.apps.load();
        let app = apps.get(job.app);
        let event = job.to_json();
        for (i, hook) in app.webhooks.iter().enumerate() {
            if !hook.events.contains(&job.event) {
                continue;
            }
            if app.webhook_batching {
                let b = batches.entry((job.app, i)).or_insert_with(|| Batch {
                    events: Vec::new(),
                    time_ms: job.time_ms,
                    opened: Instant::now(),
                });
                b.events.push(event.clone());
            } else {
                self.dispatch(job.app, i, job.time_ms, vec![event.clone()]);
            }
        }
    }

    /// Starts delivering one request, in a task of its own.
    fn dispatch(&self, app_idx: AppIdx, hook: usize, time_ms: u64, events: Vec<Value>) {
        let apps = self.apps.load();
        let app = apps.get(app_idx);
        let url = app.webhooks[hook].url.clone();
        if self.stats.outstanding.load(Ordering::Relaxed) >= MAX_OUTSTANDING {
            self.stats
                .dropped_overload
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            tracing::warn!(app = %app.id, url, "too many webhook requests outstanding: dropped");
            return;
        }
        let body =
            Bytes::from(serde_json::json!({ "time_ms": time_ms, "events": events }).to_string());
        let signature = crate::api::auth::sign(&app.secret, std::str::from_utf8(&body).unwrap());
        let key = app.key.clone();
        let app_id = app.id.clone();
        let stats = self.stats.clone();
        let in_flight = self.in_flight.clone();
        stats.outstanding.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut backoff = FIRST_BACKOFF;
            loop {
                let result = {
                    let _permit = in_flight.acquire().await.expect("never closed");
                    tokio::time::timeout(
                        ATTEMPT_TIMEOUT,
                        post(&url, &key, &signature, body.clone()),
                    )
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {ATTEMPT_TIMEOUT:?}")))
                };
                match result {
                    Ok(()) => {
                        stats.delivered.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        if started.elapsed() + backoff > RETRY_FOR {
                            stats.dropped_after_retries.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(app = %app_id, url, error = %e, "webhook dropped after retrying for 5 minutes");
                            break;
                        }
                        tracing::debug!(app = %app_id, url, error = %e, retry_in = ?backoff, "webhook attempt failed");
                        tokio::time::sleep(backoff).await;
                        backoff = next_backoff(backoff);
                    }
                }
            }
            stats.outstanding.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn next_backoff(d: Duration) -> Duration {
    (d * 2).min(MAX_BACKOFF)
}

/// One POST; `Ok` on a 2xx answer.
async fn post(url: &str, key: &str, signature: &str, body: Bytes) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    // IPv6 literals come bracketed (`[::1]`); the socket address wants them bare.
    let host = uri
        .host()
        .ok_or("URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let authority = uri
        .authority()
        .map_or(host.clone(), |a| a.as_str().to_string());
    let req = Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("ringcast/", env!("CARGO_PKG_VERSION")),
        )
        .header("X-Pusher-Key", key)
        .header("X-Pusher-Signature", signature)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    // Read (and discard) a bounded answer, so the receiver sees a complete exchange.
    let _ = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute_and_spans_five_minutes() {
        let mut d = FIRST_BACKOFF;
        let mut total = Duration::ZERO;
        let mut attempts = 1;
        while total + d <= RETRY_FOR {
            total += d;
            d = next_backoff(d);
            attempts += 1;
        }
        assert_eq!(d, MAX_BACKOFF);
        // First try, retries after 1+2+4+8+16+32 s (63 s), then every 60 s while the
        // total stays within 5 minutes (123, 183, 243 s): ten attempts.
        assert_eq!(attempts, 10);
    }

    #[test]
    fn event_objects_carry_the_documented_fields() {
        let mut job = Job::new(0, WebhookEvent::MemberAdded, "presence-room");
        job.user_id = Some(Arc::from("42"));
        assert_eq!(
            job.to_json(),
            serde_json::json!({"name":"member_added","channel":"presence-room","user_id":"42"})
        );
        let mut job = Job::new(0, WebhookEvent::SubscriptionCount, "news");
        job.fields.insert("subscription_count".into(), 3.into());
        assert_eq!(
            job.to_json(),
            serde_json::json!({"name":"subscription_count","channel":"news","subscription_count":3})
        );
    }
}
